"""The comparison stage of a run folder: products → tables, maps and figures in ``RUN/compare``.

:func:`run_compare` reads the run's upscaled NEE (``fluxes.zarr``), its zones, predictor cube,
fire emissions, planted truth and training table (:class:`CompareInputs`, built from the run's
layout by :meth:`abz_dask.pipeline.layout.RunLayout.compare_inputs`), and any number of other
products (:class:`ProductSpec`; the stage runner's ``compare`` stage passes the configured ones,
or on a twin the twin's two comparison products). The approach of
a product is read from its name prefix (:data:`APPROACH_PREFIXES`: ``inversion…`` → inversion,
fire subtracted; ``cmip6…``/``isimip…``/``trendy…`` → process model; ``fluxcom…`` → ML upscaling).

Outputs (``RUN/compare/``):

``comparison_metrics.csv``
    Pearson r of mean and trend maps and per-domain budgets and ratios vs the upscaling
    (:func:`~abz_dask.compare.metrics.compare_maps`); on a twin also vs the planted truth.
``regional_table.csv`` / ``regional_table.md``
    Paper 2 Table 3 layout: mean ± spatial SD per RECCAP2 region × approach over
    :data:`PAPER2_YEARS` (each approach on the years it covers), with the in-situ row from the
    training table (complete site-years, mean ± SD across sites).
``regional_summary.csv``, ``regional_anova.csv``, ``regional_tukey.csv``
    Per-region median and range across approaches, one-way ANOVA on region, Tukey letters.
``agreement_summary.csv``
    Area share of the domain in each class (sink/neutral/source) per approach and across them.
``mess_summary.csv``, ``cluster_centres.csv``, ``cluster_vegtypes.csv``
    Extrapolation (share of the domain with MESS < 0, most dissimilar predictors) and the
    k-means environmental clusters (DECISIONS 14).
``maps.zarr``
    Mean maps per approach, agreement shares, MESS and the cluster map, for the figures
    (:func:`abz_dask.compare.figures.comparison_figures`).

Memory: every step is a lazy dask graph reduced chunk by chunk (correlations from sums, budgets
and regional statistics as weighted dots, maps written to Zarr block by block); annual maps
smaller than :data:`PERSIST_MAX_BYTES` are persisted once so that small runs do not repeat the
regridding for each consumer. Only the pixel sample of the clusters and the zone layers used
for masks are held in memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import xarray as xr

from abz_dask.aggregation.zonal import open_flux_store
from abz_dask.compare.agreement import agreement_maps
from abz_dask.compare.coverage import environmental_clusters, mess_map
from abz_dask.compare.metrics import compare_maps, subtract_fire
from abz_dask.compare.products import read_product, to_annual
from abz_dask.compare.regional import (
    markdown,
    region_anova,
    regional_summary,
    regional_table,
    table_wide,
    tukey_letters,
)
from abz_dask.geo.grid import Grid
from abz_dask.geo.regrid import conservative
from abz_dask.geo.zones import ZONE_LABELS
from abz_dask.io.location import as_path, publish, remove, staging, url, write_atomic

__all__ = ["APPROACH_PREFIXES", "PAPER2_YEARS", "CompareInputs", "ProductSpec", "approach_of",
           "in_situ_regional", "parse_product", "run_compare"]

PAPER2_YEARS = (2002, 2014)
APPROACH_PREFIXES: dict[str, str] = {"inversion": "inversion", "gcb": "inversion",
                                     "cmip6": "process_model", "isimip": "process_model",
                                     "trendy": "process_model", "fluxcom": "ml_upscaling"}


@dataclass(frozen=True)
class ProductSpec:
    """A gridded product to compare: name, file, variable and sign (see :func:`read_product`)."""

    name: str
    path: Path
    variable: str | None = None
    sign: str | None = None

    @property
    def approach(self) -> str:
        """Approach group of the product (from the name prefix)."""
        return approach_of(self.name)


def approach_of(name: str) -> str:
    """Approach of a product name: the first matching prefix of :data:`APPROACH_PREFIXES`."""
    low = name.lower()
    for pre, appr in APPROACH_PREFIXES.items():
        if low.startswith(pre):
            return appr
    return "other"


def parse_product(text: str) -> ProductSpec:
    """Parse ``NAME=PATH`` or ``NAME=PATH:VARIABLE`` (the CLI's ``--product``)."""
    if "=" not in text:
        raise ValueError(f"--product must be NAME=PATH[:VARIABLE], got {text!r}")
    name, rest = text.split("=", 1)
    var = None
    if ":" in rest and not Path(rest).exists():
        rest, var = rest.rsplit(":", 1)
    if not name.strip():
        raise ValueError(f"empty product name in {text!r}")
    return ProductSpec(name.strip(), Path(rest), var or None)


@dataclass(frozen=True)
class CompareInputs:
    """What the comparison stage reads and where it writes (optional stores ``None`` when
    absent): flux store, zones, predictor cube (MESS, clusters), fire store (removed from
    inversions), planted truth (compared too), training table (in-situ row, MESS) and the
    output folder."""

    fluxes: Path
    zones: Path
    cube: Path | None
    fire: Path | None
    truth: Path | None
    training: Path | None
    out: Path


def in_situ_regional(training: pd.DataFrame, zones: xr.Dataset, years: tuple[int, int],
                     layer: str = "reccap2") -> pd.DataFrame:
    """In-situ row of the regional table: complete site-years → site means → region mean ± SD.

    The region of a site is the zone code of its grid cell (``row``, ``col`` columns).
    """
    t = training[(training["year"] >= years[0]) & (training["year"] <= years[1])]
    t = t.dropna(subset=["NEE"])
    g = t.groupby(["site_id", "year"])
    ann = g["NEE"].sum()[g["month"].nunique() == 12].reset_index()
    codes = np.asarray(zones[layer].values)
    cells = t.drop_duplicates("site_id").set_index("site_id")[["row", "col"]]
    rows = []
    site = ann.groupby("site_id")["NEE"].mean()
    reg = pd.Series({s: int(codes[int(cells.loc[s, "row"]), int(cells.loc[s, "col"])])
                     for s in site.index}, dtype=int)
    for code, region in ZONE_LABELS[layer].items():
        if code == 0:
            continue
        v = site[reg.reindex(site.index).to_numpy() == code] if len(site) else site
        rows.append({"approach": "in_situ", "region": region,
                     "mean": float(v.mean()) if len(v) else np.nan,
                     "sd": float(v.std(ddof=1)) if len(v) > 1 else np.nan,
                     "n_models": 0, "n_pixels": 0, "n_sites": len(v)})
    return pd.DataFrame(rows)


def _atomic_csv(df: pd.DataFrame, path: Path, index: bool = False) -> None:
    write_atomic(path, df.to_csv(index=index))


#: Annual maps up to this size are persisted (computed once, kept in worker memory); larger
#: ones (1-km runs) stay lazy and are recomputed per consumer, keeping memory chunk-bounded.
PERSIST_MAX_BYTES = 256 * 2**20


def _maybe_persist(a: xr.DataArray) -> xr.DataArray:
    return a.persist() if a.nbytes <= PERSIST_MAX_BYTES else a


def _period(a: xr.DataArray, years: tuple[int, int]) -> xr.DataArray:
    return a.sel(year=slice(years[0], years[1]))


def run_compare(inputs: CompareInputs, products: list[ProductSpec], *,
                years: tuple[int, int] = PAPER2_YEARS, k: int = 8, n_sample: int = 10_000,
                seed: int = 0, coverage: bool = True, figures: bool = True) -> dict[str, Path]:
    """Run the comparison stage (see the module docstring for the outputs).

    Parameters
    ----------
    inputs : CompareInputs
        Stores to read and the output folder (``RUN/compare``).
    products : list of ProductSpec
        Products to compare (may be empty on a twin: the planted truth is compared).
    years : (int, int)
        Period of the paper-2 regional table and agreement maps.
    k, n_sample, seed : int
        k-means clusters, sampled pixels and seed.
    coverage : bool
        Compute MESS and the environmental clusters (needs the cube; MESS also the training
        table).
    figures : bool
        Also write the PNG figures.

    Returns
    -------
    dict of str to Path
        Every written file, by short name.

    Raises
    ------
    FileNotFoundError
        The flux store or the zones do not exist.
    ValueError
        No product and no planted truth to compare with.
    """
    inp = inputs
    for what, path in (("flux store", inp.fluxes), ("zones", inp.zones)):
        if not as_path(path).exists():
            raise FileNotFoundError(f"{what} {path} does not exist (run the upscaling stage "
                                    "first)")
    if not products and inp.truth is None:
        raise ValueError("compare: no products given and no planted truth to compare with")
    out = as_path(inp.out)
    out.mkdir(parents=True, exist_ok=True)
    zones = xr.open_zarr(url(inp.zones), consolidated=False)
    grid = Grid.of_dataset(zones)
    cell_area = grid.cell_area
    zl = zones[["abz", "land_fraction", "biome", "permafrost", "reccap2"]].load()
    domain = (zl["abz"].astype(bool) & (zl["land_fraction"] > 0))
    fluxes = open_flux_store(inp.fluxes)
    ref = _maybe_persist(to_annual(fluxes["NEE"]))
    fire = (xr.open_zarr(url(inp.fire), consolidated=False)["fire_emissions"]
            if inp.fire is not None else None)
    annual: dict[str, xr.DataArray] = {}
    notes: dict[str, dict[str, object]] = {}
    for spec in products:
        p = read_product(spec.path, spec.variable, sign=spec.sign)
        a = conservative(to_annual(p), grid).where(domain.values)
        a = a.assign_coords(y=ref["y"], x=ref["x"])
        fire_removed = False
        if spec.approach == "inversion" and fire is not None:
            a = subtract_fire(a, fire)
            fire_removed = True
        annual[spec.name] = _maybe_persist(a)
        notes[spec.name] = {"approach": spec.approach, "file": str(spec.path),
                            "variable": p.attrs["source_variable"],
                            "units": p.attrs["source_units"], "fire_removed": fire_removed}
    written: dict[str, Path] = {}
    against = dict(annual)
    if inp.truth is not None:
        truth = to_annual(xr.open_zarr(url(inp.truth), consolidated=False)["NEE"])
        against["twin_truth"] = _maybe_persist(truth.assign_coords(y=ref["y"], x=ref["x"]))
    metrics = compare_maps(ref, against, zl, cell_area, mask=domain)
    metrics["approach"] = metrics["product"].map(
        lambda n: notes.get(n, {}).get("approach", "truth"))
    metrics["fire_removed"] = metrics["product"].map(
        lambda n: notes.get(n, {}).get("fire_removed", False))
    written["comparison_metrics"] = out / "comparison_metrics.csv"
    _atomic_csv(metrics, written["comparison_metrics"])
    write_atomic(out / "products.json", json.dumps(notes, indent=2))
    written["products"] = out / "products.json"

    # paper 2: regional table, ANOVA, letters, agreement
    by_approach: dict[str, list[xr.DataArray]] = {"upscaling": [_period(ref, years)]}
    for name, a in annual.items():
        by_approach.setdefault(notes[name]["approach"], []).append(_period(a, years))  # type: ignore[arg-type]
    stacked: dict[str, xr.DataArray] = {}
    for appr, arrs in by_approach.items():
        arrs = [x for x in arrs if x.sizes["year"] > 0]
        if arrs:
            stacked[appr] = xr.concat([x.mean("year") for x in arrs], dim="model")
    maps_for_table = {appr: xr.concat([x for x in arrs if x.sizes["year"] > 0], dim="model",
                                      join="outer")
                      for appr, arrs in by_approach.items() if any(x.sizes["year"] for x in arrs)}
    tab = regional_table(maps_for_table, zl, cell_area)
    if inp.training is not None:
        from abz_dask.training.extract import read_training_table

        training = read_training_table(inp.training)
        tab = pd.concat([in_situ_regional(training, zl, years), tab], ignore_index=True)
    else:
        training = None
    if inp.truth is not None:
        tt = regional_table({"twin_truth": _period(against["twin_truth"], years)}, zl, cell_area)
        tab_all = pd.concat([tab, tt], ignore_index=True)
    else:
        tab_all = tab
    written["regional_table"] = out / "regional_table.csv"
    _atomic_csv(tab_all, written["regional_table"])
    written["regional_table_md"] = out / "regional_table.md"
    write_atomic(
        written["regional_table_md"],
        f"Mean annual NEE ± spatial SD (g C m-2 yr-1), {years[0]}–{years[1]}\n\n"
        + markdown(table_wide(tab_all)))
    summ = regional_summary(tab)
    written["regional_summary"] = out / "regional_summary.csv"
    _atomic_csv(summ.assign(mean_range=summ["range"].mean()), written["regional_summary"],
                index=True)
    if tab["mean"].notna().sum() > tab["region"].nunique():
        an = region_anova(tab)
        written["regional_anova"] = out / "regional_anova.csv"
        _atomic_csv(pd.DataFrame([an]), written["regional_anova"])
        written["regional_tukey"] = out / "regional_tukey.csv"
        _atomic_csv(tukey_letters(tab), written["regional_tukey"], index=True)
    agr = agreement_maps(stacked)
    # extrapolation and clusters
    layers: dict[str, xr.DataArray] = {
        "mean_nee": xr.concat([v.mean("model") for v in stacked.values()], dim="approach")
        .assign_coords(approach=list(stacked)),
        "share": agr["share"], "all_approaches": agr["all_approaches"]}
    mess_vars = ""
    if coverage and inp.cube is not None:
        cube = xr.open_zarr(url(inp.cube), consolidated=False)
        if training is not None:
            m = mess_map(cube, training, domain=domain)
            layers["mess"] = m["mess"]
            layers["mess_mod"] = m["mod"]
            mess_vars = m.attrs["variables"]
        cl = environmental_clusters(cube, domain, k=k, n_sample=n_sample, seed=seed)
        written["cluster_centres"] = out / "cluster_centres.csv"
        _atomic_csv(cl.centres, written["cluster_centres"], index=True)
        written["cluster_vegtypes"] = out / "cluster_vegtypes.csv"
        _atomic_csv(cl.vegtype_share, written["cluster_vegtypes"], index=True)
        layers["cluster"] = cl.cluster_map
    ds = xr.Dataset({k_: v.drop_vars([c for c in v.coords if c not in v.dims])
                     for k_, v in layers.items()})
    ds = ds.assign_coords(y=ref["y"].values, x=ref["x"].values)
    ds.attrs.update({"grid_resolution_m": grid.resolution, "years": f"{years[0]}-{years[1]}",
                     "mess_variables": mess_vars})
    zpath = out / "maps.zarr"
    tmp = staging(zpath)
    remove(tmp)
    for k_ in ds.data_vars:
        if ds[k_].dtype.kind == "f":
            ds[k_] = ds[k_].astype(np.float32)
    ds.to_zarr(url(tmp), mode="w", zarr_format=3, consolidated=False)
    publish(zpath)
    written["maps"] = zpath
    mz = xr.open_zarr(url(zpath), consolidated=False)
    w = (zl["land_fraction"].fillna(0) * cell_area).where(domain, 0.0).astype(np.float64)
    shares = xr.concat([mz["share"], mz["all_approaches"].expand_dims(
        approach=["all_approaches"])], dim="approach")
    num = xr.dot(shares.fillna(0.0), w, dim=("y", "x"))
    den = xr.dot(np.isfinite(shares).astype(np.float64), w, dim=("y", "x"))
    num, den = dask.compute(num, den)
    frac = (num / den.where(den > 0)).to_series().rename("area_share").reset_index()
    written["agreement_summary"] = out / "agreement_summary.csv"
    _atomic_csv(frac[["approach", "class", "area_share"]], written["agreement_summary"])

    if "mess" in mz:
        names = mess_vars.split(",")
        valid = np.isfinite(mz["mess"])
        neg = (mz["mess"] < 0) & valid
        counts = [((mz["mess_mod"] == i) & neg).sum() for i in range(len(names))]
        n_valid, n_neg, *counts = dask.compute(valid.sum(), neg.sum(), *counts)
        n_valid, n_neg = int(n_valid), int(n_neg)
        ms = pd.DataFrame({"variable": names,
                           "n_pixels_most_dissimilar": [int(c) for c in counts]})
        ms["share_of_extrapolated"] = ms["n_pixels_most_dissimilar"] / max(n_neg, 1)
        ms["domain_share_mess_negative"] = n_neg / max(n_valid, 1)
        ms["n_domain_pixels"] = n_valid
        written["mess_summary"] = out / "mess_summary.csv"
        _atomic_csv(ms, written["mess_summary"])
    if figures:
        from abz_dask.compare.figures import comparison_figures

        written.update(comparison_figures(out))
    return written
