"""Local paths and object-store URLs behind one path type.

A *location* is a local path (:class:`pathlib.Path`) or an object-store URL (``s3://``,
``gs://``, ``az://``, ``abfs://``, ``memory://``...) held as a :class:`upath.UPath`: both support
``/``, ``.name``, ``.parent``, ``.exists()``, ``.read_text()``, ``.write_text()``, ``.glob()``,
``.mkdir()`` and ``.unlink()``, so the run layout and the stages do path arithmetic once for
both. Libraries that take a file name (pandas, xarray, zarr) get :func:`url` (the string form;
fsspec resolves URLs). Credentials and endpoints come from the usual places (``AWS_*``
environment variables incl. ``AWS_ENDPOINT_URL`` for S3-compatible stores, profiles, the
fsspec/dask configuration); they never appear in a location's string form: a URL carrying
``user:password@`` is refused (:func:`as_path`), and :func:`redact` strips query strings
from messages.

Local locations stay plain :class:`~pathlib.Path` objects, so local runs behave exactly as
before; only the few POSIX-only operations (atomic rename, ``flock``) have object-store
counterparts, here (:func:`write_atomic`, :func:`staging` / :func:`publish`, :func:`remove`) and
in :mod:`abz_dask.io.locks`.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

__all__ = [
    "Location",
    "LocationField",
    "as_path",
    "filesystem",
    "is_url",
    "local_copy",
    "publish",
    "read_bytes",
    "redact",
    "remove",
    "staging",
    "url",
    "write_atomic",
    "write_with",
]

Location = Any
"""A local :class:`~pathlib.Path` or a :class:`upath.UPath` of an object-store URL."""

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_USERINFO = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/@]*:[^/@]*@")


def is_url(x: Any) -> bool:
    """Whether ``x`` names an object-store location (a URL other than ``file://``)."""
    if isinstance(x, Path):
        return False
    m = _SCHEME.match(str(x))
    return m is not None and m.group(1).lower() not in ("file", "local")


def as_path(x: str | os.PathLike[str] | Any) -> Location:
    """``x`` as a location: a :class:`~pathlib.Path` for local paths (``file://`` stripped), a
    :class:`upath.UPath` for URLs (unchanged if it is one already).

    Raises
    ------
    ValueError
        A URL with credentials in it (``scheme://user:secret@...``): pass them through the
        environment or a profile instead, so they never reach logs or records.
    """
    if not is_url(x):
        s = str(x) if not isinstance(x, Path) else x
        if isinstance(s, str) and _SCHEME.match(s):
            s = _SCHEME.sub("", s)
        return Path(s)
    from upath import UPath

    if isinstance(x, UPath):
        return x
    s = str(x)
    if _USERINFO.match(s):
        raise ValueError(f"{redact(s)}: credentials must not be written into a URL; use the "
                         "environment (AWS_ACCESS_KEY_ID, ...), a profile or the dask config")
    return UPath(s)


def url(x: Any) -> str:
    """The string form of a location that pandas, xarray, zarr and fsspec accept."""
    return str(as_path(x))


def redact(text: str) -> str:
    """``text`` with user-info and query strings of URLs removed (signed URLs, tokens)."""
    text = re.sub(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]*@", r"\1", text)
    return re.sub(r"(://[^\s?]*)\?[^\s]*", r"\1", text)


def _validate(v: Any) -> Any:
    return None if v is None else as_path(v)


LocationField = Annotated[Any, BeforeValidator(_validate), PlainSerializer(str, return_type=str)]
"""Pydantic field type of a location (validated by :func:`as_path`, serialised as text)."""


def filesystem(x: Any) -> tuple[Any, str]:
    """The fsspec filesystem of a location and the path within it."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url(x))
    return fs, path


def remove(x: Any) -> None:
    """Remove a file or a folder tree (local) or every object under a prefix (URL)."""
    p = as_path(x)
    if isinstance(p, Path):
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.exists():
            shutil.rmtree(p)
        return
    fs, path = filesystem(p)
    fs.invalidate_cache()
    if fs.exists(path):
        fs.rm(path, recursive=True)
        fs.invalidate_cache()


def write_atomic(path: Any, data: str | bytes) -> None:
    """Write a whole file so that readers see the old or the new content, never a part: a
    temporary file renamed into place on a local disk; one PUT on object storage (atomic)."""
    p = as_path(path)
    raw = data.encode() if isinstance(data, str) else data
    if not isinstance(p, Path):
        p.write_bytes(raw)
        return
    tmp = p.with_name(f"{p.name}.tmp{os.getpid()}")
    tmp.write_bytes(raw)
    os.replace(tmp, p)


def write_with(path: Any, write: Callable[[IO[bytes]], Any]) -> None:
    """:func:`write_atomic` of what ``write(file)`` writes into a binary file object (e.g.
    ``np.savez``, ``skops.io.dump``, ``fig.savefig``); the content is built in memory first."""
    buf = io.BytesIO()
    write(buf)
    write_atomic(path, buf.getvalue())


def read_bytes(path: Any) -> IO[bytes]:
    """The whole content of a file as a binary file object (for readers that take one)."""
    return io.BytesIO(as_path(path).read_bytes())


def staging(path: Any) -> Location:
    """Where to write a folder (a Zarr store, a model bundle) that appears at ``path`` only
    when complete: ``<path>.tmp`` on a local disk, then :func:`publish` renames it. On object
    storage, where a rename is a copy of every object, ``path`` itself: completion is marked
    by what the caller writes last (a stage record, a model card)."""
    p = as_path(path)
    return p.with_name(p.name + ".tmp") if isinstance(p, Path) else p


def publish(path: Any) -> None:
    """Finish a write begun at :func:`staging` ``(path)``."""
    p = as_path(path)
    if isinstance(p, Path):
        tmp = p.with_name(p.name + ".tmp")
        if not tmp.exists():
            raise FileNotFoundError(f"{tmp} does not exist: nothing to finish")
        remove(p)
        os.replace(tmp, p)


def local_copy(path: Any) -> str:
    """A local file name with the content of ``path``: the path itself on a local disk; for
    an object, a copy in the per-user cache (``$ABZ_DASK_CACHE``, else
    ``~/.cache/abz_dask/objects``) keyed by the URL and the object's ETag, so a changed object
    is fetched again and an unchanged one only once per machine. For readers that need a file
    (GDAL through rasterio, netCDF4)."""
    p = as_path(path)
    if isinstance(p, Path):
        return str(p)
    import hashlib

    fs, key = filesystem(p)
    info = fs.info(key)
    tag = str(info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("size"))
    root = Path(os.environ.get("ABZ_DASK_CACHE") or Path.home() / ".cache" / "abz_dask"
                / "objects")
    digest = hashlib.sha256(f"{url(p)}\0{tag}".encode()).hexdigest()[:24]
    dst = root / digest / p.name
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
        fs.get_file(key, str(tmp))
        os.replace(tmp, dst)
    return str(dst)
