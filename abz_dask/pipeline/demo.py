"""The digital-twin demo (the stage runner on :func:`demo_config`) and helpers of the stages:
reading + extracting an ABCflux CSV, the bootstrap-count check, budgets vs a reference.

Library code never creates a cluster; the CLI (:mod:`abz_dask.cli`) does, and every stage here
runs on whatever scheduler is active.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import xarray as xr

from abz_dask.geo.grid import Grid
from abz_dask.io.location import is_url, url
from abz_dask.pipeline.config import DEFAULT_SEED, RunConfig

__all__ = ["DemoResult", "check_n_bootstrap", "compare_budgets", "demo_config", "extract_stage",
           "run_demo"]


@dataclass
class DemoResult:
    """What a demo run produced."""

    out: Path
    budgets: pd.DataFrame
    timings: dict[str, float] = field(default_factory=dict)
    projection: dict[str, float] = field(default_factory=dict)


def compare_budgets(estimate: pd.DataFrame, truth_csv: Path, start: int, end: int, *,
                    fire: xr.DataArray | None = None) -> pd.DataFrame:
    """Join period-mean estimated budgets with the twin's truth budgets.

    Returns the columns ``domain, flux, estimate_tg_c_yr, truth_tg_c_yr, error_tg_c_yr,
    rel_error, boot_sd_tg_c_yr`` and the area columns of the estimate (``area_mkm2``,
    ``area_predicted_mkm2``, ``excluded_area_mkm2``) when it has them. ``error = estimate −
    truth`` and ``rel_error = error / |truth|`` (meaningless where the truth is near zero, e.g.
    the near-neutral tundra NEE). With ``fire`` (annual fire budgets ``(year, domain)``, Tg C
    yr⁻¹), the truth of the ``NEE+fire`` rows is the truth NEE plus that fire budget over the
    years the fire record covers (as the estimate's, :func:`~abz_dask.upscale.budget_table`).
    """
    truth = pd.read_csv(url(truth_csv))
    truth = truth[(truth["year"] >= start) & (truth["year"] <= end)]
    if fire is not None:
        fb = fire.compute().to_dataframe(name="fire").reset_index()[["year", "domain", "fire"]]
        nee = truth[truth["flux"] == "NEE"].merge(fb, on=["year", "domain"])
        truth = pd.concat([truth, nee.assign(flux="NEE+fire",
                                             budget_tg_c_yr=nee["budget_tg_c_yr"] + nee["fire"])
                           .drop(columns="fire")], ignore_index=True)
    tmean = truth.groupby(["domain", "flux"], as_index=False).agg(
        truth_tg_c_yr=("budget_tg_c_yr", "mean"))
    tab = estimate.merge(tmean, on=["domain", "flux"], how="left")
    tab["error_tg_c_yr"] = tab["estimate_tg_c_yr"] - tab["truth_tg_c_yr"]
    tab["rel_error"] = tab["error_tg_c_yr"] / tab["truth_tg_c_yr"].abs()
    order = {"abz": 0, "tundra": 1, "boreal": 2, "permafrost": 3}
    fluxes = {"NEE": 0, "GPP": 1, "Reco": 2, "NEE+fire": 3}
    tab = tab.sort_values(["domain", "flux"], key=lambda s: s.map(order).fillna(9)
                          if s.name == "domain" else s.map(fluxes))
    cols = ["domain", "flux", "estimate_tg_c_yr", "truth_tg_c_yr", "error_tg_c_yr", "rel_error",
            "boot_sd_tg_c_yr"]
    cols += [c for c in ("area_mkm2", "area_predicted_mkm2", "excluded_area_mkm2") if c in tab]
    return tab[cols].reset_index(drop=True)


def extract_stage(cube_path: Path, zones_path: Path, sites_csv: Path, **read_options: object
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read an ABCflux CSV (validated against the grid and the cube's years) and extract the
    predictors at its site-months.

    Returns
    -------
    (DataFrame, DataFrame)
        The training table and the per-flux report of dropped rows.
    """
    from abz_dask.io.abcflux import read_abcflux
    from abz_dask.training.extract import extract_training_table

    cube = xr.open_zarr(url(cube_path), consolidated=False)
    zones = xr.open_zarr(url(zones_path), consolidated=False)
    grid = Grid.of_dataset(cube)
    years = (int(cube.time.dt.year.min()), int(cube.time.dt.year.max()))
    obs = read_abcflux(sites_csv, grid=grid, zones=zones, years=years,
                       **read_options)  # type: ignore[arg-type]
    return extract_training_table(obs, cube, grid)


def check_n_bootstrap(bundle: object, n_bootstrap: int | None,
                      name: str = "n_bootstrap") -> None:
    """Refuse a bootstrap count the model bundle cannot supply.

    :func:`abz_dask.upscale.compile_bundle` takes the first ``n_bootstrap`` replicates of each
    flux, so asking for more than were trained would silently use fewer; this makes it an error.

    Parameters
    ----------
    bundle : ModelBundle
        Trained models (``.bootstraps``: flux -> list of replicate models).
    n_bootstrap : int, optional
        Replicates asked for (``None``: all there are).
    name : str
        The option or key named in the message (``--n-bootstrap``, ``upscale.n_bootstrap``).

    Raises
    ------
    ValueError
        ``n_bootstrap`` is negative or above the replicates of some flux.
    """
    if n_bootstrap is None:
        return
    if n_bootstrap < 0:
        raise ValueError(f"{name} {n_bootstrap}: must be >= 0")
    held = {f: len(b) for f, b in getattr(bundle, "bootstraps", {}).items()}
    short = {f: n for f, n in held.items() if n < n_bootstrap}
    if short:
        have = ", ".join(f"{f} {n}" for f, n in short.items())
        raise ValueError(f"{name} {n_bootstrap}: the model bundle holds fewer bootstrap models "
                         f"({have}); use at most {min(held.values())} or retrain with more")


def demo_config(out: str | Path, *, resolution: str = "50km", seed: int = DEFAULT_SEED,
                profile: str = "light", start_year: int = 2001, end_year: int = 2020,
                bootstrap_sample: float = 1.0, progress: bool = True) -> RunConfig:
    """The run configuration of the demo: a twin input, the training profile, budgets and the
    report (no trends), every seed ``seed``."""
    from abz_dask.pipeline.config import parse_config

    return parse_config({
        "output": str(out) if is_url(out) else str(Path(out).absolute()),
        "input": {"kind": "twin", "resolution": resolution, "seed": seed},
        "training": {"profile": profile, "seed": seed},
        "upscale": {"bootstrap_sample": bootstrap_sample},
        "budgets": {"start_year": start_year, "end_year": end_year},
        "trends": {"enabled": False}, "report": {"enabled": True}, "progress": progress})


def run_demo(out: str | Path, *, resolution: str = "50km", seed: int = DEFAULT_SEED,
             profile: str = "light", start_year: int = 2001, end_year: int = 2020,
             bootstrap_sample: float = 1.0, progress: bool = True,
             echo: Callable[[str], None] | None = None) -> DemoResult:
    """The digital twin end to end: twin → ABCflux CSV → extraction → training → upscaling →
    budgets compared with the planted truth → Table 1 and the report.

    The demo is the stage runner (:func:`abz_dask.pipeline.runner.run_pipeline`) on
    :func:`demo_config`: one pipeline path, one run layout, resumable (finished stages are
    skipped), locked and verified like every run.

    Parameters
    ----------
    out : path
        Run folder.
    resolution : str
        Twin grid preset.
    seed : int
        Seed of the twin and the models.
    profile : str
        Training profile (``"light"`` or ``"paper"``).
    start_year, end_year : int
        Period of the budgets.
    bootstrap_sample : float
        Fraction of cells for bootstrap replicates (1 = exact).
    progress : bool
        Show progress bars.
    echo : callable, optional
        Receives the runner's line per stage.
    """
    from abz_dask.aggregation.zonal import open_flux_store
    from abz_dask.pipeline.layout import RunLayout
    from abz_dask.pipeline.runner import run_pipeline
    from abz_dask.upscale import project_core_hours

    cfg = demo_config(out, resolution=resolution, seed=seed, profile=profile,
                      start_year=start_year, end_year=end_year,
                      bootstrap_sample=bootstrap_sample, progress=progress)
    res = run_pipeline(cfg, echo=echo)
    lay = RunLayout.from_config(cfg)
    timings = {f"{s.name}_s": s.seconds for s in res.stages}
    tab = pd.read_csv(url(lay.budgets))
    tiles = pd.read_csv(url(lay.upscale_tiles))
    proj = project_core_hours(tiles, n_fluxes=3, n_bootstrap=20,
                              bootstrap_sample=bootstrap_sample)
    proj["n_bootstrap_run"] = int(open_flux_store(lay.fluxes).attrs.get("n_bootstrap", 0))
    return DemoResult(res.out, tab, timings, proj)
