"""Time series, trends and seasonality against numpy recomputations on the planted truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import REPLICATE_SCALE, make_run
from scipy import stats

from abz_dask.aggregation.zonal import domain_budgets, fire_budgets
from abz_dask.analyses import seasonal as S
from abz_dask.analyses.budget_trends import budget_trends


@pytest.fixture(scope="module")
def run100(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def parts(run100: Path) -> dict[str, xr.Dataset]:
    tw = run100 / "twin"
    return {"store": xr.open_zarr(run100 / "fluxes.zarr", consolidated=False),
            "zones": xr.open_zarr(tw / "zones.zarr", consolidated=False).load(),
            "truth": xr.open_zarr(tw / "truth.zarr", consolidated=False).load(),
            "fire": xr.open_zarr(tw / "fire.zarr", consolidated=False)}


def _abz_area(zones: xr.Dataset) -> np.ndarray:
    return zones["land_fraction"].values.astype(float) * 1e10 * zones["abz"].values


def test_annual_series_and_trends(parts: dict[str, xr.Dataset], run100: Path) -> None:
    fb = fire_budgets(parts["fire"], parts["zones"], 1e10)
    ser = S.annual_series(parts["store"], fire_budgets=fb)
    tb = pd.read_csv(run100 / "twin" / "truth_budgets.csv").set_index(["flux", "domain", "year"])
    for f in ("NEE", "GPP", "Reco"):
        for d in ("abz", "permafrost"):
            got = ser["budget"].sel(series=f, domain=d).values
            ref = tb.loc[(f, d)]["budget_tg_c_yr"].loc[2001:2004].to_numpy()
            np.testing.assert_allclose(got, ref, rtol=1e-6)
            np.testing.assert_allclose(ser["boot_sd"].sel(series=f, domain=d).values,
                                       abs(ref) * np.std(REPLICATE_SCALE, ddof=1), rtol=1e-6)
    nf = ser["budget"].sel(series="NEE+fire", domain="abz")
    assert np.isnan(nf.sel(year=2001))
    np.testing.assert_allclose(nf.sel(year=[2002, 2003, 2004]).values,
                               ser["budget"].sel(series="NEE", domain="abz",
                                                 year=[2002, 2003, 2004]).values
                               + fb.sel(domain="abz").compute().values, rtol=1e-9)
    # the one budget-trend table (trends stage and report) on the same budgets
    tr = budget_trends(domain_budgets(parts["store"], monthly=True), fire=fb, method="none",
                       seasons=("annual",)).set_index(["flux", "domain"])
    y = ser["budget"].sel(series="GPP", domain="boreal").values
    assert tr.loc[("GPP", "boreal"), "trend_tg_c_per_yr"] == pytest.approx(
        stats.theilslopes(y, np.arange(1, 5)).slope, rel=1e-9)
    assert tr.loc[("NEE_fire", "abz"), "first_year"] == 2002
    assert tr.loc[("NEE_fire", "abz"), "mean_tg_c"] == pytest.approx(
        float(nf.sel(year=[2002, 2003, 2004]).mean()), rel=1e-12)


def test_monthly_means_by_numpy(parts: dict[str, xr.Dataset]) -> None:
    z, truth = parts["zones"], parts["truth"]
    tab = S.monthly_means(parts["store"], z, periods=((2001, 2002), (2003, 2004)))
    area = z["land_fraction"].values.astype(float) * 1e10 * (z["biome"].values == 2)
    v = np.nan_to_num(truth["GPP"].sel(time=slice("2003", "2004")).values.astype(float))
    monthly = (v * area).sum(axis=(1, 2)) / area.sum()
    ref = monthly.reshape(2, 12).mean(axis=0)
    got = tab.query("domain == 'boreal' and flux == 'GPP' and period == '2003-2004'")
    np.testing.assert_allclose(got.sort_values("month")["mean_g_c_m2_month"], ref, rtol=1e-6)
    np.testing.assert_allclose(got.sort_values("month")["boot_sd"],
                               np.abs(ref) * np.std(REPLICATE_SCALE, ddof=1), rtol=1e-6)


def test_seasonal_amplitude(parts: dict[str, xr.Dataset]) -> None:
    z, truth = parts["zones"], parts["truth"]
    per_year, tr = S.seasonal_amplitude(parts["store"], method="none")
    area = _abz_area(z)
    v = np.nan_to_num(truth["NEE"].values.astype(float))
    mon = ((v * area).sum(axis=(1, 2)) * 1e-12).reshape(4, 12)
    amp = mon.max(axis=1) - mon.min(axis=1)
    got = per_year.query("domain == 'abz'").sort_values("year")["amplitude_tg_c_month"]
    np.testing.assert_allclose(got, amp, rtol=1e-6)
    r = tr.set_index("domain").loc["abz"]
    ts = stats.theilslopes(amp, np.arange(1, 5))
    assert r["slope_per_yr"] == pytest.approx(ts.slope, rel=1e-6)
    assert r["change"] == pytest.approx(r["fitted_end"] / r["fitted_start"] - 1)
    assert r["fitted_end"] - r["fitted_start"] == pytest.approx(3 * ts.slope, rel=1e-6)


def test_source_share_components_latitude(parts: dict[str, xr.Dataset]) -> None:
    z, truth, store = parts["zones"], parts["truth"], parts["store"]
    area = _abz_area(z)
    mean = truth["NEE"].groupby("time.year").sum(min_count=12).mean("year").values
    ok = area > 0
    share = S.source_area_share(store, z).set_index("domain").loc["abz", "source_share"]
    fin = ok & np.isfinite(mean)
    assert share == pytest.approx(area[fin & (mean > 0)].sum() / area[fin].sum(), rel=1e-9)
    comp = S.nee_vs_components(store, z).set_index("domain")
    # the twin's truth is NEE = Reco − GPP exactly (float32 storage aside)
    assert comp.loc["abz", "pixel_r"] == pytest.approx(1.0, abs=1e-6)
    assert comp.loc["abz", "difference"] == pytest.approx(0.0, abs=1e-3)
    lat = S.latitude_correlation(store, z).iloc[0]
    from abz_dask.geo.grid import Grid

    _, glat = Grid.from_preset("100km").lonlat()
    m = z["abz"].values & np.isfinite(mean)
    assert lat["r"] == pytest.approx(np.corrcoef(glat[m], mean[m])[0, 1], rel=1e-6)


def test_region_biome_sums_to_domain(parts: dict[str, xr.Dataset]) -> None:
    z, store = parts["zones"], parts["store"]
    rb = S.region_biome_budgets(store, z, fire=parts["fire"])
    ser = S.annual_series(store)
    nee = rb[rb["series"] == "NEE"]
    # key regions cover every ABZ cell with land: the regions x biome add up to the biomes
    tundra = nee[nee["zone_name"].str.endswith("_tundra")]["mean_tg_c_yr"].sum()
    ref = float(ser["budget"].sel(series="NEE", domain="tundra").mean())
    assert tundra == pytest.approx(ref, rel=1e-6)
    assert {"NEE+fire", "fire"} <= set(rb["series"])


def test_pixel_trends_lazy_and_exact(parts: dict[str, xr.Dataset]) -> None:
    store, truth = parts["store"], parts["truth"]
    tr = S.pixel_trends(store, "GPP", method="none")
    assert tr["trend"].chunks is not None
    ann = truth["GPP"].groupby("time.year").sum(min_count=12).values
    iy, ix = np.argwhere(np.isfinite(ann).all(axis=0) & (np.ptp(ann, axis=0) > 0))[100]
    got = float(tr["trend"].isel(y=iy, x=ix))
    assert got == pytest.approx(stats.theilslopes(ann[:, iy, ix].astype(np.float32)
                                                  .astype(float)).slope, rel=1e-6)
