"""Fault tests of ``abz-dask run``: SIGKILL of the runner, and of one worker, in every resumable
stage (build-cube, train, upscale, trends); the rerun completes and its outputs are
bit-identical to an uninterrupted run. Also: a read-only output folder is a clear error, and
the lock file of a killed run does not block the rerun.

One tiny configuration serves every test: a 100-km twin (2001–2004, 40 sites) exported as
rasters and rebuilt by the ``build-cube`` stage (30-cell tiles: 9 tiles per tiled stage), the
tiny training profile and a 2-worker ``LocalCluster``. The module computes ONE uninterrupted
reference run; each kill test copies it up to the stage under test, so only that stage and the
later ones run again.

Each kill test starts ``python -m abz_dask.cli run CONFIG`` in its own process group, waits
until the stage has written part of its output (but not its stage record), SIGKILLs the whole
group (runner, scheduler and workers), then reruns the same command; in the rerun it SIGKILLs
one worker process (a child of the runner) once the resumed stage has made progress, so
``distributed`` must recompute that worker's tasks. The rerun must finish with exit code 0 and
the outputs of the reference run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import xarray as xr
import yaml

from abz_dask.io.locks import lock_path
from abz_dask.io.predictors import BOOTSTRAP_PREDICTORS, PREDICTOR_NAMES
from abz_dask.training import load_bundle
from abz_dask.training.extract import read_training_table
from tests.conftest import TINY_PROFILE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

#: Tile edge of the built cube, hence of the flux store and the trend maps: 9 tiles per stage.
TILE = 30
N_TILES = 9
#: Records of the training fit ledger: 3 fluxes × 3 folds × 3 mtry CV fits, 3 × (1 + 4) central
#: and bootstrap models (their ``.json``, written after the ``.skops``) and one diagnostic per
#: flux and predictor.
N_FITS = 27 + 15 + 3 * len(PREDICTOR_NAMES)
POLL = 0.01


# ------------------------------------------------------------------------------ the reference

@dataclass(frozen=True)
class Reference:
    """The uninterrupted run and what a test needs to make its own copy."""

    root: Path
    run: Path
    config: dict[str, Any]

    def config_for(self, name: str, *, trends: bool) -> tuple[Path, Path]:
        """A run config like the reference's with the run folder ``root/name``; returns the
        config file and the run folder."""
        cfg = {**self.config, "output": str(self.root / name),
               "trends": {**self.config["trends"], "enabled": trends}}
        path = self.root / f"{name}.yaml"
        path.write_text(json.dumps(cfg))
        return path, self.root / name


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """A twin exported as rasters, a build-input run config on it, and one uninterrupted run."""
    from abz_dask.twin import generate_twin
    from abz_dask.twin.export import export_twin

    root = tmp_path_factory.mktemp("faults")
    with dask.config.set(scheduler="threads"):
        lay = generate_twin(root / "twin", resolution="100km", start="2001-01", end="2004-12",
                            seed=0, n_sites=40, progress=False)
    exp = export_twin(lay, root / "export", lonlat_res=1.0)
    doc = yaml.safe_load(exp.config.read_text())
    doc["tile"] = TILE
    exp.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    config = {"input": {"kind": "build", "cube_config": str(exp.config),
                        "abcflux": str(lay.sites),
                        "truth_budgets": str(lay.root / "truth_budgets.csv")},
              "training": {"profile": TINY_PROFILE},
              "budgets": {"start_year": 2001, "end_year": 2004},
              "trends": {"enabled": True, "predictors": ["tair", "ndvi"]},
              "report": {"enabled": False},
              "cluster": {"kind": "local", "workers": 2}, "progress": False}
    ref = Reference(root, root / "reference", config)
    cfg, run = ref.config_for("reference", trends=True)
    proc = Runner(cfg, root / "reference.log")
    proc.finish()
    assert (run / "trends.stage.json").exists(), proc.output()
    assert len(_finished(run / "fluxes.zarr.done")) == N_TILES
    assert len(_cube_tiles(run)) == N_TILES
    assert len(_fit_files(run)) == N_FITS
    return ref


# ------------------------------------------------------------------------------ processes

_STARTED: list[Runner] = []


@pytest.fixture(autouse=True)
def _no_leftover_runs() -> Iterator[None]:
    """A failed test leaves no run behind: kill the process groups of its unfinished runs."""
    yield
    while _STARTED:
        run = _STARTED.pop()
        if run.proc.poll() is None:
            run.kill()


class Runner:
    """``python -m abz_dask.cli run CONFIG`` in its own process group, output to a log."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        self.started = time.time()
        # output to a file, not a pipe nobody reads while polling (a full pipe would block)
        with log.open("w") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "abz_dask.cli", "run", str(config)],
                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        _STARTED.append(self)

    def output(self) -> str:
        """What the run printed so far."""
        return self.log.read_text(errors="replace")

    def wait_for(self, cond: Callable[[], bool], what: str, timeout: float = 300) -> None:
        """Poll ``cond`` until true; fail if the run ends or ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while not cond():
            if self.proc.poll() is not None:
                pytest.fail(f"the run ended (exit {self.proc.returncode}) before {what}:\n"
                            f"{self.output()}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"timed out waiting for {what}:\n{self.output()}")
            time.sleep(POLL)

    def kill(self) -> None:
        """SIGKILL the runner and every process of its group (scheduler, nannies, workers)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def finish(self, timeout: float = 500) -> str:
        """Wait for the run to end; it must succeed. Returns its output."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the run did not finish in {timeout} s:\n{self.output()}")
        out = self.output()
        assert self.proc.returncode == 0, out
        return out

    def workers(self) -> list[int]:
        """Pids of the worker processes: children of the runner started by multiprocessing's
        ``spawn`` (not its resource tracker)."""
        found = []
        for pid in _children(self.proc.pid):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmd:
                found.append(pid)
        return found

    def kill_worker(self) -> int:
        """SIGKILL one worker process; returns its pid."""
        self.wait_for(lambda: len(self.workers()) >= 2, "two worker processes", timeout=60)
        pid = self.workers()[0]
        os.kill(pid, signal.SIGKILL)
        return pid


def _children(pid: int) -> list[int]:
    files = list(Path(f"/proc/{pid}/task").glob("*/children"))
    if not files:  # kernel without CONFIG_PROC_CHILDREN
        res = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
        return [int(x) for x in res.stdout.split()]
    out: set[int] = set()
    for f in files:
        try:
            out.update(int(x) for x in f.read_text().split())
        except OSError:  # the thread ended
            continue
    return sorted(out)


# ------------------------------------------------------------------------------ partial outputs

def _finished(folder: Path, pattern: str = "*") -> dict[str, int]:
    """Name → mtime of the finished entries of a ledger folder (no temporary files)."""
    if not folder.is_dir():
        return {}
    out = {}
    for p in folder.glob(pattern):
        if p.name.startswith(".") or ".tmp" in p.name or p.name == "key.json":
            continue
        try:
            out[p.name] = p.stat().st_mtime_ns
        except FileNotFoundError:  # replaced while listed
            continue
    return out


def _fit_files(run: Path) -> dict[str, int]:
    """The training fit ledger (``RUN/training/cv_fits/<key>/``): CV fits, models (a model is
    recorded once its ``.json`` exists) and diagnostics."""
    return {k: v for d in sorted((run / "training" / "cv_fits").glob("*/"))
            for pattern in ("*.npz", "*.json") for k, v in _finished(d, pattern).items()}


def _map_chunks(run: Path, since: float = 0.0) -> int:
    """Chunk files of the trend maps being written (``trend_maps.zarr.tmp``) after ``since``."""
    tmp = run / "trends" / "trend_maps.zarr.tmp"
    n = 0
    for root, _dirs, files in os.walk(tmp):
        if "c" not in Path(root).relative_to(tmp).parts:  # zarr v3 chunks: VAR/c/i/j
            continue
        for name in files:
            try:
                n += (Path(root) / name).stat().st_mtime >= since
            except FileNotFoundError:
                continue
    return n


def _record(run: Path, stage: str) -> Path:
    return run / f"{stage}.stage.json"


# ------------------------------------------------------------------------------ copies

_EXTRACT_OUTPUTS = ("training_table.parquet", "training_table.csv", "extract_report.csv")
_LATER = ("build-cube", "extract", "train", "upscale", "budgets", "trends", "table1",
          "report")


def _rm(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _copy_before(ref: Reference, run: Path, stage: str) -> None:
    """Copy the reference run folder, without the records and outputs of ``stage`` and of
    every later stage (so the runner skips the earlier stages and runs from ``stage``)."""
    shutil.copytree(ref.run, run, symlinks=True)
    later = _LATER[_LATER.index(stage):]
    for name in later:
        _rm(_record(run, name))
    if "train" in later:
        _rm(run / "models")
        for p in (run / "training").iterdir():
            if p.name not in _EXTRACT_OUTPUTS:
                _rm(p)
    if "upscale" in later:
        for name in ("fluxes.zarr", "fluxes.zarr.done", "fluxes.zarr.lock", "upscale_tiles.csv"):
            _rm(run / name)
    if "budgets" in later:
        _rm(run / "budgets.csv")
    if "trends" in later:
        _rm(run / "trends")


# ------------------------------------------------------------------------------ comparisons

def _same_store(a: Path, b: Path) -> None:
    """Every variable and coordinate of two Zarr stores equal, NaN positions included."""
    da_, db = (xr.open_zarr(p, consolidated=False).load() for p in (a, b))
    assert sorted(map(str, da_.variables)) == sorted(map(str, db.variables)), (a, b)
    for name in da_.variables:
        x, y = da_[name].values, db[name].values
        assert x.shape == y.shape and x.dtype == y.dtype, (a.name, name)
        nan = x.dtype.kind in "fc"
        assert np.array_equal(x, y, equal_nan=nan), f"{b}: {name} differs from {a}"
    da_attrs = {k: v for k, v in da_.attrs.items() if k != "source"}
    assert da_attrs == {k: v for k, v in db.attrs.items() if k != "source"}, (a, b)


def _same_bytes(a: Path, b: Path) -> None:
    assert a.read_bytes() == b.read_bytes(), f"{b} differs from {a}"


def _without(obj: Any, key: str) -> Any:
    """``obj`` (JSON) without ``key`` in any of its objects."""
    if isinstance(obj, dict):
        return {k: _without(v, key) for k, v in obj.items() if k != key}
    if isinstance(obj, list):
        return [_without(v, key) for v in obj]
    return obj


def _same_models(ref: Path, run: Path) -> None:
    """card.json model entries equal; every central and bootstrap forest predicts the same."""
    ca, cb = (json.loads((p / "models" / "card.json").read_text()) for p in (ref, run))
    # not the files' sha256: skops names a forest's array members by object id and stamps the
    # zip with the time, so the same forest dumped twice gives other bytes
    assert _without(ca["models"], "sha256") == _without(cb["models"], "sha256")
    ma, mb = load_bundle(ref / "models"), load_bundle(run / "models")
    tab = read_training_table(ref / "training" / "training_table.parquet")
    X = tab[list(BOOTSTRAP_PREDICTORS)].to_numpy(np.float32)
    for f in ma.fluxes:
        assert np.array_equal(ma.models[f].predict(tab), mb.models[f].predict(tab)), f
        for b, (x, y) in enumerate(zip(ma.bootstraps[f], mb.bootstraps[f], strict=True)):
            assert np.array_equal(x.estimator.predict(X), y.estimator.predict(X)), (f, b)
    for name in ("cv_predictions.csv", "tuning.csv", "metrics_pooled.csv"):
        _same_bytes(ref / "training" / name, run / "training" / name)


def _assert_like_reference(ref: Reference, run: Path, *, trends: bool) -> None:
    """The run's outputs are bit-identical to the uninterrupted reference run's."""
    r = ref.run
    for store in ("cube.zarr", "zones.zarr"):
        _same_store(r / "inputs" / store, run / "inputs" / store)
    _same_bytes(r / "training" / "training_table.parquet",
                run / "training" / "training_table.parquet")
    _same_models(r, run)
    _same_store(r / "fluxes.zarr", run / "fluxes.zarr")
    # every byte of the flux store and the cube, as recorded by the runner
    for stage in ("build-cube", "upscale", "budgets"):
        a, b = (json.loads(_record(p, stage).read_text())["outputs_digest"] for p in (r, run))
        assert a == b, f"{stage}: outputs differ from the reference run's"
    _same_bytes(r / "budgets.csv", run / "budgets.csv")
    if trends:
        _same_store(r / "trends" / "trend_maps.zarr", run / "trends" / "trend_maps.zarr")
        for name in ("budget_trends.csv", "trend_shares.csv"):
            _same_bytes(r / "trends" / name, run / "trends" / name)


def _lock_of_killed(run: Path, pid: int) -> None:
    """The killed runner left its lock file behind (the rerun must take it over)."""
    lock = lock_path(run, inside=True)
    assert lock.exists() and json.loads(lock.read_text())["pid"] == pid


# ------------------------------------------------------------------------------ kill tests

@dataclass(frozen=True)
class Stage:
    """How to catch a stage mid-way: the finished entries of its ledger, and their total."""

    name: str
    entries: Callable[[Path], dict[str, int]]
    total: int
    at_least: int = 1


def _kill_runner_then_worker(run: Path, cfg: Path, stage: Stage) -> tuple[str, dict[str, int]]:
    """Run 1: SIGKILL the runner's process group once ``stage`` has finished ``at_least``
    entries of its ledger (and has no record yet). Run 2 (the same command): SIGKILL one worker
    once the resumed stage has finished one more entry; the run must finish and must not redo
    the entries of run 1. Returns run 2's output and the entries run 1 left."""
    rec = _record(run, stage.name)

    def count() -> int:
        return len(stage.entries(run))

    first = Runner(cfg, run.parent / f"{run.name}-1.log")
    first.wait_for(lambda: count() >= stage.at_least and not rec.exists(),
                   f"{stage.at_least} finished part(s) of the {stage.name} stage")
    first.kill()
    kept = stage.entries(run)
    assert not rec.exists(), "the runner was killed after the stage had finished"
    assert stage.at_least <= len(kept) < stage.total, (len(kept), stage.total)
    _lock_of_killed(run, first.proc.pid)

    second = Runner(cfg, run.parent / f"{run.name}-2.log")
    second.wait_for(lambda: count() > len(kept), f"progress of the resumed {stage.name}")
    pid = second.kill_worker()
    caught = not rec.exists() and count() < stage.total
    out = second.finish()
    assert caught, f"worker {pid} was killed after the {stage.name} stage had finished:\n{out}"
    assert f"{stage.name}: ran in" in out and "in use by" not in out, out
    after = stage.entries(run)
    assert len(after) == stage.total, (len(after), stage.total)
    assert all(after[k] == v for k, v in kept.items()), "finished parts were computed again"
    return out, kept


def _cube_tiles(run: Path) -> dict[str, int]:
    """Finished tiles of the cube (ledger ``cube.zarr.tmp.done``, renamed with the cube)."""
    d = run / "inputs"
    return _finished(d / "cube.zarr.done") or _finished(d / "cube.zarr.tmp.done")


def test_build_cube_killed_runner_and_worker_resume_bit_identical(reference: Reference) -> None:
    cfg, run = reference.config_for("build", trends=False)
    out, kept = _kill_runner_then_worker(run, cfg, Stage("build-cube", _cube_tiles, N_TILES))
    # the tiles of run 1 are resumed; a tile whose result was held by the killed worker is
    # recomputed by distributed, finds itself in the ledger and counts as resumed as well
    resumed = re.search(r"build-cube: ran in [\d.]+ s; resumed tiles: (\d+)", out)
    assert resumed and len(kept) <= int(resumed[1]) < N_TILES, out
    assert lock_path(run / "inputs" / "cube.zarr").exists()  # the cube's lock, taken over
    _assert_like_reference(reference, run, trends=False)


def test_train_killed_runner_and_worker_resume_bit_identical(reference: Reference) -> None:
    cfg, run = reference.config_for("train", trends=False)
    _copy_before(reference, run, "train")
    out, _ = _kill_runner_then_worker(run, cfg, Stage("train", _fit_files, N_FITS, 3))
    assert "extract: current, skipped" in out, out
    _assert_like_reference(reference, run, trends=False)


def test_upscale_killed_runner_and_worker_resume_bit_identical(reference: Reference) -> None:
    cfg, run = reference.config_for("upscale", trends=False)
    _copy_before(reference, run, "upscale")
    out, _ = _kill_runner_then_worker(
        run, cfg, Stage("upscale", lambda r: _finished(r / "fluxes.zarr.done"), N_TILES))
    assert "train: current, skipped" in out, out
    assert re.search(r"upscale: ran in [0-9.]+ s; resumed tiles: [1-9]", out), out
    assert lock_path(run / "fluxes.zarr").exists()  # the store's lock, taken over
    _assert_like_reference(reference, run, trends=False)


def test_trends_killed_runner_and_worker_resume_bit_identical(reference: Reference) -> None:
    """The trend maps are written to ``trend_maps.zarr.tmp`` and renamed when complete: a
    killed run leaves the temporary store, which the rerun replaces."""
    cfg, run = reference.config_for("trends", trends=True)
    _copy_before(reference, run, "trends")
    rec = _record(run, "trends")
    first = Runner(cfg, run.parent / "trends-1.log")
    first.wait_for(lambda: _map_chunks(run) >= 1 and not rec.exists(),
                   "the first chunk of the trend maps")
    first.kill()
    assert not rec.exists() and not (run / "trends" / "budget_trends.csv").exists()
    assert (run / "trends" / "trend_maps.zarr.tmp").exists()  # a half-written store
    _lock_of_killed(run, first.proc.pid)

    second = Runner(cfg, run.parent / "trends-2.log")
    t0 = second.started
    second.wait_for(lambda: _map_chunks(run, since=t0) >= 1, "a trend map chunk of the rerun")
    pid = second.kill_worker()
    caught = not rec.exists() and not (run / "trends" / "trend_maps.zarr").exists()
    out = second.finish()
    assert caught, f"worker {pid} was killed after the trend maps were written:\n{out}"
    assert "upscale: current, skipped" in out and "trends: ran in" in out, out
    assert "in use by" not in out and not (run / "trends" / "trend_maps.zarr.tmp").exists()
    _assert_like_reference(reference, run, trends=True)


# ------------------------------------------------------------------------------ read-only

def _unprivileged() -> list[str]:
    """A command prefix under which file permissions apply: root ignores them unless it drops
    CAP_DAC_OVERRIDE (``setpriv``); the test is skipped when that is not possible."""
    if os.geteuid() != 0:
        return []
    caps = "-dac_override,-dac_read_search"
    prefix = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]
    if shutil.which("setpriv") is None or subprocess.run([*prefix, "true"]).returncode != 0:
        pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE (no setpriv)")
    return prefix


@pytest.fixture
def read_only() -> Iterator[Callable[[Path], None]]:
    """``make(path)``: chmod ``path`` 0o555 (restored afterwards, so it can be cleaned up)."""
    made: list[Path] = []

    def make(path: Path) -> None:
        path.chmod(0o555)
        made.append(path)

    yield make
    for p in made:
        p.chmod(0o755)


def _run_unprivileged(cfg: Path) -> subprocess.CompletedProcess[str]:
    cmd = [*_unprivileged(), sys.executable, "-m", "abz_dask.cli", "run", str(cfg),
           "--cluster", "threads"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _clear_error(res: subprocess.CompletedProcess[str], path: Path) -> None:
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "Traceback" not in out, out
    assert "error:" in out and str(path) in out, out
    assert re.search(r"not writable|permission denied|read-only", out, re.I), out


def test_read_only_parent_is_a_clear_error(reference: Reference,
                                           read_only: Callable[[Path], None]) -> None:
    parent = reference.root / "ro-parent"
    parent.mkdir()
    cfg = reference.root / "ro-parent.yaml"
    cfg.write_text(json.dumps({**reference.config, "output": str(parent / "run")}))
    read_only(parent)
    res = _run_unprivileged(cfg)
    assert not (parent / "run").exists()
    _clear_error(res, parent / "run")


def test_read_only_run_folder_is_a_clear_error_and_left_intact(
        reference: Reference, read_only: Callable[[Path], None]) -> None:
    cfg, run = reference.config_for("ro-run", trends=False)
    _copy_before(reference, run, "budgets")  # budgets must write budgets.csv into the folder
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    read_only(run)
    res = _run_unprivileged(cfg)
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before
    _clear_error(res, run)
