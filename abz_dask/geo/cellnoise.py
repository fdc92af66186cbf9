"""Per-cell random numbers tied to grid indices: hash-based, chunk independent, reproducible on
any worker in any order (the twin's fields and the upscaler's bootstrap cell sample use them)."""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["cell_noise"]


def cell_noise(seed: int, name: str, row: np.ndarray, col: np.ndarray, *, year: int = 0
               ) -> np.ndarray:
    """White noise in [0, 1) tied to grid cell indices (hash-based, chunk independent)."""
    h = (np.asarray(row, np.uint64) * np.uint64(0x9E3779B1)
         ^ np.asarray(col, np.uint64) * np.uint64(0x85EBCA77)
         ^ np.uint64(zlib.crc32(f"{seed}/{name}/{year}".encode())))
    # splitmix64 finaliser
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    h = h ^ (h >> np.uint64(31))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
