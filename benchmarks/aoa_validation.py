"""Is the upscaled flux worse outside the area of applicability? A check on the twin's truth.

For a finished run on a digital twin (``RUN/training``, ``RUN/fluxes.zarr``, ``RUN/twin/``) this
computes the dissimilarity index and AOA of each flux model (:mod:`abz_dask.analyses.aoa`, CAST
semantics; calendar-month climatologies over the budget period, the report's default) and
compares the per-pixel error of the estimate against the twin's planted truth
(``twin/truth.zarr``) inside and outside the AOA:

* pixel level: |mean annual flux (estimate) − mean annual flux (truth)| (g C m⁻² yr⁻¹,
  2001–2020) of every ABZ pixel, area-weighted mean over the pixels inside and outside the AOA
  (the pixel is inside when its mean monthly DI ≤ threshold);
* cell-month level: |monthly estimate − truth| averaged over the period per calendar month and
  pixel, split by that calendar month's own DI (``di_month ≤ threshold``; with
  ``--mode monthly`` every month's error against that month's own DI);
* the signed mean error (bias) of the mean annual flux inside and outside (what a budget
  accumulates);
* the error by DI quartile and the Spearman correlation of DI and pixel error;
* the share of each domain's area outside the AOA and the budgets over the applicable area.

Relative errors divide each group's mean absolute error by the mean |true flux| of the same
pixels (cell-months), so that low-flux regions and months (tundra, winter) are not read as
"accurate" merely for being small.

The last line is machine-readable: ``err_ratio_outside_inside=<NEE pixel MAE ratio>`` then the
per-flux pixel and relative ratios.

``--from-twin TWIN`` first makes the run folder ``RUN`` from a twin folder (e.g. a family-b twin,
``abz-dask twin --family b``): the twin copied to ``RUN/twin``, its network read without the
reader's plausibility ranges (family b's own site factors write NEE up to ~335 g C m⁻² month⁻¹;
``interval_coverage.NO_RANGES``), the ``light`` profile trained with the twin's seed (central
forests, CV predictions and permutation importances; no bootstraps) by
:func:`abz_dask.training.run_training`, and the central forests upscaled over the period by
``abz-dask upscale RUN --n-bootstrap 0``.

Usage::

    python benchmarks/aoa_validation.py RUN [--flux NEE GPP Reco] [--start 2001] [--end 2020]
        [--mode climatology|monthly] [--unweighted] [--from-twin TWIN]
        [--out benchmarks/RESULTS_aoa.md]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from scipy.stats import spearmanr

from abz_dask.aggregation.zonal import pixel_area
from abz_dask.analyses.aoa import aoa_budgets, aoa_shares, di_map, train_di_from_run
from abz_dask.geo.grid import Grid


def _open(path: Path) -> xr.Dataset:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    return xr.open_zarr(path, consolidated=False)


def make_run(twin: Path, run: Path, years: tuple[int, int]) -> None:
    """The run folder ``run`` on the twin folder ``twin`` (see the module notes)."""
    from interval_coverage import NO_RANGES  # benchmarks/ is on sys.path when run as a script

    from abz_dask.pipeline.demo import extract_stage
    from abz_dask.training import run_training
    from abz_dask.training.profiles import resolve_profile

    if run.exists():
        raise SystemExit(f"--from-twin: {run} exists; give a new run folder")
    shutil.copytree(twin, run / "twin")
    tw = run / "twin"
    seed = int(json.loads((tw / "twin.json").read_text())["seed"])
    table, _ = extract_stage(tw / "cube.zarr", tw / "zones.zarr", tw / "abcflux_twin.csv",
                             checks=NO_RANGES)
    prof = resolve_profile("light").model_copy(update={"n_bootstrap": 0, "pdp_points": 0})
    run_training(table, run, profile=prof, seed=seed, progress=False)
    subprocess.run([str(Path(sys.executable).with_name("abz-dask")), "upscale", str(run),
                    "--n-bootstrap", "0", "--start", f"{years[0]}-01", "--end",
                    f"{years[1]}-12", "--workers", "1"], check=True)


def _wmean(v: np.ndarray, w: np.ndarray) -> float:
    ok = np.isfinite(v) & (w > 0)
    return float(np.sum(v[ok] * w[ok]) / np.sum(w[ok])) if ok.any() else float("nan")


def validate_flux(run: Path, flux: str, years: tuple[int, int], mode: str,
                  cube: xr.Dataset, zones: xr.Dataset, est: xr.Dataset, truth: xr.Dataset,
                  weighted: bool = True
                  ) -> tuple[dict[str, float], pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Error inside vs outside the AOA of one flux; shares and budgets over the AOA."""
    grid = Grid.of_dataset(zones)
    model = train_di_from_run(run / "training", flux, weighted=weighted)
    dom = zones["abz"].astype(bool)
    aoa = di_map(cube, model, years=years, mode=mode, domain=dom).compute()
    sl = slice(str(years[0]), str(years[1]))
    e = est[flux].sel(time=sl).astype(np.float64)
    t = truth[flux].sel(time=sl).astype(np.float64).assign_coords(y=e["y"], x=e["x"])
    diff = e - t
    ann_bias = diff.groupby("time.year").sum().mean("year").compute().values
    ann_err = np.abs(ann_bias)
    ann_true = abs(t.groupby("time.year").sum().mean("year")).compute().values
    mon_err = abs(diff).groupby("time.month").mean().compute().values  # (12, y, x)
    mon_true = abs(t).groupby("time.month").mean().compute().values
    area = pixel_area(zones, grid.cell_area).values * np.asarray(dom.values)
    inside = np.asarray(aoa["aoa"].values) == 1
    outside = np.asarray(aoa["aoa"].values) == 0
    thr = model.threshold
    di = np.asarray(aoa["di"].values)
    stats: dict[str, float] = {
        "threshold": thr, "mean_distance": model.mean_distance,
        "train_rows": float(len(model.train_di)),
        "n_pixels_inside": float(inside.sum()), "n_pixels_outside": float(outside.sum()),
        "mae_inside": _wmean(np.where(inside, ann_err, np.nan), area),
        "mae_outside": _wmean(np.where(outside, ann_err, np.nan), area)}
    stats["ratio"] = stats["mae_outside"] / stats["mae_inside"]
    # signed: what a budget over the cells accumulates
    stats["bias_inside"] = _wmean(np.where(inside, ann_bias, np.nan), area)
    stats["bias_outside"] = _wmean(np.where(outside, ann_bias, np.nan), area)
    # relative: error over the magnitude of the true flux in the same pixels
    stats["rel_inside"] = stats["mae_inside"] / _wmean(np.where(inside, ann_true, np.nan), area)
    stats["rel_outside"] = stats["mae_outside"] / _wmean(np.where(outside, ann_true, np.nan),
                                                         area)
    stats["rel_ratio"] = stats["rel_outside"] / stats["rel_inside"]
    if mode == "climatology":  # each calendar month's DI vs that month's mean error
        dm = np.asarray(aoa["di_month"].values)
    else:  # each month's DI vs that month's error
        dm = np.asarray(aoa["di_time"].values)
        mon_err = abs(diff).compute().values
        mon_true = abs(t).compute().values
    w12 = np.broadcast_to(area, dm.shape)
    stats["mae_month_inside"] = _wmean(np.where(dm <= thr, mon_err, np.nan), w12)
    stats["mae_month_outside"] = _wmean(np.where(dm > thr, mon_err, np.nan), w12)
    stats["ratio_month"] = stats["mae_month_outside"] / stats["mae_month_inside"]
    for side, sel in (("inside", dm <= thr), ("outside", dm > thr)):
        stats[f"rel_month_{side}"] = (stats[f"mae_month_{side}"]
                                      / _wmean(np.where(sel, mon_true, np.nan), w12))
    stats["rel_ratio_month"] = stats["rel_month_outside"] / stats["rel_month_inside"]
    ok = np.isfinite(di) & np.isfinite(ann_err) & (area > 0)
    stats["spearman_di_error"] = float(spearmanr(di[ok], ann_err[ok]).statistic)
    q = np.quantile(di[ok], [0.25, 0.5, 0.75])
    qi = np.digitize(di[ok], q)
    quart = pd.DataFrame({
        "DI quartile": ["Q1", "Q2", "Q3", "Q4"],
        "DI range": [f"{lo:.3f}–{hi:.3f}" for lo, hi in
                     zip([di[ok].min(), *q], [*q, di[ok].max()], strict=True)],
        "MAE": [_wmean(ann_err[ok][qi == i], area[ok][qi == i]) for i in range(4)]})
    cell = grid.cell_area
    shares = aoa_shares(aoa, zones, cell)
    budgets = aoa_budgets(est, aoa, zones, cell, years=years, flux_names=[flux])
    tb = aoa_budgets(truth.assign_coords(y=est["y"], x=est["x"]), aoa, zones, cell,
                     years=years, flux_names=[flux])
    budgets["truth"] = tb["budget"].to_numpy()
    budgets["truth_in_aoa"] = tb["budget_in_aoa"].to_numpy()
    budgets["error"] = budgets["budget"] - budgets["truth"]
    budgets["error_in_aoa"] = budgets["budget_in_aoa"] - budgets["truth_in_aoa"]
    budgets["share_in_aoa"] = budgets["share_in_aoa"].map(lambda v: f"{v:.3f}")
    return stats, shares, budgets, quart


def _md(df: pd.DataFrame, digits: int = 3) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = [f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in r]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="finished run folder on a twin")
    ap.add_argument("--flux", nargs="+", default=["NEE", "GPP", "Reco"])
    ap.add_argument("--start", type=int, default=2001)
    ap.add_argument("--end", type=int, default=2020)
    ap.add_argument("--mode", default="climatology", choices=["climatology", "monthly"])
    ap.add_argument("--unweighted", action="store_true",
                    help="weight every predictor 1 (CAST useWeight = FALSE; a sensitivity)")
    ap.add_argument("--from-twin", type=Path, default=None,
                    help="first make RUN from this twin folder (see the module notes)")
    ap.add_argument("--out", type=Path, help="write the Markdown results here")
    a = ap.parse_args(argv)
    run: Path = a.run
    if a.from_twin is not None:
        t_make = time.perf_counter()
        make_run(a.from_twin, run, (a.start, a.end))
        print(f"run folder {run} made from {a.from_twin} in "
              f"{time.perf_counter() - t_make:.0f} s", flush=True)
    t0 = time.perf_counter()
    cube = _open(run / "twin" / "cube.zarr")
    zones = _open(run / "twin" / "zones.zarr")
    truth = _open(run / "twin" / "truth.zarr")
    est = _open(run / "fluxes.zarr")
    years = (a.start, a.end)
    rows, parts = [], []
    for f in a.flux:
        stats, shares, budgets, quart = validate_flux(run, f, years, a.mode, cube, zones, est,
                                                      truth, not a.unweighted)
        rows.append({"flux": f, **stats})
        parts.append((f, shares, budgets, quart))
        print(f"{f}: MAE inside {stats['mae_inside']:.2f}, outside {stats['mae_outside']:.2f} "
              f"g C m-2 yr-1, ratio {stats['ratio']:.2f}; Spearman(DI, error) "
              f"{stats['spearman_di_error']:.2f}", flush=True)
    summary = pd.DataFrame(rows)
    elapsed = time.perf_counter() - t0
    if a.out:
        text = [f"# Area of applicability on the twin (`benchmarks/aoa_validation.py {run}`)",
                "",
                f"Run `{run}`; DI mode `{a.mode}`"
                f"{', unweighted predictors' if a.unweighted else ''}, "
                f"period {a.start}–{a.end}, ABZ pixels. "
                "Errors are area-weighted means of |estimate − planted truth|: pixel level = "
                "mean annual flux (g C m⁻² yr⁻¹), cell-month level = monthly flux "
                "(g C m⁻² month⁻¹; climatology mode: mean per calendar month) split by that "
                "month's own DI; bias = signed mean error; rel = error / mean |true flux|. "
                f"Wall time {elapsed:.0f} s.", "",
                "## Error inside vs outside the AOA", "",
                _md(summary.set_index("flux").T.rename_axis("metric").reset_index(), 3), ""]
        for f, shares, budgets, quart in parts:
            text += [f"## {f}", "", "Share of each domain's area outside the AOA:", "",
                     _md(shares), "", "Pixel error by DI quartile:", "", _md(quart), "",
                     "Budgets (Tg C yr⁻¹) over the whole domain and over its applicable area "
                     "(estimate and planted truth):", "", _md(budgets, 1), ""]
        a.out.write_text("\n".join(text))
    r = {str(row["flux"]): row for row in rows}
    key = "NEE" if "NEE" in r else a.flux[0]
    print(" ".join([f"err_ratio_outside_inside={float(r[key]['ratio']):.4f}"]
                   + [f"{f}_ratio={float(r[f]['ratio']):.4f}" for f in a.flux]
                   + [f"{f}_rel_ratio={float(r[f]['rel_ratio']):.4f}" for f in a.flux]
                   + [f"{f}_ratio_month={float(r[f]['ratio_month']):.4f}" for f in a.flux]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
