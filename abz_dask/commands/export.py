"""``abz-dask export-twin TWIN --out DIR``: a twin's predictors as a user's own files would be.

GeoTIFF / NetCDF rasters (lon/lat and polar stereographic, integer-scaled with sentinels, annual
cover layers, a CO2 CSV series, the twin's fire as monthly burned-fraction GeoTIFFs and an
emissions NetCDF) plus a matching ``build-cube.yaml`` (with its ``fire`` section): the starting
point of the README's "own rasters" walk-through, and a template for a configuration of real
files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from abz_dask.commands.common import fail

__all__ = ["export_twin", "register"]


def export_twin(
    twin: Annotated[Path, typer.Argument(help="Twin folder (from `abz-dask twin`)")],
    out: Annotated[Path, typer.Option(help="Folder to write (must be new or empty)")],
    lonlat_res: Annotated[float, typer.Option(
        help="Pixel size in degrees of the lon/lat rasters", min=0.01, max=10.0)] = 0.5,
) -> None:
    """Write the twin's predictors and fire as GeoTIFF / NetCDF / CSV files and a build-cube
    config."""
    from abz_dask.io.ownership import ForeignPathError, claim_folder
    from abz_dask.twin.export import export_twin as export

    if not (twin / "cube.zarr").is_dir():
        fail(f"{twin} is not a twin folder (no cube.zarr); make one with `abz-dask twin`")
    try:
        claim_folder(out, "export folder")
        res = export(twin, out, lonlat_res=lonlat_res)
    except (ForeignPathError, ValueError, PermissionError) as e:
        fail(str(e))
    typer.echo(f"rasters and build-cube config written to {out} (config {res.config})")


def register(app: typer.Typer) -> None:
    """Add ``export-twin`` to the application."""
    app.command("export-twin")(export_twin)
