"""The documentation picture: one study's three series as written to disk, with its label points.

Reads the files back with the package's own reader (`lumbar.data.dicom`), so the picture shows what every
later stage sees: Sagittal T2/STIR with the spinal-canal points, Sagittal T1 on each side's foramen slice,
and an Axial T2 slice with its two subarticular points. Points are coloured by their written grade.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lumbar.core.constants import AXIAL_T2, GRADE_LABELS, SAGITTAL_T1, SAGITTAL_T2, level_title
from lumbar.core.paths import is_synthetic, series_dir
from lumbar.core.tables import load_coordinates, load_labels, load_series_descriptions
from lumbar.data.dicom import read_series

GRADE_COLOURS = ("#33cc33", "#ffaa00", "#ff2222")


def _pick_study(data_dir: Path) -> int:
    """The first study with coordinates on all three series and the most severe grades (a telling example)."""
    coords = load_coordinates(data_dir / "train_label_coordinates.csv")
    series = load_series_descriptions(data_dir / "train_series_descriptions.csv")
    labels = load_labels(data_dir / "train.csv")
    described = coords.merge(series, on=["study_id", "series_id"])
    complete = described.groupby("study_id")["series_description"].nunique()
    complete = complete[complete == 3].index
    if len(complete) == 0:
        raise ValueError(f"{data_dir}: no study has coordinates on all three series")
    burden = labels[labels["study_id"].isin(complete)].groupby("study_id")["grade"].sum()
    return int(burden.idxmax())


def _slice(data_dir: Path, study_id: int, series_id: int, instance: int) -> np.ndarray:
    series = read_series(series_dir(data_dir, "train", study_id, series_id))
    stack, index = series.stack_of_instance(instance)
    return series.load(stack, [index]).pixels[0].astype(np.float32)


def _study_points(data_dir: Path, study_id: int) -> pd.DataFrame:
    """The study's label points with their series description and grade: what decides the panels and each
    point's colour."""
    coords = load_coordinates(data_dir / "train_label_coordinates.csv")
    coords = coords[coords["study_id"] == study_id]
    series = load_series_descriptions(data_dir / "train_series_descriptions.csv")
    labels = load_labels(data_dir / "train.csv")
    coords = coords.merge(series, on=["study_id", "series_id"]).merge(
        labels, on=["study_id", "condition", "level"], how="left"
    )
    if coords.empty:
        raise ValueError(f"{data_dir}: study {study_id} has no label coordinates")
    return coords


def _panel(rows: pd.DataFrame) -> tuple[Any, pd.DataFrame]:
    """The slice most of `rows` lie on, and the rows on it: one slice shows most of a series' points."""
    instance = rows["instance_number"].mode().iloc[0]
    return instance, rows[rows["instance_number"] == instance]


def _panels(coords: pd.DataFrame) -> list[tuple[str, Any, pd.DataFrame]]:
    """(title, instance, rows) of each panel: the canal on the Sagittal T2/STIR, each side's foramina on the
    Sagittal T1, and the axial slice of the worst subarticular grade (where a grade is visible at all)."""
    panels = []
    spinal = coords[coords["series_description"] == SAGITTAL_T2]
    if len(spinal):
        panels.append(("Sagittal T2/STIR: spinal canal", *_panel(spinal)))
    for side in ("left", "right"):
        rows = coords[
            (coords["series_description"] == SAGITTAL_T1) & coords["condition"].str.startswith(side)
        ]
        if len(rows):
            panels.append((f"Sagittal T1: {side} foramina", *_panel(rows)))
    axial = coords[coords["series_description"] == AXIAL_T2]
    if len(axial):
        worst = axial.sort_values(["grade", "level"], ascending=[False, False]).iloc[0]
        rows = axial[axial["instance_number"] == worst["instance_number"]]
        panels.append(
            (f"Axial T2 at {level_title(worst['level'])}: subarticular", worst["instance_number"], rows)
        )
    return panels


def _draw_panel(ax, title: str, image: np.ndarray, rows: pd.DataFrame) -> None:
    """A slice with its points, each ringed and labelled (level, side) in its grade's colour, so the picture
    shows the grade where the point is."""
    lo, hi = np.percentile(image, [1, 99.5])
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi)
    for _, r in rows.iterrows():
        grade = int(r["grade"]) if pd.notna(r["grade"]) else 0
        ax.plot(r["x"], r["y"], "o", ms=7, mfc="none", mec=GRADE_COLOURS[grade], mew=1.6)
        side = "L" if r["condition"].startswith("left") else "R" if r["condition"].startswith("right") else ""
        ax.annotate(
            f"{level_title(r['level'])}{side}",
            (r["x"], r["y"]),
            xytext=(6, -6),
            textcoords="offset points",
            color=GRADE_COLOURS[grade],
            fontsize=7,
        )
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def study_figure(data_dir: str | Path, out: str | Path, study_id: int | None = None, dpi: int = 64) -> Path:
    """Draw one training study's series with its label points and save a PNG.

    Args:
        data_dir: a data folder in the competition's layout (synthetic or real).
        out: the PNG to write.
        study_id: which study (default: a complete study with many non-normal grades).
        dpi: resolution of the saved figure.

    Returns:
        The written path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data_dir = Path(data_dir)
    study_id = _pick_study(data_dir) if study_id is None else int(study_id)
    panels = _panels(_study_points(data_dir, study_id))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6))
    for ax, (title, instance, rows) in zip(np.atleast_1d(axes), panels):
        image = _slice(data_dir, study_id, int(rows["series_id"].iloc[0]), int(instance))
        _draw_panel(ax, f"{title}\ninstance {instance}", image, rows)
    handles = [
        plt.Line2D([], [], ls="", marker="o", mfc="none", mec=c, label=g)
        for c, g in zip(GRADE_COLOURS, GRADE_LABELS)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    kind = "Synthetic study" if is_synthetic(data_dir) else "Study"
    fig.suptitle(f"{kind} {study_id}", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def cli_synth_figure(args: argparse.Namespace) -> int:
    """`python -m lumbar synth-figure`: draw a study of a data folder with its label points."""
    path = study_figure(args.data_dir, args.out, args.study_id)
    print(f"synth-figure: wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")
    return 0
