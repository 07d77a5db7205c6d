"""Calibration of grade probabilities: reliability bins and the expected calibration error (ECE).

The metric is a log loss, so a model that ranks well but says 0.3 where 0.1 happens pays for it; the
ensemble's temperatures and spinal severe scale (`lumbar.ensemble.blend`) exist to fix that. These numbers
show whether they did.

Definitions (one-vs-rest per grade, unweighted: calibration is about frequencies, not the metric's weights):
    * For grade k, each labelled row gives a predicted probability p = p_k and an outcome y = [grade == k].
    * Rows fall into `bins` equal-width bins of p on [0, 1] (bin b holds b/bins <= p < (b+1)/bins; p = 1
      goes to the last bin).
    * A bin's `mean_pred` is the mean p of its rows, its `observed` the mean y (the observed frequency).
    * ECE_k = sum over bins of (rows in bin / rows) * |mean_pred - observed|. `expected_calibration_error`
      also gives the mean over the three grades (the classwise ECE).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lumbar.core.constants import GRADES

#: Columns of `reliability_table`.
RELIABILITY_COLUMNS = ["grade", "bin", "lower", "upper", "count", "mean_pred", "observed"]


def reliability_table(aligned: pd.DataFrame, bins: int = 10) -> pd.DataFrame:
    """Predicted against observed frequency per grade and probability bin (module docstring).

    Args:
        aligned: labelled rows with their probabilities (`lumbar.scoring.metric.align_predictions`):
            `grade` and the `GRADES` columns.
        bins: equal-width bins on [0, 1].

    Returns:
        One row per grade and bin (`RELIABILITY_COLUMNS`); an empty bin has count 0 and NaN means.
    """
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    grade = aligned["grade"].to_numpy(dtype=np.int64)
    probs = aligned[list(GRADES)].to_numpy(dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    rows = []
    for k, name in enumerate(GRADES):
        p, y = probs[:, k], (grade == k).astype(float)
        which = np.clip(np.floor(p * bins).astype(np.int64), 0, bins - 1)
        count = np.bincount(which, minlength=bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_pred = np.bincount(which, weights=p, minlength=bins) / count
            observed = np.bincount(which, weights=y, minlength=bins) / count
        rows += [
            (name, b, edges[b], edges[b + 1], int(count[b]), mean_pred[b], observed[b]) for b in range(bins)
        ]
    return pd.DataFrame(rows, columns=RELIABILITY_COLUMNS)


def expected_calibration_error(reliability: pd.DataFrame) -> dict[str, float]:
    """ECE per grade and their mean ("mean") from a `reliability_table` (module docstring)."""
    out = {}
    for name in GRADES:
        t = reliability[(reliability["grade"] == name) & (reliability["count"] > 0)]
        n = t["count"].sum()
        out[name] = (
            float((t["count"] * (t["mean_pred"] - t["observed"]).abs()).sum() / n) if n else float("nan")
        )
    out["mean"] = float(np.mean([out[g] for g in GRADES]))
    return out
