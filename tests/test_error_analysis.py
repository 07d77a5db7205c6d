"""Error analysis: the metric's per-target parts, calibration numbers, and the tables of 06_error_analysis."""

import math

import numpy as np
import pandas as pd
import pytest
from test_metric import LNFN, SPINAL, hand_case

from lumbar.analysis import calibration, errors
from lumbar.core.constants import CONDITIONS, GRADES, LEVELS, row_id
from lumbar.scoring.metric import TERMS, align_predictions, competition_score, metric_parts


def test_parts_of_the_hand_case_are_its_hand_computed_terms():
    labels, sub, expected = hand_case()
    parts = metric_parts(align_predictions(labels, sub))
    for group in ("spinal", "foraminal", "subarticular"):
        assert parts.rows.loc[parts.rows["term"] == group, "share"].sum() == pytest.approx(expected[group], abs=1e-12)
    assert parts.studies["share"].sum() == pytest.approx(expected["any_severe_spinal"], abs=1e-12)
    total = parts.rows["contribution"].sum() + parts.studies["contribution"].sum()
    assert total == pytest.approx(expected["score"], abs=1e-12)
    # one row's share: study 1's severe left foramen at l4_l5, p=0.25, weight 4 of the foraminal weights 4+1+2
    row = parts.rows[(parts.rows["study_id"] == 1) & (parts.rows["condition"] == LNFN)]
    assert row["share"].item() == pytest.approx(-4 * math.log(0.25) / 7)
    assert row["contribution"].item() == pytest.approx(-4 * math.log(0.25) / 7 / len(TERMS))
    # the any-severe term sits at the spinal level whose severe probability it reads
    level = parts.studies.set_index("study_id")["level"]
    assert level[1] == "l2_l3" and level[2] == "l4_l5"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_contributions_sum_to_the_metric_on_random_predictions(seed):
    rng = np.random.default_rng(seed)
    rows = [(s, c, lv, int(rng.choice(3, p=[0.6, 0.25, 0.15]))) for s in range(20) for c in CONDITIONS for lv in LEVELS]
    labels = pd.DataFrame(rows, columns=["study_id", "condition", "level", "grade"]).sample(frac=0.9, random_state=seed)
    p = rng.dirichlet([1.0, 1.0, 1.0], size=len(rows))
    sub = pd.DataFrame({"row_id": [row_id(s, c, lv) for s, c, lv, _ in rows], **dict(zip(GRADES, p.T))})
    score = competition_score(labels, sub).score
    parts = errors.prediction_parts(labels, sub)
    assert parts.rows["contribution"].sum() + parts.studies["contribution"].sum() == pytest.approx(score, abs=1e-12)
    matrix = errors.contribution_matrix(parts)
    assert matrix["all"].sum() == pytest.approx(score, abs=1e-12)
    assert matrix[list(LEVELS)].to_numpy().sum() == pytest.approx(score, abs=1e-12)
    assert list(matrix.index) == [*CONDITIONS, "any_severe_spinal"]
    studies = errors.study_contributions(parts)
    assert studies["contribution"].sum() == pytest.approx(score, abs=1e-12)
    assert studies["contribution"].is_monotonic_decreasing and len(studies) == 20


def test_reliability_and_ece_against_a_hand_computed_case():
    # four rows, two bins ([0, 0.5), [0.5, 1]); p(normal_mild) = 0.2, 0.4, 0.6, 1.0 with grades 0, 1, 0, 0
    probs = np.array([[0.2, 0.5, 0.3], [0.4, 0.4, 0.2], [0.6, 0.3, 0.1], [1.0, 0.0, 0.0]])
    table = pd.DataFrame({"grade": [0, 1, 0, 0], **dict(zip(GRADES, probs.T))})
    rel = calibration.reliability_table(table, bins=2).set_index(["grade", "bin"])
    normal = rel.loc["normal_mild"]
    # bin 0: p 0.2, 0.4 (mean 0.3), outcomes 1, 0 (0.5); bin 1: p 0.6, 1.0 (mean 0.8), outcomes 1, 1 (1.0)
    assert normal["count"].tolist() == [2, 2]
    assert normal["mean_pred"].tolist() == pytest.approx([0.3, 0.8])
    assert normal["observed"].tolist() == pytest.approx([0.5, 1.0])
    moderate = rel.loc["moderate"]  # p 0.5 goes to bin 1 (b/bins <= p); p 0.4, 0.3, 0.0 to bin 0
    assert moderate["count"].tolist() == [3, 1]
    assert moderate["mean_pred"].tolist() == pytest.approx([0.7 / 3, 0.5])
    assert moderate["observed"].tolist() == pytest.approx([1 / 3, 0.0])
    severe = rel.loc["severe"]  # every p below 0.5: one bin, empty second bin
    assert severe["count"].tolist() == [4, 0] and np.isnan(severe["mean_pred"].iloc[1])
    ece = calibration.expected_calibration_error(calibration.reliability_table(table, bins=2))
    assert ece["normal_mild"] == pytest.approx(0.5 * 0.2 + 0.5 * 0.2)
    assert ece["moderate"] == pytest.approx(0.75 * abs(0.7 / 3 - 1 / 3) + 0.25 * 0.5)
    assert ece["severe"] == pytest.approx(0.15)  # mean p 0.15, never severe
    assert ece["mean"] == pytest.approx(np.mean([ece[g] for g in GRADES]))


def test_a_calibrated_predictor_has_a_small_ece_and_an_overconfident_one_a_large_one():
    rng = np.random.default_rng(0)
    p = rng.dirichlet([2.0, 1.0, 0.5], size=20000)
    grade = np.array([rng.choice(3, p=row) for row in p])  # drawn from the predictions: calibrated by design
    sharp = p**3 / (p**3).sum(axis=1, keepdims=True)
    ece = {name: calibration.expected_calibration_error(calibration.reliability_table(
        pd.DataFrame({"grade": grade, **dict(zip(GRADES, q.T))})))["mean"] for name, q in (("p", p), ("sharp", sharp))}
    assert ece["p"] < 0.02 and ece["sharp"] > 0.05


def test_bins_must_be_positive():
    with pytest.raises(ValueError, match="bins must be at least 1"):
        calibration.reliability_table(pd.DataFrame({"grade": [0], **{g: [1 / 3] for g in GRADES}}), bins=0)


def test_any_severe_confusion_counts_studies_and_splits_the_term():
    labels, sub, expected = hand_case()
    parts = metric_parts(align_predictions(labels, sub))
    table = errors.any_severe_confusion(parts, threshold=0.5)
    counts, shares = table["studies"], table["share of term"]
    # study 1: no severe level, max severe 0.2 (< 0.5); study 2: a severe level, max severe 0.5 (>= 0.5)
    assert counts.to_numpy().tolist() == [[1, 0], [0, 1]]
    first = -2 * math.log(1 - 0.2) / 6 / expected["any_severe_spinal"]
    assert shares.to_numpy() == pytest.approx(np.array([[first, 0.0], [0.0, 1 - first]]))


def test_label_noise_candidates_are_the_rows_with_a_tiny_probability_of_their_label():
    labels, sub, _ = hand_case()
    parts = metric_parts(align_predictions(labels, sub))
    oracle = sub.assign(normal_mild=0.9, moderate=0.05, severe=0.05)
    found = errors.label_noise_candidates(parts, max_prob=0.3, oracle=oracle)
    assert found["row_id"].tolist() == [row_id(1, LNFN, "l4_l5")]  # p(severe) = 0.25; every other label >= 0.3
    assert found["p_label"].item() == pytest.approx(0.25) and found["oracle_p_label"].item() == pytest.approx(0.05)
    assert len(errors.label_noise_candidates(parts, max_prob=0.55)) == 4  # + three labels at p 0.5, 0.5, 0.4


def test_localizer_loss_bins_the_error_of_each_target():
    labels, sub, _ = hand_case()
    parts = metric_parts(align_predictions(labels, sub))
    spinal = [("l1_l2", 1.0, False), ("l2_l3", 3.0, False), ("l3_l4", 7.0, False), ("l4_l5", 30.0, False),
              ("l5_s1", np.nan, True)]  # fmt: skip
    errs = pd.DataFrame([{"study_id": 2, "condition": SPINAL, "level": lv, "error_mm": e, "error_3d_mm": e,
                          "slice_error": 0.0, "missing": m} for lv, e, m in spinal])  # fmt: skip
    table = errors.localizer_loss(parts, errs).set_index(["study_id", "condition", "level"]).sort_index()
    bins = table.loc[(2, SPINAL), "error_bin"].reindex(LEVELS).tolist()
    assert bins == ["<= 2 mm", "2-5 mm", "5-10 mm", "> 10 mm", "missing"]
    assert table.loc[(1, SPINAL, "l1_l2"), "error_bin"] == "no point"  # study 1 has no error rows
    summary = errors.localizer_loss_summary(errors.localizer_loss(parts, errs))
    assert summary.loc[("spinal", "no point"), "targets"] == 5 and summary["targets"].sum() == len(parts.rows)
