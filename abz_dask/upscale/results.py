"""Budgets, their bootstrap SD, and throughput projections from a flux store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

__all__ = ["LAND_CELLS_1KM", "annual_budgets", "budget_table", "project_core_hours"]

#: Land cells of the published 1-km ABZ product (20.7 M km² at 0.99994 km² per cell).
LAND_CELLS_1KM = 20.7e6
MONTHS_1KM = 240


def annual_budgets(store: str | Path | xr.Dataset) -> xr.DataArray:
    """Annual budgets (Tg C yr⁻¹), ``(flux, model, year, domain)``; model 0 is central."""
    ds = store if isinstance(store, xr.Dataset) else xr.open_zarr(store, consolidated=False)
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
                       bootstrap_sample: float = 1.0) -> dict[str, float]:
    """Project measured forest-evaluation throughput to the full 1-km product.

    Parameters
    ----------
    tiles : DataFrame
        Per-tile ``cpu_s`` and ``forest_row_evals`` from :func:`~abz_dask.upscale.run_upscale`.
    n_fluxes, n_bootstrap : int
        Fluxes and bootstrap replicates of the product.
    bootstrap_sample : float
        Fraction of cells on which replicates are evaluated.
    """
    rate = float(tiles["forest_row_evals"].sum() / max(tiles["cpu_s"].sum(), 1e-9))
    evals = LAND_CELLS_1KM * MONTHS_1KM * n_fluxes * (1 + n_bootstrap * bootstrap_sample)
    return {"forest_rows_per_core_s": rate, "evals_1km": evals,
            "core_hours_1km": evals / rate / 3600.0}
