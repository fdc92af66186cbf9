"""Zonal engine: flux totals, budgets and per-area means by any zone layer (seed-spec §4.8, §4.12).

A *zone layer* is an integer label raster ``(y, x)`` with names for its codes
(:class:`ZoneLayer`): a categorical layer of ``zones.zarr`` (``biome``, ``continent``,
``key_region``, ``reccap2``, ``igbp`` vegetation types), a boolean one (``abz``, ``permafrost``),
the combination ``key_region_biome`` (Fig. 4) or a user's label raster. Cells outside the
restricting domain (``within``, default the ABZ) or with label ``-1`` belong to no zone.

Reductions are flox ``groupby`` sums of ``flux × pixel area`` over ``(y, x)``, where the pixel
area is the exact cell area × land fraction (DECISIONS 2). They are lazy: for a dask-backed flux
cube each chunk is reduced to ``(time, zone)`` partial sums (map-reduce), so memory is bounded
by the chunk size, never by the grid. Units: monthly fluxes in g C m⁻² month⁻¹ give zone totals
in g C month⁻¹; annual budgets are in Tg C yr⁻¹ and per-area means in g C m⁻² yr⁻¹
(= budget / zone area, the area-weighted mean of pixel annual sums).

The four Table-1 domains overlap (ABZ ⊃ tundra, boreal; permafrost ⊂ ABZ) so they are not one
label raster: :func:`domain_budgets` reads them from the flux store's ``zone_sums``, which also
hold every bootstrap replicate, so the budget SD over replicates comes without re-reading maps.
For other layers the bootstrap SD needs the replicate maps (``<flux>_replicates``, written when
the upscaler runs with ``store_replicates=True``); without them it is NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import xarray as xr

from abz_dask.aggregation.budgets import DOMAINS
from abz_dask.aggregation.periods import complete_years
from abz_dask.aggregation.units import (
    BUDGET_MONTH_UNITS,
    BUDGET_UNITS,
    M2_PER_MKM2,
    TG_PER_G,
)
from abz_dask.geo.grid import Grid
from abz_dask.geo.zones import ZONE_LABELS
from abz_dask.io.integrity import verify_store
from abz_dask.io.location import as_path, url
from abz_dask.io.versioned import is_icechunk_repo, readonly_session

__all__ = [
    "ZoneLayer",
    "annual_zonal_budgets",
    "domain_budgets",
    "domain_totals",
    "fire_budgets",
    "open_flux_store",
    "pixel_area",
    "zonal_budget_table",
    "zonal_totals",
    "zone_area",
    "zone_layer",
]

#: Layers combined from two categorical layers: name -> (outer, inner).
COMBINED: dict[str, tuple[str, str]] = {"key_region_biome": ("key_region", "biome"),
                                        "continent_biome": ("continent", "biome")}


@dataclass(frozen=True)
class ZoneLayer:
    """An integer label raster and the names of its codes.

    Attributes
    ----------
    name : str
        Layer name (recorded in outputs).
    labels : xarray.DataArray
        ``(y, x)`` int32 labels; ``-1`` = no zone.
    names : dict of int to str
        Code -> zone name, for every code that is reported (codes absent from the raster give
        zero totals and zero area).
    """

    name: str
    labels: xr.DataArray
    names: dict[int, str]

    @property
    def codes(self) -> np.ndarray:
        """The reported codes, sorted."""
        return np.array(sorted(self.names), dtype=np.int32)


def open_flux_store(store: str | Path | xr.Dataset, version: str | None = None) -> xr.Dataset:
    """Open a flux store lazily (a plain ``fluxes.zarr``, or an Icechunk repository
    ``fluxes.icechunk`` read-only at ``version``), or pass a Dataset through.

    Parameters
    ----------
    store : location or Dataset
        The flux store.
    version : str, optional
        Icechunk only: a tag (release name) or snapshot id; default the last commit of
        ``main``. Readers of a repository never see uncommitted (half-written) work.

    Raises
    ------
    FileNotFoundError
        If the store does not exist.
    ValueError
        If its tile ledger (``fluxes.zarr.done/``) lists fewer tiles than the store has (an
        upscaling run still going or killed); an Icechunk repository without a commit of the
        upscaling, or an unknown ``version``; a ``version`` for a plain store.
    DamagedOutputError
        If the store differs from the digest its stage recorded (:mod:`abz_dask.io.integrity`).
    """
    if isinstance(store, xr.Dataset):
        return store
    if is_icechunk_repo(store):
        session = readonly_session(store, version)
        try:
            return xr.open_zarr(session.store, consolidated=False)
        except (FileNotFoundError, KeyError, ValueError) as e:
            raise ValueError(f"flux store {store} holds no committed upscaling at "
                             f"{version or 'main'} ({e}); run the upscaling stage") from None
    if version is not None:
        raise ValueError(f"flux store {store}: version {version!r} given, but only an "
                         "Icechunk store (store: icechunk) has versions")
    p = as_path(store)
    if not p.exists():
        raise FileNotFoundError(f"flux store {p} does not exist")
    verify_store(p)
    ds = xr.open_zarr(url(p), consolidated=False)
    ledger = p.parent / (p.name + ".done")
    if ledger.is_dir() and "tile_id" in ds.sizes:
        done = len([q for q in ledger.iterdir() if not q.name.startswith(".")])
        if done < ds.sizes["tile_id"]:
            raise ValueError(f"flux store {p} is unfinished: {done} of {ds.sizes['tile_id']} "
                             f"tiles in {ledger}; rerun the upscaling stage to complete it")
    return ds


def pixel_area(zones: xr.Dataset, cell_area: float) -> xr.DataArray:
    """Pixel area (m²) = cell area × land fraction, ``(y, x)``, 0 where the fraction is NaN."""
    if "land_fraction" not in zones:
        raise ValueError("zones Dataset has no 'land_fraction' variable")
    a = zones["land_fraction"].fillna(0.0).astype(np.float64) * float(cell_area)
    a.name = "pixel_area"
    a.attrs = {"units": "m2", "long_name": "cell area x land fraction"}
    return a.drop_vars([c for c in a.coords if c not in ("y", "x")])


def _mask(zones: xr.Dataset, within: str | None) -> xr.DataArray | None:
    if within is None:
        return None
    try:
        m = zones.eval(within) if within not in zones else zones[within]
    except Exception as e:  # pandas eval raises many types
        raise ValueError(f"cannot evaluate within={within!r} on the zones Dataset: {e}") from e
    return cast(xr.DataArray, m).fillna(False).astype(bool)


def zone_layer(zones: xr.Dataset, layer: str | xr.DataArray, *,
               names: Mapping[int, str] | None = None, within: str | None = "abz",
               drop_codes: Sequence[int] | None = None) -> ZoneLayer:
    """Build a :class:`ZoneLayer` from a zones Dataset.

    Parameters
    ----------
    zones : xarray.Dataset
        Zone layers of the grid (:func:`abz_dask.geo.zones.build_zones`, ``twin/zones.zarr``).
    layer : str or xarray.DataArray
        A variable of ``zones`` (``biome``, ``continent``, ``key_region``, ``reccap2``, ``igbp``,
        ``abz``, ``permafrost``), a combined layer (``key_region_biome``, ``continent_biome``) or
        a user's integer label raster on the grid (``(y, x)``; negative or NaN = no zone;
        user polygons: rasterise them with :func:`abz_dask.cube_build.user_zones.rasterize_polygons`
        and pass ``drop_codes=[0]``).
    names : mapping, optional
        Code -> name. Default: the CF ``flag_meanings`` of the layer (codes named ``none`` or
        ``outside_abz`` are dropped), ``{1: layer}`` for boolean layers, ``zone_<code>`` for a
        user raster.
    within : str, optional
        Variable or expression of ``zones`` restricting the zones (default ``"abz"``: the
        domain); ``None`` keeps every labelled cell.
    drop_codes : sequence of int, optional
        Codes to leave out (default: the "none" codes described above).

    Returns
    -------
    ZoneLayer

    Raises
    ------
    ValueError
        For an unknown layer name, a raster of another shape, or a bad ``within``.
    """
    shape = (zones.sizes["y"], zones.sizes["x"])
    if isinstance(layer, xr.DataArray):
        lab = layer.transpose("y", "x") if set(layer.dims) == {"y", "x"} else layer
        if tuple(lab.shape) != shape:
            raise ValueError(f"label raster {layer.name!r} has shape {tuple(lab.shape)}, "
                             f"the zones grid {shape}")
        lab = lab.assign_coords(y=zones["y"], x=zones["x"])
        lname = str(layer.name or "user")
        lab = lab.fillna(-1).astype(np.int32)
        if names is None:
            vals = np.unique(np.asarray(lab.values))
            names = {int(v): f"zone_{int(v)}" for v in vals if v >= 0}
        default_drop: list[int] = []
    elif layer in COMBINED:
        outer, inner = COMBINED[layer]
        o = zones[outer].fillna(0).astype(np.int32)
        i = zones[inner].fillna(0).astype(np.int32)
        lab = xr.where((o > 0) & (i > 0), o * 100 + i, -1).astype(np.int32)
        lname = layer
        if names is None:
            names = {oc * 100 + ic: f"{on}_{inn}" for oc, on in ZONE_LABELS[outer].items()
                     for ic, inn in ZONE_LABELS[inner].items() if oc > 0 and ic > 0}
        default_drop = []
    elif isinstance(layer, str) and layer in zones:
        var = zones[layer]
        lname = layer
        if var.dtype == bool:
            lab = var.fillna(False).astype(np.int32)
            names = names or {1: layer}
            default_drop = [0]
        else:
            lab = var.fillna(-1).astype(np.int32)
            if names is None:
                if layer in ZONE_LABELS:
                    names = dict(ZONE_LABELS[layer])
                elif "flag_meanings" in var.attrs:
                    names = dict(zip(np.asarray(var.attrs["flag_values"]).tolist(),
                                     str(var.attrs["flag_meanings"]).split(), strict=True))
                else:
                    vals = np.unique(np.asarray(var.values))
                    names = {int(v): f"{layer}_{int(v)}" for v in vals if v >= 0}
            default_drop = [c for c, n in names.items() if n in ("none", "outside_abz")]
    else:
        known = sorted([str(v) for v in zones.data_vars if zones[v].dims == ("y", "x")]
                       + list(COMBINED))
        raise ValueError(f"unknown zone layer {layer!r}; choose one of {known} or pass a "
                         "label raster")
    drop = set(default_drop if drop_codes is None else drop_codes)
    names = {int(k): str(v) for k, v in names.items() if int(k) not in drop}
    m = _mask(zones, within)
    if m is not None:
        lab = lab.where(m, -1)
    lab = lab.drop_vars([c for c in lab.coords if c not in ("y", "x")]).astype(np.int32)
    lab.name = "zone"
    return ZoneLayer(lname, lab, names)


def zonal_totals(data: xr.DataArray | xr.Dataset, layer: ZoneLayer, area: xr.DataArray
                 ) -> xr.DataArray | xr.Dataset:
    """Σ over each zone's cells of ``data × area`` (flox groupby-sum over ``(y, x)``), lazy.

    Parameters
    ----------
    data : xarray.DataArray or xarray.Dataset
        Fields with dimensions ``(..., y, x)`` (e.g. monthly fluxes, g C m⁻² month⁻¹). NaN
        cells contribute nothing.
    layer : ZoneLayer
        The zones.
    area : xarray.DataArray
        Pixel area ``(y, x)`` (m²), :func:`pixel_area`.

    Returns
    -------
    xarray.DataArray or xarray.Dataset
        ``(..., zone)`` totals (unit of ``data`` × m², e.g. g C month⁻¹), float64, with the
        coordinate ``zone`` (codes) and ``zone_name``.
    """
    from flox.xarray import xarray_reduce

    w = area.astype(np.float64)
    weighted: xr.DataArray | xr.Dataset
    if isinstance(data, xr.Dataset):
        weighted = data.map(lambda v: v.astype(np.float64).fillna(0.0) * w)
    else:
        weighted = data.astype(np.float64).fillna(0.0) * w
    out = xarray_reduce(weighted, layer.labels.rename("zone"), func="sum",
                        expected_groups=(layer.codes,), dim=("y", "x"), fill_value=0.0)
    out = out.assign_coords(zone_name=("zone", [layer.names[int(c)] for c in layer.codes]))
    out.attrs["zone_layer"] = layer.name
    return out


def zone_area(layer: ZoneLayer, area: xr.DataArray) -> xr.DataArray:
    """Area (m²) of every zone, ``(zone,)``, computed."""
    a = cast(xr.DataArray, zonal_totals(xr.ones_like(area), layer, area).compute())
    a.name = "area_m2"
    a.attrs["units"] = "m2"
    return a


def annual_zonal_budgets(monthly: xr.DataArray | xr.Dataset, layer: ZoneLayer,
                         area: xr.DataArray) -> xr.DataArray | xr.Dataset:
    """Annual budgets (Tg C yr⁻¹) per zone from monthly fluxes (g C m⁻² month⁻¹), lazy.

    Years with fewer than 12 months are dropped. Returns ``(..., year, zone)``.
    """
    tot = zonal_totals(monthly, layer, area) * TG_PER_G
    years = complete_years(monthly["time"])
    if len(years) == 0:
        raise ValueError("no complete calendar year (12 months) in the flux data")
    ann = tot.groupby("time.year").sum().sel(year=years)
    ann.attrs.update({"units": BUDGET_UNITS, "zone_layer": layer.name})
    return ann


def domain_totals(data: xr.DataArray | xr.Dataset, zones: xr.Dataset, area: xr.DataArray,
                  domains: Mapping[str, str] | None = None) -> xr.DataArray | xr.Dataset:
    """Σ ``data × area`` over each of several possibly overlapping domains, in one flox pass.

    Every cell gets the bit-mask label ``Σ_i 2^i [cell in domain i]``; one groupby-sum over the
    ``2^n`` labels is then added up per domain, so the cube is read once however many domains
    overlap.

    Parameters
    ----------
    data : xarray.DataArray or xarray.Dataset
        ``(..., y, x)`` fields.
    zones : xarray.Dataset
        Zone layers.
    area : xarray.DataArray
        Pixel area (m²).
    domains : mapping, optional
        Domain name -> variable or expression of ``zones`` (default
        :data:`abz_dask.aggregation.budgets.DOMAINS`: abz, tundra, boreal, permafrost). At most 16.

    Returns
    -------
    xarray.DataArray or xarray.Dataset
        ``(..., domain)`` totals, lazy.
    """
    doms = dict(domains or DOMAINS)
    if len(doms) > 16:
        raise ValueError(f"at most 16 overlapping domains per pass, got {len(doms)}")
    code = xr.zeros_like(zones["land_fraction"], dtype=np.int32)
    for i, expr in enumerate(doms.values()):
        m = _mask(zones, expr)
        assert m is not None
        code = code + (m.astype(np.int32) << i)
    n = 1 << len(doms)
    lay = ZoneLayer("domain_bits", code.where(code > 0, -1).astype(np.int32),
                    {c: f"bits_{c}" for c in range(1, n)})
    tot = zonal_totals(data, lay, area)
    member = np.array([[(c >> i) & 1 for c in range(1, n)] for i in range(len(doms))],
                      dtype=np.float64)
    sel = xr.DataArray(member, dims=("domain", "zone"),
                       coords={"domain": list(doms), "zone": np.arange(1, n, dtype=np.int32)})
    tot = tot.drop_vars("zone_name")
    if isinstance(tot, xr.Dataset):
        out = tot.map(lambda v: xr.dot(v, sel, dim="zone"))
    else:
        out = xr.dot(tot, sel, dim="zone")
    out.attrs["domains"] = str(doms)
    return out


def fire_budgets(fire: xr.Dataset, zones: xr.Dataset, cell_area: float, *,
                 variable: str = "fire_emissions", domains: Mapping[str, str] | None = None,
                 layer: ZoneLayer | None = None) -> xr.DataArray:
    """Annual fire-emission budgets (Tg C yr⁻¹) per domain or per zone of a layer, lazy.

    The package's one definition of a fire budget, the one of the digital twin's truth
    (:mod:`abz_dask.twin.fire`: emissions in g C per m² of *cell* area per year): the sum over
    the domain's (or zone's) cells of ``emissions × cell area``, whatever the cell's land
    fraction; NaN emissions count as no fire. The NEE + fire budget of a domain is its NEE
    budget (Σ NEE × cell area × land fraction) plus this fire budget. Emissions regridded with
    :func:`abz_dask.geo.regrid.mass_sum` are per m² of cell area too.

    Parameters
    ----------
    fire : xarray.Dataset
        Fire store (``fire.zarr``) with ``variable`` ``(year, y, x)``.
    zones : xarray.Dataset
        Zone layers of the same grid.
    cell_area : float
        Cell area (m²).
    variable : str
        Emission variable of ``fire``.
    domains : mapping, optional
        Domain name -> variable or expression of ``zones`` (default
        :data:`abz_dask.aggregation.budgets.DOMAINS`); ignored when ``layer`` is given.
    layer : ZoneLayer, optional
        Zones of a layer (:func:`zone_layer`) instead of the overlapping domains.

    Returns
    -------
    xarray.DataArray
        ``(year, domain)``, or ``(year, zone)`` for a layer.

    Raises
    ------
    ValueError
        If ``fire`` has no ``variable``.
    """
    if variable not in fire:
        raise ValueError(f"fire store has no variable {variable!r} (has "
                         f"{sorted(map(str, fire.data_vars))})")
    cell = xr.full_like(zones["land_fraction"], float(cell_area), dtype=np.float64)
    cell = cell.drop_vars([c for c in cell.coords if c not in ("y", "x")])
    tot = (zonal_totals(fire[variable], layer, cell) if layer is not None
           else domain_totals(fire[variable], zones, cell, domains)) * TG_PER_G
    tot.attrs.update({"units": BUDGET_UNITS, "long_name": "fire carbon emissions"})
    return cast(xr.DataArray, tot)


def domain_budgets(store: str | Path | xr.Dataset, *, monthly: bool = False) -> xr.DataArray:
    """Budgets of every model from the store's ``zone_sums`` (the Table-1 domains), lazy.

    Parameters
    ----------
    store : path or xarray.Dataset
        Flux store with ``zone_sums (tile_id, flux, model, time, domain)`` in g C month⁻¹.
    monthly : bool
        Return monthly budgets (Tg C month⁻¹, ``(flux, model, time, domain)``) instead of
        annual ones (Tg C yr⁻¹, ``(flux, model, year, domain)``, complete years only).

    Returns
    -------
    xarray.DataArray
        Model 0 is the central model, 1..B the bootstrap replicates.
    """
    ds = open_flux_store(store)
    if "zone_sums" not in ds:
        raise ValueError("flux store has no 'zone_sums' variable (written by run_upscale)")
    zs = ds["zone_sums"].sum("tile_id") * TG_PER_G
    if monthly:
        zs.attrs["units"] = BUDGET_MONTH_UNITS
        return zs
    years = complete_years(zs["time"])
    ann = zs.groupby("time.year").sum().sel(year=years)
    ann.attrs["units"] = BUDGET_UNITS
    return ann


def _replicate_budgets(ds: xr.Dataset, flux: str, layer: ZoneLayer, area: xr.DataArray
                       ) -> xr.DataArray | None:
    name = f"{flux}_replicates"
    if name not in ds:
        return None
    return cast(xr.DataArray, annual_zonal_budgets(ds[name], layer, area))


def zonal_budget_table(store: str | Path | xr.Dataset, zones: xr.Dataset,
                       layer: str | xr.DataArray | ZoneLayer, *, start: int | None = None,
                       end: int | None = None, fluxes: Sequence[str] | None = None,
                       within: str | None = "abz") -> pd.DataFrame:
    """Period-mean budgets and per-area means per zone of a layer, with bootstrap SD.

    Parameters
    ----------
    store : path or xarray.Dataset
        Flux store (``NEE``, ``GPP``, ``Reco`` ``(time, y, x)``).
    zones : xarray.Dataset
        Zone layers of the same grid.
    layer : str, xarray.DataArray or ZoneLayer
        See :func:`zone_layer`.
    start, end : int, optional
        First and last year of the period (default: every complete year).
    fluxes : sequence of str, optional
        Default: the store's ``NEE``, ``GPP``, ``Reco`` that exist.
    within : str, optional
        Domain restriction (see :func:`zone_layer`).

    Returns
    -------
    pandas.DataFrame
        ``layer, zone, code, flux, budget_tg_c_yr, boot_sd_tg_c_yr, interannual_sd_tg_c_yr,
        per_area_g_c_m2_yr, area_mkm2, n_years, n_bootstrap``. ``boot_sd`` is the SD (ddof 1)
        over the replicates' period budgets when replicate maps are stored, else NaN.
    """
    ds = open_flux_store(store)
    grid = Grid.of_dataset(ds)
    lay = layer if isinstance(layer, ZoneLayer) else zone_layer(zones, layer, within=within)
    area = pixel_area(zones, grid.cell_area)
    fl = list(fluxes) if fluxes else [f for f in ("NEE", "GPP", "Reco") if f in ds]
    missing = [f for f in fl if f not in ds]
    if missing:
        raise ValueError(f"flux store has no variable(s) {missing}")
    ann = annual_zonal_budgets(ds[fl], lay, area).sel(year=slice(start, end)).compute()
    zarea = zone_area(lay, area)
    rows = []
    for f in fl:
        rep = _replicate_budgets(ds, f, lay, area)
        rep_mean = (rep.sel(year=slice(start, end)).mean("year").compute()
                    if rep is not None else None)
        for code in lay.codes:
            s = ann[f].sel(zone=code)
            a = float(zarea.sel(zone=code))
            b = float(s.mean("year"))
            sd = (float(rep_mean.sel(zone=code).std(ddof=1))
                  if rep_mean is not None and rep_mean.sizes["replicate"] > 1 else np.nan)
            rows.append({"layer": lay.name, "zone": lay.names[int(code)], "code": int(code),
                         "flux": f, "budget_tg_c_yr": b, "boot_sd_tg_c_yr": sd,
                         "interannual_sd_tg_c_yr": float(s.std(ddof=1)),
                         "per_area_g_c_m2_yr": b / TG_PER_G / a if a > 0 else np.nan,
                         "area_mkm2": a / M2_PER_MKM2, "n_years": int(s.sizes["year"]),
                         "n_bootstrap": (0 if rep_mean is None
                                         else int(rep_mean.sizes["replicate"]))})
    return pd.DataFrame(rows)
