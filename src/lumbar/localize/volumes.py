"""Model inputs from DICOM stacks: intensity-normalised, resized, depth-resampled arrays, cached as .npy.

- Sagittal input: the whole stack, clipped to its 1st-99th intensity percentile and scaled to [0, 1],
  each slice resized to size x size (aspect not kept: coordinates are normalised per axis), then
  resampled along the slice axis to a fixed number of slices by linear interpolation, so channel d sits at
  z = d / (slices - 1), the same z as the targets (`lumbar.localize.tasks`).
- Axial input: a window of slices centred on one slice (edge slices repeated), normalised over the window.
- Point crops (slice refinement): a square of fixed width in mm around a point on every slice.

Training caches each input once as float16 .npy (written atomically), so epochs never decode DICOM again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from lumbar.core.atomic import atomic_path
from lumbar.data.dicom import Stack
from lumbar.preprocess.intensity import percentile_range, rescale


def normalize_intensity(pixels: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Clip a (n, H, W) stack to the [low, high] percentiles of all its pixels, scale to [0, 1], float32."""
    return rescale(pixels, *percentile_range(pixels, low, high, stride=1))


def resize_slices(pixels: np.ndarray, size: int) -> np.ndarray:
    """(n, H, W) -> (n, size, size); area interpolation when shrinking, linear when enlarging."""
    out = np.empty((len(pixels), size, size), dtype=np.float32)
    for i, img in enumerate(pixels):
        shrink = img.shape[0] > size or img.shape[1] > size
        out[i] = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return out


def resample_depth(pixels: np.ndarray, depth: int) -> np.ndarray:
    """(n, H, W) -> (depth, H, W), sampling positions linspace(0, n - 1, depth) linearly."""
    n = len(pixels)
    if n == depth:
        return pixels.astype(np.float32, copy=False)
    pos = np.linspace(0.0, n - 1.0, depth) if depth > 1 else np.array([(n - 1) / 2.0])
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    w = (pos - lo).astype(np.float32)[:, None, None]
    return pixels[lo] * (1.0 - w) + pixels[hi] * w


def sagittal_input(pixels: np.ndarray, size: int, slices: int) -> np.ndarray:
    """The model input of a whole sagittal stack (n, H, W) already normalised: (slices, size, size)
    float32."""
    return resample_depth(resize_slices(pixels, size), slices)


def point_crops(
    pixels: np.ndarray, x: float, y: float, spacing: tuple[float, float], width_mm: float, size: int
) -> np.ndarray:
    """A square of width_mm around pixel (x, y) on every slice of (n, H, W), resampled to (n, size, size).

    Args:
        pixels: the slices (normalised).
        x, y: the centre, column and row (pixel centres at integers).
        spacing: (between rows, between columns) in mm.
        width_mm: side of the square.
        size: output pixels per side; outside the image is 0.
    """
    step = width_mm / size
    offsets = (np.arange(size) + 0.5 - size / 2) * step
    rows = y + offsets / spacing[0]
    cols = x + offsets / spacing[1]
    n = len(pixels)
    grid = np.stack(np.meshgrid(np.arange(n), rows, cols, indexing="ij")).astype(np.float32)
    return ndimage.map_coordinates(np.asarray(pixels, np.float32), grid, order=1, mode="constant", cval=0.0)


def window_indices(center: int, radius: int, n: int) -> list[int]:
    """Slice indices center-radius..center+radius, clipped to the stack (edge slices repeated)."""
    return [min(max(center + d, 0), n - 1) for d in range(-radius, radius + 1)]


def axial_input(stack: Stack, center: int, radius: int, size: int) -> np.ndarray:
    """(2 * radius + 1, size, size) float32: the slice `center` of a stack and its neighbours."""
    idx = window_indices(center, radius, len(stack))
    unique = sorted(set(idx))
    loaded = stack.load(unique).pixels
    pixels = loaded[[unique.index(i) for i in idx]]
    return resize_slices(normalize_intensity(pixels), size)


def cached_array(path: str | os.PathLike, build: Callable[[], np.ndarray]) -> np.ndarray:
    """Load `path` when it exists, else build the array, store it as float16 (atomically) and return it."""
    path = Path(path)
    if path.is_file():
        return np.load(path)
    arr = np.asarray(build(), dtype=np.float16)
    with atomic_path(path) as tmp:
        np.save(tmp, arr)
    return arr
