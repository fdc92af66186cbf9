"""Spatial prediction: a lazy ``map_blocks`` API and the single-pass tile upscaler.

- :func:`predict` — thin xarray API: one model over a predictor cube, lazy until computed,
  block by block with ``dask.array.map_blocks``; the model is part of the graph once (or, on a
  ``distributed`` cluster, scattered once to every worker).
- :func:`run_upscale` — the production pass: central + bootstrap models × fluxes per tile,
  reduced in place, resumable (:mod:`abz_dask.upscale.tiles`).
"""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from abz_dask.io.predictors import PREDICTORS
from abz_dask.progress import active_client
from abz_dask.upscale.blocks import block_rows, scatter_rows
from abz_dask.upscale.models import CompiledModel, ModelSet, compile_bundle, ship
from abz_dask.upscale.results import (
    budget_table,
    covered_area,
    excluded_area_message,
    project_core_hours,
)
from abz_dask.upscale.tiles import UpscaleConfig, plan_upscale, run_upscale, upscale_tile

__all__ = ["CompiledModel", "ModelSet", "UpscaleConfig", "budget_table",
           "compile_bundle", "covered_area", "excluded_area_message", "plan_upscale", "predict",
           "project_core_hours", "run_upscale", "ship", "upscale_tile"]

_INPUTS = [p for p in PREDICTORS if p.kind != "calendar"]
_NAMES = [p.name for p in _INPUTS]


def _predict_block(model: CompiledModel, months: np.ndarray, *arrays: np.ndarray) -> np.ndarray:
    # every input arrives broadcast to the block (time, y, x): undo it for series and statics
    data = {p.name: a[:, 0, 0] if p.kind == "series" else a[0] if p.kind == "static" else a
            for p, a in zip(_INPUTS, arrays, strict=True)}
    rows = block_rows(data, months[:, 0, 0])
    return scatter_rows(model.predict(rows.matrix), rows, np.float32)


def predict(cube: xr.Dataset, model: CompiledModel, *, name: str | None = None) -> xr.DataArray:
    """Predict one model over every month and cell of a predictor cube (lazy).

    Parameters
    ----------
    cube : xr.Dataset
        Predictor cube (as opened from its Zarr store): monthly variables ``(time, y, x)``,
        static ``(y, x)``, series ``(time,)``; chunked with dask.
    model : CompiledModel
        A compiled forest (:func:`compile_bundle`).
    name : str, optional
        Name of the result (default: the model's flux).

    Returns
    -------
    xr.DataArray
        ``(time, y, x)`` float32 in g C m⁻² month⁻¹, NaN where any predictor is missing; backed by
        a dask array with the cube's chunks.
    """
    ref = cube[next(p.name for p in PREDICTORS if p.kind == "monthly")]
    if ref.chunks is None:
        raise ValueError("predict needs a dask-backed cube; open it with xr.open_zarr")
    ref = ref.transpose("time", "y", "x")
    arrays = [xr.broadcast(cube[n], ref)[0].transpose("time", "y", "x").data for n in _NAMES]
    arrays = [a if isinstance(a, da.Array) else da.from_array(a, chunks=ref.data.chunks)
              for a in arrays]
    arrays = [a.rechunk(ref.data.chunks) for a in arrays]
    months = da.broadcast_to(
        da.from_array(cube["time"].dt.month.values.astype(np.int8)[:, None, None],
                      chunks=(ref.data.chunks[0], 1, 1)),
        ref.shape, chunks=ref.data.chunks)
    shipped: Any = ship(model) if active_client() is not None else dask.delayed(model, pure=True)
    out = da.map_blocks(_predict_block, shipped, months, *arrays, dtype=np.float32,
                        chunks=ref.data.chunks, token=f"predict-{model.flux}")
    return xr.DataArray(out, coords=ref.coords, dims=ref.dims, name=name or model.flux,
                        attrs={"units": "g C m-2 month-1",
                               "long_name": f"upscaled {model.flux}"})
