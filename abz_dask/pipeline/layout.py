"""Where every file of a run lives: one :class:`RunLayout` for the runner, the stages and every
command that takes a run folder.

A run folder ``RUN`` holds:

=================================  ==========================================================
inputs (``input.kind``)            ``twin``: ``RUN/twin/{cube,zones,truth,fire}.zarr``,
                                   ``abcflux_twin.csv``, ``truth_budgets.csv``;
                                   ``build``: ``RUN/inputs/cube.zarr``, ``RUN/inputs/zones.zarr``
                                   (or the configured zones), ``RUN/inputs/fire.zarr`` when the
                                   build-cube config has a ``fire:`` section;
                                   ``files``: the configured paths
``training/``                      ``training_table.parquet``, ``extract_report.csv``,
                                   ``cv_fits/``, ``cv_predictions.csv``, figures
``models/``                        the model bundle (``card.json`` written last)
``fluxes.zarr``                    the flux store (``store: zarr``), or the Icechunk repository
``fluxes.icechunk``                ``fluxes.icechunk`` (``store: icechunk``) with its uncommitted
                                   work ``fluxes.icechunk.wip/``; ``upscale_tiles.csv`` the
                                   tile timings
``budgets.csv``                    period-mean domain budgets
``trends/``                        ``trend_maps.zarr``, ``budget_trends.csv``, ...
``compare/``                       ``comparison_metrics.csv``, ``maps.zarr``, figures, ...
``table1.{csv,md}``,               Table 1 (``table1_truth.csv``, ``table1_checks.csv``),
``report.html``, ``report/``       the report and its tables
``<stage>.stage.json``             the stage records; ``run_config.json`` the configuration of
                                   the last ``run_pipeline`` call; ``.abz-dask.lock`` the lock
``releases/NAME/``                 a release's small outputs and ``release.json``;
                                   ``diff_A_B.{csv,zarr}`` the differences of two versions
=================================  ==========================================================

A layout is built from a :class:`~abz_dask.pipeline.config.RunConfig`
(:meth:`RunLayout.from_config`) or from an existing run folder (:meth:`RunLayout.from_run`: the
saved ``run_config.json``, else the twin's ``twin.json``, else what exists). All path arithmetic
of a run is here. ``RUN`` may be an object-store URL: every path is then a
:class:`upath.UPath` (:mod:`abz_dask.io.location`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from abz_dask.io.location import Location, as_path, is_url
from abz_dask.pipeline.config import BuildInput, FilesInput, RunConfig, TwinInput

if TYPE_CHECKING:
    from abz_dask.analyses.run import TrendInputs
    from abz_dask.analyses.table1 import Table1Inputs
    from abz_dask.compare.run import CompareInputs
    from abz_dask.twin.family import Family

__all__ = ["RUN_CONFIG", "InputKind", "RunLayout", "StoreFormat", "saved_input", "saved_store"]

InputKind = Literal["twin", "build", "files"]
StoreFormat = Literal["zarr", "icechunk"]

RUN_CONFIG = "run_config.json"
"""The configuration of the last :func:`~abz_dask.pipeline.runner.run_pipeline` call (JSON)."""

#: Names inside the twin folder (``abz_dask.twin.generate_twin`` writes them).
_TWIN = {"cube": "cube.zarr", "zones": "zones.zarr", "truth": "truth.zarr", "fire": "fire.zarr",
         "abcflux": "abcflux_twin.csv", "truth_budgets": "truth_budgets.csv",
         "manifest": "twin.json"}
#: The flux store by format (``store`` of the run configuration).
_FLUXES = {"zarr": "fluxes.zarr", "icechunk": "fluxes.icechunk"}
#: Names inside the folder of built inputs (the build-cube stage writes them).
_BUILT = {"cube": "cube.zarr", "zones": "zones.zarr", "fire": "fire.zarr"}


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run folder.

    The input fields (``cube`` ... ``truth_budgets``), the flux store, the model bundle, the
    HTML report and the trends folder may be overridden (:meth:`with_paths`, e.g. a command's
    ``--cube`` or ``--out``); every other path is fixed relative to ``root``. Optional inputs
    that a run kind does not have are ``None``; :meth:`existing` tells whether one is there.

    Parameters
    ----------
    root : Path
        The run folder.
    kind : {"twin", "build", "files"}
        Where the inputs come from (``input.kind``).
    cube, zones : Path
        Predictor cube and zone layers.
    abcflux : Path
        ABCflux CSV of the sites.
    fire, truth : Path, optional
        Fire store (annual burned fraction and emissions) and planted truth (twin only).
    truth_budgets : Path, optional
        Reference budgets joined to ``budgets.csv``.
    fluxes, models : Path
        Flux store and model bundle.
    report_html : Path
        The HTML report.
    trends : Path
        Folder of the trend stage.
    """

    root: Path
    kind: InputKind
    cube: Path
    zones: Path
    abcflux: Path
    fire: Path | None
    truth: Path | None
    truth_budgets: Path | None
    fluxes: Path
    models: Path
    report_html: Path
    trends: Path

    # ---------------------------------------------------------------- construction

    @classmethod
    def for_twin(cls, root: str | Path | Location, store: StoreFormat = "zarr") -> RunLayout:
        """A run on the twin generated into ``RUN/twin``; a flux store of format ``store``
        (``fluxes.zarr`` or the Icechunk repository ``fluxes.icechunk``)."""
        root = as_path(root)
        t = root / "twin"
        return cls(root, "twin", t / _TWIN["cube"], t / _TWIN["zones"], t / _TWIN["abcflux"],
                   t / _TWIN["fire"], t / _TWIN["truth"], t / _TWIN["truth_budgets"],
                   root / _FLUXES[store], root / "models", root / "report.html",
                   root / "trends")

    @classmethod
    def from_config(cls, config: RunConfig) -> RunLayout:
        """The layout of a run configuration (``output``, ``input`` and ``store``)."""
        return cls.from_input(config.output, config.input, config.store_format)

    @classmethod
    def from_input(cls, root: str | Path | Location, inp: TwinInput | FilesInput | BuildInput,
                   store: StoreFormat = "zarr") -> RunLayout:
        """The layout of run folder ``root`` with input section ``inp``."""
        root = as_path(root)
        if isinstance(inp, TwinInput):
            return cls.for_twin(root, store)
        base = cls.for_twin(root, store)
        if isinstance(inp, BuildInput):
            built = root / "inputs"
            fire = built / _BUILT["fire"] if _has_fire_section(inp.cube_config) else None
            return dataclasses.replace(
                base, kind="build", cube=built / _BUILT["cube"],
                zones=as_path(inp.zones) if inp.zones else built / _BUILT["zones"],
                abcflux=as_path(inp.abcflux), fire=fire, truth=None,
                truth_budgets=_opt(inp.truth_budgets))
        return dataclasses.replace(
            base, kind="files", cube=as_path(inp.cube), zones=as_path(inp.zones),
            abcflux=as_path(inp.abcflux), fire=_opt(getattr(inp, "fire", None)), truth=None,
            truth_budgets=_opt(inp.truth_budgets))

    @classmethod
    def from_run(cls, root: str | Path | Location) -> RunLayout:
        """The layout of an existing run folder: from its saved configuration
        (:data:`RUN_CONFIG`), else its twin's ``twin.json``, else what exists (``inputs/``:
        built inputs; otherwise the twin layout, whose paths name what is missing). The flux
        store's format is the saved one, else the one found."""
        root = as_path(root)
        inp = saved_input(root)
        store = saved_store(root)
        if inp is not None:
            return cls.from_input(root, inp, store)
        lay = cls.for_twin(root, store)
        built = root / "inputs"
        if not lay.twin_dir.exists() and (built / _BUILT["cube"]).exists():
            fire = built / _BUILT["fire"]
            return dataclasses.replace(lay, kind="build", cube=built / _BUILT["cube"],
                                       zones=built / _BUILT["zones"],
                                       fire=fire if fire.exists() else None, truth=None,
                                       truth_budgets=None)
        return lay

    def with_paths(self, **paths: Path | str | None) -> RunLayout:
        """A copy with some input or store paths replaced (``None`` values are ignored).

        Raises
        ------
        TypeError
            A name that is not an overridable field.
        """
        fixed = {"root", "kind"}
        names = {f.name for f in dataclasses.fields(self)} - fixed
        unknown = sorted(set(paths) - names)
        if unknown:
            raise TypeError(f"RunLayout.with_paths: unknown path(s) {unknown}; "
                            f"choose from {sorted(names)}")
        return dataclasses.replace(self, **{k: as_path(v) for k, v in paths.items()
                                            if v is not None})

    def as_files(self) -> RunLayout:
        """This layout as a ``files`` input of its current paths (the per-stage commands given
        ``--cube`` / ``--zones`` / ``--sites``): optional inputs kept only where they exist."""
        return dataclasses.replace(self, kind="files", fire=self.existing(self.fire),
                                   truth=self.existing(self.truth),
                                   truth_budgets=self.existing(self.truth_budgets))

    @staticmethod
    def existing(path: Path | None) -> Path | None:
        """``path`` if it is given and exists, else ``None``."""
        return path if path is not None and as_path(path).exists() else None

    # ---------------------------------------------------------------- inputs

    @property
    def twin_dir(self) -> Path:
        """Folder of the generated twin (twin input)."""
        return self.root / "twin"

    @property
    def twin_manifest(self) -> Path:
        """The twin's settings (``twin.json``)."""
        return self.twin_dir / _TWIN["manifest"]

    @property
    def inputs_dir(self) -> Path:
        """Folder of the built cube, zones and fire store (build input)."""
        return self.root / "inputs"

    @property
    def built_zones(self) -> Path:
        """Zones written by the build-cube stage (from the build-cube config's ``zones:``
        section, else the grid's built-in layers); the run's zones unless ``input.zones``."""
        return self.inputs_dir / _BUILT["zones"]

    def twin_outputs(self) -> list[Path]:
        """Every file the twin stage writes."""
        d = self.twin_dir
        return [d / _TWIN[k] for k in ("zones", "cube", "truth", "fire", "abcflux",
                                       "truth_budgets")]

    # ---------------------------------------------------------------- training and models

    @property
    def training(self) -> Path:
        """Folder of the training stage's tables, ledger and figures."""
        return self.root / "training"

    @property
    def training_table(self) -> Path:
        """Training table of the extract stage (Parquet; a CSV copy beside it)."""
        return self.training / "training_table.parquet"

    @property
    def extract_report(self) -> Path:
        """Rows dropped per flux by the extraction."""
        return self.training / "extract_report.csv"

    @property
    def cv_fits(self) -> Path:
        """Fit ledger of the training (resumable CV, central and bootstrap fits)."""
        return self.training / "cv_fits"

    @property
    def cv_predictions(self) -> Path:
        """Pooled leave-one-site-out predictions of every flux (training diagnostics)."""
        return self.training / "cv_predictions.csv"

    @property
    def card(self) -> Path:
        """Model card: written last, its presence marks a complete bundle."""
        return self.models / "card.json"

    # ---------------------------------------------------------------- upscaling and budgets

    @property
    def upscale_tiles(self) -> Path:
        """Per-tile timings and counts of the upscaler."""
        return self.root / "upscale_tiles.csv"

    @property
    def budgets(self) -> Path:
        """Period-mean domain budgets (``budgets.csv``)."""
        return self.root / "budgets.csv"

    # ---------------------------------------------------------------- trends

    @property
    def trend_maps(self) -> Path:
        """Per-pixel trend fields."""
        return self.trends / "trend_maps.zarr"

    @property
    def budget_trends(self) -> Path:
        """Budget trends per domain and season."""
        return self.trends / "budget_trends.csv"

    def trend_table(self, name: str) -> Path:
        """A table of the trend stage (``trend_shares``, ``budget_trends``, ...)."""
        return self.trends / f"{name}.csv"

    def trend_outputs(self, *, greening: bool, truth: bool) -> list[Path]:
        """Every output of the trend stage (:func:`abz_dask.analyses.run_trends`): the maps
        and tables; the greening table with an NDVI predictor, the truth's maps and the
        comparison with a planted truth."""
        tables = ["trend_shares", "overlay_shares", "budget_trends",
                  *(["greening"] if greening else []), *(["truth_comparison"] if truth else [])]
        maps = [self.trend_maps, *([self.trends / "truth_trend_maps.zarr"] if truth else [])]
        return [*maps, *(self.trend_table(n) for n in tables)]

    # ---------------------------------------------------------------- comparisons

    @property
    def compare(self) -> Path:
        """Folder of the comparison stage."""
        return self.root / "compare"

    @property
    def comparison_metrics(self) -> Path:
        """Map correlations and budget ratios per product and domain."""
        return self.compare / "comparison_metrics.csv"

    @property
    def compare_maps(self) -> Path:
        """Mean NEE per approach, agreement, MESS and cluster maps."""
        return self.compare / "maps.zarr"

    @property
    def regional_table(self) -> Path:
        """Paper-2 regional table (mean ± spatial SD per region × approach)."""
        return self.compare / "regional_table.csv"

    # ---------------------------------------------------------------- Table 1 and report

    def table1_files(self) -> dict[str, Path]:
        """Table 1's files by role: ``estimate``, ``truth``, ``checks``, ``markdown``, ``meta``
        (period, fire period and notes)."""
        return {"estimate": self.root / "table1.csv", "truth": self.root / "table1_truth.csv",
                "checks": self.root / "table1_checks.csv",
                "markdown": self.root / "table1.md", "meta": self.root / "table1.json"}

    @property
    def report_tables(self) -> Path:
        """Folder of the report's analysis tables."""
        return self.root / "report"

    def figure_dirs(self) -> dict[str, Path]:
        """Folders whose PNGs (written by other stages) the report embeds, by heading key."""
        return {"training": self.training, "compare": self.compare, "trends": self.trends,
                "clusters": self.root / "clusters"}

    # ---------------------------------------------------------------- bookkeeping

    def record(self, stage: str) -> Path:
        """The record of ``stage`` (``<stage>.stage.json``)."""
        return self.root / f"{stage}.stage.json"  # the one spelling of a record's name

    def records(self) -> dict[str, Path]:
        """Every stage record in the folder, by stage name."""
        suffix = ".stage.json"
        return {p.name.removesuffix(suffix): p for p in sorted(self.root.glob(f"*{suffix}"))}

    @property
    def config_file(self) -> Path:
        """The saved run configuration (:data:`RUN_CONFIG`)."""
        return self.root / RUN_CONFIG

    @property
    def lock(self) -> Path:
        """The run folder's lock file."""
        from abz_dask.io.locks import lock_path

        return lock_path(self.root, inside=True)

    # ---------------------------------------------------------------- input sets of stages

    def trend_inputs(self) -> TrendInputs:
        """The stores of the trend stage (optional ones ``None`` when absent)."""
        from abz_dask.analyses.run import TrendInputs

        return TrendInputs(fluxes=self.fluxes, zones=self.zones, cube=self.existing(self.cube),
                           fire=self.existing(self.fire), truth=self.existing(self.truth))

    def table1_inputs(self) -> Table1Inputs:
        """The stores and site file of Table 1 (optional ones ``None`` when absent)."""
        from abz_dask.analyses.table1 import Table1Inputs

        return Table1Inputs(fluxes=self.fluxes, zones=self.zones,
                            truth=self.existing(self.truth), fire=self.existing(self.fire),
                            sites=self.existing(self.abcflux), card=self.existing(self.card))

    def compare_inputs(self) -> CompareInputs:
        """The stores of the comparison stage (optional ones ``None`` when absent)."""
        from abz_dask.compare.run import CompareInputs

        return CompareInputs(fluxes=self.fluxes, zones=self.zones,
                             cube=self.existing(self.cube), fire=self.existing(self.fire),
                             truth=self.existing(self.truth),
                             training=self.existing(self.training_table), out=self.compare)

    def require(self, **paths: Path | None) -> None:
        """Raise FileNotFoundError naming the first of ``paths`` (name=path) that is missing.

        Raises
        ------
        FileNotFoundError
            ``<name> <path> does not exist``.
        """
        for name, p in paths.items():
            if p is None or not as_path(p).exists():
                raise FileNotFoundError(f"{name} {p} does not exist")


def _opt(p: Path | str | None) -> Path | None:
    return None if p is None else as_path(p)


def _has_fire_section(cube_config: Path) -> bool:
    """Whether a build-cube YAML has a ``fire:`` section (its rasters are built into
    ``inputs/fire.zarr``); an unreadable file has none (preflight reports it)."""
    import yaml

    try:
        data: Any = yaml.safe_load(as_path(cube_config).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and data.get("fire") is not None


def saved_store(root: str | Path | Location) -> StoreFormat:
    """The flux store format of a run folder: the saved configuration's ``store`` (else by
    where the folder lives), else ``icechunk`` for an object-store folder or one holding
    ``fluxes.icechunk``, else ``zarr``."""
    root = as_path(root)
    saved = root / RUN_CONFIG
    try:
        data = json.loads(saved.read_text()) if saved.is_file() else {}
    except ValueError:
        data = {}
    fmt = data.get("store") if isinstance(data, dict) else None
    if fmt in _FLUXES:
        return cast(StoreFormat, fmt)
    return "icechunk" if is_url(root) or (root / _FLUXES["icechunk"]).exists() else "zarr"


def saved_input(root: str | Path | Location) -> TwinInput | FilesInput | BuildInput | None:
    """The input section of a run folder: from its saved configuration (:data:`RUN_CONFIG`),
    else from its twin's ``twin.json`` (a twin made by ``generate_twin``), else ``None``.

    Raises
    ------
    ValueError
        The saved configuration is not valid JSON or its input section is invalid (naming
        the file).
    """
    from abz_dask.pipeline.config import ConfigError, parse_config

    root = as_path(root)
    saved = root / RUN_CONFIG
    if saved.is_file():
        try:
            data = json.loads(saved.read_text())
        except ValueError as e:
            raise ValueError(f"{saved}: not a JSON run configuration ({e})") from None
        if not isinstance(data, dict) or "input" not in data:
            raise ValueError(f"{saved}: no input section")
        try:
            return parse_config({"output": str(root), "input": data["input"]},
                                source=str(saved)).input
        except ConfigError as e:
            raise ValueError(str(e)) from None
    manifest = root / "twin" / _TWIN["manifest"]
    if manifest.is_file():
        try:
            t = json.loads(manifest.read_text())
            return TwinInput(resolution=str(t["resolution"]), start=str(t["start"]),
                             end=str(t["end"]), seed=int(t["seed"]),
                             n_sites=int(t["n_sites"]),
                             family=cast("Family", str(t.get("family", "a"))),
                             hidden_driver=bool(t.get("hidden_driver", True)))
        except (ValueError, KeyError, TypeError):
            return None
    return None
