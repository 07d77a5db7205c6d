"""Train -> save -> load -> localize on the two real sample studies, with a tiny model (seconds)."""

import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from lumbar.cli import main
from lumbar.core.atomic import write_json
from lumbar.core.constants import CONDITIONS, LEVELS, condition_title, level_title
from lumbar.core.manifest import MANIFEST_NAME, read_manifest
from lumbar.core.tables import COORDINATE_COLUMNS, load_coordinates
from lumbar.data.index import build_index
from lumbar.localize import train as train_module
from lumbar.localize.config import LocalizerConfig
from lumbar.localize.predict import Localizer, localize
from lumbar.localize.tasks import TASKS, placed_coordinates
from lumbar.localize.train import cache_dir, crop_geometry, prepare_inputs, train_localizer

STUDIES = [100206310, 1002894806]
T1_OF_FIRST = 2092806862
TINY = {"backbone": "test_resnet", "size": 32, "slices": 4, "epochs": 1, "axial_epochs": 1, "refine_epochs": 1,
        "batch_size": 4, "decoder_channels": 8}


@pytest.fixture(scope="module")
def coords(sample_dir):
    table = load_coordinates(sample_dir / "train_label_coordinates.csv")
    return table[table["study_id"].isin(STUDIES)].reset_index(drop=True)


@pytest.fixture(scope="module")
def trained(sample_dir, coords, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    config = LocalizerConfig().with_overrides(TINY)
    manifest = train_localizer(config, sample_dir, coords, run, progress=False)
    return run, config, manifest


def test_training_writes_manifest_checkpoints_and_cache(trained):
    run, config, manifest = trained
    assert read_manifest(run)["localizer"] == manifest
    assert manifest["backbone"] == "test_resnet" and manifest["size"] == 32 and manifest["slices"] == 4
    assert set(manifest["models"]) == {"sag_t2", "sag_t1", "axial", "sag_t1_slices"}
    assert manifest["train_studies"] == 2 and manifest["models"]["sag_t1_slices"]["refines"] == "sag_t1"
    assert manifest["models"]["axial"]["samples"] == 10  # one per study and level
    for entry in manifest["models"].values():
        state = torch.load(run / entry["checkpoint"], weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in state.values())
    sag = sorted(cache_dir(run, TASKS["sag_t2"], config).glob("*.npy"))
    ax = sorted(cache_dir(run, TASKS["axial"], config).glob("*.npy"))
    assert len(sag) == 2 and np.load(sag[0]).shape == (4, 32, 32) and np.load(sag[0]).dtype == np.float16
    assert len(ax) == 10 and np.load(ax[0]).shape == (5, 32, 32)  # 1 neighbour + 1 slice of shift, each side
    crops = sorted(cache_dir(run, TASKS["sag_t1"], config, "slices").glob("*.npy"))
    side = crop_geometry(config).padded[1]  # crop pixels plus the jitter margin on each side
    assert len(crops) == 20 and np.load(crops[0]).shape == (18, side, side) and side > config.refine_size


def test_cached_inputs_are_reused_without_decoding(trained, sample_dir, coords, monkeypatch):
    run, config, _ = trained
    index, _ = build_index(sample_dir, "train", studies=STUDIES, progress=False)
    placed = placed_coordinates(coords, index)
    first, targets, _ = prepare_inputs(TASKS["sag_t1"], placed, sample_dir, run, config, progress=False)

    def no_decoding(*args, **kwargs):
        raise AssertionError("DICOM read although the inputs are cached")

    monkeypatch.setattr(train_module, "read_series", no_decoding)
    again, targets_again, problems = prepare_inputs(TASKS["sag_t1"], placed, sample_dir, run, config, progress=False)
    assert not problems and np.array_equal(first, again) and np.array_equal(targets, targets_again, equal_nan=True)
    # targets: 10 points (left then right foramina), normalised; the right side sits on lower slice indices
    assert targets.shape == (2, 10, 3) and np.nanmax(targets) <= 1 and np.nanmin(targets) >= 0
    assert (targets[:, 5:, 2] < targets[:, :5, 2]).all()


def test_localize_cli_writes_the_coordinates_format(trained, sample_dir, tmp_path, capsys):
    run, _, _ = trained
    moved = tmp_path / "moved_run"
    shutil.copytree(run, moved)  # the run folder is self-describing: paths in it are relative
    out = tmp_path / "pred.csv"
    rc = main(["localize", "--data-dir", str(sample_dir), "--split", "train", "--run", str(moved), "--out", str(out)])
    assert rc == 0 and "2 studies, 50 rows" in capsys.readouterr().out
    raw = pd.read_csv(out)
    assert list(raw.columns) == [*COORDINATE_COLUMNS, "confidence", "plausible"]  # the label format, then the extras
    assert raw["confidence"].between(0, 1).all() and set(raw["plausible"]) <= {0, 1}
    assert set(raw["condition"]) == {condition_title(c) for c in CONDITIONS}
    assert set(raw["level"]) == {level_title(lv) for lv in LEVELS}
    pred = load_coordinates(out)
    assert pred.groupby("study_id").size().to_dict() == {s: 25 for s in STUDIES}
    assert pred.groupby("condition").size().to_dict() == {c: 10 for c in CONDITIONS}
    index, _ = build_index(sample_dir, "train", studies=STUDIES, progress=False)
    known = set(map(tuple, index[["study_id", "series_id", "instance_number"]].to_numpy()))
    assert all(k in known for k in map(tuple, pred[["study_id", "series_id", "instance_number"]].to_numpy()))
    for study, group in pred.groupby("study_id"):
        for condition in ("spinal_canal_stenosis", "left_neural_foraminal_narrowing", "right_neural_foraminal_narrowing"):
            col = group[group["condition"] == condition].set_index("level").loc[list(LEVELS)]
            assert col["y"].is_monotonic_increasing, (study, condition)  # head to foot
        descriptions = index.drop_duplicates("series_id").set_index("series_id")["series_description"]
        assert (group.loc[group["condition"] == "spinal_canal_stenosis", "series_id"].map(descriptions)
                == "Sagittal T2/STIR").all()  # fmt: skip
        assert (group.loc[group["condition"].str.endswith("subarticular_stenosis"), "series_id"].map(descriptions)
                == "Axial T2").all()  # fmt: skip

    rc = main(["localize-eval", "--pred", str(out), "--truth", str(sample_dir / "train_label_coordinates.csv"),
               "--data-dir", str(sample_dir)])  # fmt: skip
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert rc == 0
    assert re.fullmatch(r"localize: within5mm=[\d.]+ within10mm=[\d.]+ slice_exact=[\d.]+ slice_pm1=[\d.]+ "
                        r"median_mm=[\d.]+ missing=0", last)  # fmt: skip


def _without_series(sample_dir, data, dropped):
    """The sample studies as a data folder (links) without the series `dropped`."""
    shutil.copy(sample_dir / "train_series_descriptions.csv", data.mkdir() or data)
    for study in STUDIES:
        for series in (sample_dir / "train_images" / str(study)).iterdir():
            if int(series.name) not in dropped:
                (data / "train_images" / str(study)).mkdir(parents=True, exist_ok=True)
                (data / "train_images" / str(study) / series.name).symlink_to(series, target_is_directory=True)
    return data


def _run_without_halfspan(run, dst):
    """The run as one trained before the half-span was recorded (its manifest without the key)."""
    dst.mkdir()
    for path in run.iterdir():
        if path.name != MANIFEST_NAME:
            (dst / path.name).symlink_to(path)
    data = read_manifest(run)
    del data["localizer"]["foramina_halfspan_mm"]
    write_json(data, dst / MANIFEST_NAME)
    return dst


def test_study_missing_a_series_is_reported_and_keeps_its_other_rows(
    trained, sample_dir, coords, tmp_path, monkeypatch
):
    """Without its Sagittal T1 a study's foramina are placed from its canal on its Sagittal T2/STIR (25 rows)
    when asked (`place_foramina`); by default, and in a run trained before the half-span, they are left out (15
    rows: the prior's), as before. The canal points are
    the labelled ones: what is tested is where the foramina go, not how well a one-epoch model finds a canal."""
    run, _, manifest = trained
    assert manifest["foramina_halfspan_mm"] is not None
    sagittal_points = Localizer.sagittal_points

    def labelled(self, task, study_id, series_id, stack, heatmaps=None):
        predicted = sagittal_points(self, task, study_id, series_id, stack, heatmaps)  # fills the heatmaps
        truth = coords[(coords["study_id"] == study_id) & coords["condition"].isin({c for c, _ in task.points})]
        return truth.assign(confidence=0.9)[predicted.columns].reset_index(drop=True)

    monkeypatch.setattr(Localizer, "sagittal_points", labelled)
    data = _without_series(sample_dir, tmp_path / "data", {T1_OF_FIRST})
    found, report = localize(data, "train", run, progress=False, place_foramina=True)
    counts = found.groupby(["study_id", "condition"]).size()
    assert counts[STUDIES[1]].sum() == 25 and counts[STUDIES[0]].sum() == 25 and not report.incomplete
    series = pd.read_csv(sample_dir / "train_series_descriptions.csv").set_index("series_id")["series_description"]
    foramina = found[(found["study_id"] == STUDIES[0]) & found["condition"].str.contains("foraminal")]
    assert set(foramina["series_id"].map(series)) == {"Sagittal T2/STIR"} and (foramina["confidence"] == 0.9).all()
    placed = "no Sagittal T1 series -> foramina placed from the canal and the learned offset, cut from Sagittal T2/STIR"
    assert (STUDIES[0], placed) in report.notes

    old = _run_without_halfspan(run, tmp_path / "old")
    for found, report in (
        localize(data, "train", run, progress=False),  # placing is off by default
        localize(data, "train", old, progress=False, place_foramina=True),
    ):
        counts = found.groupby(["study_id", "condition"]).size()
        assert counts[STUDIES[1]].sum() == 25
        assert counts[STUDIES[0]].sum() == 15 and "left_neural_foraminal_narrowing" not in counts[STUDIES[0]]
        assert report.incomplete == [STUDIES[0]]
        assert (STUDIES[0], "no Sagittal T1 series -> no foraminal points") in report.notes
        assert f"study {STUDIES[0]}: no Sagittal T1 series" in report.summary()


def test_a_study_without_either_sagittal_series_leaves_its_foramina_to_the_prior(trained, sample_dir, tmp_path):
    """No Sagittal T1 and no Sagittal T2/STIR: no canal point to place the foramina from, so no row for them
    (nor for the canal, nor the subarticular recesses: no level to look for on the axial series)."""
    run, _, _ = trained
    index, _ = build_index(sample_dir, "train", studies=STUDIES[:1], progress=False)
    sagittal = set(index.loc[index["series_description"].str.startswith("Sagittal"), "series_id"])
    data = _without_series(sample_dir, tmp_path / "data", sagittal)
    coords, report = localize(data, "train", run, progress=False)
    assert STUDIES[0] not in set(coords["study_id"]) and report.rows_per_study[STUDIES[0]] == 0
    notes = [note for s, note in report.notes if s == STUDIES[0]]
    assert "no Sagittal T1 series -> no foraminal points" in notes, notes


def test_synthetic_train_then_localize_the_unlabelled_test_split(synthetic_dir, tmp_path):
    """The test-time path: no coordinates for the split, only images (synthetic, no real sample needed)."""
    run = tmp_path / "run"
    config = LocalizerConfig().with_overrides(TINY)
    train_localizer(config, synthetic_dir, synthetic_dir / "train_label_coordinates.csv", run, progress=False)
    coords, report = localize(synthetic_dir, "test", run, progress=False)
    index, _ = build_index(synthetic_dir, "test", progress=False)
    assert set(report.rows_per_study) == set(index["study_id"])
    for study, rows in index.groupby("study_id"):
        kinds = set(rows["series_description"])
        expected = 5 * ("Sagittal T2/STIR" in kinds) + 10 * ("Sagittal T1" in kinds) + 10 * (
            {"Sagittal T2/STIR", "Axial T2"} <= kinds)  # fmt: skip
        assert report.rows_per_study[study] == expected == (coords["study_id"] == study).sum()


def test_training_twice_gives_the_same_weights(synthetic_dir, tmp_path):
    """Initial weights are seeded too (the process's own torch seed differs from run to run)."""
    coords = load_coordinates(synthetic_dir / "train_label_coordinates.csv")
    config = LocalizerConfig().with_overrides({**TINY, "tasks": "sag_t2", "refine_tasks": "", "device": "cpu"})
    states = []
    for name in ("a", "b"):
        train_localizer(config, synthetic_dir, coords, tmp_path / name, progress=False)
        states.append(torch.load(tmp_path / name / "localizer" / "sag_t2.pt", weights_only=True))
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
