"""Finding a predictor's files, their timestamps and georeferencing, and reading windows of them.

- :func:`discover` expands a pattern (``{year}``, ``{month}``, ``{day}``, ``{doy}`` fields and
  ``*`` wildcards) into timestamped :class:`Entry` objects; a multi-time NetCDF gives one entry
  per step of its ``time`` coordinate.
- :func:`open_source` opens a GeoTIFF (rasterio) or NetCDF (xarray, lazily) and returns a
  :class:`Reader` that reads row/column windows of one time step as float64 with every sentinel
  (file nodata / ``_FillValue`` / ``missing_value`` and the configuration's ``nodata``) as NaN and
  the CF ``scale_factor``/``add_offset`` and the configuration's ``scale``/``offset`` applied.

CRS: GeoTIFF tags; in NetCDF the CF ``grid_mapping`` variable (``crs_wkt``, ``spatial_ref`` or
the CF projection parameters), or 1-D ``lon``/``lat`` coordinates (read as EPSG:4326). A file
without any raises :class:`~abz_dask.cube_build.validate.CRSError` unless the configuration sets
``crs``.
"""

from __future__ import annotations

import glob
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from affine import Affine
from pyproj import CRS

from abz_dask.cube_build.config import SourceSpec, same_units
from abz_dask.cube_build.validate import (
    CRSError,
    CubeBuildError,
    DuplicateTimeError,
    MissingFileError,
    ReadError,
    UnitsError,
    check_plausible,
)
from abz_dask.io.location import as_path, filesystem, is_url, local_copy, url
from abz_dask.io.predictors import PREDICTORS

__all__ = ["Entry", "Geometry", "Reader", "discover", "is_netcdf", "open_source"]

_FIELD = re.compile(r"\{(year|month|day|doy)(?::0?(\d)d)?\}")
_NC_SUFFIXES = (".nc", ".nc4", ".netcdf", ".cdf", ".h5")
#: HDF5 chunk cache per open NetCDF variable (bytes).
NC_CHUNK_CACHE_BYTES = 16 * 2**20
#: The HDF5 / netCDF-C libraries are not thread-safe: every NetCDF open, read and close of this
#: module holds this lock (tile tasks run in threads).
NC_LOCK = threading.RLock()
#: Rows read by :meth:`Reader.sample` (evenly spaced over the file).
SAMPLE_ROWS = 16
#: Columns kept per sampled row at most (evenly spaced).
SAMPLE_COLS = 4096
_UNITS = {p.name: p.units for p in PREDICTORS}


def _why(e: BaseException) -> str:
    msg = str(e).strip() or type(e).__name__
    return f"{type(e).__name__}: {msg}" if type(e).__name__ not in msg else msg


def _not_a_file(path: Path, name: str, what: str) -> None:
    """Raise a clean error for a path that is not a readable file of kind ``what``."""
    if not path.exists():
        raise MissingFileError(f"{name}: {path} does not exist")
    if path.is_dir():
        kind = " (a Zarr store)" if (path / "zarr.json").exists() or (
            path / ".zgroup").exists() else ""
        raise ReadError(f"{name}: {path} is a folder{kind}, not a {what} file")


@dataclass(frozen=True)
class Entry:
    """One time step of a source: a file and, for multi-time NetCDF, the index along time."""

    path: Path
    time: pd.Timestamp | None
    index: int | None = None


@dataclass(frozen=True)
class Geometry:
    """Georeferencing of a source raster."""

    crs_wkt: str
    transform: Affine
    shape: tuple[int, int]

    @property
    def crs(self) -> CRS:
        """The CRS."""
        return CRS.from_wkt(self.crs_wkt)

    @property
    def key(self) -> tuple[Any, ...]:
        """Hashable identity (entries with the same key share a tile mapping)."""
        return (self.crs_wkt, tuple(self.transform)[:6], self.shape)


def is_netcdf(path: Path) -> bool:
    """Whether ``path`` is read as NetCDF (by suffix)."""
    return path.suffix.lower() in _NC_SUFFIXES


def _pattern_regex(pattern: str) -> tuple[str, re.Pattern[str], list[str]]:
    fields: list[str] = []
    rx = ""
    pos = 0
    for m in _FIELD.finditer(pattern):
        rx += re.escape(pattern[pos:m.start()]).replace(r"\*", ".*").replace(r"\?", ".")
        width = m.group(2)
        name = m.group(1)
        if name in fields:
            rx += f"(?P={name})"
        else:
            n = int(width) if width else {"year": 4}.get(name)
            rx += f"(?P<{name}>\\d{{{n}}})" if n else f"(?P<{name}>\\d+)"
            fields.append(name)
        pos = m.end()
    rx += re.escape(pattern[pos:]).replace(r"\*", ".*").replace(r"\?", ".")
    globpat = _FIELD.sub("*", pattern)
    return globpat, re.compile(rx + r"\Z"), fields


def _stamp(groups: dict[str, str], fields: list[str], path: str) -> pd.Timestamp:
    y = int(groups["year"])
    if "doy" in fields:
        return pd.Timestamp(y, 1, 1) + pd.Timedelta(days=int(groups["doy"]) - 1)
    m = int(groups.get("month", 1))
    d = int(groups.get("day", 1))
    try:
        return pd.Timestamp(y, m, d)
    except ValueError as e:
        raise CubeBuildError(f"{path}: file name gives an impossible date {groups}") from e


def _glob(pattern: str) -> list[str]:
    """File names matching a glob pattern: on a local disk, or on object storage (a URL
    pattern; the names keep the URL's scheme)."""
    if not is_url(pattern):
        return glob.glob(pattern)
    fs, path = filesystem(pattern)
    scheme = pattern.split("://", 1)[0]
    fs.invalidate_cache()
    return [f"{scheme}://{name}" for name in fs.glob(re.sub(r"\*+", "*", path))]


def discover(spec: SourceSpec, root: Path, name: str) -> list[Entry]:
    """All time steps of a predictor's source, sorted by time.

    Parameters
    ----------
    spec : SourceSpec
        The predictor's configuration.
    root : Path
        Folder relative patterns are resolved from.
    name : str
        Predictor (for messages).

    Returns
    -------
    list of Entry
        ``time`` is None for static layers.

    Raises
    ------
    MissingFileError
        No file matches the pattern.
    DuplicateTimeError
        Two files (or two NetCDF steps) with the same timestamp.
    """
    if spec.files is None:
        raise ValueError(f"{name}: a constant 'value' has no files to discover")
    pattern = (spec.files if is_url(spec.files) or Path(spec.files).is_absolute()
               else url(as_path(root) / spec.files))
    globpat, rx, fields = _pattern_regex(pattern)
    paths = sorted(_glob(globpat))
    if not paths:
        raise MissingFileError(f"{name}: no file matches {pattern!r}")
    if fields and "year" not in fields:
        raise ValueError(f"{name}: a pattern with time fields needs {{year}} ({pattern!r})")
    entries: list[Entry] = []
    for p in paths:
        path = as_path(p)
        if fields:
            m = rx.match(p)
            if m is None:
                continue
            entries.append(Entry(path, _stamp(m.groupdict(), fields, p)))
        elif spec.temporal == "static" or spec.temporal == "series":
            entries.append(Entry(path, None))
        elif is_netcdf(path):
            for i, t in enumerate(_nc_times(path, spec, name)):
                entries.append(Entry(path, t, i))
        else:
            raise MissingFileError(f"{name}: {path} has no time in its name and is not a "
                                   "NetCDF file with a time axis; use {year}/{month} fields")
    if not entries:
        raise MissingFileError(f"{name}: no file name matches {pattern!r}")
    if spec.temporal in ("static", "series"):
        if len(entries) > 1:
            raise DuplicateTimeError(f"{name}: a {spec.temporal} layer needs one file, "
                                     f"{pattern!r} matches {len(entries)}")
        return entries
    entries.sort(key=lambda e: (e.time, str(e.path)))
    stamps = pd.DatetimeIndex([e.time for e in entries])
    if spec.temporal == "annual":
        stamps = pd.DatetimeIndex([pd.Timestamp(t.year, 1, 1) for t in stamps])
    elif spec.temporal == "monthly":
        stamps = pd.DatetimeIndex([pd.Timestamp(t.year, t.month, 1) for t in stamps])
    dup = stamps.duplicated(keep=False)
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        j = int(np.flatnonzero(dup & (stamps == stamps[i]))[1])
        a, b = entries[i], entries[j]
        where = (f"{a.path} (step {a.index}) and {b.path} (step {b.index})"
                 if a.index is not None else f"{a.path} and {b.path}")
        raise DuplicateTimeError(f"{name}: duplicated timestamp {stamps[i].date()} "
                                 f"({spec.temporal}) in {where}")
    return entries


def _nc_times(path: Path, spec: SourceSpec, name: str) -> list[pd.Timestamp]:
    import xarray as xr

    _not_a_file(path, name, "NetCDF")
    try:
        with NC_LOCK:
            opened = xr.open_dataset(local_copy(path), engine="netcdf4", mask_and_scale=False,
                                     lock=False)
    except Exception as e:
        raise ReadError(f"{name}: {path} cannot be opened as NetCDF (truncated, corrupt or "
                        f"another format?): {_why(e)}") from e
    with NC_LOCK, opened as ds:
        var = _nc_variable(ds, spec, name, path)
        tdim = [d for d in ds[var].dims if d not in ds[var].dims[-2:]]
        if not tdim:
            raise MissingFileError(f"{name}: {path} has no time dimension (one file per time "
                                   "step needs {year}/{month} fields in the pattern)")
        t = ds[tdim[0]].values
        return [pd.Timestamp(v) for v in np.asarray(t)]


def _nc_variable(ds: Any, spec: SourceSpec, name: str, path: Path) -> str:
    if spec.variable is not None:
        if spec.variable not in ds.data_vars:
            raise CubeBuildError(f"{name}: {path} has no variable {spec.variable!r} "
                                 f"(variable: {spec.variable!r}; the file holds "
                                 f"{sorted(map(str, ds.data_vars))})")
        return spec.variable
    cand = [str(v) for v in ds.data_vars if ds[v].ndim >= 2]
    if len(cand) != 1:
        raise CubeBuildError(f"{name}: {path} holds {len(cand)} variables with two spatial "
                             f"dimensions ({cand}); set 'variable' to one of them")
    return cand[0]


class Reader:
    """Reads windows of one source file; use as a context manager."""

    geometry: Geometry
    path: Path
    variable: str
    units: str | None = None  # as the file declares them
    _nc: Any = None  # the xarray Dataset of a NetCDF source

    def __init__(self, path: Path, spec: SourceSpec, name: str):
        self.path = path
        self.spec = spec
        self.name = name
        self.sentinels = [float(v) for v in spec.nodata]
        self.file_scale = 1.0
        self.file_offset = 0.0
        self.plausible_units = _UNITS.get(name) if spec.valid_range is None else None
        _not_a_file(path, name, "NetCDF" if is_netcdf(path) else "GeoTIFF")
        if is_netcdf(path):
            self._open_nc()
        else:
            if spec.variable is not None:
                raise CubeBuildError(f"{name}: {path} is read as a GeoTIFF, which has bands, "
                                     f"not named variables (variable: {spec.variable!r}); "
                                     "use 'band', or give a NetCDF file (.nc)")
            self._open_tif()
        if (self.file_scale != 1.0 or self.file_offset != 0.0) and (
                spec.scale != 1.0 or spec.offset != 0.0):
            raise ValueError(f"{name}: {path} variable {self.variable!r} carries CF "
                             "scale_factor/add_offset; do not also set scale/offset")

    # -- GeoTIFF
    def _open_tif(self) -> None:
        import rasterio

        self.variable = f"band {self.spec.band}"
        try:
            self._ds = rasterio.open(local_copy(self.path))
        except Exception as e:
            raise ReadError(f"{self.name}: {self.path} cannot be opened as a GeoTIFF "
                            f"(truncated, corrupt or another format?): {_why(e)}") from e
        if self.spec.band > self._ds.count:
            raise ValueError(f"{self.name}: {self.path} has {self._ds.count} band(s), "
                             f"band {self.spec.band} requested")
        crs = self._ds.crs
        wkt = crs.to_wkt() if crs is not None else self._override_crs()
        self.geometry = Geometry(wkt, self._ds.transform, (self._ds.height, self._ds.width))
        if self._ds.nodata is not None:
            self.sentinels.append(float(self._ds.nodata))
        scales = self._ds.scales[self.spec.band - 1]
        offsets = self._ds.offsets[self.spec.band - 1]
        self.file_scale, self.file_offset = float(scales or 1.0), float(offsets or 0.0)
        self.units = self._ds.units[self.spec.band - 1] or None

    def _override_crs(self) -> str:
        if self.spec.crs is None:
            raise CRSError(f"{self.name}: {self.path} ({self.variable}) has no CRS (no GeoTIFF "
                           "georeferencing tags / no CF grid_mapping); set 'crs' in the "
                           "configuration if you know it")
        try:
            return str(CRS.from_user_input(self.spec.crs).to_wkt())
        except Exception as e:
            raise CRSError(f"{self.name}: crs {self.spec.crs!r} is not a valid CRS") from e

    # -- NetCDF
    def _open_nc(self) -> None:
        import netCDF4
        import xarray as xr

        # HDF5 chunk cache of files opened from now on (process-wide setting): bounded, so
        # memory does not grow with the size of the file
        with NC_LOCK:
            netCDF4.set_chunk_cache(NC_CHUNK_CACHE_BYTES)
            try:
                ds = xr.open_dataset(local_copy(self.path), engine="netcdf4", mask_and_scale=False,
                                     decode_times=False, cache=False, lock=False)
            except Exception as e:
                self.variable = str(self.spec.variable)
                raise ReadError(f"{self.name}: {self.path} cannot be opened as NetCDF "
                                f"(truncated, corrupt or another format?): {_why(e)}") from e
        self._nc = ds
        self.variable = _nc_variable(ds, self.spec, self.name, self.path)
        var = ds[self.variable]
        ydim, xdim = (str(d) for d in var.dims[-2:])
        if xdim not in ds.coords or ydim not in ds.coords:
            raise CRSError(f"{self.name}: {self.path} variable {self.variable!r} has no "
                           f"coordinate variables for {ydim!r}/{xdim!r}")
        x = np.asarray(ds[xdim].values, float)
        y = np.asarray(ds[ydim].values, float)
        for c, v in ((xdim, x), (ydim, y)):
            d = np.diff(v)
            if v.size < 2 or not np.allclose(d, d[0], rtol=1e-6, atol=0):
                raise CRSError(f"{self.name}: {self.path} coordinate {c!r} is not regularly "
                               "spaced; cannot georeference the grid")
        dx, dy = x[1] - x[0], y[1] - y[0]
        transform = Affine(dx, 0.0, x[0] - dx / 2, 0.0, dy, y[0] - dy / 2)
        wkt = self._nc_crs(ds, var, xdim)
        self.geometry = Geometry(wkt, transform, (y.size, x.size))
        for k in ("_FillValue", "missing_value"):
            if k in var.attrs:
                self.sentinels.extend(np.atleast_1d(var.attrs[k]).astype(float).tolist())
        self.file_scale = float(var.attrs.get("scale_factor", 1.0))
        self.file_offset = float(var.attrs.get("add_offset", 0.0))
        self.units = var.attrs.get("units")
        self._tdim = list(var.dims[:-2])
        if len(self._tdim) > 1:
            raise ValueError(f"{self.name}: {self.path} variable {self.variable!r} has dims "
                             f"{var.dims}; expected (time, y, x) or (y, x)")
        self._dims = var.dims

    def _nc_crs(self, ds: Any, var: Any, xdim: str) -> str:
        gm = var.attrs.get("grid_mapping")
        if gm is not None:
            if gm not in ds.variables:
                raise CRSError(f"{self.name}: {self.path} variable {self.variable!r} names "
                               f"grid_mapping {gm!r}, which is not in the file")
            attrs = dict(ds[gm].attrs)
            for k in ("crs_wkt", "spatial_ref"):
                if k in attrs:
                    return str(CRS.from_wkt(attrs[k]).to_wkt())
            try:
                return str(CRS.from_cf(attrs).to_wkt())
            except Exception as e:
                raise CRSError(f"{self.name}: {self.path} grid_mapping {gm!r} cannot be read "
                               f"as a CRS ({e})") from e
        xc = ds[xdim]
        lonlike = (xc.attrs.get("standard_name") == "longitude"
                   or str(xc.attrs.get("units", "")).lower().startswith("degree")
                   or xdim.lower() in ("lon", "longitude"))
        if lonlike:
            return str(CRS.from_epsg(4326).to_wkt())
        return self._override_crs()

    # -- common
    def check_units(self, expected: str) -> None:
        """Raise :class:`UnitsError` if the file's units differ from ``expected``."""
        if self.spec.units is not None or not self.units:
            return
        if not same_units(str(self.units), expected):
            raise UnitsError(f"{self.name}: {self.path} variable {self.variable!r} has units "
                             f"{self.units!r}, expected {expected!r}; convert with scale/offset "
                             "and declare 'units' in the configuration")

    def read_raw(self, rows: tuple[int, int], cols: tuple[int, int],
                 index: int | None = None) -> np.ndarray:
        """Raw (undecoded) values of a window.

        Raises
        ------
        ReadError
            The file cannot be read there (truncated or corrupt), naming file, variable,
            window and time step.
        """
        (r0, r1), (c0, c1) = rows, cols
        try:
            if self._nc is None:
                from rasterio.windows import Window

                return self._ds.read(self.spec.band, window=Window(c0, r0, c1 - c0, r1 - r0))
            sel: dict[Any, Any] = {self._dims[-2]: slice(r0, r1), self._dims[-1]: slice(c0, c1)}
            if self._tdim:
                sel[self._tdim[0]] = 0 if index is None else index
            with NC_LOCK:
                return np.asarray(self._nc[self.variable].isel(sel).values)
        except Exception as e:
            step = "" if index is None else f", time step {index}"
            raise ReadError(f"{self.name}: {self.path} {self.variable} cannot be read at rows "
                            f"{r0}:{r1}, columns {c0}:{c1}{step} (truncated or corrupt "
                            f"file?): {_why(e)}") from e

    def decode(self, raw: np.ndarray) -> np.ndarray:
        """Decoded float64 values of raw values (NaN = no data)."""
        out = raw.astype(np.float64)
        for s in self.sentinels:
            out[raw == s if not np.isnan(s) else np.isnan(out)] = np.nan
        spec = self.spec
        with np.errstate(invalid="ignore"):
            if spec.nodata_below is not None:
                out[out < spec.nodata_below] = np.nan
            if spec.nodata_at_or_below is not None:
                out[out <= spec.nodata_at_or_below] = np.nan
        if spec.recode:
            src = out.copy()
            for a, b in spec.recode.items():
                out[src == a] = b
        out = out * self.file_scale + self.file_offset
        return out * self.spec.scale + self.spec.offset

    def where(self, index: int | None = None) -> str:
        """File, time step and variable, for messages."""
        step = "" if index is None else f" (time step {index})"
        return f"{self.path}{step} {self.variable}"

    def read(self, rows: tuple[int, int], cols: tuple[int, int], index: int | None = None
             ) -> np.ndarray:
        """Decoded float64 values of a window (NaN = no data).

        Predictors of :data:`~abz_dask.cube_build.validate.PLAUSIBLE` without a declared
        ``valid_range`` are checked to lie where their catalogue units can be
        (:func:`~abz_dask.cube_build.validate.check_plausible`).
        """
        raw = self.read_raw(rows, cols, index)
        out = self.decode(raw)
        if self.plausible_units is not None:
            check_plausible(out, raw, name=self.name, units=self.plausible_units,
                            path=self.where(index))
        return out

    def sample(self, index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Raw and decoded values of :data:`SAMPLE_ROWS` rows spread over the file.

        Returns
        -------
        raw, values : ndarray
            Flat arrays of the sampled pixels (at most :data:`SAMPLE_COLS` per row).
        """
        ny, nx = self.geometry.shape
        rows = np.unique(np.linspace(0, ny - 1, min(SAMPLE_ROWS, ny)).round().astype(int))
        cols = np.unique(np.linspace(0, nx - 1, min(SAMPLE_COLS, nx)).round().astype(int))
        raw = np.concatenate([self.read_raw((int(r), int(r) + 1), (0, nx), index)[0][cols]
                              for r in rows])
        return raw, self.decode(raw)

    def close(self) -> None:
        """Close the file."""
        if self._nc is None:
            self._ds.close()
        else:
            with NC_LOCK:
                self._nc.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_source(path: Path, spec: SourceSpec, name: str) -> Reader:
    """Open one source file (see :class:`Reader`)."""
    return Reader(path, spec, name)
