"""ROI tensors of one study: every coordinate row becomes one (depth, height, width) array.

Each series of the study is read once (headers only, `read_series`), for all conditions and levels that
use it; then only the slices the missing samples need are decoded (`Stack.load(indices)`), once per
stack. A coordinate row names its own series and instance, so the same code serves the spinal canal
(Sagittal T2/STIR point), the foramina (the Sagittal T1 slice of that side's point, or in a study without
Sagittal T1 the Sagittal T2/STIR slice the localizer placed it on) and the subarticular recesses (the Axial T2
slice of the level, left and right as separate samples), whether the coordinates are ground truth or a
localizer's predictions: no condition is tied to a series here.

Per sample: the raw slices it needs are clipped to their own 1-99 percentiles and scaled to [0, 1]
(`intensity`), the window is resampled around the label point projected onto each slice (`windows`),
slices are stacked or interpolated along depth, the filter runs on the resampled crop (`filters`), and
the result is stored as float16.

A series or file that cannot be read fails only the samples that need it; each failure is returned with
its coordinate row and the reason. Only the errors bad data raises are caught
(`lumbar.core.fallback.DATA_ERRORS`); a programming error or running out of memory stops the build.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lumbar.core.atomic import atomic_path
from lumbar.core.constants import CONDITION_GROUP, CONDITIONS, row_id
from lumbar.core.fallback import DATA_ERRORS
from lumbar.core.paths import series_dir
from lumbar.data.dicom import (
    DicomReadError,
    Series,
    Stack,
    Volume,
    pixel_to_patient,
    read_series,
    series_files,
)
from lumbar.preprocess.config import RoiConfig
from lumbar.preprocess.filters import apply_filter
from lumbar.preprocess.intensity import percentile_range, rescale
from lumbar.preprocess.views import derive_rows
from lumbar.preprocess.windows import (
    crop_box,
    interpolate_depth,
    label_position,
    point_in_output,
    project_in_plane,
    slice_positions,
    source_slices,
    warp_crop,
)

#: Columns of samples.parquet (the CONTRACTS.md columns first, then geometry of the stored array).
SAMPLE_COLUMNS = [
    "sample_id",
    "study_id",
    "condition",
    "level",
    "series_id",
    "instance_number",
    "x",
    "y",
    "file",
    "depth",
    "height",
    "width",
    "pad_slices",
    "pad_px",
    "stack_index",
    "slice_index",
    "n_slices",
    "edge_slices",
    "point_d",
    "point_y",
    "point_x",
]
#: Columns of views.parquet: a second view's samples (`lumbar.preprocess.views`), joined to the primary ones.
VIEW_COLUMNS = [*SAMPLE_COLUMNS, "view"]
#: Columns of failures.csv.
FAILURE_COLUMNS = [
    "sample_id",
    "study_id",
    "condition",
    "level",
    "series_id",
    "instance_number",
    "x",
    "y",
    "error",
]
#: Columns of view_failures.csv: target rows without a second view, and why.
VIEW_FAILURE_COLUMNS = [*FAILURE_COLUMNS, "view"]


def sample_file(study_id: int, condition: str, level: str, view: str = "") -> str:
    """Path of a sample's array relative to the cache folder (a second view's: `..._<level>@<view>.npy`)."""
    return f"{int(study_id)}/{condition}_{level}{'@' + view if view else ''}.npy"


def _sample_id(row: dict) -> str:
    """The row's sample id: its row id, tagged `@<view>` for a second view (`lumbar.preprocess.views`)."""
    view = row.get("view") or ""
    return row_id(row["study_id"], row["condition"], row["level"]) + (f"@{view}" if view else "")


def _crop_condition(row: dict) -> str:
    """The condition whose margins frame the row's crop: its own, or a second view's `crop_as` group's."""
    group = row.get("crop_as")
    return row["condition"] if not group else next(c for c in CONDITIONS if CONDITION_GROUP[c] == group)


def save_atomic(array: np.ndarray, path: Path) -> None:
    """Write a .npy through a temporary file and a rename, so a killed run leaves no partial sample."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


@dataclass
class StudyResult:
    """What building one study produced: metadata rows of its samples (built or already present)."""

    study_id: int
    samples: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    view_samples: list[dict] = field(default_factory=list)
    view_failures: list[dict] = field(default_factory=list)
    built: int = 0
    skipped: int = 0
    notes: list[str] = field(default_factory=list)


def _failure(row: dict, error: str) -> dict:
    return {
        "sample_id": _sample_id(row),
        **{k: row[k] for k in ("study_id", "condition", "level", "series_id", "instance_number", "x", "y")},
        "error": error,
    }


def _decode(stack: Stack, indices: list[int]) -> tuple[dict[int, Volume], dict[int, str]]:
    """Decode slices of a stack in one call; on a bad file fall back to one by one to find which failed."""
    if not indices:
        return {}, {}
    try:
        vol = stack.load(indices)
        return {i: _one(vol, k) for k, i in enumerate(indices)}, {}
    except DicomReadError:
        good, bad = {}, {}
        for i in indices:
            try:
                good[i] = stack.load([i])
            except DicomReadError as e:
                bad[i] = str(e)
        return good, bad


def _one(vol: Volume, k: int) -> Volume:
    return Volume(
        vol.pixels[k : k + 1],
        vol.instance_numbers[k : k + 1],
        vol.positions[k : k + 1],
        vol.orientations[k : k + 1],
        vol.spacings[k : k + 1],
        vol.paths[k : k + 1],
    )


def render_sample(
    slices: dict[int, Volume],
    positions: np.ndarray,
    point_mm: np.ndarray,
    condition: str,
    config: RoiConfig,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """One sample's tensor from its decoded slices.

    Args:
        slices: stack index -> that slice as a one-slice `Volume` (every index of `source_slices`).
        positions: fractional stack positions of the output slices (`slice_positions`).
        point_mm: the label point in patient coordinates (mm).
        condition: selects the crop margins.
        config: the cache parameters.
        value_range: the (low, high) percentiles of these slices when already known (samples sharing a
            window share them); computed otherwise.

    Returns:
        float16 (len(positions), size + 2 * pad_px, size + 2 * pad_px) in [0, 1].
    """
    need = source_slices(positions)
    raw = np.concatenate([slices[i].pixels for i in need])
    lo, hi = value_range or percentile_range(raw, config.low_percentile, config.high_percentile)
    geometry = [
        np.concatenate([getattr(slices[i], a) for i in need])
        for a in ("positions", "orientations", "spacings")
    ]
    xs, ys = project_in_plane(point_mm, *geometry)
    margins, out_hw = config.margins(condition), (config.size, config.size)
    crops = {}
    for k, i in enumerate(need):
        box = crop_box(
            xs[k], ys[k], margins, config.margin_mode, raw.shape[1:], geometry[2][k], config.reference_px
        )
        crops[int(i)] = warp_crop(rescale(raw[k], lo, hi), box, out_hw, config.pad_px)
    stack = apply_filter(config.filter, interpolate_depth(crops, positions))
    return np.clip(stack, 0.0, 1.0).astype(np.float16)


@dataclass
class _Plan:
    """Where one coordinate row's sample comes from."""

    row: dict
    stack_index: int
    slice_index: int
    n_slices: int
    positions: np.ndarray
    edge_slices: int
    file: str


def _plan(row: dict, stack_index: int, slice_index: int, n_slices: int, config: RoiConfig) -> _Plan:
    before, after = config.slab(row["condition"])
    positions, edge = slice_positions(
        config.mode, n_slices, slice_index, before, after, config.depth, config.pad_slices
    )
    file = sample_file(row["study_id"], row["condition"], row["level"], row.get("view") or "")
    return _Plan(row, stack_index, slice_index, n_slices, positions, edge, file)


def _sample_row(plan: _Plan, config: RoiConfig) -> dict:
    """The samples.parquet row of a planned sample (a function of its coordinates, stack and config)."""
    row = plan.row
    point_y, point_x = point_in_output(
        config.margins(_crop_condition(row)), (config.size,) * 2, config.pad_px
    )
    point_d = label_position(
        config.mode,
        plan.n_slices,
        plan.slice_index,
        config.slab(row["condition"])[0],
        config.depth,
        config.pad_slices,
    )
    return {
        "sample_id": _sample_id(row),
        **{k: row[k] for k in ("study_id", "condition", "level", "series_id", "instance_number", "x", "y")},
        **({"view": row["view"]} if row.get("view") else {}),
        "file": plan.file,
        "depth": config.depth_of(row["condition"]),
        "height": config.size,
        "width": config.size,
        "pad_slices": config.pad_slices,
        "pad_px": config.pad_px,
        "stack_index": plan.stack_index,
        "slice_index": plan.slice_index,
        "n_slices": plan.n_slices,
        "edge_slices": plan.edge_slices,
        "point_d": point_d,
        "point_y": point_y,
        "point_x": point_x,
    }


def _write_sample(
    series: Series, plan: _Plan, good: dict[int, Volume], ranges: dict, cache: Path, config: RoiConfig
) -> None:
    """Render one planned sample from the decoded slices and write it atomically."""
    h = series.stacks[plan.stack_index].headers[plan.slice_index]
    point_mm = pixel_to_patient(h.position, h.orientation, h.pixel_spacing, plan.row["x"], plan.row["y"])
    key = (plan.stack_index, tuple(source_slices(plan.positions)))
    if key not in ranges:  # e.g. the five spinal levels on one slice share one window
        raw = np.concatenate([good[i].pixels for i in key[1]])
        ranges[key] = percentile_range(raw, config.low_percentile, config.high_percentile)
    array = render_sample(good, plan.positions, point_mm, _crop_condition(plan.row), config, ranges[key])
    save_atomic(array, cache / plan.file)


def _build_series(
    series: Series, group: list[dict], cache: Path, config: RoiConfig, result: StudyResult
) -> None:
    """The samples of one series: plan each row, decode once what the missing ones need, write them."""
    plans = []
    for row in group:
        try:
            stack_index, slice_index = series.stack_of_instance(int(row["instance_number"]))
        except DicomReadError as e:
            result.failures.append(_failure(row, str(e)))
            continue
        plans.append(_plan(row, stack_index, slice_index, len(series.stacks[stack_index]), config))
    missing = [p for p in plans if not (cache / p.file).is_file()]
    missing_files = {p.file for p in missing}
    decoded: dict[int, tuple[dict[int, Volume], dict[int, str]]] = {}
    for si in sorted({p.stack_index for p in missing}):
        wanted = {int(i) for p in missing if p.stack_index == si for i in source_slices(p.positions)}
        decoded[si] = _decode(series.stacks[si], sorted(wanted))
    ranges: dict[tuple, tuple[float, float]] = {}
    for plan in plans:
        if plan.file in missing_files:
            good, bad = decoded[plan.stack_index]
            errors = [bad[int(i)] for i in source_slices(plan.positions) if int(i) in bad]
            if errors:
                result.failures.append(_failure(plan.row, errors[0]))
                continue
            try:
                _write_sample(series, plan, good, ranges, cache, config)
            except (
                DATA_ERRORS
            ) as e:  # one odd file must not stop a 2,000-study run; it is reported, and counted
                result.failures.append(_failure(plan.row, f"{series.folder}: {type(e).__name__}: {e}"))
                continue
            result.built += 1
        else:
            result.skipped += 1
        result.samples.append(_sample_row(plan, config))


def build_study(
    study_id: int, rows: list[dict], data_dir: str, split: str, cache_dir: str, config: RoiConfig
) -> StudyResult:
    """Build the missing samples of one study and describe all of them; then its second views
    (`RoiConfig.views`), from the same rows through the series already opened.

    Args:
        study_id: the study.
        rows: its coordinate rows (study_id, series_id, instance_number, condition, level, x, y), at most
            one per (condition, level).
        data_dir: competition data folder.
        split: "train" or "test".
        cache_dir: the cache folder; samples whose file exists are not rebuilt.
        config: the cache parameters.
    """
    result = StudyResult(int(study_id))
    opened = _build_rows(rows, {}, data_dir, split, Path(cache_dir), config, result)
    if config.views:  # second views: their points derived from these rows through the opened series' geometry
        derived, failed = derive_rows(config.views, rows, opened)
        views = StudyResult(int(study_id))
        _build_rows(derived, opened, data_dir, split, Path(cache_dir), config, views)
        result.view_samples = views.samples
        result.view_failures = [_failure(r, r["error"]) | {"view": r["view"]} for r in failed]
        result.view_failures += [f | {"view": f["sample_id"].rsplit("@", 1)[-1]} for f in views.failures]
        result.built += views.built
        result.skipped += views.skipped
        result.notes += views.notes
    return result


def _build_rows(
    rows: list[dict],
    opened: dict[int, Series],
    data_dir: str,
    split: str,
    cache: Path,
    config: RoiConfig,
    result: StudyResult,
) -> dict[int, Series]:
    """Build the samples of coordinate rows series by series, opening each series once (`opened` reused and
    extended); returns the series read."""
    by_series: dict[int, list[dict]] = {}
    for row in rows:
        by_series.setdefault(int(row["series_id"]), []).append(row)
    for series_id, group in by_series.items():
        series = opened.get(series_id)
        if series is None:
            folder = series_dir(Path(data_dir), split, int(result.study_id), series_id)
            try:
                series = read_series(folder, skip_unreadable=True)
            except DicomReadError as e:
                result.failures += [_failure(r, str(e)) for r in group]
                continue
            except DATA_ERRORS as e:  # malformed geometry and the like: reported and counted, not fatal
                result.failures += [_failure(r, f"{folder}: {type(e).__name__}: {e}") for r in group]
                continue
            unreadable = len(series_files(folder)) - len(series.headers)
            if unreadable:
                result.notes.append(f"{folder}: {unreadable} unreadable file(s) left out of the series")
            opened[series_id] = series
        _build_series(series, group, cache, config, result)
    return opened
