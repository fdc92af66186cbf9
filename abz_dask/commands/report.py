"""``abz-dask report`` and ``abz-dask table1``: Table 1 and the HTML report of a run folder."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Annotated

import typer

from abz_dask.commands.common import POSITIVE, check_order, check_year, fail, local_cluster

__all__ = ["register", "report", "table1"]

RunDir = Annotated[Path, typer.Argument(
    help="Run folder (fluxes.zarr; zones/truth/fire/ABCflux CSV here or in twin/)")]
Start = Annotated[int, typer.Option(help="First year")]
End = Annotated[int, typer.Option(help="Last year")]
Workers = Annotated[int | None, typer.Option(
    help="Local worker processes, >= 1 (default: dask's threaded scheduler, no cluster)",
    callback=POSITIVE)]


def _scheduler(workers: int | None) -> contextlib.AbstractContextManager[object]:
    return local_cluster(workers) if workers is not None else contextlib.nullcontext()


def _check_period(start: int, end: int) -> None:
    check_year("--start", start)
    check_year("--end", end)
    check_order("--start", start, "--end", end)


def table1(run_dir: RunDir, start: Start = 2001, end: End = 2020,
           fire_start: Annotated[int, typer.Option(help="First year of NEE + fire")] = 2002,
           workers: Workers = None) -> None:
    """Write Table 1 (table1.csv, table1_truth.csv, table1_checks.csv, table1.md)."""
    from abz_dask.analyses.table1 import IdentityError, table1_markdown, write_table1

    _check_period(start, end)
    check_year("--fire-start", fire_start)
    check_order("--fire-start", fire_start, "--end", end)
    t0 = time.perf_counter()
    try:
        with _scheduler(workers):
            t1 = write_table1(run_dir, start=start, end=end, fire_start=fire_start)
    except (FileNotFoundError, ValueError, IdentityError) as e:
        fail(str(e))
    typer.echo(table1_markdown(t1))
    typer.echo(f"Table 1 written to {run_dir}/table1.{{csv,md}} in "
               f"{time.perf_counter() - t0:.1f} s")


def report(run_dir: RunDir, start: Start = 2001, end: End = 2020,
           fire_year: Annotated[int | None, typer.Option(
               help="Year of the post-fire bias correction, at most END "
                    "[default: last fire year up to END]")] = None,
           out: Annotated[Path | None, typer.Option(
               help="HTML file [default: RUN_DIR/report.html]")] = None,
           compare: Annotated[bool, typer.Option(
               help="Run the comparison stage first if RUN_DIR/compare has no figures")]
           = False,
           workers: Workers = None) -> None:
    """Write the self-contained HTML report (Table 1, analyses, figures) of a run folder."""
    from abz_dask.analyses.table1 import IdentityError
    from abz_dask.report import build_report

    _check_period(start, end)
    check_year("--fire-year", fire_year)
    check_order("--fire-year", fire_year, "--end", end)
    t0 = time.perf_counter()
    try:
        with _scheduler(workers):
            rep = build_report(run_dir, start=start, end=end, fire_year=fire_year, out=out,
                               compare=compare)
    except (FileNotFoundError, ValueError, IdentityError) as e:
        fail(str(e))
    typer.echo(f"report written to {rep.path} ({rep.path.stat().st_size / 1e6:.1f} MB) in "
               f"{time.perf_counter() - t0:.1f} s")
    typer.echo("figures: " + ", ".join(rep.figure_names))


def register(app: typer.Typer) -> None:
    """Add ``table1`` and ``report`` to the application."""
    app.command()(table1)
    app.command()(report)
