"""Random-forest inference that reproduces scikit-learn exactly, 2.5-4x faster on one core.

A fitted :class:`sklearn.ensemble.RandomForestRegressor` (or a list of
:class:`sklearn.tree.DecisionTreeRegressor`) is flattened by :func:`pack_forest` into a
:class:`PackedForest` — a few flat numpy arrays — and evaluated by :func:`predict` on 2-D float32
blocks of rows × predictors. :func:`specialise` prunes a packed forest for predictors that are
constant over a block (month and CO2 within one tile-month).

Exactness
---------
scikit-learn casts ``X`` to float32 and sends a row left when ``X[i, f] <= threshold`` with the
float64 ``threshold`` (the comparison is done in float64). For every float32 ``x``::

    x <= t64  <=>  x <= t32,   t32 = the largest float32 that is <= t64

(``x <= t64`` implies ``x <= t32`` because ``x`` is itself a float32 ``<= t64``; the converse
follows from ``t32 <= t64``). :func:`pack_forest` therefore stores ``t32`` — ``float32(t64)``
rounded toward minus infinity, not to nearest — and every decision equals scikit-learn's, including
for inputs that lie one float32 ulp either side of a threshold.

Leaves keep scikit-learn's float64 values and the prediction is ``(v_0 + v_1 + ... ) / n_trees``
summed in tree order, as ``RandomForestRegressor.predict`` does with ``n_jobs=1``: the result is
bit-identical to scikit-learn (with ``n_jobs > 1`` scikit-learn sums in a thread-dependent order,
so the two agree to a few ulp).

Differences from scikit-learn, deliberate:

- a row with a NaN in ANY predictor predicts NaN (scikit-learn would route the NaN down a learnt
  missing-value branch, i.e. impute it; the upscaler must never do that);
- ``±inf`` is walked like any other value (scikit-learn refuses it).

How it is fast
--------------
Measured in ``benchmarks/bench_forest.py`` (``benchmarks/RESULTS_forest.md``).

- Comparisons are done on *integer keys*: every float32 is mapped to a uint32 whose unsigned order
  is the float order (``-0.0`` is mapped to ``+0.0`` first; :func:`float32_keys`), thresholds
  included, so a node is one 8-byte record ``(key: u32, left: u16, xoff: u16)`` that the
  kernel loads as a single uint64 (``xoff`` = feature × 8, see below).
- The right child is always stored at ``left + 1`` (trees are laid out again depth-first with
  sibling pairs adjacent), so one step of a walk is the branch-free
  ``node = left + (x_key > key)`` — a compare and an add-with-carry, no branch to mispredict.
- Leaves point to themselves with ``key = 0xFFFFFFFF``, which no input key exceeds, so a row
  that has reached its leaf stays there while the others finish; and since a leaf's ``left`` is its
  own index, the leaf value is found from the record just loaded — the lane indices are dead after
  each load, which keeps the eight lanes in registers (no spills).
- Eight rows walk a tree in lock-step (eight independent load chains hide the L1 latency) until all
  eight sit in leaves, tested with one AND of the eight node keys (one predictable branch per
  step). On spatially coherent rows the eight finish within ≈ 3 steps of each other.
- The rows of ``X`` without NaN are encoded once per block into lane-interleaved groups
  ``keys[group, feature, lane]``: the eight rows walked together read each predictor from one
  32-byte run, and consecutive groups are adjacent in memory (hardware prefetch).
- The loop is tree-major over chunks of up to :data:`CHUNK_ROWS` rows, so a tree (≈ 16 kB for
  2,000 nodes) is fetched once per chunk and then stays in L1.
- The leaf values are summed in tree order in float64, as scikit-learn does.
- :func:`prepare` encodes a block once for any number of forests (:func:`predict_many`); given
  the row starts of constant-month segments it walks each chunk of one tile-month through a
  *box-pruned* copy of every tree: the splits decided for all the chunk's rows (constant month and
  CO2, thresholds outside the chunk's range) are bypassed, so the copy is small and paths shorter,
  and every row still reaches its leaf (bit-identical). This is :func:`specialise` per chunk,
  without a cache.

Trees with more than 65,535 nodes use 16-byte records ``(key, left, xoff, pad: u32)`` and a
second copy of the kernel that reads the fields one by one (≈ 25 % slower).

All kernels are compiled with :func:`abz_dask.kernels._numba.njit` (nopython, ``nogil``, CPU
target, IEEE maths), allocate their own scratch and are safe to call from several threads at once
(Dask parallelises over tiles).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from abz_dask.kernels._numba import njit

__all__ = [
    "CHUNK_ROWS",
    "LANES",
    "PRUNE_MIN_ROWS",
    "PackedForest",
    "PreparedRows",
    "float32_keys",
    "pack_forest",
    "predict",
    "predict_many",
    "prepare",
    "specialise",
    "threshold_float32",
]

#: Rows walked in lock-step through one tree (the kernel is written out for exactly eight).
LANES = 8
#: Rows per tree-major chunk: larger chunks load each tree fewer times; 32k rows of 17 uint32 keys
#: (2.2 MB) still stream well from L2/L3 (measured: smaller chunks were slower).
CHUNK_ROWS = 32768
#: Chunks of at least this many rows walk box-pruned trees (:func:`prepare`): below it, copying the
#: surviving nodes of every tree costs about what the shorter walks save (measured on the twin:
#: 1,024-row chunks 0.8x, 8,192-row chunks 1.03-1.10x the full-tree walk).
PRUNE_MIN_ROWS = 6144

#: Compact node record, read by the kernel as one little-endian uint64
#: ``key | left << 32 | xoff << 48`` (trees of at most 65,535 nodes, at most 8,191 features).
#: ``key`` is the threshold's key (:func:`float32_keys`) or :data:`LEAF_KEY`; ``left`` the index of
#: the left child within the tree (the right child is ``left + 1``; a leaf's own index); ``xoff``
#: the offset of the split feature in an encoded group of rows, ``feature * LANES``.
NODE_DTYPE = np.dtype([("key", "<u4"), ("left", "<u2"), ("xoff", "<u2")])
#: Wide node record for bigger trees (same fields).
NODE_DTYPE_WIDE = np.dtype([("key", "<u4"), ("left", "<u4"), ("xoff", "<u4"), ("pad", "<u4")])
#: Key of a leaf: larger than the key of every float32 that is not NaN.
LEAF_KEY = np.uint32(0xFFFFFFFF)

_SIGN = np.uint32(0x80000000)


# --------------------------------------------------------------------------------------------
# Threshold rounding and keys
# --------------------------------------------------------------------------------------------

def threshold_float32(threshold: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Largest float32 that is ``<=`` each float64 threshold (rounding toward minus infinity).

    For every float32 ``x``, ``x <= t64`` (scikit-learn's test) holds exactly when
    ``x <= threshold_float32(t64)``.

    Parameters
    ----------
    threshold : array_like of float64
        Split thresholds as stored by scikit-learn.

    Returns
    -------
    numpy.ndarray of float32
        Thresholds rounded down to float32; ``-0.0`` is returned as ``+0.0`` (equal under ``<=``).
    """
    t64 = np.asarray(threshold, dtype=np.float64)
    with np.errstate(over="ignore"):
        t32 = t64.astype(np.float32)  # round to nearest; |t64| > FLT_MAX gives ±inf
    above = t32.astype(np.float64) > t64
    t32[above] = np.nextafter(t32[above], np.float32(-np.inf))
    t32[t32 == 0] = np.float32(0.0)
    return t32


def float32_keys(values: npt.ArrayLike) -> npt.NDArray[np.uint32]:
    """Order-preserving uint32 keys of float32 values (``a <= b`` iff ``key(a) <= key(b)``).

    ``-0.0`` and ``+0.0`` share the key ``0x80000000``. NaN has no meaningful key (the kernels never
    look at rows containing NaN).

    Parameters
    ----------
    values : array_like
        Values, cast to float32 first.

    Returns
    -------
    numpy.ndarray of uint32
        Keys with the shape of ``values``.
    """
    a = np.array(values, dtype=np.float32, ndmin=1) + np.float32(0.0)  # -0.0 + 0.0 == +0.0
    bits = np.ascontiguousarray(a).view(np.uint32)
    keys = np.where(bits & _SIGN, ~bits, bits | _SIGN).astype(np.uint32)
    return keys.reshape(np.shape(values))


# --------------------------------------------------------------------------------------------
# The packed forest
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class PackedForest:
    """A regression forest flattened into node records (see the module docstring).

    Attributes
    ----------
    nodes : numpy.ndarray
        Node records of all trees, tree after tree (:data:`NODE_DTYPE` or
        :data:`NODE_DTYPE_WIDE`). ``left`` is relative to the tree's first node; the right child is
        ``left + 1``; a leaf has ``key == 0xFFFFFFFF`` and ``left`` equal to its own index.
    values : numpy.ndarray of float64
        Value of every node (only leaves are read), aligned with ``nodes``.
    offsets : numpy.ndarray of int64
        ``nodes[offsets[t]:offsets[t + 1]]`` is tree ``t`` (its root first).
    n_features : int
        Number of predictor columns ``X`` must have.
    fixed : tuple of (int, float)
        Predictors the forest was specialised on (:func:`specialise`) and their values; empty for
        a full forest.
    """

    nodes: np.ndarray
    values: npt.NDArray[np.float64]
    offsets: npt.NDArray[np.int64]
    n_features: int
    fixed: tuple[tuple[int, float], ...] = field(default=())

    @property
    def n_trees(self) -> int:
        """Number of trees."""
        return int(self.offsets.shape[0] - 1)

    @property
    def n_nodes(self) -> int:
        """Total number of nodes (internal and leaves)."""
        return int(self.nodes.shape[0])

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays, in bytes."""
        return int(self.nodes.nbytes + self.values.nbytes + self.offsets.nbytes)


def _trees_of(model: Any) -> list[Any]:
    """The fitted ``sklearn.tree._tree.Tree`` objects of a forest or of a list of trees."""
    if "Classifier" in type(model).__name__:
        raise TypeError("classification forests are not supported")
    estimators = getattr(model, "estimators_", model)
    if not isinstance(estimators, Iterable):
        raise TypeError(f"expected a fitted forest or a list of trees, got {type(model)!r}")
    trees: list[Any] = [getattr(e, "tree_", e) for e in estimators]
    if not trees:
        raise ValueError("the forest has no trees")
    for t in trees:
        if not hasattr(t, "children_left"):
            raise TypeError(f"not a fitted scikit-learn tree: {type(t)!r}")
        if "Classifier" in type(t).__name__:
            raise TypeError("classification trees are not supported")
        if t.n_outputs != 1 or t.value.shape[2] != 1:
            raise ValueError("only single-output regression trees are supported")
    return trees


def pack_forest(model: Any, *, wide: bool | None = None) -> PackedForest:
    """Flatten a fitted scikit-learn regression forest for :func:`predict`.

    Parameters
    ----------
    model : RandomForestRegressor or sequence of DecisionTreeRegressor
        Anything with ``estimators_`` of fitted trees, or the trees (or their ``tree_``) themselves.
        Single-output regression only.
    wide : bool, optional
        Force 16-byte node records (``True``) or 8-byte ones (``False``). By default the compact
        records are used when every tree has at most 65,535 nodes.

    Returns
    -------
    PackedForest
        The packed forest (picklable; ≈ 16 bytes per node).
    """
    trees = _trees_of(model)
    n_features = int(trees[0].n_features)
    if any(int(t.n_features) != n_features for t in trees):
        raise ValueError("trees disagree on the number of features")
    sizes = np.array([int(t.node_count) for t in trees], dtype=np.int64)
    too_big = bool(sizes.max() > 0xFFFF or n_features * LANES > 0xFFFF)
    if wide is None:
        wide = too_big
    elif not wide and too_big:
        raise ValueError("a tree has more than 65,535 nodes (or > 8,191 features): use wide=True")
    offsets = np.zeros(len(trees) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(sizes)
    nodes = np.zeros(int(offsets[-1]), dtype=NODE_DTYPE_WIDE if wide else NODE_DTYPE)
    values = np.zeros(int(offsets[-1]), dtype=np.float64)
    for t, tree in enumerate(trees):
        left = np.asarray(tree.children_left, dtype=np.int64)
        right = np.asarray(tree.children_right, dtype=np.int64)
        pos = _layout(left, right)  # new position of each sklearn node
        internal = left >= 0
        o, e = offsets[t], offsets[t + 1]
        tn, tv = nodes[o:e], values[o:e]
        key = np.full(left.shape[0], LEAF_KEY, dtype=np.uint32)
        key[internal] = float32_keys(threshold_float32(tree.threshold[internal]))
        child = pos.copy()
        child[internal] = pos[left[internal]]
        feature = np.where(internal, tree.feature, 0)
        tn["key"][pos] = key
        tn["left"][pos] = child
        tn["xoff"][pos] = feature * LANES
        tv[pos] = np.asarray(tree.value, dtype=np.float64)[:, 0, 0]
        if np.any(feature[internal] >= n_features) or np.any(feature[internal] < 0):
            raise ValueError("a split refers to a feature outside 0..n_features-1")
    return PackedForest(nodes=nodes, values=values, offsets=offsets, n_features=n_features)


def _layout(left: npt.NDArray[np.int64], right: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """New index of every node: root at 0, the two children of a node in adjacent slots.

    Depth-first (left subtree first) so that a path touches few cache lines.
    """
    n = left.shape[0]
    pos = np.zeros(n, dtype=np.int64)
    stack = [0]
    nxt = 1
    while stack:
        i = stack.pop()
        if left[i] >= 0:
            pos[left[i]] = nxt
            pos[right[i]] = nxt + 1
            nxt += 2
            stack.append(int(right[i]))
            stack.append(int(left[i]))
    if nxt != n:
        raise ValueError("tree arrays are not a binary tree rooted at node 0")
    return pos


# --------------------------------------------------------------------------------------------
# numba kernels
# --------------------------------------------------------------------------------------------

@njit
def _encode(X: np.ndarray, rows: np.ndarray, keys: np.ndarray) -> int:  # pragma: no cover - numba
    """Keys of the rows of ``X`` without NaN, in lane-interleaved groups of eight.

    ``X`` (C-contiguous float32) is read as its uint32 bit patterns. The ``j``-th row without NaN
    goes to ``keys[j // 8, :, j % 8]``, so the eight rows walked together have each predictor in
    32 adjacent bytes. Writes the indices of the kept rows to ``rows`` and returns their number
    ``m``; the lanes of the last group past ``m`` get key 0 (walked, then discarded).
    """
    n, nf = X.shape
    bits = X.view(np.uint32)
    m = 0
    for r in range(n):
        ok = True
        for f in range(nf):
            if (bits[r, f] & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
                ok = False
                break
        if not ok:
            continue
        g = m // 8
        lane = m % 8
        for f in range(nf):
            b = bits[r, f]
            if b == np.uint32(0x80000000):  # -0.0 -> +0.0
                b = np.uint32(0)
            if b & np.uint32(0x80000000):
                keys[g, f, lane] = ~b
            else:
                keys[g, f, lane] = b | np.uint32(0x80000000)
        rows[m] = r
        m += 1
    if m % 8:
        for f in range(nf):
            for lane in range(m % 8, 8):
                keys[m // 8, f, lane] = np.uint32(0)
    return m


_U16 = np.uint64(0xFFFF)
_U32 = np.uint64(32)
_U48 = np.uint64(48)
_U32MASK = np.uint64(0xFFFFFFFF)
_U51 = np.uint64(51)


@njit
def _walk_groups(nd: np.ndarray, v: np.ndarray, x: np.ndarray, gstride: np.uint64, c0: int,
                 c1: int, acc: np.ndarray) -> None:  # pragma: no cover - numba
    """Add the leaf value of one tree to ``acc`` for the eight-row groups ``c0 .. c1 - 1``.

    ``nd`` is one tree's :data:`NODE_DTYPE` records viewed as little-endian uint64, so one load
    brings a whole node: ``key = q & 0xFFFFFFFF``, ``left = (q >> 32) & 0xFFFF``,
    ``xoff = q >> 48``. ``x`` is the raveled ``(groups, n_features, 8)`` output of
    :func:`_encode`. The eight rows of a group walk the tree in lock-step until all eight are in
    leaves. A leaf's ``left`` is its own index, so the leaf values are found from ``q`` and the old
    indices are dead once ``q`` is loaded (no register spills). Unsigned index arithmetic spares
    numba's negative-index fix-ups.
    """
    for g in range(c0, c1):
        gb = np.uint64(g) * gstride
        i0 = i1 = i2 = i3 = i4 = i5 = i6 = i7 = np.uint64(0)
        while True:
            q0 = nd[i0]
            q1 = nd[i1]
            q2 = nd[i2]
            q3 = nd[i3]
            q4 = nd[i4]
            q5 = nd[i5]
            q6 = nd[i6]
            q7 = nd[i7]
            if (q0 & q1 & q2 & q3 & q4 & q5 & q6 & q7 & _U32MASK) == _U32MASK:
                break  # all eight rows are in leaves
            i0 = ((q0 >> _U32) & _U16) + np.uint64(
                x[gb + (q0 >> _U48)] > (q0 & _U32MASK))
            i1 = ((q1 >> _U32) & _U16) + np.uint64(
                x[gb + (q1 >> _U48) + np.uint64(1)] > (q1 & _U32MASK))
            i2 = ((q2 >> _U32) & _U16) + np.uint64(
                x[gb + (q2 >> _U48) + np.uint64(2)] > (q2 & _U32MASK))
            i3 = ((q3 >> _U32) & _U16) + np.uint64(
                x[gb + (q3 >> _U48) + np.uint64(3)] > (q3 & _U32MASK))
            i4 = ((q4 >> _U32) & _U16) + np.uint64(
                x[gb + (q4 >> _U48) + np.uint64(4)] > (q4 & _U32MASK))
            i5 = ((q5 >> _U32) & _U16) + np.uint64(
                x[gb + (q5 >> _U48) + np.uint64(5)] > (q5 & _U32MASK))
            i6 = ((q6 >> _U32) & _U16) + np.uint64(
                x[gb + (q6 >> _U48) + np.uint64(6)] > (q6 & _U32MASK))
            i7 = ((q7 >> _U32) & _U16) + np.uint64(
                x[gb + (q7 >> _U48) + np.uint64(7)] > (q7 & _U32MASK))
        r0 = g * 8
        acc[r0] += v[(q0 >> _U32) & _U16]
        acc[r0 + 1] += v[(q1 >> _U32) & _U16]
        acc[r0 + 2] += v[(q2 >> _U32) & _U16]
        acc[r0 + 3] += v[(q3 >> _U32) & _U16]
        acc[r0 + 4] += v[(q4 >> _U32) & _U16]
        acc[r0 + 5] += v[(q5 >> _U32) & _U16]
        acc[r0 + 6] += v[(q6 >> _U32) & _U16]
        acc[r0 + 7] += v[(q7 >> _U32) & _U16]


@njit
def _decided(nd: np.ndarray, i: np.uint64, lo: np.ndarray,
             hi: np.ndarray) -> np.uint64:  # pragma: no cover - numba
    """Follow ``i`` down while its split is decided for every key in ``[lo, hi]``.

    A split ``x_key > key`` on feature ``f`` sends every row left when ``hi[f] <= key`` and every
    row right when ``lo[f] > key``; the first node whose split is not decided (or a leaf) is
    returned.
    """
    while True:
        q = nd[i]
        k = q & _U32MASK
        if k == _U32MASK:
            return i
        f = q >> _U51
        if hi[f] <= k:
            i = (q >> _U32) & _U16
        elif lo[f] > k:
            i = ((q >> _U32) & _U16) + np.uint64(1)
        else:
            return i


@njit
def _prune_tree(nd: np.ndarray, v: np.ndarray, lo: np.ndarray, hi: np.ndarray, pn: np.ndarray,
                pv: np.ndarray, stack: np.ndarray) -> int:  # pragma: no cover - numba
    """Copy one tree into ``pn``/``pv`` without the splits decided for keys in ``[lo, hi]``.

    Every row whose keys lie in the box reaches the same leaf (same value) in the copy as in the
    tree. Only the surviving nodes are visited; they are laid out again depth-first with adjacent
    children (as :func:`pack_forest` does). Returns the number of nodes of the copy.
    """
    stack[0] = np.int64(_decided(nd, np.uint64(0), lo, hi))
    stack[1] = 0
    sp = 2
    nxt = 1
    keep = ~(_U16 << _U32)
    while sp > 0:
        sp -= 2
        old = np.uint64(stack[sp])
        new = stack[sp + 1]
        q = nd[old]
        pv[new] = v[old]
        if (q & _U32MASK) == _U32MASK:
            pn[new] = (q & keep) | (np.uint64(new) << _U32)
            continue
        pn[new] = (q & keep) | (np.uint64(nxt) << _U32)
        base = (q >> _U32) & _U16
        # right child first on the stack, so the left subtree is laid out first
        stack[sp] = np.int64(_decided(nd, base + np.uint64(1), lo, hi))
        stack[sp + 1] = nxt + 1
        stack[sp + 2] = np.int64(_decided(nd, base, lo, hi))
        stack[sp + 3] = nxt
        sp += 4
        nxt += 2
    return nxt


@njit
def _walk_compact(nodes64: np.ndarray, values: np.ndarray, offsets: np.ndarray, keys: np.ndarray,
                  m: int, chunks: np.ndarray, prune_min: int,
                  acc: np.ndarray) -> None:  # pragma: no cover - numba
    """``acc[r] = sum over trees (in order) of the leaf value reached by row r``, for r < m.

    Tree-major over chunks of eight-row groups (``chunks[c] .. chunks[c + 1] - 1``). For a chunk of
    at least ``prune_min`` rows the box of its keys (per feature min and max over its rows) is
    computed and every tree is first copied without the splits that the box decides
    (:func:`_prune_tree`: month and CO2, constant over a tile-month, and every threshold outside
    the chunk's range); each row reaches the same leaf, so the sums are unchanged, bit for bit.
    The pruned copy is small and stays in L1 while the chunk walks it.
    """
    nf = keys.shape[1]
    x = keys.ravel()
    gstride = np.uint64(nf * 8)
    n_trees = offsets.shape[0] - 1
    for r in range(m):
        acc[r] = 0.0
    maxn = 1
    for t in range(n_trees):
        maxn = max(maxn, offsets[t + 1] - offsets[t])
    pn = np.empty(maxn, np.uint64)
    pv = np.empty(maxn, np.float64)
    stack = np.empty(2 * maxn + 4, np.int64)
    lo = np.empty(nf, np.uint64)
    hi = np.empty(nf, np.uint64)
    for c in range(chunks.shape[0] - 1):
        c0 = chunks[c]
        c1 = chunks[c + 1]
        r1 = min(m, c1 * 8)
        prune = r1 - c0 * 8 >= prune_min
        if prune:
            for f in range(nf):
                lo[f] = _U32MASK
                hi[f] = np.uint64(0)
            for r in range(c0 * 8, r1):
                for f in range(nf):
                    k = np.uint64(keys[r // 8, f, r % 8])
                    if k < lo[f]:
                        lo[f] = k
                    if k > hi[f]:
                        hi[f] = k
        for t in range(n_trees):
            nd = nodes64[offsets[t]:offsets[t + 1]]
            v = values[offsets[t]:offsets[t + 1]]
            if prune:
                _prune_tree(nd, v, lo, hi, pn, pv, stack)
                _walk_groups(pn, pv, x, gstride, c0, c1, acc)
            else:
                _walk_groups(nd, v, x, gstride, c0, c1, acc)


@njit
def _walk_wide(nodes: np.ndarray, values: np.ndarray, offsets: np.ndarray, keys: np.ndarray,
               m: int, chunks: np.ndarray, acc: np.ndarray) -> None:  # pragma: no cover - numba
    """:func:`_walk_compact` for :data:`NODE_DTYPE_WIDE` records (fields read one by one; the
    trees are walked unpruned)."""
    nf = keys.shape[1]
    x = keys.ravel()
    gstride = np.uint64(nf * 8)
    n_trees = offsets.shape[0] - 1
    for r in range(m):
        acc[r] = 0.0
    for c in range(chunks.shape[0] - 1):
        c0 = chunks[c]
        c1 = chunks[c + 1]
        for t in range(n_trees):
            nd = nodes[offsets[t]:offsets[t + 1]]
            v = values[offsets[t]:offsets[t + 1]]
            for g in range(c0, c1):
                gb = np.uint64(g) * gstride
                i0 = i1 = i2 = i3 = i4 = i5 = i6 = i7 = np.uint64(0)
                while True:
                    n0 = nd[i0]
                    k0 = n0.key
                    n1 = nd[i1]
                    k1 = n1.key
                    n2 = nd[i2]
                    k2 = n2.key
                    n3 = nd[i3]
                    k3 = n3.key
                    n4 = nd[i4]
                    k4 = n4.key
                    n5 = nd[i5]
                    k5 = n5.key
                    n6 = nd[i6]
                    k6 = n6.key
                    n7 = nd[i7]
                    k7 = n7.key
                    if (k0 & k1 & k2 & k3 & k4 & k5 & k6 & k7) == np.uint32(0xFFFFFFFF):
                        break
                    i0 = np.uint64(n0.left) + np.uint64(x[gb + np.uint64(n0.xoff)] > k0)
                    i1 = np.uint64(n1.left) + np.uint64(
                        x[gb + np.uint64(n1.xoff) + np.uint64(1)] > k1)
                    i2 = np.uint64(n2.left) + np.uint64(
                        x[gb + np.uint64(n2.xoff) + np.uint64(2)] > k2)
                    i3 = np.uint64(n3.left) + np.uint64(
                        x[gb + np.uint64(n3.xoff) + np.uint64(3)] > k3)
                    i4 = np.uint64(n4.left) + np.uint64(
                        x[gb + np.uint64(n4.xoff) + np.uint64(4)] > k4)
                    i5 = np.uint64(n5.left) + np.uint64(
                        x[gb + np.uint64(n5.xoff) + np.uint64(5)] > k5)
                    i6 = np.uint64(n6.left) + np.uint64(
                        x[gb + np.uint64(n6.xoff) + np.uint64(6)] > k6)
                    i7 = np.uint64(n7.left) + np.uint64(
                        x[gb + np.uint64(n7.xoff) + np.uint64(7)] > k7)
                r0 = g * 8
                acc[r0] += v[i0]
                acc[r0 + 1] += v[i1]
                acc[r0 + 2] += v[i2]
                acc[r0 + 3] += v[i3]
                acc[r0 + 4] += v[i4]
                acc[r0 + 5] += v[i5]
                acc[r0 + 6] += v[i6]
                acc[r0 + 7] += v[i7]


@njit
def _prepare(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:  # pragma: no cover - numba
    """Encoded rows without NaN (:func:`_encode`), their indices in ``X`` and their number."""
    n, nf = X.shape
    rows = np.empty(n, np.int64)
    keys = np.empty(((n + 7) // 8, nf, 8), np.uint32)
    m = _encode(X, rows, keys)
    return rows, keys, m


@njit
def _finish(acc: np.ndarray, rows: np.ndarray, m: int, n_trees: int,
            out: np.ndarray) -> None:  # pragma: no cover - numba
    """``out[rows[j]] = acc[j] / n_trees``; NaN for the rows that were dropped (NaN input)."""
    out[:] = np.nan
    for j in range(m):
        out[rows[j]] = acc[j] / n_trees


@njit
def _mean_compact(nodes64: np.ndarray, values: np.ndarray, offsets: np.ndarray, rows: np.ndarray,
                  keys: np.ndarray, m: int, chunks: np.ndarray, prune_min: int,
                  out: np.ndarray) -> None:  # pragma: no cover - numba
    """Forest mean of encoded rows into ``out`` (compact records)."""
    acc = np.empty(keys.shape[0] * 8, np.float64)
    _walk_compact(nodes64, values, offsets, keys, m, chunks, prune_min, acc)
    _finish(acc, rows, m, offsets.shape[0] - 1, out)


@njit
def _mean_wide(nodes: np.ndarray, values: np.ndarray, offsets: np.ndarray, rows: np.ndarray,
               keys: np.ndarray, m: int, chunks: np.ndarray,
               out: np.ndarray) -> None:  # pragma: no cover - numba
    """Forest mean of encoded rows into ``out`` (wide records)."""
    acc = np.empty(keys.shape[0] * 8, np.float64)
    _walk_wide(nodes, values, offsets, keys, m, chunks, acc)
    _finish(acc, rows, m, offsets.shape[0] - 1, out)


@njit
def _specialise(nodes: np.ndarray, values: np.ndarray, offsets: np.ndarray, is_fixed: np.ndarray,
                fixed_key: np.ndarray, out_nodes: np.ndarray, out_values: np.ndarray,
                out_offsets: np.ndarray) -> int:  # pragma: no cover - numba
    """Copy every tree bypassing the splits on fixed features; returns the number of nodes.

    A split on a fixed feature ``f`` is replaced by the child that a row with key
    ``fixed_key[f]`` takes; the survivors are laid out again depth-first with adjacent children.
    """
    n_trees = offsets.shape[0] - 1
    stack = np.empty(2 * (offsets[1:] - offsets[:-1]).max() + 2, np.int64)  # (old, new) pairs
    out_offsets[0] = 0
    total = 0
    for t in range(n_trees):
        nd = nodes[offsets[t]:offsets[t + 1]]
        v = values[offsets[t]:offsets[t + 1]]
        base = total
        # resolve the root
        i = 0
        while nd[i].key != np.uint32(0xFFFFFFFF) and is_fixed[nd[i].xoff // 8]:
            i = int(nd[i].left) + int(fixed_key[nd[i].xoff // 8] > nd[i].key)
        sp = 0
        stack[0] = i
        stack[1] = 0
        sp = 2
        nxt = 1
        while sp > 0:
            sp -= 2
            old = stack[sp]
            new = stack[sp + 1]
            rec = nd[old]
            dst = out_nodes[base + new]
            dst.key = rec.key
            dst.xoff = rec.xoff
            out_values[base + new] = v[old]
            if rec.key == np.uint32(0xFFFFFFFF):
                dst.left = new
                continue
            dst.left = nxt
            for side in range(2):
                c = int(rec.left) + side
                while nd[c].key != np.uint32(0xFFFFFFFF) and is_fixed[nd[c].xoff // 8]:
                    c = int(nd[c].left) + int(fixed_key[nd[c].xoff // 8] > nd[c].key)
                # push right first so the left subtree is laid out first
                stack[sp + 2 * (1 - side)] = c
                stack[sp + 2 * (1 - side) + 1] = nxt + side
            sp += 4
            nxt += 2
        total = base + nxt
        out_offsets[t + 1] = total
    return total


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

def _as_block(packed: PackedForest, X: npt.ArrayLike) -> npt.NDArray[np.float32]:
    Xa = np.ascontiguousarray(X, dtype=np.float32)
    if Xa.ndim != 2 or Xa.shape[1] != packed.n_features:
        raise ValueError(f"X must be (rows, {packed.n_features}), got shape {Xa.shape}")
    _check_fixed(packed, Xa)
    return Xa


@dataclass(frozen=True, eq=False)
class PreparedRows:
    """A block of rows encoded once for any number of forests (:func:`prepare`).

    Attributes
    ----------
    rows : numpy.ndarray of int64
        Indices (in the block) of the rows without NaN; only the first ``m`` are used.
    keys : numpy.ndarray of uint32, shape (groups, n_features, 8)
        Their keys in lane-interleaved groups of eight (:func:`float32_keys` order).
    m : int
        Number of rows without NaN.
    n_rows : int
        Number of rows of the block.
    chunks : numpy.ndarray of int64
        Group boundaries of the tree-major chunks (chunk ``c`` is groups
        ``chunks[c] .. chunks[c + 1] - 1``): segment starts, short segments merged up to
        :data:`PRUNE_MIN_ROWS` rows, long ones cut at :data:`CHUNK_ROWS`.
    prune_min : int
        Chunks of at least this many rows walk box-pruned trees (see :func:`prepare`).
    """

    rows: npt.NDArray[np.int64]
    keys: npt.NDArray[np.uint32]
    m: int
    n_rows: int
    chunks: npt.NDArray[np.int64]
    prune_min: int

    @property
    def n_features(self) -> int:
        """Number of predictor columns."""
        return int(self.keys.shape[1])


def _chunk_bounds(rows: np.ndarray, m: int, segments: Sequence[int] | None,
                  min_rows: int) -> npt.NDArray[np.int64]:
    """Group boundaries of the chunks (see :class:`PreparedRows`).

    Segments shorter than ``min_rows`` are merged with the next one (a short tail with the one
    before); a group of eight that straddles two segments is a chunk of its own (walked unpruned),
    so every other chunk holds rows of one segment only; chunks longer than :data:`CHUNK_ROWS` are
    cut in equal parts.
    """
    n_groups = (m + 7) // 8
    starts = [0]
    if segments is not None and m:
        enc = np.searchsorted(rows[:m], np.asarray(segments, dtype=np.int64))
        for e in sorted({int(v) for v in enc if 0 < v < m}):
            if e - starts[-1] >= min_rows:
                starts.append(e)
        if len(starts) > 1 and m - starts[-1] < min_rows:
            starts.pop()
    edges = {0, n_groups}
    for e in starts[1:]:
        edges.add(e // 8)
        if e % 8:
            edges.add(e // 8 + 1)
    bounds = sorted(edges)
    step = CHUNK_ROWS // 8
    out = [0]
    for b in bounds[1:]:
        n_cut = -(-(b - out[-1]) // step)
        out += [out[-1] + (b - out[-1]) * i // n_cut for i in range(1, n_cut + 1)]
    if len(out) == 1:
        out.append(n_groups)
    return np.asarray(out, dtype=np.int64)


def prepare(X: npt.ArrayLike, *, segments: Sequence[int] | None = None,
            prune: bool = True) -> PreparedRows:
    """Encode a block of rows once, for :func:`predict_many` with any number of forests.

    Parameters
    ----------
    X : array_like, shape (n_rows, n_features)
        Predictors, cast to float32 and made C-contiguous if they are not already.
    segments : sequence of int, optional
        Row indices where a run of rows with constant predictors starts (the upscaler passes the
        first row of every month: month and CO2 are constant within a tile-month). Chunks start at
        these rows (rounded down to a group of eight) unless a segment is shorter than
        :data:`PRUNE_MIN_ROWS`, in which case it shares a chunk with its neighbour; chunks longer
        than :data:`CHUNK_ROWS` are cut in equal parts.
    prune : bool
        Walk box-pruned copies of the trees in chunks of at least :data:`PRUNE_MIN_ROWS` rows:
        every split decided for all rows of the chunk (a constant month or CO2, a threshold
        outside the chunk's range of a predictor) is bypassed before the chunk walks the tree.
        Results are identical, bit for bit; ``False`` walks the full trees.

    Returns
    -------
    PreparedRows
        The encoded block.
    """
    Xa = np.ascontiguousarray(X, dtype=np.float32)
    if Xa.ndim != 2:
        raise ValueError(f"X must be 2-D (rows, features), got shape {Xa.shape}")
    rows, keys, m = _prepare(Xa)
    chunks = _chunk_bounds(rows, int(m), segments, PRUNE_MIN_ROWS)
    return PreparedRows(rows, keys, int(m), int(Xa.shape[0]), chunks,
                        PRUNE_MIN_ROWS if prune else int(np.iinfo(np.int64).max))


def _check_fixed(packed: PackedForest, X: np.ndarray) -> None:
    for f, value in packed.fixed:
        col = X[:, f]
        bad = (col != np.float32(value)) & ~np.isnan(col)
        if bad.any():
            raise ValueError(f"forest specialised on feature {f} = {value!r} but X[:, {f}] "
                             f"differs in {int(bad.sum())} rows")


def predict(packed: PackedForest, X: npt.ArrayLike, *,
            out: npt.NDArray[np.float64] | None = None, prune: bool = False,
            segments: Sequence[int] | None = None) -> npt.NDArray[np.float64]:
    """Mean prediction of the packed forest for a block of rows (identical to scikit-learn).

    Parameters
    ----------
    packed : PackedForest
        From :func:`pack_forest` (or :func:`specialise`).
    X : array_like, shape (n_rows, n_features)
        Predictors, cast to float32 (as scikit-learn does) and made C-contiguous if they are not
        already.
    out : numpy.ndarray of float64, shape (n_rows,), optional
        Where to write the result.
    prune, segments
        See :func:`prepare` (default: full trees in chunks of :data:`CHUNK_ROWS`, the plain
        path).

    Returns
    -------
    numpy.ndarray of float64, shape (n_rows,)
        ``model.predict(X)``, except NaN for every row with a NaN predictor (``out`` if given).

    Raises
    ------
    ValueError
        If ``X`` has the wrong number of columns, or a column the forest was specialised on differs
        from its fixed value in a row without NaN.
    """
    Xa = _as_block(packed, X)
    if out is None:
        out = np.empty(Xa.shape[0], dtype=np.float64)
    elif out.shape != (Xa.shape[0],) or out.dtype != np.float64:
        raise ValueError("out must be a float64 array of shape (n_rows,)")
    block = prepare(Xa, segments=segments, prune=prune)
    _mean_into(packed, block, out)
    return out


def _mean_into(f: PackedForest, block: PreparedRows, out: np.ndarray) -> None:
    if f.nodes.dtype == NODE_DTYPE:
        _mean_compact(f.nodes.view("<u8"), f.values, f.offsets, block.rows, block.keys, block.m,
                      block.chunks, block.prune_min, out)
    else:
        _mean_wide(f.nodes, f.values, f.offsets, block.rows, block.keys, block.m, block.chunks,
                   out)


def predict_many(forests: Sequence[PackedForest], X: npt.ArrayLike | PreparedRows, *,
                 out: npt.NDArray[np.float64] | None = None,
                 prune: bool = False) -> npt.NDArray[np.float64]:
    """Evaluate several forests on the same block (NaN detection and key encoding done once).

    Parameters
    ----------
    forests : sequence of PackedForest
        Forests with the same ``n_features``.
    X : array_like, shape (n_rows, n_features), or PreparedRows
        Predictors (see :func:`predict`), or a block already encoded by :func:`prepare` (the
        upscaler's path: one encoding per tile block for every forest that reads it).
    out : numpy.ndarray of float64, shape (len(forests), n_rows), optional
        Where to write the result.
    prune : bool
        Box-pruned walks (:func:`prepare`) when ``X`` is an array.

    Returns
    -------
    numpy.ndarray of float64, shape (len(forests), n_rows)
        ``out[k] == predict(forests[k], X)``.
    """
    if not forests:
        raise ValueError("no forests")
    first = forests[0]
    if any(f.n_features != first.n_features for f in forests):
        raise ValueError("forests differ in n_features")
    if isinstance(X, PreparedRows):
        block = X
        if block.n_features != first.n_features:
            raise ValueError(f"the prepared rows have {block.n_features} columns, the forests "
                             f"read {first.n_features}")
        if any(f.fixed for f in forests):
            raise ValueError("specialised forests need the raw rows (their fixed columns are "
                             "checked): pass X as an array")
    else:
        Xa = np.ascontiguousarray(X, dtype=np.float32)
        for f in forests:
            Xa = _as_block(f, Xa)
        block = prepare(Xa, prune=prune)
    if out is None:
        out = np.empty((len(forests), block.n_rows), dtype=np.float64)
    elif out.shape != (len(forests), block.n_rows) or out.dtype != np.float64:
        raise ValueError("out must be a float64 array of shape (n_forests, n_rows)")
    for k, f in enumerate(forests):
        _mean_into(f, block, out[k])
    return out


def specialise(packed: PackedForest, fixed: Mapping[int, float]) -> PackedForest:
    """Prune a packed forest for predictors with a known constant value.

    Every split on a fixed feature is replaced by the child a row with that value takes, so the
    trees get smaller and shallower; :func:`predict` on the result equals :func:`predict` on the
    full forest for every ``X`` whose fixed columns hold the fixed values (it checks this).

    Parameters
    ----------
    packed : PackedForest
        Forest to prune (may itself be specialised).
    fixed : mapping of int to float
        ``{feature index: value}``; values are cast to float32 like ``X``.

    Returns
    -------
    PackedForest
        The pruned forest, with ``fixed`` recorded.
    """
    is_fixed = np.zeros(packed.n_features, dtype=np.bool_)
    keys = np.zeros(packed.n_features, dtype=np.uint32)
    merged = dict(packed.fixed)
    for f, value in fixed.items():
        fi = int(f)
        if not 0 <= fi < packed.n_features:
            raise ValueError(f"feature index {f} out of range")
        v32 = np.float32(value)
        if np.isnan(v32):
            raise ValueError(f"cannot specialise feature {f} on NaN")
        is_fixed[fi] = True
        keys[fi] = float32_keys(v32)
        merged[fi] = float(v32)
    out_nodes = np.empty_like(packed.nodes)
    out_values = np.empty_like(packed.values)
    out_offsets = np.empty_like(packed.offsets)
    total = _specialise(packed.nodes, packed.values, packed.offsets, is_fixed, keys, out_nodes,
                        out_values, out_offsets)
    # compact copies: smaller, and measured faster to walk than views into the big buffers
    return PackedForest(nodes=out_nodes[:total].copy(), values=out_values[:total].copy(),
                        offsets=out_offsets, n_features=packed.n_features,
                        fixed=tuple(sorted(merged.items())))
