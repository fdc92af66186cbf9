"""The ``build-cube`` configuration (YAML), validated with pydantic (unknown keys are refused).

A configuration names the grid, the period and, for every stored predictor of the catalogue
(:data:`abz_dask.predictors.PREDICTORS`), where its values come from::

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
    zones:
      biome: {file: "resolve.gpkg", attribute: "BIOME_NAME",
              values: {"Tundra": 1, "Boreal Forests/Taiga": 2}}

File patterns accept ``{year}``, ``{month}``, ``{day}`` and ``{doy}`` (optionally with a
zero-padding spec such as ``{month:02d}``) and ``*`` wildcards; a pattern without time fields may
name one multi-time NetCDF file whose ``time`` coordinate gives the timestamps.
"""

from __future__ import annotations

import hashlib
import json
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
from abz_dask.predictors import PREDICTORS, VEG_CLASSES
from abz_dask.yamlfile import flat_errors, read_mapping

__all__ = ["BuildConfig", "GapFillSpec", "SourceSpec", "ZoneSpec", "load_config"]

Temporal = Literal["monthly", "daily", "8day", "annual", "static", "series"]

#: Which source time steps may feed each catalogue storage kind.
ALLOWED_TEMPORAL: dict[str, tuple[str, ...]] = {
    "monthly": ("monthly", "daily", "8day"),
    "annual": ("annual", "monthly"),
    "static": ("static",),
    "series": ("series",),
}


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

    files: str = Field(description="Glob pattern with {year}/{month}/{day}/{doy} fields, "
                       "relative to the configuration file.")
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
    temporal: Temporal
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
        if self.valid_range is not None and self.valid_range[0] > self.valid_range[1]:
            raise ValueError(f"valid_range {list(self.valid_range)} is not [low, high]")
        if self.gapfill is not None and self.temporal in ("static", "series"):
            raise ValueError("gapfill applies to time series only")
        return self


class ZoneSpec(BaseModel):
    """A user zone layer replacing a built-in one (:mod:`abz_dask.user_zones`)."""

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
        unknown = sorted(set(self.predictors) - set(cat))
        if unknown:
            raise ValueError(f"unknown predictor(s) {unknown}; the catalogue has {sorted(cat)}")
        missing = sorted(set(cat) - set(self.predictors))
        if missing:
            raise ValueError(f"predictor(s) {missing} have no source; every stored predictor "
                             "of the catalogue is needed for a cube the models accept")
        for name, spec in self.predictors.items():
            p = cat[name]
            if spec.temporal not in ALLOWED_TEMPORAL[p.kind]:
                hint = f"; {SERIES_FORMAT}" if p.kind == "series" else ""
                raise ValueError(f"{name}: temporal {spec.temporal!r} cannot feed a "
                                 f"{p.kind} predictor (use one of {ALLOWED_TEMPORAL[p.kind]})"
                                 + hint)
            if spec.categorical != p.categorical:
                raise ValueError(f"{name}: categorical must be {p.categorical} (catalogue)")
            if spec.units is not None and not same_units(spec.units, p.units):
                raise ValueError(f"{name}: units {spec.units!r} after scaling are not the "
                                 f"catalogue's {p.units!r}; convert with scale/offset")
            if p.categorical and spec.legend is None and name == "vegtype":
                spec.legend = sorted(VEG_CLASSES)
            if p.categorical and spec.legend is None:
                raise ValueError(f"{name}: a categorical predictor needs a legend")
        if self.start > self.end:
            raise ValueError(f"start {self.start} is after end {self.end}")
        return self

    def token(self) -> str:
        """Hash of the configuration (a resumed build must use the same one)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


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
