"""Are the upscaled trends the planted ones? Estimated vs true trends over redrawn networks.

For each twin given (one per family: ``abz-dask twin --family a|b``) and network draws
k = 0..N−1 (sites and observations made as the twin makes them and read without the reader's
plausibility ranges, :func:`interval_coverage.network_table`), it trains the profile's central
forests of NEE, GPP and Reco only (no bootstraps, no diagnostics; training seed k), upscales them
lazily over 2001–2020 and records per flux:

* per domain (abz, tundra, boreal, permafrost) the trend of the annual budgets (Tg C yr⁻²) by the
  package's own budget-trend code (:func:`abz_dask.analyses.budget_trends.budget_trend_table`:
  zyp Theil–Sen with Zhang prewhitening, the trend the product prints; plus the plain Theil–Sen
  slope, method ``none``), for the estimate and for the twin's ``truth.zarr`` through the same
  code, and their ratio;
* per domain the **pixel slope**: the slope of the land-area-weighted least-squares regression of
  the estimated on the true per-pixel Theil–Sen slopes of the annual means (1 = the map's trends
  at full amplitude), and their weighted correlation;
* the **attenuation estimates** from the training's own held-out predictions (no truth):
  the one a run reports (:func:`abz_dask.analyses.attenuation.held_out_attenuation`, the slope
  of predicted on observed site-month anomalies instrumented by the predictors' anomalies,
  ``att_iv``), the within-site time ratio (``att_time``) and the plain anomaly slopes per
  site-year and site-month (``att_year``, ``att_month``), each with its jackknife SE.

``--variant`` runs the controlled experiments of the results page on the same draws:

* ``network`` (default): the twin's network and observations;
* ``perfect``: the network's site-months, each observation replaced by the planted truth of its
  cell-month (no site factor, no noise: :func:`network_sampling._perfect`);
* ``dense``: ``--dense-sites`` sites on random ABZ land cells (area-weighted), every month of
  2001–2020 observed, observations = the planted truth (no site mix, no noise, no gaps);
* ``early``: the network's observations of 2001–2010 only (the forests never see the co2,
  temperature or greenness of the second decade: extrapolation in time);
* ``no-co2``: the network, without the ``co2`` predictor (the twin's only predictor that is a
  pure clock).

Per-draw rows are appended to ``--csv`` as they are made (keyed by family, variant and draw) and
draws already there are not recomputed, so an interrupted run resumes. ``--cv-dir`` keeps every
draw's held-out predictions; rows written before an estimate existed get it from them.

Usage::

    python benchmarks/trend_fidelity.py /tmp/cov/a /tmp/cov/b [--draws 20] [--variant network]
        [--profile light] [--csv trend_draws.csv] [--cv-dir DIR] [--out tables.md]

The last line printed is machine-readable: per family, flux and domain the mean ratio
``trend_ratio_<FLUX>_<domain>_<family>``, the mean pixel slope ``pixel_slope_<FLUX>_<family>``
(ABZ) and the mean attenuation estimate ``attenuation_<FLUX>_<family>``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import xarray as xr
from interval_coverage import NO_RANGES, network_table
from network_sampling import DOMAINS, END, START, Twin, _perfect
from r_parity import markdown_table  # benchmarks/ is on sys.path when run as a script

import abz_dask.twin.sites as twin_sites
from abz_dask.aggregation.budgets import annual_domain_budgets, domain_weights
from abz_dask.analyses.attenuation import attenuation_table, held_out_attenuation
from abz_dask.analyses.budget_trends import budget_trend_table
from abz_dask.analyses.trends import trend
from abz_dask.io.predictors import PREDICTOR_NAMES
from abz_dask.pipeline.demo import extract_stage
from abz_dask.training import train_bundle
from abz_dask.training.profiles import PredictorChoice, resolve_profile
from abz_dask.upscale import compile_bundle, predict

FLUXES = ("NEE", "GPP", "Reco")
VARIANTS = ("network", "perfect", "dense", "early", "no-co2")
EARLY_END = 2010


def domain_trends(fluxes: xr.Dataset, weights: xr.DataArray) -> dict[str, float]:
    """``<method>_<FLUX>_<domain>`` → trend of the annual budgets (Tg C yr⁻²), zyp with Zhang
    prewhitening (``zhang``, what the product prints) and plain Theil–Sen (``none``)."""
    annual = annual_domain_budgets(fluxes[list(FLUXES)], weights).to_dataarray("flux")
    annual = annual.sel(year=slice(START, END)).compute()
    out = {}
    for method in ("zhang", "none"):
        t = budget_trend_table(annual, method=method)
        for _, r in t.iterrows():
            out[f"{method}_{r['flux']}_{r['domain']}"] = float(r["trend_tg_c_per_yr"])
    return out


def pixel_slopes(fluxes: xr.Dataset) -> xr.Dataset:
    """Per-pixel plain Theil–Sen slope of the annual means (g C m⁻² month⁻¹ yr⁻¹) per flux."""
    annual = fluxes[list(FLUXES)].sel(time=slice(str(START), str(END)))
    annual = annual.groupby("time.year").mean("time").compute()
    return xr.Dataset({f: trend(annual[f], dim="year", method="none")["trend"] for f in FLUXES})


def weighted_fit(est: np.ndarray, true: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Slope of the weighted least-squares regression of ``est`` on ``true`` and the weighted
    correlation (pixels with a NaN or zero weight left out)."""
    ok = np.isfinite(est) & np.isfinite(true) & (w > 0)
    e, t, w = est[ok], true[ok], w[ok]
    mt, me = np.average(t, weights=w), np.average(e, weights=w)
    ct = np.average((t - mt) ** 2, weights=w)
    ce = np.average((e - me) ** 2, weights=w)
    cte = np.average((t - mt) * (e - me), weights=w)
    return float(cte / ct), float(cte / np.sqrt(ct * ce))


@contextmanager
def _every_month() -> Iterator[None]:
    """Sites observe every month (the twin's ``_site_months`` replaced for the ``dense``
    variant only)."""
    keep = twin_sites._site_months
    twin_sites._site_months = lambda site, time, rng: list(range(len(time)))  # type: ignore
    try:
        yield
    finally:
        twin_sites._site_months = keep


def dense_table(twin: Twin, k: int, n_sites: int, work: Path) -> pd.DataFrame:
    """``n_sites`` sites on random ABZ land cells (drawn by land area, seed k), one plot each,
    every month observed, observations = the planted truth."""
    site = twin_sites.make_sites(twin.zones, twin.grid, twin.fire, k, n_sites,
                                 family=twin.family)
    w = (twin.zones["land_fraction"].fillna(0) * twin.zones["abz"].fillna(False)).values
    rng = np.random.default_rng([k, 24, 3])
    cells = rng.choice(w.size, size=len(site), replace=False, p=(w / w.sum()).ravel())
    rows, cols = np.unravel_index(cells, w.shape)
    lon, lat = twin.grid.lonlat()
    site = site.assign(row=rows, col=cols, latitude=lat[rows, cols], longitude=lon[rows, cols],
                       plots=1, biome=np.where(twin.zones["biome"].values[rows, cols] == 1,
                                               "Tundra", "Boreal"))
    csv = work / f"abcflux_dense{k}.csv"
    with _every_month():
        obs = twin_sites.site_observations(site, twin.truth, twin.cube, k, twin.grid)
    obs.to_csv(csv, index=False)
    table, _ = extract_stage(twin.layout.cube, twin.layout.zones, csv, checks=NO_RANGES)
    return _perfect(table, twin.truth, FLUXES)


def training_table(twin: Twin, k: int, variant: str, dense_sites: int, work: Path
                   ) -> pd.DataFrame:
    """The training table of draw ``k`` for ``variant`` (see the module docstring)."""
    if variant == "dense":
        return dense_table(twin, k, dense_sites, work)
    table = network_table(twin, k, work)
    if variant == "perfect":
        return _perfect(table, twin.truth, FLUXES)
    if variant == "early":
        return table[table["year"] <= EARLY_END].reset_index(drop=True)
    return table


def model_predictors(variant: str) -> list[str]:
    """The continuous predictors of a draw's forests (the attenuation estimate's candidates)."""
    drop = {"month", "vegtype"} | ({"co2"} if variant == "no-co2" else set())
    return [p for p in PREDICTOR_NAMES if p not in drop]


def attenuation_estimates(cv: pd.DataFrame, table: pd.DataFrame, variant: str
                          ) -> dict[str, dict[str, float]]:
    """Per flux: the run's estimate (:func:`held_out_attenuation`, instrumented, ``att_iv``),
    the time ratio (``att_time``) and the plain anomaly slopes per site-year and site-month
    (``att_year``, ``att_month``), each with its ``_se``."""
    parts = {"iv": held_out_attenuation(cv, table, model_predictors(variant)),
             "time": attenuation_table(cv, level="year", method="time"),
             "year": attenuation_table(cv, level="year"),
             "month": attenuation_table(cv, level="month")}
    out: dict[str, dict[str, float]] = {}
    for name, t in parts.items():
        for _, r in t.iterrows():
            out.setdefault(str(r["flux"]), {}).update({
                f"att_{name}": float(r["attenuation"]),
                f"att_{name}_se": float(r["attenuation_se"])})
    return out


def one_draw(twin: Twin, family: str, k: int, variant: str, profile: str, dense_sites: int,
             truth: dict[str, Any], work: Path, cv_dir: Path | None = None
             ) -> list[dict[str, Any]]:
    """Rows (flux × domain, labelled ``family``) of network draw ``k``: estimated and true
    budget trends, the pixel slope and correlation, the attenuation estimates."""
    table = training_table(twin, k, variant, dense_sites, work)
    update: dict[str, Any] = {"n_bootstrap": 0, "importance_repeats": 0, "pdp_points": 0}
    if variant == "no-co2":
        update["predictors"] = PredictorChoice(drop=("co2",))
    prof = resolve_profile(profile).model_copy(update=update)
    bundle = train_bundle(table, profile=prof, fluxes=FLUXES, seed=k, progress=False)
    models = compile_bundle(bundle)
    period = twin.cube.sel(time=slice(str(START), str(END)))
    est = xr.Dataset({f: predict(period, models.central[f]) for f in FLUXES}).compute()
    trends = domain_trends(est, truth["weights"])
    slopes = pixel_slopes(est)
    cv = pd.concat([d.assign(flux=f) for f, d in bundle.cv_predictions.items()])
    if cv_dir is not None:  # the held-out predictions, for other estimators later
        cv.to_csv(cv_dir / f"cv_{family}_{variant}_{k}.csv.gz", index=False)
    att = attenuation_estimates(cv, table, variant)
    rows = []
    for f in FLUXES:
        for d in DOMAINS:
            w = truth["weights"].sel(domain=d).values
            ps, pc = weighted_fit(slopes[f].values, truth["slopes"][f].values, w)
            rows.append({
                "family": family, "variant": variant, "draw": k, "flux": f, "domain": d,
                "n_rows": len(table), "n_sites": int(table["site_id"].nunique()),
                "est_trend": trends[f"zhang_{f}_{d}"], "true_trend": truth[f"zhang_{f}_{d}"],
                "est_sen": trends[f"none_{f}_{d}"], "true_sen": truth[f"none_{f}_{d}"],
                "pixel_slope": ps, "pixel_corr": pc, **att[f]})
    return rows


def backfill(done: pd.DataFrame, twin: Twin, family: str, dense_sites: int, cv_dir: Path,
             work: Path) -> pd.DataFrame:
    """Rows of ``family`` made before ``att_iv`` existed get every attenuation estimate from
    the draw's saved held-out predictions and its re-made (deterministic) training table."""
    if "att_iv" not in done:
        done = done.assign(att_iv=np.nan)
    todo = done[(done["family"] == family) & done["att_iv"].isna()]
    for (variant, k), _ in todo.groupby(["variant", "draw"]):
        path = cv_dir / f"cv_{family}_{variant}_{k}.csv.gz"
        if not path.exists():
            continue
        cv = pd.read_csv(path, dtype={"site_id": str})
        att = attenuation_estimates(cv, training_table(twin, int(k), str(variant), dense_sites,
                                                       work), str(variant))
        sel = (done["family"] == family) & (done["variant"] == variant) & (done["draw"] == k)
        for f, vals in att.items():
            for c, v in vals.items():
                done.loc[sel & (done["flux"] == f), c] = v
    return done


def label(root: Path) -> str:
    """The family of the twin at ``root``, ``-nohidden`` appended when its hidden driver is
    off (twin.json)."""
    cfg = json.loads((root / "twin.json").read_text())
    return str(cfg.get("family", "a")) + ("" if cfg.get("hidden_driver", True) else "-nohidden")


def twin_truth(twin: Twin) -> dict[str, Any]:
    """Domain weights, true budget trends and true pixel slopes of a twin."""
    weights = domain_weights(twin.zones, twin.grid.cell_area)
    truth = twin.truth.sel(time=slice(str(START), str(END)))
    return {"weights": weights, **domain_trends(truth, weights), "slopes": pixel_slopes(truth)}


def summarise(draws: pd.DataFrame) -> pd.DataFrame:
    """Per family × variant × flux × domain over the draws: the true trend, the mean estimated
    trend, the mean ratio estimated / true (± SE), the same for the plain Theil–Sen slope, the
    mean pixel slope and correlation, and the attenuation estimates: the run's (``att_iv``: its
    mean, SD over the draws and mean jackknife SE within a run), the time ratio and the plain
    site-year anomaly slope (means)."""
    rows = []
    for c in ("att_iv", "att_iv_se", "att_time", "att_year"):  # rows of older runs lack some
        draws = draws if c in draws else draws.assign(**{c: np.nan})
    for (fam, var, f, d), g in draws.groupby(["family", "variant", "flux", "domain"],
                                             sort=False):
        n = len(g)
        r = g["est_trend"] / g["true_trend"]
        rs = g["est_sen"] / g["true_sen"]
        rows.append({
            "family": fam, "variant": var, "flux": f, "domain": d, "n_draws": n,
            "true_trend": g["true_trend"].iloc[0], "mean_est_trend": g["est_trend"].mean(),
            "ratio": r.mean(), "ratio_se": r.std(ddof=1) / np.sqrt(n) if n > 1 else np.nan,
            "ratio_sen": rs.mean(), "pixel_slope": g["pixel_slope"].mean(),
            "pixel_slope_se": g["pixel_slope"].std(ddof=1) / np.sqrt(n) if n > 1 else np.nan,
            "pixel_corr": g["pixel_corr"].mean(), "att_iv": g["att_iv"].mean(),
            "att_iv_sd": g["att_iv"].std(ddof=1) if n > 1 else np.nan,
            "att_iv_se_run": g["att_iv_se"].mean(), "att_time": g["att_time"].mean(),
            "att_year": g["att_year"].mean()})
    return pd.DataFrame(rows)


def paired(done: pd.DataFrame) -> pd.DataFrame:
    """Each experiment against the twin's network on the same draws (ABZ): per family, variant
    and flux the mean ratio, pixel slope and attenuation estimate of both. A twin without its
    hidden driver (family ``a-nohidden``) is compared with family ``a``'s network."""
    abz = done[done["domain"] == "abz"].assign(ratio=lambda d: d["est_trend"] / d["true_trend"])
    rows = []
    for (fam, var), g in abz.groupby(["family", "variant"], sort=False):
        base_fam = str(fam).removesuffix("-nohidden")
        if var == "network" and base_fam == fam:
            continue
        ref = abz[(abz["family"] == base_fam) & (abz["variant"] == "network")
                  & abz["draw"].isin(g["draw"])]
        for f, gf in g.groupby("flux", sort=False):
            rf = ref[ref["flux"] == f]
            if not len(rf):
                continue
            rows.append({"family": fam, "variant": var, "flux": f,
                         "draws": ",".join(map(str, sorted(gf["draw"]))),
                         "ratio": gf["ratio"].mean(), "ratio_network": rf["ratio"].mean(),
                         "pixel_slope": gf["pixel_slope"].mean(),
                         "pixel_slope_network": rf["pixel_slope"].mean(),
                         "att_iv": gf["att_iv"].mean(), "att_iv_network": rf["att_iv"].mean()})
    return pd.DataFrame(rows)


def machine_line(summary: pd.DataFrame) -> str:
    """``trend_ratio_<FLUX>_<domain>_<family>=..`` for every row of the ``network`` variant (or
    the only variant run), the ABZ pixel slope and the attenuation estimate per flux."""
    out = []
    for (fam, var, f), g in summary.groupby(["family", "variant", "flux"], sort=False):
        tag = fam if var == "network" else f"{fam}_{var}"
        out += [f"trend_ratio_{f}_{r['domain']}_{tag}={r['ratio']:.2f}" for _, r in g.iterrows()]
        abz = g[g["domain"] == "abz"].iloc[0]
        out += [f"pixel_slope_{f}_{tag}={abz['pixel_slope']:.2f}",
                f"attenuation_{f}_{tag}={abz['att_iv']:.2f}"]
    return " ".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("twins", type=Path, nargs="+", help="twin folders (one per family)")
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--first", type=int, default=0, help="first draw")
    ap.add_argument("--variant", choices=VARIANTS, default="network")
    ap.add_argument("--dense-sites", type=int, default=300)
    ap.add_argument("--profile", default="light")
    ap.add_argument("--csv", type=Path, default=None, help="per-draw rows (appended, resumed)")
    ap.add_argument("--out", type=Path, default=None, help="Markdown tables file")
    ap.add_argument("--cv-dir", type=Path, default=None,
                    help="keep every draw's held-out predictions here")
    ap.add_argument("--paired", action="store_true",
                    help="also print every experiment in the CSV against the network")
    args = ap.parse_args(argv)
    twins = [Twin.open(t) for t in args.twins]
    labels = [label(p) for p in args.twins]
    truth = {str(p): twin_truth(t) for p, t in zip(args.twins, twins, strict=True)}
    done = (pd.read_csv(args.csv, dtype={"family": str})
            if args.csv is not None and args.csv.exists() else pd.DataFrame())
    draws = range(args.first, args.first + args.draws)
    with tempfile.TemporaryDirectory() as tmp, dask.config.set(scheduler="threads"):
        if args.cv_dir is not None and len(done):
            for twin, lab in zip(twins, labels, strict=True):
                done = backfill(done, twin, lab, args.dense_sites, args.cv_dir, Path(tmp))
            if args.csv is not None:
                done.to_csv(args.csv, index=False)
        for k in draws:
            for path, twin, lab in zip(args.twins, twins, labels, strict=True):
                if len(done) and ((done["family"] == lab) & (done["variant"] == args.variant)
                                  & (done["draw"] == k)).any():
                    continue
                t = time.perf_counter()
                got = pd.DataFrame(one_draw(twin, lab, k, args.variant, args.profile,
                                            args.dense_sites, truth[str(path)], Path(tmp),
                                            args.cv_dir))
                done = pd.concat([done, got], ignore_index=True)
                if args.csv is not None:
                    done.to_csv(args.csv, index=False)
                abz = got[got["domain"] == "abz"].set_index("flux")
                print(f"family {lab} {args.variant} draw {k:3d} "
                      f"({time.perf_counter() - t:.0f} s): " + "; ".join(
                          f"{f} trend {abz.loc[f, 'est_trend']:+.1f} / "
                          f"{abz.loc[f, 'true_trend']:+.1f}, pixel slope "
                          f"{abz.loc[f, 'pixel_slope']:.2f}, att {abz.loc[f, 'att_iv']:.2f}"
                          for f in FLUXES), flush=True)
    sel = done[(done["variant"] == args.variant) & done["draw"].isin(list(draws))
               & done["family"].isin(labels)]
    summary = summarise(sel)
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    pairs = paired(done) if args.paired else pd.DataFrame()
    if len(pairs):
        print(pairs.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    if args.out is not None:
        args.out.write_text("\n".join([
            f"## {args.variant} ({len(draws)} draws, Tg C yr⁻², {START}–{END})", "",
            markdown_table(summary, 2), "",
            *(["## Experiments against the network on the same draws (ABZ)", "",
               markdown_table(pairs, 2), ""] if len(pairs) else [])]))
        print(f"written {args.out}")
    print(machine_line(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
