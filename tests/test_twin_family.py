"""Twin families: family a unchanged, family b's planted truth, site rule and hidden driver."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import TINY_PROFILE

from abz_dask.geo.grid import Grid
from abz_dask.twin import TwinLayout, generate_twin
from abz_dask.twin.fields import smooth_field
from abz_dask.twin.sites import make_sites

KW = {"resolution": "100km", "start": "2001-01", "end": "2003-12", "seed": 3, "n_sites": 40,
      "progress": False}

#: truth_budgets.csv (Tg C yr⁻¹, 2001, 2002, 2003) of the tiny family-a twin ``KW``, computed by
#: the code before twin families existed; family a must reproduce them.
REF_A_BUDGETS = {
    ("abz", "GPP"): (9074.885868165642, 9071.411561537092, 9302.583776720308),
    ("abz", "NEE"): (-324.33301186638397, -308.96660003254675, -391.40687628605474),
    ("abz", "Reco"): (8750.552860050293, 8762.444960464783, 8911.176900999506),
    ("boreal", "GPP"): (7452.221528552788, 7395.242471246766, 7539.766215808801),
    ("boreal", "NEE"): (-453.57091144939994, -424.0688315113671, -484.26733487208634),
    ("boreal", "Reco"): (6998.650618622123, 6971.173639547043, 7055.498882085672),
    ("permafrost", "GPP"): (6616.101222121635, 6655.247288711588, 6881.628462206936),
    ("permafrost", "NEE"): (-177.82667225478235, -192.78577283318126, -228.43163392456046),
    ("permafrost", "Reco"): (6438.274551389251, 6462.461514173032, 6653.196827223356),
    ("tundra", "GPP"): (1622.6643396128554, 1676.169090290323, 1762.8175609115137),
    ("tundra", "NEE"): (129.2378995830158, 115.10223147882026, 92.86045858603181),
    ("tundra", "Reco"): (1751.9022414281674, 1791.27132091774, 1855.6780189138333),
}
#: rows, sum of NEE, sum of the distinct site latitudes and of the GPP values of its ABCflux CSV
REF_A_SITES = (590, -2404.539, 2426.09025, -32609.993)


def _gen(root: Path, **kw: object) -> TwinLayout:
    with dask.config.set(scheduler="threads"):
        return generate_twin(root, **{**KW, **kw})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TwinLayout]:
    """Family a, family b, and family b without its hidden driver (same seed and grid)."""
    root = tmp_path_factory.mktemp("families")
    return {"a": _gen(root / "a"), "b": _gen(root / "b", family="b"),
            "b0": _gen(root / "b0", family="b", hidden_driver=False)}


def _truth(lay: TwinLayout) -> xr.Dataset:
    return xr.open_zarr(lay.truth, consolidated=False)


def _cube(lay: TwinLayout) -> xr.Dataset:
    return xr.open_zarr(lay.cube, consolidated=False)


def test_family_a_unchanged(twins: dict[str, TwinLayout]) -> None:
    tab = pd.read_csv(twins["a"].truth_budgets)
    got = tab.pivot_table(index=["domain", "flux"], columns="year", values="budget_tg_c_yr")
    assert len(got) == len(REF_A_BUDGETS)
    for key, ref in REF_A_BUDGETS.items():
        np.testing.assert_allclose(np.asarray(got.loc[key], dtype=float), ref, rtol=1e-12,
                                   atol=0)
    obs = pd.read_csv(twins["a"].sites)
    assert (len(obs), obs["nee"].sum(), obs["latitude"].drop_duplicates().sum(),
            obs["gpp"][obs["gpp"] != -9999].sum()) == pytest.approx(REF_A_SITES, rel=1e-12)
    meta = json.loads((twins["a"].root / "twin.json").read_text())
    assert meta["family"] == "a" and meta["hidden_driver"] is True
    assert "twin_family" not in _truth(twins["a"]).attrs  # family a's stores as before


def test_families_share_drivers_and_fire(twins: dict[str, TwinLayout]) -> None:
    for s in ("cube", "fire"):
        a = xr.open_zarr(getattr(twins["a"], s), consolidated=False)
        b = xr.open_zarr(getattr(twins["b"], s), consolidated=False)
        for v in a.data_vars:
            assert np.array_equal(a[v].values, b[v].values, equal_nan=True), (s, v)


# an independent re-implementation of family b's documented formulas (abz_dask.twin.truth_b)
_DAYS = np.array([31, 28.25, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])
_PMAX = {70: 9.0, 80: 8.0, 60: 11.0, 120: 8.5, 160: 7.0, 33: 9.5, 31: 6.0, 21: 8.0, 30: 3.0}


def _family_b(d: dict[str, np.ndarray], co2: np.ndarray, month: np.ndarray,
              h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    days = _DAYS[month - 1]
    apar = np.clip((d["ndvi"] - 0.10) / 0.75, 0, 1) * 0.45 * d["srad"] * 0.0864
    pmax = np.array([_PMAX.get(int(v), 5.0) for v in d["vegtype"]])
    p = 3.5 * apar * pmax / (3.5 * apar + pmax)
    f_t = np.clip((d["tair"] + 3.0) / 19.0, 0, 1)
    f_w = np.minimum(np.clip((d["soil_moisture"] - 0.06) / 0.16, 0, 1),
                     np.exp(-0.55 * np.maximum(d["vpd"] - 0.4, 0)))
    f_c = ((co2 - 40) / (co2 + 80)) / (330 / 450)
    gpp = days * p * f_t * f_w * (1 - d["snow_cover"]) * f_c
    tk = np.maximum(d["soil_temp"], -40.0) + 273.15
    lt = np.exp(308.56 * (1 / (283.15 - 227.13) - 1 / (tk - 227.13)))
    th = d["soil_moisture"]
    g = th / (th + 0.08) * (0.38 / 0.3)
    reco = h * lt * g * (56.0 * (d["soc"] / 150) ** 0.3 * days / 30 + 0.29 * gpp)
    return gpp, reco


@pytest.mark.parametrize("name", ["b", "b0"])
def test_family_b_truth_follows_its_formulas(twins: dict[str, TwinLayout], name: str) -> None:
    cube, truth = _cube(twins[name]), _truth(twins[name])
    rng = np.random.default_rng(7)
    iy, ix = np.nonzero(np.isfinite(truth["GPP"].isel(time=6).values))
    pick = rng.choice(len(iy), size=40, replace=False)
    yi = xr.DataArray(iy[pick], dims="cell")
    xi = xr.DataArray(ix[pick], dims="cell")
    nt = cube.sizes["time"]
    d = {}
    for v in ("ndvi", "srad", "tair", "soil_moisture", "vpd", "snow_cover", "soil_temp"):
        d[v] = cube[v].isel(y=yi, x=xi).values.astype(float).ravel()  # (time, cell)
    for v in ("vegtype", "soc"):
        d[v] = np.tile(cube[v].isel(y=yi, x=xi).values.astype(float), nt)
    co2 = np.repeat(cube["co2"].values.astype(float), len(pick))
    month = np.repeat(cube["time"].dt.month.values, len(pick))
    x, y = cube["x"].values[ix[pick]], cube["y"].values[iy[pick]]
    s = smooth_field(3, "hidden_b", x, y, wavelength=(3e5, 1.5e6))
    h = np.tile(np.exp(0.3 * s - 0.045), nt) if name == "b" else np.ones(len(month))
    gpp, reco = _family_b(d, co2, month, h)
    t = {f: truth[f].isel(y=yi, x=xi).values.astype(float).ravel() for f in ("GPP", "Reco",
                                                                                 "NEE")}
    # drivers are read back as float32, so agreement is to float32 precision
    np.testing.assert_allclose(t["GPP"], gpp, rtol=2e-5, atol=1e-4)
    np.testing.assert_allclose(t["Reco"], reco, rtol=2e-5, atol=1e-4)
    assert gpp.max() > 100 and (gpp == 0).any()  # summer light saturation and winter zero
    # NEE = Reco − GPP, everywhere
    full = {f: truth[f].values.astype(float) for f in ("GPP", "Reco", "NEE")}
    ok = np.isfinite(full["NEE"])
    assert ok.any()
    np.testing.assert_allclose(full["NEE"][ok], (full["Reco"] - full["GPP"])[ok],
                               rtol=0, atol=2e-4 * np.abs(full["Reco"][ok]).max())


def test_family_b_budgets_and_metadata(twins: dict[str, TwinLayout]) -> None:
    b = pd.read_csv(twins["b"].truth_budgets)
    a = pd.read_csv(twins["a"].truth_budgets)
    assert list(b.columns) == list(a.columns) and len(b) == len(a)  # same schema
    abz = b[b["domain"] == "abz"].groupby("flux")["budget_tg_c_yr"].mean()
    assert 8000 < abz["GPP"] < 14000 and -1500 < abz["NEE"] < 0
    assert abs(abz["GPP"] / a[(a["domain"] == "abz") & (a["flux"] == "GPP")][
        "budget_tg_c_yr"].mean() - 1) > 0.05  # same order, not the same numbers
    meta = json.loads((twins["b"].root / "twin.json").read_text())
    assert meta["family"] == "b" and meta["hidden_driver"] is True
    assert meta["family_params"]["alpha"] == 3.5 and "Lloyd" in meta["family_params"]["reco"]
    attrs = _truth(twins["b"]).attrs
    assert attrs["twin_family"] == "b" and attrs["hidden_driver"] == 1
    assert json.loads(attrs["twin_family_params"])["k_sub"] == 0.29
    assert json.loads((twins["b0"].root / "twin.json").read_text())["hidden_driver"] is False


def test_hidden_driver_changes_only_reco(twins: dict[str, TwinLayout]) -> None:
    on, off = _truth(twins["b"]), _truth(twins["b0"])
    assert np.array_equal(on["GPP"].values, off["GPP"].values, equal_nan=True)
    x, y = on["x"].values[None, :], on["y"].values[:, None]
    h = np.exp(0.3 * smooth_field(3, "hidden_b", x, y, wavelength=(3e5, 1.5e6)) - 0.045)
    ron, roff = on["Reco"].values.astype(float), off["Reco"].values.astype(float)
    ok = np.isfinite(roff) & (roff > 1e-3)
    np.testing.assert_allclose((ron / np.where(ok, roff, 1.0))[ok],
                               np.broadcast_to(h, ron.shape)[ok], rtol=1e-5)
    assert h[np.isfinite(ron[6])].std() > 0.2  # a real spatial signal
    # same network (placement does not depend on the truth); only flux values differ
    so, sf = pd.read_csv(twins["b"].sites), pd.read_csv(twins["b0"].sites)
    cols = ["site_name", "latitude", "longitude", "meas_year", "interval_month"]
    pd.testing.assert_frame_equal(so[cols], sf[cols])
    assert not np.allclose(so["reco"], sf["reco"])


def test_site_network_rules_differ(twins: dict[str, TwinLayout]) -> None:
    zones = xr.open_zarr(twins["a"].zones, consolidated=False).load()
    fire = xr.open_zarr(twins["a"].fire, consolidated=False)
    grid = Grid.from_preset("100km")
    n = 80
    sa = make_sites(zones, grid, fire, 3, n)
    sb = make_sites(zones, grid, fire, 3, n, family="b")
    assert len(sb) == n and not sb[["row", "col"]].duplicated().any()
    siberia = {k: (s["region"] == 4).mean() for k, s in (("a", sa), ("b", sb))}
    assert siberia["b"] < siberia["a"]
    assert not sb["name"].str.match(r"^[A-Z]{2}-[A-Za-z]{3}$").any()  # no FLUXNET2015 sites
    assert sa["name"].str.match(r"^[A-Z]{2}-[A-Za-z]{3}$").any()
    # tundra share of the non-fire sites as documented (sites_b.TUNDRA_SHARE = 0.40)
    non_fire = sb[sb["disturbance"] != "Fire"]
    assert (non_fire["biome"] == "Tundra").sum() == round(0.40 * len(non_fire))
    assert (sb["disturbance"] == "Fire").sum() == round(0.06 * n)
    with pytest.raises(ValueError, match="unknown twin family"):
        make_sites(zones, grid, fire, 3, n, family="c")


def test_manifest_and_family_checks(twins: dict[str, TwinLayout], tmp_path: Path) -> None:
    # a folder written before families existed (no family keys) resumes as family a
    old = tmp_path / "old"
    shutil.copytree(twins["a"].root, old)
    meta = json.loads((old / "twin.json").read_text())
    for k in ("family", "hidden_driver"):
        meta.pop(k)
    (old / "twin.json").write_text(json.dumps(meta))
    _gen(old)
    with pytest.raises(FileExistsError, match="other settings"):
        _gen(old, family="b")
    with pytest.raises(ValueError, match="unknown twin family 'c'"):
        _gen(tmp_path / "c", family="c")


def test_cli_twin_and_full_run_on_family_b(tmp_path: Path) -> None:
    import yaml
    from typer.testing import CliRunner

    from abz_dask.cli import app

    cli = CliRunner()
    res = cli.invoke(app, ["twin", "--out", str(tmp_path / "twin"), "--resolution", "100km",
                           "--start", "2001-01", "--end", "2003-12", "--seed", "3",
                           "--n-sites", "40", "--family", "b", "--no-hidden-driver",
                           "--workers", "1"])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "twin" / "twin.json").read_text())
    assert (meta["family"], meta["hidden_driver"]) == ("b", False)
    # the runner's twin stage makes the same family-b twin as the CLI
    cfg = {"output": str(tmp_path / "run"), "progress": False,
           "input": {"kind": "twin", "resolution": "100km", "start": "2001-01",
                     "end": "2003-12", "seed": 3, "n_sites": 40, "family": "b",
                     "hidden_driver": False},
           "training": {"profile": TINY_PROFILE, "seed": 448},
           "budgets": {"start_year": 2001, "end_year": 2003},
           "trends": {"enabled": False}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    res = cli.invoke(app, ["run", str(tmp_path / "run.yaml"), "--cluster", "threads"])
    assert res.exit_code == 0, res.output
    run_twin = tmp_path / "run" / "twin"
    meta = json.loads((run_twin / "twin.json").read_text())
    assert (meta["family"], meta["hidden_driver"]) == ("b", False)
    for name in ("truth_budgets.csv", "abcflux_twin.csv"):
        assert (run_twin / name).read_bytes() == (tmp_path / "twin" / name).read_bytes(), name
    budgets = pd.read_csv(tmp_path / "run" / "budgets.csv")
    assert len(budgets) > 0
    assert (tmp_path / "run" / "report.html").stat().st_size > 0
