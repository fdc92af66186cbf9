"""Fire: reading fire rasters, NEE + fire, burn history and the post-fire bias test with a planted
bias (the mass-conserving regridding is tested in test_geo_regrid.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import make_run

from abz_dask.analyses import fire as F
from abz_dask.geo.grid import Grid

GRID = Grid.from_preset("100km")


@pytest.fixture(scope="module")
def run100(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.getbasetemp())


def test_read_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        F.read_raster(tmp_path / "none.nc")
    ds = xr.Dataset({"a": (("y", "x"), np.zeros((3, 3))), "b": (("y", "x"), np.zeros((3, 3)))},
                    coords={"y": [3.0, 2, 1], "x": [1.0, 2, 3]})
    ds.to_netcdf(tmp_path / "two.nc")
    with pytest.raises(ValueError, match="pass variable="):
        F.read_raster(tmp_path / "two.nc")
    with pytest.raises(ValueError, match="declares no CRS"):
        F.read_raster(tmp_path / "two.nc", variable="a")


def test_nee_plus_fire_and_history(run100: Path) -> None:
    tw = run100 / "twin"
    store = xr.open_zarr(run100 / "fluxes.zarr", consolidated=False)
    zones = xr.open_zarr(tw / "zones.zarr", consolidated=False).load()
    fire = xr.open_zarr(tw / "fire.zarr", consolidated=False).load()
    res = F.nee_plus_fire(store, fire, zones).compute()
    nee_b = pd.read_csv(tw / "truth_budgets.csv").query("flux == 'NEE' and domain == 'abz'")
    nee_b = nee_b.set_index("year")["budget_tg_c_yr"]
    m = zones["abz"].values
    for yr in (2002, 2003, 2004):
        fb = float((np.nan_to_num(fire["fire_emissions"].sel(year=yr).values) * m).sum()
                   ) * 1e10 * 1e-12
        assert float(res["budget"].sel(year=yr, domain="abz")) == pytest.approx(
            nee_b[yr] + fb, rel=1e-6)
    # map x land area + nothing lost: Σ map × pixel area = budget
    lf = zones["land_fraction"].values
    mp = np.nan_to_num(res["nee_plus_fire"].sel(year=2003).values)
    assert (mp * lf * 1e10 * m).sum() * 1e-12 == pytest.approx(
        float(res["budget"].sel(year=2003, domain="abz")), rel=1e-5)
    h = F.burn_history(fire, 2004)
    bf = fire["burned_fraction"].values
    iy, ix = np.argwhere(bf[0] > 0)[0]
    assert float(h["burned_fraction"][iy, ix]) == pytest.approx(min(1.0, bf[:, iy, ix].sum()))
    last = max(y for y, v in zip((2002, 2003, 2004), bf[:, iy, ix], strict=True) if v > 0)
    assert float(h["years_since_fire"][iy, ix]) == 2004 - last


def _planted_cv(a: float = 20.0, b: float = -2.5, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(25):
        fy = int(rng.integers(1995, 2012))
        ui, us = rng.normal(0, 2.0), rng.normal(0, 0.2)
        for yr in range(max(fy, 2001), min(fy + 15, 2020)):
            for m in (5, 6, 7, 1):
                bias = (a + ui + (b + us) * (yr - fy) if m != 1 else 0.0) + rng.normal(0, 2.0)
                pred = rng.normal(-30, 10)
                rows.append({"flux": "NEE", "site_id": f"s{s}", "year": yr, "month": m,
                             "disturbance": "Fire", "disturb_year": fy,
                             "obs": pred + bias, "pred": pred})
    rows.append({"flux": "NEE", "site_id": "u", "year": 2005, "month": 6,
                 "disturbance": "No", "disturb_year": np.nan, "obs": 1e3, "pred": 0.0})
    return pd.DataFrame(rows)


def test_bias_model_recovers_planted_effects(tmp_path: Path) -> None:
    cv = _planted_cv()
    p = tmp_path / "cv.csv"
    cv.rename(columns={"obs": "obs [g C m-2 month-1]", "pred": "pred [g C m-2 month-1]"}
              ).to_csv(p, index=False)
    bm = F.fit_postfire_bias(F.read_cv_predictions(p), months=(1, 5, 6, 7))
    t = bm.table.set_index("month")
    for m in (5, 6, 7):
        assert t.loc[m, "intercept"] == pytest.approx(20.0, abs=2.0)
        assert t.loc[m, "slope"] == pytest.approx(-2.5, abs=0.3)
        assert t.loc[m, "p_slope"] < 1e-3
    assert abs(t.loc[1, "slope"]) < 0.3 and t.loc[1, "p_intercept"] > 1e-3
    assert t.loc[5, "n_sites"] == 25  # the undisturbed site is left out


def test_postfire_correction_budget_change(run100: Path) -> None:
    tw = run100 / "twin"
    store = xr.open_zarr(run100 / "fluxes.zarr", consolidated=False)
    zones = xr.open_zarr(tw / "zones.zarr", consolidated=False).load()
    fire = xr.open_zarr(tw / "fire.zarr", consolidated=False).load()
    table = pd.DataFrame({"month": [5, 6, 7], "intercept": [10.0, 20.0, 5.0],
                          "slope": [-1.0, -2.0, 0.5]})
    bm = F.BiasModel(table)
    tab, cmap = F.postfire_correction(store, fire, zones, bm, 2004)
    h = F.burn_history(fire, 2004).compute()
    bf = np.nan_to_num(h["burned_fraction"].values)
    ysf = h["years_since_fire"].values
    burned = np.isfinite(ysf)
    per_pixel = sum(bf * (a + s * np.nan_to_num(ysf)) for a, s in
                    zip(table["intercept"], table["slope"], strict=True)) * burned
    valid = np.isfinite(store["NEE"].sel(time="2004-06").values[0])
    area = zones["land_fraction"].values * 1e10 * zones["abz"].values * valid
    r = tab.set_index("domain").loc["abz"]
    assert r["change_tg_c_yr"] == pytest.approx((per_pixel * area).sum() * 1e-12, rel=1e-6)
    assert r["corrected_tg_c_yr"] - r["budget_tg_c_yr"] == pytest.approx(r["change_tg_c_yr"])
    assert r["change_tg_c_yr"] != 0.0
    np.testing.assert_allclose(np.nan_to_num(cmap.values) * valid, per_pixel * valid,
                               rtol=1e-6, atol=1e-9)
