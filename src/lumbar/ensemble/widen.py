"""Predictions that widen when their crop is doubtful.

A classifier does not know that its crop shows the wrong disc: on a lost localizer it can give the true
Severe grade 0.01 (a weighted loss of 18 for one target, where the class prior would cost about 14 and a
typical target well under 1). Each prediction row has a localisation confidence
(`lumbar.localize.confidence.row_confidence`: the heatmap's mass at the point, the floor for an implausible
level set), and the row's probabilities are moved towards the class prior by it:

    p' = (1 - s) * prior + s * p,    s = sigmoid(a_g + b_g * logit(confidence)),  b_g >= 0

with one (a, b) per metric group g, fitted by minimising the competition metric on out-of-fold rows (the
out-of-fold localizer's confidences, the out-of-fold priors). A sure crop keeps s near 1; a lost one
(confidence at the floor) gets s near 0, the prior. The mixture also bounds a row's loss: it is never
worse than the prior's by more than -log(1 - s).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from lumbar.core.constants import GRADES, GROUPS

#: Confidences are clipped to [FLOOR, 1 - FLOOR] before the logit.
FLOOR = 1e-3
BOUNDS_A, BOUNDS_B = (-6.0, 12.0), (0.0, 4.0)


def _logit(confidence: np.ndarray) -> np.ndarray:
    c = np.clip(confidence, FLOOR, 1 - FLOOR)
    return np.log(c / (1 - c))


def keep_share(confidence: np.ndarray, groups: np.ndarray, params: dict[str, list[float]]) -> np.ndarray:
    """s per row: how much of the model's prediction is kept (the rest is the prior)."""
    a = np.array([params[g][0] if g in params else 50.0 for g in groups])
    b = np.array([params[g][1] if g in params else 0.0 for g in groups])
    return 1.0 / (1.0 + np.exp(-(a + b * _logit(confidence))))


def widen_arrays(
    probs: np.ndarray,
    prior: np.ndarray,
    confidence: np.ndarray,
    groups: np.ndarray,
    params: dict[str, list[float]],
) -> np.ndarray:
    """(rows, 3) probabilities moved towards the prior by each row's confidence."""
    s = keep_share(confidence, groups, params)[:, None]
    return (1 - s) * prior + s * probs


def fit_widening(
    probs: np.ndarray, prior: np.ndarray, confidence: np.ndarray, groups: np.ndarray, score
) -> dict[str, list[float]]:
    """(a, b) per group minimising `score(probabilities) -> float` (the metric on the fitted rows)."""
    keys = [g for g in GROUPS if (groups == g).any()]

    def params_of(z: np.ndarray) -> dict[str, list[float]]:
        return {g: [float(z[2 * i]), float(z[2 * i + 1])] for i, g in enumerate(keys)}

    start = np.tile([4.0, 1.0], len(keys))
    res = minimize(
        lambda z: score(widen_arrays(probs, prior, confidence, groups, params_of(z))),
        start,
        method="Powell",
        bounds=[BOUNDS_A, BOUNDS_B] * len(keys),
        options={"xtol": 1e-3, "ftol": 1e-6},
    )
    return params_of(res.x)


def aligned_inputs(
    rows: pd.DataFrame, confidence: pd.DataFrame | None, prior: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's confidence (1 where none is known: ground-truth points) and prior probabilities.

    Raises:
        ValueError: a row has no prior.
    """
    ids = rows["row_id"].astype(str)
    conf = np.ones(len(ids))
    if confidence is not None and len(confidence):
        known = (
            confidence.assign(row_id=confidence["row_id"].astype(str))
            .drop_duplicates("row_id")
            .set_index("row_id")
        )
        conf = known["confidence"].reindex(ids).fillna(1.0).to_numpy(float)
    table = prior.assign(row_id=prior["row_id"].astype(str)).set_index("row_id")
    missing = ids[~ids.isin(table.index)]
    if len(missing):
        raise ValueError(f"no prior for {len(missing)} row(s) to widen, e.g. {missing.iloc[0]}")
    return conf, table.loc[ids, list(GRADES)].to_numpy(float)
