"""The planted truth of twin family b: other functional forms than family a's.

GPP (g C m⁻² month⁻¹), a light-use-efficiency model with a saturating light response::

    GPP = days · P(APAR) · f_T(T) · min(f_θ(θ), f_D(VPD)) · (1 − snow) · f_C(CO2)

- APAR = fAPAR · 0.45 · srad · 0.0864 (MJ m⁻² d⁻¹), fAPAR = clip((NDVI − 0.10) / 0.75, 0, 1);
- P = α · APAR · Pmax_v / (α · APAR + Pmax_v) (rectangular hyperbola, g C m⁻² d⁻¹), α = ALPHA,
  Pmax_v by vegetation type (:data:`PMAX`);
- f_T = clip((T − T_MIN) / (T_OPT − T_MIN), 0, 1) with air temperature T (°C);
- f_θ = clip((θ − 0.06) / (0.22 − 0.06), 0, 1) (soil moisture), f_D = exp(−0.55 · max(VPD − 0.4,
  0)) (kPa): the stronger of the two water limits applies (Liebig minimum);
- f_C = [(C − 40) / (C + 80)] / [(370 − 40) / (370 + 80)] (a Michaelis–Menten-like CO2 response,
  1 at 370 ppm).

Reco (g C m⁻² month⁻¹), Lloyd–Taylor with a substrate term tied to GPP (after Migliavacca et al.
2011)::

    Reco = H(x, y) · LT(Ts) · g(θ) · [R_REF · (SOC / 150)^0.3 · days / 30 + K_SUB · GPP]

- LT(Ts) = exp(E0 · (1 / (283.15 − T0) − 1 / (Ts + 273.15 − T0))), E0 = 308.56 K, T0 = 227.13 K,
  soil temperature Ts (°C) floored at −40 °C;
- g(θ) = [θ / (θ + 0.08)] / [0.3 / (0.3 + 0.08)] (saturating, 1 at θ = 0.3);
- H = exp(A · S(x, y) − A² / 2), S a smooth zero-mean, unit-variance field (wavelengths
  300–1,500 km, name ``"hidden_b"``) that no predictor carries, A = HIDDEN_AMPLITUDE; H ≡ 1 when
  the hidden driver is off. The −A²/2 keeps the mean of H near one, so switching the driver off
  changes Reco locally (H spans ≈ 0.3–2.9) but its ABZ budget by only ≈ 1 %.

NEE = Reco − GPP. ALPHA and R_REF were calibrated once on the 100-km twin (seed 0, 2001–2020)
so that the ABZ budgets are of the paper's order but not family a's: GPP ≈ 11,100, Reco ≈ 10,600,
NEE ≈ −510 Tg C yr⁻¹ (tundra a source of ≈ +170), with a planted ABZ NEE trend of ≈ −14 Tg C yr⁻²
(family a on the same grid and years: GPP ≈ 10,100, NEE ≈ −640, trend ≈ −33).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from abz_dask.twin.drivers import DAYS, Block
from abz_dask.twin.fields import smooth_field

__all__ = ["ALPHA", "HIDDEN_AMPLITUDE", "PMAX", "R_REF", "fluxes", "hidden_factor",
           "parameters"]

ALPHA = 3.5
#: Light-saturated GPP (g C m⁻² d⁻¹) by vegetation type (the paper's recoded classes).
PMAX = {70: 9.0, 80: 8.0, 60: 11.0, 120: 8.5, 160: 7.0, 33: 9.5, 31: 6.0, 21: 8.0, 30: 3.0}
PMAX_OTHER = 5.0
T_MIN, T_OPT = -3.0, 16.0
THETA_WILT, THETA_CRIT = 0.06, 0.22
VPD_0, VPD_K = 0.4, 0.55
CO2_GAMMA = 40.0
R_REF = 56.0
SOC_EXPONENT = 0.3
K_SUB = 0.29
E0, T_REF, T0 = 308.56, 283.15, 227.13
THETA_K = 0.08
HIDDEN_AMPLITUDE = 0.30
HIDDEN_WAVELENGTH = (3e5, 1.5e6)


def hidden_factor(seed: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The hidden multiplier ``H = exp(A · S − A²/2)`` of family b's Reco.

    Parameters
    ----------
    seed : int
        Twin seed.
    x, y : ndarray
        Projected coordinates (m), broadcastable.
    """
    s = smooth_field(seed, "hidden_b", x, y, wavelength=HIDDEN_WAVELENGTH)
    return np.exp(HIDDEN_AMPLITUDE * s - HIDDEN_AMPLITUDE ** 2 / 2.0)


def _pmax(veg: np.ndarray) -> np.ndarray:
    out = np.full(veg.shape, PMAX_OTHER)
    for code, p in PMAX.items():
        out[veg == code] = p
    return out


def fluxes(b: Block, static: dict[str, np.ndarray], dyn: dict[str, np.ndarray],
           co2: np.ndarray, months: np.ndarray, seed: int, *, hidden: bool = True
           ) -> dict[str, np.ndarray]:
    """Planted GPP, Reco and NEE of family b (g C m⁻² month⁻¹); arrays ``(nt, ny, nx)``.

    Parameters
    ----------
    b : Block
        Static inputs of the block.
    static, dyn : dict
        Static and monthly predictors of the block (:mod:`abz_dask.twin.drivers`).
    co2 : ndarray
        CO2 (ppm) of each month.
    months : ndarray
        Calendar month (1–12) of each time step.
    seed : int
        Twin seed.
    hidden : bool
        Plant the hidden field H (else H = 1).
    """
    days = DAYS[months - 1][:, None, None]
    apar = np.clip((dyn["ndvi"] - 0.10) / 0.75, 0.0, 1.0) * 0.45 * dyn["srad"] * 0.0864
    pmax = _pmax(static["vegtype"].astype(np.int16))
    light = ALPHA * apar * pmax / (ALPHA * apar + pmax)
    f_t = np.clip((dyn["tair"] - T_MIN) / (T_OPT - T_MIN), 0.0, 1.0)
    f_theta = np.clip((dyn["soil_moisture"] - THETA_WILT) / (THETA_CRIT - THETA_WILT), 0.0, 1.0)
    f_vpd = np.exp(-VPD_K * np.maximum(dyn["vpd"] - VPD_0, 0.0))
    c = co2[:, None, None]
    f_co2 = ((c - CO2_GAMMA) / (c + 2 * CO2_GAMMA)) / ((370.0 - CO2_GAMMA)
                                                       / (370.0 + 2 * CO2_GAMMA))
    gpp = days * light * f_t * np.minimum(f_theta, f_vpd) * (1.0 - dyn["snow_cover"]) * f_co2
    ts = np.maximum(dyn["soil_temp"], -40.0)
    lt = np.exp(E0 * (1.0 / (T_REF - T0) - 1.0 / (ts + 273.15 - T0)))
    theta = dyn["soil_moisture"]
    g = (theta / (theta + THETA_K)) / (0.3 / (0.3 + THETA_K))
    base = R_REF * (static["soc"] / 150.0) ** SOC_EXPONENT * days / 30.0
    h = hidden_factor(seed, b.x, b.y) if hidden else 1.0
    reco = h * lt * g * (base + K_SUB * gpp)
    return {"GPP": gpp, "Reco": reco, "NEE": reco - gpp}


def parameters() -> dict[str, Any]:
    """Family b's planted parameters (recorded in ``twin.json`` and ``truth.zarr``)."""
    return {"gpp": "days * alpha*APAR*Pmax/(alpha*APAR+Pmax) * ramp f(T) * min(f(theta), f(VPD))"
                   " * (1 - snow) * f(CO2)",
            "reco": "H * LloydTaylor(Tsoil) * g(theta) * (R_ref (SOC/150)^0.3 days/30"
                    " + k_sub GPP)",
            "alpha": ALPHA, "pmax": {str(k): v for k, v in PMAX.items()},
            "pmax_other": PMAX_OTHER, "t_min": T_MIN, "t_opt": T_OPT,
            "theta_wilt": THETA_WILT, "theta_crit": THETA_CRIT, "vpd_0": VPD_0, "vpd_k": VPD_K,
            "co2_gamma": CO2_GAMMA, "r_ref": R_REF, "soc_exponent": SOC_EXPONENT,
            "k_sub": K_SUB, "e0": E0, "t_ref": T_REF, "t0": T0, "theta_k": THETA_K,
            "hidden_amplitude": HIDDEN_AMPLITUDE, "hidden_wavelength": list(HIDDEN_WAVELENGTH)}
