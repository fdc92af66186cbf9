"""Twin families: which planted truth and which site-network rule a twin is generated with.

Two independent families share the predictor drivers (:mod:`abz_dask.twin.drivers`) and the fire
history (:mod:`abz_dask.twin.fire`), so for the same seed their ``cube.zarr`` and ``fire.zarr``
are identical; they differ in everything a method could be tuned to:

- ``"a"`` (the default): light-use-efficiency GPP linear in absorbed light with a logistic
  temperature response; Reco = 0.47 GPP + a Q10 heterotrophic term scaled by the hidden field D
  (:mod:`abz_dask.twin.truth`); sites placed like ABCflux by key-region shares, denser to the
  south, with the real FLUXNET2015 coordinates (:func:`abz_dask.twin.sites.make_sites`).
- ``"b"``: GPP with a saturating (rectangular-hyperbola) light response, a temperature ramp and a
  Liebig minimum of soil-moisture and VPD limits; Reco with a Lloyd–Taylor soil-temperature
  response, a saturating soil-moisture modifier and a substrate term tied to GPP, scaled by its
  own hidden field H (:mod:`abz_dask.twin.truth_b`); sites clustered around towns and research
  stations, weighted by accessibility, with a fixed tundra share
  (:mod:`abz_dask.twin.sites_b`).

``hidden_driver`` switches the family's unobserved driver (a smooth field that no predictor
carries and that scales respiration: D in family a, H in family b). It is on by default in both
families, since real networks have unobserved drivers; ``False`` gives the clean twin (D = 0,
H = 1) whose respiration is a function of the predictors alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np

from abz_dask.twin.drivers import Block

__all__ = ["FAMILIES", "Family", "TwinFamily", "twin_family"]

Family = Literal["a", "b"]
FAMILIES: tuple[str, ...] = ("a", "b")

#: ``fluxes(block, static, dyn, co2, months, seed) -> {"GPP", "Reco", "NEE"}``
FluxFunction = Callable[[Block, dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray,
                         np.ndarray, int], dict[str, np.ndarray]]


@dataclass(frozen=True)
class TwinFamily:
    """A twin family and its switch of the unobserved driver.

    Parameters
    ----------
    name : {"a", "b"}
        Family.
    hidden_driver : bool
        Whether the family's hidden respiration field is planted (D in a, H in b).
    """

    name: str = "a"
    hidden_driver: bool = True

    def flux_function(self) -> FluxFunction:
        """The planted-truth function of the family (picklable, so Dask can ship it)."""
        if self.name == "a":
            from abz_dask.twin.truth import fluxes
        else:
            from abz_dask.twin.truth_b import fluxes
        return partial(fluxes, hidden=self.hidden_driver)

    def params(self) -> dict[str, Any]:
        """The family's planted parameters, as recorded in ``twin.json`` and ``truth.zarr``."""
        if self.name == "a":
            from abz_dask.twin import truth as t
            from abz_dask.twin.sites import SITE_LOG_SD

            return {"gpp": "LUE linear in APAR, logistic f(T), linear f(VPD), clipped f(theta)",
                    "reco": "0.47 GPP + Q10 Rh(SOC, Tsoil, theta) x exp(0.35 D)",
                    "epsilon": t.EPSILON, "r0": t.R0, "q10": t.Q10,
                    "ra_fraction": t.RA_FRACTION, "hidden_amplitude": t.DISEQ_AMPLITUDE,
                    "site_rule": "key-region shares, denser to the south, FLUXNET2015 sites",
                    "site_log_sd": list(SITE_LOG_SD)}
        from abz_dask.twin import sites_b, truth_b

        return {**truth_b.parameters(), "site_rule": sites_b.site_rule()}


def twin_family(family: str = "a", hidden_driver: bool | None = None) -> TwinFamily:
    """Validate a family name and its hidden-driver switch.

    Parameters
    ----------
    family : {"a", "b"}
        Family name.
    hidden_driver : bool, optional
        Plant the family's hidden respiration field (default: on).

    Raises
    ------
    ValueError
        An unknown family.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown twin family {family!r}; choose one of {list(FAMILIES)}")
    return TwinFamily(family, True if hidden_driver is None else bool(hidden_driver))
