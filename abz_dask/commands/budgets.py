"""``abz-dask budgets RUN``: budgets of any run folder, any period, any zone layer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from abz_dask.commands.common import check_order, check_year, fail
from abz_dask.io.location import url, write_atomic

__all__ = ["budgets", "register"]


def budgets(
    run: Annotated[str, typer.Argument(help="Run folder holding fluxes.zarr")],
    start: Annotated[int | None, typer.Option(help="First year (default: first whole year)")]
    = None,
    end: Annotated[int | None, typer.Option(help="Last year (default: last whole year)")]
    = None,
    layer: Annotated[str | None, typer.Option(
        help="Zone layer (biome, continent, key_region, reccap2, igbp, permafrost, "
             "key_region_biome, ...); default: the Table-1 domains with bootstrap SD")] = None,
    zones: Annotated[str | None, typer.Option(
        help="Zones store for --layer (default: the run's, e.g. RUN/twin/zones.zarr or "
             "RUN/inputs/zones.zarr)")] = None,
    within: Annotated[str, typer.Option(
        help="Domain the layer's zones are restricted to (a zones variable or expression)")]
    = "abz",
    out: Annotated[Path | None, typer.Option(help="Also write the table to this CSV")] = None,
) -> None:
    """Period-mean budgets (Tg C yr⁻¹) of a finished upscaling: the Table-1 domains from the
    store's domain sums (with the bootstrap SD and the area each covers), or any zone layer
    from the maps."""
    import xarray as xr

    from abz_dask.aggregation.zonal import zonal_budget_table
    from abz_dask.pipeline.layout import RunLayout
    from abz_dask.upscale import budget_table, excluded_area_message

    check_year("--start", start)
    check_year("--end", end)
    check_order("--start", start, "--end", end)
    try:
        layout = RunLayout.from_run(run).with_paths(zones=zones)
    except ValueError as e:
        fail(str(e))
    store = layout.fluxes
    if not store.is_dir():
        fail(f"{store} does not exist: run the upscaling stage first")
    try:
        if layer is None:
            tab = budget_table(store, start, end)
            lost = excluded_area_message(tab)
        else:
            if not layout.zones.is_dir():
                fail(f"zones store {layout.zones} of {run} does not exist; give --zones")
            zones_ds = xr.open_zarr(url(layout.zones), consolidated=False)
            tab = zonal_budget_table(store, zones_ds, layer, start=start, end=end,
                                     within=within)
            lost = None
    except (ValueError, KeyError, FileNotFoundError) as e:
        fail(str(e))
    if tab.empty or int(tab["n_years"].iloc[0]) == 0:
        fail(f"no whole year of {store} lies in {start or '…'}..{end or '…'}")
    typer.echo(tab.to_string(index=False, float_format=lambda v: f"{v:,.3f}"))
    if lost:
        typer.secho(f"warning: {lost}", fg=typer.colors.YELLOW, err=True)
    if out is not None:
        write_atomic(out, tab.to_csv(index=False))
        typer.echo(f"written to {out}")


def register(app: typer.Typer) -> None:
    """Add ``budgets`` to the application."""
    app.command()(budgets)
