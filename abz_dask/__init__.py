"""abz_dask: distributed, out-of-core upscaling of Arctic–boreal CO2 fluxes on Dask.

Random-forest upscaling of in-situ monthly fluxes (ABCflux-style) to a circumpolar equal-area
grid, with bootstrap uncertainty, zyp-exact trends and budgets, following Virkkala et al. (2025).
"""

__version__ = "0.1.0"

DEFAULT_SEED: int = 0
"""The one default seed of every route (twin, training, bootstrap cell sample; ``abz-dask
twin``, ``demo``, ``train``, ``run``), so the same inputs give the same budgets whichever route
runs them. It is the seed the demo and the run configurations have always used. The authors' R
code used 448, but with R's random number generator, whose draws numpy cannot reproduce, so 448
bought no parity with their numbers."""

__all__ = ["DEFAULT_SEED", "__version__"]
