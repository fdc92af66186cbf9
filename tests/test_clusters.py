"""``abz-dask run`` on real schedulers: threads (reference), LocalCluster, Slurm, dask-gateway.

The reference is the whole pipeline (twin → extract → train → upscale → budgets) on dask's
threaded scheduler; every other scheduler runs extract → upscale → budgets on the reference's
twin and must give bit-identical flux stores and budgets. Slurm (Debian slurm-wlm + munge,
configured for localhost) and dask-gateway-server (local backend) are started by fixtures here;
when they cannot start the test is skipped with the reason printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import yaml

from abz_dask.pipeline.clusters import open_cluster
from abz_dask.pipeline.config import ClusterSection, RunConfig, parse_config
from abz_dask.pipeline.runner import run_pipeline

pytestmark = pytest.mark.timeout(900)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROFILE = {"base": "light", "n_folds": 2, "tuning_trees": 8, "final_trees": 20,
           "bootstrap_trees": 6, "n_bootstrap": 3, "importance_repeats": 0, "pdp_points": 0}


def _config(out: Path, **over: Any) -> RunConfig:
    data: dict[str, Any] = {
        "output": str(out),
        "input": {"kind": "twin", "resolution": "100km", "start": "2001-01", "end": "2004-12",
                  "n_sites": 60},
        "training": {"profile": PROFILE},
        "budgets": {"start_year": 2001, "end_year": 2004},
        "cluster": {"kind": "threads", "workers": 2},
        "progress": False,
    }
    data.update(over)
    return parse_config(data)


def _files_input(ref: Path) -> dict[str, str]:
    t = ref / "twin"
    return {"kind": "files", "cube": str(t / "cube.zarr"), "zones": str(t / "zones.zarr"),
            "abcflux": str(t / "abcflux_twin.csv"), "fire": str(t / "fire.zarr"),
            "truth_budgets": str(t / "truth_budgets.csv")}


def _say(msg: str, capsys: pytest.CaptureFixture[str] | None = None) -> None:
    if capsys is None:
        print(msg, flush=True)
        return
    with capsys.disabled():
        print(f"\n{msg}", flush=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole pipeline on the threaded scheduler."""
    out = tmp_path_factory.mktemp("run") / "threads"
    cfg = _config(out)
    with open_cluster(cfg.cluster):
        res = run_pipeline(cfg)
    assert res.status() == dict.fromkeys(
        ("twin", "extract", "train", "upscale", "budgets", "trends", "table1", "report"), "ran")
    assert (out / "report.html").stat().st_size > 0
    assert (out / "trends" / "budget_trends.csv").stat().st_size > 0
    return out


def _assert_identical(run: Path, ref: Path) -> None:
    a = xr.open_zarr(run / "fluxes.zarr", consolidated=False)
    b = xr.open_zarr(ref / "fluxes.zarr", consolidated=False)
    assert set(a.variables) == set(b.variables)
    for v in b.variables:
        x, y = a[v].values, b[v].values
        assert x.dtype == y.dtype and x.shape == y.shape, v
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), f"{v} differs"
    assert (run / "budgets.csv").read_bytes() == (ref / "budgets.csv").read_bytes()
    assert (run / "models" / "card.json").exists()


def test_rerun_skips_and_changed_settings_rerun_downstream(reference: Path,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    # stage records name absolute paths only through the config; a copied folder is current
    cfg = _config(out)
    res = run_pipeline(cfg)
    assert set(res.status().values()) == {"skipped"}
    before = (out / "budgets.csv").read_text()
    cfg2 = _config(out, budgets={"start_year": 2002, "end_year": 2003},
                   trends={"enabled": False}, report={"enabled": False})
    res2 = run_pipeline(cfg2)
    assert res2.status() == {"twin": "skipped", "extract": "skipped", "train": "skipped",
                             "upscale": "skipped", "budgets": "ran"}
    assert (out / "budgets.csv").read_text() != before
    rec = json.loads((out / "budgets.stage.json").read_text())
    assert rec["settings"] == {"start_year": 2002, "end_year": 2003, "max_excluded_area": None}
    # a deleted output makes its stage (and only it) run again
    shutil.rmtree(out / "fluxes.zarr")
    shutil.rmtree(out / "fluxes.zarr.done", ignore_errors=True)
    res3 = run_pipeline(cfg2)
    assert res3.status()["upscale"] == "ran" and res3.status()["train"] == "skipped"
    assert res3.status()["budgets"] == "skipped"  # same upscale key → same input identity
    _assert_same_store(out, reference)


def _assert_same_store(run: Path, ref: Path) -> None:
    a = xr.open_zarr(run / "fluxes.zarr", consolidated=False)
    b = xr.open_zarr(ref / "fluxes.zarr", consolidated=False)
    for v in ("NEE", "GPP", "Reco", "NEE_boot_sd", "zone_sums"):
        assert np.array_equal(a[v].values, b[v].values, equal_nan=True), v


def test_local_cluster_bit_identical_to_threads(reference: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path / "local", input=_files_input(reference), trends={"enabled": False},
                  cluster={"kind": "local", "workers": 2})
    assert cfg.report.enabled
    with open_cluster(cfg.cluster) as s:
        assert s.client is not None and s.n_workers == 2
        info = s.client.scheduler_info(n_workers=-1)
        assert info["address"].startswith("tcp://127.0.0.1:")
        assert all(w.startswith("tcp://127.0.0.1:") for w in info["workers"])
        res = run_pipeline(cfg)
    assert res.status() == dict.fromkeys(("extract", "train", "upscale", "budgets", "table1",
                                          "report"),
                                         "ran")
    _assert_identical(tmp_path / "local", reference)
    # the report of a files-input run: same estimates as the twin run's Table 1
    t_loc = (tmp_path / "local" / "table1.csv").read_text().splitlines()
    t_ref = (reference / "table1.csv").read_text().splitlines()
    assert [r.split(",")[:6] for r in t_loc] == [r.split(",")[:6] for r in t_ref]


# ------------------------------------------------------------------------------------ Slurm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, n: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() \
        else f"({path} missing)"


def _kill_pidfile(pidfile: Path) -> None:
    if pidfile.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text().split()[0]), signal.SIGTERM)


SLURM_CONF = """\
ClusterName=abztest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} State=UNKNOWN
PartitionName=abz Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A single-node Slurm on localhost (munged, slurmctld, slurmd started here as root)."""

    def skip(reason: str) -> None:
        print(f"\nSKIP Slurm test: {reason}", flush=True)
        pytest.skip(reason)

    need = ["munged", "slurmctld", "slurmd", "sbatch", "sinfo", "squeue", "scancel"]
    missing = [b for b in need if shutil.which(b, path=os.environ.get("PATH", "") +
                                                ":/usr/sbin:/sbin") is None]
    if missing:
        skip(f"Slurm/munge binaries not installed: {missing} (./install.sh test installs the "
             "Debian packages slurm-wlm and munge when run as root)")
    if os.geteuid() != 0:
        skip("the single-node Slurm needs root to start slurmd (CI runs as root)")
    root = Path(tmp_path_factory.mktemp("slurm", numbered=True))
    root.chmod(0o755)
    for d in ("munge", "state", "spool", "log"):
        (root / d).mkdir()
    (root / "munge").chmod(0o755)  # munged wants the socket folder searchable by all
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    host = socket.gethostname().split(".")[0]
    from abz_dask.pipeline.clusters import machine_cores

    mem_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20)
    conf = root / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=host, ctld_port=_free_port(), d_port=_free_port(),
                                      root=root, cpus=machine_cores(),
                                      mem=max(2048, min(8000, mem_mb - 1024))))
    (root / "cgroup.conf").write_text("CgroupPlugin=autodetect\nIgnoreSystemd=yes\n")
    sbin = "/usr/sbin/"
    old_conf = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    started = False
    try:
        cmds = [
            [sbin + "munged", "-f", f"--socket={root}/munge/munge.socket", f"--key-file={key}",
             f"--log-file={root}/log/munged.log", f"--pid-file={root}/munge/munged.pid",
             f"--seed-file={root}/munge/munged.seed"],
            [sbin + "slurmctld", "-f", str(conf), "-i"],
            [sbin + "slurmd", "-f", str(conf), "-N", host],
        ]
        for cmd in cmds:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            if p.returncode != 0:
                skip(f"{Path(cmd[0]).name} failed to start (exit {p.returncode}): "
                     f"{p.stderr.strip()[-500:]}\n{_tail(root / 'log' / 'slurmctld.log')}\n"
                     f"{_tail(root / 'log' / 'slurmd.log')}")
            started = True
        state = ""
        for _ in range(120):
            p = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True,
                               text=True, timeout=30)
            state = p.stdout.strip()
            if state == "idle":
                break
            time.sleep(0.5)
        else:
            skip(f"the Slurm node did not become idle within 60 s (state {state!r}, "
                 f"{p.stderr.strip()}):\n{_tail(root / 'log' / 'slurmctld.log')}\n"
                 f"{_tail(root / 'log' / 'slurmd.log')}")
        print(f"\nSlurm up: node {host} idle, conf {conf}", flush=True)
        yield {"conf": str(conf), "root": str(root), "partition": "abz", "host": host}
    finally:
        if started:
            subprocess.run(["scancel", "--partition=abz"], capture_output=True, timeout=30)
            time.sleep(1)
        for pid in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
            _kill_pidfile(root / pid)
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf


def _jobqueue_yaml(dest: Path, slurm: dict[str, str]) -> Path:
    """The shipped deploy/hpc/jobqueue.yaml with the few site-specific keys set for this node."""
    doc = yaml.safe_load((REPO / "deploy" / "hpc" / "jobqueue.yaml").read_text())
    doc["jobqueue"]["slurm"].update({
        "cores": 1, "processes": 1, "memory": "2GiB", "python": sys.executable,
        "queue": slurm["partition"], "walltime": "00:30:00",
        "local-directory": str(dest / "worker-space"), "log-directory": str(dest / "logs"),
        "scheduler-options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
        "worker-extra-args": ["--lifetime", "25m", "--lifetime-stagger", "1m"]})
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "jobqueue.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return dest


def test_slurm_pipeline_identical(reference: Path, slurm: dict[str, str], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    dask_dir = _jobqueue_yaml(tmp_path / "dask-config", slurm)
    out = tmp_path / "slurm"
    cfg = {"output": str(out), "input": _files_input(reference),
           "training": {"profile": PROFILE}, "budgets": {"start_year": 2001, "end_year": 2004},
           "trends": {"enabled": False}, "report": {"enabled": False},
           "cluster": {"kind": "slurm", "workers": 2, "wait_timeout": 240},
           "progress": False}
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "DASK_CONFIG": str(dask_dir), "SLURM_CONF": slurm["conf"],
           "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    p = subprocess.run([str(BIN / "abz-dask"), "run", str(cfg_path)], env=env,
                       capture_output=True, text=True, timeout=800)
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-4000:]
    lines = p.stdout.splitlines()
    jobs = next(x for x in lines if x.startswith("jobs submitted:"))
    ids = [j for j in jobs.split(":", 1)[1].strip(" []").replace("'", "").split(", ") if j]
    assert len(ids) == 2 and all(i.isdigit() for i in ids), jobs
    joined = next(x for x in lines if x.startswith("cluster: SLURMCluster"))
    assert joined.endswith("2 worker(s)"), joined
    finished = next(x for x in lines if x.startswith("pipeline finished"))
    assert "4 stage(s) ran" in finished, finished
    # the workers really were Slurm jobs of this controller, running on this node
    logs = sorted((tmp_path / "dask-config" / "logs").glob("*.err"))
    assert len(logs) >= 2, [q.name for q in (tmp_path / "dask-config").rglob("*")]
    _assert_identical(out, reference)
    _say(f"Slurm: {jobs} (sbatch via dask-jobqueue SLURMCluster, partition "
         f"{slurm['partition']})\nSlurm: workers joined: {joined.split(';')[-1].strip()}\n"
         f"Slurm: {finished}\nSlurm: outputs identical to the local run: fluxes.zarr "
         f"(every variable bit-identical) and budgets.csv (byte-identical)", capsys)


# ------------------------------------------------------------------------------- dask-gateway


GATEWAY_CONFIG = """\
c.DaskGateway.address = "127.0.0.1:{api_port}"
c.Proxy.address = "127.0.0.1:{proxy_port}"
c.DaskGateway.backend_class = "dask_gateway_server.backends.local.UnsafeLocalBackend"
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
c.SimpleAuthenticator.password = "{password}"
c.LocalBackend.clusters_directory = "{root}/clusters"
c.ClusterConfig.scheduler_cmd = ["{python}", "-m", "distributed.cli.dask_scheduler"]
c.ClusterConfig.worker_cmd = ["{python}", "-m", "distributed.cli.dask_worker"]
c.ClusterConfig.worker_cores = 1
c.ClusterConfig.worker_threads = 1
c.ClusterConfig.worker_memory = "2 G"
c.ClusterConfig.scheduler_memory = "1 G"
c.ClusterConfig.idle_timeout = 600
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A dask-gateway-server (local backend) on 127.0.0.1, as a subprocess."""
    exe = BIN / "dask-gateway-server"
    if not exe.exists():
        print("\nSKIP gateway test: dask-gateway-server not installed", flush=True)
        pytest.skip("dask-gateway-server not installed (pip install abz_dask[test])")
    root = Path(tmp_path_factory.mktemp("gateway"))
    (root / "clusters").mkdir()
    password = os.urandom(8).hex()
    api, proxy = _free_port(), _free_port()
    conf = root / "dask_gateway_config.py"
    conf.write_text(GATEWAY_CONFIG.format(api_port=api, proxy_port=proxy, password=password,
                                          root=root, python=sys.executable))
    log = (root / "gateway.log").open("w")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen([str(exe), "-f", str(conf)], cwd=root, stdout=log,
                            stderr=subprocess.STDOUT, env=env)
    address = f"http://127.0.0.1:{proxy}"
    try:
        import urllib.request

        for _ in range(120):
            if proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{address}/api/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"dask-gateway-server did not answer at {address}:\n"
                        f"{_tail(root / 'gateway.log')}")
        if proc.poll() is not None:
            pytest.fail(f"dask-gateway-server exited ({proc.returncode}):\n"
                        f"{_tail(root / 'gateway.log')}")
        yield {"address": address, "password": password, "log": str(root / "gateway.log")}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_gateway_pipeline_identical(reference: Path, gateway: dict[str, str], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    import dask

    out = tmp_path / "gateway"
    cfg = _config(out, input=_files_input(reference), trends={"enabled": False},
                  report={"enabled": False},
                  cluster={"kind": "gateway", "address": gateway["address"], "workers": 2,
                           "wait_timeout": 240})
    auth = {"gateway.auth.type": "basic",
            "gateway.auth.kwargs": {"username": "abz", "password": gateway["password"]}}
    with dask.config.set(auth), open_cluster(cfg.cluster) as s:
        assert s.client is not None and s.n_workers == 2
        assert "dask-gateway cluster" in s.description
        assert s.client.scheduler.address.startswith("gateway://127.0.0.1:")
        res = run_pipeline(cfg)
        # adapt() is accepted by the gateway cluster too (what the notebook shows)
        s.cluster.adapt(minimum=1, maximum=2)
    assert res.status() == dict.fromkeys(("extract", "train", "upscale", "budgets"), "ran")
    _assert_identical(out, reference)
    _say(f"gateway: {s.description}: 2 workers, pipeline finished, outputs identical", capsys)


def test_cluster_section_rejects_adapt_for_local() -> None:
    with pytest.raises(ValueError, match="adapt"):
        ClusterSection(kind="local", adapt={"minimum": 1, "maximum": 2})  # type: ignore[arg-type]


def test_address_connects_to_a_running_scheduler() -> None:
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as lc:
        spec = ClusterSection(kind="address", address=lc.scheduler_address)
        with open_cluster(spec) as s:
            assert s.cluster is None and s.n_workers == 1
            assert s.client.scheduler.address == lc.scheduler_address
            assert s.client.submit(sum, [1, 2]).result() == 3
        few = ClusterSection(kind="address", address=lc.scheduler_address, workers=3,
                             wait_timeout=1)
        with pytest.raises(RuntimeError, match=r"fewer than 3 worker\(s\) joined within 1 s"), \
                open_cluster(few):
            pass


def test_kubernetes_needs_its_extra() -> None:
    import importlib.util

    if importlib.util.find_spec("dask_kubernetes") is not None:
        pytest.skip("dask-kubernetes is installed; a KubeCluster needs a Kubernetes API")
    with pytest.raises(RuntimeError, match=r"install abz_dask\[k8s\]"), \
            open_cluster(ClusterSection(kind="kubernetes", workers=2)):
        pass
