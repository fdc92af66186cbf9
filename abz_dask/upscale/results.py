"""Budgets, their bootstrap SD, and throughput projections from a flux store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from abz_dask.zonal import open_flux_store

__all__ = ["LAND_CELLS_1KM", "annual_budgets", "budget_table", "project_core_hours"]

#: Land cells of the published 1-km ABZ product (20.7 M km² at 0.99994 km² per cell).
LAND_CELLS_1KM = 20.7e6
MONTHS_1KM = 240


def annual_budgets(store: str | Path | xr.Dataset) -> xr.DataArray:
    """Annual budgets (Tg C yr⁻¹), ``(flux, model, year, domain)``; model 0 is central."""
    ds = open_flux_store(store)
    zs = ds["zone_sums"].sum("tile_id")
    counts = zs["time"].dt.year.to_series().value_counts()
    full = np.sort(counts.index[counts.to_numpy() == 12].to_numpy())
    return (zs.groupby("time.year").sum() * 1e-12).sel(year=full).compute()


def budget_table(store: str | Path | xr.Dataset, start: int | None = None,
                 end: int | None = None) -> pd.DataFrame:
    """Period-mean budget per domain and flux with the SD over bootstrap budgets.

    Columns: ``domain, flux, estimate_tg_c_yr, boot_sd_tg_c_yr, n_bootstrap, n_years``.
    """
    ann = annual_budgets(store).sel(year=slice(start, end))
    mean = ann.mean("year")
    rows = []
    nb = ann.sizes["model"] - 1
    for f in ann["flux"].values:
        for d in ann["domain"].values:
            m = mean.sel(flux=f, domain=d)
            sd = float(m.isel(model=slice(1, None)).std(ddof=1)) if nb > 1 else np.nan
            rows.append({"domain": str(d), "flux": str(f),
                         "estimate_tg_c_yr": float(m.sel(model=0)),
                         "boot_sd_tg_c_yr": sd, "n_bootstrap": nb,
                         "n_years": int(ann.sizes["year"])})
    return pd.DataFrame(rows)


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
        ``mean_trees_measured``, ``evals_1km`` (forest evaluations) and ``core_hours_1km``.
    """
    cpu = max(float(tiles["cpu_s"].sum()), 1e-9)
    rows = float(tiles["forest_row_evals"].sum())
    trees = float(tiles["tree_row_evals"].sum()) if "tree_row_evals" in tiles else rows * n_trees
    evals = LAND_CELLS_1KM * MONTHS_1KM * n_fluxes * (1 + n_bootstrap * bootstrap_sample)
    return {"forest_rows_per_core_s": rows / cpu, "tree_rows_per_core_s": trees / cpu,
            "mean_trees_measured": trees / max(rows, 1.0), "evals_1km": evals,
            "core_hours_1km": evals * n_trees / (trees / cpu) / 3600.0}
