"""The final window of a cached sample: centred (evaluation, inference) or shifted at random (training).

A cached array holds `pad_slices` extra slices and `pad_px` extra pixels on each side. Training draws a
window shifted by up to that much, so a classifier learns to tolerate a localizer that misses the slice
or the point by a little (the winning teams called slice shift crucial); evaluation takes the centre.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _core_shape(arr: np.ndarray, pad_slices: int, pad_px: int) -> tuple[int, int, int]:
    if arr.ndim != 3:
        raise ValueError(f"expected a (depth, height, width) array, got shape {arr.shape}")
    d, h, w = arr.shape[0] - 2 * pad_slices, arr.shape[1] - 2 * pad_px, arr.shape[2] - 2 * pad_px
    if min(d, h, w) < 1 or pad_slices < 0 or pad_px < 0:
        raise ValueError(f"pads ({pad_slices} slices, {pad_px} px) do not fit an array of shape {arr.shape}")
    return d, h, w


def window_at(arr: np.ndarray, pad_slices: int, pad_px: int, shift: Sequence[int]) -> np.ndarray:
    """The final window moved by `shift` = (slices, rows, columns) from the centre (a view)."""
    d, h, w = _core_shape(arr, pad_slices, pad_px)
    ds, dy, dx = (int(s) for s in shift)
    if abs(ds) > pad_slices or abs(dy) > pad_px or abs(dx) > pad_px:
        raise ValueError(f"shift {tuple(shift)} exceeds the stored pads ({pad_slices} slices, {pad_px} px)")
    z0, y0, x0 = pad_slices + ds, pad_px + dy, pad_px + dx
    return arr[z0 : z0 + d, y0 : y0 + h, x0 : x0 + w]


def center_window(arr: np.ndarray, pad_slices: int, pad_px: int) -> np.ndarray:
    """The window the cache was centred on: (depth, height, width) without the jitter context."""
    return window_at(arr, pad_slices, pad_px, (0, 0, 0))


def random_window(
    arr: np.ndarray,
    pad_slices: int,
    pad_px: int,
    rng: np.random.Generator,
    max_shift_slices: int | None = None,
    max_shift_px: int | None = None,
    point: Sequence[float] | None = None,
) -> np.ndarray:
    """A window shifted uniformly by up to `max_shift_slices` slices and `max_shift_px` pixels per axis.

    Args:
        arr: a cached sample, (depth + 2 * pad_slices, height + 2 * pad_px, width + 2 * pad_px).
        pad_slices, pad_px: the pads it was stored with (samples.parquet).
        rng: the random generator (one draw per sample).
        max_shift_slices, max_shift_px: the largest shifts; default the pads; larger is an error.
        point: optional (slice, row, column) of the label point in `arr` (samples.parquet `point_d`,
            `point_y`, `point_x`): shifts are limited so the point stays inside the window.

    Returns:
        (depth, height, width), a view of `arr`.
    """
    d, h, w = _core_shape(arr, pad_slices, pad_px)
    max_s = pad_slices if max_shift_slices is None else int(max_shift_slices)
    max_p = pad_px if max_shift_px is None else int(max_shift_px)
    if max_s > pad_slices or max_p > pad_px or max_s < 0 or max_p < 0:
        raise ValueError(
            f"max shifts ({max_s} slices, {max_p} px) must lie within the stored pads "
            f"({pad_slices} slices, {pad_px} px)"
        )
    limits = [(-max_s, max_s), (-max_p, max_p), (-max_p, max_p)]
    if point is not None:
        for axis, (p, pad, size) in enumerate(zip(point, (pad_slices, pad_px, pad_px), (d, h, w))):
            # the point stays inside when pad + shift <= p <= pad + shift + size - 1
            lo, hi = limits[axis]
            limits[axis] = (max(lo, int(np.ceil(p - pad - size + 1))), min(hi, int(np.floor(p - pad))))
            if limits[axis][0] > limits[axis][1]:
                raise ValueError(f"the point {tuple(point)} lies outside every window of array {arr.shape}")
    shift = [int(rng.integers(lo, hi + 1)) for lo, hi in limits]
    return window_at(arr, pad_slices, pad_px, shift)
