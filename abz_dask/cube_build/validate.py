"""Errors raised while building a cube, and the value checks applied to every source pixel.

Every error is a :class:`CubeBuildError` (a ``ValueError``) whose message names the predictor,
the file and, where it applies, the variable, month and offending values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["MAX_FIRE_EMISSIONS", "PLAUSIBLE", "SERIES_FORMAT", "CRSError", "CubeBuildError",
           "DuplicateTimeError", "ExtentError", "LegendError", "MissingFileError", "RangeError",
           "ReadError", "SentinelError", "SeriesFormatError", "TimeGapError", "UnitsError",
           "ZoneError", "check_fire_values", "check_legend", "check_plausible", "check_range",
           "check_valid_range_plausible"]

#: Values a predictor can physically take, in its catalogue units
#: (:data:`abz_dask.io.predictors.PREDICTORS`). A decoded source value outside is a wrong unit
#: (kelvin declared as degC, Pa as kPa, percent as a fraction), a missing scale/offset or an
#: undeclared no-data sentinel. Categorical predictors are checked against their legend instead.
PLAUSIBLE: dict[str, tuple[float, float]] = {
    "tair": (-80.0, 60.0),  # degC, monthly means
    "soil_temp": (-80.0, 60.0),  # degC
    "srad": (-10.0, 1400.0),  # W m-2 (the solar constant is 1361)
    "vpd": (-0.1, 15.0),  # kPa
    "snow_cover": (0.0, 1.0),  # fraction
    "soil_moisture": (0.0, 1.0),  # m3 m-3
    "ndvi": (-1.0, 1.0),
    "cti": (-10.0, 60.0),
    "nontree_cover": (0.0, 100.0),  # %
    "nonveg_cover": (0.0, 100.0),  # %
    "tree_cover": (0.0, 100.0),  # %
    "soil_ph": (0.0, 14.0),
    "soc": (0.0, 20000.0),  # t ha-1
    "permafrost_prob": (0.0, 1.0),
    "co2": (150.0, 1000.0),  # ppm
}

#: Largest fire emissions of one time step (g C m⁻², month or year) taken as real: the deepest
#: peat fires burn ≈ 5–10 kg C m⁻²; more is a file in other units than those declared.
MAX_FIRE_EMISSIONS = 20000.0

#: What a ``temporal: series`` file must hold (quoted in the errors about series sources).
SERIES_FORMAT = ("a series source is a CSV text file (not a raster) holding one spatially "
                 "constant value per month: a header line and two columns, 'time' (YYYY-MM or "
                 "a date) and 'value' (in the catalogue's units, e.g. ppm for co2), one row per "
                 "month of the period, e.g. 'time,value' / '2001-01,370.5' / '2001-02,371.2'")


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


class ReadError(CubeBuildError):
    """A file that cannot be opened or read (truncated, corrupt, or not of its format)."""


class SentinelError(RangeError):
    """A raw value that looks like an undeclared no-data sentinel."""


class SeriesFormatError(CubeBuildError):
    """A ``series`` source that is not a CSV of monthly values."""


class ZoneError(CubeBuildError):
    """A zone source (polygons, raster or zones store) that cannot give a zone layer."""


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


def _tolerant(lo: float, hi: float) -> tuple[float, float]:
    eps = 1e-6 * (hi - lo)
    return lo - eps, hi + eps


def check_plausible(values: np.ndarray, raw: np.ndarray | None, *, name: str, units: str,
                    path: Path | str) -> None:
    """Raise if decoded values of a predictor lie where its catalogue units cannot be.

    Parameters
    ----------
    values : ndarray
        Decoded values (after sentinels, scale and offset; NaN = no data).
    raw : ndarray, optional
        The raw values they were decoded from (same shape), for naming a sentinel.
    name : str
        Predictor; only those in :data:`PLAUSIBLE` are checked.
    units : str
        The catalogue units of the predictor (for the message).
    path : path or str
        File and variable (for the message).

    Raises
    ------
    SentinelError
        Most offending pixels hold one raw value: an undeclared no-data sentinel.
    UnitsError
        Otherwise: the values are in other units (e.g. kelvin for degC) or badly scaled.
    """
    if name not in PLAUSIBLE:
        return
    lo, hi = PLAUSIBLE[name]
    tlo, thi = _tolerant(lo, hi)
    fin = np.isfinite(values)
    bad = fin & ((values < tlo) | (values > thi))
    nbad = int(bad.sum())
    if not nbad:
        return
    nfin = int(fin.sum())
    v = values[bad]
    if raw is not None:
        codes, counts = np.unique(np.asarray(raw)[bad], return_counts=True)
        k = int(np.argmax(counts))
        if counts[k] >= max(2, nbad // 2):
            code = codes[k]
            shown = int(code) if float(code).is_integer() else float(code)
            decoded = float(v[np.asarray(raw)[bad] == code][0])
            raise SentinelError(
                f"{name}: raw value {shown} in {int(counts[k])} of {nfin} pixels of {path} "
                f"decodes to {decoded:g} {units}, outside what {name} can be ([{lo:g}, {hi:g}] "
                f"{units}); an undeclared no-data sentinel? add {shown} to 'nodata' (or set "
                "nodata_below / nodata_at_or_below)")
    med = float(np.median(values[fin]))
    hint = "check scale, offset and the units of the file"
    if units == "degC" and 150.0 <= med <= 350.0:
        hint = "the file looks like kelvin: set offset: -273.15 (after scale)"
    elif units in ("1", "m3 m-3") and 1.0 < float(v.max()) <= 100.0:
        hint = "the file looks like percent: set scale: 0.01"
    raise UnitsError(f"{name}: {nbad} of {nfin} values of {path} lie outside what {name} can "
                     f"be in {units} ([{lo:g}, {hi:g}]): min {float(np.min(values[fin])):g}, "
                     f"median {med:g}, max {float(np.max(values[fin])):g} after scaling; "
                     f"{hint}; declare the units the values have after scale/offset")


def check_valid_range_plausible(valid: tuple[float, float] | None, *, name: str, units: str,
                                where: str) -> None:
    """Raise :class:`UnitsError` if a declared ``valid_range`` misses what the predictor can be.

    A ``valid_range`` replaces the plausibility check of :func:`check_plausible`, so it must at
    least overlap :data:`PLAUSIBLE` (``[225, 295]`` for a degC temperature is kelvin).
    """
    if valid is None or name not in PLAUSIBLE:
        return
    lo, hi = PLAUSIBLE[name]
    tlo, thi = _tolerant(lo, hi)
    if valid[1] < tlo or valid[0] > thi:
        raise UnitsError(f"{name}: valid_range [{valid[0]:g}, {valid[1]:g}] in {where} lies "
                         f"outside what {name} can be in {units} ([{lo:g}, {hi:g}]); the values "
                         "are in other units: convert them with scale/offset")


def check_fire_values(values: np.ndarray, *, variable: str, units: str, path: Path | str
                      ) -> None:
    """Raise if converted fire values are impossible.

    Parameters
    ----------
    values : ndarray
        Burned fraction (0..1) or emissions in g C m⁻² of the step, after scale/offset and the
        declared units (NaN = no data).
    variable : str
        ``burned_fraction`` or ``fire_emissions``.
    units : str
        The declared units (for the message).
    path : path or str
        File, time step and variable (for the message).

    Raises
    ------
    RangeError
        A burned fraction outside 0..1 or negative emissions.
    UnitsError
        Emissions above :data:`MAX_FIRE_EMISSIONS` in one step.
    """
    fin = values[np.isfinite(values)]
    if not fin.size:
        return
    lo, hi = float(fin.min()), float(fin.max())
    where = f"fire.{variable}: {path}"
    if variable == "burned_fraction":
        tlo, thi = _tolerant(0.0, 1.0)
        bad = int(((fin < tlo) | (fin > thi)).sum())
        if bad:
            hint = (" (the values look like percent: declare units '%')"
                    if units != "%" and 1.0 < hi <= 100.0 and lo >= 0 else "")
            raise RangeError(f"{where}: {bad} value(s) outside the burned fraction's 0..1 in "
                             f"declared units {units!r} (min {lo:g}, max {hi:g}){hint}; check "
                             "scale, offset, nodata and units")
        return
    if lo < 0:
        raise RangeError(f"{where}: {int((fin < 0).sum())} negative fire emission value(s) "
                         f"(min {lo:g} g C m-2 in the step, from units {units!r}); declare "
                         "negative sentinels in 'nodata'")
    if hi > MAX_FIRE_EMISSIONS:
        raise UnitsError(f"{where}: fire emissions up to {hi:g} g C m-2 in one step (from "
                         f"declared units {units!r}), above the {MAX_FIRE_EMISSIONS:g} g C m-2 "
                         "of the deepest peat fires; the file is in other units (g declared as "
                         "kg? a rate per second declared per month?)")
