"""Tests of the trend analyses (abz_dask.analyses) and `abz-dask trends` on planted answers."""

from __future__ import annotations

import json
from pathlib import Path

import dask.array as dsa
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import raise_if_dask_computes
from typer.testing import CliRunner

from abz_dask.aggregation.units import G_PER_TG, TG_PER_G
from abz_dask.aggregation.zonal import domain_budgets, fire_budgets
from abz_dask.analyses import (
    OVERLAY_LEGEND,
    TrendConfig,
    budget_trend_table,
    greening_overlap,
    map_agreement,
    monthly_domain_budgets,
    nee_plus_fire,
    overlay_categories,
    pixel_trends,
    predictor_series,
    seasonal_budgets,
    seasonal_series,
    shares_table,
    trend_area_shares,
)
from abz_dask.analyses.trends import trend
from abz_dask.geo.grid import Grid
from abz_dask.kernels import zyp

START, END = 2001, 2010
#: zyp fixture B (seed-spec §4.10.5): no trend, strongly alternating -> sig 0.694 whatever
#: is added to it as long as the added part is constant.
FLAT = np.array([5, -3, 4, -2, 6, -1, 3, -4, 5, -2, 4, -3, 6, -2, 3, -1, 5, -4, 4, -2], float)


def _monthly(ny: int, nx: int, years: range, fn, chunks: dict | None = None) -> xr.DataArray:
    time = pd.date_range(f"{years[0]}-01", f"{years[-1]}-12", freq="MS")
    yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    vals = np.stack([fn(t.year, t.month, yy, xx) for t in time]).astype(np.float64)
    da = xr.DataArray(vals, dims=("time", "y", "x"),
                      coords={"time": time, "y": np.arange(ny) * 1.0, "x": np.arange(nx) * 1.0},
                      name="NEE", attrs={"units": "g C m-2 month-1"})
    return da.chunk(chunks or {"time": 12, "y": 2, "x": 3})


# --------------------------------------------------------------------------- per-pixel series

def test_seasonal_series_sums_means_and_laziness() -> None:
    def fn(year, month, yy, xx):
        return 10.0 * yy + xx + 0.5 * (year - 2000) + month

    da = _monthly(4, 6, range(2000, 2005), fn)
    da = da.where(~((da.time.dt.year == 2003) & (da.time.dt.month == 7) & (da.x == 2)))
    with raise_if_dask_computes():
        ann = seasonal_series(da, "annual", start=2001)
        jja = seasonal_series(da, "JJA", how="mean")
        spring = seasonal_series(da, (5, 4), end=2003)
    assert ann.chunks[0] == (4,) and jja.chunks[0] == (5,)
    yy, xx = np.meshgrid(np.arange(4), np.arange(6), indexing="ij")
    years = np.arange(2001, 2005)
    want = np.stack([12 * (10 * yy + xx + 0.5 * (y - 2000)) + 78 for y in years])
    want[2][:, 2] = np.nan  # July 2003 missing at x = 2
    np.testing.assert_allclose(ann.values, want)
    np.testing.assert_array_equal(ann.year, years)
    assert ann.attrs["units"] == "g C m-2 yr-1"
    np.testing.assert_allclose(jja.sel(year=2001).values, 10 * yy + xx + 0.5 + 7)
    assert np.isnan(jja.sel(year=2003).values[:, 2]).all()
    np.testing.assert_array_equal(spring.year, [2000, 2001, 2002, 2003])
    np.testing.assert_allclose(spring.sel(year=2002).values, 2 * (10 * yy + xx + 1.0) + 9)


def test_seasonal_series_drops_incomplete_years_and_rejects_bad_input() -> None:
    da = _monthly(2, 3, range(2000, 2003), lambda y, m, yy, xx: 1.0 + 0 * yy).isel(
        time=slice(0, 30))  # 2002 has only 6 months
    ann = seasonal_series(da)
    np.testing.assert_array_equal(ann.year, [2000, 2001])
    np.testing.assert_allclose(ann.values, 12.0)
    with pytest.raises(ValueError, match="months must be distinct"):
        seasonal_series(da, (4, 4))
    with pytest.raises(ValueError, match="unknown season"):
        seasonal_series(da, "DJF")
    with pytest.raises(ValueError, match="no year"):
        seasonal_series(da, start=2005)


def test_predictor_series_any_predictor_and_season() -> None:
    def fn(year, month, yy, xx):
        return 0.3 * (year - 2001) * (1 + yy) + np.sin(month) + xx

    da = _monthly(4, 6, range(2001, 2011), fn)
    cube = xr.Dataset({"tair": da, "ndvi": da * 0.01, "soc": da.isel(time=0, drop=True)})
    cfg = TrendConfig(start=2001, end=2010, predictors=("tair", "tair:spring"))
    series = predictor_series(cube, cfg)
    assert set(series) == {"ndvi_JJA", "tair_annual", "tair_spring"}
    maps = pixel_trends(series, method="none").compute()
    slope = np.broadcast_to(0.3 * (1 + np.arange(4))[:, None], (4, 6))
    for v, k in (("tair_annual", 1.0), ("tair_spring", 1.0), ("ndvi_JJA", 0.01)):
        np.testing.assert_allclose(maps[f"{v}_trend"].values, k * slope, rtol=1e-6)
    np.testing.assert_allclose(series["tair_spring"].sel(year=2001).values,
                               (np.sin(4) + np.sin(5)) / 2 + np.arange(6)[None, :]
                               + 0 * np.arange(4)[:, None])
    with pytest.raises(ValueError, match="no time dimension"):
        predictor_series(cube, TrendConfig(predictors=("soc",)))
    with pytest.raises(KeyError, match="nope"):
        predictor_series(cube, TrendConfig(predictors=("nope",)))
    with pytest.raises(ValueError, match="unknown season"):
        TrendConfig(predictors=("tair:DJF",))


# --------------------------------------------------------------------------- maps and shares

def _planted_annual(seed: int = 3) -> tuple[xr.DataArray, np.ndarray]:
    """(year, y, x) series: columns 0-3 strong trends ±(1..4)/yr + small noise, 4-5 flat."""
    rng = np.random.default_rng(seed)
    ny, nx, n = 4, 6, 20
    slope = np.zeros((ny, nx))
    slope[:, :4] = np.array([-4.0, -2.0, 1.5, 3.0])[None, :] * (1 + 0.1 * np.arange(ny))[:, None]
    t = np.arange(1, n + 1)[:, None, None]
    vals = 100 + slope[None] * t + rng.normal(0, 0.3, (n, ny, nx))
    vals[:, :, 4:] = 50 + FLAT[:, None, None] + np.arange(ny)[None, :, None]
    da = xr.DataArray(vals, dims=("year", "y", "x"),
                      coords={"year": np.arange(2001, 2001 + n), "y": np.arange(ny) * 1.0,
                              "x": np.arange(nx) * 1.0})
    return da.chunk({"y": 2, "x": 3}), slope


def _weights(ny: int = 4, nx: int = 6) -> xr.DataArray:
    """Two domains: 'left' = x < 3 with area 1 + y (m²·1e6), 'all' = everything, area 2."""
    yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    left = np.where(xx < 3, (1.0 + yy) * 1e6, 0.0)
    full = np.full((ny, nx), 2e6)
    return xr.DataArray(np.stack([left, full]), dims=("domain", "y", "x"),
                        coords={"domain": ["left", "all"], "y": np.arange(ny) * 1.0,
                                "x": np.arange(nx) * 1.0})


def test_pixel_trends_recover_planted_slopes_and_equal_the_kernel() -> None:
    da, slope = _planted_annual()
    with raise_if_dask_computes():
        maps = pixel_trends({"NEE": da, "GPP": -da})
    got = maps.compute()
    assert got["NEE_trend"].dtype == np.float32
    np.testing.assert_allclose(got["NEE_trend"].values[:, :4], slope[:, :4], atol=0.05)
    np.testing.assert_allclose(got["GPP_trend"].values, -got["NEE_trend"].values)
    ref = zyp.zyp_trend(da.values, axis=0)
    for f in ("trend", "sig", "tau", "nruns", "autocor", "intercept"):
        np.testing.assert_allclose(got[f"NEE_{f}"].values, getattr(ref, f).astype(np.float32))
    assert (got["NEE_sig"].values[:, :4] < 1e-4).all()
    np.testing.assert_allclose(got["NEE_trend"].values[:, 4:], 0.0)
    np.testing.assert_allclose(got["NEE_sig"].values[:, 4:], 0.6937972, rtol=1e-6)
    assert got["NEE_trend"].attrs["n_years"] == 20 and got["NEE_trend"].attrs["first_year"] == 2001


def test_trend_area_shares_are_the_planted_areas() -> None:
    da, _ = _planted_annual()
    maps = pixel_trends({"NEE": da})
    w = _weights()
    with raise_if_dask_computes():
        lazy = trend_area_shares(maps, ["NEE"], w)
    tab = shares_table(lazy).set_index("domain")
    # left: columns 0, 1 negative (all significant), column 2 positive; area weights 1 + y
    np.testing.assert_allclose(tab.loc["left", "share_sig_negative"], 2 / 3)
    np.testing.assert_allclose(tab.loc["left", "share_sig_positive"], 1 / 3)
    np.testing.assert_allclose(tab.loc["left", "area_km2"], 3 * (1 + 2 + 3 + 4))
    # all: 2 negative, 2 positive, 2 flat (not significant, slope exactly 0) columns
    np.testing.assert_allclose(tab.loc["all", "share_sig_negative"], 1 / 3)
    np.testing.assert_allclose(tab.loc["all", "share_sig_positive"], 1 / 3)
    np.testing.assert_allclose(tab.loc["all", "share_negative"], 1 / 3)
    # a missing pixel leaves the valid area
    maps2 = maps.copy()
    maps2["NEE_trend"] = maps["NEE_trend"].where(~((maps.x == 0) & (maps.y == 0)))
    tab2 = shares_table(trend_area_shares(maps2, ["NEE"], w)).set_index("domain")
    np.testing.assert_allclose(tab2.loc["left", "valid_km2"], 30 - 1)
    np.testing.assert_allclose(tab2.loc["left", "share_sig_negative"], (20 - 1) / 29)


def test_greening_overlap_on_hand_made_maps() -> None:
    da, _ = _planted_annual()
    maps = pixel_trends({"NEE": da, "NEE_JJA": -da})
    # greening = columns 0, 2, 4 (x even): significant positive NDVI trend there
    xs = np.arange(6)
    ndvi_trend = xr.DataArray(np.where(xs % 2 == 0, 0.01, -0.01)[None].repeat(4, 0),
                              dims=("y", "x"), coords={"y": maps.y, "x": maps.x})
    maps["ndvi_JJA_trend"] = ndvi_trend
    maps["ndvi_JJA_sig"] = xr.where(ndvi_trend.x == 4, 0.2, 0.01)  # x = 4: not significant
    g = shares_table(greening_overlap(maps, _weights())).set_index("domain")
    # all: greening at x = 0, 2; browning (significant negative) at x = 1, 3, 5
    np.testing.assert_allclose(g.loc["all", "greening_share"], 2 / 6)
    np.testing.assert_allclose(g.loc["all", "browning_share"], 3 / 6)
    # NEE trend at x = 0 negative, x = 2 positive -> half of the greening area has rising uptake
    np.testing.assert_allclose(g.loc["all", "greening_with_sig_uptake_increase_NEE"], 0.5)
    np.testing.assert_allclose(g.loc["all", "greening_with_sig_uptake_increase_NEE_JJA"], 0.5)
    np.testing.assert_allclose(g.loc["left", "greening_share"], 2 / 3)


# --------------------------------------------------------------------------- overlay

def test_overlay_categories_on_hand_made_pixels() -> None:
    # (NEE slope, NEE p, GPP slope, Reco slope) -> expected code
    cases = [
        ((-1.0, 0.01, 3.0, 2.0), 1), ((-1.0, 0.01, 1.0, -0.5), 2), ((-1.0, 0.01, 1.0, 0.0), 2),
        ((-1.0, 0.01, -1.0, -2.0), 3), ((-1.0, 0.01, 0.0, -1.0), 3),
        ((1.0, 0.01, 2.0, 3.0), 4), ((1.0, 0.01, -0.5, 1.0), 5), ((1.0, 0.01, 0.0, 1.0), 5),
        ((1.0, 0.01, -2.0, -1.0), 6), ((1.0, 0.01, -1.0, 0.0), 6),
        ((-1.0, 0.01, 2.0, 3.0), 7), ((-1.0, 0.01, -1.0, 1.0), 7), ((1.0, 0.01, 1.0, 1.0), 7),
        ((1.0, 0.01, 1.0, -1.0), 7), ((-1.0, 0.2, 3.0, 2.0), 0), ((0.0, 0.01, 1.0, 1.0), 0),
        ((np.nan, 0.01, 1.0, 1.0), -1), ((-1.0, 0.01, np.nan, 1.0), -1),
        ((-1.0, np.nan, 1.0, 0.0), -1),
    ]
    arr = np.array([c[0] for c in cases]).T
    dims = ("x",)
    e, p, g, r = (xr.DataArray(a, dims=dims).chunk(5) for a in arr)
    with raise_if_dask_computes():
        codes = overlay_categories(e, p, g, r)
    assert codes.dtype == np.int8
    np.testing.assert_array_equal(codes.values, [c[1] for c in cases])
    legend = json.loads(codes.attrs["legend"])
    assert set(legend) == {str(k) for k in OVERLAY_LEGEND} and len(OVERLAY_LEGEND) == 9
    assert codes.attrs["flag_values"] == list(range(-1, 8))
    assert len(codes.attrs["flag_meanings"].split()) == 9


# --------------------------------------------------------------------------- budget trends

def _sums(seed: int = 0) -> xr.DataArray:
    """Monthly domain sums (flux, model, time, domain), g C month-1, with a planted trend."""
    rng = np.random.default_rng(seed)
    time = pd.date_range("2001-01", "2012-12", freq="MS")
    n = len(time)
    yrs = (time.year - 2001).to_numpy()
    base = rng.normal(0, 2e12, (2, 1, n, 3)) + (np.array([5e12, -3e12, 0.0])[None, None, None]
                                                   * yrs[None, None, :, None] / 12)
    scale = np.array([1.0, 1.02, 0.97, 1.05])[None, :, None, None]
    return xr.DataArray(base * scale, dims=("flux", "model", "time", "domain"),
                        coords={"flux": ["NEE", "GPP"], "model": np.arange(4), "time": time,
                                "domain": ["a", "b", "c"]})


def test_budget_trend_equals_the_kernel_on_the_budget_series() -> None:
    sums = _sums()
    ann = seasonal_budgets(sums * TG_PER_G, "annual")
    # identical to the annual domain budgets of a store holding these sums
    store = xr.Dataset({"zone_sums": sums.expand_dims(tile_id=["t0"]).transpose(
        "tile_id", "flux", "model", "time", "domain")})
    xr.testing.assert_allclose(ann.drop_attrs(), domain_budgets(store).compute().drop_attrs()
                               .transpose(*ann.dims))
    tab = budget_trend_table(ann).set_index(["flux", "domain"])
    for f in ("NEE", "GPP"):
        for d in ("a", "b", "c"):
            series = ann.sel(flux=f, domain=d, model=0).values
            ref = zyp.zyp_trend(series)
            row = tab.loc[(f, d)]
            assert row["trend_tg_c_per_yr"] == pytest.approx(float(ref.trend), rel=1e-12)
            assert row["sig"] == pytest.approx(float(ref.sig), rel=1e-12)
            assert row["lbound"] == pytest.approx(float(ref.lbound), rel=1e-12)
            boot = [float(zyp.zyp_trend(ann.sel(flux=f, domain=d, model=m).values).trend)
                    for m in (1, 2, 3)]
            assert row["trend_boot_sd"] == pytest.approx(np.std(boot, ddof=1), rel=1e-9)
    # the planted 5 Tg C yr-2 trend of domain a is recovered
    assert tab.loc[("NEE", "a"), "trend_tg_c_per_yr"] == pytest.approx(5.0, rel=0.15)
    assert tab.loc[("NEE", "a"), "significant"]
    # a season is the sum of its months
    spring = seasonal_budgets(sums * TG_PER_G, "spring")
    want = sums.sel(time=sums.time.dt.month.isin([4, 5])).groupby("time.year").sum() * 1e-12
    np.testing.assert_allclose(spring.values, want.values)


def test_fire_budget_conserves_mass_and_nee_plus_fire() -> None:
    ny, nx = 3, 4
    rng = np.random.default_rng(1)
    lf = xr.DataArray(rng.uniform(0.2, 1.0, (ny, nx)), dims=("y", "x"))
    lf[0, 0] = 0.0
    fire = xr.DataArray(rng.uniform(0, 50, (5, ny, nx)), dims=("year", "y", "x"),
                        coords={"year": np.arange(2002, 2007)})
    fire[:, 0, 0] = 0.0
    cell = 1e8
    mask = np.zeros((ny, nx), bool)
    mask[1:, :] = True
    zones = xr.Dataset({"land_fraction": lf, "d": xr.DataArray(mask, dims=("y", "x"))})
    fb = fire_budgets(xr.Dataset({"fire_emissions": fire}), zones, cell, domains={"d": "d"})
    np.testing.assert_allclose(fb.sel(domain="d").values,
                               (fire.values[:, mask] * cell).sum(axis=1) * 1e-12)
    nee = xr.DataArray(np.ones((6, ny, nx)), dims=("year", "y", "x"),
                       coords={"year": np.arange(2001, 2007)})
    nf = nee_plus_fire(nee, fire, lf)
    np.testing.assert_array_equal(nf.year, np.arange(2002, 2007))
    np.testing.assert_allclose((nf - 1.0).values[:, 1:, :] * lf.values[1:, :],
                               fire.values[:, 1:, :])


# --------------------------------------------------------------------------- the command

PLANT_ROWS = slice(20, 30)
PLANT_COLS = slice(60, 70)
PLANT_TREND = 3.0  # g C m-2 month-1 per year added to Reco (and NEE) -> +36 g C m-2 yr-2


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder: 100-km twin 2001–2010 + a flux store = truth with a planted Reco trend.

    The store holds NEE/GPP/Reco (time, y, x) and zone_sums of a central model and two
    'bootstrap' models scaled by 1.02 and 0.97, in the upscaler's layout.
    """
    from abz_dask.twin import generate_twin

    root = tmp_path_factory.mktemp("trendrun")
    layout = generate_twin(root / "twin", resolution="100km", start=f"{START}-01",
                           end=f"{END}-12", seed=0, n_sites=40, progress=False)
    truth = xr.open_zarr(layout.truth, consolidated=False).load()
    zones = xr.open_zarr(layout.zones, consolidated=False).load()
    grid = Grid.from_preset("100km")
    est = truth[["NEE", "GPP", "Reco"]].copy()
    yrs = xr.DataArray((truth.time.dt.year - START).values.astype(np.float32), dims="time")
    add = xr.zeros_like(truth["Reco"].isel(time=0, drop=True))
    add[PLANT_ROWS, PLANT_COLS] = PLANT_TREND
    add = (add * yrs).where(truth["Reco"].notnull())
    est["Reco"] = (truth["Reco"] + add).astype(np.float32)
    est["NEE"] = (truth["NEE"] + add).astype(np.float32)
    domains = {"abz": "abz", "tundra": "biome == 1", "boreal": "biome == 2",
               "permafrost": "permafrost"}
    central = monthly_domain_budgets(est, zones, grid.cell_area, domains=domains).compute(
    ) * G_PER_TG
    sums = xr.concat([central * s for s in (1.0, 1.02, 0.97)], dim="model").assign_coords(
        model=np.arange(3))
    store = est.chunk({"time": 12, "y": 48, "x": 48})  # the twin cube's tiles, as the upscaler
    for v in store.variables.values():
        v.encoding = {}
    store["zone_sums"] = sums.expand_dims(tile_id=["all"]).transpose(
        "tile_id", "flux", "model", "time", "domain")
    store.attrs = {**truth.attrs, "domains": json.dumps(domains, sort_keys=True)}
    store.to_zarr(root / "fluxes.zarr", mode="w", zarr_format=3, consolidated=False)
    return root


@pytest.fixture(scope="module")
def trends_out(run_dir: Path) -> tuple[Path, str]:
    from abz_dask.cli import app

    res = CliRunner().invoke(app, ["trends", str(run_dir), "--start", str(START), "--end",
                                   str(END), "--workers", "1", "--no-progress",
                                   "--predictors", "tair,snow_cover:spring"])
    assert res.exit_code == 0, res.output
    return run_dir / "trends", res.output


def test_trends_command_writes_maps_and_tables(trends_out: tuple[Path, str]) -> None:
    out, output = trends_out
    for name in ("trend_maps.zarr", "truth_trend_maps.zarr", "trend_shares.csv",
                 "overlay_shares.csv", "greening.csv", "budget_trends.csv",
                 "truth_comparison.csv", "trends.json"):
        assert (out / name).exists(), name
    assert not list(out.glob("*.tmp"))
    maps = xr.open_zarr(out / "trend_maps.zarr", consolidated=False)
    for v in ("NEE", "GPP", "Reco", "NEE_fire", "NEE_JJA", "NEE_spring", "NEE_autumn",
              "ndvi_JJA", "tair_annual", "snow_cover_spring"):
        assert f"{v}_trend" in maps and f"{v}_sig" in maps, v
    assert maps["NEE_fire_trend"].attrs["first_year"] == 2002
    assert json.loads(maps["overlay"].attrs["legend"])["4"].startswith("emissions rising")
    assert "ABZ area with significant NEE trend" in output


def test_truth_maps_equal_trends_of_the_truth(run_dir: Path,
                                              trends_out: tuple[Path, str]) -> None:
    out, _ = trends_out
    truth = xr.open_zarr(run_dir / "twin" / "truth.zarr", consolidated=False)
    ann = truth[["NEE", "GPP"]].astype(np.float64).groupby("time.year").sum(skipna=False).load()
    ref = trend(ann)
    tm = xr.open_zarr(out / "truth_trend_maps.zarr", consolidated=False).load()
    em = xr.open_zarr(out / "trend_maps.zarr", consolidated=False).load()
    for v in ("NEE", "GPP"):
        np.testing.assert_allclose(tm[f"{v}_trend"], ref[f"{v}_trend"].astype(np.float32),
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(tm[f"{v}_sig"], ref[f"{v}_sig"].astype(np.float32),
                                   rtol=1e-4, atol=1e-6)
    # outside the planted block, the estimate is the truth
    outside = np.ones(em["NEE_trend"].shape, bool)
    outside[PLANT_ROWS, PLANT_COLS] = False
    np.testing.assert_array_equal(em["NEE_trend"].values[outside], tm["NEE_trend"].values[outside])
    np.testing.assert_array_equal(em["GPP_trend"].values, tm["GPP_trend"].values)
    # inside, NEE and Reco trends rose by the planted 36 g C m-2 yr-2: emissions rising, and
    # the overlay says Reco rises more than GPP (4) or Reco rises and GPP falls (5)
    blk = (slice(PLANT_ROWS.start, PLANT_ROWS.stop), slice(PLANT_COLS.start, PLANT_COLS.stop))
    dom = np.isfinite(tm["NEE_trend"].values[blk])
    assert dom.sum() >= 10
    rise = em["Reco_trend"].values[blk] - tm["Reco_trend"].values[blk]
    # (Zhang prewhitening of 10-year series is not additive: each pixel within 20 %)
    np.testing.assert_allclose(rise[dom], 12 * PLANT_TREND, rtol=0.2)
    assert np.median(rise[dom]) == pytest.approx(12 * PLANT_TREND, rel=0.05)
    assert (em["NEE_sig"].values[blk][dom] < 0.05).all()
    assert np.isin(em["overlay"].values[blk][dom], [4, 5]).all()
    assert (em["overlay"].values[np.isnan(em["NEE_trend"].values)] == -1).all()


def test_tables_agree_with_truth_and_planted_changes(run_dir: Path,
                                                     trends_out: tuple[Path, str]) -> None:
    out, _ = trends_out
    bt = pd.read_csv(out / "budget_trends.csv")
    # truth budget trends = kernel on the twin's own truth_budgets.csv (independent path)
    tb = pd.read_csv(run_dir / "twin" / "truth_budgets.csv")
    for (dom, flux), g in tb.groupby(["domain", "flux"]):
        series = g.sort_values("year")["budget_tg_c_yr"].to_numpy()
        ref = zyp.zyp_trend(series)
        row = bt[(bt.source == "truth") & (bt.season == "annual") & (bt.flux == flux)
                 & (bt.domain == dom)].iloc[0]
        assert row["trend_tg_c_per_yr"] == pytest.approx(float(ref.trend), rel=1e-6, abs=1e-9)
        assert row["sig"] == pytest.approx(float(ref.sig), rel=1e-4, abs=1e-12)
    # estimate: bootstrap models are the central scaled by 1.02 / 0.97 -> slope SD analytic
    est = bt[(bt.source == "estimate") & (bt.season == "annual")].set_index(["flux", "domain"])
    gpp = est.loc[("GPP", "abz")]
    assert gpp["trend_boot_sd"] == pytest.approx(
        abs(gpp["trend_tg_c_per_yr"]) * np.std([1.02, 0.97], ddof=1), rel=1e-6)
    assert set(bt.season) == {"annual", "JJA", "spring", "autumn"}
    assert (bt.flux == "NEE_fire").any()
    # shares: the planted block raises the estimated share of rising emissions in the ABZ
    cmp = pd.read_csv(out / "truth_comparison.csv").set_index(["variable", "domain"])
    gpp_row = cmp.loc[("GPP", "abz")]
    assert gpp_row["estimate_share_sig_positive"] == pytest.approx(
        gpp_row["truth_share_sig_positive"], abs=1e-12)
    assert gpp_row["class_agreement"] == pytest.approx(1.0)
    assert gpp_row["trend_corr"] == pytest.approx(1.0)
    nee = cmp.loc[("NEE", "abz")]
    assert nee["estimate_share_sig_positive"] > nee["truth_share_sig_positive"]
    assert 0.9 < nee["class_agreement"] < 1.0
    ov = pd.read_csv(out / "overlay_shares.csv")
    ov = ov[(ov.domain == "abz") & (ov.code >= 0)]
    for src, g in ov.groupby("source"):
        assert g["share"].sum() == pytest.approx(1.0), src
    green = pd.read_csv(out / "greening.csv")
    assert set(green.source) == {"estimate", "truth"}
    assert green["greening_share"].between(0, 1).all()


def test_trends_command_resumes_and_refuses_other_settings(
        run_dir: Path, trends_out: tuple[Path, str]) -> None:
    from abz_dask.cli import app

    out, _ = trends_out
    before = (out / "trend_maps.zarr" / "zarr.json").stat().st_mtime_ns
    (out / "greening.csv").unlink()
    res = CliRunner().invoke(app, ["trends", str(run_dir), "--start", str(START), "--end",
                                   str(END), "--workers", "1", "--no-progress",
                                   "--predictors", "tair,snow_cover:spring"])
    assert res.exit_code == 0, res.output
    assert "skip" in res.output and (out / "greening.csv").exists()
    assert (out / "trend_maps.zarr" / "zarr.json").stat().st_mtime_ns == before
    res = CliRunner().invoke(app, ["trends", str(run_dir), "--start", str(START), "--end",
                                   str(END), "--method", "none", "--workers", "1"])
    assert res.exit_code == 2 and "other settings" in res.output


def test_map_agreement_is_one_for_identical_maps() -> None:
    da, _ = _planted_annual()
    maps = pixel_trends({"NEE": da}).compute()
    ag = shares_table(map_agreement(maps, maps, ["NEE"], _weights())).set_index("domain")
    np.testing.assert_allclose(ag["class_agreement"], 1.0)
    np.testing.assert_allclose(ag["trend_corr"], 1.0)
    flipped = maps.copy()
    flipped["NEE_trend"] = -maps["NEE_trend"]
    ag2 = shares_table(map_agreement(maps, flipped, ["NEE"], _weights())).set_index("domain")
    np.testing.assert_allclose(ag2.loc["all", "trend_corr"], -1.0)
    np.testing.assert_allclose(ag2.loc["all", "class_agreement"], 2 / 6)  # flat columns agree


def test_dask_input_is_never_rechunked_along_space() -> None:
    da = xr.DataArray(dsa.ones((24, 4, 6), chunks=(12, 2, 3)), dims=("time", "y", "x"),
                      coords={"time": pd.date_range("2001-01", periods=24, freq="MS")})
    ann = seasonal_series(da)
    assert ann.chunks == ((2,), (2, 2), (3, 3))
