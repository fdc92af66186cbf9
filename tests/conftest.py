"""Shared fixtures and guards."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dask
import pytest
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
    from abz_dask.pipeline import train_stage
    from abz_dask.training import resolve_profile
    from abz_dask.twin import generate_twin

    run = tmp_path_factory.mktemp("tiny_run")
    lay = generate_twin(run / "twin", resolution="100km", start="2001-01", end="2003-12",
                        seed=0, progress=False)
    with dask.config.set(scheduler="threads"):
        train_stage(lay.cube, lay.zones, lay.sites, run, profile=resolve_profile(TINY_PROFILE),
                    seed=448, progress=False)
    return run
