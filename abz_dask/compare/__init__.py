"""Comparisons with other gridded products, paper 2's regional analyses and environmental coverage.

- :mod:`~abz_dask.compare.products`: read inversions / CMIP6 / FLUXCOM / ISIMIP NetCDF as NEE in
  g C m⁻² month⁻¹ (or yr⁻¹) on a normalised lat/lon grid;
- regridding to the polar LAEA grid: :func:`abz_dask.geo.regrid.conservative`;
- :mod:`~abz_dask.compare.metrics`: fire removal, Pearson r of mean and trend maps, budget ratios;
- :mod:`~abz_dask.compare.regional`: paper 2 Table 3 (mean ± spatial SD per RECCAP2 region ×
  approach), ANOVA and Tukey letters; :mod:`~abz_dask.compare.agreement`: agreement maps;
  :mod:`~abz_dask.compare.ch4`: CH4 synthesis summaries;
- :mod:`~abz_dask.compare.coverage`: MESS and k-means environmental clusters;
- :mod:`~abz_dask.compare.run` / :mod:`~abz_dask.compare.figures`: the ``abz-dask compare``
  stage and its PNGs.
"""

from __future__ import annotations

from abz_dask.compare.agreement import agreement_maps, classify_nee
from abz_dask.compare.ch4 import ch4_summary, read_ch4_synthesis
from abz_dask.compare.coverage import environmental_clusters, mess, mess_map
from abz_dask.compare.figures import comparison_figures
from abz_dask.compare.metrics import compare_maps, map_correlation, subtract_fire, trend_map
from abz_dask.compare.products import parse_units, read_product, to_annual
from abz_dask.compare.regional import (
    read_table3,
    region_anova,
    regional_summary,
    regional_table,
    table_wide,
    tukey_letters,
)
from abz_dask.compare.run import ProductSpec, parse_product, run_compare

__all__ = ["ProductSpec", "agreement_maps", "ch4_summary", "classify_nee", "compare_maps",
           "comparison_figures", "environmental_clusters", "map_correlation",
           "mess", "mess_map", "parse_product", "parse_units", "read_ch4_synthesis",
           "read_product", "read_table3", "region_anova", "regional_summary", "regional_table",
           "run_compare", "subtract_fire", "table_wide", "to_annual",
           "trend_map", "tukey_letters"]
