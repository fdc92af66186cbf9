"""Model agreement maps of paper 2 (Fig. 6; seed-spec §7).

Per pixel, every model's mean annual NEE is classed as **sink** (< −10), **neutral**
(−10…+10) or **source** (> +10 g C m⁻² yr⁻¹). For each approach the map holds the share of its
models in each class (an approach with one model — the upscaling — has shares 0 or 1). The
"all approaches" map weights the approaches equally: the mean of the per-approach shares over the
approaches that have a valid value at the pixel. Lazy for dask-backed inputs.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["CLASSES", "SINK_BELOW", "SOURCE_ABOVE", "agreement_maps", "classify_nee"]

SINK_BELOW = -10.0
SOURCE_ABOVE = 10.0
CLASSES: tuple[str, ...] = ("sink", "neutral", "source")


def classify_nee(nee: xr.DataArray, sink_below: float = SINK_BELOW,
                 source_above: float = SOURCE_ABOVE) -> xr.DataArray:
    """Class indicator ``(class, ...)``: 1.0 where the pixel is in the class, NaN where NEE is."""
    valid = np.isfinite(nee)
    parts = [nee < sink_below, (nee >= sink_below) & (nee <= source_above), nee > source_above]
    out = xr.concat([p.astype(float).where(valid) for p in parts], dim="class")
    return out.assign_coords({"class": list(CLASSES)})


def agreement_maps(approaches: dict[str, xr.DataArray], sink_below: float = SINK_BELOW,
                   source_above: float = SOURCE_ABOVE) -> xr.Dataset:
    """Shares of models per class, per approach and across approaches.

    Parameters
    ----------
    approaches : dict of str to xr.DataArray
        Approach → mean annual NEE maps ``(y, x)`` or ``(model, y, x)`` (g C m⁻² yr⁻¹).
    sink_below, source_above : float
        Class thresholds.

    Returns
    -------
    xr.Dataset
        ``share`` ``(approach, class, y, x)`` in 0…1 (NaN where no model of the approach has a
        value), ``all_approaches`` ``(class, y, x)`` (equal approach weights), and
        ``n_models`` ``(approach,)``.
    """
    shares = []
    n_models = []
    for name, m in approaches.items():
        arr = m if "model" in m.dims else m.expand_dims(model=[0])
        cls = classify_nee(arr, sink_below, source_above)
        shares.append(cls.mean("model", skipna=True).expand_dims(approach=[name]))
        n_models.append(int(arr.sizes["model"]))
    share = xr.concat(shares, dim="approach", join="override")
    return xr.Dataset({"share": share, "all_approaches": share.mean("approach", skipna=True),
                       "n_models": ("approach", np.array(n_models))},
                      attrs={"sink_below": sink_below, "source_above": source_above,
                             "units": "fraction of models"})
