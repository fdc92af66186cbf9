"""``abz-dask history RUN`` and ``abz-dask diff RUN A B``: the releases of a versioned run
(``abz-dask run CONFIG --release NAME`` makes them; :mod:`abz_dask.pipeline.releases`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from abz_dask.commands.common import fail

if TYPE_CHECKING:
    from abz_dask.pipeline.layout import RunLayout

__all__ = ["diff", "history", "register"]


def _layout(run: str) -> RunLayout:
    from abz_dask.io.location import as_path
    from abz_dask.pipeline.layout import RunLayout

    try:
        return RunLayout.from_run(as_path(run))
    except ValueError as e:
        fail(str(e))


def history(run: Annotated[str, typer.Argument(help="Run folder (local path or URL) with a "
                                                 "versioned flux store")]) -> None:
    """List the run's releases (name, time, snapshot, inputs) and the commits of its flux
    store's main branch (id, time, message, stage, config hash, tags)."""
    from abz_dask.pipeline.releases import release_history

    try:
        releases, commits = release_history(_layout(run))
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    typer.echo(f"releases of {run}:")
    typer.echo(releases.to_string(index=False) if len(releases) else "  (none)")
    typer.echo("\ncommits of main (newest first):")
    typer.echo(commits.to_string(index=False) if len(commits) else "  (none)")


def diff(run: Annotated[str, typer.Argument(help="Run folder with a versioned flux store")],
         a: Annotated[str, typer.Argument(help="Release name or snapshot id (A)")],
         b: Annotated[str, typer.Argument(help="Release name or snapshot id (B)")]) -> None:
    """Budget differences B − A (Tg C yr⁻¹ per domain and flux, with both bootstrap SDs) over
    the run's budgets period; writes RUN/diff_A_B.csv and the difference maps of the
    period-mean fluxes RUN/diff_A_B.zarr."""
    from abz_dask.pipeline.releases import diff_releases

    lay = _layout(run)
    try:
        tab = diff_releases(lay, a, b)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    start, end = int(tab["start"].iloc[0]), int(tab["end"].iloc[0])
    typer.echo(f"budgets {start}–{end}, Tg C yr-1: {b} minus {a}")
    typer.echo(tab.drop(columns=["start", "end"]).to_string(
        index=False, float_format=lambda v: f"{v:,.3f}"))
    typer.echo(f"written to {lay.root / f'diff_{a}_{b}.csv'} and "
               f"{lay.root / f'diff_{a}_{b}.zarr'}")


def register(app: typer.Typer) -> None:
    """Add ``history`` and ``diff`` to the application."""
    app.command()(history)
    app.command()(diff)
