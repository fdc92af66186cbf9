"""Readers for other gridded CO2-flux products on lat/lon grids (NetCDF, CF conventions).

Atmospheric inversions (Global Carbon Budget ensemble), CMIP6 (``nep``/``nbp``/``gpp``…),
FLUXCOM-X and ISIMIP files all arrive as NetCDF on regular latitude/longitude grids with
differing conventions. :func:`read_product` turns any of them into one normal form:

* dims ``(time, lat, lon)`` for monthly products (``time`` = month starts, datetime64) or
  ``(year, lat, lon)`` for annual ones;
* longitude in [−180, 180) ascending, latitude ascending;
* **NEE sign** (positive = source to the atmosphere): ``nep``/``nbp`` and other uptake-positive
  variables are negated;
* units **g C m⁻² month⁻¹** (monthly) or **g C m⁻² yr⁻¹** (annual), converted from rates with the
  days of each month (or year) of the file's own calendar (CMIP6 ``noleap`` months have 28 days).

Recognised units (case-insensitive; ``/m2/s`` and ``m-2 s-1`` spellings alike): mass per area
per time with mass ``kg``, ``g``, ``mg``, ``Tg``, ``Pg`` of carbon (``kg C``, ``gC``, or CMIP6's
bare ``kg``, understood as carbon mass for carbon-flux variables) or amount ``mol``, ``mmol``,
``umol``/``µmol`` of CO2 (1 mol CO2 = 12.011 g C), time ``s``, ``d``/``day``, ``month``/``mon``,
``yr``/``year``/``a`` (a monthly value in per-year units is a mean rate over the month:
× days in month / days in year). Anything else raises a :class:`ValueError` naming the file,
variable and units.

Reading is lazy: values stay dask-backed (one chunk per 12 time steps) until computed.
"""

from __future__ import annotations

import calendar as _calendar
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from abz_dask.aggregation.periods import complete_years

__all__ = ["G_C_PER_MOL", "KNOWN_VARIABLES", "UPTAKE_POSITIVE", "UnitSpec", "parse_units",
           "read_product", "to_annual"]

#: Grams of carbon per mole of CO2.
G_C_PER_MOL = 12.011

#: Variable names tried, in order, when ``variable`` is not given.
KNOWN_VARIABLES: tuple[str, ...] = (
    "NEE", "nee", "land_flux_only_fossil_cement_adjusted", "land_flux", "fco2_land",
    "bio_flux_opt", "nep", "nbp", "NEP", "NBP", "fgco2_land",
)
#: Variables whose sign is uptake-positive (net ecosystem/biome production): negated to NEE.
UPTAKE_POSITIVE: frozenset[str] = frozenset({"nep", "nbp", "NEP", "NBP", "net_ecosystem_production",
                                             "net_biome_production"})

_MASS = {"pg": 1e15, "tg": 1e12, "kg": 1e3, "g": 1.0, "mg": 1e-3}
_MOLES = {"mol": 1.0, "mmol": 1e-3, "umol": 1e-6}
_TIME = {"s": "s", "sec": "s", "second": "s", "d": "d", "day": "d", "month": "month",
         "mon": "month", "yr": "yr", "year": "yr", "a": "yr", "y": "yr"}
_UNIT_RE = re.compile(r"^(?P<mass>pg|tg|kg|mg|g|umol|mmol|mol)(?P<sp>carbon|co2|c)?"
                      r"(?:m-2|/m2)(?:(?P<t1>[a-z]+)-1|/(?P<t2>[a-z]+))$")


@dataclass(frozen=True)
class UnitSpec:
    """A parsed flux unit: grams of carbon per unit, and the time unit of the rate."""

    grams_c: float
    per: str  # "s", "d", "month" or "yr"


def parse_units(units: str) -> UnitSpec:
    """Parse a carbon-flux unit string.

    Parameters
    ----------
    units : str
        E.g. ``"kg m-2 s-1"``, ``"kg C m-2 s-1"``, ``"gC/m2/day"``, ``"g C m-2 yr-1"``,
        ``"mol m-2 s-1"``, ``"umol CO2 m-2 s-1"``.

    Returns
    -------
    UnitSpec

    Raises
    ------
    ValueError
        If the string is not a mass (or CO2 amount) per m² per time unit.
    """
    s = re.sub(r"\s+", "", units.lower().replace("µ", "u").replace("μ", "u"))
    s = s.replace("**", "").replace("^", "")
    m = _UNIT_RE.match(s)
    if m is None:
        raise ValueError(f"unknown flux units {units!r}")
    mass, sp = m.group("mass"), m.group("sp")
    t = _TIME.get(m.group("t1") or m.group("t2") or "")
    if t is None:
        raise ValueError(f"unknown time unit in flux units {units!r}")
    if mass in _MOLES:
        if sp not in (None, "co2", "c"):
            raise ValueError(f"unknown species in flux units {units!r}")
        return UnitSpec(_MOLES[mass] * G_C_PER_MOL, t)
    if sp == "co2":
        return UnitSpec(_MASS[mass] * G_C_PER_MOL / 44.009, t)
    return UnitSpec(_MASS[mass], t)


def _pick(ds: xr.Dataset, names: tuple[str, ...], what: str, path: Path) -> str:
    for n in names:
        if n in ds.variables:
            return n
    raise ValueError(f"{path}: no {what} coordinate found (tried {', '.join(names)}); "
                     f"variables are {sorted(map(str, ds.variables))}")


def read_product(path: str | Path, variable: str | None = None, *, sign: str | None = None,
                 units: str | None = None, frequency: str | None = None) -> xr.DataArray:
    """Read one gridded flux product as NEE on a normalised lat/lon grid.

    Parameters
    ----------
    path : path
        NetCDF file (anything :func:`xarray.open_dataset` opens).
    variable : str, optional
        Flux variable; default the first of :data:`KNOWN_VARIABLES` present.
    sign : {"nee", "nep"}, optional
        Sign convention of the variable (``"nep"`` = uptake positive, negated on reading);
        default from the name (:data:`UPTAKE_POSITIVE`) or a ``positive`` attribute
        (``"down"`` = uptake positive).
    units : str, optional
        Override the variable's ``units`` attribute.
    frequency : {"monthly", "annual"}, optional
        Default: detected from the time step (28–31 days → monthly, 365–366 → annual).

    Returns
    -------
    xr.DataArray
        Named ``NEE``, dims ``(time, lat, lon)`` in g C m⁻² month⁻¹ or ``(year, lat, lon)`` in
        g C m⁻² yr⁻¹; attributes ``source_file``, ``source_variable``, ``source_units``,
        ``frequency``.

    Raises
    ------
    ValueError
        Unknown variable, units, sign, coordinates or time step (the message names the file).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"product file not found: {path}")
    ds = xr.open_dataset(path, chunks={}, decode_times=xr.coders.CFDatetimeCoder(use_cftime=True))
    if variable is None:
        found = [n for n in KNOWN_VARIABLES if n in ds.data_vars]
        if not found:
            names = sorted(map(str, ds.data_vars))
            raise ValueError(f"{path}: none of the known flux variables {KNOWN_VARIABLES} is "
                             f"present; pass variable= (variables: {names})")
        variable = found[0]
    if variable not in ds.data_vars:
        raise ValueError(f"{path}: variable {variable!r} not found; variables are "
                         f"{sorted(map(str, ds.data_vars))}")
    v = ds[variable]
    latn = _pick(ds, ("lat", "latitude", "y", "nav_lat"), "latitude", path)
    lonn = _pick(ds, ("lon", "longitude", "x", "nav_lon"), "longitude", path)
    timen = _pick(ds, ("time", "t"), "time", path)
    extra = [d for d in v.dims if d not in (latn, lonn, timen)]
    for d in extra:
        if v.sizes[d] != 1:
            raise ValueError(f"{path}: variable {variable!r} has extra dimension {d!r} of "
                             f"size {v.sizes[d]}; select one level first")
    v = v.squeeze(extra, drop=True).rename({latn: "lat", lonn: "lon", timen: "time"})
    v = v.transpose("time", "lat", "lon")
    u = units or v.attrs.get("units")
    if not u:
        raise ValueError(f"{path}: variable {variable!r} has no units attribute; pass units=")
    try:
        spec = parse_units(str(u))
    except ValueError as e:
        raise ValueError(f"{path}: variable {variable!r}: {e}") from None
    sgn = _sign(path, variable, v.attrs, sign)

    # coordinates: lon to [-180, 180) ascending, lat ascending
    lon = ((v["lon"].values.astype(float) + 180.0) % 360.0) - 180.0
    v = v.assign_coords(lon=lon).sortby("lon").sortby("lat")
    # time steps and calendar lengths
    times = v["time"].values
    years = np.array([t.year for t in times])
    months = np.array([t.month for t in times])
    dim = np.asarray(v["time"].dt.days_in_month.values, dtype=float)
    freq = frequency or _frequency(path, times)
    cal = str(getattr(v["time"].dt, "calendar", "standard"))
    diy = np.array([_days_in_year(int(y), cal) for y in years], dtype=float)
    if freq == "monthly":
        factor = _monthly_factor(spec, dim, diy, path, variable)
        out = v * xr.DataArray(factor * sgn, dims="time")
        idx = pd.DatetimeIndex([pd.Timestamp(int(y), int(m), 1)
                                for y, m in zip(years, months, strict=True)])
        out = out.assign_coords(time=idx)
        out.attrs["units"] = "g C m-2 month-1"
    elif freq == "annual":
        factor = _annual_factor(spec, diy, path, variable)
        out = (v * xr.DataArray(factor * sgn, dims="time")).assign_coords(time=years)
        out = out.rename(time="year")
        out.attrs["units"] = "g C m-2 yr-1"
    else:
        raise ValueError(f"{path}: unknown frequency {freq!r} (use 'monthly' or 'annual')")
    out.name = "NEE"
    out.attrs.update({"long_name": "net ecosystem exchange (positive = source)",
                      "source_file": str(path), "source_variable": variable,
                      "source_units": str(u), "frequency": freq})
    return out.chunk({out.dims[0]: 12, "lat": -1, "lon": -1})


def _sign(path: Path, variable: str, attrs: dict[str, object], sign: str | None) -> float:
    if sign is not None:
        if sign.lower() not in ("nee", "nep", "nbp"):
            raise ValueError(f"{path}: unknown sign convention {sign!r} for {variable!r} "
                             "(use 'nee' = source positive or 'nep' = uptake positive)")
        return 1.0 if sign.lower() == "nee" else -1.0
    if variable in UPTAKE_POSITIVE:
        return -1.0
    pos = str(attrs.get("positive", "")).lower()
    if pos == "down":
        return -1.0
    return 1.0


def _frequency(path: Path, times: np.ndarray) -> str:
    if len(times) < 2:
        raise ValueError(f"{path}: cannot detect the time step from {len(times)} time value(s); "
                         "pass frequency=")
    steps = np.array([(b - a).days for a, b in itertools.pairwise(times)], dtype=float)
    med = float(np.median(steps))
    if 27 <= med <= 32:
        return "monthly"
    if 359 <= med <= 367:
        return "annual"
    raise ValueError(f"{path}: time step of {med:g} days is neither monthly nor annual")


def _days_in_year(year: int, calendar: str) -> int:
    if calendar in ("noleap", "365_day"):
        return 365
    if calendar in ("all_leap", "366_day"):
        return 366
    if calendar == "360_day":
        return 360
    if calendar == "julian":
        return 366 if year % 4 == 0 else 365
    return 366 if _calendar.isleap(year) else 365


def _monthly_factor(spec: UnitSpec, dim: np.ndarray, diy: np.ndarray, path: Path,
                    variable: str) -> np.ndarray:
    g = spec.grams_c
    if spec.per == "s":
        return g * dim * 86400.0
    if spec.per == "d":
        return g * dim
    if spec.per == "month":
        return np.full_like(dim, g)
    if spec.per == "yr":  # a monthly mean rate per year: the month's share of the year
        return g * dim / diy
    raise ValueError(f"{path}: variable {variable!r}: unsupported time unit {spec.per!r}")


def _annual_factor(spec: UnitSpec, diy: np.ndarray, path: Path, variable: str) -> np.ndarray:
    g = spec.grams_c
    if spec.per == "s":
        return g * diy * 86400.0
    if spec.per == "d":
        return g * diy
    if spec.per == "yr":
        return np.full_like(diy, g)
    raise ValueError(f"{path}: variable {variable!r} is annual but in per-{spec.per} units")


def to_annual(monthly: xr.DataArray) -> xr.DataArray:
    """Annual sums (g C m⁻² yr⁻¹, dim ``year``) of a monthly field; incomplete years dropped.

    A pixel is NaN in a year when any of its 12 months is NaN.
    """
    if "year" in monthly.dims:
        return monthly
    full = complete_years(monthly["time"])
    ann = monthly.groupby("time.year").sum(skipna=False).sel(year=full)
    ann.attrs = {**monthly.attrs, "units": "g C m-2 yr-1"}
    ann.name = monthly.name
    return ann
