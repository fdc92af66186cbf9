"""The one place that sets numba options for every kernel (after numbagg's ``decorators.py``).

Environment variables:

- ``ABZ_NUMBA_CACHE`` (default ``1``): cache compiled kernels on disk (``cache=True``).
- ``ABZ_NUMBA_FASTMATH`` (default ``0``): never on by default — the zyp-exact trend kernels and the
  forest kernel's exact comparisons need IEEE semantics.

Kernels run inside Dask tasks, which already parallelise over chunks, so every kernel is compiled
for ``target="cpu"`` (ANCHORS A.7 #4).

Cached gufuncs are built under an inter-process file lock: numba's gufunc cache has a race
(numba/numba#10128, unfixed in 0.68) in which two processes compiling the same gufuncs at once
write a kernel and its ``guf-`` wrapper that do not match, and the next call segfaults. That is
exactly what a fresh install does when several Dask worker processes import the trend kernels
together. With the lock the first process compiles and writes the cache; the others wait for it
and then load the cache (about 1 s instead of 35 s of compiling).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numba

F = TypeVar("F", bound=Callable[..., Any])

CACHE = os.environ.get("ABZ_NUMBA_CACHE", "1") not in ("0", "false", "False")
FASTMATH = os.environ.get("ABZ_NUMBA_FASTMATH", "0") in ("1", "true", "True")
if FASTMATH:
    warnings.warn("ABZ_NUMBA_FASTMATH=1: kernel results will no longer match their references "
                  "to the last digit", stacklevel=1)

__all__ = ["CACHE", "FASTMATH", "compile_lock", "guvectorize", "njit"]


def njit(*args: Any, **kwargs: Any) -> Any:
    """``numba.njit`` with the package defaults (nopython, cache, fastmath flag)."""
    kwargs.setdefault("cache", CACHE)
    kwargs.setdefault("fastmath", FASTMATH)
    kwargs.setdefault("nogil", True)
    return numba.njit(*args, **kwargs)


def _lock_dir() -> Path:
    """Where the compile lock lives: beside numba's cache (``NUMBA_CACHE_DIR``, else the
    kernels' ``__pycache__`` when writable, else ``~/.cache/abz_dask``), so that processes
    sharing a cache, on one node or on a shared file system, share the lock too."""
    env = os.environ.get("NUMBA_CACHE_DIR")
    if env:
        return Path(env)
    tree = Path(__file__).resolve().parent / "__pycache__"
    if os.access(tree if tree.exists() else tree.parent, os.W_OK):
        return tree
    return Path.home() / ".cache" / "abz_dask"


@contextmanager
def compile_lock() -> Iterator[None]:
    """Hold the package's exclusive inter-process numba compile lock (see the module notes).

    Without ``fcntl`` (Windows), or where the lock file cannot be made or the file system
    refuses locks, runs unlocked.
    """
    fd = None
    try:
        import fcntl

        path = _lock_dir() / "abz_dask-numba.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
    except (ImportError, OSError):  # e.g. ENOLCK on a file system without locks
        pass
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the lock


def guvectorize(signatures: Any, layout: str, **kwargs: Any) -> Callable[[F], F]:
    """``numba.guvectorize`` for the CPU target with the package defaults.

    With explicit signatures numba compiles (or loads the cache) when the decorator is applied;
    a cached gufunc does that under :func:`compile_lock`.
    """
    kwargs.setdefault("cache", CACHE)
    kwargs.setdefault("fastmath", FASTMATH)
    kwargs.setdefault("nopython", True)
    kwargs.setdefault("target", "cpu")
    make = numba.guvectorize(signatures, layout, **kwargs)
    if not kwargs["cache"]:
        return make

    def locked(func: F) -> F:
        with compile_lock():
            return make(func)

    return locked
