"""Models as the upscaler ships them: compact, encoding-aware, sent once per worker.

:class:`CompiledModel` holds what a tile task needs to predict one flux with one forest: the
column indices of its predictors in its input layout (``inputs``: the model card's predictor set,
in the card's order), the categorical encoding of its training fit, and the forest packed into
flat arrays for the numba kernel (:mod:`abz_dask.kernels.forest`). Row matrices that name their
columns (:class:`~abz_dask.upscale.blocks.NamedRows`) are matched by name, so rows built for
another set (e.g. the paper's 17) still give the model exactly its predictors in its order, and
rows lacking one of them are refused naming it. :class:`ModelSet` groups the central model and
the bootstrap replicates of every flux with the card's predictor set (``predictors``: what a
tile must read, :func:`~abz_dask.upscale.blocks.block_arrays`).

:func:`ship` makes the model set available to tasks without embedding it in each of them: with a
``distributed`` client it is scattered once to every worker (``broadcast=True``) and the graph
carries only the future's key; on the local schedulers it is referenced in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from abz_dask.io.encoding import CategoricalEncoding
from abz_dask.io.predictors import PREDICTOR_NAMES, PREDICTORS, Predictor
from abz_dask.kernels.forest import (
    PackedForest,
    PreparedRows,
    pack_forest,
    predict_many,
    prepare,
)
from abz_dask.progress import active_client

__all__ = ["CompiledModel", "ModelSet", "compile_bundle", "predict_models", "ship"]


@dataclass(frozen=True)
class CompiledModel:
    """One forest ready for block prediction."""

    flux: str
    columns: tuple[int, ...]
    encoding: CategoricalEncoding
    forest: PackedForest
    #: names of the raw matrix columns that ``columns`` index (default: the paper's 17)
    inputs: tuple[str, ...] = PREDICTOR_NAMES

    @property
    def predictors(self) -> tuple[str, ...]:
        """The model's predictors, in model order."""
        return tuple(self.inputs[c] for c in self.columns)

    def _columns_of(self, raw: np.ndarray) -> tuple[int, ...]:
        names = tuple(getattr(raw, "names", ()))
        if not names or names == self.inputs:
            if raw.shape[1] != len(self.inputs):
                raise ValueError(f"{self.flux} model: the row matrix has {raw.shape[1]} columns, "
                                 f"the model reads {len(self.inputs)} ({list(self.inputs)})")
            return self.columns
        lacking = [p for p in self.predictors if p not in names]
        if lacking:
            raise ValueError(f"{self.flux} model: the rows lack predictor(s) {lacking} of the "
                             f"model card (rows hold {list(names)}); build them for "
                             "ModelSet.predictors (blocks.block_arrays / block_rows)")
        return tuple(names.index(p) for p in self.predictors)

    def design(self, raw: np.ndarray) -> np.ndarray:
        """Columns of the raw block matrix in model order, categorical encoded."""
        cols = self._columns_of(raw)
        x = np.asarray(raw)[:, cols]
        for j, name in enumerate(self.predictors):
            if name in self.encoding.codes:
                x[:, j] = self.encoding.transform_column(name, x[:, j])
        return np.ascontiguousarray(x, dtype=np.float32)

    def design_key(self, raw: np.ndarray) -> tuple[Any, ...]:
        """What :meth:`design` depends on besides ``raw``: models with equal keys read the same
        design matrix (e.g. the bootstrap replicates of every flux)."""
        codes = tuple(sorted((k, tuple(sorted(v.items()))) for k, v in self.encoding.codes.items()
                             if k in self.predictors))
        return self._columns_of(raw), codes

    def predict(self, raw: np.ndarray, *, segments: Sequence[int] | None = None) -> np.ndarray:
        """Predictions (float64) for rows of a raw block matrix; NaN where a predictor is NaN.

        ``segments`` (first row of each month) let the kernel prune the trees per tile-month
        (:func:`abz_dask.kernels.forest.prepare`); the values are the same without them.
        """
        return predict_models([self], raw, segments=segments)[0]


def predict_models(models: Sequence[CompiledModel], raw: np.ndarray, *,
                   segments: Sequence[int] | None = None,
                   prepared: dict[Any, PreparedRows] | None = None) -> np.ndarray:
    """Predictions of several models for the rows of one raw block matrix.

    Models that read the same design (:meth:`CompiledModel.design_key`: same columns and
    categorical encoding, e.g. the 20 bootstrap replicates of a flux, which read the continuous
    predictors only) share ONE design matrix encoded ONCE
    (:func:`~abz_dask.kernels.forest.prepare`) and are evaluated in one
    :func:`~abz_dask.kernels.forest.predict_many` call; the walks are box-pruned per tile-month
    chunk (month and CO2 are constant in it). Bit-identical to ``model.predict`` one by one.

    Parameters
    ----------
    models : sequence of CompiledModel
        The models.
    raw : numpy.ndarray
        Raw block rows (:class:`~abz_dask.upscale.blocks.NamedRows` or the models' input layout).
    segments : sequence of int, optional
        First row of each run of rows with constant month and CO2 (a tile-month).
    prepared : dict, optional
        Cache of encoded blocks of ``raw`` by design key, shared between calls on the same rows
        (e.g. the central models of the three fluxes and their bootstraps).

    Returns
    -------
    numpy.ndarray of float64, shape (len(models), n_rows)
        NaN where a predictor is NaN.
    """
    cache: dict[Any, PreparedRows] = {} if prepared is None else prepared
    out = np.empty((len(models), raw.shape[0]), dtype=np.float64)
    groups: dict[Any, list[int]] = {}
    for i, m in enumerate(models):
        groups.setdefault(m.design_key(raw), []).append(i)
    for key, idx in groups.items():
        if key not in cache:
            cache[key] = prepare(models[idx[0]].design(raw), segments=segments)
        sel = idx if idx == list(range(idx[0], idx[0] + len(idx))) else None
        if sel is not None:  # contiguous: write in place
            predict_many([models[i].forest for i in idx], cache[key],
                         out=out[idx[0]:idx[0] + len(idx)])
        else:
            out[idx] = predict_many([models[i].forest for i in idx], cache[key])
    return out


@dataclass(frozen=True)
class ModelSet:
    """Central and bootstrap models of every flux."""

    central: dict[str, CompiledModel]
    bootstraps: dict[str, tuple[CompiledModel, ...]]
    #: the model card's predictor set in its order: what a tile reads
    predictors: tuple[Predictor, ...] = PREDICTORS

    @property
    def fluxes(self) -> list[str]:
        """Modelled fluxes."""
        return list(self.central)

    @property
    def n_bootstrap(self) -> int:
        """Bootstrap replicates per flux (0 when none)."""
        return min((len(v) for v in self.bootstraps.values()), default=0)

    def nbytes(self) -> int:
        """Approximate size of the packed forests (bytes)."""
        models = [*self.central.values(), *(b for v in self.bootstraps.values() for b in v)]
        return sum(m.forest.nbytes for m in models)


def _compile(flux: str, model: Any, inputs: tuple[str, ...] = PREDICTOR_NAMES
             ) -> CompiledModel:
    lacking = [p for p in model.predictors if p not in inputs]
    if lacking:
        raise ValueError(f"{flux} model: predictor(s) {lacking} are not in the model card's "
                         f"predictor set {list(inputs)}")
    cols = tuple(inputs.index(p) for p in model.predictors)
    enc = model.encoding if model.encoding is not None else CategoricalEncoding()
    return CompiledModel(flux, cols, enc, pack_forest(model.estimator), inputs)


def compile_bundle(bundle: Any, fluxes: list[str] | None = None, n_bootstrap: int | None = None
                   ) -> ModelSet:
    """Pack a trained :class:`~abz_dask.training.ModelBundle` for the upscaler.

    The models read the card's predictor set (:func:`~abz_dask.training.bundle.card_predictors`;
    the paper's 17 for cards without one) in the card's order.

    Parameters
    ----------
    bundle : ModelBundle
        Trained models (``.models`` central, ``.bootstraps`` replicates per flux).
    fluxes : list of str, optional
        Subset of fluxes.
    n_bootstrap : int, optional
        Use only the first ``n_bootstrap`` replicates (default: all).
    """
    from abz_dask.training.bundle import card_predictors

    fluxes = fluxes or list(bundle.models)
    preds = card_predictors(getattr(bundle, "card", None) or {})
    inputs = tuple(p.name for p in preds)
    central = {f: _compile(f, bundle.models[f], inputs) for f in fluxes}
    boots = {}
    for f in fluxes:
        reps = list(getattr(bundle, "bootstraps", {}).get(f, []))
        if n_bootstrap is not None:
            reps = reps[:n_bootstrap]
        boots[f] = tuple(_compile(f, m, inputs) for m in reps)
    return ModelSet(central, boots, preds)


def ship(models: Any) -> Any:
    """Make ``models`` available to tasks once per worker; returns what tasks should receive."""
    client = active_client()
    if client is None:
        return models
    return client.scatter(models, broadcast=True, hash=True)
