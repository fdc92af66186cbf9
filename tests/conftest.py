"""Shared fixtures and guards."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
