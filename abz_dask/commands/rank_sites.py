"""``abz-dask rank-sites RUN``: where new flux sites would reduce the ABZ NEE budget error most
(:mod:`abz_dask.analyses.site_ranking`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from abz_dask.commands.common import POSITIVE, bounded, check_order, check_year, fail
from abz_dask.io.location import url, write_atomic

__all__ = ["rank_sites", "register"]


def rank_sites(
    run: Annotated[str, typer.Argument(help="Finished run folder (holds training/ with the CV "
                                            "predictions and permutation importances)")],
    candidates: Annotated[str | None, typer.Option(
        help="CSV of candidate locations (columns latitude, longitude in degrees; other "
             "columns kept; default: the ABZ grid cells with >= 20 % land)")] = None,
    top: Annotated[int, typer.Option(help="Sites to rank (>= 1)", callback=POSITIVE)] = 10,
    out: Annotated[Path | None, typer.Option(help="Also write the ranking to this CSV")] = None,
    flux: Annotated[str, typer.Option(help="Flux model whose budget error is ranked")] = "NEE",
    start: Annotated[int, typer.Option(help="First year of the predictor climatologies")]
    = 2001,
    end: Annotated[int, typer.Option(help="Last year of the predictor climatologies")] = 2020,
    max_targets: Annotated[int, typer.Option(
        help="ABZ cells sampled (systematically) for the expected error (>= 1)",
        callback=POSITIVE)] = 20_000,
    max_candidates: Annotated[int, typer.Option(
        help="Grid cells sampled (systematically) as default candidates (>= 1)",
        callback=POSITIVE)] = 5_000,
    min_land_fraction: Annotated[float, typer.Option(
        help="Land fraction a default candidate cell needs, in [0, 1]",
        callback=bounded(0.0, 1.0))] = 0.2,
    cube: Annotated[str | None, typer.Option(
        help="Predictor cube (default: the run's, e.g. RUN/twin/cube.zarr)")] = None,
    zones: Annotated[str | None, typer.Option(
        help="Zone layers (default: the run's, e.g. RUN/twin/zones.zarr)")] = None,
) -> None:
    """Rank candidate sites by the expected reduction of the ABZ NEE budget error (DI to the
    training data, error profile of the CV, greedy so that the top N are not redundant)."""
    import xarray as xr

    from abz_dask.analyses.site_ranking import rank_sites_for_run, read_candidates
    from abz_dask.geo.grid import Grid
    from abz_dask.pipeline.layout import RunLayout

    check_year("--start", start)
    check_year("--end", end)
    check_order("--start", start, "--end", end)
    try:
        layout = RunLayout.from_run(run).with_paths(cube=cube, zones=zones)
    except ValueError as e:
        fail(str(e))
    for what, p in (("training folder", layout.training), ("predictor cube", layout.cube),
                    ("zones store", layout.zones)):
        if not p.exists():
            fail(f"{what} {p} of {run} does not exist"
                 + (": run the training stage first" if what.startswith("training") else ""))
    t0 = time.perf_counter()
    try:
        zs = xr.open_zarr(url(layout.zones), consolidated=False)
        cb = xr.open_zarr(url(layout.cube), consolidated=False)
        cand = None if candidates is None else read_candidates(candidates, Grid.of_dataset(zs))
        tab = rank_sites_for_run(layout.training, cb, zs, candidates=cand, top=top,
                                 years=(start, end), flux=flux, max_targets=max_targets,
                                 max_candidates=max_candidates,
                                 min_land_fraction=min_land_fraction)
    except (ValueError, KeyError, FileNotFoundError) as e:
        fail(str(e))
    a = tab.attrs
    typer.echo(tab.to_string(index=False, float_format=lambda v: f"{v:,.4g}"))
    typer.echo(f"expected {flux} budget error before new sites: {a['expected_error_tg_c_yr']:,.1f}"
               f" Tg C yr-1 ({a['reducible_error_tg_c_yr']:,.1f} above the error at DI 0); "
               f"targets every {a['target_stride']} cell(s), candidates every "
               f"{a['candidate_stride']}; {time.perf_counter() - t0:.1f} s")
    if out is not None:
        write_atomic(out, tab.to_csv(index=False))
        typer.echo(f"written to {out}")


def register(app: typer.Typer) -> None:
    """Add ``rank-sites`` to the application."""
    app.command("rank-sites")(rank_sites)
