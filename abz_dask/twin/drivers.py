"""Predictor drivers of the digital twin, evaluated block by block.

Each function takes the static layers of one spatial block (from
:func:`abz_dask.geo.zones.build_zones`)
and the months to generate, and returns plain numpy arrays. The formulas are the documented
*planted* structure of the twin (see ``docs`` in :mod:`abz_dask.twin`):

- ``tair``: real ERA5 2000–2025 climatology + Arctic-amplified warming trend
  (0.04 °C yr⁻¹ at 49°N rising to ≈ 0.11 °C yr⁻¹ at the pole, centred on 2012) + interannual and
  monthly spatially correlated anomalies;
- ``srad``: daily-mean top-of-atmosphere insolation from latitude and day of year × a transmissivity
  that falls with precipitation;
- ``snow_cover`` and ``soil_temp`` from air temperature (snow insulates the soil);
- ``ndvi``: vegetation-type maximum × phenology (temperature, snow) with a greening trend, reduced
  after fire and recovering;
- ``vpd`` from saturation vapour pressure and a humidity that falls with dryness;
- ``soil_moisture`` from precipitation, wetness (CTI, wetlands) and soil freezing;
- ``co2``: a Keeling-like Barrow curve (trend + acceleration + seasonal cycle);
- ``vegtype`` from the real MODIS 2019 IGBP map recoded to the paper's classes;
- tree / non-tree / non-vegetated cover by vegetation type + noise + trend, reduced after fire;
- ``cti``, ``soil_ph``, ``soc``, ``permafrost_prob``: static fields tied to climate and cover.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from abz_dask.twin.fields import cell_noise, smooth_field

__all__ = ["Block", "co2_series", "dynamic_predictors", "static_predictors", "vegtype_from_igbp"]

DAYS = np.array([31, 28.25, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])
MIDDOY = np.cumsum(DAYS) - DAYS / 2

# IGBP class -> (boreal class, tundra class) in the paper's recoded legend (VEG_CLASSES).
_IGBP_TO_VEG = {
    0: (160, 160), 1: (70, 70), 2: (70, 70), 3: (80, 80), 4: (60, 60), 5: (70, 70),
    6: (120, 33), 7: (120, 31), 8: (70, 33), 9: (120, 33), 10: (120, 21), 11: (160, 160),
    12: (120, 21), 13: (30, 30), 14: (120, 21), 15: (30, 30), 16: (30, 31), 255: (30, 30),
}
# vegtype -> (tree %, non-tree %, NDVI max, NDVI winter, light-use efficiency scale)
VEG_PARAMS = {
    70: (55.0, 35.0, 0.80, 0.38, 1.00), 80: (40.0, 48.0, 0.78, 0.22, 1.00),
    60: (50.0, 42.0, 0.84, 0.20, 1.05), 120: (15.0, 70.0, 0.74, 0.18, 0.95),
    160: (18.0, 68.0, 0.72, 0.15, 0.90), 33: (5.0, 82.0, 0.72, 0.15, 1.25),
    31: (1.0, 62.0, 0.56, 0.12, 1.05), 21: (1.0, 86.0, 0.66, 0.12, 1.20),
    30: (0.0, 22.0, 0.30, 0.08, 0.50),
}
WARMING_CENTRE_YEAR = 2012.0


@dataclass
class Block:
    """Static inputs of one spatial block (arrays of shape ``(ny, nx)`` unless noted)."""

    x: np.ndarray  # (1, nx)
    y: np.ndarray  # (ny, 1)
    row: np.ndarray  # (ny, 1) global row index
    col: np.ndarray  # (1, nx) global column index
    lat: np.ndarray
    t2m_clim: np.ndarray  # (12, ny, nx) degC
    precip_clim: np.ndarray  # (12, ny, nx) mm/month
    igbp: np.ndarray
    elevation: np.ndarray
    biome: np.ndarray  # 0 outside, 1 tundra, 2 boreal
    domain: np.ndarray  # bool


def vegtype_from_igbp(igbp: np.ndarray, biome: np.ndarray) -> np.ndarray:
    """Recode MODIS IGBP classes to the paper's vegetation classes, split by biome."""
    out = np.full(igbp.shape, 30, np.int16)
    for code, (boreal, tundra) in _IGBP_TO_VEG.items():
        sel = igbp == code
        out[sel] = np.where(biome[sel] == 1, tundra, boreal)
    return out


def co2_series(years: np.ndarray, months: np.ndarray) -> np.ndarray:
    """Barrow-like monthly CO2 (ppm): 354 ppm in 1990, accelerating, ±7 ppm seasonal cycle."""
    t = years + (months - 0.5) / 12.0 - 1990.0
    return 354.0 + 1.55 * t + 0.0135 * t**2 + 7.0 * np.cos(2 * np.pi * (months - 4.5) / 12.0)


def static_predictors(b: Block, seed: int) -> dict[str, np.ndarray]:
    """Static predictors and helper layers of a block."""
    maat = b.t2m_clim.mean(axis=0)
    pann = b.precip_clim.sum(axis=0)
    veg = vegtype_from_igbp(b.igbp, b.biome)
    wet = (veg == 160).astype(float)
    relief = np.clip(b.elevation, 0, None)
    cti = 7.0 + 1.6 * smooth_field(seed, "cti", b.x, b.y, wavelength=(1.5e5, 8e5)) \
        - 0.0012 * relief + 2.0 * wet
    pf = 1.0 / (1.0 + np.exp((maat + 1.5) / 1.3))
    soc = 90.0 + 260.0 * pf + 320.0 * wet + 45.0 * smooth_field(seed, "soc", b.x, b.y) \
        + 40.0 * (b.biome == 1)
    conifer = np.isin(veg, (70, 80)).astype(float)
    ph = 5.3 + 0.45 * smooth_field(seed, "ph", b.x, b.y) - 0.7 * conifer + 0.35 * (b.biome == 1) \
        + 0.4 * np.tanh((250.0 - pann) / 200.0)
    return {
        "vegtype": veg.astype(np.float64),
        "cti": np.clip(cti, 2.0, 16.0),
        "soil_ph": np.clip(ph, 3.5, 8.0),
        "soc": np.clip(soc, 20.0, 1200.0),
        "permafrost_prob": pf,
        "maat": maat,
        "pann": pann,
    }


def _insolation(lat: np.ndarray, doy: float) -> np.ndarray:
    """Daily-mean top-of-atmosphere shortwave radiation (W m-2)."""
    phi = np.deg2rad(lat)
    decl = 0.409 * np.sin(2 * np.pi * doy / 365.0 - 1.39)
    ecc = 1.0 + 0.033 * np.cos(2 * np.pi * doy / 365.0)
    h0 = np.arccos(np.clip(-np.tan(phi) * np.tan(decl), -1.0, 1.0))
    return 1361.0 / np.pi * ecc * (h0 * np.sin(phi) * np.sin(decl)
                                    + np.cos(phi) * np.cos(decl) * np.sin(h0))


def dynamic_predictors(b: Block, static: dict[str, np.ndarray], years: np.ndarray,
                       months: np.ndarray, burn: dict[int, np.ndarray], seed: int
                       ) -> dict[str, np.ndarray]:
    """Monthly predictors of a block for the given months.

    Parameters
    ----------
    b : Block
        Static inputs.
    static : dict
        Output of :func:`static_predictors` for the block.
    years, months : ndarray
        Calendar year and month (1–12) of each time step.
    burn : dict
        Year -> burned fraction ``(ny, nx)`` of every fire year up to the last year generated.
    seed : int
        Twin seed.

    Returns
    -------
    dict
        Arrays of shape ``(nt, ny, nx)`` (float64).
    """
    nt = len(years)
    shape = (nt, *b.lat.shape)
    out = {k: np.empty(shape) for k in ("srad", "vpd", "snow_cover", "soil_temp", "soil_moisture",
                                         "ndvi", "tair", "nontree_cover", "nonveg_cover",
                                         "tree_cover")}
    veg = static["vegtype"].astype(np.int16)
    tree0 = np.zeros(b.lat.shape)
    nontree0 = np.zeros(b.lat.shape)
    nmax0 = np.zeros(b.lat.shape)
    nmin0 = np.zeros(b.lat.shape)
    for code, (tr, nt_, nx_, nw, _) in VEG_PARAMS.items():
        sel = veg == code
        tree0[sel], nontree0[sel], nmax0[sel], nmin0[sel] = tr, nt_, nx_, nw
    tree0 = tree0 * (1.0 + 0.25 * smooth_field(seed, "tree", b.x, b.y, wavelength=(2e5, 1e6)))
    amp = 0.04 * (1.0 + (b.lat - 49.0) / 22.0)
    wetness = 0.16 + 0.2 * np.tanh(static["pann"] / 500.0) + 0.012 * (static["cti"] - 7.0) \
        + 0.12 * (veg == 160)
    tundra = b.biome == 1
    for i in range(nt):
        yr, m = int(years[i]), int(months[i])
        frac_year = yr + (m - 0.5) / 12.0
        iav = smooth_field(seed, "tair_year", b.x, b.y, year=yr)
        mon = smooth_field(seed, "tair_month", b.x, b.y, year=yr * 12 + m)
        winter = 1.0 + 0.8 * np.cos(2 * np.pi * (m - 1) / 12.0)
        tair = (b.t2m_clim[m - 1] + amp * (frac_year - WARMING_CENTRE_YEAR)
                + 0.9 * iav + 0.9 * winter * mon)
        pr = b.precip_clim[m - 1] * np.exp(0.25 * smooth_field(seed, "pr", b.x, b.y, n_modes=12,
                                                                 year=yr * 12 + m))
        trans = 0.52 - 0.10 * np.tanh(pr / 60.0) + 0.03 * mon
        srad = _insolation(b.lat, MIDDOY[m - 1]) * trans
        snow = 1.0 / (1.0 + np.exp((tair - 0.5) / 1.6))
        snow = np.where(snow < 0.02, 0.0, snow)
        soil_temp = np.where(tair > 0, 0.85 * tair + 0.8, tair * (1.0 - 0.7 * snow) - 0.3)
        soil_temp = soil_temp - 1.2 * static["permafrost_prob"] * (tair > 0)
        # fire history: years since the last fire and its burned fraction
        bf = np.zeros(b.lat.shape)
        ysf = np.full(b.lat.shape, 99.0)
        for fy in sorted(burn):
            if fy > yr or (fy == yr and m < 7):
                continue
            hit = burn[fy] > 0
            bf = np.where(hit, burn[fy], bf)
            ysf = np.where(hit, yr - fy + (m - 7) / 12.0, ysf)
        recover = bf * np.exp(-np.clip(ysf, 0, None) / 7.0)
        green = 1.0 + 0.0045 * (frac_year - 2000.0) * np.where(tundra, 1.3, 0.7)
        phen = 1.0 / (1.0 + np.exp(-(tair - 4.0) / 2.2)) * (1.0 - snow)
        ndvi = (nmin0 + (nmax0 * green - nmin0) * phen) * (1.0 - 0.55 * recover)
        ndvi = ndvi + 0.015 * smooth_field(seed, "ndvi_noise", b.x, b.y, year=yr * 12 + m,
                                         n_modes=12)
        es = 0.6108 * np.exp(17.27 * tair / (tair + 237.3))
        rh = np.clip(0.82 - 0.18 * np.tanh((60.0 - pr) / 40.0) + 0.04 * mon, 0.35, 0.97)
        vpd = np.maximum(es * (1.0 - rh), 0.005)
        liquid = 0.35 + 0.65 / (1.0 + np.exp(-soil_temp / 0.8))
        sm = wetness * liquid * (1.0 - 0.12 * np.tanh(vpd - 0.6)) \
            + 0.02 * smooth_field(seed, "sm", b.x, b.y, year=yr * 12 + m, n_modes=12)
        tree = np.clip(tree0 * (1.0 + 0.004 * (frac_year - 2000.0)) * (1.0 - 0.9 * recover
                                                                         * (ysf < 25)), 0, 95)
        nontree = np.clip(nontree0 + 0.3 * (tree0 - tree), 0, 100 - tree)
        out["tair"][i] = tair
        out["srad"][i] = srad
        out["snow_cover"][i] = snow
        out["soil_temp"][i] = soil_temp
        out["ndvi"][i] = np.clip(ndvi, -0.1, 0.95)
        out["vpd"][i] = vpd
        out["soil_moisture"][i] = np.clip(sm, 0.03, 0.6)
        out["tree_cover"][i] = np.round(tree, 1)
        out["nontree_cover"][i] = np.round(nontree, 1)
        out["nonveg_cover"][i] = np.round(100.0 - tree - nontree, 1)
        out.setdefault("_recover", np.empty(shape))[i] = recover
    return out


def cell_indices(b: Block) -> tuple[np.ndarray, np.ndarray]:
    """Broadcast global row/column indices of a block."""
    rows, cols = np.broadcast_arrays(b.row, b.col)
    return rows, cols


def block_noise(b: Block, seed: int, name: str, year: int = 0) -> np.ndarray:
    """Cell-tied white noise for a block."""
    r, c = cell_indices(b)
    return cell_noise(seed, name, r, c, year=year)
