"""TLS for the Dask clusters abz_dask creates or joins: the ``cluster.security`` section.

Without it, a ``local`` cluster's scheduler, workers and dashboard listen on 127.0.0.1 in plain
TCP / HTTP with no authentication: every user of the machine can connect a client and run code
as you. With TLS, every Dask connection (client ↔ scheduler ↔ workers) is encrypted *and*
mutually authenticated: both ends must present a certificate signed by the configured CA, so a
plain-TCP client, or one without the right certificate, is refused. Host names are not checked
(distributed's rule: the CA is the trust anchor).

Two ways to switch it on (:class:`abz_dask.pipeline.config.SecuritySection`):

``tls: true``
    a self-signed CA / key / certificate made in memory for this run
    (``distributed.Security.temporary()``); only the run's own client holds it.
    ``local``, ``slurm`` and ``pbs`` only (a scheduler that already runs cannot trust it).
``tls_ca_file``, ``tls_<role>_cert``, ``tls_<role>_key`` (role: client, scheduler, worker)
    your own PEM files (absolute paths; ``~`` and ``$VARS`` are expanded); a ``*_key`` may be
    omitted when the certificate file holds the key too.

What each ``cluster.kind`` does with it:

========== ==============================================================================
kind       TLS
========== ==============================================================================
threads    not applicable (no network): an error
local      ``LocalCluster(security=..., protocol="tls://")`` on ``tls://127.0.0.1``
slurm, pbs dask-jobqueue ``security=..., protocol="tls://"``: the scheduler listens on
           ``tls://``; workers get ``--tls-*`` arguments in their job script. A per-run
           certificate is written (mode 0600, deleted at the end) to the jobqueue
           ``shared-temp-directory`` (default: the current folder), which the compute nodes
           must see
address    the client side only: ``Client("tls://…", security=...)`` with your
           ``tls_ca_file`` + ``tls_client_cert`` (the scheduler's own TLS is configured
           where it was started)
gateway    always TLS (``gateway://`` through the gateway's proxy, with a certificate the
           gateway issues per cluster); ``tls: true`` is accepted and checked, certificate
           files are an error. The gateway *API* is protected only when ``address`` is https
kubernetes an error: the operator's ``KubeCluster`` has no TLS option; mount certificates
           in the pods (dask config ``distributed.comm.tls.*``) and use kind ``address``
========== ==============================================================================

The dashboard is plain HTTP in every case (TLS covers the Dask protocol only); ``local``
binds it to 127.0.0.1 and ``slurm`` / ``pbs`` default it to ``127.0.0.1:8787`` (reach it
through ``ssh -L 8787:127.0.0.1:8787 login-node``); ``options: {dashboard_address: null}``
switches it off.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["CERT_KEYS", "ROLES", "TLS_FILE_KEYS", "check_pem", "expand_path", "make_security",
           "roles_needed"]

#: The three parties of a Dask cluster, each with its own certificate.
ROLES: tuple[str, ...] = ("client", "scheduler", "worker")

#: The certificate-file keys of ``cluster.security`` (names of ``distributed.Security``).
TLS_FILE_KEYS: tuple[str, ...] = ("tls_ca_file", *(f"tls_{r}_{p}" for r in ROLES
                                                   for p in ("cert", "key")))

#: ``tls_<role>_cert`` by role.
CERT_KEYS: dict[str, str] = {r: f"tls_{r}_cert" for r in ROLES}


def roles_needed(kind: str) -> tuple[str, ...]:
    """The roles whose certificates a ``cluster.kind`` needs from the user's own files.

    Parameters
    ----------
    kind : str
        ``cluster.kind``.

    Returns
    -------
    tuple of str
        ``("client",)`` for ``address`` (the scheduler and workers already run);
        all three roles for the kinds that start a scheduler and workers (local, slurm, pbs);
        empty for the kinds that take no certificate files.
    """
    if kind == "address":
        return ("client",)
    if kind in ("local", "slurm", "pbs"):
        return ROLES
    return ()


def expand_path(value: str | os.PathLike[str]) -> Path:
    """``~`` and ``$VARS`` expanded; relative paths are refused (they would depend on the
    folder the run is started from).

    Raises
    ------
    ValueError
        A relative path.
    """
    p = Path(os.path.expandvars(os.path.expanduser(os.fspath(value))))
    if not p.is_absolute():
        raise ValueError(f"{value!s}: give an absolute path (~ and $VARS are expanded)")
    if not p.is_file():
        raise ValueError(f"certificate file not found: {p}")
    return p


def check_pem(files: Mapping[str, Path | None]) -> None:
    """Load every role's certificate chain and the CA as ``ssl`` would, to report a bad file
    before a cluster starts.

    Parameters
    ----------
    files : mapping
        ``TLS_FILE_KEYS`` → path (or None).

    Raises
    ------
    ValueError
        Naming the keys and files that do not load (not PEM, key not matching the
        certificate, encrypted key).
    """
    ca = files.get("tls_ca_file")
    if ca is not None:
        try:
            ssl.create_default_context(cafile=str(ca))
        except (ssl.SSLError, OSError) as e:
            raise ValueError(f"tls_ca_file {ca}: not a PEM CA certificate ({e})") from None
    for role in ROLES:
        cert, key = files.get(f"tls_{role}_cert"), files.get(f"tls_{role}_key")
        if cert is None:
            continue
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            ctx.load_cert_chain(str(cert), None if key is None else str(key),
                                password=lambda: b"")
        except (ssl.SSLError, OSError) as e:
            where = f"tls_{role}_cert {cert}" + ("" if key is None else
                                                  f" with tls_{role}_key {key}")
            hint = f" (no tls_{role}_key: the certificate file must hold the key)" \
                if key is None else ""
            raise ValueError(f"{where}: certificate and unencrypted private key do not load"
                             f"{hint} ({e})") from None


def make_security(tls: bool, files: Mapping[str, Path | None]) -> Any:
    """The ``distributed.Security`` of a ``cluster.security`` section (None: TLS off).

    Parameters
    ----------
    tls : bool
        Make a per-run self-signed certificate (``Security.temporary()``).
    files : mapping
        ``TLS_FILE_KEYS`` → path (or None) of the user's own certificates.

    Returns
    -------
    distributed.Security or None
        With ``require_encryption=True``.
    """
    from distributed import Security

    if tls:
        return Security.temporary()
    given = {k: str(v) for k, v in files.items() if v is not None}
    if not given:
        return None
    return Security(require_encryption=True, **given)
