"""Reference submissions every model must beat: uniform probabilities and class priors.

On all labelled rows of the real train.csv (priors fitted on the same rows) the competition metric gives
uniform 0.999410, condition x level prior 0.930697, per-condition prior 1.108652.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd

from lumbar.core.constants import CONDITIONS, GRADES, LEVELS
from lumbar.core.tables import SUBMISSION_COLUMNS, split_row_ids, submission_row_ids

PRIOR_KEYS = {"condition_level": ["condition", "level"], "condition": ["condition"]}


def _row_ids(study_ids: Iterable[int]) -> list[str]:
    """All 25 row ids of each study, studies in ascending order (sample_submission's)."""
    study_ids = sorted({int(s) for s in study_ids})
    if not study_ids:
        raise ValueError("no study_ids given")
    return submission_row_ids(study_ids)


def uniform_submission(study_ids: Iterable[int]) -> pd.DataFrame:
    """1/3 for every grade of all 25 rows of each study, in sample_submission order."""
    sub = pd.DataFrame({"row_id": _row_ids(study_ids)})
    for g in GRADES:
        sub[g] = 1.0 / len(GRADES)
    return sub[SUBMISSION_COLUMNS]


def class_priors(labels: pd.DataFrame, by: str = "condition_level", smoothing: float = 0.0) -> pd.DataFrame:
    """Unweighted grade frequencies of a label table.

    Args:
        labels: the long label table (rows without a grade are ignored).
        by: "condition_level" (one distribution per condition x level) or "condition" (the five levels
            of a condition pooled).
        smoothing: pseudo-count added to every grade. 0 gives the plain frequencies (the reference values);
            fitted on a few studies, a grade never seen would get probability 0 and an unbounded log loss,
            so fallbacks and small-sample baselines use 1 (Laplace), which also covers keys without labels.

    Returns:
        One row per key with the columns `normal_mild, moderate, severe` summing to 1.

    Raises:
        ValueError: for an unknown `by`, or (without smoothing) a key of the competition with no labelled row.
    """
    if by not in PRIOR_KEYS:
        raise ValueError(f"by must be one of {list(PRIOR_KEYS)}, got {by!r}")
    keys = PRIOR_KEYS[by]
    labelled = labels[labels["grade"].notna()]
    counts = pd.crosstab([labelled[k] for k in keys], labelled["grade"].astype(int)).reindex(
        columns=range(len(GRADES)), fill_value=0
    )
    full = (
        pd.MultiIndex.from_product([CONDITIONS, LEVELS], names=keys)
        if by == "condition_level"
        else pd.Index(CONDITIONS, name="condition")
    )
    counts = counts.reindex(full, fill_value=0) if smoothing > 0 else counts.reindex(full)
    if counts.isna().any(axis=1).any():
        missing = counts.index[counts.isna().any(axis=1)][0]
        raise ValueError(f"no labelled row for {missing} to fit a prior on")
    freq = counts.to_numpy(dtype=float) + smoothing
    freq = freq / freq.sum(axis=1, keepdims=True)
    return pd.DataFrame(freq, index=counts.index, columns=list(GRADES)).reset_index()


def prior_rows(prior: pd.DataFrame, row_ids: Sequence[str], by: str = "condition_level") -> pd.DataFrame:
    """Rows of a prior table (`class_priors`) for the given row ids, in their order (submission format):
    the baselines, the fallback rows of training and inference and the widening's prior come from here."""
    keys = split_row_ids(row_ids)[PRIOR_KEYS[by]]
    rows = keys.merge(prior, on=PRIOR_KEYS[by], how="left", validate="many_to_one")
    return pd.DataFrame({"row_id": row_ids, **{g: rows[g].to_numpy() for g in GRADES}})


def prior_submission(
    labels: pd.DataFrame, study_ids: Iterable[int], by: str = "condition_level", smoothing: float = 0.0
) -> pd.DataFrame:
    """Every study gets the class frequencies of `labels` (see `class_priors`), in sample_submission order."""
    sub = prior_rows(class_priors(labels, by=by, smoothing=smoothing), _row_ids(study_ids), by)
    assert not sub[list(GRADES)].isna().any().any()
    return sub


def fold_prior(labels: pd.DataFrame, held_out: Iterable[int]) -> pd.DataFrame:
    """The condition x level prior of a fold: fitted on the other studies' labels, Laplace-smoothed (a grade
    the other folds never show must not get probability 0)."""
    return class_priors(labels[~labels["study_id"].isin(held_out)], smoothing=1.0)


def out_of_fold_prior(labels: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    """Condition x level prior rows for each fold's studies, each from its `fold_prior`."""
    parts = []
    for _, group in folds.groupby("fold"):
        parts.append(prior_rows(fold_prior(labels, group["study_id"]), _row_ids(group["study_id"])))
    return pd.concat(parts, ignore_index=True)
