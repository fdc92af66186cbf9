"""Checking a configuration against its files and deciding which files feed which month.

:func:`make_plan` runs before anything is written: it finds every file, checks timestamps
(duplicates, gaps, missing months or years), opens every file once for its CRS, units and
footprint, and returns a :class:`BuildPlan` that the tile tasks execute; the rasters of the
``fire`` section get the same checks plus their units and value ranges (:class:`FirePlan`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from abz_dask.cube_build.config import BuildConfig, FireUnits, SourceSpec, parse_fire_units
from abz_dask.cube_build.reproject import check_overlap
from abz_dask.cube_build.sources import Entry, Geometry, Reader, discover, open_source
from abz_dask.cube_build.validate import (
    SERIES_FORMAT,
    CubeBuildError,
    DuplicateTimeError,
    MissingFileError,
    SeriesFormatError,
    TimeGapError,
    UnitsError,
    check_fire_values,
    check_plausible,
    check_range,
    check_valid_range_plausible,
)
from abz_dask.geo.grid import Grid, radius_of_latitude
from abz_dask.geo.regrid import pixel_coords
from abz_dask.io.location import url
from abz_dask.io.predictors import PREDICTORS, Predictor

__all__ = ["BuildPlan", "FirePlan", "VarPlan", "make_plan"]

_CATALOGUE = {p.name: p for p in PREDICTORS}


@dataclass
class VarPlan:
    """The sources of one predictor."""

    name: str
    spec: SourceSpec
    kind: str
    #: per output month (time variables) the entries averaged into it; one entry for static.
    steps: list[list[Entry]]
    #: georeferencing of every file
    geometry: dict[Path, Geometry] = field(default_factory=dict)
    #: values of a spatially constant series (co2) from a CSV or a constant
    series: np.ndarray | None = None
    #: the predictor (catalogue entry or the user's own)
    predictor: Predictor | None = None
    #: a constant ``value`` given instead of files
    constant: float | None = None

    @property
    def reduced(self) -> bool:
        """A ``series`` predictor from rasters: each month reduced to its land-area mean."""
        return self.kind == "series" and self.series is None and self.constant is None


@dataclass
class FirePlan:
    """The fire rasters of a build (:mod:`abz_dask.cube_build.fire`).

    ``variables[i].steps`` has one entry list per month of ``years`` (``temporal: monthly``)
    or per year (``annual``); ``units`` converts each variable's values to a burned fraction or
    to g C m⁻² of the step.
    """

    years: list[int]
    variables: list[VarPlan]
    units: dict[str, FireUnits]
    token: str
    #: areas of the grid the fire files do not cover (counted as no fire)
    warnings: list[str] = field(default_factory=list)

    def step_times(self, v: VarPlan) -> pd.DatetimeIndex:
        """Start of every step of ``v``."""
        freq = "MS" if v.kind == "monthly" else "YS"
        return pd.date_range(f"{self.years[0]}-01-01", f"{self.years[-1]}-12-01", freq=freq)


@dataclass
class BuildPlan:
    """Everything the tile tasks need."""

    grid: Grid
    time: pd.DatetimeIndex
    tile: int
    token: str
    variables: list[VarPlan]
    #: zones store whose ``land_fraction`` weights series reduced from rasters
    land: Path | None = None
    #: the ``fire`` section, checked
    fire: FirePlan | None = None


def _month_index(time: pd.DatetimeIndex) -> dict[tuple[int, int], int]:
    return {(t.year, t.month): i for i, t in enumerate(time)}


def _fmt(ts: pd.Timestamp) -> str:
    return f"{ts.year:04d}-{ts.month:02d}-{ts.day:02d}"


def _monthly_steps(name: str, spec: SourceSpec, entries: list[Entry], time: pd.DatetimeIndex
                   ) -> list[list[Entry]]:
    idx = _month_index(time)
    steps: list[list[Entry]] = [[] for _ in time]
    for e in entries:
        assert e.time is not None
        i = idx.get((e.time.year, e.time.month))
        if i is not None:
            steps[i].append(e)
    missing = [time[i] for i, s in enumerate(steps) if not s]
    if missing:
        multi = [e for e in entries if e.index is not None]
        months = ", ".join(f"{t.year:04d}-{t.month:02d}" for t in missing[:6])
        more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
        if multi and multi[0].time <= missing[0] <= multi[-1].time:  # type: ignore[operator]
            raise TimeGapError(f"{name}: the time axis of {multi[0].path} skips {months}{more}")
        raise MissingFileError(f"{name}: no file for month(s) {months}{more} "
                               f"(pattern {spec.files!r})")
    return steps


def _submonthly_steps(name: str, spec: SourceSpec, entries: list[Entry],
                      time: pd.DatetimeIndex) -> list[list[Entry]]:
    lo = time[0]
    hi = time[-1] + pd.offsets.MonthEnd(1)
    inside = [e for e in entries if e.time is not None and lo <= e.time <= hi]
    step = pd.Timedelta(days=1 if spec.temporal == "daily" else 8)
    for a, b in itertools.pairwise(inside):
        assert a.time is not None and b.time is not None
        new_year = b.time == pd.Timestamp(b.time.year, 1, 1) and b.time.year == a.time.year + 1
        if b.time - a.time > step and not (spec.temporal == "8day" and new_year):
            where = a.path if a.path == b.path else f"{a.path} -> {b.path}"
            raise TimeGapError(f"{name}: {spec.temporal} series jumps from {_fmt(a.time)} to "
                               f"{_fmt(b.time)} ({(b.time - a.time).days} days) in {where}")
    return _monthly_steps(name, spec, inside, time)


def _annual_steps(name: str, spec: SourceSpec, entries: list[Entry], time: pd.DatetimeIndex
                  ) -> list[list[Entry]]:
    by_year = {e.time.year: e for e in entries if e.time is not None}
    have = np.array(sorted(by_year))
    steps: list[list[Entry]] = []
    for t in time:
        y = t.year
        if y not in by_year:
            prev = have[have < y]
            nxt = have[have > y]
            pick: int | None = None
            if spec.missing_year == "previous" and prev.size:
                pick = int(prev[-1])
            elif spec.missing_year == "next" and nxt.size:
                pick = int(nxt[0])
            elif spec.missing_year == "nearest" and have.size:
                pick = int(have[np.argmin(np.abs(have - y) * 2 + (have > y))])
            if pick is None:
                raise MissingFileError(f"{name}: no file for year {y} (pattern {spec.files!r}; "
                                       f"missing_year: {spec.missing_year}; years present: "
                                       f"{have.tolist()})")
            y = pick
        steps.append([by_year[y]])
    return steps


#: Leading bytes of the raster formats most often given where a CSV series is expected.
_MAGIC = {b"II*\x00": "a GeoTIFF", b"MM\x00*": "a GeoTIFF", b"II+\x00": "a BigTIFF",
          b"\x89HDF": "a NetCDF-4/HDF5 file", b"CDF\x01": "a NetCDF file",
          b"CDF\x02": "a NetCDF file", b"PK\x03\x04": "a zip archive"}


def _read_series_csv(name: str, path: Path) -> pd.DataFrame:
    """The table of a series file, or :class:`SeriesFormatError` explaining the format."""
    if path.is_dir():
        raise SeriesFormatError(f"{name}: {path} is a folder; {SERIES_FORMAT}")
    head = path.read_bytes()[:4096]
    kind = next((k for m, k in _MAGIC.items() if head.startswith(m)), None)
    if kind is None and b"\x00" in head:
        kind = "a binary file"
    if kind is None:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as e:
            if e.start < len(head) - 4:  # not just a character cut at the 4096-byte boundary
                kind = f"not UTF-8 text (byte {e.start})"
    if kind is not None:
        raise SeriesFormatError(f"{name}: {path} is {kind}, not a CSV series (temporal: "
                                f"series); {SERIES_FORMAT}")
    try:
        df = pd.read_csv(url(path))
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise SeriesFormatError(f"{name}: {path} cannot be read as CSV ({e}); "
                                f"{SERIES_FORMAT}") from None
    if df.shape[1] < 2 or df.empty:
        raise SeriesFormatError(f"{name}: {path} needs two columns (time, value) and one row "
                                f"per month, it has columns {list(map(str, df.columns))} and "
                                f"{len(df)} row(s); {SERIES_FORMAT}")
    return df


def _series(name: str, spec: SourceSpec, path: Path, time: pd.DatetimeIndex) -> np.ndarray:
    df = _read_series_csv(name, path)
    tcol, vcol = ("time", "value") if {"time", "value"} <= set(df.columns) else df.columns[:2]
    ts = pd.to_datetime(df[tcol], errors="coerce", format="mixed")
    if ts.isna().any():
        i = int(np.flatnonzero(ts.isna().to_numpy())[0])
        raise SeriesFormatError(f"{name}: {path} line {i + 2}: column {tcol!r} value "
                                f"{df[tcol].iloc[i]!r} is not a month or date; {SERIES_FORMAT}")
    num = pd.to_numeric(df[vcol], errors="coerce")
    bad = num.isna() & df[vcol].notna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise SeriesFormatError(f"{name}: {path} line {i + 2}: column {vcol!r} value "
                                f"{df[vcol].iloc[i]!r} is not a number; {SERIES_FORMAT}")
    key = pd.DatetimeIndex([pd.Timestamp(t.year, t.month, 1) for t in ts])
    dup = key.duplicated()
    if dup.any():
        raise DuplicateTimeError(f"{name}: {path} has month {key[dup][0]:%Y-%m} twice")
    vals = pd.Series(num.to_numpy(float), index=key)
    for s in spec.nodata:
        vals[vals == s] = np.nan
    vals = vals * spec.scale + spec.offset
    miss = [t for t in time if t not in vals.index or not np.isfinite(vals[t])]
    if miss:
        raise MissingFileError(f"{name}: {path} has no value for month(s) "
                               f"{', '.join(f'{t:%Y-%m}' for t in miss[:6])}")
    out = vals.reindex(time).to_numpy(np.float64)
    check_range(out, spec.valid_range, name=name, path=path)
    if spec.valid_range is None:
        check_plausible(out, None, name=name, units=_CATALOGUE[name].units
                        if name in _CATALOGUE else spec.units or "",
                        path=f"{path} column {vcol!r}")
    return out


#: Time steps of a predictor whose pixels are sampled for the plausibility check at planning.
SAMPLE_STEPS = 3


def _sampled(steps: list[list[Entry]]) -> set[Entry]:
    """Up to :data:`SAMPLE_STEPS` entries spread over the period."""
    uniq = list(dict.fromkeys(e for s in steps for e in s))
    if not uniq:
        return set()
    pick = np.unique(np.linspace(0, len(uniq) - 1, min(SAMPLE_STEPS, len(uniq))).round())
    return {uniq[int(i)] for i in pick}


def _grid(config: BuildConfig) -> Grid:
    g = config.grid
    if isinstance(g, int | float) and not (np.isfinite(g) and g > 0):
        raise CubeBuildError(f"grid: resolution {g!r} m must be a positive number of metres "
                             "(or a preset name)")
    try:
        grid = Grid.from_preset(g)
    except ValueError as e:
        raise CubeBuildError(f"grid: {e}") from None
    if grid.resolution > grid.half_width / 2:
        raise CubeBuildError(f"grid: resolution {g!r} m is coarser than the whole domain "
                             f"(the {grid.south:g}N circle)")
    return grid


def make_plan(config: BuildConfig, root: Path) -> BuildPlan:
    """Validate the configuration against the files.

    Parameters
    ----------
    config : BuildConfig
        Validated configuration.
    root : Path
        Folder relative patterns are resolved from.

    Returns
    -------
    BuildPlan

    Raises
    ------
    CubeBuildError
        Missing files or months, duplicated timestamps, time gaps, files without a CRS, files
        that do not overlap the grid, wrong units, unreadable files, sampled values outside
        ``valid_range`` or (without one) outside what the predictor can be in its units
        (:data:`~abz_dask.cube_build.validate.PLAUSIBLE`), a series file that is not a CSV of
        monthly values, and zone sources that cannot give their layer
        (:func:`abz_dask.cube_build.user_zones.check_user_zones`).
    """
    from abz_dask.geo.grid import default_tile

    grid = _grid(config)
    time = pd.date_range(config.start, config.end, freq="MS")
    tile = config.tile or default_tile(grid)
    plans: list[VarPlan] = []
    checked: set[tuple[object, ...]] = set()
    for p in config.stored():
        spec = config.predictors[p.name]
        if spec.value is not None:
            val = np.array([spec.value], dtype=np.float64)
            where = f"predictors.{p.name}.value"
            check_range(val, spec.valid_range, name=p.name, path=where)
            check_plausible(val, None, name=p.name, units=p.units, path=where)
            plans.append(VarPlan(p.name, spec, p.kind, [], predictor=p,
                                 constant=float(spec.value),
                                 series=np.full(len(time), spec.value, np.float64)
                                 if p.kind == "series" else None))
            continue
        entries = discover(spec, root, p.name)
        if spec.temporal == "series":
            plans.append(VarPlan(p.name, spec, p.kind, [], predictor=p,
                                 series=_series(p.name, spec, entries[0].path, time)))
            continue
        if spec.temporal == "static":
            steps = [entries]
        elif spec.temporal == "monthly":
            steps = _monthly_steps(p.name, spec, entries, time)
        elif spec.temporal in ("daily", "8day"):
            steps = _submonthly_steps(p.name, spec, entries, time)
        else:
            steps = _annual_steps(p.name, spec, entries, time)
        vp = VarPlan(p.name, spec, p.kind, steps, predictor=p)
        check_valid_range_plausible(spec.valid_range, name=p.name, units=p.units,
                                    where=f"predictors.{p.name}")
        sample = _sampled(steps)
        for path in sorted({e.path for s in steps for e in s}):
            with open_source(path, spec, p.name) as r:
                r.check_units(p.units)
                vp.geometry[path] = r.geometry
                for e in sorted((e for e in sample if e.path == path),
                                key=lambda e: e.index or 0):
                    raw, vals = r.sample(e.index)
                    check_range(vals, spec.valid_range, name=p.name, path=r.where(e.index))
                    if r.plausible_units is not None:
                        check_plausible(vals, raw, name=p.name, units=p.units,
                                        path=r.where(e.index))
            if r.geometry.key not in checked:
                check_overlap(r.geometry, grid, name=p.name, path=path)
                checked.add(r.geometry.key)
        plans.append(vp)
    if config.zones or config.base_zones:
        from abz_dask.cube_build.user_zones import check_user_zones

        check_user_zones(config, root, grid)
    land = _land_zones(config, root, grid) if any(v.reduced for v in plans) else None
    fire = _fire_plan(config, root, grid, time) if config.fire is not None else None
    return BuildPlan(grid, time, tile, config.token(), plans, land, fire)


def _covered_share(geom: Geometry, grid: Grid) -> float:
    """Share of the grid's cells north of its southern circle whose centre lies inside a source
    raster (every cell on grids up to 256 cells across, else a regular subsample)."""
    from pyproj import Transformer

    step = max(1, grid.shape[0] // 256)
    gx, gy = np.meshgrid(grid.x[::step], grid.y[::step])
    keep = np.hypot(gx, gy) <= radius_of_latitude(grid.south)
    sx, sy = Transformer.from_crs(grid.crs, geom.crs, always_xy=True).transform(gx[keep],
                                                                                gy[keep])
    row, col = pixel_coords(geom, np.asarray(sx), np.asarray(sy))
    ny, nx = geom.shape
    inside = np.isfinite(row) & np.isfinite(col) & (row >= 0) & (row < ny) & (col >= 0) \
        & (col < nx)
    return float(inside.mean()) if inside.size else 0.0


def _fire_years(config: BuildConfig, time: pd.DatetimeIndex) -> list[int]:
    """Years of the fire record: ``fire.start_year`` (default: the first whole year of the
    period) to the last whole year of the period."""
    assert config.fire is not None
    first = time[0].year + (time[0].month != 1)
    last = time[-1].year - (time[-1].month != 12)
    if first > last:
        raise CubeBuildError(f"fire: the period {config.start}..{config.end} holds no whole "
                             "calendar year; the fire record is annual")
    y0 = config.fire.start_year or first
    if not first <= y0 <= last:
        raise CubeBuildError(f"fire.start_year {y0} is outside the whole years {first}..{last} "
                             f"of the period {config.start}..{config.end}")
    return list(range(y0, last + 1))


def _file_units(r: Reader, variable: str, spec: SourceSpec, units: FireUnits) -> None:
    """Raise :class:`UnitsError` when a file declares other units than the configuration (only
    where no scale/offset changes them)."""
    declared = r.units
    if not declared or spec.scale != 1.0 or spec.offset != 0.0:
        return
    try:
        own = parse_fire_units(variable, str(declared), spec.temporal)
    except ValueError:
        return  # units this package cannot parse: the declaration stands
    if not own.same(units):
        raise UnitsError(f"fire.{variable}: {r.where()} has units {declared!r}, "
                         f"the configuration declares {units.text!r}; declare the file's units "
                         "(values are converted) or convert with scale")


def _fire_plan(config: BuildConfig, root: Path, grid: Grid, time: pd.DatetimeIndex
               ) -> FirePlan:
    """Check the fire rasters: files for every month (year) of the record, CRS, overlap, units
    (declared vs the file's) and sampled values (:func:`check_fire_values`)."""
    assert config.fire is not None
    years = _fire_years(config, time)
    plan = FirePlan(years, [], {}, config.fire_token())
    circle = np.pi * radius_of_latitude(grid.south) ** 2
    seen: set[tuple[object, ...]] = set()
    for name, spec in config.fire.sources().items():
        label = f"fire.{name}"
        units = parse_fire_units(name, str(spec.units), spec.temporal)
        entries = discover(spec, root, label)
        if spec.temporal == "monthly":
            months = pd.date_range(f"{years[0]}-01", f"{years[-1]}-12", freq="MS")
            steps = _monthly_steps(label, spec, entries, months)
        else:
            steps = _annual_steps(label, spec, entries,
                                  pd.date_range(f"{years[0]}", periods=len(years), freq="YS"))
        vp = VarPlan(name, spec, str(spec.temporal), steps)
        plan.variables.append(vp)
        plan.units[name] = units
        times = {e: t for t, s in zip(plan.step_times(vp), steps, strict=True) for e in s}
        sample = _sampled(steps)
        for path in sorted({e.path for s in steps for e in s}):
            with open_source(path, spec, label) as r:
                _file_units(r, name, spec, units)
                vp.geometry[path] = r.geometry
                for e in sorted((e for e in sample if e.path == path), key=lambda e: e.index or 0):
                    t = times[e]
                    days = t.days_in_month if vp.kind == "monthly" else 365 + t.is_leap_year
                    check_fire_values(r.sample(e.index)[1] * units.factor(days), variable=name,
                                      units=units.text, path=r.where(e.index))
            if r.geometry.key in seen:
                continue
            seen.add(r.geometry.key)
            check_overlap(r.geometry, grid, name=label, path=path)
            share = _covered_share(r.geometry, grid)
            if share < 1.0:
                plan.warnings.append(
                    f"{label}: {path} covers {100 * share:.1f} % of the {grid.name} grid north "
                    f"of {grid.south:g}N; fire in the other ≈ {(1 - share) * circle / 1e12:.2f} "
                    "million km2 is not in the record (counted as no fire)")
    return plan


def _land_zones(config: BuildConfig, root: Path, grid: Grid) -> Path:
    """The zones store whose ``land_fraction`` weights the series reduced from rasters:
    ``base_zones`` when set, else the built-in zones of the grid (built and cached if needed)."""
    import xarray as xr

    if config.base_zones is not None:
        path = Path(config.base_zones)
        path = path if path.is_absolute() else root / path
    else:
        from abz_dask.geo.zones import build_zones, zones_store_path

        build_zones(grid)
        path = zones_store_path(grid)
    try:
        lf = xr.open_zarr(path, consolidated=False)["land_fraction"]
    except Exception as e:
        raise CubeBuildError(f"{path}: no land_fraction to weight the series reduced from "
                             f"rasters ({type(e).__name__}: {e})") from None
    if lf.shape != grid.shape:
        raise CubeBuildError(f"{path}: land_fraction {lf.shape} is not on the {grid.name} grid "
                             f"{grid.shape}")
    return path
