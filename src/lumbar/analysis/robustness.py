"""Where the loss sits: per target, per study, and the worst of them.

A mean score hides the failure that costs most on Kaggle: a few studies in which the localizer is lost and
the classifiers are sure anyway (a true Severe grade given 0.006 costs 4 x 5.1 = 20 for one target, while a
typical target costs well under 1). These numbers make such studies visible: each labelled target's
weighted loss (`weight x -log p(true grade)`, the quantity the metric averages within a group), each
study's own metric value, and a summary with the median, the 95th percentile and the maximum.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lumbar.core.tables import row_study_ids
from lumbar.scoring.metric import TERMS, align_predictions, metric_parts, score_aligned

SUMMARY_KEYS = (
    "studies",
    "study_median",
    "study_p95",
    "study_max",
    "target_p99",
    "target_max",
    "targets_over_8",
)
TAIL_KEYS = ("study_p95", "study_max", "target_max", "targets_over_8")


def target_losses(labels: pd.DataFrame, submission: pd.DataFrame, name: str = "submission") -> pd.DataFrame:
    """One row per labelled target: `row_id, study_id, condition, level, grade, p_true, weight, loss`
    (loss = weight x -log p_true, the metric's clipping), worst first."""
    rows = metric_parts(align_predictions(labels, submission, name)).rows
    out = rows[["row_id", "study_id", "condition", "level", "grade", "weight"]].assign(
        p_true=np.exp(-rows["nll"]), loss=rows["weight"] * rows["nll"]
    )
    return out.sort_values("loss", ascending=False, kind="stable").reset_index(drop=True)


def study_losses(labels: pd.DataFrame, submission: pd.DataFrame, name: str = "submission") -> pd.DataFrame:
    """The metric on each study alone (`study_id, score, worst_target, worst_loss`), worst study first; the
    mean of the terms the study has (one without labelled spinal rows has no any-severe-spinal term)."""
    aligned = metric_parts(align_predictions(labels, submission, name)).rows
    aligned = aligned.assign(loss=aligned["weight"] * aligned["nll"])
    rows = []
    for study_id, group in aligned.groupby("study_id", sort=True):
        worst = group.loc[group["loss"].idxmax()]
        terms = score_aligned(group).as_dict()
        score = float(
            np.nanmean([terms[t] for t in TERMS])
        )  # a study without spinal labels has no any-severe term
        rows.append((int(study_id), score, worst["row_id"], float(worst["loss"])))
    table = pd.DataFrame(rows, columns=["study_id", "score", "worst_target", "worst_loss"])
    return table.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


def loss_summary(targets: pd.DataFrame, studies: pd.DataFrame) -> dict[str, float]:
    """Median, 95th percentile and maximum of the per-study scores; the targets' 99th percentile and maximum,
    and how many targets cost more than 8 (a Severe target below p = 0.135, a Moderate one below 0.018)."""
    s, t = studies["score"].to_numpy(), targets["loss"].to_numpy()
    return {
        "studies": len(s),
        "study_median": float(np.median(s)),
        "study_p95": float(np.percentile(s, 95)),
        "study_max": float(s.max()),
        "target_p99": float(np.percentile(t, 99)),
        "target_max": float(t.max()),
        "targets_over_8": int((t > 8.0).sum()),
    }


def summary_line(summary: dict[str, float]) -> str:
    return " ".join(
        f"{k}={summary[k]:.4f}" if isinstance(summary[k], float) else f"{k}={summary[k]}"
        for k in SUMMARY_KEYS
    )


def robustness_report(
    labels: pd.DataFrame, submission: pd.DataFrame, name: str = "submission", worst: int = 5
) -> tuple[dict[str, float], pd.DataFrame, pd.DataFrame]:
    """Summary, per-study table and per-target table of one submission (studies it has labels for)."""
    labels = labels[labels["study_id"].isin(set(row_study_ids(submission["row_id"])))]
    targets = target_losses(labels, submission, name)
    studies = study_losses(labels, submission, name)
    summary = loss_summary(targets, studies)
    summary["worst_studies"] = studies.head(worst)["study_id"].tolist()
    return summary, studies, targets


def reference_tails(targets: pd.DataFrame, labels: pd.DataFrame, references: dict[str, pd.DataFrame]) -> dict:
    """The loss tail of reference predictions (the generator's oracle, the class prior) on the same targets,
    and `<name>_excess_over_8`: the submission's targets above 8 that cost the reference at most 8.

    A target above 8 that the oracle also pays is the label's doing (the generator's label noise, a grade the
    image barely shows); only the excess is the pipeline's to remove.
    """
    out: dict = {}
    for name, submission in references.items():
        summary, _, ref = robustness_report(labels, submission, name)
        out[name] = {k: summary[k] for k in TAIL_KEYS}
        ref_loss = ref.set_index("row_id")["loss"].reindex(targets["row_id"]).to_numpy()
        out[f"{name}_excess_over_8"] = int(((targets["loss"].to_numpy() > 8.0) & ~(ref_loss > 8.0)).sum())
    return out


def tails_line(tails: dict) -> str:
    """`oracle: targets_over_8=.. target_max=.. excess_over_8=..`, one clause per reference."""
    return " ".join(
        f"{name}: targets_over_8={t['targets_over_8']} target_max={t['target_max']:.2f} "
        f"study_p95={t['study_p95']:.4f} excess_over_8={tails[f'{name}_excess_over_8']};"
        for name, t in tails.items()
        if isinstance(t, dict)
    ).rstrip(";")
