"""``abz-dask plan``: planned stores and task counts against what a run writes, the 1-km plan
without computing, and a graph that does not grow with the models."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
from conftest import TINY_PROFILE, raise_if_dask_computes

from abz_dask.io.store import iter_tiles
from abz_dask.pipeline.config import RunConfig, parse_config
from abz_dask.pipeline.plan import graph_bytes, plan_run, upscale_graph


def _config(run: Path, **input_: Any) -> RunConfig:
    inp = {"kind": "twin", "resolution": "100km", "start": "2001-01", "end": "2003-12",
           "seed": 0, **input_}
    return parse_config({"output": str(run), "progress": False, "input": inp,
                         "training": {"profile": TINY_PROFILE, "seed": 448},
                         "budgets": {"start_year": 2001, "end_year": 2003},
                         "trends": {"enabled": False}, "cluster": {"kind": "threads"}})


def _written(store: Path) -> dict[str, int]:
    """Counts of a finished store read from its files alone (zarr.json documents parsed here,
    chunk files counted on disk): chunks of every array, uncompressed bytes, files."""
    chunks = raw = meta = 0
    size = {"float32": 4, "float64": 8, "int64": 8, "int8": 1, "bool": 1, "int32": 4,
            "uint8": 1, "int16": 2}
    for doc in store.rglob("zarr.json"):
        meta += 1
        m = json.loads(doc.read_text())
        if m.get("node_type") != "array":
            continue
        shape = m["shape"]
        grid = m["chunk_grid"]["configuration"]["chunk_shape"]
        n = math.prod(math.ceil(s / c) for s, c in zip(shape, grid, strict=True)) if shape \
            else 1
        chunks += n
        if m["data_type"] in size:
            raw += n * math.prod(grid) * size[m["data_type"]]
    files = sum(1 for p in store.rglob("*") if p.is_file() and p.name != "zarr.json")
    return {"chunks": chunks, "raw_bytes": raw, "metadata_files": meta, "chunk_files": files}


def _check_store(planned: Any, store: Path) -> None:
    got = _written(store)
    assert planned.chunks == got["chunks"], store
    assert planned.metadata_files == got["metadata_files"], store
    # zarr skips chunks holding only the fill value: never more chunk files than planned
    assert 0 < got["chunk_files"] <= planned.chunks, store
    assert planned.files == planned.metadata_files + planned.chunks
    # text coordinates (object dtype) have no fixed size; every numeric chunk is counted
    assert planned.raw_bytes == got["raw_bytes"], store
    # compressed bytes on disk are at most the uncompressed chunks (+ metadata documents)
    disk = sum(p.stat().st_size for p in store.rglob("*") if p.is_file()
               and p.name != "zarr.json")
    assert disk <= planned.raw_bytes


def test_plan_matches_the_run(tiny_run: Path, tmp_path: Path) -> None:
    """The planned twin and flux stores equal what the twin and the upscaler write; the planned
    tasks are the tiles the upscaler runs."""
    from abz_dask.training import load_bundle
    from abz_dask.upscale import UpscaleConfig, compile_bundle, run_upscale

    cfg = _config(tmp_path / "plan")  # no run folder: planned from the config alone
    plan = plan_run(cfg, workers=2)
    twin = plan.stage("twin")
    for st in twin.stores:
        _check_store(st, tiny_run / "twin" / st.name)
    up = plan.stage("upscale")
    with dask.config.set(scheduler="threads"):
        tiles = run_upscale(tiny_run / "twin" / "cube.zarr", tiny_run / "twin" / "zones.zarr",
                            tmp_path / "fluxes.zarr",
                            compile_bundle(load_bundle(tiny_run / "models")),
                            UpscaleConfig(tile=plan.tile), progress=False)
    _check_store(up.stores[0], tmp_path / "fluxes.zarr")
    assert up.tiles == up.tasks == len(tiles)
    done = [p for p in (tmp_path / "fluxes.zarr.done").iterdir() if not p.name.startswith(".")]
    assert len(done) == up.tasks
    # the forests the profile makes: 3 fluxes x (1 + 4) with 20 / 10 trees
    f = plan.forests
    assert (f.forests, f.central_trees, f.bootstrap_trees) == (15, 20, 10)
    assert up.core_hours is not None and up.core_hours > 0
    # 2 workers, 2 x 2 tiles of 48 / 42 cells: the two 48-row tiles go to different workers
    sizes = sorted((t.shape[0] * t.shape[1] for t in iter_tiles(plan.grid.shape, plan.tile)),
                   reverse=True)
    assert up.wall_hours == pytest.approx((sizes[0] + sizes[3]) / sum(sizes) * up.core_hours)


def test_1km_plan_computes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The full 1-km grid 1990–2020 is planned without one dask computation."""
    import distributed

    def refuse(*a: Any, **k: Any) -> None:
        raise AssertionError("plan submitted work to the cluster")

    for name in ("compute", "submit", "map", "gather"):
        monkeypatch.setattr(distributed.Client, name, refuse)
    cfg = _config(tmp_path / "run1km", resolution="1km", start="1990-01", end="2020-12")
    with raise_if_dask_computes():
        plan = plan_run(cfg, workers=64)
    n = math.ceil(8952 / 512)
    up = plan.stage("upscale")
    assert plan.grid.shape == (8952, 8952) and plan.months == 372 and plan.tile == 512
    assert up.tiles == up.tasks == n * n
    flux = up.stores[0]
    # NEE, GPP, Reco maps (31 year chunks per tile), their boot-SD maps (one chunk per tile),
    # zone_sums / zone_area / zone_area_excluded (one per tile), the coordinates
    maps = 3 * 31 * n * n + 3 * n * n + 3 * n * n
    assert maps < flux.chunks < maps + 100  # + the coordinates' chunks
    assert flux.raw_bytes >= 3 * 31 * n * n * 12 * 512 * 512 * 4
    assert not list(tmp_path.iterdir())  # nothing written outside the temporary folder


def _forest_models(trees: int) -> Any:
    from sklearn.ensemble import RandomForestRegressor

    from abz_dask.io.encoding import CategoricalEncoding
    from abz_dask.kernels.forest import pack_forest
    from abz_dask.upscale.models import CompiledModel, ModelSet

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 17)).astype(np.float32)
    est = RandomForestRegressor(n_estimators=trees, min_samples_split=6, random_state=0)
    est.fit(x, x[:, 0])
    m = {f: CompiledModel(f, tuple(range(17)), CategoricalEncoding(), pack_forest(est))
         for f in ("NEE", "GPP", "Reco")}
    return ModelSet(m, {f: (m[f],) * 4 for f in m})


def test_graph_does_not_grow_with_the_models(tmp_path: Path) -> None:
    """Shipped models: the same graph bytes for 42- and 500-tree forests; embedded (no
    distributed client) they would differ by the forests' size."""
    from abz_dask.upscale import plan_upscale
    from abz_dask.upscale.tiles import UpscaleConfig

    cfg = _config(tmp_path / "run")
    small, large = _forest_models(42), _forest_models(500)
    shipped, embedded = [], []
    for i, models in enumerate((small, large)):
        root = tmp_path / f"g{i}"
        root.mkdir()
        inputs, _, tasks, _ = upscale_graph(cfg, root, models=models)
        shipped.append(graph_bytes(tasks))
        with dask.config.set(scheduler="threads"):
            _, local = plan_upscale(inputs[2]["cube.zarr"], root / "zones.zarr",
                                    root / "embedded.zarr", models, UpscaleConfig())
        embedded.append(graph_bytes(local)[1])
        shutil.rmtree(root)
    assert shipped[0] == shipped[1]
    grown = sum(large.central[f].forest.nbytes - small.central[f].forest.nbytes
                for f in large.central)  # three distinct forests per set
    assert embedded[1] - embedded[0] >= 0.5 * grown


def test_graph_does_not_grow_with_the_period(tmp_path: Path) -> None:
    """Every task refers to one month index: 20 years instead of 3 add one copy of the longer
    index to the graph (≈ 1.6 kB), not one per task (it was ≈ 1.6 kB × tasks)."""
    sizes = []
    for i, end in enumerate(("2003-12", "2020-12")):
        root = tmp_path / f"p{i}"
        root.mkdir()
        cfg = _config(tmp_path / "run", end=end)
        _, _, tasks, _ = upscale_graph(cfg, root, tile=16)
        sizes.append(graph_bytes(tasks))
        shutil.rmtree(root)
    assert sizes[0][0] == sizes[1][0] >= 30
    assert sizes[1][1] - sizes[0][1] < 17 * 12 * 8 + 1024


def test_plan_command(tmp_path: Path) -> None:
    """``abz-dask plan`` prints the table; a throughput CSV without the tile columns is an
    error naming the file and the columns."""
    import yaml
    from typer.testing import CliRunner

    from abz_dask.cli import app

    cfg = _config(tmp_path / "run").model_dump(mode="json")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["plan", str(path), "--workers", "3"])
    assert res.exit_code == 0, res.output
    assert "fluxes.zarr" in res.output and "wall_h_3w" in res.output
    assert "planned in" in res.output and "BENCHMARKS.md" in res.output
    bad = tmp_path / "upscale_tiles.csv"
    bad.write_text("tile,cpu_s\nr0_c0,1.0\n")
    res = CliRunner().invoke(app, ["plan", str(path), "--throughput", str(bad)])
    assert res.exit_code != 0
    assert str(bad) in res.output and "tree_row_evals" in res.output
