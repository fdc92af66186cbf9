"""Area shares of domains with significant trends, and the greening overlap (seed-spec §4.12).

Every share is area-weighted with the domain weights of
:func:`abz_dask.aggregation.budgets.domain_weights`
(exact cell area × land fraction inside the domain), so a share is a share of land area, not of
pixels. Shares are taken over the part of the domain where the trend is defined (``valid_km2``
reports that area); the functions return lazy ``xarray`` objects (one contraction over
``(y, x)`` per mask) that :func:`shares_table` turns into a table.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

__all__ = ["greening_overlap", "shares_table", "trend_area_shares"]


def _area(mask: xr.DataArray, weights: xr.DataArray) -> xr.DataArray:
    """Area (km²) of ``mask`` in each domain: a lazy contraction over ``(y, x)``."""
    mask, weights = xr.align(mask, weights, join="exact")  # same grid, or a clear error
    return xr.dot(mask.astype(np.float64), weights, dim=("y", "x")) * 1e-6


def _strip(da: xr.DataArray) -> xr.DataArray:
    """Drop non-index coordinates (``spatial_ref``, ...) that would clutter the results."""
    return da.drop_vars([c for c in da.coords if c not in da.dims])


def trend_area_shares(maps: xr.Dataset, variables: Sequence[str], weights: xr.DataArray,
                      alpha: float = 0.05) -> xr.Dataset:
    """Share of each domain's area with a significant negative / positive trend (lazy).

    Parameters
    ----------
    maps : xarray.Dataset
        Trend maps with ``<var>_trend`` and ``<var>_sig``
        (:func:`~abz_dask.analyses.maps.pixel_trends`).
    variables : sequence of str
        Series names, e.g. ``["NEE", "GPP", "Reco"]``. For NEE a negative trend is increasing
        uptake and a positive trend increasing emissions.
    weights : xarray.DataArray
        Domain weights ``(domain, y, x)`` in m².
    alpha : float
        Significance level (p < alpha).

    Returns
    -------
    xarray.Dataset
        ``(variable, domain)``: ``area_km2`` (domain), ``valid_km2`` (trend defined),
        ``share_sig_negative``, ``share_sig_positive``, ``share_negative``, ``share_positive``
        (fractions of ``valid_km2``).

    Raises
    ------
    KeyError
        If a variable's trend or p-value map is missing.
    """
    w = _strip(weights.astype(np.float64))
    rows = []
    for v in variables:
        for f in ("trend", "sig"):
            if f"{v}_{f}" not in maps:
                raise KeyError(f"trend maps have no variable {v}_{f!s} "
                               f"(have {sorted(map(str, maps.data_vars))})")
        tr, p = _strip(maps[f"{v}_trend"]), _strip(maps[f"{v}_sig"])
        valid = tr.notnull() & p.notnull()
        sig = valid & (p < alpha)
        valid_km2 = _area(valid, w)
        rows.append(xr.Dataset({
            "area_km2": _area(xr.ones_like(tr, dtype=bool), w),
            "valid_km2": valid_km2,
            "share_sig_negative": _area(sig & (tr < 0), w) / valid_km2,
            "share_sig_positive": _area(sig & (tr > 0), w) / valid_km2,
            "share_negative": _area(valid & (tr < 0), w) / valid_km2,
            "share_positive": _area(valid & (tr > 0), w) / valid_km2,
        }))
    out = xr.concat(rows, dim="variable").assign_coords(variable=list(variables))
    out.attrs.update(alpha=alpha, weights="cell area x land fraction inside the domain",
                     note="shares are fractions of valid_km2; NEE < 0 is uptake")
    return out


def greening_overlap(maps: xr.Dataset, weights: xr.DataArray, *, ndvi: str = "ndvi_JJA",
                     uptake: Sequence[str] = ("NEE", "NEE_JJA"),
                     alpha: float = 0.05) -> xr.Dataset:
    """Greening (significant positive JJA NDVI trend) and its overlap with rising uptake (lazy).

    Parameters
    ----------
    maps : xarray.Dataset
        Trend maps with ``<ndvi>_trend/_sig`` and ``<u>_trend/_sig`` for each ``u`` in ``uptake``.
    weights : xarray.DataArray
        Domain weights ``(domain, y, x)`` in m².
    ndvi : str
        Series name of the greening index (default: JJA mean NDVI).
    uptake : sequence of str
        NEE series whose negative trend is rising uptake (default: annual and JJA NEE).
    alpha : float
        Significance level.

    Returns
    -------
    xarray.Dataset
        ``(domain,)``: ``ndvi_valid_km2``, ``greening_km2``, ``greening_share`` and
        ``browning_share`` (of the valid NDVI area), and per ``u``:
        ``greening_with_sig_uptake_increase_<u>`` (share of the greening area where the ``u``
        trend is negative and significant) and ``greening_with_uptake_increase_<u>`` (negative,
        any significance).
    """
    w = _strip(weights.astype(np.float64))
    tr, p = _strip(maps[f"{ndvi}_trend"]), _strip(maps[f"{ndvi}_sig"])
    valid = tr.notnull() & p.notnull()
    green = valid & (p < alpha) & (tr > 0)
    brown = valid & (p < alpha) & (tr < 0)
    valid_km2 = _area(valid, w)
    green_km2 = _area(green, w)
    out = {"ndvi_valid_km2": valid_km2, "greening_km2": green_km2,
           "greening_share": green_km2 / valid_km2, "browning_share": _area(brown, w) / valid_km2}
    for u in uptake:
        ut, up = _strip(maps[f"{u}_trend"]), _strip(maps[f"{u}_sig"])
        out[f"greening_with_sig_uptake_increase_{u}"] = (
            _area(green & (up < alpha) & (ut < 0), w) / green_km2)
        out[f"greening_with_uptake_increase_{u}"] = _area(green & (ut < 0), w) / green_km2
    return xr.Dataset(out, attrs={"alpha": alpha, "greening": f"{ndvi} trend > 0, p < {alpha}"})


def shares_table(ds: xr.Dataset) -> pd.DataFrame:
    """Compute a shares Dataset and flatten it to a long table (one row per coordinate tuple)."""
    df = ds.compute().to_dataframe().reset_index()
    return df.drop(columns=[c for c in df.columns if c == "spatial_ref"])
