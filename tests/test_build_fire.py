"""Fire for real inputs: the twin's fire exported as rasters, rebuilt by build-cube's ``fire``
section, and carried through ``abz-dask run`` (``input.kind: build``) into Table 1.

A 100-km twin (2001–2004, fire 2002–2004) is exported (:mod:`abz_dask.twin.export`): the annual
burned fraction as monthly lon/lat GeoTIFFs (0.5°) and the emissions as one monthly NetCDF on
EPSG:3413 (25 km) in kg C m⁻² month⁻¹, each year spread over May–August. Two references:

* the rasters' own mass, Σ value × true pixel area, computed here independently of the package
  (pyproj ``Geod`` polygon areas on WGS84 for the lon/lat pixels, the projected area over the
  areal scale factor for EPSG:3413): the build must conserve it (measured: ≤ 1e-7 relative);
* the twin's ``fire.zarr``: the exported pixels take the value of the twin cell holding their
  centre, so the rasters differ from the twin by that sampling (pixels straddle cell edges),
  measured below; the build adds no error of its own to it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import rasterio
import xarray as xr
import yaml
from conftest import TINY_PROFILE, export_variant

from abz_dask.aggregation.zonal import fire_budgets
from abz_dask.cube_build import CubeBuildError, RangeError, UnitsError, build_cube

YEARS = [2002, 2003, 2004]
#: Relative error of the rebuilt domain totals against the twin's: the cell-centre sampling of
#: the export (measured on this twin: burned fraction ≤ 6.5 %, emissions ≤ 5.7 % in a year; over
#: 2002–2004 ≤ 3.4 %, the permafrost emissions; ABZ emissions −2.6 %).
YEAR_TOL = 0.08
MEAN_TOL = 0.05
#: Burned area / carbon that may move out of a domain into its neighbours (pixels straddling a
#: domain edge), as a share of the domain's period total.
LEAK_TOL = 0.06


def _abz(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("abz-dask")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(exe), *cmd], cwd=cwd, capture_output=True, text=True, env=env,
                          check=False)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from abz_dask.twin import generate_twin
    from abz_dask.twin.export import export_twin

    root = tmp_path_factory.mktemp("build_fire")
    layout = generate_twin(root / "twin", resolution="100km", start="2001-01", end="2004-12",
                           seed=0, n_sites=60, progress=False)
    exp = export_twin(layout, root / "export", lonlat_res=0.5)
    return {"root": root, "layout": layout, "export": exp}


@pytest.fixture(scope="module")
def run(exported: dict[str, Any]) -> Path:
    """``abz-dask run`` on the exported rasters (build input, tiny profile, Table 1)."""
    root = exported["root"]
    cfg = {"output": "run",
           "input": {"kind": "build", "cube_config": "export/build-cube.yaml",
                     "abcflux": "twin/abcflux_twin.csv",
                     "truth_budgets": "twin/truth_budgets.csv"},
           "training": {"profile": TINY_PROFILE},
           "budgets": {"start_year": 2001, "end_year": 2004},
           "trends": {"enabled": False}, "report": {"enabled": True},
           "cluster": {"kind": "threads"}, "progress": False}
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    res = _abz(["run", "run.yaml"], root)
    assert res.returncode == 0, res.stdout + res.stderr
    return root / "run"


def _open(path: Path) -> xr.Dataset:
    return xr.open_zarr(path, consolidated=False).load()


def _raster_mass(exp: Path) -> dict[str, np.ndarray]:
    """Annual Σ value × true pixel area of the exported fire rasters (m² burned, g C)."""
    from pyproj import CRS, Geod, Proj

    geod = Geod(ellps="WGS84")
    bf = []
    for y in YEARS:
        tot = 0.0
        for m in range(1, 13):
            with rasterio.open(exp / "fire" / f"burned_fraction_{y}{m:02d}.tif") as ds:
                v = ds.read(1, masked=True).filled(0.0).astype(np.float64)
                t = ds.transform
            lat = t.f + np.arange(v.shape[0] + 1) * t.e
            row_area = np.array([abs(geod.polygon_area_perimeter(
                [0.0, t.a, t.a, 0.0], [lat[i], lat[i], lat[i + 1], lat[i + 1]])[0])
                for i in range(v.shape[0])])
            tot += float((v.sum(axis=1) * row_area).sum())
        bf.append(tot)
    with xr.open_dataset(exp / "fire" / "fire_emissions_monthly_epsg3413.nc") as ds:
        x, y = ds["x"].values, ds["y"].values
        proj = Proj(CRS.from_wkt(ds["polar_stereographic"].attrs["crs_wkt"]))
        xx, yy = np.meshgrid(x, y)
        lon, lat = proj(xx, yy, inverse=True)
        area = abs(x[1] - x[0]) * abs(y[1] - y[0]) / np.asarray(
            proj.get_factors(lon, lat).areal_scale)
        kg = ds["C"].fillna(0.0).values.astype(np.float64)
    em = (kg * 1000.0 * area).reshape(len(YEARS), 12, -1).sum(axis=(1, 2))
    return {"burned_fraction": np.array(bf), "fire_emissions": em}


def _domain_totals(fire: xr.Dataset, zones: xr.Dataset, var: str) -> pd.DataFrame:
    """Annual domain totals (Tg burned-area-m² or Tg C) of a fire store, ``year × domain``."""
    cell = float(fire.attrs["grid_resolution_m"]) ** 2
    return fire_budgets(fire, zones, cell, variable=var).to_pandas()


@pytest.mark.slow  # the run fixture: build-cube + train + upscale + report, ≈ 140 s
def test_fire_store_has_the_twins_schema(exported: dict[str, Any], run: Path) -> None:
    twin = _open(exported["layout"].fire)
    built = _open(run / "inputs" / "fire.zarr")
    assert set(built.data_vars) == set(twin.data_vars)
    for name in twin.data_vars:
        a, b = twin[name], built[name]
        assert a.dims == b.dims and a.dtype == b.dtype, name
        assert a.encoding["chunks"] == b.encoding["chunks"], name
        for k in ("long_name", "units"):
            assert a.attrs.get(k) == b.attrs.get(k), (name, k)
    for c in ("year", "y", "x"):
        np.testing.assert_array_equal(built[c].values, twin[c].values)
    assert built["year"].dtype == twin["year"].dtype
    assert built.attrs["grid_name"] == twin.attrs["grid_name"] == "100km"
    assert built.attrs["grid_resolution_m"] == twin.attrs["grid_resolution_m"]
    assert built["spatial_ref"].attrs["crs_wkt"] == twin["spatial_ref"].attrs["crs_wkt"]
    assert not (run / "inputs" / "fire.zarr.tmp").exists()


@pytest.mark.slow  # the run fixture: build-cube + train + upscale + report, ≈ 140 s
def test_build_conserves_the_rasters_mass(exported: dict[str, Any], run: Path) -> None:
    built = _open(run / "inputs" / "fire.zarr")
    mass = _raster_mass(exported["export"].root)
    cell = float(built.attrs["grid_resolution_m"]) ** 2
    for name, ref in mass.items():
        got = built[name].astype(np.float64).sum(("y", "x")).values * cell
        np.testing.assert_allclose(got, ref, rtol=1e-4, err_msg=name)


@pytest.mark.slow  # the run fixture: build-cube + train + upscale + report, ≈ 140 s
def test_fire_domain_totals_match_the_twin(exported: dict[str, Any], run: Path) -> None:
    twin = _open(exported["layout"].fire)
    built = _open(run / "inputs" / "fire.zarr")
    zones = _open(exported["layout"].zones)
    for name in ("burned_fraction", "fire_emissions"):
        a = _domain_totals(twin, zones, name)
        b = _domain_totals(built, zones, name)
        big = a.columns[a.mean() > 0.05 * a.mean().max()]  # domains with real fire
        rel = (b[big] - a[big]) / a[big]
        assert float(rel.abs().max().max()) <= YEAR_TOL, (name, rel)
        mean_rel = (b[big].mean() - a[big].mean()) / a[big].mean()
        assert float(mean_rel.abs().max()) <= MEAN_TOL, (name, mean_rel)
        # what leaves the abz domain: built total on the grid vs in the domain
        grid_tot = float(built[name].sum()) * float(built.attrs["grid_resolution_m"]) ** 2
        assert 1 - b["abz"].sum() * 1e12 / grid_tot <= LEAK_TOL, name


@pytest.mark.slow  # the run fixture: build-cube + train + upscale + report, ≈ 140 s
def test_table1_has_nee_plus_fire_of_the_twin(exported: dict[str, Any], run: Path) -> None:
    t1 = pd.read_csv(run / "table1.csv")
    nee = t1[t1["flux"] == "NEE"].set_index("domain")
    assert nee["nee_plus_fire"].notna().all() and nee["fire_budget"].notna().all()
    twin = _open(exported["layout"].fire)
    zones = _open(run / "inputs" / "zones.zarr")
    ref = _domain_totals(twin, zones, "fire_emissions").loc[YEARS].mean()
    big = ref.index[ref > 0.05 * ref.max()]
    rel = (nee.loc[big, "fire_budget"] - ref[big]) / ref[big]
    assert float(rel.abs().max()) <= MEAN_TOL, rel
    assert "NEE+fire" in (run / "table1.md").read_text()


@pytest.mark.slow  # the run fixture
def test_budgets_csv_has_nee_plus_fire_rows(exported: dict[str, Any], run: Path) -> None:
    """budgets.csv: NEE+fire = NEE + the fire budget over the fire record's years, for the
    estimate (as Table 1's column) and for the truth (the twin's NEE + the run's fire input, so
    that the error column is the NEE error)."""
    tab = pd.read_csv(run / "budgets.csv")
    both = tab[tab["flux"] == "NEE+fire"].set_index("domain")
    assert set(both.index) == {"abz", "tundra", "boreal", "permafrost"}
    t1 = pd.read_csv(run / "table1.csv")
    t1 = t1[t1["flux"] == "NEE"].set_index("domain")
    np.testing.assert_allclose(both["estimate_tg_c_yr"], t1.loc[both.index, "nee_plus_fire"],
                               rtol=1e-9)
    zones = _open(exported["layout"].zones)
    fire = _domain_totals(_open(run / "inputs" / "fire.zarr"), zones,
                          "fire_emissions").loc[YEARS]
    truth = pd.read_csv(exported["layout"].truth_budgets)
    nee = truth[(truth["flux"] == "NEE") & truth["year"].isin(YEARS)]
    ref = nee.pivot(index="year", columns="domain", values="budget_tg_c_yr")
    expect = (ref.loc[YEARS] + fire[ref.columns]).mean()
    np.testing.assert_allclose(both["truth_tg_c_yr"], expect[both.index], rtol=1e-9)


# --------------------------------------------------------------------------------------------
# bad fire inputs: refused naming file, variable and value; nothing written


def _variant(exported: dict[str, Any], tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    src = exported["export"].root
    dst = export_variant(src, tmp_path / "variant", own=("fire", "build-cube.yaml"))
    return dst, yaml.safe_load((dst / "build-cube.yaml").read_text())


def _refused(cfg: dict[str, Any], dst: Path, tmp_path: Path, err: type[Exception],
             *words: str) -> str:
    (dst / "build-cube.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = tmp_path / "out"
    with pytest.raises(err) as info:
        build_cube(dst / "build-cube.yaml", out / "cube.zarr", progress=False)
    msg = str(info.value)
    for w in words:
        assert w in msg, (w, msg)
    for name in ("cube.zarr", "fire.zarr"):
        assert not (out / name).exists(), name
    return msg


def test_fire_file_in_other_units_is_refused(exported: dict[str, Any], tmp_path: Path) -> None:
    dst, cfg = _variant(exported, tmp_path)
    cfg["fire"]["fire_emissions"]["units"] = "g C m-2 month-1"  # the file says kg
    path = dst / "fire" / "fire_emissions_monthly_epsg3413.nc"
    _refused(cfg, dst, tmp_path, UnitsError, f"{path} C has units", "kg C m-2 month-1",
             "g C m-2 month-1")
    assert not (tmp_path / "out").exists()


def test_percent_declared_as_fraction_is_refused(exported: dict[str, Any],
                                                 tmp_path: Path) -> None:
    dst, cfg = _variant(exported, tmp_path)
    for p in sorted((dst / "fire").glob("burned_fraction_*.tif")):
        with rasterio.open(p, "r+") as ds:
            v = ds.read(1)
            ds.write(np.where(v == ds.nodata, v, v * 100).astype(v.dtype), 1)
    msg = _refused(cfg, dst, tmp_path, RangeError, "fire.burned_fraction", "band 1", "0..1",
                   "declare units '%'")
    assert "burned_fraction_20" in msg  # the sampled file named
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_out_of_range_value_while_writing_leaves_no_store(exported: dict[str, Any],
                                                          tmp_path: Path) -> None:
    dst, cfg = _variant(exported, tmp_path)
    bad = dst / "fire" / "burned_fraction_200306.tif"  # a month the planning does not sample
    with rasterio.open(bad, "r+") as ds:
        v = ds.read(1)
        i, j = np.argwhere(v > 0.05)[0]
        v[i, j] = 1.7
        ds.write(v, 1)
    _refused(cfg, dst, tmp_path, RangeError, str(bad), "band 1", "max 1.7")


def test_fire_month_missing_is_refused(exported: dict[str, Any], tmp_path: Path) -> None:
    dst, cfg = _variant(exported, tmp_path)
    (dst / "fire" / "burned_fraction_200406.tif").unlink()
    _refused(cfg, dst, tmp_path, CubeBuildError, "fire.burned_fraction", "2004-06")
    cfg["fire"]["start_year"] = 1999
    _refused(cfg, dst, tmp_path, CubeBuildError, "fire.start_year 1999", "2001..2004")


def test_fire_section_validation(exported: dict[str, Any], tmp_path: Path) -> None:
    dst, cfg = _variant(exported, tmp_path)
    cfg["fire"]["fire_emissions"]["units"] = "kg m-2 s-1"
    (dst / "build-cube.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    with pytest.raises(ValueError, match="fire_emissions: units 'kg m-2 s-1' are not understood"):
        build_cube(dst / "build-cube.yaml", tmp_path / "cube.zarr", progress=False)
    cfg["fire"]["fire_emissions"]["units"] = "kg C m-2 yr-1"
    (dst / "build-cube.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    with pytest.raises(ValueError, match="do not fit temporal 'monthly'"):
        build_cube(dst / "build-cube.yaml", tmp_path / "cube.zarr", progress=False)
    assert not any(tmp_path.glob("*.zarr*"))
    shutil.rmtree(dst)
