"""Helpers shared by the ``abz-dask`` commands: the local cluster and error exits."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import NoReturn

import typer

__all__ = ["fail", "local_cluster"]


@contextlib.contextmanager
def local_cluster(workers: int | None, threads: int = 1) -> Iterator[object]:
    """A LocalCluster + Client bound to 127.0.0.1 (dashboard at 127.0.0.1:8787 or the next free
    port), closed on exit."""
    from distributed import Client, LocalCluster

    n = workers or max(1, min(os.cpu_count() or 1, 8))
    with LocalCluster(n_workers=n, threads_per_worker=threads, processes=True,
                      host="127.0.0.1", dashboard_address="127.0.0.1:8787") as cluster, \
            Client(cluster) as client:
        yield client


def fail(msg: str, code: int = 2) -> NoReturn:
    """Print ``error: msg`` in red on stderr and exit with ``code``."""
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)
