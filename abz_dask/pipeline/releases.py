"""Releases of a run: tagged flux-store snapshots with the small outputs that went with them.

A run whose flux store is an Icechunk repository (``store: icechunk``) gets one commit on
``main`` per upscaling; :func:`tag_release` tags the current snapshot as a release ``NAME`` and
keeps a copy of the run's small outputs (budgets, Table 1, stage records, run configuration,
model card) in ``RUN/releases/NAME/`` with ``release.json`` (name, snapshot, time, package
version, the input identities of every stage). A later rerun of the pipeline (new sites, new
models) commits a new snapshot; earlier releases stay readable
(:func:`abz_dask.aggregation.zonal.open_flux_store` with ``version=NAME``).
:func:`release_history` lists releases and commits, :func:`diff_releases` compares the budgets
of two versions and writes their difference maps.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from typing import Any

import pandas as pd
import xarray as xr

from abz_dask import __version__
from abz_dask.io.integrity import relative
from abz_dask.io.location import as_path, url, write_atomic
from abz_dask.io.versioned import BRANCH, history, is_icechunk_repo, open_repo, tag, tags
from abz_dask.pipeline.layout import RunLayout

__all__ = ["RELEASE_FILE", "check_release", "diff_releases", "read_releases", "release_dir",
           "release_history", "tag_release"]

RELEASE_FILE = "release.json"
"""The manifest of a release (written last: its presence marks a complete release)."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_FLUXES = ("NEE", "GPP", "Reco")


def release_dir(layout: RunLayout, name: str) -> Any:
    """``RUN/releases/NAME``."""
    return layout.root / "releases" / name


def _repo(layout: RunLayout) -> Any:
    """The run's Icechunk flux store, or ValueError naming ``store: icechunk``."""
    if not as_path(layout.fluxes).name.endswith(".icechunk") or (
            as_path(layout.fluxes).exists() and not is_icechunk_repo(layout.fluxes)):
        raise ValueError(f"{layout.root}: releases need a versioned flux store (run "
                         "configuration 'store: icechunk'); this run's flux store is "
                         f"{as_path(layout.fluxes).name}")
    if not is_icechunk_repo(layout.fluxes):
        raise FileNotFoundError(f"{layout.fluxes} does not exist: run the upscaling stage "
                                "first")
    return layout.fluxes


def check_release(layout: RunLayout, name: str) -> None:
    """Refuse a release before the run: a name that is not plain, a run whose flux store is
    plain Zarr, or a release ``name`` that exists already.

    Raises
    ------
    ValueError, FileExistsError
    """
    if not _NAME.match(name):
        raise ValueError(f"release name {name!r}: use letters, digits, '.', '_' and '-' "
                         "(starting with a letter or digit)")
    with contextlib.suppress(FileNotFoundError):  # the run makes it
        _repo(layout)
    folder = release_dir(layout, name)
    if (folder / RELEASE_FILE).exists():
        raise FileExistsError(f"release {name!r} exists already ({folder}); choose another "
                              "name")


def _stage_inputs(layout: RunLayout) -> dict[str, dict[str, Any]]:
    """Stage name → ``{"key": settings hash, "inputs": identities}`` of every stage record."""
    out: dict[str, dict[str, Any]] = {}
    for stage, rec in layout.records().items():
        try:
            doc = json.loads(rec.read_text())
        except (OSError, ValueError):
            continue
        out[stage] = {"key": doc.get("key"), "inputs": doc.get("inputs", {})}
    return out


def _small_outputs(layout: RunLayout) -> list[Any]:
    """The files a release keeps a copy of (those that exist): budgets, Table 1, the trend
    and comparison tables, the report, the stage records, the configuration and the model
    card. The flux maps are the tagged snapshot; the trend maps are not kept."""
    tables = [as_path(d).glob("*.csv") for d in (layout.trends, layout.compare)
              if as_path(d).is_dir()]
    files = [layout.budgets, *layout.table1_files().values(), *layout.records().values(),
             layout.config_file, layout.card, layout.report_html,
             *(p for t in tables for p in sorted(t))]
    return [p for p in files if as_path(p).exists()]


def tag_release(layout: RunLayout, name: str) -> dict[str, Any]:
    """Tag the flux store's current ``main`` snapshot as release ``name`` and write
    ``RUN/releases/NAME/`` (copies of the small outputs and :data:`RELEASE_FILE`).

    Returns
    -------
    dict
        The release manifest.

    Raises
    ------
    ValueError
        ``name`` is not a plain name, or the run's flux store is plain Zarr.
    FileExistsError
        A release (or tag) ``name`` exists already.
    """
    check_release(layout, name)
    repo = _repo(layout)
    folder = release_dir(layout, name)
    known = tags(repo)
    tip = open_repo(repo).lookup_branch(BRANCH)
    if name in known and known[name] != tip:  # a tag not made by an interrupted tag_release
        raise FileExistsError(f"release {name!r} exists already: {url(repo)} has tag {name!r} "
                              f"(snapshot {known[name]}); choose another name")
    sid = known.get(name) or tag(repo, name, tip)
    for src in _small_outputs(layout):
        write_atomic(_mkparent(folder / relative(src, layout.root)), as_path(src).read_bytes())
    manifest = {"name": name, "snapshot": sid,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "abz_dask_version": __version__, "store": str(layout.fluxes),
                "stages": _stage_inputs(layout)}
    write_atomic(_mkparent(folder / RELEASE_FILE), json.dumps(manifest, indent=2))
    return manifest


def _mkparent(p: Any) -> Any:
    p = as_path(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def read_releases(layout: RunLayout) -> list[dict[str, Any]]:
    """The manifests of the run's complete releases, oldest first."""
    base = as_path(layout.root / "releases")
    if not base.exists():
        return []
    found = [json.loads((d / RELEASE_FILE).read_text()) for d in base.iterdir()
             if (d / RELEASE_FILE).exists()]
    return sorted(found, key=lambda m: (m["time"], m["name"]))


def _short(inputs: dict[str, Any]) -> str:
    """``name=identity[:10]`` of the data a release was made from: external files and the
    data-source stages (``twin``, ``build-cube``, whose keys are their settings)."""
    source = ("stage:twin", "stage:build-cube")
    return ", ".join(f"{k.removeprefix('stage:') if k in source else as_path(k).name}="
                     f"{str(v)[:10]}" for k, v in sorted(inputs.items())
                     if k in source or not k.startswith("stage:"))


def release_history(layout: RunLayout) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Releases (``name, time, snapshot, inputs``: the data inputs of every stage with the
    first characters of their identity) and the commits of ``main`` (``id, time, message,
    stage, config_hash, tags``), newest commit first."""
    repo = _repo(layout)
    rel = pd.DataFrame([{"name": m["name"], "time": m["time"], "snapshot": m["snapshot"],
                         "inputs": _short({k: v for s in m["stages"].values()
                                           for k, v in s["inputs"].items()})}
                        for m in read_releases(layout)],
                       columns=["name", "time", "snapshot", "inputs"])
    by_snapshot: dict[str, list[str]] = {}
    for t, sid in tags(repo).items():
        by_snapshot.setdefault(sid, []).append(t)
    com = pd.DataFrame([{"id": c["id"], "time": c["time"], "message": c["message"],
                         "stage": c["metadata"].get("stage", ""),
                         "config_hash": str(c["metadata"].get("config_hash") or "")[:12],
                         "tags": ", ".join(by_snapshot.get(c["id"], []))}
                        for c in history(repo)],
                       columns=["id", "time", "message", "stage", "config_hash", "tags"])
    return rel, com


def _period(layout: RunLayout) -> tuple[int, int]:
    """The budgets period of the run's saved configuration."""
    from abz_dask.pipeline.config import parse_config

    saved = layout.config_file
    if not saved.exists():
        raise FileNotFoundError(f"{saved} does not exist: not a run folder of abz-dask run")
    cfg = parse_config(json.loads(saved.read_text()), source=str(saved))
    return cfg.budgets.start_year, cfg.budgets.end_year


def _period_mean(ds: xr.Dataset, flux: str, start: int, end: int) -> xr.DataArray:
    """Mean over the whole years of ``start..end`` of the annual sum (g C m⁻² yr⁻¹), lazy."""
    from abz_dask.aggregation.periods import complete_years

    da = ds[flux]
    years = [y for y in complete_years(da["time"]) if start <= y <= end]
    da = da.sel(time=da["time"].dt.year.isin(years))
    return da.groupby("time.year").sum("time", skipna=False).mean("year")


def diff_releases(layout: RunLayout, a: str, b: str) -> pd.DataFrame:
    """Budget differences between versions ``a`` and ``b`` (release names or snapshot ids)
    of the run's flux store over its budgets period, written to ``RUN/diff_A_B.csv``, and the
    difference maps of the period-mean annual fluxes (B − A, g C m⁻² yr⁻¹) written lazily
    to ``RUN/diff_A_B.zarr``.

    Returns
    -------
    DataFrame
        ``domain, flux, A, B, B_minus_A, boot_sd_A, boot_sd_B`` in Tg C yr⁻¹ (the columns
        named by the versions, e.g. ``r1, r2, r2_minus_r1``), with ``start, end``.

    Raises
    ------
    ValueError
        A version that is neither a tag nor a snapshot, or a plain-Zarr run.
    """
    from abz_dask.aggregation.zonal import open_flux_store
    from abz_dask.upscale.results import budget_table

    repo = _repo(layout)
    start, end = _period(layout)
    stores = {v: open_flux_store(repo, version=v) for v in (a, b)}
    tabs = {v: budget_table(ds, start, end).set_index(["domain", "flux"]) for v, ds in
            stores.items()}
    out = pd.DataFrame({a: tabs[a]["estimate_tg_c_yr"], b: tabs[b]["estimate_tg_c_yr"]})
    out[f"{b}_minus_{a}"] = out[b] - out[a]
    out[f"boot_sd_{a}"] = tabs[a]["boot_sd_tg_c_yr"]
    out[f"boot_sd_{b}"] = tabs[b]["boot_sd_tg_c_yr"]
    out = out.reset_index().assign(start=start, end=end)
    write_atomic(layout.root / f"diff_{a}_{b}.csv", out.to_csv(index=False))
    fluxes = [f for f in _FLUXES if f in stores[a] and f in stores[b]]
    maps = xr.Dataset({f: (_period_mean(stores[b], f, start, end)
                           - _period_mean(stores[a], f, start, end)).astype("float32")
                       for f in fluxes})
    for f in fluxes:
        maps[f].attrs = {"long_name": f"period-mean annual {f}, {b} minus {a}",
                         "units": "g C m-2 yr-1", "period": f"{start}-{end}"}
    maps.attrs = {"a": a, "b": b, "abz_dask_version": __version__}
    maps.to_zarr(url(layout.root / f"diff_{a}_{b}.zarr"), mode="w", zarr_format=3,
                 consolidated=False)
    return out
