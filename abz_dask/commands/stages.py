"""``abz-dask train`` and ``abz-dask upscale``: the two expensive stages on their own.

Both are the stage runner (:func:`abz_dask.pipeline.runner.run_pipeline`) on a run
configuration built from the options and the run folder's saved input (its
``run_config.json`` or its twin), running only the stages they name (``extract`` + ``train``,
``upscale``); every input path can be given explicitly instead, so real inputs work the same
way. Paths come from the run's :class:`~abz_dask.pipeline.layout.RunLayout`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from abz_dask.commands.common import (
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    bounded,
    check_month,
    check_order,
    fail,
    local_cluster,
    run_stages,
    stage_config,
)
from abz_dask.io.location import url
from abz_dask.pipeline.config import DEFAULT_SEED, MIN_TILE

__all__ = ["register", "train", "upscale"]

_TRAIN_KEYS = {"cube", "zones", "sites", "profile", "fluxes", "seed"}


def _train_config(path: Path | None) -> dict[str, Any]:
    """Read the optional YAML of ``abz-dask train`` (keys :data:`_TRAIN_KEYS`)."""
    if path is None:
        return {}
    from abz_dask.io.yamlfile import read_mapping

    try:
        data = read_mapping(path, "training config")
    except ValueError as e:
        fail(str(e))
    unknown = sorted(set(data) - _TRAIN_KEYS)
    if unknown:
        fail(f"{path}: unknown key(s) {unknown}; allowed: {sorted(_TRAIN_KEYS)}")
    seed = data.get("seed")
    if "seed" in data and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        fail(f"{path}: seed {seed!r}: must be a whole number >= 0")
    return data


def train(
    run: Annotated[str, typer.Argument(help="Run folder (writes RUN/training and RUN/models)")],
    config: Annotated[Path | None, typer.Option(
        help="YAML with any of: cube, zones, sites (relative to the YAML's folder), profile "
             "(name, YAML path or mapping), fluxes, seed; command-line flags win")] = None,
    cube: Annotated[str | None, typer.Option(
        help="Predictor cube (default: the run's, e.g. RUN/twin/cube.zarr)")] = None,
    zones: Annotated[str | None, typer.Option(
        help="Zones (default: the run's, e.g. RUN/twin/zones.zarr)")] = None,
    sites: Annotated[str | None, typer.Option(
        help="ABCflux CSV (default: the run's, e.g. RUN/twin/abcflux_twin.csv)")] = None,
    profile: Annotated[str | None, typer.Option(
        help="Training profile: light, paper, or a YAML file of overrides")] = None,
    flux: Annotated[list[str] | None, typer.Option(
        help="Response to model (repeat; default NEE, GPP, Reco)")] = None,
    seed: Annotated[int | None, typer.Option(
        help=f"Base seed, >= 0 (default: the config file's, else {DEFAULT_SEED}, the seed of "
             "the demo and of run configurations)", callback=NON_NEGATIVE)] = None,
    workers: Annotated[int | None, typer.Option(help="Local worker processes (>= 1)",
                                                callback=POSITIVE)] = None,
) -> None:
    """Extract predictors at the sites, tune forests by leave-one-site-out CV, fit the central
    and bootstrap models and write diagnostics and the model bundle."""
    import json

    from abz_dask.io.abcflux import InputError
    from abz_dask.training import resolve_profile

    cfg = _train_config(config)
    base = config.parent if config is not None else Path()  # config paths are relative to it
    given = {k: v if v is not None else base / cfg[k] if k in cfg else None
             for k, v in (("cube", cube), ("zones", zones), ("sites", sites))}
    name = profile or cfg.get("profile", "light")
    try:
        prof = resolve_profile(name)
    except ValueError as e:
        fail(str(e))
    if isinstance(name, str) and Path(name).suffix:
        name = str(Path(name).absolute())
    fluxes = tuple(flux or cfg.get("fluxes", ("NEE", "GPP", "Reco")))
    training = {"profile": name, "fluxes": list(fluxes),
                "seed": seed if seed is not None else cfg.get("seed", DEFAULT_SEED)}
    run_cfg, layout = stage_config(run, {"training": training, "trends": {"enabled": False}},
                                   cube=given["cube"], zones=given["zones"],
                                   abcflux=given["sites"])
    for k, p in (("cube", layout.cube), ("zones", layout.zones), ("sites", layout.abcflux)):
        if not p.exists():
            fail(f"{k} input {p} does not exist")
    t0 = time.perf_counter()
    try:
        run_stages(run_cfg, ("extract", "train"), layout, local_cluster(workers))
    except (InputError, ValueError, FileExistsError, FileNotFoundError, RuntimeError) as e:
        fail(str(e))
    card: Any = json.loads(layout.card.read_text())
    typer.echo(f"models written to {layout.models} in {time.perf_counter() - t0:.1f} s "
               f"(profile {prof.name}; {prof.n_bootstrap} bootstraps by {prof.bootstrap_unit})")
    for f in fluxes:
        m = card["models"][f]
        cv = m["cv_metrics"]
        typer.echo(f"  {f}: mtry {m['central']['mtry']}, n {m['n_rows']} rows / "
                   f"{m['n_sites']} sites, "
                   f"CV R² {cv['R2']:.3f}, RMSE {cv['RMSE']:.2f}, MAE {cv['MAE']:.2f}, "
                   f"MBE {cv['MBE']:+.2f} g C m⁻² month⁻¹")


def upscale(
    run: Annotated[str, typer.Argument(help="Run folder (reads RUN/models, writes "
                                              "RUN/fluxes.zarr)")],
    cube: Annotated[str | None, typer.Option(
        help="Predictor cube (default: the run's, e.g. RUN/twin/cube.zarr)")] = None,
    zones: Annotated[str | None, typer.Option(
        help="Zones (default: the run's, e.g. RUN/twin/zones.zarr)")] = None,
    models: Annotated[str | None, typer.Option(help="Model bundle (default RUN/models)")] = None,
    out: Annotated[str | None, typer.Option(help="Flux store (default RUN/fluxes.zarr)")] = None,
    bootstrap_sample: Annotated[float, typer.Option(
        help="Fraction f of domain cells on which bootstrap replicates run, in (0, 1] "
             "(1 = exact)", callback=FRACTION)] = 1.0,
    n_bootstrap: Annotated[int | None, typer.Option(
        help="Use only the first N bootstraps (0 <= N <= bootstraps in the bundle)",
        callback=NON_NEGATIVE)] = None,
    start: Annotated[str | None, typer.Option(
        help="First month YYYY-MM, a January (default: the cube's first whole year)")] = None,
    end: Annotated[str | None, typer.Option(
        help="Last month YYYY-MM, a December (default: the cube's last whole year)")] = None,
    tile: Annotated[int | None, typer.Option(
        help=f"Tile edge in cells, >= {MIN_TILE} (default: cube chunk)",
        callback=bounded(MIN_TILE))] = None,
    workers: Annotated[int | None, typer.Option(help="Local worker processes (>= 1)",
                                                callback=POSITIVE)] = None,
) -> None:
    """Predict every month and cell (central + bootstrap models, single pass, resumable) and
    report throughput and the projected cost of the full 1-km product."""
    import pandas as pd
    import xarray as xr

    from abz_dask.pipeline.demo import check_n_bootstrap
    from abz_dask.training import BundleMismatchError, load_bundle
    from abz_dask.upscale import budget_table, project_core_hours
    from abz_dask.upscale.results import projection_line

    _check_period(start, end)
    settings = {"start": start, "end": end, "tile": tile, "bootstrap_sample": bootstrap_sample,
                "n_bootstrap": n_bootstrap}
    run_cfg, layout = stage_config(run, {"upscale": settings, "trends": {"enabled": False}},
                                   cube=cube, zones=zones, models=models, fluxes=out)
    for name, p in (("cube", layout.cube), ("zones", layout.zones), ("models", layout.card)):
        if not p.exists():
            fail(f"{name} input {p} does not exist")
    t0 = time.perf_counter()
    try:
        cube_ds = xr.open_zarr(url(layout.cube), consolidated=False)
        _check_period_in_cube(start, end, cube_ds, layout.cube)
        bundle = load_bundle(layout.models, cube=cube_ds)  # refused before any cluster starts
        check_n_bootstrap(bundle, n_bootstrap, "--n-bootstrap")
        run_stages(run_cfg, ("upscale",), layout, local_cluster(workers))
    except (BundleMismatchError, ValueError, FileExistsError, FileNotFoundError,
            RuntimeError) as e:
        fail(str(e))
    wall = time.perf_counter() - t0
    tiles = pd.read_csv(url(layout.upscale_tiles))
    tab = budget_table(layout.fluxes)
    typer.echo(tab.to_string(index=False, float_format=lambda v: f"{v:,.1f}"))
    typer.echo(f"\nflux store {layout.fluxes}: {len(tiles)} tiles in {wall:.1f} s wall")
    nf = len(bundle.card["fluxes"])
    for f_ in sorted({bootstrap_sample, 1.0, 0.1}, reverse=True):
        typer.echo(projection_line(project_core_hours(tiles, n_fluxes=nf, n_bootstrap=20,
                                                      bootstrap_sample=f_), nf, f_))


def _check_period(start: str | None, end: str | None) -> None:
    """``--start`` / ``--end`` of ``upscale``: months, whole years (the upscaler predicts whole
    years only, so a partial year would be dropped without a word), in order."""
    check_month("--start", start)
    check_month("--end", end)
    if start is not None and not start.endswith("-01"):
        fail(f"--start {start!r}: the upscaler predicts whole years; give a January")
    if end is not None and not end.endswith("-12"):
        fail(f"--end {end!r}: the upscaler predicts whole years; give a December")
    check_order("--start", start, "--end", end)


def _check_period_in_cube(start: str | None, end: str | None, cube: Any, path: Path) -> None:
    """Refuse ``--start`` / ``--end`` outside the months of the predictor cube."""
    import pandas as pd

    t = pd.DatetimeIndex(cube["time"].values)
    first, last = t.min().strftime("%Y-%m"), t.max().strftime("%Y-%m")
    for opt, v in (("--start", start), ("--end", end)):
        if v is not None and not first <= v <= last:
            fail(f"{opt} {v}: outside the months of the cube {path} ({first}..{last})")


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``upscale`` to the ``abz-dask`` application."""
    app.command()(train)
    app.command()(upscale)
