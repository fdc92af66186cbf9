"""The Table-1 domains and their weight maps (seed-spec §1, §4.8).

Budget (Tg C yr⁻¹) = Σ_pixels annual flux (g C m⁻² yr⁻¹) × pixel area (m²) × 10⁻¹²
(:data:`~abz_dask.aggregation.units.TG_PER_G`), where the pixel area is the exact equal-area
cell area × the cell's land fraction (DECISIONS 2). A period budget is the mean of the annual
budgets.

:func:`domain_weights` is the ``(domain, y, x)`` weight stack of the upscaler's in-tile domain
sums (``zone_sums``, contracted in the tile kernel) and of the area shares of the trend stage;
:func:`annual_domain_budgets` contracts a flux cube with it (the twin's ``truth_budgets.csv``,
the reference of ``budgets.csv``). Every other budget goes through
:mod:`abz_dask.aggregation.zonal` (flox).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from abz_dask.aggregation.periods import complete_years
from abz_dask.aggregation.units import TG_PER_G

__all__ = ["DOMAINS", "annual_domain_budgets", "domain_weights"]

#: The four domains of Table 1 and how each is read from the zones Dataset.
DOMAINS: dict[str, str] = {
    "abz": "abz",
    "tundra": "biome == 1",
    "boreal": "biome == 2",
    "permafrost": "permafrost",
}


def domain_weights(zones: xr.Dataset, cell_area: float,
                   domains: dict[str, str] | None = None) -> xr.DataArray:
    """Pixel area (m²) inside each domain, ``(domain, y, x)``; 0 outside.

    Parameters
    ----------
    zones : xr.Dataset
        Zone layers (``land_fraction``, ``abz``, ``biome``, ``permafrost``, ...).
    cell_area : float
        Exact area of one grid cell (m²).
    domains : dict, optional
        Domain name -> expression evaluated on ``zones`` (default :data:`DOMAINS`).
    """
    domains = domains or DOMAINS
    area = zones["land_fraction"].fillna(0) * cell_area
    masks = [zones.eval(expr).fillna(False).astype(bool) for expr in domains.values()]
    w = xr.concat([area.where(m, 0.0) for m in masks], dim="domain")
    w = w.assign_coords(domain=list(domains))
    return w.drop_vars([c for c in w.coords if c not in ("domain", "y", "x")])


def annual_domain_budgets(flux: xr.DataArray | xr.Dataset, weights: xr.DataArray
                          ) -> xr.DataArray | xr.Dataset:
    """Annual budgets (Tg C yr⁻¹) per domain from monthly fluxes (g C m⁻² month⁻¹).

    Lazy: returns a ``(year, domain)`` object backed by dask when ``flux`` is. Years with fewer
    than 12 months are dropped. Missing pixels (NaN) contribute nothing.
    """
    w = weights.astype(np.float64)

    def total(v: xr.DataArray) -> xr.DataArray:
        # product then sum (numpy's pairwise sum in a fixed dask tree), not xr.dot: BLAS dot
        # products may split the sum differently from one call to the next (multi-threaded
        # kernels), which made twin/truth_budgets.csv differ at 1e-13 between identical runs
        return (v.fillna(0.0).astype(np.float64) * w).sum(("y", "x"))

    monthly = (flux.map(total) if isinstance(flux, xr.Dataset) else total(flux)) * TG_PER_G
    annual = monthly.groupby("time.year").sum()
    return annual.sel(year=complete_years(monthly["time"]))
