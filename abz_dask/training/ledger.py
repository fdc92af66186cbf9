"""A ledger of finished fits, so that a killed training run resumes.

The paper profile's leave-one-site-out tuning is ≈ 1,800 forest fits of 500 trees (hours on a
few cores). Each finished fit's held-out predictions are written as one small ``.npz`` file
(atomically: a temporary file renamed into place) under a folder named by a hash of everything
that determines the fits — the training table, the profile, the base seed, the fluxes and the
scikit-learn version. A restarted run loads the fits it finds and computes only the missing ones;
because every fit's seed depends only on its identity, the result is bit-identical to an
uninterrupted run. A changed table, profile or seed gets a new folder and never reuses old fits.

The final phase is recorded the same way: every central and bootstrap forest (skops, no pickle,
plus a JSON of its predictors, encoding, mtry and seed) and every per-predictor diagnostic
(importance scores and partial-dependence curve, ``.npz``) as soon as it is done.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from abz_dask.io.encoding import CategoricalEncoding
from abz_dask.io.location import as_path, read_bytes, write_with
from abz_dask.training.bundle import FluxModel, load_forest

__all__ = ["FitLedger"]


class FitLedger:
    """Finished CV fits of one tuning run, one file per (flux, fold, mtry).

    Parameters
    ----------
    root : path
        Parent folder (e.g. ``RUN/training/cv_fits``).
    key : mapping
        JSON-serialisable identity of the run; its hash names the ledger's folder.
    """

    def __init__(self, root: str | Path, key: Mapping[str, Any]) -> None:
        text = json.dumps(key, sort_keys=True, default=str)
        self.dir = as_path(root) / hashlib.sha256(text.encode()).hexdigest()[:16]
        self.dir.mkdir(parents=True, exist_ok=True)
        card = self.dir / "key.json"
        if not card.exists():
            card.write_text(json.dumps(key, sort_keys=True, indent=1, default=str))

    def _path(self, flux: str, fold: int, mtry: int) -> Path:
        return self.dir / f"{flux}_fold{fold}_mtry{mtry}.npz"

    def load(self, flux: str, fold: int, mtry: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Held-out row indices and predictions of a finished fit, or None."""
        p = self._path(flux, fold, mtry)
        if not p.exists():
            return None
        with np.load(read_bytes(p)) as z:
            return z["test"], z["pred"]

    def save(self, flux: str, fold: int, mtry: int, test: np.ndarray, pred: np.ndarray) -> None:
        """Record a finished fit (atomic: never a half-written file)."""
        write_with(self._path(flux, fold, mtry), lambda t: np.savez(t, test=test, pred=pred))

    def __len__(self) -> int:
        # not a killed writer's temporary file (NAME.tmp.npz, never renamed into place)
        return sum(1 for p in self.dir.glob("*_fold*_mtry*.npz") if ".tmp." not in p.name)

    def save_model(self, name: str, model: FluxModel) -> None:
        """Record a fitted central or bootstrap model under ``name`` (the JSON last, so a
        model counts as recorded only once both files are complete)."""
        import skops.io as sio

        write_with(self.dir / f"{name}.skops", lambda t: sio.dump(model.estimator, t))
        meta = {"flux": model.flux, "predictors": list(model.predictors),
                "encoding": model.encoding.to_json(), "mtry": model.mtry, "seed": model.seed}
        write_with(self.dir / f"{name}.json", lambda t: t.write(json.dumps(meta).encode()))

    def load_model(self, name: str) -> FluxModel | None:
        """A model recorded under ``name``, or None."""
        meta_path = self.dir / f"{name}.json"
        if not meta_path.exists():
            return None
        meta = json.loads(meta_path.read_text())
        return FluxModel(meta["flux"], load_forest(self.dir / f"{name}.skops"),
                         tuple(meta["predictors"]),
                         CategoricalEncoding.from_json(meta["encoding"]), int(meta["mtry"]),
                         int(meta["seed"]))

    def save_diagnostic(self, name: str, result: tuple[Any, ...]) -> None:
        """Record one per-predictor diagnostic ``(flux, predictor, scores, pdp, model_fit)``."""
        flux, predictor, scores, pdp, fit = result
        arrays = {"scores": scores}
        if pdp is not None:
            arrays |= {"value": pdp["value"].to_numpy(), "partial": pdp["partial"].to_numpy()}
        meta = json.dumps({"flux": flux, "predictor": predictor, "fit": fit})
        write_with(self.dir / f"{name}.npz", lambda t: np.savez(t, meta=np.array(meta), **arrays))

    def load_diagnostic(self, name: str) -> tuple[Any, ...] | None:
        """A diagnostic recorded under ``name``, or None."""
        p = self.dir / f"{name}.npz"
        if not p.exists():
            return None
        with np.load(read_bytes(p)) as z:
            meta = json.loads(str(z["meta"]))
            pdp = None
            if "value" in z:
                pdp = pd.DataFrame({"flux": meta["flux"], "predictor": meta["predictor"],
                                    "value": z["value"], "partial": z["partial"]})
            return meta["flux"], meta["predictor"], z["scores"], pdp, meta["fit"]
