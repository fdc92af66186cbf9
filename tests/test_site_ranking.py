"""Site ranking (where new sites help most) against hand-computed values and brute force."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from pyproj import Transformer
from typer.testing import CliRunner

from abz_dask.analyses.aoa import train_di
from abz_dask.analyses.site_ranking import (
    CandidateError,
    CellPoints,
    ErrorProfile,
    error_profile,
    rank_sites,
    rank_sites_for_run,
    read_candidates,
    sample_cells,
)
from abz_dask.cli import app
from abz_dask.geo.grid import Grid

runner = CliRunner()
LINEAR = ErrorProfile(np.array([0.0, 1.0]), np.array([0.0, 1.0]), 1.0, 0)  # e(DI) = DI
TG = 1e12  # a weight of 1e12 m² turns g C into 1 Tg C


def test_error_profile_by_hand() -> None:
    # bins {0.1, 0.2} and {0.3, 0.4}: RMSE 1 and 2 at mean DI 0.15 and 0.35; slope 5 beyond
    p = error_profile(np.array([0.1, 0.2, 0.3, 0.4]), np.array([1.0, -1.0, 2.0, -2.0]),
                      n_bins=2)
    np.testing.assert_allclose(p.di, [0.15, 0.35])
    np.testing.assert_allclose(p.error, [1.0, 2.0])
    assert p.slope == pytest.approx(5.0)
    np.testing.assert_allclose(p(np.array([0.0, 0.25, 0.5, np.nan])), [1.0, 1.5, 2.75, np.nan])
    # a decreasing pair is pooled: MSE 9 and 1 (equal weights) -> sqrt(5) both, no slope
    q = error_profile(np.array([0.1, 0.2, 0.3, 0.4]), np.array([3.0, -3.0, 1.0, 1.0]),
                      n_bins=2)
    np.testing.assert_allclose(q.error, [np.sqrt(5.0)] * 2)
    assert q.slope == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        error_profile(np.array([0.1]), np.array([1.0]))


def _one_predictor(targets: list[float], cands: list[float]
                   ) -> tuple[object, CellPoints, CellPoints]:
    # training values 0..3 -> d̄ = 5/3 in raw units (test_aoa's worked example)
    m = train_di(pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0]}), {"a": 1.0}, [0, 0, 1, 1],
                 categorical=())
    t = m.encode(np.array(targets)[:, None])[:, None, :]
    c = m.encode(np.array(cands)[:, None])[:, None, :]
    n, k = len(targets), len(cands)
    return (m, CellPoints(np.arange(n), np.arange(n), np.full(n, TG), t),
            CellPoints(np.arange(k), np.arange(k), np.zeros(k), c))


def test_greedy_order_by_hand() -> None:
    # targets 10, 10.2, -5: nearest training distances 7, 7.2, 5 -> DI 4.2, 4.32, 3.0
    # alone: 10.1 removes 4.14 + 4.26 = 8.40, 10.3 removes 4.02 + 4.26 = 8.28, -5 removes 3.0;
    # after 10.1, a site at 10.3 adds nothing, so the second pick is -5 (not the runner-up).
    m, tg, cd = _one_predictor([10.0, 10.2, -5.0], [10.3, -5.0, 10.1])
    r = rank_sites(m, LINEAR, tg, cd, top=2)  # type: ignore[arg-type]
    assert list(r.order) == [2, 1]
    np.testing.assert_allclose(r.reduction, [8.40, 3.0], rtol=1e-9)
    assert r.expected_error == pytest.approx(4.2 + 4.32 + 3.0)
    assert r.reducible_error == pytest.approx(r.expected_error)
    np.testing.assert_allclose(r.candidate_di, [7.3 * 0.6, 5 * 0.6, 7.1 * 0.6], rtol=1e-9)
    # greedy steps shrink the radii: 10.5 first (8.4), then 12 gains only 0.6 − 0.3
    m, tg, cd = _one_predictor([0.0, 1.0, 10.0, 11.5], [0.5, 10.5, 12.0])
    r = rank_sites(m, LINEAR, tg, cd, top=2)  # type: ignore[arg-type]
    assert list(r.order) == [1, 2]
    np.testing.assert_allclose(r.reduction, [8.4, 0.3], rtol=1e-9)


def _brute_error(targets: np.ndarray, w: np.ndarray, rows: np.ndarray, dbar: float,
                 prof: ErrorProfile) -> float:
    total = 0.0
    for q, wq in zip(targets, w, strict=True):
        d = min(float(np.sqrt(((q - r) ** 2).sum())) for r in rows)
        total += wq * float(prof(d / dbar))
    return total / TG


def test_greedy_matches_brute_force_with_months() -> None:
    rng = np.random.default_rng(3)
    n = 40
    tab = pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n),
                        "month": rng.integers(1, 4, n)})
    m = train_di(tab, {"x1": 2.0, "x2": 1.0, "month": 0.7}, np.arange(n) % 4)
    prof = error_profile(m.train_di, rng.normal(size=n) * (1 + 3 * m.train_di), n_bins=4)

    def cells(k: int, spread: float) -> np.ndarray:
        x = rng.normal(scale=spread, size=(k, 1, 2)).repeat(3, axis=1)
        x += rng.normal(scale=0.3, size=(k, 3, 2))
        month = np.broadcast_to(np.arange(1.0, 4.0)[None, :, None], (k, 3, 1))
        return m.encode(np.concatenate([x, month], axis=-1))

    tp, cp = cells(12, 2.5), cells(7, 2.5)
    w = rng.uniform(0.5, 2.0, 12) * TG
    tg = CellPoints(np.arange(12), np.arange(12), w, tp)
    cd = CellPoints(np.arange(7), np.arange(7), np.zeros(7), cp)
    r = rank_sites(m, prof, tg, cd, top=4)
    flat_t, flat_w = tp.reshape(-1, tp.shape[-1]), np.repeat(w, 3)
    rows = m.train
    base = _brute_error(flat_t, flat_w, rows, m.mean_distance, prof)
    assert r.expected_error == pytest.approx(base, rel=1e-9)
    chosen: list[int] = []
    for step in range(4):
        cur = _brute_error(flat_t, flat_w, rows, m.mean_distance, prof)
        gains = {c: cur - _brute_error(flat_t, flat_w, np.vstack([rows, cp[c]]),
                                       m.mean_distance, prof)
                 for c in range(7) if c not in chosen}
        best = max(gains, key=lambda c: gains[c])
        assert r.reduction[step] == pytest.approx(gains[best], rel=1e-9, abs=1e-12)
        if gains[best] > 1e-9:  # a zero gain leaves the tie to the DI reduction
            assert r.order[step] == best
        chosen.append(int(r.order[step]))
        rows = np.vstack([rows, cp[r.order[step]]])


def test_candidate_in_an_empty_region_ranks_first() -> None:
    rng = np.random.default_rng(11)
    n = 200
    tab = pd.DataFrame({"a": rng.uniform(0, 1, n), "b": rng.uniform(0, 1, n)})
    m = train_di(tab, {"a": 1.0, "b": 1.0}, np.arange(n) % 5, categorical=())
    # the CV error grows with the DI (the profile is learnt, not given)
    prof = error_profile(m.train_di, rng.normal(size=n) * (1 + 10 * m.train_di))
    g = np.stack(np.meshgrid(np.linspace(0, 2, 21), np.linspace(0, 2, 21)), -1).reshape(-1, 2)
    tg = CellPoints(np.arange(len(g)), np.arange(len(g)), np.full(len(g), TG),
                    m.encode(g)[:, None, :])
    raw = rng.uniform(0, 1, (30, 2))
    raw[17] = [1.6, 1.6]  # the empty quarter [1, 2]² of predictor space
    cd = CellPoints(np.arange(30), np.arange(30), np.zeros(30), m.encode(raw)[:, None, :])
    r = rank_sites(m, prof, tg, cd, top=3)
    assert r.order[0] == 17
    assert r.reduction[0] > 5 * max(r.reduction[1], 1e-12)


def test_systematic_sample_of_cells() -> None:
    mask = np.ones((10, 10), bool)
    mask[0, 0] = False
    m = xr.DataArray(mask, dims=("y", "x")).chunk(3)
    r, c, s = sample_cells(m, 25)  # 99 cells -> every 2nd row and column
    assert s == 2
    assert len(r) == 24 and (r % 2 == 0).all() and (c % 2 == 0).all()
    assert not ((r == 0) & (c == 0)).any()
    r, c, s = sample_cells(m, 1000)
    assert s == 1 and len(r) == 99


# --------------------------------------------------------------------------- run folder + CLI

GRID = Grid.from_preset("100km").window(20, 60, 6, 8)  # eastern Siberia


def _lonlat(row: int, col: int) -> tuple[float, float]:
    inv = Transformer.from_crs(GRID.crs, "EPSG:4326", always_xy=True)
    lon, lat = inv.transform(GRID.x[col], GRID.y[row])
    return float(lon), float(lat)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder: a 6 × 8 window cube (tair, soc), zones, and a training folder whose rows
    sit in the west of the window; cell (0, 0) is ocean, the east is far in tair."""
    rng = np.random.default_rng(2)
    root = tmp_path_factory.mktemp("rank_run")
    ny, nx = GRID.shape
    time = pd.date_range("2001-01", periods=24, freq="MS")
    col = np.arange(nx)[None, None, :]
    tair = (rng.normal(size=(24, ny, nx)) + 3.0 * col).astype(np.float32)
    tair[:, 0, 0] = np.nan
    soc = rng.normal(size=(ny, nx)).astype(np.float32)
    attrs = {"grid_resolution_m": GRID.resolution, "grid_name": GRID.name,
             "grid_window": list(GRID.extent or ())}
    coords = {"y": GRID.y, "x": GRID.x}
    cube = xr.Dataset({"tair": (("time", "y", "x"), tair), "soc": (("y", "x"), soc)},
                      coords={"time": time, **coords}, attrs=attrs)
    land = np.ones((ny, nx), np.float32)
    land[0, 0] = 0.0
    zones = xr.Dataset({"land_fraction": (("y", "x"), land),
                        "abz": (("y", "x"), land > 0),
                        "biome": (("y", "x"), np.where(np.arange(ny)[:, None] < 3, 1, 2)
                                  * np.ones((1, nx), np.int8))}, coords=coords, attrs=attrs)
    (root / "twin").mkdir()
    cube.to_zarr(root / "twin" / "cube.zarr", consolidated=False)
    zones.to_zarr(root / "twin" / "zones.zarr", consolidated=False)
    tr = root / "training"
    tr.mkdir()
    n = 120
    t = pd.DataFrame({"tair": rng.normal(size=n) + 3.0 * rng.integers(0, 3, n),
                      "soc": rng.normal(size=n), "month": rng.integers(1, 13, n)})
    t.to_parquet(tr / "training_table.parquet")
    obs = rng.normal(size=n)
    pd.DataFrame({"flux": "NEE", "row": np.arange(n), "fold": np.arange(n) % 4,
                  "obs [g C m-2 month-1]": obs,
                  "pred [g C m-2 month-1]": obs + rng.normal(size=n)}).to_csv(
        tr / "cv_predictions.csv", index=False)
    pd.DataFrame({"flux": "NEE", "predictor": ["tair", "soc", "month"],
                  "mean": [2.0, 0.5, 0.5]}).to_csv(tr / "importance_summary.csv", index=False)
    return root


def test_rank_sites_for_run_and_the_command(run: Path, tmp_path: Path) -> None:
    cube = xr.open_zarr(run / "twin" / "cube.zarr", consolidated=False)
    zones = xr.open_zarr(run / "twin" / "zones.zarr", consolidated=False)
    tab = rank_sites_for_run(run / "training", cube, zones, top=3, years=(2001, 2002))
    assert list(tab.columns[:10]) == [
        "rank", "latitude", "longitude", "row", "col", "domain", "di", "score",
        "expected_reduction_tg_c_yr", "cumulative_reduction_tg_c_yr"]
    assert list(tab["rank"]) == [1, 2, 3]
    assert (tab["col"] >= 4).all()  # the predictor region without training rows (east)
    assert not ((tab["row"] == 0) & (tab["col"] == 0)).any()  # the ocean cell
    assert tab["expected_reduction_tg_c_yr"].is_monotonic_decreasing
    r0, c0 = int(tab["row"].iloc[0]), int(tab["col"].iloc[0])
    lon, lat = _lonlat(r0, c0)
    assert tab["latitude"].iloc[0] == pytest.approx(lat, abs=1e-5)
    assert tab["longitude"].iloc[0] == pytest.approx(lon, abs=1e-5)
    assert tab["domain"].iloc[0] == ("tundra" if r0 < 3 else "boreal")
    out = tmp_path / "ranked.csv"
    res = runner.invoke(app, ["rank-sites", str(run), "--top", "3", "--start", "2001",
                              "--end", "2002", "--out", str(out)])
    assert res.exit_code == 0, res.output
    got = pd.read_csv(out)
    pd.testing.assert_frame_equal(got[["rank", "row", "col"]], tab[["rank", "row", "col"]])
    # a user's list: a western (sampled) and an eastern (unsampled) location
    cands = tmp_path / "cands.csv"
    (w_lon, w_lat), (e_lon, e_lat) = _lonlat(4, 0), _lonlat(4, 7)
    cands.write_text(f"name,Latitude,Longitude,domain\nwest,{w_lat},{w_lon},w\n"
                     f"east,{e_lat},{e_lon},e\n")
    res = runner.invoke(app, ["rank-sites", str(run), "--candidates", str(cands), "--top", "2",
                              "--start", "2001", "--end", "2002", "--out", str(out)])
    assert res.exit_code == 0, res.output
    got = pd.read_csv(out)
    assert list(got["name"]) == ["east", "west"]
    assert list(got["line"]) == [3, 2]
    assert list(got["domain"]) == ["boreal", "boreal"]  # the file's own 'domain' is renamed
    assert list(got["input_domain"]) == ["e", "w"]


_INSIDE = "{1:.4f},{0:.4f}".format(*_lonlat(2, 3))  # latitude,longitude of a window cell


@pytest.mark.parametrize(("text", "want"), [
    ("name,lat,lon\na,62,130\n", "no column 'latitude'"),
    ("latitude,longitude\n62,130\nabc,130\n", "line 3, column 'latitude': value 'abc' is not"),
    ("latitude,longitude\n62,230\n", "line 2, column 'longitude': value '230' is outside"),
    (f"latitude,longitude\n{_INSIDE}\n20,-60\n",
     "line 3: latitude 20, longitude -60 lies outside"),
    ("latitude,longitude\n", "has no rows"),
])
def test_bad_candidate_files_are_named(run: Path, tmp_path: Path, text: str, want: str
                                       ) -> None:
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(CandidateError, match=want):
        read_candidates(p, GRID)
    res = runner.invoke(app, ["rank-sites", str(run), "--candidates", str(p)])
    assert res.exit_code == 2
    assert str(p) in res.output and want in res.output


def test_candidate_without_predictors_and_missing_file(run: Path, tmp_path: Path) -> None:
    lon, lat = _lonlat(0, 0)  # the ocean cell
    p = tmp_path / "ocean.csv"
    p.write_text(f"latitude,longitude\n{lat},{lon}\n")
    res = runner.invoke(app, ["rank-sites", str(run), "--candidates", str(p), "--start",
                              "2001", "--end", "2002"])
    assert res.exit_code == 2
    assert f"{p}, line 2" in res.output and "no complete predictors" in res.output
    res = runner.invoke(app, ["rank-sites", str(run), "--candidates", str(tmp_path / "no.csv")])
    assert res.exit_code == 2 and "does not exist" in res.output
    res = runner.invoke(app, ["rank-sites", str(tmp_path / "norun")])
    assert res.exit_code == 2 and "does not exist" in res.output
