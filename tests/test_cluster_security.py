"""TLS of the clusters abz_dask creates (``cluster.security``), with real distributed processes.

Every cluster here is real: a ``LocalCluster`` with nanny worker processes started through the
package's factories (:func:`abz_dask.pipeline.clusters.open_cluster`,
:func:`abz_dask.commands.common.local_cluster`), or a dask-jobqueue ``SLURMCluster`` scheduler
whose generated job script is run with bash (what Slurm would run on a compute node). Clients
that must be refused really try to connect: plain TCP, TLS without a certificate, and TLS with a
certificate of another CA.
"""

from __future__ import annotations

import contextlib
import datetime
import operator
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psutil
import pytest
from distributed import Client, Security
from test_clusters import gateway  # noqa: F401  (the dask-gateway-server fixture)

from abz_dask.commands.common import local_cluster
from abz_dask.pipeline.clusters import jobqueue_cluster, open_cluster
from abz_dask.pipeline.config import ClusterSection, ConfigError, SecuritySection, parse_config

pytestmark = pytest.mark.timeout(300)

LOOPBACK = {"127.0.0.1", "::1"}


# ------------------------------------------------------------------------------- helpers


def _pem_pair(name: str, issuer: tuple[Any, Any] | None = None) -> tuple[Any, Any]:
    """A key and certificate for ``name``, self-signed (a CA) or signed by ``issuer``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca_key, ca_cert = issuer if issuer is not None else (key, None)
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(subject if ca_cert is None else ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None),
                              critical=True))
    return key, builder.sign(ca_key, hashes.SHA256())


def _write_pki(folder: Path, ca_name: str) -> dict[str, Path]:
    """A CA and one certificate per role signed by it, as PEM files in ``folder``."""
    from cryptography.hazmat.primitives import serialization

    folder.mkdir(parents=True, exist_ok=True)
    ca = _pem_pair(ca_name)
    files = {"tls_ca_file": folder / "ca.pem"}
    files["tls_ca_file"].write_bytes(ca[1].public_bytes(serialization.Encoding.PEM))
    for role in ("client", "scheduler", "worker"):
        key, cert = _pem_pair(f"abz-{role}", issuer=ca)
        files[f"tls_{role}_cert"] = folder / f"{role}.crt"
        files[f"tls_{role}_key"] = folder / f"{role}.key"
        files[f"tls_{role}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"tls_{role}_key"].write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        files[f"tls_{role}_key"].chmod(0o600)
    return files


def _client_security(files: dict[str, Path]) -> Security:
    return Security(require_encryption=True, tls_ca_file=str(files["tls_ca_file"]),
                    tls_client_cert=str(files["tls_client_cert"]),
                    tls_client_key=str(files["tls_client_key"]))


def _one_plus_one(address: str, security: Security) -> int:
    with Client(address, security=security, timeout=20) as c:
        return int(c.submit(operator.add, 1, 1, pure=False).result(timeout=30))


def _refused(address: str, security: Security | None = None) -> str:
    """Connect a client that must fail; returns the error (for the assertion message)."""
    kw: dict[str, Any] = {} if security is None else {"security": security}
    with pytest.raises(OSError) as err:  # CommClosedError, TimeoutError: OSError subclasses
        c = Client(address, timeout=3, **kw)
        c.close()
    return repr(err.value)


def _no_client_certificate_refused(address: str, ca_pem: str) -> None:
    """A TLS connection that trusts the scheduler (right CA) but shows no certificate of its
    own: the scheduler ends it (mutual TLS)."""
    u = urlparse(address)
    ctx = ssl.create_default_context(cadata=ca_pem)
    ctx.check_hostname = False
    try:
        with socket.create_connection((u.hostname, u.port), timeout=5) as raw, \
                ctx.wrap_socket(raw) as tls:
            tls.sendall(b"\0" * 8)
            got = tls.recv(1)
    except (ssl.SSLError, ConnectionError):  # an alert or EOF (the scheduler's log: "peer
        return  # did not return a certificate"); with TLS 1.3 it follows the handshake
    assert got == b"", got  # or the connection is closed without a word


def _assert_refuses_outsiders(address: str, ca_pem: str) -> None:
    """Plain TCP, TLS without a client certificate, a client of another CA and a certificate
    of another CA presented to the right CA are all refused."""
    assert address.startswith("tls://127.0.0.1:"), address
    _refused("tcp://" + address.removeprefix("tls://"))
    _no_client_certificate_refused(address, ca_pem)
    other = Security.temporary()
    _refused(address, other)  # trusts another CA: the client refuses the scheduler, and v.v.
    foreign = Security(require_encryption=True, tls_ca_file=ca_pem,
                       tls_client_cert=other.tls_client_cert, tls_client_key=other.tls_client_key)
    _refused(address, foreign)  # trusts the scheduler, but its own certificate is foreign


def _listening() -> list[tuple[str, int, str]]:
    """(host, port, process) of every listening socket of this process and its children."""
    me = psutil.Process()
    out = []
    for p in (me, *me.children(recursive=True)):
        try:
            conns = p.net_connections(kind="inet")
        except psutil.NoSuchProcess:  # pragma: no cover - a process that just ended
            continue
        out += [(c.laddr.ip, c.laddr.port, f"{p.pid} {' '.join(p.cmdline()[:3])}")
                for c in conns if c.status == psutil.CONN_LISTEN]
    return out


def _assert_loopback_only(client: Any, dashboard_link: str | None) -> None:
    info = client.scheduler_info(n_workers=-1)
    hosts = [urlparse(a).hostname for a in (info["address"], *info["workers"])]
    assert set(hosts) == {"127.0.0.1"}, hosts
    assert dashboard_link is not None and urlparse(dashboard_link).hostname == "127.0.0.1"
    sockets = _listening()
    ports = {port for _, port, _ in sockets}
    assert urlparse(dashboard_link).port in ports  # the dashboard is one of the sockets
    assert urlparse(info["address"]).port in ports
    wide = [s for s in sockets if s[0] not in LOOPBACK]
    assert not wide, f"listening beyond 127.0.0.1: {wide}"


# --------------------------------------------------------------------- default: loopback


def test_default_local_cluster_listens_on_loopback_only() -> None:
    with open_cluster(ClusterSection(kind="local", workers=1)) as s:
        assert s.client.scheduler.address.startswith("tcp://127.0.0.1:")
        assert "TLS" not in s.description
        _assert_loopback_only(s.client, s.cluster.dashboard_link)
    with local_cluster(1) as client:
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")  # type: ignore[attr-defined]
        _assert_loopback_only(client, client.dashboard_link)  # type: ignore[attr-defined]


# ------------------------------------------------------------------ tls: true (per run)


def test_open_cluster_local_tls_refuses_outsiders() -> None:
    spec = parse_config({"output": "x", "cluster": {"kind": "local", "workers": 1,
                                                    "security": {"tls": True}}}).cluster
    with open_cluster(spec) as s:
        address = s.client.scheduler.address
        assert "per-run self-signed" in s.description and address in s.description
        assert s.client.submit(operator.add, 1, 1).result() == 2
        assert _one_plus_one(address, s.client.security) == 2  # the run's own certificate
        _assert_refuses_outsiders(address, s.client.security.tls_ca_file)
        _assert_loopback_only(s.client, s.cluster.dashboard_link)
        assert all(w.startswith("tls://127.0.0.1:")
                   for w in s.client.scheduler_info(n_workers=-1)["workers"])


def test_local_cluster_command_helper_tls() -> None:
    with local_cluster(1, security=SecuritySection(tls=True)) as client:
        address = client.scheduler.address  # type: ignore[attr-defined]
        assert _one_plus_one(address, client.security) == 2  # type: ignore[attr-defined]
        _assert_refuses_outsiders(address, client.security.tls_ca_file)  # type: ignore[attr-defined]
        _assert_loopback_only(client, client.dashboard_link)  # type: ignore[attr-defined]


# --------------------------------------------------------------- users' own certificates


def test_own_certificates_local_and_address(tmp_path: Path) -> None:
    files = _write_pki(tmp_path / "pki", "abz-test-ca")
    other = _write_pki(tmp_path / "other", "another-ca")
    sec = {k: str(v) for k, v in files.items()}
    spec = parse_config({"output": "x", "cluster": {"kind": "local", "workers": 1,
                                                    "security": sec}}).cluster
    with open_cluster(spec) as s:
        address = s.client.scheduler.address
        assert f"CA {files['tls_ca_file']}" in s.description
        assert _one_plus_one(address, _client_security(files)) == 2
        _assert_refuses_outsiders(address, files["tls_ca_file"].read_text())
        # the right CA, but a client certificate signed by another CA (files): refused too
        foreign = Security(require_encryption=True, tls_ca_file=str(files["tls_ca_file"]),
                           tls_client_cert=str(other["tls_client_cert"]),
                           tls_client_key=str(other["tls_client_key"]))
        _refused(address, foreign)
        # kind address: the client side of the same certificates joins the running scheduler
        joined = ClusterSection(kind="address", address=address, security={  # type: ignore[arg-type]
            "tls_ca_file": sec["tls_ca_file"], "tls_client_cert": sec["tls_client_cert"],
            "tls_client_key": sec["tls_client_key"]})
        with open_cluster(joined) as a:
            assert a.n_workers == 1 and "TLS" in a.description
            assert a.client.submit(operator.add, 1, 1, pure=False).result() == 2


# --------------------------------------------------------------------- dask-jobqueue


@pytest.fixture
def slurm_tls_cluster(tmp_path: Path) -> Iterator[tuple[Any, list[str]]]:
    spec = ClusterSection(kind="slurm", security={"tls": True}, options={  # type: ignore[arg-type]
        "cores": 1, "processes": 1, "memory": "1GiB", "python": sys.executable,
        "shared_temp_directory": str(tmp_path), "death_timeout": 60,
        "scheduler_options": {"host": "127.0.0.1"}})
    with jobqueue_cluster(spec) as pair:
        yield pair


def test_jobqueue_tls_job_script_worker_joins(slurm_tls_cluster: tuple[Any, list[str]],
                                              tmp_path: Path) -> None:
    cluster, notes = slurm_tls_cluster
    assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
    assert urlparse(cluster.dashboard_link).hostname == "127.0.0.1"  # not jobqueue's ":8787"
    assert any(str(tmp_path) in n for n in notes), notes
    script = cluster.job_script()
    for arg in ("--protocol tls://", "--tls-ca-file", "--tls-cert", "--tls-key",
                cluster.scheduler_address):
        assert arg in script, script
    # the worker's copies of the per-run certificate: private files in shared_temp_directory
    dumped = sorted(tmp_path.glob(".dask-jobqueue.worker.*"))
    assert len(dumped) == 3 and all(p.stat().st_mode & 0o077 == 0 for p in dumped), dumped
    # run the job script as Slurm would on a compute node
    (tmp_path / "job.sh").write_text(script)
    log = (tmp_path / "job.log").open("w")
    proc = subprocess.Popen(["bash", str(tmp_path / "job.sh")], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with Client(cluster) as client:
            try:
                client.wait_for_workers(1, timeout=120)
            except TimeoutError:
                pytest.fail(f"the TLS worker did not join:\n"
                            f"{(tmp_path / 'job.log').read_text()[-3000:]}")
            workers = list(client.scheduler_info(n_workers=-1)["workers"])
            assert all(w.startswith("tls://") for w in workers), workers
            assert client.submit(operator.add, 1, 1).result() == 2
        _refused("tcp://" + cluster.scheduler_address.removeprefix("tls://"))
        _refused(cluster.scheduler_address, Security.temporary())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


# ------------------------------------------------------------------------------ config


def _cluster_error(cluster: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config({"output": "x", "cluster": cluster}, source="run.yaml")
    return str(err.value)


def test_config_unknown_security_key_is_named() -> None:
    msg = _cluster_error({"kind": "local", "security": {"tls_cafile": "/etc/ca.pem"}})
    assert "unknown key 'cluster.security.tls_cafile'" in msg, msg
    msg = _cluster_error({"kind": "local", "security": {"tls": True, "verify": False}})
    assert "unknown key 'cluster.security.verify'" in msg, msg


def test_config_missing_certificate_files_are_named(tmp_path: Path) -> None:
    files = _write_pki(tmp_path / "pki", "abz-test-ca")
    sec = {k: str(v) for k, v in files.items()}
    gone = tmp_path / "nowhere" / "worker.crt"
    msg = _cluster_error({"kind": "local", "security": {**sec, "tls_worker_cert": str(gone)}})
    assert "cluster.security.tls_worker_cert" in msg and str(gone) in msg, msg
    assert "not found" in msg, msg
    msg = _cluster_error({"kind": "local", "security": {**sec, "tls_ca_file": "ca.pem"}})
    assert "cluster.security.tls_ca_file" in msg and "absolute path" in msg, msg
    # a role left out, and a key that does not belong to its certificate
    no_worker = {k: v for k, v in sec.items() if "worker" not in k}
    msg = _cluster_error({"kind": "local", "security": no_worker})
    assert "tls_worker_cert" in msg, msg
    msg = _cluster_error({"kind": "local", "security": {
        **sec, "tls_client_key": sec["tls_worker_key"]}})
    assert f"tls_client_cert {files['tls_client_cert']}" in msg, msg


def test_config_security_rules_per_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = _write_pki(tmp_path / "pki", "abz-test-ca")
    sec = {k: str(v) for k, v in files.items()}
    client_only = {k: v for k, v in sec.items() if k == "tls_ca_file" or "client" in k}
    assert "threads" in _cluster_error({"kind": "threads", "security": {"tls": True}})
    assert "KubeCluster" in _cluster_error({"kind": "kubernetes", "security": {"tls": True}})
    assert "always uses TLS" in _cluster_error({"kind": "gateway", "security": sec})
    assert ClusterSection(kind="gateway", security={"tls": True}).security.enabled  # type: ignore[arg-type]
    assert "cannot trust" in _cluster_error({"kind": "address", "address": "tls://h:8786",
                                             "security": {"tls": True}})
    assert "must start with tls://" in _cluster_error(
        {"kind": "address", "address": "tcp://h:8786", "security": client_only})
    assert "not used with kind 'address'" in _cluster_error(
        {"kind": "address", "address": "tls://h:8786", "security": sec})
    assert "cannot be combined" in _cluster_error({"kind": "local",
                                                   "security": {"tls": True, **sec}})
    assert "cluster.options.security" in _cluster_error({"kind": "local",
                                                         "options": {"security": True}})
    assert "cluster.options.protocol" in _cluster_error(
        {"kind": "local", "options": {"protocol": "tcp://"}, "security": {"tls": True}})
    # off by default; ~ and $VARS in paths are expanded
    assert not ClusterSection().security.enabled
    monkeypatch.setenv("ABZ_PKI", str(files["tls_ca_file"].parent))
    s = ClusterSection(kind="address", address="tls://h:8786", security={  # type: ignore[arg-type]
        **client_only, "tls_ca_file": "$ABZ_PKI/ca.pem"})
    assert s.security.tls_ca_file == files["tls_ca_file"]


# --------------------------------------------------------------------------- dask-gateway


def test_gateway_cluster_is_tls(gateway: dict[str, str]) -> None:  # noqa: F811
    import dask

    # imported before dask.config.set: leaving the block must not drop dask-gateway's defaults
    pytest.importorskip("dask_gateway")
    spec = ClusterSection(kind="gateway", address=gateway["address"], workers=1,
                          wait_timeout=240, security={"tls": True})  # type: ignore[arg-type]
    auth = {"gateway.auth.type": "basic",
            "gateway.auth.kwargs": {"username": "abz", "password": gateway["password"]}}
    with dask.config.set(auth), open_cluster(spec) as s:
        address = s.client.scheduler.address
        assert address.startswith("gateway://127.0.0.1:"), address
        assert s.cluster.security is not None and "gateway-issued" in s.description
        assert s.client.submit(operator.add, 1, 1).result() == 2
        assert not [e for e in s.events if "plain HTTP" in e]  # a loopback API is no warning
        # the proxy routes TLS (by SNI) only: plain bytes get no answer, never a scheduler
        port = urlparse(address.replace("gateway://", "tcp://")).port
        with socket.create_connection(("127.0.0.1", port), timeout=3) as raw:
            raw.sendall(b"\0" * 64)
            with contextlib.suppress(TimeoutError, ConnectionError):  # no answer
                assert raw.recv(64) == b""  # or closed
