"""The ``abz-dask`` command line (typer).

Commands create the Dask cluster (library functions never do): by default a ``LocalCluster``
sized to the machine with the scheduler and dashboard bound to 127.0.0.1.
"""

from __future__ import annotations

import importlib
import sys
import time
from typing import Annotated

import typer

from abz_dask.commands import MODULES
from abz_dask.commands.common import (
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    bounded,
    check_month,
    check_order,
    check_resolution,
    local_cluster,
)
from abz_dask.commands.common import fail as _fail
from abz_dask.pipeline.config import DEFAULT_SEED, MIN_SITES

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Upscale Arctic–boreal CO2 fluxes with random forests on Dask.")


@app.command()
def twin(
    out: Annotated[str, typer.Option(help="Output folder of the twin (a path or a URL)")],
    resolution: Annotated[str, typer.Option(help="Grid preset: 1km, 8km, 25km, 50km, 100km")]
    = "50km",
    start: Annotated[str, typer.Option(help="First month YYYY-MM")] = "1990-01",
    end: Annotated[str, typer.Option(help="Last month YYYY-MM")] = "2020-12",
    seed: Annotated[int, typer.Option(help="Random seed (>= 0)", callback=NON_NEGATIVE)]
    = DEFAULT_SEED,
    n_sites: Annotated[int, typer.Option(help=f"Number of flux sites (>= {MIN_SITES})",
                                         callback=bounded(MIN_SITES))] = 200,
    workers: Annotated[int | None, typer.Option(help="Local worker processes (>= 1)",
                                                callback=POSITIVE)] = None,
    family: Annotated[str, typer.Option(
        help="Twin family: a (default) or b (other GPP/Reco forms and site rule)")] = "a",
    hidden_driver: Annotated[bool | None, typer.Option(
        "--hidden-driver/--no-hidden-driver",
        help="Plant the family's unobserved respiration driver (default: on)")] = None,
) -> None:
    """Generate a digital twin: predictor cube, planted truth, fire, sites (ABCflux CSV)."""
    from abz_dask.twin import generate_twin

    check_resolution(resolution)
    check_month("--start", start)
    check_month("--end", end)
    if not start.endswith("-01"):
        _fail(f"--start {start!r}: the twin is built in whole years, so it starts in January")
    check_order("--start", start, "--end", end)
    t0 = time.perf_counter()
    try:
        with local_cluster(workers):
            layout = generate_twin(out, resolution=resolution, start=start, end=end, seed=seed,
                                   n_sites=n_sites, family=family, hidden_driver=hidden_driver)
    except (ValueError, FileExistsError) as e:
        _fail(str(e))
    typer.echo(f"twin written to {layout.root} in {time.perf_counter() - t0:.1f} s")


@app.command()
def demo(
    out: Annotated[str, typer.Option(help="Run folder (a path or a URL)")] = "demo-out",
    resolution: Annotated[str, typer.Option(help="Twin grid preset")] = "50km",
    seed: Annotated[int, typer.Option(help="Random seed (>= 0)", callback=NON_NEGATIVE)]
    = DEFAULT_SEED,
    profile: Annotated[str, typer.Option(help="Training profile: light or paper")] = "light",
    bootstrap_sample: Annotated[float, typer.Option(
        help="Fraction of cells for bootstrap replicates, in (0, 1] (1 = exact)",
        callback=FRACTION)] = 1.0,
    workers: Annotated[int | None, typer.Option(help="Local worker processes (>= 1)",
                                                callback=POSITIVE)] = None,
) -> None:
    """Digital twin end to end; prints estimated vs true budgets and writes budgets.csv."""
    from abz_dask.pipeline.demo import run_demo
    from abz_dask.training import resolve_profile
    from abz_dask.upscale.results import projection_line

    check_resolution(resolution)
    try:
        resolve_profile(profile)  # refused before the twin is made, not after
    except ValueError as e:
        _fail(f"--profile: {e}")
    t0 = time.perf_counter()
    try:
        with local_cluster(workers):
            res = run_demo(out, resolution=resolution, seed=seed, profile=profile,
                           bootstrap_sample=bootstrap_sample, echo=typer.echo)
    except (ValueError, FileExistsError, FileNotFoundError, RuntimeError) as e:
        _fail(str(e))
    wall = time.perf_counter() - t0
    _print_budgets(res.budgets)
    typer.echo(f"\nbudgets written to {res.out / 'budgets.csv'}")
    typer.echo("stage times: " + ", ".join(f"{k} {v:.1f}" for k, v in res.timings.items())
               + f"; total {wall:.1f} s")
    typer.echo(projection_line(res.projection, 3, bootstrap_sample))


NEAR_ZERO_TG_C_YR = 10.0
"""Below this |truth| (Tg C yr⁻¹) a relative error says nothing and is not printed."""


def _print_budgets(tab: object) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="Budgets 2001–2020, Tg C yr⁻¹ (estimate vs planted truth)",
              caption=f"rel. error = error / |truth|; '—' where |truth| < {NEAR_ZERO_TG_C_YR:g}")
    for c in ("domain", "flux", "estimate", "± boot SD", "truth", "error", "rel. error"):
        t.add_column(c, justify="right" if c not in ("domain", "flux") else "left")
    for r in tab.itertuples():  # type: ignore[attr-defined]
        rel = "—" if abs(r.truth_tg_c_yr) < NEAR_ZERO_TG_C_YR else f"{100 * r.rel_error:+.1f} %"
        t.add_row(r.domain, r.flux, f"{r.estimate_tg_c_yr:,.0f}",
                  "" if r.boot_sd_tg_c_yr != r.boot_sd_tg_c_yr else f"{r.boot_sd_tg_c_yr:,.0f}",
                  f"{r.truth_tg_c_yr:,.0f}", f"{r.error_tg_c_yr:+,.0f}", rel)
    Console(file=sys.stdout).print(t)


for _name in MODULES:
    importlib.import_module(_name).register(app)


_STORAGE_LIBS = ("botocore", "aiobotocore", "s3fs", "gcsfs", "adlfs", "icechunk", "obstore")


def _storage_error(exc: BaseException) -> BaseException | None:
    """The object-store client error behind ``exc`` (it or a cause), if any."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if type(e).__module__.split(".")[0] in _STORAGE_LIBS:
            return e
        e = e.__cause__ or e.__context__
    return None


def main() -> None:
    """Entry point: the application, with object-store client errors (no credentials, access
    denied, endpoint unreachable) as one line naming what to set instead of a traceback."""
    from abz_dask.io.location import redact

    try:
        app()
    except Exception as exc:
        err = _storage_error(exc)
        if err is None:
            raise
        typer.secho(f"error: object storage: {type(err).__name__}: {redact(str(err))}. "
                    "Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or "
                    "AWS_PROFILE), the region from AWS_DEFAULT_REGION and an S3-compatible "
                    "endpoint from AWS_ENDPOINT_URL (gs:// and az:// from their own variables)",
                    fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
