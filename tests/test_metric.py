import math
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss

from lumbar.cli import main
from lumbar.core.constants import CONDITION_GROUP, GRADES, row_id
from lumbar.core.tables import labels_to_wide, load_labels, split_row_ids, write_csv
from lumbar.scoring.baselines import (
    class_priors,
    fold_prior,
    out_of_fold_prior,
    prior_rows,
    prior_submission,
    uniform_submission,
)
from lumbar.scoring.metric import align_predictions, competition_score, score_test_set
from lumbar.scoring.submission import SubmissionError

SPINAL, LNFN, RNFN = "spinal_canal_stenosis", "left_neural_foraminal_narrowing", "right_neural_foraminal_narrowing"
RSS = "right_subarticular_stenosis"
LINE = re.compile(r"^score=\d+\.\d{6} spinal=\d+\.\d{6} foraminal=\d+\.\d{6} subarticular=\d+\.\d{6} any_severe_spinal=\d+\.\d{6}$")


def _set(sub: pd.DataFrame, study, condition, level, probs) -> None:
    sub.loc[sub["row_id"] == row_id(study, condition, level), list(GRADES)] = probs


def hand_case():
    """Study 1: no severe spinal level; study 2: exactly one (l4_l5). Expected terms worked out by hand."""
    L = ["l1_l2", "l2_l3", "l3_l4", "l4_l5", "l5_s1"]
    rows = [(1, SPINAL, lv, g) for lv, g in zip(L, [0, 1, 0, 0, 0])]
    rows += [(2, SPINAL, lv, g) for lv, g in zip(L, [0, 0, 0, 2, 1])]
    rows += [(1, LNFN, "l4_l5", 2), (1, RNFN, "l4_l5", 0), (2, LNFN, "l5_s1", 1), (1, RSS, "l1_l2", 0)]
    labels = pd.DataFrame(rows, columns=["study_id", "condition", "level", "grade"])
    sub = uniform_submission([1, 2])
    for lv in L:
        _set(sub, 1, SPINAL, lv, [0.7, 0.2, 0.1])
        _set(sub, 2, SPINAL, lv, [0.8, 0.15, 0.05])
    _set(sub, 1, SPINAL, "l2_l3", [0.3, 0.5, 0.2])
    _set(sub, 2, SPINAL, "l4_l5", [0.2, 0.3, 0.5])
    _set(sub, 2, SPINAL, "l5_s1", [0.1, 0.6, 0.3])
    _set(sub, 1, LNFN, "l4_l5", [0.5, 0.25, 0.25])
    _set(sub, 1, RNFN, "l4_l5", [0.9, 0.05, 0.05])
    _set(sub, 2, LNFN, "l5_s1", [0.3, 0.4, 0.3])
    _set(sub, 1, RSS, "l1_l2", [0.6, 0.3, 0.1])
    ln = math.log
    expected = {
        # weights 1/2/4: study 1 -> 4x(0.7, w1) + (0.5, w2); study 2 -> 3x(0.8, w1) + (0.5, w4) + (0.6, w2)
        "spinal": (-4 * ln(0.7) - 2 * ln(0.5) - 3 * ln(0.8) - 4 * ln(0.5) - 2 * ln(0.6)) / 15,
        # left severe p=0.25 (w4), right normal p=0.9 (w1), left moderate p=0.4 (w2), pooled
        "foraminal": (-4 * ln(0.25) - ln(0.9) - 2 * ln(0.4)) / 7,
        "subarticular": -ln(0.6),
        # study 1: no severe, weight 2 (its worst is moderate), max severe 0.2; study 2: severe, weight 4, max 0.5
        "any_severe_spinal": (-2 * ln(1 - 0.2) - 4 * ln(0.5)) / 6,
    }
    expected["score"] = sum(expected.values()) / 4
    return labels, sub, expected


def test_hand_computed_terms():
    labels, sub, expected = hand_case()
    result = competition_score(labels, sub)
    for key, value in expected.items():
        assert getattr(result, key) == pytest.approx(value, abs=1e-12), key
    assert result.n_rows == 14 and result.n_studies == 2


def test_any_severe_uses_max_severe_probability_and_worst_weight():
    labels, sub, _ = hand_case()
    # raising a non-maximal severe probability of study 2 leaves the term unchanged; raising the max changes it
    base = competition_score(labels, sub).any_severe_spinal
    _set(sub, 2, SPINAL, "l5_s1", [0.1, 0.5, 0.4])
    assert competition_score(labels, sub).any_severe_spinal == pytest.approx(base)
    _set(sub, 2, SPINAL, "l1_l2", [0.1, 0.1, 0.8])
    assert competition_score(labels, sub).any_severe_spinal == pytest.approx((-2 * math.log(0.8) - 4 * math.log(0.8)) / 6)


def test_unlabelled_rows_ignored_and_labelled_rows_required():
    labels, sub, expected = hand_case()
    _set(sub, 1, RSS, "l5_s1", [1.0, 0.0, 0.0])  # no label for this row
    with_na = pd.concat([labels, pd.DataFrame([[2, RSS, "l1_l2", pd.NA]], columns=labels.columns)])
    assert competition_score(with_na, sub).score == pytest.approx(expected["score"])
    missing = sub[sub["row_id"] != row_id(2, LNFN, "l5_s1")]
    with pytest.raises(SubmissionError, match="2_left_neural_foraminal_narrowing_l5_s1"):
        competition_score(labels, missing)


def test_clipping_and_missing_group():
    labels, sub, _ = hand_case()
    _set(sub, 1, RSS, "l1_l2", [0.0, 0.5, 0.5])
    assert competition_score(labels, sub).subarticular == pytest.approx(-math.log(1e-15))
    no_sub = labels[labels["condition"] != RSS]
    result = competition_score(no_sub, sub)
    assert math.isnan(result.subarticular) and math.isnan(result.score) and np.isfinite(result.spinal)


def test_group_terms_match_sklearn_weighted_log_loss():
    rng = np.random.default_rng(0)
    studies = np.arange(30)
    sub = uniform_submission(studies)
    sub[list(GRADES)] = rng.dirichlet([2, 1, 1], len(sub))
    labels = split_row_ids(sub["row_id"]).assign(grade=rng.integers(0, 3, len(sub)))
    result = competition_score(labels, sub)
    table = align_predictions(labels, sub)
    for group in ("spinal", "foraminal", "subarticular"):
        rows = table[table["condition"].map(CONDITION_GROUP) == group]
        ref = log_loss(rows["grade"], rows[list(GRADES)], labels=[0, 1, 2], sample_weight=2.0 ** rows["grade"])
        assert getattr(result, group) == pytest.approx(ref, rel=1e-12)


def test_real_train_baselines(sample_dir):
    labels = load_labels(sample_dir / "train.csv")
    studies = labels["study_id"].unique()
    assert competition_score(labels, uniform_submission(studies)).score == pytest.approx(0.999410, abs=1e-5)
    assert competition_score(labels, prior_submission(labels, studies)).score == pytest.approx(0.930697, abs=1e-5)
    pooled = prior_submission(labels, studies, by="condition")
    assert competition_score(labels, pooled).score == pytest.approx(1.108652, abs=1e-5)


def test_priors_are_unweighted_frequencies():
    rng = np.random.default_rng(1)
    labels = split_row_ids(uniform_submission(range(4))["row_id"]).assign(grade=rng.integers(0, 3, 100))
    by_level = class_priors(labels).set_index(["condition", "level"])
    one = labels[(labels["condition"] == SPINAL) & (labels["level"] == "l4_l5")]["grade"]
    assert by_level.loc[(SPINAL, "l4_l5"), "severe"] == pytest.approx((one == 2).mean())
    pooled = class_priors(labels, by="condition").set_index("condition")
    assert pooled.loc[LNFN, "moderate"] == pytest.approx((labels[labels["condition"] == LNFN]["grade"] == 1).mean())
    assert np.allclose(pooled[list(GRADES)].sum(axis=1), 1)
    with pytest.raises(ValueError, match="no labelled row"):
        class_priors(labels[labels["level"] != "l1_l2"])


def test_a_test_set_is_scored_beside_its_prior_and_an_oracle_that_covers_it():
    rng = np.random.default_rng(2)
    train = split_row_ids(uniform_submission(range(4))["row_id"]).assign(grade=rng.integers(0, 3, 100))
    test = split_row_ids(uniform_submission([7, 8])["row_id"]).assign(grade=rng.integers(0, 3, 50))
    oracle = prior_submission(train, [7, 8, 9], smoothing=1.0).assign(normal_mild=0.5, moderate=0.25, severe=0.25)
    scores, references = score_test_set(test, uniform_submission([7, 8]), train, oracle)
    assert list(references) == ["oracle", "prior"] and len(references["oracle"]) == 50
    assert scores["submission"] == competition_score(test, uniform_submission([7, 8])).score
    assert scores["prior"] == competition_score(test, prior_submission(train, [7, 8], smoothing=1.0)).score
    assert scores["oracle"] == competition_score(test, references["oracle"]).score
    elsewhere = oracle[split_row_ids(oracle["row_id"])["study_id"] == 9]
    assert list(score_test_set(test, uniform_submission([7, 8]), train, elsewhere)[0]) == ["submission", "prior"]


def test_prior_rows_follow_the_row_ids_and_a_fold_prior_leaves_its_fold_out():
    rng = np.random.default_rng(3)
    labels = split_row_ids(uniform_submission(range(4))["row_id"]).assign(grade=rng.integers(0, 3, 100))
    prior = class_priors(labels, smoothing=1.0)
    ids = uniform_submission([5])["row_id"].tolist()[::-1]
    rows = prior_rows(prior, ids)
    assert rows["row_id"].tolist() == ids
    first = prior.set_index(["condition", "level"]).loc[tuple(split_row_ids(ids[:1]).iloc[0][["condition", "level"]])]
    assert rows.loc[0, list(GRADES)].tolist() == first[list(GRADES)].tolist()
    folds = pd.DataFrame({"study_id": range(4), "fold": [0, 0, 1, 1]})
    held_out = prior_rows(fold_prior(labels, [0, 1]), uniform_submission([0, 1])["row_id"].tolist())
    pd.testing.assert_frame_equal(out_of_fold_prior(labels, folds).iloc[:50], held_out)
    assert fold_prior(labels, [0, 1]).equals(class_priors(labels[labels["study_id"] >= 2], smoothing=1.0))


def _write_case(tmp_path):
    labels, sub, expected = hand_case()
    labels_csv = write_csv(labels_to_wide(labels), tmp_path / "test_labels.csv")
    sub_csv = write_csv(sub, tmp_path / "sub.csv")
    return labels_csv, sub_csv, sub, expected


def test_cli_score_last_line(tmp_path, capsys):
    labels_csv, sub_csv, _, expected = _write_case(tmp_path)
    assert main(["score", "--labels", str(labels_csv), "--submission", str(sub_csv)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert LINE.match(last), last
    values = dict(kv.split("=") for kv in last.split())
    for key, value in expected.items():
        assert float(values[key]) == pytest.approx(value, abs=5e-7)


def test_cli_score_baseline_on_real_train(sample_dir, capsys):
    assert main(["score", "--labels", str(sample_dir / "train.csv"), "--baseline", "uniform"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("score=0.999410 spinal=1.098612")


def test_cli_score_rejects_bad_submissions(tmp_path, capsys):
    labels_csv, sub_csv, sub, _ = _write_case(tmp_path)
    bad = sub.copy()
    bad.loc[3, "moderate"] = np.nan
    write_csv(bad, sub_csv)
    assert main(["score", "--labels", str(labels_csv), "--submission", str(sub_csv)]) != 0
    err = capsys.readouterr().err
    assert "NaN" in err and sub.loc[3, "row_id"] in err
    write_csv(sub.drop(index=7), sub_csv)  # a study without all its 25 rows
    assert main(["score", "--labels", str(labels_csv), "--submission", str(sub_csv)]) != 0
    assert sub.loc[7, "row_id"] in capsys.readouterr().err


def test_python_m_lumbar_score_exit_code(tmp_path):
    labels_csv, sub_csv, sub, _ = _write_case(tmp_path)
    write_csv(sub.assign(severe=sub["severe"] + 0.1), sub_csv)
    proc = subprocess.run(
        [sys.executable, "-m", "lumbar", "score", "--labels", str(labels_csv), "--submission", str(sub_csv)],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode != 0 and "not summing to 1" in proc.stderr and sub.loc[0, "row_id"] in proc.stderr
