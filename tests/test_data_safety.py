"""Outputs never delete what they did not create, one writer per output, damaged outputs are
found (named by store, variable and chunk) and rebuilt, never used."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from typer.testing import CliRunner

from abz_dask.cli import app
from abz_dask.io.integrity import check_digest, describe, digest_outputs
from abz_dask.io.locks import LockedError, hold, lock_path
from abz_dask.io.ownership import ForeignPathError, claim_folder, is_abz_store
from abz_dask.io.store import create_store, write_region
from abz_dask.pipeline.runner import run_pipeline
from tests.conftest import TINY_PROFILE

runner = CliRunner()


def _user_folder(path: Path) -> dict[str, bytes]:
    path.mkdir(parents=True)
    files = {"thesis.tex": b"\\documentclass{article}", "data.csv": b"a,b\n1,2\n"}
    for name, body in files.items():
        (path / name).write_bytes(body)
    return files


def _template() -> xr.Dataset:
    return xr.Dataset({"a": (("t", "y"), da.zeros((4, 6), chunks=(2, 3), dtype="f4")),
                       "b": (("y",), da.zeros(6, chunks=3, dtype="f4"))})


def _intact(path: Path, files: dict[str, bytes]) -> bool:
    return {p.name: p.read_bytes() for p in path.iterdir()} == files


def test_create_store_refuses_a_foreign_folder_or_file(tmp_path: Path) -> None:
    files = _user_folder(tmp_path / "mine")
    with pytest.raises(ForeignPathError, match="not a Zarr store written by abz_dask"):
        create_store(_template(), tmp_path / "mine")
    assert _intact(tmp_path / "mine", files)
    (tmp_path / "file.zarr").write_text("not a store")
    with pytest.raises(ForeignPathError, match=r"file\.zarr"):
        create_store(_template(), tmp_path / "file.zarr")
    assert (tmp_path / "file.zarr").read_text() == "not a store"
    # a store of another Zarr writer (no abz_dask provenance) is foreign too
    xr.Dataset({"v": ("x", np.arange(3))}).to_zarr(tmp_path / "other.zarr", zarr_format=3,
                                                    consolidated=False)
    with pytest.raises(ForeignPathError):
        create_store(_template(), tmp_path / "other.zarr", overwrite=True)
    kept = xr.open_zarr(tmp_path / "other.zarr", consolidated=False)
    assert kept["v"].values.tolist() == [0, 1, 2]


def test_create_store_marks_resumes_and_replaces_only_its_own(tmp_path: Path) -> None:
    p = tmp_path / "s.zarr"
    (p).mkdir()  # an empty folder is adopted
    assert create_store(_template(), p) is True and is_abz_store(p)
    write_region(p, "b", np.arange(3, dtype="f4"), (slice(0, 3),))
    assert create_store(_template(), p) is False  # same layout: resume, data kept
    assert xr.open_zarr(p, consolidated=False)["b"].values[:3].tolist() == [0, 1, 2]
    other = _template().assign(c=(("y",), da.zeros(6, chunks=3)))
    with pytest.raises(FileExistsError, match="other variables"):
        create_store(other, p)
    assert create_store(other, p, replace_mismatch=True) is True
    assert "c" in xr.open_zarr(p, consolidated=False)


def test_upscale_out_on_a_user_folder_is_refused_and_left_intact(tiny_run: Path,
                                                                tmp_path: Path) -> None:
    files = _user_folder(tmp_path / "results")
    res = runner.invoke(app, ["upscale", str(tiny_run), "--out", str(tmp_path / "results"),
                              "--workers", "1"])
    assert res.exit_code != 0
    assert "not a Zarr store written by abz_dask" in res.output and "results" in res.output
    assert _intact(tmp_path / "results", files)
    # the twin folder itself given as --out: refused, the twin untouched
    before = sorted(p.name for p in (tiny_run / "twin").iterdir())
    res = runner.invoke(app, ["upscale", str(tiny_run), "--out", str(tiny_run / "twin"),
                              "--workers", "1"])
    assert res.exit_code != 0 and sorted(p.name for p in (tiny_run / "twin").iterdir()) == before


def test_run_folder_claim(tmp_path: Path) -> None:
    files = _user_folder(tmp_path / "docs")
    with pytest.raises(ForeignPathError, match="non-empty folder that abz_dask did not create"):
        claim_folder(tmp_path / "docs")
    assert _intact(tmp_path / "docs", files)
    claim_folder(tmp_path / "new")
    claim_folder(tmp_path / "new")  # a run folder is adopted again
    (tmp_path / "f").write_text("x")
    with pytest.raises(ForeignPathError, match="is a file"):
        claim_folder(tmp_path / "f")


_HOLDER = textwrap.dedent("""
    import sys, time
    from abz_dask.io.locks import hold
    with hold(sys.argv[1], "run folder", inside=sys.argv[2] == "inside"):
        print("held", flush=True)
        time.sleep(120)
""")


def _hold_in_child(target: Path, inside: bool = True) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(target),
                             "inside" if inside else "beside"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_lock_refuses_a_second_writer_and_is_released_when_its_owner_dies(tmp_path: Path
                                                                          ) -> None:
    run = claim_folder(tmp_path / "run")
    proc = _hold_in_child(run)
    try:
        with pytest.raises(LockedError, match=rf"in use by pid {proc.pid} on"), \
                hold(run, "run folder", inside=True):
            pass
        from abz_dask.pipeline.config import parse_config

        with pytest.raises(LockedError, match=str(proc.pid)):
            run_pipeline(parse_config({"output": str(run)}), stages=[])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert lock_path(run, inside=True).exists()  # left by the killed owner: stale
    with hold(run, "run folder", inside=True), hold(run, "run folder", inside=True):
        pass  # taken over, and re-entrant within a process


def _small_store(path: Path) -> None:
    create_store(_template(), path)
    write_region(path, "a", np.arange(24, dtype="f4").reshape(4, 6), (slice(None),) * 2)
    write_region(path, "b", np.ones(6, dtype="f4"), (slice(None),))


def test_digest_names_missing_altered_and_added_chunks(tmp_path: Path) -> None:
    s = tmp_path / "x.zarr"
    _small_store(s)
    rec = digest_outputs([s], tmp_path)
    assert check_digest(rec, tmp_path, [s]) == []
    chunk = s / "a" / "c" / "1" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one flipped bit
    chunk.write_bytes(bytes(raw))
    (s / "a" / "c" / "0" / "1").unlink()
    (s / "b" / "c" / "5").write_bytes(b"junk")
    probs = check_digest(rec, tmp_path, [s])
    assert any(p.startswith("x.zarr variable a chunk 1.0: content changed") for p in probs)
    assert any(p.startswith("x.zarr variable a chunk 0.1: missing") for p in probs)
    assert any(p.startswith("x.zarr variable b chunk 5: not written") for p in probs)
    assert len(probs) == 3
    assert describe("run/y.zarr/zarr.json") == "run/y.zarr root metadata"


def test_run_config_force_names_unknown_stages(tmp_path: Path) -> None:
    from abz_dask.pipeline.config import parse_config

    with pytest.raises(ValueError, match="--force nosuchstage: no such stage"):
        run_pipeline(parse_config({"output": str(tmp_path / "r")}), force=["nosuchstage"])
    assert not (tmp_path / "r").exists()


def _config(tmp_path: Path) -> Path:
    cfg = {"output": str(tmp_path / "run"),
           "input": {"kind": "twin", "resolution": "100km", "start": "2001-01",
                     "end": "2003-12", "n_sites": 40},
           "training": {"profile": TINY_PROFILE},
           "budgets": {"start_year": 2001, "end_year": 2003},
           "trends": {"enabled": False}, "report": {"enabled": False},
           "cluster": {"kind": "local", "workers": 2}, "progress": False}
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(cfg))
    return path


@pytest.mark.slow
def test_verify_finds_damage_and_run_rebuilds_it_bit_identically(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    run = tmp_path / "run"
    res = runner.invoke(app, ["run", str(cfg)])
    assert res.exit_code == 0, res.output
    good = pd.read_csv(run / "budgets.csv")
    res = runner.invoke(app, ["verify", str(run)])
    assert res.exit_code == 0 and "upscale: ok" in res.output, res.output

    fx = run / "fluxes.zarr"
    chunks = sorted((fx / "zone_sums" / "c").rglob("*"))
    next(p for p in chunks if p.is_file()).unlink()  # a deleted zone_sums chunk
    nee = next(p for p in sorted((fx / "NEE" / "c").rglob("*")) if p.is_file())
    raw = bytearray(nee.read_bytes())
    raw[-3] ^= 0x10
    nee.write_bytes(bytes(raw))  # a flipped bit
    res = runner.invoke(app, ["verify", str(run)])
    assert res.exit_code == 1
    assert "upscale: DAMAGED" in res.output
    assert "fluxes.zarr variable zone_sums chunk" in res.output and "missing" in res.output
    assert "fluxes.zarr variable NEE chunk" in res.output and "content changed" in res.output

    # consumers refuse the damaged store instead of reporting a wrong budget
    from abz_dask.io.integrity import DamagedOutputError
    from abz_dask.upscale import budget_table

    with pytest.raises(DamagedOutputError, match="variable zone_sums chunk"):
        budget_table(fx)

    res = runner.invoke(app, ["run", str(cfg)])
    assert res.exit_code == 0, res.output
    assert "upscale: outputs damaged" in res.output
    pd.testing.assert_frame_equal(pd.read_csv(run / "budgets.csv"), good, check_exact=True)

    # a deleted variable is found too, and rebuilt
    import shutil

    shutil.rmtree(fx / "GPP")
    res = runner.invoke(app, ["verify", str(run)])
    assert res.exit_code == 1 and "fluxes.zarr variable GPP" in res.output
    res = runner.invoke(app, ["run", str(cfg)])
    assert res.exit_code == 0, res.output
    assert runner.invoke(app, ["verify", str(run)]).exit_code == 0
    pd.testing.assert_frame_equal(pd.read_csv(run / "budgets.csv"), good, check_exact=True)


@pytest.mark.slow
def test_two_concurrent_runs_leave_a_valid_result(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    cmd = [sys.executable, "-m", "abz_dask.cli", "run", str(cfg)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=env)
    lock = lock_path(tmp_path / "run", inside=True)
    deadline = time.time() + 120
    while not (lock.exists() and lock.read_text()) and time.time() < deadline:
        time.sleep(0.2)
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    out1, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out1
    assert second.returncode != 0
    assert "is in use by pid" in second.stderr and str(first.pid) in second.stderr
    res = runner.invoke(app, ["verify", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["run", str(cfg)])
    assert res.exit_code == 0 and "ran in" not in res.output, res.output


def test_consumers_refuse_an_unfinished_flux_store(tiny_run: Path, tmp_path: Path) -> None:
    """A store of an upscale killed part-way (ledger short of the tiles): budgets and the
    budget trends refuse it instead of summing the finished tiles only."""
    import dask

    from abz_dask.aggregation.zonal import domain_budgets
    from abz_dask.training import load_bundle
    from abz_dask.upscale import UpscaleConfig, budget_table, compile_bundle, run_upscale

    cube = tiny_run / "twin" / "cube.zarr"
    models = compile_bundle(load_bundle(tiny_run / "models",
                                        cube=xr.open_zarr(cube, consolidated=False)),
                            n_bootstrap=0)
    out = tmp_path / "fluxes.zarr"
    with dask.config.set(scheduler="threads"):
        run_upscale(cube, tiny_run / "twin" / "zones.zarr", out, models,
                    UpscaleConfig(tile=32), progress=False)
    ledger = out.with_name(out.name + ".done")
    n = len(list(ledger.iterdir()))
    for p in sorted(ledger.iterdir())[: n // 2]:
        p.unlink()
    for consumer in (budget_table, domain_budgets):
        with pytest.raises(ValueError, match=rf"unfinished: {n - n // 2} of {n} tiles"):
            consumer(out)


def test_a_second_upscale_into_the_same_store_is_refused(tiny_run: Path, tmp_path: Path
                                                         ) -> None:
    from abz_dask.training import load_bundle
    from abz_dask.upscale import compile_bundle, run_upscale

    cube = tiny_run / "twin" / "cube.zarr"
    models = compile_bundle(load_bundle(tiny_run / "models",
                                        cube=xr.open_zarr(cube, consolidated=False)),
                            n_bootstrap=0)
    out = tmp_path / "fluxes.zarr"
    proc = _hold_in_child(out, inside=False)  # as a running upscale holds it
    try:
        with pytest.raises(LockedError, match=rf"fluxes\.zarr is in use by pid {proc.pid}"):
            run_upscale(cube, tiny_run / "twin" / "zones.zarr", out, models, progress=False)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not out.exists()  # refused before anything was written
