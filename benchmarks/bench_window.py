"""A 512 × 512-km window of the 1-km grid end to end, and worker memory against the 50-km grid.

Usage::

    python benchmarks/bench_window.py DEMO_RUN OUT [--window "1km[3685:4197,7256:7768]"]
        [--years 2010 2011] [--tile 128] [--workers 2]

``DEMO_RUN`` is a finished 50-km demo run (``abz-dask demo``: twin, training table, models);
``OUT`` a scratch folder. The script

1. generates the digital twin on the window (zones from the real geodata, built for the window
   only; ``--years``, 24 months by default) at the true 1-km resolution;
2. exports the window's predictors as lon/lat GeoTIFFs of 0.01° × 0.02° (≈ 1.1 × 1.0 km at
   62°N) over the window's bounding box, with a ``build-cube`` configuration, and builds the cube
   from them with ``build_cube`` (regridding by centre binning, the production path);
3. refits the demo bundle's central and first bootstrap forest of every flux with 500 trees (the
   paper's size, same rows and settings; the bootstrap forest stands in for all 20 replicates:
   the cost is measured, not the uncertainty) — the forests are trained on the 50-km twin's
   sites, not on the window;
4. upscales the window (central + 20 bootstraps at f = 0.1) on ``--workers`` worker processes
   (``LocalCluster``, one thread each) and records the wall time, the tree-rows per core-second
   of whole tile tasks, the workers' peak resident memory (``VmHWM``, reset first) and the bytes
   written, and projects the full 1-km product (20.7 M land cells, 240 months);
5. upscales the demo's 50-km cube with the same models, tile size, months and workers and
   compares the peak worker memory.

``--trends FIRST LAST`` instead runs the trend stage on the window: the twin over those years,
upscaled with the demo's own small forests (f = 0.1) from the twin's cube, then
:func:`~abz_dask.analyses.run_trends` (zyp Zhang) on the flux store, timing each step; the
cost of the paper's 20 years is projected linearly in years (upscale) and as measured per
series (trends).

The last line reads ``window_cells= tree_rows_per_core_s= peak_worker_mb_1km=
peak_worker_mb_50km= mem_ratio= core_hours_exact= core_hours_f0.1= bytes_written=``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
import yaml
from affine import Affine
from pyproj import CRS

from abz_dask.cube_build import build_cube
from abz_dask.geo.grid import Grid
from abz_dask.io.predictors import PREDICTORS
from abz_dask.training import load_bundle
from abz_dask.twin import generate_twin
from abz_dask.twin.export import _encode, _target, _write_tif
from abz_dask.upscale import UpscaleConfig, project_core_hours, run_upscale
from abz_dask.upscale.models import ModelSet

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_upscale import _cluster, _vm_hwm_kb, paper_models

#: Central Siberian Plateau around 62°N 100°E: boreal forest, all land.
WINDOW = "1km[3685:4197,7256:7768]"
NODATA = -9999.0
#: Pixel size (degrees) of the exported lon/lat rasters: (lat, lon).
PIXEL_DEG = (0.01, 0.02)


def export_window(twin: Path, out: Path, tile: int) -> tuple[Path, int]:
    """Write the twin cube's predictors as lon/lat GeoTIFFs over the window's bounding box and a
    ``build-cube`` configuration; returns the configuration and the number of files."""
    cube = xr.open_zarr(twin / "cube.zarr", consolidated=False)
    grid = Grid.of_dataset(cube)
    lon, lat = grid.lonlat()
    dlat, dlon = PIXEL_DEG
    lat0, lat1 = np.floor(lat.min() / dlat - 5) * dlat, np.ceil(lat.max() / dlat + 5) * dlat
    lon0, lon1 = np.floor(lon.min() / dlon - 5) * dlon, np.ceil(lon.max() / dlon + 5) * dlon
    shape = (round((lat1 - lat0) / dlat), round((lon1 - lon0) / dlon))
    ll = _target(grid, CRS.from_epsg(4326), Affine(dlon, 0.0, lon0, 0.0, -dlat, lat1), shape)
    time_ = pd.DatetimeIndex(cube.time.values)
    years = sorted(set(time_.year))
    preds: dict[str, Any] = {}
    n = 0
    for p in PREDICTORS:
        if p.kind == "monthly":
            arr = cube[p.name].values
            for i, t in enumerate(time_):
                _write_tif(out / p.name / f"{p.name}_{t.year}{t.month:02d}.tif",
                           _encode(ll.sample(arr[i]), "float32", 1.0, NODATA), ll, NODATA)
                n += 1
            preds[p.name] = {"files": f"{p.name}/{p.name}_{{year}}{{month:02d}}.tif",
                             "temporal": "monthly", "nodata": [NODATA]}
        elif p.kind == "annual":
            arr = cube[p.name].values
            for y in years:
                mean = arr[np.flatnonzero(time_.year == y)].mean(axis=0)
                _write_tif(out / p.name / f"{p.name}_{y}.tif",
                           _encode(ll.sample(mean), "float32", 1.0, NODATA), ll, NODATA)
                n += 1
            preds[p.name] = {"files": f"{p.name}/{p.name}_{{year}}.tif", "temporal": "annual",
                             "nodata": [NODATA], "units": p.units, "missing_year": "previous"}
        elif p.kind == "static":
            dtype, nodata = ("uint8", 0) if p.categorical else ("float32", NODATA)
            _write_tif(out / "static" / f"{p.name}.tif",
                       _encode(ll.sample(cube[p.name].values), dtype, 1.0, nodata), ll, nodata)
            n += 1
            preds[p.name] = {"files": f"static/{p.name}.tif", "temporal": "static",
                             "nodata": [nodata], **({"categorical": True} if p.categorical
                                                    else {})}
        elif p.kind == "series":
            pd.DataFrame({"time": [f"{t:%Y-%m}" for t in time_],
                          "value": cube[p.name].values.astype(float)}).to_csv(
                out / f"{p.name}.csv", index=False)
            n += 1
            preds[p.name] = {"files": f"{p.name}.csv", "temporal": "series"}
    config = {"grid": grid.name, "start": f"{time_[0]:%Y-%m}", "end": f"{time_[-1]:%Y-%m}",
              "tile": tile, "predictors": preds}
    path = out / "build-cube.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, n


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def upscale(cube: Path, zones: Path, out: Path, models: ModelSet, years: tuple[int, int],
            tile: int, workers: int) -> dict[str, Any]:
    """One upscale (f = 0.1) on a fresh LocalCluster: tile records, wall time, worker peaks."""
    cluster, client = _cluster(workers)
    try:
        base = client.run(_vm_hwm_kb, True)
        t0 = time.perf_counter()
        tiles = run_upscale(cube, zones, out, models,
                            UpscaleConfig(start=f"{years[0]}-01", end=f"{years[1]}-12",
                                          tile=tile, bootstrap_sample=0.1), progress=False)
        wall = time.perf_counter() - t0
        peak = client.run(_vm_hwm_kb)
    finally:
        client.close()
        cluster.close()
    return {"tiles": tiles, "wall_s": wall, "tiles_n": len(tiles),
            "cpu_s": float(tiles["cpu_s"].sum()),
            "tree_rows_per_core_s": project_core_hours(tiles, 3, 20, 0.1)["tree_rows_per_core_s"],
            "worker_start_mb": max(base.values()) / 1024,
            "peak_worker_mb": max(peak.values()) / 1024, "bytes_written": _bytes(out)}


def trends_window(run: Path, out: Path, window: str, years: tuple[int, int], tile: int,
                  workers: int, n_sites: int) -> None:
    """The trend stage on the window over ``years`` with the demo's small forests."""
    from abz_dask.analyses import TrendConfig, run_trends
    from abz_dask.analyses.run import TrendInputs
    from abz_dask.upscale import compile_bundle

    t0 = time.perf_counter()
    twin = generate_twin(out / "twin", resolution=window, start=f"{years[0]}-01",
                         end=f"{years[1]}-12", n_sites=n_sites, tile=tile, progress=False)
    t_twin = time.perf_counter() - t0
    bundle = load_bundle(run / "models", cube=xr.open_zarr(twin.cube, consolidated=False))
    trees = {f: (m.estimator.n_estimators, bundle.bootstraps[f][0].estimator.n_estimators)
             for f, m in bundle.models.items()}
    w = upscale(twin.cube, twin.zones, out / "fluxes.zarr", compile_bundle(bundle), years, tile,
                workers)
    cluster, client = _cluster(workers)
    try:
        t0 = time.perf_counter()
        run_trends(TrendInputs(fluxes=out / "fluxes.zarr", zones=twin.zones, cube=twin.cube),
                   out / "trends", TrendConfig(start=years[0], end=years[1]), overwrite=True,
                   progress=False)
        t_trends = time.perf_counter() - t0
    finally:
        client.close()
        cluster.close()
    n_years = years[1] - years[0] + 1
    cpu = float(w["tiles"]["cpu_s"].sum())
    print(f"# trends on {window}, {years[0]}-{years[1]} ({n_years} years), forests (central, "
          f"bootstrap) trees {trees}, f = 0.1, {workers} workers")
    print(f"# twin {t_twin:.0f} s; upscale wall {w['wall_s']:.0f} s ({cpu:.0f} CPU-s, "
          f"{w['tiles_n']} tile tasks, peak worker {w['peak_worker_mb']:.0f} MB); trends wall "
          f"{t_trends:.0f} s")
    print(f"trend_years={n_years} twin_s={t_twin:.0f} upscale_wall_s={w['wall_s']:.0f} "
          f"upscale_cpu_s={cpu:.0f} trends_wall_s={t_trends:.0f} "
          f"upscale_wall_s_20y_projected={w['wall_s'] * 20 / n_years:.0f} "
          f"trends_wall_s_20y_projected={t_trends * 20 / n_years:.0f}")


def main() -> None:
    """Run the window end to end and the 50-km comparison; print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="finished 50-km demo run (models, training table)")
    ap.add_argument("out", type=Path, help="scratch folder")
    ap.add_argument("--window", default=WINDOW)
    ap.add_argument("--years", type=int, nargs=2, default=(2010, 2011))
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--n-sites", type=int, default=50)
    ap.add_argument("--trends", type=int, nargs=2, metavar=("FIRST", "LAST"),
                    help="only the trend stage on the window over these years")
    a = ap.parse_args()
    years = (a.years[0], a.years[1])
    a.out.mkdir(parents=True, exist_ok=True)
    if a.trends:
        trends_window(a.run, a.out, a.window, (a.trends[0], a.trends[1]), a.tile, a.workers,
                      a.n_sites)
        return
    timing: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        timing[name] = time.perf_counter() - t
        print(f"# {name}: {timing[name]:.1f} s", flush=True)
        t = time.perf_counter()

    grid = Grid.from_preset(a.window)
    twin = generate_twin(a.out / "twin", resolution=a.window, start=f"{years[0]}-01",
                         end=f"{years[1]}-12", n_sites=a.n_sites, tile=a.tile, progress=False)
    lap("twin on the window (zones + cube + truth + fire + sites)")
    config, n_files = export_window(twin.root, a.out / "rasters", a.tile)
    raster_bytes = _bytes(a.out / "rasters")
    lap(f"export: {n_files} rasters, {raster_bytes / 1e6:.1f} MB")
    cube = a.out / "cube.zarr"
    build_cube(config, cube, overwrite=True, progress=False)
    built = xr.open_zarr(cube, consolidated=False)
    assert Grid.of_dataset(built) == grid, "build-cube did not write the window grid"
    lap("build-cube from the rasters")
    # the built cube against the twin's own (every pixel centre of a cell carries its value)
    ref = xr.open_zarr(twin.cube, consolidated=False)
    dev = {v: float(np.nanmax(np.abs(built[v].values - ref[v].values)))
           for v in ("tair", "ndvi", "soc", "tree_cover")}
    print(f"# built cube vs twin cube, max |diff|: {json.dumps(dev)}")
    models = paper_models(a.run, a.workers)
    lap("refit 500-tree forests (3 fluxes x central + 1 bootstrap)")
    w = upscale(cube, twin.zones, a.out / "fluxes_1km.zarr", models, years, a.tile, a.workers)
    lap("upscale window (central + 20 bootstraps, f = 0.1)")
    c = upscale(a.run / "twin" / "cube.zarr", a.run / "twin" / "zones.zarr",
                a.out / "fluxes_50km.zarr", models, years, a.tile, a.workers)
    lap("upscale 50-km grid, same tile and models")
    pe, p1 = (project_core_hours(w["tiles"], 3, 20, f) for f in (1.0, 0.1))
    zones = xr.open_zarr(twin.zones, consolidated=False)
    land = float((zones["abz"] & (zones["land_fraction"] > 0)).sum())
    tab = pd.DataFrame([{k: v for k, v in r.items() if k != "tiles"} | {"grid": g}
                        for g, r in ((grid.name, w), ("50km", c))])
    print(tab.to_string(index=False))
    cpu = float(w["tiles"]["cpu_s"].sum())
    print(f"# window {grid.shape[0]}x{grid.shape[1]} cells ({land:,.0f} ABZ land), "
          f"{len(pd.date_range(f'{years[0]}-01', f'{years[1]}-12', freq='MS'))} months, "
          f"tile {a.tile}: {w['tiles_n']} tile tasks, {cpu:.0f} CPU-s, wall {w['wall_s']:.0f} s "
          f"on {a.workers} workers; {pe['tree_rows_per_core_s']:,.0f} tree-rows per core-second")
    print(f"# projected 1-km product (20.7 M land cells, 240 months, 500-tree forests): exact "
          f"{pe['core_hours_1km']:,.0f} core-hours, f = 0.1 {p1['core_hours_1km']:,.0f}")
    print(f"# stage times (s): {json.dumps({k: round(v, 1) for k, v in timing.items()})}")
    ratio = w["peak_worker_mb"] / c["peak_worker_mb"]
    print(f"window_cells={grid.shape[0] * grid.shape[1]} "
          f"tree_rows_per_core_s={pe['tree_rows_per_core_s']:.0f} "
          f"peak_worker_mb_1km={w['peak_worker_mb']:.1f} "
          f"peak_worker_mb_50km={c['peak_worker_mb']:.1f} mem_ratio={ratio:.3f} "
          f"core_hours_exact={pe['core_hours_1km']:.0f} "
          f"core_hours_f0.1={p1['core_hours_1km']:.0f} bytes_written={w['bytes_written']}")
    shutil.rmtree(a.out / "fluxes_50km.zarr", ignore_errors=True)


if __name__ == "__main__":
    main()
