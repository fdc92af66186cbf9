"""Stages chained into runs: the digital-twin demo end to end.

Library code never creates a cluster; the CLI (:mod:`abz_dask.cli`) does, and every stage here
runs on whatever scheduler is active.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import xarray as xr

from abz_dask.config import DEFAULT_SEED
from abz_dask.grid import Grid
from abz_dask.twin import TwinLayout, generate_twin

if TYPE_CHECKING:
    from abz_dask.training import TrainingProfile

__all__ = ["DemoResult", "check_n_bootstrap", "compare_budgets", "extract_stage", "run_demo",
           "train_stage", "upscale_stage"]


@dataclass
class DemoResult:
    """What a demo run produced."""

    out: Path
    budgets: pd.DataFrame
    timings: dict[str, float] = field(default_factory=dict)
    projection: dict[str, float] = field(default_factory=dict)


def compare_budgets(estimate: pd.DataFrame, truth_csv: Path, start: int, end: int
                    ) -> pd.DataFrame:
    """Join period-mean estimated budgets with the twin's truth budgets.

    Returns the columns ``domain, flux, estimate_tg_c_yr, truth_tg_c_yr, error_tg_c_yr,
    rel_error, boot_sd_tg_c_yr`` and the area columns of the estimate (``area_mkm2``,
    ``area_predicted_mkm2``, ``excluded_area_mkm2``) when it has them. ``error = estimate −
    truth`` and ``rel_error = error / |truth|`` (meaningless where the truth is near zero, e.g.
    the near-neutral tundra NEE).
    """
    truth = pd.read_csv(truth_csv)
    truth = truth[(truth["year"] >= start) & (truth["year"] <= end)]
    tmean = truth.groupby(["domain", "flux"], as_index=False).agg(
        truth_tg_c_yr=("budget_tg_c_yr", "mean"))
    tab = estimate.merge(tmean, on=["domain", "flux"], how="left")
    tab["error_tg_c_yr"] = tab["estimate_tg_c_yr"] - tab["truth_tg_c_yr"]
    tab["rel_error"] = tab["error_tg_c_yr"] / tab["truth_tg_c_yr"].abs()
    order = {"abz": 0, "tundra": 1, "boreal": 2, "permafrost": 3}
    tab = tab.sort_values(["domain", "flux"], key=lambda s: s.map(order).fillna(9)
                          if s.name == "domain" else s.map({"NEE": 0, "GPP": 1, "Reco": 2}))
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
    from abz_dask.abcflux import read_abcflux
    from abz_dask.extract import extract_training_table

    cube = xr.open_zarr(cube_path, consolidated=False)
    zones = xr.open_zarr(zones_path, consolidated=False)
    grid = Grid.of_dataset(cube)
    years = (int(cube.time.dt.year.min()), int(cube.time.dt.year.max()))
    obs = read_abcflux(sites_csv, grid=grid, zones=zones, years=years,
                       **read_options)  # type: ignore[arg-type]
    return extract_training_table(obs, cube, grid)


def train_stage(cube_path: Path, zones_path: Path, sites_csv: Path, out: Path, *,
                profile: str | TrainingProfile = "light",
                fluxes: tuple[str, ...] = ("NEE", "GPP", "Reco"),
                seed: int = DEFAULT_SEED, progress: bool = True) -> object:
    """Extraction + training: writes ``out/training/`` and ``out/models/`` (see
    :func:`abz_dask.training.run_training`); returns the model bundle."""
    from abz_dask.training import run_training

    table, report = extract_stage(cube_path, zones_path, sites_csv)
    (out / "training").mkdir(parents=True, exist_ok=True)
    report.to_csv(out / "training" / "extraction_report.csv")
    return run_training(table, out, profile=profile, fluxes=fluxes, seed=seed,
                        progress=progress)


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


def upscale_stage(layout: TwinLayout, models_dir: Path, out: Path, *, bootstrap_sample: float,
                  n_bootstrap: int | None, progress: bool) -> pd.DataFrame:
    """Load a model bundle (checked against the cube), compile and run the tile upscaler.

    Raises ``ValueError`` when ``n_bootstrap`` exceeds the bundle's replicates
    (:func:`check_n_bootstrap`)."""
    from abz_dask.training import load_bundle
    from abz_dask.upscale import UpscaleConfig, compile_bundle, run_upscale

    cube = xr.open_zarr(layout.cube, consolidated=False)
    bundle = load_bundle(models_dir, cube=cube)
    check_n_bootstrap(bundle, n_bootstrap)
    models = compile_bundle(bundle, n_bootstrap=n_bootstrap)
    cfg = UpscaleConfig(bootstrap_sample=bootstrap_sample)
    return run_upscale(layout.cube, layout.zones, out, models, cfg, progress=progress)


def run_demo(out: str | Path, *, resolution: str = "50km", seed: int = DEFAULT_SEED,
             profile: str = "light", start_year: int = 2001, end_year: int = 2020,
             bootstrap_sample: float = 1.0, progress: bool = True) -> DemoResult:
    """The digital twin end to end: twin → ABCflux CSV → extraction → training → upscaling →
    budgets compared with the planted truth.

    Parameters
    ----------
    out : path
        Run folder (resumable: finished stages are skipped).
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
    """
    from abz_dask.report import build_report  # Table 1 (CSV + Markdown) and report.html
    from abz_dask.upscale import budget_table, project_core_hours

    out = Path(out)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    layout = generate_twin(out / "twin", resolution=resolution, seed=seed, progress=progress)
    timings["twin_s"] = time.perf_counter() - t0
    models_dir = out / "models"
    t0 = time.perf_counter()
    if not (models_dir / "card.json").exists():
        train_stage(layout.cube, layout.zones, layout.sites, out, profile=profile, seed=seed,
                    progress=progress)
    timings["train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tiles = upscale_stage(layout, models_dir, out / "fluxes.zarr",
                          bootstrap_sample=bootstrap_sample, n_bootstrap=None, progress=progress)
    timings["upscale_s"] = time.perf_counter() - t0
    est = budget_table(out / "fluxes.zarr", start_year, end_year)
    tab = compare_budgets(est, layout.truth_budgets, start_year, end_year)
    tmp = out / "budgets.csv.tmp"
    tab.to_csv(tmp, index=False)
    tmp.replace(out / "budgets.csv")
    nb = int(est["n_bootstrap"].iloc[0]) if len(est) else 0
    proj = project_core_hours(tiles, n_fluxes=3, n_bootstrap=20,
                              bootstrap_sample=bootstrap_sample)
    proj["n_bootstrap_run"] = nb
    t0 = time.perf_counter()
    build_report(out, start=start_year, end=end_year)
    timings["report_s"] = time.perf_counter() - t0
    return DemoResult(out, tab, timings, proj)
