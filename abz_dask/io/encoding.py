"""Encoding of categorical predictors for scikit-learn forests (DECISIONS 7).

scikit-learn forests have no native categorical split. The default encoding orders the levels of
each categorical predictor (month, vegetation type) by their mean response in the training rows of
the fit — no leakage across CV folds because every fit computes its own — and codes them 0..k−1.
This reproduces randomForest's ordering of categories at the root. ``month`` may alternatively be
treated as ordinal (code = month). Levels absent from the training rows get the middle code and
are counted, so an unexpected class never silently becomes missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

__all__ = ["CategoricalEncoding", "fit_encoding"]

Scheme = Literal["mean_response", "ordinal"]


@dataclass(frozen=True)
class CategoricalEncoding:
    """Mapping category → code for each categorical predictor of one fitted model.

    Attributes
    ----------
    codes : dict
        Predictor name -> {category (int): code (float)}.
    scheme : dict
        Predictor name -> ``"mean_response"`` or ``"ordinal"``.
    """

    codes: dict[str, dict[int, float]] = field(default_factory=dict)
    scheme: dict[str, str] = field(default_factory=dict)

    def fallback(self, name: str) -> float:
        """Code given to a level never seen in training (the middle of the codes)."""
        vals = sorted(self.codes[name].values())
        return float(vals[len(vals) // 2])

    def transform_column(self, name: str, values: np.ndarray) -> np.ndarray:
        """Encode one raw categorical column (NaN stays NaN)."""
        if name not in self.codes:
            return np.asarray(values, dtype=np.float32)
        v = np.asarray(values, dtype=np.float64)
        out = np.full(v.shape, np.nan, dtype=np.float32)
        ok = np.isfinite(v)
        if not ok.any():
            return out
        keys = np.array(sorted(self.codes[name]), dtype=np.float64)
        lut = np.array([self.codes[name][int(k)] for k in keys], dtype=np.float32)
        pos = np.clip(np.searchsorted(keys, v[ok]), 0, len(keys) - 1)
        hit = keys[pos] == v[ok]
        out[ok] = np.where(hit, lut[pos], np.float32(self.fallback(name)))
        return out

    def transform(self, frame: pd.DataFrame, predictors: list[str] | tuple[str, ...]
                  ) -> np.ndarray:
        """Encoded float32 design matrix (rows × predictors) in ``predictors`` order."""
        cols = [self.transform_column(p, frame[p].to_numpy()) for p in predictors]
        return np.ascontiguousarray(np.stack(cols, axis=1), dtype=np.float32)

    def to_json(self) -> dict[str, object]:
        """JSON-ready form (category keys as strings)."""
        return {"scheme": dict(self.scheme),
                "codes": {k: {str(c): v for c, v in m.items()} for k, m in self.codes.items()}}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> CategoricalEncoding:
        """Inverse of :meth:`to_json`."""
        codes = data["codes"]
        assert isinstance(codes, dict)
        scheme = data["scheme"]
        assert isinstance(scheme, dict)
        return cls({k: {int(c): float(v) for c, v in m.items()} for k, m in codes.items()},
                   dict(scheme))


def fit_encoding(frame: pd.DataFrame, response: np.ndarray | pd.Series,
                 categorical: list[str] | tuple[str, ...],
                 month_scheme: Scheme = "mean_response") -> CategoricalEncoding:
    """Fit the encoding of ``categorical`` columns on training rows.

    Parameters
    ----------
    frame : DataFrame
        Training rows with raw categorical columns (integer levels).
    response : array
        Response of those rows.
    categorical : sequence of str
        Categorical predictors present in ``frame``.
    month_scheme : {"mean_response", "ordinal"}
        How ``month`` is encoded.
    """
    y = np.asarray(response, dtype=np.float64)
    codes: dict[str, dict[int, float]] = {}
    scheme: dict[str, str] = {}
    for name in categorical:
        if name not in frame:
            continue
        levels = frame[name].to_numpy()
        if name == "month" and month_scheme == "ordinal":
            codes[name] = {m: float(m) for m in range(1, 13)}
            scheme[name] = "ordinal"
            continue
        means = pd.Series(y).groupby(levels).mean()
        # ties broken by the level value, so the encoding is deterministic
        order = sorted(means.index, key=lambda k: (means[k], k))
        codes[name] = {int(k): float(i) for i, k in enumerate(order)}
        scheme[name] = "mean_response"
    return CategoricalEncoding(codes, scheme)
