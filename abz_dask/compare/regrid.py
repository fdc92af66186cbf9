"""Area-conservative regridding of lat/lon products to the polar LAEA grid.

Method: **supersampling of the target cells**. Every target cell is split into ``s × s`` equal
sub-cells (equal *true* areas, because the LAEA projection is equal-area); each sub-cell centre is
projected back to longitude/latitude and assigned to the source cell holding it. The weight of a
source cell in a target cell is the share of sub-cells it receives, i.e. an estimate of the area
overlap fraction. The target value is the overlap-weighted mean of the valid (finite) source
values, so

* a constant field stays exactly constant;
* the area integral Σ value × area is conserved up to the sub-sampling error of the cell
  boundaries (≲ 0.1 % for the default ``s`` over the domain, see ``tests/test_compare_regrid.py``);
* where only part of a target cell is covered by valid source cells (e.g. a land-only CMIP6
  field at the coast) the mean is over the valid part, which is right for per-land-area fluxes.

Source cell edges are the midpoints between the (ascending) cell centres, the outer edges half a
step beyond the first and last centre (clipped to ±90° in latitude); longitudes wrap at 360°.

Laziness and memory: the result is a dask array chunked ``(12 time steps, tile, tile)``. A block
holds one time chunk of the source (all of lat/lon: coarse products are small — 1° global monthly
is 3 MB per year in float32), the tile's ``tile² × s²`` sub-sample coordinates and a sparse weight
matrix; weights are cached per process and tile, so further time chunks reuse them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import dask.array as da
import numpy as np
import scipy.sparse as sp
import xarray as xr
from pyproj import Transformer

from abz_dask.geo.grid import CRS_LAEA, Grid

__all__ = ["WGS84_A", "WGS84_F", "cell_edges", "default_supersample", "latlon_cell_area",
           "regrid_to_grid"]

WGS84_A = 6378137.0
WGS84_F = 1.0 / 298.257223563
_CACHE: OrderedDict[tuple[Any, ...], tuple[sp.csr_matrix, np.ndarray]] = OrderedDict()
_CACHE_MAX = 64


def cell_edges(centres: np.ndarray, *, periodic: bool = False) -> np.ndarray:
    """Cell edges (n + 1) from ascending cell centres (midpoints; half steps outside)."""
    c = np.asarray(centres, dtype=float)
    if c.ndim != 1 or c.size < 2:
        raise ValueError(f"need ≥ 2 ascending 1-D cell centres, got shape {c.shape}")
    if np.any(np.diff(c) <= 0):
        raise ValueError("cell centres must be strictly ascending")
    mid = 0.5 * (c[1:] + c[:-1])
    e = np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])
    if not periodic:
        e = np.clip(e, -90.0, 90.0)
    return e


def latlon_cell_area(lat_edges: np.ndarray, lon_edges: np.ndarray) -> np.ndarray:
    """True (WGS84 ellipsoid) area in m² of lat/lon cells, shape ``(nlat, nlon)``.

    Uses the authalic band formula ``A = a²/2 · Δλ · (q(φ₂) − q(φ₁))`` with
    ``q(φ) = (1 − e²) [sin φ / (1 − e² sin² φ) − ln((1 − e sin φ)/(1 + e sin φ)) / (2e)]``,
    which is exact on the ellipsoid (the whole ellipsoid: 5.10066 × 10¹⁴ m²).
    """
    e2 = WGS84_F * (2 - WGS84_F)
    e = math.sqrt(e2)
    s = np.sin(np.deg2rad(np.asarray(lat_edges, float)))
    q = (1 - e2) * (s / (1 - e2 * s**2) - np.log((1 - e * s) / (1 + e * s)) / (2 * e))
    dlon = np.deg2rad(np.diff(np.asarray(lon_edges, float)))
    return 0.5 * WGS84_A**2 * np.diff(q)[:, None] * dlon[None, :]


def default_supersample(grid: Grid, lat: np.ndarray, lon: np.ndarray) -> int:
    """Sub-cells per target-cell side: ≈ 3 per source-cell width at 75°N, between 2 and 16."""
    dlat = float(np.median(np.diff(lat)))
    dlon = float(np.median(np.diff(lon)))
    spacing = 111_320.0 * min(dlat, dlon * math.cos(math.radians(75.0)))
    return int(np.clip(math.ceil(3.0 * grid.resolution / spacing), 2, 16))


def _weights(grid: Grid, r0: int, r1: int, c0: int, c1: int, lat_edges: np.ndarray,
             lon_edges: np.ndarray, s: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """Sparse ``(tile cells, used source cells)`` overlap fractions and the used source indices."""
    key = (grid.resolution, grid.n_half, r0, r1, c0, c1, s, lat_edges.tobytes(),
           lon_edges.tobytes())
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    res = grid.resolution
    off = (np.arange(s) + 0.5) / s * res
    xs = (grid.x[c0:c1][:, None] - res / 2 + off[None, :]).ravel()
    ys = (grid.y[r0:r1][:, None] + res / 2 - off[None, :]).ravel()
    xx, yy = np.meshgrid(xs, ys)
    inv = Transformer.from_crs(CRS_LAEA, "EPSG:4326", always_xy=True)
    lon, lat = inv.transform(xx.ravel(), yy.ravel())
    lon = np.asarray(lon)
    lat = np.asarray(lat)
    nlat, nlon = lat_edges.size - 1, lon_edges.size - 1
    i = np.searchsorted(lat_edges, lat, side="right") - 1
    i = np.where(lat == lat_edges[-1], nlat - 1, i)
    lonw = (lon - lon_edges[0]) % 360.0 + lon_edges[0]
    j = np.searchsorted(lon_edges, lonw, side="right") - 1
    ok = (i >= 0) & (i < nlat) & (j >= 0) & (j < nlon) & np.isfinite(lat)
    ny, nx = r1 - r0, c1 - c0
    sub_r = np.repeat(np.arange(ny), s)  # sub-row -> tile row
    sub_c = np.repeat(np.arange(nx), s)
    rr = np.repeat(sub_r, nx * s)
    cc = np.tile(sub_c, ny * s)
    tgt = (rr * nx + cc)[ok]
    src = (i * nlon + j)[ok]
    used, src_local = np.unique(src, return_inverse=True)
    w = sp.csr_matrix((np.full(tgt.size, 1.0 / s**2), (tgt, src_local)),
                      shape=(ny * nx, used.size))
    w.sum_duplicates()
    _CACHE[key] = (w, used)
    if len(_CACHE) > _CACHE_MAX:
        _CACHE.popitem(last=False)
    return w, used


def _block(values: np.ndarray, yi: np.ndarray, xi: np.ndarray, *, grid: Grid,
           lat_edges: np.ndarray, lon_edges: np.ndarray, s: int) -> np.ndarray:
    r0, r1 = int(yi[0]), int(yi[-1]) + 1
    c0, c1 = int(xi[0]), int(xi[-1]) + 1
    w, used = _weights(grid, r0, r1, c0, c1, lat_edges, lon_edges, s)
    nt = values.shape[0]
    v = values.reshape(nt, -1)[:, used].astype(np.float64)
    valid = np.isfinite(v)
    num = (w @ np.where(valid, v, 0.0).T).T
    den = (w @ valid.T.astype(np.float64)).T
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 1e-12, num / den, np.nan)
    return out.reshape(nt, r1 - r0, c1 - c0).astype(np.float32)


def regrid_to_grid(src: xr.DataArray, grid: Grid, *, tile: int | None = None,
                   supersample: int | None = None) -> xr.DataArray:
    """Regrid a lat/lon field area-conservatively to the LAEA grid (lazy).

    Parameters
    ----------
    src : xr.DataArray
        Dims ``(lat, lon)`` or ``(T, lat, lon)`` for one leading dim ``T`` (``time``/``year``),
        latitude and longitude ascending (as :func:`~abz_dask.compare.products.read_product`
        returns them), longitudes in degrees (any range; wrapped).
    grid : Grid
        Target grid.
    tile : int, optional
        Output chunk edge (cells); default 64 at coarse grids, 512 at 1 km.
    supersample : int, optional
        Sub-cells per target-cell side (default :func:`default_supersample`).

    Returns
    -------
    xr.DataArray
        ``(T, y, x)`` or ``(y, x)`` float32 on the grid, NaN where no valid source value
        overlaps; attributes copied, plus ``regrid_method`` and ``regrid_supersample``.
    """
    if "lat" not in src.dims or "lon" not in src.dims:
        raise ValueError(f"regrid_to_grid needs dims lat and lon, got {src.dims}")
    lead = [d for d in src.dims if d not in ("lat", "lon")]
    if len(lead) > 1:
        raise ValueError(f"regrid_to_grid supports at most one leading dim, got {lead}")
    squeeze = not lead
    s2 = src.expand_dims("_t") if squeeze else src
    tdim = "_t" if squeeze else lead[0]
    s2 = s2.transpose(tdim, "lat", "lon")
    lat = s2["lat"].values.astype(float)
    lon = s2["lon"].values.astype(float)
    lat_edges = cell_edges(lat)
    lon_edges = cell_edges(lon, periodic=True)
    if lon_edges[-1] - lon_edges[0] > 360.0 + 1e-6:
        raise ValueError("longitude cells span more than 360°")
    s = supersample or default_supersample(grid, lat, lon)
    from abz_dask.geo.grid import default_tile

    t = tile or default_tile(grid)
    data = s2.data if isinstance(s2.data, da.Array) else da.from_array(s2.data)
    data = data.rechunk({0: data.chunks[0], 1: -1, 2: -1})
    ny, nx = grid.shape
    yi = da.arange(ny, chunks=t)
    xi = da.arange(nx, chunks=t)
    out = da.blockwise(_block, "tyx", data, "tab", yi, "y", xi, "x", concatenate=True,
                       dtype=np.float32, meta=np.empty((0, 0, 0), np.float32), grid=grid,
                       lat_edges=lat_edges, lon_edges=lon_edges, s=s)
    coords: dict[str, Any] = {"y": grid.y, "x": grid.x}
    if not squeeze:
        coords[str(tdim)] = s2[tdim].values
    res = xr.DataArray(out, dims=(tdim, "y", "x"), coords=coords, name=src.name,
                       attrs={**src.attrs, "regrid_method": "area-weighted (supersampled "
                              "target cells)", "regrid_supersample": s})
    return res.isel(_t=0, drop=True) if squeeze else res
