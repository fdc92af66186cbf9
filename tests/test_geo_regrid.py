"""The one regrid module (abz_dask.geo.regrid) against independent references: analytic totals
(mass conservation), fields regridded to themselves, the ellipsoidal area vs pyproj.Geod polygon
areas, GDAL's average resampling (odc-geo ``xr_reproject``), and laziness per output tile (no task
ever holds a full-grid array)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import rioxarray  # noqa: F401  (the .rio accessor)
import xarray as xr
from affine import Affine
from conftest import raise_if_dask_computes
from dask.callbacks import Callback
from pyproj import Geod

from abz_dask.analyses.fire import read_raster
from abz_dask.cube_build.sources import Geometry
from abz_dask.geo import regrid as R
from abz_dask.geo.grid import Grid

GRID = Grid.from_preset("100km")
GEOD = Geod(ellps="WGS84")
#: Surface of the WGS84 ellipsoid (m²).
WGS84_SURFACE = 5.10065621724e14


def _latlon(res: float, south: float = 40.0, seed: int = 1) -> xr.DataArray:
    """Two years of emissions on a global lon/lat grid, non-zero north of 50°N only."""
    lat = np.arange(90 - res / 2, south, -res)
    lon = np.arange(-180 + res / 2, 180, res)
    rng = np.random.default_rng(seed)
    v = rng.random((2, len(lat), len(lon))) * 500.0 * (lat[:, None] > 50)
    return xr.DataArray(v, dims=("year", "lat", "lon"),
                        coords={"year": [2002, 2003], "lat": lat, "lon": lon},
                        name="fire_emissions", attrs={"units": "g C m-2 yr-1"})


def _on_grid(values: np.ndarray, grid: Grid = GRID) -> xr.DataArray:
    """A field on the grid's own pixels, as a raster with a CRS."""
    da = xr.DataArray(values, dims=("y", "x"), coords={"y": grid.y, "x": grid.x}, name="v")
    return da.rio.write_crs(grid.crs.to_wkt()).rio.write_transform(grid.transform)


def _task_shapes(arr: Any) -> list[tuple[int, ...]]:
    """Shapes of every array any task of ``arr``'s graph returns (its chunks, not the final
    concatenation), computed synchronously."""
    shapes: list[tuple[int, ...]] = []

    def post(key: object, result: object, *_: object) -> None:
        if isinstance(result, np.ndarray):
            shapes.append(result.shape)

    keys = list(dask.core.flatten(arr.__dask_keys__()))
    graph = dict(arr.__dask_graph__())
    with Callback(posttask=post):
        dask.get(graph, keys)
    return shapes


# --------------------------------------------------------------------------------------------
# helpers: edges, areas, bilinear, mode


def test_cell_edges() -> None:
    np.testing.assert_array_equal(R.cell_edges(np.array([1.0, 2.0, 4.0])),
                                  [0.5, 1.5, 3.0, 5.0])
    np.testing.assert_array_equal(R.cell_edges(np.array([89.5, 88.5]), clip=(-90, 90)),
                                  [90.0, 89.0, 88.0])
    np.testing.assert_array_equal(R.cell_edges(np.array([89.75, 90.25]), clip=(-90, 90)),
                                  [89.5, 90.0, 90.0])
    with pytest.raises(ValueError, match="monotonic"):
        R.cell_edges(np.array([1.0, 3.0, 2.0]))


@pytest.mark.parametrize("lat0", [-1.0, 49.0, 70.0, 89.0])
def test_latlon_cell_area_matches_geodesic_polygons(lat0: float) -> None:
    """A 1° × 1° cell: the authalic formula vs pyproj.Geod's area of the cell polygon with its
    parallels densified (a geodesic polygon converges to the parallel-bounded cell)."""
    n = 2000
    lon = np.linspace(10.0, 11.0, n)
    lons = np.concatenate([lon, lon[::-1]])
    lats = np.concatenate([np.full(n, lat0), np.full(n, lat0 + 1.0)])
    geo, _ = GEOD.polygon_area_perimeter(lons, lats)
    ours = R.latlon_cell_area(np.array([lat0, lat0 + 1.0]), np.array([10.0, 11.0]))[0, 0]
    assert ours == pytest.approx(abs(geo), rel=2e-7)


def test_latlon_cell_area_total_and_direction() -> None:
    lat_e = np.linspace(-90, 90, 181)
    lon_e = np.linspace(-180, 180, 361)
    a = R.latlon_cell_area(lat_e, lon_e)
    assert a.sum() == pytest.approx(WGS84_SURFACE, rel=1e-10)
    # descending edges give the same (positive) areas
    np.testing.assert_array_equal(R.latlon_cell_area(lat_e[::-1], lon_e)[::-1], a)


def test_source_cell_area_geographic_and_projected(tmp_path: Path) -> None:
    res = 1.0
    lat = np.arange(89.5, -90, -res)
    lon = np.arange(-179.5, 180, res)
    full = xr.DataArray(np.zeros((180, 360)), dims=("lat", "lon"),
                        coords={"lat": lat, "lon": lon}, name="v")
    full.to_dataset().to_netcdf(tmp_path / "g.nc")
    a = R.source_cell_area(read_raster(tmp_path / "g.nc"))
    assert a.sum() == pytest.approx(WGS84_SURFACE, rel=1e-10)
    # on an equal-area grid the true area is the projected area
    np.testing.assert_allclose(R.source_cell_area(_on_grid(np.zeros(GRID.shape))),
                               GRID.cell_area, rtol=1e-9)


def test_bilinear_exact_for_linear_fields_and_nearest_fallback() -> None:
    f = np.add.outer(3.0 * np.arange(5.0), 0.5 * np.arange(7.0))  # 3 row + 0.5 col
    fy = np.array([0.0, 1.25, 3.5, 4.0])
    fx = np.array([0.0, 2.75, 5.5, 6.0])
    np.testing.assert_allclose(R.bilinear(f, fy, fx, wrap_x=False), 3 * fy + 0.5 * fx)
    g = f.copy()
    g[2, 2] = np.nan  # a corner of the stencil of (1.2, 2.6) is missing: the nearest corner
    out = R.bilinear(g, np.array([1.2]), np.array([2.6]), wrap_x=False, nearest_fallback=True)
    assert out[0] == f[1, 3]
    assert np.isnan(R.bilinear(g, np.array([1.2]), np.array([2.6]), wrap_x=False)[0])
    # periodic columns: between the last and the first column
    assert R.bilinear(f, np.array([0.0]), np.array([6.5]))[0] == pytest.approx(0.5 * (3.0 + 0.0))
    # weights follow the field's precision: float32 in, float32 out
    assert R.bilinear(f.astype(np.float32), fy, fx).dtype == np.float32


def test_weighted_mode_ties_to_smaller_code() -> None:
    cell = np.array([0, 0, 0, 0, 1, 1])
    code = np.array([2, 2, 1, 1, 3, 0])
    m, have = R.weighted_mode(cell, code, 3, 4)
    np.testing.assert_array_equal(m, [1, 0, 0])
    np.testing.assert_array_equal(have, [True, True, False])
    m, _ = R.weighted_mode(cell, code, 3, 4, weight=np.array([1, 1, 1, 0.5, 1, 2.0]))
    np.testing.assert_array_equal(m[:2], [2, 0])


# --------------------------------------------------------------------------------------------
# mass-conserving sum


def test_mass_sum_conserves_analytic_totals(tmp_path: Path) -> None:
    """Everything north of 50°N lies on the grid: Σ output × cell area = Σ density × true area,
    per year, to float32 precision of the output (float64 per tile: to 1e-12)."""
    src = _latlon(0.5)
    src.to_dataset().to_netcdf(tmp_path / "em.nc")
    da = read_raster(tmp_path / "em.nc")
    out = R.mass_sum(da, GRID)
    assert out.dims == ("year", "y", "x")
    area = R.source_cell_area(da)
    total = R.source_amount(da).values
    for i in range(2):
        mass_in = float((src.values[i] * area).sum())
        assert total[i] == pytest.approx(mass_in, rel=1e-12)
        mass_out = float(out.isel(year=i).astype(float).sum()) * GRID.cell_area
        assert mass_out == pytest.approx(mass_in, rel=1e-6)
    # the float64 per-tile kernel: tiles share every pixel without loss or double counting
    g = R.georef_of(da)
    ny, nx = g.shape
    vals = da.transpose("year", "y", "x").values
    tiles = [w for row in R.tile_windows(GRID, 45) for w in row]
    got = sum(R.mass_sum_tile(vals, g, (0, ny, 0, nx), GRID, w).sum(axis=(1, 2)) for w in tiles)
    np.testing.assert_allclose(got * GRID.cell_area, (vals * area).sum(axis=(1, 2)), rtol=1e-12)


def test_mass_sum_projected_fraction_and_total(tmp_path: Path) -> None:
    """A burned-fraction GeoTIFF on a 20-km EPSG:3413 grid: burned area is conserved."""
    res = 20000.0
    x = np.arange(-2.0e6 + res / 2, 2.0e6, res)
    y = np.arange(2.0e6 - res / 2, -2.0e6, -res)
    rng = np.random.default_rng(2)
    bf = (rng.random((len(y), len(x))) < 0.05) * rng.random((len(y), len(x)))
    da = xr.DataArray(bf[None].astype(np.float32), dims=("band", "y", "x"),
                      coords={"band": [1], "y": y, "x": x}, name="burned_fraction")
    da = da.rio.write_crs("EPSG:3413").rio.write_transform(Affine(res, 0, -2.0e6, 0, -res, 2.0e6))
    da.rio.to_raster(tmp_path / "bf.tif")
    src = read_raster(tmp_path / "bf.tif")
    out = R.mass_sum(src, GRID)
    burned_in = float((np.nan_to_num(src.values[0]) * R.source_cell_area(src)).sum())
    burned_out = float(out.isel(band=0).astype(float).sum()) * GRID.cell_area
    assert burned_out == pytest.approx(burned_in, rel=1e-6)
    # EPSG:3413 is conformal: true cell areas differ from res² by the areal scale factor
    assert not np.allclose(R.source_cell_area(src), res * res, rtol=1e-3)
    tot = R.mass_sum(src, GRID, kind="total")
    assert float(tot.astype(float).sum()) * GRID.cell_area == pytest.approx(
        float(np.nansum(src.values)), rel=1e-6)


def test_mass_sum_burned_fraction_is_area_weighted_mean() -> None:
    """A constant burned fraction over the whole domain stays that fraction in every cell, up to
    the sub-cell split of the cell boundaries (0.5° source, k = 8: ≤ 4 %), and exactly on
    average (the total burned area is conserved)."""
    res = 0.5
    lat = np.arange(90 - res / 2, 40, -res)
    lon = np.arange(-180 + res / 2, 180, res)
    da = xr.DataArray(np.full((lat.size, lon.size), 0.3), dims=("y", "x"),
                      coords={"y": lat, "x": lon}).rio.write_crs("EPSG:4326")
    out = R.mass_sum(da, GRID, supersample=8).values
    inner = GRID.north_of_south()
    np.testing.assert_allclose(out[inner], 0.3, rtol=5e-2)
    assert abs(float(out[inner].mean()) - 0.3) < 1e-5


def test_fields_on_the_grid_regrid_to_themselves() -> None:
    rng = np.random.default_rng(3)
    f = rng.random(GRID.shape)
    # mass-conserving sum of a density on the grid's own pixels: the same density
    np.testing.assert_allclose(R.mass_sum(_on_grid(f), GRID).values, f, rtol=1e-6)
    # centre binning (average and mode) of the grid's own pixels: the same values, exactly
    geom = Geometry(GRID.crs.to_wkt(), GRID.transform, GRID.shape)
    codes = rng.integers(1, 4, GRID.shape).astype(float)
    for w in (w for row in R.tile_windows(GRID, 40) for w in row):
        tm = R.tile_map(geom, GRID, w)
        ys, xs = w.slices
        avg = tm.apply(lambda r, c: f[r[0]:r[1], c[0]:c[1]], mode=False)
        np.testing.assert_array_equal(avg, f[ys, xs])
        mod = tm.apply(lambda r, c: codes[r[0]:r[1], c[0]:c[1]], mode=True, legend=[1, 2, 3])
        np.testing.assert_array_equal(mod, codes[ys, xs])


# --------------------------------------------------------------------------------------------
# centre binning vs GDAL


def test_centre_binning_agrees_with_gdal_average() -> None:
    """A smooth field on a 5-km EPSG:3413 raster: centre binning ≈ odc-geo ``xr_reproject``
    (GDAL ``average``) onto the grid's GeoBox; a constant stays exactly constant."""
    from odc.geo.xr import xr_reproject

    res = 5000.0
    x = np.arange(-3.0e6 + res / 2, 3.0e6, res)
    y = np.arange(3.0e6 - res / 2, -3.0e6, -res)
    f = np.sin(x[None, :] / 7.0e5) + np.cos(y[:, None] / 5.0e5)
    src = xr.DataArray(f, dims=("y", "x"), coords={"y": y, "x": x}).rio.write_crs("EPSG:3413")
    geom = Geometry(src.rio.crs.to_wkt(), src.rio.transform(), f.shape)
    ours = np.full(GRID.shape, np.nan)
    const = np.full(GRID.shape, np.nan)
    for w in (w for row in R.tile_windows(GRID, 30) for w in row):
        tm = R.tile_map(geom, GRID, w)
        ours[w.slices] = tm.apply(lambda r, c: f[r[0]:r[1], c[0]:c[1]], mode=False)
        const[w.slices] = tm.apply(lambda r, c: np.full((r[1] - r[0], c[1] - c[0]), 2.5),
                                   mode=False)
    ref = xr_reproject(src, GRID.geobox, resampling="average", dst_nodata=np.nan).values
    both = np.isfinite(ours) & np.isfinite(ref)
    # compare well inside the source (GDAL's edge cells are partial)
    inner = both & (np.abs(GRID.x)[None, :] < 2.5e6) & (np.abs(GRID.y)[:, None] < 2.5e6)
    assert inner.sum() > 1500
    assert np.max(np.abs(ours[inner] - ref[inner])) < 0.02  # field range 4
    np.testing.assert_array_equal(const[np.isfinite(const)], 2.5)


# --------------------------------------------------------------------------------------------
# laziness per output tile


@pytest.mark.parametrize("method", ["mass_sum", "conservative"])
def test_lazy_per_output_tile(method: str) -> None:
    """Building is lazy, chunks are output tiles and no task returns a full-grid array."""
    src = _latlon(1.0, seed=4)
    run: Callable[..., xr.DataArray]
    if method == "mass_sum":
        lazy_src = src.rename(lat="y", lon="x").rio.write_crs("EPSG:4326").chunk({"year": 1})
        run = R.mass_sum
    else:
        lazy_src = src.isel(lat=slice(None, None, -1)).chunk({"year": 1})
        run = R.conservative
    with raise_if_dask_computes():
        out = run(lazy_src, GRID, tile=30)
    assert out.chunks == ((1, 1), (30, 30, 30), (30, 30, 30))
    shapes = _task_shapes(out.data)
    assert shapes
    assert all(s[-2:] != GRID.shape for s in shapes if len(s) >= 2), \
        [s for s in shapes if len(s) >= 2 and s[-2:] == GRID.shape]
    spatial = [s for s in shapes if len(s) >= 2 and s[-2:] in {(30, 30)}]
    assert spatial  # the output tiles themselves
