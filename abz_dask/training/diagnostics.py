"""Diagnostics of the trained models: CV metrics, importance, partial dependence, figures.

- CV metrics (seed-spec §4.4) on the pooled held-out predictions: overall, by month, by
  disturbance class, by biome, by flux method and per site.
  Disturbance classes (Extended Data Fig. 6): ``recent_fire`` (fire less than 20 years before
  the observation), ``other_disturbance`` (any other reported disturbance, including older
  fires), ``none_unknown``.
- Permutation importance (vip ``vi_permute``, §4.5): on the central model's training rows, the
  RMSE after permuting one predictor minus the RMSE without permutation, repeated
  ``importance_repeats`` times per predictor (one score per repeat, Extended Data Fig. 3).
- Partial dependence (pdp ``partial``): mean prediction over the training rows with one predictor
  set to each grid value: ``pdp_points`` evenly spaced values between its minimum and maximum
  (fewer if it has fewer distinct values), or every level of a categorical predictor.

Importance and partial dependence are computed per (flux, predictor) as Dask tasks, with the
forest packed once per flux for the exact fast inference kernel
(:mod:`abz_dask.kernels.forest`, identical to scikit-learn's predictions).

Files written to the diagnostics folder: ``tuning.csv``, ``cv_folds.csv``,
``cv_predictions.csv``, ``metrics_pooled.csv``, ``metrics_by_month.csv``,
``metrics_by_disturbance.csv``, ``metrics_by_biome.csv``, ``metrics_by_flux_method.csv``,
``metrics_by_site.csv``, ``model_fit.csv``, ``importance.csv`` (every repeat),
``importance_summary.csv``, ``partial_dependence.csv`` and the figures ``cv_performance.png``
(Extended Data Fig. 2), ``importance.png`` (Fig. 3), ``disturbance.png`` (Fig. 6) and
``partial_dependence.png`` (one panel per predictor, the fluxes overlaid).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask
import numpy as np
import pandas as pd

from abz_dask.io.location import url, write_with
from abz_dask.io.predictors import CATEGORICAL, PREDICTORS
from abz_dask.training.metrics import METRICS, grouped_metrics, metrics

if TYPE_CHECKING:
    from abz_dask.kernels.forest import PackedForest
    from abz_dask.training.bundle import FluxModel, ModelBundle
    from abz_dask.training.fit import TrainingData, TuneResult

__all__ = ["DISTURBANCE_CLASSES", "METRICS", "cv_metric_tables", "disturbance_class",
           "interpretation_tasks", "write_diagnostics"]

_UNITS = "g C m-2 month-1"
DISTURBANCE_CLASSES = ("none_unknown", "recent_fire", "other_disturbance")


def disturbance_class(frame: pd.DataFrame, recent_years: int = 20) -> pd.Series:
    """Extended Data Fig. 6 class of every row.

    Parameters
    ----------
    frame : DataFrame
        ``disturbance`` (text), ``disturb_year`` and ``year`` columns (missing ones mean none).
    recent_years : int
        A fire counts as recent when ``0 <= year − disturb_year < recent_years``.

    Returns
    -------
    Series of str
        ``recent_fire``, ``other_disturbance`` or ``none_unknown``.
    """
    n = len(frame)
    dist = (frame["disturbance"].astype(object).fillna("no").astype(str).str.strip().str.lower()
            if "disturbance" in frame else pd.Series(["no"] * n, index=frame.index))
    none = dist.isin(["no", "none", "nan", "na", "", "undisturbed", "<na>"])
    fire = dist.str.contains("fire", na=False)
    age = (frame["year"] - frame["disturb_year"]) if "disturb_year" in frame else \
        pd.Series(np.nan, index=frame.index)
    recent = fire & (age >= 0) & (age < recent_years)
    out = np.where(none, "none_unknown", np.where(recent, "recent_fire", "other_disturbance"))
    return pd.Series(out, index=frame.index, name="disturbance_class")


def cv_metric_tables(cv_predictions: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Pooled and stratified CV metrics of every flux.

    Parameters
    ----------
    cv_predictions : dict
        Flux → held-out predictions (``obs``, ``pred``, ``site_id``, ``month``, …).

    Returns
    -------
    dict
        ``pooled``, ``by_month``, ``by_disturbance``, ``by_biome``, ``by_flux_method``,
        ``by_site`` → DataFrame with a leading ``flux`` column.
    """
    strata = {"by_month": "month", "by_disturbance": "disturbance_class", "by_biome": "biome",
              "by_flux_method": "flux_method", "by_site": "site_id"}
    out: dict[str, list[pd.DataFrame]] = {k: [] for k in ("pooled", *strata)}
    for flux, cv in cv_predictions.items():
        cv = cv.assign(disturbance_class=disturbance_class(cv))
        m = metrics(cv["obs"], cv["pred"])
        out["pooled"].append(pd.DataFrame([{"flux": flux, "n": m.pop("n"),
                                            "n_sites": cv["site_id"].nunique(), **m}]))
        for name, col in strata.items():
            if col in cv:
                t = grouped_metrics(cv, col)
                t.insert(0, "flux", flux)
                out[name].append(t)
    return {k: pd.concat(v, ignore_index=True) for k, v in out.items() if v}


@dataclass(frozen=True)
class _DiagInput:
    flux: str
    forest: PackedForest
    names: tuple[str, ...]
    X_imp: np.ndarray
    y_imp: np.ndarray
    base_rmse: float
    X_pdp: np.ndarray
    grids: dict[int, tuple[np.ndarray, np.ndarray]]
    fit: dict[str, float]


def _prepare(model: FluxModel, data: TrainingData, seed: int) -> _DiagInput:
    from abz_dask.kernels.forest import pack_forest, predict

    prof = data.profile
    d = data.fluxes[model.flux]
    X = model.design_matrix(d.frame)
    forest = pack_forest(model.estimator)
    fit = metrics(d.y, predict(forest, X))
    rng = np.random.default_rng(seed)
    n = len(d.y)
    imp = np.sort(rng.choice(n, prof.importance_rows, replace=False)) \
        if prof.importance_rows and prof.importance_rows < n else np.arange(n)
    pdp = np.sort(rng.choice(n, prof.pdp_rows, replace=False)) \
        if prof.pdp_rows and prof.pdp_rows < n else np.arange(n)
    base = float(np.sqrt(np.mean((predict(forest, X[imp]) - d.y[imp]) ** 2)))
    grids: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if prof.pdp_points > 0:
        for j, name in enumerate(model.predictors):
            raw = d.frame[name].to_numpy(np.float64)
            if name in CATEGORICAL:
                levels = np.unique(raw)
                grids[j] = (levels, model.encoding.transform_column(name, levels))
            else:
                k = min(prof.pdp_points, len(np.unique(raw)))
                vals = np.linspace(raw.min(), raw.max(), k)
                grids[j] = (vals, vals.astype(np.float32))
    return _DiagInput(model.flux, forest, model.predictors, X[imp], d.y[imp], base, X[pdp],
                      grids, fit)


def _interpret(inp: _DiagInput, j: int, repeats: int, seed: int
               ) -> tuple[str, str, np.ndarray, pd.DataFrame | None, dict[str, float]]:
    from abz_dask.kernels.forest import predict

    rng = np.random.default_rng(seed)
    Xp = inp.X_imp.copy()
    out = np.empty(len(inp.y_imp))
    scores = np.empty(repeats)
    for r in range(repeats):
        Xp[:, j] = inp.X_imp[rng.permutation(len(inp.y_imp)), j]
        predict(inp.forest, Xp, out=out)
        scores[r] = np.sqrt(np.mean((out - inp.y_imp) ** 2)) - inp.base_rmse
    pdp = None
    if j in inp.grids:
        raw, coded = inp.grids[j]
        Xq = inp.X_pdp.copy()
        part = np.empty(len(raw))
        buf = np.empty(len(Xq))
        for k, v in enumerate(coded):
            Xq[:, j] = v
            part[k] = predict(inp.forest, Xq, out=buf).mean()
        pdp = pd.DataFrame({"flux": inp.flux, "predictor": inp.names[j], "value": raw,
                            "partial": part})
    return inp.flux, inp.names[j], scores, pdp, inp.fit


def interpretation_tasks(model: Any, ref: Any, flux: str, repeats: int, seed: int
                         ) -> list[Any]:
    """Delayed tasks computing importance and partial dependence of one flux's central model.

    Parameters
    ----------
    model : Delayed
        The central :class:`FluxModel` (a delayed fit result).
    ref : object
        The shipped :class:`TrainingData`.
    flux : str
        Flux.
    repeats : int
        Permutations per predictor.
    seed : int
        Seed of the row subsets and permutations.

    Returns
    -------
    list of Delayed
        One task per predictor, each ``(flux, predictor, scores, pdp, model_fit)``.
    """
    from abz_dask.io.predictors import PREDICTOR_NAMES

    prep = dask.delayed(_prepare, pure=True)(model, ref, seed)
    part = dask.delayed(_interpret, pure=True)
    return [part(prep, j, repeats, seed + 1 + j) for j in range(len(PREDICTOR_NAMES))]


def write_diagnostics(bundle: ModelBundle, tuned: dict[str, TuneResult],
                      interpretation: list[Any], out_dir: Path) -> dict[str, Path]:
    """Write every diagnostic table (CSV) and figure (PNG) of a training run.

    Parameters
    ----------
    bundle : ModelBundle
        Trained models and CV predictions.
    tuned : dict
        Flux → tuning result.
    interpretation : list
        Results of :func:`interpretation_tasks`.
    out_dir : Path
        Folder (created if missing).

    Returns
    -------
    dict
        Name → written path.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    def save(name: str, df: pd.DataFrame) -> None:
        p = out_dir / f"{name}.csv"
        df.to_csv(url(p), index=False)
        written[name] = p

    save("tuning", pd.concat([t.table.assign(flux=f, chosen=t.table["mtry"] == t.mtry)
                              for f, t in tuned.items()], ignore_index=True)
         .pipe(lambda d: d[["flux", *[c for c in d.columns if c != "flux"]]]))
    save("cv_folds", pd.concat([t.fold_rmse.assign(flux=f) for f, t in tuned.items()],
                               ignore_index=True))
    cv = pd.concat([d.assign(flux=f) for f, d in bundle.cv_predictions.items()],
                   ignore_index=True)
    cv = cv.rename(columns={"obs": f"obs [{_UNITS}]", "pred": f"pred [{_UNITS}]"})
    save("cv_predictions", cv[["flux", *[c for c in cv.columns if c != "flux"]]])
    tables = cv_metric_tables(bundle.cv_predictions)
    tables["pooled"] = tables["pooled"].merge(
        bundle.metrics[["mtry"]].reset_index(), on="flux")
    for name, t in tables.items():
        save(f"metrics_{name}", t)

    imp_rows, pdps, fits = [], [], {}
    for flux, name, scores, pdp, fit in interpretation:
        imp_rows.append(pd.DataFrame({"flux": flux, "predictor": name,
                                      "repeat": np.arange(1, len(scores) + 1),
                                      "delta_rmse": scores}))
        if pdp is not None:
            pdps.append(pdp)
        fits[flux] = fit
    if fits:
        save("model_fit", pd.DataFrame.from_records(
            [{"flux": f, **m} for f, m in fits.items()]))
    imp = pd.concat(imp_rows, ignore_index=True) if imp_rows else pd.DataFrame()
    if len(imp):
        save("importance", imp)
        summ = (imp.groupby(["flux", "predictor"], sort=False)["delta_rmse"]
                .agg(["mean", "std", "median"]).reset_index()
                .sort_values(["flux", "mean"], ascending=[True, False]))
        save("importance_summary", summ)
    pdp_all = pd.concat(pdps, ignore_index=True) if pdps else pd.DataFrame()
    if len(pdp_all):
        save("partial_dependence", pdp_all)
    written.update(_figures(bundle, tables, imp, pdp_all, out_dir))
    return written


def _figures(bundle: ModelBundle, tables: dict[str, pd.DataFrame], imp: pd.DataFrame,
             pdp: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    from matplotlib.figure import Figure

    fluxes = bundle.fluxes
    nf = len(fluxes)
    written: dict[str, Path] = {}
    scheme = bundle.card.get("cv", {}).get("scheme", "")

    # Extended Data Fig. 2: observed vs CV-predicted, and metrics by month
    fig = Figure(figsize=(4.2 * nf, 8))
    fig.subplots_adjust(left=0.08, right=0.93, top=0.95, bottom=0.07, hspace=0.3, wspace=0.45)
    axes = fig.subplots(2, nf, squeeze=False)
    bym = tables.get("by_month", pd.DataFrame())
    for i, f in enumerate(fluxes):
        cv = bundle.cv_predictions[f]
        ax = axes[0, i]
        lo = float(min(cv["obs"].min(), cv["pred"].min()))
        hi = float(max(cv["obs"].max(), cv["pred"].max()))
        ax.hexbin(cv["obs"], cv["pred"], gridsize=40, mincnt=1, bins="log", cmap="viridis")
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        m = metrics(cv["obs"], cv["pred"])
        ax.text(0.03, 0.97, f"n = {m['n']}\nR² = {m['R2']:.2f}\nRMSE = {m['RMSE']:.1f}\n"
                f"MAE = {m['MAE']:.1f}\nMBE = {m['MBE']:.1f}",
                transform=ax.transAxes, va="top", fontsize=8)
        ax.set(title=f"{f} ({scheme} CV, mtry {bundle.models[f].mtry})",
               xlabel=f"observed [{_UNITS}]", ylabel=f"predicted [{_UNITS}]")
        ax2 = axes[1, i]
        t = bym[bym["flux"] == f] if len(bym) else bym
        if len(t):
            h1 = ax2.bar(t["month"], t["RMSE"], color="0.7", label="RMSE")
            (h2,) = ax2.plot(t["month"], t["MBE"], "o-", color="C3", label="MBE")
            ax2.axhline(0, color="k", lw=0.5)
            ax3 = ax2.twinx()
            (h3,) = ax3.plot(t["month"], t["R2"], "s--", color="C0", label="R²")
            ax3.set(ylim=(0, 1), ylabel="R²")
            ax2.legend(handles=[h1, h2, h3], loc="upper left", fontsize=7)
        ax2.set(xlabel="month", ylabel=f"[{_UNITS}]", xticks=range(1, 13))
    written["fig_cv_performance"] = _savefig(fig, out_dir / "cv_performance.png")

    # Extended Data Fig. 3: permutation importance
    if len(imp):
        fig = Figure(figsize=(4.2 * nf, 5.5), layout="constrained")  # room for long names
        axes = fig.subplots(1, nf, squeeze=False)
        for i, f in enumerate(fluxes):
            t = imp[imp["flux"] == f]
            order = t.groupby("predictor")["delta_rmse"].median().sort_values().index
            axes[0, i].boxplot([t.loc[t["predictor"] == p, "delta_rmse"] for p in order],
                               showfliers=False, **_box_kw(list(order), horizontal=True))
            axes[0, i].set(title=f, xlabel=f"ΔRMSE on permutation\n[{_UNITS}]")
        written["fig_importance"] = _savefig(fig, out_dir / "importance.png")

    # Extended Data Fig. 6: CV residuals by disturbance class
    fig = Figure(figsize=(4.2 * nf, 4))
    fig.subplots_adjust(left=0.08, right=0.97, top=0.92, bottom=0.15, wspace=0.4)
    axes = fig.subplots(1, nf, squeeze=False)
    for i, f in enumerate(fluxes):
        cv = bundle.cv_predictions[f]
        cls = disturbance_class(cv)
        groups = [c for c in DISTURBANCE_CLASSES if (cls == c).any()]
        res = [(cv["pred"] - cv["obs"])[cls == c] for c in groups]
        labels = [f"{c}\n{cv.loc[cls == c, 'site_id'].nunique()} sites" for c in groups]
        axes[0, i].boxplot(res, showfliers=False, **_box_kw(labels))
        axes[0, i].axhline(0, color="k", lw=0.5)
        axes[0, i].set(title=f, ylabel=f"CV pred − obs [{_UNITS}]")
        axes[0, i].tick_params(axis="x", labelsize=7)
    written["fig_disturbance"] = _savefig(fig, out_dir / "disturbance.png")

    # partial dependence: one panel per predictor, the fluxes overlaid (same units)
    if len(pdp):
        units = {p.name: p.units for p in PREDICTORS}
        names = list(dict.fromkeys(pdp["predictor"]))
        ncol = 6
        nrow = -(-len(names) // ncol)
        fig = Figure(figsize=(2.6 * ncol, 2.3 * nrow))
        fig.subplots_adjust(left=0.05, right=0.98, top=0.9, bottom=0.06, hspace=0.55,
                            wspace=0.35)
        axes = fig.subplots(nrow, ncol, squeeze=False)
        for k, name in enumerate(names):
            ax = axes[k // ncol, k % ncol]
            for i, f in enumerate(fluxes):
                s = pdp[(pdp["predictor"] == name) & (pdp["flux"] == f)]
                ax.plot(s["value"], s["partial"], "o" if name in CATEGORICAL else "-",
                        ms=3, color=f"C{i}", label=f)
            ax.set_title(f"{name} [{units.get(name, '')}]", fontsize=8)
            ax.tick_params(labelsize=6)
        for k in range(len(names), nrow * ncol):
            axes[k // ncol, k % ncol].axis("off")
        axes[0, 0].legend(fontsize=6)
        fig.suptitle(f"partial dependence [{_UNITS}]")
        written["fig_partial_dependence"] = _savefig(fig, out_dir / "partial_dependence.png")
    return written


def _box_kw(labels: list[str], horizontal: bool = False) -> dict[str, Any]:
    """boxplot keywords across matplotlib 3.8-3.11 (``labels``/``tick_labels``,
    ``vert``/``orientation``)."""
    import matplotlib

    major, minor = (int(v) for v in matplotlib.__version__.split(".")[:2])
    kw: dict[str, Any] = {"tick_labels" if (major, minor) >= (3, 9) else "labels": labels}
    if horizontal:
        kw.update({"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False})
    return kw


def _savefig(fig: Any, path: Path) -> Path:
    write_with(path, lambda f: fig.savefig(f, dpi=100, format="png"))
    return path
