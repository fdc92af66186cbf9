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
modification time above 256 MB); of a Zarr store the content of its metadata documents
(shapes, chunks, attributes — the provenance the stores carry).

Stages: ``twin`` (twin input), ``build-cube`` (build input), ``extract``, ``train``,
``upscale``, ``budgets``, ``trends`` and ``report`` (``trends.enabled``, ``report.enabled``).
More stages are appended with :func:`register_stage` (one entry each). The runner never
creates a cluster: stages run on the active scheduler (:mod:`abz_dask.pipeline.clusters` creates
one for
the CLI). A ``build-cube`` stage's identity is its YAML's content, not the rasters it names.
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
from typing import Any

from abz_dask import __version__
from abz_dask.io.integrity import check_digest, digest_outputs, relative, summarize
from abz_dask.io.locks import hold
from abz_dask.io.ownership import claim_folder
from abz_dask.pipeline.config import BuildInput, FilesInput, RunConfig, TwinInput
from abz_dask.twin.generate import FIRE_START

__all__ = ["STAGES", "RunContext", "RunResult", "Stage", "StageResult", "check_force", "identity",
           "preflight", "register_stage", "run_pipeline"]

_BIG = 256 * 2**20
_ZARR_META = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})


@dataclass
class RunContext:
    """What stages see: the configuration, the run folder and the hashes of finished stages."""

    config: RunConfig
    hashes: dict[str, str] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        """The run folder."""
        return Path(self.config.output)

    @property
    def twin_dir(self) -> Path:
        """Folder of the generated twin (twin input only)."""
        return self.out / "twin"

    def _files(self) -> FilesInput | BuildInput | None:
        inp = self.config.input
        return inp if isinstance(inp, FilesInput | BuildInput) else None

    @property
    def inputs_dir(self) -> Path:
        """Folder of the built cube and zones (build input only)."""
        return self.out / "inputs"

    @property
    def cube(self) -> Path:
        """Predictor cube."""
        f = self._files()
        if isinstance(f, BuildInput):
            return self.inputs_dir / "cube.zarr"
        return f.cube if f else self.twin_dir / "cube.zarr"

    @property
    def zones(self) -> Path:
        """Zone layers."""
        f = self._files()
        if isinstance(f, BuildInput):
            return f.zones or self.inputs_dir / "zones.zarr"
        return f.zones if f else self.twin_dir / "zones.zarr"

    @property
    def sites(self) -> Path:
        """ABCflux CSV."""
        f = self._files()
        return f.abcflux if f else self.twin_dir / "abcflux_twin.csv"

    @property
    def truth_budgets(self) -> Path | None:
        """Reference budgets joined to budgets.csv (the twin's truth), if any."""
        f = self._files()
        return f.truth_budgets if f else self.twin_dir / "truth_budgets.csv"

    @property
    def source(self) -> list[str | Path]:
        """Input identities of the data: the twin stage, the three input files, or the
        build-cube stage and the ABCflux CSV."""
        inp = self.config.input
        if isinstance(inp, TwinInput):
            return ["twin"]
        if isinstance(inp, BuildInput):
            return ["build-cube", *([inp.zones] if inp.zones else []), self.sites]
        return [self.cube, self.zones, self.sites]

    @property
    def table(self) -> Path:
        """Training table written by the extract stage."""
        return self.out / "training" / "training_table.parquet"

    @property
    def models(self) -> Path:
        """Model bundle."""
        return self.out / "models"

    @property
    def fluxes(self) -> Path:
        """Flux store."""
        return self.out / "fluxes.zarr"


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
    """Identity of an external input: content hash of a file (size + mtime above 256 MB), or
    of the metadata documents of a Zarr store.

    Raises
    ------
    FileNotFoundError
        The input does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input {path} not found")
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


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _record_path(ctx: RunContext, stage: Stage) -> Path:
    return ctx.out / f"{stage.name}.stage.json"


def _key(ctx: RunContext, stage: Stage) -> tuple[str, dict[str, Any]]:
    ids: dict[str, str] = {}
    for inp in stage.inputs(ctx):
        if isinstance(inp, str):
            if inp not in ctx.hashes:
                raise RuntimeError(f"stage {stage.name!r} needs stage {inp!r}, which has not "
                                   "run before it")
            ids[f"stage:{inp}"] = ctx.hashes[inp]
        else:
            ids[str(inp)] = identity(inp)
    doc = {"stage": stage.name, "settings": stage.settings(ctx), "inputs": ids,
           "abz_dask_version": __version__}
    return _digest(doc), doc


def _remove(ctx: RunContext, paths: Sequence[Path]) -> None:
    """Remove a stage's outputs: fixed names inside the run folder, which the runner claimed
    (created, or found empty or already a run folder), so they are the package's."""
    root = ctx.out.resolve()
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
                stages: Sequence[Stage] | None = None) -> None:
    """Raise ValueError naming the stages of ``force`` that are not in the run."""
    names = [s.name for s in (STAGES if stages is None else stages) if s.applies(config)]
    unknown = sorted(set(force) - set(names))
    if unknown:
        raise ValueError(f"--force {', '.join(unknown)}: no such stage in this run; stages: "
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
    missing = [str(p) for p in outputs if not Path(p).exists()]
    if missing:
        return "missing", f"output(s) missing: {', '.join(missing)}"
    recorded = old.get("outputs_digest")  # None in records written before digests existed
    problems = check_digest(recorded, ctx.out, outputs) if recorded is not None else []
    if problems:
        return "damaged", "outputs damaged:" + summarize(problems)
    return "current", ""


def preflight(config: RunConfig) -> None:
    """Every check of a run that needs no cluster, before one is started (also ``run
    --check``): the nested build-cube configuration and its files (patterns, CRS, overlap,
    units; :func:`abz_dask.cube_build.make_plan`), the input files, the training profile, and
    the periods of the twin, the upscaling and the budgets against each other.

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
            if path is not None and not Path(path).exists():
                problems.append(f"{key}: {path} does not exist")
        if inp.zones is not None and Path(inp.zones).exists():
            from abz_dask.geo.user_zones import open_zone_store

            try:
                open_zone_store(Path(inp.zones), "input.zones")
            except (ValueError, OSError) as e:
                problems.append(str(e))
        if Path(inp.abcflux).is_dir():
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
    if isinstance(inp, FilesInput) and Path(inp.cube).exists():
        cube = xr.open_zarr(inp.cube, consolidated=False)
        series = {str(n) for n, v in cube.data_vars.items() if "time" in v.dims}
    else:
        series = {p.name for p in PREDICTORS if p.kind in ("monthly", "annual")}
    return [f"trends.predictors: {name!r} is not a time series of the cube; choose from "
            f"{sorted(series)}" for name in (item.partition(":")[0] for item in t.predictors)
            if name not in series]


def run_pipeline(config: RunConfig, *, stages: Sequence[Stage] | None = None,
                 echo: Callable[[str], None] | None = None, force: Sequence[str] = ()
                 ) -> RunResult:
    """Run every applicable stage in order on the active scheduler, skipping current ones.

    The run folder is created (or adopted if empty or already a run folder; a non-empty folder
    of other files is refused) and locked for the duration: a second run on the same folder
    is refused with :class:`~abz_dask.io.locks.LockedError`. A stage is current when its record's
    key matches and its outputs match the digest recorded when they were written; damaged
    outputs (a missing chunk or variable, altered bytes) are reported and rebuilt.

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

    Returns
    -------
    RunResult
    """
    stages = list(stages if stages is not None else STAGES)
    check_force(force, config, stages)
    ctx = RunContext(config)
    claim_folder(ctx.out)
    with hold(ctx.out, "run folder", inside=True):
        return _run_locked(ctx, stages, echo or (lambda _msg: None), force)


def _run_locked(ctx: RunContext, stages: Sequence[Stage], say: Callable[[str], None],
                force: Sequence[str]) -> RunResult:
    results: list[StageResult] = []
    for stage in stages:
        if not stage.applies(ctx.config):
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
        if stage.name in force or state in ("stale", "damaged"):
            say(f"{stage.name}: {why or 'forced'}; removing its outputs")
            _remove(ctx, (stage.clean or stage.outputs)(ctx))
        rec_path.unlink(missing_ok=True)
        t0 = time.perf_counter()
        info = stage.run(ctx) or {}
        dt = time.perf_counter() - t0
        outputs = stage.outputs(ctx)
        missing = [str(p) for p in outputs if not Path(p).exists()]
        if missing:
            raise RuntimeError(f"stage {stage.name!r} finished without writing {missing}")
        record = {**doc, "key": key, "seconds": round(dt, 3), "info": info,
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "outputs": [relative(Path(p).absolute(), ctx.out.absolute()) for p in outputs],
                  "outputs_digest": digest_outputs(outputs, ctx.out)}
        tmp = rec_path.with_name(rec_path.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=2, default=str))
        tmp.replace(rec_path)
        ctx.hashes[stage.name] = key
        results.append(StageResult(stage.name, "ran", dt, key, info))
        for note in info.get("notes", ()):
            say(f"{stage.name}: {note}")
        for w in info.get("warnings", ()):
            say(f"{stage.name}: WARNING: {w}")
        resumed = {k: v for k, v in info.items() if k.startswith("resumed") and v}
        say(f"{stage.name}: ran in {dt:.1f} s"
            + "".join(f"; {k.replace('_', ' ')}: {v}" for k, v in resumed.items()))
    return RunResult(ctx.out, results)


# --------------------------------------------------------------------------------------------
# the stages


def _grid_of(cube: Any) -> Any:
    from abz_dask.geo.grid import PRESETS, Grid

    name = str(cube.attrs.get("grid_name", ""))
    if name in PRESETS:
        return Grid.from_preset(name)
    res = float(cube.attrs.get("grid_resolution_m", abs(float(cube.x[1] - cube.x[0]))))
    return Grid(res, name or "custom")


def _twin(ctx: RunContext) -> dict[str, Any]:
    from abz_dask.twin import generate_twin

    t = ctx.config.input
    assert isinstance(t, TwinInput)
    generate_twin(ctx.twin_dir, resolution=t.resolution, start=t.start, end=t.end, seed=t.seed,
                  n_sites=t.n_sites, progress=ctx.config.progress)
    return {"resolution": t.resolution, "period": f"{t.start}..{t.end}"}


def _twin_outputs(ctx: RunContext) -> list[Path]:
    d = ctx.twin_dir
    return [d / n for n in ("zones.zarr", "cube.zarr", "truth.zarr", "fire.zarr",
                            "abcflux_twin.csv", "truth_budgets.csv")]


def _build_cube(ctx: RunContext) -> dict[str, Any]:
    import xarray as xr

    from abz_dask.cube_build import build_cube

    inp = ctx.config.input
    assert isinstance(inp, BuildInput)
    ctx.inputs_dir.mkdir(parents=True, exist_ok=True)
    zones_out = ctx.inputs_dir / "zones.zarr"
    res = build_cube(inp.cube_config, ctx.cube, zones_out=zones_out,
                     progress=ctx.config.progress)
    if inp.zones is None and not zones_out.exists():
        from abz_dask.geo.zones import build_zones

        grid = _grid_of(xr.open_zarr(ctx.cube, consolidated=False))
        tmp = zones_out.with_name(zones_out.name + ".tmp")
        build_zones(grid).to_zarr(tmp, mode="w", zarr_format=3, consolidated=False)
        tmp.rename(zones_out)
    return {"cube": str(ctx.cube), "zones": str(ctx.zones), "tiles": res.n_tiles,
            "resumed_tiles": res.resumed_tiles}


def _extract(ctx: RunContext) -> dict[str, Any]:
    import xarray as xr

    from abz_dask.io.abcflux import read_abcflux
    from abz_dask.training.extract import extract_training_table, write_training_table

    cube = xr.open_zarr(ctx.cube, consolidated=False)
    zones = xr.open_zarr(ctx.zones, consolidated=False)
    grid = _grid_of(cube)
    f = ctx._files()
    years = (int(cube.time.dt.year.min()), int(cube.time.dt.year.max()))
    obs = read_abcflux(ctx.sites, grid=grid, zones=zones, years=years,
                       methods=f.methods if f else None,
                       max_gap_fill=f.max_gap_fill if f else None,
                       exclude_disturbed=f.exclude_disturbed if f else False,
                       gpp_sign=f.gpp_sign if f else "auto")
    table, report = extract_training_table(obs, cube, grid)
    write_training_table(table, ctx.table.parent)
    report.to_csv(ctx.table.parent / "extract_report.csv", index=False)
    sign = obs.attrs.get("abcflux", {}).get("gpp_sign") or {}
    return {"site_months": len(table), "sites": int(table["site_id"].nunique()),
            "gpp_sign": sign,
            "notes": [f"GPP sign: stored {sign['stored']} ({sign['basis']})"
                      + ("; flipped to positive" if sign["flipped"] else "")] if sign else []}


def _train(ctx: RunContext) -> dict[str, Any]:
    from abz_dask.training import resolve_profile, run_training

    tr = ctx.config.training
    fits = ctx.out / "training" / "cv_fits"  # the fit ledger of run_training
    done = [p for p in fits.glob("*/*") if p.suffix in (".npz", ".json") and ".tmp" not in
            p.name and p.name != "key.json"] if fits.is_dir() else []
    bundle = run_training(ctx.table, ctx.out, profile=resolve_profile(tr.profile),
                          fluxes=tr.fluxes, seed=tr.seed, progress=ctx.config.progress)
    return {"fluxes": list(bundle.card["fluxes"]), "resumed_fits": len(done)}


def _train_settings(ctx: RunContext) -> dict[str, Any]:
    from abz_dask.training import resolve_profile

    tr = ctx.config.training
    return {"profile": resolve_profile(tr.profile).model_dump(mode="json"),
            "fluxes": list(tr.fluxes), "seed": tr.seed}


def _upscale(ctx: RunContext) -> dict[str, Any]:
    import xarray as xr

    from abz_dask.io.store import TileLedger
    from abz_dask.pipeline.demo import check_n_bootstrap
    from abz_dask.training import load_bundle
    from abz_dask.upscale import UpscaleConfig, compile_bundle, run_upscale

    u = ctx.config.upscale
    cube = xr.open_zarr(ctx.cube, consolidated=False)
    bundle = load_bundle(ctx.models, cube=cube)
    check_n_bootstrap(bundle, u.n_bootstrap, "upscale.n_bootstrap")
    models = compile_bundle(bundle, n_bootstrap=u.n_bootstrap)
    cfg = UpscaleConfig(start=u.start, end=u.end, tile=u.tile,
                        bootstrap_sample=u.bootstrap_sample,
                        store_replicates=u.store_replicates, seed=u.seed)
    resumed = TileLedger(ctx.fluxes).count()
    tiles = run_upscale(ctx.cube, ctx.zones, ctx.fluxes, models, cfg,
                        progress=ctx.config.progress)
    tiles.to_csv(ctx.out / "upscale_tiles.csv", index=False)
    return {"tiles": len(tiles), "resumed_tiles": resumed, "cpu_s": float(tiles["cpu_s"].sum()),
            "forest_row_evals": int(tiles["forest_row_evals"].sum())}


def _budgets(ctx: RunContext) -> dict[str, Any]:
    from abz_dask.pipeline.demo import compare_budgets
    from abz_dask.upscale import budget_table, excluded_area_message

    b = ctx.config.budgets
    est = budget_table(ctx.fluxes, b.start_year, b.end_year)
    if est.empty or int(est["n_years"].iloc[0]) == 0:
        raise ValueError(f"budgets: no whole year of {ctx.fluxes} lies in "
                         f"{b.start_year}..{b.end_year}")
    lost = excluded_area_message(est)
    if lost and "excluded_area_mkm2" in est:
        frac = float((est["excluded_area_mkm2"] / est["area_mkm2"]).max())
        if b.max_excluded_area is not None and frac > b.max_excluded_area:
            raise ValueError(f"{lost}; budgets.max_excluded_area is {b.max_excluded_area:g} "
                             f"(a fraction), the largest loss is {frac:.4f}. Give predictors "
                             "for these cells or raise the threshold")
    truth = ctx.truth_budgets
    tab = compare_budgets(est, truth, b.start_year, b.end_year) if truth and truth.exists() \
        else est
    out = ctx.out / "budgets.csv"
    tmp = out.with_name(out.name + ".tmp")
    tab.to_csv(tmp, index=False)
    tmp.replace(out)
    return {"rows": len(tab), "n_years": int(est["n_years"].iloc[0]),
            **({"warnings": [lost]} if lost else {})}


def _trends(ctx: RunContext) -> dict[str, Any]:
    from abz_dask.analyses import TrendConfig, TrendInputs, run_trends

    b, t = ctx.config.budgets, ctx.config.trends
    twin = ctx._files() is None
    opt = {n: ctx.twin_dir / f"{n}.zarr" for n in ("fire", "truth")} if twin else {}
    inputs = TrendInputs(fluxes=ctx.fluxes, zones=ctx.zones, cube=ctx.cube,
                         **{k: (v if v.exists() else None) for k, v in opt.items()})
    cfg = TrendConfig(start=b.start_year, end=b.end_year, method=t.method,
                      preserve_range=t.preserve_range, alpha=t.alpha, predictors=t.predictors)
    res = run_trends(inputs, ctx.out / "trends", cfg, overwrite=True,
                     progress=ctx.config.progress)
    return {"maps": str(res.maps), "tables": sorted(res.tables)}


def _report(ctx: RunContext) -> dict[str, Any]:
    from abz_dask.report import build_report

    f = ctx._files()
    if f is not None:  # the report finds zones and sites in the run folder: link the inputs
        for link, target in (("zones.zarr", ctx.zones), ("abcflux.csv", f.abcflux)):
            q = ctx.out / link
            if q.is_symlink() and q.resolve() != Path(target).resolve():
                q.unlink()
            if not q.exists():
                q.symlink_to(Path(target).resolve())
    b, r = ctx.config.budgets, ctx.config.report
    rep = build_report(ctx.out, start=b.start_year, end=b.end_year, fire_year=r.fire_year)
    return {"html": str(rep.path), "figures": list(rep.figure_names)}


_REPORT_FILES = ("report.html", "report", "table1.csv", "table1.md", "table1_checks.csv",
                 "table1_truth.csv")


def _budget_inputs(ctx: RunContext) -> list[str | Path]:
    t = ctx.truth_budgets
    extra: list[str | Path] = [t] if ctx._files() is not None and t is not None else []
    return ["upscale", *(["twin"] if ctx._files() is None else []), *extra]


STAGES: list[Stage] = [
    Stage("twin", _twin, _twin_outputs,
          settings=lambda ctx: ctx.config.input.model_dump(mode="json"),
          inputs=lambda ctx: [], clean=lambda ctx: [ctx.twin_dir],
          applies=lambda config: isinstance(config.input, TwinInput)),
    Stage("build-cube", _build_cube, outputs=lambda ctx: [ctx.cube, ctx.zones],
          settings=lambda ctx: {"zones_given": getattr(ctx.config.input, "zones", None)
                                is not None},
          inputs=lambda ctx: [getattr(ctx.config.input, "cube_config", Path())],
          clean=lambda ctx: [ctx.inputs_dir],
          applies=lambda config: isinstance(config.input, BuildInput)),
    Stage("extract", _extract,
          outputs=lambda ctx: [ctx.table, ctx.table.parent / "extract_report.csv"],
          settings=lambda ctx: (ctx.config.input.model_dump(
              mode="json", include={"methods", "max_gap_fill", "exclude_disturbed"})
              if ctx._files() else {}),
          inputs=lambda ctx: ctx.source),
    Stage("train", _train, outputs=lambda ctx: [ctx.models / "card.json"],
          settings=_train_settings, inputs=lambda ctx: ["extract"],
          clean=lambda ctx: [ctx.models]),
    Stage("upscale", _upscale, outputs=lambda ctx: [ctx.fluxes],
          settings=lambda ctx: ctx.config.upscale.model_dump(mode="json"),
          inputs=lambda ctx: ["train", *ctx.source],
          clean=lambda ctx: [ctx.fluxes, ctx.out / "upscale_tiles.csv"]),
    Stage("budgets", _budgets, outputs=lambda ctx: [ctx.out / "budgets.csv"],
          settings=lambda ctx: ctx.config.budgets.model_dump(mode="json"),
          inputs=_budget_inputs),
    Stage("trends", _trends, outputs=lambda ctx: [ctx.out / "trends" / "trend_maps.zarr",
                                                  ctx.out / "trends" / "budget_trends.csv"],
          settings=lambda ctx: {**ctx.config.budgets.model_dump(mode="json"),
                                **ctx.config.trends.model_dump(mode="json")},
          inputs=lambda ctx: ["upscale", *ctx.source], clean=lambda ctx: [ctx.out / "trends"],
          applies=lambda config: config.trends.enabled),
    Stage("report", _report, outputs=lambda ctx: [ctx.out / "report.html",
                                                  ctx.out / "table1.csv"],
          settings=lambda ctx: {**ctx.config.budgets.model_dump(mode="json"),
                                **ctx.config.report.model_dump(mode="json")},
          inputs=lambda ctx: ["budgets", "upscale", "train", *ctx.source],
          clean=lambda ctx: [ctx.out / n for n in _REPORT_FILES],
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
