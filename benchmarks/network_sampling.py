"""How much of a budget's error is the luck of the site network? Redraw it on a fixed twin.

The demo trains on ONE site network (the twin's, drawn with the twin's seed) and compares the
upscaled budgets with the planted truth. That single comparison mixes two things: a bias of the
method and the luck of where the ~200 sites happen to be. This script separates them. It keeps a
twin's predictor cube and planted truth fixed and, for draws k = 0..N-1, builds a new network and
its observations exactly as the twin does (:func:`abz_dask.twin.sites.make_sites` and
:func:`~abz_dask.twin.sites.site_observations` with seed k), writes it as an ABCflux CSV, reads
and extracts it like any real file (:func:`abz_dask.pipeline.demo.extract_stage`), trains the
central
forests with training seed k (the demo trains with the twin's seed) and upscales them lazily over
2001–2020 (:func:`abz_dask.upscale.predict`). Two forests per flux and draw: *tuned* (the
profile's mtry tuning; grouped k-fold for ``light``, as in the demo) and *untuned* (one fit at
randomForest's default mtry, floor(p / 3) = 5) — the comparison the training issue asks for.
No bootstraps or diagnostics.

Draw k equal to the twin's seed re-creates the twin's own network; the script checks that its
CSV equals the twin's ``abcflux_twin.csv`` byte for byte, so that row is the demo's network.

Printed and written (``--out``, Markdown): per draw the domain budgets against the truth; over
the draws, per model, the mean, the SD (the network-sampling uncertainty, which the paper's row
bootstrap does not see), the mean error with its standard error, the mean absolute error and how
many draws land within ±15 % of the truth. ``--perfect`` replaces every observation by the
planted truth of its cell and month (no site factor, no measurement noise), which leaves only
where and when the sites measure; ``--without-diseq`` sets the twin's hidden respiration field D
(:func:`abz_dask.twin.truth.diseq_factor`) to 0 in the truth and so in the observations.

Usage::

    abz-dask twin --out RUN/twin            # or use the twin of a demo run
    python benchmarks/network_sampling.py RUN/twin [--draws 20] [--fluxes NEE]
        [--profile light] [--perfect] [--out benchmarks/RESULTS_network_sampling.md]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import xarray as xr
from r_parity import markdown_table  # benchmarks/ is on sys.path when run as a script

from abz_dask.aggregation.budgets import annual_domain_budgets, domain_weights
from abz_dask.geo.grid import Grid
from abz_dask.io.predictors import PREDICTOR_NAMES
from abz_dask.pipeline.demo import extract_stage
from abz_dask.training import train_bundle
from abz_dask.training.profiles import resolve_profile
from abz_dask.twin import TwinLayout
from abz_dask.twin.sites import make_sites, site_observations
from abz_dask.twin.truth import RA_FRACTION, diseq_factor
from abz_dask.upscale import compile_bundle, predict

START, END = 2001, 2020
DOMAINS = ("abz", "tundra", "boreal", "permafrost")


def _perfect(table: pd.DataFrame, truth: xr.Dataset, fluxes: Sequence[str]) -> pd.DataFrame:
    """The table with every observed flux replaced by the planted truth of its cell-month."""
    t0 = pd.Timestamp(truth["time"].values[0])
    ti = ((table["year"] - t0.year) * 12 + table["month"] - t0.month).to_numpy()
    r, c = table["row"].to_numpy(), table["col"].to_numpy()
    out = table.copy()
    for f in fluxes:
        exact = truth[f].values[ti, r, c].astype(np.float64)
        out[f] = np.where(out[f].notna(), exact, np.nan)
    return out


#: The untuned comparison: one forest at randomForest's default mtry for regression,
#: floor(p / 3) = 5 of the 17 predictors, instead of the mtry tuned over {2, 9, 17}.
UNTUNED_MTRY = (len(PREDICTOR_NAMES) // 3,)


@dataclass(frozen=True)
class Twin:
    """The fixed parts of a twin, opened once."""

    layout: TwinLayout
    zones: xr.Dataset  # loaded
    cube: xr.Dataset
    fire: xr.Dataset
    truth: xr.Dataset  # possibly without D
    grid: Grid
    n_sites: int
    seed: int  # the twin's own seed: network draw ``seed`` is the twin's network
    family: str = "a"  # the twin family's site rule (twin.json)

    @classmethod
    def open(cls, root: Path, without_d: bool = False) -> Twin:
        """Open the twin folder ``root`` (zones loaded: every draw places sites on them);
        ``without_d`` sets the truth's hidden field D to 0 (:func:`without_diseq`)."""
        layout = TwinLayout(root)
        config = json.loads((layout.root / "twin.json").read_text())
        seed = int(config["seed"])
        truth = xr.open_zarr(layout.truth, consolidated=False)
        if without_d and config.get("family", "a") != "a":
            raise SystemExit("--without-diseq removes family a's field D; for family "
                             f"{config['family']} generate the twin with --no-hidden-driver")
        if without_d:
            truth = without_diseq(truth, seed)
        cube = xr.open_zarr(layout.cube, consolidated=False)
        return cls(layout, xr.open_zarr(layout.zones, consolidated=False).load(), cube,
                   xr.open_zarr(layout.fire, consolidated=False), truth, Grid.of_dataset(cube),
                   int(config["n_sites"]), seed, str(config.get("family", "a")))


def draw_network(twin: Twin, k: int, work: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Network draw ``k`` made as the twin makes it, written to ``work`` as an ABCflux CSV, read
    and extracted like a real file: ``(sites, training table)``."""
    site = make_sites(twin.zones, twin.grid, twin.fire, k, twin.n_sites, family=twin.family)
    csv = work / f"abcflux_draw{k}.csv"
    site_observations(site, twin.truth, twin.cube, k, twin.grid).to_csv(csv, index=False)
    table, _ = extract_stage(twin.layout.cube, twin.layout.zones, csv)
    return site, table


def one_draw(twin: Twin, k: int, fluxes: Sequence[str], profile: str, perfect: bool,
             work: Path) -> list[dict[str, Any]]:
    """Budgets (Tg C yr⁻¹, mean 2001–2020) per flux × domain from network draw ``k``: one row
    for the tuned forests (the profile) and one for the untuned ones (:data:`UNTUNED_MTRY`)."""
    zones, cube, truth, grid = twin.zones, twin.cube, twin.truth, twin.grid
    site, table = draw_network(twin, k, work)
    if perfect:
        table = _perfect(table, truth, fluxes)
    tuned = resolve_profile(profile).model_copy(update={
        "n_bootstrap": 0, "importance_repeats": 0, "pdp_points": 0})
    period = cube.sel(time=slice(str(START), str(END)))
    w = domain_weights(zones, grid.cell_area)
    tundra = site["biome"] == "Tundra"
    rows = []
    for model, prof in (("tuned", tuned), ("untuned", tuned.model_copy(
            update={"mtry_grid": UNTUNED_MTRY}))):
        bundle = train_bundle(table, profile=prof, fluxes=fluxes, seed=k, progress=False)
        models = compile_bundle(bundle)
        est = xr.Dataset({f: predict(period, models.central[f]) for f in fluxes})
        annual = annual_domain_budgets(est, w).mean("year").compute()
        row: dict[str, Any] = {"draw": k, "model": model, "n_tundra_sites": int(tundra.sum()),
                               "tundra_site_median_lat": float(
                                   site.loc[tundra, "latitude"].median())}
        for f in fluxes:
            row[f"{f}_mtry"] = bundle.models[f].mtry
            for d in DOMAINS:
                row[f"{f}_{d}"] = float(annual[f].sel(domain=d))
        rows.append(row)
    return rows


def without_diseq(truth: xr.Dataset, seed: int) -> xr.Dataset:
    """The planted truth with the hidden field D set to 0: heterotrophic respiration
    (Reco − 0.47 GPP) divided by its factor ``exp(0.35 D)``; GPP unchanged."""
    f = diseq_factor(seed, truth["x"].values[None, :], truth["y"].values[:, None])
    factor = xr.DataArray(f, dims=("y", "x"), coords={"y": truth["y"], "x": truth["x"]})
    rh = truth["Reco"] - RA_FRACTION * truth["GPP"]
    reco = (RA_FRACTION * truth["GPP"] + rh / factor).astype(np.float32)
    return truth.assign(Reco=reco, NEE=(reco - truth["GPP"]).astype(np.float32))


def truth_budgets(truth: xr.Dataset, zones: xr.Dataset, fluxes: Sequence[str]) -> pd.Series:
    """Planted budgets (Tg C yr⁻¹, mean 2001–2020) indexed ``FLUX_domain``."""
    w = domain_weights(zones, Grid.of_dataset(truth).cell_area)
    sel = truth[list(fluxes)].sel(time=slice(str(START), str(END)))
    m = annual_domain_budgets(sel, w).mean("year").compute()
    return pd.Series({f"{f}_{d}": float(m[f].sel(domain=d)) for f in fluxes for d in DOMAINS})


def summarise(draws: pd.DataFrame, truth: pd.Series, fluxes: Sequence[str], twin_seed: int
              ) -> pd.DataFrame:
    """Per model × flux × domain: mean, SD, mean error ± SE, mean absolute error and the number
    of draws within ±15 % of the truth."""
    rows = []
    for model, g in draws.groupby("model", sort=False):
        for f in fluxes:
            for d in DOMAINS:
                col = f"{f}_{d}"
                v = g[col].to_numpy()
                tv = float(truth[col])
                own = g.loc[g["draw"] == twin_seed, col]
                rows.append({
                    "model": model, "flux": f, "domain": d, "truth": tv, "mean": v.mean(),
                    "sd": v.std(ddof=1), "mean_error": v.mean() - tv,
                    "se_mean": v.std(ddof=1) / np.sqrt(len(v)),
                    "mean_abs_error": np.abs(v - tv).mean(),
                    "within_15pct": int((np.abs(v - tv) <= 0.15 * abs(tv)).sum()),
                    "n_draws": len(v),
                    "twin_network": float(own.iloc[0]) if len(own) else np.nan})
    return pd.DataFrame(rows)


def markdown(draws: pd.DataFrame, summary: pd.DataFrame, args: argparse.Namespace,
             wall: float) -> str:
    """The results page."""
    cols = ["draw", "model", "n_tundra_sites", "tundra_site_median_lat",
            *[c for c in draws if c.split("_")[0] in args.fluxes]]
    lines = [
        "# Network sampling: budget error over redrawn site networks on one twin",
        "",
        f"Command: `python benchmarks/network_sampling.py {args.twin} --draws {args.draws} "
        f"--fluxes {' '.join(args.fluxes)} --profile {args.profile}"
        f"{' --perfect' if args.perfect else ''}"
        f"{' --without-diseq' if args.without_diseq else ''}` ({wall / 60:.1f} min).",
        "Observations: " + ("the planted truth of each site-month (no site factor, no noise)."
                            if args.perfect else "as the twin makes them (site factor + noise).")
        + (" Truth without the hidden respiration field D (D = 0)." if args.without_diseq
           else ""),
        "",
        "## Over the draws (Tg C yr⁻¹, mean 2001–2020)",
        "",
        markdown_table(summary, 1),
        "",
        "`twin_network` is the draw whose seed is the twin's: the demo's network.",
        "",
        "## Every draw",
        "",
        markdown_table(draws[cols], 0),
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("twin", type=Path, help="twin folder (e.g. RUN/twin of a demo run)")
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--fluxes", nargs="+", default=["NEE"])
    ap.add_argument("--profile", default="light")
    ap.add_argument("--perfect", action="store_true",
                    help="observations = planted truth of the cell-month")
    ap.add_argument("--without-diseq", action="store_true",
                    help="set the hidden respiration field D of the truth to 0")
    ap.add_argument("--out", type=Path, default=None, help="Markdown results file")
    args = ap.parse_args(argv)
    twin = Twin.open(args.twin, args.without_diseq)
    layout, twin_seed = twin.layout, twin.seed
    truth = truth_budgets(twin.truth, twin.zones, args.fluxes)
    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, dask.config.set(scheduler="threads"):
        for k in range(args.draws):
            t = time.perf_counter()
            got = one_draw(twin, k, args.fluxes, args.profile, args.perfect, Path(tmp))
            own = k == twin_seed and not args.without_diseq
            if own and (Path(tmp) / f"abcflux_draw{k}.csv").read_bytes() \
                    != layout.sites.read_bytes():
                print(f"draw {k} should re-create {layout.sites} but differs", file=sys.stderr)
                return 1
            rows += got
            f = args.fluxes[0]
            print(f"draw {k:3d} ({time.perf_counter() - t:.0f} s): truth {f} ABZ "
                  f"{truth[f'{f}_abz']:.0f}; " + "; ".join(
                      f"{r['model']} (mtry {r[f'{f}_mtry']}) ABZ {r[f'{f}_abz']:.0f}, tundra "
                      f"{r[f'{f}_tundra']:.0f}, boreal {r[f'{f}_boreal']:.0f}" for r in got),
                  flush=True)
    wall = time.perf_counter() - t0
    draws = pd.DataFrame(rows)
    summary = summarise(draws, truth, args.fluxes, twin_seed)
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    if args.out is not None:
        args.out.write_text(markdown(draws, summary, args, wall))
        print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
