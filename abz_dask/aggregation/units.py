"""Units and constants of every aggregated output: the Tg factor, area scales and the CF unit
strings written on budgets, per-area means and maps.

Fluxes are in g C m⁻² per month (the maps), totals in g C, budgets in Tg C (1 Tg = 10¹² g),
areas in m² and, in tables, in 10⁶ km² (= 10¹² m²).
"""

from __future__ import annotations

__all__ = [
    "BUDGET_MONTH_UNITS",
    "BUDGET_SEASON_UNITS",
    "BUDGET_UNITS",
    "FLUX_ANNUAL_UNITS",
    "FLUX_MONTH_UNITS",
    "G_PER_TG",
    "M2_PER_MKM2",
    "TG_PER_G",
]

#: Grams -> teragrams (g C -> Tg C).
TG_PER_G = 1e-12
#: Teragrams -> grams (the inverse of :data:`TG_PER_G`).
G_PER_TG = 1e12
#: Square metres per 10⁶ km² (area columns ``*_mkm2``).
M2_PER_MKM2 = 1e12

#: Annual budget (Tg C yr⁻¹).
BUDGET_UNITS = "Tg C yr-1"
#: Monthly budget (Tg C month⁻¹).
BUDGET_MONTH_UNITS = "Tg C month-1"
#: Budget of a season of one year (the sum of its months).
BUDGET_SEASON_UNITS = "Tg C"
#: Monthly flux map.
FLUX_MONTH_UNITS = "g C m-2 month-1"
#: Annual flux map or per-area mean.
FLUX_ANNUAL_UNITS = "g C m-2 yr-1"
