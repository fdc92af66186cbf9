"""Forest fitting cost: abz_dask's forests (scikit-learn) vs R randomForest, one core each.

Training is the expensive part of the ``paper`` profile (≈ 1,800 LOSO fits of 500 trees at
50 km), so its engine matters as much as the inference kernel's. On one flux of a training
table, encoded as ``train`` encodes it (DECISIONS 7), for every mtry of the caret grid, this
script fits

- ``abz_dask``: :func:`abz_dask.training.fit.fit_forest` as ``train`` calls it
  (``min_samples_split = 6``, bootstrap rows, ``max_features = mtry``, one thread), default
  ``node_size_counts = "rows"``;
- ``abz_dask_draws``: the same with ``node_size_counts = "draws"`` (node size counted in
  bootstrap draws, as randomForest counts it);
- ``randomForest_numeric``: R ``randomForest(x, y, ntree, mtry, nodesize = 5)``
  (``benchmarks/bench_fit.R``) on the same numeric table (like for like);
- ``randomForest_factor``: the same with month and vegetation type as R factors, as caret and
  the authors' code pass them (randomForest then searches category subsets at each split).

Fits are timed in CPU seconds of the fit alone (Python ``process_time``, R ``system.time``
user + system), so other jobs on the machine slow none of them. The mean number of leaves per
tree shows whether the engines grow trees of the same size. The last line is
machine-readable; the projection multiplies the per-fit cost by the ``paper`` profile's LOSO
tuning fits (fluxes × sites × mtry values, 500 trees each).

Usage::

    python benchmarks/bench_fit.py [--table RUN/training/training_table.parquet] [--flux NEE]
        [--ntree 100] [--repeats 2] [--out benchmarks/RESULTS_fit.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import sklearn
from r_parity import markdown_table, r_available  # benchmarks/ is on sys.path as a script

from abz_dask.io.predictors import CATEGORICAL, PREDICTOR_NAMES
from abz_dask.training.extract import read_training_table
from abz_dask.training.fit import _encode, caret_mtry_grid, fit_forest, prepare
from abz_dask.training.profiles import PROFILES
from abz_dask.training.synthetic import synthetic_training_table

HERE = Path(__file__).resolve().parent
R_SCRIPT = HERE / "bench_fit.R"


def encoded_rows(table: pd.DataFrame, flux: str, seed: int = 448
                 ) -> tuple[np.ndarray, np.ndarray, int]:
    """The rows of ``flux`` encoded as ``train`` encodes its central fit, their response and
    the number of sites."""
    data = prepare(table, [flux], PROFILES["paper"], seed)
    d = data.fluxes[flux]
    enc = _encode(d.frame, d.y, PREDICTOR_NAMES, data.profile)
    return enc.transform(d.frame, PREDICTOR_NAMES), d.y, len(np.unique(d.sites))


def time_python(x: np.ndarray, y: np.ndarray, grid: Sequence[int], ntree: int,
                repeats: int, seed: int) -> pd.DataFrame:
    """CPU seconds and mean leaves per tree of abz_dask's forest fits, for both
    ``node_size_counts`` (engine ``abz_dask`` = the default ``rows``, ``abz_dask_draws``)."""
    rows = []
    for mode, engine in (("rows", "abz_dask"), ("draws", "abz_dask_draws")):
        prof = PROFILES["paper"].model_copy(update={"node_size_counts": mode})
        for m in grid:
            for r in range(1, repeats + 1):
                t0 = time.process_time()
                rf = fit_forest(x, y, m, ntree, seed + r, prof)
                cpu = time.process_time() - t0
                leaves = float(np.mean([t.get_n_leaves() for t in rf.estimators_]))
                rows.append({"engine": engine, "mtry": m, "rep": r, "cpu_s": cpu,
                             "mean_leaves": leaves})
    return pd.DataFrame(rows)


def time_r(x: np.ndarray, y: np.ndarray, grid: Sequence[int], ntree: int, repeats: int,
           seed: int, rscript: str = "Rscript") -> pd.DataFrame:
    """CPU seconds and mean leaves per tree of R randomForest fits (numeric and factor)."""
    with tempfile.TemporaryDirectory(prefix="bench_fit_") as tmp:
        frame = pd.DataFrame(x, columns=list(PREDICTOR_NAMES))
        frame.insert(0, "y", y)
        for c in CATEGORICAL:  # integer codes: the factor mode turns them into levels
            frame[c] = frame[c].astype(int)
        frame.to_csv(Path(tmp) / "x.csv", index=False, float_format="%.9g")
        out = Path(tmp) / "r.csv"
        cmd = [rscript, str(R_SCRIPT), str(Path(tmp) / "x.csv"), str(out), str(ntree),
               ",".join(map(str, grid)), str(repeats), str(seed), ",".join(CATEGORICAL)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                              env={**os.environ, "TZ": "UTC"})
        if proc.returncode != 0:
            raise RuntimeError(f"Rscript failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        r = pd.read_csv(out)
    r["engine"] = "randomForest_" + r.pop("mode")
    return r


def r_version(rscript: str = "Rscript") -> str:
    """R and randomForest versions."""
    expr = 'cat(R.version.string, "randomForest", format(packageVersion("randomForest")))'
    return subprocess.run([rscript, "-e", expr], capture_output=True, text=True,
                          check=True).stdout.strip()


def summarise(times: pd.DataFrame, ntree: int) -> pd.DataFrame:
    """Per engine and mtry: the fastest repeat's CPU seconds per 500 trees and mean leaves,
    and each engine's ratio to ``abz_dask`` (its seconds / abz_dask's: > 1 = abz_dask is
    faster)."""
    s = (times.groupby(["engine", "mtry"])
         .agg(cpu_s=("cpu_s", "min"), mean_leaves=("mean_leaves", "mean")).reset_index())
    s["cpu_s_500_trees"] = s.pop("cpu_s") * 500 / ntree
    ours = s[s["engine"] == "abz_dask"].set_index("mtry")["cpu_s_500_trees"]
    s["ratio_to_abz_dask"] = s["cpu_s_500_trees"] / s["mtry"].map(ours)
    return s


def project(s: pd.DataFrame, n_sites: int, n_fluxes: int = 3) -> pd.Series:
    """Core-hours of the ``paper`` LOSO tuning per engine: every site a fold, every mtry,
    every flux, 500 trees per fit (fits on n − n/n_sites rows costed as on n rows)."""
    return s.groupby("engine")["cpu_s_500_trees"].sum() * n_sites * n_fluxes / 3600.0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", type=Path, default=None,
                    help="training table (Parquet/CSV); default a synthetic 200-site table")
    ap.add_argument("--flux", default="NEE")
    ap.add_argument("--ntree", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=448)
    ap.add_argument("--rscript", default="Rscript")
    ap.add_argument("--out", type=Path, default=None, help="write a markdown results file")
    a = ap.parse_args(argv)
    why = r_available(a.rscript)
    if why is not None:
        ap.error(why)

    if a.table is None:
        table, source = synthetic_training_table(n_sites=200, months_per_site=(4, 44)), \
            "synthetic_training_table(n_sites=200, months_per_site=(4, 44))"
    else:
        table, source = read_training_table(a.table), str(a.table)
    x, y, n_sites = encoded_rows(table, a.flux, a.seed)
    grid = caret_mtry_grid(len(PREDICTOR_NAMES))
    print(f"{source}: {a.flux}, {len(y)} rows, {n_sites} sites, mtry {list(grid)}, "
          f"{a.ntree} trees per fit, best of {a.repeats}", flush=True)

    t0 = time.perf_counter()
    times = pd.concat([time_python(x, y, grid, a.ntree, a.repeats, a.seed),
                       time_r(x, y, grid, a.ntree, a.repeats, a.seed, a.rscript)])
    wall = time.perf_counter() - t0
    s = summarise(times, a.ntree)
    hours = project(s, n_sites)
    with pd.option_context("display.width", 120, "display.precision", 2):
        print(s.to_string(index=False))
    print("paper LOSO tuning, 3 fluxes, core-hours: "
          + ", ".join(f"{e} {h:.1f}" for e, h in hours.items()))

    ratio = {e: float(np.exp(np.log(g["ratio_to_abz_dask"]).mean()))  # geometric mean
             for e, g in s[s["engine"] != "abz_dask"].groupby("engine")}
    if a.out is not None:
        lines = [
            "# Forest fitting cost: abz_dask (scikit-learn) vs R randomForest "
            "(benchmarks/bench_fit.py)", "",
            f"Table: {source}; {a.flux}, {len(y)} rows, {n_sites} sites, encoded as `train` "
            f"encodes it. {a.ntree} trees per fit, fastest of {a.repeats} repeats, CPU seconds "
            "scaled to 500 trees. One core per side.",
            f"Python {platform.python_version()}, scikit-learn {sklearn.__version__}; "
            f"{r_version(a.rscript)}. Wall time of the benchmark {wall:.0f} s.", "",
            "`randomForest_numeric`: the same numeric table; `randomForest_factor`: month and "
            "vegetation type as R factors (caret and the authors' code). "
            "`ratio_to_abz_dask` = engine CPU / abz_dask CPU (> 1: abz_dask fits faster).", "",
            markdown_table(s, 2), "",
            "Projected `paper` LOSO tuning (3 fluxes × sites × mtry grid, 500 trees): "
            + ", ".join(f"{e} {h:.1f} core-hours" for e, h in hours.items()) + ".", ""]
        a.out.write_text("\n".join(lines))
    print(" ".join(f"ratio_{e}={v:.2f}" for e, v in ratio.items())
          + f" core_hours_paper_tuning_ours={hours['abz_dask']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
