"""``abz-dask report`` and ``abz-dask table1``: Table 1 and the HTML report of a run folder.

``report`` is the stage runner's ``report`` stage (after ``compare`` with ``--compare``) on the
run's layout; ``table1`` writes Table 1 alone from the stores the layout names.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Annotated

import typer

from abz_dask.commands.common import (
    POSITIVE,
    check_order,
    check_year,
    fail,
    local_cluster,
    run_stages,
    stage_config,
)
from abz_dask.io.location import as_path

__all__ = ["register", "report", "table1"]

RunDir = Annotated[str, typer.Argument(
    help="Run folder (fluxes.zarr and the run's inputs: zones, truth, fire, ABCflux CSV)")]
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
           fire_start: Annotated[int | None, typer.Option(
               help="First year of NEE + fire [default: the fire record's first year]")]
           = None,
           workers: Workers = None) -> None:
    """Write Table 1 (table1.csv, table1_truth.csv, table1_checks.csv, table1.md, table1.json):
    the table1 stage of the run."""
    from abz_dask.analyses.table1 import IdentityError, read_table1, table1_markdown

    _check_period(start, end)
    check_year("--fire-start", fire_start)
    check_order("--fire-start", fire_start, "--end", end)
    if not as_path(run_dir).is_dir():
        fail(f"run folder {run_dir} does not exist")
    t0 = time.perf_counter()
    sections = {"budgets": {"start_year": start, "end_year": end},
                "report": {"enabled": True, "fire_start": fire_start},
                "trends": {"enabled": False}}
    run_cfg, layout = stage_config(run_dir, sections, files_input=False)
    try:
        run_stages(run_cfg, ("table1",), layout, _scheduler(workers))
    except (FileNotFoundError, ValueError, IdentityError, RuntimeError) as e:
        fail(str(e))
    files = layout.table1_files()
    typer.echo(table1_markdown(read_table1(files)))
    typer.echo(f"Table 1 written to {files['estimate']} and {files['markdown'].name} in "
               f"{time.perf_counter() - t0:.1f} s")


def report(run_dir: RunDir, start: Start = 2001, end: End = 2020,
           fire_year: Annotated[int | None, typer.Option(
               help="Year of the post-fire bias correction, at most END "
                    "[default: last fire year up to END]")] = None,
           out: Annotated[Path | None, typer.Option(
               help="HTML file [default: RUN_DIR/report.html]")] = None,
           compare: Annotated[bool, typer.Option(
               help="Run the comparison stage first (skipped when current; on a twin with the "
                    "twin's products, else with the run's configured products)")]
           = False,
           workers: Workers = None) -> None:
    """Write the self-contained HTML report (Table 1, analyses, figures) of a run folder."""
    from abz_dask.analyses.table1 import IdentityError

    _check_period(start, end)
    check_year("--fire-year", fire_year)
    check_order("--fire-year", fire_year, "--end", end)
    if not as_path(run_dir).is_dir():
        fail(f"run folder {run_dir} does not exist")
    t0 = time.perf_counter()
    sections = {"budgets": {"start_year": start, "end_year": end},
                "report": {"enabled": True, "fire_year": fire_year},
                "compare": {"enabled": compare}, "trends": {"enabled": False}}
    run_cfg, layout = stage_config(run_dir, sections, files_input=False,
                                   report_html=out.absolute() if out else None)
    try:
        res = run_stages(run_cfg, ("compare", "table1", "report") if compare
                         else ("table1", "report"), layout,
                         _scheduler(workers))
    except (FileNotFoundError, ValueError, IdentityError, RuntimeError) as e:
        fail(str(e))
    path = layout.report_html
    typer.echo(f"report written to {path} ({path.stat().st_size / 1e6:.1f} MB) in "
               f"{time.perf_counter() - t0:.1f} s")
    typer.echo("figures: " + ", ".join(res.stages[-1].info.get("figures", [])))


def register(app: typer.Typer) -> None:
    """Add ``table1`` and ``report`` to the application."""
    app.command()(table1)
    app.command()(report)
