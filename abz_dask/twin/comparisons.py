"""Two comparison products of the digital twin, written as NetCDF files like the real ones.

So that the comparison path (:mod:`abz_dask.compare`) runs in the demo, the twin derives from its
planted truth:

``GCB2022_inversion_TWIN-INV_1x1_monthly_<start>-<end>.nc``
    An **atmospheric-inversion-like** field: truth NEE + fire emissions (each year's emissions
    spread evenly over June–August, from 2002), spatially smoothed with a Gaussian of
    :data:`INVERSION_SMOOTH_M` (normalised convolution over the domain, so the smoothing does not
    leak zeros in), sampled on a global 1° grid with latitudes **descending** and longitudes
    0…360, variable ``land_flux_only_fossil_cement_adjusted`` in **kg C m⁻² s⁻¹**, source
    positive; 0 outside the domain (as an inversion's non-domain land). Standard calendar.
``nep_Lmon_TWIN-ESM_historical_r1i1p1f1_gn_<start>-<end>.nc`` (+ ``gpp_Lmon_…``)
    A **CMIP6-like process model**, 2001–2014 only, on a 1.25° × 0.9375° grid (288 × 192),
    ``noleap`` calendar, variables ``nep`` (uptake positive) and ``gpp`` in kg m⁻² s⁻¹, NaN outside
    the domain. Biased: GPP × :data:`CMIP6_GPP_FACTOR`, Reco × :data:`CMIP6_RECO_FACTOR`.

Memory: the truth is processed one year at a time after block-averaging to about
:data:`COARSE_M` (so a 1-km twin never holds more than one coarsened year); the outputs are small
coarse lat/lon arrays. Sampling: each lat/lon cell takes the mean of 3 × 3 sub-points looked up in
the coarsened field (nearest cell). :func:`write_comparison_products` is idempotent: a file whose
``twin_config`` attribute matches the twin's ``twin.json`` is not rewritten.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cftime
import numpy as np
import pandas as pd
import xarray as xr
from scipy.ndimage import gaussian_filter

from abz_dask.aggregation.periods import complete_years
from abz_dask.geo.grid import Grid
from abz_dask.io.location import url
from abz_dask.twin.generate import TwinLayout

__all__ = ["CMIP6_GPP_FACTOR", "CMIP6_RECO_FACTOR", "CMIP6_YEARS", "COARSE_M",
           "INVERSION_SMOOTH_M", "INVERSION_YEARS", "write_comparison_products"]

INVERSION_SMOOTH_M = 300_000.0
COARSE_M = 25_000.0
CMIP6_GPP_FACTOR = 0.90
CMIP6_RECO_FACTOR = 0.92
CMIP6_YEARS = (2001, 2014)
INVERSION_YEARS = (2001, 2020)
FIRE_MONTHS = (6, 7, 8)
_KG_PER_G = 1e-3


def _lat_lon_inv() -> tuple[np.ndarray, np.ndarray]:
    return np.arange(89.5, -90.0, -1.0), np.arange(0.5, 360.0, 1.0)


def _lat_lon_cmip() -> tuple[np.ndarray, np.ndarray]:
    lat = np.linspace(-90.0, 90.0, 193)
    return 0.5 * (lat[1:] + lat[:-1]), np.arange(0.0, 360.0, 1.25)


class _Sampler:
    """Looks up a coarsened grid field at lat/lon cell sub-points."""

    def __init__(self, grid: Grid, factor: int, lat: np.ndarray, lon: np.ndarray) -> None:
        dlat = abs(float(lat[1] - lat[0]))
        dlon = float(lon[1] - lon[0])
        off = (np.arange(3) - 1) / 3.0
        la = (lat[:, None] + off[None, :] * dlat).ravel()
        lo = (lon[:, None] + off[None, :] * dlon).ravel()
        lla, llo = np.meshgrid(la, lo, indexing="ij")
        north = lla > 0
        x, y = grid.project(np.where(north, llo, 0.0), np.where(north, lla, 45.0))
        row, col = grid.index_of(x, y)
        _ny, nx = grid.shape
        ok = north & (row >= 0) & (col >= 0)
        self.ok = ok
        self.idx = np.where(ok, (row // factor) * -(-nx // factor) + col // factor, 0)
        self.shape = (lat.size, lon.size)

    def __call__(self, field: np.ndarray, fill: float) -> np.ndarray:
        v = np.where(self.ok, field.ravel()[self.idx], np.nan)
        v = v.reshape(self.shape[0], 3, self.shape[1], 3)
        with np.errstate(invalid="ignore"):
            valid = np.isfinite(v).sum(axis=(1, 3))
            out = np.nansum(v, axis=(1, 3)) / np.maximum(valid, 1)
        return np.where(valid > 0, out, fill)


def _coarse(da_: xr.DataArray, factor: int) -> xr.DataArray:
    if factor == 1:
        return da_
    return da_.coarsen(y=factor, x=factor, boundary="pad").mean()


def _smooth(field: np.ndarray, sigma_cells: float) -> np.ndarray:
    m = np.isfinite(field)
    num = gaussian_filter(np.where(m, field, 0.0), sigma_cells, mode="constant")
    den = gaussian_filter(m.astype(float), sigma_cells, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(m, num / den, np.nan)


def _config(layout: TwinLayout) -> str:
    p = layout.root / "twin.json"
    return p.read_text() if p.exists() else "{}"


def _up_to_date(path: Path, config: str) -> bool:
    if not path.exists():
        return False
    try:
        with xr.open_dataset(url(path)) as ds:
            return str(ds.attrs.get("twin_config", "")) == config
    except (OSError, ValueError):
        return False


def _write(ds: xr.Dataset, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    enc = {v: {"zlib": True, "complevel": 4, "_FillValue": np.float32(1e20)}
           for v in ds.data_vars}
    ds.to_netcdf(tmp, encoding=enc, format="NETCDF4")
    tmp.replace(path)


def _years(truth: xr.Dataset, span: tuple[int, int]) -> list[int]:
    return [int(y) for y in complete_years(truth["time"]) if span[0] <= y <= span[1]]


def _per_year(layout: TwinLayout, grid: Grid, years: list[int],
              make: Callable[[xr.Dataset, xr.Dataset | None, int], dict[str, np.ndarray]]
              ) -> dict[str, list[np.ndarray]]:
    truth = xr.open_zarr(url(layout.truth), consolidated=False)
    fire = xr.open_zarr(url(layout.fire), consolidated=False) if layout.fire.exists() else None
    acc: dict[str, list[np.ndarray]] = {}
    for yr in years:
        res = make(truth.sel(time=str(yr)), fire, yr)
        for k, v in res.items():
            acc.setdefault(k, []).append(v)
    return acc


def write_comparison_products(layout: TwinLayout) -> dict[str, Path]:
    """Write (or keep) the twin's inversion-like and CMIP6-like NetCDF products.

    Parameters
    ----------
    layout : TwinLayout
        A finished twin (``truth.zarr``, ``fire.zarr``, ``zones.zarr``, ``twin.json``).

    Returns
    -------
    dict of str to Path
        ``inversion`` (1° inversion-like file), ``cmip6`` (the ``nep`` file) and ``cmip6_gpp``.
        Keys of products outside the twin's period are omitted.
    """
    truth = xr.open_zarr(url(layout.truth), consolidated=False)
    grid = Grid.of_dataset(truth)
    factor = max(1, round(COARSE_M / grid.resolution))
    config = _config(layout)
    out: dict[str, Path] = {}
    inv_years = _years(truth, INVERSION_YEARS)
    if inv_years:
        p = layout.root / (f"GCB2022_inversion_TWIN-INV_1x1_monthly_{inv_years[0]}-"
                           f"{inv_years[-1]}.nc")
        if not _up_to_date(p, config):
            _write(_inversion(layout, grid, factor, inv_years, config), p)
        out["inversion"] = p
    cm_years = _years(truth, CMIP6_YEARS)
    if cm_years:
        tag = f"{cm_years[0]}01-{cm_years[-1]}12"
        p = layout.root / f"nep_Lmon_TWIN-ESM_historical_r1i1p1f1_gn_{tag}.nc"
        pg = layout.root / f"gpp_Lmon_TWIN-ESM_historical_r1i1p1f1_gn_{tag}.nc"
        if not (_up_to_date(p, config) and _up_to_date(pg, config)):
            nep, gpp = _cmip6(layout, grid, factor, cm_years, config)
            _write(gpp, pg)
            _write(nep, p)
        out["cmip6"] = p
        out["cmip6_gpp"] = pg
    return out


def _inversion(layout: TwinLayout, grid: Grid, factor: int, years: list[int],
               config: str) -> xr.Dataset:
    lat, lon = _lat_lon_inv()
    sampler = _Sampler(grid, factor, lat, lon)
    sigma = INVERSION_SMOOTH_M / (grid.resolution * factor)

    def make(t: xr.Dataset, fire: xr.Dataset | None, yr: int) -> dict[str, np.ndarray]:
        nee = _coarse(t["NEE"], factor).values.astype(np.float64)  # (12, cy, cx) g C m-2 month-1
        if fire is not None and yr in fire["year"].values:
            fe = _coarse(fire["fire_emissions"].sel(year=yr), factor).values.astype(np.float64)
            for m in FIRE_MONTHS:
                nee[m - 1] = nee[m - 1] + np.where(np.isfinite(nee[m - 1]), fe, 0.0) / len(
                    FIRE_MONTHS)
        days = pd.date_range(f"{yr}-01", periods=12, freq="MS").days_in_month.to_numpy()
        month = [sampler(_smooth(nee[k], sigma), 0.0) * _KG_PER_G / (days[k] * 86400.0)
                 for k in range(12)]
        return {"flux": np.stack(month).astype(np.float32)}

    acc = _per_year(layout, grid, years, make)
    time = pd.DatetimeIndex([pd.Timestamp(y, m, 15) for y in years for m in range(1, 13)])
    flux = np.concatenate(acc["flux"])
    ds = xr.Dataset(
        {"land_flux_only_fossil_cement_adjusted": (("time", "latitude", "longitude"), flux, {
            "units": "kg C m-2 s-1", "long_name": "land-atmosphere CO2 flux incl. fire "
            "(positive = source), fossil and cement removed"})},
        coords={"time": time, "latitude": ("latitude", lat, {"units": "degrees_north"}),
                "longitude": ("longitude", lon, {"units": "degrees_east"})},
        attrs={"title": "Twin inversion-like product (abz_dask digital twin)",
               "source": "truth NEE + fire, smoothed "
               f"(sigma {INVERSION_SMOOTH_M / 1e3:g} km), 1 degree",
               "Conventions": "CF-1.8", "twin_config": config})
    ds["time"].encoding.update({"units": "days since 2000-01-01", "calendar": "standard"})
    return ds


def _cmip6(layout: TwinLayout, grid: Grid, factor: int, years: list[int],
           config: str) -> tuple[xr.Dataset, xr.Dataset]:
    lat, lon = _lat_lon_cmip()
    sampler = _Sampler(grid, factor, lat, lon)

    def make(t: xr.Dataset, fire: xr.Dataset | None, yr: int) -> dict[str, np.ndarray]:
        gpp = _coarse(t["GPP"], factor).values.astype(np.float64) * CMIP6_GPP_FACTOR
        reco = _coarse(t["Reco"], factor).values.astype(np.float64) * CMIP6_RECO_FACTOR
        days = pd.date_range(f"{yr}-01", periods=12, freq="MS").days_in_month.to_numpy()
        # monthly totals -> rates with the daily rate kept (a leap February's total shrinks by
        # 28/29 in the model's own noleap calendar)
        conv = [_KG_PER_G / (days[k] * 86400.0) for k in range(12)]
        g = np.stack([sampler(gpp[k], np.nan) * conv[k] for k in range(12)])
        n = np.stack([sampler(gpp[k] - reco[k], np.nan) * conv[k] for k in range(12)])
        return {"gpp": g.astype(np.float32), "nep": n.astype(np.float32)}

    acc = _per_year(layout, grid, years, make)
    time = [cftime.DatetimeNoLeap(y, m, 15 if m != 2 else 14) for y in years
            for m in range(1, 13)]
    coords = {"time": ("time", time), "lat": ("lat", lat, {"units": "degrees_north"}),
              "lon": ("lon", lon, {"units": "degrees_east"})}
    attrs = {"source_id": "TWIN-ESM", "experiment_id": "historical", "table_id": "Lmon",
             "variant_label": "r1i1p1f1", "grid_label": "gn", "Conventions": "CF-1.7 CMIP-6.2",
             "title": "Twin CMIP6-like process model (abz_dask digital twin)",
             "bias": f"GPP x {CMIP6_GPP_FACTOR}, Reco x {CMIP6_RECO_FACTOR}",
             "twin_config": config}
    out = []
    for name, long in (("nep", "Net Carbon Mass Flux out of Atmosphere due to Net Ecosystem "
                        "Productivity on Land"), ("gpp", "Carbon Mass Flux out of Atmosphere "
                                                  "Due to Gross Primary Production on Land")):
        ds = xr.Dataset({name: (("time", "lat", "lon"), np.concatenate(acc[name]), {
            "units": "kg m-2 s-1", "long_name": long, "standard_name": long.lower().replace(
                " ", "_")})}, coords=coords, attrs={**attrs, "variable_id": name})
        ds["time"].encoding.update({"units": "days since 1850-01-01", "calendar": "noleap"})
        out.append(ds)
    return out[0], out[1]
