"""Deterministic, chunk-independent random fields for the digital twin.

Every field is a closed-form function of projected position (and a seed), so any block of any
grid can be generated on its own, in any order, on any worker, with bit-identical results.
"""

from __future__ import annotations

import zlib

import numpy as np

from abz_dask.geo.cellnoise import cell_noise  # re-exported: the twin's fields use it

__all__ = ["cell_noise", "rng_for", "smooth_field"]


def rng_for(seed: int, *keys: str | int) -> np.random.Generator:
    """A generator seeded by ``seed`` and a tuple of labels (stable across processes)."""
    words = [int(seed) & 0xFFFFFFFF]
    for k in keys:
        words.append(zlib.crc32(k.encode()) if isinstance(k, str) else int(k) & 0xFFFFFFFF)
    return np.random.default_rng(words)


def smooth_field(seed: int, name: str, x: np.ndarray, y: np.ndarray, *, year: int = 0,
                 wavelength: tuple[float, float] = (8e5, 4e6), n_modes: int = 24) -> np.ndarray:
    """Spatially correlated field with zero mean and unit variance (a sum of plane waves).

    Parameters
    ----------
    seed, name, year
        Identify the field; the same triple always gives the same field.
    x, y : ndarray
        Projected coordinates (m), broadcastable.
    wavelength : (float, float)
        Range of wavelengths (m) of the plane waves.
    n_modes : int
        Number of plane waves.
    """
    rng = rng_for(seed, name, year)
    lam = np.exp(rng.uniform(np.log(wavelength[0]), np.log(wavelength[1]), n_modes))
    theta = rng.uniform(0, np.pi, n_modes)
    phase = rng.uniform(0, 2 * np.pi, n_modes)
    k = 2 * np.pi / lam
    kx, ky = k * np.cos(theta), k * np.sin(theta)
    out = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y)))
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    # sin(a + b) = sin a cos b + cos a sin b: 1-D sines along each axis of a block, then
    # broadcast multiply-adds (deterministic elementwise order; no BLAS reductions)
    for j in range(n_modes):
        ax = kx[j] * x
        by = ky[j] * y + phase[j]
        out += np.sin(ax) * np.cos(by) + np.cos(ax) * np.sin(by)
    return out * np.sqrt(2.0 / n_modes)


