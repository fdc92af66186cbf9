"""Tuned random forests per flux, their bootstraps and diagnostics, spread over Dask.

The method (seed-spec §4.2–4.6, DECISIONS 5–8), per flux:

1. rows with the flux observed; folds grouped by site (:mod:`abz_dask.training.folds`);
2. for every fold × mtry of the grid: encode month and vegetation type on the fold's training
   rows only (:func:`abz_dask.io.encoding.fit_encoding` — no leakage), fit a forest, predict the
   held-out sites; the fold RMSE is kept;
3. mtry = the lowest mean fold RMSE (caret ``selectionFunction = "best"``: ties go to the
   smaller mtry); the pooled held-out predictions at that mtry are the CV predictions;
4. the central model: the same forest refit on all rows;
5. bootstrap replicate b = 1..B: rows drawn with replacement (same size) with seed
   ``seed + b``, the 15 non-categorical predictors (the continuous predictors of the
   profile's set), mtry = min(tuned mtry, 15), forest
   ``random_state = seed + b``. With the profile's ``bootstrap_unit = "site"`` the draw is of
   sites instead (as many as the flux has, with replacement), each bringing all its rows
   (:func:`site_block_sample`); with ``"cluster"`` it is of spatial clusters of sites
   (:func:`site_clusters`: complete linkage on the sites' polar LAEA x/y, at most
   ``bootstrap_cluster_km`` across), each bringing all rows of all its sites.

Forests mirror R randomForest: bootstrap rows, ``max_features = mtry``, ``min_samples_split = 6``
(nodesize 5), ``min_samples_leaf = 1``, ``n_jobs = 1`` (parallelism comes from Dask). What the
node size counts is the profile's ``node_size_counts``: ``"rows"`` (default) is scikit-learn's
forest, whose bootstrap is a weight per row, so ``min_samples_split`` counts the distinct rows in
a node; ``"draws"`` fits every tree on its drawn rows themselves, so it counts bootstrap draws as
randomForest's ``nodesize`` does (:func:`fit_forest`).

Parallelism: every fold × mtry fit, every final and bootstrap fit and every per-predictor
diagnostic is one Dask task. The prepared training data is shipped once — scattered to the
workers (``broadcast``) when a ``distributed`` client is active, otherwise one ``delayed`` key
that every task depends on — so the same code runs on the threaded scheduler, a LocalCluster or a
remote cluster. Random seeds are derived from the base seed and the task's identity, so results do
not depend on the scheduler or the number of workers.
"""

from __future__ import annotations

import hashlib
import platform
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestRegressor
from sklearn.tree import DecisionTreeRegressor

from abz_dask import DEFAULT_SEED
from abz_dask.io.encoding import CategoricalEncoding, fit_encoding
from abz_dask.io.location import as_path
from abz_dask.io.predictors import (
    CATEGORICAL,
    PREDICTOR_NAMES,
    PREDICTORS,
    VEG_CLASSES,
    Predictor,
    predictor_record,
    predictors_from_record,
)
from abz_dask.progress import active_client, compute_with_progress
from abz_dask.training.bundle import CARD_FORMAT, CARD_VERSION, FluxModel, ModelBundle
from abz_dask.training.folds import fold_ids, iter_folds
from abz_dask.training.ledger import FitLedger
from abz_dask.training.metrics import metrics, rmse
from abz_dask.training.profiles import TrainingProfile, resolve_profile

__all__ = ["FluxData", "TrainingData", "caret_mtry_grid", "fit_forest", "prepare",
           "ship_training_data", "site_block_sample", "site_clusters", "train_bundle", "tune"]

#: Columns carried into the CV predictions for stratified diagnostics.
_CV_META = ("site_id", "year", "month", "vegtype", "flux_method", "disturbance",
            "disturb_year", "biome", "country")
#: Category legends: levels a model must know even when its training rows lack them.
_LEGEND: dict[str, tuple[int, ...]] = {"month": tuple(range(1, 13)),
                                      "vegtype": tuple(sorted(VEG_CLASSES))}


def caret_mtry_grid(p: int, length: int = 3) -> tuple[int, ...]:
    """caret's default ``mtry`` grid for ``method = "rf"`` (``var_seq``, regression).

    ``floor(seq(2, p, length = length))`` (``p < 500``), deduplicated; ``p <= length`` gives
    ``floor(seq(2, p, length = p))``. {2, 9, 17} for 17 predictors, {2, 8, 15} for 15.

    Parameters
    ----------
    p : int
        Number of predictors.
    length : int
        caret ``tuneLength``.
    """
    if p < 2:
        return (1,)
    if length == 1:
        return (max(p // 3, 1),)
    n = p if p <= length else length
    if p < 500:
        seq = np.floor(np.linspace(2, p, n) + 1e-9)
    else:
        seq = np.floor(2 ** np.linspace(1, np.log2(p), n) + 1e-9)
    return tuple(sorted({int(v) for v in seq}))


@dataclass(frozen=True)
class FluxData:
    """Rows of one flux ready for fitting.

    Attributes
    ----------
    flux : str
        Response name.
    frame : DataFrame
        Raw predictors (float32, :data:`PREDICTOR_NAMES` order) of the rows.
    y : ndarray
        Response (float64).
    sites : ndarray
        Site id of every row.
    folds : ndarray
        CV fold of every row.
    rows : ndarray
        Position of every row in the training table.
    clusters : ndarray or None
        Spatial cluster of every row's site (:func:`site_clusters`) when the profile's
        bootstrap unit is ``"cluster"`` or its interval ``"blocked_cv"``, else None.
    """

    flux: str
    frame: pd.DataFrame
    y: np.ndarray
    sites: np.ndarray
    folds: np.ndarray
    rows: np.ndarray
    clusters: np.ndarray | None = None


@dataclass(frozen=True)
class TrainingData:
    """Everything a fit task needs, shipped once to the workers."""

    fluxes: dict[str, FluxData]
    profile: TrainingProfile
    #: the predictor set, in model order (the paper's 17 unless the profile names one)
    predictors: tuple[Predictor, ...] = PREDICTORS

    @property
    def names(self) -> tuple[str, ...]:
        """Predictor names of the central models, in order."""
        return tuple(p.name for p in self.predictors)

    @property
    def bootstrap_names(self) -> tuple[str, ...]:
        """Predictors of the bootstrap models: the set's continuous ones, in order."""
        return tuple(p.name for p in self.predictors if not p.categorical)


@dataclass(frozen=True)
class _CVFit:
    flux: str
    fold: int
    mtry: int
    test: np.ndarray
    pred: np.ndarray


def prepare(table: pd.DataFrame, fluxes: Sequence[str], profile: TrainingProfile,
            seed: int) -> TrainingData:
    """Select the rows of every flux and build its folds.

    Parameters
    ----------
    table : DataFrame
        Training table (``site_id``, responses, the 17 predictors).
    fluxes : sequence of str
        Response columns to model.
    profile : TrainingProfile
        CV scheme and predictor set (user predictors are those recorded in
        ``table.attrs["user_predictors"]`` by
        :func:`abz_dask.training.extract.extract_training_table`).
    seed : int
        Base seed (fold shuffling).
    """
    preds = profile.predictor_set(training_predictors(table))
    names = [p.name for p in preds]
    if len([p for p in preds if not p.categorical]) == 0 and profile.n_bootstrap:
        raise ValueError("predictors: bootstrap models need at least one continuous predictor")
    missing = [c for c in ("site_id", *fluxes, *names) if c not in table]
    if missing:
        raise ValueError(f"the training table lacks column(s) {missing}")
    X = table[names]
    if X.isna().to_numpy().any():
        bad = [c for c in names if table[c].isna().any()]
        raise ValueError(f"the training table has missing predictor values in {bad}; "
                         "extract_training_table drops such rows")
    out: dict[str, FluxData] = {}
    for flux in fluxes:
        keep = np.flatnonzero(table[flux].notna().to_numpy())
        sites = table["site_id"].astype(str).to_numpy()[keep]
        if len(np.unique(sites)) < 2:
            raise ValueError(f"{flux}: cross-validation needs rows from at least 2 sites")
        folds = fold_ids(sites, profile.cv, profile.n_folds, seed)
        frame = X.iloc[keep].astype(np.float32).reset_index(drop=True)
        clusters = None
        if profile.bootstrap_unit == "cluster" or profile.interval == "blocked_cv":
            if not {"latitude", "longitude"} <= set(table.columns):
                raise ValueError("bootstrap_unit: cluster and interval: blocked_cv need the "
                                 "training table's latitude and longitude columns")
            clusters = site_clusters(sites, table["latitude"].to_numpy(np.float64)[keep],
                                     table["longitude"].to_numpy(np.float64)[keep],
                                     profile.bootstrap_cluster_km)
        out[flux] = FluxData(flux, frame, table[flux].to_numpy(np.float64)[keep], sites, folds,
                             keep, clusters)
    return TrainingData(out, profile, preds)


def training_predictors(table: pd.DataFrame) -> dict[str, Predictor]:
    """User predictors a training table carries (``attrs["user_predictors"]``), by name."""
    rec = table.attrs.get("user_predictors") or []
    return {p.name: p for p in predictors_from_record(rec)}


def _task_seed(seed: int, *parts: int | str) -> int:
    key = [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts]
    return int(np.random.SeedSequence([seed, *key]).generate_state(1)[0] & 0x7FFFFFFF)


def fit_forest(X: np.ndarray, y: np.ndarray, mtry: int, n_trees: int, seed: int,
               profile: TrainingProfile) -> RandomForestRegressor:
    """Fit one random forest with the profile's tree settings.

    Parameters
    ----------
    X : ndarray
        Encoded predictors, shape (rows, predictors).
    y : ndarray
        Response.
    mtry : int
        Predictors tried per split (``max_features``).
    n_trees : int
        Trees.
    seed : int
        ``random_state`` of the forest.
    profile : TrainingProfile
        ``min_samples_split``, ``min_samples_leaf`` and ``node_size_counts``.

    Returns
    -------
    RandomForestRegressor
        Fitted, single-threaded. With ``node_size_counts = "draws"`` its trees are fitted one
        by one on their bootstrap draws (row indices drawn as scikit-learn's forest draws them
        from its per-tree seeds), so a node holding 8 draws of 4 distinct rows is split, as in
        randomForest; with ``"rows"`` scikit-learn weights the rows and leaves it whole.
    """
    rf = RandomForestRegressor(
        n_estimators=n_trees, max_features=mtry, min_samples_split=profile.min_samples_split,
        min_samples_leaf=profile.min_samples_leaf, bootstrap=True, n_jobs=1, random_state=seed)
    if profile.node_size_counts == "rows":
        return rf.fit(X, y)
    rs = np.random.RandomState(seed)
    tree_seeds = rs.randint(np.iinfo(np.int32).max, size=n_trees)
    trees = []
    for s in tree_seeds:
        draw = np.random.RandomState(s).randint(0, len(y), len(y), dtype=np.int32)
        tree = DecisionTreeRegressor(
            max_features=mtry, min_samples_split=profile.min_samples_split,
            min_samples_leaf=profile.min_samples_leaf, random_state=int(s))
        trees.append(tree.fit(X[draw], y[draw]))
    # a one-tree fit sets the forest's fitted attributes; the drawn trees replace its tree
    rf.set_params(n_estimators=1).fit(X[:2], y[:2])
    rf.estimators_ = trees
    return rf.set_params(n_estimators=n_trees)


def _encode(frame: pd.DataFrame, y: np.ndarray, predictors: Sequence[str],
            profile: TrainingProfile) -> CategoricalEncoding:
    cats = [c for c in CATEGORICAL if c in predictors]
    return fit_encoding(frame, y, cats, month_scheme=profile.month_scheme)


def _cv_fit(data: TrainingData, flux: str, fold: int, mtry: int, seed: int) -> _CVFit:
    d = data.fluxes[flux]
    test = np.flatnonzero(d.folds == fold)
    train = np.flatnonzero(d.folds != fold)
    ftrain = d.frame.iloc[train]
    enc = _encode(ftrain, d.y[train], data.names, data.profile)
    rf = fit_forest(enc.transform(ftrain, data.names), d.y[train], mtry,
                    data.profile.tuning_trees, seed, data.profile)
    pred = rf.predict(enc.transform(d.frame.iloc[test], data.names))
    return _CVFit(flux, fold, mtry, test, np.asarray(pred, dtype=np.float64))


def _unseen_levels(enc: CategoricalEncoding) -> dict[str, list[int]]:
    """Legend levels that the encoding (fitted on training rows) lacks."""
    return {name: [lv for lv in levels if lv not in enc.codes[name]]
            for name, levels in _LEGEND.items() if name in enc.codes}


def _with_legend(enc: CategoricalEncoding) -> CategoricalEncoding:
    """Add the legend levels the training rows lacked, coded with the fallback code (the code
    :meth:`CategoricalEncoding.transform_column` gives them anyway), so the card lists every
    category the model accepts."""
    codes = {k: dict(v) for k, v in enc.codes.items()}
    for name, miss in _unseen_levels(enc).items():
        codes[name].update(dict.fromkeys(miss, enc.fallback(name)))
    return CategoricalEncoding(codes, dict(enc.scheme))


def _final_fit(data: TrainingData, flux: str, mtry: int, seed: int) -> FluxModel:
    d = data.fluxes[flux]
    enc = _encode(d.frame, d.y, data.names, data.profile)
    rf = fit_forest(enc.transform(d.frame, data.names), d.y, mtry,
                    data.profile.final_trees, seed, data.profile)
    return FluxModel(flux, rf, data.names, _with_legend(enc), mtry, seed)


def site_clusters(sites: np.ndarray, lat: np.ndarray, lon: np.ndarray, km: float
                  ) -> np.ndarray:
    """Spatial cluster of every row's site, for the cluster bootstrap.

    Sites (their mean latitude / longitude over their rows) are projected to the grid's polar
    LAEA (EPSG:6931) and grouped by complete-linkage agglomerative clustering cut at ``km``: no
    two sites of one cluster are more than ``km`` apart, and no two clusters could be merged
    without breaking that. No randomness.

    Parameters
    ----------
    sites : ndarray
        Site id of every row.
    lat, lon : ndarray
        Latitude and longitude (degrees) of every row.
    km : float
        Largest distance within a cluster (km).

    Returns
    -------
    ndarray
        Cluster number (0, 1, ...; numbered by each cluster's first site in sorted site order)
        of every row.
    """
    from pyproj import Transformer
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    from abz_dask.geo.grid import CRS_LAEA

    bad = ~(np.isfinite(lat) & np.isfinite(lon))
    if bad.any():
        raise ValueError(f"cluster bootstrap: site {str(sites[bad][0])!r} has no finite "
                         "latitude/longitude")
    uniq, inv = np.unique(sites, return_inverse=True)
    n = np.bincount(inv)
    x, y = Transformer.from_crs("EPSG:4326", CRS_LAEA, always_xy=True).transform(
        np.bincount(inv, lon) / n, np.bincount(inv, lat) / n)
    if len(uniq) == 1:
        return np.zeros(len(sites), dtype=np.int64)
    cut = fcluster(linkage(pdist(np.column_stack([x, y])), "complete"), km * 1e3, "distance")
    _, first = np.unique(cut, return_index=True)
    number = np.empty(cut.max() + 1, dtype=np.int64)
    number[cut[np.sort(first)]] = np.arange(len(first))
    return number[cut][inv]


def site_block_sample(sites: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row indices of a block bootstrap sample (blocks: sites, or clusters of sites).

    Parameters
    ----------
    sites : ndarray
        Site id (or cluster, :func:`site_clusters`) of every row.
    rng : Generator
        Source of the draw.

    Returns
    -------
    ndarray
        As many sites as ``sites`` holds are drawn with replacement; every draw contributes all
        rows of its site (ascending), so a site drawn k times appears k times and the sample
        size varies around the number of rows.
    """
    uniq, inv = np.unique(sites, return_inverse=True)
    members = np.split(np.argsort(inv, kind="stable"), np.cumsum(np.bincount(inv))[:-1])
    picks = rng.integers(0, len(uniq), size=len(uniq))
    return np.concatenate([members[k] for k in picks])


def _bootstrap_fit(data: TrainingData, flux: str, b: int, mtry: int, seed: int) -> FluxModel:
    d = data.fluxes[flux]
    s = seed + b
    rng = np.random.default_rng(s)
    blocks = {"site": d.sites, "cluster": d.clusters}.get(data.profile.bootstrap_unit)
    idx = (rng.integers(0, len(d.y), size=len(d.y)) if blocks is None
           else site_block_sample(blocks, rng))
    names = data.bootstrap_names
    m = min(mtry, len(names))
    X = d.frame[list(names)].to_numpy(np.float32)[idx]
    rf = fit_forest(X, d.y[idx], m, data.profile.bootstrap_trees, s, data.profile)
    return FluxModel(flux, rf, names, CategoricalEncoding(), m, s)


def ship_training_data(data: TrainingData | FluxModel) -> Any:
    """Make ``data`` available to every task once.

    Parameters
    ----------
    data : TrainingData or FluxModel
        Prepared rows (or a fitted model that many diagnostic tasks read).

    Returns
    -------
    Future or Delayed
        With an active ``distributed`` client, a future of ``data`` scattered to every worker
        (``broadcast``); otherwise a single ``delayed`` key. Tasks take it as an argument, so
        the graph references the data by key instead of embedding a copy per task.
    """
    client = active_client()
    if client is not None:
        return client.scatter(data, broadcast=True, hash=False)
    return dask.delayed(data, traverse=False)


def _mtry_grid(profile: TrainingProfile, p: int = len(PREDICTOR_NAMES)) -> tuple[int, ...]:
    return profile.mtry_grid or caret_mtry_grid(p)


@dataclass
class TuneResult:
    """Tuning of one flux.

    Attributes
    ----------
    mtry : int
        Chosen mtry.
    table : DataFrame
        Per mtry: ``mean_fold_rmse, sd_fold_rmse, n_folds`` and pooled ``R2, RMSE, MAE, MBE``.
    fold_rmse : DataFrame
        ``fold, mtry, n, rmse`` of every fit.
    predictions : dict
        mtry → pooled held-out predictions (aligned with the flux's rows).
    """

    mtry: int
    table: pd.DataFrame
    fold_rmse: pd.DataFrame
    predictions: dict[int, np.ndarray]


def tune(data: TrainingData, ref: Any, seed: int, progress: bool = True,
         ledger: FitLedger | None = None) -> dict[str, TuneResult]:
    """Cross-validate every fold × mtry of every flux as Dask tasks and pick mtry.

    Parameters
    ----------
    data : TrainingData
        Prepared rows.
    ref : object
        What tasks receive for ``data`` (from the shipping step: a future or a delayed key).
    seed : int
        Base seed.
    progress : bool
        Show a progress bar of fits done.
    ledger : FitLedger, optional
        Fits found there are reused and every new fit is recorded there as it finishes, so a
        killed run resumes with only the missing fits (bit-identical results).

    Returns
    -------
    dict
        Flux → :class:`TuneResult`.
    """
    grid = _mtry_grid(data.profile, len(data.predictors))
    fit = dask.delayed(_cv_fit, pure=True)
    results: list[_CVFit] = []
    todo: list[tuple[str, int, int]] = []
    for flux, d in data.fluxes.items():
        for fold, _, _ in iter_folds(d.folds):
            for m in grid:
                found = ledger.load(flux, fold, m) if ledger is not None else None
                if found is None:
                    todo.append((flux, fold, m))
                else:
                    results.append(_CVFit(flux, fold, m, *found))
    tasks = [fit(ref, f, fold, m, _task_seed(seed, "cv", f, fold, m)) for f, fold, m in todo]
    n_folds = {f: len(np.unique(d.folds)) for f, d in data.fluxes.items()}
    label = (f"tuning: {len(tasks)} fits ({', '.join(f'{f} {n}' for f, n in n_folds.items())} "
             f"folds x mtry {list(grid)})" + (f", {len(results)} done before" if results else ""))

    def record(_: int, r: _CVFit) -> None:
        assert ledger is not None
        ledger.save(r.flux, r.fold, r.mtry, r.test, r.pred)

    results += compute_with_progress(tasks, label, enabled=progress,
                                     on_result=record if ledger is not None else None)
    out: dict[str, TuneResult] = {}
    for flux, d in data.fluxes.items():
        preds = {m: np.full(len(d.y), np.nan) for m in grid}
        recs = []
        for r in results:
            if r.flux != flux:
                continue
            preds[r.mtry][r.test] = r.pred
            recs.append({"fold": r.fold, "mtry": r.mtry, "n": len(r.test),
                         "rmse": rmse(d.y[r.test], r.pred)})
        folds = pd.DataFrame.from_records(recs).sort_values(["mtry", "fold"],
                                                            ignore_index=True)
        rows = []
        for m in grid:
            fr = folds.loc[folds["mtry"] == m, "rmse"]
            rows.append({"mtry": m, "mean_fold_rmse": float(fr.mean()),
                         "sd_fold_rmse": float(fr.std(ddof=1)) if len(fr) > 1 else np.nan,
                         "n_folds": len(fr), **metrics(d.y, preds[m])})
        tab = pd.DataFrame.from_records(rows)
        best = int(tab["mtry"].iloc[int(np.argmin(tab["mean_fold_rmse"].to_numpy()))])
        out[flux] = TuneResult(best, tab, folds, preds)
    return out


def blocked_cv(data: TrainingData, tuned: dict[str, TuneResult], seed: int,
               progress: bool = True, ledger: FitLedger | None = None
               ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Held-out predictions of each flux's tuned forest over folds of whole spatial clusters.

    The clusters of :func:`site_clusters` (``bootstrap_cluster_km``) are dealt into the
    profile's ``n_folds`` folds as :func:`~abz_dask.training.folds.fold_ids` deals sites
    (``group_kfold``, shuffled with ``seed``), so a held-out site has no training site of its
    own cluster: its residual is an extrapolation error, which the interval of
    :mod:`abz_dask.aggregation.intervals` turns into a budget error. The fits are CV fits (the
    fold's own encoding, ``tuning_trees`` trees, the tuned mtry), recorded in ``ledger`` under
    the flux name ``<flux>.blocked``.

    Parameters
    ----------
    data : TrainingData
        Prepared rows (with clusters).
    tuned : dict
        Flux → :class:`TuneResult` (the mtry used).
    seed : int
        Base seed (fold dealing, fit seeds).
    progress : bool
        Show a progress bar.
    ledger : FitLedger, optional
        Finished fits to reuse and record.

    Returns
    -------
    dict
        Flux → ``(folds, predictions)``: the fold and the held-out prediction of every row.
    """
    fluxes = {}
    for f, d in data.fluxes.items():
        if d.clusters is None:
            raise ValueError("blocked_cv: the training data has no site clusters")
        fluxes[f] = replace(d, folds=fold_ids(d.clusters, "group_kfold", data.profile.n_folds,
                                              seed))
    blocked = replace(data, fluxes=fluxes)
    ref = ship_training_data(blocked)
    fit = dask.delayed(_cv_fit, pure=True)
    todo, results = [], []
    for f, d in blocked.fluxes.items():
        for fold, _, _ in iter_folds(d.folds):
            found = (ledger.load(f"{f}.blocked", fold, tuned[f].mtry) if ledger is not None
                     else None)
            if found is None:
                todo.append((f, fold))
            else:
                results.append(_CVFit(f, fold, tuned[f].mtry, *found))
    tasks = [fit(ref, f, fold, tuned[f].mtry, _task_seed(seed, "blocked", f, fold))
             for f, fold in todo]

    def record(_: int, r: _CVFit) -> None:
        assert ledger is not None
        ledger.save(f"{r.flux}.blocked", r.fold, r.mtry, r.test, r.pred)

    results += compute_with_progress(
        tasks, f"blocked CV: {len(tasks)} fits (clusters in {data.profile.n_folds} folds)",
        enabled=progress, on_result=record if ledger is not None else None)
    out = {}
    for f, d in blocked.fluxes.items():
        pred = np.full(len(d.y), np.nan)
        for r in results:
            if r.flux == f:
                pred[r.test] = r.pred
        out[f] = (d.folds, pred)
    return out


def _table_hash(table: pd.DataFrame, fluxes: Sequence[str],
                names: Sequence[str] = PREDICTOR_NAMES) -> str:
    extra = [p for p in names if p not in PREDICTOR_NAMES]  # user predictors, after the 17
    cols = ["site_id", "year", "month", *fluxes,
            *[p for p in PREDICTOR_NAMES if p != "month"], *extra]
    sub = table[[c for c in cols if c in table]].copy()
    sub["site_id"] = sub["site_id"].astype(str)
    h = pd.util.hash_pandas_object(sub, index=False).to_numpy()
    return hashlib.sha256(h.tobytes()).hexdigest()


def _versions() -> dict[str, str]:
    import sklearn
    import skops

    from abz_dask import __version__

    return {"abz_dask": __version__, "python": platform.python_version(),
            "scikit-learn": sklearn.__version__, "numpy": np.__version__,
            "pandas": pd.__version__, "dask": dask.__version__, "skops": skops.__version__}


def _cv_frame(table: pd.DataFrame, d: FluxData, pred: np.ndarray, cells: bool = False
              ) -> pd.DataFrame:
    """Held-out predictions with the rows' metadata (and, with ``cells``, their grid cell as
    ``cell_row, cell_col``)."""
    meta = [c for c in _CV_META if c in table]
    cv = table.iloc[d.rows][meta].reset_index(drop=True)
    if cells:
        cv["cell_row"] = table["row"].to_numpy()[d.rows]
        cv["cell_col"] = table["col"].to_numpy()[d.rows]
    cv.insert(0, "row", d.rows)
    cv["fold"] = d.folds
    cv["obs"] = d.y
    cv["pred"] = pred
    return cv


def train_bundle(table: pd.DataFrame, *, profile: str | TrainingProfile = "light",
                 fluxes: Sequence[str] = ("NEE", "GPP", "Reco"), seed: int = DEFAULT_SEED,
                 progress: bool = True, diagnostics_dir: str | Path | None = None,
                 checkpoint_dir: str | Path | None = None) -> ModelBundle:
    """Tune, fit and bootstrap one random forest per flux (see the module docstring).

    Parameters
    ----------
    table : DataFrame
        Training table from :func:`abz_dask.training.extract.extract_training_table` (or
        :func:`abz_dask.training.extract.read_training_table`).
    profile : str or TrainingProfile
        ``"light"`` (default), ``"paper"``, a YAML path or a profile
        (:func:`~abz_dask.training.profiles.resolve_profile`).
    fluxes : sequence of str
        Response columns (any numeric column such as ``CH4`` works).
    seed : int
        Base seed (default :data:`abz_dask.DEFAULT_SEED`): folds, CV fits, central
        model (``random_state = seed``), bootstrap b (``seed + b``), diagnostics.
    progress : bool
        Show progress bars of fits done.
    diagnostics_dir : path, optional
        When given, permutation importance and partial dependence are computed (as Dask tasks)
        and every diagnostic table and figure is written there.
    checkpoint_dir : path, optional
        Keep a :class:`~abz_dask.training.ledger.FitLedger` there of every finished CV fit,
        central and bootstrap model and diagnostic, so a killed run, restarted, computes only
        what is missing (bit-identical results).

    Returns
    -------
    ModelBundle
    """
    from abz_dask.training import diagnostics as diag

    prof = resolve_profile(profile)
    fluxes = list(fluxes)
    data = prepare(table, fluxes, prof, seed)
    ref = ship_training_data(data)
    ledger = None if checkpoint_dir is None else FitLedger(checkpoint_dir, {
        "table": _table_hash(table, fluxes, data.names),
        "profile": prof.model_dump(mode="json"),
        "seed": seed, "fluxes": fluxes, "scikit-learn": _versions()["scikit-learn"]})
    tuned = tune(data, ref, seed, progress, ledger)

    # the models first, then the diagnostics that read the central ones
    nb = prof.n_bootstrap
    fitted = _resume_models(ledger, ref, fluxes, tuned, nb, seed, progress)
    models = {f: fitted[f"{f}_central"] for f in fluxes}
    reps = [fitted[f"{f}_boot{b:02d}"] for f in fluxes for b in range(1, nb + 1)]
    diagnostics: list[Any] = []
    if diagnostics_dir is not None:
        named = [(f"diag_{f}_{j}", t) for f in fluxes for j, t in enumerate(
            _interpretation_tasks(ship_training_data(models[f]), ref, f,
                                  prof.importance_repeats, _task_seed(seed, "diag", f),
                                  len(data.predictors)))]
        diagnostics = _resume(named, "diagnostics", progress, *(
            (ledger.load_diagnostic, ledger.save_diagnostic) if ledger is not None else ()))
    boots = {f: list(reps[i * nb:(i + 1) * nb]) for i, f in enumerate(fluxes)}

    cv = {f: _cv_frame(table, data.fluxes[f], tuned[f].predictions[tuned[f].mtry])
          for f in fluxes}
    held: dict[str, pd.DataFrame] = {}
    if prof.interval == "blocked_cv":
        for f, (folds, pred) in blocked_cv(data, tuned, seed, progress, ledger).items():
            held[f] = _cv_frame(table, replace(data.fluxes[f], folds=folds), pred, cells=True)
    recs = []
    for f in fluxes:
        m = metrics(cv[f]["obs"], cv[f]["pred"])
        recs.append({"flux": f, "n": m.pop("n"), "n_sites": int(cv[f]["site_id"].nunique()),
                     "mtry": tuned[f].mtry, **m})
    pooled = pd.DataFrame.from_records(recs).set_index("flux")
    card = _card(table, data, tuned, models, boots, pooled, prof, seed)
    bundle = ModelBundle(models, boots, card, cv, pooled, held)
    if diagnostics_dir is not None:
        diag.write_diagnostics(bundle, tuned, diagnostics, as_path(diagnostics_dir))
    return bundle


def _interpretation_tasks(model: Any, ref: Any, flux: str, repeats: int, seed: int, n: int
                          ) -> list[Any]:
    """One diagnostic task per predictor of the set (``n``): the 17 of the paper by
    :func:`abz_dask.training.diagnostics.interpretation_tasks`, other sets the same way."""
    from abz_dask.training import diagnostics as diag

    if n == len(PREDICTOR_NAMES):
        return list(diag.interpretation_tasks(model, ref, flux, repeats, seed))
    prep = dask.delayed(diag._prepare, pure=True)(model, ref, seed)
    part = dask.delayed(diag._interpret, pure=True)
    return [part(prep, j, repeats, seed + 1 + j) for j in range(n)]


def _resume(named: list[tuple[str, Any]], what: str, progress: bool,
            load: Callable[[str], Any] | None = None,
            save: Callable[[str, Any], None] | None = None) -> list[Any]:
    """Results of named tasks: ``load(name)`` when recorded (not None), else computed, each
    passed to ``save(name, result)`` as soon as it finishes."""
    found = {n: load(n) if load is not None else None for n, _ in named}
    todo = [(n, t) for n, t in named if found[n] is None]
    label = f"fitting {len(todo)} {what}" + (f", {len(named) - len(todo)} done before"
                                            if len(todo) < len(named) else "")
    done = compute_with_progress(
        [t for _, t in todo], label, enabled=progress,
        on_result=None if save is None else lambda i, r: save(todo[i][0], r))
    found.update({n: r for (n, _), r in zip(todo, done, strict=True)})
    return [found[n] for n, _ in named]


def _resume_models(ledger: FitLedger | None, ref: Any, fluxes: Sequence[str],
                   tuned: dict[str, TuneResult], nb: int, seed: int, progress: bool
                   ) -> dict[str, FluxModel]:
    """Central and bootstrap models by ledger name (``NEE_central``, ``NEE_boot01``, ...)."""
    final = dask.delayed(_final_fit, pure=True)
    boot = dask.delayed(_bootstrap_fit, pure=True)
    named = [(f"{f}_central", final(ref, f, tuned[f].mtry, seed)) for f in fluxes]
    named += [(f"{f}_boot{b:02d}", boot(ref, f, b, tuned[f].mtry, seed))
              for f in fluxes for b in range(1, nb + 1)]
    models = _resume(named, "central + bootstrap models", progress,
                     *((ledger.load_model, ledger.save_model) if ledger is not None else ()))
    return {n: m for (n, _), m in zip(named, models, strict=True)}


def _card(table: pd.DataFrame, data: TrainingData, tuned: dict[str, TuneResult],
          models: dict[str, FluxModel], boots: dict[str, list[FluxModel]],
          pooled: pd.DataFrame, prof: TrainingProfile, seed: int) -> dict[str, Any]:
    entries: dict[str, Any] = {}
    for f, model in models.items():
        d = data.fluxes[f]
        trained = _encode(d.frame, d.y, data.names, prof)  # the codes before the legend
        entries[f] = {
            "n_rows": len(d.y), "n_sites": len(np.unique(d.sites)),
            "n_folds": len(np.unique(d.folds)),
            "central": {"predictors": list(model.predictors), "mtry": model.mtry,
                        "seed": model.seed, "n_estimators": model.estimator.n_estimators,
                        "encoding": model.encoding.to_json(),
                        "unseen_levels": _unseen_levels(trained)},
            "bootstraps": [{"replicate": i + 1, "predictors": list(b.predictors),
                            "mtry": b.mtry, "seed": b.seed,
                            "n_estimators": b.estimator.n_estimators}
                           for i, b in enumerate(boots[f])],
            "tuning": tuned[f].table.to_dict(orient="records"),
            "cv_metrics": {k: (v.item() if hasattr(v, "item") else v)
                           for k, v in pooled.loc[f].to_dict().items()},
        }
    return {
        "format": CARD_FORMAT, "version": CARD_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "fluxes": list(models), "units": {"response": "g C m-2 month-1",
                                          **{p.name: p.units for p in PREDICTORS},
                                          **{p.name: p.units for p in data.predictors}},
        "predictors": predictor_record(data.predictors),
        "observations": {"gpp_sign": table.attrs.get("gpp_sign")},
        "profile": prof.model_dump(mode="json"), "seed": seed,
        "cv": {"scheme": prof.cv, "n_folds": prof.n_folds if prof.cv == "group_kfold" else None,
               "mtry_grid": list(_mtry_grid(prof, len(data.predictors))),
               "selection": "lowest mean fold RMSE",
               "reported": "pooled held-out predictions"},
        **({"interval": {
            "method": "blocked_cv",
            "folds": f"{prof.n_folds} folds of spatial clusters of sites (complete linkage, at "
                     f"most {prof.bootstrap_cluster_km:g} km across)",
            "trees": prof.tuning_trees, "mtry": "tuned",
            "rule": "± 1.96 × sqrt(bootstrap SD² + CV error²)"}}
           if prof.interval == "blocked_cv" else {}),
        "tree_settings": {"min_samples_split": prof.min_samples_split,
                          "min_samples_leaf": prof.min_samples_leaf, "bootstrap": True,
                          "node_size_counts": prof.node_size_counts,
                          "max_features": "mtry", "criterion": "squared_error"},
        "bootstrap": {"replicates": prof.n_bootstrap,
                      "resampling": {
                          "row": "rows with replacement",
                          "site": "sites with replacement, all rows of each",
                          "cluster": "spatial clusters of sites (complete linkage, at most "
                                     f"{prof.bootstrap_cluster_km:g} km across) with "
                                     "replacement, all rows of each"}[prof.bootstrap_unit],
                      "predictors": list(data.bootstrap_names),
                      "mtry": f"min(tuned mtry, {len(data.bootstrap_names)})",
                      "seed": "seed + b, b = 1..B"},
        "categorical": {"predictors": [c for c in CATEGORICAL if c in data.names],
                        "month_scheme": prof.month_scheme,
                        "rule": "levels ordered by mean response of the training rows "
                                "(DECISIONS 7); unseen levels get the middle code"},
        "training_table": {"sha256": _table_hash(table, list(models), data.names),
                           "n_rows": len(table),
                           "n_sites": int(table["site_id"].nunique()),
                           "years": [int(table["year"].min()), int(table["year"].max())]
                           if "year" in table else None},
        "versions": _versions(),
        "models": entries,
    }
