"""Zarr v3 stores: creating a store from a lazy template, region writes by tile, and a ledger of
finished tiles that makes every tile-parallel stage resumable.

A stage creates its store once (metadata only, ``compute=False``), then each task writes whole
chunks of one tile with plain zarr slicing and records the tile in the ledger *after* its data is
written. A killed run, restarted, skips the tiles in the ledger and recomputes only the rest; since
every tile is a pure function of the inputs and the seed, the result is bit-identical.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import xarray as xr
import zarr
import zarr.abc.store

from abz_dask import __version__
from abz_dask.io.location import Location, as_path, remove, url, write_atomic
from abz_dask.io.ownership import check_replaceable, is_abz_store, remove_created

__all__ = ["Tile", "TileLedger", "create_store", "extend_store", "iter_tiles", "prefix_length",
           "provenance", "write_region"]


@dataclass(frozen=True)
class Tile:
    """A spatial window ``[row0:row1, col0:col1]`` of a grid."""

    row0: int
    row1: int
    col0: int
    col1: int

    @property
    def key(self) -> str:
        """Stable identifier used by the ledger."""
        return f"r{self.row0}_c{self.col0}"

    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)`` of the tile."""
        return (self.row1 - self.row0, self.col1 - self.col0)

    @property
    def slices(self) -> tuple[slice, slice]:
        """Row and column slices."""
        return slice(self.row0, self.row1), slice(self.col0, self.col1)


def iter_tiles(shape: tuple[int, int], tile: int) -> Iterator[Tile]:
    """Tiles of ``tile × tile`` cells (smaller at the edges) covering ``shape``, row-major."""
    ny, nx = shape
    for r in range(0, ny, tile):
        for c in range(0, nx, tile):
            yield Tile(r, min(r + tile, ny), c, min(c + tile, nx))


class TileLedger:
    """Marker files recording which tiles of a store are completely written."""

    def __init__(self, store: str | os.PathLike[str] | Location):
        store = as_path(store)
        self.dir = store.with_name(store.name + ".done")

    def done(self, tile: Tile) -> bool:
        """Whether ``tile`` was finished by an earlier task."""
        return (self.dir / tile.key).exists()

    def mark(self, tile: Tile, info: dict[str, Any] | None = None) -> None:
        """Record ``tile`` as finished (atomic rename of a small JSON file)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.dir / tile.key, json.dumps(info or {}))

    def read(self, tile: Tile) -> dict[str, Any]:
        """The info saved with a finished tile."""
        return json.loads((self.dir / tile.key).read_text())

    def count(self) -> int:
        """Number of finished tiles."""
        return len([p for p in self.dir.glob("*") if not p.name.startswith(".")]) \
            if self.dir.exists() else 0

    def clear(self) -> None:
        """Forget every finished tile (the store's tiles are to be written again)."""
        remove(self.dir)


def provenance(**extra: Any) -> dict[str, Any]:
    """Provenance attributes attached to every store."""
    return {"abz_dask_version": __version__, **{k: _jsonable(v) for k, v in extra.items()}}


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True, default=str)
    if isinstance(v, np.generic):
        return v.item()
    return v


def create_store(template: xr.Dataset, path: str | os.PathLike[str] | Location, *,
                 overwrite: bool = False, check_attrs: tuple[str, ...] = (),
                 replace_mismatch: bool = False) -> bool:
    """Write the metadata (and coordinates) of ``template`` to a new Zarr v3 store.

    ``template`` must hold lazy (dask) data variables; their chunks become the store chunks.
    Returns False if a complete store with the same variables, sizes and ``check_attrs`` values
    already exists (resume), True when a new store was created. An existing store is replaced
    only if abz_dask wrote it (its root attributes carry ``abz_dask_version``): with
    ``overwrite``, when its metadata is damaged (a run killed while creating it), or when its
    settings differ and ``replace_mismatch`` is set (an unfinished temporary store).

    Raises
    ------
    ForeignPathError
        ``path`` exists and is not an abz_dask store (nothing is deleted or written).
    FileExistsError
        An abz_dask store with other variables, sizes or settings exists (and neither
        ``overwrite`` nor ``replace_mismatch`` is set).
    """
    path = as_path(path)
    check_replaceable(path)
    if path.exists() and is_abz_store(path) and not overwrite:
        try:
            existing = xr.open_zarr(url(path), consolidated=False)
        except Exception:  # our store, killed before its metadata was complete: start again
            existing = None
        if existing is not None:
            same = set(template.data_vars) <= set(existing.variables) and all(
                existing.sizes.get(d) == n for d, n in template.sizes.items()) and all(
                existing.attrs.get(k) == template.attrs.get(k) for k in check_attrs)
            if same:
                return False
            if not replace_mismatch:
                raise FileExistsError(f"{path} exists with other variables, sizes or settings; "
                                      "remove it or pass overwrite=True")
    remove_created(path)
    encoding = {}
    for name, var in template.data_vars.items():
        enc: dict[str, Any] = {"chunks": tuple(c[0] for c in var.chunks)} if var.chunks else {}
        if np.issubdtype(var.dtype, np.floating):
            enc["_FillValue"] = np.nan
        encoding[name] = enc
    # text labels as Zarr v3 variable-length UTF-8 (fixed-length UTF-32 has no v3 spec yet)
    text = {k: v.astype(object) for k, v in template.coords.items() if v.dtype.kind == "U"}
    template = template.assign_coords(text)
    template.attrs = {**provenance(), **template.attrs}
    # claim the path first (root attributes name the package), then add the arrays: a run
    # killed at any point leaves a store the next run recognises as its own
    zarr.open_group(str(path), mode="w", zarr_format=3, attributes=provenance())
    template.to_zarr(url(path), mode="a", compute=False, encoding=encoding, zarr_format=3,
                     consolidated=False)
    return True


def write_region(path: str | os.PathLike[str], name: str, data: np.ndarray,
                 index: tuple[slice, ...]) -> None:
    """Write ``data`` into variable ``name`` of the store at ``index`` (chunk-aligned)."""
    arr = zarr.open_array(url(as_path(path) / name), mode="r+")
    arr[index] = data


def _dims(arr: Any) -> tuple[str, ...]:
    return tuple(arr.metadata.dimension_names or ())


def _decoded_time(group: zarr.Group, dim: str) -> np.ndarray:
    """The values of coordinate ``dim`` of a store group, decoded like xarray does (CF
    datetimes by their ``units`` and ``calendar``)."""
    arr = cast("zarr.Array[Any]", group[dim])  # a coordinate: an array, not a group
    raw = np.asarray(arr[:])
    units = arr.attrs.get("units")
    if isinstance(units, str) and " since " in units:
        calendar = cast("str | None", arr.attrs.get("calendar", "proleptic_gregorian"))
        return np.asarray(xr.coding.times.decode_cf_datetime(raw, units, calendar))
    return raw


def prefix_length(store: Any, template: xr.Dataset, grow: tuple[str, ...] = ("time", "year"),
                  *, check_attrs: tuple[str, ...] = ()) -> int | None:
    """Length of dimension ``grow[0]`` of an existing store that ``template`` extends: the
    store has the template's variables with the same dimensions, the same sizes
    along every dimension but those of ``grow``, the same ``check_attrs``, and its coordinate
    values along each ``grow`` dimension equal the template's first ones. ``None`` when it
    does not (or is absent or unreadable), or has as many as the template already.

    ``store`` is a location (plain Zarr) or a Zarr store object (an Icechunk session's)."""
    try:
        group = zarr.open_group(store if isinstance(store, zarr.abc.store.Store)
                                else url(store), mode="r")
        if any(group.attrs.get(k) != _jsonable(template.attrs.get(k)) for k in check_attrs):
            return None
        names = {str(n) for n in template.data_vars}
        if not names <= set(group.array_keys()):
            return None
        for name in names:
            arr, var = cast("zarr.Array[Any]", group[name]), template[name]  # an array key
            if _dims(arr) != var.dims:
                return None
            for d, have in zip(var.dims, arr.shape, strict=True):
                if d not in grow and have != template.sizes[d]:
                    return None
        n = None
        for d in grow:
            if d not in template.dims:
                continue
            old = _decoded_time(group, d)
            new = np.asarray(template[d].values)
            if len(old) >= len(new) or not np.array_equal(old, new[:len(old)]):
                return None
            n = len(old) if n is None else n
        return n
    except (KeyError, OSError, ValueError, FileNotFoundError, zarr.errors.BaseZarrError):
        return None


def extend_store(store: Any, template: xr.Dataset, grow: tuple[str, ...] = ("time", "year")
                 ) -> None:
    """Grow an existing store to the template's sizes along the dimensions ``grow``: every
    array with such a dimension is resized (its chunks, values and attributes kept; new
    chunks are empty) and each ``grow`` coordinate gets the template's values, encoded as the
    stored ones (same CF ``units`` and ``calendar``). Idempotent (a killed extension is
    finished by calling it again); the caller checks :func:`prefix_length` first."""
    group = zarr.open_group(store if isinstance(store, zarr.abc.store.Store) else url(store),
                            mode="r+")
    for name, arr in group.arrays():
        dims = _dims(arr)
        if not set(dims) & set(grow):
            continue
        shape = tuple(template.sizes[d] if d in grow else n
                      for d, n in zip(dims, arr.shape, strict=True))
        if shape != arr.shape:
            arr.resize(shape)
        if name in grow:
            arr[:] = _encoded(arr, template[name].values)


def _encoded(arr: Any, values: np.ndarray) -> np.ndarray:
    """``values`` of a coordinate encoded as the stored array ``arr`` holds them."""
    units = arr.attrs.get("units")
    if not (isinstance(units, str) and " since " in units):
        return np.asarray(values, dtype=arr.dtype)
    calendar = arr.attrs.get("calendar", "proleptic_gregorian")
    num, _, _ = xr.coding.times.encode_cf_datetime(values, units, calendar, dtype=arr.dtype)
    back = np.asarray(xr.coding.times.decode_cf_datetime(num, units, calendar))
    if not np.array_equal(back, np.asarray(values)):
        raise ValueError(f"{arr.path}: the new values cannot be stored exactly in {units!r}")
    return np.asarray(num, dtype=arr.dtype)
