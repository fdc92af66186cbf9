"""A corpus of malformed inputs to every entry point: each gives one clean error naming the file,
the field or variable and the value (exit code 2 through the CLI), and leaves nothing that a
rerun would take for a finished output.

Valid inputs are a 100-km twin (2001–2002) exported as real-format files
(:func:`abz_dask.twin.export.export_twin`); each case breaks one thing in a copy. Builds run two
months (``end: 2001-02``) to stay quick. Cases are grouped by input kind: ``test_raster_*``
(predictor sources), ``test_zones_*`` (zone sources), ``test_store_*`` (cube and zones stores
read by the later stages), ``test_build_config_*`` (the build-cube YAML itself; what
``tests/test_build_cube.py`` already covers is not repeated).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from conftest import export_variant
from typer.testing import CliRunner

from abz_dask.cli import app
from abz_dask.cube_build import (
    CRSError,
    ExtentError,
    MissingFileError,
    UnitsError,
    load_config,
    make_plan,
)
from abz_dask.cube_build.validate import (
    SERIES_FORMAT,
    ReadError,
    SentinelError,
    SeriesFormatError,
    ZoneError,
)

runner = CliRunner()


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from abz_dask.twin import generate_twin
    from abz_dask.twin.export import export_twin

    root = tmp_path_factory.mktemp("bad_inputs")
    layout = generate_twin(root / "twin", resolution="100km", start="2001-01", end="2002-12",
                           seed=5, n_sites=60, progress=False)
    exp = export_twin(layout, root / "export", lonlat_res=1.0, ndvi_gap=False)
    return {"root": root, "layout": layout, "export": exp}


# ------------------------------------------------------------------------------------------
# helpers


def _variant(twin: dict[str, Any], tmp_path: Path, own: tuple[str, ...] = (),
             end: str = "2001-02") -> Path:
    """A copy of the export (folders symlinked, ``own`` ones copied), its config cut to
    ``end``; returns the config path."""
    src = twin["export"].root
    dst = export_variant(src, tmp_path / "variant", own, skip=("build-cube.yaml",))
    d = yaml.safe_load((src / "build-cube.yaml").read_text())
    d["end"] = end
    cfg = dst / "build-cube.yaml"
    cfg.write_text(yaml.safe_dump(d))
    return cfg


def _edit(cfg: Path, fn: Callable[[dict[str, Any]], object]) -> Path:
    d = yaml.safe_load(cfg.read_text())
    fn(d)
    cfg.write_text(yaml.safe_dump(d))
    return cfg


def _plan(cfg: Path) -> Any:
    c, root = load_config(cfg)
    return make_plan(c, root)


def _cli_fails(cfg: Path, tmp_path: Path, *needles: str) -> str:
    """Run ``build-cube CFG --out`` and check: exit 2, one ``error:`` line naming every
    needle, no traceback, no cube or zones store at the output, no finished ``.tmp``."""
    out = tmp_path / "out" / "cube.zarr"
    res = runner.invoke(app, ["build-cube", str(cfg), "--out", str(out), "--workers", "0",
                              "--no-progress"])
    text = res.output
    assert res.exit_code == 2, (res.exit_code, text, res.exception)
    assert "error:" in text and "Traceback" not in text, text
    for n in needles:
        assert n in text, (n, text)
    assert not out.exists()
    assert not (out.parent / "zones.zarr").exists()
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():  # only a resumable store of unfinished tiles, never a renamed cube
        assert not (tmp / "zarr.json").exists() or "build_report" not in json.loads(
            (tmp / "zarr.json").read_text()).get("attributes", {})
    return text


def _rewrite_tif(path: Path, fn: Callable[[np.ndarray], np.ndarray], *,
                 nodata: float | str | None = "keep", crs: Any = "keep",
                 transform: Any = "keep") -> None:
    import rasterio

    with rasterio.open(path) as s:
        data, prof = s.read(1), s.profile
    prof = dict(prof)
    if nodata != "keep":
        prof["nodata"] = nodata
    if crs != "keep":
        prof["crs"] = crs
    if transform != "keep":
        prof["transform"] = transform
    path.unlink()
    new = fn(data)
    prof["dtype"] = str(new.dtype)
    with rasterio.open(path, "w", **prof) as d:
        d.write(new, 1)


# ------------------------------------------------------------------------------------------
# rasters


def test_raster_truncated_geotiff_header(twin: dict[str, Any], tmp_path: Path) -> None:
    cfg = _variant(twin, tmp_path, own=("srad",))
    f = cfg.parent / "srad" / "srad_200101.tif"
    f.write_bytes(f.read_bytes()[:64])
    with pytest.raises(ReadError, match=r"srad: .*srad_200101\.tif cannot be opened as a "
                       r"GeoTIFF"):
        _plan(cfg)
    _cli_fails(cfg, tmp_path, "srad:", "srad_200101.tif", "cannot be opened as a GeoTIFF")


def test_raster_truncated_geotiff_data(twin: dict[str, Any], tmp_path: Path) -> None:
    cfg = _variant(twin, tmp_path, own=("srad",))
    f = cfg.parent / "srad" / "srad_200102.tif"
    b = f.read_bytes()
    f.write_bytes(b[: len(b) // 2])
    text = _cli_fails(cfg, tmp_path, "srad:", "srad_200102.tif", "band 1", "cannot be read at "
                      "rows")
    assert "truncated or corrupt" in text


def test_raster_truncated_netcdf(twin: dict[str, Any], tmp_path: Path) -> None:
    cfg = _variant(twin, tmp_path, own=("snow_cover",))
    f = cfg.parent / "snow_cover" / "snow_cover_8day.nc"
    b = f.read_bytes()
    f.write_bytes(b[: len(b) // 3])
    with pytest.raises(ReadError, match=r"snow_cover: .*snow_cover_8day\.nc cannot be opened "
                       r"as NetCDF"):
        _plan(cfg)
    _cli_fails(cfg, tmp_path, "snow_cover:", "snow_cover_8day.nc", "NetCDF")


def test_raster_geotiff_given_as_series_csv(twin: dict[str, Any], tmp_path: Path) -> None:
    cfg = _variant(twin, tmp_path)
    _edit(cfg, lambda d: d["predictors"]["co2"].update(files="static/cti.tif"))
    with pytest.raises(SeriesFormatError, match=r"co2: .*cti\.tif is a GeoTIFF, not a CSV "
                       r"series \(temporal: series\)"):
        _plan(cfg)
    text = _cli_fails(cfg, tmp_path, "co2:", "cti.tif", "GeoTIFF", "'time'", "'value'")
    assert "UnicodeDecodeError" not in text and "codec" not in text


def test_raster_series_csv_with_a_non_number(twin: dict[str, Any], tmp_path: Path) -> None:
    cfg = _variant(twin, tmp_path, own=("co2.csv",))
    f = cfg.parent / "co2.csv"
    lines = f.read_text().splitlines()
    lines[2] = lines[2].split(",")[0] + ",37O.5"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(SeriesFormatError, match=r"co2: .*co2\.csv line 3: column 'value' "
                       r"value '37O\.5' is not a number"):
        _plan(cfg)


def test_raster_series_csv_in_the_wrong_units(twin: dict[str, Any], tmp_path: Path) -> None:
    cfg = _variant(twin, tmp_path, own=("co2.csv",))
    f = cfg.parent / "co2.csv"
    df = pd.read_csv(f)
    df["value"] = df["value"] * 1e-6  # mole fraction instead of ppm
    df.to_csv(f, index=False)
    with pytest.raises(UnitsError, match=r"co2: \d+ of \d+ values of .*co2\.csv column 'value' "
                       r"lie outside what co2 can be in ppm"):
        _plan(cfg)


def test_raster_monthly_co2_rasters_of_another_quantity(twin: dict[str, Any],
                                                         tmp_path: Path) -> None:
    """Monthly co2 rasters are accepted (reduced to the land-weighted mean), but radiation
    rasters given as co2 fail the plausibility of co2 in ppm before anything is written."""
    cfg = _variant(twin, tmp_path)
    _edit(cfg, lambda d: d["predictors"]["co2"].update(files="srad/srad_{year}{month:02d}.tif",
                                                       temporal="monthly"))
    _cli_fails(cfg, tmp_path, "co2", "ppm")


def test_raster_static_co2_message_explains_the_series_format(twin: dict[str, Any],
                                                              tmp_path: Path) -> None:
    cfg = _variant(twin, tmp_path)
    _edit(cfg, lambda d: d["predictors"]["co2"].update(files="srad/srad_{year}{month:02d}.tif",
                                                       temporal="static"))
    with pytest.raises(ValueError, match="temporal 'static' cannot feed a series") as e:
        load_config(cfg)
    assert SERIES_FORMAT in str(e.value)


def test_raster_netcdf_missing_variable(twin: dict[str, Any], tmp_path: Path) -> None:
    cfg = _variant(twin, tmp_path)
    _edit(cfg, lambda d: d["predictors"]["soil_moisture"].update(variable="soil_moist"))
    _cli_fails(cfg, tmp_path, "soil_moisture:", "soil_moisture_monthly_epsg3413.nc",
               "no variable 'soil_moist'", "'sm'")


def test_raster_variable_named_for_a_geotiff(twin: dict[str, Any], tmp_path: Path) -> None:
    cfg = _variant(twin, tmp_path)
    _edit(cfg, lambda d: d["predictors"]["cti"].update(variable="cti"))
    _cli_fails(cfg, tmp_path, "cti:", "cti.tif", "variable: 'cti'", "band")


def test_raster_band_not_in_file(twin: dict[str, Any], tmp_path: Path) -> None:
    cfg = _variant(twin, tmp_path)
    _edit(cfg, lambda d: d["predictors"]["cti"].update(band=3))
    _cli_fails(cfg, tmp_path, "cti:", "cti.tif", "1 band(s), band 3 requested")


def test_raster_without_crs(twin: dict[str, Any], tmp_path: Path) -> None:
    cfg = _variant(twin, tmp_path, own=("static",))
    _rewrite_tif(cfg.parent / "static" / "soil_ph.tif", lambda a: a, crs=None)
    with pytest.raises(CRSError, match=r"soil_ph: .*soil_ph\.tif \(band 1\) has no CRS"):
        _plan(cfg)
    _cli_fails(cfg, tmp_path, "soil_ph:", "soil_ph.tif", "has no CRS", "'crs'")


def test_raster_not_overlapping_the_grid(twin: dict[str, Any], tmp_path: Path) -> None:
    from affine import Affine

    cfg = _variant(twin, tmp_path, own=("static",))
    _rewrite_tif(cfg.parent / "static" / "soil_ph.tif", lambda a: a,
                 transform=Affine(1.0, 0, -180, 0, -1.0, 10.0))  # tropics and south
    with pytest.raises(ExtentError, match=r"soil_ph: .*soil_ph\.tif .*does not overlap"):
        _plan(cfg)
    _cli_fails(cfg, tmp_path, "soil_ph:", "soil_ph.tif", "does not overlap the 100km grid",
               "bounds")


def _kelvin(a: np.ndarray) -> np.ndarray:
    """int16 x 0.01 degC -> the same encoding in kelvin (nodata -32768 kept)."""
    out = a.astype(np.int32)
    ok = a != -32768
    out[ok] += 27315
    return out.astype(np.int16)


def test_raster_kelvin_declared_as_degc(twin: dict[str, Any], tmp_path: Path) -> None:
    cfg = _variant(twin, tmp_path, own=("tair",))
    for f in (cfg.parent / "tair").glob("tair_2001-0[12].tif"):
        _rewrite_tif(f, _kelvin)
    _edit(cfg, lambda d: d["predictors"]["tair"].update(units="degC"))
    with pytest.raises(UnitsError, match=r"tair: \d+ of \d+ values of .*tair_2001-01\.tif "
                       r"band 1 lie outside what tair can be in degC \(\[-80, 60\]\): .*"
                       r"kelvin: set offset: -273\.15"):
        _plan(cfg)
    _cli_fails(cfg, tmp_path, "tair:", "tair_2001-01.tif", "band 1", "degC", "median 2")


def test_raster_kelvin_valid_range_declared_as_degc(twin: dict[str, Any],
                                                    tmp_path: Path) -> None:
    cfg = _variant(twin, tmp_path)
    _edit(cfg, lambda d: d["predictors"]["tair"].update(units="degC", valid_range=[225, 295]))
    _cli_fails(cfg, tmp_path, "tair: valid_range [225, 295] in predictors.tair",
               "outside what tair can be in degC")


def test_raster_undeclared_integer_sentinel(twin: dict[str, Any], tmp_path: Path) -> None:
    cfg = _variant(twin, tmp_path, own=("tair",))
    for f in (cfg.parent / "tair").glob("tair_*.tif"):
        _rewrite_tif(f, lambda a: a, nodata=None)  # the file no longer declares -32768
    _edit(cfg, lambda d: d["predictors"]["tair"].update(nodata=[]))
    with pytest.raises(SentinelError, match=r"tair: raw value -32768 in \d+ of \d+ pixels of "
                       r".*tair_2001-01\.tif band 1 decodes to -327\.68 degC"):
        _plan(cfg)
    _cli_fails(cfg, tmp_path, "tair:", "tair_2001-01.tif", "-32768", "'nodata'")


def test_raster_percent_given_for_a_fraction(twin: dict[str, Any], tmp_path: Path) -> None:
    cfg = _variant(twin, tmp_path, own=("static",))
    _rewrite_tif(cfg.parent / "static" / "permafrost_prob.tif",
                 lambda a: np.where(a == -9999.0, a, a * 100).astype(np.float32))
    with pytest.raises(UnitsError, match=r"permafrost_prob: .*permafrost_prob\.tif band 1 lie "
                       r"outside what permafrost_prob can be in 1 .*percent: set scale: 0\.01"):
        _plan(cfg)


def test_raster_values_outside_valid_range_found_before_writing(twin: dict[str, Any],
                                                                tmp_path: Path) -> None:
    cfg = _variant(twin, tmp_path)
    _edit(cfg, lambda d: d["predictors"]["srad"].update(scale=10.0, valid_range=[0, 500]))
    _cli_fails(cfg, tmp_path, "srad:", "srad_200101.tif band 1", "outside valid_range [0, 500]")


def test_raster_a_folder_given_as_a_file(twin: dict[str, Any], tmp_path: Path) -> None:
    cfg = _variant(twin, tmp_path)
    _edit(cfg, lambda d: d["predictors"]["cti"].update(files="static"))
    _cli_fails(cfg, tmp_path, "cti:", "static is a folder")


# ------------------------------------------------------------------------------------------
# zones


def _zones_cfg(twin: dict[str, Any], tmp_path: Path, zones: dict[str, Any],
               **top: Any) -> Path:
    cfg = _variant(twin, tmp_path)
    return _edit(cfg, lambda d: d.update(zones=zones, **top))


def _geojson(path: Path, features: list[dict[str, Any]], crs: str | None = None) -> Path:
    d: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    if crs:
        d["crs"] = {"type": "name", "properties": {"name": crs}}
    path.write_text(json.dumps(d))
    return path


def _box(x0: float, y0: float, x1: float, y1: float, **props: Any) -> dict[str, Any]:
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {"type": "Feature", "properties": props,
            "geometry": {"type": "Polygon", "coordinates": [ring]}}


def test_zones_missing_file(twin: dict[str, Any], tmp_path: Path) -> None:
    cfg = _zones_cfg(twin, tmp_path, {"biome": {"file": "nowhere/biomes.gpkg",
                                                "attribute": "zone"}})
    with pytest.raises(FileNotFoundError, match=r"zones biome: file .*nowhere/biomes\.gpkg "
                       r"does not exist \(zones\.biome\.file: 'nowhere/biomes\.gpkg'\)"):
        _plan(cfg)
    _cli_fails(cfg, tmp_path, "zones biome", "biomes.gpkg", "does not exist")


def test_zones_file_with_no_features(twin: dict[str, Any], tmp_path: Path) -> None:
    _geojson(tmp_path / "empty.geojson", [])
    cfg = _zones_cfg(twin, tmp_path, {"biome": {"file": str(tmp_path / "empty.geojson"),
                                                "attribute": "zone"}})
    _cli_fails(cfg, tmp_path, "zones biome", "empty.geojson", "has no features")


def test_zones_file_with_points_not_polygons(twin: dict[str, Any], tmp_path: Path) -> None:
    pts = [{"type": "Feature", "properties": {"zone": "tundra"},
            "geometry": {"type": "Point", "coordinates": [20.0, 70.0]}}]
    f = _geojson(tmp_path / "pts.geojson", pts)
    cfg = _zones_cfg(twin, tmp_path, {"biome": {"file": str(f), "attribute": "zone"}})
    _cli_fails(cfg, tmp_path, "zones biome", "pts.geojson", "Point", "no polygons")
    # read directly (user_zone_layer), the same file is refused the same way
    from abz_dask.cube_build.config import ZoneSpec
    from abz_dask.cube_build.user_zones import user_zone_layer
    from abz_dask.geo.grid import Grid

    with pytest.raises(ZoneError, match=r"pts\.geojson: holds no polygons .*\['Point'\]"):
        user_zone_layer(ZoneSpec(file=str(f), attribute="zone"), "biome",
                        Grid.from_preset("100km"), tmp_path)


def test_zones_polygon_in_another_crs_not_overlapping(twin: dict[str, Any],
                                                      tmp_path: Path) -> None:
    # Web Mercator metres around the equator / Gulf of Guinea: nowhere near 49N
    f = _geojson(tmp_path / "merc.geojson", [_box(0, 0, 1e6, 1e6, zone="tundra")],
                 crs="urn:ogc:def:crs:EPSG::3857")
    cfg = _zones_cfg(twin, tmp_path, {"biome": {"file": str(f), "attribute": "zone"}})
    with pytest.raises(ExtentError, match=r"zones biome: .*merc\.geojson \(WGS 84 / "
                       r"Pseudo-Mercator, bounds \(0\.0, 0\.0, 1000000\.0, 1000000\.0\)\) does "
                       r"not overlap the 100km grid"):
        _plan(cfg)
    _cli_fails(cfg, tmp_path, "zones biome", "merc.geojson", "Pseudo-Mercator",
               "does not overlap")


def test_zones_attribute_that_does_not_exist(twin: dict[str, Any], tmp_path: Path) -> None:
    f = _geojson(tmp_path / "b.geojson", [_box(-180, 66, 180, 90, zone="tundra")])
    cfg = _zones_cfg(twin, tmp_path, {"biome": {"file": str(f), "attribute": "BIOME_NAME"}})
    _cli_fails(cfg, tmp_path, "zones biome", "b.geojson", "no attribute 'BIOME_NAME'",
               "['zone']")


def test_zones_cube_store_given_as_zone_file(twin: dict[str, Any], tmp_path: Path) -> None:
    cube = twin["layout"].cube
    cfg = _zones_cfg(twin, tmp_path, {"biome": {"file": str(cube), "attribute": "zone"}})
    _cli_fails(cfg, tmp_path, "zones biome", "cube.zarr", "is a Zarr store", "base_zones")


def test_zones_cube_store_given_as_base_zones(twin: dict[str, Any], tmp_path: Path) -> None:
    f = _geojson(tmp_path / "b.geojson", [_box(-180, 66, 180, 90, zone="tundra")])
    cfg = _zones_cfg(twin, tmp_path, {"biome": {"file": str(f), "attribute": "zone"}},
                     base_zones=str(twin["layout"].cube))
    _cli_fails(cfg, tmp_path, "base_zones", "cube.zarr", "lacks the zone layer(s)",
               "land_fraction", "predictor cube")


def test_zones_corrupt_geopackage(twin: dict[str, Any], tmp_path: Path) -> None:
    f = tmp_path / "bad.gpkg"
    f.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 8)
    cfg = _zones_cfg(twin, tmp_path, {"biome": {"file": str(f), "attribute": "zone"}})
    _cli_fails(cfg, tmp_path, "zones biome", "bad.gpkg", "cannot be read as a vector file")


def test_zones_raster_not_overlapping(twin: dict[str, Any], tmp_path: Path) -> None:
    from affine import Affine

    src = twin["export"].root / "static" / "vegtype.tif"
    f = tmp_path / "regions.tif"
    shutil.copy(src, f)
    _rewrite_tif(f, lambda a: a, transform=Affine(1.0, 0, -180, 0, -1.0, -20.0))
    cfg = _zones_cfg(twin, tmp_path, {"key_region": {"file": str(f)}})
    _cli_fails(cfg, tmp_path, "zones key_region", "regions.tif", "does not overlap")


# ------------------------------------------------------------------------------------------
# stores


def test_store_zones_without_land_fraction(twin: dict[str, Any], tmp_path: Path) -> None:
    z = xr.open_zarr(twin["layout"].zones, consolidated=False).drop_vars("land_fraction")
    for v in z.variables.values():
        v.encoding = {}
    bad = tmp_path / "zones_noland.zarr"
    z.to_zarr(bad, zarr_format=3, consolidated=False)
    f = _geojson(tmp_path / "b.geojson", [_box(-180, 66, 180, 90, zone="tundra")])
    cfg = _zones_cfg(twin, tmp_path, {"biome": {"file": str(f), "attribute": "zone"}},
                     base_zones=str(bad))
    _cli_fails(cfg, tmp_path, "base_zones", "zones_noland.zarr", "['land_fraction']")
    from abz_dask.cube_build.user_zones import check_zone_store

    with pytest.raises(ZoneError, match=r"zones store .*zones_noland\.zarr lacks the zone "
                       r"layer\(s\) \['land_fraction'\]"):
        check_zone_store(xr.open_zarr(bad, consolidated=False), bad)


def _sites(twin: dict[str, Any]) -> pd.DataFrame:
    """A few site-months at the first sites of the twin."""
    s = pd.read_csv(twin["layout"].sites).drop_duplicates("site_name").head(5)
    return pd.DataFrame({"site_id": s["site_name"].astype(str), "year": 2001, "month": 3,
                         "latitude": s["latitude"], "longitude": s["longitude"],
                         "NEE": -1.0}).reset_index(drop=True)


def _damaged_cube(twin: dict[str, Any], tmp_path: Path, var: str,
                  damage: Callable[[Path], None]) -> tuple[Path, tuple[int, ...]]:
    from abz_dask.geo.grid import Grid

    cube = tmp_path / "cube.zarr"
    shutil.copytree(twin["layout"].cube, cube)
    obs = _sites(twin)
    grid = Grid.from_preset("100km")
    x, y = grid.project(obs["longitude"].to_numpy(), obs["latitude"].to_numpy())
    row, col = grid.index_of(x, y)
    chunk = xr.open_zarr(cube, consolidated=False)[var].encoding["chunks"]
    block = (0, int(row[0]) // chunk[1], int(col[0]) // chunk[2])
    damage(cube / var / "c" / "/".join(map(str, block)))
    return cube, block


def _extract(twin: dict[str, Any], cube: Path) -> Any:
    from abz_dask.geo.grid import Grid
    from abz_dask.training.extract import extract_training_table

    ds = xr.open_zarr(cube, consolidated=False)
    return extract_training_table(_sites(twin), ds, Grid.of_dataset(ds))


def test_store_cube_chunk_written_as_float64(twin: dict[str, Any], tmp_path: Path) -> None:
    from numcodecs import Zstd

    from abz_dask.training.extract import StoreError

    def f64(p: Path) -> None:
        raw = Zstd().decode(p.read_bytes())
        p.write_bytes(Zstd().encode(np.frombuffer(raw, np.float32).astype(np.float64)
                                    .tobytes()))

    cube, block = _damaged_cube(twin, tmp_path, "tair", f64)
    with pytest.raises(StoreError, match=rf"predictor cube .*cube\.zarr: variable 'tair' chunk "
                       rf"\({block[0]}, {block[1]}, {block[2]}\) .*cannot be read .*float32"):
        _extract(twin, cube)


def test_store_cube_chunk_truncated(twin: dict[str, Any], tmp_path: Path) -> None:
    from abz_dask.training.extract import StoreError

    def cut(p: Path) -> None:
        b = p.read_bytes()
        p.write_bytes(b[: len(b) // 2])

    cube, block = _damaged_cube(twin, tmp_path, "srad", cut)
    with pytest.raises(StoreError, match=rf"cube\.zarr: variable 'srad' chunk \({block[0]}, "
                       rf"{block[1]}, {block[2]}\) \(time 0:12, y .*file srad/c/"):
        _extract(twin, cube)


def test_store_zones_given_as_cube(twin: dict[str, Any]) -> None:
    from abz_dask.training.extract import StoreError

    with pytest.raises(StoreError, match=r"predictor cube .*zones\.zarr lacks variable\(s\) "
                       r"\['srad', .*zones store given as the cube"):
        _extract(twin, twin["layout"].zones)


def test_store_cube_variable_with_wrong_dims(twin: dict[str, Any]) -> None:
    from abz_dask.geo.grid import Grid
    from abz_dask.training.extract import StoreError, extract_training_table

    ds = xr.open_zarr(twin["layout"].cube, consolidated=False)
    ds["tair"] = ds["tair"].isel(time=0, drop=True)
    with pytest.raises(StoreError, match=r"variable 'tair' has dims \('y', 'x'\), expected "
                       r"\('time', 'y', 'x'\)"):
        extract_training_table(_sites(twin), ds, Grid.from_preset("100km"))


def test_store_cube_on_another_grid(twin: dict[str, Any]) -> None:
    from abz_dask.geo.grid import Grid

    ds = xr.open_zarr(twin["layout"].cube, consolidated=False)
    ds.attrs["grid_resolution_m"] = 50_000.0
    with pytest.raises(ValueError, match=r"cube\.zarr: grid_resolution_m 50000 gives a polar "
                       r"grid of shape \(180, 180\), the store has \(y, x\) = \(90, 90\)"):
        Grid.of_dataset(ds)


# ------------------------------------------------------------------------------------------
# build-cube configuration (unknown predictor keys and missing predictors: test_build_cube.py)


@pytest.mark.parametrize(("change", "needles"), [
    (lambda d: d.update(tiles=8), ("unknown key 'tiles'",)),
    (lambda d: d.update(tile="big"), ("tile:", "'big'")),
    (lambda d: d.update(tile=4), ("tile:", "greater than or equal to 8", "(value 4)")),
    (lambda d: d["predictors"]["srad"].update(scale="ten"), ("predictors.srad.scale", "'ten'")),
    (lambda d: d["predictors"]["srad"].update(nodata=65535), ("predictors.srad.nodata",
                                                              "65535")),
    (lambda d: d["predictors"]["srad"].update(temporal="hourly"),
     ("predictors.srad.temporal", "'hourly'")),
    (lambda d: d.update(start="2001-13"), ("start", "'2001-13' is not a month")),
    (lambda d: d.update(start="2002-01", end="2001-02"),
     ("start 2002-01 is after end 2001-02",)),
], ids=["unknown_top_key", "tile_not_int", "tile_too_small", "scale_not_number",
        "nodata_not_list", "temporal_unknown", "month_13", "end_before_start"])
def test_build_config_refused(twin: dict[str, Any], tmp_path: Path,
                              change: Callable[[dict[str, Any]], object],
                              needles: tuple[str, ...]) -> None:
    cfg = _edit(_variant(twin, tmp_path), change)
    with pytest.raises(ValueError, match=r"build-cube\.yaml"):
        load_config(cfg)
    _cli_fails(cfg, tmp_path, "build-cube.yaml", *needles)


def test_build_config_pattern_matching_no_file(twin: dict[str, Any], tmp_path: Path) -> None:
    cfg = _variant(twin, tmp_path)
    _edit(cfg, lambda d: d["predictors"]["vpd"].update(files="vdp/vpd_{year}{month:02d}.tif"))
    with pytest.raises(MissingFileError, match=r"vpd: no file matches .*vdp/vpd_\{year\}"):
        _plan(cfg)
    _cli_fails(cfg, tmp_path, "vpd: no file matches", "vdp/vpd_{year}{month:02d}.tif")


@pytest.mark.parametrize(("grid", "needle"), [
    ("75km", "grid: unknown grid resolution '75km'"),
    (-5000, "grid: resolution -5000.0 m must be a positive"),
    (1e9, "coarser than the whole domain"),
], ids=["unknown_preset", "negative", "huge"])
def test_build_config_bad_grid(twin: dict[str, Any], tmp_path: Path, grid: Any,
                               needle: str) -> None:
    cfg = _edit(_variant(twin, tmp_path), lambda d: d.update(grid=grid))
    _cli_fails(cfg, tmp_path, needle)


def test_build_config_file_missing_or_not_a_mapping(tmp_path: Path) -> None:
    _cli_fails(tmp_path / "nowhere.yaml", tmp_path, "nowhere.yaml", "not found")
    f = tmp_path / "list.yaml"
    f.write_text("- grid: 50km\n")
    _cli_fails(f, tmp_path, "list.yaml", "must be a YAML mapping, got list")


def test_build_config_bad_source_through_run_check(twin: dict[str, Any],
                                                   tmp_path: Path) -> None:
    cfg = _variant(twin, tmp_path, own=("tair",))
    for f in (cfg.parent / "tair").glob("tair_2001-0[12].tif"):
        _rewrite_tif(f, _kelvin)
    run_cfg = tmp_path / "run.yaml"
    sites = twin["layout"].sites
    run_cfg.write_text(json.dumps({"output": str(tmp_path / "run"), "input": {
        "kind": "build", "cube_config": str(cfg), "abcflux": str(sites)}}))
    res = runner.invoke(app, ["run", str(run_cfg), "--check"])
    assert res.exit_code == 2, res.output
    assert "input.cube_config" in res.output and "tair_2001-01.tif" in res.output
    assert "kelvin" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "run").exists()
