"""The polar LAEA grid: exact cell areas, geometry, transforms, its odc-geo GeoBox and tiles, and
the grid of a store."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from affine import Affine
from pyproj import Geod, Transformer

from abz_dask.geo.grid import CRS_LAEA, PRESETS, Grid, radius_of_latitude

GEOD = Geod(ellps="WGS84")
INV = Transformer.from_crs(CRS_LAEA, "EPSG:4326", always_xy=True)


def geodesic_cell_area(grid: Grid, row: int, col: int, n: int = 50) -> float:
    """Geodesic area (m²) of a cell polygon with densified edges (independent of the grid)."""
    x0, y0 = grid.transform * (col, row)
    r = grid.resolution
    t = np.linspace(0, 1, n, endpoint=False)
    xs = np.concatenate([x0 + r * t, np.full(n, x0 + r), x0 + r * (1 - t), np.full(n, x0)])
    ys = np.concatenate([np.full(n, y0), y0 - r * t, np.full(n, y0 - r), y0 - r * (1 - t)])
    lon, lat = INV.transform(xs, ys)
    area, _ = GEOD.polygon_area_perimeter(lon, lat)
    return abs(area)


@pytest.mark.parametrize("name", ["1km", "8km", "25km", "100km"])
def test_cell_area_matches_geodesic_area(name: str) -> None:
    g = Grid.from_preset(name)
    ny, nx = g.shape
    # cells near the pole, at 60°N-ish, and near the 49°N edge, in several directions
    for row, col in [(ny // 2, nx // 2), (ny // 2 - 1, nx // 2 - 1), (ny // 4, nx // 3),
                     (int(ny * 0.02) + 1, nx // 2), (ny // 2, int(nx * 0.97))]:
        geo = geodesic_cell_area(g, row, col)
        assert abs(g.cell_area - geo) / geo < 1e-3, (name, row, col, g.cell_area, geo)


def test_published_pixel_sizes_and_extent() -> None:
    assert PRESETS["1km"] == 999.97108203905
    assert PRESETS["8km"] == 7995.296
    r49 = radius_of_latitude(49.0)
    assert 4_475_000 < r49 < 4_476_500  # 4475.6 km (REAL-DATA §1)
    for name in PRESETS:
        g = Grid.from_preset(name)
        assert g.half_width >= r49 > g.half_width - g.resolution
        assert g.shape[0] % 2 == 0  # a pixel corner on the pole
    assert Grid.from_preset("8km").shape == (1120, 1120)


def test_coordinates_transform_and_crs() -> None:
    g = Grid.from_preset("100km")
    ds = g.template()
    assert ds.rio.crs.to_epsg() == 6931
    assert ds.rio.transform() == g.transform
    assert np.allclose(np.diff(g.x), g.resolution) and np.allclose(np.diff(g.y), -g.resolution)
    # the pole is the corner between the four central cells
    mid = g.shape[1] // 2
    assert g.x[mid - 1] == -g.resolution / 2 and g.x[mid] == g.resolution / 2


def test_lonlat_index_round_trip_and_orientation() -> None:
    g = Grid.from_preset("25km")
    lon = np.array([-147.7, 24.9, 129.7, -51.7])  # Fairbanks, Helsinki, Yakutsk, Nuuk
    lat = np.array([64.84, 60.17, 62.03, 64.18])
    x, y = g.project(lon, lat)
    row, col = g.index_of(x, y)
    lo, la = g.lonlat()
    assert np.all(np.abs(lo[row, col] - lon) < 0.5) and np.all(np.abs(la[row, col] - lat) < 0.3)
    # EPSG:6931 orientation: lon = atan2(x, -y); Europe at the bottom (y < 0)
    assert y[1] < 0 and x[0] < 0
    _, lazy_lat = g.lonlat(chunks=64)
    np.testing.assert_allclose(lazy_lat.compute(), la)
    assert g.index_of(np.array([1e9]), np.array([0.0]))[0][0] == -1


def test_north_of_49_mask() -> None:
    g = Grid.from_preset("50km")
    m = g.north_of_south()
    _, lat = g.lonlat()
    assert np.array_equal(m, lat >= 49.0)
    assert np.array_equal(g.north_of_south(chunks=40).compute(), m)


def test_geobox_and_tiles_are_the_grid() -> None:
    """The odc-geo GeoBox has the grid's affine, shape and CRS; its tiles cover the grid; the
    cell centres stay the grid's own (bit-identical to the published formula)."""
    for name in ("1km", "100km"):
        g = Grid.from_preset(name)
        gb = g.geobox
        assert gb.transform == g.transform and tuple(gb.shape) == g.shape
        assert gb.crs.epsg == 6931
        np.testing.assert_allclose(gb.coordinates["x"].values, g.x, rtol=0, atol=1e-6)
        np.testing.assert_allclose(gb.coordinates["y"].values, g.y, rtol=0, atol=1e-6)
        n = g.n_half
        np.testing.assert_array_equal(g.x, (np.arange(2 * n) + 0.5) * g.resolution
                                      - n * g.resolution)
    g = Grid.from_preset("100km")
    tiles = g.tiles(40)
    assert tiles.shape == (3, 3) and tiles.chunks == ((40, 40, 10), (40, 40, 10))
    ys, xs = tiles.roi[2, 1]
    assert (ys, xs) == (slice(80, 90), slice(40, 80))
    sub = tiles[2, 1]
    assert sub.transform == g.transform @ Affine.translation(40, 80)


def test_of_dataset_is_the_one_grid_of_a_store() -> None:
    g = Grid.from_preset("100km")
    ds = g.template()
    assert Grid.of_dataset(ds) == g
    # without attributes: the resolution from x, the preset name of that resolution
    bare = xr.Dataset(coords=g.coords())
    assert Grid.of_dataset(bare) == g
    odd = Grid(90_000.0, "90000m")
    assert Grid.of_dataset(xr.Dataset(coords=odd.coords())) == odd
    # the exact 1-km preset survives a round trip through the attribute
    one = Grid.from_preset("1km")
    ds1 = xr.Dataset(attrs={"grid_resolution_m": one.resolution})
    assert Grid.of_dataset(ds1) == one
    with pytest.raises(ValueError, match="gives a polar grid of shape"):
        Grid.of_dataset(xr.Dataset(coords=g.coords(), attrs={"grid_resolution_m": 50_000.0}))
    with pytest.raises(ValueError, match="no grid_resolution_m attribute and no x"):
        Grid.of_dataset(xr.Dataset())
