"""MESS against a hand-computed example (Elith et al. 2010 / modEvA::MESS rules)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from abz_dask.compare.coverage import mess, mess_map

REF = np.column_stack([np.arange(1.0, 11.0), np.arange(10.0, 101.0, 10.0)])


@pytest.mark.parametrize(("p", "expected"), [
    (5.5, 100.0),           # f = 50 % -> 2 f
    (3.0, 40.0),            # 2 of 10 below -> f = 20 -> 40
    (8.0, 60.0),            # f = 70 -> 2 (100 - 70)
    (10.0, 20.0),           # the maximum itself: f = 90 -> 20
    (1.0, 0.0),             # the minimum: f = 0 -> 100 (p - min) / (max - min) = 0
    (0.0, -100.0 / 9.0),    # below the range
    (12.0, -200.0 / 9.0),   # above the range: f = 100 -> 100 (max - p) / (max - min)
])
def test_mess_single_variable(p: float, expected: float) -> None:
    sim, total = mess(np.array([[p, 55.0]]), REF)
    assert sim[0, 0] == pytest.approx(expected)
    assert total[0] == pytest.approx(min(expected, 100.0))


def test_mess_total_is_min_and_nan() -> None:
    pts = np.array([[5.5, 30.0], [0.0, 200.0], [np.nan, 50.0]])
    sim, total = mess(pts, REF)
    assert sim[0].tolist() == pytest.approx([100.0, 40.0])
    assert total[0] == pytest.approx(40.0)
    # var 2: 200 above max 100 -> 100 (100 - 200) / 90
    assert total[1] == pytest.approx(min(-100.0 / 9.0, -1000.0 / 9.0))
    assert np.isnan(total[2])


def test_mess_values_below_one_use_intended_count() -> None:
    # modEvA 1.2's in-place recoding miscounts when p <= 1; the intended rule gives f = 50 -> 100
    ref = np.linspace(0.1, 1.0, 10)[:, None]
    _, total = mess(np.array([[0.55]]), ref)
    assert total[0] == pytest.approx(100.0)


def test_mess_map_lazy_and_matches_pointwise() -> None:
    rng = np.random.default_rng(3)
    time = pd.date_range("2001-01", periods=24, freq="MS")
    a = rng.normal(size=(24, 6, 7)).astype(np.float32)
    b = rng.normal(size=(6, 7)).astype(np.float32) * 3
    cube = xr.Dataset({"tair": (("time", "y", "x"), a), "soc": (("y", "x"), b)},
                      coords={"time": time, "y": np.arange(6.0), "x": np.arange(7.0)}
                      ).chunk({"y": 3, "x": 4})
    train = pd.DataFrame({"tair": rng.normal(size=50), "soc": rng.normal(size=50),
                          "year": 2001})
    out = mess_map(cube, train, predictors=["tair", "soc"], years=(2001, 2002))
    assert out["mess"].chunks is not None  # lazy
    got = out["mess"].values
    pts = np.stack([a.mean(axis=0), b], axis=-1)
    _, want = mess(pts, train[["tair", "soc"]].to_numpy())
    np.testing.assert_allclose(got, want, rtol=1e-6)
    mod = out["mod"].values
    sim, _ = mess(pts, train[["tair", "soc"]].to_numpy())
    np.testing.assert_array_equal(mod, np.argmin(sim, axis=-1))
