"""Does a source raster overlap the grid? (Resampling itself: :mod:`abz_dask.geo.regrid`.)

The predictors of ``build-cube`` are resampled per output tile by centre binning
(:func:`abz_dask.geo.regrid.tile_map`: area-weighted average or mode of the source pixels whose
centre falls in a cell; bilinear / nearest at the cell centre where a cell holds no pixel centre).
This module holds the extent check made before any tile is read.
"""

from __future__ import annotations

import numpy as np
from pyproj import CRS, Transformer

from abz_dask.cube_build.sources import Geometry
from abz_dask.cube_build.validate import ExtentError
from abz_dask.geo.grid import Grid
from abz_dask.geo.regrid import pixel_coords

__all__ = ["check_overlap"]


def check_overlap(geom: Geometry, grid: Grid, *, name: str, path: object) -> None:
    """Raise :class:`ExtentError` if a source covers no cell of the grid's domain.

    A regular sample of the cell centres north of the grid's southern circle (every
    ``ny // 64``-th row and column) is transformed to the source CRS; a failed transformation (a
    CRS pair PROJ cannot relate) also raises.
    """
    step = max(1, grid.shape[0] // 64)
    gx, gy = np.meshgrid(grid.x[::step], grid.y[::step])
    keep = np.hypot(gx, gy) <= grid.half_width
    crs = CRS.from_wkt(geom.crs_wkt)
    try:
        sx, sy = Transformer.from_crs(grid.crs, crs, always_xy=True).transform(gx[keep],
                                                                               gy[keep])
    except Exception as e:  # pragma: no cover - PROJ failure modes vary
        raise ExtentError(f"{name}: {path}: cannot transform the grid to the file's CRS "
                          f"({e})") from e
    row, col = pixel_coords(geom, np.asarray(sx), np.asarray(sy))
    ny, nx = geom.shape
    inside = np.isfinite(row) & np.isfinite(col) & (row >= 0) & (row < ny) & (col >= 0) \
        & (col < nx)
    if not inside.any():
        t = geom.transform
        bounds = tuple(round(b, 3) for b in (t.c, t.f + t.e * ny, t.c + t.a * nx, t.f))
        raise ExtentError(f"{name}: {path} ({crs.name}, bounds {bounds}) does not overlap the "
                          f"{grid.name} grid north of {grid.south:g}N; wrong CRS or extent?")
