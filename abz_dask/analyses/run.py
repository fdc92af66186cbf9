"""The trend stage of a run folder: maps (Zarr) and tables (CSV), resumable (``abz-dask trends``).

Inputs: the flux store (``fluxes.zarr``), the zone layers, optionally the predictor cube (greening
and predictor trends), the fire store (NEE + fire) and the planted truth (comparison). Outputs in
``out`` (default ``RUN_DIR/trends``):

- ``trend_maps.zarr``: per-pixel zyp fields (:data:`~abz_dask.analyses.maps.MAP_FIELDS`) of the
  annual NEE, GPP, Reco, NEE + fire, the JJA / spring / autumn NEE, the JJA NDVI and the annual
  means of the chosen predictors, plus ``overlay`` (DECISIONS 12 codes);
- ``truth_trend_maps.zarr``: the same for the planted truth (twin runs only);
- ``trend_shares.csv``: area shares of significant negative / positive trends per domain;
- ``overlay_shares.csv``, ``greening.csv``, ``budget_trends.csv`` (annual, JJA, spring, autumn
  budgets and NEE + fire, with the bootstrap SD of the slopes);
- ``truth_comparison.csv``: estimated vs truth shares, map agreement and budget trends;
- ``trends.json``: the settings; a rerun with the same settings skips finished outputs, other
  settings are refused unless ``overwrite=True``.

Every output is written to a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from abz_dask.aggregation.budgets import DOMAINS, domain_weights
from abz_dask.aggregation.zonal import domain_budgets, fire_budgets, open_flux_store
from abz_dask.analyses.budget_trends import budget_trends, monthly_domain_budgets
from abz_dask.analyses.compare import map_agreement
from abz_dask.analyses.maps import finish_atomic, pixel_trends, write_zarr_atomic
from abz_dask.analyses.overlay import overlay_categories, overlay_shares
from abz_dask.analyses.series import nee_plus_fire, season_months, seasonal_series
from abz_dask.analyses.shares import greening_overlap, shares_table, trend_area_shares
from abz_dask.analyses.trends import METHODS, Method
from abz_dask.geo.grid import Grid
from abz_dask.io.location import Location, as_path, remove, url, write_atomic
from abz_dask.progress import compute_with_progress

__all__ = ["TrendConfig", "TrendInputs", "TrendResult", "flux_series", "predictor_series",
           "prepare_output", "run_trends"]

FLUXES = ("NEE", "GPP", "Reco")
_TABLE_CHUNKS = {"y": 2048, "x": 2048}
NEE_SEASONS = ("JJA", "spring", "autumn")


@dataclass(frozen=True)
class TrendConfig:
    """Settings of the trend stage.

    Parameters
    ----------
    start, end : int
        First and last year (paper: 2001–2020; NEE + fire starts with the fire record, 2002).
    method : {"zhang", "yuepilon", "none"}
        Prewhitening (DECISIONS 13: zhang).
    preserve_range : bool
        zyp's ``preserve.range.for.sig.test`` (paper: True).
    alpha : float
        Significance level.
    predictors : tuple of str
        Cube variables whose annual-mean trends are mapped (``<name>_annual``), or
        ``"<name>:<season>"`` for the mean over a season of
        :data:`~abz_dask.analyses.series.SEASONS` (``"snow_cover:spring"`` ->
        ``snow_cover_spring``); the JJA NDVI (``ndvi_JJA``) is always mapped when the cube is
        given.
    """

    start: int = 2001
    end: int = 2020
    method: Method = "zhang"
    preserve_range: bool = True
    alpha: float = 0.05
    predictors: tuple[str, ...] = ("tair", "snow_cover", "soil_moisture", "ndvi")

    def __post_init__(self) -> None:
        for item in self.predictors:
            _, _, season = item.partition(":")
            if season:
                season_months(season)  # raises on an unknown season
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.end - self.start < 3:
            raise ValueError(f"trend period {self.start}..{self.end} is shorter than 4 years")


@dataclass(frozen=True)
class TrendInputs:
    """Stores read by the trend stage (``None`` = not available, analyses skipped); a run's
    set is :meth:`abz_dask.pipeline.layout.RunLayout.trend_inputs`."""

    fluxes: Path
    zones: Path
    cube: Path | None = None
    fire: Path | None = None
    truth: Path | None = None


@dataclass
class TrendResult:
    """Paths of the outputs and the tables (as DataFrames)."""

    out: Path
    maps: Path
    truth_maps: Path | None
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)


def flux_series(fluxes: xr.Dataset, cfg: TrendConfig, *, fire: xr.Dataset | None = None,
                land_fraction: xr.DataArray | None = None) -> dict[str, xr.DataArray]:
    """Annual NEE/GPP/Reco, JJA/spring/autumn NEE and (with ``fire``) NEE + fire (lazy)."""
    out: dict[str, xr.DataArray] = {}
    for f in FLUXES:
        if f not in fluxes:
            have = sorted(map(str, fluxes.data_vars))
            raise KeyError(f"flux dataset has no variable {f!r} (has {have})")
        out[f] = seasonal_series(fluxes[f], "annual", start=cfg.start, end=cfg.end)
    for s in NEE_SEASONS:
        out[f"NEE_{s}"] = seasonal_series(fluxes["NEE"], s, start=cfg.start, end=cfg.end)
    if fire is not None and land_fraction is not None:
        fe = fire["fire_emissions"].sel(year=slice(cfg.start, cfg.end))
        out["NEE_fire"] = nee_plus_fire(out["NEE"], fe, land_fraction)
    return out


def predictor_series(cube: xr.Dataset, cfg: TrendConfig) -> dict[str, xr.DataArray]:
    """JJA-mean NDVI and the annual means of ``cfg.predictors`` (lazy)."""
    out: dict[str, xr.DataArray] = {}
    if "ndvi" in cube:
        out["ndvi_JJA"] = seasonal_series(cube["ndvi"], "JJA", start=cfg.start, end=cfg.end,
                                          how="mean")
    for item in cfg.predictors:
        p, _, season = item.partition(":")
        season = season or "annual"
        if p not in cube:
            have = sorted(map(str, cube.data_vars))
            raise KeyError(f"predictor {p!r} is not in the cube (has {have})")
        if "time" not in cube[p].dims:
            raise ValueError(f"predictor {p!r} has no time dimension (a static layer has no "
                             "trend)")
        out[f"{p}_{season}"] = seasonal_series(cube[p], season, start=cfg.start, end=cfg.end,
                                               how="mean")
    return out


def _open(path: Path) -> xr.Dataset:
    return xr.open_zarr(url(path), consolidated=False)


def _domains_of(ds: xr.Dataset) -> dict[str, str]:
    dom = ds.attrs.get("domains")
    if isinstance(dom, str):
        return dict(json.loads(dom))
    if isinstance(dom, dict):
        return dict(dom)
    return dict(DOMAINS)


def _on_chunks(series: dict[str, xr.DataArray], ref: xr.Dataset) -> dict[str, xr.DataArray]:
    """Put every series on the flux store's spatial chunks (cube / fire may be chunked otherwise).

    Only the reduced ``(year, y, x)`` series are rechunked, never the monthly inputs.
    """
    cy, cx = _spatial_chunks(ref)
    return {k: v.chunk({"year": -1, "y": cy, "x": cx}) for k, v in series.items()}


def _spatial_chunks(ref: xr.Dataset) -> tuple[int, int]:
    """Spatial chunk (tile) of the flux store's monthly maps."""
    var = ref[next(f for f in FLUXES if f in ref)]
    chunks = var.encoding.get("chunks") or (var.chunksizes["y"][0], var.chunksizes["x"][0])
    return int(chunks[-2]), int(chunks[-1])


def _mapped_series(maps: xr.Dataset) -> list[str]:
    """Names of the series in trend maps (``<name>_trend``) in a fixed order: the fluxes, the
    NEE seasons, NEE + fire and the JJA NDVI, then the rest sorted. Not the order of
    ``maps.data_vars``: a reopened Zarr store lists its arrays in file-system order, which
    differs between runs, and the tables' rows would follow it."""
    names = {str(v)[:-6] for v in maps.data_vars if str(v).endswith("_trend")}
    first = [*FLUXES, *(f"NEE_{s}" for s in NEE_SEASONS), "NEE_fire", "ndvi_JJA"]
    return [n for n in first if n in names] + sorted(names - set(first))


def _atomic_csv(df: pd.DataFrame, path: Path) -> None:
    write_atomic(path, df.to_csv(index=False))


def _maps_with_overlay(series: dict[str, xr.DataArray], cfg: TrendConfig) -> xr.Dataset:
    maps = pixel_trends(series, method=cfg.method, preserve_range=cfg.preserve_range,
                        alpha=cfg.alpha)
    if all(f"{f}_trend" in maps for f in FLUXES):
        maps["overlay"] = overlay_categories(maps["NEE_trend"], maps["NEE_sig"],
                                             maps["GPP_trend"], maps["Reco_trend"], cfg.alpha)
    return maps


def _write_maps(maps: xr.Dataset, path: Path, label: str, progress: bool,
                attrs: dict[str, Any]) -> None:
    maps = maps.assign_attrs({**maps.attrs, **attrs})
    delayed = write_zarr_atomic(maps, path, compute=False)
    compute_with_progress([delayed], label, enabled=progress)
    finish_atomic(path)


def prepare_output(inputs: TrendInputs, out: str | Path | Location, cfg: TrendConfig, *,
                   overwrite: bool = False) -> dict[str, Any]:
    """Create ``out`` and its ``trends.json``; refuse (or clear) outputs of other settings.

    Returns the manifest. Idempotent: callers may check before starting a cluster.

    Raises
    ------
    FileExistsError
        If ``out`` holds outputs made with other settings and ``overwrite`` is False.
    """
    out = as_path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "config": {**asdict(cfg), "predictors": list(cfg.predictors)},
        "inputs": {k: (str(v) if v is not None else None) for k, v in asdict(inputs).items()}}
    mpath = out / "trends.json"
    if mpath.exists() and json.loads(mpath.read_text()) != manifest:
        if not overwrite:
            raise FileExistsError(f"{out} holds trend outputs made with other settings "
                                  f"({mpath}); use another output folder or --overwrite")
        for p in out.iterdir():
            remove(p)
    write_atomic(mpath, json.dumps(manifest, indent=2))
    return manifest


def run_trends(inputs: TrendInputs, out: str | Path | Location, cfg: TrendConfig | None = None,
               *, overwrite: bool = False, progress: bool = True,
               echo: Callable[[str], None] | None = None) -> TrendResult:
    """Run (or resume) the trend stage on the active Dask scheduler.

    Parameters
    ----------
    inputs : TrendInputs
        Stores to read (a run's: :meth:`abz_dask.pipeline.layout.RunLayout.trend_inputs`).
    out : path
        Output folder (created).
    cfg : TrendConfig, optional
        Settings (defaults: 2001–2020, zyp.zhang, preserve_range, α = 0.05).
    overwrite : bool
        Replace outputs made with other settings instead of refusing.
    progress : bool
        Show progress bars for the map computations.
    echo : callable, optional
        Receives one line per finished or skipped output.

    Returns
    -------
    TrendResult

    Raises
    ------
    FileExistsError
        If ``out`` holds outputs made with other settings and ``overwrite`` is False.
    """
    cfg = cfg or TrendConfig()
    say = echo or (lambda _msg: None)
    out = as_path(out)
    manifest = prepare_output(inputs, out, cfg, overwrite=overwrite)

    fx = open_flux_store(inputs.fluxes)
    grid = Grid.of_dataset(fx)
    zones = _open(inputs.zones)
    if (zones.sizes["y"], zones.sizes["x"]) != (fx.sizes["y"], fx.sizes["x"]):
        raise ValueError(f"zones {inputs.zones} ({zones.sizes['y']}x{zones.sizes['x']}) and "
                         f"fluxes {inputs.fluxes} ({fx.sizes['y']}x{fx.sizes['x']}) differ")
    # lazy, on the flux store's tiles: weight maps are never embedded in a task graph
    cy, cx = _spatial_chunks(fx)
    weights = domain_weights(zones, grid.cell_area, _domains_of(fx)).chunk(
        {"domain": -1, "y": cy, "x": cx})
    lf = zones["land_fraction"].chunk({"y": cy, "x": cx})
    fire = _open(inputs.fire) if inputs.fire is not None else None
    if fire is not None and "fire_emissions" not in fire:  # burned fraction only: no NEE + fire
        fire = None
    cube = _open(inputs.cube) if inputs.cube is not None else None
    truth = _open(inputs.truth) if inputs.truth is not None else None
    attrs = {"trend_config": json.dumps(manifest["config"], sort_keys=True)}

    maps_path = out / "trend_maps.zarr"
    if maps_path.exists():
        say(f"skip {maps_path} (exists)")
    else:
        series = flux_series(fx, cfg, fire=fire, land_fraction=lf)
        if cube is not None:
            series.update(predictor_series(cube, cfg))
        series = _on_chunks(series, fx)
        _write_maps(_maps_with_overlay(series, cfg), maps_path, "trend maps", progress,
                    {**attrs, "source": str(inputs.fluxes)})
        say(f"wrote {maps_path}")
    truth_path = out / "truth_trend_maps.zarr" if truth is not None else None
    if truth is not None and truth_path is not None:
        if truth_path.exists():
            say(f"skip {truth_path} (exists)")
        else:
            tseries = _on_chunks(flux_series(truth, cfg, fire=fire, land_fraction=lf), fx)
            _write_maps(_maps_with_overlay(tseries, cfg), truth_path, "truth trend maps",
                        progress, {**attrs, "source": str(inputs.truth)})
            say(f"wrote {truth_path}")

    result = TrendResult(out=out, maps=maps_path, truth_maps=truth_path)
    # tables: few large blocks (a 2-D map block of 2048² float32 is 16 MB) keep graphs small
    maps = xr.open_zarr(url(maps_path), consolidated=False, chunks=_TABLE_CHUNKS)
    tmaps = (xr.open_zarr(url(truth_path), consolidated=False, chunks=_TABLE_CHUNKS)
             if truth_path is not None else None)
    sources = {"estimate": maps, **({"truth": tmaps} if tmaps is not None else {})}
    weights = weights.chunk(_TABLE_CHUNKS)

    def table(name: str, make: Callable[[], pd.DataFrame]) -> None:
        path = out / f"{name}.csv"
        if path.exists():
            say(f"skip {path} (exists)")
            result.tables[name] = pd.read_csv(url(path))
            return
        df = make()
        _atomic_csv(df, path)
        result.tables[name] = df
        say(f"wrote {path}")

    def shares() -> pd.DataFrame:
        parts = []
        for src, m in sources.items():
            names = _mapped_series(m)
            df = shares_table(trend_area_shares(m, names, weights, cfg.alpha))
            parts.append(df.assign(source=src))
        return pd.concat(parts, ignore_index=True)

    def overlays() -> pd.DataFrame:
        return pd.concat([overlay_shares(m["overlay"], weights).assign(source=src)
                          for src, m in sources.items() if "overlay" in m], ignore_index=True)

    def greening() -> pd.DataFrame:
        parts = []
        for src, m in sources.items():
            full = m if "ndvi_JJA_trend" in m else xr.merge(
                [m, maps[["ndvi_JJA_trend", "ndvi_JJA_sig"]]], compat="override")
            parts.append(shares_table(greening_overlap(full, weights, alpha=cfg.alpha))
                         .assign(source=src))
        return pd.concat(parts, ignore_index=True)

    def budgets(src: str) -> pd.DataFrame:
        doms = _domains_of(fx)
        mon = domain_budgets(fx, monthly=True) if src == "estimate" else monthly_domain_budgets(
            truth.sel(time=slice(str(cfg.start), str(cfg.end))),  # type: ignore[union-attr]
            zones, grid.cell_area, domains=doms)
        fb = (fire_budgets(fire, zones, grid.cell_area, domains=doms) if fire is not None
              else None)
        return budget_trends(mon, fire=fb, start=cfg.start, end=cfg.end, method=cfg.method,
                             preserve_range=cfg.preserve_range, alpha=cfg.alpha, source=src)

    table("trend_shares", shares)
    if "overlay" in maps:
        table("overlay_shares", overlays)
    if "ndvi_JJA_trend" in maps:
        table("greening", greening)
    table("budget_trends", lambda: pd.concat([budgets(s) for s in sources], ignore_index=True))
    if tmaps is not None:
        table("truth_comparison", lambda: _comparison(maps, tmaps, weights, cfg,
                                                      result.tables["trend_shares"],
                                                      result.tables["budget_trends"]))
    return result


_BUDGET_KEY = {"NEE": ("annual", "NEE"), "GPP": ("annual", "GPP"), "Reco": ("annual", "Reco"),
               "NEE_JJA": ("JJA", "NEE"), "NEE_spring": ("spring", "NEE"),
               "NEE_autumn": ("autumn", "NEE"), "NEE_fire": ("annual", "NEE_fire")}


def _comparison(maps: xr.Dataset, tmaps: xr.Dataset, weights: xr.DataArray, cfg: TrendConfig,
                shares: pd.DataFrame, budgets: pd.DataFrame) -> pd.DataFrame:
    """Estimated vs truth: significant-trend shares, map agreement, budget trends."""
    names = [v for v in _BUDGET_KEY if f"{v}_trend" in maps and f"{v}_trend" in tmaps]
    agree = shares_table(map_agreement(maps, tmaps, names, weights, cfg.alpha))
    sh = shares.set_index(["source", "variable", "domain"])
    bt = budgets.set_index(["source", "season", "flux", "domain"])
    rows = []
    for _, a in agree.iterrows():
        v, d = a["variable"], a["domain"]
        season, flux = _BUDGET_KEY[v]
        row: dict[str, Any] = {"variable": v, "domain": d}
        for col in ("share_sig_negative", "share_sig_positive"):
            for src in ("estimate", "truth"):
                row[f"{src}_{col}"] = float(sh.loc[(src, v, d), col])
        row["class_agreement"] = float(a["class_agreement"])
        row["trend_corr"] = float(a["trend_corr"])
        for src in ("estimate", "truth"):
            key = (src, season, flux, d)
            row[f"{src}_budget_trend_tg_c_per_yr"] = (
                float(bt.loc[key, "trend_tg_c_per_yr"]) if key in bt.index else np.nan)
            row[f"{src}_budget_sig"] = float(bt.loc[key, "sig"]) if key in bt.index else np.nan
        rows.append(row)
    return pd.DataFrame(rows)
