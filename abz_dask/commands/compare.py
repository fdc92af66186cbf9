"""``abz-dask compare``: comparisons with other gridded products, paper-2 tables, MESS, clusters
— the stage runner's ``compare`` stage on the run's layout, with the options as its settings."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from abz_dask.commands.common import (
    NON_NEGATIVE,
    POSITIVE,
    check_order,
    check_year,
    fail,
    local_cluster,
    run_stages,
    stage_config,
)
from abz_dask.pipeline.config import DEFAULT_SEED

__all__ = ["compare", "register"]


def compare(
    run_dir: Annotated[str, typer.Argument(help="Run folder (holds fluxes.zarr and its "
                                            "inputs)")],
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
                                      callback=NON_NEGATIVE)] = DEFAULT_SEED,
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
    from abz_dask.compare.run import parse_product

    check_year("--start", start)
    check_year("--end", end)
    check_order("--start", start, "--end", end)
    if n_sample < k:
        fail(f"--n-sample {n_sample} is below --k {k}: k-means needs at least k pixels")
    t0 = time.perf_counter()
    try:
        specs = [parse_product(p) for p in product] if product else []
        for s in specs:
            if not s.path.exists():
                raise FileNotFoundError(f"product {s.name!r}: file not found: {s.path}")
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    section = {"enabled": True, "start_year": start, "end_year": end, "k": k,
               "n_sample": n_sample, "seed": seed, "coverage": coverage, "figures": figures,
               "products": [{"name": s.name, "path": str(s.path.absolute()),
                             "variable": s.variable} for s in specs]}
    run_cfg, layout = stage_config(run_dir, {"compare": section, "trends": {"enabled": False}},
                                   files_input=False)
    if not specs and layout.kind != "twin":
        fail(f"{run_dir} is not a twin run: give the products to compare with (--product "
             "NAME=PATH[:VARIABLE])")
    try:
        res = run_stages(run_cfg, ("compare",), layout, local_cluster(workers))
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        fail(str(e))
    info = res.stages[-1].info
    outputs = sorted(p for p in layout.compare.iterdir() if not p.name.endswith(".tmp"))
    typer.echo(f"compare: {len(outputs)} outputs in {layout.compare} "
               f"({time.perf_counter() - t0:.1f} s); products: "
               f"{', '.join(info.get('products', [])) or 'none'}")
    for p in outputs:
        typer.echo(f"  {p.name}")


def register(app: typer.Typer) -> None:
    """Add ``compare`` to the application."""
    app.command()(compare)
