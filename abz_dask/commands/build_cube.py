"""``abz-dask build-cube``: the predictor cube (and zones) from users' rasters and polygons."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Annotated

import typer

from abz_dask.commands.common import fail, local_cluster

__all__ = ["build_cube", "register"]


def build_cube(
    config: Annotated[Path, typer.Argument(help="build-cube YAML configuration")],
    out: Annotated[Path, typer.Option(help="Cube to write (Zarr v3)")] = Path("cube.zarr"),
    zones_out: Annotated[Path | None, typer.Option(
        help="Zones store (when the config has zones) [default: zones.zarr next to OUT]")]
    = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs")] = False,
    workers: Annotated[int | None, typer.Option(
        help="Local worker processes (0 = no cluster: threads in this process)")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar")] = True,
) -> None:
    """Build the predictor cube from GeoTIFF / NetCDF files (any CRS and time step).

    Every check that needs no pixel values (files per month, timestamps, CRS, extent, units)
    runs before anything is written; the cube is written to OUT.tmp tile by tile (a rerun
    resumes) and renamed to OUT when complete.
    """
    from abz_dask.cube_build import CubeBuildError
    from abz_dask.cube_build import build_cube as run

    t0 = time.perf_counter()
    ctx = contextlib.nullcontext() if workers == 0 else local_cluster(workers)
    try:
        with ctx:
            res = run(config, out, zones_out=zones_out, overwrite=overwrite, progress=progress)
    except (CubeBuildError, ValueError, FileExistsError, FileNotFoundError) as e:
        fail(str(e))
    typer.echo(f"cube written to {res.cube} ({res.n_tiles} tiles, {res.resumed_tiles} resumed) "
               f"in {time.perf_counter() - t0:.1f} s")
    for name, rep in res.report.items():
        typer.echo(f"gap filling {name}: " + ", ".join(f"{k} {n}" for k, n in rep.items())
                   + " cell-months")


def register(app: typer.Typer) -> None:
    """Add ``build-cube`` to the application."""
    app.command("build-cube")(build_cube)
