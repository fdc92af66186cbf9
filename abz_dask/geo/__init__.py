"""The geo core: the equal-area grid and its tiles, geodata (shorelines, borders, land cover,
climate), zone layers (domains, regions) and user zone files.

- :mod:`~abz_dask.geo.grid` — the North-Pole LAEA grid and its tiles;
- :mod:`~abz_dask.geo.geodata` — real geodata readers (cached);
- :mod:`~abz_dask.geo.zones` — the zone layers of a grid;
- :mod:`~abz_dask.geo.user_zones` — zone layers from a user's shapefile / GeoPackage / raster;
- :mod:`~abz_dask.geo.cellnoise` — deterministic per-cell noise (tile-independent).
"""
