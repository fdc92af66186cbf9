"""Calendar rules shared by every aggregation: which years of a monthly series are complete."""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["complete_years"]


def complete_years(time: xr.DataArray) -> np.ndarray:
    """The years with all 12 months in a ``time`` coordinate, sorted (the rule of every annual
    budget, per-area mean and trend: an incomplete year is dropped, never scaled up)."""
    counts = time.dt.year.to_series().value_counts()
    return np.sort(counts.index[counts.to_numpy() == 12].to_numpy())
