"""Trends of domain budgets: annual, seasonal (JJA, shoulder seasons) and NEE + fire (§4.10).

:func:`budget_trends` writes the package's one ``budget_trends`` table (the trends stage's
``RUN/trends/budget_trends.csv``; the report shows the same table). Its inputs are monthly
domain budgets (Tg C month⁻¹): for an upscaling run the flux store's ``zone_sums``
(:func:`abz_dask.aggregation.zonal.domain_budgets` with ``monthly=True``: central model 0,
bootstrap replicates 1..B), for a truth or any other flux cube :func:`monthly_domain_budgets`
(flox domain totals of the maps). A seasonal budget is the sum of its months (Tg C per season);
the annual one is the annual budget of Table 1. NEE + fire adds the fire budget of
:func:`abz_dask.aggregation.zonal.fire_budgets`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from abz_dask.aggregation.units import BUDGET_MONTH_UNITS, BUDGET_SEASON_UNITS, TG_PER_G
from abz_dask.aggregation.zonal import domain_totals, pixel_area
from abz_dask.analyses.series import season_months, whole_years
from abz_dask.analyses.trends import Method, trend

__all__ = ["ATTENUATION_TREND_COLUMNS", "BUDGET_SEASONS", "BUDGET_TREND_COLUMNS",
           "budget_trend_table", "budget_trends", "monthly_domain_budgets", "seasonal_budgets",
           "with_attenuation"]

#: Seasons of the budget trends (:data:`abz_dask.analyses.series.SEASONS`).
BUDGET_SEASONS: tuple[str, ...] = ("annual", "JJA", "spring", "autumn")
#: Columns of the ``budget_trends`` table, in order.
BUDGET_TREND_COLUMNS: tuple[str, ...] = (
    "season", "flux", "domain", "first_year", "last_year", "n_years", "mean_tg_c",
    "trend_tg_c_per_yr", "lbound", "ubound", "sig", "tau", "significant", "nruns", "autocor",
    "linear", "intercept", "trend_boot_sd", "n_bootstrap", "source")
#: Columns :func:`with_attenuation` appends to the ``budget_trends`` table, in order.
ATTENUATION_TREND_COLUMNS: tuple[str, ...] = (
    "attenuation", "attenuation_se", "attenuation_method")


def monthly_domain_budgets(fluxes: xr.Dataset, zones: xr.Dataset, cell_area: float, *,
                           names: Sequence[str] = ("NEE", "GPP", "Reco"),
                           domains: Mapping[str, str] | None = None) -> xr.DataArray:
    """Monthly domain budgets ``(flux, time, domain)`` (Tg C month⁻¹) of monthly flux maps, lazy.

    ``fluxes`` holds ``(time, y, x)`` maps in g C m⁻² month⁻¹ (e.g. the twin's truth); missing
    pixels contribute nothing, as in the upscaler. One flox pass
    (:func:`abz_dask.aggregation.zonal.domain_totals`) with the pixel area.
    """
    missing = [n for n in names if n not in fluxes]
    if missing:
        raise KeyError(f"flux dataset has no variable(s) {missing} "
                       f"(has {sorted(map(str, fluxes.data_vars))})")
    tot = domain_totals(fluxes[list(names)], zones, pixel_area(zones, cell_area), domains)
    out = tot.to_dataarray("flux") * TG_PER_G
    out = out.drop_vars([c for c in out.coords if c not in out.dims])
    return out.transpose("flux", "time", "domain").assign_attrs(units=BUDGET_MONTH_UNITS)


def seasonal_budgets(monthly: xr.DataArray, season: str | Sequence[int] = "annual", *,
                     start: int | None = None, end: int | None = None) -> xr.DataArray:
    """Budgets per year (Tg C per season; per year for ``"annual"``) from monthly budgets.

    Parameters
    ----------
    monthly : xarray.DataArray
        Monthly domain budgets with a ``time`` dimension (Tg C month⁻¹).
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
    years = whole_years(pd.DatetimeIndex(monthly["time"].values), months, start, end)
    if len(years) == 0:
        raise ValueError(f"no year in {start}..{end} has all months {list(months)} "
                         "in the monthly budgets")
    t = pd.DatetimeIndex(monthly["time"].values)
    sel = monthly.isel(time=np.flatnonzero(np.isin(t.month, months) & np.isin(t.year, years)))
    out = sel.groupby("time.year").sum()
    return out.sel(year=years).assign_attrs(units=BUDGET_SEASON_UNITS,
                                            season_months=list(months))


def budget_trends(monthly: xr.DataArray, *, fire: xr.DataArray | None = None,
                  seasons: Sequence[str] = BUDGET_SEASONS, start: int | None = None,
                  end: int | None = None, method: Method = "zhang",
                  preserve_range: bool = True, alpha: float = 0.05,
                  source: str = "estimate") -> pd.DataFrame:
    """The ``budget_trends`` table of one source: every season's budget trends and NEE + fire.

    Parameters
    ----------
    monthly : xarray.DataArray
        Monthly domain budgets ``(flux, [model,] time, domain)`` (Tg C month⁻¹).
    fire : xarray.DataArray, optional
        Annual fire budgets ``(year, domain)`` (Tg C yr⁻¹,
        :func:`abz_dask.aggregation.zonal.fire_budgets`): adds the annual ``NEE_fire`` rows
        over the years both cover.
    seasons : sequence of str
        Seasons (:data:`BUDGET_SEASONS` by default).
    start, end : int, optional
        Year range.
    method, preserve_range, alpha
        As :func:`abz_dask.analyses.trends.trend`.
    source : str
        Value of the ``source`` column (``estimate``, ``truth``).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`BUDGET_TREND_COLUMNS`.
    """
    kw = {"method": method, "preserve_range": preserve_range, "alpha": alpha}
    mon = monthly.compute()
    parts = []
    annual = None
    for s in seasons:
        b = seasonal_budgets(mon, s, start=start, end=end)
        annual = b if s == "annual" else annual
        parts.append(budget_trend_table(b, season=s, **kw))  # type: ignore[arg-type]
    if fire is not None and "NEE" in mon["flux"].values:
        if annual is None:
            annual = seasonal_budgets(mon, "annual", start=start, end=end)
        fb = fire.compute()
        nee = annual.sel(flux=["NEE"])
        common = np.intersect1d(nee["year"].values, fb["year"].values)
        if len(common):
            nf = (nee.sel(year=common) + fb.sel(year=common, domain=nee["domain"].values)
                  ).assign_coords(flux=["NEE_fire"])
            parts.append(budget_trend_table(nf, season="annual", **kw))  # type: ignore[arg-type]
    out = pd.concat(parts, ignore_index=True).assign(source=source)
    return out[list(BUDGET_TREND_COLUMNS)]


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


def with_attenuation(table: pd.DataFrame, attenuation: pd.DataFrame) -> pd.DataFrame:
    """The ``budget_trends`` table with the attenuation estimate beside every estimated trend.

    Parameters
    ----------
    table : pandas.DataFrame
        A ``budget_trends`` table (:data:`BUDGET_TREND_COLUMNS`; earlier attenuation columns are
        replaced).
    attenuation : pandas.DataFrame
        One row per flux (:func:`abz_dask.analyses.attenuation.attenuation_table`).

    Returns
    -------
    pandas.DataFrame
        ``table`` unchanged in its columns and values, with :data:`ATTENUATION_TREND_COLUMNS`
        appended: on rows of source ``estimate`` the flux's estimate (``NEE_fire`` takes
        NEE's: fire is not upscaled), its standard error and ``<method>/<level>``; empty on
        other rows (the truth is not attenuated) and for fluxes the estimate lacks.
    """
    base = table.drop(columns=[c for c in ATTENUATION_TREND_COLUMNS if c in table])
    att = attenuation.set_index("flux")
    flux = base["flux"].astype(str).replace({"NEE_fire": "NEE"})
    est = (base["source"] == "estimate") & flux.isin(att.index)
    label = att["method"].astype(str) + "/" + att["level"].astype(str)
    out = base.copy()
    out["attenuation"] = np.where(est, flux.map(att["attenuation"]), np.nan)
    out["attenuation_se"] = np.where(est, flux.map(att["attenuation_se"]), np.nan)
    # numpy's stubs take no None as a branch of where (an object array at runtime)
    labels = np.where(est, flux.map(label), None)  # type: ignore[call-overload]
    out["attenuation_method"] = pd.Series(labels, index=base.index, dtype=object)
    return out
