"""Reader of the ABCflux v1 CSV (ORNL DAAC 1934) with validation (seed-spec §3.1, §8 item 1).

:func:`read_abcflux` turns the DAAC file (or any CSV with a column map) into the modelling table:
one row per site-month with the columns

``site_id, site_name, year, month, latitude, longitude, flux_method, flux_method_detail,
partition_method, gap_fill_perc, disturbance, disturb_year, biome, country, veg_type, n_plots``
and one column per response (``NEE, GPP, Reco`` plus any mapped extra such as ``CH4``),
in g C m⁻² month⁻¹ with GPP **positive**.

Rules, in order
---------------
1. Every cell is read as text; ``-9999`` (any numeric spelling), ``NA``, ``NaN`` and empty cells
   are missing.
2. Columns are renamed with the column map (DAAC lower-case names → modelling names, see
   :data:`DEFAULT_COLUMN_MAP`; :data:`MODELDATA_COLUMN_MAP` reads the authors' capitalised
   training table). A user map overrides the default entry of the same target; a target that is
   not a known name is read as an extra numeric response (``{"ch4": "CH4"}``).
3. Validation (every failure raises :class:`InputError` naming file, line, column and value; the
   line is the 1-based line of the file, the header being line 1): empty file, missing columns,
   non-numeric numbers, missing site/year/month/coordinates, latitude outside [−90, 90] or
   longitude outside [−180, 180], month outside 1–12 or not an integer, year outside ``years``,
   a site outside the grid or at sea (its cell and the eight neighbours without land — coarse
   coastal cells may hold a site whose own cell has no land), and conflicting duplicates
   (same site, year, month and plot with different values; identical repeats are dropped and
   counted).
4. GPP sign: if the median of the non-missing GPP values is negative (the authors' table stores
   GPP negative), the whole column is multiplied by −1.
5. Filters: flux method, gap-filled share, disturbance, snow-diffusion data.
6. Several plots (``site_reference``, e.g. ``plot1``/``plot2``) of one site-month are averaged:
   the mean of every response over the plots that report it (missing plots ignored), the mean
   coordinates and gap-filled share, the first value of the text columns, ``n_plots`` = rows
   averaged.

The returned frame's ``attrs["abcflux"]`` records the counts of each step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from abz_dask.grid import Grid

__all__ = ["DEFAULT_COLUMN_MAP", "MODELDATA_COLUMN_MAP", "InputError", "read_abcflux"]

#: DAAC v1 column → modelling name.
DEFAULT_COLUMN_MAP: dict[str, str] = {
    "study_id": "site_id",
    "site_name": "site_name",
    "site_reference": "plot",
    "meas_year": "year",
    "interval_month": "month",
    "latitude": "latitude",
    "longitude": "longitude",
    "country": "country",
    "biome": "biome",
    "veg_type": "veg_type",
    "nee": "NEE",
    "gpp": "GPP",
    "reco": "Reco",
    "flux_method": "flux_method",
    "flux_method_detail": "flux_method_detail",
    "partition_method": "partition_method",
    "gap_fill_perc": "gap_fill_perc",
    "disturbance": "disturbance",
    "disturb_year": "disturb_year",
}

#: The authors' capitalised model table (``modeldata_avg_allsites_1km.csv``, seed-spec §3.1).
MODELDATA_COLUMN_MAP: dict[str, str] = {
    "Study_ID_Short": "site_id",
    "Meas_year": "year",
    "Interval": "month",
    "Latitude": "latitude",
    "Longitude": "longitude",
    "Country": "country",
    "Biome": "biome",
    "Veg_type_Short": "veg_type",
    "NEE_gC_m2": "NEE",
    "GPP_gC_m2": "GPP",
    "Reco_gC_m2": "Reco",
    "Flux_method": "flux_method",
    "Flux_method_detail": "flux_method_detail",
    "Partition_method": "partition_method",
    "Gap_perc": "gap_fill_perc",
    "Disturbance": "disturbance",
}

_REQUIRED = ("site_id", "year", "month", "latitude", "longitude", "NEE", "GPP", "Reco")
_RESPONSES = ("NEE", "GPP", "Reco")
_TEXT = ("site_id", "site_name", "plot", "country", "biome", "veg_type", "flux_method",
         "flux_method_detail", "partition_method", "disturbance")
_NUMERIC_META = ("year", "month", "latitude", "longitude", "gap_fill_perc", "disturb_year")
_MISSING_TEXT = frozenset({"", "na", "nan", "none", "null"})
_NO_DISTURBANCE = frozenset({"no", "none", "undisturbed"})


class InputError(ValueError):
    """A problem in an input file, located by file, line, column and value.

    Parameters
    ----------
    message : str
        What is wrong.
    file : str
        The file.
    row : int, optional
        1-based line number in the file (the header is line 1).
    column : str, optional
        Column name as spelt in the file.
    value : object, optional
        The offending value.
    """

    def __init__(self, message: str, *, file: str | Path, row: int | None = None,
                 column: str | None = None, value: Any = None) -> None:
        self.file = str(file)
        self.row = row
        self.column = column
        self.value = value
        where = self.file + (f", line {row}" if row is not None else "")
        where += f", column {column!r}" if column is not None else ""
        what = f" (value {value!r})" if value is not None else ""
        super().__init__(f"{where}: {message}{what}")


def read_abcflux(path: str | Path, *, grid: Grid | None = None, zones: xr.Dataset | None = None,
                 years: tuple[int, int] | None = None, methods: Sequence[str] | None = None,
                 max_gap_fill: float | None = None, exclude_disturbed: bool = False,
                 exclude_diffusion: bool = True, column_map: Mapping[str, str] | None = None,
                 ) -> pd.DataFrame:
    """Read, validate and clean an ABCflux v1 CSV into one row per site-month.

    Parameters
    ----------
    path : path
        The CSV (comma-separated, header line, −9999 = missing).
    grid : Grid, optional
        When given, every site must fall inside the grid.
    zones : xr.Dataset, optional
        Zone layers of ``grid`` (``land_fraction``); when given with ``grid``, a site whose cell
        and eight neighbours hold no land is refused. Also supplies ``biome`` when the file has
        no biome column.
    years : (int, int), optional
        First and last year of the predictor cube; rows outside are refused.
    methods : sequence of str, optional
        Keep only these flux methods (e.g. ``("EC", "Ch")``), compared case-insensitively.
    max_gap_fill : float, optional
        Drop rows whose gap-filled share (``gap_fill_perc``, %) exceeds this; rows without a
        gap-fill value (chambers) are kept.
    exclude_disturbed : bool
        Drop rows of disturbed sites (``disturbance`` other than No/NA).
    exclude_diffusion : bool
        Drop snow-diffusion rows (flux method containing ``diff``), the default.
    column_map : mapping, optional
        File column → modelling name, overriding :data:`DEFAULT_COLUMN_MAP` entry by entry
        (same target); unknown targets are read as extra numeric responses.

    Returns
    -------
    DataFrame
        One row per site-month, sorted by site, year, month (see the module docstring).

    Raises
    ------
    InputError
        On any validation failure (see the module docstring).
    """
    path = Path(path)
    cmap = _effective_map(column_map)
    raw = _read_text(path)
    rename = {src: tgt for src, tgt in cmap.items() if src in raw.columns}
    present = set(rename.values())
    missing = [t for t in _REQUIRED if t not in present]
    if missing:
        inverse = {t: s for s, t in cmap.items()}
        cols = ", ".join(repr(inverse.get(t, t)) for t in missing)
        raise InputError(f"missing column(s) {cols} (modelling name(s) "
                         f"{', '.join(missing)}); columns present: {list(raw.columns)}",
                         file=path, column=inverse.get(missing[0], missing[0]))
    src_of = {tgt: src for src, tgt in rename.items()}
    df = raw[list(rename)].rename(columns=rename)
    line = raw["__line__"].to_numpy()
    known = set(_TEXT) | set(_NUMERIC_META) | set(_RESPONSES)
    responses = [*_RESPONSES, *sorted(t for t in present if t not in known)]
    info: dict[str, Any] = {"file": str(path), "rows_read": len(df), "responses": responses}

    out = pd.DataFrame(index=df.index)
    for col in _TEXT:
        out[col] = _text(df[col]) if col in df else pd.Series(None, index=df.index,
                                                              dtype=object)
    for col in (*_NUMERIC_META, *responses):
        out[col] = (_numbers(df[col], path, src_of[col], line) if col in df
                    else np.full(len(df), np.nan))
    _validate(out, line, path, src_of, grid, zones, years)
    out["plot"] = out["plot"].fillna("")
    out["year"] = out["year"].astype(np.int64)
    out["month"] = out["month"].astype(np.int64)
    out = _drop_duplicates(out, line, path, src_of, info)

    if "biome" not in df and zones is not None and "biome" in zones and grid is not None:
        out["biome"] = _biome_from_zones(out, grid, zones)
    out["disturbance"] = out["disturbance"].fillna("No")
    out["flux_method"] = out["flux_method"].fillna("unknown")

    gpp = out["GPP"].to_numpy()
    info["gpp_flipped"] = bool(np.isfinite(gpp).any() and np.nanmedian(gpp) < 0)
    if info["gpp_flipped"]:
        out["GPP"] = -out["GPP"]

    out = _filter(out, info, methods=methods, max_gap_fill=max_gap_fill,
                  exclude_disturbed=exclude_disturbed, exclude_diffusion=exclude_diffusion)
    res = _average_plots(out, responses)
    info["site_months"] = len(res)
    info["sites"] = int(res["site_id"].nunique())
    res.attrs["abcflux"] = info
    return res


def _effective_map(column_map: Mapping[str, str] | None) -> dict[str, str]:
    cmap = dict(DEFAULT_COLUMN_MAP)
    if column_map:
        targets = set(column_map.values())
        cmap = {s: t for s, t in cmap.items() if t not in targets}
        cmap.update(column_map)
    return cmap


def _read_text(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise InputError("file not found", file=path)
    if path.stat().st_size == 0:
        raise InputError("empty file (no header, no rows)", file=path)
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except pd.errors.EmptyDataError as e:
        raise InputError("empty file (no header, no rows)", file=path) from e
    except pd.errors.ParserError as e:
        raise InputError(f"not a readable CSV: {e}", file=path) from e
    raw.columns = [str(c).strip() for c in raw.columns]
    raw["__line__"] = np.arange(len(raw)) + 2
    blank = (raw.drop(columns="__line__").apply(lambda s: s.str.strip()) == "").all(axis=1)
    raw = raw.loc[~blank].reset_index(drop=True)
    if raw.empty:
        raise InputError("no data rows below the header", file=path, row=2)
    return raw


def _text(s: pd.Series) -> pd.Series:
    v = s.astype(str).str.strip()
    num = pd.to_numeric(v, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    miss = v.str.lower().isin(_MISSING_TEXT).to_numpy() | (num == -9999)
    return v.astype(object).where(~miss, None)


def _numbers(s: pd.Series, path: Path, column: str, line: np.ndarray) -> np.ndarray:
    v = s.astype(str).str.strip()
    blank = v.str.lower().isin(_MISSING_TEXT).to_numpy()
    num = pd.to_numeric(v.where(~blank, ""), errors="coerce").to_numpy(
        dtype=np.float64, na_value=np.nan, copy=True)
    bad = np.isnan(num) & ~blank
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"not a number ({int(bad.sum())} such value(s) in this column)",
                         file=path, row=int(line[i]), column=column, value=str(s.iloc[i]))
    num[num == -9999] = np.nan
    return num


def _first_bad(mask: np.ndarray | pd.Series, msg: str, values: Any, line: np.ndarray,
               path: Path, column: str) -> None:
    m = np.asarray(mask, dtype=bool)
    if m.any():
        i = int(np.flatnonzero(m)[0])
        vals = np.asarray(values, dtype=object)
        raise InputError(f"{msg} ({int(m.sum())} row(s))", file=path, row=int(line[i]),
                         column=column, value=vals[i])


def _validate(out: pd.DataFrame, line: np.ndarray, path: Path, src: dict[str, str],
              grid: Grid | None, zones: xr.Dataset | None,
              years: tuple[int, int] | None) -> None:
    for name in ("site_id", "year", "month", "latitude", "longitude"):
        _first_bad(out[name].isna().to_numpy(), "missing value", out[name], line, path,
                   src[name])
    lat, lon = out["latitude"].to_numpy(), out["longitude"].to_numpy()
    _first_bad((lat < -90) | (lat > 90), "latitude outside [-90, 90]", lat, line, path,
               src["latitude"])
    _first_bad((lon < -180) | (lon > 180), "longitude outside [-180, 180]", lon, line, path,
               src["longitude"])
    month = out["month"].to_numpy()
    _first_bad((month < 1) | (month > 12) | (month != np.round(month)),
               "month outside 1-12 or not an integer", month, line, path, src["month"])
    year = out["year"].to_numpy()
    _first_bad(year != np.round(year), "year is not an integer", year, line, path, src["year"])
    if years is not None:
        _first_bad((year < years[0]) | (year > years[1]),
                   f"year outside the predictor cube ({years[0]}-{years[1]})", year, line, path,
                   src["year"])
    if grid is None:
        return
    x, y = grid.project(lon, lat)
    row, col = grid.index_of(x, y)
    _first_bad(row < 0, f"site outside the {grid.name} grid (lat {grid.south}N circle)",
               [f"{a}, {b}" for a, b in zip(lat, lon, strict=True)], line, path,
               src["latitude"])
    if zones is not None and "land_fraction" in zones:
        land = np.nan_to_num(np.asarray(zones["land_fraction"].values, dtype=np.float64)) > 0
        ny, nx = land.shape
        near = np.zeros(len(row), dtype=bool)
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                rr, cc = np.clip(row + dr, 0, ny - 1), np.clip(col + dc, 0, nx - 1)
                near |= land[rr, cc]
        _first_bad(~near, "site not on land: its grid cell and the 8 neighbours hold no land",
                   [f"{a}, {b}" for a, b in zip(lat, lon, strict=True)], line, path,
                   src["latitude"])


def _drop_duplicates(out: pd.DataFrame, line: np.ndarray, path: Path, src: dict[str, str],
                     info: dict[str, Any]) -> pd.DataFrame:
    key = ["site_id", "year", "month", "plot"]
    dup = out.duplicated(key, keep=False).to_numpy()
    info["identical_duplicates_dropped"] = 0
    if not dup.any():
        return out
    sub = out.loc[dup]
    full = sub.duplicated(keep="first")
    conflicting = sub.loc[~full].duplicated(key, keep=False)
    if conflicting.any():
        idx = conflicting.index[conflicting.to_numpy()]
        first, second = int(idx[0]), int(idx[1])
        a, b = out.loc[first], out.loc[second]
        diff = next(c for c in out.columns if not _same(a[c], b[c]))
        raise InputError(
            f"conflicting duplicate site-month: site {a['site_id']!r} {a['year']}-"
            f"{a['month']:02d} plot {a['plot']!r} also on line {int(line[first])} with "
            f"{diff}={a[diff]!r}", file=path, row=int(line[second]),
            column=src.get(diff, diff), value=b[diff])
    info["identical_duplicates_dropped"] = int(full.sum())
    return out.drop(index=full.index[full.to_numpy()])


def _same(a: Any, b: Any) -> bool:
    if pd.isna(a) and pd.isna(b):
        return True
    return bool(a == b)


def _biome_from_zones(out: pd.DataFrame, grid: Grid, zones: xr.Dataset) -> pd.Series:
    x, y = grid.project(out["longitude"].to_numpy(), out["latitude"].to_numpy())
    row, col = grid.index_of(x, y)
    code = np.asarray(zones["biome"].values)[row, col]
    names = np.select([code == 1, code == 2], ["Tundra", "Boreal"], "outside_abz")
    return pd.Series(names, index=out.index, dtype="string")


def _filter(out: pd.DataFrame, info: dict[str, Any], *, methods: Sequence[str] | None,
            max_gap_fill: float | None, exclude_disturbed: bool,
            exclude_diffusion: bool) -> pd.DataFrame:
    fm = out["flux_method"].str.lower()
    rules: list[tuple[str, pd.Series]] = []
    if exclude_diffusion:
        rules.append(("dropped_diffusion", fm.str.contains("diff", na=False)))
    if methods is not None:
        keep = {m.lower() for m in methods}
        rules.append(("dropped_method", ~fm.isin(keep)))
    if max_gap_fill is not None:
        rules.append(("dropped_gap_fill", pd.Series(out["gap_fill_perc"] > max_gap_fill)))
    if exclude_disturbed:
        rules.append(("dropped_disturbed",
                      ~out["disturbance"].str.lower().isin(_NO_DISTURBANCE)))
    drop = np.zeros(len(out), dtype=bool)
    for name, mask in rules:
        m = mask.fillna(False).to_numpy(dtype=bool)
        info[name] = int(m.sum())
        drop |= m
    return out.loc[~drop]


def _average_plots(out: pd.DataFrame, responses: list[str]) -> pd.DataFrame:
    key = ["site_id", "year", "month"]
    g = out.groupby(key, sort=True, dropna=False)
    mean_cols = ["latitude", "longitude", "gap_fill_perc", *responses]
    first_cols = [c for c in out.columns if c not in (*key, *mean_cols, "plot")]
    res = g[mean_cols].mean()
    res = res.join(g[first_cols].first()).join(g.size().rename("n_plots"))
    res = res.reset_index()
    order = ["site_id", "site_name", "year", "month", "latitude", "longitude", *responses,
             "flux_method", "flux_method_detail", "partition_method", "gap_fill_perc",
             "disturbance", "disturb_year", "biome", "country", "veg_type", "n_plots"]
    res = res[order]
    return res
