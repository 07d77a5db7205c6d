import pandas as pd
import pytest

from lumbar.core.constants import CONDITIONS, LEVELS, normalize_condition, normalize_level, row_id
from lumbar.core.tables import (
    DataFormatError,
    labels_to_wide,
    load_coordinates,
    load_labels,
    load_series_descriptions,
    load_submission,
    row_study_ids,
    split_row_ids,
    submission_row_ids,
    table_row_ids,
    write_coordinates,
)


def test_both_spellings_normalise():
    assert normalize_condition("Spinal Canal Stenosis") == "spinal_canal_stenosis"
    assert normalize_condition("Left Neural Foraminal Narrowing") == "left_neural_foraminal_narrowing"
    assert normalize_level("L5/S1") == "l5_s1" and normalize_level("l1_l2") == "l1_l2"
    with pytest.raises(ValueError, match="unknown level"):
        normalize_level("L6/S2")


def test_real_train_csv_loads_to_48803_labelled_rows(sample_dir):
    labels = load_labels(sample_dir / "train.csv")
    assert len(labels) == 48_803
    assert labels["study_id"].nunique() == 1975
    assert set(labels["grade"].unique()) == {0, 1, 2}
    full = load_labels(sample_dir / "train.csv", dropna=False)
    assert len(full) == 1975 * 25 and full["grade"].isna().sum() == 572
    # round trip to the wide layout
    wide = labels_to_wide(full)
    original = pd.read_csv(sample_dir / "train.csv")
    pd.testing.assert_frame_equal(wide.astype(str), original.astype(str), check_dtype=False)


def test_real_coordinates_and_series_load(sample_dir, tmp_path):
    coords = load_coordinates(sample_dir / "train_label_coordinates.csv")
    assert len(coords) == 48_692
    assert set(coords["condition"]) == set(CONDITIONS) and set(coords["level"]) == set(LEVELS)
    write_coordinates(coords.head(50), tmp_path / "c.csv")
    again = pd.read_csv(tmp_path / "c.csv")
    assert again["condition"].iloc[0] == "Spinal Canal Stenosis" and again["level"].iloc[0] == "L1/L2"
    series = load_series_descriptions(sample_dir / "train_series_descriptions.csv")
    assert len(series) == 6294
    test = load_series_descriptions(sample_dir / "test_series_descriptions.csv")
    sub = load_submission(sample_dir / "sample_submission.csv")
    assert list(sub["row_id"]) == submission_row_ids(test["study_id"].unique())


def test_row_id_round_trip():
    ids = [row_id(7, c, lv) for c in CONDITIONS for lv in LEVELS]
    parts = split_row_ids(ids)
    assert parts["study_id"].eq(7).all() and list(parts["condition"].unique()) == list(CONDITIONS)
    table = parts.set_index(pd.RangeIndex(100, 125))
    assert table_row_ids(table).tolist() == ids and table_row_ids(table).index.equals(table.index)
    assert row_study_ids(ids).tolist() == [7] * 25
    with pytest.raises(ValueError, match="malformed row_id '7_spinal_canal_stenosis'"):
        split_row_ids(["7_spinal_canal_stenosis"])


def _wide(tmp_path, **changes):
    cols = [f"{c}_{lv}" for c in CONDITIONS for lv in LEVELS]
    df = pd.DataFrame([[1, *["Normal/Mild"] * 25], [2, *["Severe"] * 25]], columns=["study_id", *cols])
    for v in changes.values():
        df = v(df)
    path = tmp_path / "train.csv"
    df.to_csv(path, index=False)
    return path


def test_missing_column_names_file_and_column(tmp_path):
    path = _wide(tmp_path, drop=lambda d: d.drop(columns=["spinal_canal_stenosis_l4_l5"]))
    with pytest.raises(
        DataFormatError, match=r"train\.csv, line 1: missing column.*spinal_canal_stenosis_l4_l5"
    ):
        load_labels(path)


def test_unknown_grade_names_the_line(tmp_path):
    def bad(d):
        d.loc[1, "right_subarticular_stenosis_l2_l3"] = "Severeish"
        return d

    with pytest.raises(DataFormatError, match=r"line 3: unknown grade 'Severeish'"):
        load_labels(_wide(tmp_path, bad=bad))


def test_duplicate_study_is_an_error(tmp_path):
    with pytest.raises(DataFormatError, match="duplicate study_id 1"):
        load_labels(_wide(tmp_path, dup=lambda d: pd.concat([d, d.iloc[[0]]])))


def test_unknown_series_description(sample_dir, tmp_path):
    df = pd.read_csv(sample_dir / "train_series_descriptions.csv").head(5)
    df.loc[3, "series_description"] = "Coronal T1"
    df.to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(DataFormatError, match=r"s\.csv, line 5: unknown series_description 'Coronal T1'"):
        load_series_descriptions(tmp_path / "s.csv")


def test_bad_coordinate_condition(sample_dir, tmp_path):
    df = pd.read_csv(sample_dir / "train_label_coordinates.csv").head(4)
    df.loc[2, "condition"] = "Cervical Stenosis"
    df.to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(DataFormatError, match=r"line 4: unknown condition 'Cervical Stenosis'"):
        load_coordinates(tmp_path / "c.csv")
