"""Write the digital twin's stores tile by tile: predictor cube, planted truth and fire."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from abz_dask.geo.grid import Grid, default_tile
from abz_dask.io.location import url
from abz_dask.io.predictors import FLUXES, PREDICTORS
from abz_dask.io.store import Tile, TileLedger, create_store, iter_tiles, provenance, write_region
from abz_dask.twin.drivers import Block, co2_series, dynamic_predictors, static_predictors
from abz_dask.twin.family import FluxFunction, TwinFamily
from abz_dask.twin.fire import burned_fraction, fire_emissions

__all__ = ["TwinLayout", "default_tile", "write_cube_truth_fire"]

FIRE_START = 2002
HISTORY_START = 1980  # fires before the period still shape vegetation at its start


@dataclass(frozen=True)
class TwinLayout:
    """Paths of a twin run folder."""

    root: Path

    @property
    def cube(self) -> Path:
        """Predictor cube (Zarr)."""
        return self.root / "cube.zarr"

    @property
    def truth(self) -> Path:
        """Planted monthly truth fluxes (Zarr)."""
        return self.root / "truth.zarr"

    @property
    def fire(self) -> Path:
        """Annual burned fraction and fire emissions 2002– (Zarr)."""
        return self.root / "fire.zarr"

    @property
    def zones(self) -> Path:
        """Zone layers of the grid (Zarr)."""
        return self.root / "zones.zarr"

    @property
    def sites(self) -> Path:
        """Site-month flux observations in the ABCflux v1 CSV format."""
        return self.root / "abcflux_twin.csv"

    @property
    def truth_budgets(self) -> Path:
        """Annual truth budgets per domain (CSV)."""
        return self.root / "truth_budgets.csv"


def _block(zones: xr.Dataset, grid: Grid, tile: Tile) -> Block:
    z = zones.isel(y=slice(tile.row0, tile.row1), x=slice(tile.col0, tile.col1)).load()
    y, x = grid.subset(tile.row0, tile.row1, tile.col0, tile.col1)
    _, lat = _lonlat(x, y)
    domain = z["abz"].values.astype(bool) & (z["land_fraction"].values > 0)
    return Block(
        x=x[None, :], y=y[:, None],
        row=np.arange(tile.row0, tile.row1)[:, None], col=np.arange(tile.col0, tile.col1)[None, :],
        lat=lat, t2m_clim=z["t2m_clim"].values.astype(float),
        precip_clim=z["precip_clim"].values.astype(float), igbp=z["igbp"].values,
        elevation=np.nan_to_num(z["elevation"].values.astype(float)),
        biome=z["biome"].values, domain=domain,
    )


def _lonlat(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from abz_dask.geo.grid import _lonlat_block

    return _lonlat_block(y[:, None], x[None, :])


def store_templates(grid: Grid, time: pd.DatetimeIndex, tile: int, seed: int,
                    family: TwinFamily) -> tuple[xr.Dataset, xr.Dataset, xr.Dataset]:
    """Lazy templates (no data) of the twin's ``cube``, ``truth`` and ``fire`` stores: their
    variables, chunks and attributes, as the generator writes them and ``abz-dask plan``
    sizes them."""
    ny, nx = grid.shape
    nt = len(time)
    dyn = da.empty((nt, ny, nx), dtype=np.float32, chunks=(12, tile, tile))
    sta = da.empty((ny, nx), dtype=np.float32, chunks=(tile, tile))
    coords = {**grid.coords(), "time": ("time", time)}
    cube = xr.Dataset(coords=coords)
    for p in PREDICTORS:
        attrs = {"long_name": p.long_name, "units": p.units, "abz_kind": p.kind,
                 "categorical": int(p.categorical)}
        if p.kind in ("monthly", "annual"):
            cube[p.name] = (("time", "y", "x"), dyn, attrs)
        elif p.kind == "static":
            cube[p.name] = (("y", "x"), sta, attrs)
        elif p.kind == "series":
            co2 = co2_series(time.year.values, time.month.values).astype(np.float32)
            cube[p.name] = (("time",), co2, attrs)
    truth = xr.Dataset(coords=coords)
    for f in FLUXES:
        truth[f] = (("time", "y", "x"), dyn, {
            "long_name": f"planted truth {f}", "units": "g C m-2 month-1",
            "sign_convention": "NEE < 0 is uptake; NEE = Reco - GPP"})
    years = np.arange(FIRE_START, time[-1].year + 1)
    fyr = da.empty((len(years), ny, nx), dtype=np.float32, chunks=(len(years), tile, tile))
    fire = xr.Dataset(coords={**grid.coords(), "year": ("year", years)})
    fire["burned_fraction"] = (("year", "y", "x"), fyr, {
        "long_name": "fraction of the cell burned in the year", "units": "1"})
    fire["fire_emissions"] = (("year", "y", "x"), fyr, {
        "long_name": "fire carbon emissions", "units": "g C m-2 yr-1"})
    prov = provenance(generator="abz_dask.twin", seed=seed, grid=grid.name)
    out = []
    for ds in (cube, truth, fire):
        ds = grid.attach(ds)
        ds.attrs.update(prov)
        out.append(ds)
    if family != TwinFamily():  # family a with its hidden field keeps its original attributes
        out[1].attrs.update(provenance(twin_family=family.name,
                                       hidden_driver=int(family.hidden_driver),
                                       twin_family_params=family.params()))
    return out[0], out[1], out[2]


def _twin_tile(layout: TwinLayout, grid: Grid, tile: Tile, time: pd.DatetimeIndex,
               seed: int, fluxes: FluxFunction) -> str:
    ledger = TileLedger(layout.cube)
    if ledger.done(tile):
        return tile.key
    zones = xr.open_zarr(url(layout.zones), consolidated=False, chunks=None)
    b = _block(zones, grid, tile)
    ys, xs = tile.slices
    stat = static_predictors(b, seed)
    nan = ~b.domain
    for name in ("vegtype", "cti", "soil_ph", "soc", "permafrost_prob"):
        write_region(layout.cube, name, np.where(nan, np.nan, stat[name]).astype(np.float32),
                     (ys, xs))
    last_year = int(time[-1].year)
    burn = {yr: burned_fraction(b, yr, seed) for yr in range(HISTORY_START, last_year + 1)}
    fy = [yr for yr in burn if yr >= FIRE_START]
    bf = np.stack([burn[yr] for yr in fy]).astype(np.float32)
    em = np.stack([fire_emissions(b, burn[yr], yr, seed) for yr in fy]).astype(np.float32)
    write_region(layout.fire, "burned_fraction", bf, (slice(None), ys, xs))
    write_region(layout.fire, "fire_emissions", em, (slice(None), ys, xs))
    co2_all = co2_series(time.year.values, time.month.values)
    for t0 in range(0, len(time), 12):
        sel = time[t0:t0 + 12]
        yrs, mons = sel.year.values, sel.month.values
        dyn = dynamic_predictors(b, stat, yrs, mons, burn, seed)
        dyn.pop("_recover")
        idx = (slice(t0, t0 + len(sel)), ys, xs)
        for name, arr in dyn.items():
            write_region(layout.cube, name, np.where(nan, np.nan, arr).astype(np.float32), idx)
        flx = fluxes(b, stat, dyn, co2_all[t0:t0 + len(sel)], mons, seed)
        for name, arr in flx.items():
            write_region(layout.truth, name, np.where(nan, np.nan, arr).astype(np.float32), idx)
    ledger.mark(tile)
    return tile.key


def write_cube_truth_fire(layout: TwinLayout, grid: Grid, time: pd.DatetimeIndex, seed: int,
                          tile: int | None = None, progress: bool = True,
                          family: TwinFamily | None = None) -> None:
    """Create (or resume) the cube, truth and fire stores and fill them tile by tile.

    ``family`` chooses the planted truth (default: family a with its hidden field,
    :mod:`abz_dask.twin.family`). Runs on the active Dask scheduler (a distributed client if one
    is active, else threads).
    """
    tile = tile or default_tile(grid)
    family = family or TwinFamily()
    cube, truth, fire = store_templates(grid, time, tile, seed, family)
    fresh = create_store(cube, layout.cube)
    if fresh:
        TileLedger(layout.cube).dir.mkdir(parents=True, exist_ok=True)
    create_store(truth, layout.truth, overwrite=fresh)
    create_store(fire, layout.fire, overwrite=fresh)
    ledger = TileLedger(layout.cube)
    todo = [t for t in iter_tiles(grid.shape, tile) if not ledger.done(t)]
    fluxes = family.flux_function()
    tasks = [dask.delayed(_twin_tile, pure=True)(layout, grid, t, time, seed, fluxes)
             for t in todo]
    from abz_dask.progress import compute_with_progress

    compute_with_progress(tasks, "twin tiles", enabled=progress)
