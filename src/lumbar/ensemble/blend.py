"""Blend weights and calibration fitted on out-of-fold predictions, all in the submission format.

Why fitted fold-wise: weights and temperatures chosen on the same rows they are scored on flatter the
score. `fit_ensemble` fits on the other folds' rows and applies to each held-out fold, so the blended score
it reports is itself out-of-fold; the parameters used at test time are then fitted on all rows.

The blend is a weighted mean of probabilities with non-negative weights summing to one, either one weight
vector for all rows (`per_group=False`) or one per metric group (spinal, foraminal, subarticular). The
calibration, applied after the blend, is:
- a temperature per condition: p_k proportional to p_k ** (1 / T) (T < 1 sharpens, T > 1 softens);
- a scale s on the severe probability of spinal rows (the any-severe-spinal term reads the maximum severe
  probability over levels; the 2nd-place team scaled it by 1.25), the other two grades rescaled so rows
  still sum to one.
Both are fitted by minimising the competition metric itself (scipy.optimize), within bounds (temperatures
and scale between 0.5 and 2) so a few studies cannot push them to extremes.

Which ensemble is kept is decided on out-of-fold scores too: every single model, the plain mean, the blend
and the calibrated blend are candidates, and the best one is chosen. On a small data set a fitted
calibration can lose to the plain models (a handful of severe cases decides the spinal scale); the choice
then falls back instead of shipping a worse submission. Picking the best of a few candidates flatters the
reported score slightly; `scores` lists every candidate so the margin is visible.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from lumbar.core.constants import CONDITION_GROUP, CONDITIONS, GRADES, GROUPS
from lumbar.core.tables import row_study_ids, rows_of_studies, split_row_ids
from lumbar.ensemble.stack import apply_stack, fit_stack
from lumbar.ensemble.widen import aligned_inputs, fit_widening, widen_arrays
from lumbar.scoring.metric import MetricResult, align_predictions, score_aligned

_EPS = 1e-7
_LOG_BOUND = float(np.log(2.0))  # temperatures and the severe scale stay within [0.5, 2]


@dataclass
class EnsembleParams:
    """Everything needed to turn the models' predictions into the final one."""

    models: list[str]
    weights: dict[str, list[float]]  # group (or "all") -> one weight per model
    temperatures: dict[str, float] = field(default_factory=lambda: {c: 1.0 for c in CONDITIONS})
    spinal_severe_scale: float = 1.0
    widening: dict[str, list[float]] | None = None  # group -> (a, b) of `lumbar.ensemble.widen`; None: off
    stack: dict | None = None  # group -> second-stage parameters of `lumbar.ensemble.stack`; None: off

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EnsembleParams:
        return cls(**d)


def _stack(preds: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, np.ndarray]:
    """Align the models' tables on row_id: (row_ids frame, probabilities (models, rows, 3))."""
    names = list(preds)
    base = preds[names[0]]["row_id"].astype(str)
    reference = set(base)
    arrays = []
    for name in names:
        table = preds[name].assign(row_id=preds[name]["row_id"].astype(str)).set_index("row_id")
        if set(table.index) != reference:
            diff = sorted(reference.symmetric_difference(table.index))[:3]
            raise ValueError(f"predictions of {name!r} cover other rows than {names[0]!r} (e.g. {diff})")
        arrays.append(table.loc[base, list(GRADES)].to_numpy(np.float64))
    return pd.DataFrame({"row_id": base.to_numpy()}), np.stack(arrays)


def _conditions(row_ids: pd.Series) -> np.ndarray:
    return split_row_ids(row_ids)["condition"].to_numpy()


def _groups(conditions: np.ndarray) -> np.ndarray:
    return pd.Series(conditions).map(CONDITION_GROUP).to_numpy()


def blend_arrays(probs: np.ndarray, groups: np.ndarray, weights: dict[str, list[float]]) -> np.ndarray:
    """Weighted mean over models (axis 0) with per-group (or "all") weights."""
    out = np.empty(probs.shape[1:])
    for key, w in weights.items():
        rows = slice(None) if key == "all" else groups == key
        out[rows] = np.tensordot(np.asarray(w, dtype=np.float64), probs[:, rows], axes=1)
    return out / out.sum(axis=1, keepdims=True)


def calibrate_arrays(
    probs: np.ndarray, conditions: np.ndarray, temperatures: dict[str, float], scale: float
) -> np.ndarray:
    """Temperature per condition, then the spinal severe scale; rows sum to one."""
    logp = np.log(np.clip(probs, _EPS, 1.0))
    inv_t = np.array([1.0 / temperatures.get(c, 1.0) for c in conditions])
    p = np.exp(logp * inv_t[:, None] - (logp * inv_t[:, None]).max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    if scale != 1.0:
        spinal = conditions == "spinal_canal_stenosis"
        severe = np.clip(p[spinal, 2] * scale, _EPS, 1 - _EPS)
        rest = p[spinal, :2].sum(axis=1, keepdims=True)
        p[spinal, :2] *= (1 - severe)[:, None] / np.maximum(rest, _EPS)
        p[spinal, 2] = severe
    return p


def apply_ensemble(
    preds: dict[str, pd.DataFrame],
    params: EnsembleParams,
    confidence: pd.DataFrame | None = None,
    prior: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Blend and calibrate the models' predictions (submission tables) into one submission table; with
    `params.stack`, correct each row by the other rows of its study (`lumbar.ensemble.stack`: pass whole
    studies); with `params.widening`, move each row towards `prior` (a submission table covering the rows)
    by its localisation `confidence` (`row_id, confidence`; rows without one count as sure)."""
    missing = [m for m in params.models if m not in preds]
    if missing:
        raise ValueError(f"ensemble needs predictions of {missing}; got {sorted(preds)}")
    rows, probs = _stack({m: preds[m] for m in params.models})
    conditions = _conditions(rows["row_id"])
    blended = blend_arrays(probs, _groups(conditions), params.weights)
    out = calibrate_arrays(blended, conditions, params.temperatures, params.spinal_severe_scale)
    if params.stack:
        out = apply_stack(rows, out, params.stack)
    if params.widening:
        if prior is None:
            raise ValueError("this ensemble widens doubtful rows towards the prior: pass the prior")
        conf, prior_probs = aligned_inputs(rows, confidence, prior)
        out = widen_arrays(out, prior_probs, conf, _groups(conditions), params.widening)
    return rows.assign(**{g: out[:, i] for i, g in enumerate(GRADES)})


class _Scorer:
    """The metric on fixed labelled rows, for many candidate probability arrays."""

    def __init__(self, labels: pd.DataFrame, rows: pd.DataFrame, probs: np.ndarray):
        first = rows.assign(**{g: probs[0][:, i] for i, g in enumerate(GRADES)})
        studies = np.unique(row_study_ids(rows["row_id"]))
        table = align_predictions(labels[labels["study_id"].isin(studies)], first, name="oof")
        self.position = pd.Index(rows["row_id"]).get_indexer(table["row_id"])
        self.table = table

    def __call__(self, p: np.ndarray) -> MetricResult:
        table = self.table.copy()
        table[list(GRADES)] = p[self.position]
        return score_aligned(table)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def fit_params(
    preds: dict[str, pd.DataFrame], labels: pd.DataFrame, per_group: bool = True, calibrate: bool = True
) -> EnsembleParams:
    """Fit blend weights, then calibration, on the labelled rows the predictions cover."""
    names = list(preds)
    rows, probs = _stack(preds)
    conditions = _conditions(rows["row_id"])
    groups = _groups(conditions)
    scorer = _Scorer(labels, rows, probs)
    keys = list(GROUPS) if per_group else ["all"]
    m = len(names)

    def weights_of(z: np.ndarray) -> dict[str, list[float]]:
        return {k: _softmax(z[i * m : (i + 1) * m]).tolist() for i, k in enumerate(keys)}

    if m > 1:
        res = minimize(
            lambda z: scorer(blend_arrays(probs, groups, weights_of(z))).score,
            np.zeros(m * len(keys)),
            method="Powell",
            options={"xtol": 1e-3, "ftol": 1e-5},
        )
        weights = weights_of(res.x)
    else:
        weights = {k: [1.0] for k in keys}
    params = EnsembleParams(names, weights)
    if not calibrate:
        return params
    blended = blend_arrays(probs, groups, weights)

    def loss(log_t: np.ndarray, scale: float) -> float:
        temps = dict(zip(CONDITIONS, np.exp(log_t).tolist()))
        return scorer(calibrate_arrays(blended, conditions, temps, scale)).score

    res = minimize(
        lambda z: loss(z[:-1], float(np.exp(z[-1]))),
        np.zeros(len(CONDITIONS) + 1),
        method="Powell",
        bounds=[(-_LOG_BOUND, _LOG_BOUND)] * (len(CONDITIONS) + 1),
        options={"xtol": 1e-3, "ftol": 1e-5},
    )
    params.temperatures = dict(zip(CONDITIONS, np.exp(res.x[:-1]).tolist()))
    params.spinal_severe_scale = float(np.exp(res.x[-1]))
    return params


@dataclass
class EnsembleResult:
    """The chosen ensemble: its out-of-fold predictions, its parameters for test time, every candidate's
    score."""

    oof: pd.DataFrame  # the chosen candidate's out-of-fold predictions
    params: EnsembleParams  # the chosen candidate, fitted on every row
    fold_params: dict[
        int, EnsembleParams
    ]  # the chosen candidate's fold-wise fits (empty when nothing is fitted)
    scores: pd.DataFrame  # one row per candidate (`model`, scores, `chosen`)
    chosen: str = ""
    candidates: dict[str, pd.DataFrame] = field(
        default_factory=dict
    )  # every candidate's out-of-fold predictions


BLEND = "blend (out-of-fold)"
CALIBRATED = "blend + calibration (out-of-fold)"
MEAN = "mean of models"


def _fold_wise(
    preds: dict[str, pd.DataFrame],
    labels: pd.DataFrame,
    folds: pd.DataFrame,
    per_group: bool,
    calibrate: bool,
) -> tuple[pd.DataFrame, dict[int, EnsembleParams]]:
    """Fit on the other folds, apply to each held-out fold: out-of-fold predictions of a fitted ensemble."""
    fold_of = folds.set_index("study_id")["fold"]
    held_out, fold_params = [], {}
    for fold in sorted(folds["fold"].unique()):
        train_studies = set(fold_of.index[fold_of != fold])
        test_studies = set(fold_of.index[fold_of == fold])
        fit_on = {m: rows_of_studies(p, train_studies) for m, p in preds.items()}
        if not len(next(iter(fit_on.values()))):
            continue
        fold_params[int(fold)] = p = fit_params(fit_on, labels, per_group, calibrate)
        held_out.append(apply_ensemble({m: rows_of_studies(v, test_studies) for m, v in preds.items()}, p))
    return pd.concat(held_out, ignore_index=True), fold_params


def fit_ensemble(
    preds: dict[str, pd.DataFrame],
    labels: pd.DataFrame,
    folds: pd.DataFrame,
    per_group: bool = True,
    calibrate: bool = True,
    confidence: pd.DataFrame | None = None,
    prior: pd.DataFrame | None = None,
    stack: bool = False,
) -> EnsembleResult:
    """Score every candidate out-of-fold, keep the best, fit it on everything (parameters for the test set).

    Candidates: each model alone, the plain mean, the fitted blend and (with `calibrate`) the calibrated
    blend; the fitted ones are fitted fold-wise, so every candidate's score is out-of-fold. On top of the
    best of them, each step below is one more candidate, fitted fold-wise too and kept only when it wins:
    with `stack`, the study-level second stage (`lumbar.ensemble.stack`); with the rows' localisation
    `confidence` and out-of-fold `prior`, widening by confidence (`lumbar.ensemble.widen`).

    Args:
        preds: model name -> OOF predictions (submission format), all covering the same rows.
        labels: the long label table.
        folds: `study_id, fold`.
        per_group: one weight vector per metric group instead of one overall.
        calibrate: make the calibrated blend a candidate.
        confidence: `row_id, confidence` of the OOF rows (the out-of-fold localizer's points).
        prior: class-prior rows (submission format) for the OOF studies, each fitted without its fold.
        stack: make the second stage a candidate.
    """
    names = list(preds)
    fixed = {n: EnsembleParams([n], {"all": [1.0]}) for n in names}  # test time then runs only that model
    if len(names) > 1:
        fixed[MEAN] = EnsembleParams(names, {"all": [1.0 / len(names)] * len(names)})
    candidates = {n: (apply_ensemble(preds, p), p, {}) for n, p in fixed.items()}
    fitted = ([BLEND] if len(names) > 1 else []) + ([CALIBRATED] if calibrate else [])
    for name in fitted:
        oof, fold_params = _fold_wise(preds, labels, folds, per_group, calibrate=name == CALIBRATED)
        candidates[name] = (oof, None, fold_params)
    scores = {n: _score(labels, oof) for n, (oof, _, _) in candidates.items()}
    best = min(scores, key=lambda n: scores[n].score)
    oof, params, fold_params = candidates[best]
    if params is None:
        params = fit_params(preds, labels, per_group, calibrate=best == CALIBRATED)
    outs = {n: c[0] for n, c in candidates.items()}
    chosen = best
    if stack:
        stacked, stack_folds = _stack_fold_wise(oof, labels, folds)
        name = f"{chosen} + second stage (out-of-fold)"
        scores[name], outs[name] = _score(labels, stacked), stacked
        if scores[name].score < scores[chosen].score:
            params = replace(
                params, stack=fit_stack(oof[["row_id"]], oof[list(GRADES)].to_numpy(float), labels)
            )
            fold_params = {k: replace(fold_params.get(k, params), stack=s) for k, s in stack_folds.items()}
            oof, chosen = stacked, name
    if confidence is not None and prior is not None:
        widened, widen_folds = _widen_fold_wise(oof, labels, folds, confidence, prior)
        name = f"{chosen} + widening (out-of-fold)"
        scores[name] = _score(labels, widened)
        if scores[name].score < scores[chosen].score:
            params = replace(params, widening=_fit_widening(oof, labels, confidence, prior))
            fold_params = {k: replace(fold_params.get(k, params), widening=w) for k, w in widen_folds.items()}
            oof, chosen = widened, name
            outs[chosen] = oof
    table = pd.DataFrame([{"model": n, **r.as_dict()} for n, r in scores.items()])
    table["chosen"] = table["model"] == chosen
    return EnsembleResult(oof, params, fold_params, table, chosen, outs)


def _refit_fold_wise(
    oof: pd.DataFrame, folds: pd.DataFrame, fit, apply
) -> tuple[pd.DataFrame, dict[int, object]]:
    """A step on top of OOF predictions, fitted on the other folds' rows (`fit(rows) -> params`) and applied
    to
    each held-out fold's (`apply(rows, params) -> (rows, 3) probabilities`): its own out-of-fold
    predictions."""
    fold_of = folds.set_index("study_id")["fold"]
    parts, fitted = [], {}
    for fold in sorted(folds["fold"].unique()):
        fit_rows = rows_of_studies(oof, set(fold_of.index[fold_of != fold]))
        held = rows_of_studies(oof, set(fold_of.index[fold_of == fold]))
        if not len(fit_rows) or not len(held):
            continue
        fitted[int(fold)] = params = fit(fit_rows)
        out = apply(held, params)
        parts.append(held[["row_id"]].assign(**{g: out[:, i] for i, g in enumerate(GRADES)}))
    return pd.concat(parts, ignore_index=True), fitted


def _stack_fold_wise(
    oof: pd.DataFrame, labels: pd.DataFrame, folds: pd.DataFrame
) -> tuple[pd.DataFrame, dict[int, dict]]:
    """The second stage fitted on the other folds' OOF rows, applied to each held-out fold's."""
    return _refit_fold_wise(
        oof,
        folds,
        lambda rows: fit_stack(rows[["row_id"]], rows[list(GRADES)].to_numpy(float), labels),
        lambda rows, s: apply_stack(rows[["row_id"]], rows[list(GRADES)].to_numpy(float), s),
    )


def _fit_widening(
    oof: pd.DataFrame, labels: pd.DataFrame, confidence: pd.DataFrame, prior: pd.DataFrame
) -> dict[str, list[float]]:
    rows = oof[["row_id"]].reset_index(drop=True)
    probs = oof[list(GRADES)].to_numpy(float)
    conf, prior_probs = aligned_inputs(rows, confidence, prior)
    scorer = _Scorer(labels, rows, probs[None])
    return fit_widening(
        probs, prior_probs, conf, _groups(_conditions(rows["row_id"])), lambda p: scorer(p).score
    )


def _widen_fold_wise(
    oof: pd.DataFrame,
    labels: pd.DataFrame,
    folds: pd.DataFrame,
    confidence: pd.DataFrame,
    prior: pd.DataFrame,
) -> tuple[pd.DataFrame, dict[int, dict[str, list[float]]]]:
    """Widening fitted on the other folds' OOF rows, applied to each held-out fold's."""

    def apply(rows: pd.DataFrame, w: dict[str, list[float]]) -> np.ndarray:
        conf, prior_probs = aligned_inputs(rows[["row_id"]], confidence, prior)
        return widen_arrays(
            rows[list(GRADES)].to_numpy(float), prior_probs, conf, _groups(_conditions(rows["row_id"])), w
        )

    return _refit_fold_wise(oof, folds, lambda rows: _fit_widening(rows, labels, confidence, prior), apply)


def _score(labels: pd.DataFrame, sub: pd.DataFrame) -> MetricResult:
    studies = set(row_study_ids(sub["row_id"]))
    return score_aligned(align_predictions(labels[labels["study_id"].isin(studies)], sub, name="predictions"))
