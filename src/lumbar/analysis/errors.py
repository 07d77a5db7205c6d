"""Error analysis of out-of-fold predictions: where the log loss comes from and what explains it.

Every table starts from `MetricParts` (`lumbar.scoring.metric.metric_parts`): the share of the score of each
labelled row and, for the any-severe-spinal term, of each study, computed by the code that computes the
score, so the tables add up to the score the ensemble reported. The `06_error_analysis` notebook shows them
with `lumbar.analysis.error_plots`.

- `contribution_matrix`: condition x level (plus the any-severe-spinal term, attributed to the level whose
  severe probability it read), each cell the score points its targets cost.
- `study_contributions`: studies by the score points they cost, with their most expensive target.
- `any_severe_confusion`: the any-severe-spinal term as a 2 x 2 table (some level Severe or not, largest
  severe probability at or above a threshold or not), with the share of the term each cell carries.
- `localizer_loss`: each target's loss beside the localizer's error on its point (out-of-fold), to see
  whether a bad point explains a bad prediction.
- `label_noise_candidates`: labelled rows whose out-of-fold probability of the written grade is tiny (the
  2nd-place team dropped such rows and retrained); on synthetic data the generator's own probability of the
  written grade (`oracle.csv`) says which of them are noise indeed.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from lumbar.core.constants import CONDITIONS, GRADES, GROUPS, LEVELS, row_id
from lumbar.scoring.metric import MetricParts, align_predictions, metric_parts, submitted_labels

ANY_SEVERE = "any_severe_spinal"
#: Bins of the localizer's 3D error (slice offset included) for `localizer_loss`, mm.
ERROR_BINS_MM: tuple[float, ...] = (2.0, 5.0, 10.0)
#: Names of the bins, in order, then the targets without a predicted point and those without a true one.
ERROR_BIN_NAMES: tuple[str, ...] = (
    f"<= {ERROR_BINS_MM[0]:g} mm",
    *(f"{a:g}-{b:g} mm" for a, b in pairwise(ERROR_BINS_MM)),
    f"> {ERROR_BINS_MM[-1]:g} mm",
    "missing",
    "no point",
)


def prediction_parts(
    labels: pd.DataFrame, predictions: pd.DataFrame, name: str = "predictions"
) -> MetricParts:
    """`MetricParts` of predictions (submission format) on the labelled rows of the studies they cover."""
    scored = submitted_labels(labels, predictions, name=name)
    return metric_parts(align_predictions(scored, predictions, name=name))


def contribution_matrix(parts: MetricParts) -> pd.DataFrame:
    """Score points per condition (and the any-severe-spinal term) x level, with an `all` column.

    The cells sum to the score; the any-severe term sits in the level of the severe probability it read.
    """
    rows = parts.rows.pivot_table(index="condition", columns="level", values="contribution", aggfunc="sum")
    studies = parts.studies.groupby("level")["contribution"].sum().rename(ANY_SEVERE).to_frame().T
    table = pd.concat([rows, studies]).reindex(index=[*CONDITIONS, ANY_SEVERE], columns=list(LEVELS))
    table = table.fillna(0.0)
    table["all"] = table.sum(axis=1)
    return table.rename_axis(index="term / condition", columns="level")


def study_contributions(parts: MetricParts) -> pd.DataFrame:
    """Per study: score points (its rows plus its any-severe term), sorted most expensive first.

    Columns: `study_id, contribution, targets, worst_target, worst_contribution, worst_grade, worst_p_label`
    (the target that cost the most and the probability it gave the written grade).
    """
    rows = parts.rows.assign(p_label=np.exp(-parts.rows["nll"]))
    worst = rows.loc[rows.groupby("study_id")["contribution"].idxmax()].set_index("study_id")
    total = (
        rows.groupby("study_id")["contribution"]
        .sum()
        .add(parts.studies.set_index("study_id")["contribution"], fill_value=0.0)
    )
    out = pd.DataFrame(
        {
            "contribution": total,
            "targets": rows.groupby("study_id").size(),
            "worst_target": [row_id(s, r.condition, r.level) for s, r in worst.iterrows()],
            "worst_contribution": worst["contribution"],
            "worst_grade": worst["grade"],
            "worst_p_label": worst["p_label"],
        }
    )
    return out.sort_values("contribution", ascending=False).rename_axis("study_id").reset_index()


def any_severe_confusion(parts: MetricParts, threshold: float = 0.5) -> pd.DataFrame:
    """The any-severe-spinal term as a confusion table.

    Returns:
        Index `true` ("no severe level", "a severe level"), columns `predicted` (max severe p < threshold,
        >= threshold): `studies` counts; and the same layout with the share of the term each cell carries
        (`share of term`, summing to 1), as a two-level column index (`studies` / `share of term`).
    """
    s = parts.studies
    true = np.where(s["label"] > 0, "a severe level", "no severe level")
    pred = np.where(s["pred"] >= threshold, f"max severe p >= {threshold:g}", f"max severe p < {threshold:g}")
    rows, cols = (
        ["no severe level", "a severe level"],
        [f"max severe p < {threshold:g}", f"max severe p >= {threshold:g}"],
    )
    frame = pd.DataFrame(
        {"true": true, "predicted": pred, "share": s["share"] / max(s["share"].sum(), 1e-300)}
    )
    counts = pd.crosstab(frame["true"], frame["predicted"]).reindex(index=rows, columns=cols, fill_value=0)
    shares = frame.pivot_table(index="true", columns="predicted", values="share", aggfunc="sum")
    shares = shares.reindex(index=rows, columns=cols).fillna(0.0)
    return pd.concat({"studies": counts, "share of term": shares}, axis=1)


def localizer_loss(parts: MetricParts, errors: pd.DataFrame) -> pd.DataFrame:
    """Each scored target with the localizer's error on its point
    (`lumbar.localize.evaluate.localization_errors`).

    Columns: `study_id, condition, level, term, grade, nll, contribution, error_mm, error_3d_mm, slice_error,
    missing, error_bin` (the 3D error binned by `ERROR_BINS_MM`; "missing": the localizer gave no point,
    "no point": the target has no ground-truth point to compare with).
    """
    keys = ["study_id", "condition", "level"]
    cols = ["error_mm", "error_3d_mm", "slice_error", "missing"]
    table = parts.rows[[*keys, "term", "grade", "nll", "contribution"]].merge(
        errors[keys + cols].drop_duplicates(keys), on=keys, how="left", validate="one_to_one"
    )
    edges = [0.0, *ERROR_BINS_MM, np.inf]
    names = list(ERROR_BIN_NAMES[: len(edges) - 1])
    binned = pd.cut(table["error_3d_mm"], edges, labels=names, include_lowest=True).astype(object)
    binned = binned.where(table["missing"].ne(True), "missing")  # NaN (no truth point) is not True
    table["error_bin"] = binned.where(table["missing"].notna(), "no point")
    return table


def localizer_loss_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per metric group and error bin: targets, mean loss (-log p of the label), score points; then the
    rank correlation (Spearman) of 3D error and loss per group over the targets with a predicted point."""
    summary = table.groupby(["term", "error_bin"]).agg(
        targets=("nll", "size"), mean_nll=("nll", "mean"), contribution=("contribution", "sum")
    )
    summary = summary.reindex(pd.MultiIndex.from_product([list(GROUPS), list(ERROR_BIN_NAMES)]), fill_value=0)
    summary = summary[summary["targets"] > 0]
    rho = {}
    for group in GROUPS:
        t = table[(table["term"] == group) & table["error_3d_mm"].notna()]
        rho[group] = float(spearmanr(t["error_3d_mm"], t["nll"]).statistic) if len(t) > 2 else float("nan")
    summary["spearman_error_vs_nll"] = [rho[g] for g in summary.index.get_level_values(0)]
    return summary.rename_axis(["term", "error_bin"])


def label_noise_candidates(
    parts: MetricParts, max_prob: float = 0.05, oracle: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Labelled rows whose out-of-fold probability of the written grade is below `max_prob`, costliest first.

    Args:
        parts: the out-of-fold `MetricParts`.
        max_prob: rows whose p(written grade) is below this are candidates.
        oracle: the synthetic generator's probabilities (submission format, `oracle.csv`); adds
            `oracle_p_label`, the generator's own probability of the written grade (small: noise indeed).

    Returns:
        `row_id, study_id, condition, level, grade, p_label, nll, contribution[, oracle_p_label]`.
    """
    rows = parts.rows
    p_label = np.exp(-rows["nll"])
    out = rows.loc[
        p_label < max_prob, ["row_id", "study_id", "condition", "level", "grade", "nll", "contribution"]
    ]
    out.insert(5, "p_label", p_label[out.index])
    if oracle is not None:
        probs = oracle.set_index("row_id").reindex(out["row_id"])[list(GRADES)].to_numpy(dtype=float)
        out["oracle_p_label"] = (
            probs[np.arange(len(out)), out["grade"].to_numpy(dtype=int)] if len(out) else []
        )
    return out.sort_values("contribution", ascending=False).reset_index(drop=True)
