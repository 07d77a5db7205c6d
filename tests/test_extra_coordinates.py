"""Extra coordinate files (the corrected set's format and the competition's) checked against the real
sample's DICOM and merged by the stated rule."""

import numpy as np
import pandas as pd
import pytest

from lumbar.core.tables import DataFormatError, load_coordinates
from lumbar.data.extra_coordinates import merge_extra_coordinates
from lumbar.data.index import load_or_build_index

STUDY = 100206310
SAG_T2, SAG_T1 = 1792451510, 2092806862


@pytest.fixture(scope="module")
def sample(sample_dir):
    coords = load_coordinates(sample_dir / "train_label_coordinates.csv")
    coords = coords[coords["study_id"] == STUDY].reset_index(drop=True)
    return coords, load_or_build_index(sample_dir, "train")


def _point(coords, condition, level):
    row = coords[(coords["condition"] == condition) & (coords["level"] == level)]
    assert len(row) == 1
    return row.iloc[0]


def _size(index, series, instance):
    row = index[(index["series_id"] == series) & (index["instance_number"] == instance)].iloc[0]
    return int(row["columns"]), int(row["rows"]), float(row["pixel_spacing_col"])


def test_a_corrected_file_replaces_adds_and_names_its_bad_rows(sample, tmp_path):
    coords, index = sample
    canal = _point(coords, "spinal_canal_stenosis", "l1_l2")
    columns, rows, spacing = _size(index, SAG_T2, canal.instance_number)
    foramen = _point(coords, "left_neural_foraminal_narrowing", "l2_l3")
    f_columns, f_rows, _ = _size(index, SAG_T1, foramen.instance_number)
    base = coords[~((coords["condition"] == "right_neural_foraminal_narrowing") & (coords["level"] == "l5_s1"))]
    extra = pd.DataFrame(
        [  # the corrected set's columns and spellings, with its unnamed index column
            [SAG_T2, (canal.x + 10) / columns, canal.y / rows, "Spinal Canal Stenosis", "R", canal.instance_number,
             STUDY, "L1/L2"],
            [SAG_T2, 0.5, 0.5, "Spinal Canal Stenosis", "L", -1, STUDY, "L1/L2"],  # as the real file's left side
            [SAG_T1, foramen.x / f_columns, (foramen.y - 4) / f_rows, "Left Neural Foraminal Narrowing", "L",
             foramen.instance_number, STUDY, "L2/L3"],
            [SAG_T1, 0.6, 0.62, "Neural Foraminal Narrowing", "R", 4, STUDY, "L5/S1"],  # bare: side decides
            [SAG_T2, 0.5, 0.5, "Spinal Canal Stenosis", "R", 999, STUDY, "L2/L3"],
            [SAG_T2, 1.2, 0.5, "Spinal Canal Stenosis", "R", canal.instance_number, STUDY, "L3/L4"],
        ],
        columns=["series_id", "relative_x", "relative_y", "condition", "side", "instance_number", "study_id",
                 "level"],
    )  # fmt: skip
    path = tmp_path / "coords_rsna_improved.csv"
    extra.to_csv(path)  # with the index column, as the Kaggle file has it

    merged, report = merge_extra_coordinates(base, [path], index)

    assert report.rows_read == 5  # the canal's left-side row gave way to its right-side one
    assert (report.replaced, report.added, len(report.bad)) == (2, 1, 2)
    assert list(report.bad["line"]) == [6, 7]
    assert "instance 999 of series 1792451510 is not among the study's images" in report.bad["problem"].iloc[0]
    assert "outside the" in report.bad["problem"].iloc[1]
    new_canal = _point(merged, "spinal_canal_stenosis", "l1_l2")
    assert new_canal.x == pytest.approx(canal.x + 10) and new_canal.y == pytest.approx(canal.y)
    assert _point(merged, "left_neural_foraminal_narrowing", "l2_l3").y == pytest.approx(foramen.y - 4)
    added = _point(merged, "right_neural_foraminal_narrowing", "l5_s1")
    assert (added.x, added.y) == pytest.approx((0.6 * f_columns, 0.62 * f_rows))
    untouched = _point(merged, "spinal_canal_stenosis", "l3_l4")  # its extra row was outside the image
    assert untouched.x == _point(coords, "spinal_canal_stenosis", "l3_l4").x
    assert len(merged) == len(coords)
    assert np.sort(report.shift_mm) == pytest.approx(np.sort([4 * _size(index, SAG_T1, 12)[2], 10 * spacing]))
    lines = report.lines()
    assert lines[0].startswith("coordinates: 5 rows in 1 extra file(s); 2 dropped, 2 replace")
    assert f"{path}:6: study {STUDY}: instance 999" in lines[1]


def test_later_files_win_and_pixel_files_merge_as_they_are(sample, tmp_path):
    coords, index = sample
    canal = _point(coords, "spinal_canal_stenosis", "l4_l5")
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    for path, dx in ((first, 3.0), (second, -2.0)):
        pd.DataFrame([{
            "study_id": STUDY, "series_id": SAG_T2, "instance_number": canal.instance_number,
            "condition": "Spinal Canal Stenosis", "level": "L4/L5", "x": canal.x + dx, "y": canal.y,
        }]).to_csv(path, index=False)  # fmt: skip
    merged, report = merge_extra_coordinates(coords, [first, second], index)
    assert _point(merged, "spinal_canal_stenosis", "l4_l5").x == pytest.approx(canal.x - 2)
    assert (report.replaced, report.added, len(report.bad)) == (2, 0, 0) and len(merged) == len(coords)


def test_a_file_in_neither_format_is_named(sample, tmp_path):
    coords, index = sample
    path = tmp_path / "odd.csv"
    pd.DataFrame({"study": [STUDY], "x": [1.0]}).to_csv(path, index=False)
    with pytest.raises(DataFormatError, match="odd.csv.*neither the competition's columns"):
        merge_extra_coordinates(coords, [path], index)


def test_the_real_files_spelling_puts_every_point_where_the_competition_has_it(sample, sample_dir, tmp_path):
    """The real corrected file names the side in the condition (its `side` column reads R for both
    subarticular sides) and gives fractions of columns and rows. Rows written that way from the competition's
    own points of both sample studies must land on those points: Sagittal T2 series 1792451510 is 448
    columns by 462 rows, so fractions of the wrong side of the image would move them."""
    coords = load_coordinates(sample_dir / "train_label_coordinates.csv")
    coords = coords[coords["study_id"].isin([STUDY, 1002894806])].reset_index(drop=True)
    _, index = sample  # the whole sample's index
    size = index.set_index(["series_id", "instance_number"])[["columns", "rows"]]
    at = size.loc[list(zip(coords["series_id"], coords["instance_number"]))].to_numpy()
    spelled = coords["condition"].str.replace("_", " ").str.title()
    extra = pd.DataFrame({
        "series_id": coords["series_id"], "relative_x": coords["x"] / at[:, 0], "relative_y": coords["y"] / at[:, 1],
        "condition": spelled, "side": np.where(spelled.str.startswith("Left Neural"), "L", "R"),
        "instance_number": coords["instance_number"], "study_id": coords["study_id"],
        "level": coords["level"].str.upper().str.replace("_", "/"),
    })  # fmt: skip
    assert {"Left Subarticular Stenosis", "Right Neural Foraminal Narrowing"} <= set(extra["condition"])
    path = tmp_path / "coords_rsna_improved.csv"
    extra.to_csv(path)

    merged, report = merge_extra_coordinates(coords, [path], index)

    assert (report.replaced, report.added, len(report.bad)) == (len(coords), 0, 0) == (50, 0, 0)
    assert np.nanmax(report.shift_mm) < 1e-6
    assert set(merged["condition"]) == set(coords["condition"])
