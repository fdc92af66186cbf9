"""Helpers shared by the ``abz-dask`` commands: the local cluster, option checks and error exits.

An option value out of range is an error, never replaced or ignored. Static ranges are option
callbacks made by :func:`bounded` (click then reports ``Invalid value for '--tile': 0 (must be
>= 8)``, usage exit code 2; typer's own ``min=``/``max=`` messages omit the value). Checks that
depend on other options or on data exit through :func:`fail` with a message naming the
option(s) and the value(s).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

if TYPE_CHECKING:
    from abz_dask.pipeline.config import RunConfig, SecuritySection
    from abz_dask.pipeline.layout import RunLayout
    from abz_dask.pipeline.runner import RunResult

__all__ = ["FRACTION", "NON_NEGATIVE", "POSITIVE", "bounded", "check_month", "check_order",
           "check_resolution", "check_workers", "check_year", "fail", "local_cluster",
           "run_stages", "stage_config"]

_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")

def fail(msg: str, code: int = 2) -> NoReturn:
    """Print ``error: msg`` in red on stderr and exit with ``code``."""
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def bounded(low: float | None = None, high: float | None = None, *, low_open: bool = False,
            high_open: bool = False) -> Callable[[Any], Any]:
    """A typer option callback refusing values outside ``low..high`` (``None`` passes).

    Parameters
    ----------
    low, high : float, optional
        Bounds (``None``: unbounded on that side).
    low_open, high_open : bool
        Exclude the bound itself.

    Returns
    -------
    callable
        ``callback=`` of :func:`typer.Option`; raises :class:`typer.BadParameter`, which click
        reports as ``Invalid value for '--OPTION': VALUE (must be ...)`` with exit code 2.
    """
    lo_op, hi_op = ("<" if low_open else "<="), ("<" if high_open else "<=")
    if low is not None and high is not None:
        rule = f"{low:g} {lo_op} x {hi_op} {high:g}"
    elif low is not None:
        rule = f"x {'>' if low_open else '>='} {low:g}"
    else:
        rule = f"x {hi_op} {high:g}"

    def check(value: Any) -> Any:
        for v in value if isinstance(value, list | tuple) else [value]:
            if v is None:
                continue
            if (low is not None and (v < low or (low_open and v == low))) or \
                    (high is not None and (v > high or (high_open and v == high))):
                raise typer.BadParameter(f"{v:g} (must be {rule})")
        return value

    return check


#: Callbacks of the common ranges.
POSITIVE = bounded(1)
NON_NEGATIVE = bounded(0)
FRACTION = bounded(0.0, 1.0, low_open=True)


def check_workers(workers: int | None, option: str = "--workers") -> None:
    """Exit with an error unless ``workers`` is ``None`` (one per core) or at least 1."""
    if workers is not None and workers < 1:
        fail(f"{option} {workers}: needs at least 1 worker process")


def check_month(option: str, value: str | None) -> None:
    """Exit with an error unless ``value`` is ``None`` or a month ``YYYY-MM``."""
    if value is not None and not _MONTH.match(value):
        fail(f"{option} {value!r}: not a month YYYY-MM")


def check_year(option: str, value: int | None) -> None:
    """Exit with an error unless ``value`` is ``None`` or within
    :data:`abz_dask.pipeline.config.YEAR_RANGE`."""
    from abz_dask.pipeline.config import YEAR_RANGE

    if value is not None and not YEAR_RANGE[0] <= value <= YEAR_RANGE[1]:
        fail(f"{option} {value}: not a year in {YEAR_RANGE[0]}..{YEAR_RANGE[1]}")


def check_order(first_option: str, first: object, last_option: str, last: object) -> None:
    """Exit with an error when ``first`` comes after ``last`` (years or ``YYYY-MM`` months;
    ``None`` = open end)."""
    if first is not None and last is not None and first > last:  # type: ignore[operator]
        fail(f"{first_option} {first} is after {last_option} {last}")


def check_resolution(resolution: str, option: str = "--resolution") -> None:
    """Exit with an error unless ``resolution`` is a preset of :data:`abz_dask.geo.grid.PRESETS`
    or a window of one."""
    from abz_dask.geo.grid import PRESETS, Grid

    if resolution not in PRESETS:
        try:  # a window of a preset, "1km[4000:4512,4100:4612]"
            Grid.from_preset(resolution)
        except ValueError:
            fail(f"{option} {resolution!r}: unknown grid preset; choose one of "
                 f"{', '.join(PRESETS)} or a window such as '1km[4000:4512,4100:4612]'")


@contextlib.contextmanager
def local_cluster(workers: int | None, threads: int = 1, *,
                  security: SecuritySection | None = None) -> Iterator[object]:
    """A LocalCluster + Client bound to 127.0.0.1 (dashboard at 127.0.0.1:8787 or the next free
    port), closed on exit.

    Parameters
    ----------
    workers : int, optional
        Worker processes (at least 1; default one per core, at most 8).
    threads : int
        Threads per worker (at least 1).
    security : SecuritySection, optional
        TLS (``SecuritySection(tls=True)`` or certificate files, as ``cluster.security`` of a
        run configuration; :mod:`abz_dask.pipeline.security`). Default: plain TCP on 127.0.0.1,
        which
        every local user can connect to. With TLS the scheduler and workers listen on
        ``tls://127.0.0.1`` and accept only clients holding a certificate of the CA (the
        yielded client has it); the dashboard stays plain HTTP on 127.0.0.1.

    Notes
    -----
    The one local-cluster factory is :func:`abz_dask.pipeline.clusters.open_cluster` (kind
    ``local``);
    this is it with the CLI's checks. It closes quietly (:func:`abz_dask.pipeline.clusters.local`).
    """
    from abz_dask.pipeline.clusters import open_cluster
    from abz_dask.pipeline.config import ClusterSection

    check_workers(workers)
    if threads < 1:
        fail(f"threads per worker {threads}: needs at least 1")
    spec = ClusterSection(kind="local", workers=workers, threads_per_worker=threads)
    if security is not None:
        spec = spec.model_copy(update={"security": security})
    with open_cluster(spec) as session:
        yield session.client


def stage_config(run: str | Path, sections: dict[str, Any], *, files_input: bool = True,
                 **paths: Path | str | None) -> tuple[RunConfig, RunLayout]:
    """The run configuration and layout of a per-stage command on run folder ``run``.

    The input section is the one saved in the run (:func:`abz_dask.pipeline.layout.saved_input`:
    its ``run_config.json`` or its twin's ``twin.json``); ``sections`` are the command's settings
    (``training``, ``upscale``, ``budgets``, ``trends``, ``compare``, ``report``). Paths given
    on the command line replace the layout's (``fluxes``, ``models``, ``fire``, ``truth``,
    ``report_html``, ``trends``, ...); with ``files_input``, a given ``cube``, ``zones`` or
    ``abcflux`` — or a folder with no saved input — makes the input a ``files`` input of the
    layout's paths (the reader options of a saved real input are kept); otherwise the saved
    input stays and only the layout's paths change.

    Exits with an error naming the key when the configuration is invalid.
    """
    from abz_dask.io.location import as_path, is_url
    from abz_dask.pipeline.config import BuildInput, ConfigError, FilesInput, parse_config
    from abz_dask.pipeline.layout import RunLayout, saved_input, saved_store

    run = as_path(run) if is_url(run) else as_path(run).absolute()
    try:
        inp = saved_input(run)
    except ValueError as e:
        fail(str(e))
    layout = (RunLayout.from_input(run, inp, saved_store(run)) if inp is not None
              else RunLayout.from_run(run))
    given = {k: v for k, v in paths.items() if v is not None}
    layout = layout.with_paths(**given)
    if inp is None or (files_input and given.keys() & {"cube", "zones", "abcflux"}):
        options = (inp.model_dump(mode="json", include={
            "methods", "max_gap_fill", "exclude_disturbed", "gpp_sign", "truth_budgets"})
            if isinstance(inp, FilesInput | BuildInput) else {})
        layout = layout.as_files()
        data: dict[str, Any] = {**options, "kind": "files", "cube": str(layout.cube),
                                "zones": str(layout.zones), "abcflux": str(layout.abcflux)}
    else:
        data = inp.model_dump(mode="json")
    try:
        cfg = parse_config({"output": str(run), "input": data, **sections},
                           source=f"settings of the command on {run}")
    except ConfigError as e:
        fail(str(e))
    return cfg, layout


def run_stages(config: RunConfig, only: tuple[str, ...], layout: RunLayout,
               scheduler: contextlib.AbstractContextManager[object]) -> RunResult:
    """Run the stages ``only`` of ``config`` with the stage runner (:func:`run_pipeline` with
    ``only=``) inside ``scheduler`` (the command's local cluster, or a null context for dask's
    threaded scheduler), printing the runner's line per stage.

    Raises
    ------
    ValueError, FileNotFoundError, FileExistsError, RuntimeError
        From the stages (the commands turn them into an error exit).
    """
    from abz_dask.pipeline.runner import run_pipeline

    with scheduler:
        return run_pipeline(config, only=only, layout=layout, echo=typer.echo)
