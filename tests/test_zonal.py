"""Zonal engine (abz_dask.aggregation.zonal) against direct numpy sums and the existing budget code.

The run folder used here (and by test_table1 / test_seasonal / test_fire / test_report) is a
100-km twin 2001–2004 plus a *synthetic* flux store with the upscaler's layout: the central maps
are the planted truth and replicate b is the truth × (1 + s_b), so every budget and bootstrap SD
has a known answer.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import REPLICATE_SCALE, make_run

from abz_dask.aggregation import zonal
from abz_dask.aggregation.budgets import annual_domain_budgets, domain_weights
from abz_dask.geo.grid import Grid


@pytest.fixture(scope="module")
def run100(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def store(run100: Path) -> xr.Dataset:
    return xr.open_zarr(run100 / "fluxes.zarr", consolidated=False)


@pytest.fixture(scope="module")
def zones(run100: Path) -> xr.Dataset:
    return xr.open_zarr(run100 / "twin" / "zones.zarr", consolidated=False).load()


def _numpy_zone_budgets(flux: np.ndarray, labels: np.ndarray, area: np.ndarray,
                        codes: list[int]) -> np.ndarray:
    """(year, zone) budgets in Tg C/yr by plain numpy loops."""
    ny = flux.shape[0] // 12
    out = np.zeros((ny, len(codes)))
    f = np.nan_to_num(flux.astype(np.float64))
    for yi in range(ny):
        annual = f[12 * yi:12 * yi + 12].sum(axis=0)
        for j, c in enumerate(codes):
            m = labels == c
            out[yi, j] = (annual[m] * area[m]).sum() * 1e-12
    return out


@pytest.mark.parametrize("layer", ["biome", "key_region_biome", "reccap2", "igbp",
                                   "permafrost"])
def test_layer_budgets_match_numpy(store: xr.Dataset, zones: xr.Dataset, layer: str) -> None:
    grid = Grid.of_dataset(store)
    lay = zonal.zone_layer(zones, layer)
    area = zonal.pixel_area(zones, grid.cell_area)
    ann = zonal.annual_zonal_budgets(store["NEE"], lay, area)
    assert ann.chunks is not None  # lazy
    got = ann.compute().values
    lab = lay.labels.values
    ref = _numpy_zone_budgets(store["NEE"].values, lab, area.values, list(lay.codes))
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)
    # zones restricted to the ABZ: no zone cell outside it
    assert not ((lab >= 0) & ~zones["abz"].values).any()


def test_biome_budgets_equal_existing_budget_code(store: xr.Dataset, zones: xr.Dataset) -> None:
    grid = Grid.of_dataset(store)
    lay = zonal.zone_layer(zones, "biome")
    area = zonal.pixel_area(zones, grid.cell_area)
    ours = zonal.annual_zonal_budgets(store[["NEE", "GPP"]], lay, area).compute()
    w = domain_weights(zones, grid.cell_area)
    ref = annual_domain_budgets(store[["NEE", "GPP"]], w).compute()
    for f in ("NEE", "GPP"):
        np.testing.assert_allclose(ours[f].sel(zone=1).values,
                                   ref[f].sel(domain="tundra").values, rtol=1e-7)
        np.testing.assert_allclose(ours[f].sel(zone=2).values,
                                   ref[f].sel(domain="boreal").values, rtol=1e-7)


def test_domain_totals_overlapping_domains(store: xr.Dataset, zones: xr.Dataset) -> None:
    grid = Grid.of_dataset(store)
    area = zonal.pixel_area(zones, grid.cell_area)
    tot = zonal.domain_totals(store["Reco"], zones, area)
    got = tot.compute()
    ref = xr.dot(store["Reco"].fillna(0.0).astype(float), domain_weights(zones, grid.cell_area),
                 dim=("y", "x")).compute()
    np.testing.assert_allclose(got.transpose(*ref.dims).values, ref.values, rtol=1e-7)


def test_domain_budgets_from_zone_sums_match_results_table(store: xr.Dataset) -> None:
    from abz_dask.upscale.results import budget_table

    ann = zonal.domain_budgets(store).compute()
    tab = budget_table(store)
    for r in tab.itertuples():
        m = ann.sel(flux=r.flux, domain=r.domain).mean("year")
        assert float(m.sel(model=0)) == pytest.approx(r.estimate_tg_c_yr, rel=1e-12)
        assert float(m.isel(model=slice(1, None)).std(ddof=1)) == pytest.approx(
            r.boot_sd_tg_c_yr, rel=1e-9)


def test_budget_table_boot_sd_and_per_area(store: xr.Dataset, zones: xr.Dataset) -> None:
    tab = zonal.zonal_budget_table(store, zones, "biome")
    assert set(tab["zone"]) == {"tundra", "boreal"}
    for r in tab.itertuples():
        # replicate b = central × (1 + s_b): SD of the replicate budgets = |budget| × SD(s)
        assert r.boot_sd_tg_c_yr == pytest.approx(abs(r.budget_tg_c_yr)
                                                  * np.std(REPLICATE_SCALE, ddof=1), rel=1e-5)
        assert r.per_area_g_c_m2_yr * r.area_mkm2 == pytest.approx(r.budget_tg_c_yr, rel=1e-12)
    areas = zonal.zone_area(zonal.zone_layer(zones, "biome"),
                            zonal.pixel_area(zones, Grid.of_dataset(store).cell_area))
    land = (zones["land_fraction"].values * 1e10)
    b = zones["biome"].values
    assert float(areas.sel(zone=1)) == pytest.approx(land[(b == 1) & zones["abz"].values].sum(),
                                                      rel=1e-6)


def test_user_label_raster_and_errors(store: xr.Dataset, zones: xr.Dataset) -> None:
    grid = Grid.of_dataset(store)
    lab = xr.DataArray(np.where(zones["x"].values[None, :] < 0, 1, 2)
                       * np.ones((zones.sizes["y"], 1), int), dims=("y", "x"), name="halves")
    lay = zonal.zone_layer(zones, lab, names={1: "west", 2: "east"})
    area = zonal.pixel_area(zones, grid.cell_area)
    ann = zonal.annual_zonal_budgets(store["GPP"], lay, area).compute()
    whole = zonal.annual_zonal_budgets(store["GPP"], zonal.zone_layer(zones, "abz"),
                                       area).compute()
    np.testing.assert_allclose(ann.sum("zone").values, whole.sel(zone=1).values, rtol=1e-9)
    with pytest.raises(ValueError, match="unknown zone layer 'nope'"):
        zonal.zone_layer(zones, "nope")
    with pytest.raises(ValueError, match="shape"):
        zonal.zone_layer(zones, lab.isel(y=slice(0, 3)))
    with pytest.raises(FileNotFoundError, match="flux store"):
        zonal.open_flux_store("/nonexistent/fluxes.zarr")


def test_chunk_bounded_graph(store: xr.Dataset, zones: xr.Dataset) -> None:
    """Every task of the reduction touches at most one input chunk of the cube."""
    grid = Grid.of_dataset(store)
    big = store["NEE"].chunk({"time": 12, "y": 15, "x": 15})
    tot = zonal.zonal_totals(big, zonal.zone_layer(zones, "biome"),
                             zonal.pixel_area(zones, grid.cell_area))
    n_chunks = int(np.prod([len(c) for c in big.chunks]))
    assert tot.data.npartitions < n_chunks  # reduced, not materialised as one block
    out = tot.compute()
    ref = zonal.zonal_totals(store["NEE"].compute(), zonal.zone_layer(zones, "biome"),
                             zonal.pixel_area(zones, grid.cell_area))
    np.testing.assert_allclose(out.values, ref.values, rtol=1e-9)
    assert isinstance(pd.Index(out["zone_name"].values), pd.Index)


def test_graph_building_computes_nothing(store: xr.Dataset, zones: xr.Dataset) -> None:
    from conftest import raise_if_dask_computes

    grid = Grid.of_dataset(store)
    area = zonal.pixel_area(zones, grid.cell_area)
    lay = zonal.zone_layer(zones, "reccap2")
    with raise_if_dask_computes():
        ann = zonal.annual_zonal_budgets(store[["NEE", "GPP"]], lay, area)
        dom = zonal.domain_totals(store["Reco"], zones, area)
        reps = zonal.domain_budgets(store)
    assert ann["NEE"].chunks and dom.chunks and reps.chunks


def test_unfinished_store_is_refused(run100: Path, tmp_path: Path) -> None:
    dst = tmp_path / "fluxes.zarr"
    shutil.copytree(run100 / "fluxes.zarr", dst)
    (tmp_path / "fluxes.zarr.done").mkdir()  # ledger with 0 of 1 tiles
    with pytest.raises(ValueError, match="unfinished: 0 of 1 tiles"):
        zonal.open_flux_store(dst)
    (tmp_path / "fluxes.zarr.done" / "all").write_text("{}")
    assert "NEE" in zonal.open_flux_store(dst)


def test_user_polygons_rasterised(store: xr.Dataset, zones: xr.Dataset) -> None:
    """Two half-planes as user polygons: their budgets add up to the ABZ budget."""
    from shapely.geometry import box

    from abz_dask.cube_build.user_zones import rasterize_polygons

    grid = Grid.of_dataset(store)
    w = grid.half_width
    lab = rasterize_polygons([box(-w, -w, 0, w), box(0, -w, w, w)], [1, 2], grid)
    raster = xr.DataArray(lab, dims=("y", "x"), name="halves")
    lay = zonal.zone_layer(zones, raster, names={1: "west", 2: "east"})
    area = zonal.pixel_area(zones, grid.cell_area)
    halves = zonal.annual_zonal_budgets(store["NEE"], lay, area).compute()
    whole = zonal.domain_budgets(store).sel(flux="NEE", model=0, domain="abz").compute()
    np.testing.assert_allclose(halves.sum("zone").values, whole.values, rtol=1e-6)
    west = (zones["x"].values < 0)[None, :] & zones["abz"].values
    ann = np.nan_to_num(store["NEE"].values.astype(float)).reshape(4, 12, *west.shape).sum(1)
    ref = (ann * area.values * west).sum(axis=(1, 2)) * 1e-12
    np.testing.assert_allclose(halves.sel(zone=1).values, ref, rtol=1e-9)
