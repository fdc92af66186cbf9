"""What abz_dask created, and may therefore replace or delete.

No command ever deletes what it did not create. Every Zarr store the package writes carries
``abz_dask_version`` in its root attributes (:func:`abz_dask.io.store.provenance`); every run folder
holds a marker file :data:`RUN_MARK`. Before a path is replaced, :func:`remove_created` checks
that it is one of these (or an empty folder) and refuses anything else with
:class:`ForeignPathError`, naming the path and what was found in it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from abz_dask.io.location import Location, as_path, remove

__all__ = ["RUN_MARK", "ForeignPathError", "check_replaceable", "claim_folder", "is_abz_store",
           "remove_created"]

RUN_MARK = ".abz-dask-run"
"""Marker file written into every run folder the package creates or adopts."""


class ForeignPathError(FileExistsError):
    """A path the package was asked to write holds something it did not create."""


def is_abz_store(path: str | os.PathLike[str] | Location) -> bool:
    """Whether ``path`` is a Zarr store written by abz_dask (its root attributes carry
    ``abz_dask_version``)."""
    meta = as_path(path) / "zarr.json"
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError):
        return False
    attrs = doc.get("attributes") if isinstance(doc, dict) else None
    return isinstance(attrs, dict) and "abz_dask_version" in attrs


def check_replaceable(path: str | os.PathLike[str] | Location, what: str = "output") -> None:
    """Raise :class:`ForeignPathError` unless ``path`` is absent, an empty folder or an abz_dask
    Zarr store (the only things a store writer may replace)."""
    path = as_path(path)
    if path.exists() and not (path.is_dir() and (is_abz_store(path) or not any(path.iterdir()))):
        raise ForeignPathError(
            f"{what} {path} exists and is not a Zarr store written by abz_dask; refusing to "
            "write into or delete it. Choose another output path")


def _is_run_folder(path: Location) -> bool:
    return (path / RUN_MARK).is_file() or any(path.glob("*.stage.json"))


def _describe(path: Location) -> str:
    names = sorted(p.name for p in path.iterdir())
    shown = ", ".join(names[:5]) + (f", … ({len(names)} entries)" if len(names) > 5 else "")
    return shown


def claim_folder(path: str | os.PathLike[str] | Location, what: str = "run folder") -> Location:
    """Create ``path`` as a run folder, or adopt it if it is empty or already a run folder.

    Raises
    ------
    ForeignPathError
        ``path`` is a file, or a non-empty folder that abz_dask did not create.
    """
    path = as_path(path)
    if path.exists() and not path.is_dir():
        raise ForeignPathError(f"{what} {path} is a file, not a folder; choose another path")
    if path.is_dir() and any(path.iterdir()) and not _is_run_folder(path):
        raise ForeignPathError(
            f"{what} {path} is a non-empty folder that abz_dask did not create "
            f"(holds {_describe(path)}); refusing to write into it. Choose a new or empty "
            "folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        mark = path / RUN_MARK
        if not mark.exists():
            mark.write_text(json.dumps({"created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
    except PermissionError as e:
        raise PermissionError(f"{what} {path} is not writable: {e.strerror}") from None
    except (FileExistsError, NotADirectoryError):
        above = next((p for p in path.parents if p.exists()), None)
        raise ForeignPathError(f"{what} {path} cannot be made: {above} is a file, not a "
                               "folder") from None
    return path


def remove_created(path: str | os.PathLike[str] | Location) -> None:
    """Remove ``path`` (and its ledger beside it) if abz_dask created it.

    Files and empty folders are removed; a folder is removed only when it is an abz_dask Zarr
    store or run folder. Nothing happens when ``path`` does not exist.

    Raises
    ------
    ForeignPathError
        ``path`` is a non-empty folder abz_dask did not create.
    """
    path = as_path(path)
    if (isinstance(path, Path) and path.is_symlink()) or path.is_file():
        path.unlink()
    elif path.is_dir():
        if any(path.iterdir()) and not (is_abz_store(path) or _is_run_folder(path)):
            raise ForeignPathError(
                f"{path} was not created by abz_dask (holds {_describe(path)}); refusing to "
                "delete it. Choose another output path or remove it yourself")
        remove(path)
    ledger = path.with_name(path.name + ".done")
    if ledger.is_dir():
        remove(ledger)
