"""``abz-dask train`` and ``abz-dask upscale`` on the tiny twin run: flags, config file, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import TINY_PROFILE
from typer.testing import CliRunner

from abz_dask.cli import app

pytestmark = pytest.mark.timeout(600)
runner = CliRunner()


def test_train_from_a_config_file_with_flag_overrides(tiny_run: Path, tmp_path: Path) -> None:
    prof = tmp_path / "tiny.yaml"
    prof.write_text(yaml.safe_dump({**TINY_PROFILE, "n_bootstrap": 2}))
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({"cube": str(tiny_run / "twin" / "cube.zarr"),
                                   "zones": str(tiny_run / "twin" / "zones.zarr"),
                                   "sites": str(tiny_run / "twin" / "abcflux_twin.csv"),
                                   "profile": "paper", "fluxes": ["NEE", "GPP", "Reco"]}))
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", str(run), "--config", str(cfg), "--profile", str(prof),
                              "--flux", "NEE", "--workers", "1"])
    assert res.exit_code == 0, res.output
    card = json.loads((run / "models" / "card.json").read_text())
    assert card["fluxes"] == ["NEE"]                         # flag beats the config file
    assert card["profile"]["name"] == "tiny"                 # --profile beats the config
    assert len(card["models"]["NEE"]["bootstraps"]) == 2
    assert "CV R²" in res.output
    pooled = pd.read_csv(run / "training" / "metrics_pooled.csv")
    assert list(pooled["flux"]) == ["NEE"]
    assert (run / "training" / "extract_report.csv").exists()


@pytest.mark.parametrize(("content", "message"), [
    ({"cube": "x", "n_trees": 5}, "unknown key(s) ['n_trees']"),
    ({"profile": "fast"}, "unknown training profile 'fast'"),
])
def test_train_config_errors_exit_non_zero(tiny_run: Path, tmp_path: Path, content: dict,
                                           message: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(content))
    args = ["train", str(tmp_path / "run"), "--config", str(cfg)]
    if "cube" not in content:
        args += ["--cube", str(tiny_run / "twin" / "cube.zarr"), "--zones",
                 str(tiny_run / "twin" / "zones.zarr"), "--sites",
                 str(tiny_run / "twin" / "abcflux_twin.csv")]
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert message in res.output
    assert not (tmp_path / "run" / "models").exists()       # nothing half-written


def test_upscale_reports_the_projection_and_refuses_missing_models(tiny_run: Path,
                                                                   tmp_path: Path) -> None:
    res = runner.invoke(app, ["upscale", str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "does not exist" in res.output
    run = tmp_path / "run"
    shutil.copytree(tiny_run / "models", run / "models")
    res = runner.invoke(app, ["upscale", str(run), "--cube", str(tiny_run / "twin" / "cube.zarr"),
                              "--zones", str(tiny_run / "twin" / "zones.zarr"), "--n-bootstrap",
                              "2", "--workers", "1", "--bootstrap-sample", "0.5"])
    assert res.exit_code == 0, res.output
    assert "core-hours" in res.output and "f=0.1" in res.output and "f=0.5" in res.output
    assert (run / "fluxes.zarr").exists()
    # the projection to plan with is the 500-tree benchmark's: 20.7 M land cells x 240 months
    # x 3 fluxes x (1 + 20 f) forests x 500 trees at the benchmark's tree-rows per core-second
    from abz_dask.upscale.results import BENCHMARK_TREE_ROWS_PER_CORE_S as rate

    for f in (1.0, 0.1):
        hours = 20.7e6 * 240 * 3 * (1 + 20 * f) * 500 / rate / 3600
        assert f"{hours:,.0f} core-hours at the measured 500-tree rate" in res.output
