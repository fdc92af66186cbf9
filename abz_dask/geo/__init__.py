"""The geo core: the equal-area grid and its tiles, geodata (shorelines, borders, land cover,
climate), zone layers (domains, regions).

- :mod:`~abz_dask.geo.grid` — the North-Pole LAEA grid and its tiles;
- :mod:`~abz_dask.geo.geodata` — real geodata readers (cached);
- :mod:`~abz_dask.geo.zones` — the zone layers of a grid;
- :mod:`~abz_dask.geo.cellnoise` — deterministic per-cell noise (tile-independent).
"""
