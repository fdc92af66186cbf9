"""Fire history of the digital twin: clustered annual burned fractions and emissions.

A cell burns in a year where a smooth (≈ 300–1500 km) random field exceeds a threshold that is
lower in Siberia (more fire) and higher in the tundra (less fire); the burned fraction of a
burning cell is 0.15–0.85. Over 2002–2020 this burns ≈ 7 % of the domain (area-weighted,
seed-spec §3.3). Emissions (g C m⁻² of cell per year) = burned fraction × fuel consumption
(boreal ≈ 2,300, tundra ≈ 700).
"""

from __future__ import annotations

import numpy as np

from abz_dask.twin.drivers import Block, block_noise
from abz_dask.twin.fields import smooth_field

__all__ = ["FIRE_THRESHOLD", "burned_fraction", "fire_emissions"]

FIRE_THRESHOLD = 2.55


def burned_fraction(b: Block, year: int, seed: int) -> np.ndarray:
    """Burned fraction ``(ny, nx)`` of a block in one year (0 outside the domain)."""
    f = smooth_field(seed, "fire", b.x, b.y, year=year, wavelength=(2.5e5, 1.2e6))
    lon = np.rad2deg(np.arctan2(b.x, -b.y))
    siberia = (lon > 60) | (lon < -170)
    thr = FIRE_THRESHOLD - 0.35 * siberia + 0.9 * (b.biome == 1)
    frac = 0.15 + 0.7 * block_noise(b, seed, "fire_frac", year)
    return np.where((f > thr) & b.domain & (b.biome > 0), frac, 0.0)


def fire_emissions(b: Block, bf: np.ndarray, year: int, seed: int) -> np.ndarray:
    """Fire carbon emissions (g C m⁻² of cell area) for a year's burned fraction."""
    fuel = np.where(b.biome == 1, 700.0, 2300.0)
    return bf * fuel * (0.75 + 0.5 * block_noise(b, seed, "fuel", year))
