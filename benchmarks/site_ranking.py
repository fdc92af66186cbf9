"""Do ranked new sites reduce the ABZ NEE budget error more than random ones? A check on the twin.

For each twin given (one per family, ``abz-dask twin --family a|b``) and network draws
k = 0..N−1 (sites and observations made as the twin makes them, read without the plausibility
ranges: :func:`interval_coverage.network_table`; draw k equal to the twin's seed is the twin's own
network), this script

1. trains the ``light`` profile's central NEE forest with training seed k and its diagnostics
   (CV predictions, permutation importance; :func:`abz_dask.training.run_training`, no
   bootstraps) into a scratch run folder and upscales it over 2001–2020: the ABZ NEE budget
   *before*;
2. ranks the twin's candidate cells (ABZ cells with at least 20 % land) with
   :func:`abz_dask.analyses.site_ranking.rank_sites_for_run` — the package's ``rank-sites`` —
   and draws as many random cells from the same candidates (seed ``1000 + k``);
3. adds each set as new sites, observed as the twin observes sites
   (:func:`abz_dask.twin.sites.site_observations`: the planted truth of the cell × a site factor
   + measurement noise): eddy-covariance towers of ``--months`` months each (default 36), the
   same design and observation seed (``50000 + k``) for both sets;
4. reads the network plus the new sites as one ABCflux file, retrains the central NEE forest
   (same profile and seed) and upscales it: the budget *after*, per set.

Over the draws, per family and pooled: the mean absolute ABZ NEE budget error before and after,
the mean gain (|error before| − |error after|) of each set, the mean gain of ranked over random
(= |error random| − |error ranked|) ± its standard error, and how often ranked beats random
(± the binomial standard error).

Per-draw rows are appended to ``--csv`` as they are made and draws already there are skipped, so
an interrupted run resumes.

Usage::

    python benchmarks/site_ranking.py /tmp/cov/a /tmp/cov/b [--draws 8] [--top 10]
        [--months 36] [--profile light] [--first-draw 0] [--csv draws.csv]
        [--out RESULTS_site_ranking.md]

The last line is machine-readable: per family and pooled, the mean gain of ranked over random
(Tg C yr⁻¹), its SE and the wins.
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
from interval_coverage import NO_RANGES, network_table
from network_sampling import DOMAINS, END, START, Twin, truth_budgets
from r_parity import markdown_table  # benchmarks/ is on sys.path when run as a script

from abz_dask.aggregation.budgets import annual_domain_budgets, domain_weights
from abz_dask.analyses.site_ranking import (
    MIN_LAND_FRACTION,
    rank_sites_for_run,
    sample_cells,
)
from abz_dask.pipeline.demo import extract_stage
from abz_dask.training import run_training, train_bundle
from abz_dask.training.profiles import resolve_profile
from abz_dask.twin.sites import site_observations
from abz_dask.upscale import compile_bundle, predict

FLUX = "NEE"
ARMS = ("before", "ranked", "random")


def budgets(twin: Twin, bundle: Any) -> dict[str, float]:
    """Domain NEE budgets (Tg C yr⁻¹, mean 2001–2020) of a bundle's central forest."""
    period = twin.cube.sel(time=slice(str(START), str(END)))
    est = xr.Dataset({FLUX: predict(period, compile_bundle(bundle).central[FLUX])})
    annual = annual_domain_budgets(est, domain_weights(twin.zones, twin.grid.cell_area))
    m = annual.mean("year").compute()
    return {d: float(m[FLUX].sel(domain=d)) for d in DOMAINS}


def new_sites(twin: Twin, rows: np.ndarray, cols: np.ndarray, tag: str, months: int
              ) -> pd.DataFrame:
    """Site table (the columns :func:`site_observations` reads) of new EC towers at the cells:
    ``months`` months each, undisturbed, at the cell centre."""
    from pyproj import Transformer

    inv = Transformer.from_crs(twin.grid.crs, "EPSG:4326", always_xy=True)
    lon, lat = inv.transform(twin.grid.x[cols], twin.grid.y[rows])
    biome = twin.zones["biome"].values[rows, cols]
    return pd.DataFrame({
        "row": rows, "col": cols, "name": [f"XX-{tag}{i + 1:02d}" for i in range(len(rows))],
        "latitude": lat, "longitude": lon, "biome": np.where(biome == 1, "Tundra", "Boreal"),
        "method": "EC", "n_months": months, "plots": 1, "disturbance": "No",
        "disturb_year": -9999})


def with_sites(twin: Twin, k: int, base_csv: Path, sites: pd.DataFrame, work: Path, arm: str
               ) -> pd.DataFrame:
    """Training table of the network plus the new sites' observations, read as one file."""
    obs = site_observations(sites, twin.truth, twin.cube, 50_000 + k, twin.grid)
    csv = work / f"abcflux_{arm}{k}.csv"
    pd.concat([pd.read_csv(base_csv), obs], ignore_index=True).to_csv(csv, index=False)
    table, _ = extract_stage(twin.layout.cube, twin.layout.zones, csv, checks=NO_RANGES)
    return table


def one_draw(twin: Twin, k: int, top: int, months: int, profile: str, work: Path
             ) -> dict[str, Any]:
    """Budgets before and after adding the ranked and the random sites for network draw k."""
    table = network_table(twin, k, work)
    base = resolve_profile(profile).model_copy(update={"n_bootstrap": 0, "pdp_points": 0})
    run = work / f"run{k}"
    t0 = time.perf_counter()
    bundle = run_training(table, run, profile=base, fluxes=[FLUX], seed=k, progress=False)
    out: dict[str, Any] = {"family": twin.family, "draw": k,
                           "n_sites": int(table["site_id"].nunique()), "n_rows": len(table)}
    got = {"before": budgets(twin, bundle)}
    t1 = time.perf_counter()
    ranking = rank_sites_for_run(run / "training", twin.cube, twin.zones, top=top,
                                 years=(START, END), flux=FLUX)
    t_rank = time.perf_counter() - t1
    land = twin.zones["land_fraction"].fillna(0.0)
    cr, cc, _ = sample_cells(twin.zones["abz"].astype(bool) & (land >= MIN_LAND_FRACTION),
                             10**9)
    pick = np.random.default_rng(1000 + k).choice(len(cr), size=top, replace=False)
    sets = {"ranked": (ranking["row"].to_numpy(), ranking["col"].to_numpy()),
            "random": (cr[pick], cc[pick])}
    retrain = base.model_copy(update={"importance_repeats": 0})
    for arm, (r, c) in sets.items():
        sites = new_sites(twin, r, c, "R" if arm == "ranked" else "Q", months)
        t2 = with_sites(twin, k, work / f"abcflux_draw{k}.csv", sites, work, arm)
        got[arm] = budgets(twin, train_bundle(t2, profile=retrain, fluxes=[FLUX], seed=k,
                                              progress=False))
        tundra = twin.zones["biome"].values[r, c] == 1
        out[f"{arm}_tundra_sites"] = int(tundra.sum())
        out[f"{arm}_new_rows"] = len(t2) - len(table)
    for arm in ARMS:
        for d in DOMAINS:
            out[f"{arm}_{d}"] = got[arm][d]
    out["expected_reduction"] = float(ranking["cumulative_reduction_tg_c_yr"].iloc[-1])
    out["ranked_mean_di"] = float(ranking["di"].mean())
    out["rank_s"] = t_rank
    out["total_s"] = time.perf_counter() - t0
    return out


def summarise(draws: pd.DataFrame, truth: dict[str, float]) -> pd.DataFrame:
    """Per family and pooled: mean |error| per arm, mean gains, ranked − random ± SE, wins."""
    rows = []
    groups = [(f, g) for f, g in draws.groupby("family", sort=False)]
    if draws["family"].nunique() > 1:
        groups.append(("pooled", draws))
    for fam, g in groups:
        tv = g["family"].map(truth).to_numpy()
        err = {a: np.abs(g[f"{a}_abz"].to_numpy() - tv) for a in ARMS}
        diff = err["random"] - err["ranked"]
        n = len(g)
        wins = int((diff > 0).sum())
        p = wins / n
        row: dict[str, Any] = {"family": fam, "networks": n}
        for a in ARMS:
            row[f"mae_{a}"] = err[a].mean()
        for a in ("ranked", "random"):
            gain = err["before"] - err[a]
            row[f"gain_{a}"] = gain.mean()
            row[f"gain_{a}_se"] = gain.std(ddof=1) / np.sqrt(n) if n > 1 else np.nan
        row["ranked_minus_random"] = diff.mean()
        row["ranked_minus_random_se"] = diff.std(ddof=1) / np.sqrt(n) if n > 1 else np.nan
        row["ranked_wins"] = f"{wins}/{n}"
        row["ranked_wins_share"] = p
        row["ranked_wins_se"] = np.sqrt(p * (1 - p) / n)
        for a in ("ranked", "random"):  # how far the new sites move the budget at all
            row[f"shift_{a}"] = np.abs(g[f"{a}_abz"] - g["before_abz"]).mean()
        row["expected_reduction"] = g["expected_reduction"].mean()
        rows.append(row)
    return pd.DataFrame(rows)


def domain_errors(draws: pd.DataFrame, truth: dict[str, pd.Series]) -> pd.DataFrame:
    """Per family × domain: mean absolute budget error of each arm and ranked − random ± SE."""
    rows = []
    for fam, g in draws.groupby("family", sort=False):
        for d in DOMAINS:
            tv = float(truth[fam][f"{FLUX}_{d}"])
            err = {a: np.abs(g[f"{a}_{d}"].to_numpy() - tv) for a in ARMS}
            diff = err["random"] - err["ranked"]
            rows.append({"family": fam, "domain": d, "truth": tv,
                         **{f"mae_{a}": err[a].mean() for a in ARMS},
                         "ranked_minus_random": diff.mean(),
                         "se": diff.std(ddof=1) / np.sqrt(len(g)) if len(g) > 1 else np.nan,
                         "ranked_wins": f"{int((diff > 0).sum())}/{len(g)}"})
    return pd.DataFrame(rows)


def machine_line(summary: pd.DataFrame) -> str:
    """Per family and pooled: ranked − random gain, its SE and the wins."""
    out = []
    for r in summary.itertuples():
        out += [f"ranked_minus_random_{r.family}={r.ranked_minus_random:.2f}",
                f"se_{r.family}={r.ranked_minus_random_se:.2f}",
                f"wins_{r.family}={r.ranked_wins}"]
    return " ".join(out)


def markdown(draws: pd.DataFrame, summary: pd.DataFrame, domains: pd.DataFrame,
             args: argparse.Namespace, truth: dict[str, float]) -> str:
    """The per-draw and summary tables (the results page adds the reading)."""
    per = draws.copy()
    per["truth_abz"] = per["family"].map(truth)
    cols = ["family", "draw", "n_sites", "truth_abz", "before_abz", "ranked_abz", "random_abz",
            "ranked_tundra_sites", "random_tundra_sites", "ranked_new_rows", "random_new_rows",
            "expected_reduction", "ranked_mean_di", "rank_s", "total_s"]
    return "\n".join([
        f"Command: `python benchmarks/site_ranking.py {' '.join(map(str, args.twins))} "
        f"--draws {args.draws} --top {args.top} --months {args.months} --profile "
        f"{args.profile}` ({draws['total_s'].sum() / 60:.1f} min of training, ranking and "
        "upscaling over the draws).",
        "",
        f"## Over the draws (ABZ {FLUX}, Tg C yr⁻¹, mean {START}–{END})",
        "",
        markdown_table(summary, 2),
        "",
        "## Per domain (mean absolute budget error, Tg C yr⁻¹)",
        "",
        markdown_table(domains, 1),
        "",
        "## Every draw",
        "",
        markdown_table(per[cols], 1),
        "",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("twins", type=Path, nargs="+", help="twin folders (one per family)")
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--first-draw", type=int, default=0,
                    help="make draws FIRST..DRAWS-1 only (another process makes the others; "
                         "the summary covers every draw in --csv below DRAWS)")
    ap.add_argument("--top", type=int, default=10, help="new sites per set")
    ap.add_argument("--months", type=int, default=36, help="months each new tower observes")
    ap.add_argument("--profile", default="light")
    ap.add_argument("--csv", type=Path, default=None, help="per-draw rows (appended, resumed)")
    ap.add_argument("--out", type=Path, default=None, help="Markdown tables file")
    args = ap.parse_args(argv)
    if args.draws < 2 or args.top < 1 or args.months < 1:
        ap.error("--draws must be at least 2, --top and --months at least 1")
    twins = [Twin.open(t) for t in args.twins]
    fams = [t.family for t in twins]
    if len(set(fams)) != len(fams):
        ap.error(f"one twin per family, got families {fams}")
    truth_all = {t.family: truth_budgets(t.truth, t.zones, [FLUX]) for t in twins}
    truth = {f: float(v[f"{FLUX}_abz"]) for f, v in truth_all.items()}
    done = (pd.read_csv(args.csv, dtype={"family": str})
            if args.csv is not None and args.csv.exists() else pd.DataFrame())
    with tempfile.TemporaryDirectory() as tmp, dask.config.set(scheduler="threads"):
        for k in range(args.first_draw, args.draws):
            for twin in twins:
                if len(done) and ((done["family"] == twin.family) & (done["draw"] == k)).any():
                    continue
                work = Path(tmp) / f"{twin.family}{k}"
                work.mkdir()
                r = one_draw(twin, k, args.top, args.months, args.profile, work)
                done = pd.concat([done, pd.DataFrame([r])], ignore_index=True)
                if args.csv is not None:
                    done.to_csv(args.csv, index=False)
                tv = truth[twin.family]
                print(f"family {twin.family} draw {k:3d} ({r['total_s']:.0f} s, ranking "
                      f"{r['rank_s']:.0f} s): truth {tv:.0f}; before {r['before_abz']:.0f}, "
                      f"ranked {r['ranked_abz']:.0f}, random {r['random_abz']:.0f}", flush=True)
    draws = done[done["draw"] < args.draws]
    summary = summarise(draws, truth)
    domains = domain_errors(draws, truth_all)
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(domains.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    if args.out is not None:
        args.out.write_text(markdown(draws, summary, domains, args, truth))
        print(f"written {args.out}")
    print(machine_line(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
