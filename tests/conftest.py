"""Shared fixtures and guards."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr
from dask.callbacks import Callback

os.environ.setdefault("ABZ_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".abz_cache"))

SHARED = Path(__file__).resolve().parents[2] / "shared"


@contextmanager
def raise_if_dask_computes() -> Iterator[None]:
    """Fail if anything is computed with dask inside the block (xarray/xclim's laziness guard)."""

    def _start(dsk: object) -> None:
        raise AssertionError(f"not lazy: a computation was triggered with {len(dsk)} tasks")  # type: ignore[arg-type]

    with Callback(start=_start):
        yield


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse to pass with zero tests (CI must never go green on an empty run)."""
    if not items:
        raise pytest.UsageError("no tests collected")


@pytest.fixture(scope="session")
def twin100(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A full-period (1990–2020) digital twin on the 100-km grid, shared by the session."""
    from abz_dask.twin import generate_twin

    return generate_twin(tmp_path_factory.mktemp("twin100"), resolution="100km", seed=0,
                         progress=False)


#: A tiny training profile for pipeline tests (few trees, 3 grouped folds, 4 bootstraps).
TINY_PROFILE = {"base": "light", "name": "tiny", "n_folds": 3, "tuning_trees": 5,
                "final_trees": 20, "bootstrap_trees": 10, "n_bootstrap": 4,
                "importance_repeats": 0, "pdp_points": 0}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A run folder with a 100-km twin (2001–2003) and a tiny trained bundle (no fluxes yet).

    Returns the run folder; the twin is in ``RUN/twin``, the models in ``RUN/models``.
    Tests that write must copy what they change (the folder is shared by the session).
    """
    from abz_dask.pipeline.config import parse_config
    from abz_dask.pipeline.runner import run_pipeline

    run = tmp_path_factory.mktemp("tiny_run")
    cfg = parse_config({"output": str(run), "progress": False,
                        "input": {"kind": "twin", "resolution": "100km", "start": "2001-01",
                                  "end": "2003-12", "seed": 0},
                        "training": {"profile": TINY_PROFILE, "seed": 448},
                        "budgets": {"start_year": 2001, "end_year": 2003},
                        "trends": {"enabled": False}})
    with dask.config.set(scheduler="threads"):
        run_pipeline(cfg, only=("twin", "extract", "train"))
    return run


# the synthetic run of test_zonal / test_table1 / test_seasonal / test_fire / test_report

#: Relative perturbations of the synthetic bootstrap replicates.
REPLICATE_SCALE = np.array([-0.10, -0.05, 0.0, 0.02, 0.07, 0.11])


def make_run(base: Path) -> Path:
    """Build (once per session base dir) the 100-km test run folder: a twin 2001–2004 plus a
    synthetic flux store with the upscaler's layout (central maps = the planted truth,
    replicate b = truth × (1 + REPLICATE_SCALE[b]))."""
    from abz_dask.aggregation.budgets import DOMAINS, domain_weights
    from abz_dask.geo.grid import Grid
    from abz_dask.twin import generate_twin

    run = base / "run100"
    if (run / "done").exists():
        return run
    if run.exists():
        shutil.rmtree(run)
    layout = generate_twin(run / "twin", resolution="100km", start="2001-01", end="2004-12",
                           seed=0, progress=False)
    grid = Grid.from_preset("100km")
    truth = xr.open_zarr(layout.truth, consolidated=False).load()
    zones = xr.open_zarr(layout.zones, consolidated=False).load()
    fl = ["NEE", "GPP", "Reco"]
    scale = np.concatenate([[0.0], REPLICATE_SCALE])
    ds = xr.Dataset(coords={"time": truth["time"], "y": truth["y"], "x": truth["x"],
                            "year": np.unique(truth["time"].dt.year.values),
                            "flux": fl, "model": np.arange(len(scale)), "tile_id": ["all"],
                            "domain": list(DOMAINS)})
    w = domain_weights(zones, grid.cell_area)
    sums = []
    for f in fl:
        ds[f] = truth[f].astype(np.float32)
        ann = truth[f].groupby("time.year").sum()
        ds[f"{f}_boot_sd"] = (abs(ann) * float(np.std(1 + REPLICATE_SCALE, ddof=1))
                              ).astype(np.float32)
        ds[f"{f}_replicates"] = (truth[f] * xr.DataArray(1 + REPLICATE_SCALE,
                                                          dims="replicate")
                                 ).transpose("replicate", "time", "y", "x").astype(np.float32)
        mon = xr.dot(truth[f].fillna(0.0).astype(np.float64), w, dim=("y", "x"))
        sums.append(mon * xr.DataArray(1 + scale, dims="model"))
    zs = xr.concat(sums, dim="flux").transpose("flux", "model", "time", "domain")
    ds["zone_sums"] = zs.expand_dims(tile_id=["all"]).assign_coords(
        flux=fl, model=np.arange(len(scale)), domain=list(DOMAINS))
    ds = grid.attach(ds)
    ds.attrs["n_bootstrap"] = len(REPLICATE_SCALE)
    ds.to_zarr(run / "fluxes.zarr", mode="w", zarr_format=3, consolidated=False)
    (run / "done").write_text("ok")
    return run


def export_variant(src: Path, dst: Path, own: tuple[str, ...] = (),
                   skip: tuple[str, ...] = ()) -> Path:
    """A copy of a twin export (``abz_dask.twin.export``) for a malformed-input test: folders
    symlinked, ``own`` ones copied (so the test may damage them), ``skip`` ones left out;
    returns ``dst``."""
    dst.mkdir()
    for p in src.iterdir():
        if p.name in skip:
            continue
        if p.name in own:
            if p.is_dir():
                shutil.copytree(p, dst / p.name)
            else:
                shutil.copy(p, dst / p.name)
        else:
            (dst / p.name).symlink_to(p)
    return dst


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3-compatible server (moto's server mode) on 127.0.0.1, one per test process;
    yields its endpoint. The ``AWS_*`` variables point every client (s3fs, Icechunk, workers
    started afterwards) at it with throw-away credentials."""
    pytest.importorskip("s3fs")
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield endpoint
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        srv.stop()


@pytest.fixture
def s3_bucket(s3_server: str, request: pytest.FixtureRequest) -> str:
    """A fresh bucket on :func:`s3_server`; yields its URL ``s3://<bucket>``."""
    import re

    import s3fs

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    bucket = f"t-{name}-{os.getpid()}"[:63]
    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    return f"s3://{bucket}"
