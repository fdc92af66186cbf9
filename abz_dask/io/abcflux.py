"""Reader of the ABCflux v1 CSV (ORNL DAAC 1934) with validation (seed-spec §3.1, §8 item 1).

:func:`read_abcflux` turns the DAAC file (or any CSV with a column map) into the modelling table:
one row per site-month with the columns

``site_id, site_name, year, month, latitude, longitude, flux_method, flux_method_detail,
partition_method, gap_fill_perc, disturbance, disturb_year, biome, country, veg_type, n_plots``
and one column per response (``NEE, GPP, Reco`` plus any mapped extra such as ``CH4``),
in g C m⁻² month⁻¹ with GPP **positive**.

Rules, in order
---------------
Every failure raises :class:`InputError` naming the file, the line (1-based line of the file as a
text editor shows it, the header being line 1), the column as spelt in the file and the value as
written; where several rows are wrong, the first few (:attr:`FluxChecks.max_reported`) are listed,
with the count of each kind of problem.

1. The file: a folder, a missing or empty file, a binary file (NUL bytes, a ZIP/xlsx, gzip or
   parquet signature), UTF-16 or text that does not decode with ``encoding`` (UTF-8 by default, a
   byte-order mark is accepted) are refused; so is a header that repeats a column name (pandas
   would silently rename the second copy to ``name.1``).
2. Every cell is read as text; ``-9999`` (any numeric spelling), ``NA``, ``none``, ``null`` and
   empty cells are missing. In the numeric columns that are read, ``inf``, ``1e400`` (beyond the
   float range) and a literal ``nan`` are refused as non-finite (``nan`` is read as missing only
   with ``FluxChecks(nan_is_missing=True)``); text columns read ``nan`` as missing.
3. Columns are renamed with the column map (DAAC lower-case names → modelling names, see
   :data:`DEFAULT_COLUMN_MAP`; :data:`MODELDATA_COLUMN_MAP` reads the authors' capitalised
   training table). A user map overrides the default entry of the same target; a target that is
   not a known name is read as an extra numeric response (``{"ch4": "CH4"}``).
4. Row validation: missing columns, non-numeric numbers, missing site/year/month/coordinates,
   latitude outside [−90, 90] or longitude outside [−180, 180], month outside 1–12 or not an
   integer, year outside ``years``, a site outside the grid or at sea (its cell and the eight
   neighbours without land — coarse coastal cells may hold a site whose own cell has no land),
   and conflicting duplicates (same site, year, month and plot with different values; identical
   repeats are dropped and counted).
5. GPP sign (option ``gpp_sign``). ``"negative"`` / ``"positive"`` declare how the file stores
   GPP (negative: the whole column is multiplied by −1). ``"auto"`` (the default) decides per
   site: a site votes "negative" or "positive" by the majority sign of its GPP values with
   ``|GPP| ≥ FluxChecks.gpp_sign_min`` (30 g C m⁻² month⁻¹: winter values near zero carry no
   sign information); sites that disagree are an error naming them; with no voting site the
   median of all GPP values decides (the earlier rule). ABCflux stores GPP negative. The decision
   is logged (``logging``, INFO) and returned in ``attrs["abcflux"]["gpp_sign"]``.
6. Plausibility of every row read (before the filters, with GPP already positive), see
   :class:`FluxChecks`: each response inside its range (defaults in :data:`DEFAULT_FLUX_RANGES`),
   ``gap_fill_perc`` within 0–100 %, and, where NEE, GPP and Reco are all present in a row,
   ``|NEE − (Reco − GPP)| ≤ max(nee_balance_abs, nee_balance_rel · max(|GPP|, |Reco|))``.
   When most values of a response are out of range the message suggests a unit error (mg
   instead of g C, ×1000).
7. Filters: flux method, gap-filled share, disturbance, snow-diffusion data.
8. Several plots (``site_reference``, e.g. ``plot1``/``plot2``) of one site-month are averaged:
   the mean of every response over the plots that report it (missing plots ignored), the mean
   coordinates and gap-filled share, the first value of the text columns, ``n_plots`` = rows
   averaged.

The returned frame's ``attrs["abcflux"]`` records the counts of each step, the GPP sign decision
(``gpp_sign``, ``gpp_flipped``) and the checks applied (``checks``).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr
from pydantic import BaseModel, ConfigDict, Field, field_validator

from abz_dask.geo.grid import Grid
from abz_dask.io.location import Location, as_path

__all__ = ["DEFAULT_COLUMN_MAP", "DEFAULT_FLUX_RANGES", "MODELDATA_COLUMN_MAP", "FluxChecks",
           "GppSign", "InputError", "read_abcflux"]

logger = logging.getLogger(__name__)

#: How the file stores GPP: decided from the data (``"auto"``) or declared.
GppSign = Literal["auto", "negative", "positive"]

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

#: Plausible monthly fluxes, g C m⁻² month⁻¹, GPP after the sign rule (positive = uptake).
#:
#: Chosen to catch gross errors (a stray 1e30, a unit slip of ×1000, a sign mix-up) while letting
#: every real-looking monthly value pass: about twice the largest magnitudes seen in the spec
#: (strong sinks of −180 to −80 g C m⁻² month⁻¹ observed, seed-spec §6.3; LOSO RMSE up to 37) and
#: in the digital twin's ABCflux CSV (``abz_dask.twin.sites``; seeds 0–6 on the 100-km grid, full
#: period: NEE −160 … +178, GPP −25 … +374, Reco −8 … +339). GPP 1000 and Reco 800 are
#: ≈ 33 and 27 g C m⁻² d⁻¹ sustained for a month, above the most productive ecosystems on Earth.
#: The small negative lower bounds of GPP and Reco admit the scatter of near-zero winter values
#: around zero that partitioning and chamber noise produce (the twin reaches −25 and −8).
DEFAULT_FLUX_RANGES: dict[str, tuple[float, float]] = {
    "NEE": (-400.0, 300.0),
    "GPP": (-50.0, 1000.0),
    "Reco": (-50.0, 800.0),
}

_REQUIRED = ("site_id", "year", "month", "latitude", "longitude", "NEE", "GPP", "Reco")
_RESPONSES = ("NEE", "GPP", "Reco")
_TEXT = ("site_id", "site_name", "plot", "country", "biome", "veg_type", "flux_method",
         "flux_method_detail", "partition_method", "disturbance")
_NUMERIC_META = ("year", "month", "latitude", "longitude", "gap_fill_perc", "disturb_year")
_MISSING_TEXT = frozenset({"", "na", "nan", "none", "null"})
_MISSING_NUMBER = frozenset({"", "na", "none", "null"})
_NAN_SPELLINGS = frozenset({"nan", "+nan", "-nan"})
_NO_DISTURBANCE = frozenset({"no", "none", "undisturbed"})
_UNITS = "g C m-2 month-1"
_MAGIC = ((b"PK\x03\x04", "a ZIP archive (an Excel .xlsx workbook?)"),
          (b"\xd0\xcf\x11\xe0", "an old Excel .xls workbook"),
          (b"\x1f\x8b", "a gzip archive"),
          (b"PAR1", "a parquet file"),
          (b"\x89HDF", "an HDF5/netCDF-4 file"),
          (b"CDF\x01", "a netCDF-3 file"),
          (b"CDF\x02", "a netCDF-3 file"))


def _default_ranges() -> dict[str, tuple[float, float] | None]:
    return dict(DEFAULT_FLUX_RANGES)


class FluxChecks(BaseModel):
    """Plausibility and consistency checks of the fluxes (rule 6 of :mod:`abz_dask.io.abcflux`).

    Parameters
    ----------
    ranges : dict of str to (float, float) or None
        Plausible ``(low, high)`` per response (modelling name: ``NEE``, ``GPP``, ``Reco`` or an
        extra response such as ``CH4``), in g C m⁻² month⁻¹, GPP after the sign rule. Entries
        given here replace the defaults of the same response (:data:`DEFAULT_FLUX_RANGES`:
        NEE −400…300, GPP −50…1000, Reco −50…800); ``None`` switches a response's check off.
        Extra responses are only checked when given a range.
    nee_balance_abs : float or None
        Absolute tolerance, g C m⁻² month⁻¹, of ``|NEE − (Reco − GPP)|`` in rows holding all
        three fluxes (default 5); ``None`` switches the balance check off. Partitioned EC data
        and the twin satisfy the balance to rounding; 5 g covers rounding and unit conversions
        of small winter fluxes.
    nee_balance_rel : float
        Relative tolerance as a share of ``max(|GPP|, |Reco|)`` (default 0.2): the tolerance is
        the larger of both, so summer rows whose partitioning products differ slightly pass,
        while an NEE of the wrong sign or unit fails.
    gpp_sign_min : float
        ``|GPP|`` (g C m⁻² month⁻¹) from which a value votes on its site's GPP sign under
        ``gpp_sign="auto"`` (default 30: well above winter noise around zero, well below
        growing-season GPP).
    nan_is_missing : bool
        Read a literal ``nan`` in a numeric column as missing instead of refusing it as
        non-finite (default False: ABCflux marks missing values with −9999 or NA).
    max_reported : int
        How many offending rows an error lists (default 10).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ranges: dict[str, tuple[float, float] | None] = Field(default_factory=_default_ranges)
    nee_balance_abs: float | None = Field(5.0, ge=0)
    nee_balance_rel: float = Field(0.2, ge=0)
    gpp_sign_min: float = Field(30.0, gt=0)
    nan_is_missing: bool = False
    max_reported: int = Field(10, ge=1)

    @field_validator("ranges", mode="before")
    @classmethod
    def _merge_defaults(cls, v: Any) -> Any:
        if isinstance(v, Mapping):
            return {**DEFAULT_FLUX_RANGES, **v}
        return v

    @field_validator("ranges")
    @classmethod
    def _ordered(cls, v: dict[str, tuple[float, float] | None]
                 ) -> dict[str, tuple[float, float] | None]:
        for name, r in v.items():
            if r is not None and not (np.isfinite(r).all() and r[0] < r[1]):
                raise ValueError(f"range of {name}: need finite low < high, got {r}")
        return v


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
    details : sequence of str, optional
        Further lines of the message (other offending rows, counts, hints).
    problems : sequence of (int or None, str or None, object, str), optional
        Every listed offending cell as ``(line, column, value, message)`` (kept in
        :attr:`problems`; the first is also in ``row``, ``column``, ``value``).
    """

    def __init__(self, message: str, *, file: str | Path, row: int | None = None,
                 column: str | None = None, value: Any = None, details: Sequence[str] = (),
                 problems: Sequence[tuple[int | None, str | None, Any, str]] = ()) -> None:
        self.file = str(file)
        self.row = row
        self.column = column
        self.value = value
        self.problems = list(problems) or [(row, column, value, message)]
        where = self.file + (f", line {row}" if row is not None else "")
        where += f", column {column!r}" if column is not None else ""
        what = f" (value {value!r})" if value is not None else ""
        more = "".join(f"\n  {d}" for d in details)
        super().__init__(f"{where}: {message}{what}{more}")


@dataclass(frozen=True)
class _Problem:
    line: int
    column: str
    value: str
    message: str
    order: int


class _Problems:
    """Offending cells of several checks, raised together (the first few listed)."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self.limit = limit
        self.items: list[_Problem] = []
        self.counts: list[tuple[int, str]] = []
        self.hints: list[str] = []

    def add(self, mask: np.ndarray, line: np.ndarray, column: str, raw: pd.Series,
            message: Any, order: int, what: str) -> None:
        """Record the rows of ``mask``; ``message(i)`` words the problem of position ``i``."""
        idx = np.flatnonzero(mask)
        if len(idx) == 0:
            return
        self.counts.append((len(idx), f"{len(idx)} row(s) with {what} in column {column!r}"))
        for i in idx[: self.limit]:
            self.items.append(_Problem(int(line[i]), column, str(raw.iloc[i]).strip(),
                                       message(int(i)), order))

    def raise_if_any(self) -> None:
        """Raise one :class:`InputError` listing the first offending rows by line."""
        if not self.items:
            return
        items = sorted(self.items, key=lambda p: (p.line, p.order))
        shown = items[: self.limit]
        first = shown[0]
        details = []
        total = sum(n for n, _ in self.counts)
        if total > 1:
            details = [f"{total} problem(s): "
                       + "; ".join(c for _, c in self.counts), f"first {len(shown)} by line:"]
            details += [f"line {p.line}, column {p.column!r}: {p.message} (value {p.value!r})"
                        for p in shown]
        details += self.hints
        raise InputError(first.message, file=self.path, row=first.line, column=first.column,
                         value=first.value, details=details,
                         problems=[(p.line, p.column, p.value, p.message) for p in shown])


def read_abcflux(path: str | Path | Location, *, grid: Grid | None = None,
                 zones: xr.Dataset | None = None, years: tuple[int, int] | None = None,
                 methods: Sequence[str] | None = None,
                 max_gap_fill: float | None = None, exclude_disturbed: bool = False,
                 exclude_diffusion: bool = True, column_map: Mapping[str, str] | None = None,
                 gpp_sign: GppSign = "auto",
                 checks: FluxChecks | Mapping[str, Any] | None = None,
                 encoding: str = "utf-8") -> pd.DataFrame:
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
    gpp_sign : {"auto", "negative", "positive"}
        How the file stores GPP. ``"negative"`` (ABCflux, the authors' table) multiplies GPP by
        −1, ``"positive"`` keeps it; ``"auto"`` (default, the earlier behaviour) decides from
        the data and refuses a file whose sites disagree (module docstring, rule 5). The
        decision is logged and returned in ``attrs["abcflux"]["gpp_sign"]``.
    checks : FluxChecks or mapping, optional
        Plausibility ranges and tolerances (:class:`FluxChecks`; a mapping is read as its
        fields). Default: ``FluxChecks()``.
    encoding : str
        Text encoding of the file (default UTF-8, with or without a byte-order mark).

    Returns
    -------
    DataFrame
        One row per site-month, sorted by site, year, month (see the module docstring).
        ``attrs["abcflux"]`` holds the counts of each step, ``gpp_sign`` (a dict: ``option``,
        ``stored``, ``flipped``, ``basis`` and the number of sites voting each way),
        ``gpp_flipped`` and the ``checks`` applied.

    Raises
    ------
    InputError
        On any validation failure (see the module docstring).
    ValueError
        On an unknown ``gpp_sign`` or ``encoding``, or invalid ``checks``.
    """
    path = as_path(path)
    if gpp_sign not in ("auto", "negative", "positive"):
        raise ValueError(f"gpp_sign must be 'auto', 'negative' or 'positive', not {gpp_sign!r}")
    chk = checks if isinstance(checks, FluxChecks) else FluxChecks.model_validate(checks or {})
    cmap = _effective_map(column_map)
    raw = _read_text(path, encoding)
    rename = {src: tgt for src, tgt in cmap.items() if src in raw.columns}
    present = set(rename.values())
    missing = [t for t in _REQUIRED if t not in present]
    if missing:
        inverse = {t: s for s, t in cmap.items()}
        cols = ", ".join(repr(inverse.get(t, t)) for t in missing)
        raise InputError(f"missing column(s) {cols} (modelling name(s) "
                         f"{', '.join(missing)}); columns present: "
                         f"{[c for c in raw.columns if c != '__line__']}",
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
    nonfinite = _Problems(path, chk.max_reported)
    for order, col in enumerate((*_NUMERIC_META, *responses)):
        if col not in df:
            out[col] = np.full(len(df), np.nan)
            continue
        out[col], bad = _numbers(df[col], path, src_of[col], line, chk.nan_is_missing)
        nonfinite.add(bad, line, src_of[col], df[col], _fixed(_NONFINITE), order,
                      "non-finite numbers")
    nonfinite.raise_if_any()
    _validate(out, line, path, src_of, grid, zones, years)
    out["plot"] = out["plot"].fillna("")
    out["year"] = out["year"].astype(np.int64)
    out["month"] = out["month"].astype(np.int64)
    out = _drop_duplicates(out, line, path, src_of, info)

    if "biome" not in df and zones is not None and "biome" in zones and grid is not None:
        out["biome"] = _biome_from_zones(out, grid, zones)
    out["disturbance"] = out["disturbance"].fillna("No")
    out["flux_method"] = out["flux_method"].fillna("unknown")

    kept_line = line[out.index.to_numpy()]
    kept_raw = df.loc[out.index]
    sign = _gpp_sign(out, kept_line, kept_raw, path, src_of["GPP"], gpp_sign, chk)
    info["gpp_sign"] = sign
    info["gpp_flipped"] = sign["flipped"]
    if sign["flipped"]:
        out["GPP"] = -out["GPP"]
    _check_fluxes(out, kept_line, kept_raw, path, src_of, responses, chk, sign["flipped"])
    info["checks"] = chk.model_dump(mode="json")

    out = _filter(out, info, methods=methods, max_gap_fill=max_gap_fill,
                  exclude_disturbed=exclude_disturbed, exclude_diffusion=exclude_diffusion)
    res = _average_plots(out, responses)
    info["site_months"] = len(res)
    info["sites"] = int(res["site_id"].nunique())
    res.attrs["abcflux"] = info
    return res


_NONFINITE = ("not a finite number (inf, nan or beyond ±1.8e308); write -9999, NA or an empty "
              "cell for a missing value")


def _fixed(message: str) -> Any:
    return lambda _i: message


def _effective_map(column_map: Mapping[str, str] | None) -> dict[str, str]:
    cmap = dict(DEFAULT_COLUMN_MAP)
    if column_map:
        targets = set(column_map.values())
        cmap = {s: t for s, t in cmap.items() if t not in targets}
        cmap.update(column_map)
    return cmap


def _read_text(path: Path, encoding: str) -> pd.DataFrame:
    if path.is_dir():
        csvs = sorted(p.name for p in path.glob("*.csv"))
        hint = (f"; CSV files in it: {', '.join(csvs[:5])}{' …' if len(csvs) > 5 else ''}"
                if csvs else "; it holds no .csv file")
        raise InputError(f"is a folder, not a CSV file: give the ABCflux CSV itself{hint}",
                         file=path)
    if not path.exists():
        raise InputError("file not found", file=path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read the file: {e}", file=path) from e
    if not data.strip():
        raise InputError("empty file (no header, no rows)", file=path)
    text = _decode(data, path, encoding)
    header, starts = _scan(text, path)
    _check_header(header, path)
    try:
        raw = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False,
                          skip_blank_lines=False)
    except pd.errors.EmptyDataError as e:
        raise InputError("empty file (no header, no rows)", file=path) from e
    except pd.errors.ParserError as e:
        raise InputError(f"not a readable CSV: {e}", file=path) from e
    raw.columns = [str(c).strip() for c in raw.columns]
    if starts is not None and len(starts) == len(raw) + 1:
        raw["__line__"] = np.asarray(starts[1:], dtype=np.int64)
    else:  # the csv module and pandas disagree on the records: one line per record
        raw["__line__"] = np.arange(len(raw)) + 2
    blank = (raw.drop(columns="__line__").apply(lambda s: s.str.strip()) == "").all(axis=1)
    raw = raw.loc[~blank].reset_index(drop=True)
    if raw.empty:
        raise InputError("no data rows below the header", file=path, row=2)
    return raw


def _decode(data: bytes, path: Path, encoding: str) -> str:
    """The file's text; binary, UTF-16 and undecodable files raise :class:`InputError`."""
    import codecs

    try:
        codec = codecs.lookup(encoding).name
    except LookupError as e:
        raise ValueError(f"unknown encoding {encoding!r}") from e
    for magic, what in _MAGIC:
        if data.startswith(magic):
            raise InputError(f"binary file, not a CSV text file: it looks like {what}",
                             file=path, row=1, value=data[:8])
    utf8 = codec in ("utf-8", "utf-8-sig")
    if utf8 and data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise InputError("UTF-16 text, not UTF-8: save the file as UTF-8 (or pass "
                         "encoding='utf-16')", file=path, row=1, value=data[:2])
    nul = data.find(b"\x00")
    if utf8 and nul >= 0:
        row, column, value = _locate_byte(data, nul, "latin-1")
        raise InputError("binary file (NUL byte), not a CSV text file", file=path, row=row,
                         column=column, value=value)
    try:
        return data.decode("utf-8-sig" if utf8 else codec)
    except UnicodeDecodeError as e:
        row, column, value = _locate_byte(data, e.start, "utf-8" if utf8 else codec)
        raise InputError(
            f"not {encoding} text: byte {data[e.start:e.start + 1]!r} cannot be decoded "
            f"({e.reason}); save the file as UTF-8, or pass its encoding (e.g. "
            f"encoding='latin-1')", file=path, row=row, column=column, value=value) from e


def _locate_byte(data: bytes, pos: int, codec: str) -> tuple[int, str | None, bytes]:
    """Line, column name (by counting commas; quotes ignored) and field bytes of a byte."""
    row = data.count(b"\n", 0, pos) + 1
    start = data.rfind(b"\n", 0, pos) + 1
    end = data.find(b"\n", pos)
    end = len(data) if end < 0 else end
    field = data[start:pos].count(b",")
    first = data.find(b"\n")
    head = data[: len(data) if first < 0 else first].decode(codec, errors="replace").split(",")
    column = head[field].strip().strip('"') if row > 1 and field < len(head) else None
    f0 = data.rfind(b",", start, pos) + 1 if data.rfind(b",", start, pos) >= 0 else start
    f1 = data.find(b",", pos, end)
    f1 = end if f1 < 0 else f1
    return row, column, data[f0:f1].strip()[:80]


def _scan(text: str, path: Path) -> tuple[list[str], list[int] | None]:
    """Header fields and the 1-based starting line of every record (header first).

    Reads the text with the :mod:`csv` module, so that quoted fields holding line breaks do
    not shift the line numbers; rows with more or fewer fields than the header raise.
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    starts: list[int] = []
    ragged: list[tuple[int, int]] = []
    prev = 0
    try:
        for rec in reader:
            starts.append(prev + 1)
            prev = reader.line_num
            if header is None:
                header = [c.strip() for c in rec]
            elif any(c.strip() for c in rec) and len(rec) != len(header):
                ragged.append((starts[-1], len(rec)))
    except csv.Error as e:
        raise InputError(f"not a readable CSV: {e}", file=path, row=reader.line_num) from e
    if ragged:
        n = len(header or [])
        raise InputError(
            f"the row has {ragged[0][1]} fields, the header has {n} ({len(ragged)} such "
            f"row(s))", file=path, row=ragged[0][0], value=ragged[0][1],
            details=["first rows: " + ", ".join(f"line {r} ({k} fields)" for r, k in ragged[:10])])
    return header or [], starts


def _check_header(header: list[str], path: Path) -> None:
    seen: dict[str, int] = {}
    dups: list[tuple[str, int, int]] = []
    for i, name in enumerate(header):
        if name in seen:
            dups.append((name, seen[name] + 1, i + 1))
        else:
            seen[name] = i
    if dups:
        name, a, b = dups[0]
        raise InputError(
            f"duplicated column name in the header: columns {a} and {b} are both {name!r} "
            f"(pandas would silently rename the second to '{name}.1')", file=path, row=1,
            column=name, value=name,
            details=[f"column {b} repeats {n!r} (column {a})" for n, a, b in dups[1:]])


def _text(s: pd.Series) -> pd.Series:
    v = s.astype(str).str.strip()
    num = pd.to_numeric(v, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    miss = v.str.lower().isin(_MISSING_TEXT).to_numpy() | (num == -9999)
    return v.astype(object).where(~miss, None)


def _numbers(s: pd.Series, path: Path, column: str, line: np.ndarray,
             nan_is_missing: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Numbers of a text column (missing → NaN) and the mask of non-finite spellings."""
    v = s.astype(str).str.strip()
    low = v.str.lower()
    blank = low.isin(_MISSING_NUMBER | (_NAN_SPELLINGS if nan_is_missing else set())
                     ).to_numpy()
    spelled_nan = low.isin(_NAN_SPELLINGS).to_numpy() & ~blank
    num = pd.to_numeric(v.where(~blank, ""), errors="coerce").to_numpy(
        dtype=np.float64, na_value=np.nan, copy=True)
    bad = np.isnan(num) & ~blank & ~spelled_nan
    _first_bad(bad, "not a number", s.astype(str), line, path, column)
    num[num == -9999] = np.nan
    return num, np.isinf(num) | spelled_nan


def _first_bad(mask: np.ndarray | pd.Series, msg: str, values: Any, line: np.ndarray,
               path: Path, column: str, limit: int = 10) -> None:
    m = np.asarray(mask, dtype=bool)
    if m.any():
        idx = np.flatnonzero(m)
        i = int(idx[0])
        vals = np.asarray(values, dtype=object)
        details = ([f"first {min(len(idx), limit)} of {len(idx)}: "
                    + ", ".join(f"line {int(line[j])} ({vals[j]!r})" for j in idx[:limit])]
                   if len(idx) > 1 else [])
        raise InputError(f"{msg} ({len(idx)} row(s))", file=path, row=int(line[i]),
                         column=column, value=vals[i], details=details,
                         problems=[(int(line[j]), column, vals[j], msg) for j in idx[:limit]])


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


def _gpp_sign(out: pd.DataFrame, line: np.ndarray, raw: pd.DataFrame, path: Path,
              column: str, option: str, chk: FluxChecks) -> dict[str, Any]:
    """Decide how the file stores GPP (module docstring, rule 5); log and return the decision."""
    gpp = out["GPP"].to_numpy(dtype=np.float64)
    sites = out["site_id"].to_numpy(dtype=object)
    finite = np.isfinite(gpp)
    vote = finite & (np.abs(gpp) >= chk.gpp_sign_min)
    pos = np.flatnonzero(vote)
    votes = pd.DataFrame({"site": sites[pos], "positive": gpp[pos] > 0, "pos": pos})
    g = votes.groupby("site", sort=False)
    n_pos, n_all = g["positive"].sum(), g.size()
    pos_sites = [str(s) for s in n_pos.index[n_pos * 2 > n_all]]
    neg_sites = [str(s) for s in n_pos.index[n_pos * 2 < n_all]]
    n_sites = len(pd.unique(sites))
    if option == "auto":
        if pos_sites and neg_sites:
            _sign_conflict(pos_sites, neg_sites, votes, line, raw, path, column, chk)
        if pos_sites or neg_sites:
            stored = "negative" if neg_sites else "positive"
            basis = (f"the GPP of all {len(pos_sites) + len(neg_sites)} site(s) with values "
                     f"|GPP| >= {chk.gpp_sign_min:g} is mostly {'< 0' if neg_sites else '> 0'}")
        elif finite.any():
            med = float(np.median(gpp[finite]))
            stored = "negative" if med < 0 else "positive"
            basis = (f"no site has values |GPP| >= {chk.gpp_sign_min:g}; the median of the "
                     f"{int(finite.sum())} GPP values is {med:g}")
        else:
            stored, basis = "positive", "no GPP values"
    else:
        stored, basis = option, f"declared by the reader option gpp_sign={option!r}"
    flipped = stored == "negative"
    decision = {"option": option, "stored": stored, "flipped": flipped, "basis": basis,
                "sites_negative": len(neg_sites), "sites_positive": len(pos_sites),
                "sites_without_vote": n_sites - len(neg_sites) - len(pos_sites)}
    logger.info("%s: GPP stored %s (%s)%s", path, stored, basis,
                "; multiplied by -1 to make it positive" if flipped else "; kept as is")
    return decision


def _sign_conflict(pos_sites: list[str], neg_sites: list[str], votes: pd.DataFrame,
                   line: np.ndarray, raw: pd.DataFrame, path: Path, column: str,
                   chk: FluxChecks) -> None:
    by_site = votes.groupby("site", sort=False)

    def describe(sites: list[str]) -> str:
        parts = []
        for s in sites[: chk.max_reported]:
            v = by_site.get_group(s)
            k = int(v["positive"].sum())
            parts.append(f"{s!r} ({k} of {len(v)} values > 0, first on line "
                         f"{int(line[int(v['pos'].iloc[0])])})")
        more = len(sites) - chk.max_reported
        return ", ".join(parts) + (f" and {more} more" if more > 0 else "")

    minority = pos_sites if len(pos_sites) <= len(neg_sites) else neg_sites
    i = int(by_site.get_group(minority[0])["pos"].iloc[0])
    raise InputError(
        f"GPP sign conventions differ between sites: {len(pos_sites)} site(s) store GPP mostly "
        f"> 0 and {len(neg_sites)} mostly < 0 (values with |GPP| >= {chk.gpp_sign_min:g}; "
        f"ABCflux stores GPP negative). Fix the sign of those sites, or declare the convention "
        f"with gpp_sign='negative' or 'positive'", file=path, row=int(line[i]), column=column,
        value=str(raw["GPP"].iloc[i]).strip(),
        details=[f"sites with GPP mostly > 0: {describe(pos_sites)}",
                 f"sites with GPP mostly < 0: {describe(neg_sites)}"])


def _check_fluxes(out: pd.DataFrame, line: np.ndarray, raw: pd.DataFrame, path: Path,
                  src: dict[str, str], responses: list[str], chk: FluxChecks,
                  flipped: bool) -> None:
    """Gap-fill share, flux ranges and the NEE balance of every row (rule 6)."""
    probs = _Problems(path, chk.max_reported)
    if "gap_fill_perc" in src:
        gap = out["gap_fill_perc"].to_numpy(dtype=np.float64)
        probs.add((gap < 0) | (gap > 100), line, src["gap_fill_perc"], raw["gap_fill_perc"],
                  _fixed("gap-filled share outside 0-100 %"), 0, "gap_fill_perc outside 0-100")
    outside = np.zeros(len(out), dtype=bool)
    for k, flux in enumerate(responses, start=1):
        rng = chk.ranges.get(flux)
        if rng is None:
            continue
        v = out[flux].to_numpy(dtype=np.float64)
        lo, hi = rng
        m = np.isfinite(v) & ((v < lo) | (v > hi))
        if flux in _RESPONSES:
            outside |= m
        note = " (GPP as stored × −1, by the GPP sign rule)" if flux == "GPP" and flipped else ""
        probs.add(m, line, src[flux], raw[flux],
                  _range_message(flux, v, lo, hi, note), k, f"{flux} outside [{lo:g}, {hi:g}]")
        n, n_bad = int(np.isfinite(v).sum()), int(m.sum())
        flips_in = int((m & (-v >= lo) & (-v <= hi)).sum())
        if n_bad and n_bad * 2 > n and flips_in * 2 > n_bad:
            probs.hints.append(
                f"{n_bad} of {n} {flux} values ({100 * n_bad / n:.0f} %) are outside "
                f"[{lo:g}, {hi:g}] {_UNITS} but {flips_in} of them would be inside with the "
                f"other sign: is the sign convention of column {src[flux]!r} the one declared"
                f"{' (option gpp_sign)' if flux == 'GPP' else ''}?")
        elif n_bad and n_bad * 2 > n:
            probs.hints.append(
                f"{n_bad} of {n} {flux} values ({100 * n_bad / n:.0f} %) are outside "
                f"[{lo:g}, {hi:g}] {_UNITS} (median {float(np.nanmedian(v)):g}): is column "
                f"{src[flux]!r} in other units? mg C would be 1000× too large; convert to "
                f"{_UNITS}")
    if chk.nee_balance_abs is not None:
        nee, gpp, reco = (out[f].to_numpy(dtype=np.float64) for f in _RESPONSES)
        have = np.isfinite(nee) & np.isfinite(gpp) & np.isfinite(reco) & ~outside
        with np.errstate(invalid="ignore"):
            diff = np.abs(nee - (reco - gpp))
            tol = np.maximum(chk.nee_balance_abs,
                             chk.nee_balance_rel * np.maximum(np.abs(gpp), np.abs(reco)))
        m = have & (diff > tol)

        def balance(i: int) -> str:
            g = f"{gpp[i]:g}" if gpp[i] >= 0 else f"({gpp[i]:g})"
            return (f"NEE {nee[i]:g} does not match Reco - GPP = {reco[i]:g} - {g} = "
                    f"{reco[i] - gpp[i]:g} (|difference| {diff[i]:g} > tolerance {tol[i]:g} "
                    f"{_UNITS}: max(nee_balance_abs, nee_balance_rel · max(|GPP|, |Reco|)))")

        probs.add(m, line, src["NEE"], raw["NEE"], balance, len(responses) + 1,
                  "NEE != Reco - GPP")
    probs.raise_if_any()


def _range_message(flux: str, v: np.ndarray, lo: float, hi: float, note: str) -> Any:
    def message(i: int) -> str:
        return (f"{flux} {v[i]:g} outside the plausible range [{lo:g}, {hi:g}] {_UNITS}{note}"
                f" (FluxChecks.ranges)")
    return message


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
