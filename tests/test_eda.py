"""EDA tables and figures against the competition's known figures (real sample), and the 00_eda notebook."""

import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from lumbar.core.constants import CONDITIONS, GRADES, LEVELS
from lumbar.core.paths import PROJECT_ROOT
from lumbar.data import dicom, eda, eda_plots
from lumbar.data.index import build_index

STUDY = 100206310  # one of the two sample studies with images


@pytest.fixture(scope="module")
def tables(sample_dir):
    return eda.load_tables(sample_dir)


@pytest.fixture()
def labels_only(sample_dir, tmp_path):
    """A data folder with the real CSVs but no images (links, not copies)."""
    for name in ("train.csv", "train_series_descriptions.csv", "train_label_coordinates.csv"):
        (tmp_path / name).symlink_to(sample_dir / name)
    return tmp_path


def test_class_shares_overall_and_per_condition(tables):
    counts = eda.grade_counts(tables.labels, "condition")
    assert list(counts.index) == [*CONDITIONS, eda.ALL]
    assert counts.loc[eda.ALL, list(GRADES)].tolist() == [37754, 7960, 3089]
    assert counts.loc[eda.ALL, "labelled"] == 48803 == counts.loc[list(CONDITIONS), "labelled"].sum()
    shares = eda.grade_shares(counts)
    assert np.round(shares.loc[eda.ALL].to_numpy(), 3).tolist() == [0.774, 0.163, 0.063]
    np.testing.assert_allclose(shares.sum(axis=1), 1.0)
    # the subarticular recesses carry the largest Severe share
    assert shares["severe"].drop(eda.ALL).idxmax() in (
        "left_subarticular_stenosis",
        "right_subarticular_stenosis",
    )


def test_severe_grows_to_l4_l5(tables):
    by_level = eda.grade_counts(tables.labels, "level")
    assert by_level["severe"].drop(eda.ALL).tolist() == [88, 226, 594, 1446, 735]
    matrix = eda.grade_share_matrix(tables.labels, "severe")
    assert list(matrix.index) == list(CONDITIONS) and list(matrix.columns) == list(LEVELS)
    assert matrix.loc["spinal_canal_stenosis", "l4_l5"] == pytest.approx(255 / 1974)
    full = eda.grade_counts(tables.labels, ["condition", "level"])
    assert len(full) == 25 and full["labelled"].sum() == 48803


def test_weighted_grade_mass_uses_metric_weights(tables):
    mass = eda.weighted_grade_mass(tables.labels)
    total = 37754 * 1 + 7960 * 2 + 3089 * 4
    assert mass.loc["severe", "weighted_share"] == pytest.approx(3089 * 4 / total)
    assert mass["weighted_share"].sum() == pytest.approx(1.0)


def test_missing_labels_mostly_subarticular_top_levels(tables):
    assert eda.missing_summary(tables.labels) == {
        "blank_targets": 572,
        "studies_with_blank": 185,
        "studies_all_blank": 0,
    }
    missing = eda.missing_labels(tables.labels)
    assert missing.to_numpy().sum() == 572
    assert missing.loc["left_subarticular_stenosis", "l1_l2"] == 164
    assert missing.loc["right_subarticular_stenosis", "l1_l2"] == 161
    top = missing.loc[["left_subarticular_stenosis", "right_subarticular_stenosis"], ["l1_l2", "l2_l3"]]
    assert top.to_numpy().sum() / 572 > 0.8


def test_series_per_study(tables):
    per_study = eda.series_per_study(tables.series, tables.labels["study_id"].unique())
    assert len(per_study) == 1975
    distribution = eda.series_count_distribution(per_study)
    assert distribution["Axial T2"].tolist() == [0, 1640, 306, 28, 1]
    assert distribution["Sagittal T1"].tolist() == [2, 1966, 7, 0, 0]
    assert distribution["Sagittal T2/STIR"].tolist() == [1, 1974, 0, 0, 0]
    summary = eda.series_summary(tables.series, per_study)
    assert (
        summary["series_sagittal_t1"],
        summary["series_sagittal_t2_stir"],
        summary["series_axial_t2"],
    ) == (1980, 1974, 2340)
    assert summary["axial_series_per_study"] == {"1": 1640, "2": 306, "3": 28, "4": 1}
    assert summary["studies_2plus_axial"] == 335 and summary["studies_2plus_sagittal_t1"] == 7
    assert summary["studies_without_sagittal_t1"] == 2 and summary["studies_without_sagittal_t2_stir"] == 1


def test_series_per_study_counts_a_study_without_series_as_zero():
    series = pd.DataFrame({"study_id": [1, 1], "series_id": [10, 11], "series_description": ["Axial T2"] * 2})
    per_study = eda.series_per_study(series, [1, 2])
    assert per_study.loc[2].tolist() == [0, 0, 0] and per_study.loc[1, "Axial T2"] == 2


def test_any_severe_spinal(tables):
    worst = eda.worst_spinal_grade(tables.labels)
    assert len(worst) == 1974  # one study has no labelled spinal row
    table = eda.any_severe_spinal(tables.labels)
    assert table.loc["severe", "studies"] == 365
    assert table.loc["severe", "share"] == pytest.approx(0.185, abs=5e-4)
    n = table["studies"]
    weighted = 4 * 365 / (n["normal_mild"] + 2 * n["moderate"] + 4 * 365)
    assert table.loc["severe", "weighted_share"] == pytest.approx(weighted)


def test_grade_counts_keep_absent_grades_as_zero():
    labels = pd.DataFrame(
        {
            "study_id": [1, 1, 2],
            "condition": ["spinal_canal_stenosis"] * 3,
            "level": ["l1_l2", "l2_l3", "l1_l2"],
            "grade": pd.array([0, None, 1], dtype="Int8"),
        }
    )
    counts = eda.grade_counts(labels, "level")
    assert counts.loc["l1_l2", list(GRADES)].tolist() == [1, 1, 0]
    assert counts.loc["l2_l3", "labelled"] == 0 and eda.grade_shares(counts).loc["l2_l3"].sum() == 0


def test_coordinate_checks(tables):
    checks = eda.coordinate_checks(tables.coordinates, tables.series, tables.labels["study_id"].unique())
    assert checks["points"] == 48692
    assert checks["spinal_points_on_sagittal_t1"] == 5 == checks["points_on_unexpected_series"]
    assert checks["corner_points"] == 13
    assert checks["studies_without_points"] == 1


def test_normalized_points_use_each_instance_size(tables, sample_dir):
    index, _ = build_index(sample_dir, "train", studies=[STUDY], progress=False)
    points = eda.normalized_points(tables.coordinates, index)
    assert len(points) == 25 and set(points["study_id"]) == {STUDY}
    row = points.iloc[0]
    size = index[
        (index["series_id"] == row["series_id"]) & (index["instance_number"] == row["instance_number"])
    ]
    assert row["x_norm"] == pytest.approx(row["x"] / size["columns"].iloc[0])
    assert row["y_norm"] == pytest.approx(row["y"] / size["rows"].iloc[0])
    assert (
        points[["x_norm", "y_norm"]].to_numpy().min() > 0
        and points[["x_norm", "y_norm"]].to_numpy().max() < 1
    )


def test_label_point_table_with_and_without_images(tables, labels_only):
    points, message = eda.label_point_table(tables, max_studies=1)
    assert len(points) == 25 and "first 1 of 2" in message
    without = eda.load_tables(labels_only)
    points, message = eda.label_point_table(without)
    assert points.empty and "skipped" in message and "train_images" in message
    assert eda.example_studies(without, 2) == [] and eda.example_studies(tables, 5) == [100206310, 1002894806]
    with pytest.raises(FileNotFoundError, match="nowhere.parquet"):
        eda.label_point_table(tables, index_path=labels_only / "nowhere.parquet")


def test_example_panels_decode_only_labelled_slices(tables, monkeypatch):
    decoded = []
    original = dicom.read_pixels
    monkeypatch.setattr(
        dicom, "read_pixels", lambda header, *a: decoded.append(header.path) or original(header, *a)
    )
    panels = eda.example_panels(tables, STUDY)
    points = tables.coordinates[tables.coordinates["study_id"] == STUDY]
    assert len(decoded) == len(panels) == points.groupby(["series_id", "instance_number"]).ngroups
    assert sum(len(p.points) for p in panels) == 25
    assert panels[0].title.startswith("Sagittal T2/STIR") and len(panels[0].points) == 5
    assert all(p.image.min() >= 0 and p.image.max() <= 1 and p.image.ndim == 2 for p in panels)
    fig = eda_plots.example_slices(panels, "t")
    assert sum(len(ax.images) for ax in fig.axes) == len(panels)


def test_example_panels_errors_name_the_problem(tables, labels_only):
    with pytest.raises(ValueError, match="study 3008676218 has no label points"):
        eda.example_panels(tables, 3008676218)
    with pytest.raises(dicom.DicomReadError, match="series folder not found"):
        eda.example_panels(eda.load_tables(labels_only), STUDY)


def test_plots_are_figures_and_write_png(tables, tmp_path):
    counts = eda.grade_counts(tables.labels, "condition")
    figures = {
        "shares": eda_plots.grade_share_bars(counts, "t"),
        "counts": eda_plots.grade_count_bars(eda.grade_counts(tables.labels, "level"), "t"),
        "heat": eda_plots.heatmap(eda.missing_labels(tables.labels), "t"),
        "series": eda_plots.series_count_bars(
            eda.series_count_distribution(eda.series_per_study(tables.series))
        ),
    }
    assert all(isinstance(f, Figure) for f in figures.values())
    bars = figures["shares"].axes[0].patches
    widths = np.array([b.get_width() for b in bars]).reshape(len(GRADES), len(counts))
    np.testing.assert_allclose(widths.sum(axis=0), 1.0)
    points = pd.DataFrame(
        {"condition": list(CONDITIONS), "level": list(LEVELS), "x_norm": 0.5, "y_norm": 0.5}
    )
    scatter = eda_plots.label_point_scatter(points)
    assert len(scatter.axes) == len(CONDITIONS)
    path = eda_plots.save_png(figures["heat"], tmp_path / "sub" / "heat.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _run_notebook(data_dir, run_dir):
    import papermill as pm

    run_dir.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(
        str(PROJECT_ROOT / "notebooks" / "00_eda.ipynb"),
        str(run_dir / "00_eda.ipynb"),
        parameters={"DATA_DIR": str(data_dir), "RUN_DIR": str(run_dir)},
        kernel_name="python3",
        progress_bar=False,
        cwd=str(PROJECT_ROOT / "notebooks"),
    )
    return json.loads((run_dir / "eda" / "summary.json").read_text())


@pytest.mark.slow
def test_notebook_on_real_sample(sample_dir, tmp_path):
    summary = _run_notebook(sample_dir, tmp_path / "run")
    eda_dir = tmp_path / "run" / "eda"
    expected = {
        "grades_by_condition",
        "grades_by_level",
        "severe_share_heatmap",
        "missing_labels",
        "series_per_study",
        "label_points",
        "examples_100206310",
        "examples_1002894806",
    }
    assert {p.stem for p in eda_dir.glob("*.png")} == expected == {f[:-4] for f in summary["figures"]}
    assert all((eda_dir / f).stat().st_size > 10_000 for f in summary["figures"])
    assert summary["studies"] == 1975 and summary["labelled_rows"] == 48803
    assert summary["class_shares"] == pytest.approx(
        {"normal_mild": 0.7736, "moderate": 0.1631, "severe": 0.0633}, abs=1e-4
    )
    assert summary["any_severe_spinal_studies"] == 365
    assert summary["any_severe_spinal_prevalence"] == pytest.approx(0.185, abs=5e-4)
    assert summary["blank_targets"] == 572 and summary["axial_series_per_study"]["2"] == 306
    assert summary["label_points_placed"] == 50 and summary["example_studies"] == [100206310, 1002894806]
    assert summary["seconds"] > 0  # its run time is recorded (no bound: a busy machine is slow, not wrong)


@pytest.mark.slow
def test_notebook_without_images_skips_only_image_sections(labels_only, tmp_path):
    summary = _run_notebook(labels_only, tmp_path / "run")
    assert summary["label_points_placed"] == 0 and summary["example_studies"] == []
    assert "label_points.png" not in summary["figures"] and "missing_labels.png" in summary["figures"]
    assert summary["any_severe_spinal_studies"] == 365


@pytest.mark.slow
def test_notebook_on_synthetic_data(synthetic_dir, tmp_path):
    summary = _run_notebook(synthetic_dir, tmp_path / "run")
    wide = pd.read_csv(synthetic_dir / "train.csv")
    coords = pd.read_csv(synthetic_dir / "train_label_coordinates.csv")
    assert summary["studies"] == len(wide) == 3
    assert summary["labelled_rows"] == int(wide.drop(columns="study_id").notna().to_numpy().sum())
    assert summary["label_points_placed"] == len(coords) == summary["coordinates"]["points"]
    assert len(summary["example_studies"]) == 2
    assert {"label_points.png", *(f"examples_{s}.png" for s in summary["example_studies"])} <= set(
        summary["figures"]
    )
    assert all((tmp_path / "run" / "eda" / f).is_file() for f in summary["figures"])
