"""The digital twin: determinism, the ABCflux-format site table, truth identities, fire."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from abz_dask.twin import TwinLayout, generate_twin
from abz_dask.twin.sites import ABCFLUX_COLUMNS, MONTHLY_COUNTS, SITE_LOG_SD, site_factors


def _stores_equal(a: TwinLayout, b: TwinLayout) -> None:
    for name in ("cube", "truth", "fire"):
        da_, db = (xr.open_zarr(getattr(x, name), consolidated=False) for x in (a, b))
        assert set(da_.data_vars) == set(db.data_vars)
        for v in da_.data_vars:
            assert np.array_equal(da_[v].values, db[v].values, equal_nan=True), (name, v)
    assert a.sites.read_bytes() == b.sites.read_bytes()
    assert a.truth_budgets.read_bytes() == b.truth_budgets.read_bytes()


def test_same_seed_identical_stores_threads_vs_processes(tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    kw = {"resolution": "100km", "start": "2018-01", "end": "2019-12", "n_sites": 30,
          "seed": 3, "progress": False}
    a = generate_twin(tmp_path / "a", **kw)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster):
        b = generate_twin(tmp_path / "b", **kw)
    _stores_equal(a, b)
    c = generate_twin(tmp_path / "c", **{**kw, "seed": 4})
    assert not np.array_equal(
        xr.open_zarr(a.truth, consolidated=False)["NEE"].values,
        xr.open_zarr(c.truth, consolidated=False)["NEE"].values, equal_nan=True)


def test_settings_mismatch_refused(tmp_path: Path) -> None:
    kw = {"resolution": "100km", "start": "2019-01", "end": "2019-12", "n_sites": 10,
          "progress": False}
    generate_twin(tmp_path, **kw)
    with pytest.raises(FileExistsError, match="other settings"):
        generate_twin(tmp_path, **{**kw, "seed": 9})
    # a folder an earlier twin version made (no ``twin_version``) is not finished with new code
    manifest = tmp_path / "twin.json"
    old = json.loads(manifest.read_text())
    del old["twin_version"]
    manifest.write_text(json.dumps(old))
    with pytest.raises(FileExistsError, match="other settings"):
        generate_twin(tmp_path, **kw)


def test_site_factors_have_mean_one() -> None:
    """The cell's truth is the mean over a site's possible footprints, so the site factors
    average one (E exp(N(−σ²/2, σ)) = 1); a median-one factor would average 1.0072 / 1.0104."""
    f_gpp, f_reco = site_factors(np.random.default_rng(0), 1_000_000)
    assert abs(f_gpp.mean() - 1.0) < 1e-3  # standard error of the mean ≈ 1.2e-4
    assert abs(f_reco.mean() - 1.0) < 1e-3  # ≈ 1.4e-4
    assert np.log(f_gpp).std() == pytest.approx(SITE_LOG_SD[0], rel=0.01)
    assert np.log(f_reco / f_gpp).std() == pytest.approx(SITE_LOG_SD[1], rel=0.01)


def test_site_csv_schema_and_monthly_distribution(twin100: TwinLayout) -> None:
    raw = pd.read_csv(twin100.sites)
    assert list(raw.columns) == ABCFLUX_COLUMNS
    assert (raw[["gpp", "reco"]] == -9999).any().all()  # missing values coded as in ABCflux
    assert raw["gpp"].replace(-9999, np.nan).median() < 0  # GPP stored negative
    sm = raw.drop_duplicates(["site_name", "meas_year", "interval_month"])
    assert 180 <= raw["site_name"].nunique() <= 200
    assert 4_000 <= len(sm) <= 5_800  # ≈ 4,800 site-months
    per_site = sm.groupby("site_name").size()
    assert per_site.min() >= 1 and per_site.max() <= 213 and 18 <= per_site.mean() <= 32
    share = sm.groupby("interval_month").size().reindex(range(1, 13)).to_numpy() / len(sm)
    target = MONTHLY_COUNTS / MONTHLY_COUNTS.sum()
    assert np.all(np.abs(share / target - 1) < 0.25), share.round(3)
    assert share[6] > 1.3 * share[0]  # summer-heavy like the paper (Jul 527 vs Jan 288)
    ec_share = (sm["flux_method"] == "EC").mean()
    assert 0.75 < ec_share < 0.97  # paper: 88 % of months eddy covariance
    sites = raw.drop_duplicates("site_name")
    disturbed = (sites["disturbance"] != "No").mean()
    assert 0.10 < disturbed < 0.18  # paper: 14 % of sites
    ref = pd.read_csv(Path(__file__).parents[1] / "abz_dask" / "data"
                      / "flux_sites_fluxnet2015_abz.csv")
    assert len(set(ref["site_id"]) & set(sites["site_name"])) >= 10
    # several plots of one chamber site-month exist (the reader averages them)
    assert (raw.groupby(["site_name", "meas_year", "interval_month"]).size() > 1).any()


def test_fire_sites_sit_in_burned_cells(twin100: TwinLayout) -> None:
    from abz_dask.geo.grid import Grid

    raw = pd.read_csv(twin100.sites).drop_duplicates("site_name")
    fire_sites = raw[raw["disturbance"] == "Fire"]
    assert len(fire_sites) >= 10
    g = Grid.from_preset("100km")
    r, c = g.index_of(*g.project(fire_sites["longitude"].values, fire_sites["latitude"].values))
    bf = xr.open_zarr(twin100.fire, consolidated=False)["burned_fraction"]
    for yr, ri, ci in zip(fire_sites["disturb_year"], r, c, strict=True):
        assert bf.sel(year=yr).values[ri, ci] > 0
    first = pd.read_csv(twin100.sites).groupby("site_name")["meas_year"].min()
    start = first[fire_sites["site_name"]].to_numpy()
    assert (start >= fire_sites["disturb_year"].to_numpy()).all()


def test_truth_identity_and_budget_structure(twin100: TwinLayout) -> None:
    t = xr.open_zarr(twin100.truth, consolidated=False).sel(time="2010")
    np.testing.assert_allclose(t["NEE"].values, (t["Reco"] - t["GPP"]).values, atol=1e-3)
    cube = xr.open_zarr(twin100.cube, consolidated=False)
    zones = xr.open_zarr(twin100.zones, consolidated=False)
    dom = zones["abz"].values & (zones["land_fraction"].values > 0)
    assert np.isfinite(cube["ndvi"].isel(time=0).values[dom]).all()
    assert np.isnan(cube["ndvi"].isel(time=0).values[~dom]).all()
    b = pd.read_csv(twin100.truth_budgets)
    b = b[b["year"].between(2001, 2020)].groupby(["domain", "flux"])["budget_tg_c_yr"].mean()
    # planted truth calibrated to Table 1 of the paper (ABZ GPP 9,970, NEE −548 Tg C/yr)
    assert 8_000 < b["abz", "GPP"] < 12_000
    assert -900 < b["abz", "NEE"] < -250
    assert b["tundra", "NEE"] > b["boreal", "NEE"]  # tundra near neutral, boreal a sink
    np.testing.assert_allclose(b["tundra", "NEE"] + b["boreal", "NEE"], b["abz", "NEE"],
                               rtol=1e-9)


def test_fire_burned_share_and_siberia(twin100: TwinLayout) -> None:
    f = xr.open_zarr(twin100.fire, consolidated=False)
    z = xr.open_zarr(twin100.zones, consolidated=False)
    w = (z["land_fraction"] * z["abz"]).values
    burned = np.clip(f["burned_fraction"].sum("year").values, 0, 1)
    share = (burned * w).sum() / w.sum()
    assert 0.04 < share < 0.11  # paper: 7 % of the ABZ burned in 2002–2020
    sib = z["key_region"].values == 4
    na = np.isin(z["key_region"].values, (1, 2))
    assert (burned * w)[sib].sum() / w[sib].sum() > (burned * w)[na].sum() / w[na].sum()
    assert (f["fire_emissions"].values[f["burned_fraction"].values == 0] == 0).all()
