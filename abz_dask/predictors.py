"""The 17 predictors of the paper (seed-spec §3.2) and how they are stored in the cube.

Every predictor has a modelling name (the column in the training table and the variable in the
predictor cube), units, a storage kind and whether it is categorical:

- ``monthly``: ``(time, y, x)`` float32 in the cube;
- ``annual``: MOD44B-like yearly layers, stored repeated per month as ``(time, y, x)``;
- ``series``: spatially constant monthly series, stored as ``(time,)`` (atmospheric CO2);
- ``static``: ``(y, x)``;
- ``calendar``: derived from the time coordinate (month), never stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "BOOTSTRAP_PREDICTORS",
    "CATEGORICAL",
    "FLUXES",
    "PREDICTORS",
    "PREDICTOR_NAMES",
    "VEG_CLASSES",
    "Predictor",
]

Kind = Literal["monthly", "annual", "series", "static", "calendar"]


@dataclass(frozen=True)
class Predictor:
    """Metadata of one predictor."""

    name: str
    long_name: str
    units: str
    kind: Kind
    categorical: bool = False


PREDICTORS: tuple[Predictor, ...] = (
    Predictor("month", "calendar month", "1", "calendar", categorical=True),
    Predictor("srad", "incident shortwave radiation", "W m-2", "monthly"),
    Predictor("vpd", "vapour pressure deficit", "kPa", "monthly"),
    Predictor("co2", "atmospheric CO2 mole fraction (Barrow-like)", "ppm", "series"),
    Predictor("vegtype", "vegetation type (ESA CCI + CAVM merged classes)", "1", "static",
              categorical=True),
    Predictor("snow_cover", "snow cover fraction", "1", "monthly"),
    Predictor("soil_temp", "soil temperature 0-7 cm", "degC", "monthly"),
    Predictor("soil_moisture", "volumetric soil water 0-7 cm", "m3 m-3", "monthly"),
    Predictor("ndvi", "normalised difference vegetation index", "1", "monthly"),
    Predictor("tair", "air temperature (2 m)", "degC", "monthly"),
    Predictor("cti", "compound topographic index", "1", "static"),
    Predictor("nontree_cover", "non-tree vegetation cover", "%", "annual"),
    Predictor("nonveg_cover", "non-vegetated cover", "%", "annual"),
    Predictor("tree_cover", "tree cover", "%", "annual"),
    Predictor("soil_ph", "soil pH 0-5 cm", "1", "static"),
    Predictor("soc", "soil organic carbon stock 0-2 m", "t ha-1", "static"),
    Predictor("permafrost_prob", "permafrost probability", "1", "static"),
)

PREDICTOR_NAMES: tuple[str, ...] = tuple(p.name for p in PREDICTORS)
CATEGORICAL: tuple[str, ...] = tuple(p.name for p in PREDICTORS if p.categorical)
#: DECISIONS 8: bootstrap models drop month and vegetation type (15 predictors).
BOOTSTRAP_PREDICTORS: tuple[str, ...] = tuple(p.name for p in PREDICTORS if not p.categorical)

#: Vegetation classes after the paper's recoding (seed-spec §3.2) with our reading of the legend.
VEG_CLASSES: dict[int, str] = {
    21: "graminoid tundra (CAVM G)",
    30: "sparse vegetation / barren",
    31: "prostrate shrub tundra (CAVM P)",
    33: "erect shrub tundra (CAVM S)",
    60: "deciduous broadleaf forest",
    70: "evergreen needleleaf forest",
    80: "deciduous needleleaf forest",
    120: "shrubland",
    160: "flooded tree cover / wetland",
}

#: Modelled fluxes, g C m-2 month-1; NEE = Reco - GPP (negative = uptake).
FLUXES: tuple[str, ...] = ("NEE", "GPP", "Reco")
