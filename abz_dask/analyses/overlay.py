"""GPP / Reco trend overlay categories behind the NEE trend (DECISIONS 12, paper Fig. 2c).

Each pixel gets an integer code from its NEE, GPP and Reco Theil–Sen slopes ``e``, ``g``, ``r``
(GPP positive, NEE = Reco − GPP, so rising uptake needs ``g − r > 0``) and the NEE p-value:

====  =====================================================================================
code  rule
====  =====================================================================================
-1    no data: ``e``, ``g`` or ``r`` (or the NEE p-value) is missing
0     no significant NEE trend: ``p ≥ alpha`` or ``e == 0``
1     uptake rising (``e < 0``), GPP rises more than Reco: ``g > 0``, ``r > 0``, ``g > r``
2     uptake rising, GPP rises and Reco falls (or is flat): ``g > 0``, ``r ≤ 0``
3     uptake rising, Reco falls more than GPP: ``g ≤ 0``, ``r < g``
4     emissions rising (``e > 0``), Reco rises more than GPP: ``r > 0``, ``g > 0``, ``r > g``
5     emissions rising, Reco rises and GPP falls (or is flat): ``r > 0``, ``g ≤ 0``
6     emissions rising, GPP falls more than Reco: ``r ≤ 0``, ``g < r``
7     the GPP and Reco slopes do not explain the NEE slope's sign (``g − r`` has the sign of
      ``−e`` or is 0; Theil–Sen slopes are not additive, so this occurs)
====  =====================================================================================

Given ``e < 0`` the codes 1, 2, 3 and 7 partition all ``(g, r)`` (1–3 exactly when ``g > r``);
given ``e > 0`` so do 4, 5, 6 and 7 (4–6 exactly when ``r > g``).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import xarray as xr

__all__ = ["OVERLAY_LEGEND", "overlay_categories", "overlay_shares"]

#: Code -> meaning of :func:`overlay_categories`.
OVERLAY_LEGEND: dict[int, str] = {
    -1: "no data",
    0: "no significant NEE trend",
    1: "uptake rising: GPP rises more than Reco",
    2: "uptake rising: GPP rises, Reco falls or is flat",
    3: "uptake rising: Reco falls more than GPP",
    4: "emissions rising: Reco rises more than GPP",
    5: "emissions rising: Reco rises, GPP falls or is flat",
    6: "emissions rising: GPP falls more than Reco",
    7: "GPP and Reco trends do not explain the sign of the NEE trend",
}


def overlay_categories(nee_trend: xr.DataArray, nee_sig: xr.DataArray, gpp_trend: xr.DataArray,
                       reco_trend: xr.DataArray, alpha: float = 0.05) -> xr.DataArray:
    """Overlay category code (int8, see the module table) of every pixel (lazy, elementwise).

    Parameters
    ----------
    nee_trend, nee_sig : xarray.DataArray
        NEE Theil–Sen slope and Mann–Kendall p-value.
    gpp_trend, reco_trend : xarray.DataArray
        GPP (positive = uptake) and Reco slopes, same grid.
    alpha : float
        Significance level of the NEE trend.

    Returns
    -------
    xarray.DataArray
        ``overlay`` codes with ``flag_values``, ``flag_meanings`` (CF) and a JSON ``legend``.
    """
    e, p, g, r = xr.align(nee_trend, nee_sig, gpp_trend, reco_trend, join="exact")
    nodata = e.isnull() | p.isnull() | g.isnull() | r.isnull()
    up = e < 0
    em = e > 0
    code = xr.full_like(e, 7, dtype=np.int8)
    code = xr.where(up & (g > 0) & (r > 0) & (g > r), 1, code)
    code = xr.where(up & (g > 0) & (r <= 0), 2, code)
    code = xr.where(up & (g <= 0) & (r < g), 3, code)
    code = xr.where(em & (r > 0) & (g > 0) & (r > g), 4, code)
    code = xr.where(em & (r > 0) & (g <= 0), 5, code)
    code = xr.where(em & (r <= 0) & (g < r), 6, code)
    code = xr.where((p >= alpha) | (e == 0), 0, code)
    code = xr.where(nodata, -1, code).astype(np.int8)
    code = code.drop_vars([c for c in code.coords if c not in code.dims])
    return code.rename("overlay").assign_attrs(
        long_name="GPP/Reco trend overlay behind the NEE trend (DECISIONS 12)",
        flag_values=list(OVERLAY_LEGEND),
        flag_meanings=" ".join(_slug(v) for v in OVERLAY_LEGEND.values()),
        legend=json.dumps({str(k): v for k, v in OVERLAY_LEGEND.items()}), alpha=alpha,
        rules="see abz_dask.analyses.overlay: e, g, r = NEE, GPP, Reco slopes; "
              "1: e<0,g>0,r>0,g>r; 2: e<0,g>0,r<=0; 3: e<0,g<=0,r<g; 4: e>0,r>0,g>0,r>g; "
              "5: e>0,r>0,g<=0; 6: e>0,r<=0,g<r; 7: otherwise; 0: p>=alpha or e==0; -1: missing")


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() else "_" for c in text.lower())
    return "_".join(p for p in keep.split("_") if p)


def overlay_shares(codes: xr.DataArray, weights: xr.DataArray) -> pd.DataFrame:
    """Area (km²) and share of each domain's area in each overlay category.

    Shares are of the domain area with data (codes ≥ 0). Columns: ``domain, code, meaning,
    area_km2, share``.
    """
    codes, w = xr.align(codes, weights.astype(np.float64), join="exact")
    w = w.drop_vars([c for c in w.coords if c not in w.dims])
    areas = {k: xr.dot((codes == k).astype(np.float64), w, dim=("y", "x")) * 1e-6
             for k in OVERLAY_LEGEND}
    got = xr.Dataset({str(k): v for k, v in areas.items()}).compute()
    rows = []
    for dom in got["domain"].values:
        with_data = sum(float(got[str(k)].sel(domain=dom)) for k in OVERLAY_LEGEND if k >= 0)
        for k, meaning in OVERLAY_LEGEND.items():
            a = float(got[str(k)].sel(domain=dom))
            rows.append({"domain": str(dom), "code": k, "meaning": meaning, "area_km2": a,
                         "share": a / with_data if k >= 0 and with_data > 0 else np.nan})
    return pd.DataFrame(rows)
