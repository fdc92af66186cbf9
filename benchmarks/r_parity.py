"""Parity of abz_dask's tuned forests with R caret + randomForest on the same folds.

abz_dask's tuning (:func:`abz_dask.training.fit.tune`) and ``benchmarks/r_parity.R`` (caret
``train(method = "rf")``) run on one table with the SAME leave-one-site-out fold ids (passed to R
as a column), the same mtry grid and tree count; per flux the script compares the chosen mtry,
the mean fold RMSE per mtry and the pooled held-out R² and RMSE.

Known, deliberate differences (so figures agree statistically, not to the digit):

- random numbers (R's and numpy's generators differ);
- categorical predictors: randomForest searches the category order at every node, abz_dask
  encodes month and vegetation type once per fit by mean response (DECISIONS 7);
- node size: randomForest stops at ≤ 5 rows counting bootstrap duplicates, scikit-learn's
  ``min_samples_split = 6`` counts distinct rows, so a node of 16 draws of 5 rows stays a leaf
  and scikit-learn's trees are smaller (≈ 2/3 of randomForest's leaves on the demo table,
  ``benchmarks/RESULTS_fit.md``); ``--node-size-counts draws`` (the profile field
  ``node_size_counts``) counts draws as R does.

Usage::

    python benchmarks/r_parity.py [--sites 60] [--ntree 200] [--table training_table.parquet]
                                  [--node-size-counts rows [draws]]
                                  [--out benchmarks/RESULTS_r_parity.md]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from abz_dask.io.predictors import CATEGORICAL, PREDICTOR_NAMES
from abz_dask.training.fit import caret_mtry_grid, prepare, ship_training_data, tune
from abz_dask.training.metrics import metrics
from abz_dask.training.profiles import TrainingProfile
from abz_dask.training.synthetic import synthetic_training_table

HERE = Path(__file__).resolve().parent
R_SCRIPT = HERE / "r_parity.R"


def r_available(rscript: str = "Rscript") -> str | None:
    """None when Rscript with caret and randomForest is usable, else the reason why not."""
    exe = shutil.which(rscript)
    if exe is None:
        return f"{rscript} not found on PATH (apt-get install r-base-core)"
    probe = subprocess.run(
        [exe, "-e", "suppressPackageStartupMessages({library(caret); library(randomForest)})"],
        capture_output=True, text=True, env={**os.environ, "TZ": "UTC"}, check=False)
    if probe.returncode != 0:
        return ("R packages caret/randomForest missing (apt-get install r-cran-caret "
                f"r-cran-randomforest): {probe.stderr.strip()[-200:]}")
    return None


def run_parity(table: pd.DataFrame, fluxes: Sequence[str] = ("NEE", "GPP", "Reco"), *,
               ntree: int = 200, seed: int = 448, rscript: str = "Rscript",
               workdir: Path | None = None, progress: bool = False,
               node_size_counts: Sequence[str] = ("rows",)) -> pd.DataFrame:
    """Tune with abz_dask and with R caret on the same LOSO folds and compare.

    Parameters
    ----------
    table : DataFrame
        Training table (``site_id``, responses, the 17 predictors).
    fluxes : sequence of str
        Responses.
    ntree : int
        Trees per tuning fit (both sides).
    seed : int
        Seed (fold numbering, forests).
    rscript : str
        Rscript executable.
    workdir : Path, optional
        Where the CSV exchange happens (a temporary folder by default).
    progress : bool
        Progress bar of the Python fits.
    node_size_counts : sequence of {"rows", "draws"}
        Python tunes once per value (the profile field of that name), R once for all.

    Returns
    -------
    DataFrame
        One row per flux and ``node_size_counts``: ``n, n_sites, mtry_py, mtry_r, R2_py, R2_r,
        RMSE_py, RMSE_r, seconds_py, seconds_r`` (wall time of each side, run concurrently) and
        ``fold_rmse_py`` / ``fold_rmse_r`` (mean fold RMSE per mtry, ``mtry:value`` strings).
    """
    grid = caret_mtry_grid(len(PREDICTOR_NAMES))
    prof = TrainingProfile(name="r_parity", cv="loso", tuning_trees=ntree, final_trees=ntree,
                           n_bootstrap=0)
    data = prepare(table, list(fluxes), prof, seed)  # folds do not depend on the node size

    tmp = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="r_parity_"))
    (tmp / "out").mkdir(parents=True, exist_ok=True)
    procs = []
    t0 = time.perf_counter()
    try:
        # one R process per flux (R seeds each flux's train() alike, so this equals one process
        # looping over the fluxes), all running while Python tunes: the sides share the cores
        for f in fluxes:
            d = data.fluxes[f]
            frame = d.frame.copy()
            frame.insert(0, "y", d.y)
            frame.insert(0, "fold", d.folds)
            frame["month"] = frame["month"].astype(int)
            frame["vegtype"] = frame["vegtype"].astype(int)
            (tmp / "in" / f).mkdir(parents=True, exist_ok=True)
            frame.to_csv(tmp / "in" / f / f"{f}.csv", index=False, float_format="%.9g")
            cmd = [rscript, str(R_SCRIPT), str(tmp / "in" / f), str(tmp / "out"), str(ntree),
                   ",".join(map(str, grid)), str(seed), ",".join(CATEGORICAL)]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True, env={**os.environ, "TZ": "UTC"}))
        tuned = {}
        for mode in node_size_counts:
            d_mode = prepare(table, list(fluxes),
                             prof.model_copy(update={"node_size_counts": mode}), seed)
            tuned[mode] = tune(d_mode, ship_training_data(d_mode), seed, progress)
        seconds_py = time.perf_counter() - t0
        errs = [p.communicate()[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    seconds_r = time.perf_counter() - t0
    for p, err in zip(procs, errs, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"Rscript failed ({p.returncode}):\n{err[-2000:]}")

    rows = []
    for f in fluxes:
        d = data.fluxes[f]
        r_res = pd.read_csv(tmp / "out" / f"{f}_results.csv")
        r_pred = pd.read_csv(tmp / "out" / f"{f}_predictions.csv").sort_values("rowIndex")
        r_best = int(pd.read_csv(tmp / "out" / f"{f}_best.csv")["mtry"].iloc[0])
        if not np.allclose(r_pred["obs"].to_numpy(), d.y, rtol=1e-6, atol=1e-6):
            raise RuntimeError(f"{f}: R's held-out rows do not line up with the table")
        rr = metrics(d.y, r_pred["pred"].to_numpy())
        for mode, t in tuned.items():
            py = metrics(d.y, t[f].predictions[t[f].mtry])
            tab = t[f].table
            rows.append({
                "flux": f, "node_size_counts": mode, "n": len(d.y),
                "n_sites": len(np.unique(d.sites)), "mtry_py": t[f].mtry, "mtry_r": r_best,
                "R2_py": py["R2"], "R2_r": rr["R2"], "RMSE_py": py["RMSE"], "RMSE_r": rr["RMSE"],
                "fold_rmse_py": " ".join(f"{m}:{v:.3f}" for m, v in
                                         zip(tab["mtry"], tab["mean_fold_rmse"], strict=True)),
                "fold_rmse_r": " ".join(f"{m}:{v:.3f}" for m, v in
                                        zip(r_res["mtry"], r_res["RMSE"], strict=True)),
                "seconds_py": seconds_py, "seconds_r": seconds_r,
            })
    if workdir is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return pd.DataFrame.from_records(rows)


def mtry_agrees(row: pd.Series, tol: float = 0.015) -> bool:
    """Same mtry, or R itself finds the two choices within ``tol`` (relative) of each other in
    mean fold RMSE (a near-tie that Monte-Carlo noise may flip)."""
    if row["mtry_py"] == row["mtry_r"]:
        return True
    r = dict(kv.split(":") for kv in row["fold_rmse_r"].split())
    a, b = float(r[str(row["mtry_py"])]), float(r[str(row["mtry_r"])])
    return abs(a - b) <= tol * b


def markdown_table(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub markdown table of ``df`` (floats with ``digits`` decimals)."""
    def cell(v: object) -> str:
        return f"{v:.{digits}f}" if isinstance(v, float | np.floating) else str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |",
             "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |"
              for row in df.itertuples(index=False)]
    return "\n".join(lines)


def parity_table(n_sites: int = 60, seed: int = 0) -> pd.DataFrame:
    """A twin-like synthetic table (4–16 months per site), no twin needed."""
    return synthetic_training_table(n_sites=n_sites, months_per_site=(4, 16), seed=seed)


def twin_parity_table(workdir: Path, n_sites: int = 60, seed: int = 0,
                      start: str = "2001-01", end: str = "2010-12") -> pd.DataFrame:
    """The training table of a small digital twin (100-km grid, ``n_sites`` sites): the
    ABCflux-format CSV read and extracted exactly as the ``train`` stage does."""
    from abz_dask.pipeline.demo import extract_stage
    from abz_dask.twin import generate_twin

    lay = generate_twin(Path(workdir) / "twin", resolution="100km", start=start, end=end,
                        seed=seed, n_sites=n_sites, progress=False)
    table, _ = extract_stage(lay.cube, lay.zones, lay.sites)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=60)
    ap.add_argument("--ntree", type=int, default=200)
    ap.add_argument("--seed", type=int, default=448)
    ap.add_argument("--table", type=Path, default=None,
                    help="training table (Parquet/CSV) instead of a small twin's")
    ap.add_argument("--synthetic", action="store_true",
                    help="use the synthetic table instead of a small twin's")
    ap.add_argument("--node-size-counts", nargs="+", choices=("rows", "draws"),
                    default=["rows"], help="Python forests' node-size counting (one tuning each)")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS_r_parity.md")
    a = ap.parse_args(argv)
    why = r_available()
    if why:
        print(f"skipped: {why}")
        return 1
    if a.table is not None:
        from abz_dask.training.extract import read_training_table

        table, source = read_training_table(a.table), str(a.table)
    elif a.synthetic:
        table = parity_table(a.sites)
        source = f"synthetic_training_table(n_sites={a.sites}, months_per_site=(4, 16), seed=0)"
    else:
        table = twin_parity_table(Path(tempfile.mkdtemp(prefix="r_parity_twin_")), a.sites)
        source = (f"digital twin, 100-km grid, 2001-2010, {a.sites} sites "
                  "(twin_parity_table: ABCflux CSV read + extracted as in `abz-dask train`)")
    res = run_parity(table, ntree=a.ntree, seed=a.seed, progress=True,
                     node_size_counts=a.node_size_counts)
    res["mtry_ok"] = res.apply(mtry_agrees, axis=1)
    res["dR2"] = res["R2_py"] - res["R2_r"]
    res["dRMSE_rel"] = res["RMSE_py"] / res["RMSE_r"] - 1
    shown = res[["flux", "node_size_counts", "n", "n_sites", "mtry_py", "mtry_r", "mtry_ok",
                 "R2_py", "R2_r", "dR2", "RMSE_py", "RMSE_r", "dRMSE_rel", "fold_rmse_py",
                 "fold_rmse_r"]]
    print(shown.to_string(index=False))
    import sklearn

    r_ver = subprocess.run(["Rscript", "-e", "cat(R.version.string, 'caret', as.character("
                            "packageVersion('caret')), 'randomForest', as.character("
                            "packageVersion('randomForest')))"], capture_output=True, text=True,
                           env={**os.environ, "TZ": "UTC"}, check=False).stdout.strip()
    a.out.write_text(
        "# R parity of the tuned forests (benchmarks/r_parity.py)\n\n"
        f"Table: {source}; LOSO folds (same fold ids on both sides), mtry grid "
        f"{list(caret_mtry_grid(17))}, {a.ntree} trees per fit, seed {a.seed}.\n"
        f"Python: scikit-learn {sklearn.__version__}; R: {r_ver}.\n"
        f"Wall time: Python {res['seconds_py'].iloc[0]:.0f} s (all fluxes, local threads), "
        f"R {res['seconds_r'].iloc[0]:.0f} s (one process per flux, beside Python).\n\n"
        "fold_rmse = caret's mean per-fold RMSE per mtry (the selection criterion); R2 and RMSE "
        "are pooled over the held-out predictions at the chosen mtry.\n\n"
        + markdown_table(shown) + "\n")
    print(f"written {a.out}")
    ok = bool(res["mtry_ok"].all() and (res["dR2"].abs() <= 0.03).all())
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
