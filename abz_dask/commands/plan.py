"""``abz-dask plan CONFIG.yaml``: stores, task graph, memory and core-hours of a run, without
running it (:mod:`abz_dask.pipeline.plan`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from abz_dask.commands.common import POSITIVE, fail

__all__ = ["plan", "register"]


def plan(
    config: Annotated[Path, typer.Argument(help="Run configuration (YAML)")],
    workers: Annotated[int | None, typer.Option(
        help="Worker processes for the wall times (default: cluster.workers, else "
             "cluster.adapt.maximum, else 1)", callback=POSITIVE)] = None,
    throughput: Annotated[Path | None, typer.Option(
        help="upscale_tiles.csv of a finished run whose measured rate projects the "
             "core-hours (default: the run folder's, else the benchmark figure)")] = None,
) -> None:
    """Plan a run: per stage tiles, tasks, graph bytes, chunks, files and bytes of every
    store, peak memory per worker, core-hours and wall time (nothing is computed)."""
    from abz_dask.pipeline.config import ConfigError, load_config
    from abz_dask.pipeline.plan import plan_run

    try:
        cfg = load_config(config)
        p = plan_run(cfg, workers=workers, throughput_csv=throughput)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        fail(str(e))
    f = p.forests
    typer.echo(f"plan of {config}: grid {p.grid.name} {p.grid.shape[0]} x {p.grid.shape[1]} "
               f"({p.grid.shape[0] * p.grid.shape[1]:,} cells), {p.months} months upscaled, "
               f"tile {p.tile}, {p.workers} worker(s)")
    typer.echo(f"forests (from the training profile, models not needed): {f.forests} = "
               f"{len(f.fluxes)} fluxes x (1 + {f.n_bootstrap}), {f.central_trees} / "
               f"{f.bootstrap_trees} trees, {f.nodes_per_tree:,.0f} nodes per tree expected "
               f"({f.training_rows:,} training rows: {f.rows_source}), "
               f"{f.model_bytes / 1e9:.2f} GB per worker")
    typer.echo(f"throughput: {p.throughput_source}")
    typer.echo(p.text())
    for s in p.stages:
        if s.note:
            typer.echo(f"{s.name}: {s.note}")
    typer.echo("files count every chunk; Zarr does not write chunks holding only the fill "
               "value (NaN maps over the ocean), so a finished store can hold fewer. raw_GB is "
               "uncompressed.")
    typer.echo(f"planned in {p.seconds:.1f} s (nothing computed)")


def register(app: typer.Typer) -> None:
    """Add ``plan`` to the application."""
    app.command("plan")(plan)
