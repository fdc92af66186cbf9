"""The blocked-CV interval (``interval: blocked_cv``): the CV error by hand, the domain
partition, the folds of whole clusters, and the run's budgets / Table 1 showing it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import TINY_PROFILE

from abz_dask.aggregation.budgets import domain_weights
from abz_dask.aggregation.intervals import blocked_cv_error, partitions, with_interval
from abz_dask.training.profiles import resolve_profile

CELL = 1e10  # m² per cell of the hand-made grid


def _zones(abz_beyond_biomes: bool = False) -> xr.Dataset:
    biome = np.array([[1, 1, 2], [2, 2, 0]], dtype=np.int8)
    z = xr.Dataset({
        "biome": (("y", "x"), biome),
        "abz": (("y", "x"), biome > 0),
        "permafrost": (("y", "x"), np.array([[1, 0, 0], [1, 0, 0]], dtype=bool)),
        "land_fraction": (("y", "x"), np.array([[1.0, 0.5, 1.0], [1.0, 1.0, 1.0]],
                                               dtype=np.float32)),
    }, coords={"y": [1.0, 0.0], "x": [0.0, 1.0, 2.0]})
    if abz_beyond_biomes:  # an ABZ cell of neither biome: tundra + boreal do not cover it
        z["abz"] = z["abz"] | ((z.y == 0) & (z.x == 2))
    return z


def _held() -> pd.DataFrame:
    """Residuals (pred − obs, obs 0) of 4 sites; D lies outside the ABZ."""
    rows = [("A", 1, 2.0, 0, 0), ("A", 1, 4.0, 0, 0), ("A", 7, -1.0, 0, 0),
            ("B", 7, 3.0, 0, 1), ("C", 1, 1.0, 1, 0), ("D", 1, 50.0, 1, 2)]
    return pd.DataFrame(rows, columns=["site_id", "month", "pred", "cell_row", "cell_col"]
                        ).assign(obs=0.0)


def test_blocked_cv_error_by_hand() -> None:
    """Per domain: per calendar month the mean over sites of each site's mean residual, summed
    over the months, × the domain's area (cell area × land fraction) × 1e-12."""
    got = blocked_cv_error({"NEE": _held()}, _zones(), CELL).set_index("domain")
    # tundra (cells (0,0) and (0,1): area 1.5 cells): month 1 A = 3; month 7 mean(A −1, B 3) = 1
    assert got.loc["tundra", "cv_error_tg_c_yr"] == pytest.approx(4.0 * 1.5 * CELL * 1e-12)
    # boreal (3 cells): month 1 C = 1
    assert got.loc["boreal", "cv_error_tg_c_yr"] == pytest.approx(1.0 * 3 * CELL * 1e-12)
    # abz = tundra + boreal, stratified: not the direct site mean (3 g over 4.5 cells, 0.135)
    assert got.loc["abz", "cv_error_tg_c_yr"] == pytest.approx(0.06 + 0.03)
    assert got.loc["abz", "strata"] == "tundra+boreal" and got.loc["abz", "n_sites"] == 3
    # permafrost (2 cells, direct): month 1 mean(A 3, C 1) = 2; month 7 A = −1
    assert got.loc["permafrost", "cv_error_tg_c_yr"] == pytest.approx(1.0 * 2 * CELL * 1e-12)
    assert got.loc["permafrost", "strata"] == "" and got.loc["permafrost", "n_sites"] == 2
    assert got.loc["tundra", "error_g_c_m2_yr"] == pytest.approx(4.0)


def test_domain_without_sites_has_no_cv_error() -> None:
    held = _held()
    held = held[held["site_id"] != "C"]  # no boreal site left
    got = blocked_cv_error({"GPP": held}, _zones(), CELL).set_index("domain")
    assert np.isnan(got.loc["boreal", "cv_error_tg_c_yr"]) and got.loc["boreal", "n_sites"] == 0
    # abz falls back to its own sites (A, B: month 1 3, month 7 1) over its whole area
    assert got.loc["abz", "strata"] == ""
    assert got.loc["abz", "cv_error_tg_c_yr"] == pytest.approx(4.0 * 4.5 * CELL * 1e-12)


def test_partitions() -> None:
    w = domain_weights(_zones(), CELL)
    assert partitions(w) == {"abz": ["tundra", "boreal"]}
    assert partitions(domain_weights(_zones(abz_beyond_biomes=True), CELL)) == {}
    assert partitions(w.chunk({"y": 1})) == {"abz": ["tundra", "boreal"]}  # lazy zones


def test_missing_columns_are_named() -> None:
    with pytest.raises(ValueError, match=r"lack column\(s\) \['cell_col', 'cell_row'\]"):
        blocked_cv_error({"NEE": _held().drop(columns=["cell_row", "cell_col"])}, _zones(),
                         CELL)


def test_with_interval_adds_in_quadrature() -> None:
    bud = pd.DataFrame({"domain": ["abz", "abz", "abz"], "flux": ["NEE", "GPP", "NEE+fire"],
                        "boot_sd_tg_c_yr": [3.0, 5.0, 6.0]})
    cv = pd.DataFrame({"domain": ["abz", "abz"], "flux": ["NEE", "GPP"],
                       "cv_error_tg_c_yr": [-4.0, 12.0]})
    out = with_interval(bud, cv)
    assert out["interval_sd_tg_c_yr"].tolist() == [5.0, 13.0, pytest.approx(np.hypot(6, 4))]
    assert out["cv_error_tg_c_yr"].tolist() == [-4.0, 12.0, -4.0]  # NEE+fire takes NEE's
    assert set(out["interval_method"]) == {"bootstrap+blocked_cv"}


def test_profile_field_dumps_only_when_chosen() -> None:
    light = resolve_profile("light").model_dump(mode="json")
    assert "interval" not in light and "bootstrap_cluster_km" not in light
    cv = resolve_profile({"base": "light", "interval": "blocked_cv"}).model_dump(mode="json")
    assert cv["interval"] == "blocked_cv" and cv["bootstrap_cluster_km"] == 1000.0
    with pytest.raises(ValueError, match="interval"):
        resolve_profile({"base": "light", "interval": "conformal"})


@pytest.fixture(scope="module")
def cv_run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run retrained with ``interval: blocked_cv`` and run through budgets and Table 1."""
    from abz_dask.pipeline.config import parse_config
    from abz_dask.pipeline.runner import run_pipeline

    run = tmp_path_factory.mktemp("cv_run") / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("models", "*.lock"))
    cfg = parse_config({"output": str(run), "progress": False,
                        "input": {"kind": "twin", "resolution": "100km", "start": "2001-01",
                                  "end": "2003-12", "seed": 0},
                        "training": {"profile": {**TINY_PROFILE, "bootstrap_unit": "cluster",
                                                 "interval": "blocked_cv"}, "seed": 448},
                        "budgets": {"start_year": 2001, "end_year": 2003},
                        "trends": {"enabled": False}})
    with dask.config.set(scheduler="threads"):
        run_pipeline(cfg, only=("train", "upscale", "budgets", "table1"))
    return run


def test_blocked_cv_holds_out_whole_clusters(cv_run: Path) -> None:
    from abz_dask.training.bundle import load_bundle
    from abz_dask.training.fit import site_clusters

    bundle = load_bundle(cv_run / "models")
    assert bundle.card["interval"]["method"] == "blocked_cv"
    for flux, held in bundle.blocked_cv.items():
        cv = bundle.cv_predictions[flux]
        assert len(held) == len(cv) and held["pred"].notna().all()
        assert (held[["site_id", "year", "month"]].to_numpy()
                == cv[["site_id", "year", "month"]].to_numpy()).all()
        table = pd.read_parquet(cv_run / "training" / "training_table.parquet")
        rows = table.iloc[held["row"].to_numpy()]
        clusters = site_clusters(rows["site_id"].astype(str).to_numpy(),
                                 rows.filter(like="latitude").iloc[:, 0].to_numpy(),
                                 rows.filter(like="longitude").iloc[:, 0].to_numpy(), 1000.0)
        per = pd.DataFrame({"cluster": clusters, "fold": held["fold"].to_numpy()})
        assert (per.groupby("cluster")["fold"].nunique() == 1).all()  # a cluster: one fold
        assert per["fold"].nunique() == TINY_PROFILE["n_folds"]
        assert (held["cell_row"].to_numpy() == rows["row"].to_numpy()).all()


def test_run_budgets_and_table1_show_the_interval(cv_run: Path) -> None:
    from abz_dask.geo.grid import Grid
    from abz_dask.training.bundle import read_cv_tables

    bud = pd.read_csv(cv_run / "budgets.csv")
    zones = xr.open_zarr(cv_run / "twin" / "zones.zarr", consolidated=False)
    ref = blocked_cv_error(read_cv_tables(cv_run / "models" / "blocked_cv.csv"), zones,
                           Grid.of_dataset(zones).cell_area).set_index(["domain", "flux"])
    for _, r in bud[bud["flux"] != "NEE+fire"].iterrows():
        cv = ref.loc[(r["domain"], r["flux"]), "cv_error_tg_c_yr"]
        assert r["cv_error_tg_c_yr"] == pytest.approx(cv, rel=1e-12)
        assert r["interval_sd_tg_c_yr"] == pytest.approx(np.hypot(r["boot_sd_tg_c_yr"], cv))
        assert r["interval_method"] == "bootstrap+blocked_cv"
    md = (cv_run / "table1.md").read_text()
    assert "blocked-CV error" in md
    est = pd.read_csv(cv_run / "table1.csv")
    abz = est[(est["domain"] == "abz") & (est["flux"] == "NEE")].iloc[0]
    assert f"±{abz['budget_interval_sd']:,.0f}" in md
    meta = json.loads((cv_run / "table1.json").read_text())
    assert "interval: blocked_cv" in json.dumps(meta, ensure_ascii=False)


def test_interval_note_names_the_blocked_cv_method() -> None:
    from abz_dask.analyses.table1 import interval_note

    card = {"bootstrap": {"replicates": 20, "resampling": "spatial clusters of sites"},
            "profile": {"name": "paper-blocked-cv", "bootstrap_unit": "cluster"},
            "interval": {"method": "blocked_cv", "folds": "5 folds of spatial clusters"}}
    note = interval_note(card)
    assert note.startswith("budget ± = √(bootstrap SD² + blocked-CV error²)")
    assert "Bootstrap: SD over the 20 bootstrap budgets" in note
    assert "over 5 folds of spatial clusters" in note and "lower bound" not in note
