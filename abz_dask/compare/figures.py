"""PNG figures of the comparison stage (for the HTML report and the run folder).

:func:`comparison_figures` reads ``RUN/compare/maps.zarr`` and the CSV tables written by
:func:`abz_dask.compare.run.run_compare` and writes:

``compare_mean_nee.png``
    Mean annual NEE per approach on the polar LAEA grid with the paper's class breaks
    (Fig. 1a: < −50, −50…−30, −30…0, 0…30, 30…50, > 50 g C m⁻² yr⁻¹).
``compare_agreement.png``
    Share of models classing a pixel as sink / neutral / source, across all approaches
    (equal approach weights; paper 2 Fig. 6).
``compare_regional.png``
    Regional mean NEE per approach (paper 2 Table 3 / Fig. 4) with the Tukey letters.
``compare_mess.png``, ``compare_clusters.png``
    MESS (negative = extrapolation) and the k-means environmental clusters with their
    vegetation-type composition.

Plain matplotlib ``imshow`` in projected coordinates (the grid is already polar LAEA); no cartopy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from abz_dask.io.location import Location, as_path, url, write_with


def _save(fig: Any, path: Any) -> None:
    """Write ``fig`` as a PNG to ``path`` (a local path or an object-store location)."""
    write_with(path, lambda f: fig.savefig(f, dpi=110, bbox_inches="tight", format="png"))

__all__ = ["NEE_BREAKS", "comparison_figures"]

#: Class breaks of the paper's mean-NEE maps (Fig. 1a), g C m⁻² yr⁻¹.
NEE_BREAKS: tuple[float, ...] = (-1e9, -50.0, -30.0, 0.0, 30.0, 50.0, 1e9)
_NEE_COLOURS = ("#1a5e2a", "#4f9d4a", "#a8d08d", "#f4c58a", "#e07b39", "#a63603")


def _extent(ds: xr.Dataset) -> tuple[float, float, float, float]:
    x = ds["x"].values
    y = ds["y"].values
    dx = float(abs(x[1] - x[0]))
    return (x.min() - dx / 2) / 1e3, (x.max() + dx / 2) / 1e3, (y.min() - dx / 2) / 1e3, \
        (y.max() + dx / 2) / 1e3


def comparison_figures(out: str | Path | Location) -> dict[str, Path]:
    """Write the comparison PNGs into ``out`` (``RUN/compare``, holding the ``maps.zarr`` and
    tables of :func:`abz_dask.compare.run.run_compare`) and return their paths by name.

    Raises
    ------
    FileNotFoundError
        ``out`` holds no ``maps.zarr`` (run the comparison stage first).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import BoundaryNorm, ListedColormap

    out = as_path(out)
    if not (out / "maps.zarr").exists():
        raise FileNotFoundError(f"{out / 'maps.zarr'} not found: run the comparison stage first")
    ds = xr.open_zarr(url(out / "maps.zarr"), consolidated=False).load()
    ext = _extent(ds)
    paths: dict[str, Path] = {}

    # mean NEE maps with the paper's classes
    cmap = ListedColormap(list(_NEE_COLOURS))
    norm = BoundaryNorm(list(NEE_BREAKS), cmap.N)
    appr = [str(a) for a in ds["approach"].values]
    fig, axes = plt.subplots(1, len(appr), figsize=(4.2 * len(appr), 4.4), squeeze=False)
    for ax, a in zip(axes[0], appr, strict=True):
        im = ax.imshow(ds["mean_nee"].sel(approach=a).values, extent=ext, cmap=cmap, norm=norm,
                       interpolation="nearest")
        ax.set_title(f"{a} ({ds.attrs.get('years', '')})")
        ax.set_xticks([])
        ax.set_yticks([])
    cb = fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, ticks=[-50, -30, 0, 30, 50])
    cb.set_label("mean annual NEE (g C m$^{-2}$ yr$^{-1}$)")
    paths["compare_mean_nee"] = out / "compare_mean_nee.png"
    _save(fig, paths["compare_mean_nee"])
    plt.close(fig)

    # agreement across approaches
    fig, axes = plt.subplots(1, 3, figsize=(12.6, 4.4))
    for ax, c, cm in zip(axes, ("sink", "neutral", "source"), ("Greens", "Greys", "Oranges"),
                         strict=True):
        im = ax.imshow(ds["all_approaches"].sel({"class": c}).values, extent=ext, cmap=cm,
                       vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"share of models: {c}")
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, shrink=0.75)
    fig.suptitle("Model agreement across approaches (equal approach weights)")
    paths["compare_agreement"] = out / "compare_agreement.png"
    _save(fig, paths["compare_agreement"])
    plt.close(fig)

    # regional table
    rt = out / "regional_table.csv"
    if rt.exists():
        tab = pd.read_csv(url(rt))
        from abz_dask.compare.regional import REGIONS

        regions = [r for r in REGIONS if r in set(tab["region"])]
        approaches = list(dict.fromkeys(tab["approach"]))
        fig, ax = plt.subplots(figsize=(11, 4.5))
        width = 0.8 / max(len(approaches), 1)
        for i, a in enumerate(approaches):
            t = tab[tab["approach"] == a].set_index("region").reindex(regions)
            ax.bar(np.arange(len(regions)) + i * width, t["mean"], width, yerr=t["sd"],
                   label=a, capsize=2, alpha=0.85)
        letters_path = out / "regional_tukey.csv"
        if letters_path.exists():
            let = pd.read_csv(url(letters_path), index_col=0)["letters"]
            top = ax.get_ylim()[1]
            for j, r in enumerate(regions):
                if r in let.index:
                    ax.text(j + 0.4 - width / 2, top * 0.92, str(let[r]), ha="center")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(np.arange(len(regions)) + 0.4 - width / 2)
        ax.set_xticklabels([r.replace("_", " ") for r in regions], rotation=20)
        ax.set_ylabel("NEE (g C m$^{-2}$ yr$^{-1}$)")
        ax.legend(fontsize=8, ncol=3)
        ax.set_title("Regional mean NEE ± spatial SD (letters: Tukey HSD across regions)")
        paths["compare_regional"] = out / "compare_regional.png"
        _save(fig, paths["compare_regional"])
        plt.close(fig)

    if "mess" in ds:
        fig, ax = plt.subplots(figsize=(5.4, 4.6))
        v = ds["mess"].values
        lim = float(np.nanmax(np.abs(v))) if np.isfinite(v).any() else 1.0
        im = ax.imshow(v, extent=ext, cmap="RdBu", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set_title("MESS (negative = extrapolation)")
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, shrink=0.8)
        paths["compare_mess"] = out / "compare_mess.png"
        _save(fig, paths["compare_mess"])
        plt.close(fig)

    if "cluster" in ds:
        lab = ds["cluster"].values.astype(float)
        lab[lab < 0] = np.nan
        k = int(np.nanmax(lab)) + 1 if np.isfinite(lab).any() else 1
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.6))
        im = a1.imshow(lab, extent=ext, cmap=plt.get_cmap("tab10", k), vmin=-0.5,
                       vmax=k - 0.5, interpolation="nearest")
        a1.set_title(f"environmental clusters (k = {k})")
        a1.set_xticks([])
        a1.set_yticks([])
        fig.colorbar(im, ax=a1, ticks=range(k), shrink=0.8)
        vt = out / "cluster_vegtypes.csv"
        if vt.exists():
            share = pd.read_csv(url(vt), index_col=0)
            bottom = np.zeros(len(share))
            for c in share.columns:
                a2.bar(share.index.astype(str), share[c], bottom=bottom, label=str(c))
                bottom += share[c].to_numpy()
            a2.set_xlabel("cluster")
            a2.set_ylabel("share of sampled pixels")
            a2.legend(title="veg type", fontsize=7, ncol=2)
            a2.set_title("vegetation-type composition")
        paths["compare_clusters"] = out / "compare_clusters.png"
        _save(fig, paths["compare_clusters"])
        plt.close(fig)
    return paths
