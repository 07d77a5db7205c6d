"""The final window of a cached sample: centred (evaluation, inference) or shifted (training).

A cached array holds `pad_slices` extra slices and `pad_px` extra pixels on each side. Training draws a
window shifted by up to that much, so a classifier learns to tolerate a localizer that misses the slice
or the point (the winning teams called slice shift crucial); evaluation takes the centre.

Two ways to draw the shift: `random_window`, uniform within set bounds; or `LocalizerJitter`, one recorded
out-of-fold error of the localizer for the crop's condition (slice and in-plane together), so the training
crops miss the way test crops do (the 1st place drew slice shifts from their localizer's measured errors).
The errors travel as a JSON file (`write_localizer_errors`, `LocalizerJitter.from_file`):

    {"kind": "lumbar-localizer-errors", "version": 1,
     "conditions": {"<condition>": {"slice": [int, ...], "dx_mm": [float, ...], "dy_mm": [float, ...]}}}

one entry per out-of-fold point matched to its ground truth: `slice` = predicted - true slice index in the
stack's geometric order (the window shift that reproduces the error: `window_at` with shift +slice),
`dx_mm`, `dy_mm` = (predicted - true) column / row times that slice's pixel spacing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lumbar.core.atomic import write_json
from lumbar.core.constants import normalize_condition
from lumbar.preprocess.config import RoiConfig

ERRORS_KIND = "lumbar-localizer-errors"
ERRORS_VERSION = 1
#: Columns of the table `write_localizer_errors` takes: one row per out-of-fold point matched to its truth.
ERROR_COLUMNS = ("condition", "slice_error", "dx_mm", "dy_mm")
_FIELDS = ("slice", "dx_mm", "dy_mm")


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


def write_localizer_errors(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a localizer's out-of-fold errors as the JSON file `LocalizerJitter.from_file` reads.

    Args:
        table: one row per out-of-fold point matched to its ground truth (`ERROR_COLUMNS`): `condition`
            (either spelling), `slice_error` (predicted - true slice index in the stack's geometric order, an
            integer), `dx_mm`, `dy_mm` ((predicted - true) column / row times the slice's pixel spacing).
        path: the JSON file to write (atomically).

    Raises:
        ValueError: a missing column, a missing value, a fractional slice error or an unknown condition.
    """
    missing = [c for c in ERROR_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"localizer errors for {path}: missing column(s) {missing}; expected {list(ERROR_COLUMNS)}"
        )
    table = table[list(ERROR_COLUMNS)]
    empty = [c for c in ERROR_COLUMNS if table[c].isna().any()]
    if empty:
        raise ValueError(f"localizer errors for {path}: missing values in {empty}; pass only matched points")
    slices = table["slice_error"].to_numpy(dtype=np.float64)
    if not np.array_equal(slices, np.round(slices)):
        raise ValueError(f"localizer errors for {path}: slice_error must be whole slices")
    try:
        names = [normalize_condition(c) for c in table["condition"]]
    except ValueError as e:
        raise ValueError(f"localizer errors for {path}: {e}") from None
    table = table.assign(condition=names, slice_error=slices.astype(int))
    conditions = {
        str(condition): {
            "slice": [int(v) for v in group["slice_error"]],
            "dx_mm": [float(v) for v in group["dx_mm"]],
            "dy_mm": [float(v) for v in group["dy_mm"]],
        }
        for condition, group in table.groupby("condition", sort=True)
    }
    return write_json({"kind": ERRORS_KIND, "version": ERRORS_VERSION, "conditions": conditions}, path)


class LocalizerJitter:
    """Window shifts drawn from a localizer's measured out-of-fold errors, per condition.

    A draw picks one recorded error of the crop's condition (its slice and in-plane parts together, so their
    dependence is kept) and converts it to a shift of the cached window with the cache's `RoiConfig`:
    slices one to one in `target_window` caches; none in `full_series` caches (the crop spans the whole stack,
    so a wrong slice does not move it); in-plane mm to output pixels by the condition's margins
    (`margin_mode="mm"`: x px/mm = size / (left + right), y px/mm = size / (up + down)). With
    `margin_mode="thesis_px"` the crop scale depends on each image's size, so the in-plane shift stays
    uniform. Every part is rounded to whole slices and pixels and clipped to the stored pads.

    Args:
        errors: condition -> {"slice": [...], "dx_mm": [...], "dy_mm": [...]} (equal, non-zero lengths).
        source: where the errors come from, for messages.
    """

    def __init__(
        self, errors: Mapping[str, Mapping[str, Sequence[float]]], source: str = "localizer errors"
    ) -> None:
        self.source = source
        self.errors: dict[str, np.ndarray] = {}
        for name, fields in errors.items():
            try:
                condition = normalize_condition(name)
            except ValueError as e:
                raise ValueError(f"{source}: {e}") from None
            try:
                table = np.stack([np.asarray(fields[f], dtype=np.float64) for f in _FIELDS], axis=1)
            except (KeyError, TypeError, ValueError):
                table = np.zeros((0, 0))
            if table.ndim != 2 or table.shape[1:] != (3,) or not len(table) or not np.isfinite(table).all():
                raise ValueError(
                    f"{source}: condition {name!r} needs lists {list(_FIELDS)} of finite numbers, "
                    "all of one non-zero length"
                )
            self.errors[condition] = table  # (n, 3): slice, dx_mm, dy_mm

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> LocalizerJitter:
        """Read a file written by `write_localizer_errors`.

        Raises:
            FileNotFoundError: no such file; ValueError: not such a file, or malformed entries.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: localizer errors file not found")
        try:
            document = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(document, Mapping) or document.get("kind") != ERRORS_KIND:
            raise ValueError(f"{path}: not a localizer errors file (kind {ERRORS_KIND!r})")
        if document.get("version") != ERRORS_VERSION:
            raise ValueError(
                f"{path}: version {document.get('version')!r}; this code reads version {ERRORS_VERSION}"
            )
        if not isinstance(document.get("conditions"), Mapping):
            raise ValueError(f"{path}: 'conditions' must map condition -> errors")  # noqa: TRY004
        return cls(document["conditions"], source=str(path))

    def __contains__(self, condition: str) -> bool:
        return condition in self.errors

    def draw(
        self, condition: str, rng: np.random.Generator, config: RoiConfig, uniform_px: int = 0
    ) -> tuple[int, int, int]:
        """One recorded error of `condition` as a window shift (slices, rows, columns) of a `config` crop.

        Args:
            condition: the crop's condition (must be in the file: check with `in`).
            rng: the sample's generator (one error index, plus the uniform in-plane draws for thesis_px).
            config: the cache's `RoiConfig` (params.json "config"): geometry and pads.
            uniform_px: the largest uniform in-plane shift used with `margin_mode="thesis_px"`.
        """
        table = self.errors.get(condition)
        if table is None:
            raise KeyError(f"{self.source}: no errors recorded for {condition!r}")
        error_slice, dx_mm, dy_mm = table[int(rng.integers(len(table)))]
        ds = error_slice if config.mode == "target_window" else 0.0
        if config.margin_mode == "mm":
            left, right, up, down = config.margins(condition)
            dy, dx = dy_mm * config.size / (up + down), dx_mm * config.size / (left + right)
        else:
            limit = min(int(uniform_px), config.pad_px)
            dy, dx = (int(rng.integers(-limit, limit + 1)) for _ in range(2))
        s, p = config.pad_slices, config.pad_px
        return (
            int(np.clip(np.rint(ds), -s, s)),
            int(np.clip(np.rint(dy), -p, p)),
            int(np.clip(np.rint(dx), -p, p)),
        )
