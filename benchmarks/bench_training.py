"""Timing of the leave-one-site-out tuning on 1 and 2 worker processes.

Runs :func:`abz_dask.training.fit.tune` (every fold × mtry fit one Dask task, the training data
scattered once to the workers) on a ``distributed.LocalCluster(n_workers=k,
threads_per_worker=1)`` for k = 1 and 2, checks that both give identical held-out predictions,
and prints the wall times and their ratio. Results go to ``benchmarks/RESULTS_training.md``.

Default workload: NEE on the synthetic twin-like table of 100 sites (≈ 2,300 site-months),
LOSO folds (100) × mtry {2, 9, 17} = 300 fits of 25 trees each — a scaled-down ``paper`` tuning
(500 trees per fit, 3 fluxes) whose cost grows linearly in trees and fluxes.

Usage::

    python benchmarks/bench_training.py [--sites 100] [--trees 25] [--table t.parquet]
        [--light-table t.parquet]   # also time the whole light training (3 fluxes)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from abz_dask.training.fit import prepare, ship_training_data, tune
from abz_dask.training.profiles import TrainingProfile
from abz_dask.training.synthetic import synthetic_training_table

HERE = Path(__file__).resolve().parent


def time_tuning(table: pd.DataFrame, workers: int, trees: int, seed: int = 448
                ) -> tuple[float, np.ndarray, int]:
    """Wall time of the LOSO tuning of NEE on a LocalCluster with ``workers`` processes."""
    from distributed import Client, LocalCluster

    prof = TrainingProfile(name="bench", cv="loso", tuning_trees=trees, n_bootstrap=0)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      host="127.0.0.1", dashboard_address=None) as cluster, Client(cluster):
        data = prepare(table, ["NEE"], prof, seed)
        t0 = time.perf_counter()
        tuned = tune(data, ship_training_data(data), seed, progress=False)
        wall = time.perf_counter() - t0
    n_fits = len(tuned["NEE"].fold_rmse)
    return wall, tuned["NEE"].predictions[tuned["NEE"].mtry], n_fits


def time_light(path: Path) -> tuple[float, int]:
    """Wall time of ``run_training(profile="light")`` (3 fluxes, 20 bootstraps each) on the
    threaded scheduler."""
    import tempfile

    from abz_dask.training import run_training
    from abz_dask.training.extract import read_training_table

    table = read_training_table(path)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_training(table, tmp, profile="light", progress=False)
        return time.perf_counter() - t0, len(table)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=100)
    ap.add_argument("--trees", type=int, default=25)
    ap.add_argument("--table", type=Path, default=None, help="training table instead of the "
                    "synthetic one (Parquet/CSV from write_training_table)")
    ap.add_argument("--light-table", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS_training.md")
    a = ap.parse_args(argv)
    if a.table is not None:
        from abz_dask.training.extract import read_training_table

        table, source = read_training_table(a.table), str(a.table)
    else:
        table = synthetic_training_table(n_sites=a.sites, months_per_site=(6, 40), seed=0)
        source = f"synthetic_training_table(n_sites={a.sites}, months_per_site=(6, 40))"
    rows = []
    preds = {}
    for k in (1, 2):
        load = os.getloadavg()[0]
        wall, preds[k], n_fits = time_tuning(table, k, a.trees)
        rows.append({"workers": k, "fits": n_fits, "wall_s": wall,
                     "fits_per_s": n_fits / wall, "load_before": load})
        print(f"{k} worker(s): {n_fits} fits in {wall:.1f} s (load avg before {load:.2f})",
              flush=True)
    same = bool(np.array_equal(preds[1], preds[2]))
    ratio = rows[0]["wall_s"] / rows[1]["wall_s"]
    print(f"speed-up 1 -> 2 workers: {ratio:.2f}x; identical predictions: {same}")
    light = ""
    if a.light_table is not None:
        wall, n = time_light(a.light_table)
        print(f"light profile, 3 fluxes + 20 bootstraps each, {n} rows: {wall:.1f} s")
        light = (f"\n## Whole `light` training\n\n`run_training(profile=\"light\")` on "
                 f"{a.light_table} ({n} rows; 3 fluxes: tuning, central model, 20 bootstraps "
                 f"each, diagnostics, figures, bundle saved), threaded scheduler, 2 cores: "
                 f"**{wall:.1f} s** wall.\n")
    sys.path.insert(0, str(HERE))
    from r_parity import markdown_table

    a.out.write_text(
        "# Training benchmark (benchmarks/bench_training.py)\n\n"
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}.\n"
        f"Workload: LOSO tuning of NEE on {source} ({len(table)} rows, "
        f"{table['site_id'].nunique()} sites), mtry {{2, 9, 17}}, {a.trees} trees per fit, one "
        "Dask task per fold × mtry, training data scattered once; "
        "`LocalCluster(n_workers=k, threads_per_worker=1)`.\n\n"
        + markdown_table(pd.DataFrame(rows), 2)
        + f"\n\n**Speed-up 1 → 2 workers: {ratio:.2f}×**; held-out predictions identical: "
        f"{same}. (`load_before` = 1-min load average of the shared machine before the run.)\n"
        + light)
    print(f"written {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
