"""k-means environmental clusters recover planted environments; veg composition per cluster."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from abz_dask.compare.coverage import environmental_clusters


def test_clusters_recover_planted_groups() -> None:
    rng = np.random.default_rng(0)
    ny, nx = 30, 30
    group = np.zeros((ny, nx), int)
    group[:, 10:20] = 1
    group[:, 20:] = 2
    centres = np.array([[-10.0, 0.2], [0.0, 0.5], [8.0, 0.3]])  # (tair, ndvi) per group
    tair = centres[group, 0] + rng.normal(0, 0.3, (ny, nx))
    ndvi = centres[group, 1] + rng.normal(0, 0.01, (ny, nx))
    time = pd.date_range("2001-01", periods=12, freq="MS")
    cube = xr.Dataset({
        "tair": (("time", "y", "x"), np.broadcast_to(tair, (12, ny, nx)).astype(np.float32)),
        "ndvi": (("time", "y", "x"), np.broadcast_to(ndvi, (12, ny, nx)).astype(np.float32)),
        "vegtype": (("y", "x"), np.array([21, 70, 160])[group].astype(np.float32))},
        coords={"time": time, "y": np.arange(ny, 0, -1.0), "x": np.arange(nx, dtype=float)},
    ).chunk({"y": 15, "x": 15})
    domain = xr.DataArray(np.ones((ny, nx), bool), dims=("y", "x"),
                          coords={"y": cube["y"], "x": cube["x"]})
    domain[0, 0] = False
    res = environmental_clusters(cube, domain, k=3, n_sample=400, seed=2,
                                 predictors=["tair", "ndvi"])
    # labels ordered by mean air temperature: planted group g is cluster g
    np.testing.assert_allclose(res.centres["tair"].to_numpy(), centres[:, 0], atol=0.2)
    lab = res.cluster_map.values
    assert lab[0, 0] == -1
    np.testing.assert_array_equal(lab.ravel()[1:], group.ravel()[1:])
    share = res.vegtype_share
    np.testing.assert_allclose(np.diag(share.loc[[0, 1, 2], [21, 70, 160]].to_numpy()), 1.0)
    assert int(res.centres["n_sample"].sum()) == 400
