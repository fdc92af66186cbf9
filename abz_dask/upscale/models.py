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

from dataclasses import dataclass
from typing import Any

import numpy as np

from abz_dask.io.encoding import CategoricalEncoding
from abz_dask.io.predictors import PREDICTOR_NAMES, PREDICTORS, Predictor
from abz_dask.kernels.forest import PackedForest, pack_forest, predict
from abz_dask.progress import active_client

__all__ = ["CompiledModel", "ModelSet", "compile_bundle", "ship"]


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

    def predict(self, raw: np.ndarray) -> np.ndarray:
        """Predictions (float64) for rows of a raw block matrix; NaN where a predictor is NaN."""
        return predict(self.forest, self.design(raw))


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
