"""``abz-dask plan``: the size of a run before it runs — stores, task graph, memory, core-hours.

:func:`plan_run` reads a run configuration and, **without computing anything**,

- creates the run's stores as metadata only (Zarr arrays with their shapes and chunks, no chunk
  written) in a temporary folder, with the stages' own templates and
  :func:`~abz_dask.io.store.create_store`: the twin's cube, truth and fire
  (:mod:`abz_dask.twin.generate`), a built cube (:mod:`abz_dask.cube_build.build`; from
  :func:`~abz_dask.cube_build.make_plan` when the rasters are present, else from the
  configuration alone), the flux store (:func:`~abz_dask.upscale.plan_upscale`);
- builds the upscaler's task graph for the real grid with :func:`~abz_dask.upscale.plan_upscale`
  under a ``distributed`` client (the run's scheduler kind), so the models are shipped once and
  the graph holds only their key: stand-in one-leaf forests take their place, since the graph
  does not depend on the forests (:func:`graph_bytes` of 42- and 500-tree forests are equal);
- projects, per stage, peak memory per worker (:data:`MEMORY_MODEL`), core-hours from a
  measured throughput (:func:`throughput`) and wall time on ``workers`` worker processes.

Forest sizes come from the training profile (trees per forest) and the expected nodes per tree
(:data:`NODES_PER_TRAINING_ROW` × training rows), since the models may not exist yet.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from abz_dask.geo.grid import PRESETS, Grid
from abz_dask.io.location import url
from abz_dask.io.store import create_store, iter_tiles
from abz_dask.pipeline.config import BuildInput, FilesInput, RunConfig, TwinInput
from abz_dask.pipeline.layout import RunLayout
from abz_dask.upscale.models import ModelSet
from abz_dask.upscale.results import BENCHMARK_TREE_ROWS_PER_CORE_S, benchmark_rate

__all__ = ["BENCHMARK_TREE_ROWS_PER_CORE_S", "MEMORY_MODEL", "NODES_PER_TRAINING_ROW",
           "ForestSizes", "RunPlan", "StagePlan", "StoreStats", "forest_sizes", "graph_bytes",
           "plan_run", "stand_in_models", "store_stats", "throughput", "upscale_graph",
           "wall_hours"]

#: Nodes per tree per training row of the paper's tree settings (``min_samples_split = 6``
#: counting distinct rows): 2,210 nodes per tree on the 50-km demo's 5,119 rows (central and
#: bootstrap forests of all three fluxes, 2,172–2,261).
NODES_PER_TRAINING_ROW: float = 2210.0 / 5119.0

#: Training rows assumed when neither a training table nor a model card exists (the demo's).
DEFAULT_TRAINING_ROWS: int = 5119

#: Bytes per node of a packed forest (8-byte node record + float64 value,
#: :class:`~abz_dask.kernels.forest.PackedForest`).
BYTES_PER_NODE: int = 16

#: Peak worker memory of the tile upscaler, measured (VmHWM of one worker process, synthetic
#: 25-km cube, 12 months, demo models of 63.1 MB; ``benchmarks/bench_plan.py --memory RUN``):
#: 584.6 MB at tile 32, 739.5 MB at tile 128, from 443.5 MB before the first task (``base_mb``).
#: peak = base + models + fixed + per_cell × tile² (a tile task holds one year of its tile at
#: a time): the grid and the period do not enter (BENCHMARKS.md: ×1.048 for a 4× larger grid).
MEMORY_MODEL: dict[str, float] = {"base_mb": 443.5, "fixed_mb": 70.9, "per_cell_mb": 0.010039}

#: ABZ land area (km²) of the published 1-km product: 20.7 M cells of 0.99994 km².
ABZ_LAND_KM2: float = 20.7e6 * PRESETS["1km"] ** 2 / 1e6


@dataclass(frozen=True)
class StoreStats:
    """Counts of one Zarr store, from its metadata (chunks not yet written count too).

    ``files`` = metadata documents + chunk files if every chunk is written; Zarr skips chunks
    holding only the fill value (NaN maps over the ocean and outside 49°N), so a finished store
    can hold fewer. ``raw_bytes`` is the uncompressed size of every numeric chunk (edge chunks
    full; text labels not counted).
    """

    name: str
    arrays: int
    chunks: int
    metadata_files: int
    raw_bytes: int
    largest_chunk_bytes: int

    @property
    def files(self) -> int:
        """Metadata documents + chunk files."""
        return self.metadata_files + self.chunks


def store_stats(path: str | Path, name: str | None = None) -> StoreStats:
    """Count arrays, chunks, metadata files and uncompressed bytes of a Zarr v3 store."""
    path = Path(path)
    group = zarr.open_group(str(path), mode="r")
    arrays = chunks = raw = largest = 0
    for _, arr in group.arrays():
        n = int(arr.nchunks)
        # text labels (variable-length strings) have no fixed size and are not counted
        size = int(np.prod(arr.chunks)) * int(arr.dtype.itemsize) \
            if arr.dtype.kind in "biufcmM" else 0
        arrays += 1
        chunks += n
        raw += n * size
        largest = max(largest, size)
    meta = sum(1 for _ in path.rglob("zarr.json"))
    return StoreStats(name or path.name, arrays, chunks, meta, raw, largest)


@dataclass(frozen=True)
class ForestSizes:
    """Forests of a run as the training profile will make them."""

    fluxes: tuple[str, ...]
    central_trees: int
    bootstrap_trees: int
    n_bootstrap: int
    nodes_per_tree: float
    training_rows: int
    rows_source: str

    @property
    def forests(self) -> int:
        """Forests shipped to every worker."""
        return len(self.fluxes) * (1 + self.n_bootstrap)

    @property
    def model_bytes(self) -> float:
        """Packed size of every forest (what each worker holds)."""
        trees = len(self.fluxes) * (self.central_trees + self.n_bootstrap * self.bootstrap_trees)
        return trees * self.nodes_per_tree * BYTES_PER_NODE


def forest_sizes(config: RunConfig) -> ForestSizes:
    """Trees per forest from the training profile, nodes per tree expected from the training
    rows (the run's training table or model card if present, else the demo's table size)."""
    from abz_dask.training import resolve_profile

    prof = resolve_profile(config.training.profile)
    lay = RunLayout.from_config(config)
    card = lay.card
    if lay.training_table.exists():
        rows = len(pd.read_parquet(url(lay.training_table), columns=["site_id"]))
        source = f"training table {lay.training_table}"
    elif card.exists():
        import json

        rows = int(json.loads(card.read_text())["training_table"]["n_rows"])
        source = f"model card {card}"
    else:
        rows, source = DEFAULT_TRAINING_ROWS, "assumed (the 50-km demo's table; no table yet)"
    nb = config.upscale.n_bootstrap if config.upscale.n_bootstrap is not None \
        else prof.n_bootstrap
    return ForestSizes(tuple(config.training.fluxes), prof.final_trees, prof.bootstrap_trees,
                       min(nb, prof.n_bootstrap), NODES_PER_TRAINING_ROW * rows, rows, source)


def stand_in_models(fluxes: Sequence[str], n_bootstrap: int) -> ModelSet:
    """One-leaf forests standing in for models not trained yet (never evaluated: the graph
    holds only the key of the shipped model set, whatever the forests)."""
    from abz_dask.io.encoding import CategoricalEncoding
    from abz_dask.kernels.forest import LEAF_KEY, NODE_DTYPE, PackedForest
    from abz_dask.upscale.models import CompiledModel

    nodes = np.zeros(1, NODE_DTYPE)
    nodes["key"] = LEAF_KEY
    forest = PackedForest(nodes, np.zeros(1), np.array([0, 1], np.int64), 1)

    def one(f: str) -> CompiledModel:
        return CompiledModel(f, (0,), CategoricalEncoding(), forest)

    return ModelSet({f: one(f) for f in fluxes},
                    {f: tuple(one(f) for _ in range(n_bootstrap)) for f in fluxes})


def graph_bytes(tasks: Sequence[Any]) -> tuple[int, int]:
    """``(tasks, bytes)`` of the merged graph of dask collections, pickled as ``distributed``
    ships a graph to the scheduler."""
    from distributed.protocol import pickle

    dsk: dict[Any, Any] = {}
    for t in tasks:
        dsk.update(dict(t.__dask_graph__()))
    return len(dsk), len(pickle.dumps(dsk))


@contextmanager
def _client() -> Iterator[Any]:
    """The active distributed client, or an in-process one (no worker process, no compute)."""
    from abz_dask.progress import active_client

    client = active_client()
    if client is not None:
        yield client
        return
    from distributed import Client, LocalCluster

    # ":0": any free port for the scheduler's HTTP server (None would try 8787 and warn)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as c:
        yield c


def upscale_graph(config: RunConfig, root: Path, *, models: ModelSet | None = None,
                  tile: int | None = None) -> tuple[Any, list[Any], list[Any], Path]:
    """The upscaler's tiles and lazy tile tasks for a run, on metadata-only stores.

    Creates the run's input stores (metadata only) and the flux store under ``root`` and calls
    :func:`~abz_dask.upscale.plan_upscale` under a distributed client (the active one, else an
    in-process one), so the models are shipped, not embedded. Nothing is computed.

    Parameters
    ----------
    config : RunConfig
        The run.
    root : Path
        An empty folder for the stores.
    models : ModelSet, optional
        Default: :func:`stand_in_models` of the run's fluxes and bootstraps.
    tile : int, optional
        Tile edge (default: ``upscale.tile``, else the cube's chunk).

    Returns
    -------
    tuple
        ``(input, tiles, tasks, flux_store)``; ``input`` is ``(grid, cube tile, stores, note)``.
    """
    from abz_dask.upscale import plan_upscale

    inputs = _cube_templates(config, root)
    if models is None:
        f = forest_sizes(config)
        models = stand_in_models(f.fluxes, f.n_bootstrap)
    ucfg = _upscale_config(config, inputs[1], tile)
    out = root / "fluxes.zarr"
    with _client():
        tiles, tasks = plan_upscale(inputs[2]["cube.zarr"], RunLayout.from_config(config).zones,
                                    out, models, ucfg)
    return inputs, tiles, tasks, out


def throughput(path: Path | None, resolution_m: float = 1000.0) -> tuple[float, str]:
    """Tree-rows per core-second of whole tile tasks and where it comes from: a run's
    ``upscale_tiles.csv`` (``cpu_s``, ``tree_row_evals``) or the benchmark figure for a grid of
    ``resolution_m`` (:func:`~abz_dask.upscale.results.benchmark_rate`)."""
    from abz_dask.upscale.results import project_core_hours

    if path is not None and Path(path).exists():
        tiles = pd.read_csv(url(path))
        missing = [c for c in ("cpu_s", "forest_row_evals", "tree_row_evals")
                   if c not in tiles]
        if missing:
            raise ValueError(f"{path}: columns {missing} missing (an upscale_tiles.csv of "
                             "abz-dask upscale/run)")
        proj = project_core_hours(tiles, 1, 0)
        return proj["tree_rows_per_core_s"], (
            f"{path} ({tiles['cpu_s'].sum():.0f} CPU-s, {len(tiles)} tiles, "
            f"{proj['mean_trees_measured']:.0f}-tree forests)")
    return benchmark_rate(resolution_m)


@dataclass
class StagePlan:
    """What one stage creates and costs (None: not applicable or not measured)."""

    name: str
    tiles: int | None = None
    tasks: int | None = None
    graph_bytes: int | None = None
    stores: list[StoreStats] = field(default_factory=list)
    peak_worker_mb: float | None = None
    core_hours: float | None = None
    wall_hours: float | None = None
    note: str = ""


@dataclass
class RunPlan:
    """The plan of a run: grid, period, workers and one :class:`StagePlan` per stage."""

    config: RunConfig
    grid: Grid
    months: int
    tile: int
    workers: int
    forests: ForestSizes
    throughput_source: str
    stages: list[StagePlan]
    seconds: float = 0.0

    def stage(self, name: str) -> StagePlan:
        """The stage called ``name``."""
        return next(s for s in self.stages if s.name == name)

    def table(self) -> pd.DataFrame:
        """One row per stage and store."""
        rows = []
        for s in self.stages:
            base = {"stage": s.name, "tiles": s.tiles, "tasks": s.tasks,
                    "graph_MB": None if s.graph_bytes is None else s.graph_bytes / 1e6,
                    "peak_worker_GB": None if s.peak_worker_mb is None
                    else s.peak_worker_mb / 1024, "core_hours": s.core_hours,
                    f"wall_h_{self.workers}w": s.wall_hours}
            for i, st in enumerate(s.stores or [None]):
                rows.append({**(base if i == 0 else {"stage": ""}),
                             "store": st.name if st else None,
                             "chunks": st.chunks if st else None,
                             "files": st.files if st else None,
                             "raw_GB": st.raw_bytes / 1e9 if st else None})
        return pd.DataFrame(rows)

    def text(self) -> str:
        """The table as printed by ``abz-dask plan``."""
        tab = self.table()
        fmt = {"tiles": "{:,.0f}", "tasks": "{:,.0f}", "graph_MB": "{:.3f}",
               "peak_worker_GB": "{:.2f}", "core_hours": "{:,.0f}",
               f"wall_h_{self.workers}w": "{:,.1f}", "chunks": "{:,.0f}", "files": "{:,.0f}",
               "raw_GB": "{:,.1f}"}
        for col, f in fmt.items():
            tab[col] = [("-" if v is None or v != v else f.format(v)) for v in tab[col]]
        tab = tab.fillna("-")
        return str(tab.to_string(index=False))


def _cube_templates(config: RunConfig, root: Path) -> tuple[Grid, int, dict[str, Path], str]:
    """Create the input stores' metadata under ``root``; the grid, the cube's tile edge, the
    stores (name -> path) and a note."""
    inp = config.input
    if isinstance(inp, TwinInput):
        from abz_dask.geo.grid import default_tile
        from abz_dask.twin.family import twin_family
        from abz_dask.twin.generate import store_templates

        grid = Grid.from_preset(inp.resolution)
        tile = default_tile(grid)
        stores = {}
        for name, ds in zip(("cube.zarr", "truth.zarr", "fire.zarr"),
                            store_templates(grid, pd.date_range(inp.start, inp.end, freq="MS"),
                                            tile, inp.seed,
                                            twin_family(inp.family, inp.hidden_driver)),
                            strict=True):
            create_store(ds, root / name)
            stores[name] = root / name
        return grid, tile, stores, "twin stores from abz_dask.twin.generate's template"
    if isinstance(inp, BuildInput):
        from abz_dask.cube_build import load_config as load_build
        from abz_dask.cube_build.build import cube_template

        plan, note = _build_plan(*load_build(inp.cube_config))
        create_store(cube_template(plan), root / "cube.zarr")
        return plan.grid, plan.tile, {"cube.zarr": root / "cube.zarr"}, note
    assert isinstance(inp, FilesInput)
    if not Path(inp.cube).exists():
        raise FileNotFoundError(f"input.cube: {inp.cube} does not exist")
    cube = xr.open_zarr(url(inp.cube), consolidated=False)
    grid = Grid.of_dataset(cube)
    ref = next(v for v in cube.data_vars.values() if v.ndim == 3)
    tile = int(ref.encoding["chunks"][-1])
    return grid, tile, {"cube.zarr": Path(inp.cube)}, f"cube {inp.cube} as stored"


def _build_plan(config: Any, root: Path) -> tuple[Any, str]:
    """The build plan: :func:`~abz_dask.cube_build.make_plan` when the rasters are readable,
    else the same layout from the configuration alone (no file opened)."""
    from abz_dask.cube_build import CubeBuildError, make_plan
    from abz_dask.cube_build.plan import BuildPlan, VarPlan, _grid
    from abz_dask.geo.grid import default_tile

    try:
        return make_plan(config, root), "cube from make_plan (rasters checked)"
    except (CubeBuildError, OSError) as e:
        why = str(e).splitlines()[0][:120]
    grid = _grid(config)
    time = pd.date_range(config.start, config.end, freq="MS")
    variables = []
    for p in config.stored():
        spec = config.predictors[p.name]
        const = None if spec.value is None else float(spec.value)
        series = np.full(len(time), np.nan) if p.kind == "series" else None
        variables.append(VarPlan(p.name, spec, p.kind, [], predictor=p, constant=const,
                                 series=series))
    plan = BuildPlan(grid, time, config.tile or default_tile(grid), config.token(), variables)
    return plan, f"cube layout from the build config only (rasters not read: {why})"


def _upscale_config(config: RunConfig, cube_tile: int, tile: int | None = None) -> Any:
    """The run's upscaler settings; tile: ``tile``, else ``upscale.tile``, else the cube's."""
    from abz_dask.upscale import UpscaleConfig

    u = config.upscale
    return UpscaleConfig(start=u.start, end=u.end, tile=tile or u.tile or cube_tile,
                         bootstrap_sample=u.bootstrap_sample,
                         store_replicates=u.store_replicates, seed=u.seed)


def peak_worker_mb(tile: int, model_bytes: float) -> float:
    """Expected peak RSS (MB) of an upscaling worker for a tile edge and the models it holds
    (:data:`MEMORY_MODEL`)."""
    m = MEMORY_MODEL
    return m["base_mb"] + model_bytes / 2**20 + m["fixed_mb"] + m["per_cell_mb"] * tile**2


def wall_hours(tiles: Sequence[Any], workers: int, core_hours: float) -> float:
    """Wall time of tile tasks on ``workers`` single-threaded workers: each tile costs its share
    of ``core_hours`` by cells (ragged edge tiles are small), largest tiles first, each to the
    least loaded worker (the scheduler's order is not known; this is the usual bound)."""
    import heapq

    cells = sorted((t.shape[0] * t.shape[1] for t in tiles), reverse=True)
    total = float(sum(cells))
    loads = [0.0] * min(workers, len(cells))
    for c in cells:
        heapq.heappush(loads, heapq.heappop(loads) + c)
    return max(loads) / total * core_hours


def plan_run(config: RunConfig, *, workers: int | None = None,
             throughput_csv: Path | None = None) -> RunPlan:
    """Plan a run without computing (see the module docstring).

    Parameters
    ----------
    config : RunConfig
        The validated run configuration (:func:`~abz_dask.pipeline.config.load_config`).
    workers : int, optional
        Worker processes (single-threaded) for the wall times (default: ``cluster.workers``,
        else ``cluster.adapt.maximum``, else 1).
    throughput_csv : path, optional
        ``upscale_tiles.csv`` whose measured rate projects the core-hours (default: the run
        folder's, else the benchmark figure).

    Returns
    -------
    RunPlan
    """
    import time as _time

    t0 = _time.perf_counter()
    c = config.cluster
    n = workers or c.workers or (c.adapt.maximum if c.adapt else 1)
    lay = RunLayout.from_config(config)
    forests = forest_sizes(config)
    stages: list[StagePlan] = []
    with tempfile.TemporaryDirectory(prefix="abz-plan-") as tmp:
        (grid, tile, inputs, note), tiles, tasks, out = upscale_graph(config, Path(tmp))
        rate, source = throughput(throughput_csv or lay.upscale_tiles, grid.resolution)
        first = "twin" if isinstance(config.input, TwinInput) else \
            "build-cube" if isinstance(config.input, BuildInput) else "inputs"
        in_tiles = len(list(iter_tiles(grid.shape, tile)))
        stages.append(StagePlan(first, tiles=in_tiles if first != "inputs" else None,
                                tasks=in_tiles if first != "inputs" else None,
                                stores=[store_stats(p, name) for name, p in inputs.items()],
                                note=note + "; zones.zarr not planned (its layout is set "
                                "inside abz_dask.geo.zones)"))
        stages.append(StagePlan("extract", note="site rows only"))
        stages.append(StagePlan(
            "train", note=f"{forests.forests} forests ({forests.central_trees} / "
            f"{forests.bootstrap_trees} trees, {forests.nodes_per_tree:,.0f} nodes per tree "
            f"expected from {forests.training_rows:,} rows: {forests.rows_source}) = "
            f"{forests.model_bytes / 1e9:.2f} GB packed"))
        ucfg = _upscale_config(config, tile)
        ntask, nbytes = graph_bytes(tasks)
        flux = store_stats(out, "fluxes.zarr")
        months = int(xr.open_zarr(url(out), consolidated=False).sizes["time"])
        cells = ABZ_LAND_KM2 * 1e6 / grid.cell_area
        f = ucfg.bootstrap_sample
        tree_rows = cells * months * len(forests.fluxes) * (
            forests.central_trees + forests.n_bootstrap * f * forests.bootstrap_trees)
        core_h = tree_rows / rate / 3600.0
        wall = wall_hours(tiles, n, core_h)
        stages.append(StagePlan(
            "upscale", tiles=len(tiles), tasks=ntask, graph_bytes=nbytes, stores=[flux],
            peak_worker_mb=peak_worker_mb(ucfg.tile, forests.model_bytes), core_hours=core_h,
            wall_hours=wall,
            note=f"tile {ucfg.tile}, {months} months, {cells:,.0f} ABZ land cells "
                 f"(20.7 M km² / cell area), f = {f:g}; {rate / 1e6:.1f} M tree-rows per "
                 f"core-second from {source}"))
    stages.append(StagePlan("budgets", note="reads zone_sums (one chunk per tile)"))
    for name, on in (("trends", config.trends.enabled), ("compare", config.compare.enabled),
                     ("table1", config.report.enabled), ("report", config.report.enabled)):
        if on:
            stages.append(StagePlan(name, note="not planned: its graph is built from the flux "
                                    "store inside the stage; no measured rate in the plan"))
    return RunPlan(config, grid, months, ucfg.tile, n, forests, source, stages,
                   _time.perf_counter() - t0)
