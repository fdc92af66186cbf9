"""A ledger of finished cross-validation fits, so that a killed tuning run resumes.

The paper profile's leave-one-site-out tuning is ≈ 1,800 forest fits of 500 trees (hours on a
few cores). Each finished fit's held-out predictions are written as one small ``.npz`` file
(atomically: a temporary file renamed into place) under a folder named by a hash of everything
that determines the fits — the training table, the profile, the base seed, the fluxes and the
scikit-learn version. A restarted run loads the fits it finds and computes only the missing ones;
because every fit's seed depends only on its identity, the result is bit-identical to an
uninterrupted run. A changed table, profile or seed gets a new folder and never reuses old fits.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

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
        self.dir = Path(root) / hashlib.sha256(text.encode()).hexdigest()[:16]
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
        with np.load(p) as z:
            return z["test"], z["pred"]

    def save(self, flux: str, fold: int, mtry: int, test: np.ndarray, pred: np.ndarray) -> None:
        """Record a finished fit (atomic: never a half-written file)."""
        p = self._path(flux, fold, mtry)
        tmp = p.with_name(p.name + ".tmp.npz")
        np.savez(tmp, test=test, pred=pred)
        os.replace(tmp, p)

    def __len__(self) -> int:
        return sum(1 for _ in self.dir.glob("*_fold*_mtry*.npz"))
