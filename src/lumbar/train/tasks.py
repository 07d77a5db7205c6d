"""Task modes: which conditions a model learns, how samples are formed, what it outputs and how it is judged.

A mode expands into one or more *units*; a unit is one model per fold (one `Task` here).

`competition` (Kaggle: all 5 conditions x 5 levels, 3 grades, written as the submission table):
    one level-agnostic model per condition group: `spinal`, `foraminal`, `subarticular`. A sample is one crop
    (study, condition, level); the level (one-hot) and, for the sided groups, the side (1 = right) go in as
    meta input. With `mirror_right` (default) right-side crops are mirrored onto the left, so the left and
    right foramina (and recesses) share one appearance: pooling levels gives the model 5x the data, pooling
    sides 10x (the 3rd-place team's recipe). Random left-right mirrors are then off for the sided groups (an
    unmirrored right-looking crop is never seen at inference); the spinal canal (midline) is mirrored at
    random with its label unchanged.

`single_multiclass`, `single_binary` (the thesis): each condition is its own model (one unit per condition;
    default scs, lnfn, rnfn); a sample is one crop with the level one-hot as meta. A random mirror is used
    only for the midline spinal canal (mirroring a left foramen would make it a right one, another task).

`multi_multiclass`, `multi_binary` (the thesis): ONE network for all the conditions together (default scs,
    lnfn, rnfn). A sample is one (study, level): the crops of the conditions are the input channels (in the
    order of `conditions`; a missing crop is zeros and its target is masked) and the head has one group of
    logits per condition. "Multi" thus means one model that sees all conditions of a level at once and
    predicts them jointly. A left-right mirror is anatomically valid here: every channel is mirrored and the
    left and right channels *and their labels* swap, so it is on by default.

Binary modes predict Normal/Mild vs Moderate+Severe; their rows in the prediction tables carry p(positive) in
`moderate` and 0 in `severe`, so `p(normal_mild) + p(moderate) + p(severe) = 1` still holds and the thesis
reports (`lumbar.scoring.thesis`, which score p(moderate) + p(severe)) read them directly.

The mirror axis of a crop follows from its series: sagittal stacks are ordered along the left-right normal
(index 0 = patient right), so a mirror reverses the slices; axial images have the patient's left-right along
their columns, so a mirror reverses the width.

Second views (`lumbar.preprocess.views`, "crop" layout): a unit given `views` reads, beside each primary crop,
the same target's crop from each view's series as further input channels (a missing one is zeros); the
target, grade, meta and mirror rules stay the primary crop's, each channel mirrored on its own series' axis.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lumbar.core.constants import (
    AXIAL_T2,
    CONDITION_ABBREV,
    CONDITION_GROUP,
    CONDITION_SERIES,
    CONDITION_SIDE,
    CONDITIONS,
    GRADES,
    GROUPS,
    LEVELS,
    normalize_condition,
)
from lumbar.preprocess.views import get_view
from lumbar.scoring.metric import TERMS, score_aligned
from lumbar.scoring.thesis import TASK_MODES as THESIS_MODES
from lumbar.scoring.thesis import slice_metrics, targets_and_scores

#: The thesis's four modes (`lumbar.scoring.thesis`) and the competition's (every condition, the metric's
#: weights).
TASK_MODES: tuple[str, ...] = (*THESIS_MODES, "competition")
THESIS_CONDITIONS: tuple[str, ...] = (
    "spinal_canal_stenosis",
    "left_neural_foraminal_narrowing",
    "right_neural_foraminal_narrowing",
)
#: The mirror image of each condition (midline conditions map to themselves).
MIRROR_CONDITION: dict[str, str] = {
    c: c.replace("left_", "right_") if CONDITION_SIDE[c] == "left" else c.replace("right_", "left_")
    for c in CONDITIONS
}


def series_mirror_axis(series: str) -> int:
    """The left-right axis of a (depth, H, W) crop from a series: the width on axial images, else the
    slices."""
    return 2 if series == AXIAL_T2 else 0


#: Axis of a (depth, H, W) crop that runs left-right in the patient.
MIRROR_AXIS: dict[str, int] = {c: series_mirror_axis(CONDITION_SERIES[c]) for c in CONDITIONS}
ITEM_COLUMNS = ["item_id", "study_id", "level", "conditions", "files", "grades", "side", "mirror"]


@dataclass(frozen=True)
class Task:
    """One unit of a task mode: the samples, inputs and outputs of one model (per fold).

    Attributes:
        name: unit name, used for folders ("spinal", "scs", "multi", ...).
        mode: the task mode it belongs to.
        conditions: the conditions it predicts (channel order in the "channels" layout).
        layout: "crop" (a sample is one crop; conditions pooled) or "channels" (a sample is one study and
            level; one channel and one target per condition).
        num_classes: 3 (grades) or 2 (Normal/Mild vs Moderate+Severe).
        mirror_right: mirror right-side crops onto the left at load time ("crop" layout).
        side_meta: add the side flag (1 = right) to the meta input.
        views: second views read as further channels beside each primary crop ("crop" layout only).
    """

    name: str
    mode: str
    conditions: tuple[str, ...]
    layout: str
    num_classes: int
    mirror_right: bool = False
    side_meta: bool = False
    views: tuple[str, ...] = ()

    @property
    def binary(self) -> bool:
        return self.num_classes == 2

    @property
    def num_targets(self) -> int:
        return 1 if self.layout == "crop" else len(self.conditions)

    @property
    def in_channels(self) -> int:
        return 1 + len(self.views) if self.layout == "crop" else len(self.conditions)

    def channel_kinds(self, condition: str | None = None) -> tuple[str, ...]:
        """The kind of crop each input channel holds (`lumbar.preprocess.views.View.kind` for a view); for the
        "crop" layout, of the item whose condition is given (default: the unit's first)."""

        if self.layout == "channels":
            return tuple(CONDITION_SERIES[c] for c in self.conditions)
        return (CONDITION_SERIES[condition or self.conditions[0]], *(get_view(v).kind for v in self.views))

    @property
    def crop_kinds(self) -> frozenset[str]:
        """Every kind of crop the unit reads, over its conditions and channels (for test-time
        augmentation)."""
        return frozenset(k for c in self.conditions for k in self.channel_kinds(c))

    def mirror_axes(self, condition: str | None = None) -> tuple[int, ...]:
        """The left-right axis of each input channel's crop (see `channel_kinds`)."""

        if self.layout == "channels":
            return tuple(MIRROR_AXIS[c] for c in self.conditions)
        return (
            MIRROR_AXIS[condition or self.conditions[0]],
            *(series_mirror_axis(get_view(v).series) for v in self.views),
        )

    @property
    def num_outputs(self) -> int:
        return self.num_targets * self.num_classes

    @property
    def num_meta(self) -> int:
        return len(LEVELS) + int(self.side_meta)

    @property
    def can_mirror(self) -> bool:
        """Whether a random left-right mirror (with the label swap) is anatomically valid for this unit."""
        closed = all(MIRROR_CONDITION[c] in self.conditions for c in self.conditions)
        sided = any(CONDITION_SIDE[c] for c in self.conditions)
        return closed and not (self.mirror_right and sided)

    @property
    def metric(self) -> str:
        """Validation metric for early stopping: the competition's loss, or the thesis's balanced accuracy."""
        return "competition" if self.mode == "competition" else "balanced_accuracy"

    @property
    def higher_is_better(self) -> bool:
        return self.metric != "competition"

    def items(
        self, samples: pd.DataFrame, labels: pd.DataFrame | None = None, views: pd.DataFrame | None = None
    ) -> pd.DataFrame:
        """The unit's samples joined with their grades.

        Args:
            samples: the cache's `samples.parquet` table.
            labels: the long label table; None (inference) leaves every grade -1.
            views: the cache's second views (`views.parquet`), needed when the unit has `views`.

        Returns:
            One row per sample (`ITEM_COLUMNS`): tuple columns `conditions`, `grades` (-1 = no label) of
            length `num_targets`, `files` of length `in_channels` (a view's file None where it is missing);
            `side` (1 = a right-side crop); `mirror` (mirror at load time).

        Raises:
            ValueError: the unit has views and `views` holds none of one of them.
        """
        rows = samples[samples["condition"].isin(self.conditions)]
        rows = rows.assign(grade=_grades(rows, labels))
        if self.layout == "crop":
            side = (rows["condition"].map(CONDITION_SIDE) == "right").to_numpy()
            files = [(f,) for f in rows["file"]]
            for view in self.views:
                files = [(*f, v) for f, v in zip(files, _view_files(rows, views, view))]
            out = pd.DataFrame(
                {
                    "item_id": rows["sample_id"].astype(str).to_numpy(),
                    "study_id": rows["study_id"].astype("int64").to_numpy(),
                    "level": rows["level"].to_numpy(),
                    "conditions": [(c,) for c in rows["condition"]],
                    "files": files,
                    "grades": [(int(g),) for g in rows["grade"]],
                    "side": side.astype(np.int64),
                    "mirror": side & self.mirror_right,
                }
            )
        else:
            records = []
            for (study, level), group in rows.groupby(["study_id", "level"], sort=True):
                by = dict(zip(group["condition"], zip(group["file"], group["grade"])))
                records.append(
                    {
                        "item_id": f"{study}_{level}",
                        "study_id": int(study),
                        "level": level,
                        "conditions": self.conditions,
                        "files": tuple(by[c][0] if c in by else None for c in self.conditions),
                        "grades": tuple(int(by[c][1]) if c in by else -1 for c in self.conditions),
                        "side": 0,
                        "mirror": False,
                    }
                )
            out = pd.DataFrame(records, columns=ITEM_COLUMNS)
        return out.sort_values("item_id", kind="stable").reset_index(drop=True)[ITEM_COLUMNS]

    def targets(self, grades: np.ndarray) -> np.ndarray:
        """Class targets from grades (-1 kept as "no label"); binary collapses Moderate and Severe."""
        grades = np.asarray(grades, dtype=np.int64)
        if self.binary:
            return np.where(grades < 0, -1, (grades >= 1).astype(np.int64))
        return grades

    def prediction_rows(self, items: pd.DataFrame, probs: np.ndarray) -> pd.DataFrame:
        """Long prediction table from per-item class probabilities.

        Args:
            items: the items predicted (as from `items`).
            probs: (N, num_targets, num_classes) probabilities.

        Returns:
            `study_id, condition, level, grade, normal_mild, moderate, severe` (grade -1 = no label), one row
            per item and target whose crop exists.
        """
        probs = np.asarray(probs, dtype=np.float64).reshape(len(items), self.num_targets, self.num_classes)
        if self.binary:
            probs = np.concatenate([probs, np.zeros_like(probs[..., :1])], axis=-1)
        rows = []
        for i, item in enumerate(items.itertuples(index=False)):
            for t, (condition, file) in enumerate(zip(item.conditions, item.files)):
                if file is None:
                    continue
                rows.append((item.study_id, condition, item.level, item.grades[t], *probs[i, t]))
        return pd.DataFrame(rows, columns=["study_id", "condition", "level", "grade", *GRADES])


def _view_files(rows: pd.DataFrame, views: pd.DataFrame | None, view: str) -> list[str | None]:
    """Each primary sample's file of a second view, None where the view is missing for it."""
    if views is None or "view" not in views or not (views["view"] == view).any():
        raise ValueError(
            f"the cache holds no {view!r} view; build it with RoiConfig views including {view!r}"
        )
    files = views[views["view"] == view].set_index("sample_id")["file"]
    found = files.reindex(rows["sample_id"].astype(str) + f"@{view}")
    return [None if pd.isna(f) else str(f) for f in found]


def _grades(rows: pd.DataFrame, labels: pd.DataFrame | None) -> np.ndarray:
    if labels is None or rows.empty:
        return np.full(len(rows), -1, dtype=np.int64)
    graded = labels[labels["grade"].notna()]
    key = graded.set_index(["study_id", "condition", "level"])["grade"].astype(int)
    index = pd.MultiIndex.from_arrays([rows["study_id"].astype("int64"), rows["condition"], rows["level"]])
    return key.reindex(index).fillna(-1).astype(np.int64).to_numpy()


def resolve_conditions(mode: str, conditions: tuple[str, ...] | list[str] = ()) -> tuple[str, ...]:
    """The conditions of a run: given ones normalised (abbreviations allowed), or the mode's default."""
    if mode not in TASK_MODES:
        raise ValueError(f"unknown task mode {mode!r}; expected one of {TASK_MODES}")
    if not conditions:
        return CONDITIONS if mode == "competition" else THESIS_CONDITIONS
    out = tuple(dict.fromkeys(normalize_condition(c) for c in conditions))
    return tuple(c for c in CONDITIONS if c in out)


def build_tasks(
    mode: str,
    conditions: tuple[str, ...] | list[str] = (),
    mirror_right: bool = True,
    views: tuple[str, ...] | list[str] = (),
) -> list[Task]:
    """The units (models per fold) of a task mode; see the module docstring.

    Args:
        mode: one of `TASK_MODES`.
        conditions: conditions to cover (empty = the mode's default).
        mirror_right: competition mode: mirror right-side crops onto the left.
        views: second views (`lumbar.preprocess.views`); each joins the "crop" layout units of its condition
            group.
    """

    conditions = resolve_conditions(mode, conditions)
    tasks = _build_tasks(mode, conditions, mirror_right)
    return [
        dataclasses.replace(
            t, views=tuple(v for v in views if get_view(v).group == CONDITION_GROUP[t.conditions[0]])
        )
        if t.layout == "crop"
        else t
        for t in tasks
    ]


def _build_tasks(mode: str, conditions: tuple[str, ...], mirror_right: bool) -> list[Task]:
    if mode == "competition":
        tasks = []
        for group in GROUPS:
            members = tuple(c for c in conditions if CONDITION_GROUP[c] == group)
            if members:
                sided = any(CONDITION_SIDE[c] for c in members)
                tasks.append(
                    Task(
                        group, mode, members, "crop", 3, mirror_right=mirror_right and sided, side_meta=sided
                    )
                )
        return tasks
    scope, classes = mode.split("_")
    num_classes = 2 if classes == "binary" else 3
    if scope == "single":
        return [Task(CONDITION_ABBREV[c], mode, (c,), "crop", num_classes) for c in conditions]
    return [Task("multi", mode, conditions, "channels", num_classes)]


def validation_score(task: Task, table: pd.DataFrame) -> float:
    """The early-stopping metric of a unit on its validation predictions (long table with grades).

    competition: the competition metric restricted to the unit's rows: the mean of the terms its conditions
    define (spinal: the spinal and any-severe-spinal terms; foraminal or subarticular: that group's term);
    lower is better. Thesis modes: balanced accuracy over all rows of the unit; higher is better.
    """
    table = table[table["grade"] >= 0]
    if table.empty:
        return float("nan")
    if task.metric == "competition":
        result = score_aligned(table.reset_index(drop=True))
        return float(np.nanmean([getattr(result, t) for t in TERMS]))
    y, scores = targets_and_scores(table, "binary" if task.binary else "multiclass")
    return slice_metrics(y, scores)["balanced_accuracy"]
