"""Environmental coverage of the training data: MESS and k-means clusters (DECISIONS 14).

MESS (multivariate environmental similarity surface; Elith et al. 2010, as R ``modEvA::MESS``).
For a point with value ``p`` of variable ``i`` and the reference (training) values ``V_i``
(``n`` non-missing values, min ``m``, max ``M``), let ``f = 100 · #{V_i < p} / n``. Then

* ``f = 0``:        ``S = 100 (p − m) / (M − m)``   (≤ 0: below the training range)
* ``0 < f ≤ 50``:   ``S = 2 f``
* ``50 < f < 100``: ``S = 2 (100 − f)``
* ``f = 100``:      ``S = 100 (M − p) / (M − m)``   (≤ 0: above the training range)

and ``MESS = min_i S_i`` (modEvA's ``TOTAL``); negative values mark extrapolation, and the
"most dissimilar variable" (``MoD``) is the arg-min. modEvA 1.2 counts ``V < p`` by recoding the
vector in place (``VV[VV < p] <- 1; VV[VV >= p] <- 0``), which miscounts when ``p ≤ 1``; we use
the intended count, and drop missing training values from ``n``. The domain side is each pixel's
**mean** predictor value over the period; the reference side the training rows (monthly values).
:func:`mess_map` is lazy over the grid (``searchsorted`` on the sorted training values per chunk).

Clusters (Extended Data Fig. 1): k-means (``dask_ml.cluster.KMeans``, k-means‖ init) with
``k = 8`` on the standardised mean-annual predictors of a random sample of domain pixels; clusters
are renumbered by ascending mean air temperature (or the first variable) so the labels are stable;
the vegetation-type composition per cluster is the share of sampled pixels of each class.
:func:`environmental_clusters` also assigns every pixel to its nearest centre (lazy map).
"""

from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from abz_dask.aggregation.periods import complete_years
from abz_dask.io.predictors import BOOTSTRAP_PREDICTORS

__all__ = ["ClusterResult", "environmental_clusters", "mean_predictors", "mess", "mess_map"]


def mess(values: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MESS similarities of points against reference rows (modEvA semantics).

    Parameters
    ----------
    values : ndarray, shape (..., k)
        Points to evaluate (NaN allowed: the similarity is NaN).
    reference : ndarray, shape (n, k)
        Reference rows (NaN values are ignored per variable).

    Returns
    -------
    similarity : ndarray, shape (..., k)
        Per-variable similarity ``S_i``.
    total : ndarray, shape (...)
        ``min_i S_i`` (NaN if any variable is NaN).
    """
    v = np.asarray(values, float)
    ref = np.asarray(reference, float)
    if ref.ndim != 2 or v.shape[-1] != ref.shape[1]:
        raise ValueError(f"values (..., {v.shape[-1]}) and reference (n, {ref.shape[-1]}) "
                         "must have the same number of variables")
    sim = np.full(v.shape, np.nan)
    for i in range(ref.shape[1]):
        r = np.sort(ref[:, i][np.isfinite(ref[:, i])])
        if r.size == 0:
            raise ValueError(f"reference variable {i} has no finite value")
        p = v[..., i]
        lo, hi = r[0], r[-1]
        span = hi - lo
        f = 100.0 * np.searchsorted(r, p, side="left") / r.size
        with np.errstate(invalid="ignore", divide="ignore"):
            low = np.where(span > 0, 100.0 * (p - lo) / span, np.where(p == lo, 0.0, -np.inf))
            high = np.where(span > 0, 100.0 * (hi - p) / span, np.where(p == hi, 0.0, -np.inf))
        s = np.where(f == 0, low, np.where(f <= 50, 2 * f, np.where(f < 100, 2 * (100 - f),
                                                                     high)))
        sim[..., i] = np.where(np.isfinite(p), s, np.nan)
    total = np.min(sim, axis=-1)
    return sim, total


def mean_predictors(cube: xr.Dataset, names: tuple[str, ...] | list[str],
                    years: tuple[int, int] | None = None) -> xr.DataArray:
    """Pixel means of predictors over complete years, stacked as ``(variable, y, x)`` (lazy).

    Monthly/annual predictors are averaged over the time steps of the complete years in
    ``years``; static ones are used as they are; spatially constant series (CO2) are
    broadcast.
    """
    c = cube
    if "time" in c.dims:
        if years is not None:
            c = c.sel(time=slice(str(years[0]), str(years[1])))
        c = c.sel(time=c["time"].dt.year.isin(complete_years(c["time"])))
        if c.sizes["time"] == 0:
            raise ValueError(f"no complete year in the cube for years={years}")
    spatial = next((c[m] for m in names if m in c and {"y", "x"} <= set(c[m].dims)), None)
    if spatial is None:
        raise ValueError(f"none of the predictors {list(names)} has (y, x) dimensions")
    tmpl = xr.zeros_like(spatial.isel({d: 0 for d in spatial.dims if d not in ("y", "x")},
                                      drop=True), dtype=np.float32)
    layers = []
    for n in names:
        if n not in c:
            have = sorted(map(str, c.data_vars))
            raise ValueError(f"predictor {n!r} not in the cube (variables: {have})")
        v = c[n]
        if "time" in v.dims:
            v = v.mean("time")
        v = (v.astype(np.float32) + tmpl) if set(v.dims) != {"y", "x"} else v.astype(np.float32)
        layers.append(v.drop_vars([k for k in v.coords if k not in ("y", "x")]))
    out = xr.concat(layers, dim="variable", coords="minimal", compat="override")
    return out.assign_coords(variable=list(names)).transpose("variable", "y", "x")


def _mess_block(block: np.ndarray, reference: np.ndarray) -> np.ndarray:
    vals = np.moveaxis(block, 0, -1)
    sim, total = mess(vals, reference)
    mod = np.where(np.isfinite(total), np.argmin(np.where(np.isnan(sim), np.inf, sim), axis=-1),
                   -1).astype(np.float64)
    return np.concatenate([np.moveaxis(sim, -1, 0), total[None], mod[None]], axis=0)


def mess_map(cube: xr.Dataset, training: pd.DataFrame, *, predictors: list[str] | None = None,
             years: tuple[int, int] | None = None, domain: xr.DataArray | None = None
             ) -> xr.Dataset:
    """MESS of the domain's mean predictor values against the training rows (lazy).

    Parameters
    ----------
    cube : xr.Dataset
        Predictor cube (:mod:`abz_dask.io.predictors` names).
    training : DataFrame
        Training table with bare predictor columns
        (:func:`abz_dask.training.extract.read_training_table`).
    predictors : list of str, optional
        Default: the continuous predictors (:data:`~abz_dask.io.predictors.BOOTSTRAP_PREDICTORS`)
        present in both.
    years : (int, int), optional
        Period of the pixel means (default: the training table's years).
    domain : xr.DataArray, optional
        Boolean ``(y, x)``; pixels outside are NaN.

    Returns
    -------
    xr.Dataset
        ``mess`` (y, x), ``mod`` (index into ``variable`` of the most dissimilar predictor, −1
        where undefined), ``similarity`` (variable, y, x); attribute ``variables``.
    """
    names = predictors or [p for p in BOOTSTRAP_PREDICTORS if p in training and p in cube]
    if not names:
        raise ValueError("no predictor is both in the training table and the cube")
    missing = [p for p in names if p not in training]
    if missing:
        raise ValueError(f"training table lacks predictor columns {missing}")
    if years is None and "year" in training:
        years = (int(training["year"].min()), int(training["year"].max()))
    ref = training[names].to_numpy(float)
    stack = mean_predictors(cube, names, years)
    if domain is not None:
        stack = stack.where(domain.assign_coords(y=stack["y"], x=stack["x"]).astype(bool))
    arr = stack.data if isinstance(stack.data, da.Array) else da.from_array(stack.data)
    arr = arr.rechunk({0: -1})
    k = len(names)
    out = arr.map_blocks(_mess_block, ref, dtype=np.float64,
                         chunks=((k + 2,), *arr.chunks[1:]))
    coords = {"y": stack["y"].values, "x": stack["x"].values}
    sim = xr.DataArray(out[:k], dims=("variable", "y", "x"),
                       coords={**coords, "variable": names})
    return xr.Dataset({"similarity": sim,
                       "mess": xr.DataArray(out[k], dims=("y", "x"), coords=coords),
                       "mod": xr.DataArray(out[k + 1], dims=("y", "x"), coords=coords)},
                      attrs={"variables": ",".join(names), "method": "MESS (Elith et al. 2010; "
                             "modEvA::MESS semantics)", "reference_rows": len(ref)})


@dataclass
class ClusterResult:
    """Output of :func:`environmental_clusters`."""

    centres: pd.DataFrame  # (cluster, variable) in original units
    sample: pd.DataFrame  # sampled pixels: row, col, variables, vegtype, cluster
    vegtype_share: pd.DataFrame  # (cluster, vegtype) share of sampled pixels
    cluster_map: xr.DataArray  # (y, x) nearest-centre label, −1 outside the domain
    scale: pd.DataFrame  # mean / sd used to standardise


def _assign(block: np.ndarray, centres: np.ndarray, mu: np.ndarray, sd: np.ndarray
            ) -> np.ndarray:
    z = (np.moveaxis(block, 0, -1) - mu) / sd
    d = ((z[..., None, :] - centres) ** 2).sum(axis=-1)
    lab = np.argmin(np.where(np.isnan(d), np.inf, d), axis=-1)
    return np.where(np.isfinite(z).all(axis=-1), lab, -1).astype(np.int16)


def environmental_clusters(cube: xr.Dataset, domain: xr.DataArray, *, k: int = 8,
                           n_sample: int = 10_000, seed: int = 0,
                           predictors: list[str] | None = None,
                           years: tuple[int, int] | None = None) -> ClusterResult:
    """k-means clusters of standardised mean-annual predictors of a random pixel sample.

    Parameters
    ----------
    cube : xr.Dataset
        Predictor cube.
    domain : xr.DataArray
        Boolean ``(y, x)`` mask of the pixels to sample and map.
    k : int
        Number of clusters (DECISIONS 14: 8).
    n_sample : int
        Pixels sampled without replacement (all domain pixels if fewer).
    seed : int
        Seed of the sample and of k-means.
    predictors : list of str, optional
        Default: the continuous predictors that vary in space (CO2 is dropped).
    years : (int, int), optional
        Period of the means (default: all complete years of the cube).
    """
    from dask_ml.cluster import KMeans

    names = predictors or [p for p in BOOTSTRAP_PREDICTORS if p in cube and p != "co2"]
    stack = mean_predictors(cube, names, years)
    dom = np.asarray(domain.values, bool)
    flat_idx = np.flatnonzero(dom.ravel())
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(flat_idx, size=min(n_sample, flat_idx.size), replace=False))
    rows, cols = np.unravel_index(take, dom.shape)
    vals = stack.isel(y=xr.DataArray(rows, dims="s"), x=xr.DataArray(cols, dims="s"))
    x = np.asarray(vals.compute().values, float).T  # (s, k)
    ok = np.isfinite(x).all(axis=1)
    x, rows, cols = x[ok], rows[ok], cols[ok]
    if x.shape[0] < k:
        raise ValueError(f"only {x.shape[0]} valid sampled pixels for k = {k} clusters")
    mu = x.mean(axis=0)
    sd = x.std(axis=0, ddof=1)
    sd = np.where(sd > 0, sd, 1.0)
    z = (x - mu) / sd
    km = KMeans(n_clusters=k, random_state=seed, init="k-means||")
    km.fit(da.from_array(z, chunks=(max(1000, z.shape[0] // 4), z.shape[1])))
    centres = np.asarray(km.cluster_centers_)
    lab = np.asarray(km.labels_.compute() if hasattr(km.labels_, "compute") else km.labels_)
    key = names.index("tair") if "tair" in names else 0
    order = np.argsort(centres[:, key])
    remap = np.empty(k, int)
    remap[order] = np.arange(k)
    centres = centres[order]
    lab = remap[lab]
    sample = pd.DataFrame(x, columns=names)
    sample.insert(0, "col", cols)
    sample.insert(0, "row", rows)
    sample["cluster"] = lab
    if "vegtype" in cube:
        veg = np.asarray(cube["vegtype"].values)
        sample["vegtype"] = veg[rows, cols].astype(int)
        share = pd.crosstab(sample["cluster"], sample["vegtype"], normalize="index")
    else:
        share = pd.DataFrame(index=pd.Index(range(k), name="cluster"))
    cent = pd.DataFrame(centres * sd + mu, columns=names, index=pd.Index(range(k),
                                                                          name="cluster"))
    cent["n_sample"] = np.bincount(lab, minlength=k)
    arr = stack.where(domain.assign_coords(y=stack["y"], x=stack["x"]).astype(bool))
    darr = arr.data if isinstance(arr.data, da.Array) else da.from_array(arr.data)
    darr = darr.rechunk({0: -1})
    lab_map = darr.map_blocks(_assign, centres, mu, sd, dtype=np.int16, drop_axis=0)
    cmap = xr.DataArray(lab_map, dims=("y", "x"), coords={"y": stack["y"].values,
                                                          "x": stack["x"].values},
                        name="cluster", attrs={"k": k, "variables": ",".join(names)})
    scale = pd.DataFrame({"mean": mu, "sd": sd}, index=pd.Index(names, name="variable"))
    return ClusterResult(cent, sample, share, cmap, scale)
