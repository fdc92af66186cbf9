"""Fire: reading and mass-conserving regridding of fire rasters, NEE + fire, years since fire and
the post-fire bias test (seed-spec §3.3, §4.9, §4.11; DECISIONS 15, 16).

Regridding (:func:`regrid_to_grid`) accepts any raster with a CRS (GeoTIFF or NetCDF, geographic
or projected, read by :func:`read_raster`) holding

* ``kind="density"``: an amount per m² of the source cell (fire emissions, g C m⁻² yr⁻¹) or a
  fraction of the cell (burned fraction) — the output is the amount per m² of the target cell;
* ``kind="total"``: an amount per source cell (g C per cell) — the output is per m² of target
  cell.

Mass is conserved: each source cell's amount (density × its true area) is split over k × k
sub-cells in proportion to their true areas, every sub-cell centre is projected onto the flux
grid and the amounts are summed per target cell (``method="exact"``: exact conservation of
everything that falls on the grid, whatever the two grids; k is chosen so that sub-cells are at
most a quarter of a target cell). ``method="gdal"`` uses ``rasterio.warp.reproject`` with
``Resampling.sum`` on the amounts instead (fast, conserves mass to ≈ 0.5 % for a 0.25° source
on the 100-km grid, measured). True source areas: the authalic sphere for geographic CRSs; the
projected cell area divided by the projection's areal scale factor (pyproj) otherwise. Source
rows are processed in blocks (memory ∝ block × k²).

The post-fire bias test (:func:`fit_postfire_bias`, :func:`postfire_correction`, DECISIONS 15):
bias = observed − predicted NEE from the LOSO CV predictions of burned sites
(``training/cv_predictions.csv``); per calendar month a linear mixed model
``bias ~ years_since_fire`` with a random intercept and slope by site (statsmodels MixedLM,
REML); correction of the chosen year's May–July NEE = burned fraction × predicted bias at the
pixel's years since fire, for pixels burned since the start of the fire record (2002). The burned
fraction of a pixel is the sum of its annual burned fractions since the record start, capped at
1; its years since fire count from the last year with a burn (seed-spec §4.11 leaves both open).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr

from abz_dask.aggregation.budgets import DOMAINS
from abz_dask.aggregation.zonal import TG, domain_totals, open_flux_store, pixel_area, store_grid
from abz_dask.geo.grid import Grid

__all__ = [
    "BiasModel",
    "burn_history",
    "fit_postfire_bias",
    "nee_plus_fire",
    "postfire_correction",
    "read_cv_predictions",
    "read_raster",
    "regrid_to_grid",
    "source_cell_area",
]

AUTHALIC_RADIUS_M = 6371007.181
#: Months of the post-fire correction (DECISIONS 15).
CORRECTION_MONTHS: tuple[int, ...] = (5, 6, 7)


# --------------------------------------------------------------------------------------------
# reading and regridding


def read_raster(path: str | Path, variable: str | None = None, *,
                crs: str | None = None) -> xr.DataArray:
    """Read a fire raster (GeoTIFF or NetCDF) lazily as a DataArray with a CRS.

    Parameters
    ----------
    path : path
        ``.tif``/``.tiff`` (bands become the leading dimension ``band``) or a NetCDF/Zarr file.
    variable : str, optional
        Variable of a NetCDF file (required when it holds several data variables).
    crs : str, optional
        CRS to assume when the file declares none (NetCDF on ``lat``/``lon`` coordinates is
        taken as EPSG:4326).

    Returns
    -------
    xarray.DataArray
        Spatial dimensions renamed to ``y``, ``x``; ``.rio.crs`` set.

    Raises
    ------
    FileNotFoundError, ValueError
        For a missing file, an ambiguous or missing variable, or no CRS.
    """
    import rioxarray

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"fire raster {p} does not exist")
    if p.suffix.lower() in (".tif", ".tiff"):
        da = rioxarray.open_rasterio(p, chunks={}, masked=True)
        if isinstance(da, list | xr.Dataset):
            raise ValueError(f"{p}: expected a single raster, got subdatasets")
    else:
        ds = xr.open_zarr(p) if p.suffix == ".zarr" else xr.open_dataset(p, chunks={})
        names = [v for v in ds.data_vars if ds[v].ndim >= 2]
        if variable is None:
            if len(names) != 1:
                raise ValueError(f"{p}: pass variable=, one of {names}")
            variable = str(names[0])
        if variable not in ds:
            raise ValueError(f"{p}: no variable {variable!r}; variables: {names}")
        da = ds[variable]
        ren = {d: n for d, n in (("lat", "y"), ("latitude", "y"), ("lon", "x"),
                                 ("longitude", "x")) if d in da.dims}
        if ren:
            da = da.rename(ren)
            if da.rio.crs is None and crs is None:
                crs = "EPSG:4326"
        da = da.rio.set_spatial_dims(x_dim="x", y_dim="y")
    if da.rio.crs is None:
        if crs is None:
            raise ValueError(f"{p}: the raster declares no CRS; pass crs=")
        da = da.rio.write_crs(crs)
    elif crs is not None:
        da = da.rio.write_crs(crs)
    return da


def source_cell_area(src: xr.DataArray) -> np.ndarray:
    """True area (m²) of every cell of a raster ``(y, x)`` (see the module docstring)."""
    from pyproj import CRS, Proj

    crs = CRS.from_user_input(src.rio.crs)
    x = np.asarray(src["x"].values, float)
    y = np.asarray(src["y"].values, float)
    dx = _edges(x)
    dy = _edges(y)
    if crs.is_geographic:
        lat_e = np.clip(dy, -90, 90)
        band = np.abs(np.sin(np.deg2rad(lat_e[:-1])) - np.sin(np.deg2rad(lat_e[1:])))
        width = np.deg2rad(np.abs(np.diff(dx)))
        return AUTHALIC_RADIUS_M**2 * band[:, None] * width[None, :]
    px = np.abs(np.diff(dy))[:, None] * np.abs(np.diff(dx))[None, :]
    xx, yy = np.meshgrid(x, y)
    proj = Proj(crs)
    lon, lat = proj(xx, yy, inverse=True)
    f = proj.get_factors(lon, lat)
    scale = np.asarray(f.areal_scale, float)
    return px / np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)


def _edges(c: np.ndarray) -> np.ndarray:
    if len(c) < 2:
        raise ValueError("a raster axis needs at least 2 coordinates")
    mid = 0.5 * (c[1:] + c[:-1])
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


def _regrid_exact(values: np.ndarray, x: np.ndarray, y: np.ndarray, area: np.ndarray,
                  src_crs: object, grid: Grid, k: int, block_rows: int
                  ) -> tuple[np.ndarray, float, float]:
    """Amounts (density × area) of one 2-D slice summed onto the grid; returns the target
    amounts, the source total and the total that fell outside the grid."""
    from pyproj import Transformer

    tr = Transformer.from_crs(src_crs, grid.crs, always_xy=True)
    ny, nx = grid.shape
    out = np.zeros(ny * nx)
    xe, ye = _edges(x), _edges(y)
    frac = (np.arange(k) + 0.5) / k
    total = lost = 0.0
    geographic = getattr(src_crs, "is_geographic", False)
    for r0 in range(0, len(y), block_rows):
        r1 = min(len(y), r0 + block_rows)
        v = np.nan_to_num(values[r0:r1].astype(np.float64)) * area[r0:r1]
        if not v.any():
            continue
        rows, cols = np.nonzero(v)
        amt = v[rows, cols]
        total += float(amt.sum())
        yr0, yr1 = ye[r0 + rows], ye[r0 + rows + 1]
        xc0, xc1 = xe[cols], xe[cols + 1]
        sy = yr0[:, None] + (yr1 - yr0)[:, None] * frac[None, :]  # (n, k)
        sx = xc0[:, None] + (xc1 - xc0)[:, None] * frac[None, :]
        if geographic:  # sub-row weights ∝ true area of the sub-band
            lo = yr0[:, None] + (yr1 - yr0)[:, None] * (np.arange(k) / k)[None, :]
            hi = lo + (yr1 - yr0)[:, None] / k
            wy = np.abs(np.sin(np.deg2rad(np.clip(hi, -90, 90)))
                        - np.sin(np.deg2rad(np.clip(lo, -90, 90))))
            wy = wy / wy.sum(axis=1, keepdims=True)
        else:
            wy = np.full((len(amt), k), 1.0 / k)
        px = np.broadcast_to(sx[:, None, :], (len(amt), k, k)).reshape(len(amt), -1)
        py = np.broadcast_to(sy[:, :, None], (len(amt), k, k)).reshape(len(amt), -1)
        w = (np.broadcast_to(wy[:, :, None], (len(amt), k, k)) / k).reshape(len(amt), -1)
        gx, gy = tr.transform(px.ravel(), py.ravel())
        ri, ci = grid.index_of(np.asarray(gx), np.asarray(gy))
        sub = (amt[:, None] * w).ravel()
        ok = (ri >= 0) & np.isfinite(gx)
        lost += float(sub[~ok].sum())
        out += np.bincount(ri[ok] * nx + ci[ok], weights=sub[ok], minlength=ny * nx)
    return out.reshape(ny, nx), total, lost


def regrid_to_grid(src: xr.DataArray, grid: Grid, *, kind: Literal["density", "total"]
                   = "density", method: Literal["exact", "gdal"] = "exact",
                   supersample: int | None = None, block_rows: int = 256) -> xr.DataArray:
    """Aggregate a fire raster onto the flux grid conserving mass (DECISIONS 16).

    Parameters
    ----------
    src : xarray.DataArray
        ``(..., y, x)`` raster with a CRS (:func:`read_raster`); leading dimensions (band,
        year, time) are kept.
    grid : Grid
        Target grid.
    kind : {"density", "total"}
        Per m² of source cell (or a fraction of it) / per source cell.
    method : {"exact", "gdal"}
        Sub-cell binning (exact conservation) or ``rasterio.warp.reproject`` with
        ``Resampling.sum``.
    supersample : int, optional
        k of the exact method (default: enough for sub-cells ≤ ¼ of a target cell, ≥ 1).
    block_rows : int
        Source rows per block.

    Returns
    -------
    xarray.DataArray
        ``(..., y, x)`` on the grid, per m² of target cell; attributes ``mass_in``,
        ``mass_out`` (amounts summed over all slices) and ``mass_outside_grid``.
    """
    import rioxarray  # noqa: F401
    from pyproj import CRS

    if kind not in ("density", "total"):
        raise ValueError(f"kind must be 'density' or 'total', got {kind!r}")
    if src.rio.crs is None:
        raise ValueError(f"raster {src.name!r} has no CRS")
    src_crs = CRS.from_user_input(src.rio.crs)
    src = src.transpose(..., "y", "x")
    area = source_cell_area(src) if kind == "density" else np.ones((src.sizes["y"],
                                                                    src.sizes["x"]))
    lead = [d for d in src.dims if d not in ("y", "x")]
    stacked = src.stack(_slice=lead) if lead else src.expand_dims(_slice=[0])
    stacked = stacked.transpose("_slice", "y", "x")
    if supersample is None:
        side = float(np.sqrt(np.nanmedian(source_cell_area(src))))
        supersample = max(1, int(np.ceil(4 * side / grid.resolution)))
    x, y = np.asarray(src["x"].values, float), np.asarray(src["y"].values, float)
    outs, m_in, m_out, m_lost = [], 0.0, 0.0, 0.0
    for i in range(stacked.sizes["_slice"]):
        vals = np.asarray(stacked.isel(_slice=i).values)
        if method == "exact":
            o, tot, lost = _regrid_exact(vals, x, y, area, src_crs, grid, supersample,
                                         block_rows)
        elif method == "gdal":
            from rasterio.warp import Resampling, reproject

            o = np.zeros(grid.shape)
            amt = np.nan_to_num(vals.astype(np.float64)) * area
            reproject(amt, o, src_transform=src.rio.transform(), src_crs=src_crs.to_wkt(),
                      dst_transform=grid.transform, dst_crs=grid.crs.to_wkt(),
                      resampling=Resampling.sum)
            tot, lost = float(amt.sum()), np.nan
        else:
            raise ValueError(f"method must be 'exact' or 'gdal', got {method!r}")
        outs.append(o / grid.cell_area)
        m_in += tot
        m_out += float(o.sum())
        m_lost += lost
    data = np.stack(outs).astype(np.float32)
    coords = {"y": grid.y, "x": grid.x}
    res = xr.DataArray(data, dims=("_slice", "y", "x"),
                       coords={**coords, "_slice": stacked["_slice"]})
    res = res.unstack("_slice") if lead else res.isel(_slice=0, drop=True)
    if lead:
        res = res.transpose(*lead, "y", "x")
    res.name = src.name
    res.attrs = {**{k: v for k, v in src.attrs.items() if k in ("long_name", "units")},
                 "regrid": f"{method} mass-conserving ({kind}), per m2 of target cell",
                 "mass_in": m_in, "mass_out": m_out, "mass_outside_grid": m_lost}
    return grid.attach(res)


# --------------------------------------------------------------------------------------------
# NEE + fire and burn history


def nee_plus_fire(store: str | Path | xr.Dataset, fire: xr.Dataset, zones: xr.Dataset, *,
                  start: int | None = None, end: int | None = None,
                  variable: str = "fire_emissions") -> xr.Dataset:
    """Annual NEE + fire maps and domain budgets for the fire years, lazy maps.

    Fire emissions (g C m⁻² of cell) are converted to g C m⁻² of land (÷ land fraction) so that
    they add to NEE per pixel; the budgets use cell area for fire and pixel area for NEE, i.e.
    ``Σ NEE × area × lf + Σ fire × area``.

    Returns
    -------
    xarray.Dataset
        ``nee_plus_fire (year, y, x)`` (g C m⁻² yr⁻¹), ``budget (year, domain)``,
        ``fire_budget (year, domain)`` (Tg C yr⁻¹).
    """
    from abz_dask.analyses.seasonal import pixel_annual
    from abz_dask.analyses.table1 import fire_domain_budgets

    ds = open_flux_store(store)
    grid = store_grid(ds)
    nee = pixel_annual(ds, "NEE", start=start, end=end)
    yrs = np.intersect1d(nee["year"].values, fire["year"].values)
    if len(yrs) == 0:
        raise ValueError("no year is common to the flux store and the fire data")
    lf = zones["land_fraction"].fillna(0.0)
    em = fire[variable].sel(year=yrs)
    em_land = (em / lf.where(lf > 0)).fillna(0.0).where(nee.sel(year=yrs).notnull())
    maps = nee.sel(year=yrs) + em_land
    area = pixel_area(zones, grid.cell_area)
    nb = domain_totals(nee.sel(year=yrs), zones, area) * TG
    fb = fire_domain_budgets(fire.sel(year=yrs), zones, grid.cell_area, variable=variable)
    out = xr.Dataset({"nee_plus_fire": maps, "budget": nb + fb, "fire_budget": fb})
    out["nee_plus_fire"].attrs = {"units": "g C m-2 yr-1"}
    out["budget"].attrs = out["fire_budget"].attrs = {"units": "Tg C yr-1"}
    return out


def burn_history(fire: xr.Dataset, year: int, *, variable: str = "burned_fraction"
                 ) -> xr.Dataset:
    """Burned fraction since the record start and years since the last burn, as of ``year``.

    Returns
    -------
    xarray.Dataset
        ``burned_fraction`` (Σ annual fractions up to ``year``, capped at 1), ``last_burn``
        (year, NaN if unburned) and ``years_since_fire`` (``year − last_burn``).
    """
    if variable not in fire:
        raise ValueError(f"fire store has no variable {variable!r}")
    bf = fire[variable].sel(year=slice(None, year))
    if bf.sizes["year"] == 0:
        raise ValueError(f"fire record starts after {year}")
    burned = bf > 0
    last = xr.where(burned, bf["year"], np.nan).max("year")
    tot = bf.fillna(0.0).sum("year").clip(max=1.0)
    return xr.Dataset({"burned_fraction": tot, "last_burn": last,
                       "years_since_fire": year - last})


# --------------------------------------------------------------------------------------------
# post-fire bias test


def read_cv_predictions(path: str | Path, flux: str = "NEE") -> pd.DataFrame:
    """LOSO CV predictions of the training stage (``training/cv_predictions.csv``) for a flux,
    with the columns ``site_id, year, month, disturbance, disturb_year, obs, pred``."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"CV predictions {p} not found (written by run_training)")
    df = pd.read_csv(p)
    ren = {c: c.split(" [")[0] for c in df.columns}
    df = df.rename(columns=ren)
    need = {"flux", "site_id", "year", "month", "disturbance", "disturb_year", "obs", "pred"}
    miss = need - set(df.columns)
    if miss:
        raise ValueError(f"{p}: missing column(s) {sorted(miss)}")
    return df[df["flux"] == flux].reset_index(drop=True)


@dataclass(frozen=True)
class BiasModel:
    """Fixed effects of the per-month post-fire bias models.

    ``table`` has one row per month: ``month, intercept, slope, p_intercept, p_slope, n_obs,
    n_sites, converged``; months without enough data have NaN coefficients.
    """

    table: pd.DataFrame

    def predict(self, month: int, years_since_fire: np.ndarray) -> np.ndarray:
        """Predicted bias (g C m⁻² month⁻¹) for a month (0 where the model is missing)."""
        r = self.table.set_index("month")
        ysf = np.asarray(years_since_fire, float)
        if month not in r.index:
            return np.zeros_like(ysf)
        a, b = float(r.loc[month, "intercept"]), float(r.loc[month, "slope"])  # type: ignore[arg-type]
        if not np.isfinite(a):
            return np.zeros_like(ysf)
        return a + b * ysf


def fit_postfire_bias(cv: pd.DataFrame, *, months: Sequence[int] = tuple(range(1, 13)),
                      max_ysf: int = 18, min_sites: int = 3,
                      disturbance: str = "Fire") -> BiasModel:
    """Per-month mixed models ``bias ~ ysf + (1 + ysf | site)`` on burned sites (DECISIONS 15).

    Parameters
    ----------
    cv : DataFrame
        :func:`read_cv_predictions` output (``obs``, ``pred``, ``disturbance``,
        ``disturb_year``, ``site_id``, ``year``, ``month``).
    months : sequence of int
        Calendar months to fit (≈ 1.5 s each on 200 burned site-months; the correction uses
        May–July only).
    max_ysf : int
        Keep rows with 0 ≤ years since fire ≤ this (the paper: 0–18).
    min_sites : int
        Months with fewer burned sites get no model.
    disturbance : str
        Value of ``disturbance`` marking burned sites (case-insensitive).

    Returns
    -------
    BiasModel
    """
    import statsmodels.formula.api as smf

    d = cv[cv["disturbance"].astype(str).str.lower() == disturbance.lower()].copy()
    d["ysf"] = d["year"] - pd.to_numeric(d["disturb_year"], errors="coerce")
    d["bias"] = d["obs"] - d["pred"]
    d = d[(d["ysf"] >= 0) & (d["ysf"] <= max_ysf) & d["bias"].notna()]
    rows = []
    for m in months:
        dm = d[d["month"] == m]
        row: dict[str, float | int | bool] = {
            "month": m, "intercept": np.nan, "slope": np.nan, "p_intercept": np.nan,
            "p_slope": np.nan, "n_obs": len(dm), "n_sites": int(dm["site_id"].nunique()),
            "converged": False}
        if row["n_sites"] >= min_sites and len(dm) > 4:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    fit = smf.mixedlm("bias ~ ysf", dm, groups=dm["site_id"],
                                      re_formula="~ysf").fit(reml=True,
                                                             method=["powell", "lbfgs"])
                except (np.linalg.LinAlgError, ValueError):  # singular random slope
                    fit = smf.mixedlm("bias ~ ysf", dm, groups=dm["site_id"]).fit(reml=True)
            row.update(intercept=float(fit.fe_params["Intercept"]),
                       slope=float(fit.fe_params["ysf"]),
                       p_intercept=float(fit.pvalues["Intercept"]),
                       p_slope=float(fit.pvalues["ysf"]), converged=bool(fit.converged))
        rows.append(row)
    return BiasModel(pd.DataFrame(rows))


def postfire_correction(store: str | Path | xr.Dataset, fire: xr.Dataset, zones: xr.Dataset,
                        model: BiasModel, year: int, *,
                        months: Sequence[int] = CORRECTION_MONTHS,
                        domains: dict[str, str] | None = None) -> tuple[pd.DataFrame,
                                                                         xr.DataArray]:
    """Apply the post-fire bias correction to one year's NEE and report the budget change.

    Corrected NEE (month m ∈ ``months``) = NEE + burned fraction × (a_m + b_m · ysf) at pixels
    burned since the fire record start (up to ``year``), NaN pixels untouched.

    Returns
    -------
    (DataFrame, xarray.DataArray)
        Per domain ``year, budget_tg_c_yr, corrected_tg_c_yr, change_tg_c_yr``; the annual
        correction map (g C m⁻² yr⁻¹).
    """
    ds = open_flux_store(store)
    grid = store_grid(ds)
    if year not in set(ds["time"].dt.year.values):
        raise ValueError(f"year {year} is not in the flux store")
    hist = burn_history(fire, year).compute()
    bf = hist["burned_fraction"].fillna(0.0)
    ysf = hist["years_since_fire"]
    burned = hist["last_burn"].notnull()
    nee = ds["NEE"].sel(time=str(year))
    corr = []
    for t in nee["time"].values:
        m = int(pd.Timestamp(t).month)
        if m in months:
            b = xr.DataArray(model.predict(m, np.nan_to_num(ysf.values)), dims=("y", "x"),
                             coords={"y": ysf["y"], "x": ysf["x"]})
            corr.append((bf * b).where(burned, 0.0))
        else:
            corr.append(xr.zeros_like(bf))
    dc = xr.concat(corr, dim="time").assign_coords(time=nee["time"].values)
    dc = dc.where(nee.notnull(), 0.0)
    area = pixel_area(zones, grid.cell_area)
    doms = dict(domains or DOMAINS)
    base = (domain_totals(nee, zones, area, doms).sum("time") * TG).compute()
    delta = (domain_totals(dc, zones, area, doms).sum("time") * TG).compute()
    tab = pd.DataFrame({"domain": list(doms), "year": year,
                        "budget_tg_c_yr": base.sel(domain=list(doms)).values,
                        "corrected_tg_c_yr": (base + delta).sel(domain=list(doms)).values,
                        "change_tg_c_yr": delta.sel(domain=list(doms)).values})
    cmap = dc.sum("time")
    cmap.attrs = {"units": "g C m-2 yr-1", "long_name": f"post-fire NEE correction {year}"}
    return tab, cmap
