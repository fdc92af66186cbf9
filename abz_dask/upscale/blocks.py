"""Assembling forest rows from a block of the predictor cube, and predicting a block.

Row order is month-major and, within a month, row-major over the block's cells — the order in
which neighbouring rows are similar (good for branch prediction in the forest kernel) and in which
``month`` and ``co2`` are constant over a run of rows.

The columns are a predictor set in its order — the paper's 17 by default, or a model card's set
(:attr:`abz_dask.upscale.models.ModelSet.predictors`, read with :func:`block_arrays`) — and the
matrix carries their names (:class:`NamedRows`), so a compiled model picks its columns by name
and refuses rows that lack one of its predictors. A cell has a row when every predictor of the
set is finite there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from abz_dask.io.predictors import PREDICTORS, Predictor

__all__ = ["BlockRows", "NamedRows", "block_arrays", "block_rows", "scatter_rows"]


class NamedRows(np.ndarray):
    """A 2-D float32 row matrix that carries the names of its columns (``names``).

    Row selections (``rows[mask]``) keep the names; any plain array is accepted where a
    :class:`NamedRows` is, with the names unknown.
    """

    names: tuple[str, ...]

    def __new__(cls, array: np.ndarray, names: Sequence[str]) -> NamedRows:
        """View ``array`` with column ``names``."""
        obj = np.asarray(array).view(cls)
        obj.names = tuple(names)
        return obj

    def __array_finalize__(self, obj: Any) -> None:
        self.names = getattr(obj, "names", ())


def block_arrays(cube: Any, predictors: Sequence[Predictor], time: slice, ys: slice, xs: slice
                 ) -> dict[str, np.ndarray]:
    """Read the stored predictors of a set for a block of the cube.

    Parameters
    ----------
    cube : xr.Dataset
        Predictor cube (lazily opened).
    predictors : sequence of Predictor
        The set (``calendar`` predictors are skipped: they come from the time coordinate).
    time, ys, xs : slice
        The block's time steps, rows and columns.

    Returns
    -------
    dict
        Name -> ``(t, ny, nx)``, ``(ny, nx)`` or ``(t,)`` array, as :func:`block_rows` takes.
    """
    out = {}
    for p in predictors:
        if p.kind == "calendar":
            continue
        v = cube[p.name]
        v = v.isel(time=time) if "time" in v.dims else v
        v = v.isel(y=ys, x=xs) if "y" in v.dims else v
        out[p.name] = np.asarray(v.values)
    return out


class BlockRows:
    """Raw predictor rows of a block: ``matrix`` (n_rows × predictors) of the valid cells.

    Attributes
    ----------
    matrix : NamedRows
        float32 rows, month-major, one column per predictor of the set (``matrix.names``);
        only cells with every predictor finite.
    valid : ndarray
        Boolean ``(nt, ny, nx)`` of the cells that have a row.
    month_slices : list of slice
        Rows of each time step.
    """

    def __init__(self, matrix: np.ndarray, valid: np.ndarray, month_slices: list[slice]):
        self.matrix = matrix
        self.valid = valid
        self.month_slices = month_slices


def block_rows(arrays: Mapping[str, np.ndarray], months: np.ndarray,
               predictors: Sequence[Predictor] | None = None) -> BlockRows:
    """Build the rows of a block.

    Parameters
    ----------
    arrays : mapping
        Predictor name -> array: ``(nt, ny, nx)`` for monthly/annual, ``(ny, nx)`` for static,
        ``(nt,)`` for series; ``month`` is taken from ``months``.
    months : ndarray
        Calendar month (1–12) of each time step.
    predictors : sequence of Predictor, optional
        The columns, in order (default: the paper's 17,
        :data:`~abz_dask.io.predictors.PREDICTORS`).
    """
    preds = tuple(PREDICTORS if predictors is None else predictors)
    nt = len(months)
    shape = None
    for p in preds:
        if p.kind in ("monthly", "annual"):
            shape = arrays[p.name].shape[1:]
            break
        if p.kind == "static":
            shape = arrays[p.name].shape
    if shape is None:
        raise ValueError(f"the predictor set {[p.name for p in preds]} has no gridded "
                         "(monthly, annual or static) predictor: no cells to predict")
    ny, nx = shape
    cols = []
    for p in preds:
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
    matrix = NamedRows(np.empty((int(valid.sum()), len(cols)), dtype=np.float32),
                       [p.name for p in preds])
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
