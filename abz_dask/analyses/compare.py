"""Agreement of estimated trend maps with reference (e.g. planted-truth) trend maps."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

__all__ = ["map_agreement", "trend_class"]


def trend_class(maps: xr.Dataset, name: str, alpha: float = 0.05) -> xr.DataArray:
    """-1 significant negative, 0 not significant, +1 significant positive; NaN without data."""
    tr, p = maps[f"{name}_trend"], maps[f"{name}_sig"]
    cls = xr.where(p < alpha, np.sign(tr), 0.0)
    return cls.where(tr.notnull() & p.notnull())


def map_agreement(est: xr.Dataset, ref: xr.Dataset, variables: Sequence[str],
                  weights: xr.DataArray, alpha: float = 0.05) -> xr.Dataset:
    """Area-weighted agreement of two sets of trend maps per domain (lazy).

    Returns
    -------
    xarray.Dataset
        ``(variable, domain)``: ``class_agreement`` (share of the area with both maps defined
        where the significance class — significant negative, not significant, significant
        positive — is the same) and ``trend_corr`` (area-weighted Pearson correlation of the
        slopes over that area).
    """
    w = weights.astype(np.float64)
    w = w.drop_vars([c for c in w.coords if c not in w.dims])
    rows = []
    for v in variables:
        a = est[f"{v}_trend"].astype(np.float64)
        b = ref[f"{v}_trend"].astype(np.float64)
        ca, cb = trend_class(est, v, alpha), trend_class(ref, v, alpha)
        a, b, ca, cb, ww = xr.align(a, b, ca, cb, w, join="exact")
        both = (ca.notnull() & cb.notnull()).astype(np.float64)
        a0, b0 = a.fillna(0.0) * both, b.fillna(0.0) * both

        def wsum(x: xr.DataArray, ww: xr.DataArray = ww) -> xr.DataArray:
            return xr.dot(x, ww, dim=("y", "x"))

        n = wsum(both)
        ma, mb = wsum(a0) / n, wsum(b0) / n
        cov = wsum(a0 * b0) / n - ma * mb
        va = wsum(a0 * a0) / n - ma * ma
        vb = wsum(b0 * b0) / n - mb * mb
        same = ((ca == cb) & (both > 0)).astype(np.float64)
        ds = xr.Dataset({"class_agreement": wsum(same) / n,
                         "trend_corr": cov / np.sqrt(va * vb)})
        rows.append(ds.drop_vars([c for c in ds.coords if c not in ds.dims]))
    return xr.concat(rows, dim="variable").assign_coords(variable=list(variables))
