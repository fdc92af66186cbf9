"""CH4 summaries by ecosystem class and region from synthesis tables (paper 2, Figs 3 and 5).

Input: a CSV (e.g. BAWLD-CH4, Treat et al. 2018, or their merge) with one row per site or
observation and the columns ``class`` (ecosystem class: marsh, fen, bog, permafrost wetland,
permafrost bog, boreal forest, upland tundra, …), ``region`` (optional; e.g. the RECCAP2
sub-region names) and the annual flux in **g CH4 m⁻² yr⁻¹** (column ``flux``, or one of
:data:`FLUX_ALIASES`); optionally ``dataset``. :func:`ch4_summary` returns the per-class and
per-region statistics and the one-way ANOVA across classes (paper: F(6,202) = 6.0, p < 0.0001)
and, when a ``dataset`` column exists, across datasets.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from pandas.core.groupby import SeriesGroupBy

from abz_dask.compare.regional import region_anova
from abz_dask.io.location import url

__all__ = ["FLUX_ALIASES", "ch4_summary", "read_ch4_synthesis"]

FLUX_ALIASES: tuple[str, ...] = ("flux", "ch4", "ch4_flux", "annual_ch4", "ch4_g_m2_yr",
                                 "flux_g_ch4_m2_yr")
_CLASS_ALIASES = ("class", "ecosystem_class", "ecosystem", "bawld_class", "wetland_class")


def read_ch4_synthesis(path: str | Path) -> pd.DataFrame:
    """Read a CH4 synthesis CSV into columns ``class, region, flux[, dataset]``.

    Raises
    ------
    ValueError
        If no class or flux column is found (the message names the file and its columns).
    """
    path = Path(path)
    t = pd.read_csv(url(path), comment="#")
    low = {c.lower().strip(): c for c in t.columns}
    cls = next((low[a] for a in _CLASS_ALIASES if a in low), None)
    flux = next((low[a] for a in FLUX_ALIASES if a in low), None)
    if cls is None or flux is None:
        raise ValueError(f"{path}: need an ecosystem-class column (one of {_CLASS_ALIASES}) and "
                         f"an annual CH4 flux column in g CH4 m-2 yr-1 (one of {FLUX_ALIASES}); "
                         f"columns are {list(t.columns)}")
    out = pd.DataFrame({"class": t[cls].astype(str).str.strip(),
                        "flux": pd.to_numeric(t[flux], errors="coerce")})
    out["region"] = t[low["region"]].astype(str) if "region" in low else "all"
    if "dataset" in low:
        out["dataset"] = t[low["dataset"]].astype(str)
    return out.dropna(subset=["flux"]).reset_index(drop=True)


def _stats(g: SeriesGroupBy) -> pd.DataFrame:
    return pd.DataFrame({"n": g.size(), "mean": g.mean(), "median": g.median(),
                         "sd": g.std(ddof=1), "q25": g.quantile(0.25), "q75": g.quantile(0.75)})


def ch4_summary(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Summaries of annual CH4 by class, region and class × region, with ANOVAs.

    Returns
    -------
    dict of str to DataFrame
        ``by_class``, ``by_region``, ``by_class_region`` (``n, mean, median, sd, q25, q75``) and
        ``anova`` (one row per factor: ``factor, F, p, df_between, df_within, n``).
    """
    out = {"by_class": _stats(table.groupby("class")["flux"]),
           "by_region": _stats(table.groupby("region")["flux"]),
           "by_class_region": _stats(table.groupby(["class", "region"])["flux"])}
    rows = []
    for factor in ("class", "region", "dataset"):
        if factor in table and table[factor].nunique() > 1:
            rows.append({"factor": factor, **region_anova(table, value="flux", group=factor)})
    out["anova"] = pd.DataFrame(rows)
    return out
