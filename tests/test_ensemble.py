import numpy as np
import pandas as pd
import pytest

from lumbar.constants import CONDITIONS, GRADES, LEVELS, row_id
from lumbar.ensemble.blend import (
    BLEND,
    CALIBRATED,
    EnsembleParams,
    apply_ensemble,
    calibrate_arrays,
    fit_ensemble,
    fit_params,
)
from lumbar.evaluate.metric import competition_score


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


def test_a_single_model_wins_over_a_blend_that_only_adds_noise(data):
    """With one useful model and pure noise, fitted weights cannot beat the useful model out-of-fold by
    much; whatever is chosen, the kept parameters must reproduce the chosen out-of-fold predictions' quality."""
    labels, folds, preds = data
    two = {"good": preds["good"], "noise": preds["noise"]}
    result = fit_ensemble(two, labels, folds, calibrate=False)
    scores = result.scores.set_index("model")["score"]
    assert scores[result.chosen] <= scores["good"] and "blend + calibration (out-of-fold)" not in scores
    if result.chosen == "good":
        np.testing.assert_allclose(apply_ensemble(two, result.params)[list(GRADES)].to_numpy(),
                                   preds["good"][list(GRADES)].to_numpy(), atol=1e-6)
        assert result.fold_params == {}
    else:
        assert set(result.fold_params) == {0, 1, 2}


def test_the_run_ensemble_records_every_candidate_for_the_error_analysis(data, tmp_path):
    """04_ensemble writes each candidate's out-of-fold predictions and lists them in the manifest; rescored,
    each file gives its line of scores.csv, and the pair before / after calibration is found among them."""
    from lumbar.data.tables import labels_to_wide, write_csv
    from lumbar.ensemble.runs import calibration_pair, fit_run_ensemble, run_oof_predictions
    from lumbar.manifest import read_manifest, update_manifest

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
