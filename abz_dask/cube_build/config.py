"""The ``build-cube`` configuration (YAML), validated with pydantic (unknown keys are refused).

A configuration names the grid, the period and, for every stored predictor of the catalogue
(:data:`abz_dask.io.predictors.PREDICTORS`), where its values come from::

    grid: 8km
    start: 2001-01
    end: 2020-12
    predictors:
      ndvi:
        files: "ndvi/MOD13A2_{year}{doy:03d}.tif"   # relative to the YAML file
        scale: 0.0001
        nodata: [-3000]
        valid_range: [-0.2, 1.0]
        temporal: 8day                              # -> monthly mean
        gapfill: {max_gap: 2}
      tree_cover:
        files: "mod44b/tree_{year}.tif"
        temporal: annual
        missing_year: previous
      vegtype:
        files: "landcover/veg.tif"
        temporal: static
        categorical: true                           # resampling: mode, legend checked
      co2:
        files: "co2_brw.csv"                        # columns: time, value
        temporal: series
      # co2: {value: 412.5}                         # a constant, or monthly rasters reduced
      # co2: {files: "co2/xco2_{year}{month:02d}.tif", temporal: monthly}  # to a series
      peat_depth:                                   # a predictor of the user's own
        files: "peat/depth.tif"
        kind: static                                # monthly / annual / static / series
        units: m
    zones:
      biome: {file: "resolve.gpkg", attribute: "BIOME_NAME",
              values: {"Tundra": 1, "Boreal Forests/Taiga": 2}}
    fire:                                           # optional: written to fire.zarr
      start_year: 2002                              # first year of the fire record
      burned_fraction:
        files: "fire/burned_{year}{month:02d}.tif"  # monthly, any CRS
        temporal: monthly
        units: "1"                                  # or "%"
      fire_emissions:
        files: "fire/emissions.nc"                  # one multi-time NetCDF
        variable: C
        temporal: monthly
        units: "g C m-2 month-1"                    # g|kg C m-2 [month-1 | d-1 | s-1]

File patterns accept ``{year}``, ``{month}``, ``{day}`` and ``{doy}`` (optionally with a
zero-padding spec such as ``{month:02d}``) and ``*`` wildcards; a pattern without time fields may
name one multi-time NetCDF file whose ``time`` coordinate gives the timestamps.

Any predictor may instead be a constant, ``value: 412.5`` (stored in the usual layout of its
kind: a ``(time,)`` series, a ``(y, x)`` layer or a ``(time, y, x)`` cube filled with the value).
A ``series`` predictor (co2) may come from monthly rasters (``temporal: monthly``, or
``daily`` / ``8day``): each month is resampled onto the grid as a monthly predictor would be and
reduced to one value, the land-area-weighted mean ``Σ a·f·v / Σ a·f`` over the grid cells with a
value and land (``a`` the cell area, ``f`` the ``land_fraction`` of ``base_zones`` or of the
built-in zones), stored as ``(time,)`` (:mod:`abz_dask.cube_build.build`).

Names outside the catalogue are predictors of the user's own: they need ``kind`` and ``units``
(continuous only), are stored like a catalogue predictor of that kind with ``abz_kind`` /
``units`` / ``long_name`` attributes, and are used by a model only when its training profile adds
them (:mod:`abz_dask.training.profiles`).

The optional ``fire`` section names monthly (or annual) burned-area fraction and/or fire-emission
rasters, declared like a predictor's files (``files``, ``variable`` / ``band``, ``scale``,
``offset``, ``nodata``, ``crs``, ``temporal: monthly | annual``) with their ``units`` required:
``1`` or ``%`` for the burned fraction, ``g C m-2``, ``kg C m-2`` (amount per step) or a rate
(``month-1``, ``d-1``, ``s-1``; ``yr-1`` for annual files) for the emissions
(:func:`parse_fire_units`). They are regridded conserving mass and summed to the twin's annual
``fire.zarr`` layout (:mod:`abz_dask.cube_build.fire`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from abz_dask.cube_build.validate import SERIES_FORMAT
from abz_dask.io.predictors import PREDICTORS, STORED_KINDS, VEG_CLASSES, Predictor, user_predictor
from abz_dask.io.yamlfile import flat_errors, read_mapping

__all__ = ["FIRE_VARIABLES", "BuildConfig", "FireSection", "FireUnits", "GapFillSpec",
           "SourceSpec", "ZoneSpec", "load_config", "parse_fire_units"]

Temporal = Literal["monthly", "daily", "8day", "annual", "static", "series"]

#: Which source time steps may feed each catalogue storage kind.
ALLOWED_TEMPORAL: dict[str, tuple[str, ...]] = {
    "monthly": ("monthly", "daily", "8day"),
    "annual": ("annual", "monthly"),
    "static": ("static",),
    "series": ("series", "monthly", "daily", "8day"),
}
#: Source fields added for constants and user predictors; left out of the configuration token
#: when unset, so configurations that do not use them keep their token.
_NEW_FIELDS = ("value", "kind", "long_name")


class GapFillSpec(BaseModel):
    """Gap filling along time (:mod:`abz_dask.cube_build.gapfill`)."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["linear"] = Field(
        default="linear", description="Interior gaps of at most max_gap months: linear in time.")
    max_gap: int = Field(
        default=2, ge=1, description="Longest gap (months) filled linearly; longer "
                         "gaps and gaps at the ends get the seasonal climatology.")


class SourceSpec(BaseModel):
    """Where one predictor comes from and how its raw values are decoded."""

    model_config = ConfigDict(extra="forbid")

    files: str | None = Field(default=None, description="Glob pattern with "
                              "{year}/{month}/{day}/{doy} fields, relative to the "
                              "configuration file (or give 'value').")
    value: float | None = Field(
        default=None, description="A constant instead of files, stored in the layout of the "
        "predictor's kind.")
    kind: Literal["monthly", "annual", "static", "series"] | None = Field(
        default=None, description="Storage kind; required for a predictor of the user's own "
        "(outside the catalogue), must match the catalogue's otherwise.")
    long_name: str | None = Field(default=None, description="Description of a user predictor.")
    variable: str | None = Field(default=None, description="NetCDF variable (default: the only "
                                 "data variable with two spatial dimensions).")
    band: int = Field(default=1, ge=1, description="GeoTIFF band (1-based).")
    scale: float = Field(
        default=1.0, description="value = raw * scale + offset (after CF decoding).")
    offset: float = 0.0
    nodata: list[float] = Field(default_factory=list, description="Raw sentinel values.")
    nodata_below: float | None = Field(
        default=None, description="Raw values strictly below this are no data (e.g. -10000).")
    nodata_at_or_below: float | None = Field(
        default=None, description="Raw values at or below this are no data (e.g. 0).")
    recode: dict[int, int] | None = Field(
        default=None, description="Categorical: raw code -> code, applied before the legend check.")
    valid_range: tuple[float, float] | None = Field(
        default=None, description="Allowed range after scaling; values outside are an error.")
    units: str | None = Field(
        default=None, description="Units after scaling; must be the catalogue's.")
    temporal: Temporal | None = Field(
        default=None, description="Time step of the files (required with 'files').")
    missing_year: Literal["error", "previous", "next", "nearest"] = Field(
        default="error", description="Annual layers: which year to use when a year has no file.")
    categorical: bool = False
    resampling: Literal["average", "mode"] | None = Field(
        default=None, description="average (continuous, default) or mode (categorical, default).")
    legend: list[int] | None = Field(
        default=None, description="Allowed codes of a categorical layer.")
    gapfill: GapFillSpec | None = None
    crs: str | None = Field(
        default=None, description="CRS for files that carry none (e.g. EPSG:4326).")

    @model_validator(mode="after")
    def _check(self) -> SourceSpec:
        res = self.resampling or ("mode" if self.categorical else "average")
        if self.categorical and res != "mode":
            raise ValueError("a categorical predictor must use resampling: mode")
        if not self.categorical and res != "average":
            raise ValueError("a continuous predictor must use resampling: average")
        self.resampling = res
        if (self.files is None) == (self.value is None):
            raise ValueError("give either 'files' or a constant 'value'")
        if self.files is not None and self.temporal is None:
            raise ValueError("'temporal' is required with 'files'")
        if self.value is not None and self.categorical:
            raise ValueError("a constant 'value' cannot be categorical")
        if self.valid_range is not None and self.valid_range[0] > self.valid_range[1]:
            raise ValueError(f"valid_range {list(self.valid_range)} is not [low, high]")
        if self.gapfill is not None and (self.temporal in ("static", "series")
                                         or self.value is not None):
            raise ValueError("gapfill applies to time series only")
        return self


class ZoneSpec(BaseModel):
    """A user zone layer replacing a built-in one (:mod:`abz_dask.cube_build.user_zones`)."""

    model_config = ConfigDict(extra="forbid")

    file: str = Field(description="Shapefile / GeoPackage / GeoJSON, or a GeoTIFF.")
    attribute: str | None = Field(default=None, description="Feature attribute holding the zone.")
    layer: str | None = Field(default=None, description="Layer of a multi-layer vector file.")
    band: int = Field(default=1, ge=1, description="Band of a raster zone file.")
    values: dict[str, int] | None = Field(
        default=None,
        description="Attribute value -> layer code (default: the layer's flag names).")
    other: int | None = Field(
        default=None,
        description="Code for attribute values missing from 'values' (default: error).")
    method: Literal["centre", "fraction"] = Field(
        default="centre",
        description="centre: cell-centre rule; fraction: covered fraction of each "
        "cell (land/lake/ice fractions).")
    supersample: int = Field(default=8, ge=2, le=32, description="Sub-cells per axis for fraction.")


#: Variables of a fire store (the twin's ``fire.zarr``), in store order.
FIRE_VARIABLES: tuple[str, ...] = ("burned_fraction", "fire_emissions")
_FRACTION_UNITS = {"1": 1.0, "fraction": 1.0, "m2 m-2": 1.0, "unitless": 1.0, "%": 0.01,
                   "percent": 0.01}
_MASS_TO_G = {"mg": 1e-3, "g": 1.0, "kg": 1e3, "Mg": 1e6, "t": 1e6}
_EMISSION_UNITS = re.compile(r"^(?P<mass>mg|g|kg|Mg|t) ?C m-2(?: (?P<per>month-1|yr-1|d-1|s-1))?$")
_EMISSION_HELP = ("emission units are '<g|kg|Mg> C m-2' (the amount of each time step) or a rate "
                  "'<g|kg|Mg> C m-2 month-1' / 'd-1' / 's-1' ('yr-1' for annual files), per m2 "
                  "of the pixel")


@dataclass(frozen=True)
class FireUnits:
    """Parsed units of a fire source: ``value × factor(days)`` is the burned fraction (0..1) or
    the emissions in g C m⁻² of the time step (month or year of ``days`` days)."""

    text: str
    scale: float
    per: str | None = None  # rate denominator: "month", "yr", "d", "s"; None = per step

    def factor(self, days: float) -> float:
        """Multiplier of a step of ``days`` days."""
        return self.scale * {"d": days, "s": days * 86400.0}.get(self.per or "", 1.0)

    def same(self, other: FireUnits) -> bool:
        """Whether both mean the same quantity (e.g. ``g C m-2 month-1`` and ``gC m-2 month-1``)."""
        return self.scale == other.scale and self.per == other.per


def parse_fire_units(variable: str, units: str, temporal: str | None) -> FireUnits:
    """Units of a fire source (see the module docstring); ValueError explains a bad one."""
    text = " ".join(str(units).replace("gC", "g C").split())
    if variable == "burned_fraction":
        if text.lower() not in _FRACTION_UNITS:
            raise ValueError(f"fire.burned_fraction: units {units!r} are not a fraction; use "
                             "'1' (0..1) or '%' (0..100)")
        return FireUnits(text, _FRACTION_UNITS[text.lower()])
    m = _EMISSION_UNITS.match(text)
    if m is None:
        raise ValueError(f"fire.{variable}: units {units!r} are not understood; {_EMISSION_HELP}")
    per = m.group("per")
    per = per[:-2] if per else None
    wrong = {"monthly": "yr", "annual": "month"}.get(str(temporal))
    if per is not None and per == wrong:
        raise ValueError(f"fire.{variable}: units {units!r} do not fit temporal {temporal!r} "
                         f"files; {_EMISSION_HELP}")
    return FireUnits(text, _MASS_TO_G[m.group("mass")], per)


class FireSection(BaseModel):
    """Fire rasters: monthly (or annual) burned-area fraction and/or fire carbon emissions."""

    model_config = ConfigDict(extra="forbid")

    start_year: int | None = Field(
        default=None, ge=1900, le=2200, description="First year of the fire record (default: "
        "the first whole year of the cube's period); the files must cover every month (or "
        "year) from it to the last whole year of the period.")
    burned_fraction: SourceSpec | None = Field(
        default=None, description="Fraction of the pixel burned in the step (units 1 or %).")
    fire_emissions: SourceSpec | None = Field(
        default=None, description="Fire carbon emissions per m2 of the pixel.")

    @model_validator(mode="after")
    def _check(self) -> FireSection:
        given = self.sources()
        if not given:
            raise ValueError(f"give at least one of {list(FIRE_VARIABLES)}")
        for name, spec in given.items():
            if spec.files is None:
                raise ValueError(f"{name}: a fire record needs 'files' (not a constant 'value')")
            if spec.temporal not in ("monthly", "annual"):
                raise ValueError(f"{name}: temporal must be 'monthly' or 'annual', got "
                                 f"{spec.temporal!r}")
            if spec.units is None:
                raise ValueError(f"{name}: declare the 'units' of the values after scale/offset"
                                 + (" ('1' or '%')" if name == "burned_fraction" else
                                    f"; {_EMISSION_HELP}"))
            parse_fire_units(name, spec.units, spec.temporal)
            unused = [k for k in ("kind", "long_name", "recode", "valid_range", "legend",
                                  "gapfill") if getattr(spec, k) is not None]
            unused += ["categorical"] if spec.categorical else []
            unused += ["missing_year"] if spec.missing_year != "error" else []
            if unused:
                raise ValueError(f"{name}: {unused} do not apply to fire rasters (their range is "
                                 "fixed: burned fraction 0..1, emissions >= 0; no step may be "
                                 "missing)")
        return self

    def sources(self) -> dict[str, SourceSpec]:
        """The variables given, in store order."""
        return {n: s for n in FIRE_VARIABLES if (s := getattr(self, n)) is not None}


class BuildConfig(BaseModel):
    """The whole ``build-cube`` configuration."""

    model_config = ConfigDict(extra="forbid")

    grid: str | float = Field(default="50km", description="Grid preset or resolution in metres.")
    start: str = Field(description="First month YYYY-MM.")
    end: str = Field(description="Last month YYYY-MM.")
    tile: int | None = Field(
        default=None, ge=8, description="Tile edge in cells (default as the twin).")
    predictors: dict[str, SourceSpec]
    zones: dict[str, ZoneSpec] = Field(default_factory=dict)
    base_zones: str | None = Field(
        default=None, description="zones.zarr whose layers the user zones "
                                   "replace (default: the built-in layers of the grid).")
    subdomains: Literal["clip", "keep"] = Field(
        default="clip", description="With a user 'abz' zone: clip the tundra / boreal "
        "(biome) and permafrost layers to it, so no sub-domain extends outside the domain "
        "(clip), or keep them as they are (keep).")
    fire: FireSection | None = Field(
        default=None, description="Fire rasters, written to fire.zarr next to the cube.")

    @field_validator("start", "end", mode="before")
    @classmethod
    def _month(cls, v: Any) -> str:
        import pandas as pd

        s = str(v)
        try:
            ts = pd.Timestamp(s)
        except ValueError as e:
            raise ValueError(f"{s!r} is not a month YYYY-MM") from e
        return f"{ts.year:04d}-{ts.month:02d}"

    @model_validator(mode="after")
    def _check(self) -> BuildConfig:
        cat = {p.name: p for p in PREDICTORS if p.kind != "calendar"}
        for name in sorted(set(self.predictors) - set(cat)):
            spec = self.predictors[name]
            if spec.kind is None or spec.units is None:
                raise ValueError(f"unknown predictor {name!r}: the catalogue has {sorted(cat)}; "
                                 "a predictor of your own needs 'kind' (one of "
                                 f"{list(STORED_KINDS)}) and 'units'")
            if spec.categorical:
                raise ValueError(f"{name}: predictors of your own must be continuous "
                                 "(categorical: false)")
            user_predictor(name, spec.kind, spec.units, spec.long_name)  # checks the name
        missing = sorted(set(cat) - set(self.predictors))
        if missing:
            raise ValueError(f"predictor(s) {missing} have no source; every stored predictor "
                             "of the catalogue is needed for a cube the models accept")
        for name, spec in self.predictors.items():
            p = self.predictor(name)
            if spec.kind is not None and spec.kind != p.kind:
                raise ValueError(f"{name}: kind {spec.kind!r} differs from the catalogue's "
                                 f"{p.kind!r}")
            if spec.temporal is not None and spec.temporal not in ALLOWED_TEMPORAL[p.kind]:
                hint = f"; {SERIES_FORMAT}" if p.kind == "series" else ""
                raise ValueError(f"{name}: temporal {spec.temporal!r} cannot feed a "
                                 f"{p.kind} predictor (use one of {ALLOWED_TEMPORAL[p.kind]})"
                                 + hint)
            if p.kind == "series" and spec.gapfill is not None:
                raise ValueError(f"{name}: gapfill does not apply to a series predictor")
            if spec.categorical != p.categorical:
                raise ValueError(f"{name}: categorical must be {p.categorical} (catalogue)")
            if name in cat and spec.units is not None and not same_units(spec.units,
                                                                          p.units):
                raise ValueError(f"{name}: units {spec.units!r} after scaling are not the "
                                 f"catalogue's {p.units!r}; convert with scale/offset")
            if p.categorical and spec.legend is None and name == "vegtype":
                spec.legend = sorted(VEG_CLASSES)
            if p.categorical and spec.legend is None:
                raise ValueError(f"{name}: a categorical predictor needs a legend")
        if self.start > self.end:
            raise ValueError(f"start {self.start} is after end {self.end}")
        return self

    def predictor(self, name: str) -> Predictor:
        """The catalogue entry of ``name``, or the user predictor its source declares."""
        cat = {p.name: p for p in PREDICTORS}
        if name in cat:
            return cat[name]
        spec = self.predictors[name]
        assert spec.kind is not None and spec.units is not None
        return user_predictor(name, spec.kind, spec.units, spec.long_name)

    def stored(self) -> list[Predictor]:
        """Every predictor the cube stores: the catalogue's, then the user's (config order)."""
        cat = [p for p in PREDICTORS if p.kind != "calendar"]
        names = {p.name for p in cat}
        return cat + [self.predictor(n) for n in self.predictors if n not in names]

    def token(self) -> str:
        """Hash of the configuration (a resumed build must use the same one); the fire
        section is not part of it (:meth:`fire_token`), so adding one keeps the cube."""
        dump = self.model_dump(mode="json")
        dump.pop("fire", None)
        for spec in dump["predictors"].values():  # unset new fields: the token stays as before
            for k in _NEW_FIELDS:
                if spec.get(k) is None:
                    spec.pop(k, None)
        blob = json.dumps(dump, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def fire_token(self) -> str:
        """Hash of the fire section with the grid, period and tile (a resumed fire store must
        use the same)."""
        fire = self.fire.model_dump(mode="json") if self.fire is not None else None
        doc = {"fire": fire, "grid": self.grid, "start": self.start, "end": self.end,
               "tile": self.tile}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


#: Accepted spellings of the catalogue units.
UNIT_ALIASES: dict[str, set[str]] = {
    "1": {"1", "", "-", "fraction", "unitless", "dimensionless"},
    "degC": {"degc", "celsius", "°c", "deg_c", "degree_celsius", "degrees_celsius", "c"},
    "%": {"%", "percent"},
    "m3 m-3": {"m3 m-3", "m3/m3", "m^3 m^-3", "m3.m-3"},
    "W m-2": {"w m-2", "w/m2", "w m^-2", "w.m-2"},
    "kPa": {"kpa"},
    "ppm": {"ppm", "umol mol-1", "µmol mol-1", "1e-6"},
    "t ha-1": {"t ha-1", "t/ha", "mg ha-1"},
}


def same_units(a: str, b: str) -> bool:
    """Whether two unit strings mean the same catalogue unit."""
    if a.strip() == b.strip():
        return True
    for canon, aliases in UNIT_ALIASES.items():
        names = {canon.lower(), *aliases}
        if a.strip().lower() in names and b.strip().lower() in names:
            return True
    return False


def load_config(path: str | Path) -> tuple[BuildConfig, Path]:
    """Read and validate a YAML configuration.

    Parameters
    ----------
    path : path
        The YAML file.

    Returns
    -------
    BuildConfig, Path
        The configuration and the folder relative paths are resolved from.

    Raises
    ------
    ValueError
        Naming the file and the offending entries.
    """
    path = Path(path)
    raw = read_mapping(path, "build-cube configuration")
    try:
        return BuildConfig.model_validate(raw), path.absolute().parent
    except ValidationError as e:  # one tidy line per problem: key path, reason, value
        raise ValueError(f"{path}: {flat_errors(e)}") from None
