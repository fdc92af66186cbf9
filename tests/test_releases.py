"""Releases of a versioned run: ``run --release``, ``history`` and ``diff``.

One run folder is run twice (training seed 448, then 449: new models, so every month changes)
and released as r1 and r2. References: the budgets each run wrote (``budgets.csv``, kept in each
release) for ``diff``'s B − A, the period-mean maps recomputed with numpy from each version for
the difference maps, and r1's own budgets for r1 read back after r2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from conftest import TINY_PROFILE
from test_versioned import copy_run
from typer.testing import CliRunner

from abz_dask.aggregation.zonal import open_flux_store
from abz_dask.cli import app
from abz_dask.io.versioned import history, tags
from abz_dask.pipeline.layout import RunLayout
from abz_dask.pipeline.releases import check_release, tag_release
from abz_dask.upscale.results import budget_table

pytestmark = pytest.mark.timeout(300)


def _yaml(run: Path, seed: int, store: str = "icechunk") -> Path:
    cfg = {"output": str(run), "progress": False, "store": store,
           "input": {"kind": "twin", "resolution": "100km", "start": "2001-01",
                     "end": "2003-12", "seed": 0},
           "training": {"profile": TINY_PROFILE, "seed": seed},
           "upscale": {"tile": 16}, "budgets": {"start_year": 2001, "end_year": 2003},
           "trends": {"enabled": False}, "report": {"enabled": False},
           "cluster": {"kind": "threads"}}
    path = run.parent / f"run-{seed}-{store}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cli(*args: str) -> str:
    res = CliRunner().invoke(app, [*args])
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def released(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run released as r1 (seed 448) and, retrained, as r2 (seed 449)."""
    run = copy_run(tiny_run, tmp_path_factory.mktemp("releases") / "run")
    out = _cli("run", str(_yaml(run, 448)), "--release", "r1")
    assert "release r1: snapshot" in out
    out = _cli("run", str(_yaml(run, 449)), "--release", "r2")
    assert "release r2: snapshot" in out
    return run


def test_releases_keep_their_snapshot_and_outputs(released: Path) -> None:
    repo = released / "fluxes.icechunk"
    r1, r2 = (json.loads((released / "releases" / n / "release.json").read_text())
              for n in ("r1", "r2"))
    assert tags(repo) == {"r1": r1["snapshot"], "r2": r2["snapshot"]}
    assert r1["snapshot"] != r2["snapshot"]
    assert r1["stages"]["train"]["key"] != r2["stages"]["train"]["key"]
    assert r1["stages"]["upscale"]["inputs"] and r1["abz_dask_version"]
    commits = history(repo)
    assert [c["id"] for c in commits] == [r2["snapshot"], r1["snapshot"]]
    for name in ("budgets.csv", "run_config.json", "upscale.stage.json", "models/card.json"):
        assert (released / "releases" / "r1" / name).is_file(), name
    # r1 stays readable after r2: its budgets are the ones the first run wrote
    kept, now = (pd.read_csv(p).set_index(["domain", "flux"]) for p in
                 (released / "releases" / "r1" / "budgets.csv", released / "budgets.csv"))
    again = budget_table(open_flux_store(repo, version="r1"), 2001, 2003).set_index(
        ["domain", "flux"])
    np.testing.assert_array_equal(kept.loc[again.index, "estimate_tg_c_yr"].to_numpy(),
                                  again["estimate_tg_c_yr"].to_numpy())
    assert (now.loc[again.index, "estimate_tg_c_yr"] != again["estimate_tg_c_yr"]).all()


def test_history_lists_releases_and_commits(released: Path) -> None:
    out = _cli("history", str(released))
    print(out)
    rels = json.loads((released / "releases" / "r1" / "release.json").read_text())
    assert "r1" in out and "r2" in out and rels["snapshot"] in out
    assert out.count("upscale") >= 2 and "twin=" in out


def test_diff_equals_the_difference_of_the_released_budgets(released: Path) -> None:
    out = _cli("diff", str(released), "r1", "r2")
    print(out)
    tab = pd.read_csv(released / "diff_r1_r2.csv")
    a, b = (pd.read_csv(released / "releases" / n / "budgets.csv").set_index(["domain", "flux"])
            for n in ("r1", "r2"))
    tab = tab.set_index(["domain", "flux"])
    keys = tab.index
    np.testing.assert_array_equal(tab["r2_minus_r1"].to_numpy(),
                                  (b.loc[keys, "estimate_tg_c_yr"]
                                   - a.loc[keys, "estimate_tg_c_yr"]).to_numpy())
    np.testing.assert_array_equal(tab["boot_sd_r1"].to_numpy(),
                                  a.loc[keys, "boot_sd_tg_c_yr"].to_numpy())
    assert set(tab.index.get_level_values("flux")) == {"NEE", "GPP", "Reco"}
    maps = xr.open_zarr(released / "diff_r1_r2.zarr", consolidated=False)
    repo = released / "fluxes.icechunk"
    for f in ("NEE", "GPP"):
        mean = {v: open_flux_store(repo, version=v)[f].values.reshape(3, 12, *maps[f].shape)
                .sum(axis=1).mean(axis=0) for v in ("r1", "r2")}
        np.testing.assert_allclose(maps[f].values, mean["r2"] - mean["r1"], rtol=1e-5,
                                   atol=1e-3, equal_nan=True)


def test_refusals(released: Path, tmp_path: Path) -> None:
    lay = RunLayout.from_run(released)
    with pytest.raises(FileExistsError, match="r1"):
        tag_release(lay, "r1")
    res = CliRunner().invoke(app, ["run", str(_yaml(released, 449)), "--release", "r2"])
    assert res.exit_code != 0 and "r2" in res.output
    plain = RunLayout.for_twin(tmp_path, "zarr")
    with pytest.raises(ValueError, match="store: icechunk"):
        check_release(plain, "r3")
    with pytest.raises(ValueError, match="neither a tag"):
        open_flux_store(released / "fluxes.icechunk", version="r9")
