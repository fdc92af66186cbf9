"""Predictive-performance metrics (seed-spec §4.4).

On paired observations and predictions (NaN pairs ignored):

- ``R2``: squared Pearson correlation (R ``cor(pred, obs)^2``), NaN when fewer than two pairs or
  one side is constant;
- ``RMSE`` = sqrt(mean((pred − obs)²)); ``MAE`` = mean(|pred − obs|);
- ``MBE`` = mean(pred − obs) (tdr ``tdStats(pred, obs, "mbe")``): positive = overestimation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd

__all__ = ["METRICS", "grouped_metrics", "mae", "mbe", "metrics", "r2", "rmse"]

METRICS: tuple[str, ...] = ("R2", "RMSE", "MAE", "MBE")


def _pairs(obs: npt.ArrayLike, pred: npt.ArrayLike
           ) -> tuple[np.ndarray, np.ndarray]:
    o = np.asarray(obs, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    if o.shape != p.shape:
        raise ValueError(f"obs and pred differ in shape: {o.shape} vs {p.shape}")
    ok = np.isfinite(o) & np.isfinite(p)
    return o[ok], p[ok]


def r2(obs: npt.ArrayLike, pred: npt.ArrayLike) -> float:
    """Squared Pearson correlation of ``obs`` and ``pred``."""
    o, p = _pairs(obs, pred)
    if len(o) < 2:
        return float("nan")
    do, dp = o - o.mean(), p - p.mean()
    den = np.sqrt((do * do).sum() * (dp * dp).sum())
    if den == 0:
        return float("nan")
    return float(((do * dp).sum() / den) ** 2)


def rmse(obs: npt.ArrayLike, pred: npt.ArrayLike) -> float:
    """Root-mean-square error."""
    o, p = _pairs(obs, pred)
    return float(np.sqrt(np.mean((p - o) ** 2))) if len(o) else float("nan")


def mae(obs: npt.ArrayLike, pred: npt.ArrayLike) -> float:
    """Mean absolute error."""
    o, p = _pairs(obs, pred)
    return float(np.mean(np.abs(p - o))) if len(o) else float("nan")


def mbe(obs: npt.ArrayLike, pred: npt.ArrayLike) -> float:
    """Mean bias error, mean(pred − obs)."""
    o, p = _pairs(obs, pred)
    return float(np.mean(p - o)) if len(o) else float("nan")


def metrics(obs: npt.ArrayLike, pred: npt.ArrayLike) -> dict[str, float]:
    """``{"n", "R2", "RMSE", "MAE", "MBE"}`` of one set of pairs."""
    o, p = _pairs(obs, pred)
    return {"n": len(o), "R2": r2(o, p), "RMSE": rmse(o, p), "MAE": mae(o, p),
            "MBE": mbe(o, p)}


def grouped_metrics(frame: pd.DataFrame, by: str | Sequence[str], obs: str = "obs",
                    pred: str = "pred") -> pd.DataFrame:
    """Metrics per group.

    Parameters
    ----------
    frame : DataFrame
        Holds ``obs``, ``pred`` and the grouping column(s).
    by : str or sequence of str
        Grouping column(s).
    obs, pred : str
        Column names.

    Returns
    -------
    DataFrame
        The group keys, ``n``, ``n_sites`` (when ``site_id`` is a column) and the metrics.
    """
    keys = [by] if isinstance(by, str) else list(by)
    recs = []
    for key, g in frame.groupby(keys, sort=True, dropna=False):
        rec = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        m = metrics(g[obs].to_numpy(), g[pred].to_numpy())
        rec["n"] = m.pop("n")
        if "site_id" in g and "site_id" not in keys:
            rec["n_sites"] = int(g["site_id"].nunique())
        rec.update(m)
        recs.append(rec)
    return pd.DataFrame.from_records(recs)
