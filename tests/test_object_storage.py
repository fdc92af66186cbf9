"""Runs on object storage, against a real S3-compatible server (moto's server mode on
127.0.0.1, :func:`conftest.s3_server`): the whole pipeline into ``s3://`` with worker processes
that get URLs, not paths; object-store locks; digests of objects; credentials kept out of
everything the package writes or prints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from abz_dask.io.location import as_path, is_url, redact, url

s3fs = pytest.importorskip("s3fs")

ABZ = [sys.executable, "-m", "abz_dask.cli"]


def _config(output: str, tmp: Path, *, cluster: str = "threads", seed: int = 0,
            tile: int | None = None) -> Path:
    """twin-small cut down: 100 km, 2001–2004, a tiny profile, no trends or report."""
    cfg = {"output": output, "progress": False,
           "upscale": {"tile": tile} if tile else {},
           "input": {"kind": "twin", "resolution": "100km", "start": "2001-01",
                     "end": "2004-12", "seed": 0, "n_sites": 60},
           "training": {"profile": {"base": "light", "n_folds": 2, "tuning_trees": 5,
                                    "final_trees": 12, "bootstrap_trees": 5, "n_bootstrap": 3,
                                    "importance_repeats": 0, "pdp_points": 0},
                        "seed": seed},
           "budgets": {"start_year": 2001, "end_year": 2004},
           "trends": {"enabled": False}, "report": {"enabled": False},
           "cluster": {"kind": cluster, "workers": 2}}
    path = tmp / f"cfg_{abs(hash((output, cluster, seed, tile)))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cat(u: str) -> bytes:
    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    return fs.cat_file(u.removeprefix("s3://"))


def test_locations_keep_local_paths_and_refuse_credentials_in_urls() -> None:
    assert as_path("/tmp/x") == Path("/tmp/x") and isinstance(as_path("/tmp/x"), Path)
    assert as_path("file:///tmp/x") == Path("/tmp/x")
    assert is_url("s3://b/k") and not is_url("/tmp/s3://x") and not is_url(Path("s3:/b"))
    assert url(as_path("s3://b/run") / "fluxes.zarr") == "s3://b/run/fluxes.zarr"
    with pytest.raises(ValueError, match="credentials must not") as e:
        as_path("s3://AKID:hunter2@bucket/run")
    assert "hunter2" not in str(e.value)
    assert redact("see https://u:p@h/x?X-Amz-Signature=abc now") == "see https://h/x now"


@pytest.mark.slow
def test_run_on_s3_with_worker_processes_equals_local_disk(s3_bucket: str, tmp_path: Path
                                                           ) -> None:
    """The acceptance runs: budgets on ``s3://`` (2 worker processes, no shared disk) are
    bit-identical to the same run on a local disk; nothing lands on the local disk; the
    secret key appears in no object and no output line. Then a runner killed mid-upscale
    (:func:`_killed_run_resumes_and_readers_see_the_last_commit`)."""
    out = f"{s3_bucket}/run"
    work = tmp_path / "cwd"
    work.mkdir()
    t0 = time.perf_counter()
    r = subprocess.run([*ABZ, "run", str(_config(out, tmp_path, cluster="local", tile=16)),
                        "--release", "r1"], capture_output=True, text=True, cwd=work,
                       timeout=900)
    t_s3 = time.perf_counter() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert list(work.iterdir()) == []  # workers wrote to the bucket, not to a local path
    local = tmp_path / "local"
    r2 = subprocess.run([*ABZ, "run", str(_config(str(local), tmp_path, tile=16))],
                        capture_output=True, text=True, timeout=900)
    assert r2.returncode == 0, r2.stdout[-3000:] + r2.stderr[-3000:]
    assert _cat(f"{out}/budgets.csv") == (local / "budgets.csv").read_bytes()
    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    keys = fs.find(out.removeprefix("s3://"))
    assert any(k.endswith("upscale.stage.json") for k in keys)
    secret = os.environ["AWS_SECRET_ACCESS_KEY"].encode()
    small = [k for k in keys if k.endswith((".json", ".csv", ".md"))]
    assert small and not [k for k in small if secret in fs.cat_file(k)]
    assert secret.decode() not in r.stdout + r.stderr
    rec = json.loads(_cat(f"{out}/extract.stage.json"))  # objects: size + ETag
    assert rec["outputs_digest"] and all(str(v[1]).startswith("etag:")
                                         for v in rec["outputs_digest"].values())
    rec = json.loads(_cat(f"{out}/upscale.stage.json"))  # the flux repository's snapshot
    assert list(rec["outputs_digest"]) == ["fluxes.icechunk"]
    assert rec["outputs_digest"]["fluxes.icechunk"][1] == f"icechunk:main@{rec['info']['snapshot']}"
    # a rerun finds every stage current from the records in the bucket
    r3 = subprocess.run([*ABZ, "run", str(_config(out, tmp_path, tile=16))],
                        capture_output=True, text=True, timeout=600)
    assert r3.returncode == 0 and "0 stage(s) ran" in r3.stdout, r3.stdout + r3.stderr
    print(f"\ns3 run {t_s3:.1f} s")
    _killed_run_resumes_and_readers_see_the_last_commit(out, tmp_path)


def test_object_store_lock_refuses_a_second_writer_and_takes_over_a_dead_one(
        s3_bucket: str) -> None:
    from abz_dask.io.locks import LockedError, hold

    target = f"{s3_bucket}/run"
    code = ("import sys, time\nfrom abz_dask.io.locks import hold\n"
            "with hold(sys.argv[1], 'run folder', inside=True):\n"
            "    print('held', flush=True)\n    time.sleep(600)\n")
    child = subprocess.Popen([sys.executable, "-c", code, target], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match=f"pid {child.pid}"), \
                hold(target, "run folder", inside=True):
            pass
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    # the owner died without releasing: its lock object is stale and taken over
    assert _cat(f"{target}/.abz-dask.lock")
    with hold(target, "run folder", inside=True), hold(target, "run folder", inside=True):
        info = json.loads(_cat(f"{target}/.abz-dask.lock"))
        assert info["pid"] == os.getpid()
    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    assert not fs.exists(f"{target}/.abz-dask.lock".removeprefix("s3://"))


def test_digest_of_objects_finds_an_altered_chunk(s3_bucket: str) -> None:
    import numpy as np
    import xarray as xr

    from abz_dask.io.integrity import check_digest, digest_outputs

    root = f"{s3_bucket}/run"
    store = f"{root}/maps.zarr"
    xr.Dataset({"a": (("y", "x"), np.arange(16.0).reshape(4, 4))}).chunk(2).to_zarr(
        store, mode="w", zarr_format=3, consolidated=False)
    digest = digest_outputs([store], root)
    assert "maps.zarr/a/c/1/1" in digest and check_digest(digest, root, [store]) == []
    fs = s3fs.S3FileSystem()
    fs.pipe_file(store.removeprefix("s3://") + "/a/c/1/1", b"garbage")
    fs.pipe_file(store.removeprefix("s3://") + "/extra", b"x")
    problems = check_digest(digest, root, [store])
    assert any("maps.zarr variable a chunk 1.1" in p for p in problems)
    assert any("not written by the stage (maps.zarr/extra)" in p for p in problems)


def _killed_run_resumes_and_readers_see_the_last_commit(out: str, tmp_path: Path) -> None:
    """SIGKILL of the runner mid-upscale on object storage (new models after release r1):
    readers meanwhile see the last committed snapshot (r1's); the rerun resumes the saved
    tiles and its budgets are bit-identical to an uninterrupted run of the same configuration
    on a local disk; r1 stays readable."""
    from abz_dask.aggregation.zonal import open_flux_store
    from abz_dask.io.versioned import main_snapshot
    from abz_dask.upscale import budget_table

    repo = f"{out}/fluxes.icechunk"
    snap1 = main_snapshot(repo)
    r1 = budget_table(open_flux_store(repo, version="r1"))
    cfg2 = _config(out, tmp_path, tile=16, seed=1)  # new models: a new upscale commit
    proc = subprocess.Popen([*ABZ, "run", str(cfg2)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    fs = s3fs.S3FileSystem()
    checkpoint = f"{repo}.wip/checkpoint.json".removeprefix("s3://")
    deadline = time.monotonic() + 600
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            fs.invalidate_cache()
            if fs.exists(checkpoint) and json.loads(fs.cat_file(checkpoint))["done"]:
                break  # saved work holds finished tiles
            time.sleep(0.05)
        assert proc.poll() is None, "the upscale finished before a checkpoint was seen"
        # a reader during the run: main is still r1's snapshot
        assert main_snapshot(repo) == snap1
        assert budget_table(open_flux_store(repo)).equals(r1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert main_snapshot(repo) == snap1  # nothing of the killed stage is visible
    r = subprocess.run([*ABZ, "run", str(cfg2)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "resumed tiles:" in r.stdout, r.stdout
    assert main_snapshot(repo) != snap1
    local = tmp_path / "local1"
    r = subprocess.run([*ABZ, "run", str(_config(str(local), tmp_path, tile=16, seed=1))],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert _cat(f"{out}/budgets.csv") == (local / "budgets.csv").read_bytes()
    assert budget_table(open_flux_store(repo, version="r1")).equals(r1)  # r1 stays readable


def test_files_input_read_from_s3_gives_the_same_training_table(
        s3_bucket: str, tiny_run: Path, tmp_path: Path) -> None:
    """Inputs as URLs: the tiny twin's cube, zones and ABCflux CSV copied to the bucket and
    given as a ``files`` input; the extracted training table equals the one of the twin run
    (which read the same files from the local disk)."""
    import dask
    import pandas as pd

    from abz_dask.pipeline.config import parse_config
    from abz_dask.pipeline.runner import run_pipeline

    fs = s3fs.S3FileSystem()
    twin = tiny_run / "twin"
    dst = f"{s3_bucket}/inputs".removeprefix("s3://")
    for name in ("cube.zarr", "zones.zarr", "abcflux_twin.csv"):
        fs.put(str(twin / name), f"{dst}/{name}", recursive=True)
    fs.invalidate_cache()
    src = f"{s3_bucket}/inputs"
    cfg = parse_config({"output": str(tmp_path / "run"), "progress": False,
                        "input": {"kind": "files", "cube": f"{src}/cube.zarr",
                                  "zones": f"{src}/zones.zarr",
                                  "abcflux": f"{src}/abcflux_twin.csv"},
                        "budgets": {"start_year": 2001, "end_year": 2003},
                        "trends": {"enabled": False}, "report": {"enabled": False}})
    with dask.config.set(scheduler="threads"):
        run_pipeline(cfg, only=("extract",))
    got = pd.read_parquet(tmp_path / "run" / "training" / "training_table.parquet")
    want = pd.read_parquet(tiny_run / "training" / "training_table.parquet")
    pd.testing.assert_frame_equal(got, want)
    rec = json.loads((tmp_path / "run" / "extract.stage.json").read_text())
    assert any(k.startswith("s3://") for k in rec["inputs"])  # identities of the objects


def test_build_cube_reads_rasters_from_s3(s3_bucket: str, tmp_path: Path) -> None:
    """build-cube rasters (GeoTIFF, NetCDF, CSV) given as URL patterns build the same cube as
    the same files on a local disk."""
    import numpy as np
    import xarray as xr

    from abz_dask.cube_build import build_cube
    from abz_dask.twin import generate_twin
    from abz_dask.twin.export import export_twin

    lay = generate_twin(tmp_path / "twin", resolution="100km", start="2001-01", end="2002-12",
                        seed=5, n_sites=30, progress=False)
    exp = export_twin(lay, tmp_path / "export", lonlat_res=1.0)
    fs = s3fs.S3FileSystem()
    fs.put(str(tmp_path / "export"), f"{s3_bucket}/export".removeprefix("s3://"),
           recursive=True)
    fs.invalidate_cache()
    cfg = yaml.safe_load(exp.config.read_text())
    for section in ("predictors", "fire"):
        for spec in (cfg.get(section) or {}).values():
            if isinstance(spec, dict) and spec.get("files"):
                spec["files"] = f"{s3_bucket}/export/{spec['files']}"
    remote = tmp_path / "remote.yaml"
    remote.write_text(yaml.safe_dump(cfg, sort_keys=False))
    os.environ["ABZ_DASK_CACHE"] = str(tmp_path / "cache")
    try:
        build_cube(exp.config, tmp_path / "local" / "cube.zarr", progress=False)
        build_cube(remote, tmp_path / "remote" / "cube.zarr", progress=False)
    finally:
        os.environ.pop("ABZ_DASK_CACHE")
    for store in ("cube.zarr", "fire.zarr"):
        a = xr.open_zarr(tmp_path / "local" / store, consolidated=False)
        b = xr.open_zarr(tmp_path / "remote" / store, consolidated=False)
        assert set(a.data_vars) == set(b.data_vars)
        for v in a.data_vars:
            np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=f"{store} {v}")
    assert any((tmp_path / "cache").rglob("*.tif"))  # read through the per-user cache


def test_missing_credentials_are_one_clear_error(s3_bucket: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AWS_") or k in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_EC2_METADATA_DISABLED="true")
    r = subprocess.run([*ABZ, "run", str(_config(f"{s3_bucket}/run", tmp_path))],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2
    assert "error: object storage: NoCredentialsError" in r.stderr
    assert "AWS_ACCESS_KEY_ID" in r.stderr and "Traceback" not in r.stderr + r.stdout
