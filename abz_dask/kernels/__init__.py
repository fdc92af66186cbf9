"""Pure numba/numpy kernels (no xarray, no dask): forest inference and zyp-exact trends."""
