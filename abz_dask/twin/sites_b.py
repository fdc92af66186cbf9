"""Site placement of twin family b: sites clustered around towns and research stations.

Real flux networks grow where people can get to: along roads, near towns and around research
stations. Family b places its sites by an *accessibility* weight instead of family a's key-region
shares and real FLUXNET2015 coordinates::

    w(cell) = Σ_h  a_h · exp(−d(cell, h) / HUB_SCALE)  +  BACKGROUND · exp(−(lat − 50) / 8)

over the hubs h of :data:`HUBS` (name, longitude, latitude, accessibility a_h: southern,
road-connected and coastal places weigh more, remote Siberian stations less), with d the
projected distance. Of the non-fire sites a fixed share :data:`TUNDRA_SHARE` sits in the tundra
(cells drawn by w within each biome, without replacement); :data:`FIRE_SHARE` of the sites are
fire sites, drawn by w among the cells that burned by 2017. There are no real FLUXNET2015
coordinates in family b. The design (disturbances, method, record length) is family a's
(:func:`abz_dask.twin.sites.make_sites`), drawn from family b's own random stream.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from abz_dask.geo.grid import Grid, _lonlat_block

__all__ = ["FIRE_SHARE", "HUBS", "TUNDRA_SHARE", "accessibility", "place_sites_b", "site_rule"]

#: (name, longitude, latitude, accessibility) of the towns and stations sites cluster around.
HUBS: tuple[tuple[str, float, float, float], ...] = (
    ("Fairbanks", -147.72, 64.84, 3.0), ("Anchorage", -149.90, 61.22, 1.5),
    ("Utqiagvik", -156.79, 71.29, 1.2), ("Whitehorse", -135.06, 60.72, 1.0),
    ("Inuvik", -133.72, 68.36, 1.0), ("Yellowknife", -114.37, 62.45, 1.5),
    ("Fort McMurray", -111.38, 56.73, 1.5), ("Prince Albert", -105.00, 53.90, 2.0),
    ("Thompson", -97.86, 55.74, 1.0), ("Churchill", -94.17, 58.77, 1.0),
    ("Chibougamau", -74.40, 49.90, 1.5), ("Kuujjuaq", -68.40, 58.10, 0.6),
    ("Goose Bay", -60.40, 53.30, 0.6), ("Hyytiala", 24.29, 61.85, 3.0),
    ("Sodankyla", 26.63, 67.37, 2.5), ("Abisko", 18.82, 68.35, 2.5),
    ("Svartberget", 19.77, 64.26, 2.0), ("Kevo", 27.00, 69.76, 1.0),
    ("Arkhangelsk", 40.50, 64.50, 0.8), ("Vorkuta", 64.00, 67.50, 0.4),
    ("Surgut", 73.40, 61.25, 0.5), ("Tomsk", 85.00, 56.50, 0.5),
    ("Zotino", 89.35, 60.80, 0.3), ("Norilsk", 88.20, 69.35, 0.2),
    ("Yakutsk", 129.60, 62.25, 0.4), ("Tiksi", 128.90, 71.60, 0.2),
    ("Cherskiy", 161.40, 68.75, 0.3),
)
HUB_SCALE = 2.0e5  # m
BACKGROUND = 0.01
TUNDRA_SHARE = 0.40
FIRE_SHARE = 0.06


def site_rule() -> str:
    """One-line description of the rule (recorded with the twin's parameters)."""
    return (f"clustered around {len(HUBS)} towns/stations by accessibility "
            f"(scale {HUB_SCALE / 1e3:.0f} km), tundra share {TUNDRA_SHARE}, "
            f"fire share {FIRE_SHARE}, no FLUXNET2015 sites")


def accessibility(grid: Grid, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The accessibility weight ``w`` of the cells ``(rows, cols)`` (module docstring)."""
    x, y = grid.x[cols], grid.y[rows]
    hx, hy = grid.project(np.array([h[1] for h in HUBS]), np.array([h[2] for h in HUBS]))
    w = np.zeros(len(rows))
    for a, px, py in zip((h[3] for h in HUBS), hx, hy, strict=True):
        w += a * np.exp(-np.hypot(x - px, y - py) / HUB_SCALE)
    lat = _lonlat_block(y[None, :], x[None, :])[1][0]
    return w + BACKGROUND * np.exp(-(lat - 50.0) / 8.0)


def _draw(rng: np.random.Generator, cells: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    k = min(k, int(np.count_nonzero(w > 0)))
    if k == 0:
        return cells[:0]
    return cells[rng.choice(len(cells), size=k, replace=False, p=w / w.sum())]


def place_sites_b(zones: xr.Dataset, grid: Grid, dom: np.ndarray, burned: np.ndarray,
                  rng: np.random.Generator, n_sites: int
                  ) -> tuple[list[int], list[int], list[str], int]:
    """Cells of family b's site network; the fire sites come last.

    Parameters
    ----------
    zones : xr.Dataset
        Zone layers (``biome``: 1 tundra, 2 boreal).
    grid : Grid
        The twin's grid.
    dom, burned : ndarray of bool
        Cells a site may sit in, and those of them that burned by 2017.
    rng : numpy.random.Generator
        Family b's site stream.
    n_sites : int
        Size of the network.

    Returns
    -------
    rows, cols, names, n_fire
        Cell indices, names (empty: named later by region) and the number of fire sites.
    """
    biome = zones["biome"].values
    rows_all, cols_all = np.nonzero(dom)
    w_all = accessibility(grid, rows_all, cols_all)
    idx = np.arange(len(rows_all))
    is_burned = burned[rows_all, cols_all]
    fire = _draw(rng, idx[is_burned], w_all[is_burned], round(FIRE_SHARE * n_sites))
    w_all[fire] = 0.0
    n_rest = max(0, n_sites - len(fire))
    n_tundra = round(TUNDRA_SHARE * n_rest)
    tundra = biome[rows_all, cols_all] == 1
    picked = [_draw(rng, idx[tundra], w_all[tundra], n_tundra)]
    picked.append(_draw(rng, idx[~tundra], w_all[~tundra], n_rest - len(picked[0])))
    order = np.concatenate([*picked, fire]).astype(int)
    rows = [int(r) for r in rows_all[order]]
    cols = [int(c) for c in cols_all[order]]
    return rows, cols, [""] * len(order), len(fire)
