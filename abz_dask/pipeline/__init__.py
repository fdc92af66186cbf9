"""Orchestration: the run configuration, the stage runner, the demo's configuration and the
Dask cluster factories (local, Slurm/PBS, Kubernetes, dask-gateway) with their TLS security.

- :mod:`~abz_dask.pipeline.config` — the run configuration (pydantic, YAML);
- :mod:`~abz_dask.pipeline.runner` — the resumable stage runner behind ``abz-dask run``;
- :mod:`~abz_dask.pipeline.demo` — the demo's run configuration and budget comparison;
- :mod:`~abz_dask.pipeline.clusters`, :mod:`~abz_dask.pipeline.security` — clusters.
"""
