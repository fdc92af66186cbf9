"""The planted truth: monthly GPP, Reco and NEE from documented process functions.

GPP (light-use efficiency model, g C m⁻² month⁻¹)::

    GPP = ε · LUE_veg · PAR · fAPAR(NDVI) · f(T) · f(VPD) · (1 − snow) · f(CO2) · f(θ)

with PAR = 0.45 · srad · days · 0.0864 MJ m⁻², fAPAR = clip(1.25 (NDVI − 0.12), 0, 0.95),
f(T) = logistic((T − 5) / 2.5), f(VPD) = clip(1.15 − 0.35 VPD, 0.3, 1),
f(CO2) = 1 + 0.35 ln(CO2/370),
f(θ) = clip(θ / 0.18, 0.4, 1).

Reco = autotrophic (0.47 GPP) + heterotrophic::

    Rh = r0 · (SOC / 150)^0.1 · Q10^((Tsoil − 10) / 10) · g(θ) · exp(0.35 · D(x, y))

with Q10 = 3.2 (1.4 below 0 °C, respiration under snow continues), g(θ) a moisture optimum and D a
smooth "disequilibrium" field that makes some regions sources. NEE = Reco − GPP. ε and r0 are
calibration constants chosen once (on the 100-km twin, seed 1) so that the 2001–2020 budgets
resemble Table 1 of the paper: ABZ GPP ≈ 9,950, Reco ≈ 9,400, NEE ≈ −550 Tg C yr⁻¹; tundra near
neutral, boreal a sink.
"""

from __future__ import annotations

import numpy as np

from abz_dask.twin.drivers import DAYS, VEG_PARAMS, Block
from abz_dask.twin.fields import smooth_field

__all__ = ["DISEQ_AMPLITUDE", "EPSILON", "R0", "RA_FRACTION", "diseq_factor", "fluxes"]

EPSILON = 0.90
R0 = 38.2
Q10 = 3.2
SOC_EXPONENT = 0.1
RA_FRACTION = 0.47
DISEQ_AMPLITUDE = 0.35


def diseq_factor(seed: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The hidden multiplier ``exp(0.35 · D(x, y))`` of heterotrophic respiration.

    D is a smooth zero-mean, unit-variance field (wavelengths 400–2,000 km) that no predictor
    carries, so a model can learn it only through whatever observable fields happen to correlate
    with it at the sites.

    Parameters
    ----------
    seed : int
        Twin seed.
    x, y : ndarray
        Projected coordinates (m), broadcastable.
    """
    d = smooth_field(seed, "diseq", x, y, wavelength=(4e5, 2e6))
    return np.exp(DISEQ_AMPLITUDE * d)


def fluxes(b: Block, static: dict[str, np.ndarray], dyn: dict[str, np.ndarray],
           co2: np.ndarray, months: np.ndarray, seed: int, *, hidden: bool = True
           ) -> dict[str, np.ndarray]:
    """Planted GPP, Reco and NEE (g C m⁻² month⁻¹) for a block; arrays ``(nt, ny, nx)``.

    ``hidden=False`` plants D = 0 (no hidden respiration field; :mod:`abz_dask.twin.family`).
    """
    veg = static["vegtype"].astype(np.int16)
    lue = np.full(veg.shape, 0.5)
    for code, p in VEG_PARAMS.items():
        lue[veg == code] = p[4]
    days = DAYS[months - 1][:, None, None]
    par = 0.45 * dyn["srad"] * days * 0.0864
    fapar = np.clip(1.25 * (dyn["ndvi"] - 0.12), 0.0, 0.95)
    ft = 1.0 / (1.0 + np.exp(-(dyn["tair"] - 5.0) / 2.5))
    fvpd = np.clip(1.15 - 0.35 * dyn["vpd"], 0.3, 1.0)
    fco2 = 1.0 + 0.35 * np.log(co2[:, None, None] / 370.0)
    fw = np.clip(dyn["soil_moisture"] / 0.18, 0.4, 1.0)
    gpp = EPSILON * lue * par * fapar * ft * fvpd * (1.0 - dyn["snow_cover"]) * fco2 * fw
    ts = dyn["soil_temp"]
    q = np.where(ts > 0, Q10 ** ((ts - 10.0) / 10.0), Q10 ** (-1.0) * 1.4 ** (ts / 10.0))
    theta = dyn["soil_moisture"]
    g = np.clip(1.0 - ((theta - 0.32) / 0.3) ** 2, 0.25, 1.0)
    diseq = diseq_factor(seed, b.x, b.y) if hidden else 1.0
    rh = R0 * (static["soc"] / 150.0) ** SOC_EXPONENT * q * g * diseq * days / 30.0
    reco = RA_FRACTION * gpp + rh
    return {"GPP": gpp, "Reco": reco, "NEE": reco - gpp}
