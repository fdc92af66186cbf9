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

Security. Without ``cluster.security`` a ``local`` cluster listens on 127.0.0.1 only (scheduler,
workers, nannies and dashboard) but in plain TCP with no authentication, so any local user can
connect a client. ``cluster.security: {tls: true}`` (or your own certificate files) makes every
Dask connection mutual TLS: ``local`` listens on ``tls://127.0.0.1`` and refuses clients
without a certificate of the run's CA; ``slurm`` / ``pbs`` pass ``security=`` and
``protocol="tls://"`` to dask-jobqueue (workers get ``--tls-*`` arguments); ``address`` connects
with client-side ``Security``; ``gateway`` is always TLS through the gateway's proxy;
``threads`` and ``kubernetes`` refuse it (see :mod:`abz_dask.pipeline.security`). The dashboard is
plain HTTP; ``local`` binds it to 127.0.0.1, ``slurm`` / ``pbs`` default it to
``127.0.0.1:8787`` unless the jobqueue ``scheduler-options`` set ``dashboard_address``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from abz_dask.pipeline.config import ClusterSection

__all__ = ["ClusterSession", "jobqueue_cluster", "local", "machine_cores", "open_cluster",
           "quiet_distributed"]


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


#: Loggers of ``distributed`` silenced while a finished cluster shuts down: closing the
#: scheduler while a worker's heartbeat is in flight logs ``CommClosedError`` tracebacks that
#: say nothing about the run.
SHUTDOWN_LOGGERS: tuple[str, ...] = ("distributed", "tornado")


def _silence(names: tuple[str, ...] = SHUTDOWN_LOGGERS) -> dict[str, int]:
    """Raise the given loggers to CRITICAL; returns their previous levels."""
    before = {}
    for name in names:
        log = logging.getLogger(name)
        before[name] = log.level
        log.setLevel(logging.CRITICAL)
    return before


@contextlib.contextmanager
def quiet_distributed() -> Iterator[None]:
    """Silence the ``distributed`` loggers of this process inside the block (levels restored
    afterwards)."""
    before = _silence()
    try:
        yield
    finally:
        for name, level in before.items():
            logging.getLogger(name).setLevel(level)





@contextlib.contextmanager
def local(kw: dict[str, Any]) -> Iterator[tuple[Any, Any]]:
    """A ``LocalCluster(**kw)`` and its client, closed quietly.

    On exit the ``distributed`` loggers are silenced, in this process and (through the client)
    in the workers, then the client is closed before the cluster (which stops the workers before
    the scheduler), so the heartbeat races of a shutdown print no ``CommClosedError``
    tracebacks. Errors of the command itself propagate unchanged.
    """
    import inspect

    from distributed import Client, LocalCluster, Nanny, Worker

    known = {n for f in (LocalCluster, Nanny, Worker)
             for n in inspect.signature(f.__init__).parameters}
    unknown = sorted(set(kw) - known)
    if unknown:  # LocalCluster passes unknown keywords to the workers, which then fail to start
        raise ValueError(f"cluster.options: unknown LocalCluster / worker option(s) {unknown}")
    try:
        cluster = LocalCluster(**kw)
    except TypeError as e:
        raise ValueError(f"cluster.options: {e}") from None
    try:
        client = Client(cluster)
    except BaseException:
        with quiet_distributed():
            cluster.close()
        raise
    interrupted = True
    try:
        yield cluster, client
        interrupted = False
    except Exception:
        interrupted = False  # an error of the command: the cluster still answers
        raise
    finally:
        with quiet_distributed():
            if not interrupted:  # not after Ctrl-C: a busy worker would delay the exit
                with contextlib.suppress(Exception):
                    client.run(_silence, on_error="ignore")  # the workers' heartbeat loggers
            with contextlib.suppress(Exception):
                client.close()
            cluster.close()


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

    tls = _tls_words(spec)

    if kind == "address":
        kw: dict[str, Any] = dict(spec.options)
        if spec.security.enabled:
            kw["security"] = spec.security.to_security()  # client side: your certificates
        kw.setdefault("timeout", spec.wait_timeout)
        try:
            client = Client(spec.address, **kw)
        except (OSError, TimeoutError) as e:
            raise RuntimeError(f"cluster.address {spec.address}: no scheduler answered within "
                               f"{spec.wait_timeout:g} s (cluster.wait_timeout): {e}") from None
        except TypeError as e:
            raise ValueError(f"cluster.options: {e}") from None
        with client:
            _wait(client, spec.workers or 1, spec, f"scheduler at {spec.address}")
            yield ClusterSession(kind, client, None, f"scheduler at {spec.address}{tls}")
        return

    if kind == "local":
        n = spec.workers or machine_cores()
        kw = {"n_workers": n, "threads_per_worker": spec.threads_per_worker,
              "processes": True, "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0",
              "memory_limit": "auto", **spec.options}
        if spec.security.enabled:
            kw.update(security=spec.security.to_security(), protocol="tls://")
        with local(kw) as (cluster, client):
            _check_tls(client, spec)
            yield ClusterSession(kind, client, cluster,
                                 f"LocalCluster at {cluster.scheduler_address}{tls}, {n} "
                                 f"worker process(es) × {kw['threads_per_worker']} thread(s)")
        return

    if kind in ("slurm", "pbs"):
        with jobqueue_cluster(spec) as (cluster, notes):
            n = _scale(cluster, spec, default=1)
            with Client(cluster) as client:
                name = type(cluster).__name__
                s = ClusterSession(kind, client, cluster,
                                   f"{name} (jobqueue config '{kind}'), scheduler "
                                   f"{cluster.scheduler_address}{tls}", events=notes)
                _wait(client, n, spec, name)
                _check_tls(client, spec)
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
                    s = ClusterSession(kind, client, cluster,
                                       f"dask-gateway cluster {cluster.name} at "
                                       f"{gateway.address} (TLS: gateway-issued certificate)")
                    if spec.security.tls and (cluster.security is None or not str(
                            client.scheduler.address).startswith("gateway://")):
                        raise RuntimeError("cluster.security.tls: the gateway cluster's "
                                           f"scheduler {client.scheduler.address} is not "
                                           "reached through TLS")
                    if str(gateway.address).startswith("http://") and not \
                            _is_loopback(str(gateway.address)):
                        s.events.append(f"warning: the gateway API {gateway.address} is plain "
                                        "HTTP: its credentials travel unencrypted (use https)")
                    yield s
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


def _tls_words(spec: ClusterSection) -> str:
    """The TLS part of a session description."""
    sec = spec.security
    if not sec.enabled:
        return ""
    return " (TLS, per-run self-signed certificate)" if sec.tls else \
        f" (TLS, CA {sec.tls_ca_file})"


def _check_tls(client: Any, spec: ClusterSection) -> None:
    """With TLS on, the scheduler and every worker must be at a ``tls://`` address."""
    if not spec.security.enabled:
        return
    info = client.scheduler_info(n_workers=-1)
    plain = [a for a in (info["address"], *info["workers"]) if not a.startswith("tls://")]
    if plain:
        raise RuntimeError(f"cluster.security is on but these are not TLS addresses: {plain}")


def _is_loopback(url: str) -> bool:
    from urllib.parse import urlparse

    return (urlparse(url).hostname or "") in ("127.0.0.1", "localhost", "::1")


@contextlib.contextmanager
def jobqueue_cluster(spec: ClusterSection) -> Iterator[tuple[Any, list[str]]]:
    """The dask-jobqueue ``SLURMCluster`` / ``PBSCluster`` of ``spec`` (not scaled), with TLS
    when ``spec.security`` is on; closed on exit.

    Parameters
    ----------
    spec : ClusterSection
        Kind ``slurm`` or ``pbs``; ``options`` are the cluster's keyword arguments, everything
        else comes from dask's ``jobqueue.<kind>`` config.

    Yields
    ------
    (cluster, notes)
        The cluster and lines for the run's log (where a per-run certificate was written).

    Notes
    -----
    TLS: ``security=`` and ``protocol="tls://"``; the scheduler listens on ``tls://`` and the
    job script starts each worker with ``--protocol tls:// --tls-ca-file ... --tls-cert ...
    --tls-key ...``. Your own certificate files must be readable at the same path on the
    compute nodes. A per-run certificate (``tls: true``) is written by dask-jobqueue to the
    ``shared_temp_directory`` (``options`` or ``jobqueue.<kind>.shared-temp-directory``;
    default here: the current folder), files of mode 0600 deleted when the cluster closes;
    that folder must be on a filesystem the compute nodes share.

    Dashboard: dask-jobqueue's default binds it to every interface (``:8787``); unless
    ``scheduler_options`` (in ``options`` or the jobqueue config) set ``dashboard_address``, it is
    bound to ``127.0.0.1:8787`` here (reach it with ``ssh -L 8787:127.0.0.1:8787 HOST``).
    """
    import dask

    jq = _import("dask_jobqueue", "hpc")
    cls = jq.SLURMCluster if spec.kind == "slurm" else jq.PBSCluster
    kw: dict[str, Any] = dict(spec.options)
    name = kw.get("config_name") or spec.kind
    notes: list[str] = []
    # scheduler_options given as an argument replace the config's: merge them here
    so = dict(kw.get("scheduler_options") or
              dask.config.get(f"jobqueue.{name}.scheduler-options", None) or {})
    if "dashboard_address" not in so:
        so["dashboard_address"] = "127.0.0.1:8787"
    kw["scheduler_options"] = so
    security = spec.security.to_security()
    if security is not None:
        kw.update(security=security, protocol="tls://")
        if spec.security.tls:
            shared = kw.get("shared_temp_directory") or dask.config.get(
                f"jobqueue.{name}.shared-temp-directory", None) or os.getcwd()
            kw["shared_temp_directory"] = shared
            notes.append(f"TLS: per-run worker certificate written to {shared} (must be "
                         "shared with the compute nodes; deleted at the end)")
    with cls(**kw) as cluster:
        yield cluster, notes
