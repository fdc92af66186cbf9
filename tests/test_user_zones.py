"""Zones from users' polygons and rasters, checked against analytic answers on the 100-km grid.

The polygons are latitude bands and polar caps, so the expected layer of every cell follows from
its centre latitude (cell-centre rule), and the area of a cap is known exactly because the grid is
equal-area: a cap north of latitude φ projects to a disc of radius r(φ), area π r(φ)².
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import shapely
import xarray as xr

from abz_dask.cube_build import CRSError, LegendError
from abz_dask.cube_build.config import BuildConfig, ZoneSpec
from abz_dask.cube_build.user_zones import user_zone_layer, write_user_zones
from abz_dask.geo.grid import Grid, radius_of_latitude

GRID = Grid.from_preset("100km")
BIOME_ATTRS = {"flag_values": np.array([0, 1, 2], np.int8),
               "flag_meanings": "outside_abz tundra boreal"}


def _band(lat0: float, lat1: float, lon0: float = -180.0, lon1: float = 180.0) -> object:
    return shapely.box(lon0, lat0, lon1, lat1)


def _write_vector(path: Path, geoms: list[object], names: list[str], *, driver: str = "GeoJSON",
                  crs: str | None = "EPSG:4326") -> Path:
    import pyogrio.raw

    pyogrio.raw.write(path, np.array(shapely.to_wkb(geoms), dtype=object),
                      [np.array(names, dtype=object)], ["zone"], driver=driver,
                      geometry_type="Polygon", crs=crs)
    return path


@pytest.fixture(scope="module")
def lat() -> np.ndarray:
    return GRID.lonlat()[1]


@pytest.fixture(scope="module")
def lon() -> np.ndarray:
    return GRID.lonlat()[0]


def test_biome_from_named_polygons_cell_centre_rule(tmp_path: Path, lat: np.ndarray) -> None:
    f = _write_vector(tmp_path / "biomes.geojson", [_band(49, 66), _band(66, 90)],
                      ["Boreal Forests/Taiga", "Tundra"])
    spec = ZoneSpec(file=str(f), attribute="zone",
                    values={"Boreal Forests/Taiga": 2, "Tundra": 1})
    lay = user_zone_layer(spec, "biome", GRID, tmp_path, BIOME_ATTRS)
    expect = np.where(lat >= 66, 1, np.where(lat >= 49, 2, 0))
    clear = (np.abs(lat - 66) > 0.3) & (np.abs(lat - 49) > 0.3)  # away from the edges
    assert clear.sum() > 3000
    np.testing.assert_array_equal(lay[clear], expect[clear])


def test_flag_names_map_without_values(tmp_path: Path, lat: np.ndarray) -> None:
    f = _write_vector(tmp_path / "b.geojson", [_band(60, 90)], ["Tundra"])
    lay = user_zone_layer(ZoneSpec(file=str(f), attribute="zone"), "biome", GRID, tmp_path,
                          BIOME_ATTRS)
    clear = np.abs(lat - 60) > 0.3
    np.testing.assert_array_equal(lay[clear], np.where(lat >= 60, 1, 0)[clear])


def test_fractional_land_of_a_polar_cap_has_the_exact_area(tmp_path: Path,
                                                           lat: np.ndarray) -> None:
    f = _write_vector(tmp_path / "cap.geojson", [_band(70, 90)], ["land"])
    spec = ZoneSpec(file=str(f), method="fraction", supersample=16)
    frac = user_zone_layer(spec, "land_fraction", GRID, tmp_path)
    area = float(frac.sum()) * GRID.cell_area
    exact = math.pi * radius_of_latitude(70.0) ** 2
    assert abs(area / exact - 1) < 2e-3
    assert np.all(frac[lat > 71.5] == 1) and np.all(frac[lat < 68.5] == 0)
    edge = frac[(frac > 0) & (frac < 1)]
    assert edge.size > 50  # boundary cells are fractional, not 0/1


def test_value_not_in_legend(tmp_path: Path) -> None:
    f = _write_vector(tmp_path / "b.geojson", [_band(49, 66), _band(66, 90)],
                      ["boreal", "Desert"])
    with pytest.raises(LegendError, match=r"biome: value 'Desert' of attribute 'zone' in "
                       r".*b\.geojson is not in the legend"):
        user_zone_layer(ZoneSpec(file=str(f), attribute="zone"), "biome", GRID, tmp_path,
                        BIOME_ATTRS)


@pytest.mark.filterwarnings("ignore:'crs' was not provided")
def test_vector_without_crs(tmp_path: Path) -> None:
    f = _write_vector(tmp_path / "b.shp", [_band(60, 90)], ["tundra"], driver="ESRI Shapefile",
                      crs=None)
    with pytest.raises(CRSError, match=r"b\.shp: the vector layer has no CRS"):
        user_zone_layer(ZoneSpec(file=str(f), attribute="zone"), "biome", GRID, tmp_path,
                        BIOME_ATTRS)


def test_categorical_raster_zone_by_mode(tmp_path: Path, lon: np.ndarray,
                                         lat: np.ndarray) -> None:
    import rasterio
    from affine import Affine

    res = 0.25
    lons = -180 + (np.arange(1440) + 0.5) * res
    codes = np.where(lons < -100, 1, 3).astype("uint8")
    data = np.broadcast_to(codes, (168, 1440)).copy()  # 90N..48N
    f = tmp_path / "regions.tif"
    with rasterio.open(f, "w", driver="GTiff", height=168, width=1440, count=1, dtype="uint8",
                       crs="EPSG:4326", transform=Affine(res, 0, -180, 0, -res, 90)) as d:
        d.write(data, 1)
    attrs = {"flag_values": np.arange(5, dtype=np.int8),
             "flag_meanings": "none alaska canada europe siberia"}
    lay = user_zone_layer(ZoneSpec(file=str(f)), "key_region", GRID, tmp_path, attrs)
    far = (np.hypot(*np.meshgrid(GRID.x, GRID.y)) > 6e5) & (lat > 49.5) \
        & (np.abs(lon + 100) > 3) & (np.abs(np.abs(lon) - 180) > 3)
    np.testing.assert_array_equal(lay[far], np.where(lon < -100, 1, 3)[far])


def test_write_user_zones_replaces_only_the_given_layers(tmp_path: Path,
                                                         lat: np.ndarray) -> None:
    from abz_dask.geo.zones import build_zones

    _write_vector(tmp_path / "biomes.gpkg", [_band(55, 66), _band(66, 90)],
                      ["boreal", "tundra"], driver="GPKG")
    cfg = BuildConfig.model_construct(grid="100km", zones={
        "biome": ZoneSpec(file="biomes.gpkg", attribute="zone")}, base_zones=None)
    out = write_user_zones(cfg, tmp_path, tmp_path / "zones.zarr")
    z = xr.open_zarr(out, consolidated=False)
    base = build_zones(GRID)
    assert z["biome"].attrs["proxy"] == "no" and "biomes.gpkg" in z["biome"].attrs["source"]
    assert z["biome"].dtype == base["biome"].dtype
    clear = (np.abs(lat - 66) > 0.3) & (np.abs(lat - 55) > 0.3)
    np.testing.assert_array_equal(z["biome"].values[clear],
                                  np.where(lat >= 66, 1, np.where(lat >= 55, 2, 0))[clear])
    for name in ("abz", "land_fraction", "permafrost", "reccap2"):
        np.testing.assert_array_equal(z[name].values, base[name].values)
    assert not (tmp_path / "zones.zarr.tmp").exists()
    assert write_user_zones(cfg, tmp_path, out) == out  # a rerun with the same settings: done
    other = BuildConfig.model_construct(grid="100km", zones={
        "biome": ZoneSpec(file="biomes.gpkg", attribute="zone", other=0)}, base_zones=None)
    with pytest.raises(FileExistsError, match="other zone settings"):
        write_user_zones(other, tmp_path, out)


def test_other_code_for_unlisted_values(tmp_path: Path, lat: np.ndarray) -> None:
    f = _write_vector(tmp_path / "pf.geojson", [_band(49, 60), _band(60, 90)], ["L", "C"])
    spec = ZoneSpec(file=str(f), attribute="zone", values={"C": 1}, other=0)
    lay = user_zone_layer(spec, "permafrost", GRID, tmp_path)
    clear = np.abs(lat - 60) > 0.3
    np.testing.assert_array_equal(lay[clear], (lat >= 60).astype(int)[clear])
    with pytest.raises(LegendError, match=r"permafrost: value 'L'"):
        user_zone_layer(ZoneSpec(file=str(f), attribute="zone", values={"C": 1}),
                        "permafrost", GRID, tmp_path)


@pytest.mark.parametrize("subdomains", ["clip", "keep"])
def test_a_user_domain_clips_the_subdomains(tmp_path: Path, lat: np.ndarray,
                                            subdomains: str) -> None:
    from abz_dask.geo.zones import build_zones

    _write_vector(tmp_path / "dom.gpkg", [_band(60, 70)], ["in"], driver="GPKG")
    cfg = BuildConfig.model_construct(
        grid="100km", base_zones=None, subdomains=subdomains,
        zones={"abz": ZoneSpec(file="dom.gpkg", attribute="zone", values={"in": 1}, other=0)})
    z = xr.open_zarr(write_user_zones(cfg, tmp_path, tmp_path / "zones.zarr"),
                     consolidated=False)
    base = build_zones(GRID)
    inside = z["abz"].values.astype(bool)
    clear = (np.abs(lat - 60) > 0.3) & (np.abs(lat - 70) > 0.3)
    np.testing.assert_array_equal(inside[clear], ((lat > 60) & (lat < 70))[clear])
    for name in ("biome", "permafrost"):
        outside_base = (base[name].values != 0) & ~inside
        assert outside_base.sum() > 0  # the built-in layer does extend outside the domain
        if subdomains == "clip":
            assert (z[name].values[~inside] == 0).all()
            np.testing.assert_array_equal(z[name].values[inside], base[name].values[inside])
            assert z[name].attrs["clipped_to_abz_cells"] == int(outside_base.sum())
        else:
            np.testing.assert_array_equal(z[name].values, base[name].values)
