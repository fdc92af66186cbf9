"""abz_dask."""
