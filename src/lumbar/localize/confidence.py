"""Does a study's level set make anatomical sense, and how sure is each prediction row of its crop?

The heatmap gives each point a confidence (`heatmap.point_confidence`: its probability mass near where it
was placed). That misses a localizer that is sure and wrong: a flipped series, two levels on one disc. The
anatomy catches those, so each study's points are checked in patient space (mm, through the DICOM geometry):

- **spacing**: along each column of five points (the canal; each foramen side) the distance between
  neighbouring levels is within `gap_ratio` of the column's median, and that median is a lumbar disc
  spacing (`gap_mm`); a column whose levels collapse or jump fails at the points on either side.
- **line**: an inner point lies within `off_line` median gaps of the midpoint of its neighbours (the
  canal's curvature bends it much less than that).
- **agreement**: seen from the side (patient left-right left out), the canal point and the two foramina of a
  level nearly coincide: each lies within `agreement` median gaps of their median (of the other, when only
  two), so the series that disagrees is named: a flipped series, a column shifted by one level. A column
  that disagrees at `column_disagreement` of its five levels fails at all five: a series is registered right
  or not, and a mirrored one agrees by chance only near the image's centre (seen on a flipped test series:
  three levels flagged, the two that passed were as wrong).
- **axial**: the subarticular points of a level come from the axial slice nearest the canal point; a slice
  farther than `axial_mm` from it fails them. (A doubtful canal point does not: on the synthetic test set
  most subarticular points under a failed canal point were within 3 mm, their own heatmap confidence
  tells them apart better.)

A failed point keeps its heatmap confidence but gets `plausible = 0`; `row_confidence` then gives its
prediction rows the confidence floor, so the ensemble moves them towards the prior
(`lumbar.ensemble.widen`). Points are not moved: a repair would need evidence the check does not have.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lumbar.core.constants import LEVELS
from lumbar.core.tables import table_row_ids
from lumbar.data.geometry import points_mm
from lumbar.localize.axial import FORAMINA, SPINAL

SUBARTICULAR = ("left_subarticular_stenosis", "right_subarticular_stenosis")

#: Confidence given to rows of an implausible point (the ensemble's widening reads it as "lost").
FLOOR = 1e-3


@dataclass(frozen=True)
class Limits:
    """Where a level set stops being plausible (see the module docstring).

    Chosen on the demo run's out-of-fold points (60 train studies): these flag 25 canal points, 14 of them
    more than 10 mm or more than one slice off (of 28 canal points more than 10 mm off); the tighter
    (0.6-1.6, 0.4, 0.5) flagged 35, 17 of them off.
    """

    gap_ratio: tuple[float, float] = (0.5, 2.0)
    gap_mm: tuple[float, float] = (15.0, 60.0)
    off_line: float = 0.5
    agreement: float = 0.7
    axial_mm: float = 10.0
    column_disagreement: int = 3


def _column_failures(points: np.ndarray, limits: Limits) -> tuple[np.ndarray, float, list[str]]:
    """(5, 3) mm points head to foot -> failed mask, median gap and reasons."""
    failed = np.zeros(len(points), bool)
    gaps = np.linalg.norm(np.diff(points, axis=0), axis=1)
    median = float(np.median(gaps))
    reasons = []
    if not limits.gap_mm[0] <= median <= limits.gap_mm[1]:
        failed[:] = True
        reasons.append(f"median level spacing {median:.0f} mm")
    ratio = gaps / max(median, 1e-6)
    for i in np.flatnonzero((ratio < limits.gap_ratio[0]) | (ratio > limits.gap_ratio[1])):
        failed[[i, i + 1]] = True
        reasons.append(f"{LEVELS[i]}-{LEVELS[i + 1]} {gaps[i]:.0f} mm apart (median {median:.0f})")
    off = np.linalg.norm(points[1:-1] - 0.5 * (points[:-2] + points[2:]), axis=1) / max(median, 1e-6)
    for i in np.flatnonzero(off > limits.off_line) + 1:
        failed[i] = True
        reasons.append(f"{LEVELS[i]} {off[i - 1] * median:.0f} mm off the line of its neighbours")
    return failed, median, reasons


def check_level_set(
    coords: pd.DataFrame,
    index: pd.DataFrame,
    axial_distance_mm: dict[str, float] | None = None,
    limits: Limits = Limits(),
) -> tuple[pd.DataFrame, list[str]]:
    """Mark each predicted point of one study plausible or not (`plausible` column, 1/0) and say why.

    Args:
        coords: the study's predicted coordinates (any subset of its 25 points).
        index: header index rows of the study (geometry of each instance).
        axial_distance_mm: level -> distance of the axial slice used from the canal point (`map_axial`).
        limits: the thresholds.

    Returns:
        The coordinates with `plausible`, and one note per failed check.
    """
    out = coords.reset_index(drop=True).copy()
    out["plausible"] = 1
    if out.empty:
        return out, []
    mm = points_mm(out[["study_id", "series_id", "instance_number", "x", "y"]], index)
    xyz = mm[["px", "py", "pz"]].to_numpy(float)
    notes, medians = [], []
    for condition in (SPINAL, *FORAMINA):
        rows = out.index[out["condition"] == condition]
        by_level = dict(zip(out.loc[rows, "level"], rows))
        if set(by_level) != set(LEVELS) or np.isnan(xyz[list(by_level.values())]).any():
            continue
        ordered = [by_level[lv] for lv in LEVELS]
        failed, median, reasons = _column_failures(xyz[ordered], limits)
        out.loc[np.asarray(ordered)[failed], "plausible"] = 0
        medians.append(median)
        notes += [f"{condition}: {r}" for r in reasons]
    disagree: dict[str, int] = {}
    if medians:
        unit = float(np.median(medians))
        for level in LEVELS:
            rows = out.index[(out["level"] == level) & out["condition"].isin((SPINAL, *FORAMINA))]
            rows = [r for r in rows if not np.isnan(xyz[r]).any()]
            if len(rows) < 2:
                continue
            sagittal = xyz[rows][
                :, 1:
            ]  # patient y (front-back) and z (head-foot): left-right apart, they coincide
            centre = np.median(sagittal, axis=0) if len(rows) > 2 else None
            for r, p in zip(rows, sagittal):
                off = (
                    float(np.linalg.norm(p - centre))
                    if centre is not None
                    else float(np.linalg.norm(sagittal[0] - sagittal[1]))
                )
                if off > limits.agreement * unit:
                    out.loc[r, "plausible"] = 0
                    disagree[out.loc[r, "condition"]] = disagree.get(out.loc[r, "condition"], 0) + 1
                    notes.append(
                        f"{out.loc[r, 'condition']} {level}: {off:.0f} mm from the level's other points"
                    )
        for (
            condition,
            count,
        ) in disagree.items():  # a series that disagrees at most levels lies at all of them
            if count >= limits.column_disagreement:
                out.loc[out["condition"] == condition, "plausible"] = 0
                notes.append(
                    f"{condition}: disagrees with the other columns at {count} of 5 levels, all failed"
                )
    for r in out.index[out["condition"].isin(SUBARTICULAR)]:
        if (axial_distance_mm or {}).get(out.loc[r, "level"], 0.0) > limits.axial_mm:
            out.loc[r, "plausible"] = 0
    far = sorted(
        {lv for lv in out.loc[out["condition"].isin(SUBARTICULAR) & (out["plausible"] == 0), "level"]}
    )
    if far:
        notes.append(
            f"subarticular at {', '.join(far)}: the nearest axial slice is over {limits.axial_mm:g} mm "
            "from the canal point"
        )
    return out, notes


def row_confidence(coords: pd.DataFrame) -> pd.DataFrame:
    """`row_id, confidence` of each prediction row from its crop's point; an implausible point
    (`plausible == 0`) gets `FLOOR`. Coordinates without a `confidence` column (ground truth) are sure: 1."""
    conf = coords["confidence"].to_numpy(float) if "confidence" in coords else np.ones(len(coords))
    if "plausible" in coords:
        conf = np.where(coords["plausible"].to_numpy() == 0, FLOOR, conf)
    return pd.DataFrame({"row_id": table_row_ids(coords).to_numpy(), "confidence": np.clip(conf, FLOOR, 1.0)})
