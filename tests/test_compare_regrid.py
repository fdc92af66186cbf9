"""Area-conservative regridding lat/lon -> polar LAEA (geo.regrid.conservative): integrals,
constants, laziness; the comparison metrics on lazy maps."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from conftest import raise_if_dask_computes

from abz_dask.geo.grid import Grid
from abz_dask.geo.regrid import cell_edges, conservative, latlon_cell_area

GRID = Grid.from_preset("100km")
LAT = np.arange(-89.5, 90.0, 1.0)
LON = np.arange(-179.5, 180.0, 1.0)


def _src(values: np.ndarray, lon: np.ndarray = LON) -> xr.DataArray:
    return xr.DataArray(values, dims=("time", "lat", "lon"),
                        coords={"time": np.arange(values.shape[0]), "lat": LAT, "lon": lon})


def test_ellipsoid_area() -> None:
    a = latlon_cell_area(cell_edges(LAT, clip=(-90.0, 90.0)), cell_edges(LON))
    assert a.sum() == pytest.approx(5.100656217e14, rel=1e-9)  # WGS84 ellipsoid surface
    # the 1-degree cell on the equator: equatorial arc a·dλ × meridian arc 0–1°N (≈ 110,574 m)
    a_eq = 6378137.0 * np.pi / 180.0
    assert a[90, 0] == pytest.approx(a_eq * 110_574.4, rel=1e-4)


def test_area_integral_conserved_and_constant_preserved() -> None:
    rng = np.random.default_rng(0)
    f = rng.gamma(2.0, 10.0, size=(2, LAT.size, LON.size)) - 15.0
    f[:, LAT < 52, :] = 0.0  # everything non-zero lies inside the grid square
    out = conservative(_src(f), GRID).compute()
    area = latlon_cell_area(cell_edges(LAT, clip=(-90.0, 90.0)), cell_edges(LON))
    for k in range(2):
        want = float((f[k] * area).sum())
        got = float(np.nansum(out[k].values.astype(np.float64))) * GRID.cell_area
        assert got == pytest.approx(want, rel=1e-3)
    const = conservative(_src(np.full((1, LAT.size, LON.size), 3.25)), GRID).compute()
    assert np.isfinite(const.values).all()
    np.testing.assert_allclose(const.values, 3.25, rtol=1e-6)


def test_lazy_and_longitude_convention_invariant() -> None:
    rng = np.random.default_rng(1)
    f = rng.normal(size=(3, LAT.size, LON.size))
    src = _src(f).chunk({"time": 1})
    with raise_if_dask_computes():
        lazy = conservative(src, GRID, tile=30)
    assert lazy.chunks == ((1, 1, 1), (30, 30, 30), (30, 30, 30))
    # the same field on 0..360 longitudes
    order = np.argsort(LON % 360)
    src360 = _src(f[:, :, order], lon=(LON % 360)[order])
    np.testing.assert_allclose(lazy.values, conservative(src360, GRID).values, rtol=1e-6)


def test_nan_source_cells_are_excluded() -> None:
    f = np.full((1, LAT.size, LON.size), 10.0)
    f[:, :, LON < 0] = np.nan  # western hemisphere missing (e.g. a land-only model's ocean)
    out = conservative(_src(f), GRID).compute().values[0]
    finite = np.isfinite(out)
    assert finite.any() and (~finite).any()
    np.testing.assert_allclose(out[finite], 10.0, rtol=1e-6)


def test_lazy_map_correlation_matches_scipy() -> None:
    from scipy import stats

    from abz_dask.compare.metrics import compare_maps

    rng = np.random.default_rng(5)
    shape = (6, 8, 9)
    base = rng.normal(size=shape)
    ref = xr.DataArray(base, dims=("year", "y", "x"),
                       coords={"year": np.arange(2001, 2007), "y": np.arange(8.0),
                               "x": np.arange(9.0)}).chunk({"y": 4})
    other = ref + rng.normal(size=shape)
    other[:, 0, 0] = np.nan
    zones = xr.Dataset({"abz": (("y", "x"), np.ones((8, 9), bool)),
                        "land_fraction": (("y", "x"), np.ones((8, 9))),
                        "biome": (("y", "x"), np.ones((8, 9), np.int8)),
                        "permafrost": (("y", "x"), np.zeros((8, 9), bool))},
                       coords={"y": np.arange(8.0), "x": np.arange(9.0)})
    t = compare_maps(ref, {"p": other}, zones, cell_area=1e6, min_trend_years=99)
    a = ref.mean("year").values.ravel()
    b = other.mean("year").values.ravel()
    ok = np.isfinite(b)
    want = stats.pearsonr(a[ok], b[ok])
    row = t.set_index("domain").loc["abz"]
    assert row["r_mean"] == pytest.approx(want.statistic, rel=1e-10)
    assert row["p_mean"] == pytest.approx(want.pvalue, rel=1e-6)
    assert row["n_pixels"] == ok.sum()
    assert row["reference_tg_c_yr"] == pytest.approx(float(base.sum(axis=(1, 2)).mean()) * 1e-6)
    assert np.isnan(row["r_trend"])
