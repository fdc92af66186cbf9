"""Run configuration validation, the stage runner's skip/rerun rules, and the ``run`` command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from abz_dask.cli import app
from abz_dask.pipeline import runner
from abz_dask.pipeline.config import ConfigError, FilesInput, load_config, parse_config
from abz_dask.pipeline.runner import RunContext, Stage, identity, register_stage, run_pipeline

BASE: dict[str, Any] = {"output": "out"}


def _err(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(data, source="run.yaml")
    return str(e.value)


@pytest.mark.parametrize(("data", "expect"), [
    ({"outptu": "x"}, "unknown key 'outptu'"),
    ({"input": {"kind": "twin", "resolutoin": "50km"}}, "unknown key 'input.resolutoin'"),
    ({"training": {"profile": "light", "fluxs": ["NEE"]}}, "unknown key 'training.fluxs'"),
    ({"cluster": {"kind": "slurm", "jobs": 4}}, "unknown key 'cluster.jobs'"),
    ({"cluster": {"kind": "gateway", "adapt": {"maximum": 4, "minimun": 1}}},
     "unknown key 'cluster.adapt.minimun'"),
    ({"training": {"profile": {"base": "light", "final_tres": 3}}},
     "training.profile: unknown key 'final_tres'"),
])
def test_unknown_keys_are_errors_naming_the_key(data: dict[str, Any], expect: str) -> None:
    msg = _err({**BASE, **data})
    assert msg.startswith("run.yaml: ")
    assert expect in msg


@pytest.mark.parametrize(("data", "field", "value"), [
    ({"input": {"resolution": "30km"}}, "input.resolution", "30km"),
    ({"input": {"start": "2001-13"}}, "input.start", "2001-13"),
    ({"input": {"start": "2001-02"}}, "a January", "2001-02"),
    ({"input": {"n_sites": 0}}, "input.n_sites", "0"),
    ({"training": {"profile": "heavy"}}, "training.profile", "heavy"),
    ({"training": {"profile": {"base": "light", "final_trees": 0}}}, "final_trees", "0"),
    ({"training": {"fluxes": ["NEE", "CH4"]}}, "training.fluxes.1", "CH4"),
    ({"upscale": {"bootstrap_sample": 1.5}}, "upscale.bootstrap_sample", "1.5"),
    ({"upscale": {"tile": 2}}, "upscale.tile", "2"),
    ({"budgets": {"start_year": 2010, "end_year": 2001}}, "end_year 2001", "2010"),
    ({"trends": {"method": "sen"}}, "trends.method", "sen"),
    ({"trends": {"alpha": 1.5}}, "trends.alpha", "1.5"),
    ({"report": {"fire_year": 1800}}, "report.fire_year", "1800"),
    ({"cluster": {"kind": "yarn"}}, "cluster.kind", "yarn"),
    ({"cluster": {"kind": "address"}}, "needs cluster.address", "address"),
    ({"cluster": {"kind": "local", "workers": 0}}, "cluster.workers", "0"),
])
def test_bad_values_name_the_field(data: dict[str, Any], field: str, value: str) -> None:
    msg = _err({**BASE, **data})
    assert field in msg and value in msg


def test_missing_keys_and_wrong_input_kind() -> None:
    assert "missing key 'output'" in _err({})
    msg = _err({**BASE, "input": {"kind": "files", "cube": "c.zarr"}})
    assert "missing key 'input.zones'" in msg and "missing key 'input.abcflux'" in msg
    assert "'twin', 'files'" in _err({**BASE, "input": {"kind": "netcdf"}})


def test_defaults_are_the_demo() -> None:
    cfg = parse_config(BASE)
    assert cfg.input.kind == "twin" and cfg.input.resolution == "50km"
    assert (cfg.input.start, cfg.input.end) == ("1990-01", "2020-12")
    assert cfg.training.profile == "light" and cfg.training.fluxes == ("NEE", "GPP", "Reco")
    assert (cfg.budgets.start_year, cfg.budgets.end_year) == (2001, 2020)
    assert cfg.cluster.kind == "local" and cfg.report.enabled and cfg.trends.enabled


def test_load_config_resolves_paths_and_overrides_cluster(tmp_path: Path) -> None:
    d = tmp_path / "cfg"
    d.mkdir()
    (d / "run.yaml").write_text(yaml.safe_dump({
        "output": "runs/a",
        "input": {"kind": "files", "cube": "../data/cube.zarr", "zones": "/abs/zones.zarr",
                  "abcflux": "sites.csv"},
        "cluster": {"kind": "local", "workers": 3}}))
    cfg = load_config(d / "run.yaml")
    assert cfg.output == (d / "runs" / "a").resolve()
    assert isinstance(cfg.input, FilesInput)
    assert cfg.input.cube == (tmp_path / "data" / "cube.zarr").resolve()
    assert cfg.input.zones == Path("/abs/zones.zarr")
    assert cfg.input.abcflux == (d / "sites.csv").resolve()
    over = load_config(d / "run.yaml", cluster="slurm")
    assert over.cluster.kind == "slurm" and over.cluster.workers == 3
    with pytest.raises(ConfigError, match="--cluster 'yarn'"):
        load_config(d / "run.yaml", cluster="yarn")


def test_load_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("output: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping, got list"):
        load_config(lst)


def test_cli_reports_config_errors_and_checks(tmp_path: Path) -> None:
    cli = CliRunner()
    bad = tmp_path / "run.yaml"
    bad.write_text("output: x\nupscale:\n  bootstrap_sampel: 0.5\n")
    res = cli.invoke(app, ["run", str(bad)])
    assert res.exit_code == 2
    assert "unknown key 'upscale.bootstrap_sampel'" in res.output
    good = tmp_path / "good.yaml"
    good.write_text("output: x\ninput: {resolution: 100km}\n")
    res = cli.invoke(app, ["run", str(good), "--check", "--cluster", "threads",
                           "--workers", "2"])
    assert res.exit_code == 0, res.output
    shown = yaml.safe_load(res.output)
    assert shown["cluster"]["kind"] == "threads" and shown["cluster"]["workers"] == 2
    assert shown["input"]["resolution"] == "100km"
    assert shown["output"] == str((tmp_path / "x").resolve())


# -------------------------------------------------------------------------------- the runner


class _Log:
    def __init__(self) -> None:
        self.calls: list[str] = []


def _stages(log: _Log, ext: Path) -> list[Stage]:
    """a → b → c, each writing a file whose content derives from its settings and input."""

    def write(name: str, src: str | None) -> Any:
        def run(ctx: RunContext) -> dict[str, Any]:
            log.calls.append(name)
            prev = (ctx.layout.root / f"{src}.txt").read_text() if src else ext.read_text()
            val = ctx.config.budgets.start_year if name == "b" else 0
            (ctx.layout.root / f"{name}.txt").write_text(f"{prev}|{name}{val}")
            return {"n": len(log.calls)}
        return run

    return [
        Stage("a", write("a", None), outputs=lambda ctx: [ctx.layout.root / "a.txt"],
              settings=lambda ctx: {}, inputs=lambda ctx: [ext]),
        Stage("b", write("b", "a"), outputs=lambda ctx: [ctx.layout.root / "b.txt"],
              settings=lambda ctx: ctx.config.budgets.model_dump(mode="json"),
              inputs=lambda ctx: ["a"]),
        Stage("c", write("c", "b"), outputs=lambda ctx: [ctx.layout.root / "c.txt"],
              settings=lambda ctx: {}, inputs=lambda ctx: ["b"]),
    ]


def test_runner_skips_current_stages_and_reruns_stale_ones(tmp_path: Path) -> None:
    ext = tmp_path / "input.csv"
    ext.write_text("v1")
    log = _Log()
    stages = _stages(log, ext)
    cfg = parse_config({"output": str(tmp_path / "run")})
    out = tmp_path / "run"
    assert run_pipeline(cfg, stages=stages).status() == dict.fromkeys("abc", "ran")
    assert (out / "c.txt").read_text() == "v1|a0|b2001|c0"
    rec = json.loads((out / "b.stage.json").read_text())
    assert rec["settings"] == {"start_year": 2001, "end_year": 2020, "max_excluded_area": None}
    assert rec["info"] == {"n": 2}
    assert set(rec["inputs"]) == {"stage:a"}

    assert run_pipeline(cfg, stages=stages).status() == dict.fromkeys("abc", "skipped")
    assert log.calls == ["a", "b", "c"]

    # b's settings change: b and c rerun, a does not
    cfg2 = parse_config({"output": str(out), "budgets": {"start_year": 2005}})
    assert run_pipeline(cfg2, stages=stages).status() == {"a": "skipped", "b": "ran",
                                                          "c": "ran"}
    assert (out / "c.txt").read_text() == "v1|a0|b2005|c0"

    # an external input's content changes: everything downstream of it reruns
    ext.write_text("v2")
    assert set(run_pipeline(cfg2, stages=stages).status().values()) == {"ran"}
    assert (out / "c.txt").read_text() == "v2|a0|b2005|c0"

    # a missing output reruns its stage; same key, so later stages stay current
    (out / "b.txt").unlink()
    assert run_pipeline(cfg2, stages=stages).status() == {"a": "skipped", "b": "ran",
                                                          "c": "skipped"}
    # forcing
    assert run_pipeline(cfg2, stages=stages, force=["a"]).status()["a"] == "ran"


def test_runner_removes_stale_outputs_only_inside_the_run(tmp_path: Path) -> None:
    ext = tmp_path / "input.csv"
    ext.write_text("v1")
    out = tmp_path / "run"
    seen: list[bool] = []

    def run(ctx: RunContext) -> dict[str, Any]:
        seen.append((ctx.layout.root / "s.zarr" / "old").exists())
        (ctx.layout.root / "s.zarr").mkdir(exist_ok=True)
        (ctx.layout.root / "s.zarr" / "old").write_text("x")
        return {}

    st = [Stage("s", run, outputs=lambda ctx: [ctx.layout.root / "s.zarr"],
                settings=lambda ctx: ctx.config.budgets.model_dump(mode="json"),
                inputs=lambda ctx: [ext])]
    run_pipeline(parse_config({"output": str(out)}), stages=st)
    run_pipeline(parse_config({"output": str(out), "budgets": {"end_year": 2010}}), stages=st)
    assert seen == [False, False]  # the stale store was removed before the rerun
    outside = [Stage("x", run, outputs=lambda ctx: [ext], settings=lambda ctx: {},
                     inputs=lambda ctx: [], clean=lambda ctx: [ext])]
    (out / "x.stage.json").write_text(json.dumps({"key": "stale"}))
    with pytest.raises(RuntimeError, match="outside the run folder"):
        run_pipeline(parse_config({"output": str(out)}), stages=outside)
    assert ext.exists()


def test_runner_refuses_an_unordered_pipeline_and_silent_stages(tmp_path: Path) -> None:
    cfg = parse_config({"output": str(tmp_path / "run")})
    later = Stage("c", lambda ctx: {}, outputs=lambda ctx: [], settings=lambda ctx: {},
                  inputs=lambda ctx: ["b"])
    with pytest.raises(RuntimeError, match="needs stage 'b'"):
        run_pipeline(cfg, stages=[later])
    lazy = Stage("lazy", lambda ctx: {}, outputs=lambda ctx: [ctx.layout.root / "never.txt"],
                 settings=lambda ctx: {}, inputs=lambda ctx: [])
    with pytest.raises(RuntimeError, match="without writing"):
        run_pipeline(cfg, stages=[lazy])


def test_identity_of_files_and_zarr_stores(tmp_path: Path) -> None:
    import numpy as np
    import xarray as xr

    f = tmp_path / "a.csv"
    f.write_text("x")
    i1 = identity(f)
    f.write_text("y")
    assert identity(f) != i1
    store = tmp_path / "s.zarr"
    xr.Dataset({"v": ("t", np.arange(4.0))}).to_zarr(store, zarr_format=3, consolidated=False)
    s1 = identity(store)
    xr.Dataset({"v": ("t", np.arange(4.0) + 1)}).to_zarr(store, mode="w", zarr_format=3,
                                                          consolidated=False)
    assert identity(store) == s1  # data chunks are not read: same metadata, same identity
    xr.Dataset({"v": ("t", np.arange(5.0))}).to_zarr(store, mode="w", zarr_format=3,
                                                      consolidated=False)
    assert identity(store) != s1
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="not a Zarr store"):
        identity(tmp_path / "plain")
    with pytest.raises(FileNotFoundError, match="missing"):
        identity(tmp_path / "missing")


def test_register_stage_appends_or_inserts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "STAGES", list(runner.STAGES))
    names = [s.name for s in runner.STAGES]
    assert names == ["twin", "build-cube", "extract", "train", "upscale", "budgets", "trends",
                     "compare", "table1", "report"]
    extra = Stage("extra", lambda ctx: {}, outputs=lambda ctx: [], settings=lambda ctx: {},
                  inputs=lambda ctx: ["budgets"])
    register_stage(extra)
    assert [s.name for s in runner.STAGES][-1] == "extra"
    cube = Stage("mask", lambda ctx: {}, outputs=lambda ctx: [],
                 settings=lambda ctx: {}, inputs=lambda ctx: [])
    register_stage(cube, after="twin")
    assert [s.name for s in runner.STAGES][:3] == ["twin", "mask", "build-cube"]
    with pytest.raises(ValueError, match="already registered"):
        register_stage(extra)
    with pytest.raises(ValueError, match="no stage named 'nope'"):
        register_stage(Stage("z", extra.run, extra.outputs, extra.settings, extra.inputs),
                       after="nope")


def test_files_input_stages_identify_the_input_files(tmp_path: Path) -> None:
    cfg = parse_config({"output": str(tmp_path / "run"),
                        "input": {"kind": "files", "cube": str(tmp_path / "c.zarr"),
                                  "zones": str(tmp_path / "z.zarr"),
                                  "abcflux": str(tmp_path / "s.csv")}})
    ctx = RunContext(cfg)
    by = {s.name: s for s in runner.STAGES}
    assert not by["twin"].applies(cfg)
    assert by["extract"].inputs(ctx) == [tmp_path / "c.zarr", tmp_path / "z.zarr",
                                         tmp_path / "s.csv"]
    assert by["upscale"].inputs(ctx)[0] == "train"
    assert ctx.layout.truth_budgets is None


def test_build_input_builds_the_cube_then_extracts(tmp_path: Path) -> None:
    """build-cube stage on rasters exported from a twin: the cube is rebuilt, the zones are the
    grid's built-in layers (identical to the twin's, which come from the same geodata), and
    the extract stage finds the twin's sites in the rebuilt cube."""
    import numpy as np
    import pandas as pd
    import xarray as xr

    from abz_dask.twin import generate_twin
    from abz_dask.twin.export import export_twin

    layout = generate_twin(tmp_path / "twin", resolution="100km", start="2001-01",
                           end="2002-12", seed=1, n_sites=40, progress=False)
    exp = export_twin(layout, tmp_path / "export", lonlat_res=1.0)
    cfg = parse_config({"output": str(tmp_path / "run"),
                        "input": {"kind": "build", "cube_config": str(exp.config),
                                  "abcflux": str(layout.sites)},
                        "progress": False})
    stages = [s for s in runner.STAGES if s.name in ("build-cube", "extract")]
    res = run_pipeline(cfg, stages=stages)
    assert res.status() == {"build-cube": "ran", "extract": "ran"}
    out = tmp_path / "run"
    built = xr.open_zarr(out / "inputs" / "cube.zarr", consolidated=False)
    twin_cube = xr.open_zarr(layout.cube, consolidated=False)
    assert set(twin_cube.data_vars) <= set(built.variables)
    assert built.sizes == twin_cube.sizes
    z_built = xr.open_zarr(out / "inputs" / "zones.zarr", consolidated=False)
    z_twin = xr.open_zarr(layout.zones, consolidated=False)
    for v in ("land_fraction", "abz", "biome"):
        assert np.array_equal(z_built[v].values, z_twin[v].values, equal_nan=True), v
    table = pd.read_parquet(out / "training" / "training_table.parquet")
    from abz_dask.io.abcflux import read_abcflux

    obs = read_abcflux(layout.sites)
    assert set(table["site_id"]) <= set(obs["site_id"])
    assert len(table) > 0.5 * len(obs)  # most site-months find all predictors in the cube
    rec = json.loads((out / "build-cube.stage.json").read_text())
    assert list(rec["inputs"]) == [str(exp.config)]
    assert run_pipeline(cfg, stages=stages).status() == {"build-cube": "skipped",
                                                         "extract": "skipped"}


def test_run_layout_of_each_input_kind_and_of_an_existing_run(tmp_path: Path) -> None:
    """One layout: the paths of each input kind, and the same layout read back from the run
    folder (its saved run_config.json, else its twin's twin.json)."""
    import json

    from abz_dask.pipeline.layout import RunLayout, saved_input

    t = tmp_path / "t"
    lay = RunLayout.from_config(parse_config({"output": str(t)}))
    assert (lay.kind, lay.cube, lay.zones, lay.abcflux) == (
        "twin", t / "twin" / "cube.zarr", t / "twin" / "zones.zarr",
        t / "twin" / "abcflux_twin.csv")
    assert (lay.fire, lay.truth, lay.truth_budgets) == (
        t / "twin" / "fire.zarr", t / "twin" / "truth.zarr", t / "twin" / "truth_budgets.csv")
    assert (lay.fluxes, lay.card, lay.budgets, lay.extract_report, lay.record("upscale")) == (
        t / "fluxes.zarr", t / "models" / "card.json", t / "budgets.csv",
        t / "training" / "extract_report.csv", t / "upscale.stage.json")
    b = tmp_path / "b"
    for fire_section, fire in (("", None), ("fire: {files: x.tif}\n", b / "inputs" / "fire.zarr")):
        (tmp_path / "cube.yaml").write_text("grid: 100km\n" + fire_section)
        cfg = parse_config({"output": str(b), "input": {
            "kind": "build", "cube_config": str(tmp_path / "cube.yaml"),
            "abcflux": str(tmp_path / "s.csv")}})
        lay = RunLayout.from_config(cfg)
        assert (lay.kind, lay.cube, lay.zones, lay.fire, lay.truth) == (
            "build", b / "inputs" / "cube.zarr", b / "inputs" / "zones.zarr", fire, None)
    f = parse_config({"output": str(tmp_path / "f"), "input": {
        "kind": "files", "cube": str(tmp_path / "c.zarr"), "zones": str(tmp_path / "z.zarr"),
        "abcflux": str(tmp_path / "s.csv")}})
    lay = RunLayout.from_config(f)
    assert (lay.cube, lay.zones, lay.abcflux, lay.truth) == (
        tmp_path / "c.zarr", tmp_path / "z.zarr", tmp_path / "s.csv", None)
    # read back: the saved configuration
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "run_config.json").write_text(json.dumps(f.model_dump(mode="json")))
    assert RunLayout.from_run(tmp_path / "f") == lay
    # read back: a twin made by generate_twin (twin.json), nothing saved
    (t / "twin").mkdir(parents=True)
    (t / "twin" / "twin.json").write_text(json.dumps(
        {"resolution": "100km", "start": "2001-01", "end": "2003-12", "seed": 3,
         "n_sites": 50, "tile": None}))
    inp = saved_input(t)
    assert (inp.resolution, inp.start, inp.end, inp.seed, inp.n_sites) == (  # type: ignore[union-attr]
        "100km", "2001-01", "2003-12", 3, 50)
    assert RunLayout.from_run(t) == RunLayout.for_twin(t)
    assert RunLayout.from_run(t).with_paths(fluxes=tmp_path / "x.zarr").fluxes == \
        tmp_path / "x.zarr"
    with pytest.raises(TypeError, match="unknown path"):
        RunLayout.from_run(t).with_paths(budgets=tmp_path / "b.csv")
