"""Do the 95 % budget intervals cover the truth? Row, site and cluster bootstrap, with and
without the blocked-CV error term; and do the budget trends match the planted ones?

For each twin given (a twin family each: ``abz-dask twin --family a|b``) and network draws
k = 0..N−1 (sites and observations made as the twin makes them, with the twin family's site rule,
as in ``network_sampling.py``; draw k equal to the twin's seed is the twin's own network), per
flux (NEE, GPP, Reco by default) it trains with training seed k the profile's central forest
once (tuning included), the blocked cross-validation of ``interval: blocked_cv``
(:func:`abz_dask.training.fit.blocked_cv`: the tuned forest over folds of whole spatial
clusters of sites) and B bootstrap models per resampling unit — ``row`` (the paper,
DECISIONS 8), ``site`` (whole sites) and ``cluster`` (whole spatial clusters of sites,
``bootstrap_cluster_km`` across) — exactly as ``train_bundle`` would for each unit (same
folds, mtry, central forest and replicate seeds). It upscales them lazily over 2001–2020 and
records per domain the central budget, the bootstrap SD, the blocked-CV error
(:func:`abz_dask.aggregation.intervals.blocked_cv_error`) and the Theil–Sen (Zhang) trends of
the annual budgets (central and the SD of the replicates').

Methods (interval = central ± 1.96 × SD): ``row``, ``site``, ``cluster`` (SD = bootstrap SD)
and ``row+cv``, ``site+cv``, ``cluster+cv`` (SD = √(bootstrap SD² + CV error²), the
``interval: blocked_cv`` rule). Over the draws, per family × flux × method × domain:

* ``coverage`` — draws whose truth lies within the interval (of N);
* ``width_ratio`` — the mean interval width over the oracle width (±1.96 × the RMS error of the
  central budget over the draws), i.e. mean SD / RMSE;
* ``bias`` — mean central budget minus the truth (± its standard error), and the network SD.

Trends, per family × flux × domain: the planted trend, the mean estimated / planted ratio
(± SE), and per unit the coverage of the planted trend by central trend ± 1.96 × the
replicates' trend SD.

The observations are read without the reader's plausibility *ranges* (real-data unit checks):
family b's truth itself reaches NEE 386 g C m⁻² month⁻¹ at 100 km, so its sites report values
beyond them; the balance and sign checks still apply.

Per-draw rows are appended to ``--csv`` as they are made, and draws already there are not
recomputed, so an interrupted run resumes and ``--draws`` can be lowered afterwards.

Usage::

    abz-dask twin --out /tmp/cov/a --resolution 100km --start 2001-01 --end 2020-12
    abz-dask twin --out /tmp/cov/b --resolution 100km --start 2001-01 --end 2020-12 --family b
    python benchmarks/interval_coverage.py /tmp/cov/a /tmp/cov/b [--draws 20]
        [--fluxes NEE GPP Reco] [--bootstraps 20] [--profile light] [--csv draws.csv]
        [--out RESULTS_coverage.md]

The last line printed is machine-readable: per family and method, the ABZ NEE coverage and
width ratio, the lowest coverage over every domain and flux, and the ABZ NEE trend ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import xarray as xr
from network_sampling import DOMAINS, END, START, Twin
from r_parity import markdown_table  # benchmarks/ is on sys.path when run as a script

from abz_dask.aggregation.budgets import annual_domain_budgets, domain_weights
from abz_dask.aggregation.intervals import blocked_cv_error
from abz_dask.aggregation.units import TG_PER_G
from abz_dask.analyses.trends import trend
from abz_dask.io.predictors import PREDICTORS
from abz_dask.pipeline.demo import extract_stage
from abz_dask.training import train_bundle
from abz_dask.training.fit import _bootstrap_fit, prepare
from abz_dask.training.profiles import resolve_profile
from abz_dask.twin.sites import make_sites, site_observations
from abz_dask.upscale import compile_bundle, predict
from abz_dask.upscale.blocks import BlockRows, block_arrays, block_rows
from abz_dask.upscale.models import predict_models

UNITS = ("row", "site", "cluster")
METHODS = (*UNITS, *(f"{u}+cv" for u in UNITS))
FLUXES = ("NEE", "GPP", "Reco")
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


@dataclass
class GridRows:
    """The twin's predictor rows over the period, built once, and each row's domain weights:
    every set of models is then evaluated in one multi-forest call (the upscaler's
    :func:`~abz_dask.upscale.models.predict_models`) and contracted to domain budgets, instead
    of one lazy :func:`~abz_dask.upscale.predict` pass over the cube per model."""

    rows: BlockRows
    weights: np.ndarray  # (n_rows, n_domains) pixel area (m²) of each row's cell per domain
    years: np.ndarray  # year of every time step

    @classmethod
    def of(cls, twin: Twin) -> GridRows:
        """The rows of ``twin``'s cube over START..END."""
        period = twin.cube.sel(time=slice(str(START), str(END)))
        arrays = block_arrays(period, PREDICTORS, slice(None), slice(None), slice(None))
        rows = block_rows(arrays, period["time"].dt.month.values)
        w = domain_weights(twin.zones, twin.grid.cell_area).sel(domain=list(DOMAINS)).values
        _, yy, xx = np.nonzero(rows.valid)  # month-major, C order: the rows' order
        return cls(rows, w[:, yy, xx].T.astype(np.float64), period["time"].dt.year.values)

    def annual(self, models: Sequence[Any], names: Sequence[str],
               cache: dict[Any, Any]) -> xr.DataArray:
        """Annual domain budgets ``(model, year, domain)`` (Tg C yr⁻¹) of ``models``."""
        seg = [s.start for s in self.rows.month_slices]
        pred = predict_models(models, self.rows.matrix, segments=seg, prepared=cache)
        pred = np.nan_to_num(pred.astype(np.float32).astype(np.float64))  # as predict() stores
        monthly = np.stack([pred[:, s] @ self.weights[s] for s in self.rows.month_slices], 1)
        out = xr.DataArray(monthly * TG_PER_G, dims=("model", "time", "domain"),
                           coords={"model": list(names), "year": ("time", self.years),
                                   "domain": list(DOMAINS)})
        return out.groupby("year").sum()


def budgets_and_trends(annual: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    """Period-mean budget and Theil–Sen (Zhang) trend of annual budgets ``(..., year,
    domain)``."""
    return annual.mean("year"), trend(annual, dim="year", method="zhang")["trend"]


def one_flux(twin: Twin, grid: GridRows, table: pd.DataFrame, k: int, flux: str, profile: str,
             n_boot: int, cluster_km: float | None, cache: dict[Any, Any]
             ) -> list[dict[str, Any]]:
    """Per unit × domain of one flux and draw: central budget and trend, bootstrap SD of both,
    and the blocked-CV error (the same for every unit)."""
    extra = {} if cluster_km is None else {"bootstrap_cluster_km": cluster_km}
    prof = resolve_profile(profile).model_copy(update={
        "n_bootstrap": n_boot, "importance_repeats": 0, "pdp_points": 0,
        "bootstrap_unit": "cluster", "interval": "blocked_cv", **extra})
    bundle = train_bundle(table, profile=prof, fluxes=[flux], seed=k, progress=False)
    cv = blocked_cv_error(bundle.blocked_cv, twin.zones, twin.grid.cell_area
                          ).set_index("domain")["cv_error_tg_c_yr"]
    data = prepare(table, [flux], prof, k)
    mtry = bundle.models[flux].mtry
    boots = {"cluster": bundle.bootstraps[flux]}
    for unit in ("row", "site"):
        du = replace(data, profile=prof.model_copy(update={"bootstrap_unit": unit}))
        boots[unit] = [_bootstrap_fit(du, flux, b, mtry, k) for b in range(1, n_boot + 1)]
    models = [compile_bundle(bundle).central[flux]]
    names = ["central"]
    for unit in UNITS:
        models += compile_bundle(replace(bundle, bootstraps={flux: boots[unit]})).bootstraps[flux]
        names += [f"{unit}_{b}" for b in range(n_boot)]
    if k == 0 and flux == FLUXES[0]:  # the fast path against the package's lazy one, once
        period = twin.cube.sel(time=slice(str(START), str(END)))
        ref = annual_domain_budgets(predict(period, models[0]), domain_weights(
            twin.zones, twin.grid.cell_area)).sel(domain=list(DOMAINS)).compute()
        fast = grid.annual(models[:1], names[:1], {}).sel(model="central")
        np.testing.assert_allclose(fast.values, ref.values, rtol=1e-9, atol=1e-6)
    mean, slope = budgets_and_trends(grid.annual(models, names, cache))
    rows = []
    for unit in UNITS:
        reps = [f"{unit}_{b}" for b in range(n_boot)]
        for d in DOMAINS:
            rows.append({
                "flux": flux, "unit": unit, "domain": d,
                "central": float(mean.sel(model="central", domain=d)),
                "boot_sd": float(mean.sel(model=reps, domain=d).std(ddof=1)),
                "cv_error": float(cv[d]),
                "trend": float(slope.sel(model="central", domain=d)),
                "trend_boot_sd": float(slope.sel(model=reps, domain=d).std(ddof=1))})
    return rows


def one_draw(twin: Twin, k: int, fluxes: Sequence[str], profile: str, n_boot: int,
             cluster_km: float | None, work: Path) -> list[dict[str, Any]]:
    """:func:`one_flux` of every flux of network draw ``k``."""
    table = network_table(twin, k, work)
    n_sites = int(table["site_id"].nunique())
    cache: dict[Any, Any] = {}  # encoded rows shared by the fluxes' bootstrap models
    return [{"family": twin.family, "draw": k, "n_sites": n_sites, **r} for f in fluxes
            for r in one_flux(twin, grids(twin), table, k, f, profile, n_boot, cluster_km,
                              cache)]


_GRIDS: dict[str, GridRows] = {}


def grids(twin: Twin) -> GridRows:
    """:class:`GridRows` of ``twin``, built once per family."""
    if twin.family not in _GRIDS:
        _GRIDS[twin.family] = GridRows.of(twin)
    return _GRIDS[twin.family]


def truth_table(twin: Twin, fluxes: Sequence[str]) -> pd.DataFrame:
    """Planted period-mean budget and trend per flux × domain (the same code as the
    estimates')."""
    w = domain_weights(twin.zones, twin.grid.cell_area)
    tr = twin.truth[list(fluxes)].sel(time=slice(str(START), str(END)))
    annual = annual_domain_budgets(tr, w).compute().to_array("flux")
    mean, slope = budgets_and_trends(annual)
    return pd.DataFrame([{"family": twin.family, "flux": f, "domain": d,
                          "truth": float(mean.sel(flux=f, domain=d)),
                          "truth_trend": float(slope.sel(flux=f, domain=d))}
                         for f in fluxes for d in DOMAINS])


def _with_method(draws: pd.DataFrame) -> pd.DataFrame:
    """One row per draw × method: ``sd`` is the bootstrap SD or √(SD² + CV error²)."""
    plain = draws.assign(method=draws["unit"], sd=draws["boot_sd"])
    cv = draws.assign(method=draws["unit"] + "+cv",
                      sd=np.hypot(draws["boot_sd"], draws["cv_error"]))
    return pd.concat([plain, cv], ignore_index=True)


def summarise(draws: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Per family × flux × method × domain over the draws: coverage of the truth by central
    ± 1.96 SD, mean SD over the RMS error of the central budget (the width ratio to the
    oracle interval), bias ± SE, network SD."""
    m = _with_method(draws).merge(truth, on=["family", "flux", "domain"])
    rows = []
    for (fam, f, meth, d), g in m.groupby(["family", "flux", "method", "domain"], sort=False):
        err = g["central"].to_numpy() - g["truth"].to_numpy()
        sd = g["sd"].to_numpy()
        rmse = float(np.sqrt(np.mean(err ** 2)))
        rows.append({"family": fam, "flux": f, "method": meth, "domain": d,
                     "truth": float(g["truth"].iloc[0]),
                     "coverage": f"{int((np.abs(err) <= 1.96 * sd).sum())}/{len(g)}",
                     "mean_sd": sd.mean(), "rmse": rmse, "width_ratio": sd.mean() / rmse,
                     "bias": err.mean(), "bias_se": err.std(ddof=1) / np.sqrt(len(g)),
                     "network_sd": g["central"].std(ddof=1)})
    return pd.DataFrame(rows)


def trend_summary(draws: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Per family × flux × domain: planted trend, mean estimated / planted ratio ± SE, and per
    unit the coverage of the planted trend by central trend ± 1.96 × replicate trend SD."""
    m = draws.merge(truth, on=["family", "flux", "domain"])
    rows = []
    for (fam, f, d), g in m.groupby(["family", "flux", "domain"], sort=False):
        one = g[g["unit"] == UNITS[0]]
        ratio = one["trend"].to_numpy() / one["truth_trend"].to_numpy()
        row = {"family": fam, "flux": f, "domain": d,
               "truth_trend": float(one["truth_trend"].iloc[0]),
               "mean_trend": float(one["trend"].mean()),
               "ratio": ratio.mean(), "ratio_se": ratio.std(ddof=1) / np.sqrt(len(ratio))}
        for u, gu in g.groupby("unit", sort=False):
            err = np.abs(gu["trend"] - gu["truth_trend"]).to_numpy()
            row[f"cover_{u}"] = f"{int((err <= 1.96 * gu['trend_boot_sd'].to_numpy()).sum())}" \
                                f"/{len(gu)}"
        rows.append(row)
    return pd.DataFrame(rows)


def _count(c: str) -> int:
    return int(c.split("/")[0])


def machine_line(summary: pd.DataFrame, trends: pd.DataFrame) -> str:
    """Per family × method: ABZ NEE coverage and width ratio, the lowest coverage over every
    flux × domain; per family the ABZ NEE trend ratio."""
    out = []
    for (fam, meth), g in summary.groupby(["family", "method"], sort=False):
        abz = g[(g["domain"] == "abz") & (g["flux"] == "NEE")]
        if len(abz):
            out += [f"coverage_{meth}_{fam}={abz['coverage'].iloc[0]}",
                    f"width_ratio_{meth}_{fam}={abz['width_ratio'].iloc[0]:.2f}"]
        out += [f"min_coverage_{meth}_{fam}={min(g['coverage'], key=_count)}",
                f"max_width_ratio_{meth}_{fam}={g['width_ratio'].max():.2f}"]
    for fam, g in trends.groupby("family", sort=False):
        abz = g[(g["domain"] == "abz") & (g["flux"] == "NEE")]
        if len(abz):
            out.append(f"trend_ratio_NEE_abz_{fam}={abz['ratio'].iloc[0]:.2f}")
    return " ".join(out)


def markdown(draws: pd.DataFrame, summary: pd.DataFrame, trends: pd.DataFrame,
             args: argparse.Namespace, times: dict[str, float]) -> str:
    """The per-draw and summary tables (the results page adds the reading)."""
    run = ", ".join(f"family {f}: {t / 60:.1f} min" for f, t in times.items())
    per_draw = draws.pivot_table(index=["family", "flux", "draw", "domain"], columns="unit",
                                 values="boot_sd", sort=False)
    per_draw.columns = [f"sd_{u}" for u in per_draw.columns]
    first = draws[draws["unit"] == UNITS[0]].set_index(["family", "flux", "draw", "domain"])
    per_draw = per_draw.join(first[["central", "cv_error", "trend"]]).reset_index()
    return "\n".join([
        f"Command: `python benchmarks/interval_coverage.py {' '.join(map(str, args.twins))} "
        f"--draws {args.draws} --fluxes {' '.join(args.fluxes)} --bootstraps "
        f"{args.bootstraps} --profile {args.profile}` ({run}; draws already in the CSV are not "
        "timed).",
        "",
        f"## Budget intervals over the draws (Tg C yr⁻¹, mean {START}–{END})",
        "",
        markdown_table(summary, 2),
        "",
        f"## Budget trends over the draws (Tg C yr⁻², Theil–Sen of annual budgets {START}–{END})",
        "",
        markdown_table(trends, 2),
        "",
        "## Every draw",
        "",
        markdown_table(per_draw, 1),
        "",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("twins", type=Path, nargs="+", help="twin folders (one per family)")
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--fluxes", nargs="+", default=list(FLUXES))
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
    truth = pd.concat([truth_table(t, args.fluxes) for t in twins], ignore_index=True)
    done = (pd.read_csv(args.csv, dtype={"family": str})
            if args.csv is not None and args.csv.exists() else pd.DataFrame())
    times = dict.fromkeys(fams, 0.0)
    with tempfile.TemporaryDirectory() as tmp, dask.config.set(scheduler="threads"):
        for k in range(args.draws):
            for twin in twins:
                if len(done) and ((done["family"] == twin.family) & (done["draw"] == k)).any():
                    continue
                t = time.perf_counter()
                got = pd.DataFrame(one_draw(twin, k, args.fluxes, args.profile,
                                            args.bootstraps, args.cluster_km, Path(tmp)))
                times[twin.family] += time.perf_counter() - t
                done = pd.concat([done, got], ignore_index=True)
                if args.csv is not None:
                    done.to_csv(args.csv, index=False)
                abz = got[(got["domain"] == "abz") & (got["flux"] == args.fluxes[0])
                          ].set_index("unit")
                tv = truth[(truth["family"] == twin.family) & (truth["domain"] == "abz")
                           & (truth["flux"] == args.fluxes[0])].iloc[0]
                print(f"family {twin.family} draw {k:3d} ({time.perf_counter() - t:.0f} s): "
                      f"{args.fluxes[0]} ABZ truth {tv['truth']:.0f}, central "
                      f"{abz['central'].iloc[0]:.0f}, CV error {abz['cv_error'].iloc[0]:.0f}; "
                      + "; ".join(f"{u} SD {abz.loc[u, 'boot_sd']:.0f}" for u in UNITS)
                      + f"; trend {abz['trend'].iloc[0]:.1f} (truth {tv['truth_trend']:.1f})",
                      flush=True)
    draws = done[done["draw"] < args.draws]
    summary = summarise(draws, truth)
    trends = trend_summary(draws, truth)
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(trends.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    if args.out is not None:
        args.out.write_text(markdown(draws, summary, trends, args, times))
        print(f"written {args.out}")
    print(machine_line(summary, trends))
    return 0


if __name__ == "__main__":
    sys.exit(main())
