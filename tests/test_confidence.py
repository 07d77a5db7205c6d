"""Localisation confidence: the heatmap's mass at a point, the level-set check, and predictions that widen
towards the prior when a crop is doubtful."""

import numpy as np
import pandas as pd
import pytest
import torch

from lumbar.analysis.robustness import target_losses
from lumbar.core.constants import CONDITIONS, GRADES, LEVELS
from lumbar.core.tables import load_coordinates, submission_row_ids, table_row_ids
from lumbar.data.index import load_or_build_index
from lumbar.ensemble.blend import EnsembleParams, apply_ensemble, fit_ensemble
from lumbar.ensemble.widen import widen_arrays
from lumbar.localize.confidence import FLOOR, check_level_set, row_confidence
from lumbar.localize.heatmap import decode_heatmaps, point_confidence
from lumbar.scoring.baselines import out_of_fold_prior

SPINAL, LEFT_FORAMEN = "spinal_canal_stenosis", "left_neural_foraminal_narrowing"


def test_point_confidence_is_high_on_a_sharp_peak_and_low_on_a_flat_or_split_heatmap():
    d, h, w = 4, 32, 32
    sharp = torch.full((1, 1, d, h, w), -30.0)
    sharp[0, 0, 2, 10, 12] = 0.0
    flat = torch.zeros(1, 1, d, h, w)
    split = sharp.clone()
    split[0, 0, 2, 25, 12] = 0.0  # a rival peak 15 pixels away: the neighbouring disc
    conf = [float(point_confidence(x, decode_heatmaps(x)[0], 3, 1)) for x in (sharp, flat, split)]
    assert conf[0] > 0.99
    assert conf[1] <= 7 * 7 * 3 / (d * h * w) + 1e-6  # at most the window's share of a uniform heatmap
    assert abs(conf[2] - 0.5) < 0.01


def _truth(synthetic_dir):
    coords = load_coordinates(synthetic_dir / "train_label_coordinates.csv")
    return coords, load_or_build_index(synthetic_dir, "train")


def _flagged(checked: pd.DataFrame, condition: str) -> set[str]:
    rows = checked[(checked["condition"] == condition) & (checked["plausible"] == 0)]
    return set(rows["level"])


def test_true_level_sets_pass_and_broken_ones_are_flagged(synthetic_dir):
    coords, index = _truth(synthetic_dir)
    for study, rows in coords.groupby("study_id"):
        checked, notes = check_level_set(rows, index[index["study_id"] == study])
        assert checked["plausible"].eq(1).all(), notes
    study = next(s for s, r in coords.groupby("study_id") if {SPINAL, LEFT_FORAMEN} <= set(r["condition"]))
    rows, geometry = coords[coords["study_id"] == study].reset_index(drop=True), index[index["study_id"] == study]
    at = {(c, lv): i for i, (c, lv) in enumerate(zip(rows["condition"], rows["level"]))}

    collapsed = rows.copy()  # L5/S1 placed on the L4/L5 disc, 1 pixel lower
    collapsed.loc[at[SPINAL, "l5_s1"], ["x", "y"]] = rows.loc[at[SPINAL, "l4_l5"], ["x", "y"]].to_numpy() + [0, 1]
    checked, notes = check_level_set(collapsed, geometry)
    assert {"l4_l5", "l5_s1"} <= _flagged(checked, SPINAL) and any("apart" in n for n in notes)

    swapped = rows.copy()  # two levels of the left foramen exchanged
    a, b = at[LEFT_FORAMEN, "l2_l3"], at[LEFT_FORAMEN, "l4_l5"]
    swapped.loc[[a, b], ["instance_number", "x", "y"]] = rows.loc[[b, a], ["instance_number", "x", "y"]].to_numpy()
    checked, notes = check_level_set(swapped, geometry)
    assert {"l2_l3", "l4_l5"} <= _flagged(checked, LEFT_FORAMEN)
    assert not _flagged(checked, SPINAL)  # the series that disagrees is the one named

    flipped = rows.copy()  # a pixel-perfect localizer on a front-to-back flipped copy of the Sagittal T2
    spinal = flipped["condition"] == SPINAL
    columns = geometry.drop_duplicates("instance_number").set_index("instance_number")["columns"]
    flipped.loc[spinal, "x"] = columns[flipped.loc[spinal, "instance_number"]].to_numpy() - 1 - flipped.loc[spinal, "x"]
    checked, notes = check_level_set(flipped, geometry)
    assert _flagged(checked, SPINAL) == set(LEVELS) and not _flagged(checked, LEFT_FORAMEN)

    far = rows.copy()
    checked, notes = check_level_set(far, geometry, axial_distance_mm={"l1_l2": 25.0, "l2_l3": 3.0})
    sub = checked[checked["condition"].str.contains("subarticular") & (checked["plausible"] == 0)]
    assert set(sub["level"]) <= {"l1_l2"} and any("axial slice" in n for n in notes) == (len(sub) > 0)


def test_a_column_that_disagrees_at_most_levels_fails_at_all_of_them(synthetic_dir):
    coords, index = _truth(synthetic_dir)
    study = next(s for s, r in coords.groupby("study_id") if {SPINAL, LEFT_FORAMEN} <= set(r["condition"]))
    rows, geometry = coords[coords["study_id"] == study].reset_index(drop=True), index[index["study_id"] == study]
    columns = geometry.drop_duplicates("instance_number").set_index("instance_number")["columns"]

    def moved(levels):  # the canal pushed a third of the image front-to-back at these levels
        out = rows.copy()
        at = (out["condition"] == SPINAL) & out["level"].isin(levels)
        out.loc[at, "x"] += columns[out.loc[at, "instance_number"]].to_numpy() / 3
        return check_level_set(out, geometry)

    checked, notes = moved(LEVELS[2:])
    assert _flagged(checked, SPINAL) == set(LEVELS) and any("all failed" in n for n in notes)
    assert not _flagged(checked, LEFT_FORAMEN)
    checked, notes = moved(LEVELS[3:])  # two levels: those two (and any off the line), not the column
    assert set(LEVELS[3:]) <= _flagged(checked, SPINAL) and not any("all failed" in n for n in notes)


def test_row_confidence_uses_the_floor_for_implausible_points_and_one_for_ground_truth(synthetic_dir):
    coords, _ = _truth(synthetic_dir)
    assert row_confidence(coords)["confidence"].eq(1.0).all()
    predicted = coords.assign(confidence=0.7, plausible=1)
    predicted.loc[0, "plausible"] = 0
    conf = row_confidence(predicted)
    assert list(conf["row_id"]) == list(table_row_ids(coords))
    assert conf["confidence"].iloc[0] == FLOOR and conf["confidence"].iloc[1:].eq(0.7).all()


def test_widening_keeps_sure_rows_and_sends_lost_rows_to_the_prior():
    probs = np.array([[0.98, 0.01, 0.01], [0.98, 0.01, 0.01]])
    prior = np.array([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1]])
    groups = np.array(["spinal", "spinal"])
    out = widen_arrays(probs, prior, np.array([0.999, FLOOR]), groups, {"spinal": [6.0, 2.0]})
    np.testing.assert_allclose(out[0], probs[0], atol=1e-3)
    np.testing.assert_allclose(out[1], prior[1], atol=1e-3)
    np.testing.assert_allclose(out.sum(1), 1.0)
    same = widen_arrays(probs, prior, np.array([0.999, FLOOR]), groups, {})  # no parameters: unchanged
    np.testing.assert_allclose(same, probs)


def _lost_and_found(n_studies: int = 30, seed: int = 0):
    """OOF predictions that are right where the localizer is sure and confidently wrong where it is lost."""
    rng = np.random.default_rng(seed)
    studies = list(range(1000, 1000 + n_studies))
    ids = submission_row_ids(studies)
    grade = rng.choice(3, size=len(ids), p=[0.7, 0.2, 0.1])
    lost = rng.random(len(ids)) < 0.15
    probs = np.full((len(ids), 3), 0.005)  # the lost studies: the true Severe grade given 0.006
    probs[np.arange(len(ids)), np.where(lost, (grade + 1) % 3, grade)] = 0.99
    parts = pd.Series(ids).str.rsplit("_", n=2, expand=True)
    labels = pd.DataFrame({"study_id": [int(s.split("_")[0]) for s in ids], "condition": parts[0].str.split("_", n=1).str[1],
                           "level": parts[1] + "_" + parts[2], "grade": grade})  # fmt: skip
    assert set(labels["condition"]) == set(CONDITIONS) and set(labels["level"]) == set(LEVELS)
    oof = pd.DataFrame({"row_id": ids, **{g: probs[:, i] for i, g in enumerate(GRADES)}})
    confidence = pd.DataFrame({"row_id": ids, "confidence": np.where(lost, rng.uniform(0.01, 0.1, len(ids)),
                                                                     rng.uniform(0.5, 0.9, len(ids)))})  # fmt: skip
    folds = pd.DataFrame({"study_id": studies, "fold": np.arange(n_studies) % 3})
    return oof, labels, confidence, folds, lost


@pytest.mark.slow
def test_the_ensemble_learns_out_of_fold_to_widen_doubtful_rows():
    oof, labels, confidence, folds, lost = _lost_and_found()
    prior = out_of_fold_prior(labels, folds)
    plain = fit_ensemble({"m": oof}, labels, folds, calibrate=False)
    widened = fit_ensemble({"m": oof}, labels, folds, calibrate=False, confidence=confidence, prior=prior)
    scores = widened.scores.set_index("model")["score"]
    assert widened.chosen == "m + widening (out-of-fold)" and scores[widened.chosen] < scores["m"] - 0.1
    assert plain.params.widening is None and set(widened.params.widening) == {"spinal", "foraminal", "subarticular"}
    assert set(widened.fold_params) == {0, 1, 2}  # fitted on the other folds' rows, applied to each fold
    # the lost rows now cost about what the prior costs, never many times more
    lost_ids = set(oof["row_id"][lost])
    after = target_losses(labels, widened.oof).set_index("row_id")
    before = target_losses(labels, prior).set_index("row_id")
    unwidened = target_losses(labels, oof).set_index("row_id")
    lost_ids = sorted(lost_ids & set(after.index))
    share = after.loc[lost_ids, "p_true"] / before.loc[lost_ids, "p_true"]
    assert share.min() > 0.3  # p(true grade) at least 30 % of the prior's: a loss at most ~1.2 x weight above it
    assert unwidened.loc[lost_ids, "loss"].max() > 1.5 * after.loc[lost_ids, "loss"].max()
    # test time: the parameters fitted on every row; without a prior the ensemble refuses
    test = apply_ensemble({"m": oof}, widened.params, confidence, prior)
    assert np.isfinite(test[list(GRADES)].to_numpy()).all()
    try:
        apply_ensemble({"m": oof}, widened.params)
    except ValueError as e:
        assert "prior" in str(e)
    else:
        raise AssertionError("a widening ensemble without a prior must fail")


def test_identity_when_nothing_is_doubtful():
    oof, labels, confidence, folds, _ = _lost_and_found()
    params = EnsembleParams(["m"], {"all": [1.0]}, widening={"spinal": [6.0, 2.0]})
    sure = confidence.assign(confidence=1.0)
    out = apply_ensemble({"m": oof}, params, sure, out_of_fold_prior(labels, folds))
    spinal = out["row_id"].str.contains("spinal")
    np.testing.assert_allclose(out.loc[spinal, list(GRADES)], oof.loc[spinal, list(GRADES)], atol=1e-4)


def test_the_real_sample_studies_ground_truth_is_plausible(sample_dir):
    coords = load_coordinates(sample_dir / "train_label_coordinates.csv")
    index = load_or_build_index(sample_dir, "train")
    for study, rows in coords[coords["study_id"].isin(index["study_id"])].groupby("study_id"):
        checked, notes = check_level_set(rows, index[index["study_id"] == study])
        assert checked["plausible"].eq(1).all(), notes
