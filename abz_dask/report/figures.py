"""Figures of the report (matplotlib ``Figure`` objects, no pyplot state): Fig. 1a,b maps,
Fig. 2a,b budget series, Fig. 2d burned pixels, Fig. 3 seasonal cycles, Fig. 4 regional panels
and the seasonal amplitude."""

from __future__ import annotations

from typing import cast

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from abz_dask.report.maps import (
    NEE_BREAKS,
    NEE_LABELS,
    TREND_BREAKS,
    TREND_LABELS,
    class_map,
    extent_km,
    polar_axes,
)

__all__ = ["fig_aoa", "fig_budget_series", "fig_burned", "fig_mean_nee", "fig_regional",
           "fig_seasonal_amplitude", "fig_seasonal_cycles", "fig_trend_map"]

_COLOURS = {"NEE": "#2166ac", "NEE+fire": "#b2182b", "GPP": "#1b7837", "Reco": "#8c510a"}


def fig_mean_nee(maps: dict[str, xr.DataArray], zones: xr.Dataset, period: str) -> Figure:
    """Fig. 1a: mean annual NEE maps (one panel per source, e.g. upscaled and planted truth)."""
    fig = Figure(figsize=(4.6 * len(maps), 4.8))
    axes = fig.subplots(1, len(maps), squeeze=False)[0]
    for ax, (name, m) in zip(axes, maps.items(), strict=True):
        m = m.copy()
        m.attrs["units"] = "g C m⁻² yr⁻¹"
        class_map(fig, ax, m, NEE_BREAKS, NEE_LABELS, zones=zones,
                  title=f"mean annual NEE {period}: {name}")
    fig.tight_layout()
    return fig


def fig_trend_map(trends: dict[str, xr.Dataset], zones: xr.Dataset, period: str,
                  alpha: float = 0.05) -> Figure:
    """Fig. 1b: annual NEE trend maps; dots mark P < ``alpha`` (Mann–Kendall, Zhang)."""
    fig = Figure(figsize=(4.6 * len(trends), 4.8))
    axes = fig.subplots(1, len(trends), squeeze=False)[0]
    for ax, (name, t) in zip(axes, trends.items(), strict=True):
        f = t["trend"].copy()
        f.attrs["units"] = "g C m⁻² yr⁻²"
        class_map(fig, ax, f, TREND_BREAKS, TREND_LABELS, zones=zones,
                  stipple=t["sig"] < alpha, title=f"NEE trend {period}: {name}")
    fig.tight_layout()
    return fig


def fig_budget_series(series: xr.Dataset, trends: pd.DataFrame,
                      truth: pd.DataFrame | None = None,
                      domains: tuple[str, ...] = ("abz", "permafrost")) -> Figure:
    """Fig. 2a,b: annual NEE (and NEE + fire) budgets, bootstrap SD band, Theil–Sen slope."""
    fig = Figure(figsize=(6.0 * len(domains), 3.8))
    axes = fig.subplots(1, len(domains), squeeze=False)[0]
    t = trends[(trends["season"] == "annual") & (trends["source"] == "estimate")].replace(
        {"flux": {"NEE_fire": "NEE+fire"}}).set_index(["flux", "domain"])
    for ax, d in zip(axes, domains, strict=True):
        for s in [v for v in ("NEE", "NEE+fire") if v in series["series"].values]:
            b = series["budget"].sel(series=s, domain=d)
            sd = series["boot_sd"].sel(series=s, domain=d)
            yr = series["year"].values
            c = _COLOURS[s]
            lab = s
            if (s, d) in t.index:
                r = cast(pd.Series, t.loc[(s, d)])
                lab += f" ({r['trend_tg_c_per_yr']:+.1f} Tg C yr⁻², P = {r['sig']:.3f})"
            ax.plot(yr, b, color=c, lw=1.5, label=lab)
            ax.fill_between(yr, b - sd, b + sd, color=c, alpha=0.2, lw=0)
        if truth is not None:
            tt = truth[(truth["domain"] == d) & (truth["flux"] == "NEE")]
            tt = tt[tt["year"].isin(series["year"].values)]
            ax.plot(tt["year"], tt["budget_tg_c_yr"], "k--", lw=1, label="NEE planted truth")
        ax.axhline(0, color="0.6", lw=0.6)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{d}: annual budgets", fontsize=9)
        ax.set_ylabel("Tg C yr⁻¹")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def fig_seasonal_cycles(monthly: pd.DataFrame) -> Figure:
    """Fig. 3: mean monthly fluxes per biome for the two decades (bootstrap SD error bars)."""
    doms = list(dict.fromkeys(monthly["domain"]))
    fluxes = list(dict.fromkeys(monthly["flux"]))
    fig = Figure(figsize=(3.6 * len(fluxes), 3.0 * len(doms)))
    axes = fig.subplots(len(doms), len(fluxes), squeeze=False)
    for i, d in enumerate(doms):
        for j, f in enumerate(fluxes):
            ax = axes[i, j]
            for k, (p, g) in enumerate(monthly[(monthly["domain"] == d)
                                               & (monthly["flux"] == f)].groupby("period")):
                g = g.sort_values("month")
                ax.errorbar(g["month"] + (k - 0.5) * 0.15, g["mean_g_c_m2_month"],
                            yerr=g["boot_sd"], marker="o", ms=3, lw=1, capsize=2, label=p)
            ax.axhline(0, color="0.6", lw=0.6)
            ax.set_title(f"{d} {f}", fontsize=9)
            ax.set_xticks(range(1, 13), list("JFMAMJJASOND"), fontsize=7)
            if j == 0:
                ax.set_ylabel("g C m⁻² month⁻¹")
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def fig_regional(regional: pd.DataFrame) -> Figure:
    """Fig. 4: NEE and NEE + fire budgets per key region × biome, Theil–Sen slope annotated."""
    series = [s for s in ("NEE", "NEE+fire") if s in set(regional["series"])]
    fig = Figure(figsize=(9.0, 3.8))
    ax = fig.subplots()
    zones = list(dict.fromkeys(regional["zone_name"]))
    x = np.arange(len(zones))
    w = 0.8 / max(1, len(series))
    for k, s in enumerate(series):
        r = regional[regional["series"] == s].set_index("zone_name").reindex(zones)
        bars = ax.bar(x + (k - (len(series) - 1) / 2) * w, r["mean_tg_c_yr"], w,
                      color=_COLOURS[s], label=s)
        for b, slope, p in zip(bars, r["slope_per_yr"], r["p_value"], strict=True):
            if np.isfinite(slope):
                ax.annotate(f"{slope:+.1f}{'*' if p < 0.05 else ''}",
                            (b.get_x() + b.get_width() / 2, b.get_height()),
                            fontsize=6, ha="center",
                            va="bottom" if b.get_height() >= 0 else "top")
    ax.axhline(0, color="0.5", lw=0.6)
    ax.set_xticks(x, [z.replace("_", "\n") for z in zones], fontsize=7)
    ax.set_ylabel("Tg C yr⁻¹")
    ax.set_title("budgets per key region × biome (labels: trend, Tg C yr⁻²; * P < 0.05)",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def fig_seasonal_amplitude(per_year: pd.DataFrame, change: pd.DataFrame) -> Figure:
    """Seasonal amplitude (max − min monthly NEE budget) per year and domain (DECISIONS 11)."""
    fig = Figure(figsize=(6.5, 3.6))
    ax = fig.subplots()
    ch = change.set_index("domain")
    for d, g in per_year.groupby("domain", sort=False):
        c = float(ch.loc[d, "change"]) if d in ch.index else np.nan  # type: ignore[index, arg-type]
        ax.plot(g["year"], g["amplitude_tg_c_month"], marker="o", ms=3,
                label=f"{d} (change {100 * c:+.0f} %)" if np.isfinite(c) else str(d))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("Tg C month⁻¹")
    ax.set_title("seasonal amplitude of monthly NEE budgets", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def fig_burned(history: xr.Dataset, zones: xr.Dataset, period: str) -> Figure:
    """Fig. 2d: pixels burned in the fire record (colour = year of the last burn)."""
    fig = Figure(figsize=(5.2, 4.8))
    ax = fig.subplots()
    last = history["last_burn"].transpose("y", "x")
    x, y = last["x"].values / 1e3, last["y"].values / 1e3
    mesh = ax.imshow(np.ma.masked_invalid(np.asarray(last.values, float)), cmap="YlOrRd",
                     extent=extent_km(x, y), origin="upper" if y[0] > y[-1] else "lower",
                     interpolation="nearest")
    fig.colorbar(mesh, ax=ax, shrink=0.75, label="year of last burn")
    polar_axes(ax, zones)
    ax.set_title(f"burned pixels {period}", fontsize=9)
    fig.tight_layout()
    return fig


def fig_aoa(aoa: xr.Dataset, zones: xr.Dataset, period: str) -> Figure:
    """Dissimilarity index (mean of the monthly DIs) and area of applicability of a flux model
    (:func:`abz_dask.analyses.aoa.di_map`); the colour bar marks the AOA threshold."""
    thr = float(aoa.attrs["threshold"])
    fig = Figure(figsize=(9.6, 4.8))
    ax_di, ax_aoa = fig.subplots(1, 2)
    di = aoa["di"].transpose("y", "x")
    x, y = di["x"].values / 1e3, di["y"].values / 1e3
    kw = {"extent": extent_km(x, y), "origin": "upper" if y[0] > y[-1] else "lower",
          "interpolation": "nearest"}
    mesh = ax_di.imshow(np.ma.masked_invalid(np.asarray(di.values, float)), cmap="magma_r",
                        vmin=0.0, vmax=2.0 * thr, **kw)
    cb = fig.colorbar(mesh, ax=ax_di, shrink=0.75, label="DI", extend="max")
    cb.ax.axhline(thr, color="c", lw=2)
    polar_axes(ax_di, zones)
    ax_di.set_title(f"{aoa.attrs.get('flux', '')} dissimilarity index {period} "
                    f"(threshold {thr:.3f})", fontsize=9)
    from matplotlib.colors import ListedColormap

    ax_aoa.imshow(np.ma.masked_invalid(np.asarray(aoa["aoa"].transpose("y", "x").values,
                                                  float)),
                  cmap=ListedColormap(["#d6604d", "#92c5de"]), vmin=0, vmax=1, **kw)
    polar_axes(ax_aoa, zones)
    from matplotlib.patches import Patch

    ax_aoa.legend(handles=[Patch(facecolor="#92c5de", label="inside AOA"),
                           Patch(facecolor="#d6604d", label="outside AOA")],
                  loc="lower left", fontsize=7)
    ax_aoa.set_title("AOA: mean monthly DI ≤ threshold", fontsize=9)
    fig.tight_layout()
    return fig
