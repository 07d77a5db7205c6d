"""Exploratory tables of a competition data folder: what the labels, series and label points look like.

Every function takes the package's tables (`lumbar.core.tables`) and returns a small DataFrame or dict, so
the EDA notebook only calls and shows them, and tests check them against the competition's known figures.
What they are for, in modelling terms:
    grades        class imbalance (about 77 / 16 / 6 %) -> the 1/2/4 weighted loss; severe grows toward L4/L5.
    missing       blank targets (mostly subarticular L1/L2, L2/L3) are not scored: drop them, do not impute.
    series        studies with 2+ axial series or a missing series: inference must choose and must fall back.
    any-severe    the metric's fifth term: a study-level target with its own prevalence and weights.
    label points  where targets sit on the image (normalised by the slice's size): crop sizes, bogus points.
Images are optional: only the scatter of normalised points and the example slices need them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lumbar.core.constants import (
    AXIAL_T2,
    CONDITION_SERIES,
    CONDITIONS,
    GRADE_WEIGHTS,
    GRADES,
    LEVELS,
    SAGITTAL_T1,
    SERIES_DESCRIPTIONS,
    level_title,
)
from lumbar.core.paths import images_dir, series_dir
from lumbar.core.tables import load_coordinates, load_labels, load_series_descriptions
from lumbar.data.dicom import read_series
from lumbar.data.index import build_index

ALL = "all"
SPINAL = "spinal_canal_stenosis"
#: Points closer than this (pixels) to (5, 5) are the known bogus "corner" labels of train_label_coordinates.
CORNER_RADIUS_PX = 3.0


@dataclass
class EdaTables:
    """The CSV tables of one split, as the package loads them.

    Attributes:
        labels: long label table with blank targets kept (grade `<NA>`).
        series: `study_id, series_id, series_description`.
        coordinates: label points, or None when the folder has no coordinates file.
        data_dir: where they came from (images are looked up there).
        notes: what could not be loaded, for the reader (e.g. no coordinates file).
    """

    labels: pd.DataFrame
    series: pd.DataFrame
    coordinates: pd.DataFrame | None
    data_dir: Path
    notes: list[str] = field(default_factory=list)


def load_tables(data_dir: str | os.PathLike, split: str = "train") -> EdaTables:
    """Load `<split>.csv`, `<split>_series_descriptions.csv` and `<split>_label_coordinates.csv`.

    Raises:
        FileNotFoundError: the label or series file is missing (the coordinates file may be absent).
    """
    root = Path(data_dir)
    coords_path = root / f"{split}_label_coordinates.csv"
    tables = EdaTables(
        labels=load_labels(root / f"{split}.csv", dropna=False),
        series=load_series_descriptions(root / f"{split}_series_descriptions.csv"),
        coordinates=load_coordinates(coords_path) if coords_path.is_file() else None,
        data_dir=root,
    )
    if tables.coordinates is None:
        tables.notes.append(f"{coords_path.name} not found: label-point tables skipped")
    return tables


def grade_counts(labels: pd.DataFrame, by: str | list[str]) -> pd.DataFrame:
    """Labelled targets per grade, grouped by `by` (e.g. "condition", "level"), plus an `all` row.

    Returns:
        One row per group (competition order) and `all` when grouping by one column; columns `GRADES`
        (counts) and `labelled`.
    """
    by = [by] if isinstance(by, str) else list(by)
    graded = labels[labels["grade"].notna()]
    counts = pd.crosstab([graded[c] for c in by], graded["grade"].astype(int))
    counts = counts.reindex(columns=range(len(GRADES)), fill_value=0).set_axis(list(GRADES), axis=1)
    order = {"condition": list(CONDITIONS), "level": list(LEVELS)}
    if len(by) == 1:
        counts = counts.reindex(order.get(by[0], counts.index), fill_value=0)
        counts.loc[ALL] = counts.sum()
    else:
        full = pd.MultiIndex.from_product([order.get(c, sorted(graded[c].unique())) for c in by], names=by)
        counts = counts.reindex(full, fill_value=0)
    counts["labelled"] = counts[list(GRADES)].sum(axis=1)
    return counts.rename_axis(columns=None)


def grade_shares(counts: pd.DataFrame) -> pd.DataFrame:
    """Row shares of the grade columns of `grade_counts` (rows sum to 1; an empty row stays 0)."""
    values = counts[list(GRADES)]
    return values.div(values.sum(axis=1).replace(0, np.nan), axis=0).fillna(0.0)


def grade_share_matrix(labels: pd.DataFrame, grade: str = "severe") -> pd.DataFrame:
    """Share of one grade per condition (rows) x level (columns), competition order: where it concentrates."""
    shares = grade_shares(grade_counts(labels, ["condition", "level"]))[grade]
    return (
        shares.unstack("level")
        .reindex(index=list(CONDITIONS), columns=list(LEVELS))
        .rename_axis(index=None, columns=None)
    )


def weighted_grade_mass(labels: pd.DataFrame) -> pd.DataFrame:
    """Per grade: count, share, and share of the metric's weight (x 1/2/4): the weighted loss's view."""
    counts = grade_counts(labels, "condition").loc[ALL, list(GRADES)].astype(float)
    weighted = counts * np.asarray(GRADE_WEIGHTS)
    return pd.DataFrame(
        {
            "count": counts.astype(int),
            "share": counts / counts.sum(),
            "weight": GRADE_WEIGHTS,
            "weighted_share": weighted / weighted.sum(),
        }
    )


def missing_labels(labels: pd.DataFrame) -> pd.DataFrame:
    """Blank targets per condition (rows) x level (columns), competition order."""
    blank = labels[labels["grade"].isna()]
    table = pd.crosstab(blank["condition"], blank["level"])
    return table.reindex(index=list(CONDITIONS), columns=list(LEVELS), fill_value=0).rename_axis(
        index=None, columns=None
    )


def missing_summary(labels: pd.DataFrame) -> dict[str, int]:
    """Blank targets, studies with any blank, and studies with every target blank."""
    blank = labels["grade"].isna()
    per_study = blank.groupby(labels["study_id"]).agg(["sum", "size"])
    return {
        "blank_targets": int(blank.sum()),
        "studies_with_blank": int((per_study["sum"] > 0).sum()),
        "studies_all_blank": int((per_study["sum"] == per_study["size"]).sum()),
    }


def series_per_study(series: pd.DataFrame, study_ids=None) -> pd.DataFrame:
    """Number of series of each description per study (0 where absent).

    Args:
        series: the series-descriptions table.
        study_ids: studies to report (e.g. every labelled study, so one without any series shows as zeros);
            default: the studies of `series`.
    """
    counts = pd.crosstab(series["study_id"], series["series_description"])
    index = sorted(set(series["study_id"])) if study_ids is None else sorted(set(study_ids))
    counts = counts.reindex(index=index, columns=list(SERIES_DESCRIPTIONS), fill_value=0)
    return counts.rename_axis(index="study_id", columns=None)


def series_count_distribution(per_study: pd.DataFrame) -> pd.DataFrame:
    """Studies (values) having n series (rows, 0..max) of each description (columns)."""
    top = int(per_study.to_numpy().max()) if len(per_study) else 0
    table = per_study.apply(lambda col: col.value_counts()).reindex(range(top + 1)).fillna(0).astype(int)
    return table.rename_axis(index="series")


def series_summary(series: pd.DataFrame, per_study: pd.DataFrame) -> dict[str, int]:
    """The series facts inference must handle: totals per description, repeats, and missing series."""
    totals = series["series_description"].value_counts()
    out = {f"series_{_slug(d)}": int(totals.get(d, 0)) for d in SERIES_DESCRIPTIONS}
    out["studies_2plus_axial"] = int((per_study[AXIAL_T2] >= 2).sum())
    axial = per_study[AXIAL_T2].value_counts().sort_index()
    out["axial_series_per_study"] = {str(n): int(k) for n, k in axial.items()}
    out["studies_2plus_sagittal_t1"] = int((per_study[SAGITTAL_T1] >= 2).sum())
    out.update({f"studies_without_{_slug(d)}": int((per_study[d] == 0).sum()) for d in SERIES_DESCRIPTIONS})
    return out


def _slug(description: str) -> str:
    return description.lower().replace("/", "_").replace(" ", "_")


def worst_spinal_grade(labels: pd.DataFrame) -> pd.Series:
    """Worst spinal grade per study with a labelled spinal row: the any-severe term's label and weight."""
    spinal = labels[(labels["condition"] == SPINAL) & labels["grade"].notna()]
    return spinal.groupby("study_id")["grade"].max().astype(int).rename("worst_spinal_grade")


def any_severe_spinal(labels: pd.DataFrame) -> pd.DataFrame:
    """The any-severe-spinal term's data: studies per worst spinal grade, its share and share of the weight.

    The metric scores, per study, max p(severe) over spinal levels against "any level severe", weighting the
    study by its worst grade (1/2/4); the `severe` row is the term's positive class.
    """
    worst = worst_spinal_grade(labels)
    studies = worst.value_counts().reindex(range(len(GRADES)), fill_value=0).set_axis(list(GRADES))
    weighted = studies * np.asarray(GRADE_WEIGHTS)
    return pd.DataFrame(
        {"studies": studies, "share": studies / studies.sum(), "weighted_share": weighted / weighted.sum()}
    ).rename_axis(index="worst_spinal_grade")


def coordinate_checks(coords: pd.DataFrame, series: pd.DataFrame, study_ids) -> dict[str, int]:
    """Label-point problems worth knowing before training a localizer or cropping.

    Returns:
        points; points whose series is not the one their condition is read on (or not in the series
        table); spinal points on Sagittal T1; points within `CORNER_RADIUS_PX` of (5, 5); studies of
        `study_ids` without any point; and (condition, level) targets with more than one point.
    """
    merged = coords.merge(series, on=["study_id", "series_id"], how="left")
    expected = merged["condition"].map(CONDITION_SERIES)
    corner = np.hypot(merged["x"] - 5.0, merged["y"] - 5.0) <= CORNER_RADIUS_PX
    spinal = merged["condition"] == SPINAL
    return {
        "points": len(merged),
        "points_on_unexpected_series": int((merged["series_description"] != expected).sum()),
        "spinal_points_on_sagittal_t1": int((spinal & (merged["series_description"] == SAGITTAL_T1)).sum()),
        "corner_points": int(corner.sum()),
        "studies_without_points": len(set(study_ids) - set(coords["study_id"])),
        "targets_with_repeated_points": int(coords.duplicated(["study_id", "condition", "level"]).sum()),
    }


def studies_with_images(data_dir: str | os.PathLike, split: str = "train") -> list[int]:
    """Study ids that have an image folder (sorted); [] when the split has no images at all."""
    base = images_dir(Path(data_dir), split)
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit())


def normalized_points(coords: pd.DataFrame, index: pd.DataFrame) -> pd.DataFrame:
    """Label points with x / columns and y / rows of their own instance (the header index gives the size).

    Args:
        coords: the coordinates table.
        index: a header index (`lumbar.data.index.build_index`) covering some or all of those studies.

    Returns:
        The points whose instance is in the index, with `rows, columns, x_norm, y_norm` added; points of
        studies without images are left out (the caller reports how many).
    """
    sizes = index[["study_id", "series_id", "instance_number", "rows", "columns"]].drop_duplicates(
        ["study_id", "series_id", "instance_number"]
    )
    points = coords.merge(sizes, on=["study_id", "series_id", "instance_number"], how="inner")
    return points.assign(x_norm=points["x"] / points["columns"], y_norm=points["y"] / points["rows"])


def label_point_table(
    tables: EdaTables,
    split: str = "train",
    max_studies: int = 0,
    index_path: str | os.PathLike | None = None,
    workers: int = 1,
) -> tuple[pd.DataFrame, str]:
    """Normalised label points of the studies that have images, and a sentence saying what was covered.

    Args:
        tables: the loaded CSV tables.
        split: image split to read headers from.
        max_studies: read headers of at most this many labelled studies with images (0: all of them); the
            full data has ~147,000 files, so a few hundred studies give the picture in seconds.
        index_path: a header index parquet (`python -m lumbar index`) to use instead of reading headers;
            a path that does not exist is an error.
        workers: processes reading headers.

    Returns:
        `normalized_points` (empty when nothing could be placed) and the message for the reader.
    """

    if tables.coordinates is None:
        return pd.DataFrame(), "no label coordinates in this data folder: scatter skipped"
    labelled = set(tables.coordinates["study_id"])
    with_images = [s for s in studies_with_images(tables.data_dir, split) if s in labelled]
    if not with_images:
        return pd.DataFrame(), (
            f"no labelled study has images under {images_dir(tables.data_dir, split)}: normalised scatter "
            "skipped (x / columns needs each instance's size from its DICOM header)"
        )
    chosen = with_images[:max_studies] if max_studies else with_images
    partial = len(chosen) < len(with_images)
    if index_path:
        if not Path(index_path).is_file():
            raise FileNotFoundError(f"{index_path}: header index not found (see `python -m lumbar index`)")
        index = pd.read_parquet(index_path)
        index = index[index["study_id"].isin(chosen)]
    else:
        index, _ = build_index(tables.data_dir, split, workers=workers, studies=chosen, progress=False)
    points = normalized_points(tables.coordinates, index)
    unplaced = int(tables.coordinates["study_id"].isin(chosen).sum()) - len(points)
    message = (
        f"{len(points)} of {len(tables.coordinates)} label points placed, from {len(chosen)} studies with "
        f"images (of {tables.labels['study_id'].nunique()} labelled studies)"
        + (f"; headers read for the first {len(chosen)} of {len(with_images)}" if partial else "")
        + (f"; {unplaced} points name an instance with no readable file" if unplaced else "")
    )
    return points, message


def example_studies(tables: EdaTables, count: int, split: str = "train") -> list[int]:
    """Up to `count` study ids with both images and label points (smallest ids first)."""
    if tables.coordinates is None or count <= 0:
        return []
    labelled = set(tables.coordinates["study_id"])
    return [s for s in studies_with_images(tables.data_dir, split) if s in labelled][:count]


@dataclass
class SlicePanel:
    """One decoded slice and the label points drawn on it.

    Attributes:
        image: (H, W) float32 scaled to [0, 1] (1-99 percentile window), for display only.
        points: `x, y, level, condition` of the points on this slice.
        title: what the slice is (series, instance, which points).
    """

    image: np.ndarray
    points: pd.DataFrame
    title: str


def display_window(pixels: np.ndarray) -> np.ndarray:
    """Scale a slice to [0, 1] between its 1st and 99th percentiles (display contrast only)."""
    pixels = np.asarray(pixels, dtype=np.float32)
    lo, hi = np.percentile(pixels, [1, 99])
    return np.clip((pixels - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def _panel(folder: Path, points: pd.DataFrame, title: str) -> SlicePanel:
    """Decode just the labelled slice of one series and attach its points."""

    series = read_series(folder)
    stack, index = series.stack_of_instance(int(points["instance_number"].iloc[0]))
    volume = series.stacks[stack].load([index])
    return SlicePanel(display_window(volume.pixels[0]), points[["x", "y", "level", "condition"]], title)


#: Example-slice groups, in display order: (conditions, what the title calls their points).
PANEL_GROUPS: tuple[tuple[tuple[str, ...], str], ...] = (
    ((SPINAL,), "spinal canal"),
    (("left_neural_foraminal_narrowing",), "left foramina"),
    (("right_neural_foraminal_narrowing",), "right foramina"),
    (("left_subarticular_stenosis", "right_subarticular_stenosis"), "subarticular"),
)


def example_panels(tables: EdaTables, study_id: int, split: str = "train") -> list[SlicePanel]:
    """Every labelled slice of one study with the points marked on it: the sagittal T2 slice of the spinal
    points, the T1 slice(s) of each side's foraminal points, the axial slice of each subarticular level.

    Only those slices are decoded (a series' headers are read, then the pixels of the labelled slice).

    Raises:
        ValueError: the study has no label points.
        DicomReadError: a labelled series folder is missing or unreadable (the message names it).
    """
    coords = tables.coordinates if tables.coordinates is not None else pd.DataFrame(columns=["study_id"])
    points = coords[coords["study_id"] == study_id]
    if points.empty:
        raise ValueError(f"study {study_id} has no label points in the coordinates table")
    description = tables.series.set_index("series_id")["series_description"]
    panels = []
    for conditions, name in PANEL_GROUPS:
        group = points[points["condition"].isin(conditions)].sort_values("level")
        for (series_id, instance), on_slice in group.groupby(["series_id", "instance_number"], sort=False):
            levels = ", ".join(level_title(lv) for lv in sorted(set(on_slice["level"])))
            title = f"{description.get(series_id, series_id)} #{instance}: {name} {levels}"
            panels.append(_panel(series_dir(tables.data_dir, split, study_id, series_id), on_slice, title))
    return panels


def eda_summary(tables: EdaTables) -> dict:
    """The run's headline figures (what `summary.json` records and the notebook test checks)."""
    labels = tables.labels
    shares = grade_shares(grade_counts(labels, "condition")).loc[ALL]
    severe_by_level = grade_counts(labels, "level")["severe"].drop(ALL)
    worst = worst_spinal_grade(labels)
    per_study = series_per_study(tables.series, labels["study_id"].unique())
    summary = {
        "studies": int(labels["study_id"].nunique()),
        "targets": len(labels),
        "labelled_rows": int(labels["grade"].notna().sum()),
        "class_shares": {g: round(float(shares[g]), 6) for g in GRADES},
        "severe_by_level": {lv: int(n) for lv, n in severe_by_level.items()},
        "any_severe_spinal_studies": int((worst == 2).sum()),
        "any_severe_spinal_prevalence": round(float((worst == 2).mean()), 6) if len(worst) else None,
        **missing_summary(labels),
        **series_summary(tables.series, per_study),
    }
    if tables.coordinates is not None:
        studies = labels["study_id"].unique()
        summary["coordinates"] = coordinate_checks(tables.coordinates, tables.series, studies)
    return summary
