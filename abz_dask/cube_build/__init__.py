"""Build the predictor cube from users' rasters (GeoTIFF / NetCDF, any CRS and time step).

``build_cube(config_path, out)`` = :func:`~abz_dask.cube_build.config.load_config` →
:func:`~abz_dask.cube_build.plan.make_plan` (every check that needs no pixel values) →
:func:`~abz_dask.cube_build.build.run_plan` (tile tasks on the active Dask scheduler: windowed
reads, resampling onto the grid, temporal aggregation, range/legend checks, gap filling) and, when
the configuration has ``zones``, :func:`abz_dask.cube_build.user_zones.build_user_zones`; with a
``fire`` section, :func:`~abz_dask.cube_build.fire.write_fire` writes the fire store first.
"""

from __future__ import annotations

from pathlib import Path

from abz_dask.cube_build.build import BuildResult, run_plan
from abz_dask.cube_build.config import BuildConfig, FireSection, SourceSpec, ZoneSpec, load_config
from abz_dask.cube_build.fire import FireResult, write_fire
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
           "DuplicateTimeError", "ExtentError", "FireResult", "FireSection", "LegendError",
           "MissingFileError", "RangeError", "SourceSpec", "TimeGapError", "UnitsError",
           "ZoneSpec", "build_cube", "fill_gaps", "load_config", "make_plan", "run_plan",
           "write_fire"]


def build_cube(config: str | Path, out: str | Path, *, zones_out: str | Path | None = None,
               fire_out: str | Path | None = None, overwrite: bool = False,
               progress: bool = True) -> BuildResult:
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
    fire_out : path, optional
        Fire store to write when the configuration has a ``fire`` section (default:
        ``fire.zarr`` next to ``out``); written before the cube, so a bad fire raster stops the
        build before the long part.
    overwrite : bool
        Replace existing outputs.
    progress : bool
        Show progress bars.

    Returns
    -------
    BuildResult
        ``fire`` holds the fire store's :class:`FireResult` (None without a fire section).
    """
    cfg, root = load_config(config)
    plan = make_plan(cfg, root)  # every check of the cube, zones and fire files first
    fire = None
    if plan.fire is not None:
        fpath = Path(fire_out) if fire_out is not None else Path(out).with_name("fire.zarr")
        if progress:
            for w in plan.fire.warnings:
                print(f"WARNING: {w}")
        fire = write_fire(plan, fpath, overwrite=overwrite, progress=progress)
    result = run_plan(plan, out, overwrite=overwrite, progress=progress)
    result.fire = fire
    if cfg.zones:
        from abz_dask.cube_build.user_zones import write_user_zones

        zpath = Path(zones_out) if zones_out is not None else Path(out).with_name("zones.zarr")
        write_user_zones(cfg, root, zpath, overwrite=overwrite)
    return result
