"""Table 1 of the seed paper (seed-spec §5, §6.1) from a run folder, with identity checks.

For each domain (ABZ, tundra, boreal, permafrost region) and flux (NEE, GPP, Reco):

* **in situ**: mean ± SD across sites of the site-mean annual flux, using complete site-years
  only (all 12 months of that flux present; seed-spec §4.14), read with
  :func:`abz_dask.io.abcflux.read_abcflux`. Sites belong to tundra / boreal by their ``biome``
  column (zones where the file has none), to the permafrost region by the zone layer at their
  cell, and every site to the ABZ;
* **upscaled per-area mean** (g C m⁻² yr⁻¹): the area-weighted mean of pixel annual sums over
  the period, computed from the monthly maps; ± is the interannual SD of the annual per-area
  means (the paper does not say what its ± is, seed-spec §6.1);
* **budget** (Tg C yr⁻¹): the mean of the annual budgets of the central model, from the store's
  ``zone_sums``; ± is the SD (ddof 1) over the bootstrap replicates' period budgets;
* **ratio** (DECISIONS 9): |summer (JJA) NEE budget| / non-summer (Sep–May of the same calendar
  year) NEE budget, period means of the central model;
* **NEE + fire** (Tg C yr⁻¹): the mean over ``fire_start..end`` of annual NEE budget + annual fire
  budget of the domain (:func:`abz_dask.aggregation.zonal.fire_budgets`: fire.zarr
  ``fire_emissions``, g C m⁻² of cell area, × cell area over the domain's cells);
* **area** (10⁶ km²): Σ cell area × land fraction; **area with data**: its mean over the months
  of the part with a prediction. Domain cells whose predictors have no data get no prediction;
  they are excluded from the budgets and the per-area means (which divide by the area with
  data), and the excluded share is shown.

The same columns are computed from the planted truth (``twin/truth.zarr``) when present.

Identity checks (:func:`check_identities`, run by :func:`build_table1`): tundra + boreal = ABZ
(budgets, areas) when the biomes partition the ABZ, and per-area mean × area = budget (maps vs
tile zone sums).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import xarray as xr

from abz_dask.aggregation.budgets import DOMAINS
from abz_dask.aggregation.periods import complete_years
from abz_dask.aggregation.units import M2_PER_MKM2, TG_PER_G
from abz_dask.aggregation.zonal import (
    domain_budgets,
    domain_totals,
    fire_budgets,
    open_flux_store,
    pixel_area,
)
from abz_dask.geo.grid import Grid
from abz_dask.io.location import as_path, url, write_atomic

__all__ = [
    "FLUXES",
    "TABLE1_ROLES",
    "IdentityError",
    "Table1",
    "Table1Inputs",
    "build_table1",
    "check_identities",
    "domain_table",
    "in_situ_stats",
    "interval_note",
    "read_table1",
    "season_budgets",
    "table1_markdown",
    "write_table1",
]

FLUXES: tuple[str, ...] = ("NEE", "GPP", "Reco")
SUMMER = (6, 7, 8)
NON_SUMMER = (1, 2, 3, 4, 5, 9, 10, 11, 12)
DOMAIN_LABELS = {"abz": "ABZ", "tundra": "Tundra", "boreal": "Boreal",
                 "permafrost": "Permafrost region"}


class IdentityError(AssertionError):
    """A Table-1 identity (tundra + boreal = ABZ, per-area mean × area = budget) failed."""


@dataclass(frozen=True)
class Table1Inputs:
    """The stores and site file Table 1 reads (optional ones ``None`` when absent); a run's
    set is :meth:`abz_dask.pipeline.layout.RunLayout.table1_inputs`."""

    fluxes: Path
    zones: Path
    truth: Path | None = None
    fire: Path | None = None
    sites: Path | None = None
    card: Path | None = None  # the model card: names the bootstrap (interval) method

    def check(self) -> None:
        """Raise FileNotFoundError naming the flux store or zones when missing."""
        if not as_path(self.fluxes).exists():
            raise FileNotFoundError(f"{self.fluxes} not found: run the upscaling stage first")
        if not as_path(self.zones).exists():
            raise FileNotFoundError(f"zones {self.zones} not found")


@dataclass
class Table1:
    """Table 1 of a run: estimate, planted truth (if any), identity checks."""

    estimate: pd.DataFrame
    truth: pd.DataFrame | None
    checks: pd.DataFrame
    period: tuple[int, int]
    fire_period: tuple[int, int] | None
    notes: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# pieces


def in_situ_stats(obs: pd.DataFrame, *, site_domains: pd.DataFrame,
                  fluxes: Sequence[str] = FLUXES, years: tuple[int, int] | None = None
                  ) -> pd.DataFrame:
    """In-situ mean and SD across sites of site-mean annual fluxes (complete site-years only).

    Parameters
    ----------
    obs : DataFrame
        Site-months (:func:`abz_dask.io.abcflux.read_abcflux`): ``site_id, year, month`` and flux
        columns (g C m⁻² month⁻¹).
    site_domains : DataFrame
        Index ``site_id``, one boolean column per domain.
    fluxes : sequence of str
        Flux columns.
    years : (int, int), optional
        Keep site-years in this range.

    Returns
    -------
    DataFrame
        ``domain, flux, in_situ_mean, in_situ_sd, n_sites, n_site_years``.
    """
    rows = []
    df = obs if years is None else obs[(obs["year"] >= years[0]) & (obs["year"] <= years[1])]
    for f in fluxes:
        if f not in df:
            continue
        ok = df[["site_id", "year", "month", f]].dropna(subset=[f])
        g = ok.groupby(["site_id", "year"])
        months = g["month"].nunique()
        annual = g[f].sum()[months == 12]
        site_mean = annual.groupby(level="site_id").mean()
        n_sy = annual.groupby(level="site_id").size()
        for dom in site_domains.columns:
            member = site_domains[dom].reindex(site_mean.index).fillna(False).astype(bool)
            v = site_mean[member.to_numpy()]
            rows.append({"domain": dom, "flux": f, "in_situ_mean": float(v.mean()),
                         "in_situ_sd": float(v.std(ddof=1)) if len(v) > 1 else np.nan,
                         "n_sites": len(v),
                         "n_site_years": int(n_sy[member.to_numpy()].sum())})
    return pd.DataFrame(rows)


def site_domain_table(obs: pd.DataFrame, grid: Grid, zones: xr.Dataset,
                      domains: Sequence[str] = tuple(DOMAINS)) -> pd.DataFrame:
    """Domain membership of every site: ABZ = all, biomes from the site's ``biome`` column
    (zones at the site cell when missing), permafrost (and any other domain) from zones."""
    sites = obs.groupby("site_id").agg(latitude=("latitude", "mean"),
                                       longitude=("longitude", "mean"),
                                       biome=("biome", "first"))
    x, y = grid.project(sites["longitude"].to_numpy(), sites["latitude"].to_numpy())
    row, col = grid.index_of(x, y)
    inside = (row >= 0) & (col >= 0)
    zb = np.asarray(zones["biome"].values)[np.where(inside, row, 0), np.where(inside, col, 0)]
    zb = np.where(inside, zb, 0)
    text = sites["biome"].astype("string").str.lower().fillna("")
    biome = np.where(text == "tundra", 1, np.where(text == "boreal", 2, zb))
    out = pd.DataFrame(index=sites.index)
    for d in domains:
        if d == "abz":
            out[d] = True
        elif d == "tundra":
            out[d] = biome == 1
        elif d == "boreal":
            out[d] = biome == 2
        else:
            m = np.asarray(zones.eval(DOMAINS.get(d, d)).fillna(False).values, bool)
            out[d] = np.where(inside, m[np.where(inside, row, 0), np.where(inside, col, 0)],
                              False)
    return out


def season_budgets(monthly: xr.DataArray) -> xr.Dataset:
    """Summer (JJA) and non-summer (Sep–May, same calendar year) budgets per year.

    Parameters
    ----------
    monthly : xarray.DataArray
        Monthly budgets with a ``time`` dimension (Tg C month⁻¹); years without all 12 months
        are dropped.

    Returns
    -------
    xarray.Dataset
        ``summer`` and ``non_summer`` (Tg C per season) with dimension ``year``.
    """
    month = monthly["time"].dt.month
    full = complete_years(monthly["time"])
    summer = monthly.where(month.isin(SUMMER), 0.0).groupby("time.year").sum()
    non = monthly.where(month.isin(NON_SUMMER), 0.0).groupby("time.year").sum()
    return xr.Dataset({"summer": summer, "non_summer": non}).sel(year=full)


def _areas(zones: xr.Dataset, area: xr.DataArray, domains: dict[str, str]) -> pd.Series:
    a = cast(xr.DataArray, domain_totals(xr.ones_like(area), zones, area, domains).compute())
    return pd.Series(a.values / M2_PER_MKM2, index=list(domains), name="area_mkm2")


def domain_table(monthly: xr.Dataset, zones: xr.Dataset, cell_area: float, *,
                 start: int, end: int, replicates: xr.DataArray | None = None,
                 central_budgets: xr.DataArray | None = None,
                 fire_budgets: xr.DataArray | None = None, fire_start: int = 2002,
                 domains: dict[str, str] | None = None,
                 fluxes: Sequence[str] = FLUXES) -> pd.DataFrame:
    """Upscaled (or truth) columns of Table 1 in long form, from monthly maps.

    Parameters
    ----------
    monthly : xarray.Dataset
        ``NEE, GPP, Reco (time, y, x)`` in g C m⁻² month⁻¹.
    zones : xarray.Dataset
        Zone layers.
    cell_area : float
        Cell area (m²).
    start, end : int
        Period (years).
    replicates : xarray.DataArray, optional
        Annual budgets of every model ``(flux, model, year, domain)`` (Tg C yr⁻¹; model 0
        central), from :func:`abz_dask.aggregation.zonal.domain_budgets`; gives the bootstrap SD.
    central_budgets : xarray.DataArray, optional
        Monthly central budgets ``(flux, time, domain)`` (Tg C month⁻¹) to take the budgets
        from (the store's zone sums); default: computed from ``monthly``.
    fire_budgets : xarray.DataArray, optional
        ``(year, domain)`` fire emissions (Tg C yr⁻¹).
    fire_start : int
        First year of NEE + fire.
    domains : dict, optional
        Default :data:`abz_dask.aggregation.budgets.DOMAINS`.
    fluxes : sequence of str
        Fluxes.

    Returns
    -------
    DataFrame
        One row per domain × flux: ``domain, flux, per_area_mean, per_area_sd, budget,
        budget_boot_sd, per_area_from_maps_budget, area_mkm2, area_predicted_mkm2 (mean area
        with a prediction: cells whose predictors have no data are excluded from the budget and
        the per-area mean), ratio_summer_nonsummer,
        summer_budget, non_summer_budget, nee_plus_fire, fire_budget, n_years``.
    """
    doms = dict(domains or DOMAINS)
    area = pixel_area(zones, cell_area)
    sel = monthly[list(fluxes)].sel(time=slice(str(start), f"{end}-12-31"))
    # one flox pass: the flux totals and the area with a prediction (cells whose predictors
    # have no data get none and are not in the totals: per-area means divide by this area)
    sel = sel.assign(_predicted=sel[fluxes[0]].notnull().astype(np.float64))
    map_tot = cast(xr.Dataset, (domain_totals(sel, zones, area, doms) * TG_PER_G).compute())
    years_full = season_budgets(map_tot[fluxes[0]])["year"].values
    covered = (map_tot["_predicted"] / TG_PER_G).sel(
        time=map_tot["time"].dt.year.isin(years_full)).mean("time") / M2_PER_MKM2
    map_tot = map_tot.drop_vars("_predicted")
    map_ann = map_tot.groupby("time.year").sum().sel(year=years_full)
    areas = _areas(zones, area, doms)
    if central_budgets is not None:
        cb = central_budgets.sel(time=slice(str(start), f"{end}-12-31")).compute()
        cen_monthly = xr.Dataset({f: cb.sel(flux=f, drop=True) for f in fluxes})
    else:
        cen_monthly = map_tot
    cen_ann = cen_monthly.groupby("time.year").sum().sel(year=years_full)
    seas = season_budgets(cen_monthly["NEE"]) if "NEE" in fluxes else None
    rep = None
    if replicates is not None:
        rep = replicates.sel(year=slice(start, end)).mean("year").compute()
    fb = None
    if fire_budgets is not None and "NEE" in fluxes:
        fb = fire_budgets.compute()
    rows = []
    for d in doms:
        a = float(areas[d])
        a_pred = float(covered.sel(domain=d))
        for f in fluxes:
            per_area_ann = (map_ann[f].sel(domain=d) / TG_PER_G / (a_pred * M2_PER_MKM2)
                            if a_pred > 0 else np.nan)
            budget = float(cen_ann[f].sel(domain=d).mean("year"))
            row = {"domain": d, "flux": f,
                   "per_area_mean": float(np.mean(per_area_ann)),
                   "per_area_sd": float(np.std(per_area_ann, ddof=1)),
                   "budget": budget,
                   "budget_boot_sd": np.nan,
                   "map_budget": float(map_ann[f].sel(domain=d).mean("year")),
                   "area_mkm2": a, "area_predicted_mkm2": a_pred,
                   "ratio_summer_nonsummer": np.nan,
                   "summer_budget": np.nan, "non_summer_budget": np.nan,
                   "nee_plus_fire": np.nan, "fire_budget": np.nan,
                   "n_years": len(years_full)}
            if rep is not None and rep.sizes["model"] > 2:
                row["budget_boot_sd"] = float(rep.sel(flux=f, domain=d)
                                              .isel(model=slice(1, None)).std(ddof=1))
            if f == "NEE" and seas is not None:
                s = float(seas["summer"].sel(domain=d).mean())
                n = float(seas["non_summer"].sel(domain=d).mean())
                row.update(summer_budget=s, non_summer_budget=n,
                           ratio_summer_nonsummer=abs(s) / n if n != 0 else np.nan)
            if f == "NEE" and fb is not None:
                yrs = [y for y in years_full if y >= fire_start and y in fb["year"].values]
                if yrs:
                    nee = cen_ann["NEE"].sel(domain=d, year=yrs)
                    fire = fb.sel(domain=d, year=yrs)
                    row["nee_plus_fire"] = float((nee + fire).mean())
                    row["fire_budget"] = float(fire.mean())
            rows.append(row)
    return pd.DataFrame(rows)


def check_identities(tab: pd.DataFrame, *, rtol: float = 1e-3, atol: float = 0.5
                     ) -> pd.DataFrame:
    """Table-1 identities with their residuals.

    Checks, per flux: ``tundra + boreal = abz`` for the budget and the area (skipped when the
    domains are absent); per domain and flux: ``per_area_mean × area = budget`` (per-area mean
    from the maps, budget from the zone sums). A check passes when
    ``|lhs − rhs| ≤ atol + rtol·|rhs|`` (atol in Tg C yr⁻¹ or 10⁶ km²).

    Returns
    -------
    DataFrame
        ``check, domain, flux, lhs, rhs, residual, passed``.
    """
    rows = []

    def add(check: str, dom: str, flux: str, lhs: float, rhs: float, tol_abs: float) -> None:
        rows.append({"check": check, "domain": dom, "flux": flux, "lhs": lhs, "rhs": rhs,
                     "residual": lhs - rhs,
                     "passed": bool(abs(lhs - rhs) <= tol_abs + rtol * abs(rhs))})

    t = tab.set_index(["domain", "flux"])
    doms = set(tab["domain"])
    for k, f in enumerate(tab["flux"].unique()):
        if {"abz", "tundra", "boreal"} <= doms:
            add("tundra + boreal = abz (budget)", "abz", f,
                t.loc[("tundra", f), "budget"] + t.loc[("boreal", f), "budget"],
                t.loc[("abz", f), "budget"], atol)
            if k == 0:
                add("tundra + boreal = abz (area)", "abz", "-",
                    t.loc[("tundra", f), "area_mkm2"] + t.loc[("boreal", f), "area_mkm2"],
                    t.loc[("abz", f), "area_mkm2"], 1e-9)
        for d in tab["domain"].unique():
            r = t.loc[(d, f)]
            add("per-area mean x area = budget", d, f,
                r["per_area_mean"] * r.get("area_predicted_mkm2", r["area_mkm2"]),
                r["budget"], atol)
    return pd.DataFrame(rows)


def _biomes_partition(zones: xr.Dataset) -> bool:
    b = np.asarray(zones["biome"].values)
    a = np.asarray(zones["abz"].values, bool)
    return bool(np.array_equal(a, np.isin(b, (1, 2))))


# --------------------------------------------------------------------------------------------
# the table


def build_table1(run: Table1Inputs, *, start: int = 2001, end: int = 2020,
                 fire_start: int | None = None, strict: bool = True,
                 store: xr.Dataset | None = None, truth_store: xr.Dataset | None = None
                 ) -> Table1:
    """Compute Table 1 (estimate and planted truth) of a run folder.

    Parameters
    ----------
    run : Table1Inputs
        Flux store and zones, optionally the planted truth, the fire store and the ABCflux
        CSV.
    start, end : int
        Period; clipped to the complete years of the store.
    fire_start : int, optional
        First year of the NEE + fire column (default: the fire record's first year).
    strict : bool
        Raise :class:`IdentityError` when an identity check fails.
    store, truth_store : xarray.Dataset, optional
        The opened (possibly loaded) flux store and truth, instead of opening them from the
        run folder (the report loads small stores once for all its analyses).

    Returns
    -------
    Table1
    """
    from abz_dask.io.abcflux import read_abcflux

    paths = run
    paths.check()
    ds = store if store is not None else open_flux_store(paths.fluxes)
    zones = xr.open_zarr(url(paths.zones), consolidated=False).load()
    grid = Grid.of_dataset(ds)
    years = np.unique(ds["time"].dt.year.values)
    start, end = max(start, int(years.min())), min(end, int(years.max()))
    if start > end:
        raise ValueError(f"flux store {paths.fluxes} has no year in {start}..{end}")
    fluxes = tuple(f for f in FLUXES if f in ds)
    fire_b = None
    if paths.fire is not None:
        fire = xr.open_zarr(url(paths.fire), consolidated=False)
        if fire.nbytes < 1e9:  # annual rasters: small next to the monthly maps
            fire = fire.load()
        if "fire_emissions" in fire:  # a store of burned fraction only has no NEE + fire
            fire_b = fire_budgets(fire, zones, grid.cell_area)
    fire_start = (fire_start if fire_start is not None else
                  int(fire_b["year"].min()) if fire_b is not None else end + 1)
    reps = central = None
    if "zone_sums" in ds:
        central = domain_budgets(ds, monthly=True).sel(model=0, drop=True)
        reps = domain_budgets(ds)
    est = domain_table(ds, zones, grid.cell_area, start=start, end=end, replicates=reps,
                       central_budgets=central, fire_budgets=fire_b, fire_start=fire_start,
                       fluxes=fluxes)
    notes: dict[str, str] = {}
    if paths.card is not None:
        notes["interval"] = interval_note(json.loads(as_path(paths.card).read_text()))
        est = _with_cv_error(est, as_path(paths.card).parent, zones, grid.cell_area)
    if paths.sites is not None:
        obs = read_abcflux(paths.sites, grid=grid, zones=zones)
        sd = site_domain_table(obs, grid, zones)
        ins = in_situ_stats(obs, site_domains=sd, fluxes=fluxes)
        est = est.merge(ins, on=["domain", "flux"], how="left")
        notes["in_situ"] = (f"{paths.sites.name}: complete site-years of the whole record "
                            f"({int(obs['site_id'].nunique())} sites)")
    truth = None
    if truth_store is not None or paths.truth is not None:
        tds = (truth_store if truth_store is not None
               else xr.open_zarr(url(paths.truth), consolidated=False))
        truth = domain_table(tds, zones, grid.cell_area, start=start, end=end,
                             fire_budgets=fire_b, fire_start=fire_start, fluxes=fluxes)
        if "in_situ_mean" in est:
            truth = truth.merge(est[["domain", "flux", "in_situ_mean", "in_situ_sd",
                                     "n_sites", "n_site_years"]], on=["domain", "flux"])
    checks = check_identities(est)
    if not _biomes_partition(zones):
        checks = checks[~checks["check"].str.startswith("tundra + boreal")]
        notes["identity"] = "biome layer does not partition abz: tundra + boreal check skipped"
    if strict and not checks["passed"].all():
        bad = checks[~checks["passed"]]
        raise IdentityError(f"Table 1 identity check(s) failed:\n{bad.to_string()}")
    fp = None
    if fire_b is not None:
        fy = fire_b["year"].values
        lo, hi = max(fire_start, int(fy.min()), start), min(end, int(fy.max()))
        fp = (lo, hi) if lo <= hi else None
    return Table1(est, truth, checks, (start, end), fp, notes)


def _with_cv_error(est: pd.DataFrame, bundle: Path, zones: xr.Dataset, cell_area: float
                   ) -> pd.DataFrame:
    """``est`` with ``budget_cv_error`` and ``budget_interval_sd`` (√(bootstrap SD² + CV
    error²), :mod:`abz_dask.aggregation.intervals`) when the bundle holds blocked-CV
    predictions (profile ``interval: blocked_cv``); else ``est`` unchanged."""
    from abz_dask.aggregation.intervals import blocked_cv_error
    from abz_dask.training.bundle import read_cv_tables

    held = read_cv_tables(bundle / "blocked_cv.csv")
    if not held:
        return est
    cv = blocked_cv_error(held, zones, cell_area)[["domain", "flux", "cv_error_tg_c_yr"]]
    out = est.merge(cv.rename(columns={"cv_error_tg_c_yr": "budget_cv_error"}),
                    on=["domain", "flux"], how="left")
    out["budget_interval_sd"] = np.hypot(out["budget_boot_sd"], out["budget_cv_error"])
    return out


def _pm(v: float, sd: float, fmt: str = "{:,.0f}") -> str:
    if not np.isfinite(v):
        return "–"
    return fmt.format(v) + ("" if not np.isfinite(sd) else f" (±{fmt.format(sd)})")


def wide_table(tab: pd.DataFrame) -> pd.DataFrame:
    """The paper's layout: one row per domain, formatted strings."""
    rows = []
    for d in tab["domain"].unique():
        t = tab[tab["domain"] == d].set_index("flux")
        row: dict[str, str] = {"class": DOMAIN_LABELS.get(d, d)}
        for f in t.index:
            if "in_situ_mean" in t:
                row[f"in-situ {f}"] = _pm(t.loc[f, "in_situ_mean"], t.loc[f, "in_situ_sd"])
        for f in t.index:
            row[f"upscaled {f}"] = _pm(t.loc[f, "per_area_mean"], t.loc[f, "per_area_sd"])
        for f in t.index:
            row[f"budget {f} (Tg C/yr)"] = _pm(t.loc[f, "budget"], t.loc[f, (
                "budget_interval_sd" if "budget_interval_sd" in t else "budget_boot_sd")])
        if "NEE" in t.index:
            r = t.loc["NEE"]
            row["summer : non-summer"] = ("–" if not np.isfinite(r["ratio_summer_nonsummer"])
                                          else f"{r['ratio_summer_nonsummer']:.2f}")
            row["NEE+fire (Tg C/yr)"] = _pm(r["nee_plus_fire"], np.nan)
        row["area (10⁶ km²)"] = f"{t['area_mkm2'].iloc[0]:.2f}"
        if "area_predicted_mkm2" in t:
            a, p = t["area_mkm2"].iloc[0], t["area_predicted_mkm2"].iloc[0]
            row["area with data (10⁶ km²)"] = (f"{p:.2f}" if a - p <= 1e-9 * a else
                                               f"{p:.2f} ({100 * (a - p) / a:.1f} % excluded)")
        rows.append(row)
    return pd.DataFrame(rows)


def table1_markdown(t1: Table1) -> str:
    """Markdown of Table 1: estimate, truth, side-by-side budgets and the checks."""
    s, e = t1.period
    fire = f"{t1.fire_period[0]}–{t1.fire_period[1]}" if t1.fire_period else "n/a"
    out = [f"# Table 1 — budgets {s}–{e} (NEE + fire {fire})", "",
           "Per-area fluxes in g C m⁻² yr⁻¹ (in situ: mean ± SD across sites, complete "
           "site-years; upscaled: area-weighted mean ± interannual SD); budgets in Tg C yr⁻¹ "
           "± SD over the bootstrap budgets; ratio = |JJA NEE| / Sep–May NEE (DECISIONS 9).",
           "", "## Estimate (upscaled)", "", _md(wide_table(t1.estimate))]
    if t1.truth is not None:
        out += ["", "## Planted truth (twin)", "", _md(wide_table(t1.truth)), "",
                "## Estimate vs truth", "", _md(side_by_side(t1))]
    out += ["", "## Identity checks", "",
            _md(t1.checks.assign(lhs=t1.checks["lhs"].map("{:,.3f}".format),
                                 rhs=t1.checks["rhs"].map("{:,.3f}".format),
                                 residual=t1.checks["residual"].map("{:.2e}".format)))]
    for k, v in t1.notes.items():
        out += ["", f"*{k}*: {v}"]
    return "\n".join(out) + "\n"


def side_by_side(t1: Table1) -> pd.DataFrame:
    """Budgets, per-area means, ratio and NEE + fire: estimate next to truth, numeric."""
    if t1.truth is None:
        raise ValueError("no planted truth in this run")
    cols = ["per_area_mean", "budget", "budget_boot_sd", "ratio_summer_nonsummer",
            "nee_plus_fire", "area_mkm2"]
    m = t1.estimate[["domain", "flux", *cols]].merge(
        t1.truth[["domain", "flux", "per_area_mean", "budget", "ratio_summer_nonsummer",
                  "nee_plus_fire"]], on=["domain", "flux"], suffixes=("", "_truth"))
    out = m[["domain", "flux", "budget", "budget_boot_sd", "budget_truth", "per_area_mean",
             "per_area_mean_truth", "ratio_summer_nonsummer", "ratio_summer_nonsummer_truth",
             "nee_plus_fire", "nee_plus_fire_truth", "area_mkm2"]]
    return out.round(2)


def _md(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in df.itertuples(index=False):
        lines.append("| " + " | ".join("" if (isinstance(v, float) and not np.isfinite(v))
                                       else (f"{v:,.2f}" if isinstance(v, float) else str(v))
                                       for v in r) + " |")
    return "\n".join(lines)


def interval_note(card: Mapping[str, object]) -> str:
    """What the ± of the budgets is, from a model card (:mod:`abz_dask.training.bundle`): the
    bootstrap's replicates, its resampling unit and the training profile that chose it."""
    boot = card.get("bootstrap")
    prof = card.get("profile")
    if not isinstance(boot, Mapping) or not isinstance(prof, Mapping):
        return "budget ± = SD over the bootstrap budgets (the model card does not name the method)"
    unit = str(prof.get("bootstrap_unit", "row"))
    text = (f"budget ± = SD over the {boot.get('replicates')} bootstrap budgets; resampling: "
            f"{boot.get('resampling')} (training profile {prof.get('name')!s}, "
            f"bootstrap_unit: {unit})")
    cv = card.get("interval")
    if isinstance(cv, Mapping) and cv.get("method") == "blocked_cv":
        text = ("budget ± = √(bootstrap SD² + blocked-CV error²), half the 95 % interval over "
                "1.96 (interval: blocked_cv). Bootstrap: " + text[len("budget ± = "):]
                + f"; CV error: the domain's area × its sites' held-out annual residual over "
                f"{cv.get('folds')} (abz_dask.aggregation.intervals)")
    if unit == "row":
        text += (". Row resampling is the paper's; on the twin it covers the truth in 8 of 20 "
                 "site networks (95 % nominal), the site-block bootstrap in 17 of 20 "
                 "(benchmarks/RESULTS_bootstrap_unit.md): read it as a lower bound")
    return text


#: Roles of Table 1's files (:func:`write_table1`, :func:`read_table1`).
TABLE1_ROLES = ("estimate", "truth", "checks", "markdown", "meta")


def write_table1(run: Table1Inputs, files: Mapping[str, Path], **kw: object) -> Table1:
    """Build Table 1 and write its files by role (:data:`TABLE1_ROLES`; the run layout's
    ``table1_files()``): the estimate, the truth (if a truth exists), the identity checks,
    the Markdown table and ``meta`` (period, fire period, notes: JSON)."""
    missing = sorted(set(TABLE1_ROLES) - set(files))
    if missing:
        raise ValueError(f"write_table1: no path for {missing}")
    t1 = build_table1(run, **kw)  # type: ignore[arg-type]
    as_path(files["estimate"]).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(files["estimate"], t1.estimate.to_csv(index=False))
    if t1.truth is not None:
        write_atomic(files["truth"], t1.truth.to_csv(index=False))
    write_atomic(files["checks"], t1.checks.to_csv(index=False))
    write_atomic(files["markdown"], table1_markdown(t1))
    meta = {"period": list(t1.period), "fire_period": list(t1.fire_period) if t1.fire_period
            else None, "notes": t1.notes}
    write_atomic(files["meta"], json.dumps(meta, indent=1))
    return t1


def read_table1(files: Mapping[str, Path]) -> Table1:
    """Table 1 as :func:`write_table1` wrote it (the report reads it)."""
    for role in ("estimate", "checks", "meta"):
        if not as_path(files[role]).exists():
            raise FileNotFoundError(f"Table 1 {role} {files[role]} not found: run the table1 "
                                    "stage first")
    meta = json.loads(as_path(files["meta"]).read_text())
    truth = as_path(files["truth"])
    fp = meta["fire_period"]
    return Table1(pd.read_csv(url(files["estimate"])),
                  pd.read_csv(url(truth)) if truth.exists() else None,
                  pd.read_csv(url(files["checks"])),
                  (int(meta["period"][0]), int(meta["period"][1])),
                  (int(fp[0]), int(fp[1])) if fp else None, dict(meta["notes"]))

