"""Resampling a source raster (any CRS) onto one output tile of the polar LAEA grid.

Method (per output tile, per source georeferencing):

1. The tile's cell corners are transformed to the source CRS; their pixel bounding box (+1 pixel)
   is the **source window** — the only part of the file ever read for this tile. For lon/lat
   sources, a tile holding the pole or crossing the antimeridian reads the full width of its
   latitude band.
2. The window is read in **strips** of at most :data:`STRIP_PIXELS` pixels. Every source pixel
   centre is projected to the grid and binned into the output cell that contains it (the
   cell-centre rule of the grid); ``average`` is the area-weighted mean of the valid pixels of a
   cell (weight cos(latitude) for lon/lat sources, 1 for projected ones), ``mode`` the most
   frequent code (area-weighted; ties to the smaller code).
3. Output cells that contain **no** source pixel centre (the source is coarser than the grid) are
   sampled at the cell centre instead: bilinear for ``average`` (nearest when a neighbour is
   missing), nearest for ``mode``.

Memory per tile: one strip (≤ STRIP_PIXELS float64 values) plus, per source pixel whose centre
falls inside the tile, 12 bytes (two int32 indices and a float32 weight) — set by the output tile
and the source pixel size, never by the size of the source file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pyproj import CRS, Transformer

from abz_dask.cube_build.sources import Geometry
from abz_dask.cube_build.validate import ExtentError
from abz_dask.geo.grid import Grid
from abz_dask.io.store import Tile

__all__ = ["STRIP_PIXELS", "TileMap", "check_overlap", "tile_map"]

#: Largest number of source pixels read at once.
STRIP_PIXELS = 1 << 18


@dataclass
class _Strip:
    rows: tuple[int, int]
    pix: np.ndarray  # flat index into the strip window (rows x window cols)
    cell: np.ndarray  # flat index into the tile
    weight: np.ndarray


@dataclass
class TileMap:
    """How the pixels of one source georeferencing feed the cells of one tile."""

    shape: tuple[int, int]
    window: tuple[int, int, int, int]  # row0, row1, col0, col1 of the source window
    strips: list[_Strip]
    sample_cell: np.ndarray  # tile cells with no pixel centre
    sample_ij: np.ndarray  # (n, 2) int: top-left source pixel of the bilinear stencil
    sample_f: np.ndarray  # (n, 2) float: fractional offsets within the stencil

    @property
    def empty(self) -> bool:
        """The tile does not overlap the source."""
        return not self.strips

    def apply(self, read: Callable[[tuple[int, int], tuple[int, int]], np.ndarray], *,
              mode: bool, legend: list[int] | None = None,
              check: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
        """Resample one source time step onto the tile.

        Parameters
        ----------
        read : callable
            ``read((row0, row1), (col0, col1))`` -> decoded float array of the window.
        mode : bool
            Categorical (mode) instead of average.
        legend : list of int, optional
            Codes of a categorical layer (required with ``mode``).
        check : callable, optional
            Called with every decoded strip (range / legend validation).

        Returns
        -------
        ndarray
            ``(ny, nx)`` float64 of the tile, NaN where there is no data.
        """
        ncell = self.shape[0] * self.shape[1]
        out = np.full(ncell, np.nan)
        if self.empty:
            return out.reshape(self.shape)
        codes = np.asarray(legend if legend is not None else [], dtype=float)
        counts = np.zeros((ncell, codes.size)) if mode else np.zeros((0, 0))
        sums = np.zeros(ncell)
        wsum = np.zeros(ncell)
        _, w1, c0, c1 = self.window
        nsamp = self.sample_cell.size
        stencil = np.full((nsamp, 2, 2), np.nan)
        i0, j0 = self.sample_ij[:, 0], self.sample_ij[:, 1]
        for s in self.strips:
            a, b = s.rows
            block = read((a, min(b + 1, w1)), (c0, c1))
            if check is not None:
                check(block[: b - a])
            if nsamp:
                sel = (i0 >= a) & (i0 < b)
                for di in (0, 1):
                    ii = np.minimum(i0[sel] + di, w1 - 1) - a
                    for dj in (0, 1):
                        jj = np.minimum(j0[sel] + dj, c1 - 1) - c0
                        stencil[sel, di, dj] = block[ii, jj]
            v = block[: b - a].reshape(-1)[s.pix]
            ok = np.isfinite(v)
            if not ok.any():
                continue
            if mode:
                k = np.searchsorted(codes, v[ok]).clip(0, max(codes.size - 1, 0))
                np.add.at(counts, (s.cell[ok], k), s.weight[ok])
            else:
                sums += np.bincount(s.cell[ok], weights=s.weight[ok] * v[ok], minlength=ncell)
                wsum += np.bincount(s.cell[ok], weights=s.weight[ok], minlength=ncell)
        if mode:
            have = counts.sum(axis=1) > 0
            out[have] = codes[np.argmax(counts[have], axis=1)]
        else:
            have = wsum > 0
            out[have] = sums[have] / wsum[have]
        if nsamp:
            out[self.sample_cell] = _stencil_value(stencil, self.sample_f, mode)
        return out.reshape(self.shape)


def _stencil_value(v: np.ndarray, f: np.ndarray, mode: bool) -> np.ndarray:
    """Bilinear (continuous; nearest when a corner is missing) or nearest (mode) value."""
    n = v.shape[0]
    fr, fc = f[:, 0], f[:, 1]
    nearest = v[np.arange(n), (fr >= 0.5).astype(int), (fc >= 0.5).astype(int)]
    if mode:
        return nearest
    bil = (v[:, 0, 0] * (1 - fr) * (1 - fc) + v[:, 0, 1] * (1 - fr) * fc
           + v[:, 1, 0] * fr * (1 - fc) + v[:, 1, 1] * fr * fc)
    return np.where(np.isfinite(bil), bil, nearest)


def _pixel_coords(geom: Geometry, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fractional (row, col) of source-CRS points (lon wrapped for lon/lat sources)."""
    inv = ~geom.transform
    if CRS.from_wkt(geom.crs_wkt).is_geographic:
        x0 = geom.transform.c
        width = geom.transform.a * geom.shape[1]
        if abs(width) >= 359.0:
            x = x0 + np.mod(x - x0, 360.0)
    col, row = inv @ (x, y)
    return np.asarray(row), np.asarray(col)


def _to_source(grid: Grid, geom: Geometry) -> Transformer:
    return Transformer.from_crs(grid.crs, CRS.from_wkt(geom.crs_wkt), always_xy=True)


def tile_map(geom: Geometry, grid: Grid, tile: Tile) -> TileMap:
    """Build the :class:`TileMap` of a source georeferencing for one tile."""
    ty, tx = tile.shape
    res, hw = grid.resolution, grid.half_width
    fwd = _to_source(grid, geom)
    # cell corners of the tile
    cx = -hw + np.arange(tile.col0, tile.col1 + 1) * res
    cy = hw - np.arange(tile.row0, tile.row1 + 1) * res
    gx, gy = np.meshgrid(cx, cy)
    sx, sy = fwd.transform(gx.ravel(), gy.ravel())
    sx, sy = np.asarray(sx), np.asarray(sy)
    ok = np.isfinite(sx) & np.isfinite(sy)
    ny, nx = geom.shape
    nothing = TileMap((ty, tx), (0, 0, 0, 0), [], np.zeros(0, np.int64),
                      np.zeros((0, 2), np.int64), np.zeros((0, 2)))
    if not ok.any():
        return nothing
    row, col = _pixel_coords(geom, sx[ok], sy[ok])
    geographic = CRS.from_wkt(geom.crs_wkt).is_geographic
    pole = (cx[0] <= 0 <= cx[-1]) and (cy[-1] <= 0 <= cy[0])
    if geographic:
        lon = sx[ok]
        wide = pole or bool(np.ptp(lon) > 180)  # pole or antimeridian: whole band
        if pole:
            prow, _ = _pixel_coords(geom, np.array([0.0]), np.array([90.0]))
            row = np.concatenate([row, prow])
    else:
        wide = False
    r0 = max(int(np.floor(np.nanmin(row))) - 1, 0)
    r1 = min(int(np.ceil(np.nanmax(row))) + 1, ny)
    if wide:
        c0, c1 = 0, nx
    else:
        c0 = max(int(np.floor(np.nanmin(col))) - 1, 0)
        c1 = min(int(np.ceil(np.nanmax(col))) + 1, nx)
    if r1 <= r0 or c1 <= c0:
        return nothing
    back = Transformer.from_crs(CRS.from_wkt(geom.crs_wkt), grid.crs, always_xy=True)
    width = c1 - c0
    step = max(1, STRIP_PIXELS // width)
    strips: list[_Strip] = []
    covered = np.zeros(ty * tx, bool)
    t = geom.transform
    for a in range(r0, r1, step):
        b = min(a + step, r1)
        jj, ii = np.meshgrid(np.arange(c0, c1) + 0.5, np.arange(a, b) + 0.5)
        px, py = t @ (jj.ravel(), ii.ravel())
        gx2, gy2 = back.transform(np.asarray(px), np.asarray(py))
        gcol = np.floor((np.asarray(gx2) + hw) / res) - tile.col0
        grow = np.floor((hw - np.asarray(gy2)) / res) - tile.row0
        inside = np.isfinite(gcol) & np.isfinite(grow) & (gcol >= 0) & (gcol < tx) \
            & (grow >= 0) & (grow < ty)
        pix = np.flatnonzero(inside).astype(np.int32)
        cell = (grow[inside] * tx + gcol[inside]).astype(np.int32)
        if geographic:
            w = np.cos(np.deg2rad(np.asarray(py)[inside])).clip(1e-6, None).astype(np.float32)
        else:
            w = np.ones(pix.size, np.float32)
        strips.append(_Strip((a, b), pix, cell, w))
        covered[cell] = True
    missing = np.flatnonzero(~covered)
    ij = np.zeros((0, 2), np.int64)
    fr = np.zeros((0, 2))
    if missing.size:
        mx = -hw + (tile.col0 + missing % tx + 0.5) * res
        my = hw - (tile.row0 + missing // tx + 0.5) * res
        qx, qy = fwd.transform(mx, my)
        qr, qc = _pixel_coords(geom, np.asarray(qx), np.asarray(qy))
        inside = np.isfinite(qr) & np.isfinite(qc) & (qr >= r0) & (qr < r1) & (qc >= c0) \
            & (qc < c1)
        missing = missing[inside]
        u, v = qr[inside] - 0.5, qc[inside] - 0.5
        i0 = np.clip(np.floor(u), r0, max(r0, r1 - 2)).astype(np.int64)
        j0 = np.clip(np.floor(v), c0, max(c0, c1 - 2)).astype(np.int64)
        ij = np.stack([i0, j0], axis=1)
        fr = np.stack([np.clip(u - i0, 0, 1), np.clip(v - j0, 0, 1)], axis=1)
    if not missing.size:
        strips = [s for s in strips if s.pix.size]
    if not covered.any() and not missing.size:
        strips = []
    return TileMap((ty, tx), (r0, r1, c0, c1), strips, missing, ij, fr)


def check_overlap(geom: Geometry, grid: Grid, *, name: str, path: object) -> None:
    """Raise :class:`ExtentError` if a source covers no cell of the grid's domain.

    Every 8th cell centre north of the grid's southern circle is transformed to the source CRS;
    a failed transformation (a CRS pair PROJ cannot relate) also raises.
    """
    step = max(1, grid.shape[0] // 64)
    x = grid.x[::step]
    y = grid.y[::step]
    gx, gy = np.meshgrid(x, y)
    keep = np.hypot(gx, gy) <= grid.half_width
    try:
        sx, sy = _to_source(grid, geom).transform(gx[keep], gy[keep])
    except Exception as e:  # pragma: no cover - PROJ failure modes vary
        raise ExtentError(f"{name}: {path}: cannot transform the grid to the file's CRS "
                          f"({e})") from e
    row, col = _pixel_coords(geom, np.asarray(sx), np.asarray(sy))
    ny, nx = geom.shape
    inside = np.isfinite(row) & np.isfinite(col) & (row >= 0) & (row < ny) & (col >= 0) \
        & (col < nx)
    if not inside.any():
        crs = CRS.from_wkt(geom.crs_wkt)
        t = geom.transform
        bounds = tuple(round(b, 3) for b in (t.c, t.f + t.e * ny, t.c + t.a * nx, t.f))
        raise ExtentError(f"{name}: {path} ({crs.name}, bounds {bounds}) does not overlap the "
                          f"{grid.name} grid north of {grid.south:g}N; wrong CRS or extent?")
