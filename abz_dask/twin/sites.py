"""A site network like ABCflux and its monthly observations, written as an ABCflux v1 CSV.

- ≈ 200 land sites placed like the real network: dense in Fennoscandia, Alaska and Canada, sparse
  in Siberia; the real FLUXNET2015 site coordinates (``shared/reference``) are among them.
- 1–213 months per site (mean ≈ 25), ≈ 4,800 site-months whose calendar-month counts follow the
  paper's (seed-spec §6.2); eddy-covariance (EC) sites hold ≈ 88 % of the months; chamber sites
  measure mostly in the growing season and some have several plots per site-month.
- Observations = planted truth of the site's cell × a site-level factor (local heterogeneity:
  lognormal with mean one, since the cell's truth is the mean over the footprints a site could
  have) + zero-mean measurement noise; GPP/Reco are partitioned so that NEE = Reco − GPP per
  row; GPP is stored negative as in the authors' table; −9999 marks missing values.
- ≈ 14 % of sites are disturbed: fire sites sit in cells that burned in the twin's fire map and
  are measured from the fire year on; some thermokarst and harvest sites.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from abz_dask.geo.grid import Grid, _lonlat_block
from abz_dask.io.predictors import VEG_CLASSES
from abz_dask.twin.fields import rng_for

__all__ = ["ABCFLUX_COLUMNS", "MONTHLY_COUNTS", "SITE_LOG_SD", "burn_history", "make_sites",
           "site_domain", "site_factors", "site_observations"]

#: Monthly sample sizes of the paper's 1-km NEE model (seed-spec §6.2, Jan..Dec).
MONTHLY_COUNTS = np.array([288, 289, 329, 377, 449, 497, 527, 522, 475, 386, 320, 306])

ABCFLUX_COLUMNS = [
    "study_id", "site_name", "site_reference", "latitude", "longitude", "country", "biome",
    "veg_type", "meas_year", "interval_month", "nee", "gpp", "reco", "flux_method",
    "flux_method_detail", "partition_method", "gap_fill_perc", "tair_int", "precip_int",
    "disturbance", "disturb_year", "disturb_severity", "extraction_source",
    "data_contributor_or_author", "citation",
]
#: SD of the log site factor of GPP, and of Reco's factor relative to GPP's.
SITE_LOG_SD = (0.12, 0.08)
_REGION_SHARE = {1: 0.22, 2: 0.28, 3: 0.37, 4: 0.13}  # Alaska, Canada, Europe, Siberia
_REGION_CC = {1: "US", 2: "CA", 3: "FI", 4: "RU"}


def _reference_sites() -> pd.DataFrame:
    from importlib import resources

    p = resources.files("abz_dask") / "data" / "flux_sites_fluxnet2015_abz.csv"
    return pd.read_csv(str(p))


def make_sites(zones: xr.Dataset, grid: Grid, fire: xr.Dataset, seed: int, n_sites: int = 200,
               family: str = "a") -> pd.DataFrame:
    """Place the site network on domain cells; one row per site with its cell and design.

    ``family`` chooses the placement rule: ``"a"`` (this module's docstring) or ``"b"``
    (clustered around towns and research stations, :mod:`abz_dask.twin.sites_b`); the design
    (disturbances, coordinates, method, record length) follows the same rules in both.
    """
    dom = site_domain(zones)
    bf, burn_year, burned = burn_history(fire, dom)
    if family == "b":
        from abz_dask.twin.sites_b import place_sites_b

        rng = rng_for(seed, "sites_b")
        placed = place_sites_b(zones, grid, dom, burned, rng, n_sites)
        return _site_design(*placed, zones, grid, bf, burn_year, rng, n_sites)
    if family != "a":
        raise ValueError(f"unknown twin family {family!r}; choose 'a' or 'b'")
    rng = rng_for(seed, "sites")
    region = zones["key_region"].values
    ys, xs = grid.y, grid.x
    rows_all, cols_all = np.nonzero(dom)
    rows: list[int] = []
    cols: list[int] = []
    names: list[str] = []
    # real FLUXNET2015 coordinates, snapped to the nearest domain cell within 1.5 cells
    ref = _reference_sites()
    px, py = grid.project(ref["longitude"].to_numpy(), ref["latitude"].to_numpy())
    for name, x, y in zip(ref["site_id"], px, py, strict=True):
        d2 = (xs[cols_all] - x) ** 2 + (ys[rows_all] - y) ** 2
        k = int(np.argmin(d2))
        if d2[k] <= (1.5 * grid.resolution) ** 2 and len(names) < n_sites // 4:
            rows.append(int(rows_all[k]))
            cols.append(int(cols_all[k]))
            names.append(str(name))
    # the rest by region share, denser towards the south (accessibility)
    lat_cells = _lonlat_block(ys[rows_all][None, :], xs[cols_all][None, :])[1][0]
    # burned cells first for the fire sites
    n_fire = round(0.105 * n_sites)
    brows, bcols = np.nonzero(burned)
    pick = rng.choice(len(brows), size=min(n_fire, len(brows)), replace=False)
    fire_cells = {(int(brows[i]), int(bcols[i])) for i in pick}
    n_rest = max(0, n_sites - len(names) - len(fire_cells))
    counts = rng.multinomial(n_rest, list(_REGION_SHARE.values()))
    taken = set(zip(rows, cols, strict=True)) | fire_cells
    for reg, cnt in zip(_REGION_SHARE, counts, strict=True):
        sel = np.flatnonzero(region[rows_all, cols_all] == reg)
        if len(sel) == 0:
            continue
        w = np.exp(-(lat_cells[sel] - 55.0) / 7.0)
        for i in rng.choice(sel, size=min(len(sel), cnt * 2), replace=False, p=w / w.sum()):
            if cnt == 0:
                break
            rc = (int(rows_all[i]), int(cols_all[i]))
            if rc in taken:
                continue
            taken.add(rc)
            rows.append(rc[0])
            cols.append(rc[1])
            names.append("")
            cnt -= 1
    for r, c in sorted(fire_cells):
        rows.append(r)
        cols.append(c)
        names.append("")
    return _site_design(rows, cols, names, len(fire_cells), zones, grid, bf, burn_year, rng,
                        n_sites)


def site_domain(zones: xr.Dataset) -> np.ndarray:
    """Cells a site may sit in: ABZ cells with more than 20 % land."""
    return zones["abz"].values.astype(bool) & (zones["land_fraction"].values > 0.2)


def burn_history(fire: xr.Dataset, dom: np.ndarray) -> tuple[xr.DataArray, np.ndarray, np.ndarray]:
    """Burned fractions up to 2017, the index of each cell's first fire year, and the burned
    site cells (fire sites need a few years of record after the fire)."""
    bf = fire["burned_fraction"].sel(year=slice(None, 2017))
    burn_year = (bf > 0).argmax("year").values
    burned = (bf > 0).any("year").values & dom
    return bf, burn_year, burned


def _site_design(rows: list[int], cols: list[int], names: list[str], nf: int,
                 zones: xr.Dataset, grid: Grid, bf: xr.DataArray, burn_year: np.ndarray,
                 rng: np.random.Generator, n_sites: int) -> pd.DataFrame:
    """The site table of placed cells (the last ``nf`` are fire sites): disturbances,
    coordinates, names, measurement method and record length."""
    xs, ys, region = grid.x, grid.y, zones["key_region"].values
    ref = _reference_sites()
    site = pd.DataFrame({"row": rows, "col": cols, "name": names})
    site["disturbance"] = "No"
    site["disturb_year"] = -9999
    if nf:
        site.loc[site.index[-nf:], "disturbance"] = "Fire"
        fy = bf["year"].values[burn_year[site["row"].to_numpy()[-nf:],
                                         site["col"].to_numpy()[-nf:]]]
        site.loc[site.index[-nf:], "disturb_year"] = fy
    n_other = round(0.04 * n_sites)  # 3 thermokarst + 5 harvested of 200 in the paper
    others = rng.choice(np.flatnonzero(site["disturbance"] == "No"), size=n_other, replace=False)
    site.loc[others[: (3 * n_other) // 8], "disturbance"] = "Thermokarst"
    site.loc[others[(3 * n_other) // 8:], "disturbance"] = "Harvest"
    site.loc[others, "disturb_year"] = rng.integers(1985, 2010, size=n_other)
    # coordinates: jitter inside the cell (real sites keep their own coordinates)
    jx = (rng.uniform(-0.45, 0.45, len(site))) * grid.resolution
    jy = (rng.uniform(-0.45, 0.45, len(site))) * grid.resolution
    x = xs[site["col"].to_numpy()] + jx
    y = ys[site["row"].to_numpy()] + jy
    lon, lat = _lonlat_block(y[None, :], x[None, :])
    site["longitude"], site["latitude"] = lon[0], lat[0]
    real = site["name"] != ""
    refi = ref.set_index("site_id").loc[site.loc[real, "name"]]
    site.loc[real, "longitude"] = refi["longitude"].values
    site.loc[real, "latitude"] = refi["latitude"].values
    site["region"] = region[site["row"], site["col"]]
    site["biome"] = np.where(zones["biome"].values[site["row"], site["col"]] == 1, "Tundra",
                             "Boreal")
    counter: dict[str, int] = {}
    for i in np.flatnonzero(~real):
        cc = _REGION_CC.get(int(site["region"].iloc[i]), "XX")
        counter[cc] = counter.get(cc, 0) + 1
        site.at[i, "name"] = f"{cc}-T{counter[cc]:02d}"
    # design: method and record length (lognormal, mean ≈ 25 months, 1–213)
    n = len(site)
    ec = rng.uniform(size=n) < 0.55
    ec[real.to_numpy()] = True
    length = np.where(ec, rng.lognormal(2.95, 1.0, n), rng.lognormal(1.4, 0.8, n))
    length = np.clip(np.round(length), 1, 213).astype(int)
    n_long = min(9, int(ec.sum()), max(1, round(0.045 * n)))  # 9 long-term sites of 200
    long_term = rng.choice(np.flatnonzero(ec), size=n_long, replace=False)
    length[long_term] = rng.integers(90, 214, size=n_long)
    length[long_term[0]] = 213
    site["method"] = np.where(ec, "EC", "Ch")
    site["n_months"] = length
    site["plots"] = np.where(ec, 1, rng.choice([1, 1, 2, 3], size=n))
    return site


def _site_months(site: pd.Series, time: pd.DatetimeIndex, rng: np.random.Generator
                 ) -> list[int]:
    """Time indices measured at a site (EC: year-round with fewer winter months;
    chambers: mostly May–September)."""
    p_ec = (MONTHLY_COUNTS / MONTHLY_COUNTS.max()) ** 0.85
    p_ch = np.array([0.03, 0.03, 0.05, 0.15, 0.6, 1.0, 1.0, 1.0, 0.8, 0.25, 0.05, 0.03])
    p = p_ec if site["method"] == "EC" else p_ch
    start_min = 0
    if site["disturbance"] == "Fire":
        start_min = int(np.searchsorted(time.year.values, site["disturb_year"]))
    n_need = int(site["n_months"])
    expected_span = int(n_need / p.mean()) + 12
    latest = max(start_min, len(time) - expected_span)
    # recent years are better covered (805 obs in 2015–2020 in the paper)
    start = int(start_min + (latest - start_min) * rng.beta(2.2, 1.0)) if latest > start_min \
        else start_min
    start -= start % 12 if site["method"] == "Ch" else 0
    out: list[int] = []
    t = max(start, start_min)
    while len(out) < n_need and t < len(time):
        if rng.uniform() < p[time[t].month - 1]:
            out.append(t)
        t += 1
    return out


def site_factors(rng: np.random.Generator, size: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Site-level multipliers of the cell's truth GPP and Reco (local heterogeneity).

    ``f_gpp = exp(N(−σ²/2, σ))`` and ``f_reco = f_gpp · exp(N(−τ²/2, τ))`` with
    ``(σ, τ) = SITE_LOG_SD``: both have mean one, so the site network is unbiased for the cell's
    truth (a median of one, ``exp(N(0, σ))``, would plant a bias of +0.7 % GPP and +1.0 % Reco).

    Parameters
    ----------
    rng : numpy.random.Generator
        Random stream; two normal draws per factor pair.
    size : int, optional
        Number of pairs (default: one pair of scalars).

    Returns
    -------
    f_gpp, f_reco : ndarray or float
        The multipliers.
    """
    s_g, s_r = SITE_LOG_SD
    f_gpp = np.exp(rng.normal(-s_g ** 2 / 2, s_g, size))
    f_reco = f_gpp * np.exp(rng.normal(-s_r ** 2 / 2, s_r, size))
    return f_gpp, f_reco


def site_observations(site: pd.DataFrame, truth: xr.Dataset, cube: xr.Dataset, seed: int,
                      grid: Grid) -> pd.DataFrame:
    """Monthly observations of every site in the ABCflux v1 column format."""
    rng = rng_for(seed, "observations")
    time = pd.DatetimeIndex(truth["time"].values)
    yi = xr.DataArray(site["row"].to_numpy(), dims="site")
    xi = xr.DataArray(site["col"].to_numpy(), dims="site")
    tr = truth[["NEE", "GPP", "Reco"]].isel(y=yi, x=xi).load()
    tair = cube["tair"].isel(y=yi, x=xi).values
    veg = cube["vegtype"].isel(y=yi, x=xi).values
    recs = []
    for s, (_, row) in enumerate(site.iterrows()):
        months = _site_months(row, time, rng)
        f_gpp, f_reco = (float(f) for f in site_factors(rng))
        sd_scale = 1.0 if row["method"] == "EC" else 1.8
        for t in months:
            gpp = float(tr["GPP"].values[t, s]) * f_gpp
            reco = float(tr["Reco"].values[t, s]) * f_reco
            for plot in range(int(row["plots"])):
                e_r = rng.normal(0, sd_scale * (2.0 + 0.08 * reco))
                e_n = rng.normal(0, sd_scale * (3.0 + 0.08 * (gpp + reco) / 2))
                reco_o = reco + e_r
                nee_o = (reco - gpp) + e_n
                gpp_o = reco_o - nee_o
                miss_gpp = row["method"] == "Ch" and rng.uniform() < 0.35
                miss_reco = row["method"] == "Ch" and rng.uniform() < 0.15
                recs.append({
                    "study_id": f"Twin_{row['name']}_{row['method']}",
                    "site_name": row["name"],
                    "site_reference": f"plot{plot + 1}" if row["plots"] > 1 else "tower1",
                    "latitude": round(float(row["latitude"]), 5),
                    "longitude": round(float(row["longitude"]), 5),
                    "country": row["name"][:2], "biome": row["biome"],
                    "veg_type": VEG_CLASSES.get(int(np.nan_to_num(veg[s], nan=30)), "unknown"),
                    "meas_year": int(time[t].year), "interval_month": int(time[t].month),
                    "nee": round(nee_o, 3),
                    "gpp": -9999.0 if miss_gpp else round(-gpp_o, 3),
                    "reco": -9999.0 if miss_reco else round(reco_o, 3),
                    "flux_method": row["method"],
                    "flux_method_detail": "EC closed path" if row["method"] == "EC"
                    else "Chamber manual",
                    "partition_method": "Reichstein" if row["method"] == "EC" else -9999,
                    "gap_fill_perc": round(float(rng.uniform(2, 60)), 1)
                    if row["method"] == "EC" else -9999,
                    "tair_int": round(float(tair[t, s]) + rng.normal(0, 0.8), 2),
                    "precip_int": -9999,
                    "disturbance": row["disturbance"],
                    "disturb_year": int(row["disturb_year"]),
                    "disturb_severity": "High" if row["disturbance"] == "Fire" else -9999,
                    "extraction_source": "twin",
                    "data_contributor_or_author": "abz_dask digital twin",
                    "citation": f"abz_dask twin seed {seed}",
                })
    df = pd.DataFrame.from_records(recs, columns=ABCFLUX_COLUMNS)
    return df
