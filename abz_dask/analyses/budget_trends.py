"""Trends of domain budgets: annual, seasonal (JJA, shoulder seasons) and NEE + fire (§4.10).

Budgets come from monthly domain sums (g C month⁻¹): for an upscaling run the flux store's
``zone_sums`` (written in the same pass as the maps, central model = 0, bootstrap replicates
1..B), for a truth or any other flux cube :func:`domain_sums` (the same contraction with the
domain weights). A seasonal budget is the sum of its months (Tg C per season); the annual one
equals :func:`abz_dask.upscale.results.annual_budgets`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from abz_dask.aggregation.zonal import open_flux_store
from abz_dask.analyses.series import season_months, whole_years
from abz_dask.analyses.trends import Method, trend

__all__ = ["budget_trend_table", "domain_sums", "fire_budgets", "seasonal_budgets",
           "store_domain_sums"]


def store_domain_sums(store: str | Path | xr.Dataset) -> xr.DataArray:
    """Monthly domain sums ``(flux, model, time, domain)`` (g C month⁻¹) of a flux store."""
    ds = open_flux_store(store)
    if "zone_sums" not in ds:
        raise KeyError(f"{store}: flux store has no 'zone_sums' variable")
    return ds["zone_sums"].sum("tile_id")


def domain_sums(fluxes: xr.Dataset, weights: xr.DataArray,
                names: Sequence[str] = ("NEE", "GPP", "Reco")) -> xr.DataArray:
    """Monthly domain sums ``(flux, time, domain)`` (g C month⁻¹) of monthly flux maps (lazy).

    ``fluxes`` holds ``(time, y, x)`` maps in g C m⁻² month⁻¹ (e.g. the twin's truth); missing
    pixels contribute nothing, as in the upscaler.
    """
    w = weights.astype(np.float64)
    w = w.drop_vars([c for c in w.coords if c not in w.dims])
    parts = [xr.dot(fluxes[n].astype(np.float64).fillna(0.0), w, dim=("y", "x"))
             for n in names]
    out = xr.concat(parts, dim="flux").assign_coords(flux=list(names))
    return out.drop_vars([c for c in out.coords if c not in out.dims])


def seasonal_budgets(sums: xr.DataArray, season: str | Sequence[int] = "annual", *,
                     start: int | None = None, end: int | None = None) -> xr.DataArray:
    """Budgets per year (Tg C per season; per year for ``"annual"``) from monthly domain sums.

    Parameters
    ----------
    sums : xarray.DataArray
        Monthly domain sums with a ``time`` dimension (g C month⁻¹).
    season : str or sequence of int
        Named season (:data:`abz_dask.analyses.series.SEASONS`) or calendar months.
    start, end : int, optional
        Year range; only years with every month of the season are kept.

    Returns
    -------
    xarray.DataArray
        ``time`` replaced by ``year``.
    """
    months = season_months(season)
    years = whole_years(pd.DatetimeIndex(sums["time"].values), months, start, end)
    if len(years) == 0:
        raise ValueError(f"no year in {start}..{end} has all months {list(months)} "
                         "in the domain sums")
    t = pd.DatetimeIndex(sums["time"].values)
    sel = sums.isel(time=np.flatnonzero(np.isin(t.month, months) & np.isin(t.year, years)))
    out = sel.groupby("time.year").sum() * 1e-12
    return out.sel(year=years).assign_attrs(units="Tg C", season_months=list(months))


def fire_budgets(fire_emissions: xr.DataArray, land_fraction: xr.DataArray,
                 weights: xr.DataArray) -> xr.DataArray:
    """Annual fire emissions per domain ``(year, domain)`` in Tg C yr⁻¹.

    ``fire_emissions`` is per m² of cell area (twin ``fire.zarr``); dividing by the land
    fraction and weighting with ``cell area × land fraction`` conserves the emitted mass
    (DECISIONS 16).
    """
    lf = land_fraction.where(land_fraction > 0)
    per_land = (fire_emissions.astype(np.float64).fillna(0.0) / lf).fillna(0.0)
    per_land = per_land.drop_vars([c for c in per_land.coords if c not in per_land.dims])
    w = weights.astype(np.float64)
    w = w.drop_vars([c for c in w.coords if c not in w.dims])
    return (xr.dot(per_land, w, dim=("y", "x")) * 1e-12).assign_attrs(units="Tg C yr-1")


def budget_trend_table(budgets: xr.DataArray, *, season: str = "annual",
                       method: Method = "zhang", preserve_range: bool = True,
                       alpha: float = 0.05) -> pd.DataFrame:
    """Theil–Sen slope and Mann–Kendall p of every budget series, as a table.

    Parameters
    ----------
    budgets : xarray.DataArray
        ``(flux, [model,] year, domain)`` in Tg C (per year or season). With a ``model``
        dimension, model 0 is the central estimate and ``trend_boot_sd`` is the SD of the
        slopes of models 1..B.
    season : str
        Label written to the ``season`` column.
    method, preserve_range, alpha
        As :func:`abz_dask.analyses.trends.trend`.

    Returns
    -------
    pandas.DataFrame
        One row per flux × domain: ``season, flux, domain, first_year, last_year, n_years,
        mean_tg_c, trend_tg_c_per_yr, lbound, ubound, sig, tau, significant, nruns, autocor,
        linear, intercept, trend_boot_sd, n_bootstrap``.
    """
    b = budgets.load()
    res = trend(b, dim="year", method=method, preserve_range=preserve_range, alpha=alpha)
    central = res.sel(model=0) if "model" in res.dims else res
    boot_sd = None
    nb = 0
    if "model" in res.dims and res.sizes["model"] > 2:
        nb = res.sizes["model"] - 1
        boot_sd = res["trend"].isel(model=slice(1, None)).std("model", ddof=1)
    mean = (b.sel(model=0) if "model" in b.dims else b).mean("year")
    years = b["year"].values
    rows = []
    for f in b["flux"].values:
        for d in b["domain"].values:
            c = central.sel(flux=f, domain=d)
            rows.append({
                "season": season, "flux": str(f), "domain": str(d),
                "first_year": int(years.min()), "last_year": int(years.max()),
                "n_years": len(years), "mean_tg_c": float(mean.sel(flux=f, domain=d)),
                "trend_tg_c_per_yr": float(c["trend"]), "lbound": float(c["lbound"]),
                "ubound": float(c["ubound"]), "sig": float(c["sig"]), "tau": float(c["tau"]),
                "significant": bool(float(c["sig"]) < alpha), "nruns": float(c["nruns"]),
                "autocor": float(c["autocor"]), "linear": float(c["linear"]),
                "intercept": float(c["intercept"]),
                "trend_boot_sd": (float(boot_sd.sel(flux=f, domain=d)) if boot_sd is not None
                                  else np.nan),
                "n_bootstrap": nb})
    return pd.DataFrame(rows)
