"""Budget intervals that see the error a network shares: the blocked-CV term.

A bootstrap resamples the sites a network holds, so its SD measures how much the budget would
move with another draw *like this one*. It cannot see an error that the network's design makes
systematic — a domain whose sites sit where the model is biased, a region no site represents
(``benchmarks/RESULTS_coverage.md``: the row bootstrap covers the planted truth in 4–5 of 12
networks, the cluster bootstrap in 9–12). Held-out residuals can: in a cross-validation whose
folds are whole spatial clusters of sites (:func:`abz_dask.training.fit.blocked_cv`), every
residual is the error of a forest that has no site within the cluster's span, which is how the
forest meets most of a domain.

The **CV error** of domain *d* and a flux (Tg C yr⁻¹) is what those residuals imply for the
domain's budget::

    e_d  = Σ_m  mean over the domain's sites of (the site's mean held-out residual in month m)
    CV_d = e_d × area_d × 10⁻¹²          (g C m⁻² yr⁻¹ × m² → Tg C yr⁻¹)

with residual = prediction − observation (so a positive CV error means the product is too high),
the sum over the calendar months that have residuals (a month no site observed adds nothing),
every site weighted equally (sites, not site-months, are the sampling unit), and the area that of
the budget (cell area × land fraction). A domain that other domains partition exactly (the ABZ =
tundra + boreal) is stratified: its CV error is the sum of its parts', so that a domain whose
sites over-represent one part does not carry that part's error over its whole area.

The interval is then ``estimate ± 1.96 × √(bootstrap SD² + CV error²)`` (``interval_sd``): the
CV error is used as the scale of the shared error, not subtracted from the estimate, so the
product's central budget stays the paper's.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import xarray as xr

from abz_dask.aggregation.budgets import DOMAINS, domain_weights
from abz_dask.aggregation.units import TG_PER_G

__all__ = ["INTERVAL_COLUMNS", "blocked_cv_error", "partitions", "with_interval"]

#: Columns :func:`with_interval` adds to a budget table.
INTERVAL_COLUMNS = ("cv_error_tg_c_yr", "interval_sd_tg_c_yr", "interval_method")


def partitions(weights: xr.DataArray) -> dict[str, list[str]]:
    """Domains that other domains partition exactly.

    Parameters
    ----------
    weights : DataArray
        ``(domain, y, x)`` pixel areas (:func:`~abz_dask.aggregation.budgets.domain_weights`);
        a pixel belongs to a domain where its weight is positive. May be dask-backed: only
        reductions are computed, never the masks whole.

    Returns
    -------
    dict
        Domain → the fewest other domains (at least two) that lie inside it, are pairwise
        disjoint and together hold its whole area; domains without such a partition are absent.
    """
    from itertools import combinations

    inside = weights > 0
    names = [str(d) for d in weights["domain"].values]
    area = weights.sum(("y", "x")).values
    n = len(names)
    both = [[bool((inside.isel(domain=a) & inside.isel(domain=b)).any()) if a != b else True
             for b in range(n)] for a in range(n)]
    out: dict[str, list[str]] = {}
    for d in range(n):
        within = [o for o in range(n) if o != d and area[o] > 0
                  and not bool((inside.isel(domain=o) & ~inside.isel(domain=d)).any())]
        for k in range(2, len(within) + 1):
            found = next((c for c in combinations(within, k)
                          if not any(both[a][b] for a, b in combinations(c, 2))
                          and np.isclose(sum(area[o] for o in c), area[d], rtol=1e-9)), None)
            if found is not None:
                out[names[d]] = [names[o] for o in found]
                break
    return out


def _site_month_residuals(held: pd.DataFrame) -> pd.DataFrame:
    """Mean held-out residual (prediction − observation) per site × calendar month, with the
    site's grid cell."""
    need = {"site_id", "month", "obs", "pred", "cell_row", "cell_col"}
    missing = sorted(need - set(held.columns))
    if missing:
        raise ValueError(f"blocked CV predictions lack column(s) {missing}")
    h = held.dropna(subset=["obs", "pred"]).assign(res=lambda t: t["pred"] - t["obs"])
    return h.groupby(["site_id", "month"], as_index=False).agg(
        res=("res", "mean"), cell_row=("cell_row", "first"), cell_col=("cell_col", "first"))


def blocked_cv_error(held: Mapping[str, pd.DataFrame], zones: xr.Dataset, cell_area: float,
                     domains: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The CV error of every domain and flux (see the module docstring).

    Parameters
    ----------
    held : mapping
        Flux → held-out predictions over spatial-cluster folds (``site_id, month, obs, pred,
        cell_row, cell_col``; a bundle's ``blocked_cv``).
    zones : Dataset
        The run's zone layers (the grid of ``cell_row`` / ``cell_col``).
    cell_area : float
        Area of one grid cell (m²).
    domains : mapping, optional
        Domain name → expression on ``zones`` (default: the Table-1 domains).

    Returns
    -------
    DataFrame
        ``domain, flux, cv_error_tg_c_yr, error_g_c_m2_yr, n_sites, strata``: the CV error
        (NaN, with ``n_sites`` 0, for a domain without sites), the annual residual per unit
        area and the domains it was stratified over (``""`` when direct).
    """
    w = domain_weights(zones, cell_area, dict(domains or DOMAINS))
    names = [str(d) for d in w["domain"].values]
    area = w.sum(("y", "x")).values
    strata = partitions(w)
    rows = []
    for flux, frame in held.items():
        sm = _site_month_residuals(frame)
        cells = w.isel(y=xr.DataArray(sm["cell_row"].to_numpy(), dims="r"),
                       x=xr.DataArray(sm["cell_col"].to_numpy(), dims="r")).values > 0
        direct = {}
        for i, d in enumerate(names):
            inside = sm[cells[i]]
            per_month = inside.groupby("month")["res"].mean()
            direct[d] = (float(per_month.sum()) if len(inside) else np.nan,
                         int(inside["site_id"].nunique()))
        for i, d in enumerate(names):
            parts = strata.get(d, [])
            if parts and all(direct[p][1] > 0 for p in parts):
                tg = sum(direct[p][0] * area[names.index(p)] for p in parts) * TG_PER_G
                n = sum(direct[p][1] for p in parts)
            else:
                parts = []
                tg = direct[d][0] * area[i] * TG_PER_G
                n = direct[d][1]
            rows.append({"domain": d, "flux": flux, "cv_error_tg_c_yr": tg,
                         "error_g_c_m2_yr": tg / (area[i] * TG_PER_G) if area[i] else np.nan,
                         "n_sites": n, "strata": "+".join(parts)})
    return pd.DataFrame(rows)


def with_interval(budgets: pd.DataFrame, cv_error: pd.DataFrame) -> pd.DataFrame:
    """A budget table with the blocked-CV interval's columns (:data:`INTERVAL_COLUMNS`).

    Parameters
    ----------
    budgets : DataFrame
        ``domain, flux, boot_sd_tg_c_yr, ...`` (:func:`~abz_dask.upscale.budget_table`).
    cv_error : DataFrame
        :func:`blocked_cv_error`'s table; ``NEE+fire`` rows take NEE's CV error (fire is an
        input, not an estimate).

    Returns
    -------
    DataFrame
        ``budgets`` with ``cv_error_tg_c_yr``, ``interval_sd_tg_c_yr`` (the SD behind the 95 %
        interval, ± 1.96 ×; NaN for a domain without sites) and ``interval_method``.
    """
    out = budgets.copy()
    cv = cv_error.set_index(["domain", "flux"])["cv_error_tg_c_yr"]
    key = out["flux"].where(out["flux"] != "NEE+fire", "NEE")
    out["cv_error_tg_c_yr"] = [cv.get((d, f), np.nan)
                               for d, f in zip(out["domain"], key, strict=True)]
    out["interval_sd_tg_c_yr"] = np.hypot(out["boot_sd_tg_c_yr"], out["cv_error_tg_c_yr"])
    out["interval_method"] = "bootstrap+blocked_cv"
    return out
