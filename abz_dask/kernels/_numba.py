"""The one place that sets numba options for every kernel (after numbagg's ``decorators.py``).

Environment variables:

- ``ABZ_NUMBA_CACHE`` (default ``1``): cache compiled kernels on disk (``cache=True``).
- ``ABZ_NUMBA_FASTMATH`` (default ``0``): never on by default — the zyp-exact trend kernels and the
  forest kernel's exact comparisons need IEEE semantics.

Kernels run inside Dask tasks, which already parallelise over chunks, so every kernel is compiled
for ``target="cpu"`` (ANCHORS A.7 #4).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import numba

F = TypeVar("F", bound=Callable[..., Any])

CACHE = os.environ.get("ABZ_NUMBA_CACHE", "1") not in ("0", "false", "False")
FASTMATH = os.environ.get("ABZ_NUMBA_FASTMATH", "0") in ("1", "true", "True")
if FASTMATH:
    warnings.warn("ABZ_NUMBA_FASTMATH=1: kernel results will no longer match their references "
                  "to the last digit", stacklevel=1)

__all__ = ["CACHE", "FASTMATH", "guvectorize", "njit"]


def njit(*args: Any, **kwargs: Any) -> Any:
    """``numba.njit`` with the package defaults (nopython, cache, fastmath flag)."""
    kwargs.setdefault("cache", CACHE)
    kwargs.setdefault("fastmath", FASTMATH)
    kwargs.setdefault("nogil", True)
    return numba.njit(*args, **kwargs)


def guvectorize(signatures: Any, layout: str, **kwargs: Any) -> Callable[[F], F]:
    """``numba.guvectorize`` for the CPU target with the package defaults."""
    kwargs.setdefault("cache", CACHE)
    kwargs.setdefault("fastmath", FASTMATH)
    kwargs.setdefault("nopython", True)
    kwargs.setdefault("target", "cpu")
    return numba.guvectorize(signatures, layout, **kwargs)
