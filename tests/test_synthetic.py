"""Synthetic data: the competition's schema, determinism, readable files, geometry, visible grades, oracle."""

from __future__ import annotations

import filecmp
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pydicom
import pytest
from conftest import SYNTHETIC_SMALL

from lumbar.cli import main
from lumbar.core.constants import CONDITION_GROUP, CONDITIONS, GRADES, LABEL_COLUMNS, LEVELS
from lumbar.core.tables import (
    load_coordinates,
    load_labels,
    load_series_descriptions,
    load_submission,
    submission_row_ids,
    table_row_ids,
)
from lumbar.data.dicom import read_series, read_volume
from lumbar.data.index import build_index
from lumbar.data.synthetic import MANIFEST, LabelModel, SynthConfig
from lumbar.data.synthetic.anatomy import draw_phantom
from lumbar.data.synthetic.dicom_writer import SeriesTags, to_stored, write_instance
from lumbar.data.synthetic.labels import correlation_summary, load_grade_counts
from lumbar.data.synthetic.render import render_stack
from lumbar.data.synthetic.study import label_coordinates, plan_series, study_streams
from lumbar.localize.axial import map_axial
from lumbar.scoring.baselines import prior_submission
from lumbar.scoring.metric import competition_score
from lumbar.scoring.submission import validate_submission

COMPETITION_CSVS = [
    "train.csv", "train_label_coordinates.csv", "train_series_descriptions.csv", "test_series_descriptions.csv",
    "sample_submission.csv",
]  # fmt: skip


def _all_labels(root):
    return pd.concat([load_labels(root / "train.csv"), load_labels(root / "test_labels.csv")], ignore_index=True)


# ------------------------------------------------------------------------------------------------ format
def test_csvs_have_the_real_columns_dtypes_and_spellings(synthetic_dir, sample_dir):
    for name in COMPETITION_CSVS:
        ours, real = pd.read_csv(synthetic_dir / name), pd.read_csv(sample_dir / name)
        assert list(ours.columns) == list(real.columns), name
        assert ours.dtypes.astype(str).to_dict() == real.dtypes.astype(str).to_dict(), name
    ours, real = pd.read_csv(synthetic_dir / "train.csv"), pd.read_csv(sample_dir / "train.csv")
    assert set(ours[list(LABEL_COLUMNS)].stack()) <= set(real[list(LABEL_COLUMNS)].stack())
    ours = pd.read_csv(synthetic_dir / "train_label_coordinates.csv")
    real = pd.read_csv(sample_dir / "train_label_coordinates.csv")
    for col in ("condition", "level"):
        assert set(ours[col]) <= set(real[col]), col
    ours = pd.read_csv(synthetic_dir / "train_series_descriptions.csv")
    assert set(ours["series_description"]) == {"Sagittal T1", "Sagittal T2/STIR", "Axial T2"}
    test_labels = pd.read_csv(synthetic_dir / "test_labels.csv")
    assert list(test_labels.columns) == list(pd.read_csv(sample_dir / "train.csv").columns)


def test_package_loaders_read_every_csv(synthetic_dir):
    n_train, n_test = SYNTHETIC_SMALL["studies"], SYNTHETIC_SMALL["test_studies"]
    labels = load_labels(synthetic_dir / "train.csv", dropna=False)
    assert len(labels) == n_train * 25 and labels["study_id"].nunique() == n_train
    coords = load_coordinates(synthetic_dir / "train_label_coordinates.csv")
    assert set(coords["study_id"]) <= set(labels["study_id"])
    series = load_series_descriptions(synthetic_dir / "train_series_descriptions.csv")
    assert set(coords["series_id"]) <= set(series["series_id"])
    test_series = load_series_descriptions(synthetic_dir / "test_series_descriptions.csv")
    sample = load_submission(synthetic_dir / "sample_submission.csv")
    assert sample["row_id"].tolist() == submission_row_ids(test_series["study_id"].unique())
    assert np.allclose(sample[list(GRADES)], 1 / 3) and test_series["study_id"].nunique() == n_test
    assert not set(test_series["study_id"]) & set(series["study_id"])
    manifest = json.loads((synthetic_dir / MANIFEST).read_text())
    assert {k: manifest["config"][k] for k in SYNTHETIC_SMALL} == SYNTHETIC_SMALL
    assert manifest["files"] == len(list(synthetic_dir.rglob("*.dcm")))


def test_dicom_tags_mirror_the_real_files(synthetic_dir, sample_dir):
    real = pydicom.dcmread(next((sample_dir / "train_images").rglob("*.dcm")))
    real_keys = {e.keyword for e in real}
    optional = {"RescaleSlope", "RescaleIntercept", "SliceThickness", "SpacingBetweenSlices"}
    syntaxes = set()
    for path in sorted(synthetic_dir.rglob("*.dcm"))[::5]:
        ds = pydicom.dcmread(path)
        assert {e.keyword for e in ds} - optional == real_keys - optional, path
        assert ds.SeriesDescription in ("T1", "T2") and ds.BitsStored == 12 and ds.BitsAllocated == 16
        assert ds.PhotometricInterpretation == "MONOCHROME2" and int(ds.pixel_array.max()) <= 4095
        assert ds.file_meta.MediaStorageSOPClassUID == real.file_meta.MediaStorageSOPClassUID
        syntaxes.add(ds.file_meta.TransferSyntaxUID)
    assert syntaxes <= {pydicom.uid.RLELossless, pydicom.uid.ExplicitVRLittleEndian}


@pytest.mark.parametrize("compressed", [True, False])
@pytest.mark.parametrize("rescale", [None, (2.0, 0.0)])
def test_written_pixels_read_back_exactly(tmp_path, compressed, rescale):
    image = np.random.default_rng(0).uniform(0, 3000, (2, 24, 20))
    tags = SeriesTags(123, 456, "T2", compressed, rescale, thickness_tags=False, thickness=4.0, spacing=4.4)
    orientation = np.array([0.0, 1.0, 0.0, 0.0, 0.0, -1.0])
    for k in range(2):
        write_instance(tmp_path / f"{1001 + 2 * k}.dcm", to_stored(image[k], rescale), tags, 1001 + 2 * k,
                       np.array([4.4 * k, -50.0, 10.0]), orientation, (0.8, 0.8), "101010.000000")
    ds = pydicom.dcmread(tmp_path / "1001.dcm")
    expected_syntax = pydicom.uid.RLELossless if compressed else pydicom.uid.ExplicitVRLittleEndian
    assert ds.file_meta.TransferSyntaxUID == expected_syntax
    assert ("RescaleSlope" in ds) == (rescale is not None) and "SliceThickness" not in ds
    volume = read_volume(tmp_path)
    slope = rescale[0] if rescale else 1.0
    stored = np.stack([to_stored(im, rescale) for im in image])
    assert volume.instance_numbers.tolist() == [1001, 1003]
    np.testing.assert_array_equal(volume.pixels, stored * slope)
    assert np.abs(volume.pixels - image).max() <= slope / 2 + 1e-6


# ------------------------------------------------------------------------------------------------ determinism
@pytest.mark.slow
def test_same_seed_writes_identical_files_with_any_worker_count(synthetic_dir, tmp_path, capsys):
    out = tmp_path / "again"
    args = ["synth", "--out", str(out), "--studies", str(SYNTHETIC_SMALL["studies"]),
            "--test-studies", str(SYNTHETIC_SMALL["test_studies"]), "--seed", str(SYNTHETIC_SMALL["seed"]),
            "--image-size", str(SYNTHETIC_SMALL["image_size"]), "--workers", "2", "--oracle", str(out / "oracle.csv")]
    assert main(args) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("synth: 3 train + 1 test studies")
    ours = sorted(p.relative_to(synthetic_dir) for p in synthetic_dir.rglob("*") if p.is_file())
    again = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert ours == again
    differ = [p for p in ours if p.name != MANIFEST and not filecmp.cmp(synthetic_dir / p, out / p, shallow=False)]
    assert differ == []
    assert main(args) == 2  # an existing folder is not overwritten without --overwrite
    assert "already exists" in capsys.readouterr().err
    assert main([*args[:2], str(tmp_path / "bad"), "--label-noise", "1.5"]) == 2
    assert "label_noise" in capsys.readouterr().err


def test_labels_and_anatomy_do_not_depend_on_image_size():
    model = LabelModel()
    draws = []
    for size in (64, 128):
        r_labels, r_anatomy, r_scan, _ = study_streams(3, "train", 7)
        severity = model.draw_latent(r_labels)
        phantom = draw_phantom(r_anatomy, severity)
        plans = plan_series(phantom, r_scan, 1, size, 0, "train")
        draws.append((severity, phantom.landmarks(), [p.series_id for p in plans]))
    np.testing.assert_array_equal(draws[0][0], draws[1][0])
    assert all(np.array_equal(draws[0][1][k], draws[1][1][k]) for k in draws[0][1])
    assert draws[0][2] == draws[1][2]


# ------------------------------------------------------------------------------------------------ readers
def test_index_and_reader_read_every_file(synthetic_dir):
    for split in ("train", "test"):
        index, report = build_index(synthetic_dir, split, progress=False)
        assert report.skipped == [] and report.missing_series == [] and report.unlisted_series == []
        assert len(index) == len(list((synthetic_dir / f"{split}_images").rglob("*.dcm")))
        for (study, series_id), rows in index.groupby(["study_id", "series_id"]):
            series = read_series(synthetic_dir / f"{split}_images" / str(study) / str(series_id), decode=True)
            volumes = [series.load(k) for k in range(len(series.stacks))]
            assert sum(len(v) for v in volumes) == len(rows)
            assert all(v.pixels.max() > 0 for v in volumes)


def test_map_axial_finds_the_subarticular_slice(synthetic_dir):
    index, _ = build_index(synthetic_dir, "train", progress=False)
    coords = load_coordinates(synthetic_dir / "train_label_coordinates.csv")
    mapped = map_axial(coords, index).dropna(subset=["instance_number"])
    where = index.set_index(["study_id", "series_id", "instance_number"])[["stack_index", "slice_index"]]
    sub = coords[coords["condition"].map(CONDITION_GROUP) == "subarticular"]
    checked = 0
    for _, row in sub.iterrows():
        hit = mapped[(mapped["study_id"] == row["study_id"]) & (mapped["level"] == row["level"])]
        assert len(hit) == 1, (row["study_id"], row["level"])
        hit = hit.iloc[0]
        assert hit["axial_series_id"] == row["series_id"]
        got = where.loc[(row["study_id"], row["series_id"], int(hit["instance_number"]))]
        want = where.loc[(row["study_id"], row["series_id"], row["instance_number"])]
        assert got["stack_index"] == want["stack_index"] and abs(got["slice_index"] - want["slice_index"]) <= 1
        checked += 1
    assert checked >= 10


# ------------------------------------------------------------------------------------------------ labels
def test_grade_counts_are_the_real_train_csv(sample_dir):
    real = load_labels(sample_dir / "train.csv", dropna=False)
    counts = load_grade_counts()
    for (condition, level), rows in real.groupby(["condition", "level"]):
        grades = rows["grade"]
        expected = [int((grades == g).sum()) for g in range(3)] + [int(grades.isna().sum())]
        assert counts.loc[(condition, level)].tolist() == expected


def test_written_grades_match_real_frequencies_and_correlations(sample_dir):
    model = LabelModel()
    rng = np.random.default_rng(0)
    severity = np.stack([model.draw_latent(rng) for _ in range(4000)])
    grades = model.draw_grades(rng, severity)
    frequencies = np.stack([(grades == g).mean(axis=0) for g in range(3)], axis=1)
    assert np.abs(frequencies - model.prior).max() < 0.03
    real = pd.read_csv(sample_dir / "train.csv").set_index("study_id")
    real = real.apply(lambda c: c.map({"Normal/Mild": 0, "Moderate": 1, "Severe": 2}))
    ours = correlation_summary(pd.DataFrame(grades, columns=list(LABEL_COLUMNS)))
    theirs = correlation_summary(real)
    assert all(abs(ours[k] - theirs[k]) < 0.04 for k in theirs), (ours, theirs)


def test_oracle_is_the_distribution_grades_are_drawn_from():
    model = LabelModel()
    severity = np.linspace(-2.0, 3.0, 25)
    draws = model.draw_grades(np.random.default_rng(1), np.tile(severity, (20000, 1)))
    empirical = np.stack([(draws == g).mean(axis=0) for g in range(3)], axis=1)
    np.testing.assert_allclose(empirical, model.oracle(severity), atol=0.015)
    np.testing.assert_allclose(model.oracle(severity).sum(axis=1), 1.0)
    # more label noise pulls the oracle towards the prior
    noisy = replace(model, label_noise=0.5).oracle(severity)
    assert np.abs(noisy - model.prior).sum() < np.abs(model.oracle(severity) - model.prior).sum()


def test_oracle_file_is_a_valid_submission_that_beats_the_prior(synthetic_dir, sample_dir):
    oracle = load_submission(synthetic_dir / "oracle.csv")
    labels = _all_labels(synthetic_dir)
    validate_submission(oracle, submission_row_ids(labels["study_id"].unique()), name="oracle.csv")
    ours = competition_score(labels, oracle).score
    real_prior = prior_submission(load_labels(sample_dir / "train.csv"), labels["study_id"].unique())
    prior = competition_score(labels, real_prior).score
    assert ours < prior - 0.2, (ours, prior)


def test_oracle_score_is_in_the_intended_range():
    """On many studies (labels only, no images) the oracle scores about 0.28 and the real prior about 0.93."""
    model = LabelModel()
    rng = np.random.default_rng(2)
    severity = np.stack([model.draw_latent(rng) for _ in range(3000)])
    grades = model.draw_grades(rng, severity)
    n = len(grades)
    labels = pd.DataFrame({"study_id": np.repeat(np.arange(n), 25),
                           "condition": np.tile(np.repeat(CONDITIONS, 5), n), "level": np.tile(LEVELS, 5 * n),
                           "grade": grades.reshape(-1)})
    row_ids = table_row_ids(labels)
    oracle = pd.DataFrame(model.oracle(severity).reshape(-1, 3), columns=list(GRADES)).assign(row_id=row_ids)
    prior = pd.DataFrame(np.tile(model.prior, (n, 1)), columns=list(GRADES)).assign(row_id=row_ids)
    assert 0.2 < competition_score(labels, oracle).score < 0.35
    assert 0.85 < competition_score(labels, prior).score < 1.0


# ------------------------------------------------------------------------------------------------ pixels
def _bright_area(image: np.ndarray, spacing: tuple[float, float], x: float, y: float, half_mm: float = 6.0) -> float:
    """mm^2 brighter than 0.6 x the slice's 99.5th percentile within +-half_mm of a point."""
    h = round(half_mm / spacing[0])
    r, c = round(y), round(x)
    patch = image[max(0, r - h) : r + h + 1, max(0, c - h) : c + h + 1]
    return float((patch > 0.6 * np.percentile(image, 99.5)).sum() * spacing[0] * spacing[1])


@pytest.mark.slow
def test_grades_are_visible_in_the_pixels_with_overlap():
    """Bright area (CSF on T2, fat on T1) at each label point shrinks from Normal/Mild to Moderate to Severe."""
    model = LabelModel()
    measured = []
    for index in range(30):
        r_labels, r_anatomy, r_scan, r_pixels = study_streams(5, "train", index)
        severity = model.draw_latent(r_labels)
        grades = model.draw_grades(r_labels, severity)
        phantom = draw_phantom(r_anatomy, severity)
        plans = plan_series(phantom, r_scan, index, 128, 0, "train")
        coords = pd.DataFrame(label_coordinates(phantom, plans, np.zeros(25, bool), index, r_scan))
        for (series_id, instance), points in coords.groupby(["series_id", "instance_number"]):
            plan = next(p for p in plans if p.series_id == series_id)
            s = next(i for i, numbers in enumerate(plan.instances) if instance in numbers)
            stack = plan.stacks[s]
            one = replace(stack, positions=stack.positions[plan.instances[s] == instance])
            image = render_stack(phantom, one, plan.sequence, plan.effects, r_pixels)[0]
            for _, p in points.iterrows():
                grade = grades[CONDITIONS.index(p["condition"]) * 5 + LEVELS.index(p["level"])]
                area = _bright_area(image, stack.pixel_spacing, p["x"], p["y"])
                measured.append((CONDITION_GROUP[p["condition"]], grade, area))
    table = pd.DataFrame(measured, columns=["group", "grade", "area"])
    means = table.groupby(["group", "grade"])["area"].agg(["mean", "std", "size"])
    for group in ("spinal", "foraminal", "subarticular"):
        m = means.loc[group]
        assert m["size"].min() >= 3, means
        assert m.loc[0, "mean"] > m.loc[1, "mean"] > m.loc[2, "mean"], means
        # graded, not a switch: neighbouring grades overlap (less than 3 SD apart)
        assert (m.loc[0, "mean"] - m.loc[1, "mean"]) < 3 * m.loc[[0, 1], "std"].mean(), means


def test_axial_series_of_the_real_datas_length_on_request():
    """`axial_slices=(6, 12)`: 6-12 slices per disc, so a five-disc axial series has 30-60 slices; the default draws
    the same studies as before (3-6 per disc)."""
    lengths = {}
    for slices in ((3, 6), (6, 12)):
        counts = []
        for index in range(20):
            _, r_anatomy, r_scan, _ = study_streams(3, "train", index)
            phantom = draw_phantom(r_anatomy, LabelModel().draw_latent(study_streams(3, "train", index)[0]))
            plans = plan_series(phantom, r_scan, index, 128, 0, "train", axial_slices=slices)
            counts += [len(stack.positions) for p in plans if p.description == "Axial T2" for stack in p.stacks]
        lengths[slices] = counts
    assert min(lengths[(3, 6)]) >= 3 and max(lengths[(3, 6)]) <= 6
    assert min(lengths[(6, 12)]) >= 6 and max(lengths[(6, 12)]) <= 12 and max(lengths[(6, 12)]) > 6
    with pytest.raises(ValueError, match="axial_slices must be"):
        SynthConfig(axial_slices=(5, 2))
