"""Paper 2 checks: Table 3 medians, mean range and ANOVA; regional table, agreement, CH4."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import stats

from abz_dask.compare.agreement import agreement_maps
from abz_dask.compare.ch4 import ch4_summary, read_ch4_synthesis
from abz_dask.compare.regional import (
    read_table3,
    region_anova,
    regional_summary,
    regional_table,
    table_wide,
    tukey_letters,
)

MEDIANS = {"alaska": -6, "canada_tundra": -9, "west_canada": -52, "east_canada": -40,
           "western_eurasia": -33, "siberia_tundra": -5, "east_siberia": -33,
           "west_siberia": -40.5}


def test_table3_reproduces_medians_range_and_anova() -> None:
    t = read_table3()
    assert t["mean"].notna().sum() == 39
    s = regional_summary(t)
    for region, med in MEDIANS.items():
        assert s.loc[region, "median"] == pytest.approx(med)
    assert s["range"].mean() == pytest.approx(40.875)
    assert round(s["range"].mean()) == 41
    a = region_anova(t)
    assert (a["df_between"], a["df_within"]) == (7, 31)
    assert a["F"] == pytest.approx(4.13, abs=0.005)
    assert a["p"] == pytest.approx(0.0026, abs=0.0001)
    # independent check of the F statistic
    groups = [g["mean"].dropna().to_numpy() for _, g in t.groupby("region")]
    ref = stats.f_oneway(*groups)
    assert a["F"] == pytest.approx(ref.statistic, rel=1e-10)
    assert a["p"] == pytest.approx(ref.pvalue, rel=1e-8)


def test_tukey_letters_consistent_with_pairwise_tests() -> None:
    from statsmodels.stats.multicomp import pairwise_tukeyhsd

    t = read_table3().dropna(subset=["mean"])
    let = tukey_letters(t)
    res = pairwise_tukeyhsd(t["mean"].to_numpy(), t["region"].to_numpy())
    groups = list(res.groupsunique)
    k = 0
    for i in range(len(groups)):
        for j in range(i + 1, len(groups)):
            share = bool(set(let.loc[groups[i], "letters"]) & set(let.loc[groups[j], "letters"]))
            assert share == (not res.reject[k]), (groups[i], groups[j])
            k += 1
    # the strongest sink (W Canada) and the weakest (Siberian tundra) differ
    assert not set(let.loc["west_canada", "letters"]) & set(let.loc["siberia_tundra", "letters"])


def test_table_wide_layout() -> None:
    w = table_wide(read_table3())
    assert w.loc["upscaling", "alaska"] == "-6 (±27)"
    assert w.loc["in_situ", "canada_tundra"] == "-22"
    assert w.loc["in_situ", "west_siberia"] == "NA"


def _zones() -> xr.Dataset:
    rec = np.zeros((4, 4), np.int8)
    rec[:2, :2] = 1  # alaska
    rec[2:, 2:] = 3  # west_canada
    lf = np.ones((4, 4), np.float32)
    lf[0, 0] = 0.5
    return xr.Dataset({"reccap2": (("y", "x"), rec), "land_fraction": (("y", "x"), lf)},
                      coords={"y": np.arange(4.0), "x": np.arange(4.0)})


def test_regional_table_weighted_mean_and_spatial_sd() -> None:
    z = _zones()
    v = np.full((4, 4), np.nan)
    v[:2, :2] = [[10.0, 20.0], [20.0, 20.0]]
    v[2:, 2:] = -5.0
    m2 = np.where(np.isfinite(v), v + 10.0, np.nan)
    maps = {"a": xr.DataArray(np.stack([v, m2]), dims=("model", "y", "x"))}
    t = regional_table(maps, z, cell_area=4.0).set_index("region")
    w = np.array([0.5, 1, 1, 1])
    x = np.array([10.0, 20, 20, 20])
    mu = np.average(x, weights=w)
    sd = np.sqrt(np.average((x - mu) ** 2, weights=w))
    assert t.loc["alaska", "mean"] == pytest.approx(mu + 5.0)  # mean of the two models
    assert t.loc["alaska", "sd"] == pytest.approx(sd)  # same SD for both models
    assert t.loc["west_canada", "mean"] == pytest.approx(0.0)
    assert t.loc["west_canada", "sd"] == pytest.approx(0.0)
    assert np.isnan(t.loc["east_canada", "mean"])


def test_agreement_maps_shares() -> None:
    y = {"y": np.arange(1.0), "x": np.arange(3.0)}
    inv = xr.DataArray([[[-20.0, 0.0, 20.0]], [[-20.0, -20.0, 5.0]]], dims=("model", "y", "x"),
                       coords=y)
    ups = xr.DataArray([[-15.0, 15.0, np.nan]], dims=("y", "x"), coords=y)
    a = agreement_maps({"inversion": inv, "upscaling": ups})
    s = a["share"]
    assert s.sel(approach="inversion", **{"class": "sink"}).values.tolist() == [[1.0, 0.5, 0.0]]
    assert s.sel(approach="inversion", **{"class": "neutral"}).values.tolist() == [[0.0, 0.5, 0.5]]
    assert s.sel(approach="upscaling", **{"class": "source"}).values[0, :2].tolist() == [0, 1]
    allc = a["all_approaches"]
    assert allc.sel({"class": "sink"}).values[0].tolist() == pytest.approx([1.0, 0.25, 0.0])
    assert allc.sel({"class": "source"}).values[0].tolist() == pytest.approx([0.0, 0.5, 0.5])
    np.testing.assert_allclose(allc.sum("class").values, 1.0)


def test_ch4_summary_anova(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    rows = []
    for cls, mu in (("fen", 12.0), ("bog", 6.0), ("upland tundra", 0.6)):
        for region in ("alaska", "west_siberia"):
            for _ in range(10):
                rows.append({"Ecosystem_class": cls, "Region": region,
                             "CH4_flux": mu + rng.normal(0, 2)})
    p = tmp_path / "ch4.csv"
    pd.DataFrame(rows).to_csv(p, index=False)
    t = read_ch4_synthesis(p)
    out = ch4_summary(t)
    assert out["by_class"].loc["fen", "n"] == 20
    assert out["by_class"].loc["bog", "mean"] == pytest.approx(
        np.mean([r["CH4_flux"] for r in rows if r["Ecosystem_class"] == "bog"]))
    an = out["anova"].set_index("factor")
    ref = stats.f_oneway(*[g["flux"].to_numpy() for _, g in t.groupby("class")])
    assert an.loc["class", "F"] == pytest.approx(ref.statistic)
    assert (an.loc["class", "df_between"], an.loc["class", "df_within"]) == (2, 57)
    with pytest.raises(ValueError, match="ecosystem-class column"):
        pd.DataFrame({"a": [1]}).to_csv(tmp_path / "bad.csv", index=False)
        read_ch4_synthesis(tmp_path / "bad.csv")
