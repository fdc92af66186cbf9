"""Tests of the xarray trend API (abz_dask.analyses.trends.trend)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dask
import dask.array as dsa
import numpy as np
import numpy.typing as npt
import pytest
import xarray as xr
from dask.callbacks import Callback

from abz_dask.analyses.trends import FIELDS, METHODS, trend
from abz_dask.kernels import zyp


class _ComputeCounter(Callback):
    """Dask callback that counts graph executions and raises beyond ``max_computes``.

    The pattern of xclim's ``assert_lazy`` / xarray's ``raise_if_dask_computes``.
    """

    def __init__(self, max_computes: int = 0) -> None:
        super().__init__()
        self.max_computes = max_computes
        self.count = 0

    def _start(self, dsk: Any) -> None:
        self.count += 1
        if self.count > self.max_computes:
            raise RuntimeError(f"dask computed {self.count} time(s), allowed {self.max_computes}")


@contextmanager
def raise_if_dask_computes(max_computes: int = 0) -> Iterator[_ComputeCounter]:
    """Fail if anything inside the block makes Dask compute (local schedulers)."""
    with dask.config.set(scheduler="threads"), _ComputeCounter(max_computes) as counter:
        yield counter


def _series(rng: np.random.Generator, shape: tuple[int, ...], n: int) -> npt.NDArray[np.float64]:
    """AR(1) + trend series on the first axis, a few missing values and one all-NaN pixel."""
    e = rng.normal(size=(n, *shape))
    x = np.empty_like(e)
    x[0] = e[0]
    phi = rng.uniform(0.0, 0.8, size=shape)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    x += rng.uniform(-0.1, 0.1, size=shape) * np.arange(n).reshape((n,) + (1,) * len(shape))
    x += 100.0
    flat = x.reshape(n, -1)
    flat[rng.integers(0, n, size=5), rng.integers(0, flat.shape[1], size=5)] = np.nan
    flat[:, 0] = np.nan
    return x


@pytest.fixture(scope="module")
def cube() -> xr.DataArray:
    rng = np.random.default_rng(42)
    data = _series(rng, (6, 7), 20)
    return xr.DataArray(
        data, dims=("year", "y", "x"),
        coords={"year": np.arange(2001, 2021), "y": np.arange(6) * 1e3, "x": np.arange(7) * 1e3},
        name="nee", attrs={"units": "g C m-2 yr-1"},
    )


def _expected(da: xr.DataArray, method: str, preserve: bool, alpha: float = 0.05,
              dim: str = "year") -> dict[str, npt.NDArray[np.float64]]:
    """The kernel applied pixel by pixel (1-D calls)."""
    arr = np.moveaxis(np.asarray(da.transpose(..., dim).values), -1, 0)
    out_shape = arr.shape[1:]
    flat = arr.reshape(arr.shape[0], -1)
    res = {f: np.empty(flat.shape[1]) for f in FIELDS}
    for j in range(flat.shape[1]):
        one = zyp.zyp_trend(flat[:, j], method, preserve_range=preserve,  # type: ignore[arg-type]
                            alpha=alpha)
        for f, v in zip(FIELDS, one, strict=True):
            res[f][j] = float(v)
    return {f: v.reshape(out_shape) for f, v in res.items()}


def _assert_matches(ds: xr.Dataset, expected: dict[str, npt.NDArray[np.float64]],
                    prefix: str = "") -> None:
    for f in FIELDS:
        np.testing.assert_array_equal(ds[prefix + f].values, expected[f], err_msg=f)


def test_compute_guard_detects_compute(cube: xr.DataArray) -> None:
    lazy = cube.chunk({"y": 3})
    with pytest.raises(RuntimeError, match="dask computed"), raise_if_dask_computes():
        lazy.sum().compute()
    with raise_if_dask_computes(max_computes=1) as counter:
        lazy.sum().compute()
    assert counter.count == 1


def test_dataarray_numpy(cube: xr.DataArray) -> None:
    ds = trend(cube)
    assert isinstance(ds, xr.Dataset)
    assert tuple(ds.data_vars) == FIELDS
    for f in FIELDS:
        assert ds[f].dims == ("y", "x")
        assert ds[f].dtype == np.float64
    np.testing.assert_array_equal(ds["x"].values, cube["x"].values)
    _assert_matches(ds, _expected(cube, "zhang", True))
    assert np.all(np.isnan(ds["trend"].values.reshape(-1)[0]))  # the all-NaN pixel
    assert ds.attrs["trend_method"] == "zhang"
    assert ds["trend"].attrs["units"] == "g C m-2 yr-1 / step of year"
    assert ds["intercept"].attrs["units"] == "g C m-2 yr-1"
    assert "units" not in ds["tau"].attrs


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("preserve", [True, False])
def test_dask_is_lazy_and_matches_kernel(cube: xr.DataArray, method: str,
                                         preserve: bool) -> None:
    lazy = cube.chunk({"year": -1, "y": 2, "x": 4})
    with raise_if_dask_computes():
        ds = trend(lazy, dim="year", method=method,  # type: ignore[arg-type]
                   preserve_range=preserve)
    for f in FIELDS:
        assert isinstance(ds[f].data, dsa.Array), f
        assert ds[f].chunks == ((2, 2, 2), (4, 3))
    with raise_if_dask_computes(max_computes=1):
        computed = ds.compute()
    _assert_matches(computed, _expected(cube, method, preserve))


def test_time_dim_not_last_and_float32(cube: xr.DataArray) -> None:
    moved = cube.transpose("y", "year", "x").astype(np.float32).chunk({"y": 3, "year": -1})
    with raise_if_dask_computes():
        ds = trend(moved)
    assert ds["trend"].dims == ("y", "x")
    computed = ds.compute()
    _assert_matches(computed, _expected(moved.astype(np.float64), "zhang", True))


def test_integer_input(cube: xr.DataArray) -> None:
    ints = cube.fillna(0).round().astype(np.int64)
    ds = trend(ints.chunk({"x": 3}), method="none").compute()
    _assert_matches(ds, _expected(ints.astype(np.float64), "none", True))


def test_dataset_input(cube: xr.DataArray) -> None:
    gpp = (cube * 2 + 1).rename("gpp")
    ds_in = xr.Dataset({"nee": cube, "gpp": gpp,
                        "mask": (("y", "x"), np.ones((6, 7), dtype=bool))})
    ds_in = ds_in.chunk({"y": 3, "year": -1})
    with raise_if_dask_computes():
        out = trend(ds_in, dim="year", method="yuepilon")
    assert set(out.data_vars) == {f"{v}_{f}" for v in ("nee", "gpp") for f in FIELDS}
    computed = out.compute()
    _assert_matches(computed, _expected(cube, "yuepilon", True), prefix="nee_")
    _assert_matches(computed, _expected(gpp, "yuepilon", True), prefix="gpp_")


def test_alpha_changes_only_the_bounds(cube: xr.DataArray) -> None:
    a = trend(cube, alpha=0.05)
    b = trend(cube, alpha=0.2)
    np.testing.assert_array_equal(a["trend"].values, b["trend"].values)
    np.testing.assert_array_equal(a["sig"].values, b["sig"].values)
    assert np.nanmean(b["ubound"] - b["lbound"]) < np.nanmean(a["ubound"] - a["lbound"])
    _assert_matches(b, _expected(cube, "zhang", True, alpha=0.2))


def test_dim_split_across_chunks_raises(cube: xr.DataArray) -> None:
    split = cube.chunk({"year": 5})
    with raise_if_dask_computes(), pytest.raises(ValueError, match=r"one chunk.*rechunk|chunk\("):
        trend(split)
    ds_in = xr.Dataset({"nee": split})
    with raise_if_dask_computes(), pytest.raises(ValueError, match="'nee'"):
        trend(ds_in)
    # the suggested fix works
    ds = trend(split.chunk({"year": -1}))
    assert ds["trend"].chunks is not None


def test_bad_arguments(cube: xr.DataArray) -> None:
    with pytest.raises(ValueError, match="method"):
        trend(cube, method="sen")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dimension 'time'"):
        trend(cube, dim="time")
    with pytest.raises(ValueError, match="no data variable"):
        trend(xr.Dataset({"m": (("y", "x"), np.ones((6, 7)))}, coords={"year": [1, 2]}),
              dim="year")
    with pytest.raises(ValueError, match="alpha"):
        trend(cube, alpha=0.0)
    with pytest.raises(TypeError, match="DataArray or Dataset"):
        trend(cube.values)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="numeric"):
        trend(xr.DataArray(np.array(["a", "b", "c"]), dims="year"))


def test_scalar_series_docstring_example() -> None:
    y = xr.DataArray([1.0, 2, 2, 3, 5, 4, 6, 6, 8, 9], dims="year")
    out = trend(y)
    assert out["trend"].shape == ()
    assert float(out["trend"]) == pytest.approx(0.8568553, rel=1e-6)  # seed-spec fixture C
    assert int(out["nruns"]) == 10
