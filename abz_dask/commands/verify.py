"""``abz-dask verify RUN``: check every finished stage's outputs against their recorded digest."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from abz_dask.commands.common import fail
from abz_dask.io.location import as_path

__all__ = ["register", "verify"]


def verify(
    run: Annotated[str, typer.Argument(help="Run folder (holds <stage>.stage.json records)")],
) -> None:
    """Check that every output of every finished stage is complete and unaltered (all files,
    all variables, every chunk's SHA-256); exit 1 naming each damaged store, variable and chunk.
    The next ``abz-dask run`` rebuilds what is damaged."""
    from abz_dask.io.integrity import check_digest, summarize
    from abz_dask.pipeline.layout import RunLayout

    root = as_path(run)
    records = RunLayout.for_twin(root).records()  # records sit in the run folder, any input
    if not records:
        fail(f"{run} holds no stage records (*.stage.json): not a run folder of abz-dask run")
    damaged = 0
    for stage, rec in records.items():
        try:
            doc = json.loads(rec.read_text())
        except (OSError, ValueError) as e:
            typer.echo(f"{stage}: record {rec} unreadable ({e})")
            damaged += 1
            continue
        digest = doc.get("outputs_digest")
        if digest is None:
            typer.echo(f"{stage}: no digest recorded (finished before digests existed); "
                       "skipped")
            continue
        problems = check_digest(digest, root, [root / o for o in doc.get("outputs", [])])
        if problems:
            damaged += 1
            typer.echo(f"{stage}: DAMAGED ({len(problems)} problem(s)):{summarize(problems)}")
        else:
            size = sum(int(v[0]) for v in digest.values())
            typer.echo(f"{stage}: ok ({len(digest)} files, {size / 2**20:,.1f} MiB)")
    if damaged:
        typer.secho(f"{damaged} stage(s) damaged; `abz-dask run` with the run's config rebuilds "
                    "them", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.echo(f"{run}: all {len(records)} stage record(s) verified")


def register(app: typer.Typer) -> None:
    """Add ``verify`` to the application."""
    app.command()(verify)
