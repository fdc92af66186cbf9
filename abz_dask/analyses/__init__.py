"""The paper's trend analyses (seed-spec §4.10, §4.12; DECISIONS 10–13).

Each analysis is a function, lazy over the grid where it is per pixel:

- :mod:`~abz_dask.analyses.series` — annual / seasonal per-pixel series of fluxes and predictors,
  NEE + fire;
- :mod:`~abz_dask.analyses.maps` — zyp trend maps of several series, atomic Zarr output;
- :mod:`~abz_dask.analyses.shares` — area shares of each domain with significant trends, greening
  overlap;
- :mod:`~abz_dask.analyses.overlay` — GPP / Reco overlay categories (integer codes + legend);
- :mod:`~abz_dask.analyses.budget_trends` — trends of annual, seasonal and NEE + fire budgets;
- :mod:`~abz_dask.analyses.compare` — agreement of trend maps with a reference (the twin's truth);
- :mod:`~abz_dask.analyses.run` — the ``abz-dask trends`` stage (maps + CSV tables, resumable).
"""

from __future__ import annotations

from abz_dask.analyses.budget_trends import (
    budget_trend_table,
    budget_trends,
    monthly_domain_budgets,
    seasonal_budgets,
)
from abz_dask.analyses.compare import map_agreement, trend_class
from abz_dask.analyses.maps import MAP_FIELDS, finish_atomic, pixel_trends, write_zarr_atomic
from abz_dask.analyses.overlay import OVERLAY_LEGEND, overlay_categories, overlay_shares
from abz_dask.analyses.run import (
    TrendConfig,
    TrendInputs,
    TrendResult,
    flux_series,
    predictor_series,
    run_trends,
)
from abz_dask.analyses.series import (
    SEASONS,
    nee_plus_fire,
    season_months,
    seasonal_series,
    whole_years,
)
from abz_dask.analyses.shares import greening_overlap, shares_table, trend_area_shares

__all__ = [
    "MAP_FIELDS", "OVERLAY_LEGEND", "SEASONS", "TrendConfig", "TrendInputs", "TrendResult",
    "budget_trend_table", "budget_trends", "finish_atomic", "flux_series",
    "greening_overlap", "map_agreement", "monthly_domain_budgets", "nee_plus_fire",
    "overlay_categories", "overlay_shares", "pixel_trends", "predictor_series",
    "run_trends", "season_months", "seasonal_budgets", "seasonal_series", "shares_table",
    "trend_area_shares", "trend_class", "whole_years", "write_zarr_atomic",
]
