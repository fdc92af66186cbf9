"""Every regridding of the package: rasters of any CRS onto the polar LAEA grid, and back.

Methods (pick by the source and what the values mean):

* :func:`tile_map` / :class:`TileMap` — **centre binning** for sources finer than the grid (the
  build-cube predictors, user zone rasters): every source pixel centre is projected to the grid
  and binned into the cell that contains it; ``average`` is the area-weighted mean of the valid
  pixels of a cell, ``mode`` the most frequent code (area-weighted; ties to the smaller code).
  Cells holding no pixel centre (a source coarser than the grid) are sampled at the cell centre
  with :func:`bilinear` (nearest where a corner is missing) or nearest (``mode``).
* :func:`conservative` — **conservative, supersampled** for coarse lon/lat products (comparisons):
  each target cell is split into ``s × s`` sub-cells of equal true area (the grid is equal-area),
  each assigned to the source cell holding its centre; the target value is the overlap-weighted
  mean of the valid source values.
* :func:`mass_sum` — **mass-conserving sum** for amounts (fire emissions, burned area): each
  source cell's amount (density × its true area, or an amount per cell) is split over ``k × k``
  sub-cells in proportion to their true areas and summed into the cell holding each sub-cell
  centre; the output is per m² of target cell. A burned *fraction* given as the density comes out
  as the area-weighted mean burned fraction of the target cell (cells outside the source or NaN
  count as unburned).
* :class:`Supersample` — ``k × k`` sample points per cell of a grid window (equal true areas) with
  their lon/lat and the cell mean of per-sample values: the sampling rule of
  :mod:`abz_dask.geo.geodata`.
* :func:`grid_sampler` — the twin grid sampled at the pixel centres of another raster (nearest
  cell; :mod:`abz_dask.twin.export`).

One area formula: the true area of a lon/lat cell on the WGS84 ellipsoid (:func:`latlon_cell_area`,
authalic-latitude band formula, exact); projected sources use the projected area divided by the
projection's areal scale factor (:func:`source_cell_area`). One cell-edges helper
(:func:`cell_edges`), one bilinear helper (:func:`bilinear`) and one mode helper
(:func:`weighted_mode`).

Laziness: :func:`conservative` and :func:`mass_sum` return dask arrays chunked by output tile
(``grid.tiles``); a task holds one output tile, the source window that feeds it and its
sub-samples, never a full-grid array. :func:`tile_map` works on one output tile by construction.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal, Protocol, cast

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp
import xarray as xr
from affine import Affine
from pyproj import CRS, Proj, Transformer

from abz_dask.geo.grid import CRS_LAEA, Grid, default_tile

__all__ = [
    "STRIP_PIXELS",
    "WGS84_A",
    "WGS84_F",
    "Georef",
    "GridSampler",
    "Supersample",
    "TileMap",
    "TileWindow",
    "Window",
    "bilinear",
    "cell_edges",
    "conservative",
    "default_supersample",
    "georef_of",
    "grid_sampler",
    "latlon_cell_area",
    "mass_sum",
    "mass_sum_tile",
    "pixel_coords",
    "source_amount",
    "source_cell_area",
    "source_window",
    "tile_map",
    "tile_windows",
    "weighted_mode",
]

WGS84_A = 6378137.0
WGS84_F = 1.0 / 298.257223563
#: Largest number of source pixels read at once by :class:`TileMap`.
STRIP_PIXELS = 1 << 18
#: Largest number of sub-cells handled at once by :func:`mass_sum`.
MAX_SUBCELLS = 1 << 21


class Georef(Protocol):
    """Georeferencing of a raster: an odc-geo ``GeoBox`` or anything with the same three fields."""

    @property
    def crs(self) -> Any: ...  # pragma: no cover

    @property
    def transform(self) -> Affine: ...  # pragma: no cover

    @property
    def shape(self) -> tuple[int, int]: ...  # pragma: no cover


class Window(Protocol):
    """A window ``[row0:row1, col0:col1]`` of the grid (e.g. :class:`abz_dask.io.store.Tile`)."""

    @property
    def row0(self) -> int: ...  # pragma: no cover

    @property
    def row1(self) -> int: ...  # pragma: no cover

    @property
    def col0(self) -> int: ...  # pragma: no cover

    @property
    def col1(self) -> int: ...  # pragma: no cover


@dataclass(frozen=True)
class TileWindow:
    """One output tile ``[row0:row1, col0:col1]`` of :meth:`Grid.tiles` (a :class:`Window`)."""

    row0: int
    row1: int
    col0: int
    col1: int

    @property
    def slices(self) -> tuple[slice, slice]:
        """Row and column slices."""
        return slice(self.row0, self.row1), slice(self.col0, self.col1)


def tile_windows(grid: Grid, tile: int) -> list[list[TileWindow]]:
    """The grid's output tiles (``grid.tiles(tile)``, odc-geo ``GeoboxTiles``) as rows of
    :class:`TileWindow`."""
    gt = grid.tiles(tile)
    nty, ntx = gt.shape
    out = []
    for i in range(nty):
        row = []
        for j in range(ntx):
            ry, rx = gt.roi[i, j]
            row.append(TileWindow(ry.start, ry.stop, rx.start, rx.stop))
        out.append(row)
    return out


def _crs(g: Georef) -> CRS:
    c = g.crs
    wkt = getattr(g, "crs_wkt", None)
    return CRS.from_wkt(wkt) if isinstance(wkt, str) else CRS.from_user_input(c)


def georef_of(src: xr.DataArray) -> Any:
    """The odc-geo ``GeoBox`` of a raster DataArray with a CRS (rioxarray ``spatial_ref``)."""
    import rioxarray  # noqa: F401  (registers .rio)
    from odc.geo.geobox import GeoBox

    if src.rio.crs is None:
        raise ValueError(f"raster {src.name!r} has no CRS")
    return GeoBox((src.sizes["y"], src.sizes["x"]), src.rio.transform(),
                  CRS.from_user_input(src.rio.crs).to_wkt())


# --------------------------------------------------------------------------------------------
# edges, areas, bilinear, mode


def cell_edges(centres: np.ndarray, *, clip: tuple[float, float] | None = None) -> np.ndarray:
    """Cell edges (n + 1) of strictly monotonic cell centres: midpoints, half steps outside.

    Parameters
    ----------
    centres : ndarray
        1-D, ascending or descending, at least 2 values.
    clip : (float, float), optional
        Bounds to clip the edges to (``(-90, 90)`` for latitudes).
    """
    c = np.asarray(centres, dtype=float)
    if c.ndim != 1 or c.size < 2:
        raise ValueError(f"need ≥ 2 monotonic 1-D cell centres, got shape {c.shape}")
    d = np.diff(c)
    if not (np.all(d > 0) or np.all(d < 0)):
        raise ValueError("cell centres must be strictly monotonic")
    mid = 0.5 * (c[1:] + c[:-1])
    e = np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])
    return np.clip(e, *clip) if clip is not None else e


def _authalic_q(lat_deg: np.ndarray) -> np.ndarray:
    e2 = WGS84_F * (2 - WGS84_F)
    e = math.sqrt(e2)
    s = np.sin(np.deg2rad(np.clip(np.asarray(lat_deg, float), -90.0, 90.0)))
    return (1 - e2) * (s / (1 - e2 * s**2) - np.log((1 - e * s) / (1 + e * s)) / (2 * e))


def latlon_cell_area(lat_edges: np.ndarray, lon_edges: np.ndarray) -> np.ndarray:
    """True area (m², WGS84 ellipsoid) of lon/lat cells, shape ``(nlat, nlon)``.

    Authalic band formula ``A = a²/2 · |Δλ| · |q(φ₂) − q(φ₁)|`` with
    ``q(φ) = (1 − e²) [sin φ / (1 − e² sin² φ) − ln((1 − e sin φ)/(1 + e sin φ)) / (2e)]``:
    exact on the ellipsoid (the whole ellipsoid: 5.10066 × 10¹⁴ m²). Edges may be ascending or
    descending; latitudes are clipped to ±90°.
    """
    q = _authalic_q(lat_edges)
    dlon = np.deg2rad(np.abs(np.diff(np.asarray(lon_edges, float))))
    return 0.5 * WGS84_A**2 * np.abs(np.diff(q))[:, None] * dlon[None, :]


def _affine(t: Affine, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``t @ (x, y)`` on arrays (affine's own arithmetic, so results match it bit for bit)."""
    u, v = cast(Any, t) @ (x, y)
    return np.asarray(u), np.asarray(v)


def _window_area(g: Georef, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """True area (m²) of the pixels ``[r0:r1, c0:c1]`` of a regular raster."""
    t = g.transform
    crs = _crs(g)
    if crs.is_geographic:
        lat_e = t.f + t.e * np.arange(r0, r1 + 1, dtype=float)
        lon_e = t.c + t.a * np.arange(c0, c1 + 1, dtype=float)
        return latlon_cell_area(lat_e, lon_e)
    jj, ii = np.meshgrid(np.arange(c0, c1), np.arange(r0, r1))
    return _projected_area(g, ii, jj)


def _projected_area(g: Georef, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """True area (m²) of the pixels ``(rows, cols)`` of a projected raster: the projected pixel
    area divided by the projection's areal scale factor at the pixel centre."""
    t = g.transform
    x, y = _affine(t, np.asarray(cols) + 0.5, np.asarray(rows) + 0.5)
    proj = Proj(_crs(g))
    lon, lat = proj(np.asarray(x), np.asarray(y), inverse=True)
    scale = np.asarray(proj.get_factors(lon, lat).areal_scale, float)
    px = abs(t.a * t.e - t.b * t.d)
    return px / np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)


def source_cell_area(src: xr.DataArray | Georef) -> np.ndarray:
    """True area (m²) of every pixel ``(y, x)`` of a raster (module docstring)."""
    g = georef_of(src) if isinstance(src, xr.DataArray) else src
    ny, nx = g.shape
    return _window_area(g, 0, int(ny), 0, int(nx))


def bilinear(field: np.ndarray, fy: np.ndarray, fx: np.ndarray, *, wrap_x: bool = True,
             nearest_fallback: bool = False) -> np.ndarray:
    """Bilinear interpolation of ``field[..., ny, nx]`` at fractional indices ``(fy, fx)``.

    Index ``i`` is the centre of row/column ``i``; ``fy`` is clipped to ``[0, ny − 1]``; columns
    wrap (``wrap_x``, a global longitude axis) or are clipped to ``[0, nx − 1]``. Weights are in
    the field's floating precision (float32 for a float32 field).

    Parameters
    ----------
    field : ndarray
        ``(..., ny, nx)``, ``ny ≥ 2``.
    fy, fx : ndarray
        Fractional row and column indices (same shape).
    wrap_x : bool
        Periodic columns.
    nearest_fallback : bool
        Where the result is not finite (a corner is NaN), return the nearest corner instead.
    """
    ny, nx = field.shape[-2:]
    wdt = np.result_type(field.dtype, np.float32)
    fy = np.clip(fy, 0.0, ny - 1.0)
    if not wrap_x:
        fx = np.clip(fx, 0.0, nx - 1.0)
    j0 = np.minimum(np.floor(fy).astype(np.int64), ny - 2)
    wy = (fy - j0).astype(wdt)
    i0f = np.floor(fx)
    wx = (fx - i0f).astype(wdt)
    i0 = i0f.astype(np.int64) % nx if wrap_x else np.clip(i0f.astype(np.int64), 0, nx - 1)
    i1 = (i0 + 1) % nx if wrap_x else np.minimum(i0 + 1, nx - 1)
    flat = field.reshape(*field.shape[:-2], ny * nx)
    a = j0 * nx
    b = (j0 + 1) * nx
    out = (flat[..., a + i0] * ((1 - wy) * (1 - wx)) + flat[..., a + i1] * ((1 - wy) * wx)
           + flat[..., b + i0] * (wy * (1 - wx)) + flat[..., b + i1] * (wy * wx))
    out = np.asarray(out)
    if nearest_fallback:
        near = flat[..., np.where(wy >= 0.5, b, a) + np.where(wx >= 0.5, i1, i0)]
        out = np.where(np.isfinite(out), out, near)
    return out


def weighted_mode(cell: np.ndarray, code: np.ndarray, ncell: int, ncode: int,
                  weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Most frequent (weighted) code index per cell; ties go to the smaller index.

    Parameters
    ----------
    cell, code : ndarray of int
        Cell index (``< ncell``) and code index (``< ncode``) of every sample.
    ncell, ncode : int
        Number of cells and codes.
    weight : ndarray, optional
        Weight of every sample (default 1).

    Returns
    -------
    mode : ndarray of int64, shape (ncell,)
        Code index of the largest total weight (0 where a cell has no sample).
    have : ndarray of bool
        Cells with at least one sample of positive weight.
    """
    idx = np.asarray(cell, np.int64) * ncode + np.asarray(code, np.int64)
    counts = np.bincount(idx, weights=weight, minlength=ncell * ncode).reshape(ncell, ncode)
    have = counts.sum(axis=1) > 0
    mode = counts.argmax(axis=1)
    mode[~have] = 0
    return mode, have


# --------------------------------------------------------------------------------------------
# supersampling of grid cells


@dataclass
class Supersample:
    """``k × k`` sample points of the grid cells rows ``ra:rb``, columns ``c0:c1``.

    Samples sit at the centres of a regular ``k × k`` sub-grid of every (equal-area) cell, so each
    stands for the same true area and the cell mean of an indicator is an area fraction.
    ``cellwise=False`` (the geodata rule) steps the samples from the window's corner;
    ``cellwise=True`` offsets them from each cell's corner, so a sample's coordinates do not
    depend on the window (output tiles of any size give bit-identical results).
    """

    grid: Grid
    ra: int
    rb: int
    c0: int
    c1: int
    k: int
    cellwise: bool = False

    @property
    def step(self) -> float:
        """Sample spacing (m)."""
        return self.grid.resolution / self.k

    @property
    def x0(self) -> float:
        """Left edge of the window (m)."""
        return float(self.grid.x[self.c0] - self.grid.resolution / 2)

    @property
    def y0(self) -> float:
        """Top edge of the window (m)."""
        return float(self.grid.y[self.ra] + self.grid.resolution / 2)

    @property
    def shape(self) -> tuple[int, int]:
        """Samples ``(rows, cols)``."""
        return ((self.rb - self.ra) * self.k, (self.c1 - self.c0) * self.k)

    @property
    def transform(self) -> Affine:
        """Affine transform of the sample raster (pixel = one sample)."""
        return Affine(self.step, 0.0, self.x0, 0.0, -self.step, self.y0)

    @cached_property
    def lonlat(self) -> tuple[np.ndarray, np.ndarray]:
        """Longitude and latitude (degrees) of every sample, shape :attr:`shape`."""
        ny, nx = self.shape
        xs: np.ndarray
        ys: np.ndarray
        if self.cellwise:
            res = self.grid.resolution
            off = (np.arange(self.k) + 0.5) / self.k * res
            xs = (self.grid.x[self.c0:self.c1][:, None] - res / 2 + off[None, :]).ravel()
            ys = (self.grid.y[self.ra:self.rb][:, None] + res / 2 - off[None, :]).ravel()
        else:
            xs = self.x0 + (np.arange(nx) + 0.5) * self.step
            ys = self.y0 - (np.arange(ny) + 0.5) * self.step
        xx, yy = np.broadcast_arrays(xs[None, :], ys[:, None])
        lon, lat = _to_lonlat().transform(xx, yy)
        return np.asarray(lon), np.asarray(lat)

    def mean(self, v: np.ndarray) -> np.ndarray:
        """Cell means of per-sample values ``(..., ny*k, nx*k)``."""
        k = self.k
        lead = v.shape[:-2]
        nr, nc = self.rb - self.ra, self.c1 - self.c0
        return v.reshape(*lead, nr, k, nc, k).mean(axis=(-3, -1), dtype=np.float64)

    def cell_index(self) -> np.ndarray:
        """Flat cell index (within the window) of every sample."""
        k = self.k
        nr, nc = self.rb - self.ra, self.c1 - self.c0
        idx = np.arange(nr * nc).reshape(nr, 1, nc, 1)
        return np.broadcast_to(idx, (nr, k, nc, k)).reshape(nr * k, nc * k)

    def mode(self, codes: np.ndarray, valid: np.ndarray, ncode: int) -> np.ndarray:
        """Most frequent code ``0..ncode-1`` among the valid samples of each cell (smallest code
        on ties; 0 where a cell has none), shape ``(rows, cols)``."""
        nr, nc = self.rb - self.ra, self.c1 - self.c0
        m, _ = weighted_mode(self.cell_index()[valid], codes[valid], nr * nc, ncode)
        return m.reshape(nr, nc)


@functools.lru_cache(maxsize=1)
def _to_lonlat() -> Transformer:
    return Transformer.from_crs(CRS_LAEA, "EPSG:4326", always_xy=True)


# --------------------------------------------------------------------------------------------
# source windows of an output tile


def pixel_coords(g: Georef, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fractional ``(row, col)`` of source-CRS points (lon wrapped for global lon/lat sources)."""
    t = g.transform
    if _crs(g).is_geographic and abs(t.a * g.shape[1]) >= 359.0:
        x = t.c + np.mod(x - t.c, 360.0)
    col, row = _affine(~t, x, y)
    return np.asarray(row), np.asarray(col)


def source_window(g: Georef, grid: Grid, w: Window, densify: int = 1
                   ) -> tuple[int, int, int, int] | None:
    """Source pixel window ``(r0, r1, c0, c1)`` holding everything that maps into the tile: the
    bounding box + 1 pixel of the tile's outline (cell corners, each cell edge split ``densify``
    times; a smooth map has its extremes on the outline), the whole width for a lon/lat tile
    holding the pole or crossing the antimeridian; None when the tile misses the source."""
    res, left, top = grid.resolution, grid.left, grid.top
    src_crs = _crs(g)
    fwd = Transformer.from_crs(grid.crs, src_crs, always_xy=True)
    cx = left + np.arange(w.col0, w.col1 + 1) * res
    cy = top - np.arange(w.row0, w.row1 + 1) * res
    ex = left + np.linspace(w.col0, w.col1, (w.col1 - w.col0) * densify + 1) * res
    ey = top - np.linspace(w.row0, w.row1, (w.row1 - w.row0) * densify + 1) * res
    gx = np.concatenate([ex, ex, np.full(ey.size, cx[0]), np.full(ey.size, cx[-1])])
    gy = np.concatenate([np.full(ex.size, cy[0]), np.full(ex.size, cy[-1]), ey, ey])
    sx, sy = fwd.transform(gx, gy)
    sx, sy = np.asarray(sx), np.asarray(sy)
    ok = np.isfinite(sx) & np.isfinite(sy)
    if not ok.any():
        return None
    row, col = pixel_coords(g, sx[ok], sy[ok])
    ny, nx = g.shape
    wide = False
    if src_crs.is_geographic:
        pole = (cx[0] <= 0 <= cx[-1]) and (cy[-1] <= 0 <= cy[0])
        wide = pole or bool(np.ptp(sx[ok]) > 180)
        if pole:
            prow, _ = pixel_coords(g, np.array([0.0]), np.array([90.0]))
            row = np.concatenate([row, prow])
    r0 = max(int(np.floor(np.nanmin(row))) - 1, 0)
    r1 = min(int(np.ceil(np.nanmax(row))) + 1, int(ny))
    if wide:
        c0, c1 = 0, int(nx)
    else:
        c0 = max(int(np.floor(np.nanmin(col))) - 1, 0)
        c1 = min(int(np.ceil(np.nanmax(col))) + 1, int(nx))
    if r1 <= r0 or c1 <= c0:
        return None
    return r0, r1, c0, c1


def _row_weights(g: Georef, rows: np.ndarray) -> np.ndarray:
    """Relative true area (float32) of the pixels of lon/lat source rows: the ellipsoidal band
    area per radian of pixel height, ≈ cos(latitude) (one scale for the whole source)."""
    t = g.transform
    q = _authalic_q(t.f + t.e * np.stack([rows, rows + 1.0]))
    return (np.abs(q[1] - q[0]) / math.radians(abs(t.e))).astype(np.float32)


# --------------------------------------------------------------------------------------------
# centre binning (fine sources) with a bilinear / nearest fallback (coarse sources)


@dataclass
class _Strip:
    rows: tuple[int, int]
    pix: np.ndarray  # flat index into the strip window (rows x window cols)
    cell: np.ndarray  # flat index into the tile
    weight: np.ndarray


@dataclass
class TileMap:
    """How the pixels of one source georeferencing feed the cells of one output tile.

    Memory: per strip at most :data:`STRIP_PIXELS` source values, plus 12 bytes per source pixel
    whose centre falls in the tile — set by the tile and the pixel size, not the file size.
    """

    shape: tuple[int, int]
    window: tuple[int, int, int, int]  # row0, row1, col0, col1 of the source window
    strips: list[_Strip]
    sample_cell: np.ndarray  # tile cells with no pixel centre
    sample_fy: np.ndarray  # fractional source row of their centres (window-clamped)
    sample_fx: np.ndarray  # fractional source column

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
        cells: list[np.ndarray] = []
        kidx: list[np.ndarray] = []
        wts: list[np.ndarray] = []
        sums = np.zeros(ncell)
        wsum = np.zeros(ncell)
        _, w1, c0, c1 = self.window
        samp = np.full(self.sample_cell.size, np.nan)
        i0 = np.floor(self.sample_fy).astype(np.int64)
        for s in self.strips:
            a, b = s.rows
            block = read((a, min(b + 1, w1)), (c0, c1))
            if check is not None:
                check(block[: b - a])
            sel = (i0 >= a) & (i0 < b)
            if sel.any():
                f = block if block.shape[0] >= 2 else np.concatenate([block, block])
                fy, fx = self.sample_fy[sel] - a, self.sample_fx[sel] - c0
                if mode:  # nearest
                    samp[sel] = f[np.minimum(np.floor(fy + 0.5).astype(np.int64), f.shape[0] - 1),
                                  np.minimum(np.floor(fx + 0.5).astype(np.int64), f.shape[1] - 1)]
                else:
                    samp[sel] = bilinear(f, fy, fx, wrap_x=False, nearest_fallback=True)
            v = block[: b - a].reshape(-1)[s.pix]
            ok = np.isfinite(v)
            if not ok.any():
                continue
            if mode:
                cells.append(s.cell[ok])
                kidx.append(np.searchsorted(codes, v[ok]).clip(0, max(codes.size - 1, 0)))
                wts.append(s.weight[ok].astype(np.float64))
            else:
                sums += np.bincount(s.cell[ok], weights=s.weight[ok] * v[ok], minlength=ncell)
                wsum += np.bincount(s.cell[ok], weights=s.weight[ok], minlength=ncell)
        if mode:
            if cells:
                m, have = weighted_mode(np.concatenate(cells), np.concatenate(kidx), ncell,
                                        codes.size, np.concatenate(wts))
                out[have] = codes[m[have]]
        else:
            have = wsum > 0
            out[have] = sums[have] / wsum[have]
        if self.sample_cell.size:
            out[self.sample_cell] = samp
        return out.reshape(self.shape)


def tile_map(src: Georef, grid: Grid, tile: Window) -> TileMap:
    """Build the :class:`TileMap` of a source georeferencing for one output tile.

    Parameters
    ----------
    src : Georef
        The source raster's georeferencing (odc-geo ``GeoBox`` or a ``Geometry``).
    grid : Grid
        Target grid.
    tile : Window
        The output tile (``row0, row1, col0, col1``).
    """
    ty, tx = tile.row1 - tile.row0, tile.col1 - tile.col0
    res, left, top = grid.resolution, grid.left, grid.top
    nothing = TileMap((ty, tx), (0, 0, 0, 0), [], np.zeros(0, np.int64), np.zeros(0),
                      np.zeros(0))
    win = source_window(src, grid, tile)
    if win is None:
        return nothing
    r0, r1, c0, c1 = win
    src_crs = _crs(src)
    geographic = src_crs.is_geographic
    back = Transformer.from_crs(src_crs, grid.crs, always_xy=True)
    width = c1 - c0
    step = max(1, STRIP_PIXELS // width)
    strips: list[_Strip] = []
    covered = np.zeros(ty * tx, bool)
    t = src.transform
    for a in range(r0, r1, step):
        b = min(a + step, r1)
        jj, ii = np.meshgrid(np.arange(c0, c1) + 0.5, np.arange(a, b) + 0.5)
        px, py = _affine(t, jj.ravel(), ii.ravel())
        gx2, gy2 = back.transform(np.asarray(px), np.asarray(py))
        gcol = np.floor((np.asarray(gx2) - left) / res) - tile.col0
        grow = np.floor((top - np.asarray(gy2)) / res) - tile.row0
        inside = np.isfinite(gcol) & np.isfinite(grow) & (gcol >= 0) & (gcol < tx) \
            & (grow >= 0) & (grow < ty)
        pix = np.flatnonzero(inside).astype(np.int32)
        cell = (grow[inside] * tx + gcol[inside]).astype(np.int32)
        if geographic:
            w = np.repeat(_row_weights(src, np.arange(a, b, dtype=float)), width)[inside]
        else:
            w = np.ones(pix.size, np.float32)
        strips.append(_Strip((a, b), pix, cell, w))
        covered[cell] = True
    missing = np.flatnonzero(~covered)
    fy = fx = np.zeros(0)
    if missing.size:
        fwd = Transformer.from_crs(grid.crs, src_crs, always_xy=True)
        mx = left + (tile.col0 + missing % tx + 0.5) * res
        my = top - (tile.row0 + missing // tx + 0.5) * res
        qx, qy = fwd.transform(mx, my)
        qr, qc = pixel_coords(src, np.asarray(qx), np.asarray(qy))
        inside = np.isfinite(qr) & np.isfinite(qc) & (qr >= r0) & (qr < r1) & (qc >= c0) \
            & (qc < c1)
        missing = missing[inside]
        fy = np.clip(qr[inside] - 0.5, r0, max(r0, r1 - 1))
        fx = np.clip(qc[inside] - 0.5, c0, max(c0, c1 - 1))
    if not missing.size:
        strips = [s for s in strips if s.pix.size]
    if not covered.any() and not missing.size:
        strips = []
    return TileMap((ty, tx), (r0, r1, c0, c1), strips, missing, fy, fx)


# --------------------------------------------------------------------------------------------
# lazy per-output-tile assembly


def _lead_chunks(n: int, chunks: tuple[int, ...] | None, default: int = 12) -> list[tuple[int,
                                                                                            int]]:
    sizes = chunks if chunks else tuple([default] * (n // default) + ([n % default] if n %
                                                                       default else []))
    out, s = [], 0
    for c in sizes:
        out.append((s, s + c))
        s += c
    return out


# --------------------------------------------------------------------------------------------
# conservative supersampled (coarse lon/lat products)

_CACHE: OrderedDict[tuple[Any, ...], tuple[sp.csr_matrix, np.ndarray]] = OrderedDict()
_CACHE_MAX = 64


def default_supersample(grid: Grid, lat: np.ndarray, lon: np.ndarray) -> int:
    """Sub-cells per target-cell side: ≈ 3 per source-cell width at 75°N, between 2 and 16."""
    dlat = float(np.median(np.abs(np.diff(lat))))
    dlon = float(np.median(np.abs(np.diff(lon))))
    spacing = 111_320.0 * min(dlat, dlon * math.cos(math.radians(75.0)))
    return int(np.clip(math.ceil(3.0 * grid.resolution / spacing), 2, 16))


def _overlap_weights(grid: Grid, w: TileWindow, lat_edges: np.ndarray, lon_edges: np.ndarray,
                     s: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """Sparse ``(tile cells, used source cells)`` overlap fractions and the used source indices."""
    key = (grid.resolution, grid.n_half, grid.extent, w, s, lat_edges.tobytes(),
           lon_edges.tobytes())
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    sub = Supersample(grid, w.row0, w.row1, w.col0, w.col1, s, cellwise=True)
    lon, lat = (a.ravel() for a in sub.lonlat)
    nlat, nlon = lat_edges.size - 1, lon_edges.size - 1
    i = np.searchsorted(lat_edges, lat, side="right") - 1
    i = np.where(lat == lat_edges[-1], nlat - 1, i)
    lonw = (lon - lon_edges[0]) % 360.0 + lon_edges[0]
    j = np.searchsorted(lon_edges, lonw, side="right") - 1
    ok = (i >= 0) & (i < nlat) & (j >= 0) & (j < nlon) & np.isfinite(lat)
    tgt = sub.cell_index().ravel()[ok]
    src = (i * nlon + j)[ok]
    used, src_local = np.unique(src, return_inverse=True)
    ncell = (w.row1 - w.row0) * (w.col1 - w.col0)
    m = sp.csr_matrix((np.full(tgt.size, 1.0 / s**2), (tgt, src_local)),
                      shape=(ncell, used.size))
    m.sum_duplicates()
    _CACHE[key] = (m, used)
    if len(_CACHE) > _CACHE_MAX:
        _CACHE.popitem(last=False)
    return m, used


def _conservative_tile(values: np.ndarray, grid: Grid, w: TileWindow, lat_edges: np.ndarray,
                       lon_edges: np.ndarray, s: int) -> np.ndarray:
    m, used = _overlap_weights(grid, w, lat_edges, lon_edges, s)
    nt = values.shape[0]
    v = values.reshape(nt, -1)[:, used].astype(np.float64)
    valid = np.isfinite(v)
    num = (m @ np.where(valid, v, 0.0).T).T
    den = (m @ valid.T.astype(np.float64)).T
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 1e-12, num / den, np.nan)
    return out.reshape(nt, w.row1 - w.row0, w.col1 - w.col0).astype(np.float32)


def conservative(src: xr.DataArray, grid: Grid, *, tile: int | None = None,
                 supersample: int | None = None) -> xr.DataArray:
    """Regrid a lon/lat field area-conservatively to the grid (lazy, per output tile).

    Every target cell is split into ``s × s`` sub-cells of equal true area; the weight of a source
    cell in a target cell is the share of sub-cell centres it holds (≈ the overlap fraction); the
    target value is the overlap-weighted mean of the valid (finite) source values. A constant stays
    exactly constant; Σ value × area is conserved up to the sub-sampling error of the cell
    boundaries (≲ 0.1 % over the domain, ``tests/test_compare_regrid.py``); where only part of a
    cell is covered by valid source cells the mean is over that part (right for per-land fluxes).

    Parameters
    ----------
    src : xr.DataArray
        Dims ``(lat, lon)`` or ``(T, lat, lon)`` for one leading dim ``T``, latitude and
        longitude ascending; longitudes in degrees (any range; wrapped). Source cell edges are
        the midpoints of the centres (:func:`cell_edges`).
    grid : Grid
        Target grid.
    tile : int, optional
        Output chunk edge (cells); default :func:`~abz_dask.geo.grid.default_tile`.
    supersample : int, optional
        Sub-cells per target-cell side (default :func:`default_supersample`).

    Returns
    -------
    xr.DataArray
        ``(T, y, x)`` or ``(y, x)`` float32 on the grid, chunked ``(T chunk, tile, tile)``, NaN
        where no valid source value overlaps; attributes copied, plus ``regrid_method`` and
        ``regrid_supersample``.
    """
    if "lat" not in src.dims or "lon" not in src.dims:
        raise ValueError(f"conservative regridding needs dims lat and lon, got {src.dims}")
    lead = [d for d in src.dims if d not in ("lat", "lon")]
    if len(lead) > 1:
        raise ValueError(f"conservative regridding supports at most one leading dim, got {lead}")
    squeeze = not lead
    s2 = src.expand_dims("_t") if squeeze else src
    tdim = "_t" if squeeze else lead[0]
    s2 = s2.transpose(tdim, "lat", "lon")
    lat = s2["lat"].values.astype(float)
    lon = s2["lon"].values.astype(float)
    for name, c in (("lat", lat), ("lon", lon)):
        if c.size < 2 or np.any(np.diff(c) <= 0):
            raise ValueError(f"conservative regridding: {name} of {src.name!r} must be strictly "
                             f"ascending with ≥ 2 values")
    lat_edges = cell_edges(lat, clip=(-90.0, 90.0))
    lon_edges = cell_edges(lon)
    if lon_edges[-1] - lon_edges[0] > 360.0 + 1e-6:
        raise ValueError(f"conservative regridding: longitude cells of {src.name!r} span more "
                         "than 360°")
    s = supersample or default_supersample(grid, lat, lon)
    t = tile or default_tile(grid)
    data = s2.data if isinstance(s2.data, da.Array) else da.from_array(s2.data)
    data = data.rechunk({0: data.chunks[0], 1: -1, 2: -1})
    rows = []
    for wins in tile_windows(grid, t):
        rows.append([da.map_blocks(_conservative_tile, data, dtype=np.float32,
                                   chunks=(data.chunks[0], (w.row1 - w.row0,),
                                           (w.col1 - w.col0,)),
                                   grid=grid, w=w, lat_edges=lat_edges, lon_edges=lon_edges, s=s,
                                   meta=np.empty((0, 0, 0), np.float32))
                     for w in wins])
    out = da.block(rows)
    coords: dict[str, Any] = {"y": grid.y, "x": grid.x}
    if not squeeze:
        coords[str(tdim)] = s2[tdim].values
    res = xr.DataArray(out, dims=(tdim, "y", "x"), coords=coords, name=src.name,
                       attrs={**src.attrs, "regrid_method": "area-weighted (supersampled "
                              "target cells)", "regrid_supersample": s})
    return res.isel(_t=0, drop=True) if squeeze else res


# --------------------------------------------------------------------------------------------
# mass-conserving sum (fire)


def _default_k(g: Georef, grid: Grid) -> int:
    """Sub-cells per source-cell side so sub-cells are ≤ ¼ of a target cell (≥ 1), from the
    median true pixel area over ≤ 64 × 64 pixels spread over the source."""
    ny, nx = (int(n) for n in g.shape)
    rows = np.unique(np.linspace(0, ny - 1, min(ny, 64)).astype(int))
    cols = np.unique(np.linspace(0, nx - 1, min(nx, 64)).astype(int))
    if _crs(g).is_geographic:  # the area depends on the row only
        areas = _window_area(g, 0, ny, 0, 1)[rows, 0]
    else:
        cc, rr = np.meshgrid(cols, rows)
        areas = _projected_area(g, rr, cc)
    side = float(np.sqrt(np.nanmedian(areas)))
    return max(1, int(np.ceil(4 * side / grid.resolution)))


def mass_sum_tile(values: np.ndarray, src: Georef, window: tuple[int, int, int, int],
                  grid: Grid, tile: Window, *, kind: Literal["density", "total"] = "density",
                  supersample: int | None = None) -> np.ndarray:
    """The mass-conserving sum (:func:`mass_sum`) of one source window onto one output tile.

    Parameters
    ----------
    values : ndarray
        ``(..., r1 - r0, c1 - c0)`` source values of the window (NaN counts as 0).
    src : Georef
        Georeferencing of the whole source raster (``GeoBox`` or ``Geometry``).
    window : (int, int, int, int)
        ``(r0, r1, c0, c1)`` source pixel window of ``values``.
    grid : Grid
        Target grid.
    tile : Window
        Output tile (``row0, row1, col0, col1``).
    kind : {"density", "total"}
        As in :func:`mass_sum`.
    supersample : int, optional
        ``k`` (default as in :func:`mass_sum`).

    Returns
    -------
    ndarray of float64, shape ``(..., ty, tx)``
        Per m² of target cell: only the sub-cells of the window that fall in the tile, so the
        tiles of a grid share every source pixel's amount without double counting.
    """
    k = supersample or _default_k(src, grid)
    lead = values.shape[:-2]
    vals = values.reshape(-1, *values.shape[-2:])
    r0, r1, c0, c1 = window
    if vals.shape[-2:] != (r1 - r0, c1 - c0):
        raise ValueError(f"mass_sum_tile: values of shape {values.shape} do not match the "
                         f"window {window}")
    return _mass_tile(vals, src, grid, tile, window, k, kind).reshape(
        *lead, tile.row1 - tile.row0, tile.col1 - tile.col0)


def _mass_tile(values: np.ndarray, g: Georef, grid: Grid, w: Window,
               win: tuple[int, int, int, int], k: int, kind: str) -> np.ndarray:
    """Amounts of the source window summed onto one output tile, per m² of target cell."""
    r0, r1, c0, c1 = win
    nt = values.shape[0]
    ty, tx = w.row1 - w.row0, w.col1 - w.col0
    out = np.zeros((nt, ty * tx))
    amt_all = np.nan_to_num(values.astype(np.float64))
    if kind == "density":
        amt_all = amt_all * _window_area(g, r0, r1, c0, c1)
    nz = np.any(amt_all != 0, axis=0)
    rows, cols = np.nonzero(nz)
    if rows.size == 0:
        return out.reshape(nt, ty, tx)
    src_crs = _crs(g)
    tr = Transformer.from_crs(src_crs, grid.crs, always_xy=True)
    t = g.transform
    frac = (np.arange(k) + 0.5) / k
    if src_crs.is_geographic:  # sub-row weights ∝ true area of the sub-band
        sub = np.arange(k + 1) / k
        q = _authalic_q(t.f + t.e * ((r0 + rows)[:, None] + sub[None, :]))
        wy = np.abs(np.diff(q, axis=1))
        wy = wy / wy.sum(axis=1, keepdims=True)
    else:
        wy = np.full((rows.size, k), 1.0 / k)
    per = max(1, MAX_SUBCELLS // (k * k))
    res, left, top = grid.resolution, grid.left, grid.top
    for a in range(0, rows.size, per):
        rr, cc = rows[a:a + per], cols[a:a + per]
        n = rr.size
        fr = (r0 + rr)[:, None] + frac[None, :]  # (n, k) fractional source rows
        fc = (c0 + cc)[:, None] + frac[None, :]
        px = np.broadcast_to(fc[:, None, :], (n, k, k)).reshape(-1)
        py = np.broadcast_to(fr[:, :, None], (n, k, k)).reshape(-1)
        sx, sy = _affine(t, px, py)
        gx, gy = tr.transform(np.asarray(sx), np.asarray(sy))
        gx, gy = np.asarray(gx), np.asarray(gy)
        col = np.floor((gx - left) / res) - w.col0
        row = np.floor((top - gy) / res) - w.row0
        ok = np.isfinite(col) & np.isfinite(row) & (col >= 0) & (col < tx) & (row >= 0) \
            & (row < ty)
        wt = (np.broadcast_to(wy[a:a + per, :, None], (n, k, k)) / k).reshape(-1)[ok]
        cell = (row[ok] * tx + col[ok]).astype(np.int64)
        src_i = np.repeat(np.arange(n), k * k)[ok]
        amt = amt_all[:, rr, cc]  # (nt, n)
        for i in range(nt):
            out[i] += np.bincount(cell, weights=amt[i, src_i] * wt, minlength=ty * tx)
    return (out / grid.cell_area).reshape(nt, ty, tx)


def _mass_tile_f32(*args: Any) -> np.ndarray:
    return _mass_tile(*args).astype(np.float32)


def mass_sum(src: xr.DataArray, grid: Grid, *, kind: Literal["density", "total"] = "density",
             supersample: int | None = None, tile: int | None = None) -> xr.DataArray:
    """Aggregate amounts onto the grid conserving mass (DECISIONS 16), lazy per output tile.

    Each source cell's amount (``density`` × its true area, or the ``total`` per cell) is split
    over ``k × k`` sub-cells in proportion to their true areas; every sub-cell centre is projected
    to the grid and its amount added to the cell holding it. Everything that falls on the grid is
    conserved exactly (to float64 summation); amounts whose sub-cells fall outside the grid are
    dropped (:func:`source_amount` minus the output total). NaN counts as 0.

    Parameters
    ----------
    src : xarray.DataArray
        ``(..., y, x)`` raster with a CRS (``.rio.crs``; e.g. from
        :func:`abz_dask.analyses.fire.read_raster`), numpy- or dask-backed; leading dimensions
        (band, year, time) are kept.
    grid : Grid
        Target grid.
    kind : {"density", "total"}
        Per m² of source cell (or a fraction of it: burned fraction → area-weighted mean burned
        fraction of the target cell) / an amount per source cell.
    supersample : int, optional
        ``k`` (default: sub-cells ≤ ¼ of a target cell side, ≥ 1).
    tile : int, optional
        Output chunk edge (default :func:`~abz_dask.geo.grid.default_tile`).

    Returns
    -------
    xarray.DataArray
        ``(..., y, x)`` float32 on the grid, per m² of target cell, chunked by output tile (a
        task holds one output tile and the source window feeding it).
    """
    if kind not in ("density", "total"):
        raise ValueError(f"kind must be 'density' or 'total', got {kind!r}")
    g = georef_of(src)
    src = src.transpose(..., "y", "x")
    lead = [d for d in src.dims if d not in ("y", "x")]
    stacked = src.stack(_slice=lead) if lead else src.expand_dims(_slice=[0])
    stacked = stacked.transpose("_slice", "y", "x")
    data = stacked.data if isinstance(stacked.data, da.Array) else da.from_array(
        stacked.data, chunks=(12, -1, -1))
    k = supersample or _default_k(g, grid)
    t = tile or default_tile(grid)
    n = data.shape[0]
    leads = _lead_chunks(n, data.chunks[0])
    wins = {(w.row0, w.col0): source_window(g, grid, w, densify=8)
            for row in tile_windows(grid, t) for w in row}
    rows = []
    for row in tile_windows(grid, t):
        cols = []
        for w in row:
            win = wins[(w.row0, w.col0)]
            shape = (w.row1 - w.row0, w.col1 - w.col0)
            parts = []
            for s0, s1 in leads:
                if win is None:
                    parts.append(da.zeros((s1 - s0, *shape), np.float32, chunks=-1))
                    continue
                r0, r1, c0, c1 = win
                part = data[s0:s1, r0:r1, c0:c1]
                d = dask.delayed(_mass_tile_f32, pure=True)(part, g, grid, w, win, k, kind)
                parts.append(da.from_delayed(d, (s1 - s0, *shape), dtype=np.float32))
            cols.append(da.concatenate(parts, axis=0))
        rows.append(cols)
    out = da.block(rows)
    res = xr.DataArray(out, dims=("_slice", "y", "x"),
                       coords={"y": grid.y, "x": grid.x, "_slice": stacked["_slice"]})
    res = res.unstack("_slice") if lead else res.isel(_slice=0, drop=True)
    if lead:
        res = res.transpose(*lead, "y", "x")
    res.name = src.name
    res.attrs = {**{a: v for a, v in src.attrs.items() if a in ("long_name", "units")},
                 "regrid": f"mass-conserving sum ({kind}, k={k}), per m2 of target cell"}
    return grid.attach(res)


def source_amount(src: xr.DataArray, *, kind: Literal["density", "total"] = "density"
                  ) -> xr.DataArray:
    """Total amount of a raster per leading index (density × true area, or Σ per-cell totals),
    lazy: what :func:`mass_sum` distributes (its output × cell area sums to this minus what falls
    outside the grid)."""
    src = src.transpose(..., "y", "x")
    if kind == "total":
        return src.fillna(0.0).sum(("y", "x"))
    area = xr.DataArray(source_cell_area(src), dims=("y", "x"))
    return (src.fillna(0.0).astype(np.float64) * area).sum(("y", "x"))


# --------------------------------------------------------------------------------------------
# the grid sampled at another raster's pixels (export)


@dataclass
class GridSampler:
    """A raster (``geobox``) and, per pixel, the grid cell holding its centre."""

    geobox: Any
    row: np.ndarray
    col: np.ndarray
    inside: np.ndarray

    @property
    def crs(self) -> CRS:
        """The raster's CRS."""
        return _crs(self.geobox)

    @property
    def transform(self) -> Affine:
        """The raster's affine transform."""
        return Affine(*tuple(self.geobox.transform)[:6])

    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)``."""
        return (int(self.geobox.shape[0]), int(self.geobox.shape[1]))

    def sample(self, field2d: np.ndarray) -> np.ndarray:
        """Values of a grid field ``(ny, nx)`` at the raster's pixels (NaN off the grid)."""
        out = np.full(self.shape, np.nan)
        out[self.inside] = field2d[self.row[self.inside], self.col[self.inside]]
        return out


def grid_sampler(grid: Grid, geobox: Any) -> GridSampler:
    """Nearest grid cell of every pixel centre of a raster (``GeoBox``: shape, affine, CRS)."""
    ny, nx = (int(n) for n in geobox.shape)
    jj, ii = np.meshgrid(np.arange(nx) + 0.5, np.arange(ny) + 0.5)
    x, y = geobox.transform @ (jj, ii)
    fwd = Transformer.from_crs(_crs(geobox), grid.crs, always_xy=True)
    gx, gy = fwd.transform(np.asarray(x), np.asarray(y))
    row, col = grid.index_of(np.asarray(gx), np.asarray(gy))
    return GridSampler(geobox, row, col, row >= 0)
