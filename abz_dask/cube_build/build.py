"""Executing a :class:`~abz_dask.cube_build.plan.BuildPlan`: the cube, tile by tile.

The cube is written to ``<out>.tmp`` (with its tile ledger ``<out>.tmp.done``) and renamed to
``<out>`` only when every tile is finished, so an error never leaves a half-written cube at
``<out>``; re-running the same configuration resumes from the finished tiles.

Layout (identical to the twin's cube, :mod:`abz_dask.twin.generate`): ``monthly``/``annual``
predictors ``(time, y, x)`` float32 in chunks ``(12, tile, tile)``, ``static`` ``(y, x)``
float32, ``co2`` ``(time,)``; attributes ``long_name``, ``units``, ``abz_kind``,
``categorical``; the grid's CRS as a ``spatial_ref`` coordinate. Predictors of the user's own are
stored the same way, after the catalogue's.

A constant (``value``) fills the predictor's usual layout: every month of a series, every cell of
a static layer, every cell and month of a monthly or annual one. A ``series`` predictor from
rasters (co2 as monthly maps) is resampled tile by tile like a monthly predictor, and each month
is reduced to the land-area-weighted mean over the grid cells that have a value and land,
``Σ a·f·v / Σ a·f`` (``a`` cell area, ``f`` the zones' ``land_fraction``): every tile contributes
its partial sums, the series is written as ``(time,)`` when all tiles are done, described in the
variable's ``series_reduction`` attribute and printed with the build report.

Memory per task: the tile's resampling maps, one 12-month ``(12, tile, tile)`` block, and for
gap-filled predictors the whole ``(time, tile, tile)`` float32 series of the tile (gap filling
needs every month of a cell; 240 months of a 512² tile = 250 MB — choose ``tile`` accordingly).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr

from abz_dask.cube_build.gapfill import fill_gaps
from abz_dask.cube_build.plan import BuildPlan, VarPlan
from abz_dask.cube_build.sources import Entry, Reader, open_source
from abz_dask.cube_build.validate import CubeBuildError, check_legend, check_range
from abz_dask.geo.regrid import TileMap, tile_map
from abz_dask.io.locks import hold
from abz_dask.io.ownership import check_replaceable, remove_created
from abz_dask.io.predictors import PREDICTORS
from abz_dask.io.store import Tile, TileLedger, create_store, iter_tiles, provenance, write_region

if TYPE_CHECKING:
    from abz_dask.cube_build.fire import FireResult

__all__ = ["BuildResult", "run_plan"]

_CATALOGUE = {p.name: p for p in PREDICTORS}


@dataclass
class BuildResult:
    """What a build produced."""

    cube: Path
    report: dict[str, dict[str, int]]
    n_tiles: int
    resumed_tiles: int
    #: how every constant and every series reduced from rasters was stored (name -> text)
    series: dict[str, str] = field(default_factory=dict)
    #: the fire store, when the configuration has a ``fire`` section
    fire: FireResult | None = None


def cube_template(plan: BuildPlan) -> xr.Dataset:
    """Lazy template (no data) of the built cube: variables, chunks and attributes, as
    :func:`run_plan` writes it and ``abz-dask plan`` sizes it."""
    grid, time, tile = plan.grid, plan.time, plan.tile
    ny, nx = grid.shape
    dyn = da.empty((len(time), ny, nx), dtype=np.float32, chunks=(12, tile, tile))
    sta = da.empty((ny, nx), dtype=np.float32, chunks=(tile, tile))
    cube = xr.Dataset(coords={**grid.coords(), "time": ("time", time)})
    for v in plan.variables:
        p = v.predictor or _CATALOGUE[v.name]
        attrs: dict[str, Any] = {"long_name": p.long_name, "units": p.units, "abz_kind": p.kind,
                                 "categorical": int(p.categorical), "source": v.spec.files,
                                 "source_temporal": v.spec.temporal}
        if v.constant is not None:
            attrs.update(source=f"constant {v.constant:g}", source_temporal="constant",
                         constant=v.constant)
        if p.name not in _CATALOGUE:
            attrs["abz_user_predictor"] = 1
        if p.kind in ("monthly", "annual"):
            cube[p.name] = (("time", "y", "x"), dyn, attrs)
        elif p.kind == "static":
            cube[p.name] = (("y", "x"), sta, attrs)
        else:  # a series reduced from rasters is written when every tile is done
            vals = v.series if v.series is not None else np.full(len(time), np.nan)
            cube[p.name] = (("time",), vals.astype(np.float32), attrs)
    cube = grid.attach(cube)
    cube.attrs.update(provenance(generator="abz_dask.cube_build", grid=grid.name,
                                 build_config_token=plan.token))
    return cube


class _Resampler:
    """Per-tile cache of tile maps and open readers."""

    def __init__(self, plan: BuildPlan, tile: Tile):
        self.plan = plan
        self.tile = tile
        self.maps: dict[tuple[object, ...], TileMap] = {}

    def one(self, v: VarPlan, e: Entry, readers: dict[Path, Reader]) -> np.ndarray:
        geom = v.geometry[e.path]
        tm = self.maps.get(geom.key)
        if tm is None:
            tm = self.maps[geom.key] = tile_map(geom, self.plan.grid, self.tile)
        if tm.empty:
            return np.full(self.tile.shape, np.nan)
        r = readers.get(e.path)
        if r is None:
            r = readers[e.path] = open_source(e.path, v.spec, v.name)
        spec = v.spec
        where = e.path if e.index is None else f"{e.path} (time step {e.index})"

        def check(block: np.ndarray) -> None:
            check_range(block, spec.valid_range, name=v.name, path=f"{where} {r.variable}")
            if spec.categorical:
                assert spec.legend is not None
                check_legend(block, spec.legend, name=v.name, path=f"{where} {r.variable}")

        return tm.apply(lambda rows, cols: r.read(rows, cols, e.index), mode=spec.categorical,
                        legend=spec.legend, check=check)

    def variable(self, v: VarPlan, t0: int = 0, t1: int | None = None) -> np.ndarray:
        """Months ``[t0, t1)`` of a time variable ``(t, ny, nx)`` float32, or a static layer."""
        readers: dict[Path, Reader] = {}
        try:
            if v.kind == "static":
                return self.one(v, v.steps[0][0], readers).astype(np.float32)
            t1 = len(self.plan.time) if t1 is None else t1
            out = np.full((t1 - t0, *self.tile.shape), np.nan, np.float32)
            done: dict[tuple[Path, int | None], np.ndarray] = {}
            for i, entries in enumerate(v.steps[t0:t1]):
                acc = np.zeros(self.tile.shape)
                cnt = np.zeros(self.tile.shape)
                for e in entries:
                    if v.spec.temporal == "annual":  # repeated per month: resample once
                        k = (e.path, e.index)
                        if k not in done:
                            done[k] = self.one(v, e, readers)
                        a = done[k]
                    else:
                        a = self.one(v, e, readers)
                    ok = np.isfinite(a)
                    acc[ok] += a[ok]
                    cnt[ok] += 1
                with np.errstate(invalid="ignore", divide="ignore"):
                    out[i] = np.where(cnt > 0, acc / cnt, np.nan)
            return out
        finally:
            for r in readers.values():
                r.close()


#: GDAL raster block cache (MB) while building: GDAL's default (5 % of RAM) would keep growing
#: with the amount of source data read.
GDAL_CACHE_MB = 16


def _build_tile(plan: BuildPlan, tile: Tile, store: Path) -> dict[str, Any]:
    import rasterio

    ledger = TileLedger(store)
    if ledger.done(tile):
        return {"resumed": True, **ledger.read(tile)}
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        return _build_tile_in_env(plan, tile, store, ledger)


def _build_tile_in_env(plan: BuildPlan, tile: Tile, store: Path, ledger: TileLedger
                       ) -> dict[str, Any]:
    rs = _Resampler(plan, tile)
    ys, xs = tile.slices
    report: dict[str, dict[str, int]] = {}
    months = plan.time.month.values
    series: dict[str, dict[str, list[float]]] = {}
    for v in plan.variables:
        if v.series is not None:
            continue
        if v.constant is not None:
            _write_constant(plan, v, tile, store)
        elif v.reduced:
            series[v.name] = _reduce_tile(plan, rs, v, tile)
        elif v.kind == "static":
            write_region(store, v.name, rs.variable(v), (ys, xs))
        elif v.spec.gapfill is not None:  # gap filling needs the whole series of the tile
            arr, rep = fill_gaps(rs.variable(v), months, v.spec.gapfill.max_gap)
            report[v.name] = rep
            write_region(store, v.name, arr.astype(np.float32), (slice(None), ys, xs))
        else:  # one 12-month chunk at a time
            for t0 in range(0, len(plan.time), 12):
                t1 = min(t0 + 12, len(plan.time))
                write_region(store, v.name, rs.variable(v, t0, t1), (slice(t0, t1), ys, xs))
    ledger.mark(tile, {"gapfill": report, "series": series})
    return {"resumed": False, "gapfill": report, "series": series}


def _write_constant(plan: BuildPlan, v: VarPlan, tile: Tile, store: Path) -> None:
    """Fill the tile of a constant static, monthly or annual predictor."""
    assert v.constant is not None
    ys, xs = tile.slices
    if v.kind == "static":
        write_region(store, v.name, np.full(tile.shape, v.constant, np.float32), (ys, xs))
        return
    for t0 in range(0, len(plan.time), 12):
        t1 = min(t0 + 12, len(plan.time))
        write_region(store, v.name, np.full((t1 - t0, *tile.shape), v.constant, np.float32),
                     (slice(t0, t1), ys, xs))


def _reduce_tile(plan: BuildPlan, rs: _Resampler, v: VarPlan, tile: Tile
                 ) -> dict[str, list[float]]:
    """Partial sums of a series reduced from rasters over the tile: per month ``Σ a·f·v``,
    ``Σ a·f`` and the number of cells, over cells with a value and land (``f > 0``)."""
    assert plan.land is not None
    ys, xs = tile.slices
    land = xr.open_zarr(plan.land, consolidated=False, chunks=None)["land_fraction"]
    w = np.nan_to_num(np.asarray(land.isel(y=ys, x=xs).values, np.float64)) * plan.grid.cell_area
    nt = len(plan.time)
    out = {"sum": np.zeros(nt), "weight": np.zeros(nt), "cells": np.zeros(nt)}
    for t0 in range(0, nt, 12):
        t1 = min(t0 + 12, nt)
        block = rs.variable(v, t0, t1).astype(np.float64)
        ok = np.isfinite(block) & (w > 0)[None]
        out["sum"][t0:t1] = np.where(ok, block * w, 0.0).sum(axis=(1, 2))
        out["weight"][t0:t1] = np.where(ok, w, 0.0).sum(axis=(1, 2))
        out["cells"][t0:t1] = ok.sum(axis=(1, 2))
    return {k: a.tolist() for k, a in out.items()}


def _finish_series(plan: BuildPlan, results: list[dict[str, Any]], tmp: Path
                   ) -> dict[str, str]:
    """Write the series reduced from rasters and describe every constant and reduction."""
    group = zarr.open_group(str(tmp), mode="r+")
    described: dict[str, str] = {}
    nt = len(plan.time)
    for v in plan.variables:
        p = v.predictor or _CATALOGUE[v.name]
        if v.constant is not None:
            described[v.name] = (f"constant {v.constant:g} {p.units} in every "
                                 f"{'month' if v.kind == 'series' else 'cell'} "
                                 f"({v.kind} layout)")
            continue
        if not v.reduced:
            continue
        tot = {k: np.zeros(nt) for k in ("sum", "weight", "cells")}
        for res in results:
            part = res.get("series", {}).get(v.name)
            if part is None:
                raise CubeBuildError(f"{v.name}: a finished tile lacks its series sums (built by "
                                     "an older abz_dask?); rebuild with overwrite")
            for k in tot:
                tot[k] += np.asarray(part[k], np.float64)
        empty = np.flatnonzero(tot["weight"] <= 0)
        if empty.size:
            months = ", ".join(f"{plan.time[i]:%Y-%m}" for i in empty[:6])
            raise CubeBuildError(f"{v.name}: the rasters of month(s) {months} have no value on "
                                 "any land cell of the grid; cannot reduce them to a series")
        vals = tot["sum"] / tot["weight"]
        check_range(vals, v.spec.valid_range, name=v.name, path="the reduced series")
        how = ("land-area-weighted mean over the grid cells with a value and land of each "
               "month's raster, sum(a*f*v)/sum(a*f), a = cell area, f = land_fraction of "
               f"{plan.land}")
        arr = zarr.open_array(str(tmp / v.name), mode="r+")
        arr[:] = vals.astype(np.float32)
        arr.attrs.update({"series_reduction": how,
                          "series_cells_min": int(tot["cells"].min()),
                          "series_cells_max": int(tot["cells"].max())})
        described[v.name] = (f"{how}: {nt} months over {int(tot['cells'].min())}-"
                             f"{int(tot['cells'].max())} cells, {vals.min():.6g} to "
                             f"{vals.max():.6g} {p.units}")
    if described:
        group.attrs["series_report"] = json.dumps(described, sort_keys=True)
    return described


def run_plan(plan: BuildPlan, out: str | Path, *, overwrite: bool = False,
             progress: bool = True) -> BuildResult:
    """Write the cube of a plan on the active Dask scheduler (resumable, atomic).

    Parameters
    ----------
    plan : BuildPlan
        From :func:`abz_dask.cube_build.plan.make_plan`.
    out : path
        Cube to write (Zarr v3).
    overwrite : bool
        Replace an existing cube at ``out``.
    progress : bool
        Show a progress bar of tiles.

    Returns
    -------
    BuildResult
        Including the gap-filling report (cell-months per method and variable).
    """
    out = Path(out)
    with hold(out, "cube"):
        return _run_locked(plan, out, overwrite, progress)


def _run_locked(plan: BuildPlan, out: Path, overwrite: bool, progress: bool) -> BuildResult:
    from abz_dask.progress import compute_with_progress

    check_replaceable(out, "cube")
    if out.exists() and not overwrite:
        try:
            attrs = dict(zarr.open_group(str(out), mode="r").attrs)
        except Exception:
            attrs = {}
        if attrs.get("build_config_token") == plan.token:
            rep = json.loads(str(attrs.get("build_report", "{}")))
            return BuildResult(out, rep, 0, 0,
                               json.loads(str(attrs.get("series_report", "{}"))))
        raise FileExistsError(f"{out} exists (built from another configuration); remove "
                              "it or pass overwrite")
    tmp = out.with_name(out.name + ".tmp")
    template = cube_template(plan)
    # an unfinished cube of another configuration (its run is gone: we hold the lock) is
    # replaced; one of this configuration is resumed tile by tile
    create_store(template, tmp, check_attrs=("build_config_token",), replace_mismatch=True)
    tiles = list(iter_tiles(plan.grid.shape, plan.tile))
    tasks = [dask.delayed(_build_tile, pure=False)(plan, t, tmp) for t in tiles]
    results = compute_with_progress(tasks, "build-cube tiles", enabled=progress)
    report: dict[str, dict[str, int]] = {}
    for res in results:
        for name, rep in res.get("gapfill", {}).items():
            tot = report.setdefault(name, {"linear": 0, "climatology": 0, "unfilled": 0})
            for k, n in rep.items():
                tot[k] += int(n)
    series = _finish_series(plan, results, tmp)
    if progress:
        for name, text in series.items():
            print(f"{name}: {text}")
    group = zarr.open_group(str(tmp), mode="r+")
    for name, rep in report.items():
        group[name].attrs.update({f"gapfilled_{k}": n for k, n in rep.items()}
                                 | {"gapfill_method": "linear in time (<= max_gap months), "
                                    "else seasonal climatology"})
    group.attrs["build_report"] = json.dumps(report, sort_keys=True)
    remove_created(out)
    tmp.rename(out)
    ledger = TileLedger(tmp).dir
    if ledger.exists():
        ledger.rename(TileLedger(out).dir)
    return BuildResult(out, report, len(tiles), sum(bool(r.get("resumed")) for r in results),
                       series)
