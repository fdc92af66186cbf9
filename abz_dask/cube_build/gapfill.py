"""Gap filling of monthly series (NDVI-like predictors) along time, cell by cell.

Method, applied to the monthly values after temporal aggregation and resampling:

1. **Linear in time**: a run of at most ``max_gap`` missing months with valid months on both
   sides is interpolated linearly between them (in month steps).
2. **Seasonal climatology**: every other missing month (longer runs, the start and end of the
   series) gets the mean of the valid values of the same calendar month in the other years.
3. Cells without any valid value (outside the data's footprint) are left missing and not
   counted; months whose climatology is also missing stay missing and are counted as
   ``unfilled``.

The report counts cell-months per method.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fill_gaps"]


def fill_gaps(values: np.ndarray, months: np.ndarray, max_gap: int = 2
              ) -> tuple[np.ndarray, dict[str, int]]:
    """Fill missing months of ``values`` along axis 0.

    Parameters
    ----------
    values : ndarray
        ``(time, ...)`` monthly values with NaN gaps.
    months : ndarray
        Calendar month (1–12) of every time step.
    max_gap : int
        Longest run of missing months filled linearly.

    Returns
    -------
    ndarray, dict
        Filled copy (float32 stays float32, else float64) and
        ``{"linear": n, "climatology": n, "unfilled": n}`` (cell-months).
    """
    v = np.asarray(values)
    shape = v.shape
    nt = shape[0]
    flat = v.reshape(nt, -1).astype(np.result_type(v.dtype, np.float32))  # a copy
    report = {"linear": 0, "climatology": 0, "unfilled": 0}
    for c0 in range(0, flat.shape[1], _CELLS):  # cell blocks bound the index arrays
        rep = _fill_block(flat[:, c0:c0 + _CELLS], np.asarray(months), max_gap)
        for k, n in rep.items():
            report[k] += n
    return flat.reshape(shape), report


_CELLS = 8192


def _fill_block(flat: np.ndarray, months: np.ndarray, max_gap: int) -> dict[str, int]:
    """Fill ``flat`` (time, cells) in place."""
    nt = flat.shape[0]
    valid = np.isfinite(flat)
    any_valid = valid.any(axis=0)
    gaps = ~valid & any_valid[None, :]
    report = {"linear": 0, "climatology": 0, "unfilled": 0}
    if not gaps.any():
        return report
    t = np.arange(nt)[:, None]
    prev = np.where(valid, t, -1)
    prev = np.maximum.accumulate(prev, axis=0)
    nxt = np.where(valid, t, nt)
    nxt = np.minimum.accumulate(nxt[::-1], axis=0)[::-1]
    interior = gaps & (prev >= 0) & (nxt < nt)
    run = nxt - prev - 1
    lin = interior & (run <= max_gap)
    if lin.any():
        ii, jj = np.nonzero(lin)
        p, n = prev[ii, jj], nxt[ii, jj]
        w = (ii - p) / (n - p)
        flat[ii, jj] = flat[p, jj] * (1 - w) + flat[n, jj] * w
        report["linear"] = int(lin.sum())
    rest = gaps & ~lin
    if rest.any():
        clim = np.full((12, flat.shape[1]), np.nan)
        for m in range(1, 13):
            sel = months == m
            if sel.any():
                obs = np.where(valid[sel], flat[sel], np.nan)
                cnt = valid[sel].sum(axis=0)
                with np.errstate(invalid="ignore"):
                    clim[m - 1] = np.where(cnt > 0, np.nansum(obs, axis=0) / np.maximum(cnt, 1),
                                           np.nan)
        ii, jj = np.nonzero(rest)
        fillv = clim[months[ii] - 1, jj]
        flat[ii, jj] = fillv
        ok = np.isfinite(fillv)
        report["climatology"] = int(ok.sum())
        report["unfilled"] = int((~ok).sum())
    return report
