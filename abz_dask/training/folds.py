"""Cross-validation folds grouped by site (seed-spec §4.2).

Every fold holds out whole sites, so no site is ever in both the training and the test rows of a
fold. ``loso`` makes one fold per site (groupdata2 ``fold(k = n_sites)`` in the authors' code);
``group_kfold`` deals the sites, shuffled with the seed, into ``k`` folds of similar row counts
(largest sites first, each to the fold with the fewest rows so far).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from abz_dask import DEFAULT_SEED

__all__ = ["fold_ids", "iter_folds"]


def fold_ids(sites: np.ndarray | pd.Series, scheme: str = "loso", n_folds: int = 5,
             seed: int = DEFAULT_SEED) -> np.ndarray:
    """Fold number (0-based) of every row.

    Parameters
    ----------
    sites : array
        Site id of every row (the grouping key, ``Study_ID_Short`` in the paper).
    scheme : {"loso", "group_kfold"}
        One fold per site, or ``n_folds`` folds of whole sites.
    n_folds : int
        Folds for ``group_kfold`` (capped at the number of sites).
    seed : int
        Shuffles the order of the sites (fold numbering for ``loso``); default
        :data:`abz_dask.DEFAULT_SEED`.

    Returns
    -------
    ndarray of int64
        Fold of each row.
    """
    s = pd.Series(np.asarray(sites)).astype(str)
    codes, uniq = pd.factorize(s, sort=True)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(uniq))
    if scheme == "loso":
        fold_of_site = np.empty(len(uniq), dtype=np.int64)
        fold_of_site[perm] = np.arange(len(uniq))
        return fold_of_site[codes]
    if scheme != "group_kfold":
        raise ValueError(f"unknown CV scheme {scheme!r}; choose 'loso' or 'group_kfold'")
    k = min(n_folds, len(uniq))
    if k < 2:
        raise ValueError(f"grouped CV needs at least 2 sites, got {len(uniq)}")
    size = np.bincount(codes, minlength=len(uniq))
    order = perm[np.argsort(-size[perm], kind="stable")]
    load = np.zeros(k, dtype=np.int64)
    fold_of_site = np.empty(len(uniq), dtype=np.int64)
    for site in order:
        f = int(np.argmin(load))
        fold_of_site[site] = f
        load[f] += size[site]
    return fold_of_site[codes]


def iter_folds(folds: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Training and held-out rows of every fold.

    Parameters
    ----------
    folds : ndarray of int
        Fold of every row (from :func:`fold_ids`).

    Yields
    ------
    (int, ndarray, ndarray)
        ``(fold, train_rows, test_rows)`` in fold order; row positions are 0-based.
    """
    folds = np.asarray(folds)
    for f in np.unique(folds):
        test = np.flatnonzero(folds == f)
        train = np.flatnonzero(folds != f)
        yield int(f), train, test
