"""Plan the 1-km run and submit its upscale graph to a LocalCluster scheduler (then cancel).

Usage::

    python benchmarks/bench_plan.py [CONFIG] [--tiles 512 64] [--workers 64]
    python benchmarks/bench_plan.py --memory RUN [--memory-tiles 32 128]

For the run configuration (default ``deploy/configs/paper-1km.yaml``: full 1-km grid, 1990–2020)
the script

1. prints ``abz-dask plan``'s table and the seconds it took (nothing computed);
2. checks that the graph does not grow with the models: graph bytes of the 1-km upscale graph
   with 42-tree and with 500-tree forests (fitted on a small random table) are equal;
3. per tile edge in ``--tiles`` (and with ``--many-tasks`` for 19,600 tasks: the 8-km grid
   with 8-cell tiles over one year, the task count of the 1-km grid with 64-cell tiles): builds
   the upscale graph (:func:`upscale_graph`) under a ``LocalCluster`` (one worker process),
   submits every tile task with a resource no worker has (so nothing runs), measures how
   long the scheduler takes to hold every task and how much the
   scheduler's process grew (RSS), then cancels.

``--memory RUN`` instead measures the memory model of :mod:`abz_dask.pipeline.plan`
(``MEMORY_MODEL``): peak RSS (VmHWM) of one worker process upscaling a synthetic 25-km cube
(12 months) with the models of a finished demo run ``RUN``, per tile edge.

The ``LocalCluster`` runs in a child process, so the scheduler's RSS growth (``psutil``) is
what holding the graph costs it; the tasks stay queued and are cancelled. The last line reads
``scheduler_accept_s=... scheduler_mem_mb=... graph_tasks=...`` for the first tile edge.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from abz_dask.pipeline.config import load_config
from abz_dask.pipeline.plan import graph_bytes, plan_run, upscale_graph
from abz_dask.upscale.models import CompiledModel, ModelSet

ROOT = Path(__file__).resolve().parents[1]


def fitted_models(trees: int, fluxes: tuple[str, ...] = ("NEE", "GPP", "Reco"),
                  n_bootstrap: int = 20) -> ModelSet:
    """Real forests of ``trees`` trees (one fitted per size, shared by every model slot)."""
    from sklearn.ensemble import RandomForestRegressor

    from abz_dask.io.encoding import CategoricalEncoding
    from abz_dask.kernels.forest import pack_forest

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 17)).astype(np.float32)
    est = RandomForestRegressor(n_estimators=trees, min_samples_split=6, max_features=9,
                                random_state=0).fit(x, x[:, 0] + rng.normal(size=400))
    m = {f: CompiledModel(f, tuple(range(17)), CategoricalEncoding(), pack_forest(est))
         for f in fluxes}
    return ModelSet(m, {f: (m[f],) * n_bootstrap for f in fluxes})


def graph_bytes_by_trees(config: Any, sizes: tuple[int, ...] = (42, 500)) -> dict[int, int]:
    """Pickled 1-km upscale graph bytes with forests of each size (same run otherwise)."""
    out = {}
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="abz-bench-plan-") as tmp:
            _, _, tasks, _ = upscale_graph(config, Path(tmp), models=fitted_models(n))
            out[n] = graph_bytes(tasks)[1]
    return out


def _serve(conn: Any) -> None:
    """Child process: a LocalCluster (one worker process) until the parent says stop."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0") as cluster:
        conn.send(cluster.scheduler_address)
        conn.recv()


def submit(config: Any, tile: int) -> dict[str, Any]:
    """Submit the upscale graph of ``tile`` to a fresh LocalCluster whose scheduler runs in a
    child process (so its memory is its own); accept time and the scheduler's RSS growth."""
    import multiprocessing as mp

    from distributed import Client

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=_serve, args=(child,))
    server.start()
    sched = psutil.Process(server.pid)
    try:
        with Client(parent.recv()) as client, \
                tempfile.TemporaryDirectory(prefix="abz-bench-plan-") as tmp:
            t0 = time.perf_counter()
            _, tiles, tasks, _ = upscale_graph(config, Path(tmp), tile=tile)
            build_s = time.perf_counter() - t0
            ntask, nbytes = graph_bytes(tasks)

            def count(dask_scheduler: Any) -> int:
                return len(dask_scheduler.tasks)

            before = client.run_on_scheduler(count)
            rss0 = sched.memory_info().rss
            t0 = time.perf_counter()
            futures = client.compute(tasks, resources={"abz-plan-never": 1})
            while client.run_on_scheduler(count) < before + len(tasks):
                time.sleep(0.05)
            accept = time.perf_counter() - t0
            rss1 = sched.memory_info().rss

            def states(dask_scheduler: Any) -> dict[str, int]:
                out: dict[str, int] = {}
                for k, ts in dask_scheduler.tasks.items():
                    if str(k).startswith("upscale_tile"):
                        out[ts.state] = out.get(ts.state, 0) + 1
                return out

            st = client.run_on_scheduler(states)
            client.cancel(futures)
        if set(st) - {"no-worker", "queued", "released", "waiting"}:
            raise RuntimeError(f"a tile task left the scheduler's queue: {st}")
    finally:
        parent.send("stop")
        server.join(60)
    g = config.input
    return {"grid": getattr(g, "resolution", "?"), "tile": tile, "tiles": len(tiles),
            "graph_tasks": ntask, "graph_MB": nbytes / 1e6, "graph_build_s": build_s,
            "scheduler_accept_s": accept, "scheduler_mem_mb": (rss1 - rss0) / 2**20,
            "scheduler_rss_mb": rss1 / 2**20}


def worker_memory(run: Path, tiles: list[int]) -> list[dict[str, float]]:
    """Peak RSS of one upscaling worker per tile edge (synthetic 25-km cube, 12 months)."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_upscale as bu

    from abz_dask.geo.grid import Grid
    from abz_dask.training import load_bundle
    from abz_dask.upscale import UpscaleConfig, compile_bundle, run_upscale

    models = compile_bundle(load_bundle(run / "models"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cube, zones = bu._synthetic_stores(Grid.from_preset("25km"), Path(tmp))
        for tile in tiles:
            cluster, client = bu._cluster(1)
            try:
                base = max(client.run(bu._vm_hwm_kb, True).values())
                run_upscale(cube, zones, Path(tmp) / f"out{tile}.zarr", models,
                            UpscaleConfig(tile=tile, end="2001-12"), progress=False)
                peak = max(client.run(bu._vm_hwm_kb).values())
            finally:
                client.close()
                cluster.close()
            rows.append({"tile": tile, "models_mb": models.nbytes() / 2**20,
                         "base_mb": base / 1024, "peak_mb": peak / 1024})
    return rows


def main() -> None:
    """Plan, check the graph against the model size, submit per tile edge; print figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", type=Path, nargs="?",
                    default=ROOT / "deploy" / "configs" / "paper-1km.yaml")
    ap.add_argument("--tiles", type=int, nargs="+", default=[512, 64])
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--many-tasks", action="store_true",
                    help="also submit 19,600 tasks: the 8-km grid, 8-cell tiles, one year")
    ap.add_argument("--memory", type=Path, metavar="RUN",
                    help="only the worker memory per tile edge, with RUN's models")
    ap.add_argument("--memory-tiles", type=int, nargs="+", default=[32, 128])
    a = ap.parse_args()
    if a.memory:
        mem = worker_memory(a.memory, a.memory_tiles)
        for r in mem:
            print(" ".join(f"{k}={v:.1f}" for k, v in r.items()))
        (t0, p0), (t1, p1) = [(r["tile"], r["peak_mb"] - r["base_mb"]) for r in mem[:2]]
        slope = (p1 - p0) / (t1**2 - t0**2)
        print(f"base_mb={mem[0]['base_mb']:.1f} "
              f"fixed_mb={p0 - slope * t0**2 - mem[0]['models_mb']:.1f} "
              f"per_cell_mb={slope:.6f}")
        return
    config = load_config(a.config)
    t0 = time.perf_counter()
    p = plan_run(config, workers=a.workers)
    print(p.text())
    print(f"# plan: {time.perf_counter() - t0:.1f} s wall, nothing computed")
    by_trees = graph_bytes_by_trees(config)
    print("# graph bytes by forest size (trees: bytes): "
          + ", ".join(f"{k}: {v:,}" for k, v in by_trees.items())
          + (" -- equal" if len(set(by_trees.values())) == 1 else " -- DIFFERENT"))
    rows = [submit(config, t) for t in a.tiles]
    if a.many_tasks:  # the task count of a 1-km run with 64-cell tiles, at small store cost
        many = config.model_copy(update={
            "input": config.input.model_copy(update={"resolution": "8km"}),
            "upscale": config.upscale.model_copy(update={"start": "2020-01", "end": "2020-12",
                                                          "tile": None})})
        rows.append(submit(many, 8))
    for r in rows:
        print("# " + " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in r.items()))
    r = rows[0]
    print(f"scheduler_accept_s={r['scheduler_accept_s']:.3f} "
          f"scheduler_mem_mb={r['scheduler_mem_mb']:.1f} graph_tasks={r['graph_tasks']}")


if __name__ == "__main__":
    main()
