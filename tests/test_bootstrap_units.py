"""The cluster bootstrap (``bootstrap_unit: cluster``): site clusters, whole-cluster draws."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from abz_dask.io.predictors import BOOTSTRAP_PREDICTORS
from abz_dask.training import TrainingProfile, train_bundle
from abz_dask.training import fit as fit_mod
from abz_dask.training.synthetic import synthetic_training_table

TINY = TrainingProfile(name="tiny", cv="group_kfold", n_folds=3, tuning_trees=8,
                       final_trees=10, bootstrap_trees=5, n_bootstrap=2, importance_repeats=0,
                       pdp_points=0)
R = 6371.0  # km, the sphere of the hand projection


def _polar_xy(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Spherical polar Lambert azimuthal equal-area x/y (km), written out by hand."""
    rho = 2 * R * np.sin(np.radians(90 - lat) / 2)
    return np.column_stack([rho * np.sin(np.radians(lon)), -rho * np.cos(np.radians(lon))])


def _lat_at(km_from_pole: np.ndarray) -> np.ndarray:
    """Latitude of the points ``km_from_pole`` (LAEA radius) on one meridian."""
    return 90 - 2 * np.degrees(np.arcsin(np.asarray(km_from_pole) / (2 * R)))


def _naive_complete_linkage(xy: np.ndarray, cut: float) -> list[set[int]]:
    """Agglomerative complete linkage by brute force: merge the two clusters of smallest
    largest-pairwise distance while that distance is at most ``cut``."""
    d = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
    groups = [{i} for i in range(len(xy))]
    while len(groups) > 1:
        best = min(itertools.combinations(range(len(groups)), 2),
                   key=lambda p: max(d[i, j] for i in groups[p[0]] for j in groups[p[1]]))
        if max(d[i, j] for i in groups[best[0]] for j in groups[best[1]]) > cut:
            break
        groups[best[0]] |= groups.pop(best[1])
    return groups


def test_site_clusters_on_one_meridian_hand_values() -> None:
    """Sites at 0, 300, 600 | 2000, 2300 | 4000 km along lon = 40°E (LAEA radius from the
    pole 500 km + those), cut at 1,000 km: three clusters, numbered in sorted site order; a
    site's rows all get its cluster."""
    lat = _lat_at(500 + np.array([0, 300, 600, 2000, 2300, 4000]))
    names = np.array(["s5", "s1", "s3", "s2", "s4", "s0"])  # sorted: s0 s1 s2 s3 s4 s5
    rows = np.array([0, 1, 1, 2, 3, 4, 5, 5, 5])  # site index of every row
    got = fit_mod.site_clusters(names[rows], lat[rows], np.full(len(rows), 40.0), 1000.0)
    # clusters by site: s5 s1 s3 -> one, s2 s4 -> one, s0 alone; numbered by the first site in
    # sorted order: s0 -> 0, s1 -> 1 (with s3, s5), s2 -> 2 (with s4)
    by_site = {"s5": 1, "s1": 1, "s3": 1, "s2": 2, "s4": 2, "s0": 0}
    assert got.tolist() == [by_site[n] for n in names[rows]]


def test_site_clusters_match_brute_force_complete_linkage() -> None:
    """On 40 scattered Arctic sites the clusters equal a brute-force complete linkage on a
    hand-written spherical projection; every cluster is at most the cut across and no two
    clusters could merge under it."""
    rng = np.random.default_rng(3)
    lat, lon = rng.uniform(52, 75, 40), rng.uniform(-180, 180, 40)
    names = np.array([f"S{i:02d}" for i in range(40)])
    cut = 900.0
    got = fit_mod.site_clusters(names, lat, lon, cut)
    xy = _polar_xy(lat, lon)
    ref = _naive_complete_linkage(xy, cut)
    assert sorted(map(sorted, ref)) == sorted(
        sorted(np.flatnonzero(got == c).tolist()) for c in np.unique(got))
    d = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
    for c in np.unique(got):
        m = got == c
        assert d[np.ix_(m, m)].max() <= cut * 1.01  # sphere vs ellipsoid: < 1 % apart
    assert 5 < len(np.unique(got)) < 40


def test_site_clusters_refuse_missing_coordinates() -> None:
    with pytest.raises(ValueError, match="site 'b'"):
        fit_mod.site_clusters(np.array(["a", "b"]), np.array([60.0, np.nan]),
                              np.array([10.0, 20.0]), 1000.0)


def test_cluster_block_sample_draws_whole_clusters() -> None:
    """Every cluster drawn brings all its rows, as many times as it is drawn; the same seed
    gives the same sample."""
    clusters = np.array([2, 0, 1, 1, 2, 0, 2, 3, 3, 3, 3])
    idx = fit_mod.site_block_sample(clusters, np.random.default_rng(9))
    picks = np.random.default_rng(9).integers(0, 4, size=4)
    mult = np.bincount(picks, minlength=4)
    size = np.bincount(clusters)
    assert np.array_equal(np.bincount(clusters[idx], minlength=4), mult * size)
    for c in range(4):  # each row of a drawn cluster appears exactly mult[c] times
        rows = np.flatnonzero(clusters == c)
        assert all((idx == r).sum() == mult[c] for r in rows)
    assert np.array_equal(idx, fit_mod.site_block_sample(clusters, np.random.default_rng(9)))


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return synthetic_training_table(n_sites=24, months_per_site=(6, 24), seed=7)


def test_cluster_bootstrap_replicates_refit_on_whole_clusters(table: pd.DataFrame) -> None:
    """Replicate b is the forest refit on the clusters drawn with seed ``seed + b``, the
    clusters built here by brute force from the sites' coordinates."""
    from sklearn.base import clone

    prof = TINY.model_copy(update={"bootstrap_unit": "cluster", "bootstrap_cluster_km": 1500})
    seed = 11
    bundle = train_bundle(table, profile=prof, fluxes=("GPP",), seed=seed, progress=False)
    d = fit_mod.prepare(table, ["GPP"], prof, seed).fluxes["GPP"]
    sites = table.groupby("site_id")[["latitude", "longitude"]].first().loc[sorted(set(d.sites))]
    groups = _naive_complete_linkage(_polar_xy(sites["latitude"].to_numpy(),
                                               sites["longitude"].to_numpy()), 1500.0)
    order = sorted(groups, key=min)  # numbered by the first site in sorted order
    names = sites.index.to_numpy()
    X = d.frame[list(BOOTSTRAP_PREDICTORS)].to_numpy(np.float32)
    for b, rep in enumerate(bundle.bootstraps["GPP"], start=1):
        picks = np.random.default_rng(seed + b).integers(0, len(order), size=len(order))
        idx = np.concatenate([np.flatnonzero(np.isin(d.sites, names[sorted(order[k])]))
                              for k in picks])
        ref = clone(rep.estimator).fit(X[idx], d.y[idx])
        assert np.array_equal(ref.predict(X), rep.estimator.predict(X))
    assert bundle.card["profile"]["bootstrap_cluster_km"] == 1500
    assert "spatial clusters" in bundle.card["bootstrap"]["resampling"]


def test_cluster_bootstrap_needs_coordinates(table: pd.DataFrame) -> None:
    prof = TINY.model_copy(update={"bootstrap_unit": "cluster"})
    with pytest.raises(ValueError, match="latitude and longitude"):
        fit_mod.prepare(table.drop(columns=["latitude"]), ["GPP"], prof, 0)
