"""Window grids (``Grid.window``, ``"50km[r0:r1,c0:c1]"``) against the full grid they cut.

The independent reference everywhere is the full grid: a window's coordinates, transform, cell
areas, cell indices, zone layers and regridded values must equal the corresponding slice of the
full grid's.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from affine import Affine

from abz_dask.geo.grid import Grid
from abz_dask.geo.regrid import tile_map
from abz_dask.geo.zones import build_zones
from abz_dask.io.store import Tile

FULL = Grid.from_preset("50km")
R0, C0, NY, NX = 30, 100, 40, 50  # Siberia/Europe: tundra, boreal, coast
WIN = FULL.window(R0, C0, NY, NX)


def test_window_coordinates_are_the_slice_of_the_full_grid() -> None:
    assert WIN.shape == (NY, NX)
    assert WIN.name == f"50km[{R0}:{R0 + NY},{C0}:{C0 + NX}]"
    assert Grid.from_preset(WIN.name) == WIN
    np.testing.assert_array_equal(WIN.x, FULL.x[C0:C0 + NX])
    np.testing.assert_array_equal(WIN.y, FULL.y[R0:R0 + NY])
    assert WIN.transform == FULL.transform @ Affine.translation(C0, R0)
    assert WIN.cell_area == FULL.cell_area
    assert WIN.crs == FULL.crs and WIN.parent == FULL
    np.testing.assert_array_equal(np.asarray(WIN.north_of_south()),
                                  np.asarray(FULL.north_of_south())[R0:R0 + NY, C0:C0 + NX])
    lon, lat = WIN.lonlat()
    flon, flat = FULL.lonlat()
    np.testing.assert_array_equal(lat, flat[R0:R0 + NY, C0:C0 + NX])
    np.testing.assert_array_equal(lon, flon[R0:R0 + NY, C0:C0 + NX])
    # cell indices: the full grid's minus the offset, -1 outside the window
    xx, yy = np.meshgrid(FULL.x, FULL.y)
    r, c = WIN.index_of(xx, yy)
    fr, fc = FULL.index_of(xx, yy)
    inside = (fr >= R0) & (fr < R0 + NY) & (fc >= C0) & (fc < C0 + NX)
    np.testing.assert_array_equal(r[inside], fr[inside] - R0)
    np.testing.assert_array_equal(c[inside], fc[inside] - C0)
    assert (r[~inside] == -1).all() and (c[~inside] == -1).all()
    # a window of a window is a window of the full grid
    assert WIN.window(5, 7, 10, 12) == FULL.window(R0 + 5, C0 + 7, 10, 12)


def test_full_grid_is_unchanged() -> None:
    assert FULL.extent is None and FULL.left == -FULL.half_width and FULL.top == FULL.half_width
    attrs = FULL.template().attrs
    assert "grid_window" not in attrs and attrs["grid_name"] == "50km"
    assert FULL.transform == Affine(50_000.0, 0.0, -FULL.half_width, 0.0, -50_000.0,
                                    FULL.half_width)


@pytest.mark.parametrize("spec", ["50km[0:0,0:10]", "50km[170:190,0:10]", "3km[0:2,0:2]"])
def test_bad_windows_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match=r"grid window|unknown grid"):
        Grid.from_preset(spec)


def test_window_round_trips_through_a_store(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ds = WIN.template()
    ds["v"] = (("y", "x"), np.arange(NY * NX, dtype="f4").reshape(NY, NX))
    ds.to_zarr(tmp_path / "w.zarr", zarr_format=3, consolidated=False)
    back = xr.open_zarr(tmp_path / "w.zarr", consolidated=False)
    assert Grid.of_dataset(back) == WIN
    assert back.attrs["grid_window"] == [R0, C0, NY, NX]
    # a store that lost the grid attributes (only x/y): the window from its coordinates
    bare = xr.Dataset({"v": back["v"].load()}, coords={"x": back["x"], "y": back["y"]})
    assert Grid.of_dataset(bare) == WIN
    FULL.template().to_zarr(tmp_path / "f.zarr", zarr_format=3, consolidated=False)
    assert Grid.of_dataset(xr.open_zarr(tmp_path / "f.zarr", consolidated=False)) == FULL


def test_window_zones_equal_the_slice_of_the_full_grid_zones(tmp_path) -> None:  # type: ignore[no-untyped-def]
    full = build_zones(FULL, cache_dir=tmp_path, land_source="lsmask")
    win = build_zones(WIN, cache_dir=tmp_path, land_source="lsmask")
    assert Grid.of_dataset(win) == WIN
    ref = full.isel(y=slice(R0, R0 + NY), x=slice(C0, C0 + NX))
    assert list(win.data_vars) == list(ref.data_vars)
    for name in ref.data_vars:
        np.testing.assert_array_equal(win[name].values, ref[name].values, err_msg=name)
    assert win.attrs["tundra_warmest_month_threshold_C"] == \
        full.attrs["tundra_warmest_month_threshold_C"]
    assert win.attrs["tundra_threshold_from"] == "50km grid calibration"
    # the window holds tundra, boreal and sea, so the comparison is not vacuous
    assert set(np.unique(win["biome"].values)) >= {0, 1, 2}
    assert (win["continent"].values > 0).any()


def test_tile_map_of_a_window_tile_is_the_full_grid_tile() -> None:
    from odc.geo.geobox import GeoBox

    src = GeoBox((300, 900), Affine(0.1, 0.0, 90.0, 0.0, -0.1, 85.0), "EPSG:4326")
    wt = Tile(4, 24, 10, 40)
    ft = Tile(R0 + 4, R0 + 24, C0 + 10, C0 + 40)
    a, b = tile_map(src, WIN, wt), tile_map(src, FULL, ft)
    assert a.window == b.window and len(a.strips) == len(b.strips) > 0
    for sa, sb in zip(a.strips, b.strips, strict=True):
        np.testing.assert_array_equal(sa.cell, sb.cell)
        np.testing.assert_array_equal(sa.pix, sb.pix)
    np.testing.assert_array_equal(a.sample_cell, b.sample_cell)


def test_run_config_accepts_a_window() -> None:
    from pydantic import ValidationError

    from abz_dask.pipeline.config import TwinInput

    assert Grid.from_preset(TwinInput(resolution=WIN.name).resolution) == WIN
    with pytest.raises(ValidationError, match="unknown grid preset"):
        TwinInput(resolution="50km[0:10,175:190]")
