"""The run configuration of ``abz-dask run``: one validated YAML file for the whole pipeline.

Every section is a pydantic model with ``extra="forbid"``: a misspelt key is an error naming the
key and where it sits, a bad value names its field. Example (``deploy/configs/twin-demo.yaml``)::

    output: demo-run                 # run folder (relative paths: relative to the YAML file)
    input:
      kind: twin      # or: files (cube, zones, abcflux), build (cube_config, abcflux)
      resolution: 100km
      start: 2001-01
      end: 2004-12
    training:
      profile: light                 # a name, a YAML file, or a mapping of overrides
    upscale:
      bootstrap_sample: 1.0
    budgets:
      start_year: 2001
      end_year: 2004
    report:
      enabled: true                  # Table 1 + figures + report.html
    cluster:
      kind: local      # threads | local | address | slurm | pbs | kubernetes | gateway
      workers: 2

:func:`load_config` reads and validates a file; :class:`RunConfig` can also be built in code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from abz_dask import DEFAULT_SEED
from abz_dask.io.location import LocationField, is_url
from abz_dask.io.yamlfile import flat_errors

__all__ = ["DEFAULT_SEED", "MIN_SITES", "MIN_TILE", "YEAR_RANGE", "BudgetsSection", "BuildInput",
           "ClusterSection", "CompareSection", "ConfigError", "FilesInput", "ProductEntry",
           "ReportSection", "RunConfig", "TrainingSection", "TrendsSection", "TwinInput",
           "UpscaleSection", "load_config", "parse_config"]

_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
Flux = Literal["NEE", "GPP", "Reco"]
FLUX_NAMES: tuple[Flux, ...] = ("NEE", "GPP", "Reco")
CLUSTER_KINDS = ("threads", "local", "address", "slurm", "pbs", "kubernetes", "gateway")
_INPUT_KINDS = ("twin", "files", "build")  # tags of the input union, not keys of the file


MIN_TILE: int = 8
"""Smallest upscaling tile edge in cells (``upscale.tile``, ``abz-dask upscale --tile``)."""

MIN_SITES: int = 5
"""Smallest site network of a twin (``input.n_sites``, ``abz-dask twin --n-sites``)."""

YEAR_RANGE: tuple[int, int] = (1900, 2200)
"""Years accepted for budgets, trends and report periods (a typo such as 20001 is an error)."""


class ConfigError(ValueError):
    """An invalid run configuration (file, key path and reason in the message)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _month(v: str | None, field: str) -> str | None:
    if v is not None and not _MONTH.match(str(v)):
        raise ValueError(f"{field} must be a month YYYY-MM, got {v!r}")
    return None if v is None else str(v)


class TwinInput(_Section):
    """Generate a digital twin and run the pipeline on it (:func:`abz_dask.twin.generate_twin`)."""

    kind: Literal["twin"] = "twin"
    resolution: str = Field(default="50km", description="Grid preset of the twin.")
    start: str = Field(default="1990-01", description="First month YYYY-MM (a January).")
    end: str = Field(default="2020-12", description="Last month YYYY-MM.")
    seed: int = Field(default=DEFAULT_SEED, ge=0, description="Seed of the twin.")
    n_sites: int = Field(default=200, ge=MIN_SITES, description="Size of the site network.")
    family: Literal["a", "b"] = Field(
        default="a", description="Twin family: planted truth and site rule (abz_dask.twin.family).")
    hidden_driver: bool = Field(
        default=True, description="Plant the family's unobserved respiration driver.")

    @field_validator("resolution")
    @classmethod
    def _preset(cls, v: str) -> str:
        from abz_dask.geo.grid import PRESETS, Grid

        if v not in PRESETS:
            try:  # a window of a preset, "1km[4000:4512,4100:4612]"
                Grid.from_preset(v)
            except ValueError as e:
                raise ValueError(f"unknown grid preset {v!r}; choose one of {sorted(PRESETS)} "
                                 f"or a window such as '1km[4000:4512,4100:4612]' ({e})") from e
        return v

    @field_validator("start", "end", mode="before")
    @classmethod
    def _months(cls, v: Any, info: Any) -> str | None:
        return _month(v, info.field_name)

    @model_validator(mode="after")
    def _period(self) -> TwinInput:
        if not self.start.endswith("-01"):
            raise ValueError(f"start must be a January (the twin is built in whole years), "
                             f"got {self.start!r}")
        if self.end < self.start:
            raise ValueError(f"end {self.end!r} is before start {self.start!r}")
        return self

    @model_serializer(mode="wrap")
    def _omit_default_family(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # family a with its hidden driver dumps as before families existed, so the twin stage
        # records of existing run folders stay current
        out: dict[str, Any] = handler(self)
        if out.get("family") == "a":
            out.pop("family")
        if out.get("hidden_driver") is True:
            out.pop("hidden_driver")
        return out


class _ReaderOptions(_Section):
    """The ABCflux CSV and the reader's filters (shared by the real-input kinds)."""

    abcflux: LocationField = Field(description="Site-month fluxes in the ABCflux v1 CSV format.")
    truth_budgets: LocationField | None = Field(
        default=None, description="Optional reference budgets CSV (year, domain, flux, "
        "budget_tg_c_yr) joined to budgets.csv (a twin's truth_budgets.csv).")
    methods: tuple[str, ...] | None = Field(
        default=None, description="Keep only these flux methods (e.g. [EC, Ch]).")
    max_gap_fill: float | None = Field(
        default=None, ge=0, le=100, description="Drop rows gap-filled above this share (%).")
    exclude_disturbed: bool = Field(default=False, description="Drop disturbed sites' rows.")
    gpp_sign: Literal["auto", "negative", "positive"] = Field(
        default="auto", description="How the CSV stores GPP: negative (ABCflux: flipped to "
        "positive), positive, or auto (each site's majority sign; mixed conventions are an "
        "error).")


class FilesInput(_ReaderOptions):
    """Real (or previously built) inputs: predictor cube, zone layers, ABCflux CSV."""

    kind: Literal["files"]
    cube: LocationField = Field(description="Predictor cube (Zarr store).")
    zones: LocationField = Field(description="Zone layers of the cube's grid (Zarr store).")
    fire: LocationField | None = Field(
        default=None, description="Optional fire store on the cube's grid with the twin's "
        "fire.zarr schema (annual burned_fraction, fire_emissions; e.g. written by "
        "build-cube's fire section): NEE + fire, years since fire, post-fire correction.")


class BuildInput(_ReaderOptions):
    """Build the predictor cube from rasters first (the ``build-cube`` stage,
    :func:`abz_dask.cube_build.build_cube`), then run on it."""

    kind: Literal["build"]
    cube_config: Path = Field(description="build-cube YAML configuration.")
    zones: LocationField | None = Field(
        default=None, description="Zone layers (Zarr); default: the zones the build-cube "
        "config defines, else the built-in real-geodata layers of the cube's grid.")


class TrainingSection(_Section):
    """The training stage (:func:`abz_dask.training.run_training`)."""

    profile: str | dict[str, Any] = Field(
        default="light", description="'light', 'paper', a profile YAML path, or a mapping of "
        "field overrides with an optional base (see abz_dask.training.profiles).")
    fluxes: tuple[Flux, ...] = Field(
        default=FLUX_NAMES, min_length=1, description="Responses to model.")
    seed: int = Field(default=DEFAULT_SEED, ge=0, description="Base seed of the forests.")

    @field_validator("profile")
    @classmethod
    def _profile(cls, v: str | dict[str, Any]) -> str | dict[str, Any]:
        from abz_dask.training import PROFILES, resolve_profile

        if isinstance(v, str) and v not in PROFILES and not Path(v).suffix:
            raise ValueError(f"unknown training profile {v!r}; choose one of {sorted(PROFILES)}"
                             " or give a YAML file / mapping")
        if isinstance(v, dict) or v in PROFILES:
            try:
                resolve_profile(v)
            except ValidationError as e:
                raise ValueError(flat_errors(e)) from None
        return v


class UpscaleSection(_Section):
    """The upscaling stage (:func:`abz_dask.upscale.run_upscale`)."""

    start: str | None = Field(default=None,
                              description="First month to predict YYYY-MM (a January).")
    end: str | None = Field(default=None,
                            description="Last month to predict YYYY-MM (a December).")
    tile: int | None = Field(default=None, ge=MIN_TILE, description="Tile edge in cells.")
    bootstrap_sample: float = Field(
        default=1.0, gt=0.0, le=1.0, description="Fraction of cells for bootstrap replicates.")
    n_bootstrap: int | None = Field(
        default=None, ge=0, description="Bootstrap models used (default: all trained).")
    store_replicates: bool = Field(default=False, description="Also store replicate maps.")
    seed: int = Field(default=DEFAULT_SEED, ge=0,
                      description="Seed of the bootstrap cell sample.")

    @field_validator("start", "end", mode="before")
    @classmethod
    def _months(cls, v: Any, info: Any) -> str | None:
        return _month(v, info.field_name)

    @model_validator(mode="after")
    def _period(self) -> UpscaleSection:
        # the upscaler predicts whole years: a partial year would be dropped without a word
        if self.start is not None and not self.start.endswith("-01"):
            raise ValueError(f"start must be a January (whole years are predicted), "
                             f"got {self.start!r}")
        if self.end is not None and not self.end.endswith("-12"):
            raise ValueError(f"end must be a December (whole years are predicted), "
                             f"got {self.end!r}")
        if self.start is not None and self.end is not None and self.end < self.start:
            raise ValueError(f"end {self.end!r} is before start {self.start!r}")
        return self


class BudgetsSection(_Section):
    """The budgets stage: period-mean domain budgets with bootstrap SD (``budgets.csv``)."""

    max_excluded_area: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Largest share of a domain's area that may "
        "lack predictor data (such cells get no prediction and are not in the budgets); above "
        "it the budgets stage fails. Default: any loss is a printed warning.")

    start_year: int = Field(default=2001, ge=YEAR_RANGE[0], le=YEAR_RANGE[1],
                            description="First year.")
    end_year: int = Field(default=2020, ge=YEAR_RANGE[0], le=YEAR_RANGE[1],
                          description="Last year.")

    @model_validator(mode="after")
    def _order(self) -> BudgetsSection:
        if self.end_year < self.start_year:
            raise ValueError(f"end_year {self.end_year} is before start_year {self.start_year}")
        return self


class TrendsSection(_Section):
    """The trends stage: per-pixel and budget trends over the budgets period
    (:func:`abz_dask.analyses.run_trends`, zyp-exact Theil–Sen / Mann–Kendall)."""

    enabled: bool = Field(default=True, description="Compute the trends.")
    method: Literal["zhang", "yuepilon", "none"] = Field(
        default="zhang", description="Prewhitening of the zyp trend test.")
    preserve_range: bool = Field(default=True, description="zyp preserve.range.for.sig.test.")
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0, description="Significance level.")
    predictors: tuple[str, ...] = Field(
        default=("tair", "snow_cover", "soil_moisture", "ndvi"),
        description="Cube variables whose annual-mean trends are mapped (NAME:SEASON for a "
        "seasonal mean).")


class ReportSection(_Section):
    """The table1 and report stages: Table 1 (:func:`abz_dask.analyses.table1.write_table1`),
    analyses and ``report.html`` (:func:`abz_dask.report.build_report`) over the budgets
    period."""

    enabled: bool = Field(default=True, description="Write Table 1 and the report.")
    fire_start: int | None = Field(
        default=None, ge=YEAR_RANGE[0], le=YEAR_RANGE[1],
        description="First year of Table 1's NEE + fire (default: the fire record's first "
        "year).")
    fire_year: int | None = Field(
        default=None, ge=YEAR_RANGE[0], le=YEAR_RANGE[1],
        description="Year of the post-fire bias correction (default: the last fire year; "
        "at most budgets.end_year).")


class ProductEntry(_Section):
    """A gridded product to compare with (NetCDF;
    :func:`abz_dask.compare.products.read_product`). The name's prefix gives the approach:
    ``inversion*`` (fire removed), ``cmip6*`` / ``isimip*`` / ``trendy*`` (process model),
    ``fluxcom*``."""

    name: str = Field(min_length=1, description="Product name (its prefix gives the approach).")
    path: Path = Field(description="NetCDF file.")
    variable: str | None = Field(default=None, description="Variable (default: detected).")
    sign: str | None = Field(default=None, description="Sign convention (default: detected).")


class CompareSection(_Section):
    """The compare stage: comparisons with other gridded products, the paper-2 regional
    table, MESS and environmental clusters (:func:`abz_dask.compare.run.run_compare`) into
    ``RUN/compare``. Off by default; a twin run compares with the twin's two comparison
    products when ``products`` is empty."""

    enabled: bool = Field(default=False, description="Run the comparisons.")
    products: tuple[ProductEntry, ...] = Field(
        default=(), description="Products to compare (default for a twin: its inversion-like "
        "and CMIP6-like products; required for real inputs).")
    start_year: int = Field(default=2002, ge=YEAR_RANGE[0], le=YEAR_RANGE[1],
                            description="First year of the paper-2 regional table.")
    end_year: int = Field(default=2014, ge=YEAR_RANGE[0], le=YEAR_RANGE[1],
                          description="Last year of the paper-2 regional table.")
    k: int = Field(default=8, ge=1, description="k-means environmental clusters.")
    n_sample: int = Field(default=10_000, ge=1, description="Pixels sampled for the clusters.")
    seed: int = Field(default=DEFAULT_SEED, ge=0, description="Seed of the pixel sample and "
                      "k-means.")
    coverage: bool = Field(default=True, description="Compute MESS and the clusters.")
    figures: bool = Field(default=True, description="Write the PNG figures.")

    @model_validator(mode="after")
    def _order(self) -> CompareSection:
        if self.end_year < self.start_year:
            raise ValueError(f"end_year {self.end_year} is before start_year {self.start_year}")
        if self.n_sample < self.k:
            raise ValueError(f"n_sample {self.n_sample} is below k {self.k}: k-means needs at "
                             "least k pixels")
        return self


class AdaptSection(_Section):
    """Adaptive scaling bounds (``cluster.adapt(minimum=..., maximum=...)``)."""

    minimum: int = Field(default=1, ge=0)
    maximum: int = Field(ge=1)

    @model_validator(mode="after")
    def _order(self) -> AdaptSection:
        if self.maximum < self.minimum:
            raise ValueError(f"maximum {self.maximum} is below minimum {self.minimum}")
        return self


class ClusterSection(_Section):
    """Where the pipeline runs (:func:`abz_dask.pipeline.clusters.open_cluster`).

    ``threads``: dask's threaded scheduler, no ``distributed``; ``local``: a ``LocalCluster``
    sized to the machine on 127.0.0.1; ``address``: a running scheduler; ``slurm`` / ``pbs``:
    dask-jobqueue with its settings from dask's ``jobqueue.yaml`` (``options`` override
    keys); ``kubernetes``: the dask-kubernetes operator's ``KubeCluster``; ``gateway``:
    ``dask_gateway.Gateway(address).new_cluster(**options)``.

    ``security`` (:class:`SecuritySection`) switches on TLS: ``{tls: true}`` (a per-run
    self-signed certificate; local, slurm, pbs; accepted for gateway, which is always TLS) or
    your own PEM files (``tls_ca_file``, ``tls_<client|scheduler|worker>_<cert|key>``; local,
    slurm, pbs, address). ``threads`` and ``kubernetes`` refuse it. What each kind does:
    :mod:`abz_dask.pipeline.security`. ``options.security`` is an error (use this section), and so
    is
    ``options.protocol`` while TLS is on.
    """

    kind: Literal["threads", "local", "address", "slurm", "pbs", "kubernetes", "gateway"] = \
        "local"
    workers: int | None = Field(
        default=None, ge=1, description="Worker processes (local: default one per core; "
        "slurm/pbs/kubernetes/gateway: workers to scale to; threads: threads).")
    threads_per_worker: int = Field(default=1, ge=1, description="Threads of a local worker.")
    address: str | None = Field(
        default=None, description="Scheduler address (address) or gateway address (gateway; "
        "default: dask config gateway.address).")
    adapt: AdaptSection | None = Field(
        default=None, description="Adaptive scaling instead of a fixed number of workers.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the cluster class "
        "(LocalCluster, SLURMCluster, PBSCluster, KubeCluster, Gateway.new_cluster).")
    wait_timeout: float = Field(default=600.0, gt=0, description="Seconds to wait for the "
                                "first worker(s) to join.")
    security: SecuritySection = Field(
        default_factory=lambda: SecuritySection(),
        description="TLS of the Dask connections: {tls: true} or certificate files "
        "(abz_dask.pipeline.security); default off.")

    @model_validator(mode="after")
    def _needs(self) -> ClusterSection:
        if self.kind == "address" and not self.address:
            raise ValueError("cluster.kind 'address' needs cluster.address "
                             "(e.g. tcp://scheduler:8786)")
        if self.kind in ("threads", "local") and self.adapt is not None:
            raise ValueError(f"cluster.adapt is not used with kind {self.kind!r}")
        _check_cluster_security(self)
        return self


class RunConfig(_Section):
    """The whole run: input, stage settings, cluster and output folder."""

    output: LocationField = Field(description="Run folder (stage outputs and their records): a "
                                 "local path or an object-store URL (s3://, gs://, az://).")
    input: Annotated[TwinInput | FilesInput | BuildInput, Field(discriminator="kind")] = Field(
        default_factory=TwinInput, description="Twin settings or real input paths.")
    training: TrainingSection = Field(default_factory=TrainingSection)
    upscale: UpscaleSection = Field(default_factory=UpscaleSection)
    budgets: BudgetsSection = Field(default_factory=BudgetsSection)
    trends: TrendsSection = Field(default_factory=TrendsSection)
    report: ReportSection = Field(default_factory=ReportSection)
    compare: CompareSection = Field(default_factory=CompareSection)
    cluster: ClusterSection = Field(default_factory=ClusterSection)
    progress: bool = Field(default=True, description="Show progress bars.")
    store: Literal["zarr", "icechunk"] | None = Field(
        default=None, description="Format of the flux store: 'icechunk' (a versioned repository, "
        "one commit per upscale; needed for releases) or plain 'zarr'. Default: icechunk for an "
        "object-store output, zarr on a local disk.")

    @property
    def store_format(self) -> Literal["zarr", "icechunk"]:
        """The flux store's format (``store``, else by where the output lives)."""
        if self.store is not None:
            return self.store
        return "icechunk" if is_url(self.output) else "zarr"

    @model_validator(mode="before")
    @classmethod
    def _default_kind(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("input"), dict) \
                and "kind" not in data["input"]:
            data = {**data, "input": {"kind": "twin", **data["input"]}}
        return data

    @model_validator(mode="after")
    def _periods(self) -> RunConfig:
        b = self.budgets
        if self.trends.enabled and b.end_year - b.start_year < 3:
            raise ValueError(
                f"trends need at least 4 years but budgets.start_year..end_year is "
                f"{b.start_year}..{b.end_year}; widen the period or set trends.enabled: false")
        fy = self.report.fire_year
        if self.report.enabled and fy is not None and fy > b.end_year:
            raise ValueError(f"report.fire_year {fy} is after budgets.end_year {b.end_year}")
        return self

    def resolved(self, base: Path) -> RunConfig:
        """A copy with relative paths made absolute against ``base`` (the YAML's folder)."""

        def fix(p: Path | None) -> Path | None:
            if p is None or is_url(p):
                return p
            return (p if p.is_absolute() else base / p).resolve()

        upd: dict[str, Any] = {"output": fix(self.output)}
        inp = self.input
        if isinstance(inp, FilesInput | BuildInput):
            paths = {"zones": fix(inp.zones), "abcflux": fix(inp.abcflux),
                     "truth_budgets": fix(inp.truth_budgets)}
            if isinstance(inp, FilesInput):
                paths["cube"] = fix(inp.cube)
                paths["fire"] = fix(inp.fire)
            else:
                paths["cube_config"] = fix(inp.cube_config)
            upd["input"] = inp.model_copy(update=paths)
        if self.compare.products:
            upd["compare"] = self.compare.model_copy(update={"products": tuple(
                e.model_copy(update={"path": fix(e.path)}) for e in self.compare.products)})
        tr = self.training
        if isinstance(tr.profile, str) and Path(tr.profile).suffix:
            upd["training"] = tr.model_copy(update={"profile": str(fix(Path(tr.profile)))})
        return self.model_copy(update=upd)


def parse_config(data: Any, source: str = "<config>", base: Path | None = None) -> RunConfig:
    """Validate a mapping (as read from YAML) into a :class:`RunConfig`.

    Parameters
    ----------
    data : mapping
        The configuration.
    source : str
        Name used in error messages (the file).
    base : Path, optional
        Folder against which relative paths are resolved.

    Raises
    ------
    ConfigError
        Unknown keys, missing keys or invalid values, each named by its key path.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a run configuration must be a YAML mapping, "
                          f"got {type(data).__name__}")
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: {flat_errors(e, tags=_INPUT_KINDS)}") from None
    return cfg.resolved(base) if base is not None else cfg


def load_config(path: str | Path, *, cluster: str | None = None) -> RunConfig:
    """Read and validate a run configuration YAML file.

    Parameters
    ----------
    path : path
        The YAML file; relative paths inside are relative to its folder.
    cluster : str, optional
        Override of ``cluster.kind`` (the CLI's ``--cluster``).

    Returns
    -------
    RunConfig

    Raises
    ------
    ConfigError
        Missing file, YAML syntax error, unknown keys or invalid values.
    """
    from abz_dask.io.yamlfile import read_mapping

    p = Path(path)
    data: Any = read_mapping(p, "run configuration", ConfigError)
    if cluster is not None:
        if cluster not in CLUSTER_KINDS:
            raise ConfigError(f"--cluster {cluster!r}: choose one of {list(CLUSTER_KINDS)}")
        if isinstance(data, dict):
            data = {**data, "cluster": {**(data.get("cluster") or {}), "kind": cluster}}
    return parse_config(data, source=str(p), base=p.resolve().parent)


# ------------------------------------------------------------------------ cluster.security


class SecuritySection(_Section):
    """TLS of the Dask connections (``cluster.security``; :mod:`abz_dask.pipeline.security`).

    Off by default. ``tls: true`` makes a self-signed CA / certificate / key in memory for the
    run (``distributed.Security.temporary()``); alternatively give your own PEM files: the CA
    and, per role, a certificate and its key (the key may be omitted when the certificate file
    holds it). Paths are absolute (``~`` and ``$VARS`` expanded) and must exist; every file is
    loaded once here, so a wrong or encrypted key is a configuration error. With TLS on, only
    clients presenting a certificate signed by the CA can connect (mutual TLS); plain-TCP
    clients are refused.
    """

    tls: bool = Field(default=False, description="A self-signed certificate made for this run "
                      "(local, slurm, pbs; gateway: always TLS).")
    tls_ca_file: Path | None = Field(default=None, description="CA certificate (PEM) that "
                                     "signed every certificate below.")
    tls_client_cert: Path | None = Field(default=None, description="Client certificate.")
    tls_client_key: Path | None = Field(default=None, description="Client private key.")
    tls_scheduler_cert: Path | None = Field(default=None,
                                            description="Scheduler certificate.")
    tls_scheduler_key: Path | None = Field(default=None, description="Scheduler private key.")
    tls_worker_cert: Path | None = Field(default=None, description="Worker certificate.")
    tls_worker_key: Path | None = Field(default=None, description="Worker private key.")

    @field_validator("tls_ca_file", "tls_client_cert", "tls_client_key", "tls_scheduler_cert",
                     "tls_scheduler_key", "tls_worker_cert", "tls_worker_key", mode="before")
    @classmethod
    def _file(cls, v: Any) -> Path | None:
        from abz_dask.pipeline.security import expand_path

        return None if v is None else expand_path(v)

    @model_validator(mode="after")
    def _consistent(self) -> SecuritySection:
        from abz_dask.pipeline.security import ROLES, check_pem

        files = self.files()
        given = [k for k, v in files.items() if v is not None]
        if self.tls and given:
            raise ValueError(f"cluster.security: tls: true makes a per-run certificate; it "
                             f"cannot be combined with certificate files {given}")
        for role in ROLES:
            if files[f"tls_{role}_key"] is not None and files[f"tls_{role}_cert"] is None:
                raise ValueError(f"cluster.security.tls_{role}_key needs "
                                 f"cluster.security.tls_{role}_cert")
        if given and files["tls_ca_file"] is None:
            raise ValueError(f"cluster.security: certificate files {given} need "
                             "cluster.security.tls_ca_file (the CA that signed them)")
        check_pem(files)
        return self

    @property
    def enabled(self) -> bool:
        """TLS is on (``tls: true`` or certificate files)."""
        return self.tls or any(v is not None for v in self.files().values())

    def files(self) -> dict[str, Path | None]:
        """The certificate-file keys (:data:`abz_dask.pipeline.security.TLS_FILE_KEYS`) → path or
        None."""
        from abz_dask.pipeline.security import TLS_FILE_KEYS

        return {k: getattr(self, k) for k in TLS_FILE_KEYS}

    def to_security(self) -> Any:
        """The ``distributed.Security`` of this section (``None`` when TLS is off)."""
        from abz_dask.pipeline.security import make_security

        return make_security(self.tls, self.files())


def _check_cluster_security(spec: ClusterSection) -> None:
    """The ``cluster.security`` rules of each ``cluster.kind``
    (:mod:`abz_dask.pipeline.security`)."""
    from abz_dask.pipeline.security import CERT_KEYS, roles_needed

    opts, sec, kind = spec.options, spec.security, spec.kind
    if "security" in opts:
        raise ValueError("cluster.options.security: TLS is configured by cluster.security "
                         "({tls: true} or certificate files), not passed through options")
    if not sec.enabled:
        return
    if "protocol" in opts:
        raise ValueError(f"cluster.options.protocol {opts['protocol']!r}: with "
                         "cluster.security the protocol is tls://; remove it")
    if kind == "threads":
        raise ValueError("cluster.security: kind 'threads' has no network connections to "
                         "secure; remove cluster.security or use kind 'local'")
    if kind == "kubernetes":
        raise ValueError("cluster.security: kind 'kubernetes' (the dask-kubernetes operator's "
                         "KubeCluster) has no TLS option; start the cluster with certificates "
                         "mounted in its pods (dask config distributed.comm.tls.*) and join it "
                         "with kind 'address' and your tls_ca_file / tls_client_cert")
    given = [k for k, v in sec.files().items() if v is not None]
    if kind == "gateway":
        if given:
            raise ValueError(f"cluster.security {given}: a dask-gateway cluster always uses "
                             "TLS with the certificate the gateway issues for it; certificate "
                             "files are not used (tls: true alone is accepted)")
        return
    if kind == "address":
        if sec.tls:
            raise ValueError("cluster.security.tls: true makes a certificate the scheduler "
                             "already running at cluster.address cannot trust; give that "
                             "cluster's tls_ca_file and a tls_client_cert (+ tls_client_key)")
        unused = [k for k in given if "scheduler" in k or "worker" in k]
        if unused:
            raise ValueError(f"cluster.security {unused}: not used with kind 'address' (the "
                             "scheduler and workers already run with their own certificates)")
        if not str(spec.address).startswith("tls://"):
            raise ValueError(f"cluster.address {spec.address!r}: with cluster.security the "
                             "scheduler address must start with tls://")
    if not sec.tls:
        missing = [CERT_KEYS[r] for r in roles_needed(kind) if getattr(sec, CERT_KEYS[r]) is None]
        if missing:
            raise ValueError(f"cluster.security: kind {kind!r} with your own certificates "
                             f"needs {missing} too")


__all__ += ["SecuritySection"]
ClusterSection.model_rebuild()
RunConfig.model_rebuild()
