"""Progress reporting that works on every scheduler (threads, processes, distributed)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import dask

__all__ = ["active_client", "compute_with_progress"]


def active_client() -> Any | None:
    """The active ``distributed`` client, or None (never creates one)."""
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


def compute_with_progress(tasks: Sequence[Any], label: str, *, enabled: bool = True) -> list[Any]:
    """Compute dask collections, showing a progress bar on stderr.

    With a distributed client the futures are followed as they finish; otherwise dask's local
    ``ProgressBar`` callback is used.
    """
    if not tasks:
        return []
    client = active_client()
    if client is not None:
        from distributed import as_completed

        futures = client.compute(list(tasks))
        n = len(futures)
        for i, _ in enumerate(as_completed(futures), 1):
            if enabled:
                _bar(label, i, n)
        if enabled:
            sys.stderr.write("\n")
        return client.gather(futures)
    if enabled:
        from dask.diagnostics import ProgressBar

        sys.stderr.write(f"{label}\n")
        with ProgressBar(out=sys.stderr):
            return list(dask.compute(*tasks))
    return list(dask.compute(*tasks))


def _bar(label: str, i: int, n: int, width: int = 30) -> None:
    filled = int(width * i / n)
    sys.stderr.write(f"\r{label}: [{'#' * filled}{'.' * (width - filled)}] {i}/{n}")
    sys.stderr.flush()
