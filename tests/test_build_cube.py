"""build-cube: round trip through exported twin files, layout, training/upscale, validation.

A 100-km twin (2001–2003) is exported as GeoTIFF / NetCDF / CSV (abz_dask.twin.export) and the
cube is rebuilt from those files. Export and rebuild both use the grid's cell-centre rule, so
the rebuilt values differ from the twin's only by the export encoding (quantisation of the
integer-scaled files), by the annual layers being yearly means of the twin's monthly values, and
in the cells of the planted NDVI gap (filled by the gap filler). The tolerances below are those
errors, derived independently of the builder.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from conftest import export_variant

from abz_dask.cube_build import (
    CRSError,
    DuplicateTimeError,
    ExtentError,
    LegendError,
    MissingFileError,
    RangeError,
    TimeGapError,
    UnitsError,
    build_cube,
    load_config,
    make_plan,
)
from abz_dask.io.predictors import PREDICTORS

#: Encoding error of each exported variable (half a quantisation step; float32 exports: 0).
QUANT = {"srad": 0.05, "tair": 0.005, "ndvi": 5e-5, "soil_moisture": 5e-5, "soil_ph": 0.005,
         "tree_cover": 0.05, "nontree_cover": 0.05, "nonveg_cover": 0.05}
ANNUAL = ("tree_cover", "nontree_cover", "nonveg_cover")
#: Linear-in-time filling of one missing month of NDVI (a seasonal variable) may be off by up
#: to about half its month-to-month change; the twin's largest monthly NDVI step is < 0.3.
NDVI_FILL_TOL = 0.15


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from abz_dask.twin import generate_twin
    from abz_dask.twin.export import export_twin

    root = tmp_path_factory.mktemp("build_cube")
    layout = generate_twin(root / "twin", resolution="100km", start="2001-01", end="2003-12",
                           seed=3, n_sites=120, progress=False)
    exp = export_twin(layout, root / "export", lonlat_res=0.5)
    res = build_cube(exp.config, root / "built" / "cube.zarr", progress=False)
    return {"root": root, "layout": layout, "export": exp, "result": res}


def _open(path: Path) -> xr.Dataset:
    return xr.open_zarr(path, consolidated=False)


def test_layout_identical_to_twin(built: dict[str, Any]) -> None:
    twin = _open(built["layout"].cube)
    cube = _open(built["result"].cube)
    assert set(cube.data_vars) == set(twin.data_vars)
    assert set(cube.data_vars) - {"spatial_ref"} == {p.name for p in PREDICTORS
                                                     if p.kind != "calendar"}
    for name in set(twin.data_vars) - {"spatial_ref"}:
        a, b = twin[name], cube[name]
        assert a.dims == b.dims, name
        assert a.dtype == b.dtype, name
        assert a.chunks == b.chunks, name
        for k in ("long_name", "units", "abz_kind", "categorical"):
            assert a.attrs[k] == b.attrs[k], (name, k)
    for c in ("x", "y", "time"):
        np.testing.assert_array_equal(cube[c].values, twin[c].values)
    assert cube["spatial_ref"].attrs["crs_wkt"] == twin["spatial_ref"].attrs["crs_wkt"]
    assert cube.attrs["grid_name"] == twin.attrs["grid_name"] == "100km"
    assert cube.attrs["grid_resolution_m"] == twin.attrs["grid_resolution_m"]
    assert not Path(str(built["result"].cube) + ".tmp").exists()


def test_round_trip_within_resampling_error(built: dict[str, Any]) -> None:
    twin = _open(built["layout"].cube)
    cube = _open(built["result"].cube)
    month, lost = built["export"].ndvi_gap
    for name in set(twin.data_vars) - {"spatial_ref"}:
        a = twin[name].values.astype(np.float64)
        b = cube[name].values.astype(np.float64)
        np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b), err_msg=name)
        tol = QUANT.get(name, 0.0) + 1e-5 * np.nanmax(np.abs(a))
        err = np.abs(a - b)
        if name in ANNUAL:
            # yearly mean vs monthly value: at most the within-year range of the twin's months
            yr = twin.time.dt.year.values
            rng = np.empty_like(a)
            for y in np.unique(yr):
                s = yr == y
                rng[s] = a[s].max(axis=0) - a[s].min(axis=0)  # NaN outside the domain
            assert np.nanmax(err - rng) <= tol, name
            continue
        if name == "ndvi":
            gap = np.zeros(a.shape, bool)
            gap[month] = lost
            assert np.nanmax(err[~gap]) <= tol, name
            assert np.nanmax(err[gap]) <= NDVI_FILL_TOL
            continue
        assert np.nanmax(err) <= tol, name


def test_gap_report_counts_planted_cells(built: dict[str, Any]) -> None:
    _month, lost = built["export"].ndvi_gap
    assert lost.sum() > 10
    rep = built["result"].report
    assert rep == {"ndvi": {"linear": int(lost.sum()), "climatology": 0, "unfilled": 0}}
    attrs = _open(built["result"].cube)["ndvi"].attrs
    assert attrs["gapfilled_linear"] == int(lost.sum())


def test_built_cube_runs_through_training_and_upscale(built: dict[str, Any]) -> None:
    from abz_dask.geo.grid import Grid
    from abz_dask.io.abcflux import read_abcflux
    from abz_dask.training import load_bundle, run_training
    from abz_dask.training.extract import extract_training_table
    from abz_dask.upscale import UpscaleConfig, budget_table, compile_bundle, run_upscale

    layout, root = built["layout"], built["root"]
    cube_path = built["result"].cube
    cube = _open(cube_path)
    zones = _open(layout.zones)
    grid = Grid.from_preset("100km")
    obs = read_abcflux(layout.sites, grid=grid, zones=zones, years=(2001, 2003))
    table, _ = extract_training_table(obs, cube, grid)
    profile = {"base": "light", "tuning_trees": 8, "final_trees": 20, "bootstrap_trees": 8,
               "n_bootstrap": 2, "importance_repeats": 0, "pdp_points": 0, "n_folds": 3}
    run_training(table, root / "run", profile=profile, fluxes=("NEE",), seed=1, progress=False)
    bundle = load_bundle(root / "run" / "models", cube=cube)
    models = compile_bundle(bundle)
    budgets = {}
    for label, path in (("built", cube_path), ("twin", layout.cube)):
        out = root / f"fluxes_{label}.zarr"
        run_upscale(path, layout.zones, out, models,
                    UpscaleConfig(start="2002-01", end="2002-12"), progress=False)
        budgets[label] = budget_table(out, 2002, 2002).set_index(["domain", "flux"])
    est = budgets["built"]["estimate_tg_c_yr"]
    ref = budgets["twin"]["estimate_tg_c_yr"]
    assert np.isfinite(est).all()
    # same models on two cubes that differ only by the errors above (annual-mean covers in fire
    # cells, the filled NDVI gap); measured 0.01-2.4 % per domain, bound 3 % (empirical)
    rel = (est - ref).abs() / ref.abs().clip(lower=1.0)
    assert (rel < 0.03).all(), pd.concat([est, ref], axis=1)


def test_resume_from_ledger(built: dict[str, Any], tmp_path: Path) -> None:
    from abz_dask.cube_build.build import _build_tile, cube_template, run_plan
    from abz_dask.io.store import TileLedger, create_store, iter_tiles

    cfg, root = load_config(built["export"].config)
    cfg = cfg.model_copy(update={"end": "2001-12", "fire": None})  # one year: a third of the work
    plan = make_plan(cfg, root)
    out = tmp_path / "cube.zarr"
    tmp = out.with_name("cube.zarr.tmp")
    create_store(cube_template(plan), tmp, check_attrs=("build_config_token",))
    first = next(iter_tiles(plan.grid.shape, plan.tile))
    _build_tile(plan, first, tmp)  # a run killed after its first tile
    assert TileLedger(tmp).done(first)
    res = run_plan(plan, out, progress=False)
    assert res.resumed_tiles == 1 and res.n_tiles == len(list(iter_tiles(plan.grid.shape,
                                                                          plan.tile)))
    ref = _open(built["result"].cube).isel(time=slice(0, 12))
    got = _open(out)
    for name in ("srad", "vegtype", "tree_cover", "soil_moisture"):
        np.testing.assert_array_equal(got[name].values, ref[name].values)
    assert res.report == {"ndvi": {"linear": 0, "climatology": 0, "unfilled": 0}}


# ------------------------------------------------------------------------------------------
# validation: one test per kind of error


def _variant(built: dict[str, Any], tmp_path: Path, own: tuple[str, ...] = ()) -> Path:
    """A copy of the export (symlinked folders; ``own`` ones copied) and its config path."""
    return export_variant(built["export"].root, tmp_path / "variant", own) / "build-cube.yaml"


def _edit(cfg: Path, fn: Any) -> Path:
    d = yaml.safe_load(cfg.read_text())
    fn(d)
    cfg.unlink()
    cfg.write_text(yaml.safe_dump(d))
    return cfg


def _plan(cfg: Path) -> Any:
    c, root = load_config(cfg)
    return make_plan(c, root)


def test_missing_file_for_a_month(built: dict[str, Any], tmp_path: Path) -> None:
    cfg = _variant(built, tmp_path, own=("srad",))
    (cfg.parent / "srad" / "srad_200205.tif").unlink()
    with pytest.raises(MissingFileError, match=r"srad: no file for month\(s\) 2002-05"):
        _plan(cfg)


def test_file_without_crs(built: dict[str, Any], tmp_path: Path) -> None:
    import rasterio

    cfg = _variant(built, tmp_path, own=("static",))
    f = cfg.parent / "static" / "cti.tif"
    with rasterio.open(f) as s:
        data, tr = s.read(1), s.transform
    f.unlink()
    with rasterio.open(f, "w", driver="GTiff", height=data.shape[0], width=data.shape[1],
                       count=1, dtype=data.dtype, transform=tr) as d:
        d.write(data, 1)
    with pytest.raises(CRSError, match=r"cti: .*cti\.tif .*has no CRS"):
        _plan(cfg)
    # the configuration may supply it
    _edit(cfg, lambda d: d["predictors"]["cti"].update(crs="EPSG:4326"))
    _plan(cfg)


def test_extent_that_cannot_be_reprojected(built: dict[str, Any], tmp_path: Path) -> None:
    import rasterio
    from affine import Affine

    cfg = _variant(built, tmp_path, own=("static",))
    f = cfg.parent / "static" / "cti.tif"
    with rasterio.open(f) as s:
        data, crs = s.read(1), s.crs
    f.unlink()
    with rasterio.open(f, "w", driver="GTiff", height=data.shape[0], width=data.shape[1],
                       count=1, dtype=data.dtype, crs=crs,
                       transform=Affine(0.5, 0, -180, 0, -0.5, -10.0)) as d:  # southern ocean
        d.write(data, 1)
    with pytest.raises(ExtentError, match=r"cti: .*cti\.tif .*does not overlap the 100km grid"):
        _plan(cfg)


def test_wrong_units(built: dict[str, Any], tmp_path: Path) -> None:
    cfg = _variant(built, tmp_path, own=("static",))
    f = cfg.parent / "static" / "soc.nc"
    ds = xr.load_dataset(f)
    ds["soc"].attrs["units"] = "kg m-2"
    f.unlink()
    ds.to_netcdf(f)
    with pytest.raises(UnitsError, match=r"soc: .*soc\.nc variable 'soc' has units 'kg m-2', "
                       r"expected 't ha-1'"):
        _plan(cfg)


def test_out_of_range_after_scaling_leaves_nothing(built: dict[str, Any],
                                                   tmp_path: Path) -> None:
    cfg = _variant(built, tmp_path)
    _edit(cfg, lambda d: d["predictors"]["srad"].update(scale=10.0, valid_range=[0, 500]))
    out = tmp_path / "cube.zarr"
    with pytest.raises(RangeError, match=r"srad: \d+ value\(s\) in .*srad_\d{6}\.tif band 1 "
                       r"outside valid_range \[0, 500\]"):
        build_cube(cfg, out, progress=False)
    assert not out.exists()  # only the .tmp store (resumable) holds partial tiles


def test_codes_not_in_legend(built: dict[str, Any], tmp_path: Path) -> None:
    cfg = _variant(built, tmp_path)
    _edit(cfg, lambda d: d["predictors"]["vegtype"].update(legend=[21, 30, 31]))
    plan = _plan(cfg)
    from abz_dask.cube_build.build import _Resampler
    from abz_dask.io.store import Tile

    vp = next(v for v in plan.variables if v.name == "vegtype")
    with pytest.raises(LegendError, match=r"vegtype: codes \[.*70.*\] in .*vegtype\.tif band 1 "
                       r"are not in the declared legend \[21, 30, 31\]"):
        _Resampler(plan, Tile(0, 90, 0, 90)).variable(vp)


def test_duplicated_timestamps(built: dict[str, Any], tmp_path: Path) -> None:
    cfg = _variant(built, tmp_path, own=("srad",))
    shutil.copy(cfg.parent / "srad" / "srad_200203.tif", cfg.parent / "srad" / "srad_200203b.tif")
    _edit(cfg, lambda d: d["predictors"]["srad"].update(files="srad/srad_{year}{month:02d}*.tif"))
    with pytest.raises(DuplicateTimeError, match=r"srad: duplicated timestamp 2002-03-01 .*"
                       r"srad_200203\.tif and .*srad_200203b\.tif"):
        _plan(cfg)


def test_time_gap(built: dict[str, Any], tmp_path: Path) -> None:
    cfg = _variant(built, tmp_path, own=("snow_cover",))
    f = cfg.parent / "snow_cover" / "snow_cover_8day.nc"
    ds = xr.load_dataset(f)
    ds = ds.isel(time=[i for i in range(ds.sizes["time"]) if i != 50])  # drop one composite
    f.unlink()
    ds.to_netcdf(f)
    with pytest.raises(TimeGapError, match=r"snow_cover: 8day series jumps from 2002-01-25 to "
                       r"2002-02-10 \(16 days\) in .*snow_cover_8day\.nc"):
        _plan(cfg)


def test_missing_year_rule(built: dict[str, Any], tmp_path: Path) -> None:
    cfg = _variant(built, tmp_path, own=("covers",))
    (cfg.parent / "covers" / "tree_cover_2003.tif").unlink()
    plan = _plan(cfg)  # missing_year: previous
    vp = next(v for v in plan.variables if v.name == "tree_cover")
    assert {e.path.name for s in vp.steps[24:] for e in s} == {"tree_cover_2002.tif"}
    _edit(cfg, lambda d: d["predictors"]["tree_cover"].update(missing_year="error"))
    with pytest.raises(MissingFileError, match=r"tree_cover: no file for year 2003"):
        _plan(cfg)


def test_config_refuses_unknown_keys_and_missing_predictors(built: dict[str, Any],
                                                            tmp_path: Path) -> None:
    cfg = _variant(built, tmp_path)
    _edit(cfg, lambda d: d["predictors"]["srad"].update(scael=0.1))
    with pytest.raises(ValueError, match="scael"):
        load_config(cfg)
    _edit(cfg, lambda d: (d["predictors"]["srad"].pop("scael"), d["predictors"].pop("soc")))
    with pytest.raises(ValueError, match=r"\['soc'\] have no source"):
        load_config(cfg)


# ------------------------------------------------------------------------------------------
# units of the pipeline, against analytic answers


def test_gapfill_linear_and_climatology() -> None:
    from abz_dask.cube_build import fill_gaps

    months = np.tile(np.arange(1, 13), 3)
    t = np.arange(36, dtype=float)
    series = np.stack([2.0 + 0.5 * t, 10 * np.sin(2 * np.pi * t / 12) + 0.1 * t], axis=1)
    gappy = series.copy()
    gappy[[5, 6], 0] = np.nan  # 2-month interior gap: linear is exact for a linear series
    gappy[14:20, 1] = np.nan  # 6-month gap: climatology of the other two years
    gappy[0, 1] = np.nan  # leading gap: climatology
    filled, rep = fill_gaps(gappy[:, :, None], months, max_gap=2)
    np.testing.assert_allclose(filled[[5, 6], 0, 0], series[[5, 6], 0])
    for i in [0, *range(14, 20)]:
        others = [j for j in range(36) if months[j] == months[i] and j != i
                  and np.isfinite(gappy[j, 1])]
        assert filled[i, 1, 0] == pytest.approx(series[others, 1].mean())
    assert rep == {"linear": 2, "climatology": 7, "unfilled": 0}
    allnan = np.full((36, 1), np.nan)
    out, rep = fill_gaps(allnan, months)
    assert np.isnan(out).all() and rep == {"linear": 0, "climatology": 0, "unfilled": 0}


def test_decoding_sentinels_thresholds_recode_scale(tmp_path: Path) -> None:
    import rasterio
    from affine import Affine

    from abz_dask.cube_build.config import SourceSpec
    from abz_dask.cube_build.sources import open_source

    raw = np.array([[-20000, -5, 0, 1, 90, 41, 7, 255]], dtype="int16")
    f = tmp_path / "a.tif"
    with rasterio.open(f, "w", driver="GTiff", height=1, width=8, count=1, dtype="int16",
                       crs="EPSG:4326", transform=Affine(1, 0, 0, 0, -1, 60), nodata=255) as d:
        d.write(raw, 1)
    spec = SourceSpec(files="a.tif", temporal="static", scale=0.5, offset=1.0, nodata=[7],
                      nodata_below=-10000)
    with open_source(f, spec, "x") as r:
        got = r.read((0, 1), (0, 8))
    want = np.array([np.nan, -1.5, 1.0, 1.5, 46.0, 21.5, np.nan, np.nan])
    np.testing.assert_array_equal(got[0], want)
    spec = SourceSpec(files="a.tif", temporal="static", categorical=True, legend=[1, 30, 160],
                      recode={90: 30, 41: 160}, nodata_at_or_below=0)
    with open_source(f, spec, "x") as r:
        got = r.read((0, 1), (0, 8))
    np.testing.assert_array_equal(got[0], [np.nan, np.nan, np.nan, 1, 30, 160, 7, np.nan])


def test_coarse_source_is_sampled_bilinearly(tmp_path: Path) -> None:
    """A source coarser than the grid: cells without a pixel centre get the bilinear value,
    exact for a field linear in lon/lat away from the antimeridian."""
    import rasterio
    from affine import Affine

    from abz_dask.cube_build.config import SourceSpec
    from abz_dask.cube_build.sources import open_source
    from abz_dask.geo.grid import Grid
    from abz_dask.geo.regrid import tile_map
    from abz_dask.io.store import Tile

    res = 2.0  # 2-degree pixels onto the 25-km grid
    lon = -180 + (np.arange(180) + 0.5) * res
    lat = 90 - (np.arange(22) + 0.5) * res
    field = (0.3 * lat[:, None] + 0.01 * lon[None, :]).astype("float32")
    f = tmp_path / "coarse.tif"
    with rasterio.open(f, "w", driver="GTiff", height=22, width=180, count=1, dtype="float32",
                       crs="EPSG:4326", transform=Affine(res, 0, -180, 0, -res, 90)) as d:
        d.write(field, 1)
    grid = Grid.from_preset("25km")
    tile = Tile(100, 140, 100, 140)  # well inside, away from pole and antimeridian
    spec = SourceSpec(files="coarse.tif", temporal="static")
    with open_source(f, spec, "x") as r:
        tm = tile_map(r.geometry, grid, tile)
        got = tm.apply(lambda rows, cols: r.read(rows, cols), mode=False)
    assert tm.sample_cell.size > 0.5 * 40 * 40  # most cells hold no pixel centre
    y, x = grid.subset(tile.row0, tile.row1, tile.col0, tile.col1)
    from abz_dask.geo.grid import _lonlat_block

    glon, glat = _lonlat_block(y[:, None], x[None, :])
    expect = 0.3 * glat + 0.01 * glon
    sampled = np.zeros(got.size, bool)
    sampled[tm.sample_cell] = True
    np.testing.assert_allclose(got.ravel()[sampled], expect.ravel()[sampled], atol=1e-4)
    # cells holding pixel centres average them: within half a pixel's gradient of the truth
    assert np.max(np.abs(got.ravel()[~sampled] - expect.ravel()[~sampled])) < 0.3 * res


def test_paper_example_config_is_valid() -> None:
    from abz_dask.cube_build.config import BuildConfig

    path = Path(__file__).resolve().parents[1] / "examples" / "build-cube-paper-1km.yaml"
    cfg = BuildConfig.model_validate(yaml.safe_load(path.read_text()))
    assert cfg.grid == "1km" and cfg.predictors["ndvi"].scale == 1e-4
    assert cfg.predictors["vegtype"].recode == {1: 31, 90: 30, 41: 160}
    assert cfg.predictors["soil_temp"].offset == -273.15


def test_cli_build_cube(built: dict[str, Any], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from abz_dask.cli import app

    cfg = _variant(built, tmp_path, own=("srad",))
    _edit(cfg, lambda d: (d.update(end="2001-02"), d.pop("fire", None)))  # two months, no fire
    out = tmp_path / "cube.zarr"
    run = CliRunner().invoke(app, ["build-cube", str(cfg), "--out", str(out), "--workers", "0",
                                   "--no-progress"])
    assert run.exit_code == 0, run.output
    assert "cube written to" in run.output and out.exists()
    assert _open(out).sizes["time"] == 2
    (cfg.parent / "srad" / "srad_200102.tif").unlink()
    run = CliRunner().invoke(app, ["build-cube", str(cfg), "--out", str(tmp_path / "b.zarr"),
                                   "--workers", "0"])
    assert run.exit_code == 2
    assert "srad: no file for month(s) 2001-02" in run.output
