"""Polar LAEA maps with the paper's class breaks (seed-spec §5 Fig. 1a,b), drawn with matplotlib
alone: the land outline is the 0.5 contour of ``land_fraction`` from ``zones.zarr`` and the
49°N circle is exact (no cartopy / Natural Earth download needed)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure

from abz_dask.geo.grid import radius_of_latitude

__all__ = ["NEE_BREAKS", "NEE_LABELS", "TREND_BREAKS", "TREND_LABELS", "class_map",
           "polar_axes"]

#: Fig. 1a classes of mean annual NEE (g C m⁻² yr⁻¹).
NEE_BREAKS: tuple[float, ...] = (-50.0, -30.0, 0.0, 30.0, 50.0)
NEE_LABELS = ("< −50", "−49…−30", "−29…0", "1…30", "31…50", "> 50")
#: Fig. 1b classes of annual NEE trends (g C m⁻² yr⁻¹ yr⁻¹).
TREND_BREAKS: tuple[float, ...] = (-2.0, -1.0, 0.0, 1.0, 2.0)
TREND_LABELS = ("< −2", "−1.9…−1.0", "−0.9…0", "0.1…1.0", "1.1…2.0", "> 2.1")
#: Six classes, uptake (blue-green) to source (red-brown).
CLASS_COLOURS = ("#00441b", "#41ab5d", "#c7e9c0", "#fdd0a2", "#f16913", "#7f2704")


def extent_km(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """``imshow`` extent (km) of cell-centre coordinates (km) of a regular grid."""
    dx, dy = abs(x[1] - x[0]), abs(y[1] - y[0])
    return (float(x.min() - dx / 2), float(x.max() + dx / 2), float(y.min() - dy / 2),
            float(y.max() + dy / 2))


def polar_axes(ax: Axes, zones: xr.Dataset | None, *, south: float = 49.0) -> None:
    """Style an axis as a polar map: equal aspect, no ticks, land outline and 49°N circle."""
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    r = radius_of_latitude(south) / 1e3
    t = np.linspace(0, 2 * np.pi, 361)
    ax.plot(r * np.cos(t), r * np.sin(t), color="0.4", lw=0.6, ls="--")
    if zones is not None and "land_fraction" in zones:
        lf = np.nan_to_num(np.asarray(zones["land_fraction"].values, float))
        ax.contour(zones["x"].values / 1e3, zones["y"].values / 1e3, lf, levels=[0.5],
                   colors="0.15", linewidths=0.5)
    ax.set_xlim(-r * 1.02, r * 1.02)
    ax.set_ylim(-r * 1.02, r * 1.02)


def class_map(fig: Figure, ax: Axes, field: xr.DataArray, breaks: Sequence[float],
              labels: Sequence[str], *, zones: xr.DataArray | xr.Dataset | None = None,
              title: str = "", stipple: xr.DataArray | None = None,
              colours: Sequence[str] = CLASS_COLOURS) -> None:
    """Draw a ``(y, x)`` field in classes (``len(breaks) + 1`` colours) on a polar axis.

    Parameters
    ----------
    fig, ax : matplotlib Figure and Axes
        Where to draw.
    field : xarray.DataArray
        ``(y, x)`` on the grid (metres); NaN cells are blank.
    breaks, labels : sequences
        Class boundaries and the ``len(breaks) + 1`` legend labels.
    zones : xarray.Dataset, optional
        For the land outline.
    title : str
        Axis title.
    stipple : xarray.DataArray, optional
        Boolean ``(y, x)``: cells marked with a dot (e.g. significant trends).
    colours : sequence of str
        ``len(breaks) + 1`` colours.
    """
    if len(colours) != len(breaks) + 1 or len(labels) != len(breaks) + 1:
        raise ValueError(f"{len(breaks)} breaks need {len(breaks) + 1} colours and labels")
    cmap = ListedColormap(list(colours))
    bounds = [-np.inf, *breaks, np.inf]
    norm = BoundaryNorm(bounds, cmap.N)
    f = field.transpose("y", "x")
    x, y = f["x"].values / 1e3, f["y"].values / 1e3
    ax.imshow(np.ma.masked_invalid(np.asarray(f.values, float)), cmap=cmap, norm=norm,
              extent=extent_km(x, y), origin="upper" if y[0] > y[-1] else "lower",
              interpolation="nearest")
    if stipple is not None:
        s = np.asarray(stipple.transpose("y", "x").values, bool)
        yy, xx = np.nonzero(s)
        ax.scatter(x[xx], y[yy], s=0.6, c="k", marker=".", linewidths=0)
    polar_axes(ax, zones if isinstance(zones, xr.Dataset) else None)
    ax.set_title(title, fontsize=9)
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=c, edgecolor="0.3", label=lab)
               for c, lab in zip(colours, labels, strict=True)]
    ax.legend(handles=handles, loc="lower left", fontsize=6, frameon=True, framealpha=0.8,
              title=field.attrs.get("units", ""), title_fontsize=6)
