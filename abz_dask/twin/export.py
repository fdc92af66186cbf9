"""Export the twin's predictors as the files a scientist would bring, plus the matching config.

:func:`export_twin` writes, from a twin's ``cube.zarr``, the kinds of inputs
``abz-dask build-cube`` must read (seed-spec §3.2 style integer scaling and sentinels):

=================  ==========================================  ===========================
predictor          files                                       encoding
=================  ==========================================  ===========================
srad               GeoTIFF per month, EPSG:4326                uint16 × 0.1, nodata 65535
tair               GeoTIFF per month, EPSG:4326                int16 × 0.01, nodata -32768
vpd, soil_temp     GeoTIFF per month, EPSG:4326                float32, nodata -9999
ndvi               GeoTIFF per 8-day composite ({year}{doy})   int16 × 1e-4, nodata -3000
snow_cover         one NetCDF, 8-day, lon/lat coordinates      float32, CF _FillValue
soil_moisture      one NetCDF, monthly, EPSG:3413 grid_mapping int16, CF scale_factor 1e-4
tree/nontree/      GeoTIFF per year (annual mean), EPSG:4326   uint16 × 0.1, nodata 65535
nonveg_cover
vegtype            GeoTIFF, EPSG:4326                          uint8 codes, nodata 0
cti, perm._prob    GeoTIFF, EPSG:4326                          float32, nodata -9999
soil_ph            GeoTIFF, EPSG:4326                          int16 × 0.01, nodata -1
soc                NetCDF, lon/lat + CF grid_mapping crs_wkt   float32, CF _FillValue
co2                CSV (time, value)                           ppm
fire: burned       GeoTIFF per month, EPSG:4326                float32 fraction, nodata -9999
fraction
fire: emissions    one NetCDF, monthly, EPSG:3413 grid_mapping float32 kg C m-2 month-1
=================  ==========================================  ===========================

Every exported pixel takes the value of the twin cell that contains the pixel centre (the grid's
cell-centre rule). 8-day composites start on days 1, 9, …, 361 of each year and carry the value
of the month they start in; annual layers are the mean of the year's 12 months. Optionally a
block of NDVI composites is blanked (a planted gap) to exercise gap filling; the cells that lose
a whole month are returned.

The twin's fire (annual ``fire.zarr``) is exported as monthly rasters, each year's value spread
over the fire season by :data:`FIRE_SEASON` (the months sum to the year), with the ``fire``
section of the configuration (``start_year`` = the first fire year).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
import yaml
from affine import Affine
from pyproj import CRS, Transformer

from abz_dask.geo.grid import Grid
from abz_dask.geo.regrid import GridSampler, grid_sampler
from abz_dask.twin.generate import TwinLayout

__all__ = ["ExportResult", "export_twin"]

_MONTHLY_TIF = {  # name: (dtype, scale, nodata)
    "srad": ("uint16", 0.1, 65535),
    "tair": ("int16", 0.01, -32768),
    "vpd": ("float32", 1.0, -9999.0),
    "soil_temp": ("float32", 1.0, -9999.0),
}
_ANNUAL = ("tree_cover", "nontree_cover", "nonveg_cover")
_STATIC_TIF = {
    "vegtype": ("uint8", 1.0, 0),
    "cti": ("float32", 1.0, -9999.0),
    "permafrost_prob": ("float32", 1.0, -9999.0),
    "soil_ph": ("int16", 0.01, -1),
}
NDVI = ("int16", 1e-4, -3000)
#: Share of a year's fire in each month of the exported monthly fire rasters (sums to 1).
FIRE_SEASON: dict[int, float] = {5: 0.1, 6: 0.3, 7: 0.4, 8: 0.2}


@dataclass
class ExportResult:
    """What :func:`export_twin` wrote."""

    root: Path
    config: Path
    #: (month index, boolean (y, x) mask) of the cells whose NDVI month was blanked
    ndvi_gap: tuple[int, np.ndarray] | None = None
    files: list[Path] = field(default_factory=list)


def _target(grid: Grid, crs: CRS, transform: Affine, shape: tuple[int, int]) -> GridSampler:
    from odc.geo.geobox import GeoBox

    return grid_sampler(grid, GeoBox(shape, transform, crs.to_wkt()))


def _lonlat_target(grid: Grid, res: float, south: float | None = None) -> GridSampler:
    south = np.floor(grid.south - 1.0) if south is None else south
    ny = round((90.0 - south) / res)
    nx = round(360.0 / res)
    return _target(grid, CRS.from_epsg(4326), Affine(res, 0, -180.0, 0, -res, 90.0), (ny, nx))


def _polar_target(grid: Grid, res: float) -> GridSampler:
    crs = CRS.from_epsg(3413)
    fwd = Transformer.from_crs(grid.crs, crs, always_xy=True)
    hw = grid.half_width
    edge = np.linspace(-hw, hw, 201)
    ex = np.concatenate([edge, edge, np.full(201, -hw), np.full(201, hw)])
    ey = np.concatenate([np.full(201, -hw), np.full(201, hw), edge, edge])
    sx, sy = fwd.transform(ex, ey)
    x0, x1 = np.floor(np.min(sx) / res) * res, np.ceil(np.max(sx) / res) * res
    y0, y1 = np.floor(np.min(sy) / res) * res, np.ceil(np.max(sy) / res) * res
    shape = (round((y1 - y0) / res), round((x1 - x0) / res))
    return _target(grid, crs, Affine(res, 0, x0, 0, -res, y1), shape)


def _encode(values: np.ndarray, dtype: str, scale: float, nodata: float) -> np.ndarray:
    raw = values / scale
    if np.issubdtype(np.dtype(dtype), np.integer):
        raw = np.round(raw)
    return np.where(np.isfinite(raw), raw, nodata).astype(dtype)


def _write_tif(path: Path, data: np.ndarray, t: GridSampler, nodata: float) -> Path:
    import rasterio

    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", height=t.shape[0], width=t.shape[1], count=1,
                       dtype=data.dtype, crs=t.crs.to_wkt(), transform=t.transform,
                       nodata=nodata, compress="deflate") as dst:
        dst.write(data, 1)
    return path


def _composites(years: list[int]) -> pd.DatetimeIndex:
    return pd.DatetimeIndex([pd.Timestamp(y, 1, 1) + pd.Timedelta(days=d)
                             for y in years for d in range(0, 365, 8)])


def _spec(files: str, temporal: str, **kw: Any) -> dict[str, Any]:
    return {"files": files, "temporal": temporal, **kw}


def export_twin(layout: TwinLayout | str | Path, out: str | Path, *, lonlat_res: float = 0.5,
                polar_res: float | None = None, lonlat_south: float | None = None,
                ndvi_gap: bool = True) -> ExportResult:
    """Write the twin's predictors as GeoTIFF / NetCDF / CSV files and a build-cube config.

    Parameters
    ----------
    layout : TwinLayout or path
        A twin run folder.
    out : path
        Folder to write (``build-cube.yaml`` plus one sub-folder per predictor).
    lonlat_res : float
        Pixel size (degrees) of the lon/lat exports.
    polar_res : float, optional
        Pixel size (m) of the EPSG:3413 export (default: a quarter of the grid cell).
    lonlat_south : float, optional
        Southern edge (degrees) of the lon/lat exports (default: 1° south of the grid's circle;
        -90 writes global files).
    ndvi_gap : bool
        Blank the NDVI composites of one month in a lon/lat box (a planted gap).

    Returns
    -------
    ExportResult
    """
    layout = layout if isinstance(layout, TwinLayout) else TwinLayout(Path(layout))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cube = xr.open_zarr(layout.cube, consolidated=False)
    grid = Grid.of_dataset(cube)
    time = pd.DatetimeIndex(cube.time.values)
    years = sorted(set(time.year))
    ll = _lonlat_target(grid, lonlat_res, lonlat_south)
    res = ExportResult(out, out / "build-cube.yaml")
    preds: dict[str, Any] = {}

    for name, (dtype, scale, nodata) in _MONTHLY_TIF.items():
        arr = cube[name].values
        sep = "-" if name == "tair" else ""
        for i, t in enumerate(time):
            data = _encode(ll.sample(arr[i]), dtype, scale, nodata)
            res.files.append(_write_tif(out / name / f"{name}_{t.year}{sep}{t.month:02d}.tif",
                                        data, ll, nodata))
        preds[name] = _spec(f"{name}/{name}_{{year}}{sep}{{month:02d}}.tif", "monthly",
                            scale=scale, nodata=[nodata])

    # NDVI: 8-day GeoTIFFs, integer-scaled, with a planted gap
    comp = _composites(years)
    arr = cube["ndvi"].values
    midx = {(t.year, t.month): i for i, t in enumerate(time)}
    gap_month = len(time) // 2 + 6 if len(time) >= 24 else len(time) // 2
    gap_month = min(gap_month, len(time) - 2)
    lon = ll.transform.c + (np.arange(ll.shape[1]) + 0.5) * ll.transform.a
    lat = ll.transform.f + (np.arange(ll.shape[0]) + 0.5) * ll.transform.e
    box = (lat[:, None] >= 58) & (lat[:, None] <= 66) & (lon[None, :] >= 95) \
        & (lon[None, :] <= 115)
    dtype, scale, nodata = NDVI
    for c in comp:
        i = midx[(c.year, c.month)]
        vals = ll.sample(arr[i])
        if ndvi_gap and i == gap_month:
            vals[box] = np.nan
        doy = c.day_of_year
        res.files.append(_write_tif(out / "ndvi" / f"MOD13_ndvi_{c.year}{doy:03d}.tif",
                                    _encode(vals, dtype, scale, nodata), ll, nodata))
    preds["ndvi"] = _spec("ndvi/MOD13_ndvi_{year}{doy:03d}.tif", "8day", scale=scale,
                          nodata=[nodata], valid_range=[-0.2, 1.0], gapfill={"max_gap": 2})
    if ndvi_gap:
        # cells all of whose pixel centres fall in the box (and that have data) lose the month
        hit = np.zeros(grid.shape, np.int64)
        tot = np.zeros(grid.shape, np.int64)
        inside = ll.inside
        np.add.at(tot, (ll.row[inside], ll.col[inside]), 1)
        np.add.at(hit, (ll.row[inside & box], ll.col[inside & box]), 1)
        lost = (tot > 0) & (hit == tot) & np.isfinite(arr[gap_month])
        res.ndvi_gap = (gap_month, lost)

    # snow cover: 8-day NetCDF on lon/lat (no grid_mapping: CF lon/lat coordinates)
    snow = cube["snow_cover"].values
    stack = np.stack([ll.sample(snow[midx[(c.year, c.month)]]) for c in comp]).astype("f4")
    ds = xr.Dataset({"snow_cover": (("time", "lat", "lon"), stack,
                                    {"units": "1", "long_name": "snow cover fraction"})},
                    coords={"time": comp, "lat": ("lat", lat, {"units": "degrees_north",
                                                               "standard_name": "latitude"}),
                            "lon": ("lon", lon, {"units": "degrees_east",
                                                 "standard_name": "longitude"})})
    path = out / "snow_cover" / "snow_cover_8day.nc"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(path, encoding={"snow_cover": {"_FillValue": np.float32(-1.0), "zlib": True,
                                                "chunksizes": (1, *stack.shape[1:])}})
    res.files.append(path)
    preds["snow_cover"] = _spec("snow_cover/snow_cover_8day.nc", "8day", variable="snow_cover",
                                valid_range=[0.0, 1.0])

    # soil moisture: monthly NetCDF on EPSG:3413 with CF scale_factor and grid_mapping
    pol = _polar_target(grid, polar_res or grid.resolution / 4)
    sm = cube["soil_moisture"].values
    raw = np.stack([_encode(pol.sample(sm[i]), "int16", 1e-4, -32767) for i in range(len(time))])
    px = pol.transform.c + (np.arange(pol.shape[1]) + 0.5) * pol.transform.a
    py = pol.transform.f + (np.arange(pol.shape[0]) + 0.5) * pol.transform.e
    gm = pol.crs.to_cf()
    gm["crs_wkt"] = pol.crs.to_wkt()
    ds = xr.Dataset({"sm": (("time", "y", "x"), raw, {"units": "m3 m-3",
                                                      "grid_mapping": "polar_stereographic"}),
                     "polar_stereographic": ((), np.int32(0), gm)},
                    coords={"time": time,
                            "y": ("y", py, {"standard_name": "projection_y_coordinate",
                                            "units": "m"}),
                            "x": ("x", px, {"standard_name": "projection_x_coordinate",
                                            "units": "m"})})
    path = out / "soil_moisture" / "soil_moisture_monthly_epsg3413.nc"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds["sm"].attrs["scale_factor"] = 1e-4
    ds.to_netcdf(path, encoding={"sm": {"zlib": True, "dtype": "int16",
                                        "_FillValue": np.int16(-32767),
                                        "chunksizes": (1, *raw.shape[1:])}})
    res.files.append(path)
    preds["soil_moisture"] = _spec("soil_moisture/soil_moisture_monthly_epsg3413.nc", "monthly",
                                   variable="sm", valid_range=[0.0, 1.0])

    # annual covers: yearly means
    for name in _ANNUAL:
        arr = cube[name].values
        for y in years:
            sel = np.flatnonzero(time.year == y)
            mean = arr[sel].mean(axis=0)  # NaN outside the domain (NaN in every month)
            data = _encode(ll.sample(mean), "uint16", 0.1, 65535)
            res.files.append(_write_tif(out / "covers" / f"{name}_{y}.tif", data, ll, 65535))
        preds[name] = _spec(f"covers/{name}_{{year}}.tif", "annual", scale=0.1, nodata=[65535],
                            valid_range=[0.0, 100.0], units="%", missing_year="previous")

    # static layers
    for name, (dtype, scale, nodata) in _STATIC_TIF.items():
        data = _encode(ll.sample(cube[name].values), dtype, scale, nodata)
        res.files.append(_write_tif(out / "static" / f"{name}.tif", data, ll, nodata))
        extra: dict[str, Any] = {"categorical": True} if name == "vegtype" else {}
        preds[name] = _spec(f"static/{name}.tif", "static", scale=scale, nodata=[nodata],
                            **extra)
    soc = ll.sample(cube["soc"].values).astype("f4")
    crs = CRS.from_epsg(4326)
    ds = xr.Dataset({"soc": (("lat", "lon"), soc, {"units": "t ha-1", "grid_mapping": "crs"}),
                     "crs": ((), np.int32(0), {**crs.to_cf(), "crs_wkt": crs.to_wkt()})},
                    coords={"lat": ("lat", lat), "lon": ("lon", lon)})
    path = out / "static" / "soc.nc"
    ds.to_netcdf(path, encoding={"soc": {"_FillValue": np.float32(-9999.0)}})
    res.files.append(path)
    preds["soc"] = _spec("static/soc.nc", "static", variable="soc", valid_range=[0.0, 5000.0])

    co2 = pd.DataFrame({"time": [f"{t:%Y-%m}" for t in time],
                        "value": cube["co2"].values.astype(float)})
    co2.to_csv(out / "co2.csv", index=False)
    preds["co2"] = _spec("co2.csv", "series")

    config = {"grid": grid.name if grid.name != "custom" else grid.resolution,
              "start": f"{time[0]:%Y-%m}", "end": f"{time[-1]:%Y-%m}",
              "tile": int(cube[_ANNUAL[0]].chunks[1][0]) if cube[_ANNUAL[0]].chunks else None,
              "predictors": preds}
    if layout.fire.exists():
        config["fire"] = _export_fire(layout, out, ll, pol, res)
    res.config.write_text(yaml.safe_dump(config, sort_keys=False))
    return res


def _export_fire(layout: TwinLayout, out: Path, ll: GridSampler, pol: GridSampler,
                 res: ExportResult) -> dict[str, Any]:
    """The twin's annual fire as monthly rasters (:data:`FIRE_SEASON`): burned fraction as
    lon/lat GeoTIFFs, emissions in kg C m⁻² month⁻¹ as one EPSG:3413 NetCDF; returns the
    ``fire`` section of the build-cube configuration."""
    import rasterio

    fire = xr.open_zarr(layout.fire, consolidated=False)
    years = [int(y) for y in fire["year"].values]
    months = pd.date_range(f"{years[0]}-01", f"{years[-1]}-12", freq="MS")
    nodata = -9999.0
    em = []
    for y in years:
        bf = fire["burned_fraction"].sel(year=y).values.astype(np.float64)
        ann = fire["fire_emissions"].sel(year=y).values.astype(np.float64)
        bf_ll, em_pol = ll.sample(bf), pol.sample(ann)
        for m in range(1, 13):
            w = FIRE_SEASON.get(m, 0.0)
            path = out / "fire" / f"burned_fraction_{y}{m:02d}.tif"
            _write_tif(path, _encode(bf_ll * w, "float32", 1.0, nodata), ll, nodata)
            with rasterio.open(path, "r+") as dst:
                dst.units = ("1",)
            res.files.append(path)
            em.append((em_pol * w / 1000.0).astype("f4"))
    px = pol.transform.c + (np.arange(pol.shape[1]) + 0.5) * pol.transform.a
    py = pol.transform.f + (np.arange(pol.shape[0]) + 0.5) * pol.transform.e
    gm = {**pol.crs.to_cf(), "crs_wkt": pol.crs.to_wkt()}
    ds = xr.Dataset({"C": (("time", "y", "x"), np.stack(em),
                           {"units": "kg C m-2 month-1", "long_name": "fire carbon emissions",
                            "grid_mapping": "polar_stereographic"}),
                     "polar_stereographic": ((), np.int32(0), gm)},
                    coords={"time": months,
                            "y": ("y", py, {"standard_name": "projection_y_coordinate",
                                            "units": "m"}),
                            "x": ("x", px, {"standard_name": "projection_x_coordinate",
                                            "units": "m"})})
    path = out / "fire" / "fire_emissions_monthly_epsg3413.nc"
    ds.to_netcdf(path, encoding={"C": {"zlib": True, "_FillValue": np.float32(nodata),
                                       "chunksizes": (1, *pol.shape)}})
    res.files.append(path)
    return {"start_year": years[0],
            "burned_fraction": _spec("fire/burned_fraction_{year}{month:02d}.tif", "monthly",
                                     nodata=[nodata], units="1"),
            "fire_emissions": _spec("fire/fire_emissions_monthly_epsg3413.nc", "monthly",
                                    variable="C", units="kg C m-2 month-1")}
