"""Extra coordinate files merged into the competition's: the community's corrected set, or one's own.

2nd, 4th and 5th place trained on the corrected and extended coordinates of the Kaggle dataset
`brendanartley/lumbar-coordinate-pretraining-dataset` (`coords_rsna_improved.csv`). Two formats are read:

    competition   `study_id, series_id, instance_number, condition, level, x, y` (pixels), as
                  `train_label_coordinates.csv`
    corrected     `series_id, relative_x, relative_y, condition, side, instance_number, study_id, level`
                  (an unnamed index column is ignored), the point as fractions of the image's width and
                  height. The real file names the side in the condition ("Left Neural Foraminal
                  Narrowing", "Right Subarticular Stenosis") and then its `side` column does not count (it
                  reads R for both subarticular sides); a condition without its side ("Spinal Canal
                  Stenosis", or a bare "Neural Foraminal Narrowing") takes `side`, L or R

Every row is checked against the DICOM it names, through the header index: the instance must be among the
study's images and the point inside that image (a relative point becomes pixels by the instance's own columns
and rows). A bad row is dropped, counted and named in the report, never silently.

The merge rule: a row of an extra file replaces the competition's row for the same study, condition and level
(later files replace earlier ones); a row for a target the competition has no point for is added. The
corrected set gives the canal point once per side; the right side's is kept (as 4th place did), the left
side's where it is the only one (in the real file the left side's canal rows name instance -1).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from lumbar.core.constants import normalize_condition, normalize_level
from lumbar.core.tables import COORDINATE_COLUMNS, DataFormatError, load_coordinates
from lumbar.data.geometry import INSTANCE_KEYS, points_mm

TARGET_KEYS = ["study_id", "condition", "level"]
CORRECTED_COLUMNS = [
    "series_id",
    "relative_x",
    "relative_y",
    "condition",
    "side",
    "instance_number",
    "study_id",
    "level",
]
#: The `side` column's values, as the competition's condition names spell the side.
SIDES = {"L": "Left", "R": "Right"}


def corrected_condition(condition: str, side: str) -> str | None:
    """The competition's condition of a corrected-set row (module docstring), None for an unknown one: the
    condition as it is when it names its side (or is the canal's), else with the `side` column's side."""
    for name in (condition, f"{SIDES.get(side.strip().upper(), '?')} {condition}"):
        try:
            return normalize_condition(name)
        except ValueError:
            continue
    return None


@dataclass
class MergeReport:
    """What the extra files changed: rows read, dropped (with why), replacing and added, and how far the
    replaced points moved (mm, through each instance's geometry)."""

    files: list[str] = field(default_factory=list)
    rows_read: int = 0
    bad: pd.DataFrame = field(default_factory=pd.DataFrame)
    replaced: int = 0
    added: int = 0
    shift_mm: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def lines(self, show: int = 5) -> list[str]:
        shift = (
            f", the replaced points moved {np.nanmean(self.shift_mm):.1f} mm on average (median "
            f"{np.nanmedian(self.shift_mm):.1f} mm)"
            if np.isfinite(self.shift_mm).any()
            else ""
        )
        head = (
            f"coordinates: {self.rows_read} rows in {len(self.files)} extra file(s); {len(self.bad)} "
            f"dropped, {self.replaced} replace the competition's points, {self.added} added{shift}"
        )
        out = [head]
        for row in self.bad.head(show).itertuples(index=False):
            out.append(f"  dropped {row.file}:{row.line}: study {row.study_id}: {row.problem}")
        if len(self.bad) > show:
            out.append(f"  ... and {len(self.bad) - show} more dropped rows")
        return out


def read_extra(path: str | os.PathLike) -> pd.DataFrame:
    """One extra file in the competition's columns, with `relative` (the point as fractions) and `line` (its
    line in the file, for the report)."""
    head = pd.read_csv(path, nrows=0)
    if {"relative_x", "relative_y", "side"} <= set(head.columns):
        table = _read_corrected(path)
    elif set(COORDINATE_COLUMNS) <= set(head.columns):
        table = load_coordinates(path).assign(relative=False, line=lambda d: np.arange(len(d)) + 2)
    else:
        raise DataFormatError(
            path,
            f"neither the competition's columns {COORDINATE_COLUMNS} nor the corrected set's "
            f"{CORRECTED_COLUMNS}; found {list(head.columns)}",
            line=1,
        )
    return table.assign(file=os.fspath(path))


def _read_corrected(path: str | os.PathLike) -> pd.DataFrame:
    raw = pd.read_csv(path)
    raw = raw.drop(columns=[c for c in raw.columns if c.startswith("Unnamed")])
    missing = [c for c in CORRECTED_COLUMNS if c not in raw.columns]
    if missing:
        raise DataFormatError(path, f"missing columns {missing}", line=1)
    keys = list(zip(raw["condition"].astype(str), raw["side"].astype(str)))
    conditions = [corrected_condition(*k) for k in keys]
    unknown = [i for i, c in enumerate(conditions) if c is None]
    if unknown:
        i = unknown[0]
        raise DataFormatError(path, f"unknown condition and side {keys[i]!r}", line=i + 2)
    table = pd.DataFrame(
        {
            "study_id": raw["study_id"].astype("int64"),
            "series_id": raw["series_id"].astype("int64"),
            "instance_number": raw["instance_number"].astype("int64"),
            "condition": conditions,
            "level": _levels(raw["level"], path),
            "x": raw["relative_x"].astype(float),
            "y": raw["relative_y"].astype(float),
            "relative": True,
            "line": np.arange(len(raw)) + 2,
            "side": raw["side"].astype(str).str.upper(),
        }
    )
    # the canal point once per side: the right side's where both are given
    table = table.sort_values("side", ascending=False, kind="stable")
    table = table.drop_duplicates(TARGET_KEYS, keep="first").sort_values("line", kind="stable")
    return table.drop(columns="side")


def _levels(values: pd.Series, path: str | os.PathLike) -> list[str]:
    """The levels in snake case (`normalize_level`); an unknown one is an error naming its line."""
    out = []
    for i, value in enumerate(values):
        try:
            out.append(normalize_level(str(value)))
        except ValueError as e:
            raise DataFormatError(path, str(e), line=i + 2) from None
    return out


def check_against_images(table: pd.DataFrame, index: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows in pixels whose instance is among the images and whose point lies inside it, bad rows with
    their problem)."""
    sizes = index[[*INSTANCE_KEYS, "rows", "columns"]].drop_duplicates(INSTANCE_KEYS)
    merged = table.merge(sizes, on=INSTANCE_KEYS, how="left")
    relative = merged["relative"].to_numpy(bool)
    merged.loc[relative, "x"] = merged.loc[relative, "x"] * merged.loc[relative, "columns"]
    merged.loc[relative, "y"] = merged.loc[relative, "y"] * merged.loc[relative, "rows"]
    absent = merged["rows"].isna()
    outside = ~absent & ~(
        merged["x"].between(0, merged["columns"], inclusive="left")
        & merged["y"].between(0, merged["rows"], inclusive="left")
    )
    problem = [
        f"instance {r.instance_number} of series {r.series_id} is not among the study's images"
        if a
        else f"point ({r.x:.1f}, {r.y:.1f}) outside the {int(r.columns)}x{int(r.rows)} image of instance "
        f"{r.instance_number}"
        for r, a, o in zip(merged.itertuples(index=False), absent, outside)
        if a or o
    ]
    bad = merged[absent | outside].assign(problem=problem)
    good = merged[~(absent | outside)]
    return good[[*COORDINATE_COLUMNS, "file"]].reset_index(drop=True), bad.reset_index(drop=True)


def merge_extra_coordinates(
    coords: pd.DataFrame, paths: Sequence[str | os.PathLike], index: pd.DataFrame
) -> tuple[pd.DataFrame, MergeReport]:
    """The competition's coordinates with each extra file's valid rows merged in (module docstring)."""
    report = MergeReport(files=[os.fspath(p) for p in paths])
    merged = coords[COORDINATE_COLUMNS].copy()
    shifts = []
    for path in paths:
        table = read_extra(path)
        report.rows_read += len(table)
        good, bad = check_against_images(table, index)
        good = good.drop_duplicates(TARGET_KEYS, keep="last")  # within a file, its last row for a target
        report.bad = pd.concat([report.bad, bad], ignore_index=True) if len(report.bad) else bad
        old = merged.merge(good[TARGET_KEYS], on=TARGET_KEYS, how="inner")
        replaced = good.merge(old, on=TARGET_KEYS, how="inner", suffixes=("", "_old"))
        shifts.append(_shift_mm(replaced, index))
        report.replaced += len(replaced)
        report.added += len(good) - len(replaced)
        keep = (
            merged.merge(good[TARGET_KEYS], on=TARGET_KEYS, how="left", indicator=True)["_merge"]
            == "left_only"
        )
        merged = pd.concat([merged[keep.to_numpy()], good[COORDINATE_COLUMNS]], ignore_index=True)
    report.shift_mm = np.concatenate(shifts) if shifts else np.zeros(0)
    merged = merged.sort_values([*TARGET_KEYS], kind="stable").reset_index(drop=True)
    return merged, report


def _shift_mm(replaced: pd.DataFrame, index: pd.DataFrame) -> np.ndarray:
    """3D distance between each replaced point and its replacement (NaN where an instance is unknown)."""
    if replaced.empty:
        return np.zeros(0)
    new = points_mm(replaced[[*INSTANCE_KEYS, "x", "y"]], index)
    old = replaced[["study_id", "series_id_old", "instance_number_old", "x_old", "y_old"]]
    old = points_mm(old.set_axis([*INSTANCE_KEYS, "x", "y"], axis=1), index)
    return np.linalg.norm(new[["px", "py", "pz"]].to_numpy() - old[["px", "py", "pz"]].to_numpy(), axis=1)
