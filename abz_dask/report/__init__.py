"""Figures and the self-contained HTML report of a run (seed-spec §5).

- :mod:`~abz_dask.report.maps` — polar LAEA class maps with the paper's breaks;
- :mod:`~abz_dask.report.figures` — Figs 1a,b, 2a,b,d, 3, 4 and the seasonal amplitude;
- :mod:`~abz_dask.report.build` — :func:`build_report`: Table 1, analyses, ``report.html``.
"""

from __future__ import annotations

from abz_dask.report.build import Report, build_report, compute_analyses, render_html

__all__ = ["Report", "build_report", "compute_analyses", "render_html"]
