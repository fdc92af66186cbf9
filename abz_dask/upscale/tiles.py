"""The single-pass tile upscaler (seed-spec §4.7–4.8; ARCHITECTURE "scale plan").

One task per spatial tile, over all months: read each predictor chunk of the tile once (a year
at a time, so memory is bounded by ``12 × tile²`` cells), predict the central model and every
bootstrap replicate of every flux, and in the same pass

- write the central monthly maps (Zarr region writes aligned with the store chunks);
- reduce the replicates to the per-pixel SD of annual sums (``<flux>_boot_sd``);
- accumulate per-domain × month sums of every model (``zone_sums``: g C per month, central =
  model 0, replicates 1..B) from which budgets and their bootstrap SD follow without re-reading
  the maps;
- record each domain's area in the tile (``zone_area``) and the part of it without a prediction
  in each month (``zone_area_excluded``): cells whose predictors have no data are not predicted
  and add nothing to ``zone_sums``, so budgets state the area they cover and the area lost.

Sampled bootstraps (``bootstrap_sample = f < 1``): replicates are evaluated only on a stratified
random sample of the domain cells (exactly ``round(f · n)`` cells per tile × biome stratum, chosen
by a seeded hash of the cell), and each replicate's domain sum is estimated as the central model's
full sum plus the expanded replicate-minus-central difference on the sample (a paired difference
estimator, so most sampling error cancels). Per-pixel SD maps then exist at sampled cells only.

Every tile is recorded in a ledger after its outputs are written: a killed run, restarted,
computes only the missing tiles and gives bit-identical results.
"""

from __future__ import annotations

import time as _time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from dask.delayed import Delayed

from abz_dask.aggregation.budgets import DOMAINS, domain_weights
from abz_dask.geo.cellnoise import cell_noise
from abz_dask.geo.grid import Grid
from abz_dask.io.locks import hold
from abz_dask.io.predictors import PREDICTORS
from abz_dask.io.store import Tile, TileLedger, create_store, iter_tiles, provenance, write_region
from abz_dask.progress import compute_with_progress
from abz_dask.upscale.blocks import block_arrays, block_rows, scatter_rows
from abz_dask.upscale.models import ModelSet, predict_models, ship

__all__ = ["UpscaleConfig", "plan_upscale", "run_upscale", "upscale_tile"]


@dataclass(frozen=True)
class UpscaleConfig:
    """Settings of an upscaling run.

    Parameters
    ----------
    start, end : str, optional
        First and last month to predict (default: every whole year of the cube).
    tile : int, optional
        Tile edge in cells (default: the cube's spatial chunk, so reads are chunk-aligned).
    bootstrap_sample : float
        Fraction f of domain cells on which bootstrap replicates are evaluated (1 = exact).
    store_replicates : bool
        Also store every replicate's monthly maps (large; off by default).
    seed : int
        Seed of the bootstrap cell sample.
    domains : dict
        Domain name -> expression on the zones Dataset (default: Table 1's four domains).
    """

    start: str | None = None
    end: str | None = None
    tile: int | None = None
    bootstrap_sample: float = 1.0
    store_replicates: bool = False
    seed: int = 0
    domains: dict[str, str] = field(default_factory=lambda: dict(DOMAINS))

    def __post_init__(self) -> None:
        if not 0.0 < self.bootstrap_sample <= 1.0:
            raise ValueError(f"bootstrap_sample must be in (0, 1], got {self.bootstrap_sample}")


@dataclass(frozen=True)
class _Paths:
    cube: Path
    zones: Path
    out: Path


def _time_index(cube: xr.Dataset, cfg: UpscaleConfig) -> pd.DatetimeIndex:
    t = pd.DatetimeIndex(cube["time"].values)
    sel = t[(t >= pd.Timestamp(cfg.start or t[0])) & (t <= pd.Timestamp(cfg.end or t[-1]))]
    years = pd.Series(sel.year).value_counts()
    whole = set(years.index[years.to_numpy() == 12])
    sel = sel[np.isin(sel.year, list(whole))]
    if len(sel) == 0:
        raise ValueError(f"no whole year of the cube lies in {cfg.start}..{cfg.end}")
    return sel


def _template(grid: Grid, time: pd.DatetimeIndex, tiles: list[Tile], tile: int,
              models: ModelSet, cfg: UpscaleConfig) -> xr.Dataset:
    ny, nx = grid.shape
    years = np.unique(time.year)
    nb = models.n_bootstrap
    ds = xr.Dataset(coords={**grid.coords(), "time": ("time", time), "year": ("year", years),
                            "domain": ("domain", list(cfg.domains)),
                            "model": ("model", np.arange(nb + 1)),
                            "flux": ("flux", models.fluxes),
                            "tile_id": ("tile_id", [t.key for t in tiles])})
    mon = da.empty((len(time), ny, nx), dtype=np.float32, chunks=(12, tile, tile))
    for f in models.fluxes:
        ds[f] = (("time", "y", "x"), mon, {
            "long_name": f"upscaled {f} (central model)", "units": "g C m-2 month-1"})
        if nb:
            ds[f"{f}_boot_sd"] = (("year", "y", "x"),
                                  da.empty((len(years), ny, nx), np.float32,
                                           chunks=(len(years), tile, tile)),
                                  {"long_name": f"SD over {nb} bootstrap models of annual {f}",
                                   "units": "g C m-2 yr-1",
                                   "bootstrap_sample": cfg.bootstrap_sample})
        if nb and cfg.store_replicates:
            ds[f"{f}_replicates"] = (("replicate", "time", "y", "x"),
                                     da.empty((nb, len(time), ny, nx), np.float32,
                                              chunks=(nb, 12, tile, tile)),
                                     {"units": "g C m-2 month-1"})
    ds["zone_sums"] = (("tile_id", "flux", "model", "time", "domain"),
                       da.zeros((len(tiles), len(models.fluxes), nb + 1, len(time),
                                 len(cfg.domains)), np.float64,
                                chunks=(1, -1, -1, -1, -1)),
                       {"long_name": "sum over the tile's domain cells of flux × pixel area",
                        "units": "g C month-1",
                        "model_index": "0 = central model, 1..B = bootstrap replicates"})
    ds["zone_area"] = (("tile_id", "domain"),
                       da.zeros((len(tiles), len(cfg.domains)), np.float64, chunks=(1, -1)),
                       {"long_name": "area of the tile's domain cells (× land fraction)",
                        "units": "m2"})
    ds["zone_area_excluded"] = (
        ("tile_id", "time", "domain"),
        da.zeros((len(tiles), len(time), len(cfg.domains)), np.float64, chunks=(1, -1, -1)),
        {"long_name": "area of the tile's domain cells without a prediction (a predictor has "
                      "no data); they add nothing to zone_sums",
         "units": "m2"})
    ds = grid.attach(ds)
    ds.attrs.update(provenance(stage="upscale", bootstrap_sample=cfg.bootstrap_sample,
                               seed=cfg.seed, n_bootstrap=nb, models_token=dask.base.tokenize(
                                   models), domains=cfg.domains))
    return ds


def _sample_weights(biome: np.ndarray, dom: np.ndarray, tile: Tile, f: float, seed: int
                    ) -> np.ndarray:
    """Expansion weights of the stratified cell sample (0 = not sampled, N_s / n_s if sampled)."""
    if f >= 1.0:
        return dom.astype(np.float64)
    rows = np.arange(tile.row0, tile.row1)[:, None]
    cols = np.arange(tile.col0, tile.col1)[None, :]
    u = cell_noise(seed, "bootstrap_sample", *np.broadcast_arrays(rows, cols))
    w = np.zeros(dom.shape)
    for s in np.unique(biome[dom]):
        idx = np.flatnonzero((dom & (biome == s)).ravel())
        n = max(1, round(f * len(idx)))
        pick = idx[np.argsort(u.ravel()[idx], kind="stable")[:n]]
        w.ravel()[pick] = len(idx) / n
    return w


def upscale_tile(paths: _Paths, grid: Grid, index: int, tile: Tile, time: pd.DatetimeIndex,
                 models: ModelSet, cfg: UpscaleConfig) -> dict[str, Any]:
    """Predict, reduce and write one tile (see module docstring). Idempotent.

    Inputs are read with plain (non-dask) lazy indexing: a task never submits work of its own
    to the cluster, and reads only the chunks of its tile.
    """
    ledger = TileLedger(paths.out)
    if ledger.done(tile):
        return ledger.read(tile)
    t_start = _time.thread_time()
    ys, xs = tile.slices
    cube = xr.open_zarr(paths.cube, consolidated=False, chunks=None)
    zones = xr.open_zarr(paths.zones, consolidated=False, chunks=None).isel(y=ys, x=xs).load()
    weights = domain_weights(zones, grid.cell_area, cfg.domains).values  # (dom, ny, nx)
    dom = weights.sum(axis=0) > 0
    expand = _sample_weights(zones["biome"].values, dom, tile, cfg.bootstrap_sample, cfg.seed)
    sampled = expand > 0
    nb = models.n_bootstrap
    nf = len(models.fluxes)
    t_all = pd.DatetimeIndex(cube["time"].values)
    tpos = np.searchsorted(t_all, time)
    sums = np.zeros((nf, nb + 1, len(time), weights.shape[0]))
    excluded = np.zeros((len(time), weights.shape[0]))
    years = np.unique(time.year)
    sd = np.full((nf, len(years), *tile.shape), np.nan, dtype=np.float32)
    evals = 0
    tree_evals = 0
    invalid = 0
    for iy, yr in enumerate(years):
        k = np.flatnonzero(time.year == yr)
        src = slice(int(tpos[k[0]]), int(tpos[k[-1]]) + 1)
        arrays = block_arrays(cube, models.predictors, src, ys, xs)
        rows = block_rows(arrays, time.month.values[k], models.predictors)
        invalid += int((~rows.valid & dom[None]).sum())
        excluded[k] = np.einsum("tyx,dyx->td", (~rows.valid).astype(np.float64), weights)
        boot_rows = rows.valid & sampled[None]
        sub = boot_rows[rows.valid]
        # one encoded block per design for every model that reads it, month-aligned chunks
        starts = [sl.start for sl in rows.month_slices]
        prepared: dict[Any, Any] = {}
        cens = predict_models([models.central[f] for f in models.fluxes], rows.matrix,
                              segments=starts, prepared=prepared)
        boots = None
        if nb:
            every = bool(sub.all())
            raw_sub = rows.matrix if every else rows.matrix[sub]
            sub_starts = starts if every else list(np.concatenate(
                [[0], np.cumsum([int(sub[sl].sum()) for sl in rows.month_slices])[:-1]]))
            boots = predict_models([rep for f in models.fluxes
                                    for rep in models.bootstraps[f][:nb]], raw_sub,
                                   segments=sub_starts, prepared=prepared if every else None)
        for fi, flux in enumerate(models.fluxes):
            cen = cens[fi]
            evals += len(cen)
            tree_evals += len(cen) * models.central[flux].forest.n_trees
            cmap = scatter_rows(cen, rows, np.float64)
            write_region(paths.out, flux, cmap.astype(np.float32), (slice(k[0], k[-1] + 1), ys, xs))
            filled = np.nan_to_num(cmap)
            sums[fi, 0, k] = np.einsum("tyx,dyx->td", filled, weights)
            if not nb:
                continue
            ann = np.full((nb, *tile.shape), np.nan)
            cen_s = np.einsum("tyx,dyx->td", filled * expand, weights)
            reps = []
            assert boots is not None
            for b, rep in enumerate(models.bootstraps[flux][:nb]):
                pred = boots[fi * nb + b]
                evals += len(pred)
                tree_evals += len(pred) * rep.forest.n_trees
                full = np.full(len(cen), np.nan)
                full[sub] = pred
                rmap = scatter_rows(full, rows, np.float64)
                rfill = np.nan_to_num(rmap)
                if cfg.bootstrap_sample >= 1.0:
                    sums[fi, b + 1, k] = np.einsum("tyx,dyx->td", rfill, weights)
                else:
                    rep_s = np.einsum("tyx,dyx->td", rfill * expand, weights)
                    sums[fi, b + 1, k] = sums[fi, 0, k] + rep_s - cen_s
                complete = np.isfinite(rmap).all(axis=0)
                ann[b] = np.where(complete, rmap.sum(axis=0), np.nan)
                if cfg.store_replicates:
                    reps.append(rmap.astype(np.float32))
            if nb > 1:
                sd[fi, iy] = np.std(ann, axis=0, ddof=1).astype(np.float32)
            if reps:
                write_region(paths.out, f"{flux}_replicates", np.stack(reps),
                             (slice(None), slice(k[0], k[-1] + 1), ys, xs))
    if nb:
        for fi, flux in enumerate(models.fluxes):
            write_region(paths.out, f"{flux}_boot_sd", sd[fi], (slice(None), ys, xs))
    write_region(paths.out, "zone_sums", sums[None], (slice(index, index + 1),))
    write_region(paths.out, "zone_area", weights.sum(axis=(1, 2))[None],
                 (slice(index, index + 1),))
    write_region(paths.out, "zone_area_excluded", excluded[None], (slice(index, index + 1),))
    info = {"cpu_s": _time.thread_time() - t_start, "forest_row_evals": evals,
            "tree_row_evals": tree_evals,
            "domain_cells": int(dom.sum()), "invalid_domain_cell_months": invalid}
    ledger.mark(tile, info)
    return info


def plan_upscale(cube_path: str | Path, zones_path: str | Path, out: str | Path,
                 models: ModelSet, cfg: UpscaleConfig | None = None
                 ) -> tuple[list[Tile], list[Delayed]]:
    """Create (or reopen) the flux store and return the tiles and their lazy tasks.

    The models are shipped once (:func:`~abz_dask.upscale.models.ship`): with a distributed
    client every task refers to one broadcast future, so the graph does not grow with the
    models. Nothing is predicted until the tasks are computed (see :func:`run_upscale`).
    """
    cfg = cfg or UpscaleConfig()
    cube = xr.open_zarr(cube_path, consolidated=False)
    try:
        grid = Grid.of_dataset(cube)
    except ValueError as e:
        raise ValueError(f"{cube_path}: {e}") from None
    time = _time_index(cube, cfg)
    tile = cfg.tile or int(cube[next(p.name for p in PREDICTORS if p.kind == "monthly")]
                          .encoding.get("chunks", (12, 64, 64))[-1])
    tiles = list(iter_tiles(grid.shape, tile))
    template = _template(grid, time, tiles, tile, models, cfg)
    create_store(template, out, check_attrs=("models_token", "bootstrap_sample", "seed",
                                             "domains"))
    paths = _Paths(Path(cube_path), Path(zones_path), Path(out))
    shipped = ship(models)
    tasks = [dask.delayed(upscale_tile, pure=False)(paths, grid, i, t, time, shipped, cfg)
             for i, t in enumerate(tiles)]
    return tiles, tasks


def run_upscale(cube_path: str | Path, zones_path: str | Path, out: str | Path,
                models: ModelSet, cfg: UpscaleConfig | None = None, *, progress: bool = True
                ) -> pd.DataFrame:
    """Run (or resume) the tile upscaler on the active Dask scheduler.

    Parameters
    ----------
    cube_path, zones_path : path
        Predictor cube and zone layers (Zarr).
    out : path
        Flux store to write (Zarr); an interrupted run is resumed.
    models : ModelSet
        Compiled models (:func:`abz_dask.upscale.models.compile_bundle`); shipped once.
    cfg : UpscaleConfig, optional
        Settings.
    progress : bool
        Show a progress bar of tiles.

    Returns
    -------
    DataFrame
        Per-tile timing and counts (``cpu_s``, ``forest_row_evals``, ...).
    """
    with hold(out, "flux store"):
        tiles, tasks = plan_upscale(cube_path, zones_path, out, models, cfg)
        resumed = TileLedger(out).count()
        if resumed and progress:
            print(f"upscale: resuming {out}: {resumed} of {len(tiles)} tiles already finished")
        infos = compute_with_progress(tasks, "upscale tiles", enabled=progress)
    return pd.DataFrame([{"tile": t.key, **info} for t, info in zip(tiles, infos, strict=True)])
