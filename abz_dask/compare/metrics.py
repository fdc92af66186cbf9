"""Map and budget comparisons of the upscaled NEE with other products (seed-spec §4.13).

All inputs are annual NEE maps on our grid, ``(year, y, x)`` in g C m⁻² yr⁻¹ (source positive),
e.g. :func:`~abz_dask.compare.products.to_annual` of a product regridded with
:func:`~abz_dask.geo.regrid.conservative`, or the annual sums of ``fluxes.zarr``.

* :func:`subtract_fire` — inversions see fire emissions; the paper removes them before comparing.
* :func:`map_correlation` — Pearson r (and its two-sided p) over the domain's pixels of two maps.
* :func:`compare_maps` — r of the mean maps and of the Theil–Sen trend maps
  (:func:`abz_dask.analyses.trends.trend`, Zhang prewhitening as everywhere in the package) over the
  common years, plus per-domain budgets and their ratios (the package's one domain aggregation,
  :func:`abz_dask.aggregation.zonal.domain_totals`).
"""

from __future__ import annotations

from typing import cast

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

from abz_dask.aggregation.units import TG_PER_G
from abz_dask.aggregation.zonal import domain_totals, pixel_area
from abz_dask.analyses.trends import trend

__all__ = ["annual_flux", "budgets", "compare_maps", "map_correlation", "mean_map",
           "subtract_fire", "trend_map"]


def annual_flux(monthly: xr.DataArray) -> xr.DataArray:
    """Annual sums ``(year, y, x)`` of a monthly ``(time, y, x)`` flux; incomplete years dropped."""
    from abz_dask.compare.products import to_annual

    return to_annual(monthly)


def subtract_fire(nee: xr.DataArray, fire_emissions: xr.DataArray) -> xr.DataArray:
    """NEE without fire: ``nee − fire`` on the years both cover.

    Parameters
    ----------
    nee : xr.DataArray
        Annual ``(year, y, x)`` NEE including fire emissions (g C m⁻² yr⁻¹), e.g. an inversion.
    fire_emissions : xr.DataArray
        Annual ``(year, y, x)`` fire emissions (g C m⁻² yr⁻¹, positive); NaN counts as no fire.

    Returns
    -------
    xr.DataArray
        On the common years only (years without fire data are dropped rather than left
        uncorrected).
    """
    years = np.intersect1d(nee["year"].values, fire_emissions["year"].values)
    if years.size == 0:
        raise ValueError(f"no common years between the product ({nee['year'].values.min()}–"
                         f"{nee['year'].values.max()}) and the fire emissions")
    fe = fire_emissions.sel(year=years).fillna(0.0)
    out = nee.sel(year=years) - fe.assign_coords(y=nee["y"], x=nee["x"])
    out.attrs = {**nee.attrs, "fire_removed": 1}
    out.name = nee.name
    return out


def mean_map(annual: xr.DataArray, years: np.ndarray | None = None) -> xr.DataArray:
    """Mean annual map over ``years`` (all years by default)."""
    a = annual if years is None else annual.sel(year=years)
    return a.mean("year")


def trend_map(annual: xr.DataArray, years: np.ndarray | None = None) -> xr.Dataset:
    """Theil–Sen slope (g C m⁻² yr⁻², ``trend``) and Mann–Kendall p (``sig``) per pixel."""
    a = annual if years is None else annual.sel(year=years)
    if a.chunks is not None:
        a = a.chunk({"year": -1})
    return trend(a, dim="year", method="zhang")[["trend", "sig"]]


def map_correlation(a: xr.DataArray, b: xr.DataArray, mask: xr.DataArray | None = None
                    ) -> dict[str, float]:
    """Pearson r of two maps over the pixels where both are finite (and ``mask`` is true).

    Returns
    -------
    dict
        ``r``, ``p`` (two-sided, :func:`scipy.stats.pearsonr`) and ``n`` pixels.
    """
    av = np.asarray(a.values, float).ravel()
    bv = np.asarray(b.values, float).ravel()
    ok = np.isfinite(av) & np.isfinite(bv)
    if mask is not None:
        ok &= np.asarray(mask.values, bool).ravel()
    n = int(ok.sum())
    if n < 3 or np.ptp(av[ok]) == 0 or np.ptp(bv[ok]) == 0:
        return {"r": float("nan"), "p": float("nan"), "n": n}
    res = stats.pearsonr(av[ok], bv[ok])
    return {"r": float(res.statistic), "p": float(res.pvalue), "n": n}


def budgets(annual: xr.DataArray, zones: xr.Dataset, cell_area: float,
            years: np.ndarray | None = None) -> pd.Series:
    """Mean annual budget (Tg C yr⁻¹) per domain; NaN pixels contribute nothing."""
    a = annual if years is None else annual.sel(year=years)
    return _domain_budgets(a, zones, cell_area).mean("year").compute().to_series()


def _domain_budgets(annual: xr.DataArray, zones: xr.Dataset, cell_area: float) -> xr.DataArray:
    """Annual budgets (Tg C yr⁻¹) per domain of annual maps (g C m⁻² yr⁻¹), lazy; NaN pixels
    contribute nothing (:func:`~abz_dask.aggregation.zonal.domain_totals`)."""
    z = zones.assign_coords(y=annual["y"], x=annual["x"])
    tot = cast("xr.DataArray", domain_totals(annual.fillna(0.0).astype(np.float64), z,
                                             pixel_area(z, cell_area)))  # of a DataArray
    return tot * TG_PER_G


def _lazy_corr(a: xr.DataArray, b: xr.DataArray, mask: xr.DataArray) -> dict[str, xr.DataArray]:
    ok = np.isfinite(a) & np.isfinite(b) & mask
    av = a.where(ok, 0.0).astype(np.float64)
    bv = b.where(ok, 0.0).astype(np.float64)
    return {"n": ok.sum(), "sa": av.sum(), "sb": bv.sum(), "saa": (av * av).sum(),
            "sbb": (bv * bv).sum(), "sab": (av * bv).sum()}


def _finish_corr(s: dict[str, float]) -> dict[str, float]:
    """Pearson r from sums; two-sided p from the t distribution with n − 2 df (as pearsonr)."""
    n = float(s["n"])
    if n < 3:
        return {"r": float("nan"), "p": float("nan"), "n": int(n)}
    cov = s["sab"] - s["sa"] * s["sb"] / n
    va = s["saa"] - s["sa"] ** 2 / n
    vb = s["sbb"] - s["sb"] ** 2 / n
    if va <= 0 or vb <= 0:
        return {"r": float("nan"), "p": float("nan"), "n": int(n)}
    r = float(np.clip(cov / np.sqrt(va * vb), -1.0, 1.0))
    if abs(r) == 1.0:
        return {"r": r, "p": 0.0, "n": int(n)}
    t = r * np.sqrt((n - 2) / (1 - r * r))
    return {"r": r, "p": float(2 * stats.t.sf(abs(t), n - 2)), "n": int(n)}


def compare_maps(reference: xr.DataArray, products: dict[str, xr.DataArray], zones: xr.Dataset,
                 cell_area: float, *, mask: xr.DataArray | None = None,
                 min_trend_years: int = 5) -> pd.DataFrame:
    """Correlations of mean and trend maps and budget ratios of products vs a reference.

    Everything is one lazy graph per product (mean maps, trend maps, correlation sums and
    domain budgets) computed with a single :func:`dask.compute`, so memory stays bounded by
    the chunks: the correlations are accumulated from sums (Σa, Σb, Σa², Σb², Σab, n) rather
    than from materialised maps.

    Parameters
    ----------
    reference : xr.DataArray
        Annual ``(year, y, x)`` NEE of the reference (the upscaled product).
    products : dict of str to xr.DataArray
        Annual NEE maps of the other products on the same grid.
    zones : xr.Dataset
        Zone layers of the grid (domains and land fraction).
    cell_area : float
        Grid cell area (m²).
    mask : xr.DataArray, optional
        Pixels used in the correlations (default: ``zones.abz`` with land).
    min_trend_years : int
        Trend maps are only correlated when at least this many common years exist.

    Returns
    -------
    DataFrame
        One row per product and domain: ``product, first_year, last_year, n_years,
        r_mean, p_mean, n_pixels, r_trend, p_trend, domain, reference_tg_c_yr,
        product_tg_c_yr, ratio`` (product / reference budget over the common years).
    """
    import dask

    if mask is None:
        mask = zones["abz"].astype(bool) & (zones["land_fraction"] > 0)
    mask = mask.assign_coords(y=reference["y"], x=reference["x"])
    rows = []
    for name, prod in products.items():
        prod = prod.assign_coords(y=reference["y"], x=reference["x"])
        years = np.intersect1d(reference["year"].values, prod["year"].values)
        if years.size == 0:
            raise ValueError(f"product {name!r} shares no year with the reference")
        ref_y = reference.sel(year=years)
        prod_y = prod.sel(year=years)
        graph: dict[str, object] = {
            "mean": _lazy_corr(mean_map(ref_y), mean_map(prod_y), mask),
            "b_ref": _domain_budgets(ref_y, zones, cell_area).mean("year"),
            "b_prod": _domain_budgets(prod_y, zones, cell_area).mean("year")}
        if years.size >= min_trend_years:
            graph["trend"] = _lazy_corr(trend_map(ref_y)["trend"], trend_map(prod_y)["trend"],
                                        mask)
        (res,) = dask.compute(graph)
        cm = _finish_corr({k: float(v) for k, v in res["mean"].items()})
        tr = (_finish_corr({k: float(v) for k, v in res["trend"].items()}) if "trend" in res
              else {"r": float("nan"), "p": float("nan")})
        b_ref = res["b_ref"].to_series()
        b_prod = res["b_prod"].to_series()
        for dom in b_ref.index:
            rows.append({"product": name, "first_year": int(years[0]),
                         "last_year": int(years[-1]), "n_years": int(years.size),
                         "r_mean": cm["r"], "p_mean": cm["p"], "n_pixels": cm["n"],
                         "r_trend": tr["r"], "p_trend": tr["p"], "domain": str(dom),
                         "reference_tg_c_yr": float(b_ref[dom]),
                         "product_tg_c_yr": float(b_prod[dom]),
                         "ratio": float(b_prod[dom] / b_ref[dom]) if b_ref[dom] != 0
                         else float("nan")})
    return pd.DataFrame(rows)
