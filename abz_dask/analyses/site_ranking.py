"""Where new sites help most: candidate locations ranked by the expected reduction of the error
of the ABZ NEE budget.

The ranking combines the dissimilarity index of :mod:`abz_dask.analyses.aoa` with an error model
learnt from the run's own cross-validation, and picks sites greedily so that the top N are not
redundant:

1. **Dissimilarity.** The flux model's DI model (:func:`~abz_dask.analyses.aoa.train_di_from_run`:
   importance-weighted standardised predictors, month and vegetation type dummy-coded, distances
   over the mean training distance ``d̄``). Every grid cell is represented by its 12
   calendar-month climatologies over the period (the AOA's ``climatology`` mode), so a cell is 12
   points in predictor space.
2. **Error profile** (CAST's ``errorProfiles``, formerly ``calibrate_aoa``): the run's CV
   predictions (``cv_predictions.csv``), each paired with its training row's own DI (nearest
   row outside its CV fold over ``d̄``, the DI the CV error was made at). The rows are sorted by
   DI and cut into equal-count bins; the RMSE per bin is made non-decreasing in DI (weighted
   pool-adjacent violators on the bins' mean squared errors), linear between the bins' mean
   DIs, constant below the first and extended beyond the last with the mean slope over the
   observed range (:func:`error_profile`). CAST fits a monotone spline; the constraint is the
   same.
3. **Expected budget error.** ``E = Σ_cells Σ_months a · ê(DI)`` over the ABZ land (``a`` = cell
   area × land fraction, ``ê`` the profile, g C m⁻² month⁻¹), in Tg C yr⁻¹: the budget's error if
   every cell-month erred by its expected amount in the same direction — an upper bound of the
   budget error that weights each place by its area and its distance to the training data.
4. **A candidate site** adds its cell's 12 climatology points to the training rows (the encoding,
   weights and ``d̄`` of the run are kept). Its **expected reduction** is the drop of ``E`` when
   every target point's DI becomes the smaller of its current DI and its distance to the new
   rows. **Greedy selection**: the candidate with the largest reduction is taken, its rows join
   the training set and the reductions of the others are recomputed, so a second site in the
   same predictor region gains little. Ties (e.g. a flat error profile, where no DI reduction
   changes ``ê``) are broken by the area-weighted DI reduction.

**Scale.** Targets and default candidates are a systematic sample of the grid (every s-th row
and column, ``s`` chosen so that at most ``max_targets`` / ``max_candidates`` cells are taken;
each sampled target stands for the ``s × s`` cells around it). The climatologies are computed
lazily by chunk (:func:`~abz_dask.analyses.aoa.predictor_stack`) and only the sampled cells are
brought into memory. One k-d tree pass over the candidates' points, queried in blocks of target
points within each point's nearest-training distance, finds every (target, candidate) pair a
site could improve; the greedy steps work on these pairs. At 100 km every cell is taken; at
1 km (81 M cells) the defaults take ≈ 20,000 targets and 5,000 candidates.

:func:`rank_sites` ranks prepared points; :func:`rank_sites_for_run` does it for a run folder's
``training/`` with the grid's land cells or a user's coordinates (:func:`read_candidates`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from pyproj import Transformer
from scipy.spatial import cKDTree

from abz_dask.aggregation.units import TG_PER_G
from abz_dask.analyses.aoa import DIModel, nearest_distance, predictor_stack, train_di_from_run
from abz_dask.geo.grid import Grid
from abz_dask.io.location import as_path, url

__all__ = ["MIN_LAND_FRACTION", "CandidateError", "CellPoints", "ErrorProfile", "Ranking",
           "cell_points", "error_profile", "rank_sites", "rank_sites_for_run",
           "read_candidates", "sample_cells"]

#: Candidate grid cells need at least this land fraction (a tower needs land around it).
MIN_LAND_FRACTION = 0.2
#: Target points per k-d tree query block (bounds the pair arrays of one block).
_QUERY_ROWS = 1 << 15
#: Columns of the ranking table (a user file's columns of the same name get an ``input_`` prefix).
_COLUMNS = ("rank", "latitude", "longitude", "row", "col", "domain", "di", "score",
            "expected_reduction_tg_c_yr", "cumulative_reduction_tg_c_yr")
#: Equal-count bins of the error profile: at most this many, each of at least _MIN_BIN_ROWS rows.
_MAX_BINS = 20
_MIN_BIN_ROWS = 50


@dataclass(frozen=True)
class ErrorProfile:
    """Expected prediction error as a non-decreasing function of the DI (:func:`error_profile`).

    Attributes
    ----------
    di, error : ndarray
        Knots: mean DI of each bin (increasing) and the monotone RMSE there (g C m⁻² month⁻¹).
    slope : float
        Error increase per unit DI beyond the last knot (the mean slope over the knots, ≥ 0).
    n_rows : int
        CV rows the profile was fitted on.
    """

    di: np.ndarray
    error: np.ndarray
    slope: float
    n_rows: int

    def __call__(self, di: np.ndarray | float) -> np.ndarray:
        """Expected error at ``di`` (NaN stays NaN)."""
        d = np.asarray(di, np.float64)
        inner = np.interp(d, self.di, self.error)
        return np.where(d > self.di[-1], self.error[-1] + self.slope * (d - self.di[-1]), inner)


def _isotonic(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares non-decreasing fit (pool adjacent violators)."""
    vals: list[float] = []
    wts: list[float] = []
    counts: list[int] = []
    for yi, wi in zip(y.tolist(), w.tolist(), strict=True):
        vals.append(yi)
        wts.append(wi)
        counts.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            v2, w2, n2 = vals.pop(), wts.pop(), counts.pop()
            vals[-1] = (vals[-1] * wts[-1] + v2 * w2) / (wts[-1] + w2)
            wts[-1] += w2
            counts[-1] += n2
    return np.repeat(vals, counts)


def error_profile(di: np.ndarray, error: np.ndarray, *, n_bins: int | None = None
                  ) -> ErrorProfile:
    """Fit the expected absolute error as a non-decreasing function of the DI.

    Parameters
    ----------
    di : ndarray
        DI of each CV row (nearest training row outside its fold over ``d̄``).
    error : ndarray
        Its CV error, ``prediction − observation``.
    n_bins : int, optional
        Equal-count DI bins; default ``len // 50`` clipped to 2..20.

    Returns
    -------
    ErrorProfile
    """
    d = np.asarray(di, np.float64)
    e = np.asarray(error, np.float64)
    if d.shape != e.shape:
        raise ValueError(f"{d.size} DI values for {e.size} errors")
    ok = np.isfinite(d) & np.isfinite(e)
    d, e = d[ok], e[ok]
    if d.size < 2:
        raise ValueError(f"an error profile needs at least 2 CV rows with a DI, got {d.size}")
    nb = n_bins or int(np.clip(d.size // _MIN_BIN_ROWS, 2, _MAX_BINS))
    nb = max(1, min(nb, d.size))
    order = np.argsort(d, kind="stable")
    bins = np.array_split(order, nb)
    centre = np.array([d[b].mean() for b in bins])
    mse = np.array([np.mean(e[b] ** 2) for b in bins])
    err = np.sqrt(_isotonic(mse, np.array([float(len(b)) for b in bins])))
    span = centre[-1] - centre[0]
    slope = float((err[-1] - err[0]) / span) if span > 0 else 0.0
    return ErrorProfile(centre, err, slope, int(d.size))


@dataclass(frozen=True)
class CellPoints:
    """Grid cells as encoded climatology points.

    Attributes
    ----------
    row, col : ndarray of int, shape (n,)
        Grid indices.
    weight : ndarray, shape (n,)
        Area each cell stands for (m²; cell area × land fraction × sampling factor); targets only.
    points : ndarray, shape (n, 12, p)
        Encoded points (:meth:`DIModel.encode`) of the 12 calendar months; NaN where a
        predictor is missing.
    """

    row: np.ndarray
    col: np.ndarray
    weight: np.ndarray
    points: np.ndarray


def cell_points(cube: xr.Dataset, model: DIModel, rows: np.ndarray, cols: np.ndarray, *,
                weight: np.ndarray | None = None, years: tuple[int, int] | None = None
                ) -> CellPoints:
    """Encoded calendar-month climatologies of the cells ``(rows, cols)``.

    The climatologies are computed lazily by chunk; only the given cells are loaded.
    """
    r = np.asarray(rows, np.int64)
    c = np.asarray(cols, np.int64)
    stack = predictor_stack(cube, model, years=years, mode="climatology")
    sel = stack.isel(y=xr.DataArray(r, dims="cell"), x=xr.DataArray(c, dims="cell"))
    raw = np.asarray(sel.transpose("cell", "step", "variable").values, np.float64)
    w = np.zeros(len(r)) if weight is None else np.asarray(weight, np.float64)
    return CellPoints(r, c, w, model.encode(raw))


def sample_cells(mask: xr.DataArray, max_cells: int) -> tuple[np.ndarray, np.ndarray, int]:
    """A systematic sample of the ``True`` cells of a lazy ``(y, x)`` mask.

    Returns the rows and columns of the cells of every ``s``-th row and column that are
    ``True`` and the stride ``s`` (1: every cell), the smallest with at most about
    ``max_cells`` cells. Only the strided mask is loaded.
    """
    if max_cells < 1:
        raise ValueError(f"max_cells must be at least 1, got {max_cells}")
    n = int(mask.sum().values)
    s = max(1, math.ceil(math.sqrt(n / max_cells)))
    sub = np.asarray(mask.isel(y=slice(0, None, s), x=slice(0, None, s)).values, bool)
    r, c = np.nonzero(sub)
    return r * s, c * s, s


@dataclass(frozen=True)
class Ranking:
    """The greedy ranking (:func:`rank_sites`).

    Attributes
    ----------
    order : ndarray of int
        Candidate indices in rank order.
    reduction : ndarray
        Marginal expected reduction of each (Tg C yr⁻¹), after the higher-ranked sites.
    di_reduction : ndarray
        Marginal reduction of the area-weighted mean DI of the target points.
    candidate_di : ndarray
        Each candidate's mean DI over its 12 months before any site is added (all candidates).
    expected_error : float
        Expected budget error before any new site (Tg C yr⁻¹).
    reducible_error : float
        Its part above the error at DI 0 (what new sites could remove at most; Tg C yr⁻¹).
    """

    order: np.ndarray
    reduction: np.ndarray
    di_reduction: np.ndarray
    candidate_di: np.ndarray
    expected_error: float
    reducible_error: float


def _pairs(q: np.ndarray, d0: np.ndarray, candidates: np.ndarray, valid: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (target point, candidate) whose nearest candidate row is closer than the point's
    nearest training row: point index, candidate index, that distance. One k-d tree pass in
    blocks of target points; the greedy steps only shrink the radii, so these pairs serve them
    all."""
    n_steps = candidates.shape[1]
    idx = np.flatnonzero(valid)
    crow = candidates[idx].reshape(-1, candidates.shape[2])
    owner = np.repeat(idx, n_steps)
    ctree = cKDTree(crow)
    n_cand = len(candidates)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for a in range(0, len(q), _QUERY_ROWS):
        qq, dd = q[a:a + _QUERY_ROWS], d0[a:a + _QUERY_ROWS]
        hits = ctree.query_ball_point(qq, r=dd, return_sorted=False)
        lens = np.fromiter((len(h) for h in hits), np.int64, len(hits))
        total = int(lens.sum())
        if total == 0:
            continue
        qi = np.repeat(np.arange(len(qq)), lens)
        ri = np.fromiter(itertools.chain.from_iterable(hits), np.int64, total)
        dist = np.sqrt(((qq[qi] - crow[ri]) ** 2).sum(axis=1))
        key = qi * n_cand + owner[ri]
        order = np.argsort(key, kind="stable")
        key, dist = key[order], dist[order]
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        parts.append((a + key[starts] // n_cand, key[starts] % n_cand,
                      np.minimum.reduceat(dist, starts)))
    if not parts:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
    kq, kc, dm = (np.concatenate(x) for x in zip(*parts, strict=True))
    return kq, kc, dm


def rank_sites(model: DIModel, profile: ErrorProfile, targets: CellPoints,
               candidates: CellPoints, top: int = 10) -> Ranking:
    """Greedy ranking of candidate cells by the expected reduction of the budget error.

    Parameters
    ----------
    model : DIModel
        The flux model's DI model (its training rows and ``d̄``).
    profile : ErrorProfile
        Expected error as a function of the DI.
    targets : CellPoints
        Cells whose expected error is summed (with their area weights).
    candidates : CellPoints
        Cells where a site could be added; a candidate with a missing predictor is never chosen.
    top : int
        Sites to choose (at most the valid candidates).

    Returns
    -------
    Ranking
    """
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    p = model.train.shape[1]
    q = targets.points.reshape(-1, p)
    w = np.repeat(targets.weight, targets.points.shape[1])
    ok = np.isfinite(q).all(axis=1) & (w > 0)
    q, w = q[ok], w[ok]
    if not len(q):
        raise ValueError("no target cell with complete predictors and a positive area")
    dbar = model.mean_distance
    tree = model.tree()
    d0 = nearest_distance(tree, q)
    base = float(np.sum(w * profile(d0 / dbar)) * TG_PER_G)
    reducible = base - float(np.sum(w) * profile(0.0) * TG_PER_G)
    n_cand = len(candidates.row)
    if n_cand == 0:
        raise ValueError("no candidate cells to rank")
    cd = nearest_distance(tree, candidates.points).reshape(n_cand, -1)
    cnt = np.isfinite(cd).sum(axis=1)
    cand_di = np.where(cnt > 0, np.nansum(cd, axis=1) / np.maximum(cnt, 1), np.nan) / dbar
    valid = np.isfinite(candidates.points).all(axis=(1, 2))
    if not valid.any():
        raise ValueError("no candidate cell with complete predictors")
    kq, kc, dm = _pairs(q, d0, candidates.points, valid)
    wq = w[kq] * TG_PER_G
    taken = ~valid
    order: list[int] = []
    red: list[float] = []
    dred: list[float] = []
    for _ in range(min(top, int(valid.sum()))):
        before = d0[kq]
        after = np.minimum(dm, before)
        g_err = np.bincount(kc, wq * (profile(before / dbar) - profile(after / dbar)), n_cand)
        g_di = np.bincount(kc, w[kq] * (before - after) / dbar, n_cand)
        g_err[taken] = -np.inf
        best = int(np.lexsort((g_di, g_err))[-1])
        taken[best] = True
        order.append(best)
        red.append(float(g_err[best]))
        dred.append(float(g_di[best] / w.sum()))
        mine = kc == best
        d0[kq[mine]] = np.minimum(d0[kq[mine]], dm[mine])
    return Ranking(np.array(order, np.int64), np.array(red), np.array(dred), cand_di, base,
                   reducible)


class CandidateError(ValueError):
    """A bad candidate file (the message names the file, line, column and value)."""


def read_candidates(path: str | Path, grid: Grid) -> pd.DataFrame:
    """Read a CSV of candidate coordinates and map each to its grid cell.

    Parameters
    ----------
    path : path or URL
        CSV with columns ``latitude`` and ``longitude`` (degrees, any case; other columns, e.g.
        a name, are kept).
    grid : Grid
        The run's grid.

    Returns
    -------
    DataFrame
        The file's columns (``latitude``, ``longitude`` lower-cased) with ``line`` (line number
        in the file), ``row`` and ``col``; ``attrs["source"]`` names the file.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    CandidateError
        Missing column, a value that is not a number, outside its range or outside the grid.
    """
    p = as_path(path)
    if not p.exists():
        raise FileNotFoundError(f"candidates file {p} does not exist")
    try:
        df = pd.read_csv(url(p), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise CandidateError(f"candidates file {p} is not a readable CSV: {e}") from e
    lower = {str(c).strip().lower(): c for c in df.columns}
    for name in ("latitude", "longitude"):
        if name not in lower:
            raise CandidateError(f"candidates file {p}: no column {name!r} (columns: "
                                 f"{', '.join(map(str, df.columns)) or 'none'})")
    df = df.rename(columns={lower["latitude"]: "latitude", lower["longitude"]: "longitude"})
    if df.empty:
        raise CandidateError(f"candidates file {p} has no rows")
    df.insert(0, "line", np.arange(2, len(df) + 2))
    for name, lim in (("latitude", 90.0), ("longitude", 180.0)):
        v = pd.to_numeric(df[name].str.strip(), errors="coerce")
        bad = v.isna() | ~np.isfinite(v) | (v.abs() > lim)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            what = "is not a number" if np.isnan(v.iloc[i]) or not np.isfinite(v.iloc[i]) \
                else f"is outside [-{lim:g}, {lim:g}]"
            raise CandidateError(f"candidates file {p}, line {df['line'].iloc[i]}, column "
                                 f"{name!r}: value {df[name].iloc[i]!r} {what}")
        df[name] = v.astype(np.float64)
    x, y = grid.project(df["longitude"].to_numpy(), df["latitude"].to_numpy())
    row, col = grid.index_of(x, y)
    out = np.flatnonzero(row < 0)
    if len(out):
        i = int(out[0])
        raise CandidateError(f"candidates file {p}, line {df['line'].iloc[i]}: latitude "
                             f"{df['latitude'].iloc[i]:g}, longitude {df['longitude'].iloc[i]:g} "
                             f"lies outside the run's grid ({len(out)} such rows)")
    df["row"], df["col"] = row, col
    df.attrs["source"] = str(p)
    return df


def _lonlat(grid: Grid, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    inv = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
    lon, lat = inv.transform(grid.x[cols], grid.y[rows])
    return np.asarray(lon), np.asarray(lat)


def _domain(zones: xr.Dataset, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    pick = {"y": xr.DataArray(rows, dims="cell"), "x": xr.DataArray(cols, dims="cell")}
    abz = np.asarray(zones["abz"].isel(pick).fillna(False).values, bool)
    biome = np.asarray(zones["biome"].isel(pick).values)
    name = np.where(biome == 1, "tundra", np.where(biome == 2, "boreal", "abz"))
    return np.where(abz, name, "outside_abz")


def rank_sites_for_run(training_dir: str | Path, cube: xr.Dataset, zones: xr.Dataset, *,
                       candidates: pd.DataFrame | None = None, top: int = 10,
                       years: tuple[int, int] | None = None, flux: str = "NEE",
                       max_targets: int = 20_000, max_candidates: int = 5_000,
                       min_land_fraction: float = MIN_LAND_FRACTION) -> pd.DataFrame:
    """Rank candidate sites for a run (see the module notes).

    Parameters
    ----------
    training_dir : path or URL
        The run's ``training/`` folder (training table, CV predictions, importances).
    cube, zones : xr.Dataset
        The run's predictor cube and zone layers (lazy).
    candidates : DataFrame, optional
        :func:`read_candidates` output; default: a systematic sample of at most
        ``max_candidates`` ABZ cells with a land fraction of at least ``min_land_fraction``.
    top : int
        Sites to rank.
    years : (int, int), optional
        Period of the climatologies (default: every complete year of the cube).
    flux : str
        Flux model whose DI and CV errors are used (the budget error ranked is this flux's).
    max_targets, max_candidates : int
        Sample sizes (cells) of the targets (ABZ land) and the default candidates.
    min_land_fraction : float
        Land fraction a default candidate cell needs.

    Returns
    -------
    DataFrame
        ``rank, latitude, longitude, row, col, domain, di, score, expected_reduction_tg_c_yr,
        cumulative_reduction_tg_c_yr`` (plus a user file's ``line`` and other columns);
        ``score`` is the expected reduction as a share of the reducible expected error before
        any new site (``attrs["reducible_error_tg_c_yr"]``, the part of
        ``attrs["expected_error_tg_c_yr"]`` above the error at DI 0); also
        ``attrs["target_stride"]``, ``attrs["candidate_stride"]``.
    """
    d = as_path(training_dir)
    model = train_di_from_run(d, flux)
    cv = pd.read_csv(url(d / "cv_predictions.csv"))
    cv = cv[cv["flux"] == flux]
    obs = next((c for c in cv.columns if str(c).startswith("obs")), None)
    pred = next((c for c in cv.columns if str(c).startswith("pred")), None)
    if obs is None or pred is None:
        raise ValueError(f"{d / 'cv_predictions.csv'} has no obs / pred columns "
                         f"(columns: {', '.join(map(str, cv.columns))})")
    profile = error_profile(model.train_di, (cv[pred] - cv[obs]).to_numpy(np.float64))
    grid = Grid.of_dataset(zones)
    land = zones["land_fraction"].fillna(0.0)
    abz = zones["abz"].fillna(False).astype(bool)
    tr, tc, ts = sample_cells(abz & (land > 0), max_targets)
    frac = np.asarray(land.isel(y=xr.DataArray(tr, dims="cell"),
                                x=xr.DataArray(tc, dims="cell")).values, np.float64)
    if candidates is None:
        cr, cc, cs = sample_cells(abz & (land >= min_land_fraction), max_candidates)
        extra = pd.DataFrame(index=np.arange(len(cr)))
    else:
        cr, cc, cs = candidates["row"].to_numpy(), candidates["col"].to_numpy(), 1
        extra = candidates.drop(columns=["row", "col", "latitude", "longitude"]).reset_index(
            drop=True)
        extra.columns = [c if c not in _COLUMNS else f"input_{c}" for c in extra.columns]
    # one pass over the cube for both sets of cells
    both = cell_points(cube, model, np.r_[tr, cr], np.r_[tc, cc], years=years)
    n_t = len(tr)
    targets = CellPoints(tr, tc, frac * grid.cell_area * ts ** 2, both.points[:n_t])
    cand = CellPoints(cr, cc, np.zeros(len(cr)), both.points[n_t:])
    if candidates is not None:
        bad = np.flatnonzero(~np.isfinite(cand.points).all(axis=(1, 2)))
        if len(bad):
            i = int(bad[0])
            raise CandidateError(
                f"candidates file {candidates.attrs.get('source', '?')}, line "
                f"{candidates['line'].iloc[i]}: latitude {candidates['latitude'].iloc[i]:g}, "
                f"longitude {candidates['longitude'].iloc[i]:g} (row {cr[i]}, col {cc[i]}) has "
                f"no complete predictors in the cube (ocean or missing data; {len(bad)} such "
                "rows)")
    rk = rank_sites(model, profile, targets, cand, top)
    o = rk.order
    if candidates is None:
        lon, lat = _lonlat(grid, cr[o], cc[o])
    else:
        lat = candidates["latitude"].to_numpy()[o]
        lon = candidates["longitude"].to_numpy()[o]
    out = pd.DataFrame({
        "rank": np.arange(1, len(o) + 1), "latitude": np.round(lat, 5),
        "longitude": np.round(lon, 5), "row": cr[o], "col": cc[o],
        "domain": _domain(zones, cr[o], cc[o]), "di": rk.candidate_di[o],
        "score": rk.reduction / rk.reducible_error if rk.reducible_error > 0 else np.nan,
        "expected_reduction_tg_c_yr": rk.reduction,
        "cumulative_reduction_tg_c_yr": np.cumsum(rk.reduction)})
    out = pd.concat([out, extra.iloc[o].reset_index(drop=True)], axis=1)
    out.attrs.update({"expected_error_tg_c_yr": rk.expected_error,
                      "reducible_error_tg_c_yr": rk.reducible_error, "target_stride": ts,
                      "candidate_stride": cs, "flux": flux,
                      "profile_max_error": float(profile.error[-1])})
    return out
