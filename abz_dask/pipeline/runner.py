"""The stage runner of ``abz-dask run``: the pipeline as stages, each skipped when current.

A :class:`Stage` names its outputs, its settings (a JSON-able slice of the
:class:`~abz_dask.pipeline.config.RunConfig`) and its inputs (earlier stages or external files).
After a
stage finishes, the runner writes ``<run>/<stage>.stage.json`` holding a hash of the settings, the
inputs' identities and the package version. On the next run a stage is **skipped** when its
record's hash equals the current one and all its outputs exist; when the hash differs its
outputs are removed and it runs again (so every later stage, whose input identity is this
stage's hash, runs again too); when there is no record it runs and resumes whatever partial
output it finds (the twin and the upscaler resume tile by tile).

The identity of an earlier stage is its hash; of an external file its content hash (size and
modification time above 256 MB; size and ETag of an object); of a Zarr store the content of its
metadata documents (shapes, chunks, attributes — the provenance the stores carry); of an
Icechunk repository the snapshot of its ``main``. The train stage's input is the training
table's content, not the extract stage: a cube that gains months while the training rows stay
the same keeps the models, and the upscale stage then extends the flux store (only the new
months are computed).

Stages: ``twin`` (twin input), ``build-cube`` (build input), ``extract``, ``train``,
``upscale``, ``budgets``, ``trends``, ``compare`` and ``report`` (``trends.enabled``,
``compare.enabled``, ``report.enabled``). More stages are appended with :func:`register_stage`
(one entry each). Every path a stage reads or writes comes from the run's
:class:`~abz_dask.pipeline.layout.RunLayout`. The per-stage commands (``abz-dask train``,
``upscale``, ``trends``, ``compare``, ``table1``, ``report``, ``demo``) build a run
configuration and call :func:`run_pipeline` with the stages they name (``only=``). The runner
never creates a cluster: stages run on the active scheduler (:mod:`abz_dask.pipeline.clusters`
creates one for the CLI). A ``build-cube`` stage's identity is its YAML's content, not the
rasters it names.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from abz_dask import __version__
from abz_dask.geo.grid import Grid
from abz_dask.io.integrity import check_digest, digest_outputs, relative, summarize
from abz_dask.io.location import (
    as_path,
    filesystem,
    is_url,
    publish,
    remove,
    staging,
    url,
    write_atomic,
)
from abz_dask.io.locks import hold
from abz_dask.io.ownership import claim_folder
from abz_dask.pipeline.config import BuildInput, FilesInput, RunConfig, TwinInput
from abz_dask.pipeline.layout import RunLayout
from abz_dask.twin.generate import FIRE_START

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["STAGES", "RunContext", "RunResult", "Stage", "StageResult", "check_force", "identity",
           "preflight", "register_stage", "run_pipeline"]

_BIG = 256 * 2**20
_ZARR_META = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})


@dataclass
class RunContext:
    """What stages see: the configuration, the run's layout (every path of the run,
    :class:`~abz_dask.pipeline.layout.RunLayout`; default: the configuration's) and the hashes
    of finished stages."""

    config: RunConfig
    layout: RunLayout = field(default=None)  # type: ignore[assignment]
    hashes: dict[str, str] = field(default_factory=dict)
    echo: Callable[[str], None] = field(default=lambda _msg: None)
    forced: bool = False  # the stage being cleaned was forced (``--force``)
    extend: bool = False  # the upscale may extend the flux store (set when it is cleaned)

    def __post_init__(self) -> None:
        if self.layout is None:
            self.layout = RunLayout.from_config(self.config)

    @property
    def reader(self) -> FilesInput | BuildInput | None:
        """The input section of a real-input run (ABCflux reader options), else ``None``."""
        inp = self.config.input
        return inp if isinstance(inp, FilesInput | BuildInput) else None


def _source(ctx: RunContext, *, sites: bool = True) -> list[str | Path]:
    """Input identities of the data: the twin stage; the build-cube stage (+ given zones); or
    the cube, zones (and fire) files — plus the ABCflux CSV when ``sites``."""
    lay, inp = ctx.layout, ctx.config.input
    if isinstance(inp, TwinInput):
        return ["twin"]
    csv: list[str | Path] = [lay.abcflux] if sites else []
    if isinstance(inp, BuildInput):
        return ["build-cube", *([inp.zones] if inp.zones else []), *csv]
    return [lay.cube, lay.zones, *csv, *([lay.fire] if lay.fire is not None else [])]


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline.

    Parameters
    ----------
    name : str
        Stage name (also the record file ``<run>/<name>.stage.json``).
    run : callable
        ``run(ctx) -> dict`` does the work on the active scheduler; the returned summary is
        stored in the record.
    outputs : callable
        ``outputs(ctx) -> paths`` that must exist for the stage to count as complete.
    settings : callable
        ``settings(ctx) -> JSON-able`` slice of the config that determines the outputs.
    inputs : callable
        ``inputs(ctx) -> [stage name | Path]``: earlier stages and external files read.
    clean : callable, optional
        ``clean(ctx) -> paths`` removed before a stale stage reruns (default: ``outputs``);
        only paths inside the run folder are ever removed.
    applies : callable, optional
        ``applies(config) -> bool``; stages that do not apply are left out.
    """

    name: str
    run: Callable[[RunContext], dict[str, Any]]
    outputs: Callable[[RunContext], Sequence[Path]]
    settings: Callable[[RunContext], Any]
    inputs: Callable[[RunContext], Sequence[str | Path]]
    clean: Callable[[RunContext], Sequence[Path]] | None = None
    applies: Callable[[RunConfig], bool] = lambda config: True


@dataclass(frozen=True)
class StageResult:
    """What happened to one stage: ``status`` is ``"ran"`` or ``"skipped"``."""

    name: str
    status: str
    seconds: float
    key: str
    info: dict[str, Any]


@dataclass
class RunResult:
    """Results of every stage of a run, in order."""

    out: Path
    stages: list[StageResult]

    def status(self) -> dict[str, str]:
        """Stage name → ``ran`` / ``skipped``."""
        return {s.name: s.status for s in self.stages}


def identity(path: Path) -> str:
    """Identity of an external input: content hash of a file (size + mtime above 256 MB; size +
    ETag of an object), of the metadata documents of a Zarr store, or the snapshot of an
    Icechunk repository's ``main``.

    Raises
    ------
    FileNotFoundError
        The input does not exist.
    """
    from abz_dask.io.versioned import is_icechunk_repo, main_snapshot

    path = as_path(path)
    if not path.exists():
        raise FileNotFoundError(f"input {path} not found")
    if is_icechunk_repo(path):  # a versioned store is what its main branch holds
        return f"icechunk:{main_snapshot(path)}"
    if is_url(path):
        return _remote_identity(path)
    h = hashlib.sha256()
    if path.is_file():
        st = path.stat()
        if st.st_size > _BIG:
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        else:
            with path.open("rb") as f:
                for block in iter(lambda: f.read(2**20), b""):
                    h.update(block)
        return h.hexdigest()
    n = 0
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d != "c")  # zarr v3 chunk trees hold no metadata
        for name in sorted(files):
            if name in _ZARR_META:
                p = Path(root) / name
                h.update(str(p.relative_to(path)).encode())
                h.update(p.read_bytes())
                n += 1
    if n == 0:
        raise ValueError(f"input {path} is a folder but not a Zarr store (no zarr.json/.zarray)")
    return h.hexdigest()


def _remote_identity(path: Any) -> str:
    """:func:`identity` of an object: its size and ETag (no download); of a Zarr store on
    object storage: its metadata documents, listed level by level without the chunk trees."""
    fs, key = filesystem(path)
    h = hashlib.sha256()
    if fs.isfile(key):
        info = fs.info(key)
        h.update(f"{info['size']}:{info.get('ETag') or info.get('etag') or ''}".encode())
        return h.hexdigest()
    n = 0
    stack = [key]
    docs: list[str] = []
    while stack:
        d = stack.pop()
        for e in fs.ls(d, detail=True):
            name = e["name"].rstrip("/")
            base = name.rsplit("/", 1)[-1]
            if e["type"] == "directory" and base != "c":
                stack.append(name)
            elif e["type"] != "directory" and base in _ZARR_META:
                docs.append(name)
    for name in sorted(docs):
        h.update(name[len(key) + 1:].encode())
        h.update(fs.cat_file(name))
        n += 1
    if n == 0:
        raise ValueError(f"input {path} is a folder but not a Zarr store (no zarr.json/.zarray)")
    return h.hexdigest()


def _absolute(p: Any) -> Any:
    p = as_path(p)
    return p if is_url(p) else p.absolute()


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _record_path(ctx: RunContext, stage: Stage) -> Path:
    return ctx.layout.record(stage.name)


def _key(ctx: RunContext, stage: Stage) -> tuple[str, dict[str, Any]]:
    ids: dict[str, str] = {}
    for inp in stage.inputs(ctx):
        if isinstance(inp, str):
            if inp not in ctx.hashes:
                raise RuntimeError(f"stage {stage.name!r} needs stage {inp!r}, which has not "
                                   "run before it (and whose outputs are not in "
                                   f"{ctx.layout.root})")
            ids[f"stage:{inp}"] = ctx.hashes[inp]
        else:
            # a file of the run itself is named relative to the run folder, so that a copied
            # or moved run stays current
            ids[relative(_absolute(inp), _absolute(ctx.layout.root))] = identity(inp)
    doc = {"stage": stage.name, "settings": stage.settings(ctx), "inputs": ids,
           "abz_dask_version": __version__}
    return _digest(doc), doc


def _remove(ctx: RunContext, paths: Sequence[Path]) -> None:
    """Remove a stage's outputs: fixed names inside the run folder, which the runner claimed
    (created, or found empty or already a run folder), so they are the package's."""
    if is_url(ctx.layout.root):
        for p in paths:
            if not str(p).startswith(str(ctx.layout.root).rstrip("/") + "/"):
                raise RuntimeError(f"refusing to remove {p}: outside the run folder "
                                   f"{ctx.layout.root}")
            remove(p)
            remove(url(p) + ".done")
        return
    root = ctx.layout.root.resolve()
    for p in paths:
        p = Path(p).parent.resolve() / Path(p).name  # a link is removed, not its target
        if root not in p.parents:
            raise RuntimeError(f"refusing to remove {p}: outside the run folder {root}")
        for q in (p, p.with_name(p.name + ".done")):
            if q.is_dir() and not q.is_symlink():
                shutil.rmtree(q)
            elif q.exists() or q.is_symlink():
                q.unlink()


def check_force(force: Sequence[str], config: RunConfig,
                stages: Sequence[Stage] | None = None, *, option: str = "--force") -> None:
    """Raise ValueError naming the stages of ``force`` that are not in the run (``option``
    names them in the message)."""
    names = [s.name for s in (STAGES if stages is None else stages) if s.applies(config)]
    unknown = sorted(set(force) - set(names))
    if unknown:
        raise ValueError(f"{option} {', '.join(unknown)}: no such stage in this run; stages: "
                         f"{', '.join(names)}")


def _state(ctx: RunContext, stage: Stage, old: dict[str, Any] | None, key: str
           ) -> tuple[str, str]:
    """``(state, why)`` of a stage before it runs: ``current``, ``stale`` (settings or inputs
    changed), ``damaged`` (outputs differ from their recorded digest), ``missing`` outputs, or
    ``new`` (no record)."""
    if old is None:
        return "new", ""
    if old.get("key") != key:
        return "stale", "settings or inputs changed"
    outputs = stage.outputs(ctx)
    missing = [str(p) for p in outputs if not as_path(p).exists()]
    if missing:
        return "missing", f"output(s) missing: {', '.join(missing)}"
    recorded = old.get("outputs_digest")  # None in records written before digests existed
    problems = (check_digest(recorded, ctx.layout.root, outputs) if recorded is not None
                else [])
    if problems:
        return "damaged", "outputs damaged:" + summarize(problems)
    return "current", ""


def preflight(config: RunConfig) -> None:
    """Every check of a run that needs no cluster, before one is started (also ``run
    --check``): the nested build-cube configuration and its files (patterns, CRS, overlap,
    units; :func:`abz_dask.cube_build.make_plan`), the input files, the training profile, the
    comparison products, and the periods of the twin, the upscaling and the budgets against
    each other.

    Raises
    ------
    ConfigError
        One line per problem, each naming the key or file and the value.
    """
    from abz_dask.pipeline.config import ConfigError
    from abz_dask.training import resolve_profile

    problems: list[str] = []
    inp = config.input
    if isinstance(inp, BuildInput):
        from abz_dask.cube_build import load_config as load_build
        from abz_dask.cube_build import make_plan

        try:
            make_plan(*load_build(inp.cube_config))
        except (ValueError, OSError) as e:
            problems.append(f"input.cube_config: {e}")
    if isinstance(inp, FilesInput | BuildInput):
        named = {"input.abcflux": inp.abcflux, "input.zones": inp.zones,
                 **({"input.cube": inp.cube} if isinstance(inp, FilesInput) else {})}
        for key, path in named.items():
            if path is not None and not as_path(path).exists():
                problems.append(f"{key}: {path} does not exist")
        if inp.zones is not None and as_path(inp.zones).exists():
            from abz_dask.cube_build.user_zones import open_zone_store

            try:
                open_zone_store(inp.zones, "input.zones")
            except (ValueError, OSError) as e:
                problems.append(str(e))
        if as_path(inp.abcflux).is_dir():
            problems.append(f"input.abcflux: {inp.abcflux} is a folder; give the ABCflux CSV "
                            "file")
    try:
        resolve_profile(config.training.profile)
    except (ValueError, OSError) as e:
        problems.append(f"training.profile: {e}")
    b, u = config.budgets, config.upscale
    if isinstance(inp, TwinInput):
        y0, y1 = int(inp.start[:4]), int(inp.end[:4])
        if b.start_year > y1 or b.end_year < y0:
            problems.append(f"budgets: {b.start_year}..{b.end_year} lies outside the twin's "
                            f"period {inp.start}..{inp.end}")
    if isinstance(inp, TwinInput) and int(inp.end[:4]) < FIRE_START:
        problems.append(f"input.end {inp.end}: the twin's fire record starts in {FIRE_START}; "
                        f"end the twin in {FIRE_START} or later")
    if config.trends.enabled:
        problems += _trend_problems(config)
    c = config.compare
    if c.enabled and not c.products and not isinstance(inp, TwinInput):
        problems.append("compare.products: a run on real inputs needs the products to compare "
                        "with (name, path[, variable]); only a twin run has default products")
    if c.enabled:
        problems += [f"compare.products: {e.name}: file {e.path} does not exist"
                     for e in c.products if not as_path(e.path).exists()]
    if u.start and u.end and u.start > u.end:
        problems.append(f"upscale.start {u.start} is after upscale.end {u.end}")
    if problems:
        raise ConfigError("the run cannot start:\n  " + "\n  ".join(problems))


def _trend_problems(config: RunConfig) -> list[str]:
    """Trend predictors that are not time series of the cube (catalogue names for a twin or a
    built cube, the cube's own variables for a files input), and unknown seasons."""
    import xarray as xr

    from abz_dask.analyses import TrendConfig
    from abz_dask.io.predictors import PREDICTORS

    t, b = config.trends, config.budgets
    try:
        TrendConfig(start=b.start_year, end=b.end_year, method=t.method, alpha=t.alpha,
                    predictors=t.predictors)
    except (ValueError, KeyError) as e:
        return [f"trends: {e}"]
    inp = config.input
    if isinstance(inp, FilesInput) and as_path(inp.cube).exists():
        cube = xr.open_zarr(url(inp.cube), consolidated=False)
        series = {str(n) for n, v in cube.data_vars.items() if "time" in v.dims}
    else:
        series = {p.name for p in PREDICTORS if p.kind in ("monthly", "annual")}
    return [f"trends.predictors: {name!r} is not a time series of the cube; choose from "
            f"{sorted(series)}" for name in (item.partition(":")[0] for item in t.predictors)
            if name not in series]


def run_pipeline(config: RunConfig, *, stages: Sequence[Stage] | None = None,
                 echo: Callable[[str], None] | None = None, force: Sequence[str] = (),
                 only: Sequence[str] | None = None, layout: RunLayout | None = None
                 ) -> RunResult:
    """Run every applicable stage in order on the active scheduler, skipping current ones.

    The run folder is created (or adopted if empty, already a run folder, or holding outputs
    of the package's commands — a twin, a model bundle, a flux store; a non-empty folder of
    other files is refused) and locked for the duration: a second run on the same folder is
    refused with :class:`~abz_dask.io.locks.LockedError`. The configuration is saved as
    ``RUN/run_config.json`` (:meth:`RunLayout.from_run` reads it). A stage is current when its
    record's key matches and its outputs match the digest recorded when they were written;
    damaged outputs (a missing chunk or variable, altered bytes) are reported and rebuilt.

    With ``only`` (the per-stage commands: ``abz-dask train`` runs ``extract`` and ``train``),
    the other stages are not run but taken as they are: an earlier stage's identity is its
    record's key, or, for outputs written without a record, the identity of its outputs.

    Parameters
    ----------
    config : RunConfig
        The validated run configuration (paths absolute, see
        :func:`abz_dask.pipeline.config.load_config`).
    stages : sequence of Stage, optional
        The pipeline (default :data:`STAGES`).
    echo : callable, optional
        Receives one line per stage (``twin: ran in 12.3 s``).
    force : sequence of str
        Stage names to rerun even when current (their partial outputs are cleared first).
    only : sequence of str, optional
        Run only these stages (each must be in the run).
    layout : RunLayout, optional
        Paths of the run (default :meth:`RunLayout.from_config`; a command's ``--cube`` or
        ``--out`` overrides paths of it).

    Returns
    -------
    RunResult

    Raises
    ------
    ValueError
        A stage of ``force`` or ``only`` is not in the run.
    """
    stages = list(stages if stages is not None else STAGES)
    check_force(force, config, stages)
    if only is not None:
        check_force(only, config, stages, option="stage")
    say = echo or (lambda _msg: None)
    ctx = RunContext(config, layout or RunLayout.from_config(config), echo=say)
    root = ctx.layout.root
    _adopt(ctx.layout)
    claim_folder(root)
    with hold(root, "run folder", inside=True):
        _save_config(ctx)
        return _run_locked(ctx, stages, say, force, only)


def _adopt(layout: RunLayout) -> None:
    """Mark as a run folder a folder that holds outputs of the package's commands (a twin, a
    model bundle or a flux store written by ``abz-dask twin``, ``train``, ``upscale`` before
    any stage record existed), so that :func:`~abz_dask.io.ownership.claim_folder` adopts it.
    """
    from abz_dask.io.ownership import RUN_MARK, is_abz_store

    root = layout.root
    if not root.is_dir() or (root / RUN_MARK).exists():
        return
    inside = str(root).rstrip("/") + "/"
    ours = [layout.twin_manifest.is_file(), layout.card.is_file(),
            str(layout.fluxes).startswith(inside) and is_abz_store(layout.fluxes)]
    if any(ours):
        (root / RUN_MARK).write_text(json.dumps({"adopted": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))


def _save_config(ctx: RunContext) -> None:
    write_atomic(ctx.layout.config_file,
                 json.dumps(ctx.config.model_dump(mode="json"), indent=2))


def _given(ctx: RunContext, stage: Stage) -> str:
    """Identity of a stage that is not run (``only``): its record's key, else the identity
    of those of its outputs that exist (written by other means), else ``"absent"`` (a stage
    that needs them fails naming the missing file)."""
    rec = _record_path(ctx, stage)
    if rec.exists():
        try:
            return str(json.loads(rec.read_text())["key"])
        except (ValueError, KeyError):
            pass
    found = [as_path(p) for p in stage.outputs(ctx) if as_path(p).exists()]
    if not found:
        return "absent"
    return _digest({"stage": stage.name, "given": [identity(p) for p in found]})


def _run_locked(ctx: RunContext, stages: Sequence[Stage], say: Callable[[str], None],
                force: Sequence[str], only: Sequence[str] | None = None) -> RunResult:
    results: list[StageResult] = []
    for stage in stages:
        if not stage.applies(ctx.config):
            continue
        if only is not None and stage.name not in only:
            ctx.hashes[stage.name] = _given(ctx, stage)
            continue
        key, doc = _key(ctx, stage)
        rec_path = _record_path(ctx, stage)
        old = json.loads(rec_path.read_text()) if rec_path.exists() else None
        state, why = _state(ctx, stage, old, key)
        if state == "current" and stage.name not in force:
            ctx.hashes[stage.name] = key
            results.append(StageResult(stage.name, "skipped", 0.0, key, old.get("info", {})
                                       if old else {}))
            say(f"{stage.name}: current, skipped")
            continue
        ctx.forced = stage.name in force
        if ctx.forced or state in ("stale", "damaged"):
            gone = [p for p in (stage.clean or stage.outputs)(ctx) if as_path(p).exists()]
            say(f"{stage.name}: {why or 'forced'}; removing "
                + (", ".join(as_path(p).name for p in gone) or "nothing"))
            _remove(ctx, gone)
        rec_path.unlink(missing_ok=True)
        t0 = time.perf_counter()
        info = stage.run(ctx) or {}
        dt = time.perf_counter() - t0
        outputs = stage.outputs(ctx)
        missing = [str(p) for p in outputs if not as_path(p).exists()]
        if missing:
            raise RuntimeError(f"stage {stage.name!r} finished without writing {missing}")
        record = {**doc, "key": key, "seconds": round(dt, 3), "info": info,
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "outputs": [relative(_absolute(p), _absolute(ctx.layout.root))
                              for p in outputs],
                  "outputs_digest": digest_outputs(outputs, ctx.layout.root)}
        write_atomic(rec_path, json.dumps(record, indent=2, default=str))
        ctx.hashes[stage.name] = key
        results.append(StageResult(stage.name, "ran", dt, key, info))
        for note in info.get("notes", ()):
            say(f"{stage.name}: {note}")
        for w in info.get("warnings", ()):
            say(f"{stage.name}: WARNING: {w}")
        resumed = {k: v for k, v in info.items() if k.startswith("resumed") and v}
        say(f"{stage.name}: ran in {dt:.1f} s"
            + "".join(f"; {k.replace('_', ' ')}: {v}" for k, v in resumed.items()))
    return RunResult(ctx.layout.root, results)


# --------------------------------------------------------------------------------------------
# the stages


def _twin(ctx: RunContext) -> dict[str, Any]:
    from abz_dask.twin import generate_twin

    t = ctx.config.input
    assert isinstance(t, TwinInput)
    generate_twin(ctx.layout.twin_dir, resolution=t.resolution, start=t.start, end=t.end,
                  seed=t.seed, n_sites=t.n_sites, family=t.family,
                  hidden_driver=t.hidden_driver, progress=ctx.config.progress)
    return {"resolution": t.resolution, "period": f"{t.start}..{t.end}", "family": t.family}


def _build_cube(ctx: RunContext) -> dict[str, Any]:
    import xarray as xr

    from abz_dask.cube_build import build_cube

    inp = ctx.config.input
    assert isinstance(inp, BuildInput)
    ctx.layout.inputs_dir.mkdir(parents=True, exist_ok=True)
    zones_out = ctx.layout.built_zones
    fire = ctx.layout.fire  # RUN/inputs/fire.zarr when the build-cube config has a fire section
    res = build_cube(inp.cube_config, ctx.layout.cube, zones_out=zones_out, fire_out=fire,
                     progress=ctx.config.progress)
    if inp.zones is None and not zones_out.exists():
        from abz_dask.geo.zones import build_zones

        grid = Grid.of_dataset(xr.open_zarr(url(ctx.layout.cube), consolidated=False))
        build_zones(grid).to_zarr(url(staging(zones_out)), mode="w", zarr_format=3,
                                  consolidated=False)
        publish(zones_out)
    info: dict[str, Any] = {"cube": str(ctx.layout.cube), "zones": str(ctx.layout.zones),
                            "tiles": res.n_tiles, "resumed_tiles": res.resumed_tiles}
    if res.fire is not None:
        info.update(fire=str(res.fire.store), fire_years=[res.fire.years[0], res.fire.years[-1]],
                    warnings=res.fire.warnings)
    return info


def _extract(ctx: RunContext) -> dict[str, Any]:
    import xarray as xr

    from abz_dask.io.abcflux import read_abcflux
    from abz_dask.training.extract import extract_training_table, write_training_table

    lay = ctx.layout
    cube = xr.open_zarr(url(lay.cube), consolidated=False)
    zones = xr.open_zarr(url(lay.zones), consolidated=False)
    grid = Grid.of_dataset(cube)
    f = ctx.reader
    years = (int(cube.time.dt.year.min()), int(cube.time.dt.year.max()))
    obs = read_abcflux(lay.abcflux, grid=grid, zones=zones, years=years,
                       methods=f.methods if f else None,
                       max_gap_fill=f.max_gap_fill if f else None,
                       exclude_disturbed=f.exclude_disturbed if f else False,
                       gpp_sign=f.gpp_sign if f else "auto")
    table, report = extract_training_table(obs, cube, grid)
    write_training_table(table, lay.training_table.parent)
    report.to_csv(url(lay.extract_report), index=False)
    sign = obs.attrs.get("abcflux", {}).get("gpp_sign") or {}
    return {"site_months": len(table), "sites": int(table["site_id"].nunique()),
            "gpp_sign": sign,
            "notes": [f"GPP sign: stored {sign['stored']} ({sign['basis']})"
                      + ("; flipped to positive" if sign["flipped"] else "")] if sign else []}


def _train(ctx: RunContext) -> dict[str, Any]:
    from abz_dask.training import resolve_profile, run_training

    tr = ctx.config.training
    fits = ctx.layout.cv_fits  # the fit ledger of run_training
    done = [p for p in fits.glob("*/*") if p.suffix in (".npz", ".json") and ".tmp" not in
            p.name and p.name != "key.json"] if fits.is_dir() else []
    bundle = run_training(ctx.layout.training_table, ctx.layout.root,
                          profile=resolve_profile(tr.profile),
                          fluxes=tr.fluxes, seed=tr.seed, progress=ctx.config.progress)
    return {"fluxes": list(bundle.card["fluxes"]), "resumed_fits": len(done)}


def _train_settings(ctx: RunContext) -> dict[str, Any]:
    from abz_dask.training import resolve_profile

    tr = ctx.config.training
    return {"profile": resolve_profile(tr.profile).model_dump(mode="json"),
            "fluxes": list(tr.fluxes), "seed": tr.seed}


def _upscale(ctx: RunContext) -> dict[str, Any]:
    import pandas as pd
    import xarray as xr

    from abz_dask.io.store import TileLedger
    from abz_dask.pipeline.demo import check_n_bootstrap
    from abz_dask.training import load_bundle
    from abz_dask.upscale import UpscaleConfig, compile_bundle, run_upscale

    u, lay = ctx.config.upscale, ctx.layout
    cube = xr.open_zarr(url(lay.cube), consolidated=False)
    bundle = load_bundle(lay.models, cube=cube)
    check_n_bootstrap(bundle, u.n_bootstrap, "upscale.n_bootstrap")
    models = compile_bundle(bundle, n_bootstrap=u.n_bootstrap)
    cfg = UpscaleConfig(start=u.start, end=u.end, tile=u.tile,
                        bootstrap_sample=u.bootstrap_sample,
                        store_replicates=u.store_replicates, seed=u.seed)
    store = ctx.config.store_format
    commit = None
    if store == "icechunk":  # one commit on main, recording what the stage record will
        from abz_dask.io.versioned import commit_metadata

        key, doc = _key(ctx, next(s for s in STAGES if s.name == "upscale"))
        commit = commit_metadata("upscale", key, doc["inputs"])
    resumed = TileLedger(lay.fluxes).count()
    tiles = run_upscale(lay.cube, lay.zones, lay.fluxes, models, cfg,
                        progress=ctx.config.progress, store=store, commit=commit,
                        extend=store != "icechunk" or ctx.extend)
    tiles.to_csv(url(lay.upscale_tiles), index=False)
    kept = int(tiles.attrs.get("extended_from", 0))
    done = (tiles["resumed"].fillna(False).astype(bool) if "resumed" in tiles
            else pd.Series(False, tiles.index))
    months = tiles["months"].fillna(0) if "months" in tiles else pd.Series(0, tiles.index)
    tile_months = int(months[~done].sum())
    now = int(months.max()) if len(months) else 0  # months of the period each tile computes
    note = (f"extended the flux store from {kept} to {kept + now} months: " if kept else "") + \
        f"computed {tile_months} tile-months ({len(tiles)} tiles)"
    return {"tiles": len(tiles), "resumed_tiles": tiles.attrs.get("resumed", resumed),
            "tile_months": tile_months, "extended_from": kept, "notes": [note],
            "cpu_s": float(tiles["cpu_s"].sum()),
            "forest_row_evals": int(tiles["forest_row_evals"].sum()),
            **({"snapshot": tiles.attrs["snapshot"]} if "snapshot" in tiles.attrs else {})}


def _upscale_clean(ctx: RunContext) -> list[Path]:
    """What a stale (or forced, or damaged) upscale stage removes before it reruns: the tile
    timings and the plain flux store, unless the run only adds whole years to it
    (:func:`_extends`: the upscaler then extends it, computing only the new months). An
    Icechunk store is never removed (its tags are releases): a rerun commits anew (an
    extension, or the whole store), after dropping uncommitted work."""
    lay = ctx.layout
    ctx.extend = _extends(ctx)  # read the record now: the runner removes it before the run
    if ctx.config.store_format == "icechunk":
        return [lay.fluxes.parent / (lay.fluxes.name + ".wip"), lay.upscale_tiles]
    return [lay.upscale_tiles] if ctx.extend else [lay.fluxes, lay.upscale_tiles]


def _extends(ctx: RunContext) -> bool:
    """Whether a stale upscale stage differs from its record only by whole years the cube
    added after the flux store's months: the same models (train identity), settings (but
    ``start``/``end``) and zones, and the store's months the first of the new period
    (:func:`abz_dask.upscale.tiles.extension_months`). The cube's earlier months must be
    unchanged: a files input's cube is taken at its word (rewriting earlier months of a cube
    in place needs ``--force upscale`` after removing the store); a built cube only when
    build-cube appended to it; a twin never (it is regenerated whole)."""
    from abz_dask.upscale.tiles import UpscaleConfig, extension_months

    stage = next(s for s in STAGES if s.name == "upscale")
    rec = _record_path(ctx, stage)
    inp, lay = ctx.config.input, ctx.layout
    if isinstance(inp, TwinInput) or ctx.forced or not rec.exists():
        return False
    if isinstance(inp, BuildInput):
        built = lay.record("build-cube")
        if not built.exists() or not json.loads(built.read_text()).get("info", {}).get(
                "extended_from"):
            return False
    old = json.loads(rec.read_text())
    key, doc = _key(ctx, stage)
    period = {"start", "end"}
    same = (old.get("key") != key
            and all(old.get("inputs", {}).get(k) == v for k, v in doc["inputs"].items()
                    if k != str(lay.cube) and k != "stage:build-cube"
                    and k != str(lay.fire))
            and {k: v for k, v in old.get("settings", {}).items() if k not in period}
            == {k: v for k, v in doc["settings"].items() if k not in period})
    u = ctx.config.upscale
    return same and extension_months(lay.cube, lay.fluxes, UpscaleConfig(start=u.start,
                                                                         end=u.end)) is not None


def _fire_budgets(lay: RunLayout) -> Any:
    """Annual fire-emission budgets of the run's fire store (twin or ``fire:`` section of
    build-cube), or None without one or without emissions."""
    import xarray as xr

    from abz_dask.aggregation.zonal import fire_budgets

    path = lay.existing(lay.fire)
    if path is None:
        return None
    fire = xr.open_zarr(url(path), consolidated=False)
    if "fire_emissions" not in fire:
        return None
    zones = xr.open_zarr(url(lay.zones), consolidated=False)
    return fire_budgets(fire, zones, Grid.of_dataset(zones).cell_area)


def blocked_cv_error_of(lay: RunLayout) -> pd.DataFrame | None:
    """The blocked-CV error per domain and flux of the run's model bundle
    (:func:`abz_dask.aggregation.intervals.blocked_cv_error`), or None when its profile's
    interval is the bootstrap's (no ``blocked_cv.csv`` in the bundle)."""
    import xarray as xr

    from abz_dask.aggregation.intervals import blocked_cv_error
    from abz_dask.training.bundle import read_cv_tables

    held = read_cv_tables(lay.models / "blocked_cv.csv")
    if not held:
        return None
    zones = xr.open_zarr(url(lay.zones), consolidated=False)
    return blocked_cv_error(held, zones, Grid.of_dataset(zones).cell_area)


def _budgets(ctx: RunContext) -> dict[str, Any]:
    from abz_dask.pipeline.demo import compare_budgets
    from abz_dask.upscale import budget_table, excluded_area_message

    b = ctx.config.budgets
    lay = ctx.layout
    fire = _fire_budgets(lay)
    est = budget_table(lay.fluxes, b.start_year, b.end_year, fire=fire)
    if est.empty or int(est["n_years"].iloc[0]) == 0:
        raise ValueError(f"budgets: no whole year of {lay.fluxes} lies in "
                         f"{b.start_year}..{b.end_year}")
    lost = excluded_area_message(est)
    if lost and "excluded_area_mkm2" in est:
        frac = float((est["excluded_area_mkm2"] / est["area_mkm2"]).max())
        if b.max_excluded_area is not None and frac > b.max_excluded_area:
            raise ValueError(f"{lost}; budgets.max_excluded_area is {b.max_excluded_area:g} "
                             f"(a fraction), the largest loss is {frac:.4f}. Give predictors "
                             "for these cells or raise the threshold")
    truth = lay.existing(lay.truth_budgets)
    tab = (compare_budgets(est, truth, b.start_year, b.end_year, fire=fire)
           if truth is not None else est)
    cv_error = blocked_cv_error_of(lay)
    if cv_error is not None:
        from abz_dask.aggregation.intervals import with_interval

        tab = with_interval(tab, cv_error)
    write_atomic(lay.budgets, tab.to_csv(index=False))
    return {"rows": len(tab), "n_years": int(est["n_years"].iloc[0]),
            **({"warnings": [lost]} if lost else {})}


def _trends(ctx: RunContext) -> dict[str, Any]:
    from abz_dask.analyses import TrendConfig, run_trends

    b, t = ctx.config.budgets, ctx.config.trends
    cfg = TrendConfig(start=b.start_year, end=b.end_year, method=t.method,
                      preserve_range=t.preserve_range, alpha=t.alpha, predictors=t.predictors)
    res = run_trends(ctx.layout.trend_inputs(), ctx.layout.trends, cfg, overwrite=True,
                     progress=ctx.config.progress, echo=lambda m: ctx.echo(f"trends: {m}"))
    _trend_attenuation(ctx)
    return {"maps": str(res.maps), "tables": sorted(res.tables)}


def _trend_attenuation(ctx: RunContext) -> None:
    """Append the attenuation estimate of the run's held-out predictions to every estimated
    budget trend (:func:`abz_dask.analyses.budget_trends.with_attenuation`) and print it with
    the annual ABZ trends; nothing without the training's ``cv_predictions.csv``."""
    import pandas as pd

    from abz_dask.analyses.attenuation import held_out_attenuation
    from abz_dask.analyses.budget_trends import with_attenuation
    from abz_dask.training.extract import read_training_table

    lay = ctx.layout
    cv = lay.existing(lay.cv_predictions) or lay.existing(lay.models / "cv_predictions.csv")
    if cv is None or lay.existing(lay.budget_trends) is None:
        return
    table, names = None, []
    if lay.existing(lay.training_table) and lay.existing(lay.card):
        card = json.loads(as_path(lay.card).read_text())
        cat = set(card.get("categorical", {}).get("predictors", []))
        names = [p for p in card["models"][card["fluxes"][0]]["central"]["predictors"]
                 if p not in cat and all(p in m["central"]["predictors"]
                                         for m in card["models"].values())]
        table = read_training_table(lay.training_table)
    att = held_out_attenuation(pd.read_csv(url(cv), dtype={"site_id": str}), table, names)
    table = with_attenuation(pd.read_csv(url(lay.budget_trends)), att)
    write_atomic(lay.budget_trends, table.to_csv(index=False))
    sel = table[(table["source"] == "estimate") & (table["season"] == "annual")
                & (table["domain"] == "abz") & table["attenuation"].notna()]
    for _, r in sel.iterrows():
        ctx.echo(f"trends: ABZ {r['flux']} budget trend {r['trend_tg_c_per_yr']:+.2f} Tg C yr-2, "
                 f"attenuation estimate {r['attenuation']:.2f} ± {r['attenuation_se']:.2f} "
                 f"({r['attenuation_method']}: held-out predicted vs observed site anomalies; "
                 "1 = full amplitude)")


def _trend_outputs(ctx: RunContext) -> list[Path]:
    """The maps and every table of the trend stage (a deleted table is missing output: the
    stage resumes and writes only it)."""
    import xarray as xr

    inp = ctx.layout.trend_inputs()
    ndvi = inp.cube is not None and "ndvi" in xr.open_zarr(url(inp.cube), consolidated=False)
    return ctx.layout.trend_outputs(greening=ndvi, truth=inp.truth is not None)


def _products(ctx: RunContext) -> list[Any]:
    """The products of the compare stage: the configured ones, or on a twin with none
    configured the twin's inversion-like and CMIP6-like products (written on demand into the
    twin folder)."""
    from abz_dask.compare.run import ProductSpec

    c = ctx.config.compare
    products = [ProductSpec(e.name, as_path(e.path), e.variable, e.sign) for e in c.products]
    if products or not isinstance(ctx.config.input, TwinInput):
        return products
    from abz_dask.twin.comparisons import write_comparison_products
    from abz_dask.twin.generate import TwinLayout

    paths = write_comparison_products(TwinLayout(ctx.layout.twin_dir))
    names = {"inversion": "inversion_twin", "cmip6": "cmip6_twin"}
    return [ProductSpec(n, paths[k]) for k, n in names.items() if k in paths]


def _compare(ctx: RunContext) -> dict[str, Any]:
    from abz_dask.compare.run import run_compare

    c = ctx.config.compare
    products = _products(ctx)
    written = run_compare(ctx.layout.compare_inputs(), products,
                          years=(c.start_year, c.end_year), k=c.k, n_sample=c.n_sample,
                          seed=c.seed, coverage=c.coverage, figures=c.figures)
    return {"products": [p.name for p in products], "outputs": sorted(written)}


def _compare_inputs(ctx: RunContext) -> list[str | Path]:
    return ["upscale", "extract", *_source(ctx, sites=False),
            *[as_path(e.path) for e in ctx.config.compare.products]]


def _table1(ctx: RunContext) -> dict[str, Any]:
    from abz_dask.analyses.table1 import write_table1
    from abz_dask.report.build import open_period

    b, lay = ctx.config.budgets, ctx.layout
    lay.table1_inputs().check()
    store, truth = open_period(lay, b.start_year, b.end_year)  # small stores: loaded once
    t1 = write_table1(lay.table1_inputs(), lay.table1_files(), start=b.start_year,
                      end=b.end_year, fire_start=ctx.config.report.fire_start, store=store,
                      truth_store=truth)
    return {"period": list(t1.period), "fire_period": list(t1.fire_period or []),
            "rows": len(t1.estimate)}


def _table1_outputs(ctx: RunContext) -> list[Path]:
    files = ctx.layout.table1_files()
    truth = ctx.layout.existing(ctx.layout.truth) is not None
    return [p for role, p in files.items() if role != "truth" or truth]


def _report(ctx: RunContext) -> dict[str, Any]:
    from abz_dask.report import build_report

    b, r = ctx.config.budgets, ctx.config.report
    rep = build_report(ctx.layout, start=b.start_year, end=b.end_year, fire_year=r.fire_year,
                       out=ctx.layout.report_html)
    return {"html": str(rep.path), "figures": list(rep.figure_names)}


def _report_inputs(ctx: RunContext) -> list[str | Path]:
    return ["table1", "budgets", "upscale", "train", *_source(ctx),
            *(["compare"] if ctx.config.compare.enabled else [])]


def _budget_inputs(ctx: RunContext) -> list[str | Path]:
    t = ctx.layout.truth_budgets
    extra: list[str | Path] = [t] if ctx.reader is not None and t is not None else []
    return ["upscale", *_source(ctx, sites=False), *extra]  # fire is in the source


STAGES: list[Stage] = [
    Stage("twin", _twin, lambda ctx: ctx.layout.twin_outputs(),
          settings=lambda ctx: ctx.config.input.model_dump(mode="json"),
          inputs=lambda ctx: [], clean=lambda ctx: [ctx.layout.twin_dir],
          applies=lambda config: isinstance(config.input, TwinInput)),
    Stage("build-cube", _build_cube,
          outputs=lambda ctx: [ctx.layout.cube, ctx.layout.zones,
                               *([ctx.layout.fire] if ctx.layout.fire else [])],
          settings=lambda ctx: {"zones_given": getattr(ctx.config.input, "zones", None)
                                is not None},
          inputs=lambda ctx: [getattr(ctx.config.input, "cube_config", Path())],
          clean=lambda ctx: [ctx.layout.inputs_dir],
          applies=lambda config: isinstance(config.input, BuildInput)),
    Stage("extract", _extract,
          outputs=lambda ctx: [ctx.layout.training_table, ctx.layout.extract_report],
          settings=lambda ctx: (ctx.config.input.model_dump(
              mode="json", include={"methods", "max_gap_fill", "exclude_disturbed"})
              if ctx.reader else {}),
          inputs=lambda ctx: _source(ctx)),
    # the models depend on the training table's content, not on how it was made: an extract
    # rerun that gives the same table (a cube with more months) keeps them current
    Stage("train", _train, outputs=lambda ctx: [ctx.layout.card],
          settings=_train_settings, inputs=lambda ctx: [ctx.layout.training_table],
          clean=lambda ctx: [ctx.layout.models]),
    Stage("upscale", _upscale, outputs=lambda ctx: [ctx.layout.fluxes],
          settings=lambda ctx: ctx.config.upscale.model_dump(mode="json"),
          inputs=lambda ctx: ["train", *_source(ctx, sites=False)],
          clean=_upscale_clean),
    Stage("budgets", _budgets, outputs=lambda ctx: [ctx.layout.budgets],
          settings=lambda ctx: ctx.config.budgets.model_dump(mode="json"),
          inputs=_budget_inputs),
    Stage("trends", _trends, outputs=_trend_outputs,
          settings=lambda ctx: {**ctx.config.budgets.model_dump(mode="json"),
                                **ctx.config.trends.model_dump(mode="json")},
          inputs=lambda ctx: ["upscale", *_source(ctx)], clean=lambda ctx: [ctx.layout.trends],
          applies=lambda config: config.trends.enabled),
    Stage("compare", _compare, outputs=lambda ctx: [ctx.layout.comparison_metrics,
                                                    ctx.layout.compare_maps],
          settings=lambda ctx: ctx.config.compare.model_dump(mode="json"),
          inputs=_compare_inputs, clean=lambda ctx: [ctx.layout.compare],
          applies=lambda config: config.compare.enabled),
    Stage("table1", _table1, outputs=_table1_outputs,
          settings=lambda ctx: {**ctx.config.budgets.model_dump(mode="json"),
                                "fire_start": ctx.config.report.fire_start},
          inputs=lambda ctx: ["upscale", *_source(ctx)],
          clean=lambda ctx: list(ctx.layout.table1_files().values()),
          applies=lambda config: config.report.enabled),
    Stage("report", _report, outputs=lambda ctx: [ctx.layout.report_html],
          settings=lambda ctx: {**ctx.config.budgets.model_dump(mode="json"),
                                **ctx.config.report.model_dump(mode="json",
                                                               exclude={"fire_start"})},
          inputs=_report_inputs,
          clean=lambda ctx: [ctx.layout.report_html, ctx.layout.report_tables],
          applies=lambda config: config.report.enabled),
]


def register_stage(stage: Stage, *, after: str | None = None) -> None:
    """Add a stage to :data:`STAGES` (at the end, or right after the stage named ``after``)."""
    if any(s.name == stage.name for s in STAGES):
        raise ValueError(f"a stage named {stage.name!r} is already registered")
    if after is None:
        STAGES.append(stage)
        return
    names = [s.name for s in STAGES]
    if after not in names:
        raise ValueError(f"no stage named {after!r}; stages: {names}")
    STAGES.insert(names.index(after) + 1, stage)
