import numpy as np
import pandas as pd
import pytest

from lumbar.core.constants import CONDITION_GROUP, CONDITIONS, GRADES, LEVELS, row_id
from lumbar.ensemble.blend import (
    BLEND,
    CALIBRATED,
    MEAN,
    EnsembleParams,
    apply_ensemble,
    calibrate_arrays,
    fit_ensemble,
    fit_params,
)
from lumbar.scoring.metric import competition_score


def _labels(n_studies=60, seed=0):
    rng = np.random.default_rng(seed)
    rows = [
        (s, c, lv, int(rng.choice(3, p=[0.7, 0.2, 0.1])))
        for s in range(1, n_studies + 1)
        for c in CONDITIONS
        for lv in LEVELS
    ]
    return pd.DataFrame(rows, columns=["study_id", "condition", "level", "grade"])


def _preds(labels, sharpness, noise, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, noise, (len(labels), 3))
    logits[np.arange(len(labels)), labels["grade"].to_numpy()] += sharpness
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ids = [
        row_id(s, c, lv) for s, c, lv in labels[["study_id", "condition", "level"]].itertuples(index=False)
    ]
    return pd.DataFrame({"row_id": ids, **{g: p[:, i] for i, g in enumerate(GRADES)}})


@pytest.fixture(scope="module")
def data():
    labels = _labels()
    folds = pd.DataFrame({"study_id": range(1, 61), "fold": np.arange(60) % 3})
    preds = {
        "good": _preds(labels, 2.0, 1.0, 1),
        "noise": _preds(labels, 0.0, 1.0, 2),
        "ok": _preds(labels, 1.2, 1.0, 3),
    }
    return labels, folds, preds


def test_weights_favour_the_informative_model(data):
    labels, _, preds = data
    params = fit_params(preds, labels, per_group=False, calibrate=False)
    w = dict(zip(params.models, params.weights["all"]))
    assert w["good"] > 0.5 and w["noise"] < 0.1 and abs(sum(w.values()) - 1) < 1e-9


def test_out_of_fold_blend_no_worse_than_best_single(data):
    labels, folds, preds = data
    result = fit_ensemble(preds, labels, folds)
    scores = result.scores.set_index("model")["score"]
    assert scores["blend + calibration (out-of-fold)"] <= scores["good"] + 0.01
    assert len(result.oof) == len(preds["good"]) and set(result.fold_params) == {0, 1, 2}
    np.testing.assert_allclose(result.oof[list(GRADES)].sum(axis=1), 1, atol=1e-9)


def test_temperature_corrects_overconfidence(data):
    labels, _, _ = data
    over = _preds(labels, 6.0, 4.0, 5)  # right on average, far too confident
    params = fit_params({"over": over}, labels)
    assert np.mean(list(params.temperatures.values())) > 1.2
    before = competition_score(labels, over).score
    after = competition_score(labels, apply_ensemble({"over": over}, params)).score
    assert after < before - 0.05


def test_severe_scale_keeps_rows_normalised():
    p = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    conds = np.array(["spinal_canal_stenosis", "left_subarticular_stenosis"])
    out = calibrate_arrays(p, conds, {}, 1.5)
    np.testing.assert_allclose(out.sum(1), 1)
    assert out[0, 2] == pytest.approx(0.15) and out[0, 0] / out[0, 1] == pytest.approx(2)
    np.testing.assert_allclose(out[1], p[1])


def test_params_round_trip_and_mismatched_rows(data):
    _, _, preds = data
    params = EnsembleParams(["good", "ok"], {"all": [0.5, 0.5]})
    again = EnsembleParams.from_dict(params.to_dict())
    pd.testing.assert_frame_equal(apply_ensemble(preds, params), apply_ensemble(preds, again))
    with pytest.raises(ValueError, match="cover other rows"):
        apply_ensemble({"good": preds["good"], "ok": preds["ok"].iloc[:-1]}, params)


def test_the_best_out_of_fold_candidate_is_kept(data):
    labels, folds, preds = data
    result = fit_ensemble(preds, labels, folds)
    scores = result.scores.set_index("model")
    assert set(scores.index) == {"good", "noise", "ok", "mean of models", "blend (out-of-fold)",
                                 "blend + calibration (out-of-fold)"}
    assert scores["chosen"].sum() == 1 and scores.loc[result.chosen, "score"] == scores["score"].min()
    assert competition_score(labels, result.oof).score == pytest.approx(scores.loc[result.chosen, "score"])


@pytest.mark.parametrize("seed", [0, 6])
def test_on_six_studies_the_choice_falls_back_from_overfitted_blends(seed):
    """Weights and calibration fitted on 3 studies lose out-of-fold to the models themselves (seeds chosen so
    they do); the kept predictions, rescored from `result.oof`, are still no worse than the best single
    model rescored from its own predictions, and the listed scores are those rescored ones."""
    labels = _labels(n_studies=6, seed=seed)
    folds = pd.DataFrame({"study_id": range(1, 7), "fold": np.arange(6) % 2})
    preds = {"good": _preds(labels, 1.5, 1.0, seed), "overconfident": _preds(labels, 4.0, 3.0, seed + 10)}
    result = fit_ensemble(preds, labels, folds)
    single = {m: competition_score(labels, p).score for m, p in preds.items()}
    listed = result.scores.set_index("model")["score"]
    assert listed[list(single)].to_dict() == pytest.approx(single)
    assert min(listed[BLEND], listed[CALIBRATED]) > min(single.values())
    kept = competition_score(labels, result.oof).score
    assert kept <= min(single.values()) + 1e-9, (result.chosen, kept, single)


def _fickle(labels, folds, seed, bad_fold=2):
    """Sharper than "good" and right on the studies of every fold but `bad_fold`, confidently wrong on those."""
    table = _preds(labels, 3.0, 1.0, seed)
    bad = (labels["study_id"].map(folds.set_index("study_id")["fold"]) == bad_fold).to_numpy()
    grade = labels["grade"].to_numpy()[bad]
    wrong = (grade + np.random.default_rng(seed).integers(1, 3, len(grade))) % 3
    probs = table[list(GRADES)].to_numpy().copy()
    probs[bad] = 0.02
    probs[np.flatnonzero(bad), wrong] = 0.96
    return table.assign(**{g: probs[:, i] for i, g in enumerate(GRADES)})


def test_a_single_model_wins_over_a_blend_whose_weights_do_not_carry_over(data):
    """A second model that helps on folds 0 and 1 and is confidently wrong on fold 2: the blend fitted on folds
    0 and 1 leans on it and fails fold 2 (OOF 1.36-1.43 against the good model's 0.41-0.43, label seeds 0-5),
    the plain mean suffers too, so the good model is kept as it is: no fitted parameters, test time runs it
    alone."""
    labels, folds, preds = data
    two = {"good": preds["good"], "fickle": _fickle(labels, folds, seed=2)}
    result = fit_ensemble(two, labels, folds, calibrate=False)
    scores = result.scores.set_index("model")["score"]
    assert scores[BLEND] > scores["good"] + 0.5 and scores[MEAN] > scores["good"] + 0.05, scores.to_dict()
    assert result.chosen == "good" and result.fold_params == {} and result.params.models == ["good"]
    np.testing.assert_allclose(result.oof[list(GRADES)].to_numpy(), preds["good"][list(GRADES)].to_numpy())
    np.testing.assert_allclose(apply_ensemble(two, result.params)[list(GRADES)].to_numpy(),
                               preds["good"][list(GRADES)].to_numpy(), atol=1e-6)


def _expert(labels, groups, seed):
    """Sharp on the rows of the metric `groups`, uninformative on the others."""
    sharp, blind = _preds(labels, 2.5, 1.0, seed), _preds(labels, 0.0, 1.0, seed + 100)
    on = labels["condition"].map(CONDITION_GROUP).isin(groups).to_numpy()[:, None]
    return sharp.assign(**dict(zip(GRADES, np.where(on, sharp[list(GRADES)], blind[list(GRADES)]).T)))


def test_a_blend_of_two_experts_wins_and_weighs_each_on_its_group(data):
    """One model knows the spinal rows, the other the foraminal and subarticular ones: per-group weights take
    each where it knows (OOF 0.30 against 0.61 for the plain mean and 0.68 for the better model), so the blend
    is kept, with its fold-wise fits, and at test time weighs each model on its own group."""
    labels, folds, _ = data
    preds = {"spinal": _expert(labels, {"spinal"}, 1), "sides": _expert(labels, {"foraminal", "subarticular"}, 2)}
    result = fit_ensemble(preds, labels, folds, calibrate=False)
    scores = result.scores.set_index("model")["score"]
    assert scores[BLEND] < min(scores["spinal"], scores["sides"], scores[MEAN]) - 0.2, scores.to_dict()
    assert result.chosen == BLEND and set(result.fold_params) == {0, 1, 2}
    weights = result.params.weights
    assert weights["spinal"][0] > 0.9 and weights["foraminal"][1] > 0.9 and weights["subarticular"][1] > 0.9
    assert competition_score(labels, result.oof).score == pytest.approx(scores[BLEND])


def test_a_fold_wise_candidate_never_sees_the_labels_of_the_rows_it_predicts():
    """Shuffling the grades of fold 0's studies leaves the fitted blend's predictions of fold 0's rows as they
    were (weights fitted on folds 1 and 2 only) and moves those of the other folds (fitted on fold 0 too).
    The calibrated blend is fitted fold-wise by the same code (`_fold_wise`), at several seconds more."""
    labels = _labels(n_studies=24, seed=4)
    folds = pd.DataFrame({"study_id": range(1, 25), "fold": np.arange(24) % 3})
    preds = {"good": _preds(labels, 2.0, 1.0, 1), "ok": _preds(labels, 1.2, 1.0, 3)}
    fold0 = labels["study_id"].map(folds.set_index("study_id")["fold"]).to_numpy() == 0
    shuffled = labels.copy()
    shuffled.loc[fold0, "grade"] = np.random.default_rng(9).permutation(labels.loc[fold0, "grade"].to_numpy())
    assert (shuffled["grade"] != labels["grade"]).sum() > 50
    before, after = (fit_ensemble(preds, lab, folds, calibrate=False).candidates for lab in (labels, shuffled))
    ids = set(preds["good"].loc[fold0, "row_id"])
    a, b = (c[BLEND].set_index("row_id").loc[preds["good"]["row_id"], list(GRADES)] for c in (before, after))
    held = a.index.isin(ids)
    np.testing.assert_allclose(b[held].to_numpy(), a[held].to_numpy(), rtol=0, atol=1e-12)
    assert not np.allclose(b[~held].to_numpy(), a[~held].to_numpy(), atol=1e-4)


def test_the_run_ensemble_records_every_candidate_for_the_error_analysis(data, tmp_path):
    """04_ensemble writes each candidate's out-of-fold predictions and lists them in the manifest; rescored,
    each file gives its line of scores.csv, and the pair before / after calibration is found among them."""
    from lumbar.core.manifest import read_manifest, update_manifest
    from lumbar.core.tables import labels_to_wide, write_csv
    from lumbar.ensemble.runs import calibration_pair, fit_run_ensemble, run_oof_predictions

    labels, folds, preds = data
    run, data_dir = tmp_path / "run", tmp_path / "data"
    write_csv(labels_to_wide(labels), data_dir / "train.csv")
    write_csv(folds, run / "folds.csv")
    for name, p in preds.items():
        write_csv(p, run / name / "oof.csv")
        update_manifest(run, "classifiers", {"oof": f"{name}/oof.csv", "mode": "competition"}, item=name)
    fit_run_ensemble(run, data_dir)
    files = read_manifest(run)["ensemble"]["candidates"]
    assert files[CALIBRATED] == "ensemble/candidates/blend_calibration_out_of_fold.csv"
    oof = run_oof_predictions(run)
    scores = pd.read_csv(run / "ensemble" / "scores.csv").set_index("model")["score"]
    assert set(oof) == set(files) == set(scores.index)
    assert {n: competition_score(labels, p).score for n, p in oof.items()} == pytest.approx(scores.to_dict())
    assert calibration_pair(list(oof)) == (BLEND, CALIBRATED)
    assert calibration_pair(["good", CALIBRATED]) == ("good", CALIBRATED)  # one model: it is the blend
    assert calibration_pair(["good", "ok", "mean of models"]) == (None, None)
