"""Small synthetic inputs for tests, benchmarks and parity runs: a training table with a planted
signal and a predictor cube.

Sites get a random climate, vegetation type and soil; every site-month draws its dynamic
predictors from the site's seasonal cycle. The planted fluxes (g C m⁻² month⁻¹) are smooth
functions of the predictors — GPP of radiation, temperature, NDVI and vegetation type, Reco of
temperature, soil carbon and GPP — plus a site effect and noise, and NEE = Reco − GPP, so a
model that learns the predictors recovers a known share of the variance. No twin or cube needed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from abz_dask.geo.grid import Grid
from abz_dask.io.predictors import PREDICTOR_NAMES, PREDICTORS, VEG_CLASSES

__all__ = ["synthetic_cube", "synthetic_training_table"]

_VEG_GPP = {21: 0.6, 30: 0.2, 31: 0.45, 33: 0.8, 60: 1.2, 70: 1.1, 80: 1.0, 120: 0.9, 160: 1.0}


def synthetic_training_table(n_sites: int = 60, months_per_site: tuple[int, int] = (6, 40),
                             seed: int = 0, noise: float = 6.0) -> pd.DataFrame:
    """A training table shaped like :func:`abz_dask.training.extract.extract_training_table`'s
    output.

    Parameters
    ----------
    n_sites : int
        Number of sites.
    months_per_site : (int, int)
        Range of the number of site-months per site (uniform).
    seed : int
        Random seed.
    noise : float
        SD of the measurement noise (g C m⁻² month⁻¹).

    Returns
    -------
    DataFrame
        ``site_id, year, month, latitude, longitude, row, col, NEE, GPP, Reco, flux_method,
        disturbance, disturb_year, biome`` and the 17 predictors (float32).
    """
    rng = np.random.default_rng(seed)
    veg_levels = np.array(sorted(VEG_CLASSES))
    rows = []
    for s in range(n_sites):
        lat = rng.uniform(50, 75)
        tmean = 8.0 - 0.6 * (lat - 50) + rng.normal(0, 2)
        veg = int(rng.choice(veg_levels))
        soc, ph, cti = rng.gamma(4, 60), rng.uniform(4, 7.5), rng.uniform(4, 14)
        perma = float(np.clip((60 - tmean * 4 - 20) / 60, 0, 1))
        tree = float(np.clip(rng.normal(50 if veg in (60, 70, 80) else 5, 10), 0, 100))
        nontree = float(np.clip(rng.normal(60 - tree / 2, 10), 0, 100 - tree))
        site_eff = rng.normal(1.0, 0.12)
        fire = rng.uniform() < 0.1
        n = int(rng.integers(months_per_site[0], months_per_site[1] + 1))
        start = int(rng.integers(2001 * 12, 2019 * 12))
        for k in range(n):
            t = start + k
            year, month = t // 12, t % 12 + 1
            season = np.cos(2 * np.pi * (month - 7) / 12)
            tair = tmean + 14 * season + rng.normal(0, 1.5)
            srad = max(5.0, 120 + 110 * season + rng.normal(0, 10))
            snow = float(np.clip(0.5 - tair / 10, 0, 1))
            ndvi = float(np.clip(0.15 + 0.5 * (tair > 0) * (1 - snow) * _VEG_GPP[veg] / 1.2
                                 + rng.normal(0, 0.03), -0.1, 0.95))
            rows.append({
                "site_id": f"S{s:03d}", "year": year, "month": month, "latitude": lat,
                "longitude": rng.uniform(-180, 180) if k == 0 else np.nan,
                "row": s, "col": s, "flux_method": "EC" if s % 3 else "Ch",
                "disturbance": "Fire" if fire else "No",
                "disturb_year": year - 5 if fire else np.nan,
                "biome": "Tundra" if tmean < -2 else "Boreal",
                "month_": month,
                "srad": srad, "vpd": max(0.0, 0.05 * tair + rng.normal(0, 0.05)),
                "co2": 370 + 2 * (year - 2000) + 4 * season, "vegtype": veg, "snow_cover": snow,
                "soil_temp": tair * 0.8, "soil_moisture": rng.uniform(0.1, 0.5), "ndvi": ndvi,
                "tair": tair, "cti": cti, "nontree_cover": nontree,
                "nonveg_cover": 100 - tree - nontree, "tree_cover": tree, "soil_ph": ph,
                "soc": soc, "permafrost_prob": perma, "_eff": site_eff})
    df = pd.DataFrame.from_records(rows)
    df["longitude"] = df.groupby("site_id")["longitude"].transform("first")
    warm = np.clip(df["tair"], 0, None)
    gpp = (0.9 * df["srad"] * np.tanh(warm / 8) * df["ndvi"].clip(0, None)
           * df["vegtype"].map(_VEG_GPP) * df["_eff"])
    reco = (8 * np.exp(0.07 * df["tair"]) * (df["soc"] / 240) ** 0.3 + 0.45 * gpp) * df["_eff"]
    df["GPP"] = gpp + rng.normal(0, noise, len(df))
    df["Reco"] = reco + rng.normal(0, noise, len(df))
    df["NEE"] = (reco - gpp) + rng.normal(0, noise, len(df))
    df["month"] = df.pop("month_").astype(np.int64)
    dynamic = [p for p in PREDICTOR_NAMES if p != "month"]
    df[dynamic] = df[dynamic].astype(np.float32)
    front = ["site_id", "year", "month", "latitude", "longitude", "row", "col", "NEE", "GPP",
             "Reco", "flux_method", "disturbance", "disturb_year", "biome"]
    return df[front + dynamic].reset_index(drop=True)


def synthetic_cube(grid: Grid | None = None, start: str = "2015-01", periods: int = 24,
                   seed: int = 0) -> xr.Dataset:
    """A small predictor cube with every predictor of :data:`PREDICTORS` on ``grid``.

    Values are random but plausible; cells south of the grid's southern circle are NaN (as
    outside the domain of a real cube); ``vegtype`` uses the codes of
    :data:`~abz_dask.io.predictors.VEG_CLASSES`.

    Parameters
    ----------
    grid : Grid, optional
        Default: the 100-km grid.
    start : str
        First month (``YYYY-MM``).
    periods : int
        Number of months.
    seed : int
        Random seed.

    Returns
    -------
    xr.Dataset
        ``(time, y, x)`` monthly/annual variables, ``co2`` ``(time,)``, static ``(y, x)``,
        all float32.
    """
    grid = grid or Grid.from_preset("100km")
    rng = np.random.default_rng(seed)
    time = pd.date_range(start, periods=periods, freq="MS")
    ny, nx = grid.shape
    inside = np.asarray(grid.north_of_south())
    data: dict[str, Any] = {}
    for p in PREDICTORS:
        if p.kind == "calendar":
            continue
        if p.kind == "series":
            data[p.name] = ("time", (380 + rng.normal(0, 2, periods)).astype(np.float32))
            continue
        if p.name == "vegtype":
            v = rng.choice(np.array(sorted(VEG_CLASSES)), size=(ny, nx)).astype(np.float32)
        else:
            shape = (periods, ny, nx) if p.kind in ("monthly", "annual") else (ny, nx)
            v = rng.normal(0, 1, shape).astype(np.float32)
        v = np.where(inside, v, np.float32(np.nan))
        data[p.name] = (("time", "y", "x") if v.ndim == 3 else ("y", "x"), v)
    return xr.Dataset(data, coords={"time": time, **grid.coords()})
