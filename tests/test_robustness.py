"""Per-target and per-study losses, and a run judged on a fresh synthetic set."""

import numpy as np
import pytest

from lumbar.analysis.robustness import (
    loss_summary,
    reference_tails,
    robustness_report,
    study_losses,
    target_losses,
)
from lumbar.core.constants import CONDITION_GROUP, GRADES
from lumbar.core.tables import load_labels, load_submission
from lumbar.scoring.metric import TERMS, competition_score


def _noisy_oracle(synthetic_dir, seed=0):
    oracle = load_submission(synthetic_dir / "oracle.csv")
    rng = np.random.default_rng(seed)
    p = oracle[list(GRADES)].to_numpy() + rng.uniform(0, 0.3, (len(oracle), 3))
    return oracle.assign(**{g: p[:, i] / p.sum(1) for i, g in enumerate(GRADES)})


def test_target_losses_rebuild_the_metric_groups_and_study_losses_score_each_study(synthetic_dir):
    labels = load_labels(synthetic_dir / "train.csv")
    sub = _noisy_oracle(synthetic_dir)
    sub = sub[sub["row_id"].str.split("_").str[0].astype(int).isin(labels["study_id"])]
    result = competition_score(labels, sub)
    targets = target_losses(labels, sub)
    group = targets["condition"].map(CONDITION_GROUP)
    for g in ("spinal", "foraminal", "subarticular"):
        rows = targets[group == g]
        assert abs(rows["loss"].sum() / rows["weight"].sum() - getattr(result, g)) < 1e-9
    np.testing.assert_allclose(targets["loss"], targets["weight"] * -np.log(targets["p_true"]))
    studies = study_losses(labels, sub)
    for r in studies.itertuples():
        alone = competition_score(labels[labels["study_id"] == r.study_id], sub).as_dict()
        assert abs(np.nanmean([alone[t] for t in TERMS]) - r.score) < 1e-12
    assert list(studies["score"]) == sorted(studies["score"], reverse=True)
    summary = loss_summary(targets, studies)
    assert summary["study_max"] == studies["score"].max() and summary["target_max"] == targets["loss"].max()
    assert summary["targets_over_8"] == int((targets["loss"] > 8).sum())


def test_one_confidently_wrong_target_is_the_worst_and_is_counted(synthetic_dir):
    labels = load_labels(synthetic_dir / "train.csv")
    sub = _noisy_oracle(synthetic_dir, seed=1)
    target = labels[labels["grade"] == 0].iloc[0]
    row = f"{target.study_id}_{target.condition}_{target.level}"
    sub.loc[sub["row_id"] == row, list(GRADES)] = [0.0001, 0.0001, 0.9998]
    summary, studies, targets = robustness_report(labels, sub)
    assert targets.iloc[0]["row_id"] == row and summary["targets_over_8"] >= 1
    assert summary["worst_studies"][0] == target.study_id == studies.iloc[0]["study_id"]


def test_reference_tails_separate_the_labels_misses_from_the_pipelines(synthetic_dir):
    """A target above 8 that the oracle also pays is not counted as the pipeline's excess; one it does not is."""
    labels = load_labels(synthetic_dir / "train.csv")
    oracle = _noisy_oracle(synthetic_dir, seed=2)
    oracle = oracle[oracle["row_id"].str.split("_").str[0].astype(int).isin(labels["study_id"])].reset_index(
        drop=True
    )
    normal = labels[labels["grade"] == 0].head(2)
    rows = [f"{t.study_id}_{t.condition}_{t.level}" for t in normal.itertuples()]
    wrong = [0.0001, 0.0001, 0.9998]
    sub = oracle.copy()
    sub.loc[sub["row_id"].isin(rows), list(GRADES)] = wrong  # both targets lost by the pipeline
    oracle.loc[oracle["row_id"] == rows[0], list(GRADES)] = wrong  # the first one lost by the oracle too
    _, _, targets = robustness_report(labels, sub)
    tails = reference_tails(targets, labels, {"oracle": oracle})
    assert tails["oracle"]["targets_over_8"] >= 1 and tails["oracle"]["target_max"] > 8
    assert tails["oracle_excess_over_8"] == 1  # the other row, and any the two share, are not the pipeline's


def test_drop_series_removes_a_share_of_series_from_a_linked_copy_and_scores_each_group(tmp_path):
    from lumbar.analysis.fresh import drop_series as drop
    from lumbar.analysis.fresh import group_scores, parse_drop
    from lumbar.core.tables import load_series_descriptions
    from lumbar.data.index import build_index
    from lumbar.data.synthetic import SynthConfig, generate
    from lumbar.inference.predict import PredictReport

    data = tmp_path / "data"
    generate(data, SynthConfig(studies=1, test_studies=4, seed=5, image_size=64), oracle=data / "oracle.csv")
    before = load_series_descriptions(data / "test_series_descriptions.csv")
    spec = parse_drop(["Sagittal T1=0.25", "Sagittal T1+Sagittal T2/STIR=0.25"])
    groups = drop(data, tmp_path / "dropped", spec, seed=3)

    assert groups["group"].value_counts().to_dict() == {
        "intact": 2,
        "Sagittal T1": 1,
        "Sagittal T1+Sagittal T2/STIR": 1,
    }
    after = load_series_descriptions(tmp_path / "dropped" / "test_series_descriptions.csv")
    kinds = after.groupby("study_id")["series_description"].agg(set)
    for r in groups.itertuples():
        gone = set() if r.group == "intact" else set(r.group.split("+"))
        assert kinds.get(r.study_id, set()).isdisjoint(gone)
        for s in before[before["study_id"] == r.study_id].itertuples():
            present = (tmp_path / "dropped" / "test_images" / str(r.study_id) / str(s.series_id)).is_dir()
            assert present == (s.series_description not in gone)
            assert (data / "test_images" / str(r.study_id) / str(s.series_id)).is_dir()  # the source intact
    assert load_series_descriptions(data / "test_series_descriptions.csv").equals(before)
    index, _ = build_index(tmp_path / "dropped", "test", progress=False)
    assert set(index["series_id"]) == set(after["series_id"])

    labels = load_labels(data / "test_labels.csv")
    oracle = load_submission(data / "oracle.csv")
    lost = int(groups.loc[groups["group"] == "Sagittal T1", "study_id"].iloc[0])
    report = PredictReport()
    report.fallback_rows[lost] = ["a", "b"]
    scored = group_scores(groups, labels, oracle, oracle, report)
    assert scored["Sagittal T1"]["prior_rows"] == 2 and scored["intact"]["prior_rows"] == 0
    assert scored["intact"]["studies"] == 2
    assert np.isclose(scored["intact"]["score"], scored["intact"]["oracle"])
    with pytest.raises(ValueError, match="add up"):
        parse_drop(["Sagittal T1=0.7", "Axial T2=0.4"])
