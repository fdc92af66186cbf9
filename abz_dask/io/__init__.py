"""Reading and writing: ABCflux CSV, the predictor catalogue, Zarr flux stores and their
encoding, output integrity (digests), ownership of output paths, locks and YAML files.

- :mod:`~abz_dask.io.abcflux` — the ABCflux CSV reader with plausibility checks;
- :mod:`~abz_dask.io.predictors` — the catalogue of predictor variables;
- :mod:`~abz_dask.io.store`, :mod:`~abz_dask.io.encoding` — flux stores and their encoding;
- :mod:`~abz_dask.io.integrity`, :mod:`~abz_dask.io.ownership`, :mod:`~abz_dask.io.locks` —
  output digests, what a command may replace, one writer per output;
- :mod:`~abz_dask.io.yamlfile` — YAML with errors that name the file and key.
"""
