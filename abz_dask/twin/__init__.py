"""The digital twin: realistic predictor cubes, a site network and fluxes from a planted truth.

No real ABCflux or satellite data can be downloaded where abz_dask is developed, so every stage is
checked against a twin whose true fluxes are known. ``generate_twin`` writes a run folder:

- ``zones.zarr``: the grid's zone layers built from real geodata (:mod:`abz_dask.geo.zones`);
- ``cube.zarr``: the 17 predictors (seed-spec §3.2), monthly 1990–2020 by default, NaN outside
  the ABZ domain (:mod:`abz_dask.twin.drivers`);
- ``truth.zarr``: planted monthly GPP, Reco, NEE of the twin family (:mod:`abz_dask.twin.family`:
  family a, the default, :mod:`abz_dask.twin.truth`; family b, :mod:`abz_dask.twin.truth_b`);
- ``fire.zarr``: annual burned fraction and fire emissions 2002– (:mod:`abz_dask.twin.fire`);
- ``abcflux_twin.csv``: site-month observations in the ABCflux v1 format
  (:mod:`abz_dask.twin.sites`; family b places its sites by :mod:`abz_dask.twin.sites_b`);
- ``truth_budgets.csv``: annual truth budgets per domain (Tg C yr⁻¹);
- ``twin.json``: the configuration, with the family, its hidden-driver switch and (family b, or
  a without its hidden field) the family's planted parameters.

The same arguments and seed give bit-identical outputs, on one worker or many.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import xarray as xr

from abz_dask import __version__
from abz_dask.aggregation.budgets import annual_domain_budgets, domain_weights
from abz_dask.geo.grid import Grid
from abz_dask.io.location import as_path, publish, staging, url, write_atomic
from abz_dask.twin.family import twin_family
from abz_dask.twin.generate import TwinLayout, write_cube_truth_fire
from abz_dask.twin.sites import make_sites, site_observations

__all__ = ["TWIN_VERSION", "TwinLayout", "generate_twin", "twin_family"]

#: Version of what the twin generates, recorded in ``twin.json``; a folder made by another
#: version is refused rather than finished. 2: site factors with mean one (were median one).
TWIN_VERSION = 2


def generate_twin(out: str | Path, resolution: str | float = "50km", start: str = "1990-01",
                  end: str = "2020-12", seed: int = 0, n_sites: int = 200,
                  tile: int | None = None, zones: xr.Dataset | None = None,
                  progress: bool = True, family: str = "a",
                  hidden_driver: bool | None = None) -> TwinLayout:
    """Generate (or finish generating) a digital twin into ``out``.

    Parameters
    ----------
    out : path
        Run folder; created if missing. An interrupted run is resumed tile by tile.
    resolution : str or float
        Grid preset (``"1km"``, ``"8km"``, ``"25km"``, ``"50km"``, ``"100km"``) or metres.
    start, end : str
        First and last month (``YYYY-MM``).
    seed : int
        Seed of every random element.
    n_sites : int
        Size of the site network.
    tile : int, optional
        Tile edge in cells (chunk size of the stores).
    zones : xr.Dataset, optional
        Zone layers to use instead of the built-in real-geodata layers.
    progress : bool
        Show progress bars.
    family : {"a", "b"}
        Twin family: planted truth and site-network rule (:mod:`abz_dask.twin.family`).
    hidden_driver : bool, optional
        Plant the family's unobserved respiration driver (default: on; D of family a, H of b).

    Returns
    -------
    TwinLayout
        Paths of the written stores and tables.
    """
    from abz_dask.geo.zones import build_zones

    fam = twin_family(family, hidden_driver)
    grid = Grid.from_preset(resolution)
    layout = TwinLayout(as_path(out))
    layout.root.mkdir(parents=True, exist_ok=True)
    time = pd.date_range(start, end, freq="MS")
    if len(time) < 12 or time[0].month != 1:
        raise ValueError(f"twin period {start}..{end} must start in January and span ≥ 12 months")
    config = {"resolution": str(resolution), "start": start, "end": end, "seed": seed,
              "n_sites": n_sites, "tile": tile, "abz_dask_version": __version__,
              "twin_version": TWIN_VERSION, "family": fam.name,
              "hidden_driver": fam.hidden_driver}
    if fam != twin_family():
        config["family_params"] = fam.params()
    manifest = layout.root / "twin.json"
    # a folder written before families existed is family a with its hidden field
    if manifest.exists() and {"family": "a", "hidden_driver": True,
                              **json.loads(manifest.read_text())} != config:
        raise FileExistsError(f"{layout.root} holds a twin made with other settings "
                              f"({manifest}); use another --out folder")
    manifest.write_text(json.dumps(config, indent=2))
    if not layout.zones.exists():
        z = zones if zones is not None else build_zones(grid)
        z.to_zarr(url(staging(layout.zones)), mode="w", zarr_format=3, consolidated=False)
        publish(layout.zones)
    write_cube_truth_fire(layout, grid, time, seed, tile=tile, progress=progress, family=fam)
    zones_ds = xr.open_zarr(url(layout.zones), consolidated=False)
    if not layout.sites.exists():
        truth = xr.open_zarr(url(layout.truth), consolidated=False)
        cube = xr.open_zarr(url(layout.cube), consolidated=False)
        fire = xr.open_zarr(url(layout.fire), consolidated=False)
        site = make_sites(zones_ds.load(), grid, fire, seed, n_sites, family=fam.name)
        obs = site_observations(site, truth, cube, seed, grid)
        _atomic_csv(obs, layout.sites)
    if not layout.truth_budgets.exists():
        truth = xr.open_zarr(url(layout.truth), consolidated=False)
        w = domain_weights(zones_ds, grid.cell_area)
        annual = annual_domain_budgets(truth[["NEE", "GPP", "Reco"]], w).compute()
        tab = annual.to_dataframe().reset_index().melt(
            id_vars=["year", "domain"], var_name="flux", value_name="budget_tg_c_yr")
        _atomic_csv(tab, layout.truth_budgets)
    return layout


def _atomic_csv(df: pd.DataFrame, path: Path) -> None:
    write_atomic(path, df.to_csv(index=False))
