"""Incremental reprocessing (issue 22, item 4): new predictor months with unchanged models.

A files-input run over 2001–2003 whose cube is then rewritten with 2004 appended: the rerun
keeps the models (the training table is unchanged: the ABCflux CSV holds 2001–2003 only),
extends the flux store by the 12 new months of every tile (and nothing else), and ends
bit-identical (every variable's values, budgets.csv and Table 1 byte for byte) to a fresh run
over 2001–2004 with the same CSV; the plain Zarr store of that fresh run is the reference of
the Icechunk extension too, whose previous snapshot still shows 2001–2003.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from tests.conftest import TINY_PROFILE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 100-km twin 2001–2004: its full cube, the cube cut at 2003, zones, and the ABCflux
    CSV restricted to 2001–2003."""
    from abz_dask.twin import generate_twin

    base = tmp_path_factory.mktemp("incremental")
    with dask.config.set(scheduler="threads"):
        twin = generate_twin(base / "twin", resolution="100km", start="2001-01", end="2004-12",
                             seed=0, progress=False)
    cube = xr.open_zarr(twin.cube, consolidated=False)
    short = base / "cube_2003.zarr"
    cut = cube.sel(time=cube.time.dt.year <= 2003)
    for v in cut.variables.values():
        v.encoding.pop("preferred_chunks", None)
    cut.to_zarr(short, mode="w", zarr_format=3, consolidated=False)
    csv = pd.read_csv(twin.sites)
    csv[csv["meas_year"] <= 2003].to_csv(base / "abcflux_2003.csv", index=False)
    return {"full": Path(twin.cube), "short": short, "zones": Path(twin.zones),
            "csv": base / "abcflux_2003.csv", "base": base}


def _config(out: Path, cube: Path, inp: dict[str, Path], end: int, **extra: Any) -> Any:
    from abz_dask.pipeline.config import parse_config

    return parse_config({"output": str(out), "progress": False,
                         "input": {"kind": "files", "cube": str(cube), "zones": str(inp["zones"]),
                                   "abcflux": str(inp["csv"])},
                         "training": {"profile": TINY_PROFILE, "seed": 448},
                         "budgets": {"start_year": 2001, "end_year": end},
                         "trends": {"enabled": False}, "report": {"enabled": False}, **extra})


def _run(cfg: Any) -> Any:
    from abz_dask.pipeline.runner import run_pipeline

    with dask.config.set(scheduler="threads"):
        return run_pipeline(cfg)


def _assert_same_values(a: xr.Dataset, b: xr.Dataset) -> None:
    assert sorted(a.variables) == sorted(b.variables)
    for name in b.variables:
        assert a[name].dims == b[name].dims, name
        assert np.array_equal(a[name].values, b[name].values, equal_nan=a[name].dtype.kind
                              == "f"), name


@pytest.fixture(scope="module")
def fresh(inputs: dict[str, Path]) -> Path:
    """Run B: a fresh plain-Zarr run over 2001–2004."""
    out = inputs["base"] / "fresh"
    res = _run(_config(out, inputs["full"], inputs, 2004))
    assert res.stages[[s.name for s in res.stages].index("upscale")].info["extended_from"] == 0
    return out


def _extend(inputs: dict[str, Path], name: str, **extra: Any) -> tuple[Path, Any, Any]:
    """Run A over 2001–2003, then the cube rewritten with 2004 and run again."""
    out = inputs["base"] / name
    cube = inputs["base"] / f"{name}_cube.zarr"
    shutil.copytree(inputs["short"], cube)
    first = _run(_config(out, cube, inputs, 2003, **extra))
    shutil.rmtree(cube)
    shutil.copytree(inputs["full"], cube)  # the same cube, with 12 months appended
    second = _run(_config(out, cube, inputs, 2004, **extra))
    return out, first, second


def test_extension_computes_only_new_months_and_equals_a_fresh_run(
        inputs: dict[str, Path], fresh: Path) -> None:
    out, first, second = _extend(inputs, "extended")
    status = second.status()
    assert status["extract"] == "ran" and status["train"] == "skipped"
    assert status["upscale"] == "ran" and status["budgets"] == "ran"
    up0 = next(s for s in first.stages if s.name == "upscale").info
    up = next(s for s in second.stages if s.name == "upscale").info
    n_tiles = up["tiles"]
    assert up0["tile_months"] == n_tiles * 36
    assert up["extended_from"] == 36 and up["tile_months"] == n_tiles * 12
    tiles = pd.read_csv(out / "upscale_tiles.csv")
    assert len(tiles) == n_tiles and (tiles["months"] == 12).all()

    ext = xr.open_zarr(out / "fluxes.zarr", consolidated=False)
    ref = xr.open_zarr(fresh / "fluxes.zarr", consolidated=False)
    assert ext.sizes == ref.sizes and "upscale_extending" not in ext.attrs
    _assert_same_values(ext, ref)
    assert (out / "budgets.csv").read_bytes() == (fresh / "budgets.csv").read_bytes()

    again = _run(_config(out, out.parent / "extended_cube.zarr", inputs, 2004))
    assert set(again.status().values()) == {"skipped"}


def test_icechunk_extension_is_a_new_commit_keeping_the_old_snapshot(
        inputs: dict[str, Path], fresh: Path) -> None:
    from abz_dask.io.versioned import history, readonly_session

    out, _, second = _extend(inputs, "versioned", store="icechunk")
    up = next(s for s in second.stages if s.name == "upscale").info
    assert up["extended_from"] == 36 and up["tile_months"] == up["tiles"] * 12
    repo = out / "fluxes.icechunk"
    commits = history(repo)
    assert [c["metadata"].get("extended_from") for c in commits[:2]] == [36, 0]
    new = xr.open_zarr(readonly_session(repo).store, consolidated=False)
    old = xr.open_zarr(readonly_session(repo, commits[1]["id"]).store, consolidated=False)
    ref = xr.open_zarr(fresh / "fluxes.zarr", consolidated=False)
    _assert_same_values(new, ref)
    assert old.sizes["time"] == 36 and old.sizes["year"] == 3
    _assert_same_values(old.drop_vars([v for v in old.variables
                                       if {"time", "year"} & set(old[v].dims)]),
                        ref.drop_vars([v for v in ref.variables
                                       if {"time", "year"} & set(ref[v].dims)]))
    for name in ("NEE", "zone_sums", "NEE_boot_sd"):
        dim = "year" if name.endswith("boot_sd") else "time"
        np.testing.assert_array_equal(old[name].values,
                                      ref[name].isel({dim: slice(0, old.sizes[dim])}).values)
    assert (out / "budgets.csv").read_bytes() == (fresh / "budgets.csv").read_bytes()


def test_killed_extension_resumes_only_its_missing_tiles(
        inputs: dict[str, Path], fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import abz_dask.upscale.tiles as tiles_mod

    out = inputs["base"] / "killed"
    cube = inputs["base"] / "killed_cube.zarr"
    shutil.copytree(inputs["short"], cube)
    _run(_config(out, cube, inputs, 2003))
    shutil.rmtree(cube)
    shutil.copytree(inputs["full"], cube)
    real, calls = tiles_mod.upscale_tile, []

    def dies(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[3])
        if len(calls) > 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(tiles_mod, "upscale_tile", dies)
    with pytest.raises(KeyboardInterrupt), dask.config.set(scheduler="synchronous"):
        from abz_dask.pipeline.runner import run_pipeline

        run_pipeline(_config(out, cube, inputs, 2004))
    assert xr.open_zarr(out / "fluxes.zarr", consolidated=False).attrs["upscale_extending"] == {
        "from": 36, "to": 48}
    monkeypatch.setattr(tiles_mod, "upscale_tile", real)
    res = _run(_config(out, cube, inputs, 2004))
    up = next(s for s in res.stages if s.name == "upscale").info
    # the killed run computed 3 tiles' new months, the rerun the other tiles' only
    assert up["resumed_tiles"] == 3 and up["tile_months"] == (up["tiles"] - 3) * 12
    _assert_same_values(xr.open_zarr(out / "fluxes.zarr", consolidated=False),
                        xr.open_zarr(fresh / "fluxes.zarr", consolidated=False))
    assert (out / "budgets.csv").read_bytes() == (fresh / "budgets.csv").read_bytes()
