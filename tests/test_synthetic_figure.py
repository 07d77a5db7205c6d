"""The documentation picture (`docs/synthetic.png`, `lumbar synth-figure`): which study, which slices, which
points, and that the saved PNG shows each point's grade colour where the point is."""

from __future__ import annotations

import re

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pydicom
from matplotlib.colors import to_rgb

from lumbar.data.synthetic.figure import GRADE_COLOURS, study_figure

DPI = 64


def _points(data_dir) -> pd.DataFrame:
    """Every label point with its series description and grade (0-2), read with plain pandas."""
    coords = pd.read_csv(data_dir / "train_label_coordinates.csv")
    series = pd.read_csv(data_dir / "train_series_descriptions.csv")
    wide = pd.read_csv(data_dir / "train.csv").set_index("study_id")
    grades = {"Normal/Mild": 0, "Moderate": 1, "Severe": 2}
    columns = (coords["condition"].str.lower().str.replace(" ", "_") + "_"
               + coords["level"].str.lower().str.replace("/", "_"))  # fmt: skip
    grade = [grades.get(wide.loc[s, c], 0) for s, c in zip(coords["study_id"], columns)]
    return coords.assign(grade=grade).merge(series, on=["study_id", "series_id"])


def _slice(data_dir, study, series, instance) -> np.ndarray:
    """One slice read with plain pydicom, rescaled as the package's reader does."""
    ds = pydicom.dcmread(data_dir / "train_images" / str(study) / str(series) / f"{instance}.dcm")
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    return ds.pixel_array.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def _colour_around(png: np.ndarray, col: float, row: float) -> int:
    """The grade whose colour most of the coloured pixels within 5 px of (col, row) are closest to (-1: none)."""
    r, c = round(row), round(col)
    patch = png[r - 5 : r + 6, c - 5 : c + 6].reshape(-1, 3)
    distance = np.stack([np.abs(patch - to_rgb(colour)).max(axis=1) for colour in GRADE_COLOURS])
    near = distance.argmin(axis=0)[distance.min(axis=0) < 0.25]  # grey pixels are far from all three
    return int(np.bincount(near, minlength=3).argmax()) if len(near) else -1


def test_the_figure_shows_the_telling_study_its_slices_and_graded_points(synthetic_dir, tmp_path, monkeypatch):
    """The study with the most non-normal grades among those with points on all three series; per panel the
    slice holding most of its points (the axial one: the worst grade's), its pixels as the file holds them,
    every point of that slice as a ring in its grade's colour, and in the PNG that colour around the point."""
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure open to read back what it drew
    out = study_figure(synthetic_dir, tmp_path / "figure.png", dpi=DPI)
    (fig,) = figures
    try:
        points = _points(synthetic_dir)
        complete = points.groupby("study_id")["series_description"].nunique().loc[lambda n: n == 3].index
        burden = points.drop_duplicates(["study_id", "condition", "level"]).groupby("study_id")["grade"].sum()
        study = int(burden[complete].idxmax())
        points = points[points["study_id"] == study]
        assert fig._suptitle.get_text() == f"Synthetic study {study}"

        png = matplotlib.image.imread(out)[..., :3]
        assert png.shape[:2] == (round(fig.get_figheight() * DPI), round(fig.get_figwidth() * DPI))
        panels = [ax for ax in fig.axes if ax.images]
        titles = [ax.get_title() for ax in panels]
        assert [t.split(":")[0].split(" at ")[0] for t in titles] == ["Sagittal T2/STIR", "Sagittal T1",
                                                                       "Sagittal T1", "Axial T2"], titles
        shown_grades = set()
        for ax, title, side in zip(panels, titles, ["", "left", "right", ""]):
            description = title.split(":")[0].split(" at ")[0]
            instance = int(re.search(r"instance (\d+)", title)[1])
            rows = points[(points["series_description"] == description)
                          & points["condition"].str.lower().str.startswith(side)]  # fmt: skip
            shown = rows[rows["instance_number"] == instance]
            if description == "Axial T2":
                assert shown["grade"].max() == rows["grade"].max(), title
            else:
                assert len(shown) == rows["instance_number"].value_counts().max(), title
            image = np.asarray(ax.images[0].get_array())
            np.testing.assert_array_equal(image, _slice(synthetic_dir, study, shown["series_id"].iloc[0], instance))
            drawn = sorted((round(float(line.get_xdata()[0]), 3), round(float(line.get_ydata()[0]), 3),
                            line.get_markeredgecolor()) for line in ax.lines)  # fmt: skip
            expected = sorted((round(x, 3), round(y, 3), GRADE_COLOURS[g])
                              for x, y, g in shown[["x", "y", "grade"]].itertuples(index=False))  # fmt: skip
            assert drawn == expected, title
            for x, y, grade in shown[["x", "y", "grade"]].itertuples(index=False):
                col, row = ax.transData.transform((x, y)) * DPI / fig.dpi  # display pixels, origin bottom left
                assert _colour_around(png, col, png.shape[0] - row) == grade, (title, x, y)
                shown_grades.add(grade)
        assert len(shown_grades) >= 2  # colours that could be confused are both on show
    finally:
        plt.close("all")
