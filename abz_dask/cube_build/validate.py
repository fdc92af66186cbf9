"""Errors raised while building a cube, and the value checks applied to every source pixel.

Every error is a :class:`CubeBuildError` (a ``ValueError``) whose message names the predictor,
the file and, where it applies, the variable, month and offending values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["CRSError", "CubeBuildError", "DuplicateTimeError", "ExtentError", "LegendError",
           "MissingFileError", "RangeError", "TimeGapError", "UnitsError", "check_legend",
           "check_range"]


class CubeBuildError(ValueError):
    """Any problem with the sources of a cube."""


class MissingFileError(CubeBuildError):
    """No file for a month (or a year) of the period."""


class CRSError(CubeBuildError):
    """A file has no CRS, or one that cannot be transformed to the grid's."""


class ExtentError(CubeBuildError):
    """A file does not overlap the grid."""


class UnitsError(CubeBuildError):
    """A file declares units other than the catalogue's."""


class RangeError(CubeBuildError):
    """Values outside the declared valid range after scaling."""


class LegendError(CubeBuildError):
    """Categorical codes not in the declared legend."""


class DuplicateTimeError(CubeBuildError):
    """Two time steps with the same timestamp."""


class TimeGapError(CubeBuildError):
    """A time axis that skips steps."""


def check_range(values: np.ndarray, valid: tuple[float, float] | None, *, name: str,
                path: Path | str) -> None:
    """Raise :class:`RangeError` if finite ``values`` leave ``valid`` (after scaling)."""
    if valid is None:
        return
    lo, hi = valid
    fin = np.isfinite(values)
    bad = fin & ((values < lo) | (values > hi))
    if bad.any():
        v = values[bad]
        raise RangeError(f"{name}: {int(bad.sum())} value(s) in {path} outside valid_range "
                         f"[{lo:g}, {hi:g}] after scaling (min {float(v.min()):g}, max "
                         f"{float(v.max()):g}); check scale, offset, nodata and units")


def check_legend(codes: np.ndarray, legend: list[int], *, name: str, path: Path | str) -> None:
    """Raise :class:`LegendError` if ``codes`` hold values not in ``legend``."""
    fin = codes[np.isfinite(codes)]
    if not fin.size:
        return
    found = np.unique(fin)
    bad = np.setdiff1d(found, np.asarray(legend, dtype=float))
    if bad.size:
        show = [int(b) if float(b).is_integer() else float(b) for b in bad[:20]]
        raise LegendError(f"{name}: codes {show} in {path} are not in the declared legend "
                          f"{sorted(legend)} (add them to 'legend' or to 'nodata')")
