"""Label-noise cleanup: flags from out-of-fold probabilities, their expected precision and recall against the
synthetic truth, training without the flagged grades (validation keeps them), and the generator's truth file."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from _train_data import engine_config, make_tiny_data, tiny_build_model

from lumbar.analysis.label_noise import flag_label_noise, flag_run, noise_precision_recall
from lumbar.cli import main
from lumbar.core.constants import LEVELS, row_id
from lumbar.core.manifest import update_manifest
from lumbar.core.tables import DataFormatError, load_labels, load_submission, write_csv
from lumbar.data.synthetic import LABEL_NOISE_CSV, SynthConfig, generate
from lumbar.train.loop import train

SCS = "spinal_canal_stenosis"


def _labels(grades):
    return pd.DataFrame({"study_id": 1, "condition": SCS, "level": LEVELS[: len(grades)], "grade": grades})


def _oof(probs):
    return pd.DataFrame([(row_id(1, SCS, lv), *p) for lv, p in zip(LEVELS, probs)],
                        columns=["row_id", "normal_mild", "moderate", "severe"])


# ------------------------------------------------------------------------------------------------ flags
def test_confident_wrong_rows_are_flagged_right_ones_not_and_the_threshold_is_inclusive():
    labels = _labels([2, 0, 1, 0, 1])
    oof = _oof([(0.9, 0.08, 0.02),  # written severe, confidently normal: flagged
                (0.9, 0.08, 0.02),  # written normal, right: not flagged
                (0.5, 0.2, 0.3),  # p_written exactly the threshold: flagged (off by >= 0.8)
                (0.2000001, 0.5, 0.2999999),  # just above: not flagged
                (0.6, 0.4, 0.0)])
    flags = flag_label_noise(oof, labels, threshold=0.2)
    by = flags.set_index("level")
    assert by.loc["l1_l2", "flagged"] and by.loc["l3_l4", "flagged"]
    assert not by.loc["l2_l3", "flagged"] and not by.loc["l4_l5", "flagged"] and not by.loc["l5_s1", "flagged"]
    assert by.loc["l1_l2", "p_written"] == pytest.approx(0.02)
    assert by.loc["l1_l2", "predicted"] == 0 and by.loc["l1_l2", "p_predicted"] == pytest.approx(0.9)
    assert flags["p_written"].is_monotonic_increasing and flags["row_id"].iloc[0] == row_id(1, SCS, "l1_l2")


def test_blank_grades_and_rows_without_predictions_are_not_judged():
    labels = pd.concat([_labels([1, 0]), pd.DataFrame({"study_id": [1, 2], "condition": SCS, "level": ["l3_l4", "l1_l2"],
                                                        "grade": [pd.NA, 0]})], ignore_index=True)
    flags = flag_label_noise(_oof([(0.1, 0.1, 0.8), (0.8, 0.1, 0.1), (0.3, 0.3, 0.4)]), labels)
    assert sorted(flags["level"]) == ["l1_l2", "l2_l3"] and (flags["study_id"] == 1).all()


def test_precision_and_recall_are_expected_values_over_the_truth():
    truth = pd.DataFrame({"row_id": list("abcd"), "p_noise": [0.9, 0.5, 0.1, 0.5]})
    flags = pd.DataFrame({"row_id": list("abc"), "flagged": [True, True, False]})
    got = noise_precision_recall(flags, truth)
    assert got["precision"] == pytest.approx(0.7) and got["recall"] == pytest.approx(1.4 / 2.0)
    assert got["flagged"] == 2 and got["expected_noisy"] == pytest.approx(2.0)
    none = noise_precision_recall(flags.iloc[:0], truth)
    assert np.isnan(none["precision"]) and none["recall"] == 0
    assert np.isnan(noise_precision_recall(flags, truth.assign(p_noise=0.0))["recall"])
    with pytest.raises(ValueError, match="not in the truth"):
        noise_precision_recall(pd.DataFrame({"row_id": ["zz"]}), truth)


# ------------------------------------------------------------------------------------------------ training
@pytest.fixture(autouse=True)
def tiny_model(monkeypatch):
    import lumbar.models

    monkeypatch.setattr(lumbar.models, "build_model", tiny_build_model, raising=False)


def test_exclusion_drops_the_listed_grades_from_training_only(tmp_path):
    tiny = make_tiny_data(tmp_path, n_studies=6, conditions=(SCS,))
    labels = load_labels(tiny[0] / "train.csv")
    studies = sorted(labels["study_id"].unique())
    listed = [row_id(s, SCS, "l3_l4") for s in studies] + [row_id(studies[0], SCS, "l5_s1")]
    write_csv(pd.DataFrame({"row_id": listed, "flagged": True}), tmp_path / "flags.csv")
    out = tmp_path / "exp" / "run"
    result = train(engine_config(tiny, out, epochs=1, batch_size=64, exclude=str(tmp_path / "flags.csv"),
                                 record_samples=True))  # one batch: none dropped

    folds = pd.read_csv(tmp_path / "exp" / "folds.csv")
    training = folds.loc[folds["fold"] != 0, "study_id"]
    seen = set(json.loads((out / "spinal" / "fold0" / "samples_seen.json").read_text())["1"]["0"])
    expected = {row_id(s, SCS, lv) for s in training for lv in LEVELS} - set(listed)
    assert seen == expected
    held_out = set(load_submission(result.oof_path)["row_id"])  # the held-out fold keeps every row
    assert {i for i in listed if int(i.split("_")[0]) in set(folds.loc[folds["fold"] == 0, "study_id"])} <= held_out
    assert len(pd.read_csv(result.predictions_path)) == 5 * (folds["fold"] == 0).sum()
    assert result.summary["excluded_rows"] == len(listed)


def test_exclusion_list_errors_name_the_file(tmp_path):
    tiny = make_tiny_data(tmp_path, n_studies=4, conditions=(SCS,))
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        train(engine_config(tiny, tmp_path / "exp" / "a", exclude=str(tmp_path / "nowhere.csv")))
    write_csv(pd.DataFrame({"id": ["x"]}), tmp_path / "bad.csv")
    with pytest.raises(DataFormatError, match=r"bad\.csv.*row_id"):
        train(engine_config(tiny, tmp_path / "exp" / "b", exclude=str(tmp_path / "bad.csv")))


# ------------------------------------------------------------------------------------------------ synthetic
def _synth(root, label_noise):
    generate(root, SynthConfig(studies=3, test_studies=0, seed=5, image_size=32, label_noise=label_noise),
             oracle=root / "oracle.csv", progress=False)
    return pd.read_csv(root / LABEL_NOISE_CSV)


def test_generator_writes_the_noise_posterior(tmp_path):
    truth = _synth(tmp_path / "noisy", 0.3)
    labels = load_labels(tmp_path / "noisy" / "train.csv")
    assert len(truth) == len(labels) and truth["p_noise"].between(0, 1).all()
    oracle = load_submission(tmp_path / "noisy" / "oracle.csv").set_index("row_id")
    p_written = oracle.loc[truth["row_id"]].to_numpy()[np.arange(len(truth)), truth["grade"]]
    unlikely = p_written < np.median(p_written)
    assert truth["p_noise"][unlikely].mean() > truth["p_noise"][~unlikely].mean()
    assert truth["p_noise"].mean() == pytest.approx(0.3, abs=0.1)  # E[p_noise] = label_noise
    clean = _synth(tmp_path / "clean", 0.0)
    assert (clean["p_noise"] == 0).all()
    assert json.loads((tmp_path / "clean" / "synthetic.json").read_text())["label_noise_file"] == LABEL_NOISE_CSV


def test_label_noise_command_on_a_synthetic_run(tmp_path, capsys):
    """The oracle as the run's ensemble: the flags are the rows the generator itself finds unlikely."""
    data, run = tmp_path / "data", tmp_path / "run"
    _synth(data, 0.3)
    (run / "ensemble").mkdir(parents=True)
    write_csv(load_submission(data / "oracle.csv"), run / "ensemble" / "oof.csv")
    update_manifest(run, "ensemble", {"oof": "ensemble/oof.csv"})
    assert main(["label-noise", "--run", str(run), "--data-dir", str(data), "--threshold", "0.3"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("label-noise: flagged=") and "threshold=0.3" in line and "recall=" in line
    summary = json.loads((run / "label_noise" / "summary.json").read_text())
    flags = pd.read_csv(run / "label_noise" / "flags.csv")
    assert summary["flagged"] == len(flags) > 0 and flags["flagged"].all()
    assert summary["precision"] > 0.3  # better than flagging at random (E[p_noise] = 0.3)
    (data / LABEL_NOISE_CSV).unlink()  # real data: no truth, no precision
    flag_run(run, data)
    assert "precision" not in json.loads((run / "label_noise" / "summary.json").read_text())
