"""Per-pixel trend maps of several series and their atomic Zarr output."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from abz_dask.analyses.trends import FIELDS, Method, trend
from abz_dask.io.location import publish, remove, staging, url

__all__ = ["MAP_FIELDS", "finish_atomic", "pixel_trends", "write_zarr_atomic"]

#: zyp fields kept in trend maps by default (the rest follow from these or are rarely used).
MAP_FIELDS: tuple[str, ...] = ("trend", "sig", "tau", "lbound", "ubound", "nruns", "autocor",
                               "valid_frac", "intercept")


def pixel_trends(series: Mapping[str, xr.DataArray], *, method: Method = "zhang",
                 preserve_range: bool = True, alpha: float = 0.05,
                 fields: Sequence[str] = MAP_FIELDS,
                 dtype: type[np.floating[Any]] = np.float32) -> xr.Dataset:
    """zyp trend fields of every pixel for several ``(year, y, x)`` series (lazy).

    Each series is processed on its own years (``NEE + fire`` may cover fewer years than
    ``NEE``), so no series is padded with the missing years of another.

    Parameters
    ----------
    series : mapping of str to xarray.DataArray
        Name -> annual or seasonal series ``(year, y, x)`` with ``year`` in one chunk (see
        :func:`abz_dask.analyses.series.seasonal_series`).
    method, preserve_range, alpha
        As :func:`abz_dask.analyses.trends.trend` (default: zyp.zhang with preserve_range,
        DECISIONS 13).
    fields : sequence of str
        zyp fields to keep (default :data:`MAP_FIELDS`).
    dtype : numpy floating type
        Storage type of the maps (float32 halves the size; p-values keep 7 digits).

    Returns
    -------
    xarray.Dataset
        Variables ``<name>_<field>`` on ``(y, x)``; attributes of ``<name>_trend`` record the
        years used (``first_year``, ``last_year``, ``n_years``) and the season.

    Raises
    ------
    ValueError
        If a field is unknown or a series has no ``year`` dimension.
    """
    bad = [f for f in fields if f not in FIELDS]
    if bad:
        raise ValueError(f"unknown trend fields {bad}; known: {list(FIELDS)}")
    out: dict[str, xr.DataArray] = {}
    attrs: dict[str, Any] = {}
    for name, da in series.items():
        if "year" not in da.dims:
            raise ValueError(f"series {name!r} has no 'year' dimension (dims {da.dims})")
        res = trend(da, dim="year", method=method, preserve_range=preserve_range, alpha=alpha)
        attrs = dict(res.attrs)
        years = da["year"].values
        for f in fields:
            v = res[f].astype(dtype)
            v.attrs = dict(res[f].attrs)
            if "units" in v.attrs:
                v.attrs["units"] = v.attrs["units"].replace("step of year", "yr")
            v.attrs.update(series=name, first_year=int(years.min()),
                           last_year=int(years.max()), n_years=len(years))
            for k in ("season_months", "aggregation"):
                if k in da.attrs:
                    v.attrs[k] = da.attrs[k]
            out[f"{name}_{f}"] = v
    return xr.Dataset(out, attrs=attrs)


def write_zarr_atomic(ds: xr.Dataset, path: str | Path, *, compute: bool = True
                      ) -> Any:
    """Write ``ds`` to ``path`` (Zarr v3) through ``<path>.tmp`` and a rename.

    A killed write leaves only the temporary store, which the next call replaces, so ``path``
    exists only when complete. With ``compute=False`` the delayed write is returned and the
    caller must call :func:`finish_atomic` after computing it.
    """
    tmp = staging(path)
    remove(tmp)
    ds = ds.copy()
    for name, var in ds.data_vars.items():  # Zarr needs regular chunks (all but the last equal)
        if var.chunks and any(len(set(c[:-1])) > 1 or (len(c) > 1 and c[-1] > c[0])
                              for c in var.chunks):
            ds[name] = var.chunk({d: max(c) for d, c in zip(var.dims, var.chunks, strict=True)})
    encoding: dict[str, dict[str, Any]] = {}
    for name, var in ds.data_vars.items():
        enc: dict[str, Any] = {}
        if var.chunks:
            enc["chunks"] = tuple(c[0] for c in var.chunks)
        if np.issubdtype(var.dtype, np.floating):
            enc["_FillValue"] = np.nan
        encoding[str(name)] = enc
    if compute:
        ds.to_zarr(url(tmp), mode="w", zarr_format=3, consolidated=False, encoding=encoding)
        finish_atomic(path)
        return None
    return ds.to_zarr(url(tmp), mode="w", zarr_format=3, consolidated=False, encoding=encoding,
                      compute=False)


def finish_atomic(path: str | Path) -> None:
    """Move ``<path>.tmp`` to ``path`` (replacing an older ``path``; nothing to move on object
    storage, :func:`abz_dask.io.location.staging`)."""
    publish(path)
