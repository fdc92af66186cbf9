"""Table 1: identities, estimate = truth on a store whose central maps are the truth, analytic
bootstrap SD, ratio / fire / in-situ columns recomputed independently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import REPLICATE_SCALE, make_run

from abz_dask.analyses import table1 as t1mod
from abz_dask.pipeline.layout import RunLayout


@pytest.fixture(scope="module")
def run100(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("t1out")


@pytest.fixture(scope="module")
def table(run100: Path, out_dir: Path) -> t1mod.Table1:
    files = {role: out_dir / name for role, name in (
        ("estimate", "table1.csv"), ("truth", "table1_truth.csv"),
        ("checks", "table1_checks.csv"), ("markdown", "table1.md"), ("meta", "table1.json"))}
    return t1mod.write_table1(RunLayout.from_run(run100).table1_inputs(), files, start=2001,
                              end=2004)


def test_files_written(table: t1mod.Table1, out_dir: Path) -> None:
    out = out_dir
    for n in ("table1.csv", "table1_truth.csv", "table1_checks.csv", "table1.md"):
        assert (out / n).stat().st_size > 0, n
    md = (out / "table1.md").read_text()
    assert "| ABZ |" in md and "Planted truth" in md and "Permafrost region" in md
    csv = pd.read_csv(out / "table1.csv")
    assert set(csv["domain"]) == {"abz", "tundra", "boreal", "permafrost"}


def test_read_table1_round_trip(table: t1mod.Table1, out_dir: Path) -> None:
    names = {"estimate": "table1.csv", "truth": "table1_truth.csv",
             "checks": "table1_checks.csv", "markdown": "table1.md", "meta": "table1.json"}
    back = t1mod.read_table1({r: out_dir / n for r, n in names.items()})
    pd.testing.assert_frame_equal(back.estimate, table.estimate, check_exact=False, rtol=1e-15)
    assert back.truth is not None and table.truth is not None
    pd.testing.assert_frame_equal(back.truth, table.truth, check_exact=False, rtol=1e-15)
    assert (back.period, back.fire_period, back.notes) == (table.period, table.fire_period,
                                                           table.notes)
    assert t1mod.table1_markdown(back) == (out_dir / "table1.md").read_text()


def test_interval_note_names_the_bootstrap_method() -> None:
    card = {"bootstrap": {"replicates": 20, "resampling": "rows with replacement"},
            "profile": {"name": "light", "bootstrap_unit": "row"}}
    note = t1mod.interval_note(card)
    assert "20 bootstrap budgets" in note and "rows with replacement" in note
    assert "profile light" in note and "lower bound" in note
    site = {"bootstrap": {"replicates": 20, "resampling": "sites with replacement"},
            "profile": {"name": "mine", "bootstrap_unit": "site"}}
    assert "lower bound" not in t1mod.interval_note(site)
    assert "does not name" in t1mod.interval_note({})


def test_table1_of_a_run_names_its_interval(run100: Path, tmp_path: Path) -> None:
    import dataclasses
    import json

    card = {"bootstrap": {"replicates": 3, "resampling": "sites with replacement, all rows "
                          "of each"}, "profile": {"name": "p", "bootstrap_unit": "site"}}
    (tmp_path / "card.json").write_text(json.dumps(card))
    inputs = RunLayout.from_run(run100).table1_inputs()
    assert inputs.card is None  # this synthetic run has no models: no note
    t1 = t1mod.build_table1(dataclasses.replace(inputs, card=tmp_path / "card.json"),
                            start=2001, end=2004)
    assert t1.notes["interval"] == t1mod.interval_note(card)
    assert "sites with replacement" in t1mod.table1_markdown(t1)


def test_fire_store_without_emissions_gives_no_nee_plus_fire(run100: Path,
                                                               tmp_path: Path) -> None:
    """A build-cube fire section may give burned fraction only: Table 1 then has no NEE +
    fire (and no fire period) instead of failing."""
    import dataclasses

    inputs = RunLayout.from_run(run100).table1_inputs()
    assert inputs.fire is not None
    fire = xr.open_zarr(inputs.fire, consolidated=False).drop_vars("fire_emissions")
    fire.load().to_zarr(tmp_path / "fire.zarr", zarr_format=3, consolidated=False)
    t1 = t1mod.build_table1(dataclasses.replace(inputs, fire=tmp_path / "fire.zarr"),
                            start=2001, end=2004)
    assert t1.estimate["nee_plus_fire"].isna().all() and t1.fire_period is None
    full = t1mod.build_table1(inputs, start=2001, end=2004)
    assert full.estimate.loc[full.estimate["flux"] == "NEE", "nee_plus_fire"].notna().all()


def test_identities_hold(table: t1mod.Table1) -> None:
    c = table.checks
    assert c["passed"].all()
    assert (c["check"] == "tundra + boreal = abz (budget)").sum() == 3
    assert (c["check"] == "per-area mean x area = budget").sum() == 12


def test_identity_check_detects_violation(table: t1mod.Table1) -> None:
    bad = table.estimate.copy()
    i = bad.index[(bad["domain"] == "tundra") & (bad["flux"] == "NEE")][0]
    bad.loc[i, "budget"] += 5.0
    c = t1mod.check_identities(bad)
    failed = c[~c["passed"]]
    assert set(failed["check"]) == {"tundra + boreal = abz (budget)",
                                    "per-area mean x area = budget"}
    assert set(failed["flux"]) == {"NEE"}


def test_estimate_equals_truth_and_twin_budgets(table: t1mod.Table1, run100: Path) -> None:
    est = table.estimate.set_index(["domain", "flux"])
    tru = table.truth.set_index(["domain", "flux"])  # type: ignore[union-attr]
    for col in ("budget", "per_area_mean", "ratio_summer_nonsummer", "nee_plus_fire"):
        a, b = est[col].to_numpy(float), tru[col].to_numpy(float)
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9, err_msg=col)
    tb = pd.read_csv(run100 / "twin" / "truth_budgets.csv")
    ref = tb.groupby(["domain", "flux"])["budget_tg_c_yr"].mean()
    for (d, f), v in ref.items():
        assert est.loc[(d, f), "budget"] == pytest.approx(v, rel=1e-6)


def test_bootstrap_sd_is_analytic(table: t1mod.Table1) -> None:
    for r in table.estimate.itertuples():
        assert r.budget_boot_sd == pytest.approx(abs(r.budget) * np.std(REPLICATE_SCALE, ddof=1),
                                                 rel=1e-9)


def test_ratio_fire_and_area_by_numpy(table: t1mod.Table1, run100: Path) -> None:
    tw = run100 / "twin"
    zones = xr.open_zarr(tw / "zones.zarr", consolidated=False).load()
    truth = xr.open_zarr(tw / "truth.zarr", consolidated=False)["NEE"].load()
    fire = xr.open_zarr(tw / "fire.zarr", consolidated=False)["fire_emissions"].load()
    cell = 1e10
    m = zones["abz"].values
    area = zones["land_fraction"].values.astype(float) * cell * m
    nee = np.nan_to_num(truth.values.astype(float))
    monthly = (nee * area).sum(axis=(1, 2)) * 1e-12
    month = truth["time"].dt.month.values
    year = truth["time"].dt.year.values
    summer = np.mean([monthly[(year == y) & np.isin(month, (6, 7, 8))].sum()
                      for y in range(2001, 2005)])
    non = np.mean([monthly[(year == y) & ~np.isin(month, (6, 7, 8))].sum()
                   for y in range(2001, 2005)])
    r = table.estimate.set_index(["domain", "flux"]).loc[("abz", "NEE")]
    assert r["ratio_summer_nonsummer"] == pytest.approx(abs(summer) / non, rel=1e-6)
    fb = [(np.nan_to_num(fire.sel(year=y).values) * cell * m).sum() * 1e-12
          for y in (2002, 2003, 2004)]
    annual = [monthly[year == y].sum() for y in (2002, 2003, 2004)]
    assert r["nee_plus_fire"] == pytest.approx(np.mean(np.add(annual, fb)), rel=1e-6)
    assert r["fire_budget"] == pytest.approx(np.mean(fb), rel=1e-6)
    assert r["area_mkm2"] == pytest.approx(area.sum() / 1e12, rel=1e-9)


def test_in_situ_complete_site_years_only() -> None:
    rows = []
    for m in range(1, 13):  # site A: 2001 complete (sum 12 × 2), 2002 only 11 months
        rows.append({"site_id": "A", "year": 2001, "month": m, "NEE": 2.0})
        if m < 12:
            rows.append({"site_id": "A", "year": 2002, "month": m, "NEE": 100.0})
        rows.append({"site_id": "B", "year": 2001, "month": m, "NEE": -1.0})
        rows.append({"site_id": "B", "year": 2003, "month": m, "NEE": -3.0})
    obs = pd.DataFrame(rows)
    dom = pd.DataFrame({"abz": [True, True], "tundra": [True, False]}, index=["A", "B"])
    got = t1mod.in_situ_stats(obs, site_domains=dom, fluxes=("NEE",)).set_index("domain")
    site_means = np.array([24.0, np.mean([-12.0, -36.0])])
    assert got.loc["abz", "in_situ_mean"] == pytest.approx(site_means.mean())
    assert got.loc["abz", "in_situ_sd"] == pytest.approx(site_means.std(ddof=1))
    assert got.loc["abz", "n_site_years"] == 3
    assert got.loc["tundra", "in_situ_mean"] == pytest.approx(24.0)
    assert got.loc["tundra", "n_sites"] == 1


def test_missing_store_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"fluxes\.zarr"):
        t1mod.build_table1(RunLayout.from_run(tmp_path).table1_inputs())
