"""Reading lat/lon products: unit conversions, calendars, sign conventions, coordinates, errors."""

from __future__ import annotations

from pathlib import Path

import cftime
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from abz_dask.compare.products import parse_units, read_product, to_annual

LAT_DESC = np.array([75.0, 65.0, 55.0])
LON_360 = np.array([10.0, 190.0, 350.0])


def _write(path: Path, var: str, values: np.ndarray, units: str, time: object,
           lat: np.ndarray = LAT_DESC, lon: np.ndarray = LON_360, names=("lat", "lon"),
           calendar: str = "standard") -> Path:
    ds = xr.Dataset({var: (("time", names[0], names[1]), values, {"units": units})},
                    coords={"time": time, names[0]: lat, names[1]: lon})
    ds["time"].encoding.update({"units": "days since 2000-01-01", "calendar": calendar})
    ds.to_netcdf(path)
    return path


def test_kg_per_second_monthly_to_grams_per_month(tmp_path: Path) -> None:
    time = pd.DatetimeIndex([pd.Timestamp(2004, m, 15) for m in range(1, 13)])
    rate = np.arange(12 * 9, dtype=float).reshape(12, 3, 3) * 1e-9
    p = _write(tmp_path / "inv.nc", "land_flux", rate, "kg C m-2 s-1", time,
               names=("latitude", "longitude"))
    out = read_product(p)
    assert out.dims == ("time", "lat", "lon")
    assert out.attrs["units"] == "g C m-2 month-1"
    assert out["lat"].values.tolist() == [55.0, 65.0, 75.0]
    assert out["lon"].values.tolist() == [-170.0, -10.0, 10.0]
    assert out["time"].values[1] == np.datetime64("2004-02-01")
    days = np.array([31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])
    # source (lat 75, lon 190) -> our (lat index 2, lon -170 index 0)
    want = rate[:, 0, 1] * 1000.0 * days * 86400.0
    np.testing.assert_allclose(out.isel(lat=2, lon=0).values, want, rtol=1e-12)
    ann = to_annual(out)
    assert ann.dims == ("year", "lat", "lon")
    assert float(ann.isel(year=0, lat=2, lon=0)) == pytest.approx(want.sum())


def test_cmip6_nep_noleap_sign_and_february(tmp_path: Path) -> None:
    time = [cftime.DatetimeNoLeap(2004, m, 15) for m in range(1, 13)]
    rate = np.full((12, 3, 3), 2e-8)
    p = _write(tmp_path / "nep_Lmon_X_historical_r1i1p1f1_gn_200401-200412.nc", "nep", rate,
               "kg m-2 s-1", time, calendar="noleap")
    out = read_product(p)
    feb = float(out.isel(time=1, lat=0, lon=0))
    assert feb == pytest.approx(-2e-8 * 1000 * 28 * 86400)  # noleap February, NEE sign
    assert out.attrs["source_variable"] == "nep"


@pytest.mark.parametrize(("units", "factor"), [
    ("mol m-2 s-1", 12.011 * 31 * 86400),
    ("umol CO2 m-2 s-1", 12.011e-6 * 31 * 86400),
    ("gC/m2/day", 31.0),
    ("g C m-2 month-1", 1.0),
    ("PgC/m2/yr", 1e15 * 31 / 365),  # monthly mean rate per year (GCB inversion style)
])
def test_monthly_unit_factors(tmp_path: Path, units: str, factor: float) -> None:
    time = pd.date_range("2003-01-01", periods=3, freq="MS")
    p = _write(tmp_path / "f.nc", "NEE", np.ones((3, 3, 3)), units, time)
    out = read_product(p)
    assert float(out.isel(time=0, lat=0, lon=0)) == pytest.approx(factor)


def test_annual_product_and_explicit_sign(tmp_path: Path) -> None:
    time = pd.DatetimeIndex([pd.Timestamp(y, 7, 1) for y in (2001, 2002, 2003)])
    p = _write(tmp_path / "fluxcom.nc", "NEP", np.full((3, 3, 3), 50.0), "g C m-2 yr-1", time)
    out = read_product(p)
    assert out.dims == ("year", "lat", "lon")
    assert out["year"].values.tolist() == [2001, 2002, 2003]
    assert float(out.isel(year=0, lat=0, lon=0)) == -50.0
    same = read_product(p, sign="nee")
    assert float(same.isel(year=0, lat=0, lon=0)) == 50.0
    p2 = _write(tmp_path / "s.nc", "flux", np.full((3, 3, 3), 1e-9), "kg C m-2 s-1", time)
    sec = read_product(p2, variable="flux")
    assert float(sec.isel(year=0, lat=0, lon=0)) == pytest.approx(1e-6 * 365 * 86400)


def test_errors_name_file_variable_units(tmp_path: Path) -> None:
    time = pd.date_range("2003-01-01", periods=3, freq="MS")
    p = _write(tmp_path / "bad.nc", "NEE", np.ones((3, 3, 3)), "W m-2", time)
    with pytest.raises(ValueError, match=r"bad\.nc.*'NEE'.*W m-2"):
        read_product(p)
    with pytest.raises(ValueError, match=r"bad\.nc.*'gpp' not found"):
        read_product(p, variable="gpp")
    p2 = _write(tmp_path / "other.nc", "tas", np.ones((3, 3, 3)), "K", time)
    with pytest.raises(ValueError, match=r"other\.nc.*none of the known flux variables"):
        read_product(p2)
    with pytest.raises(ValueError, match="unknown flux units"):
        parse_units("kg m-2")
