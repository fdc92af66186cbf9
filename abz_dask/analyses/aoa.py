"""Dissimilarity index (DI) and area of applicability (AOA) of a trained flux model.

The method of Meyer & Pebesma (2021, *Methods Ecol. Evol.* 12, 1620) as the R package CAST
implements it (``trainDI`` / ``aoa``, CAST ≥ 0.7; read from CAST's ``R/trainDI.R`` and
``R/aoa.R``):

1. **Encoding.** Categorical predictors (the catalogue's ``month`` and ``vegtype``) are
   dummy-coded on the levels present in the training rows (CAST: ``caret::dummyVars`` after
   ``droplevels``); each dummy column carries the weight of its predictor. A new point whose
   level was never seen in training gets all-zero dummies (CAST sets them to 0).
2. **Scaling.** Every column is standardised by the training rows' mean and sample SD
   (R ``scale``, ``n − 1``); a column without variance is an error, as in CAST.
3. **Weighting.** Each column is multiplied by its predictor's importance, here the mean
   permutation importance of the flux's central model (``training/importance_summary.csv``,
   ΔRMSE, the analogue of caret's ``varImp(scale = FALSE)`` for ``rf``); negative weights → 0.
4. **Mean distance** ``d̄``: for every training row the mean Euclidean distance to all other
   training rows, averaged over rows (= the mean over ordered pairs ``i ≠ j``).
5. **Training DI** of row ``i``: distance to the nearest row that was in the *training* part
   of the cross-validation fold holding ``i`` out (the model's own CV folds — LOSO or grouped
   k-fold, :mod:`abz_dask.training.folds`, as recorded in ``cv_predictions.csv``), over ``d̄``.
6. **Threshold**: ``Q75 + 1.5 × IQR`` of the training DI (R ``quantile`` type 7), capped at the
   largest training DI (CAST ≥ 0.7; older versions used ``boxplot.stats``' upper whisker).
7. **DI of a new point**: distance to the nearest training row (any fold) over ``d̄``; the point
   is inside the AOA when ``DI ≤ threshold``. A point with a missing predictor has no DI.

The nearest-row search over the grid is an exact k-d tree (``scipy.spatial.cKDTree``) on the
weighted standardised training rows (a few thousand rows); it is built once and shipped to the
tasks as one graph key (:func:`di_map`).

**Time.** The training rows are site-months, so a DI belongs to a cell *and a month*. Two modes:

* ``"climatology"`` (the default, used by the report): for each calendar month the cell's mean
  predictors over the period's complete years (static predictors as they are, the CO2 series
  averaged the same way), with that month's dummy — 12 DI layers per cell whatever the period's
  length (at 1 km: 12 × 81 M queries instead of 240 × 81 M). A 20-year climatology keeps the
  seasonal environment the model is asked about and drops interannual noise; on the 50-km demo
  twin it puts 2.2 % of the ABZ outside the NEE model's AOA against 2.6 % for every month
  (``benchmarks/RESULTS_aoa.md``).
* ``"monthly"``: every month of the period with its own predictors (``di_time``).

The summary map is the **mean of the monthly DIs** of a cell, ``di``; the cell is inside the AOA
when that mean is at most the threshold (its typical month is as close to the training data as
the training rows are to each other across folds); ``outside_fraction`` is the share of the
cell's months whose own DI exceeds the threshold.

:func:`aoa_shares` gives the share of each Table-1 domain's area outside the AOA and
:func:`aoa_budgets` the domain budgets over the applicable area only, both through
:func:`abz_dask.aggregation.zonal.domain_totals`; :func:`aoa_for_run` does all three for a
run's flux model (the report's AOA section).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist

from abz_dask.aggregation.budgets import DOMAINS
from abz_dask.aggregation.periods import complete_years
from abz_dask.aggregation.units import TG_PER_G
from abz_dask.aggregation.zonal import domain_totals, pixel_area
from abz_dask.io.location import as_path, url
from abz_dask.io.predictors import CATEGORICAL

__all__ = ["AOA_INPUTS", "DIModel", "RunAOA", "aoa_budgets", "aoa_for_run", "aoa_shares",
           "aoa_threshold", "di_map",
           "dissimilarity", "mean_distance", "nearest_distance", "predictor_stack",
           "train_di", "train_di_from_run"]

#: Rows of the pairwise-distance blocks of :func:`mean_distance` / :func:`train_di`.
_BLOCK_ROWS = 512
#: Files of a run's ``training/`` folder the DI of a flux model needs.
AOA_INPUTS = ("training_table.parquet", "cv_predictions.csv", "importance_summary.csv")
#: Points encoded and queried at a time inside a map block (bounds the float64 encoding).
_QUERY_ROWS = 1 << 16


@dataclass(frozen=True)
class DIModel:
    """Everything needed to compute the DI of new points (CAST's ``trainDI`` object).

    Attributes
    ----------
    variables : tuple of str
        Predictors, in the order of the value arrays given to :meth:`encode`.
    levels : dict of str to ndarray
        Training levels of each categorical predictor (its dummy columns, in order).
    columns : tuple of str
        Encoded columns (continuous names, ``name=level`` for dummies).
    center, scale, weight : ndarray
        Per encoded column: training mean, training SD (``n − 1``), importance weight.
    train : ndarray, shape (n, p)
        Weighted standardised training rows.
    folds : ndarray or None
        CV fold of every training row.
    train_di : ndarray
        DI of every training row (nearest row outside its fold / ``d̄``).
    mean_distance : float
        ``d̄``.
    threshold : float
        AOA threshold on the DI.
    flux : str
        Flux whose model the weights came from ("" if given by hand).
    """

    variables: tuple[str, ...]
    levels: dict[str, np.ndarray]
    columns: tuple[str, ...]
    center: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    train: np.ndarray
    folds: np.ndarray | None
    train_di: np.ndarray
    mean_distance: float
    threshold: float
    flux: str = ""

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Weighted standardised encoding of raw predictor values.

        Parameters
        ----------
        values : ndarray, shape (..., k)
            Raw values of :attr:`variables` (categorical ones as their numeric codes).

        Returns
        -------
        ndarray, shape (..., p)
            Encoded points; NaN in a row where any raw value is NaN.
        """
        raw = np.asarray(values, np.float64)
        if raw.shape[-1] != len(self.variables):
            raise ValueError(f"values have {raw.shape[-1]} predictors, the DI model "
                             f"{len(self.variables)} ({', '.join(self.variables)})")
        enc = _dummy_encode(raw, self.variables, self.levels)
        out = (enc - self.center) / self.scale * self.weight
        bad = ~np.isfinite(raw).all(axis=-1)
        out[bad] = np.nan
        return out

    def tree(self) -> cKDTree:
        """Exact k-d tree of the encoded training rows."""
        return cKDTree(self.train)


def _dummy_encode(raw: np.ndarray, variables: Sequence[str],
                  levels: Mapping[str, np.ndarray]) -> np.ndarray:
    cols: list[np.ndarray] = []
    for j, name in enumerate(variables):
        v = raw[..., j]
        if name in levels:
            cols.extend((v == lev).astype(np.float64) for lev in levels[name])
        else:
            cols.append(v)
    return np.stack(cols, axis=-1)


def aoa_threshold(train_di: np.ndarray) -> float:
    """CAST's AOA threshold: ``Q75 + 1.5 IQR`` of the training DI, at most its maximum.

    Parameters
    ----------
    train_di : ndarray
        DI of the training rows (NaN ignored).

    Returns
    -------
    float
    """
    d = np.asarray(train_di, np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        raise ValueError("no finite training DI to derive the AOA threshold from")
    q25, q75 = np.quantile(d, [0.25, 0.75])  # numpy "linear" = R quantile type 7
    return float(min(q75 + 1.5 * (q75 - q25), d.max()))


def mean_distance(train: np.ndarray) -> float:
    """CAST's ``trainDist_avrgmean``: mean over rows of the mean distance to the other rows.

    Parameters
    ----------
    train : ndarray, shape (n, p)
        Encoded training rows.
    """
    n = train.shape[0]
    if n < 2:
        raise ValueError("at least two training rows are needed for the DI")
    per_row = np.empty(n)
    for a in range(0, n, _BLOCK_ROWS):
        d = cdist(train[a:a + _BLOCK_ROWS], train)
        per_row[a:a + _BLOCK_ROWS] = d.sum(axis=1) / (n - 1)
    return float(per_row.mean())


def _nearest_other_fold(train: np.ndarray, folds: np.ndarray | None) -> np.ndarray:
    n = train.shape[0]
    out = np.empty(n)
    for a in range(0, n, _BLOCK_ROWS):
        d = cdist(train[a:a + _BLOCK_ROWS], train)
        rows = np.arange(a, min(a + _BLOCK_ROWS, n))
        d[np.arange(len(rows)), rows] = np.inf
        if folds is not None:
            d[folds[rows][:, None] == folds[None, :]] = np.inf
        out[rows] = d.min(axis=1)
    out[~np.isfinite(out)] = np.nan
    return out


def train_di(training: pd.DataFrame, weights: Mapping[str, float],
             folds: np.ndarray | Sequence[int] | None = None, *,
             categorical: Sequence[str] = CATEGORICAL, flux: str = "") -> DIModel:
    """DI of the training rows and the AOA threshold (CAST ``trainDI``).

    Parameters
    ----------
    training : DataFrame
        One row per training row, a column per predictor (bare names).
    weights : mapping
        Predictor → importance weight; its keys are the predictors used (negative → 0).
    folds : array, optional
        CV fold of every row (the training DI uses rows of other folds); ``None``: every other
        row (CAST without CV).
    categorical : sequence of str
        Predictors to dummy-code.
    flux : str
        Recorded in the result.

    Returns
    -------
    DIModel
    """
    names = list(weights)
    missing = [p for p in names if p not in training]
    if missing:
        raise ValueError(f"training table lacks predictor columns {missing}")
    raw = training[names].to_numpy(np.float64)
    bad = ~np.isfinite(raw)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(f"training table has {int(bad.any(axis=1).sum())} rows with missing "
                         f"predictors (first: row {r}, {names[c]!r}); drop them first")
    levels = {p: np.unique(raw[:, j]) for j, p in enumerate(names) if p in categorical}
    enc = _dummy_encode(raw, names, levels)
    columns = tuple(c for p in names for c in ([f"{p}={lev:g}" for lev in levels[p]]
                                               if p in levels else [p]))
    center = enc.mean(axis=0)
    scale = enc.std(axis=0, ddof=1)
    flat = [c for c, s in zip(columns, scale, strict=True) if not s > 0]
    if flat:
        raise ValueError(f"predictor columns {flat} have no variance in the training rows")
    w_pred = np.array([max(float(weights[p]), 0.0) for p in names])
    weight = np.concatenate([np.full(len(levels[p]) if p in levels else 1, w)
                             for p, w in zip(names, w_pred, strict=True)])
    train = (enc - center) / scale * weight
    f = None if folds is None else np.asarray(folds)
    if f is not None and len(f) != len(train):
        raise ValueError(f"{len(f)} fold ids for {len(train)} training rows")
    dbar = mean_distance(train)
    tdi = _nearest_other_fold(train, f) / dbar
    return DIModel(tuple(names), levels, columns, center, scale, weight, train, f, tdi, dbar,
                   aoa_threshold(tdi), flux)


def nearest_distance(tree: cKDTree, points: np.ndarray) -> np.ndarray:
    """Euclidean distance of every point to its nearest tree row (NaN for incomplete points).

    Parameters
    ----------
    tree : cKDTree
        Encoded training rows.
    points : ndarray, shape (..., p)
        Encoded points.
    """
    pts = np.asarray(points, np.float64)
    flat = pts.reshape(-1, pts.shape[-1])
    ok = np.isfinite(flat).all(axis=1)
    out = np.full(flat.shape[0], np.nan)
    if ok.any():
        out[ok] = tree.query(flat[ok], k=1)[0]
    return out.reshape(pts.shape[:-1])


def dissimilarity(model: DIModel, values: np.ndarray, tree: cKDTree | None = None
                  ) -> np.ndarray:
    """DI of raw predictor values ``(..., k)`` (CAST ``aoa``'s ``DI``)."""
    return nearest_distance(tree or model.tree(), model.encode(values)) / model.mean_distance


def train_di_from_run(training_dir: str | Path, flux: str = "NEE", *,
                      weighted: bool = True) -> DIModel:
    """:func:`train_di` of one flux model of a run, from its ``training/`` folder.

    Reads ``training_table.parquet`` (predictors), ``cv_predictions.csv`` (the flux's training
    rows and their CV folds) and ``importance_summary.csv`` (mean permutation importance; the
    predictors of the model). ``weighted=False`` weights every predictor 1 (CAST
    ``useWeight = FALSE``).
    """
    from abz_dask.training.extract import read_training_table

    d = as_path(training_dir)
    paths = {k: d / k for k in AOA_INPUTS}
    for p in paths.values():
        if not p.exists():
            raise FileNotFoundError(f"{p} is missing: the AOA needs the training stage's table, "
                                    "CV predictions and importances")
    table = read_training_table(paths["training_table.parquet"])
    cv = pd.read_csv(url(paths["cv_predictions.csv"]), usecols=["flux", "row", "fold"])
    cv = cv[cv["flux"] == flux]
    imp = pd.read_csv(url(paths["importance_summary.csv"]))
    imp = imp[imp["flux"] == flux]
    if cv.empty or imp.empty:
        raise ValueError(f"flux {flux!r} not in {paths['cv_predictions.csv']} or "
                         f"{paths['importance_summary.csv']}")
    rows = cv["row"].to_numpy()
    if rows.min() < 0 or rows.max() >= len(table):
        raise ValueError(f"{paths['cv_predictions.csv']}: row {int(rows.max())} outside the "
                         f"{len(table)} rows of {paths['training_table.parquet']}")
    weights = dict(zip(imp["predictor"].astype(str),
                       imp["mean"].astype(float) if weighted else np.ones(len(imp)), strict=True))
    return train_di(table.iloc[rows].reset_index(drop=True), weights, cv["fold"].to_numpy(),
                    flux=flux)


def _period(cube: xr.Dataset, years: tuple[int, int] | None) -> xr.Dataset:
    c = cube
    if years is not None:
        c = c.sel(time=slice(str(years[0]), str(years[1])))
    c = c.sel(time=c["time"].dt.year.isin(complete_years(c["time"])))
    if c.sizes["time"] == 0:
        raise ValueError(f"no complete year in the cube for years={years}")
    return c


def _stack(cube: xr.Dataset, names: Sequence[str], mode: str) -> xr.DataArray:
    """Raw predictors as ``(step, y, x, variable)``; ``month`` as the step's calendar month."""
    if mode == "climatology":
        step = xr.DataArray(np.arange(1, 13), dims="step")
        month = step
    elif mode == "monthly":
        step = cube["time"].rename({"time": "step"})
        month = cube["time"].dt.month.rename({"time": "step"})
    else:
        raise ValueError(f"unknown DI mode {mode!r}; choose 'climatology' or 'monthly'")
    tmpl = None
    layers = []
    for n in names:
        if n == "month":
            layers.append(month.astype(np.float32))
            continue
        if n not in cube:
            have = sorted(map(str, cube.data_vars))
            raise ValueError(f"predictor {n!r} not in the cube (variables: {have})")
        v = cube[n]
        if "time" in v.dims:
            v = (v.groupby("time.month").mean().rename({"month": "step"})
                 if mode == "climatology" else v.rename({"time": "step"}))
            v = v.assign_coords(step=step.values)
        if tmpl is None and {"y", "x"} <= set(v.dims):
            tmpl = v
        layers.append(v.astype(np.float32).drop_vars(
            [k for k in v.coords if k not in ("step", "y", "x")]))
    if tmpl is None:
        raise ValueError(f"none of the predictors {list(names)} has (y, x) dimensions")
    zero = xr.zeros_like(tmpl.isel({d: 0 for d in tmpl.dims if d not in ("y", "x")},
                                   drop=True), dtype=np.float32)
    zero = zero.drop_vars([k for k in zero.coords if k not in ("y", "x")])
    full = [(lay.assign_coords(step=step.values) if "step" in lay.dims else lay) + zero
            for lay in layers]
    full = [f.expand_dims(step=step.values) if "step" not in f.dims else f for f in full]
    out = xr.concat(full, dim="variable", coords="minimal", compat="override")
    return out.assign_coords(variable=list(names)).transpose("step", "y", "x", "variable")


def predictor_stack(cube: xr.Dataset, model: DIModel, *,
                    years: tuple[int, int] | None = None,
                    mode: str = "climatology") -> xr.DataArray:
    """The raw predictors :func:`di_map` queries, lazily: ``(step, y, x, variable)``.

    Parameters
    ----------
    cube : xr.Dataset
        Predictor cube.
    model : DIModel
        Its :attr:`~DIModel.variables` are stacked, in order (``month`` = the step's month).
    years : (int, int), optional
        Period (complete years only); default: every complete year of the cube.
    mode : {"climatology", "monthly"}
        12 calendar-month means or every month (see the module notes).
    """
    return _stack(_period(cube, years), model.variables, mode)


def _di_block(block: np.ndarray, model: DIModel, tree: cKDTree) -> np.ndarray:
    flat = block.reshape(-1, block.shape[-1])
    out = np.empty(flat.shape[0])
    for a in range(0, flat.shape[0], _QUERY_ROWS):
        part = flat[a:a + _QUERY_ROWS]
        out[a:a + _QUERY_ROWS] = nearest_distance(tree, model.encode(part))
    return (out / model.mean_distance).reshape(block.shape[:-1])


def di_map(cube: xr.Dataset, model: DIModel, *, years: tuple[int, int] | None = None,
           mode: str = "climatology", domain: xr.DataArray | None = None) -> xr.Dataset:
    """Per-cell DI and AOA over the grid (lazy, one task per predictor chunk).

    Parameters
    ----------
    cube : xr.Dataset
        Predictor cube (:mod:`abz_dask.io.predictors` names).
    model : DIModel
        From :func:`train_di` / :func:`train_di_from_run`.
    years : (int, int), optional
        Period (complete years only); default: every complete year of the cube.
    mode : {"climatology", "monthly"}
        Calendar-month climatologies (12 steps) or every month (see the module notes).
    domain : xr.DataArray, optional
        Boolean ``(y, x)``; cells outside are NaN.

    Returns
    -------
    xr.Dataset
        ``di_month`` (month, y, x) or ``di_time`` (time, y, x); ``di`` (y, x) mean over the
        steps; ``outside_fraction`` (y, x) share of steps with DI > threshold; ``aoa`` (y, x)
        1 inside (``di ≤ threshold``), 0 outside, NaN without DI. Attributes: threshold,
        mean distance, variables, mode, flux.
    """
    c = _period(cube, years)
    stack = _stack(c, model.variables, mode)
    if domain is not None:
        stack = stack.where(domain.assign_coords(y=stack["y"], x=stack["x"]).astype(bool))
    arr = stack.data if isinstance(stack.data, da.Array) else da.from_array(stack.data)
    arr = arr.rechunk({3: -1})
    # the tree and model are one graph key each, shipped once (not embedded in every task)
    shipped_model = dask.delayed(model, pure=True)
    shipped_tree = dask.delayed(model.tree(), pure=True)
    di = arr.map_blocks(_di_block, shipped_model, shipped_tree, dtype=np.float64,
                        drop_axis=3, meta=np.empty((0, 0, 0)))
    dims = ("month", "y", "x") if mode == "climatology" else ("time", "y", "x")
    coords = {"y": stack["y"].values, "x": stack["x"].values,
              dims[0]: np.arange(1, 13) if mode == "climatology" else c["time"].values}
    steps = xr.DataArray(di, dims=dims, coords=coords)
    thr = model.threshold
    mean = steps.mean(dims[0])
    valid = steps.notnull().sum(dims[0])
    outside = (steps > thr).sum(dims[0]) / valid.where(valid > 0)
    aoa = xr.where(mean.notnull(), (mean <= thr).astype(np.float64), np.nan)
    attrs = {"threshold": thr, "mean_distance": model.mean_distance,
             "variables": ",".join(model.variables), "mode": mode, "flux": model.flux,
             "period": f"{int(c['time'].dt.year.min())}-{int(c['time'].dt.year.max())}",
             "method": "DI / AOA (Meyer & Pebesma 2021; CAST trainDI/aoa semantics)"}
    return xr.Dataset({f"di_{dims[0]}": steps, "di": mean, "outside_fraction": outside,
                       "aoa": aoa}, attrs=attrs)


def aoa_shares(aoa: xr.Dataset, zones: xr.Dataset, cell_area: float,
               domains: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Share of each domain's area outside the AOA.

    Parameters
    ----------
    aoa : xr.Dataset
        :func:`di_map` output (``aoa``, ``outside_fraction``).
    zones : xr.Dataset
        Zone layers of the grid.
    cell_area : float
        Grid cell area (m²).
    domains : mapping, optional
        Default: the Table-1 domains.

    Returns
    -------
    DataFrame
        Per domain: ``area_mkm2`` (with a DI), ``share_outside`` (area share of cells outside),
        ``share_months_outside`` (area-weighted share of cell-months outside), ``no_di_share``
        (area share without a DI, e.g. missing predictors).
    """
    area = pixel_area(zones, cell_area)
    a = aoa.assign_coords(y=zones["y"], x=zones["x"])
    parts = xr.Dataset({"total": xr.ones_like(area),
                        "with_di": a["aoa"].notnull().astype(np.float64),
                        "outside": (a["aoa"] == 0).astype(np.float64),
                        "months_outside": a["outside_fraction"].fillna(0.0)})
    tot = domain_totals(parts, zones, area, domains or DOMAINS).compute()
    with np.errstate(invalid="ignore", divide="ignore"):
        out = pd.DataFrame({
            "area_mkm2": tot["with_di"].values / 1e12,
            "share_outside": tot["outside"].values / tot["with_di"].values,
            "share_months_outside": tot["months_outside"].values / tot["with_di"].values,
            "no_di_share": 1.0 - tot["with_di"].values / tot["total"].values},
            index=pd.Index([str(d) for d in tot["domain"].values], name="domain"))
    return out.reset_index()


def aoa_budgets(fluxes: xr.Dataset, aoa: xr.Dataset, zones: xr.Dataset, cell_area: float, *,
                years: tuple[int, int], flux_names: Sequence[str] = ("NEE", "GPP", "Reco"),
                domains: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Period-mean domain budgets over the whole domain and over its applicable area only.

    Parameters
    ----------
    fluxes : xr.Dataset
        Monthly fluxes (g C m⁻² month⁻¹), ``(time, y, x)`` per flux.
    aoa : xr.Dataset
        :func:`di_map` output.
    zones : xr.Dataset
        Zone layers.
    cell_area : float
        Grid cell area (m²).
    years : (int, int)
        Budget period (complete years).
    flux_names : sequence of str
        Fluxes to budget.
    domains : mapping, optional
        Default: the Table-1 domains.

    Returns
    -------
    DataFrame
        ``domain, flux, budget, budget_in_aoa, share_in_aoa`` (Tg C yr⁻¹; the share is
        ``budget_in_aoa / budget``).
    """
    area = pixel_area(zones, cell_area)
    ds = _period(fluxes[list(flux_names)], years)
    inside = (aoa["aoa"] == 1).assign_coords(y=ds["y"], x=ds["x"])
    both = xr.Dataset({**{f"{f}__all": ds[f] for f in flux_names},
                       **{f"{f}__aoa": ds[f].where(inside) for f in flux_names}})
    tot = domain_totals(both, zones, area, domains or DOMAINS) * TG_PER_G
    ann = tot.groupby("time.year").sum().mean("year").compute()
    rows = []
    for d in ann["domain"].values:
        for f in flux_names:
            b = float(ann[f"{f}__all"].sel(domain=d))
            bi = float(ann[f"{f}__aoa"].sel(domain=d))
            rows.append({"domain": str(d), "flux": f, "budget": b, "budget_in_aoa": bi,
                         "share_in_aoa": bi / b if b != 0 else np.nan})
    return pd.DataFrame(rows)


@dataclass
class RunAOA:
    """The AOA of one flux model of a run (:func:`aoa_for_run`)."""

    model: DIModel
    maps: xr.Dataset  # di_map's (y, x) summaries (di, outside_fraction, aoa), computed
    shares: pd.DataFrame  # aoa_shares
    budgets: pd.DataFrame  # aoa_budgets


def aoa_for_run(training_dir: str | Path, cube: xr.Dataset, zones: xr.Dataset,
                fluxes: xr.Dataset, cell_area: float, *, years: tuple[int, int],
                flux: str = "NEE", mode: str = "climatology") -> RunAOA | None:
    """DI / AOA map of a run's flux model, the domain shares outside and the budgets inside.

    Returns ``None`` when the training folder lacks one of :data:`AOA_INPUTS` (e.g. a profile
    without permutation importance) or the flux has no importances. The map covers the ABZ.
    """
    d = as_path(training_dir)
    if not all((d / k).exists() for k in AOA_INPUTS):
        return None
    imp = pd.read_csv(url(d / "importance_summary.csv"), usecols=["flux"])
    if flux not in set(imp["flux"].astype(str)):
        return None
    model = train_di_from_run(d, flux)
    lazy = di_map(cube, model, years=years, mode=mode,
                  domain=zones["abz"].fillna(False).astype(bool))
    # only the (y, x) summaries are brought into memory, in one pass over the cube
    maps = lazy[["di", "outside_fraction", "aoa"]].compute()
    shares = aoa_shares(maps, zones, cell_area)
    shares.insert(0, "flux", flux)
    shares["threshold"] = model.threshold
    names = [f for f in ("NEE", "GPP", "Reco") if f in fluxes]
    budgets = aoa_budgets(fluxes, maps, zones, cell_area, years=years, flux_names=names)
    return RunAOA(model, maps, shares, budgets)
