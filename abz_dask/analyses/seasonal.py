"""Time series, trends and seasonality of the upscaled fluxes (seed-spec §4.8, §4.10, §5 Figs 2–4).

* :func:`annual_series` — annual budgets per Table-1 domain of the central model with the SD
  over the bootstrap replicates (Fig. 2a,b bands), NEE + fire when fire data are given (their
  Theil–Sen trends are the ``annual`` rows of
  :func:`abz_dask.analyses.budget_trends.budget_trends`, the one budget-trend table);
* :func:`region_biome_budgets` — key region × biome budgets and trends (Fig. 4);
* :func:`monthly_means` — mean monthly per-area fluxes per domain for two decades with bootstrap
  SD (Fig. 3);
* :func:`source_area_share` — share of each domain's area with mean annual NEE > 0;
* :func:`seasonal_amplitude` — max − min of the 12 monthly domain NEE budgets per year and its
  change over the period from the Theil–Sen fit (DECISIONS 11);
* :func:`nee_vs_components` — modelled NEE against Reco − GPP (budgets and pixel correlation);
* :func:`latitude_correlation` — Pearson r of mean annual NEE with latitude (pixels, sites).

Map helpers :func:`pixel_annual`, :func:`pixel_mean_annual` and :func:`pixel_trends` are lazy
and chunk-bounded (one task per spatial chunk and year).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from abz_dask.aggregation.budgets import DOMAINS
from abz_dask.aggregation.units import BUDGET_UNITS, M2_PER_MKM2, TG_PER_G
from abz_dask.aggregation.zonal import (
    annual_zonal_budgets,
    domain_budgets,
    domain_totals,
    fire_budgets,
    open_flux_store,
    pixel_area,
    zone_area,
    zone_layer,
)
from abz_dask.analyses.trends import trend
from abz_dask.geo.grid import Grid

__all__ = [
    "DECADES",
    "annual_series",
    "latitude_correlation",
    "monthly_means",
    "nee_vs_components",
    "pixel_annual",
    "pixel_mean_annual",
    "pixel_trends",
    "region_biome_budgets",
    "seasonal_amplitude",
    "source_area_share",
]

#: The two decades of Fig. 3.
DECADES: tuple[tuple[int, int], tuple[int, int]] = ((2001, 2010), (2011, 2020))


def _years(ds: xr.Dataset, start: int | None, end: int | None) -> tuple[int, int]:
    y = np.unique(ds["time"].dt.year.values)
    s = int(y.min()) if start is None else max(int(start), int(y.min()))
    e = int(y.max()) if end is None else min(int(end), int(y.max()))
    if s > e:
        raise ValueError(f"no year of the flux store ({y.min()}–{y.max()}) in {start}..{end}")
    return s, e


# --------------------------------------------------------------------------------------------
# pixel maps


def pixel_annual(store: str | Path | xr.Dataset, flux: str = "NEE", *,
                 start: int | None = None, end: int | None = None) -> xr.DataArray:
    """Annual sums ``(year, y, x)`` (g C m⁻² yr⁻¹) of a monthly flux, lazy; NaN where a month
    is missing."""
    ds = open_flux_store(store)
    if flux not in ds:
        raise ValueError(f"flux store has no variable {flux!r}")
    s, e = _years(ds, start, end)
    v = ds[flux].sel(time=slice(str(s), f"{e}-12-31"))
    out = v.groupby("time.year").sum(min_count=12)
    out.attrs = {"units": "g C m-2 yr-1", "long_name": f"annual {flux}"}
    return out


def pixel_mean_annual(store: str | Path | xr.Dataset, flux: str = "NEE", *,
                      start: int | None = None, end: int | None = None) -> xr.DataArray:
    """Mean annual flux ``(y, x)`` (g C m⁻² yr⁻¹) over the period, lazy."""
    out = pixel_annual(store, flux, start=start, end=end).mean("year")
    out.attrs = {"units": "g C m-2 yr-1", "long_name": f"mean annual {flux}"}
    return out


def pixel_trends(store: str | Path | xr.Dataset, flux: str = "NEE", *,
                 start: int | None = None, end: int | None = None,
                 method: str = "zhang") -> xr.Dataset:
    """Per-pixel Theil–Sen trend (g C m⁻² yr⁻¹ yr⁻¹) and MK p of annual sums, lazy (Fig. 1b)."""
    ann = pixel_annual(store, flux, start=start, end=end)
    if ann.chunks is not None:
        ann = ann.chunk({"year": -1})
    return trend(ann, dim="year", method=method)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# domain series


def annual_series(store: str | Path | xr.Dataset, *, start: int | None = None,
                  end: int | None = None, fire_budgets: xr.DataArray | None = None
                  ) -> xr.Dataset:
    """Annual domain budgets of the central model with the bootstrap SD.

    Parameters
    ----------
    store : path or xarray.Dataset
        Flux store with ``zone_sums``.
    start, end : int, optional
        Period.
    fire_budgets : xarray.DataArray, optional
        ``(year, domain)`` annual fire emissions (Tg C yr⁻¹,
        :func:`abz_dask.aggregation.zonal.fire_budgets`): adds the series ``NEE+fire``.

    Returns
    -------
    xarray.Dataset
        ``budget`` and ``boot_sd`` with dimensions ``(series, year, domain)``, series = the
        store's fluxes (+ ``NEE+fire`` for the fire years), Tg C yr⁻¹, computed.
    """
    ds = open_flux_store(store)
    s, e = _years(ds, start, end)
    ann = domain_budgets(ds).sel(year=slice(s, e)).compute()
    cen = ann.sel(model=0, drop=True)
    nb = ann.sizes["model"] - 1
    sd = (ann.isel(model=slice(1, None)).std("model", ddof=1) if nb > 1
          else xr.full_like(cen, np.nan))
    out = xr.Dataset({"budget": cen.rename(flux="series"), "boot_sd": sd.rename(flux="series")})
    if fire_budgets is not None and "NEE" in ann["flux"].values:
        fb = fire_budgets.compute().sel(domain=out["domain"].values)
        yrs = np.intersect1d(out["year"].values, fb["year"].values)
        nf = (out["budget"].sel(series="NEE") + fb).reindex(year=out["year"].values)
        nf = nf.where(out["year"].isin(yrs))
        add = xr.Dataset({"budget": nf.expand_dims(series=["NEE+fire"]),
                          "boot_sd": out["boot_sd"].sel(series=["NEE"]).assign_coords(
                              series=["NEE+fire"]).where(out["year"].isin(yrs))})
        out = xr.concat([out, add], dim="series")
    out["budget"].attrs["units"] = out["boot_sd"].attrs["units"] = BUDGET_UNITS
    out.attrs.update({"bootstrap_replicates": nb, "period": f"{s}-{e}"})
    return out


def _trend_table(series: xr.DataArray, dims: Sequence[str], method: str = "zhang"
                 ) -> pd.DataFrame:
    v = series.reset_coords(drop=True).transpose(*dims, "year")
    tr = trend(v, dim="year", method=method)  # type: ignore[arg-type]
    df = tr[["trend", "sig", "tau", "intercept"]].to_dataframe().reset_index()
    return df.rename(columns={"trend": "slope_per_yr", "sig": "p_value"})


def region_biome_budgets(store: str | Path | xr.Dataset, zones: xr.Dataset, *,
                         start: int | None = None, end: int | None = None,
                         fire: xr.Dataset | None = None, layer: str = "key_region_biome",
                         method: str = "zhang") -> pd.DataFrame:
    """Budgets and trends per key region × biome (Fig. 4), NEE and NEE + fire.

    Returns
    -------
    DataFrame
        ``zone, series, mean_tg_c_yr, slope_per_yr, p_value, area_mkm2, first_year, last_year``.
    """
    ds = open_flux_store(store)
    s, e = _years(ds, start, end)
    grid = Grid.of_dataset(ds)
    lay = zone_layer(zones, layer)
    area = pixel_area(zones, grid.cell_area)
    fl = [f for f in ("NEE", "GPP", "Reco") if f in ds]
    ann = annual_zonal_budgets(ds[fl].sel(time=slice(str(s), f"{e}-12-31")), lay, area
                               ).compute()
    series = {f: ann[f] for f in fl}
    if fire is not None and "NEE" in fl:
        fb = fire_budgets(fire, zones, grid.cell_area, layer=lay).compute()
        yrs = np.intersect1d(ann["year"].values, fb["year"].values)
        series["NEE+fire"] = ann["NEE"].sel(year=yrs) + fb.sel(year=yrs)
        series["fire"] = fb.sel(year=yrs)
    za = zone_area(lay, area)
    rows = []
    for name, v in series.items():
        if v.sizes["year"] < 3:
            continue
        t = _trend_table(v, ["zone"], method)
        t["series"] = name
        t["zone_name"] = [lay.names[int(c)] for c in t["zone"]]
        t["mean_tg_c_yr"] = v.mean("year").sel(zone=t["zone"].to_numpy()).to_numpy()
        t["area_mkm2"] = za.sel(zone=t["zone"].to_numpy()).to_numpy() / M2_PER_MKM2
        t["first_year"], t["last_year"] = int(v["year"].min()), int(v["year"].max())
        rows.append(t)
    out = pd.concat(rows, ignore_index=True)
    return out[["zone", "zone_name", "series", "mean_tg_c_yr", "slope_per_yr", "p_value",
                "area_mkm2", "first_year", "last_year"]]


# --------------------------------------------------------------------------------------------
# seasonality


def monthly_means(store: str | Path | xr.Dataset, zones: xr.Dataset, *,
                  periods: Sequence[tuple[int, int]] = DECADES,
                  domains: Sequence[str] = ("tundra", "boreal")) -> pd.DataFrame:
    """Mean monthly per-area flux (g C m⁻² month⁻¹) per domain and period (Fig. 3).

    The per-area flux of a month is the domain's monthly budget / domain area; ``boot_sd`` is
    the SD over the bootstrap replicates of the period mean of that calendar month.

    Returns
    -------
    DataFrame
        ``domain, flux, period, month, mean_g_c_m2_month, boot_sd``.
    """
    ds = open_flux_store(store)
    grid = Grid.of_dataset(ds)
    mon = domain_budgets(ds, monthly=True).sel(domain=list(domains)).compute()
    area = pixel_area(zones, grid.cell_area)
    dmap = {d: DOMAINS[d] for d in domains}
    areas = domain_totals(xr.ones_like(area), zones, area, dmap).compute()
    rows = []
    for p0, p1 in periods:
        sel = mon.sel(time=slice(str(p0), f"{p1}-12-31"))
        if sel.sizes["time"] == 0:
            continue
        clim = sel.groupby("time.month").mean() / TG_PER_G / areas
        nb = clim.sizes["model"] - 1
        for d in domains:
            for f in clim["flux"].values:
                c = clim.sel(domain=d, flux=f)
                for m in c["month"].values:
                    cm = c.sel(month=m)
                    rows.append({"domain": d, "flux": str(f), "period": f"{p0}-{p1}",
                                 "month": int(m), "mean_g_c_m2_month": float(cm.sel(model=0)),
                                 "boot_sd": (float(cm.isel(model=slice(1, None)).std(ddof=1))
                                             if nb > 1 else np.nan)})
    return pd.DataFrame(rows)


def seasonal_amplitude(store: str | Path | xr.Dataset, *, start: int | None = None,
                       end: int | None = None, method: str = "zhang"
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seasonal amplitude of the monthly NEE budgets and its change (DECISIONS 11).

    Returns
    -------
    (DataFrame, DataFrame)
        Per year and domain ``amplitude_tg_c_month`` (max − min of the 12 monthly budgets of
        the central model); per domain the Theil–Sen ``slope_per_yr``, ``p_value``,
        ``fitted_start``, ``fitted_end`` and ``change`` = fitted_end / fitted_start − 1.
    """
    ds = open_flux_store(store)
    s, e = _years(ds, start, end)
    mon = domain_budgets(ds, monthly=True).sel(flux="NEE", model=0, drop=True)
    mon = mon.sel(time=slice(str(s), f"{e}-12-31")).compute()
    g = mon.groupby("time.year")
    amp = (g.max() - g.min())
    per_year = amp.to_dataframe(name="amplitude_tg_c_month").reset_index()
    t = _trend_table(amp, ["domain"], method)
    n = amp.sizes["year"]
    t["fitted_start"] = t["intercept"] + t["slope_per_yr"] * 1
    t["fitted_end"] = t["intercept"] + t["slope_per_yr"] * n
    t["change"] = t["fitted_end"] / t["fitted_start"] - 1.0
    t["first_year"], t["last_year"] = s, e
    return per_year, t


def source_area_share(store: str | Path | xr.Dataset, zones: xr.Dataset, *,
                      start: int | None = None, end: int | None = None) -> pd.DataFrame:
    """Share of each domain's area whose mean annual NEE is > 0 (a source), area-weighted."""
    ds = open_flux_store(store)
    grid = Grid.of_dataset(ds)
    area = pixel_area(zones, grid.cell_area)
    mean = pixel_mean_annual(ds, "NEE", start=start, end=end)
    src = (mean > 0).astype(np.float64)
    valid = mean.notnull().astype(np.float64)
    tot = domain_totals(xr.Dataset({"source": src, "valid": valid}), zones, area).compute()
    share = tot["source"] / tot["valid"]
    return pd.DataFrame({"domain": share["domain"].values, "source_share": share.values,
                         "source_area_mkm2": tot["source"].values / M2_PER_MKM2})


def nee_vs_components(store: str | Path | xr.Dataset, zones: xr.Dataset, *,
                      start: int | None = None, end: int | None = None) -> pd.DataFrame:
    """Directly modelled NEE against Reco − GPP: period budgets and the pixel correlation of
    the mean annual maps, per domain (seed-spec §4.7, Suppl. Fig. 17)."""
    ds = open_flux_store(store)
    grid = Grid.of_dataset(ds)
    s, e = _years(ds, start, end)
    area = pixel_area(zones, grid.cell_area)
    nee = pixel_mean_annual(ds, "NEE", start=s, end=e)
    diff = pixel_mean_annual(ds, "Reco", start=s, end=e) - pixel_mean_annual(ds, "GPP", start=s,
                                                                                 end=e)
    tot = domain_totals(xr.Dataset({"nee": nee, "diff": diff}), zones, area).compute() * TG_PER_G
    nv, dv = np.asarray(nee.values), np.asarray(diff.values)
    rows = []
    for d, expr in DOMAINS.items():
        m = np.asarray(zones.eval(expr).fillna(False).values, bool)
        ok = m & np.isfinite(nv) & np.isfinite(dv) & (np.asarray(area.values) > 0)
        r = float(np.corrcoef(nv[ok], dv[ok])[0, 1]) if ok.sum() > 2 else np.nan
        rows.append({"domain": d, "nee_budget": float(tot["nee"].sel(domain=d)),
                     "reco_minus_gpp_budget": float(tot["diff"].sel(domain=d)),
                     "difference": float(tot["nee"].sel(domain=d) - tot["diff"].sel(domain=d)),
                     "pixel_r": r, "n_pixels": int(ok.sum()), "first_year": s, "last_year": e})
    return pd.DataFrame(rows)


def latitude_correlation(store: str | Path | xr.Dataset, zones: xr.Dataset, *,
                         start: int | None = None, end: int | None = None,
                         obs: pd.DataFrame | None = None, domain: str = "abz") -> pd.DataFrame:
    """Pearson r (and p) of mean annual NEE with latitude: domain pixels, and sites if given.

    ``obs`` are site-months (:func:`abz_dask.io.abcflux.read_abcflux`); site means use complete
    site-years only.
    """
    from scipy import stats

    ds = open_flux_store(store)
    grid = Grid.of_dataset(ds)
    nee = np.asarray(pixel_mean_annual(ds, "NEE", start=start, end=end).values)
    _, lat = grid.lonlat()
    m = np.asarray(zones.eval(DOMAINS.get(domain, domain)).fillna(False).values, bool)
    ok = m & np.isfinite(nee)
    r, p = stats.pearsonr(np.asarray(lat)[ok], nee[ok])
    rows = [{"source": "upscaled pixels", "domain": domain, "r": float(r), "p_value": float(p),
             "n": int(ok.sum())}]
    if obs is not None:
        g = obs.dropna(subset=["NEE"]).groupby(["site_id", "year"])
        annual = g["NEE"].sum()[g["month"].nunique() == 12]
        site = annual.groupby(level="site_id").mean()
        lat_s = obs.groupby("site_id")["latitude"].mean().reindex(site.index)
        if len(site) > 2:
            r, p = stats.pearsonr(lat_s.to_numpy(), site.to_numpy())
            rows.append({"source": "in situ sites", "domain": domain, "r": float(r),
                         "p_value": float(p), "n": len(site)})
    return pd.DataFrame(rows)
