"""Does the bootstrap SD of a budget cover its error? Row versus site-block bootstrap.

The paper's budget uncertainty is the SD over 20 bootstrap models fitted on training sets
resampled by row (DECISIONS 8). ``network_sampling.py`` found that on the twin the spread of a
budget over redrawn site networks is several times that SD: resampling rows keeps every site in
every replicate, so the replicates never see the luck of which sites the network holds. A
site-block bootstrap (``bootstrap_unit: site`` in a training profile: whole sites drawn with
replacement, each with all its rows) does see it.

This script measures both on one twin. For network draws k = 0..N−1 (made, read and extracted as
in ``network_sampling.py``; draw k equal to the twin's seed is the demo's network) it trains the
central forest and B bootstrap models per unit (training seed k, NEE by default; the central
model is the same for both units), upscales all of them lazily over 2001–2020 and records per
domain the central budget, the bootstrap mean and SD. Over the draws, per unit: the mean
bootstrap SD against the SD of the central budgets (the network spread it should match), and
the coverage — the share of draws whose central budget lies within ±1 and ±1.96 bootstrap SD of
the planted truth (nominally 68 % and 95 % if the SD were an honest standard error).

Usage::

    abz-dask twin --out RUN/twin            # or use the twin of a demo run
    python benchmarks/bootstrap_unit.py RUN/twin [--draws 20] [--flux NEE] [--bootstraps 20]
        [--profile light] [--out benchmarks/RESULTS_bootstrap_unit.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import xarray as xr
from network_sampling import DOMAINS, END, START, Twin, draw_network, truth_budgets
from r_parity import markdown_table  # benchmarks/ is on sys.path when run as a script

from abz_dask.aggregation.budgets import annual_domain_budgets, domain_weights
from abz_dask.training import train_bundle
from abz_dask.training.profiles import resolve_profile
from abz_dask.upscale import compile_bundle, predict

UNITS = ("row", "site")


def unit_budgets(twin: Twin, table: pd.DataFrame, k: int, flux: str, profile: str,
                 n_boot: int, units: tuple[str, ...] = UNITS, **overrides: Any
                 ) -> list[dict[str, Any]]:
    """Per unit × domain: the central budget and the bootstrap budgets' mean and SD
    (Tg C yr⁻¹, mean 2001–2020) of forests trained on ``table`` with seed ``k``;
    ``overrides`` are further profile settings (e.g. ``bootstrap_cluster_km``)."""
    base = resolve_profile(profile).model_copy(update={
        "n_bootstrap": n_boot, "importance_repeats": 0, "pdp_points": 0, **overrides})
    period = twin.cube.sel(time=slice(str(START), str(END)))
    w = domain_weights(twin.zones, twin.grid.cell_area)
    rows = []
    for unit in units:
        bundle = train_bundle(table, profile=base.model_copy(update={"bootstrap_unit": unit}),
                              fluxes=[flux], seed=k, progress=False)
        models = compile_bundle(bundle)
        est = xr.Dataset({"central": predict(period, models.central[flux]), **{
            f"b{b}": predict(period, m) for b, m in enumerate(models.bootstraps[flux])}})
        annual = annual_domain_budgets(est, w).mean("year").compute()
        for d in DOMAINS:
            reps = np.array([float(annual[f"b{b}"].sel(domain=d)) for b in range(n_boot)])
            rows.append({"unit": unit, "domain": d,
                         "central": float(annual["central"].sel(domain=d)),
                         "boot_mean": reps.mean(), "boot_sd": reps.std(ddof=1)})
    return rows


def one_draw(twin: Twin, k: int, flux: str, profile: str, n_boot: int, work: Path
             ) -> list[dict[str, Any]]:
    """:func:`unit_budgets` of network draw ``k`` (row and site units)."""
    _, table = draw_network(twin, k, work)
    return [{"draw": k, **r} for r in unit_budgets(twin, table, k, flux, profile, n_boot)]


def summarise(draws: pd.DataFrame, truth: pd.Series, flux: str) -> pd.DataFrame:
    """Per unit × domain over the draws: truth, SD of the central budgets (network spread),
    mean and median bootstrap SD, their ratio to the network spread, and the coverage of the
    truth by central ± 1 and ± 1.96 bootstrap SD."""
    rows = []
    for (unit, d), g in draws.groupby(["unit", "domain"], sort=False):
        tv = float(truth[f"{flux}_{d}"])
        z = np.abs(g["central"].to_numpy() - tv) / g["boot_sd"].to_numpy()
        net = g["central"].std(ddof=1)
        rows.append({"unit": unit, "domain": d, "truth": tv, "network_sd": net,
                     "mean_boot_sd": g["boot_sd"].mean(), "median_boot_sd": g["boot_sd"].median(),
                     "boot_sd_over_network_sd": g["boot_sd"].mean() / net,
                     "cover_1sd": float((z <= 1.0).mean()), "cover_1.96sd": float(
                         (z <= 1.96).mean()), "n_draws": len(g)})
    return pd.DataFrame(rows)


def markdown(draws: pd.DataFrame, summary: pd.DataFrame, args: argparse.Namespace,
             wall: float) -> str:
    """The results page."""
    wide = draws.pivot_table(index=["draw", "domain"], columns="unit",
                             values=["central", "boot_mean", "boot_sd"], sort=False)
    wide.columns = [f"{v}_{u}" for v, u in wide.columns]
    wide = wide.reset_index().drop(columns="central_site").rename(
        columns={"central_row": "central"})
    return "\n".join([
        f"# Bootstrap unit: does the budget SD cover the error? ({args.flux})",
        "",
        f"Command: `python benchmarks/bootstrap_unit.py {args.twin} --draws {args.draws} "
        f"--flux {args.flux} --bootstraps {args.bootstraps} --profile {args.profile}` "
        f"({wall / 60:.1f} min).",
        "",
        "## Over the draws (Tg C yr⁻¹, mean 2001–2020)",
        "",
        markdown_table(summary, 2),
        "",
        "`network_sd` is the SD of the central budgets over the redrawn networks; `cover_*` the "
        "share of draws whose central budget lies within that many bootstrap SD of the truth.",
        "",
        "## Every draw",
        "",
        markdown_table(wide, 0),
        "",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("twin", type=Path, help="twin folder (e.g. RUN/twin of a demo run)")
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--flux", default="NEE")
    ap.add_argument("--bootstraps", type=int, default=20)
    ap.add_argument("--profile", default="light")
    ap.add_argument("--out", type=Path, default=None, help="Markdown results file")
    args = ap.parse_args(argv)
    if args.bootstraps < 2 or args.draws < 2:
        ap.error("--bootstraps and --draws must be at least 2 (an SD needs two values)")
    twin = Twin.open(args.twin)
    truth = truth_budgets(twin.truth, twin.zones, [args.flux])
    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, dask.config.set(scheduler="threads"):
        for k in range(args.draws):
            t = time.perf_counter()
            got = one_draw(twin, k, args.flux, args.profile, args.bootstraps, Path(tmp))
            rows += got
            abz = {r["unit"]: r for r in got if r["domain"] == "abz"}
            print(f"draw {k:3d} ({time.perf_counter() - t:.0f} s): truth ABZ "
                  f"{truth[f'{args.flux}_abz']:.0f}, central {abz['row']['central']:.0f}; "
                  + "; ".join(f"{u} bootstrap SD {abz[u]['boot_sd']:.0f}" for u in UNITS),
                  flush=True)
    wall = time.perf_counter() - t0
    draws = pd.DataFrame(rows)
    summary = summarise(draws, truth, args.flux)
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    if args.out is not None:
        args.out.write_text(markdown(draws, summary, args, wall))
        print(f"written {args.out}")
    abz = summary[summary["domain"] == "abz"].set_index("unit")
    print(" ".join(f"{k}_{u}={abz.loc[u, c]:.3f}" for u in UNITS for k, c in (
        ("sd_over_network", "boot_sd_over_network_sd"), ("cover196", "cover_1.96sd"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
