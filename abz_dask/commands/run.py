"""``abz-dask run CONFIG.yaml``: the whole pipeline from one validated run configuration."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from abz_dask.commands.common import fail

__all__ = ["register", "run"]


def run(
    config: Annotated[Path, typer.Argument(help="Run configuration (YAML)")],
    cluster: Annotated[str | None, typer.Option(
        help="Override cluster.kind: threads, local, address, slurm, pbs, kubernetes, "
             "gateway")] = None,
    address: Annotated[str | None, typer.Option(
        help="Override cluster.address (scheduler or gateway address)")] = None,
    workers: Annotated[int | None, typer.Option(help="Override cluster.workers")] = None,
    force: Annotated[list[str] | None, typer.Option(
        help="Rerun this stage even when current (repeatable)")] = None,
    check: Annotated[bool, typer.Option(
        "--check", help="Only validate the configuration, its inputs and nested build-cube "
                        "configuration, and print it")] = False,
    release: Annotated[str | None, typer.Option(
        help="After the run, tag the flux store's snapshot as release NAME and keep a copy "
             "of the small outputs in RUN/releases/NAME (needs 'store: icechunk')")] = None,
) -> None:
    """Run every stage (twin or inputs → extract → train → upscale → budgets), skipping the
    stages whose outputs are complete and current."""
    from abz_dask.io.locks import hold
    from abz_dask.io.ownership import claim_folder
    from abz_dask.pipeline.clusters import open_cluster
    from abz_dask.pipeline.config import ConfigError, load_config
    from abz_dask.pipeline.runner import check_force, preflight, run_pipeline

    try:
        cfg = load_config(config, cluster=cluster)
        upd = {k: v for k, v in (("address", address), ("workers", workers)) if v is not None}
        if upd:
            from abz_dask.pipeline.config import ClusterSection

            cfg = cfg.model_copy(update={"cluster": ClusterSection.model_validate(
                {**cfg.cluster.model_dump(), **upd})})
        check_force(force or (), cfg)
        preflight(cfg)  # everything that needs no cluster, before one starts
        if release is not None:
            from abz_dask.pipeline.layout import RunLayout
            from abz_dask.pipeline.releases import check_release

            check_release(RunLayout.from_config(cfg), release)
    except (ConfigError, ValueError, FileExistsError) as e:
        fail(str(e))
    if check:
        import yaml

        typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        return
    t0 = time.perf_counter()
    try:
        claim_folder(cfg.output)  # a foreign, read-only or impossible output fails here, early
        with hold(cfg.output, "run folder", inside=True):  # a second run fails before a cluster
            pass
        with open_cluster(cfg.cluster) as session:
            typer.echo(f"cluster: {session.description}; {session.n_workers} worker(s)")
            for ev in session.events:
                typer.echo(ev)
            res = run_pipeline(cfg, echo=typer.echo, force=tuple(force or ()))
        if release is not None:
            from abz_dask.pipeline.releases import tag_release

            rel = tag_release(RunLayout.from_config(cfg), release)
            typer.echo(f"release {release}: snapshot {rel['snapshot']}")
    except PermissionError as e:
        fail(f"{e.filename or cfg.output}: permission denied ({e.strerror}); the run folder "
             "and its parent must be writable" if e.filename else str(e))
    except (ValueError, FileExistsError, FileNotFoundError, RuntimeError) as e:
        fail(str(e))
    ran = [s.name for s in res.stages if s.status == "ran"]
    typer.echo(f"pipeline finished in {time.perf_counter() - t0:.1f} s: "
               f"{len(ran)} stage(s) ran, {len(res.stages) - len(ran)} skipped; "
               f"outputs in {res.out}")


def register(app: typer.Typer) -> None:
    """Add ``run`` to the application."""
    app.command("run")(run)
