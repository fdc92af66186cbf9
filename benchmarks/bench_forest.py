"""Random-forest inference benchmark: our numba kernel vs scikit-learn, ONNX Runtime, Treelite.

Fits a 500-tree ``RandomForestRegressor`` (``min_samples_split=6, max_features=9``) on a
≈ 4,800 × 17 training table and measures single-thread rows/s/core on two row sets:

- ``tile``: the rows of a 128 × 128 tile of smooth predictor fields, month by month, row-major —
  the order in which the upscaler feeds one tile-month block after another (month and CO2 are
  constant within a month);
- ``shuffled``: the same rows in random order.

With ``--twin RUN`` the rows come from the twin (its training table and a 128 × 128 tile of its
50-km cube), and ``--tiles-1km N`` (default 6) also times the production path against
scikit-learn on N production tiles of the **1-km grid** (512 × 512 cells, drawn over the ABZ
land area as ``bench_upscale.py --product-1km`` draws them; 4 months of 2010), on the twin's
cube and with pixel texture (``--texture``, white noise of 0.25 × each land-surface predictor's
training SD: real 1-km rasters are rougher than the twin's smooth fields). The ratio of summed
CPU times over the tiles is the product's; the last line then gives the lower of the variants.

Run::

    .venv/bin/python benchmarks/bench_forest.py            # ~1 minute on 2 cores (stand-in data)
    .venv/bin/python benchmarks/bench_forest.py --twin RUN # + six 1-km tiles: ~15 minutes
    .venv/bin/python benchmarks/bench_forest.py --quick    # smaller tile, fewer repeats
    .venv/bin/python benchmarks/bench_forest.py --with-tl2cgen   # + TL2cgen (long C compile)

Timing: ``time.process_time`` of the benchmark process (CPU time, so a shared machine's other
load does not count as ours), best of several repeats, never counting a first (compiling) call;
every engine runs on one thread. Slow peers are timed on a prefix of each row set. The line before
the last gives ``ratio_plain_vs_sklearn`` (full trees, one call per tile-month block) and
``ratio_production_vs_sklearn``; the last line is ``ratio_vs_sklearn=<x>``: the PRODUCTION path —
exactly what the upscaler runs per tile-year (:func:`abz_dask.upscale.models.predict_models`: the
block encoded once with its month starts, :func:`abz_dask.kernels.forest.predict_many`, trees
box-pruned per tile-month chunk) with the whole 500-tree forest, over scikit-learn's ``predict``
on the same tile rows, single thread, same process (on the 1-km tiles when they are timed; the
line before gives every variant and the 50-km tile's ratio).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter
from sklearn.ensemble import RandomForestRegressor

from abz_dask.io.predictors import PREDICTOR_NAMES, PREDICTORS, VEG_CLASSES
from abz_dask.kernels import forest as fk

#: The full 1-km product: land cells × months × models × fluxes (forest evaluations).
PRODUCT_EVALUATIONS = 20.7e6 * 240 * 21 * 3
MONTH = PREDICTOR_NAMES.index("month")
CO2 = PREDICTOR_NAMES.index("co2")


# --------------------------------------------------------------------------------------------
# Data (swap in the digital twin here)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BenchmarkData:
    """Training table and prediction rows (columns in ``PREDICTOR_NAMES`` order)."""

    X_train: np.ndarray  # (n, 17) float64
    y_train: np.ndarray  # (n,) float64
    tile_rows: np.ndarray  # (months * tile * tile, 17) float32, month blocks in order
    block_rows: int  # rows per tile-month block (month and co2 constant inside one)
    shuffled_rows: np.ndarray  # tile_rows in a random order
    description: str
    encoding: Any = None  # the categorical encoding of the training rows (twin data only)


_VEG = np.array(sorted(VEG_CLASSES), dtype=np.float64)


def _predictors(month: np.ndarray, lat: np.ndarray, cont: np.ndarray, wet: np.ndarray,
                rough: np.ndarray, forest: np.ndarray, year: np.ndarray,
                noise: Callable[[float], Any]) -> dict[str, np.ndarray]:
    """The 17 predictors as smooth functions of latent site variables (+ noise of given scale)."""
    m = month.astype(np.float64)
    season = np.sin(np.pi * (m - 1.0) / 11.0)  # 0 in Jan/Dec, 1 mid-year
    summer = np.cos(2 * np.pi * (m - 7.0) / 12.0)  # +1 in July, -1 in January
    latn = (lat - 65.0) / 8.0
    srad = np.maximum(0.0, 230 * season**1.5 * (1 - 0.25 * latn) - 15 * latn) + noise(8.0)
    tair = -12 + 16 * summer - 6 * latn + 6 * cont * summer - 4 * cont + noise(1.5)
    soil_temp = 0.7 * tair + 1.5 + 2 * wet + noise(1.0)
    vpd = np.maximum(0.0, 0.08 * np.maximum(tair, 0) * (1 + 0.5 * cont) + noise(0.05))
    snow = np.clip(0.5 - tair / 12.0 + 0.1 * latn + noise(0.08), 0, 1)
    soil_moisture = np.clip(0.25 + 0.15 * wet - 0.05 * vpd + 0.1 * snow + noise(0.03), 0.02, 0.6)
    tree_cover = np.clip(60 * forest * (1 - 0.6 * np.maximum(latn, 0)) + noise(3.0), 0, 100)
    nonveg = np.clip(20 * rough + 10 * np.maximum(latn, 0) + noise(3.0), 0, 100)
    nontree = np.clip(100 - tree_cover - nonveg, 0, 100)
    ndvi = np.clip((0.15 + 0.006 * (100 - nonveg)) * (0.3 + 0.7 * (1 - snow))
                   * (0.4 + 0.6 * season) + noise(0.03), -0.1, 0.95)
    co2 = 360 + 1.9 * (year - 1995) - 8 * summer + noise(0.3)
    veg_idx = np.clip(((forest + 0.3 * wet - 0.2 * latn + 1.2) * 3.2).astype(np.int64), 0,
                      len(_VEG) - 1)
    cols = {
        "month": m, "srad": srad, "vpd": vpd, "co2": co2, "vegtype": _VEG[veg_idx],
        "snow_cover": snow, "soil_temp": soil_temp, "soil_moisture": soil_moisture,
        "ndvi": ndvi, "tair": tair, "cti": 8 + 3 * wet + 1.5 * rough,
        "nontree_cover": nontree, "nonveg_cover": nonveg, "tree_cover": tree_cover,
        "soil_ph": 5.5 - 0.8 * wet + 0.5 * rough,
        "soc": np.maximum(5.0, 120 + 80 * wet - 40 * rough - 20 * latn),
        "permafrost_prob": np.clip(0.5 + 0.6 * latn + 0.3 * cont - 0.2 * forest, 0, 1),
    }
    return {k: np.broadcast_to(v, np.shape(m)).astype(np.float64) for k, v in cols.items()}


def _nee(c: dict[str, np.ndarray], noise: Callable[[float], Any]) -> np.ndarray:
    """A nonlinear NEE-like response (g C m-2 month-1): respiration minus light-use GPP + noise."""
    gpp = (c["ndvi"].clip(0) * c["srad"] * 0.9 / (1 + np.exp(-(c["tair"] - 2) / 2.5))
           * (1 - 0.5 * c["vpd"].clip(0, 1.5) / 1.5) * (1 + 0.002 * (c["co2"] - 380))
           * (0.6 + c["soil_moisture"]))
    reco = (8 * np.exp(0.07 * c["soil_temp"]) * (0.5 + c["soil_moisture"])
            * (0.5 + c["soc"] / 200))
    return np.asarray(reco - gpp + noise(6.0))


def load_benchmark_data(*, tile: int = 128, months: int = 12, n_sites: int = 400,
                        seed: int = 0) -> BenchmarkData:
    """Stand-in for the digital twin: a site-month training table and one tile of predictors.

    Training: ``n_sites`` sites × 12 months (4,800 rows) with site-level latent variables
    (latitude, continentality, wetness, roughness, forest fraction, year), predictors derived from
    them plus noise, and a noisy nonlinear NEE-like response. Prediction: the same latent
    variables as smooth 2-D fields over a ``tile × tile`` block (Gaussian-filtered noise), one
    block per month with spatially smooth predictor noise; CO2 is one value per month.

    Parameters
    ----------
    tile : int
        Tile side in cells.
    months : int
        Number of months (1..months) in the tile rows.
    n_sites : int
        Training sites (12 rows each).
    seed : int
        Random seed.

    Returns
    -------
    BenchmarkData
        Training table and the two row sets.
    """
    rng = np.random.default_rng(seed)
    lat = rng.uniform(55, 75, n_sites)
    cont = rng.uniform(-1, 1, n_sites)
    wet = rng.normal(0, 1, n_sites)
    rough = rng.uniform(0, 1, n_sites)
    forest = rng.uniform(0, 1, n_sites)
    year = rng.integers(1990, 2021, n_sites).astype(np.float64)
    month = np.tile(np.arange(1, 13), n_sites)

    def rep(a: np.ndarray) -> np.ndarray:
        return np.repeat(a, 12)

    def noise(scale: float) -> np.ndarray:
        return rng.normal(0, scale, month.shape)

    cols = _predictors(month, rep(lat), rep(cont), rep(wet), rep(rough), rep(forest), rep(year),
                       noise)
    y = _nee(cols, noise)
    X = np.column_stack([cols[n] for n in PREDICTOR_NAMES])

    def field(scale: float, sd: float) -> np.ndarray:
        f = gaussian_filter(rng.normal(0, 1, (tile, tile)), scale, mode="wrap")
        return np.asarray(f / f.std() * sd)

    lat_f = 64 + field(40, 4.0)
    cont_f = np.clip(field(30, 0.5), -1, 1)
    wet_f = field(6, 1.0)
    rough_f = np.clip(0.5 + field(4, 0.25), 0, 1)
    forest_f = np.clip(0.5 + field(10, 0.3), 0, 1)
    blocks = []
    for m in range(1, months + 1):
        c = _predictors(np.full((tile, tile), m), lat_f, cont_f, wet_f, rough_f, forest_f,
                        np.full((tile, tile), 2010.0), lambda s: field(3, s))
        c["co2"] = np.full((tile, tile), c["co2"].mean())
        blocks.append(np.column_stack([c[n].ravel() for n in PREDICTOR_NAMES]))
    tile_rows = np.ascontiguousarray(np.vstack(blocks), dtype=np.float32)
    shuffled = np.ascontiguousarray(tile_rows[rng.permutation(len(tile_rows))])
    return BenchmarkData(X, y, tile_rows, tile * tile, shuffled,
                         f"stand-in twin: {len(X)} training rows; {tile}x{tile} tile x {months} "
                         f"months = {len(tile_rows)} rows")


def twin_training(run: Path) -> tuple[np.ndarray, np.ndarray, Any]:
    """The twin's NEE training rows, encoded as in training (categorical month and vegetation
    type by mean response, DECISIONS 7), the response and the encoding."""
    from abz_dask.io.encoding import fit_encoding
    from abz_dask.io.predictors import CATEGORICAL
    from abz_dask.training.extract import read_training_table

    table = read_training_table(run / "training" / "training_table.parquet")
    table = table[table["NEE"].notna()].reset_index(drop=True)
    frame = table[list(PREDICTOR_NAMES)].astype(np.float32)
    y = table["NEE"].to_numpy(np.float64)
    enc = fit_encoding(frame, y, list(CATEGORICAL))
    return enc.transform(frame, PREDICTOR_NAMES).astype(np.float64), y, enc


#: Months of the 1-km tiles' year that are timed (one per season).
TILE_MONTHS = (1, 4, 7, 10)


def load_1km_tiles(run: Path, enc: Any, work: Path, n: int, seed: int, tile: int,
                   textures: Sequence[float], year: int = 2010
                   ) -> list[tuple[str, np.ndarray, list[int]]]:
    """Rows of ``n`` production tiles of the 1-km grid drawn over the ABZ land area.

    The windows are those of ``bench_upscale.py --product-1km`` (same draw for the same seed and
    tile; their twins in ``work`` are reused), generated as twins for ``year``; the rows of
    :data:`TILE_MONTHS` are built as the upscaler builds a tile-year block (month-major,
    row-major within a month, encoded like the training rows), on the twin's cube and with pixel
    texture (``bench_upscale.texture_arrays``) at each level of ``textures``. Returns
    ``(label, rows, month starts)`` per tile and variant.
    """
    import xarray as xr

    from abz_dask.twin import generate_twin
    from abz_dask.upscale.blocks import block_arrays, block_rows

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_upscale import draw_tiles, texture_arrays, training_sd

    sd = training_sd(run)
    out = []
    for k, spec in enumerate(draw_tiles(run, n, seed, tile)):
        twin = generate_twin(work / f"tile{k}" / "twin", resolution=spec, start=f"{year}-01",
                             end=f"{year}-12", n_sites=50, tile=tile, progress=False)
        cube = xr.open_zarr(twin.cube, consolidated=False, chunks=None)
        t = np.flatnonzero(np.isin(cube["time"].dt.month.values, TILE_MONTHS))
        arrays = block_arrays(cube, PREDICTORS, t, slice(None), slice(None))
        months = cube["time"].dt.month.values[t]
        for s in (0.0, *textures):
            arrs = arrays if s == 0 else texture_arrays(arrays, s, sd,
                                                         np.random.default_rng(seed + k))
            rows = block_rows(arrs, months)
            X = np.ascontiguousarray(enc.transform(
                pd.DataFrame(rows.matrix, columns=list(PREDICTOR_NAMES)), PREDICTOR_NAMES),
                dtype=np.float32)
            label = "twin" if s == 0 else f"texture {s:g}"
            out.append((f"{spec} {label}", X, [sl.start for sl in rows.month_slices]))
    return out


def tiles_1km_ratio(model: RandomForestRegressor, packed: Any,
                    tiles: list[tuple[str, np.ndarray, list[int]]], repeats: int
                    ) -> dict[str, float]:
    """The production path against scikit-learn on each 1-km tile's rows; per variant (twin,
    texture levels) the ratio of the summed CPU times over the tiles (the tiles are drawn ∝ land
    area, so this is the product's ratio)."""
    sums: dict[str, list[float]] = {}
    for label, X, starts in tiles:
        ref, t_sk = timed(partial(model.predict, X))
        t_sk = min(t_sk, best_time(partial(model.predict, X), max(1, repeats - 2),
                                   warm_up=False))

        def production(X: np.ndarray = X, starts: list[int] = starts) -> np.ndarray:
            return fk.predict_many([packed], fk.prepare(X, segments=starts))[0]

        if not np.array_equal(production(), ref):
            raise AssertionError(f"production path differs from scikit-learn on {label}")
        t_ours = best_time(production, repeats, warm_up=False)
        print(f"# 1-km tile {label}: {len(X):,} rows, scikit-learn {len(X) / t_sk:,.0f}, "
              f"production {len(X) / t_ours:,.0f} rows/s/core: {t_sk / t_ours:.2f}x", flush=True)
        variant = label.split(" ", 1)[1]
        acc = sums.setdefault(variant, [0.0, 0.0])
        acc[0] += t_sk
        acc[1] += t_ours
    return {v: sk / ours for v, (sk, ours) in sums.items()}


def load_twin_data(run: Path, *, tile: int = 128, year: int = 2010, seed: int = 0
                   ) -> BenchmarkData:
    """The digital twin's training table (NEE) and one upscaler tile of its predictor cube.

    Training rows: ``RUN/training/training_table.parquet`` (written by ``abz-dask train`` or the
    demo), categorical month and vegetation type encoded by mean response (DECISIONS 7) as in
    training. Tile rows: the ``tile × tile`` block of the cube with the most domain cells, the 12
    months of ``year``, each month's valid cells in row-major order and encoded the same way —
    exactly what :func:`abz_dask.upscale.tiles.upscale_tile` feeds the kernel.
    """
    import xarray as xr

    from abz_dask.upscale.blocks import block_rows

    X, y, enc = twin_training(run)
    cube = xr.open_zarr(run / "twin" / "cube.zarr", consolidated=False, chunks=None)
    dom = np.isfinite(cube["cti"].values)
    ny, nx = dom.shape
    tile = min(tile, ny, nx)
    best = max(((r, c) for r in range(0, ny - tile + 1, 8) for c in range(0, nx - tile + 1, 8)),
               key=lambda rc: dom[rc[0]:rc[0] + tile, rc[1]:rc[1] + tile].sum())
    ys, xs = slice(best[0], best[0] + tile), slice(best[1], best[1] + tile)
    t = np.flatnonzero(cube["time"].dt.year.values == year)
    arrays = {}
    for p in PREDICTORS:
        if p.kind == "calendar":
            continue
        v = cube[p.name]
        v = v.isel(time=t) if "time" in v.dims else v
        arrays[p.name] = (v.isel(y=ys, x=xs) if "y" in v.dims else v).values
    rows = block_rows(arrays, cube["time"].dt.month.values[t])
    keep = rows.valid.all(axis=0)  # cells valid in every month: equal month blocks
    raw = np.vstack([rows.matrix[sl][keep[rows.valid[k]]]
                     for k, sl in enumerate(rows.month_slices)])
    tile_rows = np.ascontiguousarray(
        enc.transform(pd.DataFrame(raw, columns=list(PREDICTOR_NAMES)), PREDICTOR_NAMES),
        dtype=np.float32)
    rng = np.random.default_rng(seed)
    shuffled = np.ascontiguousarray(tile_rows[rng.permutation(len(tile_rows))])
    return BenchmarkData(X, y, tile_rows, int(keep.sum()), shuffled,
                         f"digital twin {run}: {len(X)} NEE training rows x 17 predictors; "
                         f"{tile}x{tile} tile at rows {best[0]}, cols {best[1]} ({int(keep.sum())} "
                         f"domain cells) x 12 months of {year} = {len(tile_rows)} rows", enc)


# --------------------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------------------

def best_time(fn: Callable[[], Any], repeats: int, *, warm_up: bool = True) -> float:
    """Best CPU time of ``repeats`` calls (after one untimed warm-up call if ``warm_up``)."""
    if warm_up:
        fn()
    best = np.inf
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return float(best)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and its CPU time."""
    t0 = time.process_time()
    out = fn()
    return out, time.process_time() - t0


def rows_for_budget(fn: Callable[[np.ndarray], Any], X: np.ndarray, budget: float,
                    step: int = 2048) -> np.ndarray:
    """A prefix of ``X`` (a multiple of ``step`` rows) that ``fn`` handles in about ``budget`` s."""
    probe = X[: min(len(X), step)]
    fn(probe)
    _, dt = timed(lambda: fn(probe))
    rate = len(probe) / max(dt, 1e-9)
    n = max(1, min(len(X) // step, int(rate * budget) // step))
    return X[: n * step]


@dataclass
class Row:
    """One line of the result table."""

    engine: str
    rates: dict[str, float]  # row set -> rows/s/core
    err: float  # max relative error vs scikit-learn
    note: str = ""


def _max_rel_err(y: np.ndarray, ref: np.ndarray) -> float:
    y = np.asarray(y, dtype=np.float64).ravel()
    return float(np.max(np.abs(y - ref) / np.maximum(np.abs(ref), 1e-300)))


# --------------------------------------------------------------------------------------------
# Engines
# --------------------------------------------------------------------------------------------

def _onnx_predictor(model: RandomForestRegressor, n_features: int) -> Callable[[np.ndarray], Any]:
    import onnxruntime as ort
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(model, initial_types=[("X", FloatTensorType([None, n_features]))],
                          target_opset={"": 17, "ai.onnx.ml": 3})
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(onx.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda X: sess.run(None, {name: X})[0]


def _treelite_gtil(model: RandomForestRegressor) -> Callable[[np.ndarray], Any]:
    import treelite

    tl_model = treelite.sklearn.import_model(model)
    return lambda X: treelite.gtil.predict(tl_model, X, nthread=1)


def _tl2cgen(model: RandomForestRegressor, workdir: str,
             n_trees: int) -> Callable[[np.ndarray], Any]:
    """TL2cgen on the first ``n_trees`` trees (compiling all 500 takes > 15 min here)."""
    import tl2cgen
    import treelite

    sub = copy.copy(model)
    sub.estimators_ = model.estimators_[:n_trees]
    sub.n_estimators = n_trees
    tl_model = treelite.sklearn.import_model(sub)
    lib = os.path.join(workdir, "forest.so")
    tl2cgen.export_lib(tl_model, toolchain="gcc", libpath=lib,
                       params={"parallel_comp": 2 * (os.cpu_count() or 1)},
                       nthread=os.cpu_count() or 1, verbose=False)
    pred = tl2cgen.Predictor(lib, nthread=1)
    return lambda X: pred.predict(tl2cgen.DMatrix(X))


def _per_block(fn: Callable[[np.ndarray, int], Any], block: int) -> Callable[[np.ndarray], Any]:
    """Call ``fn(block_rows, block_index)`` tile-month block by block, as the upscaler does."""
    def run(X: np.ndarray) -> None:
        for b, i in enumerate(range(0, len(X), block)):
            fn(X[i:i + block], b)
    return run


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

def _path_stats(model: RandomForestRegressor, X: np.ndarray, n_trees: int = 25,
                n_rows: int = 16384) -> tuple[float, float, float]:
    """Mean nodes visited per tree per row, and mean/max lock-step steps of 8-row groups."""
    Xs = X[:n_rows]
    visited, group = [], []
    for est in model.estimators_[:n_trees]:
        depth = np.asarray(est.decision_path(Xs).sum(axis=1)).ravel()  # nodes incl. the leaf
        visited.append(depth.mean())
        group.append((depth - 1)[: len(depth) // 8 * 8].reshape(-1, 8).max(axis=1).mean())
    return float(np.mean(visited)), float(np.mean(visited) - 1), float(np.mean(group))


def main(argv: list[str] | None = None) -> float:
    """Run the benchmark, print the table, return our best ratio vs scikit-learn (tile rows)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="64x64 tile, fewer repeats")
    ap.add_argument("--with-tl2cgen", action="store_true",
                    help="also time TL2cgen on a sub-forest (C compile: ~1.5 min for 25 trees)")
    ap.add_argument("--tl2cgen-trees", type=int, default=25,
                    help="trees compiled by TL2cgen; its rows/s is scaled by n/500")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--twin", type=Path, default=None,
                    help="run folder of a demo (RUN/twin + RUN/training): fit on the twin's "
                         "training table and predict one of its tiles (default: a stand-in)")
    ap.add_argument("--tiles-1km", type=int, default=6, metavar="N",
                    help="with --twin: also time N production tiles of the 1-km grid drawn over "
                         "the ABZ land area (0: only the 50-km tile); the last line is then "
                         "their ratio")
    ap.add_argument("--tile-1km", type=int, default=512, help="edge of the 1-km tiles")
    ap.add_argument("--texture", type=float, nargs="*", default=[0.25],
                    help="pixel texture levels of the 1-km tiles (x the training SD)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the 1-km tile draw")
    ap.add_argument("--work", type=Path, default=None,
                    help="folder of the 1-km tiles' twins (reused; default: a temporary one)")
    args = ap.parse_args(argv)
    repeats = 2 if args.quick else args.repeats
    budget = 1.0 if args.quick else 3.0  # CPU seconds per timed pass of a slow peer

    t_start = time.perf_counter()
    data = (load_twin_data(args.twin, tile=64 if args.quick else 128) if args.twin
            else load_benchmark_data(tile=64 if args.quick else 128))
    print(f"# {data.description}")
    print(f"# python {platform.python_version()}, numpy {np.__version__}, "
          f"cpu: {_cpu_name()}")
    t0 = time.perf_counter()
    model = RandomForestRegressor(n_estimators=500, min_samples_split=6, max_features=9,
                                  random_state=42, n_jobs=-1).fit(data.X_train, data.y_train)
    model.set_params(n_jobs=1)
    print(f"# fit 500 trees: {time.perf_counter() - t0:.1f} s wall (all cores)")
    t0 = time.process_time()
    packed = fk.pack_forest(model)
    t_pack = time.process_time() - t0
    nodes = packed.n_nodes / packed.n_trees
    visited, steps, group_steps = _path_stats(model, data.tile_rows)
    print(f"# nodes/tree {nodes:.0f}; mean max depth "
          f"{np.mean([e.tree_.max_depth for e in model.estimators_]):.1f}; tile rows: mean nodes "
          f"visited/tree/row {visited:.1f} (= {steps:.1f} steps), 8-row lock-step "
          f"{group_steps:.1f} steps; pack_forest {t_pack:.2f} s, {packed.nbytes / 1e6:.1f} MB")

    sets = {"tile": data.tile_rows, "shuffled": data.shuffled_rows}
    block = data.block_rows
    rows: list[Row] = []

    # --- scikit-learn (its first pass gives the reference predictions) -------------------------
    refs: dict[str, np.ndarray] = {}
    rates: dict[str, float] = {}
    for name, X in sets.items():
        refs[name], dt = timed(partial(model.predict, X))
        dt = min(dt, best_time(partial(model.predict, X), max(1, repeats - 2), warm_up=False))
        rates[name] = len(X) / dt
    rows.append(Row("scikit-learn predict (n_jobs=1)", rates, 0.0))
    sk = rates

    # --- ours ------------------------------------------------------------------------------
    err = max(_max_rel_err(fk.predict(packed, X), refs[name]) for name, X in sets.items())
    plain = _per_block(lambda B, _b: fk.predict(packed, B), block)
    rates = {name: len(X) / best_time(partial(plain, X), repeats, warm_up=False)
             for name, X in sets.items()}
    rows.append(Row("abz_dask numba kernel", rates, err, "per tile-month block"))

    # the production path: what upscale_tile runs (abz_dask.upscale.models.predict_models): the
    # tile-year block encoded ONCE with its month starts, every forest of the design in one
    # predict_many call, trees box-pruned per tile-month chunk (month, CO2 and out-of-range splits)
    def production(X: np.ndarray) -> np.ndarray:
        prepared = fk.prepare(X, segments=list(range(0, len(X), block)))
        return fk.predict_many([packed], prepared)[0]

    X = sets["tile"]
    err = _max_rel_err(production(X), refs["tile"])
    rate = len(X) / best_time(partial(production, X), repeats, warm_up=False)
    rows.append(Row("abz_dask production path (upscaler)", {"tile": rate}, err,
                    "tile-year block encoded once, month-pruned chunks"))

    # specialised on month + co2 of each tile-month block (specialise cost included) ...
    def spec_predict(B: np.ndarray, _b: int) -> np.ndarray:
        s = fk.specialise(packed, {MONTH: float(B[0, MONTH]), CO2: float(B[0, CO2])})
        return fk.predict(s, B)

    X = sets["tile"]
    ours_spec = np.concatenate([spec_predict(X[i:i + block], 0) for i in range(0, len(X), block)])
    err = _max_rel_err(ours_spec, refs["tile"])
    rate = len(X) / best_time(lambda: _per_block(spec_predict, block)(X), repeats, warm_up=False)
    rows.append(Row("  + specialise(month, co2) per block", {"tile": rate}, err,
                    "specialise cost included"))
    # ... and with the specialised forests prepared in advance (shared by all tiles of a month)
    specs = [fk.specialise(packed, {MONTH: float(X[i, MONTH]), CO2: float(X[i, CO2])})
             for i in range(0, len(X), block)]
    t0 = time.process_time()
    for i in range(0, len(X), block):
        fk.specialise(packed, {MONTH: float(X[i, MONTH]), CO2: float(X[i, CO2])})
    t_spec = (time.process_time() - t0) / len(specs)
    rate = len(X) / best_time(
        lambda: _per_block(lambda B, b: fk.predict(specs[b], B), block)(X), repeats,
        warm_up=False)
    rows.append(Row("  + specialised forests cached", {"tile": rate}, err,
                    f"specialise {t_spec * 1e3:.0f} ms/forest, "
                    f"{np.mean([s.n_nodes / s.n_trees for s in specs]):.0f} nodes/tree"))

    # --- peers -----------------------------------------------------------------------------
    peers: list[tuple[str, Callable[[], Callable[[np.ndarray], Any]]]] = [
        ("ONNX Runtime (skl2onnx, 1 thread)", lambda: _onnx_predictor(model, packed.n_features)),
        ("Treelite GTIL (1 thread)", lambda: _treelite_gtil(model)),
    ]
    workdir = tempfile.mkdtemp(prefix="bench_forest_")
    tl_trees = min(args.tl2cgen_trees, len(model.estimators_))
    if args.with_tl2cgen:
        peers.append((f"TL2cgen (gcc, 1 thread; {tl_trees} trees, scaled)",
                      lambda: _tl2cgen(model, workdir, tl_trees)))
    for name, make in peers:
        try:
            t0 = time.perf_counter()
            fn = make()
            t_make = time.perf_counter() - t0
        except ImportError as exc:
            rows.append(Row(name, {}, np.nan, f"not installed ({exc.name})"))
            continue
        except Exception as exc:  # a peer that cannot convert this model
            rows.append(Row(name, {}, np.nan, f"failed: {type(exc).__name__}: {exc}"[:90]))
            continue
        rates = {}
        errs: list[float] = []
        note = f"setup {t_make:.0f} s"
        scale = tl_trees / len(model.estimators_) if name.startswith("TL2cgen") else 1.0
        for set_name, Xset in sets.items():
            Xp = rows_for_budget(fn, Xset, budget * scale)
            y, dt = timed(partial(fn, Xp))
            if scale == 1.0:
                errs.append(_max_rel_err(y, refs[set_name][: len(Xp)]))
            dt = min(dt, best_time(partial(fn, Xp), max(1, repeats - 2), warm_up=False))
            rates[set_name] = scale * len(Xp) / dt
            if len(Xp) < len(Xset):
                note += f"; {set_name}: first {len(Xp)} rows"
        rows.append(Row(name, rates, max(errs) if errs else np.nan, note))
    if not args.with_tl2cgen:
        try:
            import tl2cgen  # noqa: F401

            rows.append(Row("TL2cgen", {}, np.nan, "skipped (C compile of 500 trees > 15 min); "
                            "--with-tl2cgen times a sub-forest"))
        except ImportError:
            rows.append(Row("TL2cgen", {}, np.nan, "not installed"))

    # --- report ----------------------------------------------------------------------------
    print()
    print("| engine | tile rows/s/core | x sklearn | shuffled rows/s/core | x sklearn "
          "| max rel err | note |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        cells = []
        for s in ("tile", "shuffled"):
            if s in r.rates:
                cells += [f"{r.rates[s]:,.0f}", f"{r.rates[s] / sk[s]:.2f}"]
            else:
                cells += ["–", "–"]
        e = "–" if np.isnan(r.err) else f"{r.err:.1e}"
        print(f"| {r.engine} | {' | '.join(cells)} | {e} | {r.note} |")

    ours = [r for r in rows if r.engine.startswith(("abz_dask", "  +")) and "tile" in r.rates]
    best = max(ours, key=lambda r: r.rates["tile"])
    plain_row = next(r for r in rows if r.engine == "abz_dask numba kernel")
    prod = next(r for r in rows if r.engine.startswith("abz_dask production"))
    print()
    print("# projected core-hours for the 1-km product "
          f"({PRODUCT_EVALUATIONS:.3g} forest evaluations, tile-like rows):")
    for r in rows:
        if "tile" in r.rates:
            hours = PRODUCT_EVALUATIONS / r.rates["tile"] / 3600
            print(f"#   {r.engine.strip():40s} {hours:10,.0f}")
    print(f"# best kernel on tile rows: {best.engine.strip()}")
    print(f"# total benchmark wall time {time.perf_counter() - t_start:.0f} s")
    print(f"# load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"ratio_plain_vs_sklearn={plain_row.rates['tile'] / sk['tile']:.2f} "
          f"ratio_production_vs_sklearn={prod.rates['tile'] / sk['tile']:.2f}")
    ratio = prod.rates["tile"] / sk["tile"]
    if args.twin and args.tiles_1km:
        with tempfile.TemporaryDirectory() as tmp:
            tiles = load_1km_tiles(args.twin, data.encoding, args.work or Path(tmp),
                                   args.tiles_1km, args.seed, args.tile_1km, args.texture)
            by_variant = tiles_1km_ratio(model, packed, tiles, repeats)
        slow = min(by_variant, key=lambda v: by_variant[v])
        print(f"# production path vs scikit-learn on {args.tiles_1km} 1-km tiles of "
              f"{args.tile_1km}x{args.tile_1km} cells (months {TILE_MONTHS}), summed CPU time: "
              + ", ".join(f"{v} {r:.2f}x" for v, r in by_variant.items())
              + f"; the 50-km tile above: {ratio:.2f}x")
        print("ratio_1km_" + " ratio_1km_".join(
            f"{v.replace(' ', '')}={r:.2f}" for v, r in by_variant.items())
            + f" ratio_50km_tile={ratio:.2f}")
        ratio = by_variant[slow]
    print(f"ratio_vs_sklearn={ratio:.2f}")
    return ratio


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} x {os.cpu_count()}"
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main(sys.argv[1:])
