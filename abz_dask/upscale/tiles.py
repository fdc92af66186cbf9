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

A store whose months are the first of a longer period (the cube gained whole years, models and
settings unchanged) is extended: its time and year axes grow and each tile computes only the
new months (see :func:`run_upscale`, :func:`extension_months`).

**Versioned flux store** (an Icechunk repository, ``RUN/fluxes.icechunk``; see
:mod:`abz_dask.io.versioned`): the same variables, chunks, attributes and values, written in
one commit on branch ``main``. The driver forks a session of ``main``, writes the template into
the fork and sends a copy of it to every tile task; tasks write their chunks into their copy and
return it, and the driver merges the returned forks as they arrive. Every few tiles (or
seconds) the merged fork, the finished tiles and their infos are saved as a checkpoint beside
the repository (``fluxes.icechunk.wip/checkpoint.json``); a killed run, rerun with the same
settings, loads it, computes only the missing tiles and commits once. Readers see ``main``,
which moves only at that commit. (Icechunk 1.1 cannot fork a session holding uncommitted
changes, nor pickle a writable session, so the template lives in a fork, not in the driver's
session; the fork is merged into a fresh session of ``main`` at commit time.)
"""

from __future__ import annotations

import base64
import copy
import json
import time as _time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
import zarr
import zarr.abc.store
from dask.delayed import Delayed

from abz_dask.aggregation.budgets import DOMAINS, domain_weights
from abz_dask.geo.cellnoise import cell_noise
from abz_dask.geo.grid import Grid
from abz_dask.io.location import as_path, is_url, remove, url, write_atomic
from abz_dask.io.locks import hold
from abz_dask.io.predictors import PREDICTORS
from abz_dask.io.store import (
    Tile,
    TileLedger,
    create_store,
    extend_store,
    iter_tiles,
    prefix_length,
    provenance,
    write_region,
)
from abz_dask.progress import compute_with_progress
from abz_dask.upscale.blocks import block_arrays, block_rows, scatter_rows
from abz_dask.upscale.models import ModelSet, predict_models, ship

__all__ = ["UpscaleConfig", "extension_months", "plan_upscale", "run_upscale", "upscale_tile"]


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


#: Root attributes that must match for a store (or a checkpoint) to be resumed.
_CHECK_ATTRS = ("models_token", "bootstrap_sample", "seed", "domains")


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


def _writer(out: Any) -> Any:
    """``write(name, data, index)`` into a plain store (path) or a session's store."""
    if not isinstance(out, zarr.abc.store.Store):
        return lambda name, data, index: write_region(out, name, data, index)

    def write(name: str, data: np.ndarray, index: tuple[slice, ...]) -> None:
        zarr.open_array(out, path=name, mode="r+")[index] = data

    return write


def upscale_tile(paths: _Paths, grid: Grid, index: int, tile: Tile, time: pd.DatetimeIndex,
                 models: ModelSet, cfg: UpscaleConfig, session: Any = None, t0: int = 0
                 ) -> dict[str, Any] | tuple[Any, dict[str, Any]]:
    """Predict, reduce and write one tile (see module docstring). Idempotent.

    Inputs are read with plain (non-dask) lazy indexing: a task never submits work of its own
    to the cluster, and reads only the chunks of its tile. With ``session`` (an Icechunk fork
    holding the store's template) the tile is written into a private copy of it, returned with
    the info: ``(fork, info)``; otherwise into the plain store ``paths.out``, recorded in its
    ledger, and the info is returned. ``time`` are the months to compute (whole years), stored
    from month ``t0`` of the store on (``t0 > 0``: an extension, the store's earlier months and
    years are kept). The info's ``months`` counts them.
    """
    if session is None:
        ledger = TileLedger(paths.out)
        if ledger.done(tile):
            return {**ledger.read(tile), "resumed": True}
        write = _writer(paths.out)
    else:
        session = copy.deepcopy(session)  # a fork of its own (the threaded scheduler shares)
        write = _writer(session.store)
    t_start = _time.thread_time()
    ys, xs = tile.slices
    cube = xr.open_zarr(url(paths.cube), consolidated=False, chunks=None)
    zones = xr.open_zarr(url(paths.zones), consolidated=False, chunks=None).isel(
        y=ys, x=xs).load()
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
            write(flux, cmap.astype(np.float32), (slice(t0 + k[0], t0 + k[-1] + 1), ys, xs))
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
                write(f"{flux}_replicates", np.stack(reps),
                      (slice(None), slice(t0 + k[0], t0 + k[-1] + 1), ys, xs))
    y0 = t0 // 12  # the store holds whole years
    if nb:
        for fi, flux in enumerate(models.fluxes):
            write(f"{flux}_boot_sd", sd[fi], (slice(y0, y0 + len(years)), ys, xs))
    one, months = slice(index, index + 1), slice(t0, t0 + len(time))
    write("zone_sums", sums[None], (one, slice(None), slice(None), months))
    write("zone_area", weights.sum(axis=(1, 2))[None], (one,))
    write("zone_area_excluded", excluded[None], (one, months))
    info = {"months": len(time), "cpu_s": _time.thread_time() - t_start,
            "forest_row_evals": evals,
            "tree_row_evals": tree_evals,
            "domain_cells": int(dom.sum()), "invalid_domain_cell_months": invalid}
    if session is not None:
        return session, info
    ledger.mark(tile, info)
    return info


def _prepare(cube_path: Any, models: ModelSet, cfg: UpscaleConfig
             ) -> tuple[Grid, pd.DatetimeIndex, list[Tile], xr.Dataset]:
    """The grid, months, tiles and store template of an upscaling run."""
    cube = xr.open_zarr(url(cube_path), consolidated=False)
    try:
        grid = Grid.of_dataset(cube)
    except ValueError as e:
        raise ValueError(f"{cube_path}: {e}") from None
    time = _time_index(cube, cfg)
    tile = cfg.tile or int(cube[next(p.name for p in PREDICTORS if p.kind == "monthly")]
                          .encoding.get("chunks", (12, 64, 64))[-1])
    tiles = list(iter_tiles(grid.shape, tile))
    return grid, time, tiles, _template(grid, time, tiles, tile, models, cfg)


def plan_upscale(cube_path: str | Path, zones_path: str | Path, out: str | Path,
                 models: ModelSet, cfg: UpscaleConfig | None = None
                 ) -> tuple[list[Tile], list[Delayed]]:
    """Create (or reopen) the flux store (plain Zarr) and return the tiles and their lazy
    tasks.

    The models are shipped once (:func:`~abz_dask.upscale.models.ship`): with a distributed
    client every task refers to one broadcast future, so the graph does not grow with the
    models. Nothing is predicted until the tasks are computed (see :func:`run_upscale`).
    """
    cfg = cfg or UpscaleConfig()
    grid, time, tiles, template = _prepare(cube_path, models, cfg)
    t0 = _extend_plain(out, template)
    create_store(template, out, check_attrs=_CHECK_ATTRS)
    paths = _Paths(as_path(cube_path), as_path(zones_path), as_path(out))
    shipped = ship(models)
    months = time[t0:]  # one object that every task refers to: pickled once in the graph
    tasks = [dask.delayed(upscale_tile, pure=False)(paths, grid, i, t, months, shipped, cfg,
                                                    None, t0)
             for i, t in enumerate(tiles)]
    return tiles, tasks


#: Root attribute of a plain store being extended: ``{"from": months kept, "to": months}``.
_EXTENDING = "upscale_extending"


def _extend_plain(out: Any, template: xr.Dataset) -> int:
    """Begin (or take up again) the extension of a plain flux store by the months the
    template adds; returns the number of months kept (0: no extension, the store is new,
    resumed or mismatched as before).

    The store is marked (root attribute) and its tile ledger cleared before any array grows,
    so a killed extension is taken up again, computing the missing tiles' new months."""
    path = as_path(out)
    if not path.exists():
        return 0
    try:
        group = zarr.open_group(url(path), mode="r+")
    except Exception:  # damaged metadata: create_store starts again
        return 0
    n_new = template.sizes["time"]
    mark = group.attrs.get(_EXTENDING)
    if isinstance(mark, dict) and mark.get("to") == n_new and all(
            group.attrs.get(k) == template.attrs.get(k) for k in _CHECK_ATTRS):
        extend_store(path, template)
        return int(mark["from"])
    n = prefix_length(path, template, check_attrs=_CHECK_ATTRS)
    if n is None:
        return 0
    TileLedger(path).clear()
    group.attrs[_EXTENDING] = {"from": n, "to": n_new}
    extend_store(path, template)
    return n


def _finish_plain(out: Any) -> int:
    """Unmark a plain store whose extension is complete; the months it kept (0: none)."""
    group = zarr.open_group(url(out), mode="r+")
    mark = group.attrs.get(_EXTENDING)
    if mark is None:
        return 0
    del group.attrs[_EXTENDING]
    return int(cast("dict[str, Any]", mark)["from"])  # {"from": n, "to": n_new}


def extension_months(cube_path: str | Path, out: str | Path, cfg: UpscaleConfig | None = None,
                     store: Literal["zarr", "icechunk"] | None = None) -> int | None:
    """Months of the flux store at ``out`` (plain, or the tip of an Icechunk repository's
    ``main``) when the cube's period under ``cfg`` only adds whole years after them (the
    store's months equal the first ones of the period), else ``None`` (no store, the same
    period, or another one). Reads coordinates only.

    The caller vouches that nothing else changed: the models and settings (checked again
    against the store's attributes when it is extended) and the cube's values in the
    store's months (not checked: a cube whose earlier months changed needs a full run)."""
    cfg = cfg or UpscaleConfig()
    cube = xr.open_zarr(url(cube_path), consolidated=False)
    new = _time_index(cube, cfg).values
    try:
        if _is_versioned(out, store):
            from abz_dask.io.versioned import readonly_session

            if not as_path(out).exists():
                return None
            old = xr.open_zarr(readonly_session(out).store, consolidated=False)["time"].values
        else:
            old = xr.open_zarr(url(out), consolidated=False)["time"].values
    except (OSError, KeyError, ValueError, FileNotFoundError):
        return None
    if len(old) == 0 or len(old) >= len(new) or not np.array_equal(old, new[:len(old)]):
        return None
    return len(old)


def _is_versioned(out: Any, store: str | None) -> bool:
    if store is not None:
        if store not in ("zarr", "icechunk"):
            raise ValueError(f"store must be 'zarr' or 'icechunk', got {store!r}")
        return store == "icechunk"
    from abz_dask.io.versioned import is_icechunk_repo

    return as_path(out).name.endswith(".icechunk") or is_icechunk_repo(out)


def run_upscale(cube_path: str | Path, zones_path: str | Path, out: str | Path,
                models: ModelSet, cfg: UpscaleConfig | None = None, *, progress: bool = True,
                store: Literal["zarr", "icechunk"] | None = None,
                commit: dict[str, Any] | None = None, checkpoint_tiles: int = 16,
                checkpoint_seconds: float = 30.0, extend: bool = True) -> pd.DataFrame:
    """Run (or resume) the tile upscaler on the active Dask scheduler.

    Parameters
    ----------
    cube_path, zones_path : path
        Predictor cube and zone layers (Zarr).
    out : path
        Flux store to write: a plain Zarr store, or an Icechunk repository (created if absent)
        whose ``main`` branch receives one commit; an interrupted run is resumed.
    models : ModelSet
        Compiled models (:func:`abz_dask.upscale.models.compile_bundle`); shipped once.
    cfg : UpscaleConfig, optional
        Settings.
    progress : bool
        Show a progress bar of tiles.
    store : {"zarr", "icechunk"}, optional
        Format of ``out`` (default: ``icechunk`` when its name ends in ``.icechunk`` or it is a
        repository, else ``zarr``).
    commit : dict, optional
        Icechunk only: metadata of the commit (:func:`abz_dask.io.versioned.commit_metadata`;
        default: stage ``upscale`` without a settings hash).
    checkpoint_tiles, checkpoint_seconds : int, float
        Icechunk only: save the merged work after this many finished tiles or seconds,
        whichever comes first.
    extend : bool
        Icechunk only: allow an extension (below); False commits the whole store anew (the
        runner passes False unless the cube only gained months).

    Returns
    -------
    DataFrame
        Per-tile months computed, timing and counts (``months``, ``cpu_s``,
        ``forest_row_evals``, ...); its ``attrs`` hold ``resumed`` (tiles taken from saved
        work), ``extended_from`` (months of the store kept by an extension, 0 for none) and
        with an Icechunk store ``snapshot`` (the commit's snapshot id).

    Notes
    -----
    **Extension.** When the store (plain, or ``main`` of the repository) holds the same
    variables, models and settings and its months are the first ones of this run's period,
    the store is grown along ``time`` and ``year`` (arrays resized, chunks kept) and every
    tile computes only the new months: the result has the values of a fresh run over the
    whole period. A plain store is marked while it is extended (root attribute
    ``upscale_extending``), so a killed extension is taken up again; an Icechunk extension is
    one new commit, the previous snapshot keeps the old months. The cube's values in the
    store's months are taken as unchanged (not re-read).
    """
    cfg = cfg or UpscaleConfig()
    if _is_versioned(out, store):
        with hold(out, "flux store"):
            return _run_versioned(_Paths(as_path(cube_path), as_path(zones_path), as_path(out)),
                                  models, cfg, commit, progress=progress,
                                  every=(checkpoint_tiles, checkpoint_seconds), extend=extend)
    with hold(out, "flux store"):
        tiles, tasks = plan_upscale(cube_path, zones_path, out, models, cfg)
        resumed = TileLedger(out).count()
        if resumed and progress:
            print(f"upscale: resuming {out}: {resumed} of {len(tiles)} tiles already finished")
        infos = compute_with_progress(tasks, "upscale tiles", enabled=progress)
        kept = _finish_plain(out)
    df = pd.DataFrame([{"tile": t.key, **info} for t, info in zip(tiles, infos, strict=True)])
    df.attrs.update(extended_from=kept, resumed=resumed)
    return df


# ------------------------------------------------------------------------ versioned flux store


class _Checkpoint:
    """The uncommitted work of a versioned upscale, beside the repository
    (``<repo>.wip/checkpoint.json``): the template fork, the merged fork of the finished tiles,
    their infos, the settings and the snapshot of ``main`` the work started from.

    The two forks are stored as Icechunk's own serialisation of a session (the bytes its
    pickle support carries, decoded by Icechunk, not by :mod:`pickle`), so loading a checkpoint
    never runs code from the run folder."""

    def __init__(self, repo: Any):
        repo = as_path(repo)
        self.dir = repo.parent / (repo.name + ".wip")
        self.file = self.dir / "checkpoint.json"

    def load(self) -> dict[str, Any] | None:
        """The saved work, or None (absent or unreadable)."""
        try:
            data = json.loads(self.file.read_bytes())
            if not isinstance(data, dict) or data.get("format") != 2:
                return None
            return {**data, **{k: _fork_from(data[k]) for k in _FORKS}}
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, work: dict[str, Any]) -> None:
        """Write the work in one piece (:func:`~abz_dask.io.location.write_atomic`)."""
        if not is_url(self.dir):
            self.dir.mkdir(parents=True, exist_ok=True)
        doc = {"format": 2, **work, **{k: _fork_state(work[k]) for k in _FORKS}}
        write_atomic(self.file, json.dumps(doc))

    def clear(self) -> None:
        """Remove the work folder."""
        remove(self.dir)


_FORKS = ("base", "merged")


def _fork_state(fork: Any) -> str:
    return base64.b64encode(fork.__getstate__()["_session"]).decode()


def _fork_from(state: str) -> Any:
    from icechunk.session import ForkSession

    fork = ForkSession.__new__(ForkSession)
    fork.__setstate__({"_session": base64.b64decode(state)})
    return fork


def _settings(template: xr.Dataset, tiles: list[Tile]) -> dict[str, Any]:
    """What must match for saved work to be resumed."""
    return {**{k: template.attrs.get(k) for k in _CHECK_ATTRS},
            "sizes": {str(k): int(v) for k, v in template.sizes.items()},
            "variables": sorted(str(v) for v in template.data_vars),
            "time": [str(template["time"].values[0]), str(template["time"].values[-1])],
            "tiles": [t.key for t in tiles]}


def _start(repo: Any, template: xr.Dataset, settings: dict[str, Any]) -> dict[str, Any]:
    """New work: a fork of ``main`` holding the template, or for an extension
    (``settings["extend_from"]``) ``main``'s store grown to the template's period (an empty
    merged fork beside it)."""
    from abz_dask.io.versioned import write_template

    session = repo.writable_session("main")
    base = session.fork()
    if settings.get("extend_from"):
        extend_store(base.store, template)
    else:
        write_template(template, base.store)
    return {"work_id": uuid.uuid4().hex, "settings": settings, "parent": session.snapshot_id,
            "base": base, "merged": copy.deepcopy(base), "done": {}}


def _resume(ck: _Checkpoint, repo: Any, settings: dict[str, Any], progress: bool
            ) -> tuple[dict[str, Any] | None, str | None]:
    """Saved work that can be resumed (settings equal, ``main`` unmoved), and the snapshot id
    when that work was already committed (killed before its folder was removed)."""
    from abz_dask.io.versioned import BRANCH

    work = ck.load()
    if work is None:
        return None, None
    tip = str(repo.lookup_branch(BRANCH))
    info = next(iter(repo.ancestry(branch=BRANCH)))
    if info.metadata.get("work_id") == work.get("work_id"):
        return work, tip
    if work.get("settings") != settings or work.get("parent") != tip:
        if progress:
            print(f"upscale: discarding unfinished work in {ck.dir} (other settings, or "
                  "main has moved)")
        return None, None
    return work, None


def _run_versioned(paths: _Paths, models: ModelSet, cfg: UpscaleConfig,
                   commit: dict[str, Any] | None, *, progress: bool,
                   every: tuple[int, float], extend: bool = True) -> pd.DataFrame:
    from abz_dask.io.versioned import BRANCH, commit_metadata, open_repo

    grid, time, tiles, template = _prepare(paths.cube, models, cfg)
    repo = open_repo(paths.out, create=True)
    ck = _Checkpoint(paths.out)
    main = repo.readonly_session(branch=BRANCH)
    t0 = (prefix_length(main.store, template, check_attrs=_CHECK_ATTRS) or 0) if extend else 0
    settings = {**_settings(template, tiles), "extend_from": t0}
    work, committed = _resume(ck, repo, settings, progress)
    before = set(work["done"]) if work is not None else set()
    resumed = len(before)
    if committed is None:
        if work is None:
            ck.clear()
            work = _start(repo, template, settings)
            ck.save(work)
        elif progress:
            print(f"upscale: resuming {paths.out}: {len(work['done'])} of {len(tiles)} tiles "
                  "already finished (uncommitted)")
        _compute_versioned(paths, grid, time, tiles, models, cfg, work, ck, every, progress,
                           t0)
        session = repo.writable_session(BRANCH)
        if session.snapshot_id != work["parent"]:
            raise RuntimeError(f"{paths.out}: branch {BRANCH} moved to {session.snapshot_id} "
                               f"while the upscaling (started at {work['parent']}) ran; rerun "
                               "to start over")
        session.merge(work["merged"])
        meta = {**(commit or commit_metadata("upscale")), "work_id": work["work_id"],
                "tiles": len(tiles), "months": len(time) - t0, "extended_from": t0}
        what = (f"{len(time)} months" if not t0 else
                f"extended from {t0} to {len(time)} months")
        committed = session.commit(f"upscale: {len(tiles)} tiles, {what}", metadata=meta)
    ck.clear()
    # work is set here: _resume returns it with the snapshot id of committed work
    df = pd.DataFrame([{"tile": t.key, **cast("dict[str, Any]", work)["done"][t.key],
                        "resumed": t.key in before} for t in tiles])
    df.attrs.update(snapshot=committed, resumed=resumed, extended_from=t0)
    return df


def _compute_versioned(paths: _Paths, grid: Grid, time: pd.DatetimeIndex, tiles: list[Tile],
                       models: ModelSet, cfg: UpscaleConfig, work: dict[str, Any],
                       ck: _Checkpoint, every: tuple[int, float], progress: bool, t0: int = 0
                       ) -> None:
    """Compute the missing tiles (their months from ``t0`` on) into forks of the template,
    merging each returned fork into the work and saving it every ``every`` (tiles, seconds)."""
    todo = [(i, t) for i, t in enumerate(tiles) if t.key not in work["done"]]
    shipped = ship(models)
    months = time[t0:]  # one object that every task refers to: pickled once in the graph
    tasks = [dask.delayed(upscale_tile, pure=False)(paths, grid, i, t, months, shipped, cfg,
                                                    work["base"], t0) for i, t in todo]
    pending, last = 0, _time.monotonic()

    def merge(j: int, result: tuple[Any, dict[str, Any]]) -> None:
        nonlocal pending, last
        fork, info = result
        work["merged"].merge(fork)
        work["done"][todo[j][1].key] = info
        pending += 1
        if pending >= every[0] or _time.monotonic() - last >= every[1]:
            ck.save(work)
            pending, last = 0, _time.monotonic()

    compute_with_progress(tasks, "upscale tiles", enabled=progress, on_result=merge)
