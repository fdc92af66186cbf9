"""The tile upscaler and the lazy ``predict`` API on a tiny twin run (see ``tiny_run``).

Checked against independent references: scikit-learn's own ``predict`` on rows read straight from
the cube, budgets recomputed from the written maps with :func:`abz_dask.aggregation.budgets`, the
planted truth, and an uninterrupted run for the resume and scheduler tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import cloudpickle
import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import raise_if_dask_computes

from abz_dask.aggregation.budgets import annual_domain_budgets, domain_weights
from abz_dask.aggregation.zonal import domain_budgets
from abz_dask.geo.grid import Grid
from abz_dask.io.predictors import PREDICTOR_NAMES
from abz_dask.io.store import TileLedger
from abz_dask.training import load_bundle
from abz_dask.upscale import (
    ModelSet,
    UpscaleConfig,
    budget_table,
    compile_bundle,
    plan_upscale,
    predict,
    run_upscale,
)
from abz_dask.upscale.tiles import _Paths, upscale_tile

pytestmark = pytest.mark.timeout(600)


def _open(run: Path) -> tuple[xr.Dataset, xr.Dataset]:
    return (xr.open_zarr(run / "twin" / "cube.zarr", consolidated=False),
            xr.open_zarr(run / "twin" / "zones.zarr", consolidated=False))


def _models(run: Path, n_bootstrap: int | None = None) -> ModelSet:
    cube, _ = _open(run)
    return compile_bundle(load_bundle(run / "models", cube=cube), n_bootstrap=n_bootstrap)


def _upscale(run: Path, out: Path, models: ModelSet, **cfg: object) -> pd.DataFrame:
    with dask.config.set(scheduler="threads"):
        return run_upscale(run / "twin" / "cube.zarr", run / "twin" / "zones.zarr", out, models,
                           UpscaleConfig(**cfg), progress=False)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def exact(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted exact run (4 bootstraps, 16-cell tiles) on the threaded scheduler."""
    out = tmp_path_factory.mktemp("exact") / "fluxes.zarr"
    _upscale(tiny_run, out, _models(tiny_run), tile=16)
    return out


def test_predict_is_lazy_and_equals_sklearn(tiny_run: Path, exact: Path) -> None:
    cube, _ = _open(tiny_run)
    bundle = load_bundle(tiny_run / "models", cube=cube)
    model = compile_bundle(bundle, n_bootstrap=0).central["NEE"]
    with raise_if_dask_computes():
        lazy = predict(cube, model)
    assert isinstance(lazy.data, da.Array)
    assert lazy.chunks is not None and lazy.data.npartitions > 1
    stored = xr.open_zarr(exact, consolidated=False)["NEE"]
    got = lazy.sel(time=stored.time).values
    np.testing.assert_array_equal(got, stored.values)  # the two paths of our kernel agree

    # scikit-learn's predict on rows read straight from the cube (an independent path)
    valid = np.argwhere(np.isfinite(got))
    pick = valid[np.random.default_rng(0).choice(len(valid), 400, replace=False)]
    t, r, c = pick.T
    frame = pd.DataFrame({"month": stored.time.dt.month.values[t]})
    loaded = cube.load()
    tpos = np.searchsorted(loaded.time.values, stored.time.values[t])
    for name in PREDICTOR_NAMES:
        if name == "month":
            continue
        v = loaded[name]
        if v.dims == ("time",):
            frame[name] = v.values[tpos]
        elif v.dims == ("y", "x"):
            frame[name] = v.values[r, c]
        else:
            frame[name] = v.values[tpos, r, c]
    ref = bundle.models["NEE"].predict(frame)
    np.testing.assert_allclose(got[t, r, c], ref.astype(np.float32), rtol=1e-6, atol=1e-5)


def test_predictions_of_several_models_of_one_flux_do_not_collide(tiny_run: Path) -> None:
    """Central and bootstrap forests of one flux computed in one graph: every one gives what
    it gives alone (their output keys must differ, as dask names them from all inputs)."""
    cube, _ = _open(tiny_run)
    ms = _models(tiny_run, n_bootstrap=2)
    models = [ms.central["NEE"], *ms.bootstraps["NEE"]]
    part = cube.isel(time=slice(0, 12))
    together = dask.compute(*(predict(part, m) for m in models))
    for m, got in zip(models, together, strict=True):
        np.testing.assert_array_equal(got.values, predict(part, m).values)
    assert not np.array_equal(together[1].values, together[2].values, equal_nan=True)


def test_zone_sums_equal_budgets_of_the_maps(tiny_run: Path, exact: Path) -> None:
    ds = xr.open_zarr(exact, consolidated=False)
    _, zones = _open(tiny_run)
    grid = Grid.of_dataset(ds)
    w = domain_weights(zones, grid.cell_area)
    maps = annual_domain_budgets(ds[["NEE", "GPP", "Reco"]], w).compute()
    ann = domain_budgets(exact).sel(model=0).compute()
    for f in ("NEE", "GPP", "Reco"):
        np.testing.assert_allclose(ann.sel(flux=f).transpose("year", "domain").values,
                                   maps[f].transpose("year", "domain").values, rtol=1e-5)
    # identities: NEE ≈ Reco − GPP up to model error; tundra + boreal = ABZ (proxy layers)
    tab = budget_table(exact).set_index(["domain", "flux"])["estimate_tg_c_yr"]
    for f in ("NEE", "GPP", "Reco"):
        assert tab[("tundra", f)] + tab[("boreal", f)] == pytest.approx(tab[("abz", f)],
                                                                        rel=1e-9, abs=1e-6)


def test_budgets_close_to_the_planted_truth(tiny_run: Path, exact: Path) -> None:
    est = budget_table(exact).set_index(["domain", "flux"])
    truth = pd.read_csv(tiny_run / "twin" / "truth_budgets.csv")
    truth = truth.groupby(["domain", "flux"])["budget_tg_c_yr"].mean()
    for f in ("GPP", "Reco"):
        assert est.loc[("abz", f), "estimate_tg_c_yr"] == pytest.approx(truth[("abz", f)],
                                                                         rel=0.25)
    sd = est.loc[("abz", "NEE"), "boot_sd_tg_c_yr"]
    assert np.isfinite(sd) and sd > 0


def test_bootstrap_sd_maps_are_the_sd_of_replicate_annual_sums(tiny_run: Path,
                                                               tmp_path: Path) -> None:
    out = tmp_path / "reps.zarr"
    _upscale(tiny_run, out, _models(tiny_run), tile=32, store_replicates=True)
    ds = xr.open_zarr(out, consolidated=False)
    reps = ds["GPP_replicates"].groupby("time.year").sum(skipna=False)
    ref = reps.std("replicate", ddof=1).transpose("year", "y", "x").values
    np.testing.assert_allclose(ds["GPP_boot_sd"].values, ref, rtol=1e-4, atol=1e-3)


def test_same_outputs_on_a_distributed_cluster(tiny_run: Path, exact: Path,
                                               tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    out = tmp_path / "dist.zarr"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster):
        run_upscale(tiny_run / "twin" / "cube.zarr", tiny_run / "twin" / "zones.zarr", out,
                    _models(tiny_run), UpscaleConfig(tile=16), progress=False)
    a, b = (xr.open_zarr(p, consolidated=False).load() for p in (exact, out))
    for v in a.data_vars:
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=str(v))


def test_graph_does_not_grow_with_the_models(tiny_run: Path, tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    small, large = _models(tiny_run, n_bootstrap=0), _models(tiny_run)
    assert large.nbytes() > 2 * small.nbytes()
    sizes = {}
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster):
        for name, ms in (("small", small), ("large", large)):
            _, tasks = plan_upscale(tiny_run / "twin" / "cube.zarr",
                                    tiny_run / "twin" / "zones.zarr", tmp_path / f"{name}.zarr",
                                    ms, UpscaleConfig(tile=16))
            graph = {k: v for t in tasks for k, v in dict(t.__dask_graph__()).items()}
            sizes[name] = len(cloudpickle.dumps(graph))
    # without broadcasting every task would carry the models (> 30 tasks x MBs)
    assert large.nbytes() - small.nbytes() > 1e5
    assert abs(sizes["large"] - sizes["small"]) < 2_000, sizes


def test_sampled_bootstraps(tiny_run: Path, exact: Path, tmp_path: Path) -> None:
    ex = budget_table(exact).set_index(["domain", "flux"])
    out = tmp_path / "f25.zarr"
    _upscale(tiny_run, out, _models(tiny_run), tile=16, bootstrap_sample=0.25)
    s = budget_table(out).set_index(["domain", "flux"])
    # the central model is always evaluated everywhere: its budgets are unchanged
    np.testing.assert_array_equal(s["estimate_tg_c_yr"].values, ex["estimate_tg_c_yr"].values)
    # the paired difference estimator keeps the bootstrap SD of the budgets close to exact
    rel = (s["boot_sd_tg_c_yr"] / ex["boot_sd_tg_c_yr"] - 1).abs()
    assert rel.loc["abz"].max() < 0.5, rel  # 4 replicates on a tiny grid: a loose check
    sd = xr.open_zarr(out, consolidated=False)["NEE_boot_sd"]
    share = float(np.isfinite(sd.isel(year=0)).sum()) / float(
        np.isfinite(xr.open_zarr(exact, consolidated=False)["NEE_boot_sd"].isel(year=0)).sum())
    assert 0.2 < share < 0.3  # per-pixel SD exists at the sampled cells only


def test_tile_memory_is_bounded_by_the_tile_not_the_grid(tmp_path: Path) -> None:
    from conftest import TINY_PROFILE

    from abz_dask.training import resolve_profile, train_bundle
    from abz_dask.training.synthetic import synthetic_cube, synthetic_training_table
    from abz_dask.upscale.models import compile_bundle as _compile

    with dask.config.set(scheduler="synchronous"):
        bundle = train_bundle(synthetic_training_table(n_sites=30, seed=1),
                              profile=resolve_profile(TINY_PROFILE), fluxes=("NEE",),
                              seed=1, progress=False)
    models = _compile(bundle)
    peaks = {}
    for res in ("100km", "50km"):
        grid = Grid.from_preset(res)
        cube = synthetic_cube(grid, start="2001-01", periods=24).chunk(
            {"time": 12, "y": 16, "x": 16})
        cube_p, zones_p, out = tmp_path / f"c{res}.zarr", tmp_path / f"z{res}.zarr", \
            tmp_path / f"o{res}.zarr"
        cube.to_zarr(cube_p, zarr_format=3, consolidated=False)
        ny, nx = grid.shape
        inside = np.asarray(grid.north_of_south())
        zones = xr.Dataset({"land_fraction": (("y", "x"), np.where(inside, 1.0, np.nan)),
                            "abz": (("y", "x"), inside),
                            "biome": (("y", "x"), np.where(inside, 1 + (np.arange(nx) % 2)
                                                           [None, :], 0).astype(np.int8)),
                            "permafrost": (("y", "x"), inside)},
                           coords=grid.coords()).chunk(16)
        zones.to_zarr(zones_p, zarr_format=3, consolidated=False)
        tiles, _ = plan_upscale(cube_p, zones_p, out, models, UpscaleConfig(tile=16))
        centre = next(i for i, t in enumerate(tiles)
                      if t.row0 <= ny // 2 < t.row1 and t.col0 <= nx // 4 < t.col1)
        time_idx = pd.DatetimeIndex(cube.time.values)
        tracemalloc.start()
        upscale_tile(_Paths(cube_p, zones_p, out), grid, centre, tiles[centre], time_idx,
                     models, UpscaleConfig(tile=16))
        peaks[res] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert Grid.from_preset("50km").shape[0] >= 2 * Grid.from_preset("100km").shape[0] - 1
    assert peaks["50km"] == pytest.approx(peaks["100km"], rel=0.10), peaks


def _cli_upscale(run: Path, out: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "abz_dask.cli", "upscale", str(run), "--out", str(out),
           "--tile", "16", "--workers", "1"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, env={**os.environ, "CI": "true"})


def test_killed_run_resumes_only_missing_tiles_bit_identical(tiny_run: Path, exact: Path,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "killed.zarr"
    proc = _cli_upscale(tiny_run, out)
    ledger = TileLedger(out)
    total = TileLedger(exact).count()  # uninterrupted, same tiles
    deadline = time.monotonic() + 300
    while ledger.count() < max(3, total // 5) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in ledger.dir.iterdir()
            if not p.name.startswith(".")}
    assert 0 < len(done) < total, (len(done), total)
    assert _cli_upscale(tiny_run, out).wait(timeout=400) == 0
    after = {p.name: p.stat().st_mtime_ns for p in ledger.dir.iterdir()
             if not p.name.startswith(".")}
    assert len(after) == total
    assert all(after[k] == v for k, v in done.items())  # finished tiles were not recomputed
    a, b = (xr.open_zarr(p, consolidated=False).load() for p in (exact, out))
    for v in a.data_vars:
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=str(v))


def test_production_multi_forest_path_equals_sklearn_per_forest(tiny_run: Path) -> None:
    """The upscaler's path — every model of a design on ONE encoded block, box-pruned per
    tile-month chunk — gives exactly scikit-learn's ``predict`` of each forest, one by one."""
    from abz_dask.kernels.forest import PRUNE_MIN_ROWS
    from abz_dask.upscale.blocks import block_arrays, block_rows
    from abz_dask.upscale.models import predict_models

    cube, _ = _open(tiny_run)
    bundle = load_bundle(tiny_run / "models", cube=cube)
    ms = compile_bundle(bundle)
    t = np.flatnonzero(cube["time"].dt.year.values == 2002)
    arrays = block_arrays(cube, ms.predictors, slice(int(t[0]), int(t[-1]) + 1), slice(None),
                          slice(None))
    rows = block_rows(arrays, cube["time"].dt.month.values[t], ms.predictors)
    assert rows.matrix.shape[0] >= 2 * PRUNE_MIN_ROWS  # pruned chunks are exercised
    starts = [sl.start for sl in rows.month_slices]
    models = [*ms.central.values(), *(b for f in ms.fluxes for b in ms.bootstraps[f])]
    refs = [*bundle.models.values(), *(b for f in ms.fluxes for b in bundle.bootstraps[f])]
    got = predict_models(models, rows.matrix, segments=starts)
    frame = pd.DataFrame(np.asarray(rows.matrix), columns=list(rows.matrix.names))
    for k, ref in enumerate(refs):
        ref.estimator.set_params(n_jobs=1)  # scikit-learn sums the trees in order
        np.testing.assert_array_equal(got[k], ref.predict(frame), err_msg=str(k))
    # the plain path (full trees, one forest at a time) agrees too
    for k, m in enumerate(models[:4]):
        np.testing.assert_array_equal(got[k], m.predict(rows.matrix))
