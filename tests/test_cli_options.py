"""Out-of-range options are errors naming the option and the value (CLI and run config), one
seed default across routes, and a local cluster that closes without shutdown noise."""

from __future__ import annotations

import inspect
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from abz_dask.cli import app
from abz_dask.pipeline.config import DEFAULT_SEED, ConfigError, parse_config

pytestmark = pytest.mark.timeout(600)
runner = CliRunner()


def _text(output: str) -> str:
    """The output without the box drawing of click's usage errors, whitespace collapsed."""
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", output))


def _refused(args: list[str], option: str, value: str) -> str:
    res = runner.invoke(app, args)
    text = _text(res.output)
    assert res.exit_code == 2, res.output
    assert option in text and value in text, res.output
    return text


# options refused before any input is read or any cluster started (paths need not exist)
@pytest.mark.parametrize(("args", "option", "value"), [
    (["twin", "--out", "T", "--workers", "0"], "--workers", "0"),
    (["twin", "--out", "T", "--workers", "-1"], "--workers", "-1"),
    (["twin", "--out", "T", "--n-sites", "0"], "--n-sites", "0"),
    (["twin", "--out", "T", "--seed", "-1"], "--seed", "-1"),
    (["twin", "--out", "T", "--resolution", "30km"], "--resolution", "30km"),
    (["twin", "--out", "T", "--start", "2005-01", "--end", "2002-12"], "--start", "2005-01"),
    (["twin", "--out", "T", "--start", "2005-13"], "--start", "2005-13"),
    (["twin", "--out", "T", "--start", "2005-03"], "--start", "2005-03"),
    (["demo", "--out", "D", "--bootstrap-sample", "0"], "--bootstrap-sample", "0"),
    (["demo", "--out", "D", "--bootstrap-sample", "1.5"], "--bootstrap-sample", "1.5"),
    (["demo", "--out", "D", "--resolution", "2km"], "--resolution", "2km"),
    (["demo", "--out", "D", "--profile", "fast"], "--profile", "fast"),
    (["demo", "--out", "D", "--workers", "0"], "--workers", "0"),
    (["demo", "--out", "D", "--seed", "-5"], "--seed", "-5"),
    (["train", "R", "--seed", "-1"], "--seed", "-1"),
    (["train", "R", "--workers", "-1"], "--workers", "-1"),
    (["upscale", "R", "--tile", "0"], "--tile", "0"),
    (["upscale", "R", "--tile", "-16"], "--tile", "-16"),
    (["upscale", "R", "--n-bootstrap", "-1"], "--n-bootstrap", "-1"),
    (["upscale", "R", "--bootstrap-sample", "0"], "--bootstrap-sample", "0"),
    (["upscale", "R", "--bootstrap-sample", "-0.5"], "--bootstrap-sample", "-0.5"),
    (["upscale", "R", "--bootstrap-sample", "1.01"], "--bootstrap-sample", "1.01"),
    (["upscale", "R", "--start", "2003-01", "--end", "2001-12"], "--start", "2003-01"),
    (["upscale", "R", "--start", "2001-03"], "--start", "2001-03"),
    (["upscale", "R", "--end", "2003-06"], "--end", "2003-06"),
    (["upscale", "R", "--end", "2003"], "--end", "2003"),
    (["upscale", "R", "--workers", "0"], "--workers", "0"),
    (["trends", "R", "--start", "2020", "--end", "2001"], "--start", "2020"),
    (["trends", "R", "--start", "2001", "--end", "2002"], "--end", "2002"),
    (["trends", "R", "--alpha", "0"], "--alpha", "0"),
    (["trends", "R", "--alpha", "1"], "--alpha", "1"),
    (["trends", "R", "--method", "sen"], "--method", "sen"),
    (["trends", "R", "--workers", "0"], "--workers", "0"),
    (["build-cube", "C.yaml", "--workers", "-1"], "--workers", "-1"),
    (["compare", "R", "--k", "0"], "--k", "0"),
    (["compare", "R", "--n-sample", "0"], "--n-sample", "0"),
    (["compare", "R", "--n-sample", "3", "--k", "8"], "--n-sample", "3"),
    (["compare", "R", "--seed", "-2"], "--seed", "-2"),
    (["compare", "R", "--start", "2014", "--end", "2002"], "--start", "2014"),
    (["compare", "R", "--workers", "0"], "--workers", "0"),
    (["table1", "R", "--workers", "0"], "--workers", "0"),
    (["table1", "R", "--start", "2020", "--end", "2001"], "--start", "2020"),
    (["table1", "R", "--fire-start", "2030"], "--fire-start", "2030"),
    (["report", "R", "--workers", "-1"], "--workers", "-1"),
    (["report", "R", "--start", "20001"], "--start", "20001"),
    (["report", "R", "--fire-year", "2030"], "--fire-year", "2030"),
])
def test_bad_option_is_an_error_naming_option_and_value(args: list[str], option: str,
                                                        value: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _refused(args, option, value)
    assert list(tmp_path.iterdir()) == []                    # nothing written


def test_workers_minus_one_fails_at_once_without_a_cluster() -> None:
    from abz_dask.commands.common import local_cluster

    with pytest.raises(typer.Exit), local_cluster(-1):
        pass
    with pytest.raises(typer.Exit), local_cluster(0):
        pass


def test_n_bootstrap_above_the_bundle_is_an_error(tiny_run: Path, tmp_path: Path) -> None:
    from abz_dask.training import load_bundle

    held = min(len(b) for b in load_bundle(tiny_run / "models").bootstraps.values())
    out = tmp_path / "fluxes.zarr"
    text = _refused(["upscale", str(tiny_run), "--out", str(out), "--n-bootstrap",
                     str(held + 95)], "--n-bootstrap", str(held + 95))
    assert f"at most {held}" in text
    assert not out.exists()


def test_months_outside_the_cube_are_an_error(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "fluxes.zarr"
    text = _refused(["upscale", str(tiny_run), "--out", str(out), "--start", "1990-01"],
                    "--start", "1990-01")
    assert "2001-01..2003-12" in text
    assert not out.exists()


def test_n_bootstrap_check_of_the_pipeline() -> None:
    from types import SimpleNamespace

    from abz_dask.pipeline.demo import check_n_bootstrap

    bundle = SimpleNamespace(bootstraps={"NEE": [1, 2, 3], "GPP": [1, 2, 3]})
    for ok in (None, 0, 3):
        check_n_bootstrap(bundle, ok)
    with pytest.raises(ValueError, match=r"upscale\.n_bootstrap 99: .*NEE 3.*at most 3"):
        check_n_bootstrap(bundle, 99, "upscale.n_bootstrap")
    with pytest.raises(ValueError, match="n_bootstrap -1"):
        check_n_bootstrap(bundle, -1)


def test_train_config_seed_must_be_a_non_negative_integer(tmp_path: Path) -> None:
    cfg = tmp_path / "train.yaml"
    cfg.write_text("seed: -4\n")
    _refused(["train", str(tmp_path / "run"), "--config", str(cfg)], "seed", "-4")


@pytest.mark.parametrize(("data", "key", "value"), [
    ({"upscale": {"tile": 0}}, "upscale.tile", "0"),
    ({"upscale": {"tile": -8}}, "upscale.tile", "-8"),
    ({"upscale": {"n_bootstrap": -1}}, "upscale.n_bootstrap", "-1"),
    ({"upscale": {"bootstrap_sample": 0}}, "upscale.bootstrap_sample", "0"),
    ({"upscale": {"start": "2005-01", "end": "2003-12"}}, "upscale", "2005-01"),
    ({"upscale": {"start": "2005-04"}}, "upscale", "2005-04"),
    ({"upscale": {"end": "2005-04"}}, "upscale", "2005-04"),
    ({"upscale": {"seed": -1}}, "upscale.seed", "-1"),
    ({"cluster": {"workers": 0}}, "cluster.workers", "0"),
    ({"cluster": {"workers": -1}}, "cluster.workers", "-1"),
    ({"cluster": {"threads_per_worker": 0}}, "cluster.threads_per_worker", "0"),
    ({"training": {"seed": -1}}, "training.seed", "-1"),
    ({"input": {"n_sites": 0}}, "input.n_sites", "0"),
    ({"input": {"resolution": "30km"}}, "input.resolution", "30km"),
    ({"input": {"start": "2005-01", "end": "2002-12"}}, "input", "2005-01"),
    ({"budgets": {"start_year": 2010, "end_year": 2001}}, "budgets", "2010"),
    ({"budgets": {"start_year": 2001, "end_year": 2002}}, "budgets.start_year", "2002"),
    ({"report": {"fire_year": 2030}}, "report.fire_year", "2030"),
    ({"trends": {"alpha": 0}}, "trends.alpha", "0"),
])
def test_run_config_enforces_the_same_ranges(data: dict[str, Any], key: str,
                                             value: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"output": "out", **data}, source="run.yaml")
    msg = str(e.value)
    assert msg.startswith("run.yaml: ")
    assert key in msg and value in msg


def test_run_config_accepts_whole_year_upscale_periods_and_short_periods_without_trends(
        ) -> None:
    cfg = parse_config({"output": "o", "upscale": {"start": "2002-01", "end": "2003-12"},
                        "budgets": {"start_year": 2002, "end_year": 2003},
                        "trends": {"enabled": False}})
    assert (cfg.upscale.start, cfg.upscale.end) == ("2002-01", "2003-12")


def _option_default(command: Any, name: str) -> Any:
    return inspect.signature(command).parameters[name].default


def test_one_seed_default_across_routes() -> None:
    from abz_dask import cli, training
    from abz_dask.commands import stages
    from abz_dask.pipeline import demo as pipeline
    from abz_dask.training.fit import train_bundle
    from abz_dask.training.folds import fold_ids

    cfg = parse_config({"output": "o"})
    assert cfg.training.seed == cfg.input.seed == cfg.upscale.seed == DEFAULT_SEED  # type: ignore[union-attr]
    for f in (pipeline.run_demo, pipeline.demo_config, training.run_training, train_bundle,
              fold_ids, cli.twin, cli.demo):
        assert _option_default(f, "seed") == DEFAULT_SEED, f
    # train: no --seed means the config file's seed, else DEFAULT_SEED (and its help says so)
    assert _option_default(stages.train, "seed") is None
    help_text = _text(runner.invoke(app, ["train", "--help"]).output)
    assert f"else {DEFAULT_SEED}" in help_text and "448" not in help_text


def test_train_without_seed_uses_the_default(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib

    from abz_dask.commands import stages

    seen: dict[str, Any] = {}

    def fake_run_stages(config: Any, only: Any, *args: Any, **kw: Any) -> Any:
        assert only == ("extract", "train")
        seen["seed"] = config.training.seed
        raise ValueError("stopped by the test")

    monkeypatch.setattr(stages, "run_stages", fake_run_stages)
    monkeypatch.setattr(stages, "local_cluster", lambda workers: contextlib.nullcontext())
    for name in ("cube.zarr", "zones.zarr", "abcflux_twin.csv"):
        (tmp_path / "run" / "twin").mkdir(parents=True, exist_ok=True)
        (tmp_path / "run" / "twin" / name).touch()
    res = runner.invoke(app, ["train", str(tmp_path / "run")])
    assert res.exit_code == 2 and "stopped by the test" in res.output
    assert seen["seed"] == DEFAULT_SEED
    cfg = tmp_path / "train.yaml"
    cfg.write_text("seed: 7\n")
    runner.invoke(app, ["train", str(tmp_path / "run"), "--config", str(cfg)])
    assert seen["seed"] == 7
    runner.invoke(app, ["train", str(tmp_path / "run"), "--config", str(cfg), "--seed", "3"])
    assert seen["seed"] == 3


def test_local_cluster_closes_quietly(capfd: pytest.CaptureFixture[str]) -> None:
    from abz_dask.commands.common import local_cluster

    before = logging.getLogger("distributed").level
    for _ in range(2):
        with local_cluster(2) as client:
            assert sum(client.gather(client.map(_busy, range(6)))) == 15  # type: ignore[attr-defined]
    err = capfd.readouterr().err
    assert "CommClosedError" not in err and "heartbeat" not in err, err
    assert logging.getLogger("distributed").level == before


def _busy(x: int) -> int:
    import time

    t = time.perf_counter()
    while time.perf_counter() - t < 0.2:
        pass
    return x

