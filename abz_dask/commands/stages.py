"""``abz-dask train`` and ``abz-dask upscale``: the two expensive stages on their own.

Both work on a run folder laid out like the demo's (``RUN/twin/cube.zarr``, ``RUN/twin/zones.zarr``,
``RUN/twin/abcflux_twin.csv``, ``RUN/models/``, ``RUN/fluxes.zarr``); every input path can be
given explicitly instead, so real inputs work the same way.
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
)
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
    run: Annotated[Path, typer.Argument(help="Run folder (writes RUN/training and RUN/models)")],
    config: Annotated[Path | None, typer.Option(
        help="YAML with any of: cube, zones, sites (relative to the YAML's folder), profile "
             "(name, YAML path or mapping), fluxes, seed; command-line flags win")] = None,
    cube: Annotated[Path | None, typer.Option(help="Predictor cube (default RUN/twin/cube.zarr)")]
    = None,
    zones: Annotated[Path | None, typer.Option(help="Zones (default RUN/twin/zones.zarr)")] = None,
    sites: Annotated[Path | None, typer.Option(
        help="ABCflux CSV (default RUN/twin/abcflux_twin.csv)")] = None,
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
    from abz_dask.io.abcflux import InputError
    from abz_dask.pipeline.demo import train_stage
    from abz_dask.training import resolve_profile

    cfg = _train_config(config)
    base = config.parent if config is not None else Path()  # config paths are relative to it
    paths = {k: v if v is not None else base / cfg[k] if k in cfg else run / "twin" / default
             for k, v, default in (("cube", cube, "cube.zarr"), ("zones", zones, "zones.zarr"),
                                   ("sites", sites, "abcflux_twin.csv"))}
    for k, p in paths.items():
        if not p.exists():
            fail(f"{k} input {p} does not exist")
    try:
        prof = resolve_profile(profile or cfg.get("profile", "light"))
    except ValueError as e:
        fail(str(e))
    fluxes = tuple(flux or cfg.get("fluxes", ("NEE", "GPP", "Reco")))
    t0 = time.perf_counter()
    try:
        with local_cluster(workers):
            bundle: Any = train_stage(paths["cube"], paths["zones"], paths["sites"], run,
                                      profile=prof, fluxes=fluxes,
                                      seed=seed if seed is not None
                                      else cfg.get("seed", DEFAULT_SEED))
    except (InputError, ValueError) as e:
        fail(str(e))
    typer.echo(f"models written to {run / 'models'} in {time.perf_counter() - t0:.1f} s "
               f"(profile {prof.name}; {prof.n_bootstrap} bootstraps by {prof.bootstrap_unit})")
    for f in fluxes:
        m = bundle.card["models"][f]
        cv = m["cv_metrics"]
        typer.echo(f"  {f}: mtry {m['central']['mtry']}, n {m['n_rows']} rows / "
                   f"{m['n_sites']} sites, "
                   f"CV R² {cv['R2']:.3f}, RMSE {cv['RMSE']:.2f}, MAE {cv['MAE']:.2f}, "
                   f"MBE {cv['MBE']:+.2f} g C m⁻² month⁻¹")


def upscale(
    run: Annotated[Path, typer.Argument(help="Run folder (reads RUN/models, writes "
                                              "RUN/fluxes.zarr)")],
    cube: Annotated[Path | None, typer.Option(help="Predictor cube (default RUN/twin/cube.zarr)")]
    = None,
    zones: Annotated[Path | None, typer.Option(help="Zones (default RUN/twin/zones.zarr)")] = None,
    models: Annotated[Path | None, typer.Option(help="Model bundle (default RUN/models)")] = None,
    out: Annotated[Path | None, typer.Option(help="Flux store (default RUN/fluxes.zarr)")] = None,
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
    import xarray as xr

    from abz_dask.pipeline.demo import check_n_bootstrap
    from abz_dask.training import BundleMismatchError, load_bundle
    from abz_dask.upscale import (
        UpscaleConfig,
        budget_table,
        compile_bundle,
        project_core_hours,
        run_upscale,
    )

    _check_period(start, end)
    cube = cube or run / "twin" / "cube.zarr"
    zones = zones or run / "twin" / "zones.zarr"
    models = models or run / "models"
    out = out or run / "fluxes.zarr"
    for name, p in (("cube", cube), ("zones", zones), ("models", models / "card.json")):
        if not p.exists():
            fail(f"{name} input {p} does not exist")
    t0 = time.perf_counter()
    try:
        cube_ds = xr.open_zarr(cube, consolidated=False)
        _check_period_in_cube(start, end, cube_ds, cube)
        bundle = load_bundle(models, cube=cube_ds)
        check_n_bootstrap(bundle, n_bootstrap, "--n-bootstrap")
        cfg = UpscaleConfig(start=start, end=end, tile=tile, bootstrap_sample=bootstrap_sample)
        with local_cluster(workers):
            ms = compile_bundle(bundle, n_bootstrap=n_bootstrap)
            tiles = run_upscale(cube, zones, out, ms, cfg)
    except (BundleMismatchError, ValueError, FileExistsError) as e:
        fail(str(e))
    wall = time.perf_counter() - t0
    tab = budget_table(out)
    typer.echo(tab.to_string(index=False, float_format=lambda v: f"{v:,.1f}"))
    typer.echo(f"\nflux store {out}: {len(tiles)} tiles in {wall:.1f} s wall")
    nf = len(ms.fluxes)
    for f_ in sorted({bootstrap_sample, 1.0, 0.1}, reverse=True):
        proj = project_core_hours(tiles, n_fluxes=nf, n_bootstrap=20, bootstrap_sample=f_)
        typer.echo(f"measured {proj['tree_rows_per_core_s'] / 500:,.0f} rows per core-second per "
                   f"500-tree forest (whole tile tasks; "
                   f"{proj['mean_trees_measured']:.0f}-tree forests run) -> full 1-km product "
                   f"({nf} fluxes x (1 + 20 bootstraps x f={f_:g}), "
                   f"240 months, 20.7 M land cells, 500 trees): "
                   f"{proj['core_hours_1km']:,.0f} core-hours")


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
