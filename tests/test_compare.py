"""The comparison stage end to end on a small twin: twin products, metrics, paper-2 tables, CLI.

The "upscaled" flux store of the run is the planted truth itself, so every comparison against
the truth must be perfect (r = 1, budget ratio 1), and the CMIP6-like product's budget must equal
the budget of its documented bias formula applied to the truth.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from abz_dask.aggregation.budgets import domain_weights
from abz_dask.compare.products import read_product, to_annual
from abz_dask.geo.grid import Grid
from abz_dask.geo.regrid import conservative
from abz_dask.twin.comparisons import (
    CMIP6_GPP_FACTOR,
    CMIP6_RECO_FACTOR,
    write_comparison_products,
)

GRID = Grid.from_preset("100km")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import dask

    from abz_dask.io.abcflux import read_abcflux
    from abz_dask.training.extract import extract_training_table, write_training_table
    from abz_dask.twin import generate_twin

    root = tmp_path_factory.mktemp("cmp_run")
    with dask.config.set(scheduler="threads"):
        lay = generate_twin(root / "twin", resolution="100km", start="2001-01", end="2004-12",
                            seed=0, progress=False)
        truth = xr.open_zarr(lay.truth, consolidated=False)
        truth[["NEE", "GPP", "Reco"]].to_zarr(root / "fluxes.zarr", zarr_format=3,
                                              consolidated=False)
        cube = xr.open_zarr(lay.cube, consolidated=False)
        zones = xr.open_zarr(lay.zones, consolidated=False)
        obs = read_abcflux(lay.sites, grid=GRID, zones=zones, years=(2001, 2004))
        table, _ = extract_training_table(obs, cube, GRID)
        write_training_table(table, root / "training")
    return root


def _budget(a: xr.DataArray, zones: xr.Dataset) -> pd.Series:
    w = domain_weights(zones, GRID.cell_area).assign_coords(y=a["y"], x=a["x"])
    return (xr.dot(a.fillna(0.0).astype(float), w, dim=("y", "x")) * 1e-12).mean(
        "year").compute().to_series()


def test_twin_products_files_units_and_idempotence(run: Path) -> None:
    from abz_dask.twin.generate import TwinLayout

    lay = TwinLayout(run / "twin")
    paths = write_comparison_products(lay)
    assert paths["inversion"].name == "GCB2022_inversion_TWIN-INV_1x1_monthly_2001-2004.nc"
    assert paths["cmip6"].name == "nep_Lmon_TWIN-ESM_historical_r1i1p1f1_gn_200101-200412.nc"
    with xr.open_dataset(paths["inversion"]) as ds:
        v = ds["land_flux_only_fossil_cement_adjusted"]
        assert v.attrs["units"] == "kg C m-2 s-1"
        assert ds["latitude"].values[0] > ds["latitude"].values[-1]  # descending, like GCB
        assert ds["longitude"].values.min() >= 0
    with xr.open_dataset(paths["cmip6"], decode_times=xr.coders.CFDatetimeCoder(
            use_cftime=True)) as ds:
        assert ds["time"].dt.calendar == "noleap"
        assert ds.sizes["lon"] == 288 and ds.sizes["lat"] == 192
    mtimes = {k: os.stat(p).st_mtime_ns for k, p in paths.items()}
    again = write_comparison_products(lay)
    assert {k: os.stat(p).st_mtime_ns for k, p in again.items()} == mtimes

    # CMIP6-like budget = budget of (Reco·f_R − GPP·f_G) of the truth, up to the round trip
    # through the coarse lat/lon grid and back (coastal cells mix): NEE within 1 % of the GPP
    # budget, GPP within 2 %
    zones = xr.open_zarr(lay.zones, consolidated=False).load()
    dom = (zones["abz"].astype(bool) & (zones["land_fraction"] > 0)).values
    cm = conservative(to_annual(read_product(paths["cmip6"])), GRID).where(dom)
    truth = xr.open_zarr(lay.truth, consolidated=False)
    want = to_annual(truth["Reco"] * CMIP6_RECO_FACTOR - truth["GPP"] * CMIP6_GPP_FACTOR)
    b_got, b_want = _budget(cm, zones), _budget(want, zones)
    gpp_nc = read_product(paths["cmip6_gpp"], "gpp", sign="nee")
    gpp = conservative(to_annual(gpp_nc), GRID).where(dom)
    g_want = _budget(to_annual(truth["GPP"] * CMIP6_GPP_FACTOR), zones)
    assert _budget(gpp, zones)["abz"] == pytest.approx(g_want["abz"], rel=0.02)
    assert abs(b_got["abz"] - b_want["abz"]) < 0.01 * g_want["abz"]


def test_run_compare_outputs(run: Path) -> None:
    """The runner's compare stage on a twin run: the twin's two products by default."""
    import dask

    from abz_dask.pipeline.config import parse_config
    from abz_dask.pipeline.runner import run_pipeline

    cfg = parse_config({"output": str(run), "progress": False,
                        "input": {"kind": "twin", "resolution": "100km", "start": "2001-01",
                                  "end": "2004-12", "seed": 0},
                        "trends": {"enabled": False},
                        "compare": {"enabled": True, "n_sample": 800, "seed": 1}})
    with dask.config.set(scheduler="threads"):
        res = run_pipeline(cfg, only=("compare",))
    assert res.status() == {"compare": "ran"}
    assert res.stages[0].info["products"] == ["inversion_twin", "cmip6_twin"]
    out = run / "compare"
    for name in ("comparison_metrics.csv", "regional_table.csv", "regional_table.md",
                 "regional_summary.csv", "agreement_summary.csv", "mess_summary.csv",
                 "cluster_centres.csv", "cluster_vegtypes.csv", "compare_mean_nee.png",
                 "compare_agreement.png", "compare_regional.png", "compare_mess.png",
                 "compare_clusters.png"):
        assert (out / name).exists(), name
    assert "maps" in res.stages[0].info["outputs"] and (out / "maps.zarr").is_dir()
    m = pd.read_csv(out / "comparison_metrics.csv")
    t = m[m["product"] == "twin_truth"].set_index("domain")
    # the reference store *is* the truth: perfect agreement
    assert t["r_mean"].iloc[0] == pytest.approx(1.0)
    np.testing.assert_allclose(t["ratio"].to_numpy(), 1.0, rtol=1e-6)
    inv = m[m["product"] == "inversion_twin"].set_index("domain")
    assert bool(inv["fire_removed"].iloc[0])
    assert inv["first_year"].iloc[0] == 2002  # fire record starts in 2002
    assert inv["r_mean"].iloc[0] > 0.3  # a 300-km smoothed copy of the truth (paper: 0.5)
    cm = m[m["product"] == "cmip6_twin"].set_index("domain")
    assert cm.loc["abz", "ratio"] != pytest.approx(1.0, abs=0.05)  # the bias shows
    tab = pd.read_csv(out / "regional_table.csv")
    assert {"in_situ", "upscaling", "inversion", "process_model", "twin_truth"} <= set(
        tab["approach"])
    up = tab[tab["approach"] == "upscaling"].set_index("region")["mean"]
    tr = tab[tab["approach"] == "twin_truth"].set_index("region")["mean"]
    np.testing.assert_allclose(up.to_numpy(), tr.reindex(up.index).to_numpy(), rtol=1e-6)
    agr = pd.read_csv(out / "agreement_summary.csv")
    s = agr.groupby("approach")["area_share"].sum()
    np.testing.assert_allclose(s.to_numpy(), 1.0, rtol=1e-6)
    cl = pd.read_csv(out / "cluster_centres.csv")
    assert len(cl) == 8 and cl["n_sample"].sum() == 800
    veg = pd.read_csv(out / "cluster_vegtypes.csv", index_col=0)
    np.testing.assert_allclose(veg.sum(axis=1).to_numpy(), 1.0)
    ms = pd.read_csv(out / "mess_summary.csv")
    assert 0.0 <= ms["domain_share_mess_negative"].iloc[0] <= 1.0


def test_run_compare_writes_to_object_storage(run: Path, tmp_path: Path,
                                               s3_bucket: str) -> None:
    """The comparison writes its tables, maps and figures to an S3 location (a moto server)
    exactly as to a local folder (it used to fail: ``Path()`` of an object-store location)."""
    import dataclasses

    import dask
    import s3fs

    from abz_dask.compare.run import CompareInputs, run_compare
    from abz_dask.io.location import as_path

    twin = run / "twin"
    base = CompareInputs(fluxes=run / "fluxes.zarr", zones=twin / "zones.zarr",
                         cube=twin / "cube.zarr", fire=None, truth=twin / "truth.zarr",
                         training=run / "training" / "training_table.parquet",
                         out=tmp_path / "local")
    remote = f"{s3_bucket}/run/compare"
    kw = {"years": (2001, 2004), "n_sample": 400, "seed": 1, "figures": True}
    with dask.config.set(scheduler="threads"):
        local = run_compare(base, [], **kw)
        written = run_compare(dataclasses.replace(base, out=as_path(remote)), [], **kw)
    assert sorted(written) == sorted(local)
    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    for name in ("comparison_metrics.csv", "regional_table.csv", "regional_table.md",
                 "agreement_summary.csv", "mess_summary.csv", "products.json"):
        assert fs.cat(f"{remote}/{name}") == (tmp_path / "local" / name).read_bytes(), name
    assert fs.cat(f"{remote}/compare_mean_nee.png")[:4] == b"\x89PNG"
    maps = xr.open_zarr(f"{remote}/maps.zarr", consolidated=False)
    ref = xr.open_zarr(tmp_path / "local" / "maps.zarr", consolidated=False)
    xr.testing.assert_identical(maps.load(), ref.load())


def test_cli_compare_with_product(run: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib

    from typer.testing import CliRunner

    import abz_dask.commands.compare as cmd
    from abz_dask.cli import app

    # the command's wiring is under test here, not LocalCluster start-up (tests/test_clusters.py)
    monkeypatch.setattr(cmd, "local_cluster", lambda workers: contextlib.nullcontext())

    r2 = tmp_path / "run"
    r2.mkdir()
    for name in ("fluxes.zarr", "twin", "training"):
        src = run / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, r2 / name)
    nc = next((r2 / "twin").glob("nep_Lmon_*.nc"))
    res = CliRunner().invoke(app, ["compare", str(r2), "--product", f"cmip6_x={nc}:nep",
                                   "--workers", "1", "--no-coverage", "--no-figures"])
    assert res.exit_code == 0, res.output
    m = pd.read_csv(r2 / "compare" / "comparison_metrics.csv")
    assert set(m["product"]) == {"cmip6_x", "twin_truth"}
    bad = CliRunner().invoke(app, ["compare", str(r2), "--product", "nonsense"])
    assert bad.exit_code != 0
    assert "NAME=PATH" in bad.output
