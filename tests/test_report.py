"""HTML report and the ``abz-dask table1`` / ``abz-dask report`` commands on the test run."""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import make_run
from matplotlib.figure import Figure
from typer.testing import CliRunner

from abz_dask.report.maps import NEE_BREAKS, class_map


@pytest.fixture(scope="module")
def run_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = make_run(tmp_path_factory.getbasetemp())
    dst = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(src, dst)
    # a PNG written by "another stage", to be embedded as it is
    (dst / "training").mkdir()
    fig = Figure(figsize=(1, 1))
    fig.subplots().plot([0, 1])
    fig.savefig(dst / "training" / "cv_performance.png")
    # LOSO CV predictions of burned sites for the post-fire bias step
    rng = np.random.default_rng(0)
    rows = [{"flux": "NEE", "row": i, "site_id": f"s{i % 6}", "year": 2001 + i % 4,
             "month": 5 + (i // 6) % 3, "disturbance": "Fire", "disturb_year": 1995 + i % 6,
             "obs [g C m-2 month-1]": rng.normal(5, 3), "pred [g C m-2 month-1]": 0.0}
            for i in range(120)]
    pd.DataFrame(rows).to_csv(dst / "training" / "cv_predictions.csv", index=False)
    return dst


def test_cli_report_and_table1(run_copy: Path) -> None:
    from abz_dask.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["table1", str(run_copy), "--start", "2001", "--end", "2004"])
    assert res.exit_code == 0, res.output
    assert "| ABZ |" in res.output and (run_copy / "table1.md").exists()
    res = runner.invoke(app, ["report", str(run_copy), "--start", "2001", "--end", "2004"])
    assert res.exit_code == 0, res.output
    assert "fig1a_mean_nee_map" in res.output and "training/cv_performance" in res.output
    page = (run_copy / "report.html").read_text()
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(imgs) >= 8
    for b in imgs:
        assert base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n"
    # the other stage's PNG is embedded byte for byte
    own = base64.b64encode((run_copy / "training" / "cv_performance.png").read_bytes())
    assert own.decode() in imgs
    assert "src=\"http" not in page and "<script" not in page  # self-contained
    # Table 1 numbers in the page are those of the CSV
    t1 = pd.read_csv(run_copy / "table1.csv").set_index(["domain", "flux"])
    assert f"{t1.loc[('abz', 'NEE'), 'budget']:,.0f}" in page
    for name in ("budget_trends", "region_biome", "monthly_means", "postfire_correction"):
        assert (run_copy / "report" / f"{name}.csv").stat().st_size > 0, name
    corr = pd.read_csv(run_copy / "report" / "postfire_correction.csv")
    assert set(corr["domain"]) == {"abz", "tundra", "boreal", "permafrost"}


def test_cli_errors_are_clear(tmp_path: Path) -> None:
    from abz_dask.cli import app

    res = CliRunner().invoke(app, ["report", str(tmp_path / "none")])
    assert res.exit_code == 2
    assert "does not exist" in res.output


def test_class_map_colours_follow_breaks() -> None:
    """Every class of Fig. 1a gets its own colour at the right side of each break."""
    x = np.arange(7) * 1e5
    vals = np.array([-80.0, -40.0, -10.0, 10.0, 40.0, 80.0, np.nan])
    field = xr.DataArray(np.tile(vals, (7, 1)), dims=("y", "x"), coords={"y": x[::-1], "x": x})
    fig = Figure()
    ax = fig.subplots()
    class_map(fig, ax, field, NEE_BREAKS, [str(i) for i in range(6)], title="t")
    img = ax.images[0]
    rgba = img.to_rgba(img.get_array())[0]  # first image row = the values left to right
    assert len({tuple(c) for c in rgba[:6]}) == 6
    assert rgba[6][3] == 0  # NaN is transparent
    assert img.get_extent() == pytest.approx((-50, 650, -50, 650))  # km, cell edges
    with pytest.raises(ValueError, match="breaks need"):
        class_map(fig, ax, field, NEE_BREAKS, ["a"])
