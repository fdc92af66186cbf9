"""``abz-dask trends``: trend maps (Zarr) and trend tables (CSV) of a run folder — the stage
runner's ``trends`` stage on the run's layout, with the options as its settings."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, cast

import typer

from abz_dask.commands.common import (
    POSITIVE,
    bounded,
    check_order,
    check_year,
    fail,
    local_cluster,
    run_stages,
    stage_config,
)
from abz_dask.io.location import url

if TYPE_CHECKING:
    from abz_dask.analyses.trends import Method

__all__ = ["register", "trends"]


def trends(
    run_dir: Annotated[str, typer.Argument(help="Run folder (holds fluxes.zarr and its inputs)")],
    fluxes: Annotated[str | None, typer.Option(
        help="Flux store [default: RUN_DIR/fluxes.zarr]")] = None,
    zones: Annotated[str | None, typer.Option(
        help="Zone layers [default: the run's, e.g. RUN_DIR/twin/zones.zarr]")] = None,
    cube: Annotated[str | None, typer.Option(
        help="Predictor cube for greening / predictor trends "
             "[default: the run's, e.g. RUN_DIR/twin/cube.zarr, if present]")] = None,
    fire: Annotated[str | None, typer.Option(
        help="Fire store for NEE + fire [default: the run's, e.g. RUN_DIR/twin/fire.zarr, if "
             "present]")] = None,
    truth: Annotated[str | None, typer.Option(
        help="Planted truth to compare with [default: RUN_DIR/twin/truth.zarr if present]")]
    = None,
    out: Annotated[str | None, typer.Option(
        help="Output folder [default: RUN_DIR/trends]")] = None,
    start: Annotated[int, typer.Option(help="First year")] = 2001,
    end: Annotated[int, typer.Option(help="Last year (at least 3 after START)")] = 2020,
    method: Annotated[str, typer.Option(help="Prewhitening: zhang, yuepilon or none")]
    = "zhang",
    preserve_range: Annotated[bool, typer.Option(
        help="zyp preserve.range.for.sig.test")] = True,
    alpha: Annotated[float, typer.Option(help="Significance level, in (0, 1)",
                                         callback=bounded(0.0, 1.0, low_open=True,
                                                          high_open=True))] = 0.05,
    predictors: Annotated[str, typer.Option(
        help="Comma-separated cube variables whose annual-mean trends are mapped; "
             "NAME:SEASON (JJA, spring, autumn) for a seasonal mean")]
    = "tair,snow_cover,soil_moisture,ndvi",
    overwrite: Annotated[bool, typer.Option(
        help="Replace outputs made with other settings")] = False,
    workers: Annotated[int | None, typer.Option(help="Local worker processes (>= 1)",
                                                callback=POSITIVE)] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars")] = True,
) -> None:
    """Per-pixel and budget trends (zyp.zhang), overlay, greening and shoulder seasons.

    Writes OUT/trend_maps.zarr (and truth_trend_maps.zarr for a twin), trend_shares.csv,
    overlay_shares.csv, greening.csv, budget_trends.csv and truth_comparison.csv. A rerun with
    the same settings finishes only what is missing.
    """
    import pandas as pd

    from abz_dask.analyses import TrendConfig
    from abz_dask.analyses.run import METHODS, prepare_output

    check_year("--start", start)
    check_year("--end", end)
    check_order("--start", start, "--end", end)
    if end - start < 3:
        fail(f"--start {start} --end {end}: a trend needs at least 4 years")
    if method not in METHODS:
        fail(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    t0 = time.perf_counter()
    names = tuple(p.strip() for p in predictors.split(",") if p.strip())
    sections = {"budgets": {"start_year": start, "end_year": end},
                "trends": {"enabled": True, "method": method, "preserve_range": preserve_range,
                           "alpha": alpha, "predictors": list(names)},
                "progress": progress}
    run_cfg, layout = stage_config(run_dir, sections, files_input=False, fluxes=fluxes,
                                   zones=zones, cube=cube, fire=fire, truth=truth, trends=out)
    try:
        cfg = TrendConfig(start=start, end=end, method=cast("Method", method),  # in METHODS
                          preserve_range=preserve_range, alpha=alpha, predictors=names)
        layout.require(**{"fluxes store": layout.fluxes, "zones store": layout.zones})
        inputs = layout.trend_inputs()
        for given, got in ((cube, inputs.cube), (fire, inputs.fire), (truth, inputs.truth)):
            if given is not None and got is None:
                raise FileNotFoundError(f"store {given} does not exist")
        prepare_output(inputs, layout.trends, cfg, overwrite=overwrite)  # before any cluster
        run_stages(run_cfg, ("trends",), layout, local_cluster(workers))
    except (ValueError, KeyError, FileExistsError, FileNotFoundError, RuntimeError) as e:
        fail(str(e))
    tables = {n: pd.read_csv(url(layout.trend_table(n))) for n in ("trend_shares", "budget_trends")
              if layout.trend_table(n).exists()}
    _summary(tables)
    typer.echo(f"trend outputs in {layout.trends} ({time.perf_counter() - t0:.1f} s)")


def _summary(tables: Mapping[str, object]) -> None:
    """Print the NEE share and budget-trend lines of the ABZ domain."""
    import pandas as pd

    sh = tables.get("trend_shares")
    if isinstance(sh, pd.DataFrame) and len(sh):
        sel = sh[(sh["variable"] == "NEE") & (sh["domain"] == "abz")]
        for _, r in sel.iterrows():
            typer.echo(f"{r['source']:>8}: ABZ area with significant NEE trend: "
                       f"{100 * r['share_sig_negative']:.1f} % increasing uptake, "
                       f"{100 * r['share_sig_positive']:.1f} % increasing emissions")
    bt = tables.get("budget_trends")
    if isinstance(bt, pd.DataFrame) and len(bt):
        sel = bt[(bt["season"] == "annual") & (bt["domain"] == "abz")]
        for _, r in sel.iterrows():
            att = (f", attenuation estimate {r['attenuation']:.2f} ± {r['attenuation_se']:.2f}"
                   if pd.notna(r.get("attenuation")) else "")
            typer.echo(f"{r['source']:>8}: ABZ {r['flux']} budget trend "
                       f"{r['trend_tg_c_per_yr']:+.2f} Tg C yr-2 (p = {r['sig']:.3g}){att}")


def register(app: typer.Typer) -> None:
    """Add ``trends`` to the ``abz-dask`` application."""
    app.command("trends")(trends)
