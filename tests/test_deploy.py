"""deploy/: Kubernetes manifests, Dockerfile, jobqueue.yaml, batch scripts, hub files, configs."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from abz_dask.pipeline.config import load_config, parse_config

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"


def _script_name() -> str:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    (name,) = [k for k, v in scripts.items() if v == "abz_dask.cli:app"]
    return str(name)


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, backslash continuations joined."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        instr, _, args = buf.strip().partition(" ")
        out.append((instr.upper(), args.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a continued line"
    return out


def test_dockerfile_parser_on_a_known_text() -> None:
    got = parse_dockerfile("# c\nFROM a:b\nRUN x \\\n  && y\n\nCMD [\"p\", \"q\"]\n")
    assert got == [("FROM", "a:b"), ("RUN", "x  && y"), ("CMD", '["p", "q"]')]


def test_dockerfile_installs_the_package_and_runs_its_command() -> None:
    ins = parse_dockerfile((K8S / "Dockerfile").read_text())
    known = {"FROM", "ARG", "RUN", "WORKDIR", "COPY", "ENV", "USER", "ENTRYPOINT", "CMD"}
    assert {i for i, _ in ins} <= known
    assert ins[0][0] == "FROM" and "python:3.1" in ins[0][1]
    assert any(i == "COPY" and a.split()[0] == "abz_dask" for i, a in ins)
    assert any(i == "RUN" and 'pip install --no-cache-dir ".[k8s]"' in a for i, a in ins)
    env = " ".join(a for i, a in ins if i == "ENV")
    for var in ("OMP_NUM_THREADS=1", "MKL_NUM_THREADS=1", "NUMBA_NUM_THREADS=1"):
        assert var in env
    cmd = json.loads(next(a for i, a in ins if i == "CMD"))
    assert cmd == [_script_name(), "run", "/config/run.yaml"]


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d is not None]


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(spec["spec"]["containers"])


def _check_resources(c: dict[str, Any]) -> None:
    req = c["resources"]["requests"]
    assert {"cpu", "memory"} <= set(req), c["name"]


def test_daskjob_runs_the_pipeline_on_the_configmap() -> None:
    (job,) = _docs("daskjob.yaml")
    assert job["apiVersion"] == "kubernetes.dask.org/v1" and job["kind"] == "DaskJob"
    (runner,) = _containers(job["spec"]["job"])
    assert runner["args"][:3] == [_script_name(), "run", "/config/run.yaml"]
    mounts = {m["mountPath"]: m["name"] for m in runner["volumeMounts"]}
    vols = {v["name"]: v for v in job["spec"]["job"]["spec"]["volumes"]}
    (cm,) = _docs("configmap.yaml")
    assert cm["kind"] == "ConfigMap"
    assert vols[mounts["/config"]]["configMap"]["name"] == cm["metadata"]["name"]
    cfg = parse_config(yaml.safe_load(cm["data"]["run.yaml"]), source="configmap run.yaml")
    assert cfg.cluster.kind == "address"
    # the run folder lives on the volume every pod mounts
    cl = job["spec"]["cluster"]["spec"]
    (worker,) = _containers(cl["worker"])
    (sched,) = _containers(cl["scheduler"])
    assert str(cfg.output).startswith("/data/")
    assert "/data" in {m["mountPath"] for m in worker["volumeMounts"]} and "/data" in mounts
    for c in (runner, worker, sched):
        _check_resources(c)
    assert "--lifetime" in worker["args"]
    images = {runner["image"], worker["image"], sched["image"]}
    assert len(images) == 1, "runner, scheduler and workers must share one image"
    (pvc,) = _docs("pvc.yaml")
    assert vols[mounts["/data"]]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_daskcluster_for_interactive_use() -> None:
    docs = _docs("daskcluster.yaml")
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"DaskCluster", "DaskAutoscaler"}
    dc = kinds["DaskCluster"]
    assert kinds["DaskAutoscaler"]["spec"]["cluster"] == dc["metadata"]["name"]
    for part in ("worker", "scheduler"):
        for c in _containers(dc["spec"][part]):
            _check_resources(c)
            assert c["args"][0] == "dask"
    svc = dc["spec"]["scheduler"]["service"]
    assert {p["port"] for p in svc["ports"]} == {8786, 8787}
    assert svc["selector"]["dask.org/cluster-name"] == dc["metadata"]["name"]


def test_jupyterhub_values_and_notebook() -> None:
    hub = yaml.safe_load((DEPLOY / "jupyterhub" / "daskhub-values.yaml").read_text())
    assert hub["dask-gateway"]["gateway"]["auth"]["type"] == "jupyterhub"
    code = hub["dask-gateway"]["gateway"]["extraConfig"]["abz-options"]
    ast.parse(code)
    gw = yaml.safe_load((DEPLOY / "jupyterhub" / "dask-gateway-values.yaml").read_text())
    assert gw["gateway"]["backend"]["worker"]["cores"]["request"] >= 1
    nb = json.loads((DEPLOY / "jupyterhub" / "abz-dask-gateway.ipynb").read_text())
    src = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    for s in src:
        ast.parse(s)
    joined = "\n".join(src)
    assert "cluster.adapt(minimum=" in joined and "run_pipeline(" in joined
    assert "Gateway()" in joined and "new_cluster(" in joined


def test_example_configs_validate() -> None:
    files = sorted((DEPLOY / "configs").glob("*.yaml"))
    assert len(files) >= 3
    kinds = {load_config(f).cluster.kind for f in files}
    assert {"local", "slurm"} <= kinds


@pytest.mark.parametrize("kind", ["slurm", "pbs"])
def test_jobqueue_yaml_builds_job_scripts(kind: str, tmp_path: Path) -> None:
    import dask
    import dask_jobqueue

    doc = yaml.safe_load((DEPLOY / "hpc" / "jobqueue.yaml").read_text())
    sec = doc["jobqueue"][kind]
    defaults = yaml.safe_load(
        (Path(dask_jobqueue.__file__).parent / "jobqueue.yaml").read_text())["jobqueue"][kind]
    deprecated = {"extra", "env-extra", "job-extra", "header-skip"}
    assert set(sec) <= set(defaults) - deprecated, set(sec) - set(defaults)
    cls = dask_jobqueue.SLURMCluster if kind == "slurm" else dask_jobqueue.PBSCluster
    conf = {**sec, "log-directory": str(tmp_path), "scheduler-options": {"host": "127.0.0.1",
                                                  "dashboard_address": "127.0.0.1:0"}}
    with dask.config.set({f"jobqueue.{kind}.{k}": v for k, v in conf.items()}), \
            cls() as cluster:
        script = cluster.job_script()
    assert "--lifetime 110m" in script and "--lifetime-stagger 5m" in script
    assert "export NUMBA_NUM_THREADS=1" in script
    assert "export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1" in script
    assert ("#SBATCH" if kind == "slurm" else "#PBS") in script


@pytest.mark.parametrize(("name", "kind"), [("run-slurm.sbatch", "slurm"),
                                            ("run-pbs.sh", "pbs")])
def test_batch_scripts(name: str, kind: str) -> None:
    path = DEPLOY / "hpc" / name
    text = path.read_text()
    if shutil.which("bash"):
        subprocess.run(["bash", "-n", str(path)], check=True)
    assert f'/.venv/bin/{_script_name()}" run "$CONFIG" --cluster {kind}' in text
    assert "DASK_CONFIG" in text and "NUMBA_NUM_THREADS=1" in text
    assert ("#SBATCH --time=" if kind == "slurm" else "#PBS -l walltime=") in text
