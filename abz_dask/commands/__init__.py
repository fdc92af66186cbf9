"""Sub-commands of ``abz-dask``, one module per stage family.

Each module defines plain typer command functions and a ``register(app)`` that adds them to the
main application (:mod:`abz_dask.cli` calls every module listed in :data:`MODULES`). Shared
helpers for commands live in :mod:`abz_dask.commands.common`.
"""

from __future__ import annotations

#: Command modules registered on the ``abz-dask`` application, in help order.
MODULES: tuple[str, ...] = (
    "abz_dask.commands.stages",
    "abz_dask.commands.run",
    "abz_dask.commands.plan",
    "abz_dask.commands.trends",
    "abz_dask.commands.build_cube",
    "abz_dask.commands.compare",
    "abz_dask.commands.report",
    "abz_dask.commands.verify",
    "abz_dask.commands.export",
    "abz_dask.commands.budgets",
    "abz_dask.commands.releases",
    "abz_dask.commands.rank_sites",
)
