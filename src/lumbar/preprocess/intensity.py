"""Per-volume intensity normalisation: clip to the 1st-99th percentile, then scale to [0, 1].

MR intensities have no physical unit and vary by scanner and coil; a robust per-volume range removes
that, and the percentiles (not min/max) ignore the few very bright or dark pixels. The percentiles are
estimated on every second row and column (a 4x smaller sample, same values to well under one grey level
on MR slices) because they dominate the cost of small crops otherwise.
"""

from __future__ import annotations

import numpy as np


def percentile_range(
    volume: np.ndarray, low: float = 1.0, high: float = 99.0, stride: int = 2
) -> tuple[float, float]:
    """The (low, high) percentiles of a (D, H, W) volume, from a strided subsample of each slice."""
    volume = np.asarray(volume)
    if volume.ndim != 3 or volume.size == 0:
        raise ValueError(f"expected a non-empty (D, H, W) volume, got shape {volume.shape}")
    lo, hi = np.percentile(volume[:, ::stride, ::stride], [low, high])
    return float(lo), float(hi)


def rescale(volume: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map [lo, hi] to [0, 1] with clipping, as float32; a flat volume (hi <= lo) becomes zeros."""
    volume = np.asarray(volume, dtype=np.float32)
    if not hi > lo:
        return np.zeros_like(volume)
    out = (volume - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)
