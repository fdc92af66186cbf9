"""Fire: reading fire rasters, NEE + fire, years since fire and the post-fire bias test
(seed-spec §3.3, §4.9, §4.11; DECISIONS 15, 16).

:func:`read_raster` opens a fire raster (GeoTIFF or NetCDF, geographic or projected) lazily with
its CRS; the mass-conserving regridding onto the grid is
:func:`abz_dask.geo.regrid.mass_sum` (``kind="density"``: per m² of source cell or a burned
fraction; ``kind="total"``: per source cell; output per m² of target cell).

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

import numpy as np
import pandas as pd
import xarray as xr

from abz_dask.aggregation.budgets import DOMAINS
from abz_dask.aggregation.units import BUDGET_UNITS, FLUX_ANNUAL_UNITS, TG_PER_G
from abz_dask.aggregation.zonal import (
    domain_totals,
    fire_budgets,
    open_flux_store,
    pixel_area,
)
from abz_dask.analyses.seasonal import pixel_annual
from abz_dask.analyses.series import nee_plus_fire as nee_plus_fire_map
from abz_dask.geo.grid import Grid
from abz_dask.io.location import as_path, url

__all__ = [
    "BiasModel",
    "burn_history",
    "fit_postfire_bias",
    "nee_plus_fire",
    "postfire_correction",
    "read_cv_predictions",
    "read_raster",
]

#: Months of the post-fire correction (DECISIONS 15).
CORRECTION_MONTHS: tuple[int, ...] = (5, 6, 7)


# --------------------------------------------------------------------------------------------
# reading


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

    p = as_path(path)
    if not p.exists():
        raise FileNotFoundError(f"fire raster {p} does not exist")
    if p.suffix.lower() in (".tif", ".tiff"):
        da = rioxarray.open_rasterio(p, chunks={}, masked=True)
        if isinstance(da, list | xr.Dataset):
            raise ValueError(f"{p}: expected a single raster, got subdatasets")
    else:
        ds = xr.open_zarr(url(p)) if p.suffix == ".zarr" else xr.open_dataset(url(p), chunks={})
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


# --------------------------------------------------------------------------------------------
# NEE + fire and burn history


def nee_plus_fire(store: str | Path | xr.Dataset, fire: xr.Dataset, zones: xr.Dataset, *,
                  start: int | None = None, end: int | None = None,
                  variable: str = "fire_emissions") -> xr.Dataset:
    """Annual NEE + fire maps and domain budgets for the fire years, lazy maps.

    Budgets: the NEE budget of the maps (Σ NEE × cell area × land fraction) plus the fire
    budget of :func:`abz_dask.aggregation.zonal.fire_budgets` (Σ emissions × cell area over the
    domain's cells, the twin truth's definition). Maps: fire emissions (g C m⁻² of cell) are
    converted to g C m⁻² of land (÷ land fraction) so that they add to NEE per pixel
    (:func:`abz_dask.analyses.series.nee_plus_fire`); they are NaN where NEE is (cells without
    a prediction), so the maps' area total misses the fire of such cells; the budget keeps it.

    Returns
    -------
    xarray.Dataset
        ``nee_plus_fire (year, y, x)`` (g C m⁻² yr⁻¹), ``budget (year, domain)``,
        ``fire_budget (year, domain)`` (Tg C yr⁻¹).
    """
    ds = open_flux_store(store)
    grid = Grid.of_dataset(ds)
    nee = pixel_annual(ds, "NEE", start=start, end=end)
    yrs = np.intersect1d(nee["year"].values, fire["year"].values)
    if len(yrs) == 0:
        raise ValueError("no year is common to the flux store and the fire data")
    fb = fire_budgets(fire.sel(year=yrs), zones, grid.cell_area, variable=variable)
    maps = nee_plus_fire_map(nee.sel(year=yrs), fire[variable].sel(year=yrs),
                             zones["land_fraction"].fillna(0.0))
    area = pixel_area(zones, grid.cell_area)
    nb = domain_totals(nee.sel(year=yrs), zones, area) * TG_PER_G
    out = xr.Dataset({"nee_plus_fire": maps, "budget": nb + fb, "fire_budget": fb})
    out["nee_plus_fire"].attrs = {"units": FLUX_ANNUAL_UNITS}
    out["budget"].attrs = out["fire_budget"].attrs = {"units": BUDGET_UNITS}
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
    p = as_path(path)
    if not p.exists():
        raise FileNotFoundError(f"CV predictions {p} not found (written by run_training)")
    df = pd.read_csv(url(p))
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
    grid = Grid.of_dataset(ds)
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
    base = (domain_totals(nee, zones, area, doms).sum("time") * TG_PER_G).compute()
    delta = (domain_totals(dc, zones, area, doms).sum("time") * TG_PER_G).compute()
    tab = pd.DataFrame({"domain": list(doms), "year": year,
                        "budget_tg_c_yr": base.sel(domain=list(doms)).values,
                        "corrected_tg_c_yr": (base + delta).sel(domain=list(doms)).values,
                        "change_tg_c_yr": delta.sel(domain=list(doms)).values})
    cmap = dc.sum("time")
    cmap.attrs = {"units": FLUX_ANNUAL_UNITS, "long_name": f"post-fire NEE correction {year}"}
    return tab, cmap
