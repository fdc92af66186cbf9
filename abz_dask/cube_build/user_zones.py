"""Zone layers from users' polygons or categorical rasters, replacing the built-in proxies.

A zone source is a vector file (shapefile, GeoPackage, GeoJSON — read with pyogrio) whose
features carry an attribute naming the zone, or a raster (GeoTIFF / NetCDF). It is rasterised to
the grid and replaces the layer of the same name (:func:`abz_dask.geo.zones.replace_zone`):

- **cell-centre rule** (``method: centre``, the default): a cell takes the code of the polygon
  that contains its centre (later features win where polygons overlap); cells outside every
  polygon get 0 (``outside_abz`` / ``none``; ``False`` for ``abz``/``permafrost``);
- **fractional coverage** (``method: fraction``, for ``land_fraction``, ``lake_fraction``,
  ``ice_fraction``): each cell is split into ``supersample²`` sub-cells and the covered share is
  the layer value;
- rasters are resampled like the predictors (centre binning, :func:`abz_dask.geo.regrid.tile_map`):
  mode for categorical layers, area-weighted average for fractions and elevation.

Attribute values map to codes through ``values`` in the configuration, else through the layer's
CF ``flag_meanings`` (case-insensitive, spaces and dashes read as ``_``, e.g. ``"Tundra"`` → 1
for ``biome``; :data:`abz_dask.geo.zones.REGION_ALIASES` apply), else as integer codes. A value that
maps to no code (and no ``other`` code is set) raises
:class:`~abz_dask.cube_build.validate.LegendError` naming the file, the attribute and the value.
Lon/lat polygons are densified to 0.1° before projection (a straight lon/lat edge is curved in
polar LAEA).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from pyproj import CRS, Transformer

from abz_dask.cube_build.config import BuildConfig, SourceSpec, ZoneSpec
from abz_dask.cube_build.validate import CRSError, ExtentError, LegendError, ZoneError
from abz_dask.geo.grid import Grid
from abz_dask.geo.regrid import Supersample
from abz_dask.geo.zones import REGION_ALIASES, replace_zone

__all__ = ["FRACTION_LAYERS", "ZONE_STORE_LAYERS", "check_user_zones", "check_zone_store",
           "clip_subdomains", "open_zone_store", "rasterize_polygons", "read_polygons",
           "user_zone_layer", "write_user_zones"]

#: Layers that may be built by fractional coverage.
FRACTION_LAYERS: tuple[str, ...] = ("land_fraction", "lake_fraction", "ice_fraction")
_BOOL_LAYERS = ("abz", "permafrost")
_VECTOR_SUFFIXES = (".shp", ".gpkg", ".geojson", ".json", ".fgb", ".gml", ".kml")
_BLOCK_PIXELS = 1 << 24
#: Layers every zones store has (:func:`abz_dask.geo.zones.build_zones`); the budgets, the site
#: land check and the upscaler read them.
ZONE_STORE_LAYERS: tuple[str, ...] = ("land_fraction", "abz", "biome", "permafrost")
_POLYGONAL = ("polygon", "multipolygon", "geometrycollection", "unknown")


def _store_kind(path: Path) -> str | None:
    """``"zarr"`` for a Zarr store folder, ``"folder"`` for another folder, else None."""
    if not path.is_dir():
        return None
    if any((path / m).exists() for m in ("zarr.json", ".zgroup", ".zattrs")):
        return "zarr"
    return "folder"


def check_zone_store(ds: xr.Dataset, path: str | Path, *, what: str = "zones store") -> None:
    """Raise :class:`~abz_dask.cube_build.validate.ZoneError` unless ``ds`` is a zones store.

    Parameters
    ----------
    ds : xr.Dataset
        The opened store.
    path : path
        Where it was opened from (for the message).
    what : str
        The setting that named it (for the message), e.g. ``"base_zones"``.
    """
    from abz_dask.io.predictors import PREDICTOR_NAMES

    missing = [n for n in ZONE_STORE_LAYERS if n not in ds.data_vars]
    if not missing:
        return
    preds = sorted(set(map(str, ds.data_vars)) & set(PREDICTOR_NAMES))
    hint = (f"; it holds predictors {preds[:5]}: it is a predictor cube, not a zones store"
            if preds else "")
    raise ZoneError(f"{what} {path} lacks the zone layer(s) {missing} (variables: "
                    f"{sorted(map(str, ds.data_vars))[:12]}){hint}; give a zones.zarr written "
                    "by build-cube / the twin")


def open_zone_store(path: Path, what: str) -> xr.Dataset:
    """Open a zones store, or raise an error naming ``what`` (the setting) and ``path``."""
    if not path.exists():
        raise FileNotFoundError(f"{what}: {path} does not exist")
    if _store_kind(path) != "zarr":
        raise ZoneError(f"{what}: {path} is not a Zarr zones store")
    try:
        ds = xr.open_zarr(path, consolidated=False)
    except Exception as e:
        raise ZoneError(f"{what}: {path} cannot be opened as a Zarr store "
                        f"({type(e).__name__}: {e})") from e
    check_zone_store(ds, path, what=what)
    return ds


def _norm(s: str) -> str:
    return str(s).strip().lower().replace(" ", "_").replace("-", "_").replace("/", "_")


def read_polygons(path: Path, *, layer: str | None = None, attribute: str | None = None
                  ) -> tuple[list[Any], list[Any], CRS]:
    """Polygons (shapely), their attribute values and the CRS of a vector file.

    Raises
    ------
    CRSError
        The file has no CRS.
    ValueError
        The attribute is not a field of the layer.
    """
    import pyogrio.raw
    import shapely

    try:
        meta, _, wkb, fields = pyogrio.raw.read(path, layer=layer)
    except Exception as e:
        lay = "" if layer is None else f" (layer {layer!r})"
        raise ZoneError(f"{path}{lay}: cannot be read as a vector file: "
                        f"{type(e).__name__}: {e}") from e
    if not meta.get("crs"):
        raise CRSError(f"{path}: the vector layer has no CRS (.prj / srs); cannot place it on "
                       "the grid")
    names = list(meta["fields"])
    values: list[Any]
    if attribute is None:
        values = [1] * len(wkb)
    elif attribute not in names:
        raise ZoneError(f"{path}: no attribute {attribute!r} (attribute: {attribute!r}; the "
                        f"layer's fields are {names})")
    else:
        values = list(fields[names.index(attribute)])
    geoms = list(shapely.from_wkb(wkb))
    poly = [g is not None and shapely.get_type_id(g) in (3, 6, 7) for g in geoms]
    if not any(poly):
        types = sorted({g.geom_type for g in geoms if g is not None}) or ["none"]
        raise ZoneError(f"{path}: holds no polygons ({len(geoms)} feature(s), geometry "
                        f"types {types}); a zone file needs polygon features")
    keep = [i for i, ok in enumerate(poly) if ok]
    return ([geoms[i] for i in keep], [values[i] for i in keep],
            CRS.from_user_input(meta["crs"]))


def _project(geoms: list[Any], crs: CRS, grid: Grid) -> list[Any]:
    import shapely

    tr = Transformer.from_crs(crs, grid.crs, always_xy=True)
    if crs.is_geographic:
        geoms = [shapely.segmentize(g, 0.1) for g in geoms]

    def fn(xy: np.ndarray) -> np.ndarray:
        x, y = tr.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return [shapely.make_valid(shapely.transform(g, fn)) for g in geoms]


def _codes(values: list[Any], spec: ZoneSpec, name: str, attrs: dict[str, Any], path: Path
           ) -> list[int]:
    flags = [int(v) for v in np.atleast_1d(attrs.get("flag_values", []))]
    meanings = str(attrs.get("flag_meanings", "")).split()
    lookup: dict[str, int] = {}
    if spec.values is not None:
        lookup = {_norm(k): int(v) for k, v in spec.values.items()}
    else:
        lookup = {m: f for m, f in zip(meanings, flags, strict=False)}
        lookup.update({_norm(a): lookup[b] for a, b in REGION_ALIASES.items() if b in lookup})
    out: list[int] = []
    for v in values:
        key = _norm(v) if v is not None else ""
        if key in lookup:
            out.append(lookup[key])
            continue
        try:
            code = int(float(v))
        except (TypeError, ValueError):
            code = None
        if spec.other is not None:
            out.append(spec.other)
            continue
        if code is None or (spec.values is not None) or (flags and code not in flags):
            legend = sorted(lookup) if lookup else flags
            raise LegendError(f"{name}: value {v!r} of attribute {spec.attribute!r} in {path} "
                              f"is not in the legend {legend}; map it with 'values'")
        out.append(code)
    if name in _BOOL_LAYERS:
        bad = sorted({c for c in out if c not in (0, 1)})
        if bad:
            raise LegendError(f"{name}: codes {bad} from {path} are not 0/1")
    elif flags:
        bad = sorted({c for c in out if c not in flags})
        if bad:
            raise LegendError(f"{name}: codes {bad} from {path} are not in flag_values {flags}")
    return out


def rasterize_polygons(geoms: list[Any], codes: list[int], grid: Grid, *,
                       method: str = "centre", supersample: int = 8) -> np.ndarray:
    """Rasterise projected polygons onto the grid, in row blocks.

    Parameters
    ----------
    geoms : list
        Shapely geometries in the grid CRS.
    codes : list of int
        Value burned for each geometry (``centre``).
    grid : Grid
        Target grid.
    method : str
        ``"centre"`` (code of the polygon containing the cell centre, 0 elsewhere) or
        ``"fraction"`` (covered fraction of each cell, from ``supersample²`` sub-cells).
    supersample : int
        Sub-cells per axis for ``fraction``.

    Returns
    -------
    ndarray
        ``grid.shape``; int32 codes or float32 fractions.
    """
    from rasterio.features import rasterize

    ny, nx = grid.shape
    k = supersample if method == "fraction" else 1
    rows = max(1, _BLOCK_PIXELS // (nx * k * k))
    out = np.zeros(grid.shape, np.float32 if method == "fraction" else np.int32)
    shapes = [(g, int(c)) for g, c in zip(geoms, codes, strict=True) if not g.is_empty]
    if method == "fraction":
        shapes = [(g, 1) for g, _ in shapes]
    for r0 in range(0, ny, rows):
        r1 = min(ny, r0 + rows)
        if not shapes:
            continue
        sub = Supersample(grid, r0, r1, 0, nx, k)
        burn = rasterize(shapes, out_shape=sub.shape, transform=sub.transform, fill=0,
                         dtype="int32")
        out[r0:r1] = sub.mean(burn) if method == "fraction" else burn
    return out


def _raster_layer(path: Path, spec: ZoneSpec, name: str, grid: Grid, attrs: dict[str, Any]
                  ) -> np.ndarray:
    from abz_dask.cube_build.reproject import check_overlap
    from abz_dask.cube_build.sources import open_source
    from abz_dask.geo.regrid import tile_map, tile_windows

    flags = [int(v) for v in np.atleast_1d(attrs.get("flag_values", []))]
    categorical = bool(flags) or name in _BOOL_LAYERS
    legend = flags or ([0, 1] if name in _BOOL_LAYERS else None)
    src = SourceSpec(files=str(path), band=spec.band, temporal="static",
                     categorical=categorical, legend=legend)
    out = np.full(grid.shape, np.nan)
    with open_source(path, src, name) as r:
        check_overlap(r.geometry, grid, name=name, path=path)
        for t in (w for row in tile_windows(grid, 256) for w in row):
            tm = tile_map(r.geometry, grid, t)

            def check(block: np.ndarray) -> None:
                if legend is not None:
                    from abz_dask.cube_build.validate import check_legend

                    check_legend(block, legend, name=name, path=path)

            out[t.slices] = tm.apply(lambda rows, cols: r.read(rows, cols), mode=categorical,
                                     legend=legend, check=check)
    if categorical:
        return np.nan_to_num(out, nan=0.0).astype(np.int32)
    return out.astype(np.float32)


def _zone_path(spec: ZoneSpec, name: str, root: Path) -> Path:
    """The file of a zone entry, refusing missing files and stores given as zone files."""
    path = Path(spec.file) if Path(spec.file).is_absolute() else root / spec.file
    if not path.exists():
        raise FileNotFoundError(f"zones {name}: file {path} does not exist (zones.{name}.file: "
                                f"{spec.file!r})")
    kind = _store_kind(path)
    if kind == "zarr":
        raise ZoneError(f"zones {name}: file {path} is a Zarr store (zones.{name}.file: "
                        f"{spec.file!r}); a zone entry names a polygon file (shapefile, "
                        "GeoPackage, GeoJSON) or a GeoTIFF; to start from an existing zones "
                        "store set base_zones")
    if kind == "folder":
        raise ZoneError(f"zones {name}: file {path} is a folder (zones.{name}.file: "
                        f"{spec.file!r}); name the polygon file or GeoTIFF in it")
    return path


def _check_vector(path: Path, spec: ZoneSpec, name: str, grid: Grid) -> None:
    """Metadata checks of a vector zone file: features, polygons, attribute, CRS, overlap."""
    import pyogrio

    where = f"zones {name}: {path}"
    lay = "" if spec.layer is None else f" (layer {spec.layer!r})"
    try:
        info = pyogrio.read_info(path, layer=spec.layer, force_total_bounds=True)
    except Exception as e:
        raise ZoneError(f"{where}{lay} cannot be read as a vector file: "
                        f"{type(e).__name__}: {e}") from e
    if int(info.get("features") or 0) == 0:
        raise ZoneError(f"{where}{lay} has no features; a zone file needs polygon features")
    gtype = str(info.get("geometry_type") or "Unknown")
    if not any(gtype.lower().replace(" ", "").startswith(k) for k in _POLYGONAL):
        raise ZoneError(f"{where} holds {gtype} geometries, no polygons (geometry_type "
                        f"{gtype!r}); a zone file needs polygon features")
    fields = [str(f) for f in info.get("fields", [])]
    if spec.attribute is not None and spec.attribute not in fields:
        raise ZoneError(f"{where} has no attribute {spec.attribute!r} (zones.{name}.attribute: "
                        f"{spec.attribute!r}; the layer's fields are {fields})")
    if not info.get("crs"):
        raise CRSError(f"{where}: the vector layer has no CRS (.prj / srs); cannot place it on "
                       "the grid")
    crs = CRS.from_user_input(info["crs"])
    b = info.get("total_bounds")
    if b is None or not np.all(np.isfinite(np.asarray(b, float))):
        return
    tr = Transformer.from_crs(crs, grid.crs, always_xy=True)
    x0, y0, x1, y1 = (float(v) for v in b)
    ex = np.concatenate([np.linspace(x0, x1, 101)] * 2 + [np.full(101, x0), np.full(101, x1)])
    ey = np.concatenate([np.full(101, y0), np.full(101, y1)] + [np.linspace(y0, y1, 101)] * 2)
    gx, gy = (np.asarray(a) for a in tr.transform(ex, ey))
    inside = np.isfinite(gx) & np.isfinite(gy)
    hw = grid.half_width
    if crs.is_geographic:  # a lon/lat box reaching the grid's latitudes overlaps it
        hit = y1 >= grid.south - 1.0
    else:  # the projected outline of the bounds against the grid's square
        hit = bool(inside.any()) and bool(
            gx[inside].min() <= hw and gx[inside].max() >= -hw
            and gy[inside].min() <= hw and gy[inside].max() >= -hw)
    if not hit:
        bounds = tuple(round(v, 3) for v in (x0, y0, x1, y1))
        raise ExtentError(f"{where} ({crs.name}, bounds {bounds}) does not overlap the "
                          f"{grid.name} grid north of {grid.south:g}N; wrong CRS or extent?")


def check_user_zones(config: BuildConfig, root: Path, grid: Grid) -> None:
    """Check the zone sources of a configuration before anything is written.

    Every ``zones`` entry: the file exists and is a polygon file or raster (not a folder or
    Zarr store); a vector file holds polygon features, the ``attribute`` is one of its fields,
    it has a CRS and its bounds overlap the grid; a raster opens, has a CRS and overlaps the
    grid. ``base_zones`` must be a zones store (:func:`check_zone_store`).

    Parameters
    ----------
    config : BuildConfig
        The configuration.
    root : Path
        Folder relative paths are resolved from.
    grid : Grid
        The cube's grid.

    Raises
    ------
    FileNotFoundError, ZoneError, CRSError, ExtentError
        Naming the layer, the file, the setting and its value.
    """
    from abz_dask.cube_build.reproject import check_overlap
    from abz_dask.cube_build.sources import open_source

    if config.base_zones:
        bz = Path(config.base_zones)
        open_zone_store(bz if bz.is_absolute() else root / bz, "base_zones")
    for name, spec in config.zones.items():
        if spec.method == "fraction" and name not in FRACTION_LAYERS:
            raise ZoneError(f"zones {name}: method fraction applies to {FRACTION_LAYERS} only "
                            f"(zones.{name}.method: {spec.method!r})")
        path = _zone_path(spec, name, root)
        if path.suffix.lower() in _VECTOR_SUFFIXES:
            _check_vector(path, spec, name, grid)
        else:
            src = SourceSpec(files=str(path), band=spec.band, temporal="static")
            with open_source(path, src, f"zones {name}") as r:
                check_overlap(r.geometry, grid, name=f"zones {name}", path=path)


def user_zone_layer(spec: ZoneSpec, name: str, grid: Grid, root: Path,
                    attrs: dict[str, Any] | None = None) -> np.ndarray:
    """One zone layer on the grid from a user's vector or raster file.

    Parameters
    ----------
    spec : ZoneSpec
        The layer's configuration.
    name : str
        Layer name (``biome``, ``abz``, ``land_fraction``, ...).
    grid : Grid
        Target grid.
    root : Path
        Folder a relative ``file`` is resolved from.
    attrs : dict, optional
        Attributes of the layer being replaced (``flag_values`` / ``flag_meanings``).

    Returns
    -------
    ndarray
        ``grid.shape``.
    """
    path = _zone_path(spec, name, root)
    attrs = attrs or {}
    if spec.method == "fraction" and name not in FRACTION_LAYERS:
        raise ValueError(f"zones {name}: method fraction applies to {FRACTION_LAYERS} only")
    if path.suffix.lower() not in _VECTOR_SUFFIXES:
        return _raster_layer(path, spec, name, grid, attrs)
    geoms, values, crs = read_polygons(path, layer=spec.layer, attribute=spec.attribute)
    codes = [1] * len(values) if spec.attribute is None else _codes(values, spec, name, attrs,
                                                                      path)
    proj = _project(geoms, crs, grid)
    lay = rasterize_polygons(proj, codes, grid, method=spec.method,
                             supersample=spec.supersample)
    if not np.any(lay):
        raise ExtentError(f"zones {name}: no polygon of {path} covers a cell centre of the "
                          f"{grid.name} grid; wrong CRS or extent?")
    return lay


def clip_subdomains(zones: xr.Dataset) -> xr.Dataset:
    """The sub-domain layers (``biome``: tundra / boreal, ``permafrost``) set to 0 outside the
    ``abz`` domain, so a user's domain is never exceeded by its sub-domains.

    The outside area removed from each layer is recorded in its attributes
    (``clipped_to_abz_cells``).
    """
    inside = zones["abz"].astype(bool)
    out = zones.copy()
    for name in ("biome", "permafrost"):
        if name not in zones:
            continue
        lay = zones[name]
        outside = int(((lay != 0) & ~inside).sum())
        out[name] = lay.where(inside, 0).astype(lay.dtype)
        out[name].attrs = {**lay.attrs, "clipped_to_abz_cells": outside}
    return out


def write_user_zones(config: BuildConfig, root: Path, out: str | Path, *,
                     overwrite: bool = False) -> Path:
    """Write the zones store: the base layers with the configured user layers replaced.

    Parameters
    ----------
    config : BuildConfig
        With a ``zones`` section (and optionally ``base_zones``).
    root : Path
        Folder relative paths are resolved from.
    out : path
        Zarr v3 store to write (atomically, via ``<out>.tmp``).
    overwrite : bool
        Replace an existing store.

    Returns
    -------
    Path
    """
    import json

    from abz_dask.geo.zones import build_zones

    out = Path(out)
    token = json.dumps({"grid": str(config.grid), "base_zones": config.base_zones,
                        "subdomains": config.subdomains,
                        "zones": {n: z.model_dump(mode="json")
                                  for n, z in sorted(config.zones.items())}}, sort_keys=True)
    if out.exists() and not overwrite:
        try:
            done = xr.open_zarr(out, consolidated=False).attrs.get("user_zones_config")
        except Exception:
            done = None
        if done == token:  # finished by an earlier run with the same settings
            return out
        raise FileExistsError(f"{out} exists (other zone settings); remove it or pass overwrite")
    grid = Grid.from_preset(config.grid)
    if config.base_zones:
        bz = Path(config.base_zones)
        base = open_zone_store(bz if bz.is_absolute() else root / bz, "base_zones")
    else:
        base = build_zones(grid)
    zones = base.load()
    for name, spec in config.zones.items():
        attrs = dict(zones[name].attrs) if name in zones else {}
        lay = user_zone_layer(spec, name, grid, root, attrs)
        zones = replace_zone(zones, name, lay, source=str(spec.file))
    if "abz" in config.zones and config.subdomains == "clip":
        zones = clip_subdomains(zones)
    for v in zones.variables.values():
        v.encoding = {}
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    zones.attrs["user_zones"] = ", ".join(f"{n}={s.file}" for n, s in config.zones.items())
    zones.attrs["user_zones_config"] = token
    zones.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out
