"""The fire store of a build: the ``fire`` rasters regridded onto the grid conserving mass and
summed to the twin's annual ``fire.zarr`` layout.

Schema — the twin's ``fire.zarr`` (:mod:`abz_dask.twin.generate`), which Table 1, the report
(years since fire, post-fire correction), the trends (NEE + fire) and compare read:
``(year, y, x)`` float32 chunked ``(n_years, tile, tile)`` with the grid's coordinates,
``spatial_ref`` and attributes, and the variables of the section

* ``burned_fraction`` (units ``1``): fraction of the cell burned in the year, the sum of the
  year's regridded monthly fractions (a cell burned twice counts twice;
  :func:`abz_dask.analyses.fire.burn_history` caps its record at 1);
* ``fire_emissions`` (``g C m-2 yr-1``): the year's fire carbon per m² of *cell* area.

Cells without fire or without data are 0, as in the twin. The years run from
``fire.start_year`` to the last whole year of the period; the store's ``build_config_token``
is the fire section's (:meth:`~abz_dask.cube_build.config.BuildConfig.fire_token`).

Method, one task per output tile: for every step (month or year) of a variable, the window of
the source file that can reach the tile (:func:`abz_dask.geo.regrid.tile_map`) is
read and decoded, converted to a fraction or to g C m⁻² of the step (the declared units;
rates × the days of the step), checked (:func:`~abz_dask.cube_build.validate.check_fire_values`,
errors name the file, time step, variable and values) and its amounts — value × true pixel
area — are split over k × k sub-pixels and summed per grid cell (:func:`_regrid_window`). Both
quantities are densities, so the burned area and the emitted carbon are conserved: a pixel
straddling two tiles gives each the sub-pixels that fall in it. The store is written to
``OUT.tmp`` tile by tile (a rerun resumes finished tiles) and renamed when complete.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr

from abz_dask.cube_build.build import GDAL_CACHE_MB
from abz_dask.cube_build.plan import BuildPlan, FirePlan, VarPlan
from abz_dask.cube_build.sources import Geometry, Reader, open_source
from abz_dask.cube_build.validate import check_fire_values
from abz_dask.geo.grid import Grid
from abz_dask.geo.regrid import mass_sum_tile, tile_map
from abz_dask.io.locks import hold
from abz_dask.io.ownership import check_replaceable, remove_created
from abz_dask.io.store import Tile, TileLedger, create_store, iter_tiles, provenance, write_region

__all__ = ["FIRE_ATTRS", "FireResult", "fire_template", "write_fire"]

#: Attributes of the fire variables (the twin's).
FIRE_ATTRS: dict[str, dict[str, str]] = {
    "burned_fraction": {"long_name": "fraction of the cell burned in the year", "units": "1"},
    "fire_emissions": {"long_name": "fire carbon emissions", "units": "g C m-2 yr-1"},
}
Window = tuple[int, int, int, int]


@dataclass
class FireResult:
    """What :func:`write_fire` wrote."""

    store: Path
    years: list[int]
    n_tiles: int
    resumed_tiles: int
    warnings: list[str] = field(default_factory=list)


def fire_template(grid: Grid, years: list[int], tile: int, attrs: dict[str, dict[str, Any]],
                  prov: dict[str, Any]) -> xr.Dataset:
    """Lazy template of a fire store: ``(year, y, x)`` float32 per variable of ``attrs``
    (name → attributes), chunks ``(n_years, tile, tile)``, provenance attributes ``prov``."""
    ny, nx = grid.shape
    arr = da.empty((len(years), ny, nx), dtype=np.float32, chunks=(len(years), tile, tile))
    ds = xr.Dataset(coords={**grid.coords(), "year": ("year", np.asarray(years, np.int64))})
    for name, a in attrs.items():
        ds[name] = (("year", "y", "x"), arr, a)
    ds = grid.attach(ds)
    ds.attrs.update(provenance(**prov))
    return ds


def _supersample(geom: Geometry, grid: Grid) -> int:
    """Sub-pixels per axis: at most a quarter of a grid cell across (a lon/lat pixel measured at
    the equator, its widest); one value per source, so tiles split straddling pixels alike."""
    side = abs(geom.transform.a) * (111_320.0 if geom.crs.is_geographic else 1.0)
    return max(1, math.ceil(4 * side / grid.resolution))


def _window(geom: Geometry, grid: Grid, tile: Tile) -> Window | None:
    """Source rows/columns that can reach the tile (at least 2 × 2), None if none."""
    tm = tile_map(geom, grid, tile)
    if tm.empty:
        return None
    r0, r1, c0, c1 = tm.window
    ny, nx = geom.shape
    r0, c0 = max(0, min(r0, ny - 2)), max(0, min(c0, nx - 2))
    return r0, max(r1, min(ny, r0 + 2)), c0, max(c1, min(nx, c0 + 2))


def _regrid_window(values: np.ndarray, geom: Geometry, window: Window, grid: Grid, tile: Tile
                   ) -> np.ndarray:
    """Density of source windows ``(n, rows, cols)`` per m² of the tile's cells ``(n, ty, tx)``,
    conserving mass.

    The one call of the mass-conserving regridder (:func:`abz_dask.geo.regrid.mass_sum_tile`,
    exact sub-pixel binning, true pixel areas): only the tile's cells are computed.
    """
    return mass_sum_tile(values, geom, window, grid, tile, kind="density",
                         supersample=_supersample(geom, grid))


def _annual(plan: BuildPlan, v: VarPlan, tile: Tile) -> np.ndarray:
    """``(n_years, ty, tx)`` annual sums of one variable on the tile (see the module); the
    steps of a year that share a georeferencing are regridded in one call (≤ 12 windows held)."""
    fire = plan.fire
    assert fire is not None
    units = fire.units[v.name]
    out = np.zeros((len(fire.years), *tile.shape))
    windows: dict[tuple[Any, ...], Window | None] = {}
    readers: dict[Path, Reader] = {}
    times = fire.step_times(v)
    try:
        for i, year in enumerate(fire.years):
            groups: dict[tuple[Any, ...], list[np.ndarray]] = {}
            for t, (e,) in zip(times, v.steps, strict=True):
                if t.year != year:
                    continue
                geom = v.geometry[e.path]
                if geom.key not in windows:
                    windows[geom.key] = _window(geom, plan.grid, tile)
                win = windows[geom.key]
                if win is None:
                    continue
                r = readers.get(e.path)
                if r is None:
                    r = readers[e.path] = open_source(e.path, v.spec, f"fire.{v.name}")
                days = t.days_in_month if v.kind == "monthly" else 365 + t.is_leap_year
                vals = r.read((win[0], win[1]), (win[2], win[3]), e.index) * units.factor(days)
                check_fire_values(vals, variable=v.name, units=units.text,
                                  path=r.where(e.index))
                groups.setdefault(geom.key, []).append(vals)
            for key, stack in groups.items():
                geom = next(g for g in v.geometry.values() if g.key == key)
                win = windows[key]
                assert win is not None
                out[i] += _regrid_window(np.stack(stack), geom, win, plan.grid, tile).sum(axis=0)
    finally:
        for r in readers.values():
            r.close()
    return out


def _fire_tile(plan: BuildPlan, tile: Tile, store: Path) -> bool:
    """Write one tile of every fire variable; True if it was already done (resumed)."""
    import rasterio

    ledger = TileLedger(store)
    if ledger.done(tile):
        return True
    assert plan.fire is not None
    ys, xs = tile.slices
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        for v in plan.fire.variables:
            write_region(store, v.name, _annual(plan, v, tile).astype(np.float32),
                         (slice(None), ys, xs))
    ledger.mark(tile)
    return False


def _template(plan: BuildPlan, fire: FirePlan) -> xr.Dataset:
    attrs = {}
    for v in fire.variables:
        how = ("sum of the year's {} regridded to the grid conserving mass (value x true "
               "pixel area summed per cell over sub-pixels)").format(
                   "months" if v.kind == "monthly" else "rasters")
        attrs[v.name] = {**FIRE_ATTRS[v.name], "source_files": str(v.spec.files),
                         "source_units": fire.units[v.name].text, "aggregation": how}
    return fire_template(plan.grid, fire.years, plan.tile, attrs,
                         {"generator": "abz_dask.cube_build", "grid": plan.grid.name,
                          "build_config_token": fire.token})


def write_fire(plan: BuildPlan, out: str | Path, *, overwrite: bool = False,
               progress: bool = True) -> FireResult:
    """Write the fire store of a plan with a ``fire`` section (resumable, atomic).

    Parameters
    ----------
    plan : BuildPlan
        From :func:`abz_dask.cube_build.plan.make_plan` (``plan.fire`` set).
    out : path
        Store to write (Zarr v3); written as ``<out>.tmp`` and renamed when complete. An
        existing store of the same fire configuration is kept.
    overwrite : bool
        Replace an existing store of another configuration.
    progress : bool
        Show a progress bar of tiles.

    Returns
    -------
    FireResult

    Raises
    ------
    CubeBuildError
        A fire value outside its range (naming the file, time step, variable and values).
    FileExistsError
        ``out`` holds a fire store of another configuration and ``overwrite`` is not set.
    """
    if plan.fire is None:
        raise ValueError("the build configuration has no fire section")
    out = Path(out)
    with hold(out, "fire store"):
        return _write_locked(plan, plan.fire, out, overwrite, progress)


def _write_locked(plan: BuildPlan, fire: FirePlan, out: Path, overwrite: bool,
                  progress: bool) -> FireResult:
    from abz_dask.progress import compute_with_progress

    check_replaceable(out, "fire store")
    if out.exists() and not overwrite:
        try:
            token = zarr.open_group(str(out), mode="r").attrs.get("build_config_token")
        except Exception:
            token = None
        if token == fire.token:
            return FireResult(out, fire.years, 0, 0, fire.warnings)
        raise FileExistsError(f"{out} exists (built from another fire configuration); remove "
                              "it or pass overwrite")
    tmp = out.with_name(out.name + ".tmp")
    create_store(_template(plan, fire), tmp, check_attrs=("build_config_token",),
                 replace_mismatch=True)
    tiles = list(iter_tiles(plan.grid.shape, plan.tile))
    tasks = [dask.delayed(_fire_tile, pure=False)(plan, t, tmp) for t in tiles]
    resumed = compute_with_progress(tasks, "fire tiles", enabled=progress)
    zarr.open_group(str(tmp), mode="r+").attrs["fire_warnings"] = json.dumps(fire.warnings)
    remove_created(out)
    tmp.rename(out)
    ledger = TileLedger(tmp).dir
    if ledger.exists():
        ledger.rename(TileLedger(out).dir)
    return FireResult(out, fire.years, len(tiles), sum(map(bool, resumed)), fire.warnings)
