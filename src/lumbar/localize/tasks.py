"""The three localization tasks and their training targets, built from coordinates and the header index.

- `sag_t2`: Sagittal T2/STIR, the 5 spinal-canal points (one per level).
- `sag_t1`: Sagittal T1, 10 points: left foramen L1/L2..L5/S1, then right.
- `axial`: Axial T2, one sample per study and level: the left and right subarticular points on that level's
  slice (the model is level-agnostic: which slice belongs to which level comes from the sagittal points).

Normalised coordinates, used by every model: u = (x + 0.5) / columns, v = (y + 0.5) / rows (pixel centres,
so resizing the image keeps them), and for sagittal stacks z = slice_index / (n_slices - 1) in the stack's
geometric order (index 0 = patient right-most, see `lumbar.data.dicom`), so z is independent of how many
slices the series has.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lumbar.core.constants import AXIAL_T2, LEVELS, SAGITTAL_T1, SAGITTAL_T2

log = logging.getLogger(__name__)

#: Points within this many pixels of the image corner are bogus labels in the real data (about 13 spinal
#: points sit near (5, 5)); they are left out of training.
CORNER_PX = 16.0


@dataclass(frozen=True)
class Task:
    """One localization model: which series it reads and which points it predicts.

    Attributes:
        name: model name in the run manifest.
        series_description: the series it reads.
        points: (condition, level) of each predicted point; for `axial` the level is "" (any level).
        mirror: the permutation of `points` under a left-right mirror of the patient (a z flip of a
            sagittal stack, an x flip of an axial slice), used for mirror augmentation.
        plane: "sagittal" (whole stack in, x, y and slice out) or "axial" (one slice and its neighbours in,
            x and y out).
    """

    name: str
    series_description: str
    points: tuple[tuple[str, str], ...]
    mirror: tuple[int, ...]
    plane: str


def _side(condition: str, levels=LEVELS) -> tuple[tuple[str, str], ...]:
    return tuple((condition, lv) for lv in levels)


TASKS: dict[str, Task] = {
    "sag_t2": Task("sag_t2", SAGITTAL_T2, _side("spinal_canal_stenosis"), tuple(range(5)), "sagittal"),
    "sag_t1": Task(
        "sag_t1",
        SAGITTAL_T1,
        _side("left_neural_foraminal_narrowing") + _side("right_neural_foraminal_narrowing"),
        tuple(range(5, 10)) + tuple(range(5)),
        "sagittal",
    ),
    "axial": Task(
        "axial",
        AXIAL_T2,
        (("left_subarticular_stenosis", ""), ("right_subarticular_stenosis", "")),
        (1, 0),
        "axial",
    ),
}


def get_task(name: str) -> Task:
    """The task of a name; an unknown name is an error listing the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown localizer task {name!r}; known: {sorted(TASKS)}") from None


def placed_coordinates(coords: pd.DataFrame, index: pd.DataFrame) -> pd.DataFrame:
    """Coordinates joined with their instance's place in the index.

    Adds series_description, stack_index, slice_index, rows, columns, n_slices (of that stack) and the
    normalised u, v, z. Rows whose instance is not in the index (no images here) are dropped, and so are
    bogus corner points (`CORNER_PX`).
    """
    keys = ["study_id", "series_id", "instance_number"]
    stack_size = index.groupby(["study_id", "series_id", "stack_index"])["slice_index"].transform("size")
    place = index.assign(n_slices=stack_size)[
        keys + ["series_description", "stack_index", "slice_index", "rows", "columns", "n_slices"]
    ].drop_duplicates(keys)
    placed = coords.merge(place, on=keys, how="inner")
    corner = (placed["x"] < CORNER_PX) & (placed["y"] < CORNER_PX)
    if corner.any():
        log.info("left out %d corner points (bogus labels)", int(corner.sum()))
    placed = placed[~corner].reset_index(drop=True)
    n = placed["n_slices"].to_numpy(float)
    return placed.assign(
        u=(placed["x"] + 0.5) / placed["columns"],
        v=(placed["y"] + 0.5) / placed["rows"],
        z=np.where(n > 1, placed["slice_index"] / np.maximum(n - 1, 1), 0.5),
    )


@dataclass
class SagittalSample:
    """One sagittal stack with its target points.

    Attributes:
        study_id, series_id, stack_index: which stack.
        points: (K, 3) normalised u, v, z (NaN where the point is not labelled).
    """

    study_id: int
    series_id: int
    stack_index: int
    points: np.ndarray

    @property
    def key(self) -> str:
        return f"{self.study_id}_{self.series_id}_{self.stack_index}"


@dataclass
class AxialSample:
    """One axial slice (the level's labelled slice) with the left and right points on it.

    Attributes:
        study_id, series_id, stack_index, slice_index: the centre slice.
        level: the level it was labelled at (for reporting only; the model is level-agnostic).
        points: (2, 3) normalised u, v and z = 0.5 (NaN where not labelled).
    """

    study_id: int
    series_id: int
    stack_index: int
    slice_index: int
    level: str
    points: np.ndarray

    @property
    def key(self) -> str:
        return f"{self.study_id}_{self.series_id}_{self.stack_index}_{self.slice_index}"


def sagittal_samples(task: Task, placed: pd.DataFrame) -> list[SagittalSample]:
    """One sample per stack of the task's series that carries at least one of its points.

    A study's points on another series (e.g. spinal points labelled on Sagittal T1) are not used.
    """
    conditions = {c for c, _ in task.points}
    rows = placed[
        (placed["series_description"] == task.series_description) & placed["condition"].isin(conditions)
    ]
    slot = {p: k for k, p in enumerate(task.points)}
    samples = []
    for (study, series, stack), group in rows.groupby(["study_id", "series_id", "stack_index"], sort=True):
        pts = np.full((len(task.points), 3), np.nan)
        for r in group.itertuples():
            k = slot.get((r.condition, r.level))
            if k is not None and np.isnan(pts[k, 0]):
                pts[k] = (r.u, r.v, r.z)
        samples.append(SagittalSample(int(study), int(series), int(stack), pts))
    return samples


def axial_samples(task: Task, placed: pd.DataFrame) -> list[AxialSample]:
    """One sample per (study, level) with subarticular points on an axial series.

    The centre slice is the left point's slice (the right one's when only it is labelled); the other
    side's point is used when it lies on the same stack (usually the same or a neighbouring slice).
    """
    conditions = [c for c, _ in task.points]
    rows = placed[
        (placed["series_description"] == task.series_description) & placed["condition"].isin(conditions)
    ]
    samples = []
    for (study, level), group in rows.groupby(["study_id", "level"], sort=True):
        group = group.assign(order=group["condition"].map({c: i for i, c in enumerate(conditions)}))
        centre = group.sort_values("order").iloc[0]
        same_stack = group[
            (group["series_id"] == centre["series_id"]) & (group["stack_index"] == centre["stack_index"])
        ]
        pts = np.full((len(conditions), 3), np.nan)
        for r in same_stack.itertuples():
            if np.isnan(pts[r.order, 0]):
                pts[r.order] = (r.u, r.v, 0.5)
        place = (int(centre["series_id"]), int(centre["stack_index"]), int(centre["slice_index"]))
        samples.append(AxialSample(int(study), *place, str(level), pts))
    return samples
