"""The attenuation estimate from held-out predictions (abz_dask.analyses.attenuation).

References: hand-built tables whose predictions damp the interannual anomalies by a known factor
(the estimate must return it exactly), literal leave-one-site-out refits with numpy.polyfit for
the jackknife, and a hand-computed anomaly table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from abz_dask.analyses.attenuation import (
    ATTENUATION_COLUMNS,
    anomalies,
    attenuation_table,
    cv_columns,
    held_out_attenuation,
    jackknife_iv,
    jackknife_slope,
    jackknife_time_ratio,
    time_varying,
)


def damped_table(lam: float, n_sites: int = 12, seed: int = 0, trend: float = 0.0
                 ) -> pd.DataFrame:
    """Site-months whose predictions follow every interannual anomaly by the factor ``lam``.

    obs = site level + seasonal cycle + a(site, year) + trend · t; pred = another site level and
    another cycle (the forest gets those wrong) + lam · (a + trend · t). Each site has its own
    span of 3-6 years and misses some months at random. ``driver`` is a predictor that carries
    the change (its cycle and level differ), ``static`` one that does not change.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_sites):
        first = 2001 + int(rng.integers(0, 10))
        years = range(first, first + int(rng.integers(3, 7)))
        lvl_o, lvl_p = rng.normal(0, 5, 2)
        amp_o, amp_p = rng.uniform(10, 40, 2)
        anom = {y: rng.normal(0, 3) for y in years}
        static = rng.normal()
        for y in years:
            for m in range(1, 13):
                if rng.uniform() < 0.2:
                    continue
                cyc = np.sin(2 * np.pi * (m - 4) / 12)
                t = y + (m - 0.5) / 12 - 2001
                change = anom[y] + trend * t
                rows.append({"site_id": f"S{s:02d}", "year": y, "month": m,
                             "obs": lvl_o + amp_o * cyc + change,
                             "pred": lvl_p + amp_p * cyc + lam * change,
                             "driver": 0.5 * change + 3 * cyc + lvl_o, "static": static})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("level", ["year", "month"])
@pytest.mark.parametrize("method", ["slope", "time", "iv"])
def test_known_damping_is_recovered_exactly(level: str, method: str) -> None:
    # pred anomalies are exactly lam x obs anomalies, whatever the site levels and cycles
    cv = damped_table(0.6, trend=0.8)
    got = attenuation_table(cv.assign(flux="NEE"), level=level, method=method,  # type: ignore
                            instruments=["driver"])
    assert list(got.columns) == list(ATTENUATION_COLUMNS)
    assert got.loc[0, "attenuation"] == pytest.approx(0.6, rel=1e-10)
    assert got.loc[0, "attenuation_se"] == pytest.approx(0.0, abs=1e-9)
    assert got.loc[0, "n_sites"] == 12
    assert got.loc[0, "corr"] == pytest.approx(1.0, rel=1e-10)


def test_noise_in_observations_attenuates_the_slope_but_not_time_or_iv() -> None:
    # obs = truth + independent noise: the slope tends to lam var(a) / (var(a) + var(e)/n),
    # the time ratio and the instrumented slope to lam (noise independent of the instrument)
    cv = damped_table(0.7, n_sites=400, seed=3, trend=0.5)
    rng = np.random.default_rng(1)
    noisy = cv.assign(obs=cv["obs"] + rng.normal(0, 3.0, len(cv)), flux="GPP")
    slope = attenuation_table(noisy, method="slope").iloc[0]
    assert slope["attenuation"] < 0.7 - 3 * slope["attenuation_se"]
    for method in ("time", "iv"):
        got = attenuation_table(noisy, method=method, level="month",  # type: ignore[arg-type]
                                instruments=["driver"]).iloc[0]
        assert abs(got["attenuation"] - 0.7) < 3 * got["attenuation_se"], method
        assert got["attenuation_se"] < 0.1


def test_anomalies_by_hand() -> None:
    cv = pd.DataFrame({"site_id": ["A"] * 5 + ["B"],
                       "year": [2001, 2001, 2002, 2002, 2003, 2001],
                       "month": [6, 7, 6, 7, 6, 6],
                       "obs": [1.0, 10.0, 3.0, 14.0, 5.0, 99.0],
                       "pred": [2.0, 5.0, 2.0, 7.0, 5.0, 1.0]})
    m = anomalies(cv, "month")
    # A-June mean obs 3, pred 3; A-July 12 and 6; site B has one year: dropped
    assert m["obs"].tolist() == [-2.0, -2.0, 0.0, 2.0, 2.0]
    assert m["pred"].tolist() == [-1.0, -1.0, -1.0, 1.0, 2.0]
    assert m["time"].iloc[0] == pytest.approx(2001 + 5.5 / 12)
    y = anomalies(cv, "year")
    assert y["year"].tolist() == [2001, 2002, 2003]
    assert y["obs"].tolist() == [-2.0, 1.0, 2.0]
    assert y["pred"].tolist() == [-1.0, 0.0, 2.0]
    assert y["time"].tolist() == [2001.0, 2002.0, 2003.0]


def test_jackknife_slope_against_literal_refits() -> None:
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(7), rng.integers(3, 9, 7))
    x = rng.normal(size=len(g))
    y = 0.4 * x + rng.normal(0, 0.5, len(g)) + g * 0.1
    slope, se = jackknife_slope(x, y, g)
    assert slope == pytest.approx(np.polyfit(x, y, 1)[0], rel=1e-12)
    loo = np.array([np.polyfit(x[g != k], y[g != k], 1)[0] for k in range(7)])
    assert se == pytest.approx(np.sqrt(6 / 7 * np.sum((loo - loo.mean()) ** 2)), rel=1e-10)


def test_time_ratio_against_literal_sums() -> None:
    rng = np.random.default_rng(8)
    g = np.repeat(np.arange(5), 6)
    t = np.tile(np.arange(6.0), 5) + g
    obs, pred = rng.normal(size=30) + 0.3 * t, rng.normal(size=30) + 0.2 * t

    def ratio(keep: np.ndarray) -> float:
        num = den = 0.0
        for k in np.unique(g[keep]):
            sel = keep & (g == k)
            tc = t[sel] - t[sel].mean()
            num += float(tc @ pred[sel])
            den += float(tc @ obs[sel])
        return num / den

    r, se = jackknife_time_ratio(t, obs, pred, g)
    assert r == pytest.approx(ratio(np.ones(30, bool)), rel=1e-12)
    loo = np.array([ratio(g != k) for k in range(5)])
    assert se == pytest.approx(np.sqrt(4 / 5 * np.sum((loo - loo.mean()) ** 2)), rel=1e-10)


def test_jackknife_iv_against_literal_two_stage_least_squares() -> None:
    rng = np.random.default_rng(11)
    g = np.repeat(np.arange(6), 15)
    z = rng.normal(size=(90, 2))
    truth = z @ [1.0, -0.5] + rng.normal(0, 0.3, 90)
    obs = truth + rng.normal(0, 1.0, 90)
    pred = 0.6 * truth + rng.normal(0, 0.2, 90)

    def tsls(keep: np.ndarray) -> float:
        x = np.column_stack([np.ones(keep.sum()), z[keep]])
        fit = x @ np.linalg.lstsq(x, obs[keep], rcond=None)[0]
        fit = fit - fit.mean()
        return float(fit @ pred[keep] / (fit @ obs[keep]))

    got, se = jackknife_iv(obs, pred, np.column_stack([z, np.zeros(90)]), g)  # constant dropped
    assert got == pytest.approx(tsls(np.ones(90, bool)), rel=1e-10)
    loo = np.array([tsls(g != k) for k in range(6)])
    assert se == pytest.approx(np.sqrt(5 / 6 * np.sum((loo - loo.mean()) ** 2)), rel=1e-8)


def test_held_out_attenuation_joins_the_training_rows() -> None:
    cv = damped_table(0.6, trend=0.8)
    table = cv[["site_id", "driver", "static"]].assign(month=cv["month"])
    assert time_varying(table, ["month", "driver", "static", "missing"]) == ["month", "driver"]
    shuffled = np.random.default_rng(0).permutation(len(cv))  # cv rows point into the table
    held = cv.drop(columns=["driver", "static"]).iloc[np.argsort(shuffled)].assign(
        row=np.arange(len(cv))[np.argsort(shuffled)], flux="NEE")
    got = held_out_attenuation(held, table, ["month", "driver", "static"]).iloc[0]
    assert (got["method"], got["level"]) == ("iv", "month")
    assert got["attenuation"] == pytest.approx(0.6, rel=1e-10)
    alone = held_out_attenuation(held).iloc[0]
    assert (alone["method"], alone["level"]) == ("time", "year")
    with pytest.raises(ValueError, match="training rows up to"):
        held_out_attenuation(held, table.iloc[:10], ["driver"])


def test_several_fluxes_and_diagnostics_column_names() -> None:
    a = damped_table(0.5, seed=1).assign(flux="NEE")
    b = damped_table(0.9, seed=2).assign(flux="Reco")
    cv = pd.concat([a, b]).rename(columns={"obs": "obs [g C m-2 month-1]",
                                           "pred": "pred [g C m-2 month-1]"})
    got = attenuation_table(cv).set_index("flux")
    assert got.loc["NEE", "attenuation"] == pytest.approx(0.5, rel=1e-10)
    assert got.loc["Reco", "attenuation"] == pytest.approx(0.9, rel=1e-10)
    one = attenuation_table(damped_table(0.3), fluxes=["GPP"])
    assert one.loc[0, "flux"] == "GPP"
    assert one.loc[0, "attenuation"] == pytest.approx(0.3, rel=1e-10)


def test_bad_input_is_named() -> None:
    with pytest.raises(KeyError, match=r"lack column\(s\) \['pred'\]"):
        cv_columns(pd.DataFrame(columns=["site_id", "year", "month", "obs"]))
    with pytest.raises(ValueError, match="level must be"):
        anomalies(damped_table(0.5), "season")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="method must be"):
        attenuation_table(damped_table(0.5), fluxes=["NEE"], method="ols")  # type: ignore
    with pytest.raises(KeyError, match="no rows of flux 'GPP'"):
        attenuation_table(damped_table(0.5).assign(flux="NEE"), fluxes=["GPP"])
    with pytest.raises(KeyError, match="name one flux"):
        attenuation_table(damped_table(0.5))


def _budget_trend_table() -> pd.DataFrame:
    """A budget_trends table of estimate and truth rows (the package's own code on a series
    with a known slope)."""
    import xarray as xr

    from abz_dask.analyses.budget_trends import budget_trend_table

    years = np.arange(2001, 2021)
    rng = np.random.default_rng(2)
    data = np.stack([np.stack([s * years + rng.normal(0, 3, 20) for s in (-1.5, 2.0)], -1)
                     for _ in ("NEE", "GPP", "NEE_fire")])
    b = xr.DataArray(data, dims=("flux", "year", "domain"),
                     coords={"flux": ["NEE", "GPP", "NEE_fire"], "year": years,
                             "domain": ["abz", "tundra"]})
    t = budget_trend_table(b)
    return pd.concat([t.assign(source="estimate"), t.assign(source="truth")], ignore_index=True)


def test_with_attenuation_keeps_the_table_and_adds_the_estimate() -> None:
    from abz_dask.analyses.budget_trends import ATTENUATION_TREND_COLUMNS, with_attenuation

    table = _budget_trend_table()
    att = attenuation_table(pd.concat([damped_table(0.5).assign(flux="NEE"),
                                       damped_table(0.8, seed=4).assign(flux="GPP")]),
                            method="time")
    got = with_attenuation(table, att)
    assert list(got.columns) == [*table.columns, *ATTENUATION_TREND_COLUMNS]
    pd.testing.assert_frame_equal(got[table.columns], table)
    est = got[got["source"] == "estimate"].set_index(["flux", "domain"])
    assert est.loc[("NEE", "abz"), "attenuation"] == pytest.approx(0.5, rel=1e-10)
    assert est.loc[("GPP", "tundra"), "attenuation"] == pytest.approx(0.8, rel=1e-10)
    assert est.loc[("NEE_fire", "abz"), "attenuation"] == pytest.approx(0.5, rel=1e-10)
    assert (est["attenuation_method"] == "time/year").all()
    assert got.loc[got["source"] == "truth", "attenuation"].isna().all()
    # idempotent: a second pass replaces, never duplicates, the columns
    again = with_attenuation(got, att)
    pd.testing.assert_frame_equal(again, got)


def test_trend_stage_appends_the_estimate_bit_identically(tmp_path) -> None:  # type: ignore
    from types import SimpleNamespace

    from abz_dask.pipeline.layout import RunLayout
    from abz_dask.pipeline.runner import _trend_attenuation

    lay = RunLayout.for_twin(tmp_path)
    lay.trends.mkdir(parents=True)
    lay.training.mkdir(parents=True)
    table = _budget_trend_table()
    table.to_csv(lay.budget_trends, index=False)
    before = lay.budget_trends.read_text().splitlines()
    pd.concat([damped_table(0.5).assign(flux="NEE"),
               damped_table(0.8, seed=4).assign(flux="GPP")]).to_csv(lay.cv_predictions,
                                                                     index=False)
    said: list[str] = []
    _trend_attenuation(SimpleNamespace(layout=lay, echo=said.append))  # type: ignore[arg-type]
    after = lay.budget_trends.read_text().splitlines()
    n = len(table.columns)
    # every existing column keeps its text, character for character
    assert [",".join(line.split(",")[:n]) for line in after] == before
    got = pd.read_csv(lay.budget_trends)
    assert got.loc[(got["source"] == "estimate") & (got["flux"] == "GPP"),
                   "attenuation"].to_numpy() == pytest.approx(0.8, rel=1e-10)
    assert any("ABZ GPP budget trend" in s and "attenuation estimate 0.80" in s for s in said)


def test_report_budget_trends_carry_the_stage_attenuation(tmp_path: Path) -> None:
    """The report's own budget-trend table gains the trends stage's attenuation columns, by
    season × flux × domain × source; without a stage table it is unchanged."""
    from types import SimpleNamespace

    from abz_dask.report.build import _with_stage_attenuation

    keys = {"season": ["annual", "annual"], "flux": ["GPP", "GPP"], "domain": ["abz", "abz"],
            "source": ["estimate", "truth"]}
    report = pd.DataFrame({**keys, "trend_tg_c_per_yr": [1.0, 2.0]})
    stage = pd.DataFrame({**keys, "trend_tg_c_per_yr": [1.0, 2.0], "attenuation": [0.8, None],
                          "attenuation_se": [0.05, None],
                          "attenuation_method": ["iv/site_month", None]})
    path = tmp_path / "budget_trends.csv"
    paths = SimpleNamespace(budget_trends=path,
                            existing=lambda p: p if p.exists() else None)
    assert _with_stage_attenuation(report, paths).equals(report)  # no stage table yet
    stage.to_csv(path, index=False)
    got = _with_stage_attenuation(report, paths)
    assert got["attenuation"].iloc[0] == 0.8 and np.isnan(got["attenuation"].iloc[1])
    assert got["trend_tg_c_per_yr"].tolist() == [1.0, 2.0]
