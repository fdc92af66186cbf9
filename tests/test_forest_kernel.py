"""The numba forest kernel equals scikit-learn's ``RandomForestRegressor.predict``."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.ensemble import RandomForestRegressor
from sklearn.tree import DecisionTreeRegressor

from abz_dask.kernels import forest as fk

RTOL = 1e-9


def _table(n_rows: int, n_features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A small training table with a month-like and a category-like column and a noisy response."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, n_features))
    X[:, 0] = rng.integers(1, 13, n_rows)  # month code
    if n_features > 4:
        X[:, 4] = rng.choice([21, 30, 31, 33, 60, 70, 80, 120, 160], n_rows)  # vegtype code
    y = (np.sin(X[:, 1] * 2) + X[:, 2] * X[:, 3] + 0.1 * X[:, 0]
         + 0.3 * rng.normal(size=n_rows))
    return X, y


def _rows(X_train: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Prediction rows drawn around the training table (float32, some exact training values)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(X_train), n)
    X = X_train[idx] + rng.normal(scale=0.3, size=(n, X_train.shape[1]))
    X[:, 0] = X_train[idx, 0]
    if X_train.shape[1] > 4:
        X[:, 4] = X_train[idx, 4]
    X[::5] = X_train[idx[::5]]  # exactly the training values (lie next to thresholds)
    return X.astype(np.float32)


def _assert_close(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.dtype == np.float64
    assert ours.shape == ref.shape
    assert np.all(np.isfinite(ours))
    np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=0)


@pytest.fixture(scope="module")
def forest17() -> tuple[RandomForestRegressor, np.ndarray]:
    X, y = _table(2000, 17, 0)
    model = RandomForestRegressor(n_estimators=50, min_samples_split=6, max_features=9,
                                  random_state=1, n_jobs=2).fit(X, y)
    model.set_params(n_jobs=1)
    return model, X


def test_million_rows(forest17: tuple[RandomForestRegressor, np.ndarray]) -> None:
    model, X_train = forest17
    X = _rows(X_train, 1_000_000, 2)
    packed = fk.pack_forest(model)
    ours = fk.predict(packed, X)
    ref = model.predict(X)
    _assert_close(ours, ref)
    # summing in tree order like scikit-learn (n_jobs=1) gives the same bits
    assert np.array_equal(ours, ref)


@pytest.mark.parametrize("max_features", [2, 9, 17])
def test_500_trees(max_features: int) -> None:
    X_train, y = _table(2400, 17, max_features)
    model = RandomForestRegressor(n_estimators=500, min_samples_split=6,
                                  max_features=max_features, random_state=3, n_jobs=2)
    model.fit(X_train, y).set_params(n_jobs=1)
    X = _rows(X_train, 20_000, 4)
    _assert_close(fk.predict(fk.pack_forest(model), X), model.predict(X))


def test_fifteen_predictors() -> None:
    X_train, y = _table(3000, 15, 5)
    model = RandomForestRegressor(n_estimators=100, min_samples_split=6, max_features=5,
                                  random_state=6, n_jobs=2).fit(X_train, y)
    model.set_params(n_jobs=1)
    X = _rows(X_train, 50_000, 7)
    packed = fk.pack_forest(model)
    assert packed.n_features == 15
    _assert_close(fk.predict(packed, X), model.predict(X))


def test_parallel_sklearn_to_rtol(forest17: tuple[RandomForestRegressor, np.ndarray]) -> None:
    model, X_train = forest17
    X = _rows(X_train, 10_000, 8)
    ref = model.set_params(n_jobs=2).predict(X)
    model.set_params(n_jobs=1)
    _assert_close(fk.predict(fk.pack_forest(model), X), ref)


def test_list_of_trees_and_float64_input(
        forest17: tuple[RandomForestRegressor, np.ndarray]) -> None:
    model, X_train = forest17
    trees = model.estimators_[:7]
    X64 = _rows(X_train, 5000, 9).astype(np.float64) + 1e-9  # cast to float32 like sklearn
    ref = np.mean([t.predict(X64.astype(np.float32)) for t in trees], axis=0)
    packed = fk.pack_forest(list(trees))
    assert packed.n_trees == 7
    np.testing.assert_allclose(fk.predict(packed, X64), ref, rtol=RTOL, atol=0)


def test_nan_rows_are_nan(forest17: tuple[RandomForestRegressor, np.ndarray]) -> None:
    model, X_train = forest17
    X = _rows(X_train, 3001, 10)
    rng = np.random.default_rng(11)
    bad = rng.random(len(X)) < 0.3
    cols = rng.integers(0, X.shape[1], len(X))
    X_nan = X.copy()
    X_nan[bad, cols[bad]] = np.nan
    X_nan[-1, :] = np.nan
    bad[-1] = True
    ours = fk.predict(fk.pack_forest(model), X_nan)
    assert np.isnan(ours[bad]).all()
    _assert_close(ours[~bad], model.predict(X[~bad]))
    assert np.isnan(fk.predict(fk.pack_forest(model), np.full((5, 17), np.nan))).all()


def _stump(threshold: float) -> DecisionTreeRegressor:
    """A depth-1 tree on feature 0 whose split threshold is then set to ``threshold``."""
    X = np.array([[0.0], [0.0], [1.0], [1.0]])
    tree = DecisionTreeRegressor(max_depth=1).fit(X, [1.0, 1.0, 2.0, 2.0])
    assert tree.tree_.node_count == 3 and tree.tree_.feature[0] == 0
    tree.tree_.threshold[0] = threshold
    assert tree.tree_.threshold[0] == threshold  # the view is writable
    return tree


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("t64", [
    0.1, -0.1, 1.0 + 2.0 ** -30, -(1.0 + 2.0 ** -30), 1e-40, -1e-40, 0.0, 3.0e38, -3.0e38,
    float(np.float32(2.5)), float(np.nextafter(np.float32(2.5), np.float32(3))) - 1e-12,
    1e39, -1e39, 1.0 + 2.0 ** -23 - 2.0 ** -30, -(1.0 + 2.0 ** -23 - 2.0 ** -30),
])
def test_threshold_between_float32_neighbours(t64: float) -> None:
    """x just below, at and just above the float64 threshold: every float32 neighbour agrees."""
    tree = _stump(t64)
    t32 = fk.threshold_float32(np.array([t64]))[0]
    assert float(t32) <= t64 and (np.isinf(t32) or float(np.nextafter(t32, np.inf)) > t64)
    near = np.float32(np.clip(t64, -3.4e38, 3.4e38))
    xs = {near, t32, np.nextafter(t32, np.float32(np.inf)), np.nextafter(t32, np.float32(-np.inf)),
          np.float32(0.0), np.float32(-0.0), np.float32(np.inf), np.float32(-np.inf)}
    for _ in range(3):
        xs |= {np.nextafter(x, np.float32(np.inf)) for x in list(xs)}
        xs |= {np.nextafter(x, np.float32(-np.inf)) for x in list(xs)}
    X = np.array(sorted(xs), dtype=np.float32)[:, None]
    X = X[np.isfinite(X[:, 0])]  # scikit-learn rejects inf
    ref = tree.predict(X)
    assert set(ref) == {1.0, 2.0} or abs(t64) > 3.4e38
    ours = fk.predict(fk.pack_forest([tree]), X)
    assert np.array_equal(ours, ref)
    # ±inf are walked like any other value
    inf = fk.predict(fk.pack_forest([tree]), np.array([[np.inf], [-np.inf]], np.float32))
    assert np.array_equal(inf, [2.0, 1.0])


def test_threshold_rounding_rule() -> None:
    rng = np.random.default_rng(12)
    t64 = np.concatenate([rng.normal(size=10_000) * 10.0 ** rng.integers(-40, 38, 10_000),
                          np.float32(rng.normal(size=1000)).astype(np.float64)])
    t32 = fk.threshold_float32(t64)
    assert np.all(t32.astype(np.float64) <= t64)
    up = np.nextafter(t32, np.float32(np.inf)).astype(np.float64)
    assert np.all(up > t64)
    exact = np.float32(t64).astype(np.float64) == t64
    assert np.array_equal(t32[exact].astype(np.float64), t64[exact])


def test_float32_keys_order() -> None:
    rng = np.random.default_rng(13)
    with np.errstate(over="ignore"):
        random = (rng.normal(size=5000) * 10.0 ** rng.uniform(-45, 39, 5000)).astype(np.float32)
    v = np.concatenate([random, np.array([0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45], np.float32)])
    k = fk.float32_keys(v)
    order = np.argsort(v, kind="stable")
    assert np.all(np.diff(k[order].astype(np.int64)) >= 0)
    assert fk.float32_keys(np.float32(-0.0)) == fk.float32_keys(np.float32(0.0))
    assert np.all(k < fk.LEAF_KEY)


def test_specialise_equals_full(forest17: tuple[RandomForestRegressor, np.ndarray]) -> None:
    model, X_train = forest17
    packed = fk.pack_forest(model)
    X = _rows(X_train, 20_000, 14)
    for month in (1.0, 6.0, 12.0):
        block = X.copy()
        block[:, 0] = month
        block[:, 3] = np.float32(0.37)
        spec = fk.specialise(packed, {0: month, 3: 0.37})
        assert spec.n_nodes < packed.n_nodes
        assert spec.fixed == ((0, month), (3, float(np.float32(0.37))))
        full = fk.predict(packed, block)
        assert np.array_equal(fk.predict(spec, block), full)
        _assert_close(full, model.predict(block))
        # specialising in two steps is the same forest
        two = fk.specialise(fk.specialise(packed, {0: month}), {3: 0.37})
        assert np.array_equal(two.nodes, spec.nodes) and np.array_equal(two.values, spec.values)
    with pytest.raises(ValueError, match="specialised on feature 0"):
        fk.predict(spec, X)
    block[5, 0] = np.nan  # a NaN in a fixed column is just a NaN row
    assert np.isnan(fk.predict(spec, block)[5])


def test_predict_many(forest17: tuple[RandomForestRegressor, np.ndarray]) -> None:
    model, X_train = forest17
    X = _rows(X_train, 4003, 15)
    X[7, 2] = np.nan
    forests = [fk.pack_forest(model.estimators_[:k]) for k in (1, 10, 50)]
    forests.append(fk.pack_forest(model, wide=True))
    many = fk.predict_many(forests, X)
    assert many.shape == (4, len(X))
    for k, f in enumerate(forests):
        assert np.array_equal(many[k], fk.predict(f, X), equal_nan=True)


def test_wide_records_equal_compact(forest17: tuple[RandomForestRegressor, np.ndarray]) -> None:
    model, X_train = forest17
    X = _rows(X_train, 10_000, 16)
    compact = fk.pack_forest(model)
    wide = fk.pack_forest(model, wide=True)
    assert compact.nodes.dtype == fk.NODE_DTYPE and wide.nodes.dtype == fk.NODE_DTYPE_WIDE
    assert np.array_equal(fk.predict(wide, X), fk.predict(compact, X))
    X[:, 0] = 3.0
    assert np.array_equal(fk.predict(fk.specialise(wide, {0: 3.0}), X), fk.predict(compact, X))


def test_pickle_round_trip(forest17: tuple[RandomForestRegressor, np.ndarray]) -> None:
    model, X_train = forest17
    packed = fk.specialise(fk.pack_forest(model), {0: 4.0})
    clone = pickle.loads(pickle.dumps(packed))
    assert isinstance(clone, fk.PackedForest)
    assert clone.n_features == packed.n_features and clone.fixed == packed.fixed
    for name in ("nodes", "values", "offsets"):
        assert np.array_equal(getattr(clone, name), getattr(packed, name))
    X = _rows(X_train, 1000, 17)
    X[:, 0] = 4.0
    assert np.array_equal(fk.predict(clone, X), fk.predict(packed, X))
    assert len(pickle.dumps(packed)) < 1.2 * packed.nbytes + 10_000


def test_edge_cases(forest17: tuple[RandomForestRegressor, np.ndarray]) -> None:
    model, X_train = forest17
    packed = fk.pack_forest(model)
    assert fk.predict(packed, np.empty((0, 17), np.float32)).shape == (0,)
    for n in (1, 7, 8, 9, 17):  # not a multiple of the eight lanes
        X = _rows(X_train, n, n)
        _assert_close(fk.predict(packed, X), model.predict(X))
    X = _rows(X_train, 100, 18)
    out = np.empty(100)
    assert fk.predict(packed, X, out=out) is out
    Xf = np.asfortranarray(X)
    assert np.array_equal(fk.predict(packed, Xf), out)
    with pytest.raises(ValueError, match="X must be"):
        fk.predict(packed, X[:, :15])
    with pytest.raises(ValueError, match="out must be"):
        fk.predict(packed, X, out=np.empty(100, np.float32))
    # a tree that is a single leaf
    leaf = DecisionTreeRegressor().fit(np.zeros((3, 17)), [2.0, 2.0, 2.0])
    assert np.array_equal(fk.predict(fk.pack_forest([leaf]), X), np.full(100, 2.0))


def test_threads(forest17: tuple[RandomForestRegressor, np.ndarray]) -> None:
    """The kernels release the GIL and share nothing: concurrent calls give the same results."""
    from concurrent.futures import ThreadPoolExecutor

    model, X_train = forest17
    packed = fk.pack_forest(model)
    blocks = [_rows(X_train, 20_000 + k, 20 + k) for k in range(6)]
    serial = [fk.predict(packed, b) for b in blocks]
    with ThreadPoolExecutor(3) as pool:
        parallel = list(pool.map(lambda b: fk.predict(packed, b), blocks))
    for a, b in zip(serial, parallel, strict=True):
        assert np.array_equal(a, b)


def test_kernel_encoding_matches_float32_keys() -> None:
    """The in-kernel encoder agrees with :func:`float32_keys` (signed zeros, subnormals, inf)."""
    rng = np.random.default_rng(30)
    special = np.array([0.0, -0.0, 1e-45, -1e-45, 1.2e-38, -1.2e-38, np.inf, -np.inf, 3.4e38,
                        -3.4e38, 1.0, -1.0], np.float32)
    X = rng.choice(special, size=(37, 5)).astype(np.float32)
    X[3, 2] = np.nan
    rows, keys, m = fk._prepare(X)
    kept = np.flatnonzero(~np.isnan(X).any(axis=1))
    assert m == len(kept) and np.array_equal(rows[:m], kept)
    lanes = keys.transpose(0, 2, 1).reshape(-1, 5)  # back to (row, feature)
    assert np.array_equal(lanes[:m], fk.float32_keys(X[kept]))
    assert not lanes[m:].any()  # padding lanes


def test_prepared_pruned_multi_forest_equals_sklearn(
        forest17: tuple[RandomForestRegressor, np.ndarray]) -> None:
    """The upscaler's path: one encoded block, month-like segments with a constant column 0,
    chunks box-pruned (>= PRUNE_MIN_ROWS rows), several forests in one call; NaN rows stay NaN."""
    model, X_train = forest17
    other = RandomForestRegressor(n_estimators=30, min_samples_split=6, max_features=5,
                                  random_state=3).fit(X_train, X_train[:, 1])
    n_seg = fk.PRUNE_MIN_ROWS + 213  # segment starts fall inside groups of eight
    blocks = []
    for s, month in enumerate((1, 7, 12)):
        B = _rows(X_train, n_seg + 5 * s, 10 + s)
        B[:, 0] = month
        blocks.append(B)
    X = np.concatenate(blocks)
    X[::97, 3] = np.nan
    starts = np.cumsum([0, *(len(b) for b in blocks[:-1])])
    prepared = fk.prepare(X, segments=starts)
    assert len(prepared.chunks) > 4  # segment chunks and straddling groups
    forests = [fk.pack_forest(model), fk.pack_forest(other)]
    got = fk.predict_many(forests, prepared)
    ok = ~np.isnan(X).any(axis=1)
    for k, ref_model in enumerate((model, other)):
        assert np.isnan(got[k, ~ok]).all()
        np.testing.assert_array_equal(got[k, ok], ref_model.predict(X[ok]))
        np.testing.assert_array_equal(got[k], fk.predict(forests[k], X))  # plain path
    # a short block (no chunk is pruned) and an empty one
    np.testing.assert_array_equal(fk.predict_many(forests, fk.prepare(X[:20]))[0],
                                  fk.predict(forests[0], X[:20]))
    assert fk.predict_many(forests, fk.prepare(X[:0])).shape == (2, 0)
