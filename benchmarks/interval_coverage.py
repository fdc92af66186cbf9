"""Do the 95 % budget intervals cover the truth? Row, site-block and cluster bootstrap.

For each twin given (a twin family each: ``abz-dask twin --family a|b``) and network draws
k = 0..N−1 (sites and observations made as the twin makes them, with the twin family's site rule,
as in ``network_sampling.py``; draw k equal to the twin's seed is the twin's own network), it
trains per bootstrap unit — ``row`` (the paper, DECISIONS 8), ``site`` (whole sites) and
``cluster`` (whole spatial clusters of sites, ``bootstrap_cluster_km`` across) — the profile's
central forest and B bootstrap models of one flux with training seed k (the central forest is
the same for every unit), upscales them lazily over 2001–2020 and records per domain the central
budget and the bootstrap SD.

Over the draws, per family × unit × domain:

* ``coverage`` — draws whose truth lies within central ± 1.96 bootstrap SD (of N);
* ``width_ratio`` — the mean interval width (2 × 1.96 × bootstrap SD) over the oracle width
  (2 × 1.96 × the RMS error of the central budget over the draws), i.e. mean SD / RMSE;
* ``bias`` — mean central budget minus the truth (± its standard error), and the network SD.

The observations are read without the reader's plausibility *ranges* (real-data unit checks):
the twin's site factors put a few family-b months beyond them (e.g. NEE 335 g C m⁻² month⁻¹ at
100 km); the balance and sign checks still apply.

Per-draw rows are appended to ``--csv`` as they are made, and draws already there are not
recomputed, so an interrupted run resumes and ``--draws`` can be lowered afterwards.

Usage::

    abz-dask twin --out /tmp/cov/a --resolution 100km --start 2001-01 --end 2020-12
    abz-dask twin --out /tmp/cov/b --resolution 100km --start 2001-01 --end 2020-12 --family b
    python benchmarks/interval_coverage.py /tmp/cov/a /tmp/cov/b [--draws 20] [--flux NEE]
        [--bootstraps 20] [--profile light] [--csv draws.csv] [--out RESULTS_coverage.md]

The last line printed is machine-readable: per family, ABZ coverage and width ratio per unit and
the lowest coverage over the four domains.
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
from bootstrap_unit import unit_budgets
from network_sampling import END, START, Twin, truth_budgets
from r_parity import markdown_table  # benchmarks/ is on sys.path when run as a script

from abz_dask.pipeline.demo import extract_stage
from abz_dask.twin.sites import make_sites, site_observations

UNITS = ("row", "site", "cluster")
#: The reader's checks without its plausibility ranges (see the module docstring).
NO_RANGES = {"ranges": {"NEE": None, "GPP": None, "Reco": None}}


def network_table(twin: Twin, k: int, work: Path) -> pd.DataFrame:
    """The training table of network draw ``k`` (``network_sampling.draw_network`` read without
    the plausibility ranges)."""
    site = make_sites(twin.zones, twin.grid, twin.fire, k, twin.n_sites, family=twin.family)
    csv = work / f"abcflux_draw{k}.csv"
    site_observations(site, twin.truth, twin.cube, k, twin.grid).to_csv(csv, index=False)
    table, _ = extract_stage(twin.layout.cube, twin.layout.zones, csv, checks=NO_RANGES)
    return table


def one_draw(twin: Twin, k: int, flux: str, profile: str, n_boot: int, cluster_km: float | None,
             work: Path) -> list[dict[str, Any]]:
    """Per unit × domain: the central budget and the bootstrap budgets' mean and SD
    (Tg C yr⁻¹, mean 2001–2020) from network draw ``k`` (:func:`bootstrap_unit.unit_budgets`)."""
    table = network_table(twin, k, work)
    extra = {} if cluster_km is None else {"bootstrap_cluster_km": cluster_km}
    n_sites = int(table["site_id"].nunique())
    return [{"family": twin.family, "draw": k, "unit": r["unit"], "domain": r["domain"],
             "n_sites": n_sites, **{c: r[c] for c in ("central", "boot_mean", "boot_sd")}}
            for r in unit_budgets(twin, table, k, flux, profile, n_boot, UNITS, **extra)]


def summarise(draws: pd.DataFrame, truth: dict[str, pd.Series], flux: str) -> pd.DataFrame:
    """Per family × unit × domain over the draws: coverage of the truth by central ± 1.96
    bootstrap SD, mean SD over the RMS error of the central budget (the width ratio to the
    oracle interval), bias ± SE, network SD."""
    rows = []
    for (fam, unit, d), g in draws.groupby(["family", "unit", "domain"], sort=False):
        tv = float(truth[fam][f"{flux}_{d}"])
        c, sd = g["central"].to_numpy(), g["boot_sd"].to_numpy()
        err = c - tv
        rmse = float(np.sqrt(np.mean(err ** 2)))
        rows.append({"family": fam, "unit": unit, "domain": d, "truth": tv,
                     "coverage": f"{int((np.abs(err) <= 1.96 * sd).sum())}/{len(g)}",
                     "mean_sd": sd.mean(), "rmse": rmse, "width_ratio": sd.mean() / rmse,
                     "bias": err.mean(), "bias_se": err.std(ddof=1) / np.sqrt(len(g)),
                     "network_sd": c.std(ddof=1)})
    return pd.DataFrame(rows)


def machine_line(summary: pd.DataFrame) -> str:
    """Per family: ABZ coverage and width ratio per unit, lowest coverage over the domains."""
    out = []
    for (fam, unit), g in summary.groupby(["family", "unit"], sort=False):
        abz = g[g["domain"] == "abz"].iloc[0]
        worst = min(g["coverage"], key=lambda s: int(s.split("/")[0]))
        out += [f"coverage_{unit}_{fam}={abz['coverage']}",
                f"width_ratio_{unit}_{fam}={abz['width_ratio']:.2f}",
                f"min_domain_coverage_{unit}_{fam}={worst}"]
    return " ".join(out)


def markdown(draws: pd.DataFrame, summary: pd.DataFrame, args: argparse.Namespace,
             times: dict[str, float]) -> str:
    """The per-draw and summary tables (the results page adds the reading)."""
    wide = draws.pivot_table(index=["family", "draw", "domain"], columns="unit",
                             values=["boot_sd"], sort=False)
    wide.columns = [f"sd_{u}" for _, u in wide.columns]
    central = draws[draws["unit"] == "row"].set_index(["family", "draw", "domain"])["central"]
    wide = wide.join(central).reset_index()
    run = ", ".join(f"family {f}: {t / 60:.1f} min" for f, t in times.items())
    return "\n".join([
        f"Command: `python benchmarks/interval_coverage.py {' '.join(map(str, args.twins))} "
        f"--draws {args.draws} --flux {args.flux} --bootstraps {args.bootstraps} --profile "
        f"{args.profile}` ({run}; draws already in the CSV are not timed).",
        "",
        f"## Over the draws ({args.flux}, Tg C yr⁻¹, mean {START}–{END})",
        "",
        markdown_table(summary, 2),
        "",
        "## Every draw",
        "",
        markdown_table(wide, 0),
        "",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("twins", type=Path, nargs="+", help="twin folders (one per family)")
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--flux", default="NEE")
    ap.add_argument("--bootstraps", type=int, default=20)
    ap.add_argument("--profile", default="light")
    ap.add_argument("--cluster-km", type=float, default=None,
                    help="bootstrap_cluster_km (default: the profile's)")
    ap.add_argument("--csv", type=Path, default=None, help="per-draw rows (appended, resumed)")
    ap.add_argument("--out", type=Path, default=None, help="Markdown tables file")
    args = ap.parse_args(argv)
    if args.bootstraps < 2 or args.draws < 2:
        ap.error("--bootstraps and --draws must be at least 2 (an SD needs two values)")
    twins = [Twin.open(t) for t in args.twins]
    fams = [t.family for t in twins]
    if len(set(fams)) != len(fams):
        ap.error(f"one twin per family, got families {fams}")
    truth = {t.family: truth_budgets(t.truth, t.zones, [args.flux]) for t in twins}
    done = (pd.read_csv(args.csv, dtype={"family": str})
            if args.csv is not None and args.csv.exists() else pd.DataFrame())
    times = dict.fromkeys(fams, 0.0)
    with tempfile.TemporaryDirectory() as tmp, dask.config.set(scheduler="threads"):
        for k in range(args.draws):
            for twin in twins:
                if len(done) and ((done["family"] == twin.family) & (done["draw"] == k)).any():
                    continue
                t = time.perf_counter()
                got = pd.DataFrame(one_draw(twin, k, args.flux, args.profile, args.bootstraps,
                                            args.cluster_km, Path(tmp)))
                times[twin.family] += time.perf_counter() - t
                done = pd.concat([done, got], ignore_index=True)
                if args.csv is not None:
                    done.to_csv(args.csv, index=False)
                abz = got[got["domain"] == "abz"].set_index("unit")
                print(f"family {twin.family} draw {k:3d} ({time.perf_counter() - t:.0f} s): "
                      f"truth ABZ {truth[twin.family][f'{args.flux}_abz']:.0f}, central "
                      f"{abz.loc['row', 'central']:.0f}; " + "; ".join(
                          f"{u} SD {abz.loc[u, 'boot_sd']:.0f}" for u in UNITS), flush=True)
    draws = done[done["draw"] < args.draws]
    summary = summarise(draws, truth, args.flux)
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    if args.out is not None:
        args.out.write_text(markdown(draws, summary, args, times))
        print(f"written {args.out}")
    print(machine_line(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
