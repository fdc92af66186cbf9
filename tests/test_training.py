"""Training: folds, metrics, encoding inside folds, tuning, bootstraps, bundle, profiles."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from abz_dask.geo.grid import Grid
from abz_dask.io.abcflux import read_abcflux
from abz_dask.io.predictors import BOOTSTRAP_PREDICTORS, PREDICTOR_NAMES
from abz_dask.training import (
    PROFILES,
    BundleMismatchError,
    ModelBundle,
    TrainingProfile,
    caret_mtry_grid,
    fold_ids,
    load_bundle,
    resolve_profile,
    run_training,
    train_bundle,
)
from abz_dask.training import fit as fit_mod
from abz_dask.training.diagnostics import cv_metric_tables, disturbance_class
from abz_dask.training.extract import extract_training_table, read_training_table
from abz_dask.training.folds import iter_folds
from abz_dask.training.metrics import grouped_metrics, mae, mbe, metrics, r2, rmse
from abz_dask.training.synthetic import synthetic_cube, synthetic_training_table
from abz_dask.twin import generate_twin

EXAMPLES = Path(__file__).parents[1] / "examples"

#: The smallest profile that still runs every step (used where speed matters, not skill).
TINY = TrainingProfile(name="tiny", cv="group_kfold", n_folds=3, tuning_trees=8,
                       final_trees=10, bootstrap_trees=5, n_bootstrap=3, importance_repeats=2,
                       importance_rows=100, pdp_points=3, pdp_rows=50)


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return synthetic_training_table(n_sites=24, months_per_site=(6, 24), seed=7)


@pytest.fixture(scope="module")
def tiny_bundle(table: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory
                ) -> tuple[ModelBundle, Path]:
    out = tmp_path_factory.mktemp("tiny")
    bundle = run_training(table, out, profile=TINY, seed=5, progress=False)
    return bundle, out


# ---------------------------------------------------------------- folds, grid, metrics

def test_caret_mtry_grid() -> None:
    assert caret_mtry_grid(17) == (2, 9, 17)
    assert caret_mtry_grid(15) == (2, 8, 15)
    assert caret_mtry_grid(3) == (2, 3)
    assert caret_mtry_grid(10) == (2, 6, 10)


@pytest.mark.parametrize("scheme", ["loso", "group_kfold"])
def test_folds_never_share_a_site(scheme: str) -> None:
    rng = np.random.default_rng(0)
    sites = rng.choice([f"s{i}" for i in range(23)], size=400)
    folds = fold_ids(sites, scheme, n_folds=5, seed=448)
    n_sites = len(set(sites))
    assert len(np.unique(folds)) == (n_sites if scheme == "loso" else 5)
    seen: set[str] = set()
    for _, train, test in iter_folds(folds):
        assert not set(sites[train]) & set(sites[test])
        assert len(train) + len(test) == len(sites)
        assert not seen & set(sites[test])
        seen |= set(sites[test])
    assert seen == set(sites)
    if scheme == "group_kfold":  # balanced row counts
        counts = np.bincount(folds)
        assert counts.max() - counts.min() < 0.5 * counts.mean()
    assert np.array_equal(folds, fold_ids(sites, scheme, n_folds=5, seed=448))


def test_metric_formulas_against_hand_values() -> None:
    obs = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    pred = np.array([2.0, 2.0, 4.0, 3.0, 1.0])
    # errors 1, 0, 1, -1; cor = 2.5 / sqrt(5 * 2.75)
    assert rmse(obs, pred) == pytest.approx(np.sqrt(0.75))
    assert mae(obs, pred) == pytest.approx(0.75)
    assert mbe(obs, pred) == pytest.approx(0.25)
    assert r2(obs, pred) == pytest.approx(6.25 / 13.75)
    assert metrics(obs, pred)["n"] == 4
    assert np.isnan(r2([1.0, 1.0], [1.0, 2.0]))
    g = grouped_metrics(pd.DataFrame({"m": [1, 1, 2, 2], "obs": obs[:4], "pred": pred[:4],
                                      "site_id": ["a", "b", "a", "a"]}), "m")
    assert g["n"].tolist() == [2, 2] and g["n_sites"].tolist() == [2, 1]
    assert g["MBE"].tolist() == pytest.approx([0.5, 0.0])
    assert g["RMSE"].tolist() == pytest.approx([np.sqrt(0.5), 1.0])


def test_disturbance_classes() -> None:
    f = pd.DataFrame({"disturbance": ["No", "Fire", "Fire", "Harvest", None],
                      "disturb_year": [np.nan, 2005, 1980, 2000, np.nan],
                      "year": [2010, 2010, 2010, 2010, 2010]})
    assert disturbance_class(f).tolist() == ["none_unknown", "recent_fire", "other_disturbance",
                                             "other_disturbance", "none_unknown"]


# ---------------------------------------------------------------- profiles

def test_profiles_follow_the_decisions(tmp_path: Path) -> None:
    paper = PROFILES["paper"]
    assert (paper.cv, paper.tuning_trees, paper.final_trees, paper.bootstrap_trees) == \
        ("loso", 500, 500, 500)
    assert (paper.min_samples_split, paper.min_samples_leaf, paper.n_bootstrap,
            paper.importance_repeats, paper.mtry_grid) == (6, 1, 20, 100, None)
    light = PROFILES["light"]
    assert light.cv == "group_kfold" and light.n_bootstrap == 20
    assert light.min_samples_split == 6
    with pytest.raises(ValueError, match="extra"):
        TrainingProfile(name="x", n_trees=5)  # type: ignore[call-arg]
    cfg = tmp_path / "p.yaml"
    cfg.write_text("base: light\nfinal_trees: 7\ncv: loso\n")
    p = resolve_profile(cfg)
    assert (p.final_trees, p.cv, p.bootstrap_trees) == (7, "loso", light.bootstrap_trees)
    cfg.write_text("base: light\nfinal_tress: 7\n")
    with pytest.raises(ValueError, match="final_tress"):
        resolve_profile(cfg)
    with pytest.raises(ValueError, match="unknown training profile"):
        resolve_profile("heavy")
    # the example profiles are the light one with one field changed; the named ones keep
    # the paper's row bootstrap and scikit-learn's node-size counting
    for file, field, value, default, bad in [
            ("profile-site-bootstrap.yaml", "bootstrap_unit", "site", "row", "plot"),
            ("profile-randomforest-nodes.yaml", "node_size_counts", "draws", "rows", "leaves")]:
        assert getattr(paper, field) == getattr(light, field) == default
        example = resolve_profile(EXAMPLES / file)
        same = {"name", field}
        assert example.model_dump(exclude=same) == light.model_dump(exclude=same)
        assert getattr(example, field) == value
        with pytest.raises(ValueError, match=field):
            TrainingProfile(**{field: bad})


# ---------------------------------------------------------------- encoding inside folds

def test_encoding_is_fitted_on_training_rows_of_each_fold(table: pd.DataFrame,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    import dask

    calls: list[np.ndarray] = []
    real = fit_mod.fit_encoding

    def spy(frame: pd.DataFrame, *args: object, **kw: object):
        calls.append(frame.index.to_numpy().copy())
        return real(frame, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(fit_mod, "fit_encoding", spy)
    prof = TINY.model_copy(update={"mtry_grid": (3,)})
    data = fit_mod.prepare(table, ["NEE"], prof, seed=1)
    with dask.config.set(scheduler="sync"):
        fit_mod.tune(data, dask.delayed(data), seed=1, progress=False)
    folds = data.fluxes["NEE"].folds
    assert len(calls) == len(np.unique(folds))
    for rows in calls:
        held_out = np.setdiff1d(np.arange(len(folds)), rows)
        assert len(np.unique(folds[held_out])) == 1  # exactly one fold's rows are excluded
        assert np.array_equal(np.sort(held_out), np.flatnonzero(folds == folds[held_out[0]]))


# ---------------------------------------------------------------- end to end, bundle

def test_light_training_recovers_the_planted_signal(tmp_path: Path) -> None:
    tab = synthetic_training_table(n_sites=30, months_per_site=(8, 30), seed=11)
    bundle = run_training(tab, tmp_path, profile="light", seed=448, progress=False)
    m = bundle.metrics
    assert set(m.index) == {"NEE", "GPP", "Reco"}
    assert (m["R2"] > 0.5).all(), m
    for f in bundle.fluxes:
        tuning = pd.DataFrame(bundle.card["models"][f]["tuning"])
        best = tuning["mtry"].to_numpy()[tuning["mean_fold_rmse"].to_numpy().argmin()]
        assert bundle.models[f].mtry == best and set(tuning["mtry"]) == {2, 9, 17}
        cv = bundle.cv_predictions[f]
        assert cv["pred"].notna().all() and len(cv) == tab[f].notna().sum()
        assert metrics(cv["obs"], cv["pred"])["RMSE"] == pytest.approx(m.loc[f, "RMSE"])
        boots = bundle.bootstraps[f]
        assert len(boots) == 20
        assert [b.seed for b in boots] == [448 + b for b in range(1, 21)]
        for b in boots:
            assert b.predictors == BOOTSTRAP_PREDICTORS
            assert b.estimator.n_features_in_ == 15
            assert b.mtry == min(bundle.models[f].mtry, 15) == b.estimator.max_features
        central = bundle.models[f].estimator
        assert central.n_features_in_ == 17 and central.min_samples_split == 6
        assert central.n_estimators == PROFILES["light"].final_trees
    tr = tmp_path / "training"
    for name in ("training_table.parquet", "training_table.csv", "tuning.csv",
                 "metrics_pooled.csv", "metrics_by_month.csv", "metrics_by_disturbance.csv",
                 "metrics_by_biome.csv", "metrics_by_site.csv", "importance.csv",
                 "partial_dependence.csv", "cv_performance.png", "importance.png",
                 "disturbance.png", "partial_dependence.png"):
        assert (tr / name).stat().st_size > 0, name
    imp = pd.read_csv(tr / "importance_summary.csv")
    top_gpp = imp[imp["flux"] == "GPP"].sort_values("mean").iloc[-1]["predictor"]
    assert top_gpp in {"srad", "ndvi", "tair", "soil_temp", "snow_cover", "month"}
    pdp = pd.read_csv(tr / "partial_dependence.csv")
    assert set(pdp["predictor"]) == set(PREDICTOR_NAMES)
    # GPP rises with NDVI in the planted truth
    g = pdp[(pdp["flux"] == "GPP") & (pdp["predictor"] == "ndvi")]
    assert g["partial"].iloc[-1] > g["partial"].iloc[0] + 10


def test_cv_metrics_tables(tiny_bundle: tuple[ModelBundle, Path]) -> None:
    bundle, out = tiny_bundle
    tabs = cv_metric_tables(bundle.cv_predictions)
    pooled = tabs["pooled"].set_index("flux")
    assert np.allclose(pooled["RMSE"], bundle.metrics["RMSE"])
    bm = tabs["by_month"]
    nee = bm[bm["flux"] == "NEE"]
    assert nee["n"].sum() == bundle.metrics.loc["NEE", "n"]
    cv = bundle.cv_predictions["NEE"]
    jul = cv[cv["month"] == 7]
    mbe_jul = nee.loc[nee["month"] == 7, "MBE"].to_numpy()[0]
    assert mbe_jul == pytest.approx((jul["pred"] - jul["obs"]).mean())
    written = pd.read_csv(out / "training" / "metrics_by_site.csv")
    assert set(written["site_id"]) == set(cv["site_id"])


def test_bundle_round_trip(tiny_bundle: tuple[ModelBundle, Path], table: pd.DataFrame
                           ) -> None:
    bundle, out = tiny_bundle
    card = json.loads((out / "models" / "card.json").read_text())
    entry = card["models"]["NEE"]["central"]
    assert entry["predictors"] == list(PREDICTOR_NAMES)
    assert set(entry["encoding"]["codes"]["month"]) == {str(m) for m in range(1, 13)}
    assert card["training_table"]["sha256"] and card["versions"]["scikit-learn"]
    assert card["tree_settings"]["min_samples_split"] == 6
    assert card["seed"] == 5 and card["profile"]["name"] == "tiny"
    assert not list((out / "models").rglob("*.pkl"))
    loaded = load_bundle(out / "models")
    assert loaded.fluxes == bundle.fluxes == ["NEE", "GPP", "Reco"]
    for f in bundle.fluxes:
        a, b = bundle.models[f], loaded.models[f]
        assert a.predictors == b.predictors and a.mtry == b.mtry
        assert a.encoding.codes == b.encoding.codes
        X = b.design_matrix(table)
        assert X.dtype == np.float32 and X.shape == (len(table), len(b.predictors))
        assert np.array_equal(a.design_matrix(table), X)
        assert np.array_equal(a.predict(table), b.predict(table))
        for x, y in zip(bundle.bootstraps[f], loaded.bootstraps[f], strict=True):
            assert np.array_equal(x.estimator.predict(x.design_matrix(table)),
                                  y.estimator.predict(y.design_matrix(table)))
        pd.testing.assert_frame_equal(bundle.cv_predictions[f], loaded.cv_predictions[f],
                                      check_dtype=False)
    pd.testing.assert_frame_equal(bundle.metrics, loaded.metrics, check_dtype=False)


def test_bundle_refuses_a_mismatched_cube(tiny_bundle: tuple[ModelBundle, Path],
                                          tmp_path: Path) -> None:
    _, out = tiny_bundle
    cube = synthetic_cube(start="2016-01", periods=12)
    load_bundle(out / "models", cube=cube)  # every vegtype class is in the legend
    bad = cube.copy()
    veg = bad["vegtype"].values.copy()
    veg[45, 45] = 1.0  # an unrecoded ESA CCI code
    bad["vegtype"] = (("y", "x"), veg)
    with pytest.raises(BundleMismatchError, match=r"vegtype categories \[1\]"):
        load_bundle(out / "models", cube=bad)
    with pytest.raises(BundleMismatchError, match="lacks variable"):
        load_bundle(out / "models", cube=cube.drop_vars("ndvi"))
    # a changed model file is refused
    import shutil

    copy = tmp_path / "models"
    shutil.copytree(out / "models", copy)
    target = copy / "GPP" / "bootstrap_02.skops"
    target.write_bytes(target.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(BundleMismatchError, match="SHA-256"):
        load_bundle(copy)


def test_unseen_vegetation_class_is_recorded_and_warned(tmp_path: Path) -> None:
    tab = synthetic_training_table(n_sites=10, months_per_site=(6, 10), seed=2)
    tab = tab[tab["vegtype"] != 30].reset_index(drop=True)
    bundle = train_bundle(tab, profile=TINY.model_copy(update={"n_bootstrap": 1}),
                          fluxes=("GPP",), progress=False)
    entry = bundle.card["models"]["GPP"]["central"]
    assert 30 in entry["unseen_levels"]["vegtype"]
    enc = bundle.models["GPP"].encoding
    assert enc.codes["vegtype"][30] == enc.fallback("vegtype")
    bundle.save(tmp_path / "m")
    cube = synthetic_cube(start="2016-01", periods=12)
    with pytest.warns(UserWarning, match=r"vegtype categories \[30"):
        load_bundle(tmp_path / "m", cube=cube)


def test_results_do_not_depend_on_the_scheduler(table: pd.DataFrame) -> None:
    import dask

    prof = TINY.model_copy(update={"n_bootstrap": 2})
    with dask.config.set(scheduler="threads", num_workers=2):
        a = train_bundle(table, profile=prof, fluxes=("Reco",), seed=3, progress=False)
    with dask.config.set(scheduler="sync"):
        b = train_bundle(table, profile=prof, fluxes=("Reco",), seed=3, progress=False)
    assert np.array_equal(a.cv_predictions["Reco"]["pred"], b.cv_predictions["Reco"]["pred"])
    assert np.array_equal(a.models["Reco"].predict(table), b.models["Reco"].predict(table))
    assert np.array_equal(a.bootstraps["Reco"][1].estimator.predict(
        table[list(BOOTSTRAP_PREDICTORS)].to_numpy(np.float32)),
        b.bootstraps["Reco"][1].estimator.predict(
        table[list(BOOTSTRAP_PREDICTORS)].to_numpy(np.float32)))


def test_site_block_sample_against_hand_values() -> None:
    sites = np.array(["b", "a", "b", "c", "a", "b"])
    picks = np.random.default_rng(0).integers(0, 3, size=3)  # indices into sorted a, b, c
    rows = {0: [1, 4], 1: [0, 2, 5], 2: [3]}
    expect = np.concatenate([rows[k] for k in picks])
    got = fit_mod.site_block_sample(sites, np.random.default_rng(0))
    assert np.array_equal(got, expect)


@pytest.mark.parametrize("unit", ["row", "site"])
def test_bootstrap_replicates_follow_their_resampling(table: pd.DataFrame, unit: str) -> None:
    """Replicate b is the forest refit on the sample DECISIONS 8 (rows) or the site-block
    bootstrap defines, drawn here independently of the package with seed ``seed + b``."""
    from sklearn.base import clone

    prof = TINY.model_copy(update={"n_bootstrap": 2, "bootstrap_unit": unit})
    seed = 11
    bundle = train_bundle(table, profile=prof, fluxes=("GPP",), seed=seed, progress=False)
    d = fit_mod.prepare(table, ["GPP"], prof, seed).fluxes["GPP"]
    X = d.frame[list(BOOTSTRAP_PREDICTORS)].to_numpy(np.float32)
    for b, rep in enumerate(bundle.bootstraps["GPP"], start=1):
        rng = np.random.default_rng(seed + b)
        if unit == "row":
            idx = rng.integers(0, len(d.y), size=len(d.y))
        else:
            names = sorted(set(d.sites))
            picks = rng.integers(0, len(names), size=len(names))
            idx = np.concatenate([np.flatnonzero(d.sites == names[k]) for k in picks])
        ref = clone(rep.estimator).fit(X[idx], d.y[idx])
        assert np.array_equal(ref.predict(X), rep.estimator.predict(X))
    assert bundle.card["profile"]["bootstrap_unit"] == unit


def _splittable_leaves(tree: object, X: np.ndarray, y: np.ndarray, min_split: int) -> int:
    """Leaves of ``tree`` (fitted on the draws ``X``, ``y``) holding ≥ ``min_split`` draws
    that could still be split: rows not all alike and responses not all equal."""
    leaf = tree.apply(X)  # type: ignore[attr-defined]
    n = 0
    for v in np.unique(leaf):
        m = leaf == v
        if m.sum() >= min_split and np.ptp(y[m]) > 0 and (np.ptp(X[m], axis=0) > 0).any():
            n += 1
    return n


def test_draws_node_size_counts_bootstrap_draws_as_randomforest(table: pd.DataFrame) -> None:
    """``node_size_counts = "draws"``: the trees use the draws scikit-learn's forest makes
    (same per-tree seeds; the draw recomputed here from the seed), and, as randomForest's
    nodesize, no leaf holds ≥ 6 draws that could be split. ``"rows"`` (scikit-learn counting
    distinct rows) leaves such nodes whole, so the check tells the two apart."""
    from abz_dask.kernels import forest as fk

    d = fit_mod.prepare(table, ["NEE"], TINY, 3).fluxes["NEE"]
    X = d.frame[list(BOOTSTRAP_PREDICTORS)].to_numpy(np.float32)
    rows = fit_mod.fit_forest(X, d.y, 5, 6, 21, TINY)
    draws = fit_mod.fit_forest(X, d.y, 5, 6, 21,
                               TINY.model_copy(update={"node_size_counts": "draws"}))
    assert draws.n_estimators == len(draws.estimators_) == 6
    split = TINY.min_samples_split
    bad_rows = 0
    for a, b in zip(rows.estimators_, draws.estimators_, strict=True):
        assert a.random_state == b.random_state
        idx = np.random.RandomState(b.random_state).randint(0, len(d.y), len(d.y))
        assert b.tree_.n_node_samples[0] == len(d.y)  # the root counts draws
        assert a.tree_.n_node_samples[0] == len(np.unique(idx))  # distinct rows of one draw
        assert a.tree_.weighted_n_node_samples[0] == len(d.y)
        assert _splittable_leaves(b, X[idx], d.y[idx], split) == 0
        bad_rows += _splittable_leaves(a, X[idx], d.y[idx], split)
    assert bad_rows > 0
    assert np.mean([t.get_n_leaves() for t in draws.estimators_]) > \
        1.2 * np.mean([t.get_n_leaves() for t in rows.estimators_])
    again = fit_mod.fit_forest(X, d.y, 5, 6, 21,
                               TINY.model_copy(update={"node_size_counts": "draws"}))
    assert np.array_equal(again.predict(X), draws.predict(X))
    means = np.mean([t.predict(X) for t in draws.estimators_], axis=0)
    np.testing.assert_allclose(draws.predict(X), means, rtol=1e-12)
    np.testing.assert_allclose(fk.predict(fk.pack_forest(draws), X), means, rtol=1e-5,
                               atol=1e-4)


def test_draws_bundle_round_trip_and_card(table: pd.DataFrame, tmp_path: Path) -> None:
    prof = TINY.model_copy(update={"node_size_counts": "draws", "n_bootstrap": 2,
                                   "bootstrap_unit": "site"})
    bundle = run_training(table, tmp_path, profile=prof, fluxes=("GPP",), seed=4,
                          progress=False)
    card = json.loads((tmp_path / "models" / "card.json").read_text())
    assert card["tree_settings"]["node_size_counts"] == "draws"
    assert card["bootstrap"]["resampling"].startswith("sites")
    loaded = load_bundle(tmp_path / "models")
    assert np.array_equal(bundle.models["GPP"].predict(table), loaded.models["GPP"].predict(table))
    for x, y in zip(bundle.bootstraps["GPP"], loaded.bootstraps["GPP"], strict=True):
        assert np.array_equal(x.estimator.predict(x.design_matrix(table)),
                              y.estimator.predict(y.design_matrix(table)))


def test_distributed_cluster_gives_the_same_models(table: pd.DataFrame) -> None:
    from distributed import Client, LocalCluster

    prof = TINY.model_copy(update={"n_bootstrap": 1})
    local = train_bundle(table, profile=prof, fluxes=("NEE",), seed=9, progress=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster):
        dist = train_bundle(table, profile=prof, fluxes=("NEE",), seed=9, progress=True)
    assert np.array_equal(local.cv_predictions["NEE"]["pred"], dist.cv_predictions["NEE"]["pred"])
    assert np.array_equal(local.models["NEE"].predict(table), dist.models["NEE"].predict(table))


def test_training_table_with_missing_predictors_is_refused(table: pd.DataFrame) -> None:
    bad = table.copy()
    bad.loc[3, "ndvi"] = np.nan
    with pytest.raises(ValueError, match="missing predictor values"):
        train_bundle(bad, profile=TINY, progress=False)
    with pytest.raises(ValueError, match="lacks column"):
        train_bundle(table.drop(columns="soc"), profile=TINY, progress=False)


def test_extra_response_by_configuration(table: pd.DataFrame) -> None:
    tab = table.assign(CH4=0.02 * table["Reco"] + 0.1)
    bundle = train_bundle(tab, profile=TINY.model_copy(update={"n_bootstrap": 1}),
                          fluxes=("CH4",), progress=False)
    assert bundle.fluxes == ["CH4"] and bundle.metrics["R2"].to_numpy()[0] > 0.3



def test_twin_csv_to_bundle_checked_against_the_cube(tmp_path: Path) -> None:
    """The stages as the demo chains them, on a tiny digital twin (ABCflux CSV + cube)."""
    lay = generate_twin(tmp_path / "twin", resolution="100km", start="2015-01", end="2016-12",
                        n_sites=40, seed=3, progress=False)
    grid = Grid.from_preset("100km")
    cube = xr.open_zarr(lay.cube, consolidated=False)
    zones = xr.open_zarr(lay.zones, consolidated=False)
    obs = read_abcflux(lay.sites, grid=grid, zones=zones, years=(2015, 2016))
    raw = pd.read_csv(lay.sites)
    assert obs.attrs["abcflux"]["gpp_flipped"] and len(obs) <= len(raw)
    assert not obs.duplicated(["site_id", "year", "month"]).any()
    table, report = extract_training_table(obs, cube, grid)
    rep = report.set_index("flux")
    assert (rep["kept"] + rep["missing_predictor"] == rep["observed"]).all()
    assert rep.loc["NEE", "kept"] == len(table)
    bundle = run_training(table, tmp_path / "run", profile=TINY, progress=False)
    assert bundle.metrics.loc[:, "n"].tolist() == [int(table[f].notna().sum())
                                                   for f in ("NEE", "GPP", "Reco")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # classes without sites are expected
        loaded = load_bundle(tmp_path / "run" / "models", cube=cube)
    assert loaded.fluxes == ["NEE", "GPP", "Reco"]


# ---------------------------------------------------------------- resumable tuning

_RESUME_SCRIPT = """
import sys
from pathlib import Path
from abz_dask.training import TrainingProfile, run_training
from abz_dask.training.synthetic import synthetic_training_table

prof = TrainingProfile(name="resume", cv="loso", tuning_trees=40, final_trees=10,
                       bootstrap_trees=5, n_bootstrap=2, importance_repeats=0, pdp_points=0)
tab = synthetic_training_table(n_sites=16, months_per_site=(6, 12), seed=4)
run_training(tab, Path(sys.argv[1]), profile=prof, fluxes=("NEE",), seed=6, progress=False)
"""


def _finished(led: Path, *patterns: str) -> dict[str, int]:
    """Name → mtime of the ledger's finished records, without the writer's temporary files
    (``NAME.tmp.SUFFIX``: renamed into place when complete, so they vanish while listed)."""
    return {p.name: p.stat().st_mtime_ns for pat in patterns for p in led.glob(pat)
            if ".tmp." not in p.name and p.name != "key.json"}


def _ledger_files(out: Path) -> dict[str, int]:
    return _finished(out / "training" / "cv_fits", "*/*_fold*_mtry*.npz")


_ENV = {**os.environ, "PYTHONHASHSEED": "0"}


def _run(script: str, out: Path) -> None:
    subprocess.run([sys.executable, "-c", script, str(out)], env=_ENV, check=True)


def _kill_once(script: str, out: Path, files: Callable[[Path], dict[str, int]], at_least: int,
               what: str) -> dict[str, int]:
    """Start ``script`` on ``out``, SIGKILL it once ``files(out)`` holds ``at_least`` entries;
    return the entries left behind."""
    proc = subprocess.Popen([sys.executable, "-c", script, str(out)], env=_ENV)
    deadline = time.monotonic() + 300
    while len(files(out)) < at_least and proc.poll() is None:
        assert time.monotonic() < deadline, f"{what} was never recorded"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return files(out)


def _assert_same_models(a_dir: Path, b_dir: Path) -> None:
    """Central and bootstrap predictions of two runs' bundles are identical."""
    ma, mb = load_bundle(a_dir / "models"), load_bundle(b_dir / "models")
    tab = read_training_table(b_dir / "training" / "training_table.parquet")
    assert ma.models["NEE"].mtry == mb.models["NEE"].mtry
    assert np.array_equal(ma.models["NEE"].predict(tab), mb.models["NEE"].predict(tab))
    X = tab[list(BOOTSTRAP_PREDICTORS)].to_numpy(np.float32)
    for ba, bb in zip(ma.bootstraps["NEE"], mb.bootstraps["NEE"], strict=True):
        assert np.array_equal(ba.estimator.predict(X), bb.estimator.predict(X))


def _assert_same_tables(a_dir: Path, b_dir: Path, names: tuple[str, ...]) -> None:
    for name in names:
        a = pd.read_csv(a_dir / "training" / name)
        b = pd.read_csv(b_dir / "training" / name)
        pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_killed_tuning_resumes_only_missing_fits_bit_identical(tmp_path: Path) -> None:
    """SIGKILL a LOSO tuning run mid-way; the rerun refits only the missing folds and gives the
    same CV predictions and models as an uninterrupted run."""
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    before = _kill_once(_RESUME_SCRIPT, killed, _ledger_files, 8, "a fit")
    n_total = 16 * 3  # 16 sites (one fold each) x mtry grid {2, 9, 17}
    assert 8 <= len(before) < n_total, "the kill should land mid-tuning"
    assert not (killed / "models" / "card.json").exists()

    _run(_RESUME_SCRIPT, killed)
    after = _ledger_files(killed)
    assert len(after) == n_total
    assert all(after[k] == v for k, v in before.items()), "finished fits were recomputed"
    _run(_RESUME_SCRIPT, clean)
    _assert_same_tables(killed, clean, ("cv_predictions.csv",))
    _assert_same_models(killed, clean)


_FINAL_SCRIPT = """
import sys
from pathlib import Path
from abz_dask.training import TrainingProfile, run_training
from abz_dask.training.synthetic import synthetic_training_table

prof = TrainingProfile(name="resume-final", cv="group_kfold", n_folds=3, tuning_trees=5,
                       final_trees=60, bootstrap_trees=60, n_bootstrap=8, importance_repeats=3,
                       pdp_points=5)
tab = synthetic_training_table(n_sites=30, months_per_site=(10, 20), seed=5)
run_training(tab, Path(sys.argv[1]), profile=prof, fluxes=("NEE",), seed=7, progress=False)
"""


def _final_files(out: Path) -> dict[str, int]:
    return _finished(out / "training" / "cv_fits", "*/*.json", "*/diag_*.npz")


def test_killed_final_phase_resumes_only_missing_models_bit_identical(tmp_path: Path) -> None:
    """SIGKILL a run while its central/bootstrap models are being fitted; the rerun loads the
    recorded models, fits only the rest, and gives the same bundle and diagnostics as an
    uninterrupted run."""
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    before = _kill_once(_FINAL_SCRIPT, killed, _final_files, 2, "a model")
    n_models = 1 + 8
    assert 2 <= len(before) < n_models, "the kill should land among the model fits"

    _run(_FINAL_SCRIPT, killed)
    after = _final_files(killed)
    assert len(after) == n_models + len(PREDICTOR_NAMES)
    assert all(after[k] == v for k, v in before.items()), "recorded models were refitted"
    _run(_FINAL_SCRIPT, clean)
    _assert_same_models(killed, clean)
    diag = ("importance.csv", "partial_dependence.csv", "model_fit.csv")
    _assert_same_tables(killed, clean, diag)
    # a finished run, rerun, takes every model and diagnostic from the ledger: same outputs
    _run(_FINAL_SCRIPT, killed)
    assert _final_files(killed) == after
    _assert_same_tables(killed, clean, diag)


def test_fit_ledger_is_keyed_by_what_determines_the_fits(tmp_path: Path) -> None:
    from abz_dask.training.ledger import FitLedger

    a = FitLedger(tmp_path, {"seed": 1, "profile": {"tuning_trees": 500}})
    a.save("NEE", 3, 2, np.arange(4), np.linspace(0, 1, 4))
    same = FitLedger(tmp_path, {"profile": {"tuning_trees": 500}, "seed": 1})
    other = FitLedger(tmp_path, {"seed": 2, "profile": {"tuning_trees": 500}})
    got = same.load("NEE", 3, 2)
    assert got is not None and np.array_equal(got[1], np.linspace(0, 1, 4))
    assert other.load("NEE", 3, 2) is None and len(other) == 0 and len(same) == 1
    (same.dir / "NEE_fold4_mtry2.npz.tmp.npz").write_bytes(b"half")  # a killed writer's
    assert len(same) == 1 and same.load("NEE", 4, 2) is None
    assert same.load("NEE", 3, 9) is None
