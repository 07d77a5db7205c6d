"""A study-level second stage: each prediction corrected by the other 24 of its study.

The first-level models grade each crop on its own, but the grades of one study are strongly tied (the real
train.csv: the two sides of a level correlate at 0.40, other conditions at one level at 0.35, the same
condition at other levels at 0.27), and the any-severe-spinal term reads the maximum over levels. The 4th
and 6th place teams stacked all outputs in a second stage; the 5th ran a sequence model across a level's
conditions. Here the second stage is a multinomial logistic model per metric group, fitted on the first
level's out-of-fold predictions, whose offset is the row's own log-probabilities:

    log p'(g) = log p(g) + x . W[:, g] + b[g] - log Z,       W[:, 0] = 0, b[0] = 0

so with W = 0 and b = 0 it returns the first level unchanged, and the L2 penalty on W and b shrinks towards
it. The features `x` of a row (condition c, level l) are two logits of each of 20 first-level predictions of
its study (any
abnormal: log(p_moderate + p_severe) - log p_normal; severe: log p_severe - log(p_normal + p_moderate)):
- the five conditions at level l, ordered relative to c (c itself, its other side, spinal, then the other
  group's same side and other side), so one model serves both sides of a group;
- condition c at the five levels;
plus the study's largest spinal severe logit and the level (one-hot). A row the study lacks (no crop) is
filled with the feature's mean. Features are standardised with the fitting rows' statistics.

The loss is the metric's: log loss weighted 1/2/4 by the true grade, per group. The penalty is chosen by an
inner split of the fitting studies (never the scored ones), from `PENALTIES`, so it adapts to the data size
(tens of demo studies or two thousand real ones). `lumbar.ensemble.blend.fit_ensemble` makes the stacked
chosen candidate one more candidate, kept only when its fold-wise out-of-fold score wins.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from lumbar.core.constants import CONDITION_GROUP, CONDITIONS, GRADE_WEIGHTS, GRADES, GROUPS, LEVELS
from lumbar.core.tables import split_row_ids

#: Candidate L2 penalties on W and b (standardised features); the inner split picks one per group. The largest
#: leaves the first level almost unchanged, the choice when the data are too few to learn from.
PENALTIES: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
#: Inner folds (by study) that choose the penalty.
INNER_FOLDS = 3
_EPS = 1e-7
#: For a row of condition i, the order in which the five conditions at its level enter its features.
_RELATIVE = {
    "spinal_canal_stenosis": (0, 1, 2, 3, 4),
    "left_neural_foraminal_narrowing": (1, 2, 0, 3, 4),
    "right_neural_foraminal_narrowing": (2, 1, 0, 4, 3),
    "left_subarticular_stenosis": (3, 4, 0, 1, 2),
    "right_subarticular_stenosis": (4, 3, 0, 2, 1),
}
N_FEATURES = 2 * len(CONDITIONS) + 2 * len(LEVELS) + 1 + len(LEVELS)


def _logits(probs: np.ndarray) -> np.ndarray:
    """(rows, 3) probabilities -> (rows, 2): any-abnormal and severe logits."""
    p = np.clip(probs, _EPS, 1.0)
    return np.stack(
        [np.log(p[:, 1] + p[:, 2]) - np.log(p[:, 0]), np.log(p[:, 2]) - np.log(p[:, 0] + p[:, 1])], 1
    )


def study_features(row_ids: pd.Series, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(features (rows, N_FEATURES) with NaN where the study lacks a row, group of each row).

    Args:
        row_ids: the rows (`study_id_condition_level`), any order, several studies.
        probs: (rows, 3) their first-level probabilities.
    """
    parts = split_row_ids(row_ids)
    study = pd.factorize(parts["study_id"])[0]
    cond = parts["condition"].map({c: i for i, c in enumerate(CONDITIONS)}).to_numpy()
    level = parts["level"].map({lv: i for i, lv in enumerate(LEVELS)}).to_numpy()
    grid = np.full((study.max() + 1 if len(study) else 0, len(CONDITIONS), len(LEVELS), 2), np.nan)
    grid[study, cond, level] = _logits(np.asarray(probs, float))
    relative = np.array([_RELATIVE[c] for c in CONDITIONS])[cond]  # (rows, 5)
    same_level = grid[study[:, None], relative, level[:, None]].reshape(len(study), -1)
    same_condition = grid[study, cond].reshape(len(study), -1)
    with np.errstate(all="ignore"):
        spinal_severe = np.nanmax(np.where(np.isnan(grid[:, 0, :, 1]), -np.inf, grid[:, 0, :, 1]), axis=1)
    spinal_severe = np.where(np.isfinite(spinal_severe), spinal_severe, np.nan)[study]
    onehot = np.eye(len(LEVELS))[level]
    x = np.concatenate([same_level, same_condition, spinal_severe[:, None], onehot], axis=1)
    return x, parts["condition"].map(CONDITION_GROUP).to_numpy()


def _softmax_rows(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _predict(x: np.ndarray, offset: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    z = offset.copy()
    z[:, 1:] += x @ w + b
    return _softmax_rows(z)


def _fit_one(
    x: np.ndarray, offset: np.ndarray, grade: np.ndarray, penalty: float
) -> tuple[np.ndarray, np.ndarray]:
    """W (F, 2), b (2) minimising the class-weighted log loss + penalty * (|W|^2 + |b|^2) (L-BFGS, exact
    gradient): a large penalty returns the first level itself."""
    f = x.shape[1]
    weight = np.asarray(GRADE_WEIGHTS)[grade]
    weight = weight / weight.sum()
    onehot = np.eye(len(GRADES))[grade]

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[: 2 * f].reshape(f, 2), theta[2 * f :]
        p = _predict(x, offset, w, b)
        nll = -np.sum(weight * np.log(np.clip(p[np.arange(len(grade)), grade], 1e-15, 1.0)))
        d = (p - onehot)[:, 1:] * weight[:, None]  # d loss / d z for grades 1, 2
        grad_w = x.T @ d + 2 * penalty * w
        grad_b = d.sum(axis=0) + 2 * penalty * b
        return nll + penalty * float(np.sum(w * w) + np.sum(b * b)), np.concatenate([grad_w.ravel(), grad_b])

    res = minimize(loss, np.zeros(2 * f + 2), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return res.x[: 2 * f].reshape(f, 2), res.x[2 * f :]


def _weighted_nll(p: np.ndarray, grade: np.ndarray) -> float:
    weight = np.asarray(GRADE_WEIGHTS)[grade]
    return float(
        np.sum(weight * -np.log(np.clip(p[np.arange(len(grade)), grade], 1e-15, 1.0))) / weight.sum()
    )


def _choose_penalty(x: np.ndarray, offset: np.ndarray, grade: np.ndarray, study: np.ndarray) -> float:
    """The penalty with the lowest inner out-of-fold loss (studies split into INNER_FOLDS by a fixed hash)."""
    studies = np.unique(study)
    if len(studies) < 2 * INNER_FOLDS:
        return max(PENALTIES)
    inner = (studies * 2654435761 % 2**32) % INNER_FOLDS  # deterministic, independent of the outer folds' ids
    fold_of = dict(zip(studies, inner))
    fold = np.array([fold_of[s] for s in study])
    losses = []
    for penalty in PENALTIES:
        p = np.empty_like(offset)
        for k in range(INNER_FOLDS):
            fit, held = fold != k, fold == k
            w, b = _fit_one(x[fit], offset[fit], grade[fit], penalty)
            p[held] = _predict(x[held], offset[held], w, b)
        losses.append(_weighted_nll(p, grade))
    return PENALTIES[int(np.argmin(losses))]


def fit_stack(rows: pd.DataFrame, probs: np.ndarray, labels: pd.DataFrame) -> dict:
    """The second stage's parameters (JSON-ready), fitted on the labelled rows among `rows`.

    Args:
        rows: `row_id` of the first level's predictions (whole studies: features read the other rows).
        probs: (rows, 3) those predictions.
        labels: the long label table (`study_id, condition, level, grade`).
    """
    x, groups = study_features(rows["row_id"], probs)
    graded = labels.dropna(subset=["grade"])
    grade_of = dict(
        zip(
            graded["study_id"].astype(str) + "_" + graded["condition"] + "_" + graded["level"],
            graded["grade"].astype(int),
        )
    )
    grade = rows["row_id"].astype(str).map(grade_of).to_numpy(float)
    study = split_row_ids(rows["row_id"])["study_id"].to_numpy()
    offset = np.log(np.clip(probs, _EPS, 1.0))
    params = {}
    for g in GROUPS:
        use = (groups == g) & ~np.isnan(grade)
        if use.sum() < 10:
            continue
        xs = x[use]
        mean = np.nanmean(xs, axis=0)
        mean = np.where(np.isnan(mean), 0.0, mean)
        xs = np.where(np.isnan(xs), mean, xs)
        std = xs.std(axis=0)
        std = np.where(std > 1e-6, std, 1.0)
        xs = (xs - mean) / std
        y = grade[use].astype(int)
        penalty = _choose_penalty(xs, offset[use], y, study[use])
        w, b = _fit_one(xs, offset[use], y, penalty)
        params[g] = {
            "mean": mean.tolist(),
            "std": std.tolist(),
            "w": w.tolist(),
            "b": b.tolist(),
            "penalty": penalty,
            "rows": int(use.sum()),
        }
    return params


def apply_stack(rows: pd.DataFrame, probs: np.ndarray, params: dict) -> np.ndarray:
    """(rows, 3) second-stage probabilities; groups the parameters lack keep the first level's."""
    x, groups = study_features(rows["row_id"], probs)
    out = np.asarray(probs, float).copy()
    offset = np.log(np.clip(out, _EPS, 1.0))
    for g, p in params.items():
        use = groups == g
        if not use.any():
            continue
        mean, std = np.asarray(p["mean"]), np.asarray(p["std"])
        xs = (np.where(np.isnan(x[use]), mean, x[use]) - mean) / std
        out[use] = _predict(xs, offset[use], np.asarray(p["w"]), np.asarray(p["b"]))
    return out
