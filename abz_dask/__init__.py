"""abz_dask: distributed, out-of-core upscaling of Arctic–boreal CO2 fluxes on Dask.

Random-forest upscaling of in-situ monthly fluxes (ABCflux-style) to a circumpolar equal-area
grid, with bootstrap uncertainty, zyp-exact trends and budgets, following Virkkala et al. (2025).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
