"""Models as the upscaler ships them: compact, encoding-aware, sent once per worker.

:class:`CompiledModel` holds what a tile task needs to predict one flux with one forest: the
column indices of its predictors in the cube order, the categorical encoding of its training fit,
and the forest packed into flat arrays for the numba kernel (:mod:`abz_dask.kernels.forest`).
:class:`ModelSet` groups the central model and the bootstrap replicates of every flux.

:func:`ship` makes the model set available to tasks without embedding it in each of them: with a
``distributed`` client it is scattered once to every worker (``broadcast=True``) and the graph
carries only the future's key; on the local schedulers it is referenced in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from abz_dask.encoding import CategoricalEncoding
from abz_dask.kernels.forest import PackedForest, pack_forest, predict
from abz_dask.predictors import PREDICTOR_NAMES
from abz_dask.progress import active_client

__all__ = ["CompiledModel", "ModelSet", "compile_bundle", "ship"]


@dataclass(frozen=True)
class CompiledModel:
    """One forest ready for block prediction."""

    flux: str
    columns: tuple[int, ...]
    encoding: CategoricalEncoding
    forest: PackedForest

    def design(self, raw: np.ndarray) -> np.ndarray:
        """Columns of the raw block matrix (cube order) in model order, categorical encoded."""
        x = raw[:, self.columns]
        for j, c in enumerate(self.columns):
            name = PREDICTOR_NAMES[c]
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


def _compile(flux: str, model: Any) -> CompiledModel:
    cols = tuple(PREDICTOR_NAMES.index(p) for p in model.predictors)
    enc = model.encoding if model.encoding is not None else CategoricalEncoding()
    return CompiledModel(flux, cols, enc, pack_forest(model.estimator))


def compile_bundle(bundle: Any, fluxes: list[str] | None = None, n_bootstrap: int | None = None
                   ) -> ModelSet:
    """Pack a trained :class:`~abz_dask.training.ModelBundle` for the upscaler.

    Parameters
    ----------
    bundle : ModelBundle
        Trained models (``.models`` central, ``.bootstraps`` replicates per flux).
    fluxes : list of str, optional
        Subset of fluxes.
    n_bootstrap : int, optional
        Use only the first ``n_bootstrap`` replicates (default: all).
    """
    fluxes = fluxes or list(bundle.models)
    central = {f: _compile(f, bundle.models[f]) for f in fluxes}
    boots = {}
    for f in fluxes:
        reps = list(getattr(bundle, "bootstraps", {}).get(f, []))
        if n_bootstrap is not None:
            reps = reps[:n_bootstrap]
        boots[f] = tuple(_compile(f, m) for m in reps)
    return ModelSet(central, boots)


def ship(models: Any) -> Any:
    """Make ``models`` available to tasks once per worker; returns what tasks should receive."""
    client = active_client()
    if client is None:
        return models
    return client.scatter(models, broadcast=True, hash=True)
