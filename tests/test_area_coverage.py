"""No silent area loss: domain cells whose predictors have no data are excluded from the budgets
with the excluded area recorded, stated in budgets and Table 1, and printed (or an error above a
threshold)."""

from __future__ import annotations

import shutil
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr
import zarr

from abz_dask.geo.grid import Grid
from abz_dask.training import load_bundle
from abz_dask.upscale import (
    UpscaleConfig,
    budget_table,
    compile_bundle,
    covered_area,
    excluded_area_message,
    run_upscale,
)

pytestmark = pytest.mark.timeout(600)

HOLE = (slice(22, 28), slice(60, 70))  # rows, columns of the 100-km grid without tair data


@pytest.fixture(scope="module")
def holed(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The tiny run's cube with a block of cells whose tair is missing in every month, and the
    flux stores upscaled from it and from the complete cube."""
    root = tmp_path_factory.mktemp("holed")
    cube = root / "cube.zarr"
    shutil.copytree(tiny_run / "twin" / "cube.zarr", cube)
    tair = zarr.open_array(str(cube / "tair"), mode="r+")
    block = tair[:, HOLE[0], HOLE[1]]
    tair[:, HOLE[0], HOLE[1]] = np.full_like(block, np.nan)
    models = compile_bundle(load_bundle(tiny_run / "models",
                                        cube=xr.open_zarr(cube, consolidated=False)),
                            n_bootstrap=2)
    zones = tiny_run / "twin" / "zones.zarr"
    with dask.config.set(scheduler="threads"):
        run_upscale(cube, zones, root / "holed.zarr", models, UpscaleConfig(tile=16),
                    progress=False)
        run_upscale(tiny_run / "twin" / "cube.zarr", zones, root / "full.zarr", models,
                    UpscaleConfig(tile=16), progress=False)
    return root / "holed.zarr", root / "full.zarr", zones


def _abz_area(zones: xr.Dataset, mask: np.ndarray, res: float) -> float:
    """ABZ land area (10⁶ km²) of the cells in ``mask``: cells × land fraction × cell area."""
    cell = Grid.from_preset(res).cell_area
    lf = zones["land_fraction"].values.astype(np.float64) * zones["abz"].values.astype(bool)
    return float((lf * mask).sum() * cell / 1e12)


def test_budgets_state_the_area_with_data(holed: tuple[Path, Path, Path]) -> None:
    store, full, zpath = holed
    zones = xr.open_zarr(zpath, consolidated=False)
    res = float(xr.open_zarr(store, consolidated=False).attrs["grid_resolution_m"])
    every = np.ones(zones["abz"].shape, bool)
    hole = np.zeros_like(every)
    hole[HOLE] = True
    assert _abz_area(zones, hole, res) > 0.1  # the hole does cut into the domain

    area = covered_area(store).set_index("domain")
    assert area.loc["abz", "area_mkm2"] == pytest.approx(_abz_area(zones, every, res), rel=1e-6)
    assert area.loc["abz", "area_predicted_mkm2"] == pytest.approx(
        _abz_area(zones, every & ~hole, res), rel=1e-6)
    assert area.loc["abz", "excluded_area_mkm2"] == pytest.approx(_abz_area(zones, hole, res),
                                                                  rel=1e-6)
    ok = covered_area(full).set_index("domain")
    assert (ok["excluded_area_mkm2"] == 0).all()
    assert excluded_area_message(budget_table(full)) is None

    tab = budget_table(store)
    msg = excluded_area_message(tab)
    assert msg is not None and "abz" in msg
    assert f"{_abz_area(zones, hole, res):.3f} of {_abz_area(zones, every, res):.3f}" in msg

    # the budget is the full run's minus exactly the hole's cells (maps of the full run)
    fx = xr.open_zarr(full, consolidated=False)
    cell = Grid.from_preset(res).cell_area
    lf = zones["land_fraction"].values.astype(np.float64) * zones["abz"].values.astype(bool)
    whole = tab.set_index(["domain", "flux"]).loc[("abz", "NEE"), "estimate_tg_c_yr"]
    ref = budget_table(full).set_index(["domain", "flux"]).loc[("abz", "NEE"),
                                                              "estimate_tg_c_yr"]
    nee = fx["NEE"].values.astype(np.float64)
    years = fx["time"].dt.year.values
    lost = np.mean([np.nansum(nee[years == y][:, hole] * (lf[hole] * cell)) * 1e-12
                    for y in np.unique(years)])
    assert whole == pytest.approx(ref - lost, rel=1e-4, abs=1e-3)


def test_table1_per_area_means_divide_by_the_area_with_data(holed: tuple[Path, Path, Path]
                                                          ) -> None:
    from abz_dask.analyses.table1 import domain_table

    store, _, zpath = holed
    zones = xr.open_zarr(zpath, consolidated=False)
    ds = xr.open_zarr(store, consolidated=False)
    cell = Grid.from_preset(float(ds.attrs["grid_resolution_m"])).cell_area
    tab = domain_table(ds, zones, cell, start=2001, end=2003,
                       fluxes=("NEE", "GPP", "Reco")).set_index(["domain", "flux"])
    r = tab.loc[("abz", "GPP")]
    area = covered_area(store).set_index("domain").loc["abz"]
    assert r["area_predicted_mkm2"] == pytest.approx(area["area_predicted_mkm2"], rel=1e-6)
    assert r["area_predicted_mkm2"] < r["area_mkm2"]
    # per-area mean × area with data = the maps' budget (not × the full area)
    assert r["per_area_mean"] * r["area_predicted_mkm2"] == pytest.approx(r["map_budget"],
                                                                         rel=1e-6)


def test_budgets_stage_warns_or_fails_above_the_threshold(holed: tuple[Path, Path, Path],
                                                          tmp_path: Path) -> None:
    import pandas as pd

    from abz_dask.pipeline.config import parse_config
    from abz_dask.pipeline.runner import RunContext, _budgets

    store, _, zones = holed
    run = tmp_path / "run"
    shutil.copytree(store, run / "fluxes.zarr")
    shutil.copytree(store.with_name(store.name + ".done"), run / "fluxes.zarr.done")
    base = {"output": str(run), "budgets": {"start_year": 2001, "end_year": 2003},
            "input": {"kind": "files", "cube": str(zones), "zones": str(zones),
                      "abcflux": str(zones)},
            "trends": {"enabled": False}, "report": {"enabled": False}}
    info = _budgets(RunContext(parse_config(base)))
    (msg,) = info["warnings"]
    assert "abz" in msg and "M km²" in msg
    tab = pd.read_csv(run / "budgets.csv").set_index(["domain", "flux"])
    area = covered_area(store).set_index("domain")
    assert tab.loc[("abz", "NEE"), "excluded_area_mkm2"] == pytest.approx(
        area.loc["abz", "excluded_area_mkm2"], rel=1e-12)
    frac = float((area["excluded_area_mkm2"] / area["area_mkm2"]).max())
    strict = {**base, "budgets": {**base["budgets"], "max_excluded_area": frac / 2}}
    with pytest.raises(ValueError, match="max_excluded_area"):
        _budgets(RunContext(parse_config(strict)))
    loose = {**base, "budgets": {**base["budgets"], "max_excluded_area": min(1.0, frac * 2)}}
    assert _budgets(RunContext(parse_config(loose)))["warnings"] == [msg]


def test_budgets_command_any_period_and_layer(holed: tuple[Path, Path, Path],
                                              tmp_path: Path) -> None:
    import pandas as pd
    from typer.testing import CliRunner

    from abz_dask.aggregation.zonal import zonal_budget_table
    from abz_dask.cli import app

    store, _, zones = holed
    run = tmp_path / "run"
    shutil.copytree(store, run / "fluxes.zarr")
    shutil.copytree(store.with_name(store.name + ".done"), run / "fluxes.zarr.done")
    shutil.copytree(zones, run / "twin" / "zones.zarr")
    cli = CliRunner()
    res = cli.invoke(app, ["budgets", str(run), "--start", "2002", "--end", "2003",
                           "--out", str(tmp_path / "b.csv")])
    assert res.exit_code == 0, res.output
    assert "budgets exclude domain cells" in res.output  # the warning (stderr, mixed in)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "b.csv"),
                                  budget_table(store, 2002, 2003), check_exact=False, rtol=1e-12)
    res = cli.invoke(app, ["budgets", str(run), "--layer", "biome", "--out",
                           str(tmp_path / "z.csv")])
    assert res.exit_code == 0, res.output
    ref = zonal_budget_table(store, xr.open_zarr(zones, consolidated=False), "biome")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "z.csv"), ref, check_exact=False,
                                  rtol=1e-12)
    res = cli.invoke(app, ["budgets", str(run), "--start", "2010"])
    assert res.exit_code == 2 and "no whole year" in res.output
