"""Cluster factory of the command line: one context manager per ``cluster.kind``.

Only entry points (the ``abz-dask run`` command, ``deploy/`` scripts and notebooks) call
:func:`open_cluster`; library functions never create a cluster, they use the active client.

========== ==============================================================================
kind       what is created
========== ==============================================================================
threads    nothing: dask's threaded scheduler (``workers`` threads)
local      ``distributed.LocalCluster``: one single-threaded worker process per available
           core (or ``workers``), memory split evenly, scheduler and dashboard on 127.0.0.1
address    a ``Client`` of a running scheduler (``address``)
slurm      ``dask_jobqueue.SLURMCluster(**options)``; every other setting from dask's
           ``jobqueue.yaml`` config (``~/.config/dask/``, ``DASK_CONFIG``); workers are jobs
pbs        ``dask_jobqueue.PBSCluster(**options)``, likewise
kubernetes ``dask_kubernetes.operator.KubeCluster(**options)`` (the dask operator must be
           installed in the cluster)
gateway    ``dask_gateway.Gateway(address).new_cluster(**options)``; authentication and the
           proxy address from dask's ``gateway`` config
========== ==============================================================================

``workers`` (or ``adapt``) sets the scale of the last four; the context waits until the first
workers have joined (``wait_timeout``; for ``address``: ``workers``, default 1) and closes
everything it created on exit.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from abz_dask.config import ClusterSection

__all__ = ["ClusterSession", "machine_cores", "open_cluster"]


@dataclass
class ClusterSession:
    """An open cluster: its client (None for ``threads``), the cluster object and a summary."""

    kind: str
    client: Any | None
    cluster: Any | None
    description: str
    events: list[str] = field(default_factory=list)

    @property
    def n_workers(self) -> int:
        """Workers connected now (threads: the thread count)."""
        if self.client is None:
            import dask

            return int(dask.config.get("num_workers", None) or machine_cores())
        return len(self.client.scheduler_info(n_workers=-1)["workers"])


def machine_cores() -> int:
    """Cores this process may use (CPU affinity, else ``os.cpu_count``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _import(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise RuntimeError(f"cluster kind needs {module!r}: install abz_dask[{extra}] "
                           f"({e})") from None


def _scale(cluster: Any, spec: ClusterSection, default: int) -> int:
    if spec.adapt is not None:
        cluster.adapt(minimum=spec.adapt.minimum, maximum=spec.adapt.maximum)
        return max(1, spec.adapt.minimum)
    n = spec.workers or default
    cluster.scale(n)
    return n


def _wait(client: Any, n: int, spec: ClusterSection, what: str) -> None:
    try:
        client.wait_for_workers(n_workers=n, timeout=spec.wait_timeout)
    except TimeoutError as e:
        raise RuntimeError(f"{what}: fewer than {n} worker(s) joined within "
                           f"{spec.wait_timeout:g} s (cluster.wait_timeout); check the queue "
                           "and the worker logs") from e


@contextlib.contextmanager
def open_cluster(spec: ClusterSection) -> Iterator[ClusterSession]:
    """Create (or connect to) the cluster described by ``spec`` and make it the active one.

    Parameters
    ----------
    spec : ClusterSection
        The ``cluster`` section of a run configuration.

    Yields
    ------
    ClusterSession
        With ``client`` set as the default client (``None`` for ``threads``).

    Raises
    ------
    RuntimeError
        A missing optional dependency, or workers that did not join in time.
    """
    kind = spec.kind
    if kind == "threads":
        import dask

        n = spec.workers or machine_cores()
        with dask.config.set(scheduler="threads", num_workers=n):
            yield ClusterSession(kind, None, None, f"dask threaded scheduler, {n} threads")
        return

    from distributed import Client

    if kind == "address":
        with Client(spec.address, **spec.options) as client:
            _wait(client, spec.workers or 1, spec, f"scheduler at {spec.address}")
            yield ClusterSession(kind, client, None, f"scheduler at {spec.address}")
        return

    if kind == "local":
        from distributed import LocalCluster

        n = spec.workers or machine_cores()
        kw: dict[str, Any] = {"n_workers": n, "threads_per_worker": spec.threads_per_worker,
                              "processes": True, "host": "127.0.0.1",
                              "dashboard_address": "127.0.0.1:0", "memory_limit": "auto",
                              **spec.options}
        with LocalCluster(**kw) as cluster, Client(cluster) as client:
            yield ClusterSession(kind, client, cluster,
                                 f"LocalCluster on 127.0.0.1, {n} worker process(es) × "
                                 f"{kw['threads_per_worker']} thread(s)")
        return

    if kind in ("slurm", "pbs"):
        jq = _import("dask_jobqueue", "hpc")
        cls = jq.SLURMCluster if kind == "slurm" else jq.PBSCluster
        with cls(**spec.options) as cluster:
            n = _scale(cluster, spec, default=1)
            with Client(cluster) as client:
                s = ClusterSession(kind, client, cluster,
                                   f"{cls.__name__} (jobqueue config '{kind}'), scheduler "
                                   f"{cluster.scheduler_address}")
                _wait(client, n, spec, cls.__name__)
                s.events.append(f"jobs submitted: {_job_ids(cluster)}")
                yield s
        return

    if kind == "kubernetes":
        op = _import("dask_kubernetes.operator", "k8s")
        kw = {"name": "abz-dask", **spec.options}
        with op.KubeCluster(**kw) as cluster:
            n = _scale(cluster, spec, default=2)
            with Client(cluster) as client:
                _wait(client, n, spec, "KubeCluster")
                yield ClusterSession(kind, client, cluster, f"KubeCluster {kw['name']!r}")
        return

    if kind == "gateway":
        gw_mod = _import("dask_gateway", "gateway")
        gateway = gw_mod.Gateway(address=spec.address)
        try:
            cluster = gateway.new_cluster(**spec.options)
            try:
                n = _scale(cluster, spec, default=2)
                with cluster.get_client(set_as_default=True) as client:
                    _wait(client, n, spec, "dask-gateway cluster")
                    yield ClusterSession(kind, client, cluster,
                                         f"dask-gateway cluster {cluster.name} at "
                                         f"{gateway.address}")
            finally:
                cluster.shutdown()
                _closed(cluster.gateway)
        finally:
            gateway.close()
            _closed(gateway)
        return

    raise ValueError(f"unknown cluster kind {kind!r}")  # pragma: no cover - validated


def _closed(gateway: Any) -> None:
    """Make a closed ``dask_gateway.Gateway`` ignore further ``close()`` calls: its
    ``__del__`` closes again and raises once the loop runner has stopped (dask-gateway
    2026.3 with distributed 2026.8)."""
    gateway.close = lambda *args, **kwargs: None


def _job_ids(cluster: Any) -> list[str]:
    return sorted(str(getattr(job, "job_id", None)) for job in cluster.workers.values())
