"""The ensemble cap: which members and folds a number or a time budget keeps, and the kept blend weights."""

from __future__ import annotations

import pytest

from lumbar.ensemble.blend import EnsembleParams
from lumbar.inference.budget import plan_to_budget, ranked_members, restrict_params, static_plan

PARAMS = EnsembleParams(["a", "b", "c"], {"spinal": [0.5, 0.2, 0.3], "foraminal": [0.7, 0.1, 0.2],
                                          "subarticular": [0.6, 0.2, 0.2]})
FOLDS = {"a": 5, "b": 5, "c": 3}


def test_members_rank_by_mean_blend_weight_and_keep_renormalised_weights():
    assert ranked_members(PARAMS) == ["a", "c", "b"]
    kept = restrict_params(PARAMS, ["c", "a"])
    assert kept.models == ["a", "c"]  # the ensemble's order
    assert kept.weights["spinal"] == pytest.approx([0.5 / 0.8, 0.3 / 0.8])
    assert kept.temperatures == PARAMS.temperatures and restrict_params(PARAMS, ["a", "b", "c"]) is PARAMS
    zero = restrict_params(EnsembleParams(["a", "b"], {"all": [1.0, 0.0]}), ["b"])
    assert zero.weights == {"all": [1.0]}
    with pytest.raises(ValueError, match="cannot keep"):
        restrict_params(PARAMS, ["z"])


def test_static_plan_takes_the_first_folds_and_the_heaviest_members():
    plan = static_plan(PARAMS, FOLDS, max_folds=4, max_members=2)
    assert plan.members == ["a", "c"] and plan.folds == {"a": 4, "c": 3}
    assert plan.describe(FOLDS) == "a 4/5 folds, c 3/3 folds; dropped b"
    assert static_plan(PARAMS, FOLDS).folds == FOLDS


def test_a_budget_drops_folds_before_members():
    start = static_plan(PARAMS, FOLDS)
    cost = {"a": 0.5, "b": 1.0, "c": 0.5}  # seconds per study of one fold model

    def plan(budget):
        return plan_to_budget(budget, elapsed_s=100, remaining_studies=100, fixed_s=1.0, fold_s=cost, start=start,
                              params=PARAMS)

    full = plan(100 + 100 * (1 + 5 * 0.5 + 5 * 1.0 + 3 * 0.5))
    assert full.fits and full.folds == FOLDS and full.members == ["a", "b", "c"]
    two = plan(100 + 100 * (1 + 2 * 2.0) + 1)  # k folds of all three cost 1 + 2k s per study
    assert two.folds == {"a": 2, "b": 2, "c": 2} and two.projected_s == pytest.approx(600)
    one_member_less = plan(100 + 100 * (1 + 0.5 + 0.5) + 1)  # one fold each does not fit; b weighs least
    assert one_member_less.members == ["a", "c"] and one_member_less.folds == {"a": 1, "c": 1}
    hopeless = plan(50)
    assert not hopeless.fits and hopeless.members == ["a"] and hopeless.folds == {"a": 1}
