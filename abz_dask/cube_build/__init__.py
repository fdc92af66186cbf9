"""Build the predictor cube from users' rasters (GeoTIFF / NetCDF, any CRS and time step).

``build_cube(config_path, out)`` = :func:`~abz_dask.cube_build.config.load_config` →
:func:`~abz_dask.cube_build.plan.make_plan` (every check that needs no pixel values) →
:func:`~abz_dask.cube_build.build.run_plan` (tile tasks on the active Dask scheduler: windowed
reads, resampling onto the grid, temporal aggregation, range/legend checks, gap filling) and, when
the configuration has ``zones``, :func:`abz_dask.geo.user_zones.build_user_zones`.
"""

from __future__ import annotations

from pathlib import Path

from abz_dask.cube_build.build import BuildResult, run_plan
from abz_dask.cube_build.config import BuildConfig, SourceSpec, ZoneSpec, load_config
from abz_dask.cube_build.gapfill import fill_gaps
from abz_dask.cube_build.plan import BuildPlan, make_plan
from abz_dask.cube_build.validate import (
    CRSError,
    CubeBuildError,
    DuplicateTimeError,
    ExtentError,
    LegendError,
    MissingFileError,
    RangeError,
    TimeGapError,
    UnitsError,
)

__all__ = ["BuildConfig", "BuildPlan", "BuildResult", "CRSError", "CubeBuildError",
           "DuplicateTimeError", "ExtentError", "LegendError", "MissingFileError", "RangeError",
           "SourceSpec", "TimeGapError", "UnitsError", "ZoneSpec", "build_cube", "fill_gaps",
           "load_config", "make_plan", "run_plan"]


def build_cube(config: str | Path, out: str | Path, *, zones_out: str | Path | None = None,
               overwrite: bool = False, progress: bool = True) -> BuildResult:
    """Build a predictor cube (and user zones) from a ``build-cube`` YAML configuration.

    Parameters
    ----------
    config : path
        The YAML configuration (:mod:`abz_dask.cube_build.config`).
    out : path
        Cube to write (Zarr v3); written as ``<out>.tmp`` and renamed when complete.
    zones_out : path, optional
        Zones store to write when the configuration has ``zones`` (default: ``zones.zarr``
        next to ``out``).
    overwrite : bool
        Replace existing outputs.
    progress : bool
        Show progress bars.

    Returns
    -------
    BuildResult
    """
    cfg, root = load_config(config)
    plan = make_plan(cfg, root)
    result = run_plan(plan, out, overwrite=overwrite, progress=progress)
    if cfg.zones:
        from abz_dask.geo.user_zones import write_user_zones

        zpath = Path(zones_out) if zones_out is not None else Path(out).with_name("zones.zarr")
        write_user_zones(cfg, root, zpath, overwrite=overwrite)
    return result
