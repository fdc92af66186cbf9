"""Dissimilarity index and area of applicability against hand-computed references."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import raise_if_dask_computes

from abz_dask.analyses import aoa as aoa_mod
from abz_dask.analyses.aoa import (
    aoa_budgets,
    aoa_for_run,
    aoa_shares,
    aoa_threshold,
    di_map,
    dissimilarity,
    train_di,
)


def test_one_predictor_worked_by_hand() -> None:
    # values 0,1,2,3; folds {0,1} | {2,3}. Distances scale with 1/sd, the DI does not.
    # mean distance to the others: 2, 4/3, 4/3, 2 -> d̄ = 5/3; nearest row of the other fold:
    # 2, 1, 1, 2 -> DI = 1.2, 0.6, 0.6, 1.2. Q25 = 0.6, Q75 = 1.2 (type 7), 1.2 + 1.5·0.6 = 2.1
    # > max DI -> threshold 1.2.
    t = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0]})
    m = train_di(t, {"a": 1.0}, [0, 0, 1, 1], categorical=())
    sd = statistics.stdev([0.0, 1.0, 2.0, 3.0])
    assert m.mean_distance == pytest.approx(5 / 3 / sd, rel=1e-12)
    np.testing.assert_allclose(m.train_di, [1.2, 0.6, 0.6, 1.2], rtol=1e-12)
    assert m.threshold == pytest.approx(1.2, rel=1e-12)
    di = dissimilarity(m, np.array([[5.0], [6.0], [1.5], [2.0], [np.nan]]))
    np.testing.assert_allclose(di[:4], [1.2, 1.8, 0.3, 0.0], rtol=1e-12, atol=1e-15)
    assert np.isnan(di[4])


def _quantile7(xs: list[float], p: float) -> float:
    s = sorted(xs)
    h = (len(s) - 1) * p
    lo = math.floor(h)
    return s[lo] + (h - lo) * (s[min(lo + 1, len(s) - 1)] - s[lo])


def _reference(rows: list[list[float]], weights: list[float], folds: list[int],
               points: list[list[float]]) -> tuple[list[float], float, list[float]]:
    """Plain-loop CAST trainDI / aoa on already encoded columns."""
    k = len(weights)
    cols = [[r[j] for r in rows] for j in range(k)]
    mu = [statistics.fmean(c) for c in cols]
    sd = [statistics.stdev(c) for c in cols]

    def enc(r: list[float]) -> list[float]:
        return [(r[j] - mu[j]) / sd[j] * weights[j] for j in range(k)]

    tr = [enc(r) for r in rows]
    n = len(tr)
    avg = [sum(math.dist(tr[i], tr[j]) for j in range(n) if j != i) / (n - 1)
           for i in range(n)]
    dbar = statistics.fmean(avg)
    tdi = [min(math.dist(tr[i], tr[j]) for j in range(n) if folds[j] != folds[i]) / dbar
           for i in range(n)]
    q25, q75 = _quantile7(tdi, 0.25), _quantile7(tdi, 0.75)
    thr = min(q75 + 1.5 * (q75 - q25), max(tdi))
    di = [min(math.dist(enc(p), t) for t in tr) / dbar for p in points]
    return tdi, thr, di


def test_two_weighted_predictors_match_loops() -> None:
    rows = [[1.0, 10.0], [2.0, 14.0], [2.5, 9.0], [4.0, 12.0], [5.5, 20.0], [7.0, 11.0]]
    folds = [0, 1, 0, 1, 0, 1]
    pts = [[3.0, 13.0], [10.0, 30.0], [1.0, 10.0], [-4.0, 0.0]]
    tdi, thr, di = _reference(rows, [2.0, 0.5], folds, pts)
    m = train_di(pd.DataFrame(rows, columns=["a", "b"]), {"a": 2.0, "b": 0.5}, folds,
                 categorical=())
    np.testing.assert_allclose(m.train_di, tdi, rtol=1e-12)
    assert m.threshold == pytest.approx(thr, rel=1e-12)
    got = dissimilarity(m, np.array(pts))
    np.testing.assert_allclose(got, di, rtol=1e-12, atol=1e-15)
    assert got[2] == 0.0  # a training row
    assert got[1] > m.threshold and got[3] > m.threshold  # far points are outside


def test_negative_weight_is_zero_and_threshold_is_whisker() -> None:
    rows = [[0.0, 5.0], [1.0, 1.0], [3.0, 2.0], [4.0, 8.0]]
    m = train_di(pd.DataFrame(rows, columns=["a", "b"]), {"a": 1.0, "b": -3.0}, None,
                 categorical=())
    tdi, thr, _ = _reference(rows, [1.0, 0.0], [0, 1, 2, 3], [])
    np.testing.assert_allclose(m.train_di, tdi, rtol=1e-12)
    assert m.threshold == pytest.approx(thr)
    # the whisker below the maximum: one far training row is an outlier
    d = np.array([0.1, 0.12, 0.11, 0.13, 0.1, 0.9])
    q25, q75 = np.percentile(d, [25, 75])
    assert aoa_threshold(d) == pytest.approx(q75 + 1.5 * (q75 - q25))
    assert aoa_threshold(d) < d.max()


def test_categorical_dummy_coding() -> None:
    # CAST: one dummy per training level, each weighted like its predictor; an unseen level
    # gets all-zero dummies
    veg = [1.0, 1.0, 2.0, 3.0, 3.0, 2.0]
    a = [0.5, 1.5, 1.0, 3.0, 2.0, 0.0]
    folds = [0, 0, 1, 1, 2, 2]
    enc = [[x, float(v == 1), float(v == 2), float(v == 3)] for x, v in zip(a, veg, strict=True)]
    pts_raw = [[1.2, 2.0], [1.2, 7.0]]
    pts = [[p[0], float(p[1] == 1), float(p[1] == 2), float(p[1] == 3)] for p in pts_raw]
    tdi, thr, di = _reference(enc, [1.5, 0.7, 0.7, 0.7], folds, pts)
    m = train_di(pd.DataFrame({"a": a, "vegtype": veg}), {"a": 1.5, "vegtype": 0.7}, folds)
    assert m.columns == ("a", "vegtype=1", "vegtype=2", "vegtype=3")
    np.testing.assert_allclose(m.train_di, tdi, rtol=1e-12)
    assert m.threshold == pytest.approx(thr, rel=1e-12)
    np.testing.assert_allclose(dissimilarity(m, np.array(pts_raw)), di, rtol=1e-12)


def test_bad_training_input_is_named() -> None:
    with pytest.raises(ValueError, match="'b'"):
        train_di(pd.DataFrame({"a": [1.0, 2.0], "b": [1.0, np.nan]}), {"a": 1, "b": 1},
                 categorical=())
    with pytest.raises(ValueError, match="no variance"):
        train_di(pd.DataFrame({"a": [1.0, 2.0], "b": [1.0, 1.0]}), {"a": 1, "b": 1},
                 categorical=())
    with pytest.raises(ValueError, match="lacks"):
        train_di(pd.DataFrame({"a": [1.0, 2.0]}), {"a": 1, "c": 1}, categorical=())


def _cube(rng: np.random.Generator) -> xr.Dataset:
    time = pd.date_range("2001-01", periods=36, freq="MS")
    tair = rng.normal(size=(36, 5, 6)).astype(np.float32)
    tair[:, 0, 0] = np.nan  # a cell without predictors
    tair[:, 4, 5] += 40.0  # a far cell
    soc = rng.normal(size=(5, 6)).astype(np.float32)
    co2 = np.linspace(370, 380, 36).astype(np.float32)
    return xr.Dataset({"tair": (("time", "y", "x"), tair), "soc": (("y", "x"), soc),
                       "co2": (("time",), co2)},
                      coords={"time": time, "y": np.arange(5.0), "x": np.arange(6.0)}
                      ).chunk({"time": 12, "y": 2, "x": 3})


def _training(rng: np.random.Generator) -> pd.DataFrame:
    n = 60
    return pd.DataFrame({"tair": rng.normal(size=n), "soc": rng.normal(size=n),
                         "month": rng.integers(1, 13, n), "co2": rng.uniform(370, 380, n)})


def test_di_map_is_lazy_and_matches_pointwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aoa_mod, "_QUERY_ROWS", 7)  # several query batches per block
    rng = np.random.default_rng(5)
    cube = _cube(rng)
    t = _training(rng)
    m = train_di(t, {"tair": 2.0, "soc": 1.0, "month": 0.5, "co2": 0.3},
                 np.arange(60) % 4)
    with raise_if_dask_computes():
        out = di_map(cube, m, years=(2001, 2003))
        assert out["di"].chunks is not None
    got = out["di_month"].values
    c = cube.compute()
    clim_t = c["tair"].groupby("time.month").mean().values  # (12, y, x)
    clim_c = c["co2"].groupby("time.month").mean().values
    # brute force (no k-d tree): min over all training rows of the encoded distance
    enc = m.train
    for mo in range(12):
        raw = np.stack([clim_t[mo], c["soc"].values,
                        np.full((5, 6), mo + 1.0), np.full((5, 6), clim_c[mo])], axis=-1)
        p = m.encode(raw)
        d = np.sqrt(((p[..., None, :] - enc) ** 2).sum(-1)).min(-1) / m.mean_distance
        # the map holds the climatologies in float32 (the cube's precision)
        np.testing.assert_allclose(got[mo], d, rtol=2e-5, atol=1e-5)
    assert np.isnan(out["di"].values[0, 0]) and np.isnan(out["aoa"].values[0, 0])
    assert out["aoa"].values[4, 5] == 0 and out["outside_fraction"].values[4, 5] == 1
    np.testing.assert_allclose(out["di"].values, got.mean(axis=0), rtol=1e-12)
    monthly = di_map(cube, m, years=(2001, 2001), mode="monthly")["di_time"].values
    raw = np.stack([c["tair"].values[:12], np.broadcast_to(c["soc"].values, (12, 5, 6)),
                    np.broadcast_to(np.arange(1.0, 13)[:, None, None], (12, 5, 6)),
                    np.broadcast_to(c["co2"].values[:12, None, None], (12, 5, 6))], axis=-1)
    np.testing.assert_allclose(monthly, dissimilarity(m, raw), rtol=1e-12)


def _zones() -> xr.Dataset:
    y, x = np.arange(5.0), np.arange(6.0)
    land = np.ones((5, 6), np.float32)
    land[2, :] = 0.5
    biome = np.zeros((5, 6), np.int8)
    biome[:2] = 1
    biome[2:] = 2
    return xr.Dataset({"land_fraction": (("y", "x"), land),
                       "abz": (("y", "x"), np.ones((5, 6), bool)),
                       "biome": (("y", "x"), biome),
                       "permafrost": (("y", "x"), biome == 1)}, coords={"y": y, "x": x})


def test_shares_and_budgets_over_the_aoa() -> None:
    zones = _zones()
    aoa = np.ones((5, 6))
    aoa[0, :3] = 0.0  # tundra cells outside
    aoa[3, 0] = 0.0  # a boreal cell outside
    frac = np.where(aoa == 0, 0.75, 0.0)
    ds = xr.Dataset({"aoa": (("y", "x"), aoa), "outside_fraction": (("y", "x"), frac)},
                    coords={"y": zones["y"], "x": zones["x"]})
    cell = 4.0e6
    sh = aoa_shares(ds, zones, cell).set_index("domain")
    area = zones["land_fraction"].values * cell
    tundra = zones["biome"].values == 1
    boreal = zones["biome"].values == 2
    want_t = area[tundra & (aoa == 0)].sum() / area[tundra].sum()
    want_b = area[boreal & (aoa == 0)].sum() / area[boreal].sum()
    assert sh.loc["tundra", "share_outside"] == pytest.approx(want_t)
    assert sh.loc["boreal", "share_outside"] == pytest.approx(want_b)
    assert sh.loc["abz", "share_months_outside"] == pytest.approx(
        0.75 * area[aoa == 0].sum() / area.sum())
    time = pd.date_range("2001-01", periods=24, freq="MS")
    nee = np.random.default_rng(1).normal(size=(24, 5, 6))
    fl = xr.Dataset({"NEE": (("time", "y", "x"), nee)},
                    coords={"time": time, "y": zones["y"], "x": zones["x"]}).chunk({"time": 12})
    b = aoa_budgets(fl, ds, zones, cell, years=(2001, 2002), flux_names=["NEE"])
    b = b.set_index("domain")
    per_cell = nee.reshape(2, 12, 5, 6).sum(1).mean(0) * area * 1e-12
    assert b.loc["boreal", "budget"] == pytest.approx(per_cell[boreal].sum())
    assert b.loc["boreal", "budget_in_aoa"] == pytest.approx(
        per_cell[boreal & (aoa == 1)].sum())


def test_aoa_for_run_reads_the_training_folder(tmp_path: Path) -> None:
    from abz_dask.report.figures import fig_aoa

    rng = np.random.default_rng(7)
    cube = _cube(rng)
    t = _training(rng)
    t.to_parquet(tmp_path / "training_table.parquet")
    # the model trained on rows 10..59 only, in 5 folds; GPP has no importances
    rows = np.arange(10, 60)
    pd.DataFrame({"flux": "NEE", "row": rows, "fold": rows % 5}).to_csv(
        tmp_path / "cv_predictions.csv", index=False)
    pd.DataFrame({"flux": "NEE", "predictor": ["tair", "soc", "month", "co2"],
                  "mean": [2.0, 1.0, 0.5, -0.2]}).to_csv(
        tmp_path / "importance_summary.csv", index=False)
    zones = _zones()
    time = pd.date_range("2001-01", periods=36, freq="MS")
    fl = xr.Dataset({"NEE": (("time", "y", "x"), rng.normal(size=(36, 5, 6)))},
                    coords={"time": time, "y": zones["y"], "x": zones["x"]})
    res = aoa_for_run(tmp_path, cube, zones, fl, 4.0e6, years=(2001, 2003))
    assert res is not None
    ref = t.iloc[rows].reset_index(drop=True)
    ref[["tair", "soc", "co2"]] = ref[["tair", "soc", "co2"]].astype(np.float32)  # as read
    want = train_di(ref,
                    {"tair": 2.0, "soc": 1.0, "month": 0.5, "co2": 0.0}, rows % 5)
    assert res.model.threshold == pytest.approx(want.threshold, rel=1e-12)
    np.testing.assert_allclose(res.model.train_di, want.train_di, rtol=1e-12)
    assert list(res.shares["domain"]) == ["abz", "tundra", "boreal", "permafrost"]
    assert set(res.budgets["flux"]) == {"NEE"}
    assert aoa_for_run(tmp_path, cube, zones, fl, 4.0e6, years=(2001, 2003),
                       flux="GPP") is None
    fig = fig_aoa(res.maps, zones, "2001–2003")
    assert len(fig.axes) == 3  # DI, its colour bar, AOA
    (tmp_path / "importance_summary.csv").unlink()
    assert aoa_for_run(tmp_path, cube, zones, fl, 4.0e6, years=(2001, 2003)) is None
