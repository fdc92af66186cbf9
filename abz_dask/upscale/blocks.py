"""Assembling forest rows from a block of the predictor cube, and predicting a block.

Row order is month-major and, within a month, row-major over the block's cells — the order in
which neighbouring rows are similar (good for branch prediction in the forest kernel) and in which
``month`` and ``co2`` are constant over a run of rows.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from abz_dask.predictors import PREDICTORS

__all__ = ["BlockRows", "block_rows", "scatter_rows"]


class BlockRows:
    """Raw predictor rows of a block: ``matrix`` (n_rows × 17, cube order) of the valid cells.

    Attributes
    ----------
    matrix : ndarray
        float32 rows, month-major; only cells with every predictor finite.
    valid : ndarray
        Boolean ``(nt, ny, nx)`` of the cells that have a row.
    month_slices : list of slice
        Rows of each time step.
    """

    def __init__(self, matrix: np.ndarray, valid: np.ndarray, month_slices: list[slice]):
        self.matrix = matrix
        self.valid = valid
        self.month_slices = month_slices


def block_rows(arrays: Mapping[str, np.ndarray], months: np.ndarray) -> BlockRows:
    """Build the rows of a block.

    Parameters
    ----------
    arrays : mapping
        Predictor name -> array: ``(nt, ny, nx)`` for monthly/annual, ``(ny, nx)`` for static,
        ``(nt,)`` for series; ``month`` is taken from ``months``.
    months : ndarray
        Calendar month (1–12) of each time step.
    """
    nt = len(months)
    shape = None
    for p in PREDICTORS:
        if p.kind in ("monthly", "annual"):
            shape = arrays[p.name].shape
            break
    assert shape is not None
    ny, nx = shape[1:]
    cols = []
    for p in PREDICTORS:
        if p.kind == "calendar":
            a = np.broadcast_to(np.asarray(months, np.float32)[:, None, None], (nt, ny, nx))
        elif p.kind == "series":
            a = np.broadcast_to(np.asarray(arrays[p.name], np.float32)[:, None, None],
                                (nt, ny, nx))
        elif p.kind == "static":
            a = np.broadcast_to(np.asarray(arrays[p.name], np.float32)[None], (nt, ny, nx))
        else:
            a = np.asarray(arrays[p.name], np.float32)
        cols.append(a)
    valid = np.ones((nt, ny, nx), dtype=bool)
    for a in cols:
        valid &= np.isfinite(a)
    matrix = np.empty((int(valid.sum()), len(cols)), dtype=np.float32)
    for j, a in enumerate(cols):
        matrix[:, j] = a[valid]
    counts = valid.reshape(nt, -1).sum(axis=1)
    edges = np.concatenate([[0], np.cumsum(counts)])
    return BlockRows(matrix, valid, [slice(int(edges[i]), int(edges[i + 1])) for i in range(nt)])


def scatter_rows(values: np.ndarray, rows: BlockRows, dtype: type = np.float32) -> np.ndarray:
    """Place row values back on the block ``(nt, ny, nx)`` (NaN where no row)."""
    out: np.ndarray = np.full(rows.valid.shape, np.nan, dtype=dtype)
    out[rows.valid] = values
    return out
