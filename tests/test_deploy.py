"""deploy/: Kubernetes manifests, Dockerfile, jobqueue.yaml, batch scripts, hub files, configs.

The Kubernetes and JupyterHub recipes default to run folders in object storage: no volume is
shared, every container that runs abz_dask code (the DaskJob runner, schedulers, workers,
notebook pods) gets the store's credentials from the Secret of ``secret-s3.example.yaml`` as
environment variables, and no file holds a credential. The PVC variants must stay the default
recipes plus the shared volume, nothing else.
"""

from __future__ import annotations

import ast
import copy
import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from abz_dask.io.location import is_url
from abz_dask.pipeline.config import load_config, parse_config

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
HUB = DEPLOY / "jupyterhub"
CONFIGS = DEPLOY / "configs"
SECRET_FILE = K8S / "secret-s3.example.yaml"
# Environment variables that carry credentials (fsspec / botocore / gcsfs / adlfs names)
CREDENTIAL_VARS = frozenset({
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CLIENT_SECRET"})


def _script_name() -> str:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    (name,) = [k for k, v in scripts.items() if v == "abz_dask.cli:main"]
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
    assert any(i == "RUN" and 'pip install --no-cache-dir ".[k8s,cloud]"' in a for i, a in ins)
    # the package plus its cloud extra bring the object-store stack the recipes rely on
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower().replace("-", "_")
             for r in [*project["dependencies"], *project["optional-dependencies"]["cloud"]]}
    assert {"s3fs", "icechunk", "universal_pathlib"} <= names, names
    assert ("ARG", 'EXTRA_PIP=""') in ins  # gcsfs / adlfs for gs:// and az://
    env = " ".join(a for i, a in ins if i == "ENV")
    for var in ("OMP_NUM_THREADS=1", "MKL_NUM_THREADS=1", "NUMBA_NUM_THREADS=1"):
        assert var in env
    cmd = json.loads(next(a for i, a in ins if i == "CMD"))
    assert cmd == [_script_name(), "run", "/config/run.yaml"]


def _docs(name: str, folder: Path = K8S) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((folder / name).read_text()) if d is not None]


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(spec["spec"]["containers"])


def _check_resources(c: dict[str, Any]) -> None:
    req = c["resources"]["requests"]
    assert {"cpu", "memory"} <= set(req), c["name"]


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(path, key, value) of every mapping entry and list item of a parsed YAML document."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{path}.{k}", k, v
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield f"{path}[{i}]", i, v
            yield from _walk(v, f"{path}[{i}]")


def _secret() -> tuple[str, dict[str, str]]:
    (sec,) = _docs(SECRET_FILE.name)
    return sec["metadata"]["name"], sec["stringData"]


def _secret_vars(container: dict[str, Any], secret: str, keys: set[str]) -> set[str]:
    """Environment variables a container (or an extraContainerConfig) gets from ``secret``."""
    got: set[str] = set()
    for src in container.get("envFrom", []):
        if src.get("secretRef", {}).get("name") == secret:
            got |= {src.get("prefix", "") + k for k in keys}
    for e in container.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef", {})
        if ref.get("name") == secret and ref.get("key") in keys:
            got.add(e["name"])
    return got


def _job_containers(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cl = job["spec"]["cluster"]["spec"]
    (runner,) = _containers(job["spec"]["job"])
    (worker,) = _containers(cl["worker"])
    (sched,) = _containers(cl["scheduler"])
    return {"runner": runner, "worker": worker, "scheduler": sched}


def _run_config(cm: dict[str, Any]) -> Any:
    assert cm["kind"] == "ConfigMap"
    return parse_config(yaml.safe_load(cm["data"]["run.yaml"]),
                        source=f"configmap {cm['metadata']['name']} run.yaml")


def test_every_manifest_parses() -> None:
    files = sorted([*K8S.glob("*.yaml"), *HUB.glob("*.yaml")])
    assert {f.name for f in files} >= {
        "daskjob.yaml", "daskjob-pvc.yaml", "daskcluster.yaml", "daskcluster-pvc.yaml",
        "configmap.yaml", "configmap-pvc.yaml", "pvc.yaml", "secret-s3.example.yaml",
        "dask-gateway-values.yaml", "daskhub-values.yaml"}
    for f in files:
        docs = _docs(f.name, f.parent)
        assert docs, f
        for d in docs:
            assert isinstance(d, dict), f
            if f.parent == K8S:
                assert {"apiVersion", "kind", "metadata"} <= set(d), f
                assert d["metadata"]["name"], f


def test_daskjob_runs_the_pipeline_on_object_storage() -> None:
    (job,) = _docs("daskjob.yaml")
    assert job["apiVersion"] == "kubernetes.dask.org/v1" and job["kind"] == "DaskJob"
    cs = _job_containers(job)
    runner = cs["runner"]
    assert runner["args"][:3] == [_script_name(), "run", "/config/run.yaml"]
    mounts = {m["mountPath"]: m["name"] for m in runner["volumeMounts"]}
    vols = {v["name"]: v for v in job["spec"]["job"]["spec"]["volumes"]}
    (cm,) = _docs("configmap.yaml")
    assert vols[mounts["/config"]]["configMap"]["name"] == cm["metadata"]["name"]
    cfg = _run_config(cm)
    # the run folder is a URL and no pod mounts anything but the config map
    assert is_url(cfg.output) and str(cfg.output).startswith("s3://"), cfg.output
    assert cfg.store_format == "icechunk"
    assert set(mounts) == {"/config"} and set(vols) == {mounts["/config"]}
    assert not [p for p, k, _ in _walk(job) if k in ("persistentVolumeClaim", "hostPath", "nfs")]
    assert "/data" not in json.dumps(job)
    # the runner reaches the DaskJob's own scheduler service
    assert cfg.cluster.kind == "address"
    svc = job["spec"]["cluster"]["spec"]["scheduler"]["service"]
    port = next(p["port"] for p in svc["ports"] if p["name"] == "tcp-comm")
    assert cfg.cluster.address == f"tcp://{job['metadata']['name']}-scheduler:{port}"
    assert svc["selector"]["dask.org/cluster-name"] == job["metadata"]["name"]
    for c in cs.values():
        _check_resources(c)
    assert "--lifetime" in cs["worker"]["args"]
    images = {c["image"] for c in cs.values()}
    assert len(images) == 1, "runner, scheduler and workers must share one image"


def test_configmap_is_twin_small_s3_on_the_jobs_scheduler() -> None:
    cm_cfg = _run_config(_docs("configmap.yaml")[0])
    s3 = load_config(CONFIGS / "twin-small-s3.yaml")
    assert s3.store == "icechunk" and str(s3.output) == "s3://abz-dask-runs/twin-small"
    assert cm_cfg.model_copy(update={"cluster": s3.cluster}) == s3
    # twin-small-s3.yaml is twin-small.yaml with its run folder in a bucket
    small = load_config(CONFIGS / "twin-small.yaml")
    assert s3.model_copy(update={"output": small.output, "store": None}) == small


def test_every_abz_container_gets_the_secret() -> None:
    name, data = _secret()
    keys = set(data)
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"} <= keys
    (job,) = _docs("daskjob.yaml")
    targets = {f"daskjob {k}": c for k, c in _job_containers(job).items()}
    dc = next(d for d in _docs("daskcluster.yaml") if d["kind"] == "DaskCluster")
    for part in ("worker", "scheduler"):
        for c in _containers(dc["spec"][part]):
            targets[f"daskcluster {part}"] = c
    gw = yaml.safe_load((HUB / "dask-gateway-values.yaml").read_text())
    hub = yaml.safe_load((HUB / "daskhub-values.yaml").read_text())
    for label, backend in (("dask-gateway", gw["gateway"]["backend"]),
                           ("daskhub", hub["dask-gateway"]["gateway"]["backend"])):
        for part in ("worker", "scheduler"):
            targets[f"{label} {part}"] = backend[part]["extraContainerConfig"]
    # z2jh's singleuser.extraEnv: NAME: value or NAME: {valueFrom: ...} (an EnvVar sans name)
    extra = hub["jupyterhub"]["singleuser"]["extraEnv"]
    targets["daskhub notebook pod"] = {"env": [
        {"name": k, **v} if isinstance(v, dict) else {"name": k, "value": v}
        for k, v in extra.items()]}
    assert len(targets) == 10
    for label, c in targets.items():
        assert _secret_vars(c, name, keys) == keys, label


def _pvc_stripped(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` without the PVC, its mounts and the PVC config map's name."""
    d = copy.deepcopy(doc)
    for _, _, v in list(_walk(d)):
        if not isinstance(v, dict):
            continue
        for key in ("volumes", "volumeMounts"):
            if key in v:
                v[key] = [x for x in v[key] if x.get("name") != "data"]
                if not v[key]:
                    del v[key]
        if v.get("configMap", {}).get("name", "").endswith("-pvc"):
            v["configMap"] = {"name": v["configMap"]["name"].removesuffix("-pvc")}
    return d


def _without_secret(doc: dict[str, Any], secret: str) -> dict[str, Any]:
    d = copy.deepcopy(doc)
    for _, _, v in list(_walk(d)):
        if isinstance(v, dict) and "envFrom" in v:
            v["envFrom"] = [x for x in v["envFrom"]
                            if x.get("secretRef", {}).get("name") != secret]
            if not v["envFrom"]:
                del v["envFrom"]
    return d


def _comment_free(d: dict[str, Any]) -> str:
    return json.dumps(d, sort_keys=True)


@pytest.mark.parametrize("name", ["daskjob", "daskcluster"])
def test_pvc_variant_is_the_default_plus_a_shared_volume(name: str) -> None:
    secret, _ = _secret()
    default = _docs(f"{name}.yaml")
    pvc_docs = _docs(f"{name}-pvc.yaml")
    assert len(default) == len(pvc_docs)
    for d, p in zip(default, pvc_docs, strict=True):
        assert "abz-dask-s3" not in _comment_free(p)
        assert _comment_free(_pvc_stripped(p)) == _comment_free(_without_secret(d, secret))
    (claim,) = _docs("pvc.yaml")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    claims = {v["persistentVolumeClaim"]["claimName"] for _, k, v in _walk(pvc_docs)
              if k == "volumes" for v in v if "persistentVolumeClaim" in v}
    assert claims == {claim["metadata"]["name"]}
    mounts = [m for _, k, ms in _walk(pvc_docs) if k == "volumeMounts" for m in ms
              if m["name"] == "data"]
    assert mounts and {m["mountPath"] for m in mounts} == {"/data"}


def test_pvc_configmap_writes_under_the_shared_volume() -> None:
    (job,) = _docs("daskjob-pvc.yaml")
    runner = _job_containers(job)["runner"]
    vols = {v["name"]: v for v in job["spec"]["job"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in runner["volumeMounts"]}
    (cm,) = _docs("configmap-pvc.yaml")
    assert vols[mounts["/config"]]["configMap"]["name"] == cm["metadata"]["name"]
    assert "persistentVolumeClaim" in vols[mounts["/data"]]
    cfg = _run_config(cm)
    assert not is_url(cfg.output) and str(cfg.output).startswith("/data/")
    assert cfg.store_format == "zarr" and cfg.cluster.kind == "address"


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
    assert not [p for p, k, _ in _walk(dc) if k in ("volumes", "volumeMounts")]


def test_example_secret_holds_placeholders_only() -> None:
    (sec,) = _docs(SECRET_FILE.name)
    assert sec["kind"] == "Secret" and sec["type"] == "Opaque"
    assert "data" not in sec, "base64 data would hide what the file holds"
    for k, v in sec["stringData"].items():
        assert "REPLACE" in v, (k, v)


_AWS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b")
_SECRET_LIKE = re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])")
_SECRET_NAME = re.compile(r"secret|password|passwd|token|access_?key|credential|sas", re.I)


def _deploy_texts() -> dict[str, str]:
    out = {str(f.relative_to(REPO)): f.read_text()
           for f in [*K8S.iterdir(), *HUB.glob("*.yaml"), *CONFIGS.glob("*.yaml")]}
    nb = json.loads((HUB / "abz-dask-gateway.ipynb").read_text())
    out["abz-dask-gateway.ipynb"] = "\n".join("".join(c["source"]) for c in nb["cells"])
    return out


def test_no_credentials_in_deploy_files() -> None:
    texts = _deploy_texts()
    for name, text in texts.items():
        assert not _AWS_KEY_ID.search(text), name
        assert not _SECRET_LIKE.search(text), (name, _SECRET_LIKE.findall(text))
        # no URL with user:password@ (the run config refuses them too)
        assert not re.search(r"[a-z0-9]+://[^/\s@]+:[^/\s@]+@", text), name
    for f in [*K8S.glob("*.yaml"), *HUB.glob("*.yaml")]:
        for path, key, value in _walk(_docs(f.name, f.parent)):
            where = f"{f.name}{path}"
            # a credential variable never gets a literal value: only secretKeyRef / envFrom
            if key in CREDENTIAL_VARS and f != SECRET_FILE:
                assert isinstance(value, dict) and "valueFrom" in value, where
            if isinstance(value, dict) and value.get("name") in CREDENTIAL_VARS:
                assert "value" not in value and "valueFrom" in value, where
            # secret-looking keys hold null, a reference, or (example only) a placeholder
            if isinstance(key, str) and _SECRET_NAME.search(key) and isinstance(value, str):
                assert f == SECRET_FILE and "REPLACE" in value, where
    # gateway option code and the notebook never set credential variables themselves
    for name, text in texts.items():
        if name == str(SECRET_FILE.relative_to(REPO)):
            continue  # placeholders, checked above
        for var in CREDENTIAL_VARS:
            assert not re.search(rf"{var}\s*[=:]\s*['\"][^'\"]", text), (name, var)


# dask-gateway chart values under gateway.backend (resources/helm/dask-gateway/values.yaml)
_GATEWAY_BACKEND = {"image", "imagePullSecrets", "namespace", "environment", "scheduler",
                    "worker"}
_GATEWAY_PART = {"extraPodConfig", "extraContainerConfig", "cores", "memory", "threads"}


def _kube_cluster_traits() -> set[str]:
    """Trait names of dask-gateway-server's ``KubeClusterConfig`` (read from its source: the
    kubernetes backend needs kubernetes_asyncio to import)."""
    import dask_gateway_server
    from dask_gateway_server.backends.base import ClusterConfig

    src = (Path(dask_gateway_server.__file__).parent / "backends" / "kubernetes"
           / "backend.py").read_text()
    (cls,) = [n for n in ast.parse(src).body
              if isinstance(n, ast.ClassDef) and n.name == "KubeClusterConfig"]
    own = {t.id for n in cls.body if isinstance(n, ast.Assign) for t in n.targets
           if isinstance(t, ast.Name)}
    return own | set(ClusterConfig.class_trait_names())


class _Config:
    """Stand-in for traitlets' ``c``: records ``c.Class.trait = value``."""

    def __init__(self) -> None:
        self.set: dict[tuple[str, str], Any] = {}

    def __getattr__(self, cls: str) -> Any:
        cfg = self

        class _Section:
            def __setattr__(self, trait: str, value: Any) -> None:
                cfg.set[(cls, trait)] = value

        return _Section()


def test_gateway_values_pass_the_secret_not_a_volume() -> None:
    pytest.importorskip("dask_gateway_server")
    from dask_gateway_server.backends.base import Backend, ClusterConfig

    hub = yaml.safe_load((HUB / "daskhub-values.yaml").read_text())
    gw = yaml.safe_load((HUB / "dask-gateway-values.yaml").read_text())
    for values in (hub["dask-gateway"], gw):
        backend = values["gateway"]["backend"]
        assert set(backend) <= _GATEWAY_BACKEND, set(backend) - _GATEWAY_BACKEND
        for part in ("scheduler", "worker"):
            assert set(backend[part]) <= _GATEWAY_PART, part
            assert "volumeMounts" not in backend[part]["extraContainerConfig"]
        assert "extraPodConfig" not in backend["worker"]
    singleuser = hub["jupyterhub"]["singleuser"]
    assert "extraVolumes" not in singleuser.get("storage", {})
    assert singleuser["extraEnv"]["ABZ_DASK_OUTPUT"].startswith("s3://")
    # the admin's extraConfig only sets existing traits, and the options handler returns
    # cluster settings that do not replace extraContainerConfig (which carries the Secret)
    traits = {"KubeClusterConfig": _kube_cluster_traits(),
              "ClusterConfig": set(ClusterConfig.class_trait_names()),
              "Backend": set(Backend.class_trait_names())}
    c = _Config()
    for code in hub["dask-gateway"]["gateway"]["extraConfig"].values():
        exec(compile(code, "extraConfig", "exec"), {"c": c})  # our own file
    for cls, trait in c.set:
        assert trait in traits[cls], (cls, trait)
    options = c.set[("Backend", "cluster_options")]
    conf = options.get_configuration({}, user=None)
    assert set(conf) <= traits["KubeClusterConfig"], set(conf) - traits["KubeClusterConfig"]
    assert not {k for k in conf if k.endswith("extra_container_config")}
    assert not CREDENTIAL_VARS & set(conf["environment"])


def _notebook_cells() -> list[str]:
    nb = json.loads((HUB / "abz-dask-gateway.ipynb").read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def test_jupyterhub_values_and_notebook() -> None:
    hub = yaml.safe_load((HUB / "daskhub-values.yaml").read_text())
    assert hub["dask-gateway"]["gateway"]["auth"]["type"] == "jupyterhub"
    code = hub["dask-gateway"]["gateway"]["extraConfig"]["abz-options"]
    ast.parse(code)
    gw = yaml.safe_load((HUB / "dask-gateway-values.yaml").read_text())
    assert gw["gateway"]["backend"]["worker"]["cores"]["request"] >= 1
    src = _notebook_cells()
    for s in src:
        ast.parse(s)
    joined = "\n".join(src)
    assert "cluster.adapt(minimum=" in joined and "run_pipeline(" in joined
    assert "Gateway()" in joined and "new_cluster(" in joined
    assert "/data" not in joined  # no shared disk assumed
    assert 'url(result.out / "budgets.csv")' in joined  # pandas gets a string it can open


@pytest.mark.parametrize("output", ["s3://abz-dask-runs/someone/twin-demo", None])
def test_notebook_run_config(output: str | None, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The notebook's configuration cell: twin-demo.yaml with $ABZ_DASK_OUTPUT as run folder
    (a versioned store in the bucket), else a local folder in the home directory."""
    (cell,) = [s for s in _notebook_cells() if "parse_config(" in s]
    monkeypatch.chdir(HUB)  # Jupyter starts a notebook in its folder
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("ABZ_DASK_CONFIG", raising=False)
    if output is None:
        monkeypatch.delenv("ABZ_DASK_OUTPUT", raising=False)
    else:
        monkeypatch.setenv("ABZ_DASK_OUTPUT", output)
    ns: dict[str, Any] = {}
    exec(compile(cell, "abz-dask-gateway.ipynb", "exec"), ns)  # our own file
    cfg = ns["cfg"]
    demo = load_config(CONFIGS / "twin-demo.yaml")
    assert cfg.model_copy(update={"output": demo.output}) == demo
    if output is None:
        assert cfg.output == tmp_path / "abz-runs" / "twin-demo" and cfg.store_format == "zarr"
    else:
        assert is_url(cfg.output) and str(cfg.output) == output
        assert cfg.store_format == "icechunk"


def test_example_configs_validate() -> None:
    files = sorted((DEPLOY / "configs").glob("*.yaml"))
    assert len(files) >= 3
    cfgs = {f.name: load_config(f) for f in files}
    assert {"local", "slurm"} <= {c.cluster.kind for c in cfgs.values()}
    assert is_url(cfgs["twin-small-s3.yaml"].output)


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
