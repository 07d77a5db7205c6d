"""Capping the ensemble so inference fits a time budget: how many folds of each classifier, which members.

The full ensemble of `configs/full.yaml` is 4 architectures x 3 condition groups x 5 folds = 60 models; the
classifiers are most of `predict`'s time per study. A cap keeps
- the first `max_folds` folds of every classifier (folds are near-copies of one model: dropping some costs
  little), then
- the `max_members` members with the largest blend weights (their weights renormalised per group; the
  calibration is kept).

`plan_to_budget` chooses the cap from measured costs: per study, the fixed stages (index, localise, crop,
blend) and each member's seconds per fold model; it keeps as many folds as fit (all members), then drops the
lowest-weighted members, down to one fold of one member. `lumbar.inference.predict` measures those costs on
its first chunk of studies (every fold of every member) and applies the plan to the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from lumbar.ensemble.blend import EnsembleParams


def member_weights(params: EnsembleParams) -> dict[str, float]:
    """Each member's blend weight, averaged over the weight groups (the order of importance)."""
    table = np.array([list(w) for w in params.weights.values()], dtype=np.float64)
    return dict(zip(params.models, table.mean(axis=0).tolist()))


def ranked_members(params: EnsembleParams) -> list[str]:
    """Members by blend weight, largest first (ties keep the ensemble's order)."""
    weights = member_weights(params)
    return sorted(params.models, key=lambda m: -weights[m])


def restrict_params(params: EnsembleParams, keep: list[str]) -> EnsembleParams:
    """The ensemble over the members `keep` only: their weights renormalised to sum to one in every group
    (equal weights where the kept members had none); temperatures, the severe scale, the second stage and the
    widening unchanged. Keeping every member returns `params` itself.

    Raises:
        ValueError: `keep` is empty or names a model outside the ensemble.
    """
    unknown = [m for m in keep if m not in params.models]
    if not keep or unknown:
        raise ValueError(f"cannot keep {keep} of the ensemble {params.models}")
    kept = [m for m in params.models if m in keep]
    if kept == params.models:
        return params
    index = [params.models.index(m) for m in kept]
    weights = {}
    for group, w in params.weights.items():
        sub = np.asarray(w, dtype=np.float64)[index]
        weights[group] = (sub / sub.sum() if sub.sum() > 0 else np.full(len(sub), 1 / len(sub))).tolist()
    return replace(params, models=kept, weights=weights, temperatures=dict(params.temperatures))


@dataclass
class EnsemblePlan:
    """A capped ensemble: the members kept (by name), the folds each uses, and the projected seconds."""

    members: list[str]
    folds: dict[str, int]
    projected_s: float
    fits: bool

    def describe(self, available: dict[str, int]) -> str:
        kept = ", ".join(f"{m} {self.folds[m]}/{available[m]} folds" for m in self.members)
        dropped = [m for m in available if m not in self.members]
        return f"{kept}" + (f"; dropped {', '.join(dropped)}" if dropped else "")


def static_plan(
    params: EnsembleParams, folds: dict[str, int], max_folds: int = 0, max_members: int = 0
) -> EnsemblePlan:
    """The cap given as numbers: the first `max_folds` folds (0 = all), the `max_members` heaviest members (0
    = all)."""
    members = ranked_members(params)[: max_members or None]
    members = [m for m in params.models if m in members]
    return EnsemblePlan(
        members, {m: min(folds[m], max_folds or folds[m]) for m in members}, float("nan"), True
    )


def plan_to_budget(
    budget_s: float,
    elapsed_s: float,
    remaining_studies: int,
    fixed_s: float,
    fold_s: dict[str, float],
    start: EnsemblePlan,
    params: EnsembleParams,
) -> EnsemblePlan:
    """The largest cap of `start` whose projected total fits `budget_s`.

    Args:
        budget_s: seconds the whole `predict` may take.
        elapsed_s: seconds already spent.
        remaining_studies: studies still to predict.
        fixed_s: seconds per study outside the classifiers.
        fold_s: member -> seconds per study of one of its fold models.
        start: the ensemble before the budget (all members and folds, or a static cap).
        params: the ensemble parameters (member weights decide which members go first).

    Returns:
        The first plan that fits, trying fewer folds (all members) before fewer members; when even one fold of
        the heaviest member does not fit, that plan with `fits=False`.
    """

    def projected(members: list[str], k: int) -> float:
        per_study = fixed_s + sum(min(k, start.folds[m]) * fold_s[m] for m in members)
        return elapsed_s + remaining_studies * per_study

    order = [m for m in ranked_members(params) if m in start.members]
    for k in range(max(start.folds.values()), 0, -1):
        if projected(order, k) <= budget_s:
            return EnsemblePlan(
                _in_order(order, params),
                {m: min(k, start.folds[m]) for m in order},
                projected(order, k),
                True,
            )
    for n in range(len(order) - 1, 0, -1):
        if projected(order[:n], 1) <= budget_s:
            return EnsemblePlan(
                _in_order(order[:n], params), dict.fromkeys(order[:n], 1), projected(order[:n], 1), True
            )
    return EnsemblePlan(order[:1], dict.fromkeys(order[:1], 1), projected(order[:1], 1), False)


def _in_order(members: list[str], params: EnsembleParams) -> list[str]:
    return [m for m in params.models if m in members]
