"""The versioned (Icechunk) flux store against the plain Zarr store of the same run.

References: the plain-Zarr upscale of the same twin run (every variable, chunk and attribute,
and ``budgets.csv`` byte for byte), an uninterrupted run for the kill/resume test, the snapshot
that was committed before an interrupted run (what a reader must keep seeing), and on the local
S3 server (moto) the same plain store.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import xarray as xr
from conftest import TINY_PROFILE

from abz_dask.aggregation.zonal import open_flux_store
from abz_dask.io.integrity import check_digest
from abz_dask.io.versioned import history, main_snapshot, open_repo, tag, tags
from abz_dask.pipeline.config import parse_config
from abz_dask.pipeline.runner import run_pipeline
from abz_dask.training import load_bundle
from abz_dask.upscale import UpscaleConfig, compile_bundle, run_upscale
from abz_dask.upscale import tiles as tiles_mod

pytestmark = pytest.mark.timeout(300)


def _config(run: Path, store: str, **upscale: Any) -> Any:
    return parse_config({"output": str(run), "progress": False, "store": store,
                         "input": {"kind": "twin", "resolution": "100km", "start": "2001-01",
                                   "end": "2003-12", "seed": 0},
                         "training": {"profile": TINY_PROFILE, "seed": 448},
                         "upscale": {"tile": 16, **upscale},
                         "budgets": {"start_year": 2001, "end_year": 2003},
                         "trends": {"enabled": False}, "report": {"enabled": False}})


def copy_run(src: Path, dst: Path) -> Path:
    """A private copy of the shared tiny run (twin, training and models; no fluxes)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.lock", "fluxes*",
                                                            "upscale*", "budgets*"))
    return dst


@pytest.fixture(scope="module")
def twins(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same run through the pipeline with a plain and with an Icechunk flux store."""
    out = {}
    for store in ("zarr", "icechunk"):
        run = copy_run(tiny_run, tmp_path_factory.mktemp(store) / "run")
        with dask.config.set(scheduler="threads"):
            t0 = time.perf_counter()
            run_pipeline(_config(run, store))
            print(f"{store}: pipeline (upscale + budgets) {time.perf_counter() - t0:.1f} s")
        out[store] = run
    return out


def _assert_same(a: xr.Dataset, b: xr.Dataset) -> None:
    assert set(a.variables) == set(b.variables)
    for v in a.variables:
        assert np.array_equal(a[v].values, b[v].values, equal_nan=a[v].dtype.kind == "f"), v
        assert a[v].encoding.get("chunks") == b[v].encoding.get("chunks"), v
        assert a[v].attrs == b[v].attrs, v


def test_icechunk_store_equals_the_plain_store(twins: dict[str, Path]) -> None:
    plain, ice = twins["zarr"], twins["icechunk"]
    repo = ice / "fluxes.icechunk"
    a = xr.open_zarr(plain / "fluxes.zarr", consolidated=False)
    b = open_flux_store(repo)
    _assert_same(a, b)
    assert a.attrs == b.attrs
    assert (plain / "budgets.csv").read_bytes() == (ice / "budgets.csv").read_bytes()
    # one commit on main, recording the stage's key and inputs; the record holds its id
    rec = json.loads((ice / "upscale.stage.json").read_text())
    commits = history(repo)
    assert len(commits) == 1
    meta = commits[0]["metadata"]
    assert meta["stage"] == "upscale" and meta["config_hash"] == rec["key"]
    assert meta["inputs"] == rec["inputs"] and meta["abz_dask_version"]
    assert rec["info"]["snapshot"] == commits[0]["id"] == main_snapshot(repo)
    assert rec["outputs_digest"] == {"fluxes.icechunk": [0, f"icechunk:main@{commits[0]['id']}"]}
    assert not (ice / "fluxes.icechunk.wip").exists()
    # a rerun skips the current stage; a tag (a release) is not damage
    tag(repo, "t0")
    res = run_pipeline(_config(ice, "icechunk"))
    assert res.status()["upscale"] == "skipped"
    assert len(history(repo)) == 1


def test_integrity_names_a_moved_main(twins: dict[str, Path], tmp_path: Path) -> None:
    repo = shutil.copytree(twins["icechunk"] / "fluxes.icechunk", tmp_path / "fluxes.icechunk")
    recorded = {"fluxes.icechunk": [0, f"icechunk:main@{main_snapshot(repo)}"]}
    assert check_digest(recorded, tmp_path, [repo]) == []
    s = open_repo(repo).writable_session("main")
    import zarr

    zarr.open_group(s.store, mode="r+").attrs["edited"] = 1
    sid = s.commit("an edit outside the pipeline")
    problems = check_digest(recorded, tmp_path, [repo])
    assert len(problems) == 1 and sid in problems[0] and "branch main" in problems[0]


_SCRIPT = """
import sys, dask, xarray as xr
from pathlib import Path
from abz_dask.training import load_bundle
from abz_dask.upscale import UpscaleConfig, compile_bundle, run_upscale
run, out = Path(sys.argv[1]), Path(sys.argv[2])
cube = xr.open_zarr(run / "twin" / "cube.zarr", consolidated=False)
models = compile_bundle(load_bundle(run / "models", cube=cube))
with dask.config.set(scheduler="threads", num_workers=1):
    run_upscale(run / "twin" / "cube.zarr", run / "twin" / "zones.zarr", out, models,
                UpscaleConfig(tile=16), progress=False, checkpoint_tiles=1)
"""


def _done(ck: Path) -> int:
    try:
        return len(json.loads(ck.read_bytes())["done"])
    except (OSError, ValueError, KeyError):
        return 0


def test_killed_upscale_resumes_uncommitted_work_and_commits_once(
        tiny_run: Path, twins: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    run = tiny_run
    repo = tmp_path / "fluxes.icechunk"
    cube = xr.open_zarr(run / "twin" / "cube.zarr", consolidated=False)
    bundle = load_bundle(run / "models", cube=cube)
    # an earlier commit (2 bootstraps): what readers must see until the new one is committed
    with dask.config.set(scheduler="threads"):
        run_upscale(run / "twin" / "cube.zarr", run / "twin" / "zones.zarr", repo,
                    compile_bundle(bundle, n_bootstrap=2), UpscaleConfig(tile=16),
                    progress=False)
    before = main_snapshot(repo)
    ck = tmp_path / "fluxes.icechunk.wip" / "checkpoint.json"
    proc = subprocess.Popen([sys.executable, "-c", _SCRIPT, str(run), str(repo)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    total = 36
    deadline = time.monotonic() + 200
    while _done(ck) < 6 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        seen = open_flux_store(repo)  # a reader during the run: the earlier commit only
        assert seen.attrs["n_bootstrap"] == 2
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = _done(ck)
    assert 0 < done < total, done
    assert main_snapshot(repo) == before
    assert open_flux_store(repo).attrs["n_bootstrap"] == 2  # no half-written stage visible

    calls: list[str] = []
    real = tiles_mod.upscale_tile

    def counting(paths, grid, index, tile, *args):  # type: ignore[no-untyped-def]
        calls.append(tile.key)
        return real(paths, grid, index, tile, *args)

    monkeypatch.setattr(tiles_mod, "upscale_tile", counting)
    with dask.config.set(scheduler="threads"):
        df = run_upscale(run / "twin" / "cube.zarr", run / "twin" / "zones.zarr", repo,
                         compile_bundle(bundle), UpscaleConfig(tile=16), progress=False)
    assert len(calls) == total - done and df.attrs["resumed"] == done
    assert len(df) == total
    commits = history(repo)
    assert [c["id"] for c in commits[1:]] == [before] and commits[0]["id"] == df.attrs["snapshot"]
    assert not ck.parent.exists()
    _assert_same(xr.open_zarr(twins["zarr"] / "fluxes.zarr", consolidated=False),
                 open_flux_store(repo))
    assert open_flux_store(repo, version=before).attrs["n_bootstrap"] == 2


def test_flux_repository_on_s3(tiny_run: Path, twins: dict[str, Path], s3_bucket: str,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Create, commit, tag and read a flux repository on the local S3 server; the saved work
    holds no credentials."""
    repo = f"{s3_bucket}/run/fluxes.icechunk"
    cube = xr.open_zarr(tiny_run / "twin" / "cube.zarr", consolidated=False)
    models = compile_bundle(load_bundle(tiny_run / "models", cube=cube))
    saved: list[bytes] = []
    real = tiles_mod._Checkpoint.save

    def keep(self, work):  # type: ignore[no-untyped-def]
        real(self, work)
        saved.append(self.file.read_bytes())

    monkeypatch.setattr(tiles_mod._Checkpoint, "save", keep)
    with dask.config.set(scheduler="threads"):
        df = run_upscale(tiny_run / "twin" / "cube.zarr", tiny_run / "twin" / "zones.zarr",
                         repo, models, UpscaleConfig(tile=16), progress=False)
    assert saved and not any(os.environ["AWS_SECRET_ACCESS_KEY"].encode() in b for b in saved)
    assert main_snapshot(repo) == df.attrs["snapshot"]
    assert tag(repo, "v1") == df.attrs["snapshot"]
    assert tags(repo) == {"v1": df.attrs["snapshot"]}
    with pytest.raises(FileExistsError, match="v1"):
        tag(repo, "v1")
    _assert_same(xr.open_zarr(twins["zarr"] / "fluxes.zarr", consolidated=False),
                 open_flux_store(repo, version="v1"))
    with pytest.raises(ValueError, match="neither a tag"):
        open_flux_store(repo, version="nope")
