"""How much does the upscaling damp temporal change? An estimate from held-out predictions.

A random forest trained on site-months predicts the interannual change of a flux only in part:
its leaves average observations of other sites and other years, so a year that was warmer, or a
cell that greened, moves the prediction by less than it moved the flux. Trends of the upscaled
budgets inherit this damping (``benchmarks/RESULTS_trend_fidelity.md``). No run has the truth,
but every run has held-out predictions of its own sites (the training's cross-validation,
``RUN/training/cv_predictions.csv``: ``site_id, year, month, obs, pred`` per flux), and those
show how far predictions follow the observed departures from each site's own mean.

The estimate is the **anomaly slope**: the least-squares slope of held-out predicted on observed
anomalies, where an anomaly is a value minus the mean of its site and calendar month (the site's
mean seasonal cycle), averaged per site-year (``level="year"``) or kept per month
(``level="month"``). The site mean removes what the budget's level depends on (where the sites
are, their site factors), the calendar-month mean the seasonal cycle, and what remains is the
temporal departures that a trend is made of. A slope of 1 means held-out predictions follow them
fully, 0.6 that they reproduce 60 % of them. Observation noise in the anomalies lowers this
slope too (errors in the regressor); the per-site-year mean (``level="year"``) averages the
months' noise, but does not remove it.

The **time ratio** (``method="time"``) avoids that: it uses the time itself as the instrument, the
ratio of the within-site least-squares trends of the held-out predicted and of the observed
anomalies, pooled over the sites (``Σ (t − t̄_s) pred' / Σ (t − t̄_s) obs'``, t the decimal year
of a site-month, or the year of a site-year, t̄_s the site's mean time). Noise that is
independent of time cancels from both sums in expectation; what remains is the share of the
trend observed at the sites that held-out predictions reproduce, the quantity an upscaled trend
needs. It is noisier than the slope (a site's record is short).

The **instrumented slope** (``method="iv"``) keeps the slope's precision without its noise bias:
two-stage least squares with the site-month anomalies of the predictors that change over time
(temperature, greenness, snow, co2, ...) and of the time as instruments. The predictors are what
the forest sees and carry no observation error, so the first stage keeps the part of the observed
anomalies the drivers explain, and the slope of the predicted anomalies on it is the response of
held-out predictions to driver-borne change. This is the estimate a run reports
(:func:`held_out_attenuation`, the trends stage's ``attenuation`` column); on the twins it has
a jackknife SE of ≈ 0.04–0.08 per run and lies within about ±0.15 of the measured ratio of
estimated to planted budget trends for GPP and Reco (``benchmarks/RESULTS_trend_fidelity.md``).
It is not a correction factor: the trend of NEE, a small difference of two large trends, can be
off by more than its attenuation says.

Standard errors are the delete-one-site jackknife (sites are the independent units).
:func:`attenuation_table` gives one row per flux.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

__all__ = ["ATTENUATION_COLUMNS", "Level", "Method", "anomalies", "attenuation_table",
           "cv_columns", "held_out_attenuation", "jackknife_iv", "jackknife_slope",
           "jackknife_time_ratio", "time_varying"]

Level = Literal["month", "year"]
Method = Literal["slope", "time", "iv"]

#: Columns of :func:`attenuation_table`, in order.
ATTENUATION_COLUMNS: tuple[str, ...] = (
    "flux", "level", "method", "attenuation", "attenuation_se", "n_anomalies", "n_sites", "corr")

_OBS = re.compile(r"^obs( \[.*\])?$")
_PRED = re.compile(r"^pred( \[.*\])?$")


def cv_columns(cv: pd.DataFrame) -> pd.DataFrame:
    """``cv`` with its observed and predicted columns named ``obs`` and ``pred``.

    Accepts the bundle's ``cv_predictions.csv`` (``obs``, ``pred``) and the training
    diagnostics' copy (``obs [g C m-2 month-1]``, ``pred [...]``).

    Raises
    ------
    KeyError
        When a required column (``site_id``, ``year``, ``month``, ``obs``, ``pred``) is missing.
    """
    ren: dict[str, str] = {}
    for pat, name in ((_OBS, "obs"), (_PRED, "pred")):
        hits = [c for c in cv.columns if pat.match(str(c))]
        if len(hits) == 1:
            ren[hits[0]] = name
    out = cv.rename(columns=ren)
    missing = [c for c in ("site_id", "year", "month", "obs", "pred") if c not in out]
    if missing:
        raise KeyError(f"held-out predictions lack column(s) {missing} "
                       f"(have {list(map(str, cv.columns))})")
    return out


def anomalies(cv: pd.DataFrame, level: Level = "year", extra: Sequence[str] = ()
              ) -> pd.DataFrame:
    """Observed and predicted anomalies from each site's mean seasonal cycle.

    Parameters
    ----------
    cv : pandas.DataFrame
        Held-out predictions of one flux: ``site_id, year, month, obs, pred``
        (:func:`cv_columns` names accepted). Rows with a missing ``obs`` or ``pred`` are dropped.
    level : {"year", "month"}
        ``"month"``: one anomaly per site-month, the value minus the mean of its site and
        calendar month. ``"year"``: the mean of a site-year's monthly anomalies. Only site ×
        calendar-month groups observed in at least two years contribute.
    extra : sequence of str
        Further numeric columns of ``cv`` (e.g. predictors) turned into anomalies the same way.

    Returns
    -------
    pandas.DataFrame
        ``site_id, year, [month,] time, obs, pred, *extra``: anomalies (same units as ``cv``)
        and their time in decimal years (``year + (month − 0.5) / 12``; the year for
        ``"year"``).
    """
    if level not in ("month", "year"):
        raise ValueError(f"level must be 'month' or 'year', got {level!r}")
    values = ["obs", "pred", *extra]
    cv = cv_columns(cv)
    missing = [c for c in extra if c not in cv]
    if missing:
        raise KeyError(f"held-out predictions lack column(s) {missing}")
    d = cv[["site_id", "year", "month", *values]].dropna()
    g = d.groupby(["site_id", "month"])
    n_years = g["year"].transform("nunique")
    d = d.assign(**{c: d[c].astype(np.float64) - g[c].transform("mean") for c in values}
                 )[n_years >= 2]
    if level == "year":
        d = d.groupby(["site_id", "year"], as_index=False)[values].mean()
        d = d.assign(time=d["year"].astype(np.float64))
        keys = ["site_id", "year"]
    else:
        d = d.assign(time=d["year"] + (d["month"] - 0.5) / 12.0)
        keys = ["site_id", "year", "month"]
    return d[[*keys, "time", *values]].reset_index(drop=True)


def _jackknife_se(loo: np.ndarray) -> float:
    """Delete-one jackknife standard error of the finite leave-one-out estimates ``loo``."""
    loo = loo[np.isfinite(loo)]
    m = len(loo)
    return float(np.sqrt((m - 1) / m * np.sum((loo - loo.mean()) ** 2))) if m > 1 else np.nan


def jackknife_slope(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """Least-squares slope of ``y`` on ``x`` (with intercept) and its delete-one-group
    jackknife standard error.

    Parameters
    ----------
    x, y : ndarray
        Regressor and response, same length.
    groups : ndarray
        Group label of every pair (e.g. the site); at least two groups for the standard error.

    Returns
    -------
    slope, se : float
        NaN when ``x`` has no spread; ``se`` NaN with fewer than two groups.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    codes, _ = pd.factorize(np.asarray(groups))
    k = int(codes.max()) + 1 if len(codes) else 0

    def sums(w: np.ndarray) -> np.ndarray:
        return np.bincount(codes, w, minlength=k)

    n_g, sx, sy = sums(np.ones_like(x)), sums(x), sums(y)
    sxx, sxy = sums(x * x), sums(x * y)

    def slope(n: np.ndarray, a: np.ndarray, b: np.ndarray, aa: np.ndarray, ab: np.ndarray
              ) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            var = aa - a * a / n
            return np.where(var > 0, (ab - a * b / n) / np.where(var > 0, var, 1.0), np.nan)

    full = float(slope(n_g.sum(), sx.sum(), sy.sum(), sxx.sum(), sxy.sum()))
    if k < 2 or not np.isfinite(full):
        return full, float("nan")
    loo = slope(n_g.sum() - n_g, sx.sum() - sx, sy.sum() - sy, sxx.sum() - sxx,
                sxy.sum() - sxy)
    return full, _jackknife_se(loo)


def jackknife_time_ratio(t: np.ndarray, obs: np.ndarray, pred: np.ndarray, groups: np.ndarray
                         ) -> tuple[float, float]:
    """Pooled within-group trend ratio ``Σ (t − t̄_g) pred / Σ (t − t̄_g) obs`` and its
    delete-one-group jackknife standard error.

    Parameters
    ----------
    t : ndarray
        Time of every value (e.g. decimal years).
    obs, pred : ndarray
        Observed and predicted values (or anomalies), same length as ``t``.
    groups : ndarray
        Group (site) of every value; ``t̄_g`` is the group's mean time.

    Returns
    -------
    ratio, se : float
        NaN when no group has a spread in time (or the observed trend sum is zero); ``se``
        NaN with fewer than two contributing groups.
    """
    t = np.asarray(t, np.float64)
    codes, _ = pd.factorize(np.asarray(groups))
    k = int(codes.max()) + 1 if len(codes) else 0
    n_g = np.bincount(codes, minlength=k).astype(np.float64)
    tc = t - (np.bincount(codes, t, minlength=k) / np.maximum(n_g, 1))[codes]
    num = np.bincount(codes, tc * np.asarray(pred, np.float64), minlength=k)
    den = np.bincount(codes, tc * np.asarray(obs, np.float64), minlength=k)
    used = np.bincount(codes, tc * tc, minlength=k) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        full = float(num.sum() / den.sum()) if den.sum() != 0 else float("nan")
        if used.sum() < 2 or not np.isfinite(full):
            return full, float("nan")
        loo = (num.sum() - num[used]) / (den.sum() - den[used])
    return full, _jackknife_se(loo)


def jackknife_iv(obs: np.ndarray, pred: np.ndarray, z: np.ndarray, groups: np.ndarray
                 ) -> tuple[float, float]:
    """Instrumental-variable (two-stage least-squares) slope of ``pred`` on ``obs`` with
    instruments ``z``, and its delete-one-group jackknife standard error.

    The first stage fits ``obs`` on ``[1, z]`` by least squares (``ô``); the slope is
    ``Σ ô' pred / Σ ô' obs`` (``ô'`` centred). Noise in ``obs`` that is independent of ``z``
    does not bias it, unlike the least-squares slope.

    Parameters
    ----------
    obs, pred : ndarray
        Observed and predicted values (or anomalies), length n.
    z : ndarray
        Instruments ``(n, k)``; columns without spread are dropped.
    groups : ndarray
        Group (site) of every row.

    Returns
    -------
    slope, se : float
        NaN when no instrument has spread; ``se`` NaN with fewer than two groups.
    """
    o = np.asarray(obs, np.float64)
    p = np.asarray(pred, np.float64)
    z = np.asarray(z, np.float64).reshape(len(o), -1)
    z = z[:, np.nanstd(z, axis=0) > 0] if len(o) else z
    if z.shape[1] == 0:
        return float("nan"), float("nan")
    x = np.column_stack([np.ones(len(o)), z])
    codes, _ = pd.factorize(np.asarray(groups))
    k = int(codes.max()) + 1
    # per-group sufficient statistics: X'X, X'o, X'p and the sums of o and p
    xx = np.zeros((k, x.shape[1], x.shape[1]))
    np.add.at(xx, codes, x[:, :, None] * x[:, None, :])
    xo = np.zeros((k, x.shape[1]))
    np.add.at(xo, codes, x * o[:, None])
    xp = np.zeros((k, x.shape[1]))
    np.add.at(xp, codes, x * p[:, None])

    def slope(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> float:
        # beta = (X'X)^-1 X'o; centring: fitted ô has mean o-bar, sums are taken about it
        beta = np.linalg.lstsq(a, b, rcond=None)[0]
        n = a[0, 0]
        num = beta @ c - (beta @ a[0]) * c[0] / n
        den = beta @ b - (beta @ a[0]) * b[0] / n
        return float(num / den) if den != 0 else float("nan")

    full = slope(xx.sum(0), xo.sum(0), xp.sum(0))
    if k < 2 or not np.isfinite(full):
        return full, float("nan")
    loo = np.array([slope(xx.sum(0) - xx[g], xo.sum(0) - xo[g], xp.sum(0) - xp[g])
                    for g in range(k)])
    return full, _jackknife_se(loo)


def attenuation_table(cv: pd.DataFrame, *, level: Level = "year", method: Method = "slope",
                      fluxes: Sequence[str] | None = None, instruments: Sequence[str] = ()
                      ) -> pd.DataFrame:
    """The attenuation estimate of every flux in ``cv`` (see the module docstring).

    Parameters
    ----------
    cv : pandas.DataFrame
        Held-out predictions: ``flux, site_id, year, month, obs, pred`` (a run's
        ``cv_predictions.csv``; a frame without ``flux`` needs ``fluxes`` of length one).
    level : {"year", "month"}
        Anomalies per site-year (default) or per site-month (:func:`anomalies`).
    method : {"slope", "time", "iv"}
        ``"slope"``: least-squares slope of predicted on observed anomalies; ``"time"``: the
        pooled within-site trend ratio of predicted to observed anomalies; ``"iv"``: the
        two-stage least-squares slope with the anomalies of ``instruments`` and of the time
        as instruments (:func:`jackknife_iv`).
    fluxes : sequence of str, optional
        Fluxes to report (default: every flux in ``cv``, in order of appearance).
    instruments : sequence of str
        Columns of ``cv`` used as instruments by ``"iv"`` (e.g. the site-months' predictor
        values joined from the training table); they must be free of the observation error.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`ATTENUATION_COLUMNS`: the estimate (``attenuation``; 1 = no damping), its
        site-jackknife standard error, the number of anomalies and sites behind it, and the
        correlation of predicted with observed anomalies.
    """
    if method not in ("slope", "time", "iv"):
        raise ValueError(f"method must be 'slope', 'time' or 'iv', got {method!r}")
    if "flux" not in cv:
        if fluxes is None or len(fluxes) != 1:
            raise KeyError("held-out predictions without a 'flux' column: name one flux")
        cv = cv.assign(flux=fluxes[0])
    names = list(fluxes) if fluxes is not None else list(pd.unique(cv["flux"]))
    rows = []
    for f in names:
        sub = cv[cv["flux"] == f]
        if not len(sub):
            raise KeyError(f"held-out predictions have no rows of flux {f!r} "
                           f"(have {sorted(map(str, pd.unique(cv['flux'])))})")
        a = anomalies(sub, level, extra=list(instruments) if method == "iv" else ())
        sites = a["site_id"].to_numpy()
        if method == "slope":
            s, se = jackknife_slope(a["obs"].to_numpy(), a["pred"].to_numpy(), sites)
        elif method == "time":
            s, se = jackknife_time_ratio(a["time"].to_numpy(), a["obs"].to_numpy(),
                                         a["pred"].to_numpy(), sites)
        else:
            t = a["time"] - a.groupby("site_id")["time"].transform("mean")
            z = np.column_stack([a[list(instruments)].to_numpy(np.float64), t.to_numpy()])
            s, se = jackknife_iv(a["obs"].to_numpy(), a["pred"].to_numpy(), z, sites)
        corr = (float(np.corrcoef(a["obs"], a["pred"])[0, 1]) if len(a) > 2 else np.nan)
        rows.append({"flux": str(f), "level": level, "method": method, "attenuation": s,
                     "attenuation_se": se, "n_anomalies": len(a),
                     "n_sites": int(a["site_id"].nunique()), "corr": corr})
    return pd.DataFrame(rows, columns=list(ATTENUATION_COLUMNS))


def time_varying(table: pd.DataFrame, names: Sequence[str]) -> list[str]:
    """The numeric columns of ``names`` in ``table`` that change within a site over time.

    Parameters
    ----------
    table : pandas.DataFrame
        Training table with ``site_id`` and the columns.
    names : sequence of str
        Candidates (e.g. a model's predictors); missing and non-numeric ones are skipped.

    Returns
    -------
    list of str
        In the order of ``names``.
    """
    out = []
    for n in names:
        if n in table and pd.api.types.is_numeric_dtype(table[n]) and \
                np.nanmax(table.groupby("site_id")[n].std().to_numpy(np.float64),
                          initial=0.0) > 0:
            out.append(n)
    return out


def held_out_attenuation(cv: pd.DataFrame, table: pd.DataFrame | None = None,
                         predictors: Sequence[str] = ()) -> pd.DataFrame:
    """The attenuation estimate a run reports beside its budget trends.

    With the training ``table`` (the rows ``cv["row"]`` points at, by position) and the
    model's ``predictors``: the instrumental-variable slope (``method="iv"``, per site-month)
    with the site-month anomalies of the predictors that change over time and of the time as
    instruments — the predictors are what the forest sees, free of the observation error.
    Without them: the within-site time ratio (``method="time"``, per site-year).

    Parameters
    ----------
    cv : pandas.DataFrame
        Held-out predictions of the training (``cv_predictions.csv``).
    table : pandas.DataFrame, optional
        The training table.
    predictors : sequence of str
        Predictor names of the models (``month`` and categorical ones are not used).

    Returns
    -------
    pandas.DataFrame
        :func:`attenuation_table` of every flux.
    """
    if table is None or "row" not in cv:
        return attenuation_table(cv, level="year", method="time")
    instr = time_varying(table, [p for p in predictors if p != "month"])
    if not instr:
        return attenuation_table(cv, level="year", method="time")
    rows = cv["row"].to_numpy()
    if rows.min() < 0 or rows.max() >= len(table):
        raise ValueError(f"held-out predictions point at training rows up to {rows.max()}, "
                         f"but the training table has {len(table)} rows")
    joined = cv.assign(**{n: table[n].to_numpy(np.float64)[rows] for n in instr})
    return attenuation_table(joined, level="month", method="iv", instruments=instr)
