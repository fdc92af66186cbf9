"""Budgets, their bootstrap SD, and throughput projections from a flux store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from abz_dask.aggregation.periods import complete_years
from abz_dask.aggregation.units import M2_PER_MKM2
from abz_dask.aggregation.zonal import domain_budgets, open_flux_store

__all__ = ["BENCHMARK_SOURCE", "BENCHMARK_TREE_ROWS_PER_CORE_S", "COARSE_SOURCE",
           "COARSE_TREE_ROWS_PER_CORE_S", "LAND_CELLS_1KM", "benchmark_rate",
           "budget_table", "core_hours_1km", "covered_area", "excluded_area_message",
           "project_core_hours", "projection_line"]

#: Land cells of the published 1-km ABZ product (20.7 M km² at 0.99994 km² per cell).
LAND_CELLS_1KM = 20.7e6
MONTHS_1KM = 240


def covered_area(store: str | Path | xr.Dataset, start: int | None = None,
                 end: int | None = None) -> pd.DataFrame:
    """Area of each domain and the part of it the budgets cover, over the whole years of
    ``start..end``.

    Columns ``domain, area_mkm2`` (10⁶ km², cells × land fraction), ``area_predicted_mkm2`` (mean
    over the months of the area with a prediction: cells whose predictors have data) and
    ``excluded_area_mkm2`` (their difference). Empty for stores written before the areas were
    recorded.
    """
    ds = open_flux_store(store)
    if "zone_area_excluded" not in ds:
        return pd.DataFrame(columns=["domain", "area_mkm2", "area_predicted_mkm2",
                                     "excluded_area_mkm2"])
    lost = ds["zone_area_excluded"].sum("tile_id")
    years = lost["time"].dt.year
    keep = (years.isin(complete_years(lost["time"])) & (years >= (start or -9999))
            & (years <= (end or 9999)))
    lost = lost.isel(time=np.flatnonzero(keep.values)).mean("time").compute()
    area = ds["zone_area"].sum("tile_id").compute()
    return pd.DataFrame({"domain": [str(d) for d in area["domain"].values],
                         "area_mkm2": area.values / M2_PER_MKM2,
                         "area_predicted_mkm2": (area.values - lost.values) / M2_PER_MKM2,
                         "excluded_area_mkm2": lost.values / M2_PER_MKM2})


def budget_table(store: str | Path | xr.Dataset, start: int | None = None,
                 end: int | None = None, *, fire: xr.DataArray | None = None) -> pd.DataFrame:
    """Period-mean budget per domain and flux with the SD over bootstrap budgets, and the area
    it covers.

    Columns: ``domain, flux, estimate_tg_c_yr, boot_sd_tg_c_yr, n_bootstrap, n_years`` and,
    from :func:`covered_area`, ``area_mkm2, area_predicted_mkm2, excluded_area_mkm2``: cells of
    a domain whose predictors have no data get no prediction and are not in the budget.

    With ``fire`` (annual fire-emission budgets ``(year, domain)`` in Tg C yr⁻¹,
    :func:`~abz_dask.aggregation.zonal.fire_budgets`), rows of flux ``NEE+fire`` follow: the mean
    over the years of the period that the fire record covers of the annual NEE budget plus the
    fire budget (``n_years`` counts those years; the bootstrap SD is that of NEE over them, fire
    being an input, not an estimate).
    """
    ds = open_flux_store(store)
    ann = domain_budgets(ds).compute().sel(year=slice(start, end))
    if fire is not None and "NEE" in ann["flux"].values:
        fb = fire.compute()
        years = [int(y) for y in ann["year"].values if y in fb["year"].values]
        if years:
            both = (ann.sel(flux="NEE", year=years)
                    + fb.sel(year=years, domain=ann["domain"]).astype(ann.dtype))
            ann = xr.concat([ann, both.expand_dims(flux=["NEE+fire"])], "flux")
    rows = []
    nb = ann.sizes["model"] - 1
    for f in ann["flux"].values:
        a = ann.sel(flux=f).dropna("year", how="all")
        mean = a.mean("year")
        for d in ann["domain"].values:
            m = mean.sel(domain=d)
            sd = float(m.isel(model=slice(1, None)).std(ddof=1)) if nb > 1 else np.nan
            rows.append({"domain": str(d), "flux": str(f),
                         "estimate_tg_c_yr": float(m.sel(model=0)),
                         "boot_sd_tg_c_yr": sd, "n_bootstrap": nb,
                         "n_years": int(a.sizes["year"])})
    tab = pd.DataFrame(rows)
    area = covered_area(ds, start, end)
    return tab.merge(area, on="domain", how="left") if len(area) else tab


def excluded_area_message(tab: pd.DataFrame) -> str | None:
    """A warning naming each domain whose budget misses area (cells without predictor data),
    or None when every domain is fully covered."""
    if "excluded_area_mkm2" not in tab:
        return None
    per = tab.drop_duplicates("domain").set_index("domain")
    lost = per[per["excluded_area_mkm2"] > 0]
    if lost.empty:
        return None
    parts = [f"{d} {r.excluded_area_mkm2:.3f} of {r.area_mkm2:.3f} M km² "
             f"({100 * r.excluded_area_mkm2 / r.area_mkm2:.1f} %)" for d, r in lost.iterrows()]
    return ("budgets exclude domain cells whose predictors have no data (mean over months): "
            + "; ".join(parts) + ". Their fluxes are not in the budgets; see "
            "area_predicted_mkm2 in budgets.csv")


#: Whole-tile-task throughput of 500-tree forests (tree-rows per core-second) on production tiles
#: of the 1-km grid, measured by ``benchmarks/bench_upscale.py --product-1km 6``: six 512 × 512
#: tiles drawn over the ABZ land area, the slowest of its cubes (white-noise pixel texture of 1 ×
#: each land-surface predictor's training SD, rougher than the twin's smooth fields: 98.3 M on
#: the twin's own cubes), f = 0.1 (BENCHMARKS.md). 50-km tiles run at 33.0 M (a 50-km tile
#: spans 1,600-6,400 km, so the per-chunk tree pruning skips little): a rate for coarse grids.
BENCHMARK_TREE_ROWS_PER_CORE_S: float = 55.7e6
BENCHMARK_SOURCE = ("bench_upscale.py --product-1km: 500-tree forests on 1-km tiles with pixel "
                    "texture, BENCHMARKS.md")
#: The same on 50-km tiles (``bench_upscale.py --paper-forests 2010 2011``): the rate for grids
#: much coarser than 1 km, whose tiles span thousands of kilometres.
COARSE_TREE_ROWS_PER_CORE_S: float = 33.0e6
COARSE_SOURCE = "bench_upscale.py --paper-forests: 500-tree forests on 50-km tiles, BENCHMARKS.md"


def benchmark_rate(resolution_m: float) -> tuple[float, str]:
    """The benchmark throughput (tree-rows per core-second) to plan a grid of
    ``resolution_m`` with, and its source: the 1-km tiles' up to 2 km, else the 50-km tiles'."""
    if resolution_m <= 2000.0:
        return BENCHMARK_TREE_ROWS_PER_CORE_S, BENCHMARK_SOURCE
    return COARSE_TREE_ROWS_PER_CORE_S, COARSE_SOURCE


def core_hours_1km(n_fluxes: int, n_bootstrap: int, bootstrap_sample: float,
                   tree_rows_per_core_s: float = BENCHMARK_TREE_ROWS_PER_CORE_S,
                   n_trees: int = 500) -> float:
    """Core-hours of the 1-km product (20.7 M land cells, 240 months) at a throughput of
    ``tree_rows_per_core_s`` (default: the 500-tree benchmark's)."""
    evals = LAND_CELLS_1KM * MONTHS_1KM * n_fluxes * (1 + n_bootstrap * bootstrap_sample)
    return evals * n_trees / tree_rows_per_core_s / 3600.0


def project_core_hours(tiles: pd.DataFrame, n_fluxes: int, n_bootstrap: int,
                       bootstrap_sample: float = 1.0, n_trees: int = 500) -> dict[str, float]:
    """Project measured throughput to the full 1-km product with ``n_trees``-tree forests.

    The measured rate is taken per tree and row (a forest's cost grows with its trees), so a
    run with small demo forests still projects the cost of the paper's 500-tree forests. The
    CPU time is the tiles' whole task time (reading, predicting, reducing, writing).

    Parameters
    ----------
    tiles : DataFrame
        Per-tile ``cpu_s``, ``forest_row_evals`` and ``tree_row_evals`` from
        :func:`~abz_dask.upscale.run_upscale`.
    n_fluxes, n_bootstrap : int
        Fluxes and bootstrap replicates of the product.
    bootstrap_sample : float
        Fraction of cells on which replicates are evaluated.
    n_trees : int
        Trees per forest of the product.

    Returns
    -------
    dict
        ``forest_rows_per_core_s`` (as measured), ``tree_rows_per_core_s``,
        ``mean_trees_measured``, ``evals_1km`` (forest evaluations), ``core_hours_1km``
        (at this run's rate, scaled per tree: optimistic for small forests, which run faster
        per tree than 500-tree ones) and ``core_hours_1km_benchmark`` (at the 500-tree
        benchmark's rate, :data:`BENCHMARK_TREE_ROWS_PER_CORE_S`).
    """
    cpu = max(float(tiles["cpu_s"].sum()), 1e-9)
    rows = float(tiles["forest_row_evals"].sum())
    trees = float(tiles["tree_row_evals"].sum()) if "tree_row_evals" in tiles else rows * n_trees
    evals = LAND_CELLS_1KM * MONTHS_1KM * n_fluxes * (1 + n_bootstrap * bootstrap_sample)
    return {"forest_rows_per_core_s": rows / cpu, "tree_rows_per_core_s": trees / cpu,
            "mean_trees_measured": trees / max(rows, 1.0), "evals_1km": evals,
            "core_hours_1km": core_hours_1km(n_fluxes, n_bootstrap, bootstrap_sample,
                                             trees / cpu, n_trees),
            "core_hours_1km_benchmark": core_hours_1km(n_fluxes, n_bootstrap,
                                                       bootstrap_sample, n_trees=n_trees)}


def projection_line(proj: dict[str, float], n_fluxes: int, bootstrap_sample: float) -> str:
    """One line naming both 1-km projections of :func:`project_core_hours`: at the 500-tree
    benchmark's rate (the one to plan with) and at this run's rate scaled per tree (small
    forests run faster per tree, so it is optimistic)."""
    return (f"full 1-km product ({n_fluxes} fluxes x (1 + 20 bootstraps x f={bootstrap_sample:g}),"
            f" 240 months, 20.7 M land cells, 500-tree forests): "
            f"{proj['core_hours_1km_benchmark']:,.0f} core-hours at the measured 500-tree rate "
            f"({BENCHMARK_TREE_ROWS_PER_CORE_S / 1e6:.1f} M tree-rows/core-s; {BENCHMARK_SOURCE})"
            f"; this run's {proj['mean_trees_measured']:.0f}-tree forests ran "
            f"{proj['tree_rows_per_core_s'] / 1e6:.1f} M tree-rows/core-s, which scaled per tree "
            f"gives an optimistic {proj['core_hours_1km']:,.0f}")
