"""The user's own predictors: co2 as a constant or from monthly rasters, predictor sets.

References are independent of the code under test: numpy on the rasters written here, and
scikit-learn's ``predict`` on rows assembled by hand from the cube.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import xarray as xr
import yaml
from conftest import TINY_PROFILE

from abz_dask.geo.grid import Grid
from abz_dask.io.predictors import PREDICTOR_NAMES, PREDICTORS

START, END = "2001-01", "2001-06"


def _open(path: Path) -> xr.Dataset:
    return xr.open_zarr(path, consolidated=False)


@pytest.fixture(scope="module")
def exported(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny twin exported as files, with a 6-month build-cube config (no fire) to vary."""
    from abz_dask.twin.export import export_twin

    root = tmp_path_factory.mktemp("user_predictors")
    exp = export_twin(tiny_run / "twin", root / "export", lonlat_res=1.0, ndvi_gap=False)
    cfg = yaml.safe_load(exp.config.read_text())
    cfg.update(start=START, end=END)
    cfg.pop("fire", None)  # half a year: no annual fire record
    return {"root": root, "dir": exp.config.parent, "config": cfg,
            "zones": tiny_run / "twin" / "zones.zarr"}


def _write_config(exported: dict[str, Any], name: str, edit: dict[str, Any]) -> Path:
    cfg = {**exported["config"], "predictors": {**exported["config"]["predictors"], **edit}}
    cfg["base_zones"] = str(exported["zones"])
    path = exported["dir"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_constant_co2_and_user_layer_build(exported: dict[str, Any]) -> None:
    from abz_dask.cube_build import build_cube

    grid = Grid.of_dataset(_open(exported["zones"]))
    peat = np.linspace(0.0, 3.0, grid.shape[0] * grid.shape[1]).reshape(grid.shape)
    _write_tif(exported["dir"] / "peat.tif", grid, peat.astype(np.float32))
    cfg = _write_config(exported, "constant", {
        "co2": {"value": 412.5},
        "peat": {"files": "peat.tif", "temporal": "static", "kind": "static", "units": "m"},
        "wetness": {"value": 0.25, "kind": "monthly", "units": "1"}})
    res = build_cube(cfg, exported["root"] / "constant.zarr", progress=False)
    cube = _open(res.cube)
    assert cube["co2"].dims == ("time",) and cube["co2"].dtype == np.float32
    np.testing.assert_array_equal(cube["co2"].values, np.float32(412.5))
    assert cube["co2"].attrs["source"] == "constant 412.5"
    assert "constant 412.5 ppm" in res.series["co2"]
    assert cube["wetness"].dims == ("time", "y", "x")
    np.testing.assert_array_equal(cube["wetness"].values, np.float32(0.25))
    assert cube["peat"].dims == ("y", "x") and cube["peat"].attrs["abz_kind"] == "static"
    np.testing.assert_allclose(cube["peat"].values, peat, rtol=1e-6)


def _write_tif(path: Path, grid: Grid, data: np.ndarray) -> None:
    import rasterio

    with rasterio.open(path, "w", driver="GTiff", height=grid.shape[0], width=grid.shape[1],
                       count=1, dtype="float32", crs=grid.crs, transform=grid.transform,
                       nodata=-9999.0) as ds:
        ds.write(np.where(np.isfinite(data), data, -9999.0).astype(np.float32), 1)


def test_monthly_co2_rasters_reduce_to_land_mean(exported: dict[str, Any]) -> None:
    from abz_dask.cube_build import build_cube

    zones = _open(exported["zones"])
    grid = Grid.of_dataset(zones)
    land = zones["land_fraction"].values.astype(np.float64)
    rng = np.random.default_rng(7)
    (exported["dir"] / "xco2").mkdir()
    expected = []
    for m in range(1, 7):
        a = (380.0 + 10 * m + rng.normal(0, 3, grid.shape)).astype(np.float32)
        a[rng.random(grid.shape) < 0.1] = np.nan  # no data: left out of the mean
        _write_tif(exported["dir"] / "xco2" / f"xco2_2001{m:02d}.tif", grid, a)
        v = a.astype(np.float64)
        ok = np.isfinite(v) & (land > 0)
        expected.append((v[ok] * land[ok]).sum() / land[ok].sum())
    cfg = _write_config(exported, "rasters", {
        "co2": {"files": "xco2/xco2_{year}{month:02d}.tif", "temporal": "monthly"}})
    res = build_cube(cfg, exported["root"] / "rasters.zarr", progress=False)
    cube = _open(res.cube)
    assert cube["co2"].dims == ("time",)
    np.testing.assert_allclose(cube["co2"].values, np.array(expected, np.float32), rtol=1e-6)
    assert "land-area-weighted mean" in cube["co2"].attrs["series_reduction"]
    assert "land-area-weighted mean" in res.series["co2"]


def test_config_refuses_undeclared_user_predictor(exported: dict[str, Any]) -> None:
    from abz_dask.cube_build import load_config

    cfg = _write_config(exported, "bad", {"peat": {"files": "peat.tif", "temporal": "static"}})
    with pytest.raises(ValueError, match=r"peat.*needs 'kind'"):
        load_config(cfg)
    cfg = _write_config(exported, "bad2", {"co2": {"files": "x.csv", "value": 400.0,
                                                   "temporal": "series"}})
    with pytest.raises(ValueError, match="either 'files' or a constant 'value'"):
        load_config(cfg)


# ------------------------------------------------------------------ predictor sets


def _by_hand(cube: xr.Dataset, names: list[str], model: Any, t: slice) -> np.ndarray:
    """Predictions of a central model with scikit-learn on rows built from the cube here."""
    c = cube.isel(time=t)
    nt, ny, nx = c.sizes["time"], c.sizes["y"], c.sizes["x"]
    cols = []
    for n in names:
        if n == "month":
            a = np.broadcast_to(c["time"].dt.month.values[:, None, None], (nt, ny, nx))
        else:
            v = c[n].values
            a = v if v.ndim == 3 else np.broadcast_to(
                v if v.ndim == 2 else v[:, None, None], (nt, ny, nx))
        a = np.asarray(a, np.float64)
        if n in model.encoding.codes:
            a = np.vectorize(lambda k, n=n: model.encoding.codes[n].get(int(k), np.nan)
                             if np.isfinite(k) else np.nan)(a)
        cols.append(a.astype(np.float32))
    x = np.stack([a.ravel() for a in cols], axis=1)
    ok = np.isfinite(x).all(axis=1)
    out = np.full(len(x), np.nan)
    out[ok] = model.estimator.predict(x[ok])
    return out.reshape(nt, ny, nx)


@pytest.fixture(scope="module")
def dropped(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from abz_dask.pipeline.demo import extract_stage
    from abz_dask.training import resolve_profile, run_training
    from abz_dask.upscale import UpscaleConfig, compile_bundle, run_upscale

    out = tmp_path_factory.mktemp("dropped")
    twin = tiny_run / "twin"
    prof = resolve_profile({**TINY_PROFILE, "predictors": {"drop": ["cti", "soil_ph"]}})
    with dask.config.set(scheduler="threads"):
        table, _ = extract_stage(twin / "cube.zarr", twin / "zones.zarr",
                                 twin / "abcflux_twin.csv")
        bundle: Any = run_training(table, out, profile=prof, seed=5, progress=False)
        from abz_dask.training import load_bundle

        loaded = load_bundle(out / "models", cube=_open(twin / "cube.zarr"))
        run_upscale(twin / "cube.zarr", twin / "zones.zarr", out / "fluxes.zarr",
                    compile_bundle(loaded), UpscaleConfig(start="2001-01", end="2001-12"),
                    progress=False)
    return {"out": out, "bundle": bundle, "loaded": loaded, "twin": twin}


def test_dropping_two_predictors_gives_15_inputs(dropped: dict[str, Any]) -> None:
    card = dropped["loaded"].card
    names = [p for p in PREDICTOR_NAMES if p not in ("cti", "soil_ph")]
    assert [r["name"] for r in card["predictors"]] == names
    assert {r["name"]: r["kind"] for r in card["predictors"]}["co2"] == "series"
    assert "predictors" in card["seal"]["covers"] and "predictors" in card["seal"]["fields"]
    for f, m in dropped["loaded"].models.items():
        assert m.estimator.n_features_in_ == 15, f
        assert list(card["models"][f]["central"]["predictors"]) == names
        for b in dropped["loaded"].bootstraps[f]:
            assert b.estimator.n_features_in_ == 13  # the continuous ones of the set
    assert card["bootstrap"]["mtry"] == "min(tuned mtry, 13)"


def test_upscaled_maps_equal_sklearn_on_hand_built_rows(dropped: dict[str, Any]) -> None:
    cube = _open(dropped["twin"] / "cube.zarr")
    flux = _open(dropped["out"] / "fluxes.zarr")
    names = [r["name"] for r in dropped["loaded"].card["predictors"]]
    for f in ("NEE", "GPP"):
        ref = _by_hand(cube, names, dropped["loaded"].models[f], slice(0, 12))
        got = flux[f].values.astype(np.float64)
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(ref))
        np.testing.assert_allclose(got, ref.astype(np.float32), rtol=1e-5, atol=1e-4)


@pytest.fixture(scope="module")
def with_peat(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A copy of the twin cube with a user static layer, and models trained with it added."""
    from abz_dask.pipeline.demo import extract_stage
    from abz_dask.training import resolve_profile, run_training
    from abz_dask.training.extract import read_training_table, write_training_table

    out = tmp_path_factory.mktemp("peat")
    twin = tiny_run / "twin"
    cube_path = out / "cube.zarr"
    shutil.copytree(twin / "cube.zarr", cube_path)
    cube = _open(cube_path)
    land = np.isfinite(cube["vegtype"].values)
    yy, xx = np.meshgrid(np.arange(cube.sizes["y"]), np.arange(cube.sizes["x"]), indexing="ij")
    peat = np.where(land, np.sin(yy / 3.0) + xx / 40.0, np.nan).astype(np.float32)
    tile = cube["vegtype"].encoding["chunks"]
    xr.Dataset({"peat": (("y", "x"), peat, {"abz_kind": "static", "units": "m",
                                             "long_name": "peat depth"})},
               coords={"y": cube["y"], "x": cube["x"]}).chunk(
        dict(zip(("y", "x"), tile, strict=True))).to_zarr(
        cube_path, mode="a", zarr_format=3, consolidated=False)
    with dask.config.set(scheduler="threads"):
        table, _ = extract_stage(cube_path, twin / "zones.zarr", twin / "abcflux_twin.csv")
        write_training_table(table, out / "training")
        table = read_training_table(out / "training" / "training_table.parquet")
        prof = resolve_profile({**TINY_PROFILE, "predictors": {"add": ["peat"]}})
        bundle = run_training(table, out, profile=prof, seed=5, progress=False)
    return {"out": out, "cube": cube_path, "twin": twin, "bundle": bundle, "table": table,
            "peat": peat}


def test_added_user_predictor_is_used_and_recorded(with_peat: dict[str, Any]) -> None:
    from abz_dask.training import load_bundle
    from abz_dask.upscale import compile_bundle
    from abz_dask.upscale.blocks import block_arrays, block_rows, scatter_rows

    table = with_peat["table"]
    assert table.attrs["user_predictors"][0]["name"] == "peat"
    assert table["peat"].dtype == np.float32 and table["peat"].notna().all()
    cube = _open(with_peat["cube"])
    bundle = load_bundle(with_peat["out"] / "models", cube=cube)
    rec = bundle.card["predictors"]
    assert [r["name"] for r in rec] == [*PREDICTOR_NAMES, "peat"]
    assert rec[-1] == {"name": "peat", "kind": "static", "units": "m", "categorical": False,
                       "source": "user"}
    for f, m in bundle.models.items():
        assert m.estimator.n_features_in_ == 18, f
        assert m.predictors[-1] == "peat"
        assert bundle.bootstraps[f][0].predictors[-1] == "peat"
    # peat matters to the forests: some split uses its column
    feats = {int(i) for t in bundle.models["NEE"].estimator.estimators_
             for i in t.tree_.feature if i >= 0}
    assert 17 in feats
    # rows read for the card's set, in its order, give scikit-learn's predictions
    models = compile_bundle(bundle)
    assert [p.name for p in models.predictors] == [*PREDICTOR_NAMES, "peat"]
    t = slice(0, 12)
    arrays = block_arrays(cube, models.predictors, t, slice(None), slice(None))
    rows = block_rows(arrays, cube["time"].dt.month.values[t], models.predictors)
    got = scatter_rows(models.central["NEE"].predict(rows.matrix), rows, np.float64)
    ref = _by_hand(cube, [r["name"] for r in rec], bundle.models["NEE"], t)
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(ref))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)
    # rows of the paper's 17 lack peat: refused, naming it
    plain = block_rows({k: v for k, v in arrays.items() if k != "peat"},
                       cube["time"].dt.month.values[t])
    with pytest.raises(ValueError, match="peat"):
        models.central["NEE"].predict(plain.matrix)


def test_cube_missing_a_card_predictor_is_refused(with_peat: dict[str, Any]) -> None:
    from abz_dask.training import BundleMismatchError, load_bundle

    with pytest.raises(BundleMismatchError, match=r"lacks variable\(s\) \['peat'\]"):
        load_bundle(with_peat["out"] / "models", cube=_open(with_peat["twin"] / "cube.zarr"))


def test_card_predictor_set_is_sealed(with_peat: dict[str, Any], tmp_path: Path) -> None:
    import json

    from abz_dask.training import BundleMismatchError, load_bundle

    models = tmp_path / "models"
    shutil.copytree(with_peat["out"] / "models", models)
    card = json.loads((models / "card.json").read_text())
    card["predictors"][-1]["kind"] = "monthly"
    (models / "card.json").write_text(json.dumps(card))
    with pytest.raises(BundleMismatchError, match="predictors"):
        load_bundle(models)


def test_default_profile_card_records_the_17(tiny_run: Path) -> None:
    card = __import__("json").loads((tiny_run / "models" / "card.json").read_text())
    assert [r["name"] for r in card["predictors"]] == list(PREDICTOR_NAMES)
    assert [r["kind"] for r in card["predictors"]] == [p.kind for p in PREDICTORS]
    assert card["bootstrap"]["mtry"] == "min(tuned mtry, 15)"
    assert "predictors" not in card["profile"]
