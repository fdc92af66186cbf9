"""The run report: every analysis of a run folder, its figures and a self-contained HTML file.

:func:`build_report` computes Table 1 (written as CSV + Markdown), the budget series and
trends, regional, seasonal and fire analyses (tables written to ``RUN/report/``), draws the
figures and writes ``RUN/report.html`` with every figure embedded as base64 PNG, next to the
figures the other stages already wrote (``RUN/training/*.png``, ``RUN/compare/*.png``, ...)
and the comparison stage's tables (``RUN/compare/comparison_metrics.csv``,
``regional_table.csv``) when that stage ran. Every path comes from the run's
:class:`~abz_dask.pipeline.layout.RunLayout`.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import xarray as xr
from matplotlib.figure import Figure

from abz_dask import __version__
from abz_dask.aggregation.zonal import domain_budgets, fire_budgets
from abz_dask.analyses.budget_trends import budget_trends
from abz_dask.analyses.table1 import Table1, read_table1, wide_table
from abz_dask.io.location import as_path, url, write_atomic
from abz_dask.report import figures as F

if TYPE_CHECKING:  # the run layout is the orchestration's; the report is given one
    from abz_dask.pipeline.layout import RunLayout

__all__ = ["EXTERNAL_FIGURE_DIRS", "Report", "build_report", "compute_analyses", "render_html"]

#: Period cuts of the flux store smaller than this are loaded once for all analyses.
LOAD_BELOW_BYTES = 1.5e9
#: Figure folders of a run (:meth:`RunLayout.figure_dirs`) whose PNGs (written by other
#: stages) are embedded, with a heading.
EXTERNAL_FIGURE_DIRS: dict[str, str] = {
    "training": "Model performance, importance and partial dependence (training stage)",
    "compare": "Comparisons with other products (compare stage)",
    "trends": "Trend analyses (trends stage)",
    "clusters": "Environmental clusters and extrapolation",
}


@dataclass
class Report:
    """What :func:`build_report` produced."""

    path: Path
    table1: Table1
    tables: dict[str, pd.DataFrame]
    figures: dict[str, Figure]
    external_figures: dict[str, Path]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def figure_names(self) -> list[str]:
        """Names of every figure in the report (own figures first, then embedded PNGs)."""
        return [*self.figures, *self.external_figures]


def _period_label(a: int, b: int) -> str:
    return f"{a}–{b}"


def _decades(start: int, end: int) -> tuple[tuple[int, int], tuple[int, int]]:
    if start <= 2001 and end >= 2020:
        return ((2001, 2010), (2011, 2020))
    mid = (start + end) // 2
    return ((start, mid), (mid + 1, end))


def open_period(paths: RunLayout, start: int, end: int, *,
                load_below_bytes: float = LOAD_BELOW_BYTES
                ) -> tuple[xr.Dataset, xr.Dataset | None]:
    """The flux store and the truth (if any) cut to ``start..end``, loaded into memory when
    the cut is smaller than ``load_below_bytes`` (so the many analyses of a small demo read the
    store once), lazy otherwise."""
    from abz_dask.aggregation.zonal import open_flux_store

    def cut(ds: xr.Dataset) -> xr.Dataset:
        ds = ds.sel(time=slice(str(start), f"{end}-12-31"))
        return ds.load() if ds.nbytes < load_below_bytes else ds

    ds = cut(open_flux_store(paths.fluxes))
    tpath = paths.existing(paths.truth)
    truth = cut(xr.open_zarr(url(tpath), consolidated=False)) if tpath is not None else None
    return ds, truth


def compute_analyses(paths: RunLayout, t1: Table1, *, fire_year: int | None = None,
                     figures: bool = True, store: xr.Dataset | None = None,
                     truth: xr.Dataset | None = None
                     ) -> tuple[dict[str, pd.DataFrame], dict[str, Figure], dict[str, float]]:
    """Run the analyses of :mod:`abz_dask.analyses.seasonal` and :mod:`abz_dask.analyses.fire` for
    a report.

    ``store`` / ``truth`` are the period cuts of :func:`open_period` (opened here if omitted).
    Returns the tables, the figures and the time (s) of each step.
    """
    from abz_dask.analyses import fire as fire_mod
    from abz_dask.analyses import seasonal as S
    from abz_dask.geo.grid import Grid
    from abz_dask.io.abcflux import read_abcflux

    start, end = t1.period
    label = _period_label(start, end)
    if store is None or truth is None:
        store, truth = open_period(paths, start, end)
    ds = store
    zones = xr.open_zarr(url(paths.zones), consolidated=False).load()
    grid = Grid.of_dataset(ds)
    fpath = paths.existing(paths.fire)
    fire = xr.open_zarr(url(fpath), consolidated=False) if fpath is not None else None
    if fire is not None and fire.nbytes < LOAD_BELOW_BYTES:
        fire = fire.load()
    tables: dict[str, pd.DataFrame] = {}
    figs: dict[str, Figure] = {}
    times: dict[str, float] = {}

    def step(name: str) -> None:
        times[name] = time.perf_counter()

    def done(name: str) -> None:
        times[name] = time.perf_counter() - times[name]

    step("series")
    # a fire store may hold emissions, burned fraction or both (build-cube's fire: section)
    emissions = fire if fire is not None and "fire_emissions" in fire else None
    fb = fire_budgets(emissions, zones, grid.cell_area) if emissions is not None else None
    series = S.annual_series(ds, start=start, end=end, fire_budgets=fb)
    tables["budget_series"] = series.to_dataframe().reset_index()
    tables["budget_trends"] = _with_stage_attenuation(
        budget_trends(domain_budgets(ds, monthly=True), fire=fb, start=start, end=end), paths)
    tables["region_biome"] = S.region_biome_budgets(ds, zones, start=start, end=end,
                                                    fire=emissions)
    tables["monthly_means"] = S.monthly_means(ds, zones, periods=_decades(start, end))
    amp, change = S.seasonal_amplitude(ds, start=start, end=end)
    tables["seasonal_amplitude"] = amp
    tables["seasonal_amplitude_change"] = change
    tables["source_area_share"] = S.source_area_share(ds, zones, start=start, end=end)
    tables["nee_vs_reco_minus_gpp"] = S.nee_vs_components(ds, zones, start=start, end=end)
    sites = paths.existing(paths.abcflux)
    obs = read_abcflux(sites, grid=grid, zones=zones) if sites is not None else None
    tables["latitude_correlation"] = S.latitude_correlation(ds, zones, start=start, end=end,
                                                            obs=obs)
    done("series")

    history = None
    if fire is not None and "burned_fraction" in fire:
        step("fire")
        fy = int(fire["year"].max()) if fire_year is None else fire_year
        fy = min(fy, end)
        history = fire_mod.burn_history(fire, fy).compute()
        history.attrs["year"] = fy
        cv_path = paths.existing(paths.cv_predictions)
        if cv_path is not None:
            cv = fire_mod.read_cv_predictions(cv_path, "NEE")
            bm = fire_mod.fit_postfire_bias(cv, months=fire_mod.CORRECTION_MONTHS)
            tables["postfire_bias_models"] = bm.table
            corr, _ = fire_mod.postfire_correction(ds, fire, zones, bm, fy)
            tables["postfire_correction"] = corr
        done("fire")

    aoa = None
    if paths.existing(paths.cube) is not None:
        from abz_dask.analyses.aoa import aoa_for_run

        step("aoa")
        aoa = aoa_for_run(paths.training, xr.open_zarr(url(paths.cube), consolidated=False), zones,
                          ds, grid.cell_area, years=(start, end))
        if aoa is not None:
            tables["aoa_shares"] = aoa.shares
            tables["aoa_budgets"] = aoa.budgets
        done("aoa")

    if figures:
        step("maps")
        means = {"upscaled": S.pixel_mean_annual(ds, "NEE", start=start, end=end).compute()}
        trends = {"upscaled": S.pixel_trends(ds, "NEE", start=start, end=end)[
            ["trend", "sig"]].compute()}
        if truth is not None:
            means["planted truth"] = S.pixel_mean_annual(truth, "NEE", start=start,
                                                         end=end).compute()
            trends["planted truth"] = S.pixel_trends(truth, "NEE", start=start, end=end)[
                ["trend", "sig"]].compute()
        figs["fig1a_mean_nee_map"] = F.fig_mean_nee(means, zones, label)
        figs["fig1b_nee_trend_map"] = F.fig_trend_map(trends, zones, label)
        tb_path = paths.existing(paths.truth_budgets)
        tb = pd.read_csv(url(tb_path)) if tb_path is not None else None
        figs["fig2ab_budget_series"] = F.fig_budget_series(series, tables["budget_trends"], tb)
        if history is not None:
            figs["fig2d_burned_pixels"] = F.fig_burned(
                history, zones, _period_label(int(fire["year"].min()),  # type: ignore[index]
                                              int(history.attrs.get("year", end))))
        figs["fig3_seasonal_cycles"] = F.fig_seasonal_cycles(tables["monthly_means"])
        figs["fig4_region_biome"] = F.fig_regional(
            tables["region_biome"][tables["region_biome"]["series"].isin(["NEE", "NEE+fire"])])
        figs["seasonal_amplitude"] = F.fig_seasonal_amplitude(amp, change)
        if aoa is not None:
            figs["aoa_map"] = F.fig_aoa(aoa.maps, zones, label)
        done("maps")
    return tables, figs, times


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def _img(data: bytes, caption: str) -> str:
    b64 = base64.b64encode(data).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{b64}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _table(df: pd.DataFrame, digits: int = 2) -> str:
    return df.to_html(index=False, border=0, classes="t", na_rep="–",
                      float_format=lambda v: f"{v:,.{digits}f}")


_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1250px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:2em}
table.t{border-collapse:collapse;font-size:12px;margin:.5em 0}
table.t td,table.t th{padding:2px 6px;border-bottom:1px solid #eee;text-align:right}
figure{margin:1em 0}img{max-width:100%}figcaption{font-size:12px;color:#555}
.note{font-size:12px;color:#555}"""


def render_html(run: Path, t1: Table1, tables: dict[str, pd.DataFrame],
                figures: dict[str, Figure], external: dict[str, Path],
                comparisons: dict[str, pd.DataFrame] | None = None) -> str:
    """The report as one HTML string (figures base64-embedded; ``comparisons``: the tables of
    the comparison stage, by caption)."""
    s, e = t1.period
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>abz_dask report "
             f"{html.escape(run.name)}</title><style>{_CSS}</style></head><body>",
             f"<h1>abz_dask run report: {html.escape(str(run))}</h1>",
             f"<p class='note'>abz_dask {__version__}, written "
             f"{_dt.datetime.now(_dt.UTC).isoformat(timespec='seconds')}; period {s}–{e}. "
             "Units: per-area fluxes g C m⁻² yr⁻¹, budgets Tg C yr⁻¹; NEE &lt; 0 is uptake.</p>",
             "<h2>Table 1</h2>", _table(wide_table(t1.estimate))]
    if t1.truth is not None:
        from abz_dask.analyses.table1 import side_by_side

        parts += ["<h3>Planted truth</h3>", _table(wide_table(t1.truth)),
                  "<h3>Estimate vs planted truth</h3>", _table(side_by_side(t1))]
    parts += ["<h3>Identity checks</h3>", _table(t1.checks, 4)]
    parts += [f"<p class='note'>{html.escape(k)}: {html.escape(v)}</p>"
              for k, v in t1.notes.items()]
    own = [("fig1a_mean_nee_map", "Fig. 1a — mean annual NEE (paper classes)"),
           ("fig1b_nee_trend_map", "Fig. 1b — annual NEE trends (dots: P < 0.05)"),
           ("fig2ab_budget_series", "Fig. 2a,b — annual budgets ± bootstrap SD with Theil–Sen "
                                    "trends"),
           ("fig2d_burned_pixels", "Fig. 2d — burned pixels"),
           ("fig3_seasonal_cycles", "Fig. 3 — mean monthly fluxes per biome, two decades"),
           ("fig4_region_biome", "Fig. 4 — budgets per key region × biome"),
           ("seasonal_amplitude", "Seasonal amplitude of monthly NEE budgets (DECISIONS 11)"),
           ("aoa_map", "Dissimilarity index and area of applicability of the NEE model "
                       "(Meyer & Pebesma 2021; mean of the 12 calendar-month DIs)")]
    parts.append("<h2>Maps, time series and seasonality</h2>")
    for key, cap in own:
        if key in figures:
            parts.append(_img(_png(figures[key]), cap))
    sections = [("budget_trends", "Budget trends (Theil–Sen, Mann–Kendall with Zhang "
                                  "prewhitening). attenuation ± attenuation_se (trends stage): "
                                  "the share of driver-borne change the held-out predictions "
                                  "reproduce, within about ±0.15 of the measured ratio for GPP "
                                  "and Reco on the twins, not informative for NEE; not applied "
                                  "to the trends"),
                ("region_biome", "Key region × biome budgets and trends"),
                ("seasonal_amplitude_change", "Seasonal amplitude change"),
                ("source_area_share", "Source-area share (mean annual NEE > 0)"),
                ("nee_vs_reco_minus_gpp", "Modelled NEE vs Reco − GPP"),
                ("latitude_correlation", "Correlation of mean annual NEE with latitude"),
                ("postfire_bias_models", "Post-fire bias models (bias ~ years since fire, "
                                         "random intercept and slope by site)"),
                ("postfire_correction", "Post-fire bias correction of May–July NEE"),
                ("aoa_shares", "Share of each domain's area outside the area of "
                               "applicability of the NEE model (cells; cell-months)"),
                ("aoa_budgets", "Budgets over the whole domain and over its applicable "
                                "area only (Tg C yr⁻¹)")]
    parts.append("<h2>Tables</h2>")
    for key, cap in sections:
        if key in tables:
            parts += [f"<h3>{html.escape(cap)}</h3>", _table(tables[key], 3)]
    if comparisons:
        parts.append("<h2>Comparisons with other products (compare stage)</h2>")
        for cap, df in comparisons.items():
            parts += [f"<h3>{html.escape(cap)}</h3>", _table(df, 3)]
    by_dir: dict[str, list[tuple[str, Path]]] = {}
    for name, p in external.items():
        by_dir.setdefault(p.parent.name, []).append((name, p))
    for d, items in by_dir.items():
        parts.append(f"<h2>{html.escape(EXTERNAL_FIGURE_DIRS.get(d, d))}</h2>")
        parts += [_img(p.read_bytes(), f"{d}/{p.name}") for _, p in items]
    parts.append("</body></html>")
    return "\n".join(parts)


def _external_figures(layout: RunLayout) -> dict[str, Path]:
    out: dict[str, Path] = {}
    dirs = layout.figure_dirs()
    for d in EXTERNAL_FIGURE_DIRS:
        folder = dirs[d]
        if folder.is_dir():
            for p in sorted(folder.glob("*.png")):
                out[f"{d}/{p.stem}"] = p
    return out


def _with_stage_attenuation(table: pd.DataFrame, paths: RunLayout) -> pd.DataFrame:
    """The report's budget trends with the trends stage's attenuation estimate
    (:func:`abz_dask.analyses.budget_trends.with_attenuation`) where that stage wrote one."""
    from abz_dask.analyses.budget_trends import ATTENUATION_TREND_COLUMNS

    path = paths.existing(paths.budget_trends)
    if path is None:
        return table
    stage = pd.read_csv(url(path))
    if not set(ATTENUATION_TREND_COLUMNS) <= set(stage.columns):
        return table
    keys = ["season", "flux", "domain", "source"]
    att = stage[keys + list(ATTENUATION_TREND_COLUMNS)].drop_duplicates(keys)
    return table.merge(att, on=keys, how="left")


def build_report(layout: RunLayout, *, start: int = 2001, end: int = 2020,
                 fire_year: int | None = None, out: str | Path | None = None) -> Report:
    """Compute every analysis of a run folder and write ``report.html`` (+ tables).

    Parameters
    ----------
    layout : RunLayout
        The run's layout (``RunLayout.from_run(folder)`` for a finished run folder): the flux
        store, zones, truth, fire, ABCflux CSV and training diagnostics it names are read.
    start, end : int
        Period of Table 1 and the analyses (clipped to the store).
    fire_year : int, optional
        Year of the post-fire bias correction (default: the last fire year ≤ ``end``).
    out : path, optional
        The HTML file (default ``RUN/report.html``).

    Returns
    -------
    Report
        Path, Table 1, tables (also written to ``RUN/report/<name>.csv``), figures, timings.
        The comparison stage's figures and tables (``RUN/compare``) are embedded when that
        stage ran (the runner runs it before the report; the report never runs it).
    """
    if not layout.root.is_dir():
        raise FileNotFoundError(f"run folder {layout.root} does not exist")
    t0 = time.perf_counter()
    layout.table1_inputs().check()
    store, truth = open_period(layout, start, end)
    timings = {"load": time.perf_counter() - t0}
    t1 = read_table1(layout.table1_files())  # written by the table1 stage
    tables, figs, times = compute_analyses(layout, t1, fire_year=fire_year, store=store,
                                           truth=truth)
    timings.update(times)
    tdir = layout.report_tables
    tdir.mkdir(exist_ok=True)
    for name, df in tables.items():
        write_atomic(tdir / f"{name}.csv", df.to_csv(index=False))
    comparisons = {cap: pd.read_csv(url(p)) for cap, p in (
        ("Comparison metrics (map correlations, budget ratios)", layout.comparison_metrics),
        ("Paper-2 regional table (mean ± spatial SD per region × approach)",
         layout.regional_table)) if p.exists()}
    external = _external_figures(layout)
    t0 = time.perf_counter()
    text = render_html(layout.root, t1, tables, figs, external, comparisons)
    path = as_path(out) if out else layout.report_html
    write_atomic(path, text.encode("utf-8"))
    timings["html"] = time.perf_counter() - t0
    return Report(path, t1, tables, figs, external, timings)
