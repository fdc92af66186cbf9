"""``abz-dask run --check`` and the start of ``run`` validate everything that needs no cluster:
nested build-cube configurations, input files, the training profile and the periods. Each
problem is one line naming the key or file and the value; the exit code is 2 and no cluster
starts (no run folder is created)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from abz_dask.cli import app

runner = CliRunner()


def _check(tmp_path: Path, cfg: dict[str, Any], *extra: str, started: bool = False
           ) -> tuple[int, str]:
    cfg = {"output": str(tmp_path / "run"), **cfg}
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(cfg))
    res = runner.invoke(app, ["run", str(path), *extra])
    if not started:
        assert not (tmp_path / "run").exists()  # nothing started, nothing written
    return res.exit_code, res.output


def _csv(tmp_path: Path) -> Path:
    p = tmp_path / "sites.csv"
    p.write_text("site_name,latitude,longitude,year,month,nee\n")
    return p


def test_invalid_nested_build_cube_yaml_is_found_by_check(tmp_path: Path) -> None:
    bad = tmp_path / "build.yaml"
    bad.write_text("grid: 50km\nstart: 2001-01\nend: 2002-12\nsourcez: {}\n")
    code, out = _check(tmp_path, {"input": {"kind": "build", "cube_config": str(bad),
                                            "abcflux": str(_csv(tmp_path))}}, "--check")
    assert code == 2
    assert "input.cube_config" in out and "build.yaml" in out and "sourcez" in out


def test_missing_build_cube_sources_are_found_before_the_cluster(twin100: Any,
                                                                 tmp_path: Path) -> None:
    cfg = tmp_path / "build.yaml"
    from abz_dask.twin.export import export_twin

    cfg = export_twin(twin100, tmp_path / "rasters", lonlat_res=2.0).config
    text = cfg.read_text()
    assert "tair/" in text
    cfg.write_text(text.replace("tair/", "nowhere/"))
    code, out = _check(tmp_path, {"input": {"kind": "build", "cube_config": str(cfg),
                                            "abcflux": str(_csv(tmp_path))}})
    assert code == 2 and "input.cube_config" in out and "tair: no file matches" in out, out


@pytest.mark.parametrize(("cfg", "expect"), [
    ({"budgets": {"start_year": 2030, "end_year": 2035},
      "input": {"kind": "twin", "start": "2001-01", "end": "2010-12"}},
     "budgets: 2030..2035 lies outside the twin's period 2001-01..2010-12"),
    ({"training": {"profile": "no_such_profile.yaml"}}, "training.profile"),
    ({"upscale": {"start": "2010-01", "end": "2005-12"}}, "2010-01"),
])
def test_late_errors_come_first(tmp_path: Path, cfg: dict[str, Any], expect: str) -> None:
    code, out = _check(tmp_path, cfg)
    assert code == 2 and expect in out, out


def test_files_input_problems_are_listed_together(tmp_path: Path) -> None:
    (tmp_path / "flux_folder").mkdir()
    code, out = _check(tmp_path, {"input": {"kind": "files", "cube": str(tmp_path / "c.zarr"),
                                            "zones": str(tmp_path / "z.zarr"),
                                            "abcflux": str(tmp_path / "flux_folder")}},
                       "--check")
    assert code == 2
    assert "input.cube:" in out and "c.zarr does not exist" in out
    assert "input.zones:" in out and "z.zarr does not exist" in out
    assert "input.abcflux:" in out and "flux_folder is a folder" in out


def test_force_of_an_unknown_stage_is_an_error(tmp_path: Path) -> None:
    code, out = _check(tmp_path, {}, "--force", "nosuchstage")
    assert code == 2 and "--force nosuchstage: no such stage" in out and "upscale" in out


def test_files_input_zones_that_are_a_cube_are_refused(twin100: Any, tmp_path: Path) -> None:
    code, out = _check(tmp_path, {"input": {"kind": "files", "cube": str(twin100.cube),
                                            "zones": str(twin100.cube),
                                            "abcflux": str(twin100.sites)}}, "--check")
    assert code == 2 and "input.zones" in out and "it is a predictor cube" in out, out


@pytest.mark.parametrize(("cfg", "expect"), [
    ({"input": {"kind": "twin", "start": "1995-01", "end": "2001-12"},
      "budgets": {"start_year": 1996, "end_year": 2001}},
     "input.end 2001-12: the twin's fire record starts in 2002"),
    ({"trends": {"predictors": ["tair", "no_such_var"]}},
     "trends.predictors: 'no_such_var' is not a time series of the cube"),
    ({"trends": {"predictors": ["tair:winterish"]}}, "winterish"),
])
def test_twin_and_trend_settings_checked_first(tmp_path: Path, cfg: dict[str, Any],
                                               expect: str) -> None:
    code, out = _check(tmp_path, cfg, "--check")
    assert code == 2 and expect in out, out


def test_output_under_a_file_is_a_clean_error(tmp_path: Path) -> None:
    from abz_dask.io.ownership import ForeignPathError, claim_folder

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ForeignPathError, match=r"notes\.txt is a file"):
        claim_folder(tmp_path / "notes.txt" / "run")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_unreachable_scheduler_and_bad_cluster_options_are_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, out = _check(tmp_path, {"cluster": {"kind": "address",
                                              "address": f"tcp://127.0.0.1:{port}",
                                              "wait_timeout": 3}}, started=True)
    assert code == 2 and "no scheduler answered within 3 s" in out, out
    assert "Traceback" not in out
    code, out = _check(tmp_path, {"cluster": {"kind": "local", "workers": 1,
                                              "options": {"n_wrokers": 2}}}, started=True)
    assert code == 2 and "cluster.options" in out and "n_wrokers" in out, out
    assert "Traceback" not in out
