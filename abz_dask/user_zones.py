"""Zone layers from users' polygons or categorical rasters, replacing the built-in proxies.

A zone source is a vector file (shapefile, GeoPackage, GeoJSON — read with pyogrio) whose
features carry an attribute naming the zone, or a raster (GeoTIFF / NetCDF). It is rasterised to
the grid and replaces the layer of the same name (:func:`abz_dask.zones.replace_zone`):

- **cell-centre rule** (``method: centre``, the default): a cell takes the code of the polygon
  that contains its centre (later features win where polygons overlap); cells outside every
  polygon get 0 (``outside_abz`` / ``none``; ``False`` for ``abz``/``permafrost``);
- **fractional coverage** (``method: fraction``, for ``land_fraction``, ``lake_fraction``,
  ``ice_fraction``): each cell is split into ``supersample²`` sub-cells and the covered share is
  the layer value;
- rasters are resampled like the predictors (:mod:`abz_dask.cube_build.reproject`): mode for
  categorical layers, area-weighted average for fractions and elevation.

Attribute values map to codes through ``values`` in the configuration, else through the layer's
CF ``flag_meanings`` (case-insensitive, spaces and dashes read as ``_``, e.g. ``"Tundra"`` → 1
for ``biome``; :data:`abz_dask.zones.REGION_ALIASES` apply), else as integer codes. A value that
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
from affine import Affine
from pyproj import CRS, Transformer

from abz_dask.cube_build.config import BuildConfig, SourceSpec, ZoneSpec
from abz_dask.cube_build.validate import CRSError, ExtentError, LegendError
from abz_dask.grid import Grid
from abz_dask.zones import REGION_ALIASES, replace_zone

__all__ = ["FRACTION_LAYERS", "rasterize_polygons", "read_polygons", "user_zone_layer",
           "write_user_zones"]

#: Layers that may be built by fractional coverage.
FRACTION_LAYERS: tuple[str, ...] = ("land_fraction", "lake_fraction", "ice_fraction")
_BOOL_LAYERS = ("abz", "permafrost")
_VECTOR_SUFFIXES = (".shp", ".gpkg", ".geojson", ".json", ".fgb", ".gml", ".kml")
_BLOCK_PIXELS = 1 << 24


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

    meta, _, wkb, fields = pyogrio.raw.read(path, layer=layer)
    if not meta.get("crs"):
        raise CRSError(f"{path}: the vector layer has no CRS (.prj / srs); cannot place it on "
                       "the grid")
    names = list(meta["fields"])
    values: list[Any]
    if attribute is None:
        values = [1] * len(wkb)
    elif attribute not in names:
        raise ValueError(f"{path}: no attribute {attribute!r} (fields: {names})")
    else:
        values = list(fields[names.index(attribute)])
    geoms = list(shapely.from_wkb(wkb))
    return geoms, values, CRS.from_user_input(meta["crs"])


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
    res, hw = grid.resolution, grid.half_width
    k = supersample if method == "fraction" else 1
    rows = max(1, _BLOCK_PIXELS // (nx * k * k))
    out = np.zeros(grid.shape, np.float32 if method == "fraction" else np.int32)
    shapes = [(g, int(c)) for g, c in zip(geoms, codes, strict=True) if not g.is_empty]
    if method == "fraction":
        shapes = [(g, 1) for g, _ in shapes]
    for r0 in range(0, ny, rows):
        r1 = min(ny, r0 + rows)
        tr = Affine(res / k, 0.0, -hw, 0.0, -res / k, hw - r0 * res)
        if not shapes:
            continue
        burn = rasterize(shapes, out_shape=((r1 - r0) * k, nx * k), transform=tr, fill=0,
                         dtype="int32")
        if method == "fraction":
            out[r0:r1] = burn.reshape(r1 - r0, k, nx, k).mean(axis=(1, 3))
        else:
            out[r0:r1] = burn
    return out


def _raster_layer(path: Path, spec: ZoneSpec, name: str, grid: Grid, attrs: dict[str, Any]
                  ) -> np.ndarray:
    from abz_dask.cube_build.reproject import check_overlap, tile_map
    from abz_dask.cube_build.sources import open_source
    from abz_dask.store import iter_tiles

    flags = [int(v) for v in np.atleast_1d(attrs.get("flag_values", []))]
    categorical = bool(flags) or name in _BOOL_LAYERS
    legend = flags or ([0, 1] if name in _BOOL_LAYERS else None)
    src = SourceSpec(files=str(path), band=spec.band, temporal="static",
                     categorical=categorical, legend=legend)
    out = np.full(grid.shape, np.nan)
    with open_source(path, src, name) as r:
        check_overlap(r.geometry, grid, name=name, path=path)
        for t in iter_tiles(grid.shape, 256):
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
    path = Path(spec.file) if Path(spec.file).is_absolute() else root / spec.file
    if not path.exists():
        raise FileNotFoundError(f"zones {name}: {path} does not exist")
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

    from abz_dask.zones import build_zones

    out = Path(out)
    token = json.dumps({"grid": str(config.grid), "base_zones": config.base_zones,
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
        base = xr.open_zarr(bz if bz.is_absolute() else root / bz, consolidated=False)
    else:
        base = build_zones(grid)
    zones = base.load()
    for name, spec in config.zones.items():
        attrs = dict(zones[name].attrs) if name in zones else {}
        lay = user_zone_layer(spec, name, grid, root, attrs)
        zones = replace_zone(zones, name, lay, source=str(spec.file))
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
