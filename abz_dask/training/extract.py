"""Site extraction: the training table from site-months and the predictor cube (seed-spec §4.1).

Snapping rule (seed-spec §9 item 15, undocumented in the paper): a site takes the values of the
grid cell that contains its projected coordinates (:meth:`abz_dask.geo.grid.Grid.index_of` — the
nearest cell centre on a square grid); no interpolation. Monthly and annual predictors are read at
the site-month's ``time`` step, ``co2`` at its month, static ones at the cell; ``month`` is the
calendar month of the observation.

A row is dropped when its month is not in the cube or any predictor is missing at its cell (a site
in a cell outside the domain, or a gap in one layer). Since every flux uses the same predictors,
such rows are lost to every flux; the report counts them per flux among the rows that observed
that flux, with one column per predictor counting the rows where that predictor is missing.

Predictors of the user's own — cube variables outside the catalogue with an ``abz_kind``
attribute (:func:`abz_dask.io.predictors.cube_user_predictors`, written by ``build-cube`` for extra
entries of its ``predictors:`` section) — are extracted too, after the 17, by the same rules
(a row missing one is dropped like a row missing a catalogue predictor); the table records them
in ``attrs["user_predictors"]`` (names, kinds, units; kept by the Parquet file), from which
training resolves a profile's ``predictors.add``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import xarray as xr

from abz_dask.geo.grid import Grid
from abz_dask.io.location import Location, as_path, url, write_atomic
from abz_dask.io.predictors import (
    FLUXES,
    PREDICTOR_NAMES,
    PREDICTORS,
    cube_user_predictors,
    predictor_record,
    predictors_from_record,
)

__all__ = ["COLUMN_UNITS", "StoreError", "extract_training_table", "find_bad_chunk",
           "read_training_table", "write_training_table"]


class StoreError(ValueError):
    """A store (predictor cube, zones) that is not what it should be or cannot be read."""

#: Units written into the headers of the training table (``name [units]``).
COLUMN_UNITS: dict[str, str] = {
    "latitude": "degrees_north", "longitude": "degrees_east",
    **{f: "g C m-2 month-1" for f in FLUXES},
    "gap_fill_perc": "%",
    **{p.name: p.units for p in PREDICTORS},
}
_FLUX_UNITS = "g C m-2 month-1"
_META = ("flux_method", "partition_method", "gap_fill_perc", "disturbance", "disturb_year",
         "biome", "country", "n_plots")
_HEADER = re.compile(r"^(?P<name>.+?) \[(?P<units>[^\]]*)\]$")


def extract_training_table(obs: pd.DataFrame, cube: xr.Dataset, grid: Grid, *,
                           responses: Sequence[str] | None = None
                           ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Attach the 17 predictors to every site-month.

    Parameters
    ----------
    obs : DataFrame
        Site-months from :func:`abz_dask.io.abcflux.read_abcflux` (``site_id, year, month,
        latitude, longitude`` and the response columns).
    cube : xr.Dataset
        Predictor cube on ``grid``: monthly/annual variables ``(time, y, x)``, ``co2`` ``(time,)``,
        static ``(y, x)``; may be lazy (only the site cells are read).
    grid : Grid
        The cube's grid.
    responses : sequence of str, optional
        Response columns (default: NEE, GPP, Reco and the extras recorded by the reader).

    Returns
    -------
    table : DataFrame
        One row per kept site-month: ``site_id, year, month, latitude, longitude, row, col``,
        the responses (NaN where not observed), metadata (``flux_method, disturbance,
        disturb_year, biome, …``) and one float32 column per predictor of
        :data:`~abz_dask.io.predictors.PREDICTOR_NAMES` (``month``, an integer column, is the
        month predictor), then one per user predictor of the cube.
    report : DataFrame
        Per response: ``observed`` (rows with a value), ``outside_time``, ``missing_predictor``,
        ``kept``, ``sites_kept`` and ``na_<predictor>`` counts.
    """
    if responses is None:
        extra = obs.attrs.get("abcflux", {}).get("responses", [])
        responses = [c for c in dict.fromkeys([*FLUXES, *extra]) if c in obs]
    user = cube_user_predictors(cube)
    names = [p for p in PREDICTOR_NAMES if p != "month"] + [p.name for p in user]
    all_names = [*PREDICTOR_NAMES, *(p.name for p in user)]
    _check_variables(cube, names)
    _check_grid(cube, grid)
    x, y = grid.project(obs["longitude"].to_numpy(), obs["latitude"].to_numpy())
    row, col = grid.index_of(x, y)
    if (row < 0).any():
        i = int(np.flatnonzero(row < 0)[0])
        raise ValueError(f"site {obs['site_id'].iloc[i]!r} lies outside the {grid.name} grid")
    times = pd.DatetimeIndex(cube["time"].values)
    tkey = pd.Index(times.year * 12 + times.month - 1)
    ti = tkey.get_indexer(obs["year"].to_numpy() * 12 + obs["month"].to_numpy() - 1)
    in_time = ti >= 0

    cells, cell_of = np.unique(row * grid.shape[1] + col, return_inverse=True)
    crow = xr.DataArray(cells // grid.shape[1], dims="cell")
    ccol = xr.DataArray(cells % grid.shape[1], dims="cell")
    picked = []
    for p in names:
        v = cube[p]
        picked.append(v.isel(y=crow, x=ccol) if "y" in v.dims else v)
    try:
        (values,) = dask.compute(picked)
    except Exception as e:
        bad = find_bad_chunk(cube, names, rows=np.unique(crow.values),
                             cols=np.unique(ccol.values))
        raise bad or StoreError(f"{_source(cube)}: reading the predictors at the sites failed "
                                f"({type(e).__name__}: {e})") from e

    n = len(obs)
    tsafe = np.where(in_time, ti, 0)
    pred = {"month": obs["month"].to_numpy().astype(np.float32)}
    for p, v in zip(names, values, strict=True):
        a = np.asarray(v.values, dtype=np.float32)
        if v.dims == ("time", "cell"):
            col_v = a[tsafe, cell_of]
        elif v.dims == ("cell",):
            col_v = a[cell_of]
        elif v.dims == ("time",):
            col_v = a[tsafe]
        else:
            raise ValueError(f"cube variable {p!r} has unsupported dims {v.dims}")
        pred[p] = np.where(in_time, col_v, np.float32(np.nan)).astype(np.float32)
    X = pd.DataFrame(pred, index=obs.index)[all_names]
    na = X.isna()
    complete = in_time & ~na.any(axis=1).to_numpy()

    table = pd.DataFrame({
        "site_id": obs["site_id"].astype(str).to_numpy(),
        "year": obs["year"].astype(np.int64).to_numpy(),
        "month": obs["month"].astype(np.int64).to_numpy(),
        "latitude": obs["latitude"].to_numpy(np.float64),
        "longitude": obs["longitude"].to_numpy(np.float64),
        "row": row, "col": col,
    })
    for r in responses:
        table[r] = obs[r].to_numpy(np.float64)
    for m in _META:
        if m in obs:
            table[m] = obs[m].to_numpy()
    for p in all_names:
        if p != "month":  # the site-month's own month column (int) is the month predictor
            table[p] = X[p].to_numpy()
    observed_any = table[list(responses)].notna().any(axis=1).to_numpy()
    table = table.loc[complete & observed_any].reset_index(drop=True)

    recs = []
    for r in responses:
        has = obs[r].notna().to_numpy()
        rec: dict[str, object] = {
            "flux": r, "observed": int(has.sum()),
            "outside_time": int((has & ~in_time).sum()),
            "missing_predictor": int((has & in_time & ~complete).sum()),
            "kept": int((has & complete).sum()),
            "sites_kept": int(obs.loc[has & complete, "site_id"].nunique()),
        }
        for p in all_names:
            rec[f"na_{p}"] = int((has & in_time & na[p].to_numpy()).sum())
        recs.append(rec)
    report = pd.DataFrame.from_records(recs)
    table.attrs["responses"] = list(responses)
    if user:
        table.attrs["user_predictors"] = predictor_record(user)
    table.attrs["extract"] = {"grid": grid.name, "n_site_months": n,
                              "rule": "cell containing the site (Grid.index_of)"}
    sign = obs.attrs.get("abcflux", {}).get("gpp_sign")
    if sign:  # the reader's GPP sign decision travels with the table into the model card
        table.attrs["gpp_sign"] = sign
    return table, report


_DIMS = {"monthly": ("time", "y", "x"), "annual": ("time", "y", "x"), "static": ("y", "x"),
         "series": ("time",)}


def _source(ds: xr.Dataset | xr.DataArray) -> str:
    src = ds.encoding.get("source")
    return f"the predictor cube {src}" if src else "the predictor cube"


def _check_variables(cube: xr.Dataset, names: Sequence[str]) -> None:
    """Raise :class:`StoreError` for missing predictors or predictors of the wrong shape."""
    missing = [p for p in names if p not in cube]
    if missing:
        hint = ""
        if "land_fraction" in cube.data_vars or "biome" in cube.data_vars:
            hint = " (it holds zone layers: a zones store given as the cube?)"
        raise StoreError(f"{_source(cube)} lacks variable(s) {missing}{hint}; variables: "
                         f"{sorted(map(str, cube.data_vars))[:20]}")
    kinds = {p.name: p.kind for p in (*PREDICTORS, *cube_user_predictors(cube))}
    for p in names:
        want = _DIMS.get(kinds.get(p, ""))
        if want is not None and tuple(cube[p].dims) != want:
            raise StoreError(f"{_source(cube)}: variable {p!r} has dims {tuple(cube[p].dims)}, "
                             f"expected {want} for a {kinds[p]} predictor")


def find_bad_chunk(cube: xr.Dataset, names: Sequence[str], *, rows: np.ndarray | None = None,
                   cols: np.ndarray | None = None) -> StoreError | None:
    """The first chunk of a lazily opened store that cannot be read, as an error to raise.

    Parameters
    ----------
    cube : xr.Dataset
        Opened with dask chunks equal to the store's (``xr.open_zarr``).
    names : sequence of str
        Variables to scan.
    rows, cols : ndarray, optional
        Only chunks holding one of these rows / columns are read (default: every chunk).

    Returns
    -------
    StoreError or None
        Naming the store, the variable, the chunk index and key and the reason; None when
        every chunk reads.
    """
    import itertools

    for p in names:
        v = cube[p]
        data = v.data
        if not hasattr(data, "blocks"):
            continue
        ranges = []
        for dim, ch in zip(v.dims, data.chunks, strict=True):
            edges = np.concatenate([[0], np.cumsum(ch)])
            want = rows if dim == "y" else cols if dim == "x" else None
            idx: list[int] = list(range(len(ch)))
            if want is not None:
                idx = sorted({int(i) for i in np.searchsorted(edges, want, side="right") - 1})
            ranges.append([(i, int(edges[i]), int(edges[i + 1])) for i in idx])
        for combo in itertools.product(*ranges):
            block = tuple(c[0] for c in combo)
            try:
                data.blocks[block].compute()
            except Exception as e:
                span = ", ".join(f"{d} {a}:{b}" for d, (_, a, b) in zip(v.dims, combo,
                                                                       strict=True))
                key = "c/" + "/".join(map(str, block))
                return StoreError(f"{_source(cube)}: variable {p!r} chunk {block} ({span}; "
                                  f"file {p}/{key}) cannot be read ({type(e).__name__}: {e}); "
                                  "the chunk is damaged (truncated, or written with another "
                                  f"dtype than the store's {v.dtype}): rebuild the cube")
    return None


def _check_grid(cube: xr.Dataset, grid: Grid) -> None:
    ny, nx = grid.shape
    if cube.sizes.get("y") != ny or cube.sizes.get("x") != nx:
        raise StoreError(f"{_source(cube)} ({cube.sizes.get('y')} x {cube.sizes.get('x')}) "
                         f"is not on the {grid.name} grid ({ny} x {nx})")
    if not (np.allclose(cube["x"].values, grid.x) and np.allclose(cube["y"].values, grid.y)):
        raise StoreError(f"{_source(cube)}: x/y coordinates differ from the {grid.name} grid")


def _with_units(table: pd.DataFrame) -> pd.DataFrame:
    # extra responses (e.g. CH4) are monthly flux densities like NEE
    units = {**COLUMN_UNITS, **dict.fromkeys(table.attrs.get("responses", []), _FLUX_UNITS),
             **{p.name: p.units for p in predictors_from_record(
                 table.attrs.get("user_predictors") or [])}}
    return table.rename(columns={c: f"{c} [{units[c]}]" for c in table.columns if c in units})


def write_training_table(table: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    """Write the training table as Parquet and CSV with units in the column names.

    Headers read ``name [units]`` (e.g. ``NEE [g C m-2 month-1]``, ``srad [W m-2]``) for
    every column with units; identifiers and codes keep their bare name.

    Parameters
    ----------
    table : DataFrame
        From :func:`extract_training_table`.
    out_dir : path
        Folder (created if missing).

    Returns
    -------
    dict
        ``{"parquet": path, "csv": path}``.
    """
    out = as_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t = _with_units(table)
    t.columns = [str(c) for c in t.columns]
    paths = {"parquet": out / "training_table.parquet", "csv": out / "training_table.csv"}
    for kind, p in paths.items():
        write_atomic(p, t.to_parquet(index=False) if kind == "parquet" else t.to_csv(index=False))
    return paths


def read_training_table(path: str | Path | Location) -> pd.DataFrame:
    """Read a table written by :func:`write_training_table` (units stripped from the names).

    Parameters
    ----------
    path : path
        ``.parquet`` or ``.csv``.

    Returns
    -------
    DataFrame
        Bare column names; predictors as float32 (``month`` integer).
    """
    path = as_path(path)
    t = pd.read_parquet(url(path)) if path.suffix == ".parquet" else pd.read_csv(
        url(path), dtype={"site_id": str})
    t = t.rename(columns=lambda c: m.group("name") if (m := _HEADER.match(str(c))) else c)
    user = [p.name for p in predictors_from_record(t.attrs.get("user_predictors") or [])]
    for p in [*PREDICTOR_NAMES, *user]:
        if p in t and p != "month":
            t[p] = t[p].astype(np.float32)
    return t
