"""``abz-dask build-cube``: the predictor cube (and zones, and the fire store) from users' rasters
and polygons."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Annotated

import typer

from abz_dask.commands.common import NON_NEGATIVE, fail, local_cluster

__all__ = ["build_cube", "register"]


def build_cube(
    config: Annotated[Path, typer.Argument(help="build-cube YAML configuration")],
    out: Annotated[Path, typer.Option(help="Cube to write (Zarr v3)")] = Path("cube.zarr"),
    zones_out: Annotated[Path | None, typer.Option(
        help="Zones store (when the config has zones) [default: zones.zarr next to OUT]")]
    = None,
    fire_out: Annotated[Path | None, typer.Option(
        help="Fire store (when the config has a fire section) [default: fire.zarr next to "
             "OUT]")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs")] = False,
    workers: Annotated[int | None, typer.Option(
        help="Local worker processes (0 = no cluster: threads in this process)",
        callback=NON_NEGATIVE)] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar")] = True,
) -> None:
    """Build the predictor cube from GeoTIFF / NetCDF files (any CRS and time step).

    Every check that needs no pixel values (files per month, timestamps, CRS, extent, units)
    runs before anything is written; the cube is written to OUT.tmp tile by tile (a rerun
    resumes) and renamed to OUT when complete. A fire section's monthly burned-fraction /
    emission rasters are regridded conserving mass into the twin's annual fire.zarr layout.
    """
    from abz_dask.cube_build import CubeBuildError
    from abz_dask.cube_build import build_cube as run

    _return_large_blocks()
    t0 = time.perf_counter()
    ctx = contextlib.nullcontext() if workers == 0 else local_cluster(workers)
    try:
        with ctx:
            res = run(config, out, zones_out=zones_out, fire_out=fire_out, overwrite=overwrite,
                      progress=progress)
    except (CubeBuildError, ValueError, FileExistsError, FileNotFoundError) as e:
        fail(str(e))
    typer.echo(f"cube written to {res.cube} ({res.n_tiles} tiles, {res.resumed_tiles} resumed) "
               f"in {time.perf_counter() - t0:.1f} s")
    if res.fire is not None:
        typer.echo(f"fire store written to {res.fire.store} (years {res.fire.years[0]}-"
                   f"{res.fire.years[-1]})")
    for name, rep in res.report.items():
        typer.echo(f"gap filling {name}: " + ", ".join(f"{k} {n}" for k, n in rep.items())
                   + " cell-months")


#: Allocations of at least this many bytes are mmapped by glibc, so freed source windows and
#: decompression buffers go back to the OS instead of fragmenting the heap.
MMAP_THRESHOLD = 1 << 20


def _return_large_blocks() -> None:
    """Fix glibc's mmap threshold in this process and in worker processes started later.

    glibc raises the threshold dynamically up to 32 MB after large blocks are freed, after which
    the many few-MB buffers of a build (decoded windows, HDF5/GDAL decompression) stay in the
    heap; measured on the benchmark this kept ~40 MB more resident with 4x larger sources.
    """
    import ctypes
    import os

    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD))  # worker processes
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, MMAP_THRESHOLD)  # M_MMAP_THRESHOLD (glibc); ignored elsewhere


def register(app: typer.Typer) -> None:
    """Add ``build-cube`` to the application."""
    app.command("build-cube")(build_cube)
