"""Annual and seasonal series per pixel, the inputs of every trend analysis.

All functions are lazy on dask-backed input and work chunk by chunk: a monthly ``(time, y, x)``
array is reduced to ``(year, y, x)`` without touching other chunks, and the (small) reduced array
is then put in one chunk along ``year`` so that :func:`abz_dask.analyses.trends.trend` can run on
it.
Memory is bounded by ``n_months × chunk area``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr

__all__ = ["SEASONS", "nee_plus_fire", "season_months", "seasonal_series", "whole_years"]

#: Named seasons (calendar months): summer = JJA (DECISIONS 9); shoulder seasons spring = April–May
#: and autumn = September–October (DECISIONS 10).
SEASONS: dict[str, tuple[int, ...]] = {
    "annual": tuple(range(1, 13)),
    "JJA": (6, 7, 8),
    "spring": (4, 5),
    "autumn": (9, 10),
}


def season_months(season: str | Sequence[int]) -> tuple[int, ...]:
    """Calendar months of a named season (:data:`SEASONS`) or of an explicit list of months.

    Raises
    ------
    ValueError
        If the name is unknown or a month is outside 1..12 or repeated.
    """
    if isinstance(season, str):
        if season not in SEASONS:
            raise ValueError(f"unknown season {season!r}; known: {sorted(SEASONS)} "
                             "(or pass a list of months)")
        return SEASONS[season]
    months = tuple(int(m) for m in season)
    if not months or len(set(months)) != len(months) or not all(1 <= m <= 12 for m in months):
        raise ValueError(f"months must be distinct integers in 1..12, got {list(season)}")
    return tuple(sorted(months))


def whole_years(time: pd.DatetimeIndex | xr.DataArray, months: Sequence[int] = SEASONS["annual"],
                start: int | None = None, end: int | None = None) -> np.ndarray:
    """Years in ``start..end`` for which every month of ``months`` is present exactly once."""
    t = pd.DatetimeIndex(np.asarray(time))
    keep = np.isin(t.month, list(months))
    if start is not None:
        keep &= t.year >= start
    if end is not None:
        keep &= t.year <= end
    counts = pd.Series(t.year[keep]).value_counts()
    full = [y for y, c in counts.items()
            if c == len(months) and set(t.month[keep & (t.year == y)]) == set(months)]
    return np.sort(np.asarray(full, dtype=np.int64))


def seasonal_series(da: xr.DataArray, months: str | Sequence[int] = "annual", *,
                    start: int | None = None, end: int | None = None,
                    how: Literal["sum", "mean"] = "sum", dim: Hashable = "time") -> xr.DataArray:
    """Per-pixel sum (fluxes) or mean (predictors) over the given months of every year.

    Parameters
    ----------
    da : xarray.DataArray
        Monthly data with a datetime dimension ``dim`` (e.g. a flux ``(time, y, x)`` in
        g C m⁻² month⁻¹, or a predictor).
    months : str or sequence of int, default "annual"
        A named season of :data:`SEASONS` or calendar months (within one calendar year).
    start, end : int, optional
        First and last year (default: all whole years of ``da``).
    how : {"sum", "mean"}
        ``"sum"`` for fluxes (g C m⁻² per season), ``"mean"`` for predictors.
    dim : hashable
        The time dimension.

    Returns
    -------
    xarray.DataArray
        ``(year, ...)`` float64, NaN for a pixel-year with any missing month; lazy when ``da`` is,
        with ``year`` in a single chunk. Only years with every selected month are kept.

    Raises
    ------
    ValueError
        If ``dim`` is missing or no whole year lies in ``start..end``.
    """
    if dim not in da.dims:
        raise ValueError(f"seasonal_series: {da.name!r} has no dimension {dim!r} "
                         f"(dims {da.dims})")
    if how not in ("sum", "mean"):
        raise ValueError(f"how must be 'sum' or 'mean', got {how!r}")
    mon = season_months(months)
    t = pd.DatetimeIndex(da[dim].values)
    years = whole_years(t, mon, start, end)
    if len(years) == 0:
        raise ValueError(f"{da.name!r}: no year in {start}..{end} has all months {list(mon)}")
    order = np.argsort(t.values, kind="stable")
    sel = order[np.isin(t.year[order], years) & np.isin(t.month[order], mon)]
    sub = da.isel({dim: sel}).astype(np.float64)
    k = len(mon)
    if sub.chunks is not None:
        axis = sub.get_axis_num(dim)
        if any(c % k for c in sub.chunks[axis]):
            sub = sub.chunk({dim: k})  # one season per chunk: a merge of small pieces only
    red = sub.coarsen({dim: k}, boundary="exact")
    out = red.reduce(np.sum if how == "sum" else np.mean)  # NaN-propagating: no skipna
    out = out.rename({dim: "year"}).assign_coords(year=("year", years))
    if out.chunks is not None:
        out = out.chunk({"year": -1})
    units = da.attrs.get("units")
    attrs = {"season_months": list(mon), "aggregation": how}
    if units is not None:
        per = "yr-1" if len(mon) == 12 else "season-1"
        attrs["units"] = units.replace("month-1", per) if how == "sum" else units
    return out.assign_attrs(attrs).rename(da.name)


def nee_plus_fire(nee: xr.DataArray, fire_emissions: xr.DataArray,
                  land_fraction: xr.DataArray) -> xr.DataArray:
    """Annual NEE + fire emissions per m² of land, for the years with fire data.

    Parameters
    ----------
    nee : xarray.DataArray
        Annual NEE ``(year, y, x)`` in g C m⁻² yr⁻¹ (per m² of land).
    fire_emissions : xarray.DataArray
        Annual fire emissions ``(year, y, x)`` in g C m⁻² **of cell area** yr⁻¹ (the twin's
        ``fire.zarr``). Missing values count as no fire.
    land_fraction : xarray.DataArray
        Land fraction of each cell ``(y, x)``; emissions are divided by it so that
        ``Σ (NEE + fire) × cell area × land fraction`` adds the emitted mass exactly once.

    Returns
    -------
    xarray.DataArray
        ``(year, y, x)`` over the years common to both inputs, NaN where NEE is missing.

    Raises
    ------
    ValueError
        If the two inputs share no year.
    """
    common = np.intersect1d(nee["year"].values, fire_emissions["year"].values)
    if len(common) == 0:
        raise ValueError(f"NEE years {nee['year'].values.min()}..{nee['year'].values.max()} and "
                         "fire years do not overlap")
    lf = land_fraction.where(land_fraction > 0)
    fire = (fire_emissions.sel(year=common).fillna(0.0).astype(np.float64) / lf).fillna(0.0)
    fire = fire.drop_vars([c for c in fire.coords if c not in ("year", "y", "x")])
    out = nee.sel(year=common) + fire.transpose(*[d for d in nee.dims if d in fire.dims])
    if out.chunks is not None:
        out = out.chunk({"year": -1})
    return out.assign_attrs(units="g C m-2 yr-1", long_name="NEE + fire emissions").rename(
        "NEE_fire")
