"""Tile upscaler: sampled-bootstrap accuracy, worker memory at two grid sizes, 1-km projection.

Usage::

    python benchmarks/bench_upscale.py RUN_DIR [--fractions 0.25 0.1] [--memory 50km 25km]

``RUN_DIR`` is a finished demo run (``abz-dask demo --out RUN_DIR``: twin, models and the exact
``fluxes.zarr``). The script

1. reruns the upscaler with bootstraps on a fraction f of the domain cells (stratified by tile ×
   biome) into ``RUN_DIR/bench/f<f>.zarr`` and prints, per domain and flux, how far the bootstrap
   SD of the period budgets moves from the exact run (the issue's goal: within 5 % at f = 0.1);
2. upscales a synthetic cube (same models, same 32-cell tiles, 24 months) on one worker process at
   two grid sizes and prints the worker's peak RSS for each (bounded by the tile, not the grid);
3. prints the measured throughput and the projected core-hours of the full 1-km product (3 fluxes,
   20 bootstraps, 500-tree forests), exact and sampled.

The last line reads ``sd_rel_dev_f0.1=<x> mem_ratio=<y> core_hours_exact=<a> core_hours_f0.1=<b>``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from abz_dask.geo.grid import Grid
from abz_dask.training import load_bundle
from abz_dask.training.synthetic import synthetic_cube
from abz_dask.twin import generate_twin
from abz_dask.upscale import (
    UpscaleConfig,
    budget_table,
    compile_bundle,
    project_core_hours,
    run_upscale,
)
from abz_dask.upscale.models import ModelSet
from abz_dask.upscale.results import core_hours_1km


def _cluster(n: int):  # type: ignore[no-untyped-def]
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None)
    return cluster, Client(cluster)


def sampled_accuracy(run: Path, fractions: list[float], workers: int
                     ) -> tuple[pd.DataFrame, pd.DataFrame, list[pd.DataFrame]]:
    """Budget SDs with sampled bootstraps vs the exact run, per-run costs and tile records."""
    cube, zones = run / "twin" / "cube.zarr", run / "twin" / "zones.zarr"
    exact = budget_table(run / "fluxes.zarr").set_index(["domain", "flux"])
    bundle = load_bundle(run / "models", cube=xr.open_zarr(cube, consolidated=False))
    models = compile_bundle(bundle)
    rows, timing, all_tiles = [], [], []
    cluster, client = _cluster(workers)
    try:
        for f in fractions:
            out = run / "bench" / f"f{f:g}.zarr"
            t0 = time.perf_counter()
            tiles = run_upscale(cube, zones, out, models, UpscaleConfig(bootstrap_sample=f),
                                progress=False)
            all_tiles.append(tiles)
            timing.append({"f": f, "wall_s": time.perf_counter() - t0,
                           "cpu_s": float(tiles["cpu_s"].sum()),
                           **project_core_hours(tiles, 3, 20, f)})
            s = budget_table(out).set_index(["domain", "flux"])
            for key in exact.index:
                rows.append({"f": f, "domain": key[0], "flux": key[1],
                             "sd_exact": exact.loc[key, "boot_sd_tg_c_yr"],
                             "sd_sampled": s.loc[key, "boot_sd_tg_c_yr"],
                             "central_equal": s.loc[key, "estimate_tg_c_yr"]
                             == exact.loc[key, "estimate_tg_c_yr"]})
    finally:
        client.close()
        cluster.close()
    tab = pd.DataFrame(rows)
    tab["rel_dev"] = tab["sd_sampled"] / tab["sd_exact"] - 1
    return tab, pd.DataFrame(timing), all_tiles


def paper_models(run: Path, workers: int) -> ModelSet:
    """The demo bundle's central and first bootstrap model of every flux refitted with 500
    trees (same rows, settings and seeds otherwise); the 500-tree bootstrap model stands in for
    all 20 replicates, so the cost of the product is measured (not its uncertainty)."""
    import dataclasses

    from abz_dask.io.predictors import PREDICTOR_NAMES
    from abz_dask.training.extract import read_training_table
    from abz_dask.upscale.models import _compile

    cube = run / "twin" / "cube.zarr"
    bundle = load_bundle(run / "models", cube=xr.open_zarr(cube, consolidated=False))
    table = read_training_table(run / "training" / "training_table.parquet")
    central, boots = {}, {}
    for flux, model in bundle.models.items():
        rows = table[table[flux].notna()]
        frame, y = rows[list(PREDICTOR_NAMES)].astype(np.float32), rows[flux].to_numpy()
        refit = []
        for m in (model, bundle.bootstraps[flux][0]):
            est = m.estimator.__class__(**{**m.estimator.get_params(), "n_estimators": 500,
                                           "n_jobs": workers})
            est.fit(m.design_matrix(frame), y)
            est.set_params(n_jobs=1)
            refit.append(_compile(flux, dataclasses.replace(m, estimator=est)))
        central[flux], boots[flux] = refit[0], (refit[1],) * 20
    return ModelSet(central, boots)


def paper_forest_throughput(run: Path, years: tuple[str, str], f: float, workers: int
                            ) -> pd.DataFrame:
    """Upscale ``years`` with paper-size forests (:func:`paper_models`) and return the tile
    records."""
    cube = run / "twin" / "cube.zarr"
    models = paper_models(run, workers)
    cluster, client = _cluster(workers)
    try:
        return run_upscale(cube, run / "twin" / "zones.zarr", run / "bench" / "paper_forests.zarr",
                           models, UpscaleConfig(start=f"{years[0]}-01", end=f"{years[1]}-12",
                                                 bootstrap_sample=f), progress=False)
    finally:
        client.close()
        cluster.close()


#: Land-surface predictors that vary from pixel to pixel in real 1-km products; ``--texture``
#: adds white noise to these (month, CO2 and the vegetation type are left as they are).
TEXTURED = ("srad", "vpd", "snow_cover", "soil_temp", "soil_moisture", "ndvi", "tair", "cti",
            "nontree_cover", "nonveg_cover", "tree_cover", "soil_ph", "soc", "permafrost_prob")


def draw_tiles(run: Path, n: int, seed: int, tile: int) -> list[str]:
    """``n`` windows of ``tile`` × ``tile`` cells of the 1-km grid, each around a point drawn
    uniformly over the ABZ land area (cells of the demo's zones drawn with probability ∝ cell
    area × land fraction, then a uniform point inside the cell)."""
    zones = xr.open_zarr(run / "twin" / "zones.zarr", consolidated=False).load()
    coarse = Grid.of_dataset(zones)
    w = (zones["abz"] & (zones["land_fraction"] > 0)) * zones["land_fraction"].fillna(0.0)
    p = w.values.ravel() / float(w.sum())
    rng = np.random.default_rng(seed)
    fine = Grid.from_preset("1km")
    ys, xs = zones["y"].values, zones["x"].values
    specs = []
    for cell in rng.choice(p.size, size=n, p=p):
        r50, c50 = divmod(int(cell), zones.sizes["x"])
        x = xs[c50] + (rng.random() - 0.5) * coarse.resolution
        y = ys[r50] + (rng.random() - 0.5) * coarse.resolution
        col = int((x - fine.left) // fine.resolution)
        row = int((fine.top - y) // fine.resolution)
        r0 = min(max(row - tile // 2, 0), fine.shape[0] - tile)
        c0 = min(max(col - tile // 2, 0), fine.shape[1] - tile)
        specs.append(f"1km[{r0}:{r0 + tile},{c0}:{c0 + tile}]")
    return specs


def training_sd(run: Path) -> dict[str, float]:
    """Standard deviation of every predictor over the demo's training table."""
    from abz_dask.training.extract import read_training_table

    table = read_training_table(run / "training" / "training_table.parquet")
    return {k: float(table[k].std()) for k in TEXTURED}


def texture_arrays(arrays: dict[str, np.ndarray], s: float, sd: dict[str, float],
                   rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``arrays`` with white noise of SD ``s`` × the training SD added to every cell (and month)
    of the :data:`TEXTURED` predictors: the pixel-to-pixel variability of real 1-km rasters
    that the twin's smooth fields lack. The noise makes each tile-month's range of those
    predictors wide, so the kernel's per-chunk tree pruning skips fewer splits and rows of a
    lane group part ways sooner: a stress on the forest walk, not a realistic field."""
    out = dict(arrays)
    for k in TEXTURED:
        noise = rng.standard_normal(np.shape(arrays[k])).astype(np.float32)
        out[k] = (arrays[k] + noise * np.float32(s * sd[k])).astype(np.float32)
    return out


def texture_cube(src: Path, dst: Path, s: float, sd: dict[str, float], seed: int) -> Path:
    """A copy of the cube ``src`` with pixel texture (:func:`texture_arrays`)."""
    cube = xr.open_zarr(src, consolidated=False).load()
    noisy = texture_arrays({k: cube[k].values for k in TEXTURED}, s, sd,
                           np.random.default_rng(seed))
    for k in TEXTURED:
        cube[k] = cube[k].copy(data=noisy[k])
    for v in cube.variables.values():
        v.encoding = {k: e for k, e in v.encoding.items() if k in ("chunks", "dtype")}
    cube.to_zarr(dst, zarr_format=3, consolidated=False, mode="w")  # replaces its own copy
    return dst


def _tile_run(cube: Path, zones: Path, out: Path, models: ModelSet, year: int, tile: int,
              f: float) -> pd.DataFrame:
    """Upscale one 1-km tile on one thread (whole tile task) into ``out``; the tile records."""
    import dask

    from abz_dask.io.ownership import remove_created

    remove_created(out)  # the previous cube's flux store and its tile ledger
    with dask.config.set(scheduler="synchronous"):
        return run_upscale(cube, zones, out, models,
                           UpscaleConfig(start=f"{year}-01", end=f"{year}-12", tile=tile,
                                         bootstrap_sample=f), progress=False)


def _replicate_totals(store: Path) -> xr.DataArray:
    """Year totals of every model of every flux and domain over the tiles (g C)."""
    ds = xr.open_zarr(store, consolidated=False)
    return ds["zone_sums"].sum(("tile_id", "time")).load()


def product_1km(run: Path, out: Path, n: int, seed: int, year: int, tile: int,
                textures: list[float], workers: int) -> None:
    """The 1-km product's cost from ``n`` production tiles drawn over the ABZ land area, and
    the sampled bootstraps' SDs against exact on the same tiles.

    Each tile (``tile`` × ``tile`` cells of the 1-km grid, one year) is generated as a twin and
    upscaled as whole tile tasks, one thread:

    - **cost**: the 500-tree refits (:func:`paper_models`) at f = 0.1 on the twin's cube and on
      copies with pixel texture (:func:`texture_cube`, one per ``textures`` level); the product's
      rate is the land-area mean of CPU-s per tree-row (Hansen–Hurwitz: tiles drawn ∝ land
      area), with a 90 % bootstrap interval over tiles; the projection uses the slowest variant;
    - **SD**: the demo's own forests (20 distinct bootstrap replicates) exact (f = 1) and at
      f = 0.1 on the twin's cube; the bootstrap SD of each domain's year budget summed over all
      drawn tiles, sampled vs exact.
    """
    from abz_dask.aggregation.units import TG_PER_G
    from abz_dask.io.ownership import remove_created

    specs = draw_tiles(run, n, seed, tile)
    sd = training_sd(run)
    models = paper_models(run, workers)
    light = None
    cost, totals = [], {1.0: [], 0.1: []}
    for k, spec in enumerate(specs):
        d = out / f"tile{k}"
        twin = generate_twin(d / "twin", resolution=spec, start=f"{year}-01", end=f"{year}-12",
                             n_sites=50, tile=tile, progress=False)
        if light is None:
            light = compile_bundle(load_bundle(
                run / "models", cube=xr.open_zarr(twin.cube, consolidated=False)))
        variants = {"twin": twin.cube} | {
            f"texture {s:g}": texture_cube(twin.cube, d / f"cube_s{s:g}.zarr", s, sd, seed + k)
            for s in textures}
        for label, cube in variants.items():
            tiles = _tile_run(cube, twin.zones, d / "cost.zarr", models, year, tile, 0.1)
            rec = {"tile": spec, "cube": label, "cpu_s": float(tiles["cpu_s"].sum()),
                   "tree_rows": float(tiles["tree_row_evals"].sum()),
                   "domain_cells": int(tiles["domain_cells"].sum())}
            rec["tree_rows_per_core_s"] = rec["tree_rows"] / rec["cpu_s"]
            cost.append(rec)
            print(f"# {k + 1}/{n} {spec} {label}: {rec['domain_cells']:,} domain cells, "
                  f"{rec['tree_rows_per_core_s'] / 1e6:.1f} M tree-rows/core-s", flush=True)
        for f in totals:
            store = d / f"light_f{f:g}.zarr"
            _tile_run(twin.cube, twin.zones, store, light, year, tile, f)
            totals[f].append(_replicate_totals(store))
        remove_created(d / "cost.zarr")
    tab = pd.DataFrame(cost)
    print(tab.to_string(index=False))
    rng = np.random.default_rng(seed)
    rates = {}
    for label, g in tab.groupby("cube", sort=False):
        s_per_row = (g["cpu_s"] / g["tree_rows"]).to_numpy()
        boot = 1.0 / rng.choice(s_per_row, size=(2000, len(s_per_row))).mean(axis=1)
        rates[label] = (1.0 / s_per_row.mean(), *np.quantile(boot, [0.05, 0.95]))
    for label, (r, lo, hi) in rates.items():
        print(f"# {label}: product rate {r / 1e6:.1f} M tree-rows per core-second (90 % "
              f"interval {lo / 1e6:.1f}-{hi / 1e6:.1f}) -> {core_hours_1km(3, 20, 1.0, r):,.0f} "
              f"core-hours exact, {core_hours_1km(3, 20, 0.1, r):,.0f} at f = 0.1")
    slow = min(rates, key=lambda k: rates[k][0])
    rate = rates[slow][0]
    # sampled vs exact bootstrap SD of the year budget over the drawn tiles
    sds = {}
    for f, parts in totals.items():
        tot = sum(parts[1:], parts[0])
        sds[f] = tot.isel(model=slice(1, None)).std("model", ddof=1) * TG_PER_G
    dev = (sds[0.1] / sds[1.0] - 1).to_dataframe("rel_dev").reset_index()
    dev = dev.assign(sd_exact=sds[1.0].values.ravel(), sd_f01=sds[0.1].values.ravel())
    dev = dev[dev["sd_exact"] > 0]
    print(f"# bootstrap SD of the {year} budget over the {n} tiles, f = 0.1 vs exact (Tg C)")
    print(dev.to_string(index=False))
    abz = float(dev.loc[dev["domain"] == "abz", "rel_dev"].abs().max())
    worst = float(dev["rel_dev"].abs().max())
    print(f"# projection from the slowest cube ({slow}); {n} tiles of {tile}x{tile} 1-km cells "
          f"(seed {seed}), {year}, 500-tree forests, whole tile tasks on one thread")
    print(f"tiles_1km={n} tile={tile} tree_rows_per_core_s={rate:.0f} "
          f"sd_rel_dev_f0.1={abz:.3f} sd_rel_dev_f0.1_any_domain={worst:.3f} "
          f"core_hours_exact={core_hours_1km(3, 20, 1.0, rate):.0f} "
          f"core_hours_f0.1={core_hours_1km(3, 20, 0.1, rate):.0f}")


def _synthetic_stores(grid: Grid, root: Path) -> tuple[Path, Path]:
    cube = synthetic_cube(grid, start="2001-01", periods=24).chunk({"time": 12, "y": 32, "x": 32})
    cube_p, zones_p = root / f"cube_{grid.name}.zarr", root / f"zones_{grid.name}.zarr"
    cube.to_zarr(cube_p, zarr_format=3, consolidated=False, mode="w")
    inside = np.asarray(grid.north_of_south())
    nx = grid.shape[1]
    biome = np.where(inside, 1 + (np.arange(nx) % 2)[None, :], 0).astype(np.int8)
    zones = xr.Dataset({"land_fraction": (("y", "x"), np.where(inside, 1.0, np.nan)),
                        "abz": (("y", "x"), inside), "biome": (("y", "x"), biome),
                        "permafrost": (("y", "x"), inside)}, coords=grid.coords()).chunk(32)
    zones.to_zarr(zones_p, zarr_format=3, consolidated=False, mode="w")
    return cube_p, zones_p


def _vm_hwm_kb(reset: bool = False) -> int:
    """This process's peak resident set (``VmHWM``, kB); ``reset`` restarts the peak first.

    ``getrusage().ru_maxrss`` is not used: it survives ``exec`` and so includes the parent's
    memory at fork, which differs between the two grids.
    """
    if reset:
        Path("/proc/self/clear_refs").write_text("5")
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def worker_memory(run: Path, grids: list[str]) -> pd.DataFrame:
    """Peak RSS of one worker process upscaling a synthetic cube on each grid."""
    bundle = load_bundle(run / "models")
    models = compile_bundle(bundle)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in grids:
            grid = Grid.from_preset(name)
            cube_p, zones_p = _synthetic_stores(grid, Path(tmp))
            cluster, client = _cluster(1)
            try:
                base = max(client.run(_vm_hwm_kb, True).values())
                tiles = run_upscale(cube_p, zones_p, Path(tmp) / f"out_{name}.zarr", models,
                                    UpscaleConfig(tile=32), progress=False)
                peak = max(client.run(_vm_hwm_kb).values())
            finally:
                client.close()
                cluster.close()
            rows.append({"grid": name, "shape": f"{grid.shape[0]}x{grid.shape[1]}",
                         "tiles": len(tiles), "worker_rss_at_start_MB": base / 1024,
                         "worker_peak_rss_MB": peak / 1024})
    return pd.DataFrame(rows)


def main() -> None:
    """Run the three measurements and print tables."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.1])
    ap.add_argument("--memory", nargs="+", default=["50km", "25km"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep RUN/bench")
    ap.add_argument("--memory-only", action="store_true", help="only the memory measurement")
    ap.add_argument("--paper-forests", nargs=2, metavar=("FIRST_YEAR", "LAST_YEAR"),
                    help="only the throughput of 500-tree forests over these years (f = 0.1)")
    ap.add_argument("--product-1km", type=int, metavar="N",
                    help="only the 1-km product's cost and sampled-bootstrap SDs from N random "
                         "production tiles of the 1-km grid (see product_1km)")
    ap.add_argument("--out", type=Path, help="scratch folder of --product-1km")
    ap.add_argument("--tile", type=int, default=512, help="tile edge of --product-1km")
    ap.add_argument("--year", type=int, default=2010, help="year of --product-1km")
    ap.add_argument("--texture", type=float, nargs="*", default=[0.25, 1.0],
                    help="pixel texture levels of --product-1km (x the training SD)")
    ap.add_argument("--seed", type=int, default=0, help="seed of --product-1km")
    a = ap.parse_args()
    t0 = time.perf_counter()
    if a.product_1km:
        out = a.out or a.run / "bench"
        product_1km(a.run, out, a.product_1km, a.seed, a.year, a.tile, a.texture, a.workers)
        return
    if a.paper_forests:
        tiles = paper_forest_throughput(a.run, tuple(a.paper_forests), 0.1, a.workers)
        pe, p1 = (project_core_hours(tiles, 3, 20, f) for f in (1.0, 0.1))
        print(f"# 500-tree forests, whole tile tasks: {pe['tree_rows_per_core_s']:,.0f} "
              f"tree-rows per core-second = {pe['tree_rows_per_core_s'] / 500:,.0f} rows/s per "
              f"forest ({tiles['cpu_s'].sum():.0f} CPU-s, {len(tiles)} tiles)")
        print(f"core_hours_exact={pe['core_hours_1km']:.0f} "
              f"core_hours_f0.1={p1['core_hours_1km']:.0f}")
        if not a.keep:
            shutil.rmtree(a.run / "bench", ignore_errors=True)
        return
    if a.memory_only:
        mem = worker_memory(a.run, a.memory)
        print(mem.to_string(index=False))
        peak = mem["worker_peak_rss_MB"]
        print(f"mem_ratio={peak.iloc[-1] / peak.iloc[0]:.3f}")
        return
    acc, timing, all_tiles = sampled_accuracy(a.run, a.fractions, a.workers)
    print("# sampled bootstraps: bootstrap SD of 2001-2020 budgets vs exact (Tg C/yr)")
    print(acc.to_string(index=False))
    print("\n# per-run cost")
    print(timing.to_string(index=False))
    mem = worker_memory(a.run, a.memory)
    print("\n# worker peak memory (synthetic cube, 24 months, 32-cell tiles, same models)")
    print(mem.to_string(index=False))
    measured = pd.concat(all_tiles, ignore_index=True)
    pe = project_core_hours(measured, 3, 20, 1.0)
    p1 = project_core_hours(measured, 3, 20, 0.1)
    print(f"\n# measured (sampled runs, whole tile tasks): {pe['tree_rows_per_core_s']:,.0f} "
          f"tree-rows per core-second = {pe['tree_rows_per_core_s'] / 500:,.0f} rows/s per "
          f"500-tree forest ({pe['mean_trees_measured']:.0f}-tree forests run)")
    print(f"# projected 1-km product, 500-tree forests: exact {pe['core_hours_1km']:,.0f} "
          f"core-hours; sampled f=0.1 {p1['core_hours_1km']:,.0f} core-hours")
    dev = acc.loc[(acc["f"] == 0.1) & (acc["domain"] == "abz"), "rel_dev"].abs().max() \
        if 0.1 in a.fractions else float("nan")
    ratio = float(mem["worker_peak_rss_MB"].iloc[-1] / mem["worker_peak_rss_MB"].iloc[0])
    print(f"# total {time.perf_counter() - t0:.0f} s")
    if not a.keep:
        shutil.rmtree(a.run / "bench", ignore_errors=True)
    print(f"sd_rel_dev_f0.1={dev:.3f} mem_ratio={ratio:.3f} "
          f"core_hours_exact={pe['core_hours_1km']:.0f} core_hours_f0.1={p1['core_hours_1km']:.0f}")


if __name__ == "__main__":
    main()
