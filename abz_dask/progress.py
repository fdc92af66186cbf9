"""Progress reporting that works on every scheduler (threads, processes, distributed)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
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


def compute_with_progress(tasks: Sequence[Any], label: str, *, enabled: bool = True,
                          on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
    """Compute dask collections, showing a progress bar on stderr.

    With a distributed client the futures are followed as they finish; otherwise dask's local
    ``ProgressBar`` callback is used.

    Parameters
    ----------
    tasks : sequence
        Dask collections (e.g. delayed objects).
    label : str
        Text of the progress bar.
    enabled : bool
        Show the bar.
    on_result : callable, optional
        Called as ``on_result(i, result)`` in the client process as soon as task ``i`` is done
        (e.g. to checkpoint it). Without a distributed client the tasks are then computed in
        batches of a few per core, so results arrive before the end.

    Returns
    -------
    list
        The results, in the order of ``tasks``.
    """
    if not tasks:
        return []
    client = active_client()
    if client is not None:
        from distributed import as_completed

        futures = client.compute(list(tasks))
        index = {f.key: i for i, f in enumerate(futures)}
        n = len(futures)
        done = as_completed(futures, with_results=on_result is not None)
        for i, item in enumerate(done, 1):
            if on_result is not None:
                fut, res = item
                on_result(index[fut.key], res)
            if enabled:
                _bar(label, i, n)
        if enabled:
            sys.stderr.write("\n")
        return client.gather(futures)
    if on_result is not None:
        step = 4 * (os.cpu_count() or 1)
        out: list[Any] = []
        for start in range(0, len(tasks), step):
            part = list(dask.compute(*tasks[start:start + step]))
            for j, res in enumerate(part):
                on_result(start + j, res)
            out.extend(part)
            if enabled:
                _bar(label, len(out), len(tasks))
        if enabled:
            sys.stderr.write("\n")
        return out
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
