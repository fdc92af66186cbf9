"""The circumpolar North-Pole Lambert azimuthal equal-area grid (DECISIONS 1).

The grid is symmetric about the pole with a pixel corner on the pole and covers the 49°N circle.
Because the projection is equal-area, the true (ellipsoidal) area of every cell equals its projected
area, ``resolution**2`` — exactly, not approximately; ``tests/test_grid.py`` checks it against the
geodesic area of the cell polygon.

:attr:`Grid.geobox` is the grid as an odc-geo ``GeoBox`` (same affine, shape and CRS) and
:meth:`Grid.tiles` its ``GeoboxTiles``; :meth:`Grid.of_dataset` is the one way to get the grid of
a store. The cell-centre coordinates :attr:`Grid.x` / :attr:`Grid.y` are computed here (not by
odc-geo), so every store keeps bit-identical coordinates.

A **window** (:meth:`Grid.window`, or a spec string ``"1km[4000:4512,4100:4612]"`` — rows then
columns, Python slices of the full grid — wherever a preset is accepted) is a rectangle of a
preset grid: same CRS, resolution and cell edges, its cells are the parent's cells
``[row0:row1, col0:col1]`` (coordinates bit-identical to that slice of the parent's), its shape
is the window's. Nothing of the full grid is allocated. Stores record it in the ``grid_name``
(the spec) and ``grid_window`` (``[row0, col0, ny, nx]``) attributes, so :meth:`Grid.of_dataset`
returns the window; a full grid has no ``grid_window`` attribute and unchanged attributes.
:attr:`Grid.left` / :attr:`Grid.top` are the grid's outer edges, the origin of every
cell-index computation (``col = floor((x - left) / resolution)``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, overload

import dask.array as da
import numpy as np
import xarray as xr
from affine import Affine
from pyproj import CRS, Transformer

if TYPE_CHECKING:
    from odc.geo.geobox import GeoBox, GeoboxTiles

__all__ = ["CRS_LAEA", "PRESETS", "Grid", "default_tile", "radius_of_latitude"]

#: ``+proj=laea +lat_0=90 +lon_0=0 +datum=WGS84`` (EPSG:6931 = ESRI:102017).
CRS_LAEA = CRS.from_epsg(6931)

#: Named resolutions in metres; "1km" and "8km" are the published pixel sizes.
PRESETS: dict[str, float] = {
    "1km": 999.97108203905,
    "8km": 7995.296,
    "25km": 25_000.0,
    "50km": 50_000.0,
    "100km": 100_000.0,
}

#: Southern edge of the domain.
SOUTH_LAT = 49.0

_WINDOW_SPEC = re.compile(
    r"^\s*([^\[\]\s]+)\s*\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]\s*$")


def radius_of_latitude(lat: float) -> float:
    """Distance from the pole (m) of a parallel in the polar LAEA projection.

    Parameters
    ----------
    lat : float
        Latitude in degrees north.

    Returns
    -------
    float
        Projected radius in metres (4,475.6 km for 49°N).
    """
    fwd = Transformer.from_crs("EPSG:4326", CRS_LAEA, always_xy=True)
    x, y = fwd.transform(0.0, lat)
    return float(math.hypot(x, y))


@dataclass(frozen=True)
class Grid:
    """A square polar LAEA grid centred on the pole, or a rectangular window of one.

    Parameters
    ----------
    resolution : float
        Cell size in metres.
    name : str
        Label used in store attributes and cache names (e.g. ``"50km"``; a window's is its spec,
        ``"1km[4000:4512,4100:4612]"``).
    south : float
        Southern latitude the grid must cover (default 49°N).
    extent : (int, int, int, int), optional
        ``(row0, col0, ny, nx)`` of a window in the full grid's cells; None (default) for the
        full grid. Build windows with :meth:`window` or :meth:`from_preset`.
    """

    resolution: float
    name: str = "custom"
    south: float = SOUTH_LAT
    extent: tuple[int, int, int, int] | None = None

    @classmethod
    def from_preset(cls, name: str | float) -> Grid:
        """Build a grid from a preset name (``"1km"``, ``"8km"``, ``"25km"``, ``"50km"``,
        ``"100km"``), a resolution in metres, or a window spec ``"<preset>[r0:r1,c0:c1]"``
        (rows ``r0:r1`` and columns ``c0:c1`` of the preset's full grid)."""
        if isinstance(name, int | float):
            return cls(float(name), f"{float(name):g}m")
        m = _WINDOW_SPEC.match(name)
        if m:
            r0, r1, c0, c1 = (int(v) for v in m.group(2, 3, 4, 5))
            return cls.from_preset(m.group(1)).window(r0, c0, r1 - r0, c1 - c0)
        if name not in PRESETS:
            raise ValueError(f"unknown grid resolution {name!r}; choose one of {sorted(PRESETS)}"
                             " or a window such as '1km[4000:4512,4100:4612]'")
        return cls(PRESETS[name], name)

    def window(self, row0: int, col0: int, ny: int, nx: int) -> Grid:
        """The rectangle of ``ny × nx`` cells whose top-left cell is ``(row0, col0)`` of this
        grid (a window of a window is a window of the full grid).

        Raises
        ------
        ValueError
            When the rectangle is empty or not inside this grid.
        """
        vals = (row0, col0, ny, nx)
        if any(int(v) != v for v in vals):
            raise ValueError(f"grid window {vals}: row0, col0, ny, nx must be integers")
        row0, col0, ny, nx = (int(v) for v in vals)
        h, w = self.shape
        if ny < 1 or nx < 1 or row0 < 0 or col0 < 0 or row0 + ny > h or col0 + nx > w:
            raise ValueError(f"grid window rows {row0}:{row0 + ny}, columns {col0}:{col0 + nx} "
                             f"is empty or outside the {self.name} grid of shape {(h, w)}")
        parent = self.parent
        r0, c0 = self.offset
        r0, c0 = r0 + row0, c0 + col0
        spec = f"{parent.name}[{r0}:{r0 + ny},{c0}:{c0 + nx}]"
        return Grid(self.resolution, spec, self.south, (r0, c0, ny, nx))

    @property
    def parent(self) -> Grid:
        """The full grid of a window (the grid itself when it is full)."""
        if self.extent is None:
            return self
        return Grid(self.resolution, self.name.split("[", 1)[0], self.south)

    @property
    def offset(self) -> tuple[int, int]:
        """``(row0, col0)`` of the grid's top-left cell in the full grid (0, 0 when full)."""
        return (0, 0) if self.extent is None else (self.extent[0], self.extent[1])

    @classmethod
    def of_dataset(cls, ds: xr.Dataset | xr.DataArray) -> Grid:
        """The grid a store was written on — the one "grid of a store" of the package.

        The resolution is the ``grid_resolution_m`` attribute, else the spacing of ``x``; the name
        is the ``grid_name`` attribute, else the preset of that resolution, else ``"<res>m"``.

        Raises
        ------
        ValueError
            When neither the attribute nor an ``x`` coordinate gives the resolution, or the
            store's ``(y, x)`` shape is not the grid's (naming the store's source, if known).
        """
        src = ds.encoding.get("source")
        where = f"{src}: " if src else ""
        res_attr = ds.attrs.get("grid_resolution_m")
        if res_attr is None:
            if "x" not in ds.coords or ds.sizes.get("x", 0) < 2:
                raise ValueError(f"{where}store has no grid_resolution_m attribute and no x "
                                 "coordinate; not a store of this package's grid?")
            res_attr = abs(float(ds["x"].values[1] - ds["x"].values[0]))
        res = float(res_attr)
        name = ds.attrs.get("grid_name")
        if not name:
            name = next((k for k, v in PRESETS.items() if v == res), f"{res:g}m")
        win = ds.attrs.get("grid_window")
        if win is not None:
            try:
                r0, c0, ny, nx = (int(v) for v in win)
                grid = cls(res, str(name).split("[", 1)[0]).window(r0, c0, ny, nx)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{where}grid_window {win!r} is not a window "
                                 f"[row0, col0, ny, nx] of the {res:g} m grid: {e}") from e
        else:
            grid = cls(res, str(name))
            if "[" in grid.name or (grid.shape != (ds.sizes.get("y"), ds.sizes.get("x"))
                                    and "x" in ds.coords and "y" in ds.coords):
                grid = grid._window_of_coords(ds)
        if "y" in ds.sizes and "x" in ds.sizes and grid.shape != (ds.sizes["y"], ds.sizes["x"]):
            raise ValueError(f"{where}grid_resolution_m {res:g} gives a polar grid of shape "
                             f"{grid.shape}, the store has (y, x) = ({ds.sizes['y']}, "
                             f"{ds.sizes['x']}); not a store of this package's grid?")
        return grid

    def _window_of_coords(self, ds: xr.Dataset | xr.DataArray) -> Grid:
        """The window whose cell centres are ``ds``'s ``x``/``y`` (a store without the
        ``grid_window`` attribute); this grid when they are not a window of its parent."""
        parent = self.parent
        if "x" not in ds.coords or "y" not in ds.coords or ds.sizes.get("x", 0) < 1 \
                or ds.sizes.get("y", 0) < 1:
            return self
        x, y = ds["x"].values, ds["y"].values
        c0 = round((float(x[0]) + parent.half_width) / parent.resolution - 0.5)
        r0 = round((parent.half_width - float(y[0])) / parent.resolution - 0.5)
        try:
            win = parent.window(r0, c0, y.size, x.size)
        except ValueError:
            return self
        tol = 1e-6 * parent.resolution
        if np.allclose(win.x, x, rtol=0, atol=tol) and np.allclose(win.y, y, rtol=0, atol=tol):
            return win
        return self

    @cached_property
    def n_half(self) -> int:
        """Cells between the pole and the grid edge along an axis."""
        return math.ceil(radius_of_latitude(self.south) / self.resolution)

    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)`` (a window's own shape)."""
        if self.extent is not None:
            return (self.extent[2], self.extent[3])
        return (2 * self.n_half, 2 * self.n_half)

    @property
    def half_width(self) -> float:
        """Distance (m) from the pole to the full grid's edge (a window's parent's)."""
        return self.n_half * self.resolution

    @property
    def left(self) -> float:
        """x (m) of the grid's left edge (``-half_width`` for a full grid)."""
        if self.extent is None:
            return -self.half_width
        return self.extent[1] * self.resolution - self.half_width

    @property
    def top(self) -> float:
        """y (m) of the grid's top edge (``half_width`` for a full grid)."""
        if self.extent is None:
            return self.half_width
        return self.half_width - self.extent[0] * self.resolution

    @property
    def crs(self) -> CRS:
        """The grid CRS (EPSG:6931)."""
        return CRS_LAEA

    @property
    def transform(self) -> Affine:
        """North-up affine transform of the top-left corner."""
        return Affine(self.resolution, 0.0, self.left, 0.0, -self.resolution, self.top)

    @cached_property
    def geobox(self) -> GeoBox:
        """The grid as an odc-geo ``GeoBox`` (same shape, affine and CRS)."""
        from odc.geo.geobox import GeoBox

        return GeoBox(self.shape, self.transform, self.crs.to_wkt())

    def tiles(self, tile: int) -> GeoboxTiles:
        """The grid's square tiles of ``tile`` cells (smaller at the right and bottom edges) as
        odc-geo ``GeoboxTiles``: ``.roi[i, j]`` gives the row and column slices of tile
        ``(i, j)``, ``[i, j]`` its ``GeoBox``, ``.chunks`` the dask chunks of the grid."""
        from odc.geo.geobox import GeoboxTiles

        return GeoboxTiles(self.geobox, (int(tile), int(tile)))

    @property
    def x(self) -> np.ndarray:
        """Cell-centre x coordinates (m), ascending (a window's: the parent's, sliced)."""
        c0 = self.offset[1]
        return (np.arange(c0, c0 + self.shape[1]) + 0.5) * self.resolution - self.half_width

    @property
    def y(self) -> np.ndarray:
        """Cell-centre y coordinates (m), descending (north-up; a window's: the parent's)."""
        r0 = self.offset[0]
        return self.half_width - (np.arange(r0, r0 + self.shape[0]) + 0.5) * self.resolution

    @property
    def cell_area(self) -> float:
        """True area of one cell (m²); exact because the projection is equal-area."""
        return self.resolution**2

    def index_of(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row and column of the cell holding projected points (nearest-cell rule).

        Points outside the grid get index -1.
        """
        col = np.floor((np.asarray(x) + self.half_width) / self.resolution).astype(np.int64)
        row = np.floor((self.half_width - np.asarray(y)) / self.resolution).astype(np.int64)
        if self.extent is not None:
            row, col = row - self.extent[0], col - self.extent[1]
        ny, nx = self.shape
        bad = (col < 0) | (col >= nx) | (row < 0) | (row >= ny)
        return np.where(bad, -1, row), np.where(bad, -1, col)

    def project(self, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project longitude/latitude (degrees) to grid x/y (m)."""
        fwd = Transformer.from_crs("EPSG:4326", CRS_LAEA, always_xy=True)
        x, y = fwd.transform(np.asarray(lon, float), np.asarray(lat, float))
        return np.asarray(x), np.asarray(y)

    def lonlat(self, chunks: int | None = None) -> tuple[np.ndarray, np.ndarray] | tuple[
        da.Array, da.Array
    ]:
        """Longitude and latitude (degrees) of every cell centre.

        Parameters
        ----------
        chunks : int, optional
            Return lazy dask arrays with square chunks of this size (what a 1-km grid needs:
            ~640 MB per eager array); eager numpy arrays when omitted.
        """
        if chunks is None:
            return _lonlat_block(self.y[:, None], self.x[None, :])
        yy = da.from_array(self.y[:, None], chunks=(chunks, 1))
        xx = da.from_array(self.x[None, :], chunks=(1, chunks))
        lon = da.map_blocks(lambda a, b: _lonlat_block(a, b)[0], yy, xx, dtype=float,
                            chunks=(yy.chunks[0], xx.chunks[1]))
        lat = da.map_blocks(lambda a, b: _lonlat_block(a, b)[1], yy, xx, dtype=float,
                            chunks=(yy.chunks[0], xx.chunks[1]))
        return lon, lat

    def north_of_south(self, chunks: int | None = None) -> np.ndarray | da.Array:
        """Boolean mask of cells whose centre lies north of the southern circle (49°N).

        Uses the exact projected radius of the parallel, so no lon/lat inverse is needed.
        """
        r = radius_of_latitude(self.south)
        if chunks is None:
            return np.hypot(self.x[None, :], self.y[:, None]) <= r
        xx = da.from_array(self.x[None, :], chunks=(1, chunks))
        yy = da.from_array(self.y[:, None], chunks=(chunks, 1))
        return da.hypot(xx, yy) <= r

    def coords(self) -> dict[str, xr.DataArray]:
        """``x``/``y`` coordinate variables with CF attributes."""
        return {
            "y": xr.DataArray(self.y, dims="y", attrs={
                "standard_name": "projection_y_coordinate", "units": "m", "axis": "Y"}),
            "x": xr.DataArray(self.x, dims="x", attrs={
                "standard_name": "projection_x_coordinate", "units": "m", "axis": "X"}),
        }

    @overload
    def attach(self, obj: xr.Dataset) -> xr.Dataset: ...

    @overload
    def attach(self, obj: xr.DataArray) -> xr.DataArray: ...

    def attach(self, obj: xr.Dataset | xr.DataArray) -> xr.Dataset | xr.DataArray:
        """Attach CRS and transform the rioxarray way (``spatial_ref`` coordinate)."""
        import rioxarray  # noqa: F401  (registers the .rio accessor)

        out = obj.rio.write_crs(self.crs.to_wkt())
        out = out.rio.write_transform(self.transform)
        out.attrs["grid_name"] = self.name
        out.attrs["grid_resolution_m"] = self.resolution
        if self.extent is not None:
            out.attrs["grid_window"] = list(self.extent)
        return out

    def template(self) -> xr.Dataset:
        """An empty Dataset with the grid's coordinates and CRS."""
        ds = xr.Dataset(coords=self.coords())
        return self.attach(ds)

    def subset(self, row0: int, row1: int, col0: int, col1: int) -> tuple[np.ndarray, np.ndarray]:
        """Cell-centre coordinates ``(y, x)`` of a window."""
        return self.y[row0:row1], self.x[col0:col1]


def default_tile(grid: Grid) -> int:
    """Tile edge (cells) for a grid: ≈ 64 at coarse resolutions, 512 at 1 km."""
    return int(min(512, max(48, round(grid.shape[0] / 3))))


def _lonlat_block(y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    inv = Transformer.from_crs(CRS_LAEA, "EPSG:4326", always_xy=True)
    xx, yy = np.broadcast_arrays(x, y)
    lon, lat = inv.transform(xx, yy)
    return np.asarray(lon), np.asarray(lat)
