"""Paper 2's regional NEE table, its ANOVA and Tukey HSD letters (seed-spec §6.4, §7).

The regions are the eight RECCAP2 permafrost sub-regions of the ``reccap2`` zone layer
(:data:`abz_dask.geo.zones.ZONE_LABELS`). Per region and approach the table holds the mean annual
NEE and the **spatial SD** — "spatial SD per year and model, averaged over models" [S2]: for every
model (and year, if given) the area-weighted mean and SD over the region's pixels; the table mean
is the mean over models (and years) and the SD the mean of the SDs.

:func:`region_anova` reproduces the paper's one-way ANOVA of NEE on region over the table's
cells (statsmodels OLS + ``anova_lm``) and :func:`tukey_letters` the compact letter display of
Tukey's HSD (regions sharing a letter do not differ at ``alpha``; insert–absorb algorithm of
Piepho 2004, letters assigned from the most negative mean). :func:`regional_summary` gives the
per-region median across approaches and the per-region range (max − min) whose mean the paper
quotes (41 g C m⁻² yr⁻¹).
"""

from __future__ import annotations

import itertools
import string
from importlib import resources
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import xarray as xr

from abz_dask.aggregation.zonal import pixel_area, zonal_totals, zone_layer
from abz_dask.geo.zones import ZONE_LABELS
from abz_dask.io.location import url

__all__ = ["REGIONS", "markdown", "read_table3", "region_anova", "regional_summary",
           "regional_table", "table_wide", "tukey_letters"]

#: RECCAP2 sub-regions in the paper's column order (codes of ``zones.reccap2``).
REGIONS: tuple[str, ...] = ("alaska", "canada_tundra", "west_canada", "east_canada",
                            "western_eurasia", "siberia_tundra", "east_siberia", "west_siberia")


def read_table3(path: str | Path | None = None) -> pd.DataFrame:
    """Paper 2's Table 3 as a long table ``approach, region, mean, sd, n_sites, note``.

    Default: the transcription shipped as ``abz_dask/data/paper2_table3.csv`` (source tag in its
    first comment line).
    """
    if path is None:
        with resources.as_file(resources.files("abz_dask") / "data" / "paper2_table3.csv") as p:
            return pd.read_csv(url(p), comment="#")
    return pd.read_csv(url(path), comment="#")


def regional_table(maps: dict[str, xr.DataArray], zones: xr.Dataset, cell_area: float, *,
                   layer: str = "reccap2") -> pd.DataFrame:
    """Mean ± spatial SD of NEE per region × approach (lazy, chunk-bounded reductions).

    Parameters
    ----------
    maps : dict of str to xr.DataArray
        Approach name → NEE (g C m⁻² yr⁻¹) with dims ``(y, x)``, optionally ``model`` and/or
        ``year`` (e.g. the annual maps of a period).
    zones : xr.Dataset
        Zone layers holding ``layer`` and ``land_fraction``.
    cell_area : float
        Cell area (m²); pixel weights are ``cell_area × land_fraction``.
    layer : str
        Categorical zone layer with codes in :data:`abz_dask.geo.zones.ZONE_LABELS`.

    Returns
    -------
    DataFrame
        ``approach, region, mean, sd, n_models, n_pixels`` (regions without valid pixels: NaN).
        Per model and year: area-weighted mean ``Σwx/Σw`` and SD ``sqrt(Σwx²/Σw − mean²)``
        over the region's valid pixels; the table averages them over models and years.
    """
    import dask

    labels = {c: r for c, r in ZONE_LABELS[layer].items() if c != 0}
    zl = zone_layer(zones, layer, names=labels, within=None, drop_codes=[0])
    area = pixel_area(zones, cell_area)
    rows = []
    for name, m in maps.items():
        arr = m
        for d in ("model", "year"):
            if d not in arr.dims:
                arr = arr.expand_dims(d)
        arr = arr.assign_coords(y=area["y"], x=area["x"]).astype(np.float64)
        ok = cast("xr.DataArray", np.isfinite(arr)).astype(np.float64)  # ufunc of a DataArray
        x = arr.where(ok > 0, 0.0)
        sums = [zonal_totals(v, zl, area) for v in (ok, x, x * x)]
        sums.append(zonal_totals(ok, zl, (area > 0).astype(np.float64)))
        s0, s1, s2, npx = (v.swap_dims(zone="zone_name").rename(zone_name="region")
                           for v in dask.compute(*sums))
        with np.errstate(invalid="ignore", divide="ignore"):
            mu = (s1 / s0).where(s0 > 0)
            sd = np.sqrt(np.maximum(s2 / s0 - mu**2, 0.0)).where(s0 > 0)
        for region in labels.values():
            mr = mu.sel(region=region).values.ravel()
            sr = sd.sel(region=region).values.ravel()
            good = np.isfinite(mr)
            rows.append({"approach": name, "region": region,
                         "mean": float(mr[good].mean()) if good.any() else np.nan,
                         "sd": float(sr[good].mean()) if good.any() else np.nan,
                         "n_models": int(arr.sizes["model"]),
                         "n_pixels": int(npx.sel(region=region).max())})
    return pd.DataFrame(rows)


def table_wide(table: pd.DataFrame, digits: int = 0) -> pd.DataFrame:
    """Paper layout: approaches as rows, regions as columns, cells ``"mean (±sd)"``."""
    def cell(r: pd.Series) -> str:
        if not np.isfinite(r["mean"]):
            return "NA"
        m = f"{r['mean']:.{digits}f}"
        return m if not np.isfinite(r.get("sd", np.nan)) else f"{m} (±{r['sd']:.{digits}f})"

    t = table.assign(cell=table.apply(cell, axis=1))
    order = [r for r in REGIONS if r in set(t["region"])]
    wide = t.pivot(index="approach", columns="region", values="cell")
    return wide.reindex(columns=order).reindex(index=list(dict.fromkeys(t["approach"])))


def markdown(table: pd.DataFrame) -> str:
    """A pipe-table Markdown rendering of a DataFrame (index as the first column)."""
    head = [str(table.index.name or "")] + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for idx, row in table.iterrows():
        lines.append("| " + " | ".join([str(idx)] + [str(v) for v in row.to_numpy()]) + " |")
    return "\n".join(lines) + "\n"


def regional_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per region: median, min, max and range (max − min) of the approach means.

    The mean of ``range`` over regions is the paper's "average range among approaches".
    """
    t = table.dropna(subset=["mean"])
    g = t.groupby("region")["mean"]
    out = pd.DataFrame({"median": g.median(), "min": g.min(), "max": g.max(),
                        "n_approaches": g.size()})
    out["range"] = out["max"] - out["min"]
    order = [r for r in REGIONS if r in out.index] + [r for r in out.index if r not in REGIONS]
    return out.reindex(order)


def region_anova(table: pd.DataFrame, value: str = "mean", group: str = "region"
                 ) -> dict[str, float]:
    """One-way ANOVA of ``value`` on ``group`` (statsmodels OLS + type-II ``anova_lm``).

    Returns
    -------
    dict
        ``F``, ``p``, ``df_between``, ``df_within``, ``n``.
    """
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    t = table[[group, value]].dropna().rename(columns={group: "g", value: "v"})
    if t["g"].nunique() < 2:
        raise ValueError(f"ANOVA needs ≥ 2 groups of {group!r}, got {t['g'].nunique()}")
    fit = smf.ols("v ~ C(g)", data=t).fit()
    a = anova_lm(fit, typ=2)
    return {"F": float(a.loc["C(g)", "F"]), "p": float(a.loc["C(g)", "PR(>F)"]),
            "df_between": float(a.loc["C(g)", "df"]), "df_within": float(a.loc["Residual", "df"]),
            "n": len(t)}


def tukey_letters(table: pd.DataFrame, value: str = "mean", group: str = "region",
                  alpha: float = 0.05) -> pd.DataFrame:
    """Tukey HSD compact letter display per group.

    Returns
    -------
    DataFrame
        Index = groups, columns ``mean`` (group mean), ``letters`` (groups sharing a letter are
        not significantly different at ``alpha``), ordered from the lowest mean.
    """
    from statsmodels.stats.multicomp import pairwise_tukeyhsd

    t = table[[group, value]].dropna()
    res = pairwise_tukeyhsd(t[value].to_numpy(float), t[group].astype(str).to_numpy(),
                            alpha=alpha)
    groups = [str(g) for g in res.groupsunique]
    pairs = itertools.combinations(groups, 2)
    differ = {frozenset(p) for p, rej in zip(pairs, res.reject, strict=True) if rej}
    means = t.groupby(t[group].astype(str))[value].mean()
    order = sorted(groups, key=lambda g: means[g])
    letters = _compact_letters(order, differ)
    return pd.DataFrame({"mean": [float(means[g]) for g in order],
                         "letters": [letters[g] for g in order]}, index=pd.Index(order,
                                                                                  name=group))


def _compact_letters(order: list[str], differ: set[frozenset[str]]) -> dict[str, str]:
    """Insert–absorb (Piepho 2004): columns = maximal sets of mutually non-different groups."""
    cols: list[set[str]] = [set(order)]
    for pair in sorted(differ, key=lambda p: sorted(order.index(g) for g in p)):
        a, b = tuple(pair)
        new: list[set[str]] = []
        for c in cols:
            if a in c and b in c:
                new.extend([c - {a}, c - {b}])
            else:
                new.append(c)
        # absorb: drop columns contained in another
        uniq = []
        for c in new:
            if c and not any(c < d for d in new) and c not in uniq:
                uniq.append(c)
        cols = uniq
    cols.sort(key=lambda c: min(order.index(g) for g in c))
    letters = dict.fromkeys(order, "")
    alphabet = string.ascii_lowercase + string.ascii_uppercase
    for k, c in enumerate(cols):
        for g in c:
            letters[g] += alphabet[k]
    return {g: "".join(sorted(s)) for g, s in letters.items()}
