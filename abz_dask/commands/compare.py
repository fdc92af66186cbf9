"""``abz-dask compare``: comparisons with other gridded products, paper-2 tables, MESS, clusters."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from abz_dask.commands.common import (
    NON_NEGATIVE,
    POSITIVE,
    check_order,
    check_year,
    fail,
    local_cluster,
)

__all__ = ["compare", "register"]


def compare(
    run_dir: Annotated[Path, typer.Argument(help="Run folder (holds fluxes.zarr; zones in it or "
                                            "in twin/)")],
    product: Annotated[list[str] | None, typer.Option(
        "--product", help="NAME=PATH[:VARIABLE] of a NetCDF product; repeatable. The name "
        "prefix gives the approach: inversion* (fire removed), cmip6*/isimip*/trendy* "
        "(process model), fluxcom*. Default: the twin's two comparison products")] = None,
    start: Annotated[int, typer.Option(help="First year of the paper-2 regional table")] = 2002,
    end: Annotated[int, typer.Option(help="Last year of the paper-2 regional table")] = 2014,
    k: Annotated[int, typer.Option(help="Number of k-means environmental clusters (>= 1)",
                                   callback=POSITIVE)] = 8,
    n_sample: Annotated[int, typer.Option(help="Pixels sampled for the clusters (>= K)",
                                          callback=POSITIVE)] = 10_000,
    seed: Annotated[int, typer.Option(help="Seed of the pixel sample and k-means (>= 0)",
                                      callback=NON_NEGATIVE)] = 0,
    coverage: Annotated[bool, typer.Option(
        help="Compute MESS extrapolation and k-means clusters")] = True,
    figures: Annotated[bool, typer.Option(help="Write the PNG figures")] = True,
    workers: Annotated[int | None, typer.Option(help="Local worker processes (>= 1)",
                                                callback=POSITIVE)] = None,
) -> None:
    """Compare the upscaled NEE with other products; write CSV tables and PNGs to RUN_DIR/compare.

    Writes comparison_metrics.csv (Pearson r of mean and trend maps, budget ratios per
    domain), the paper-2 regional table (CSV + Markdown) with ANOVA and Tukey letters, model
    agreement, MESS and cluster summaries, maps.zarr and the figures.
    """
    from abz_dask.compare.run import parse_product, run_compare

    check_year("--start", start)
    check_year("--end", end)
    check_order("--start", start, "--end", end)
    if n_sample < k:
        fail(f"--n-sample {n_sample} is below --k {k}: k-means needs at least k pixels")
    t0 = time.perf_counter()
    try:
        specs = [parse_product(p) for p in product] if product else None
        for s in specs or []:
            if not s.path.exists():
                raise FileNotFoundError(f"product {s.name!r}: file not found: {s.path}")
        with local_cluster(workers):
            written = run_compare(run_dir, specs, years=(start, end), k=k, n_sample=n_sample,
                                  seed=seed, coverage=coverage,
                                  figures=figures)
    except (ValueError, FileNotFoundError, KeyError) as e:
        fail(str(e))
    typer.echo(f"compare: {len(written)} outputs in {Path(run_dir) / 'compare'} "
               f"({time.perf_counter() - t0:.1f} s)")
    for name, p in written.items():
        typer.echo(f"  {name}: {p.name}")


def register(app: typer.Typer) -> None:
    """Add ``compare`` to the application."""
    app.command()(compare)
