"""The competition metric (what Kaggle ranks), computed exactly and vectorised.

Definition (the host's `score` function, restated):
    * Only labelled rows are scored. A row's weight is `2 ** grade` (1 Normal/Mild, 2 Moderate, 4 Severe).
    * Three groups: spinal (spinal canal, 5 rows per study), foraminal (left and right, 10), subarticular
      (left and right, 10). Each group's loss is the weighted mean of `-log p(true grade)` over its rows.
    * any_severe_spinal: per study with a labelled spinal row, label = 1 if any labelled spinal level is
      Severe, weight = the largest weight among those rows, prediction = the largest `severe` probability
      over the same rows; the term is the weighted binary log loss over studies.
    * Score = the plain mean of the four terms. Probabilities are clipped to [1e-15, 1 - 1e-15].

Where the score comes from: `metric_parts` gives each labelled row's and each study's share of its term
(`w_i * loss_i / sum of the term's weights`) and of the score (that share / 4); `score_aligned` adds up these
very shares, so the error analysis (`lumbar.analysis.errors`) and the score cannot disagree.

Decisions:
    * Submission rows without a label are ignored (unlabelled targets are not scored, as on Kaggle).
    * A labelled row missing from the submission is an error, never a silent skip.
    * The submission must be well formed (`inference.submission.validate_submission`: rows summing to 1 and
      so on); we do not renormalise behind the caller's back.
    * A group without labelled rows gets a NaN term, and then the score is NaN too: the competition score
      is not defined, while the other terms still are.
    * The `score` command scores the labels of the studies that appear in the submission (so out-of-fold
      predictions of some folds, or a synthetic test set's `test_labels.csv`, can be scored); each such study
      must have a prediction for every labelled row, and a submission with no labelled study is an error.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from lumbar.core.constants import CONDITION_GROUP, GRADE_WEIGHTS, GRADES, GROUPS
from lumbar.core.tables import (
    LABEL_TABLE_COLUMNS,
    load_labels,
    load_submission,
    rows_of_studies,
    split_row_ids,
    submission_row_ids,
    table_row_ids,
)
from lumbar.scoring.baselines import prior_submission, uniform_submission
from lumbar.scoring.submission import SubmissionError, first_of, validate_submission

EPS = 1e-15
TERMS: tuple[str, ...] = (*GROUPS, "any_severe_spinal")


@dataclass(frozen=True)
class MetricResult:
    """The score and its four terms, with how much was scored."""

    score: float
    spinal: float
    foraminal: float
    subarticular: float
    any_severe_spinal: float
    n_rows: int
    n_studies: int

    def as_dict(self) -> dict[str, float | int]:
        """Plain dict, for JSON run records."""
        return asdict(self)

    def line(self) -> str:
        """`score=<v> spinal=<v> foraminal=<v> subarticular=<v> any_severe_spinal=<v>`, 6 decimals."""
        return " ".join(f"{k}={getattr(self, k):.6f}" for k in ("score", *TERMS))


def _check_labels(labels: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in LABEL_TABLE_COLUMNS if c not in labels.columns]
    if missing:
        raise ValueError(f"label table lacks column(s) {missing}; expected {LABEL_TABLE_COLUMNS}")
    labels = labels[labels["grade"].notna()]
    if len(labels) == 0:
        raise ValueError("label table has no labelled rows to score")
    unknown = ~labels["condition"].isin(list(CONDITION_GROUP))
    if unknown.any():
        raise ValueError(f"label table: unknown condition {labels.loc[unknown, 'condition'].iloc[0]!r}")
    bad = ~labels["grade"].isin([0, 1, 2])
    if bad.any():
        raise ValueError(f"label table: grade must be 0, 1 or 2, found {labels['grade'][bad].iloc[0]!r}")
    return labels.assign(grade=labels["grade"].astype("int64")).reset_index(drop=True)


def align_predictions(
    labels: pd.DataFrame, submission: pd.DataFrame, name: str = "submission"
) -> pd.DataFrame:
    """Join predictions onto the labelled rows.

    Args:
        labels: the long label table; rows without a grade are dropped.
        submission: a valid submission table (checked here); rows without a label are ignored.
        name: what to call the submission in messages.

    Returns:
        `study_id, condition, level, grade, row_id, normal_mild, moderate, severe`, one row per labelled row.

    Raises:
        SubmissionError: for a malformed submission or labelled rows it lacks (the first ones named).
    """
    labels = _check_labels(labels)
    validate_submission(submission, name=name)
    ids = table_row_ids(labels)
    position = pd.Index(submission["row_id"].astype(str)).get_indexer(ids)
    missing = position < 0
    if missing.any():
        raise SubmissionError(
            f"{name}: {int(missing.sum())} labelled row(s) have no prediction: "
            f"{first_of(ids[missing].tolist())}"
        )
    probs = submission[list(GRADES)].to_numpy(dtype=float)[position]
    out = labels[LABEL_TABLE_COLUMNS].assign(row_id=ids.to_numpy())
    out[list(GRADES)] = probs
    return out


def _shares(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Each item's share of a weighted mean: `w_i * v_i / sum(w)`; the shares sum to the mean."""
    return values * weights / np.sum(weights) if len(values) else values


@dataclass(frozen=True)
class MetricParts:
    """Where the score comes from: each labelled row's and each study's share of its term.

    A term is the sum of its items' `share` (spinal, foraminal, subarticular: rows; any_severe_spinal:
    studies), the score the mean of the four terms, so `contribution = share / 4` sums to the score over
    rows and studies together. `score_aligned` adds these very shares up: the parts and the score cannot
    disagree.

    Attributes:
        rows: the aligned table plus `term` (the row's group), `weight`, `nll` (-log p(true grade)),
            `share`, `contribution`.
        studies: one row per study with a labelled spinal row: `study_id`, `level` (the spinal level with
            the largest severe probability, the one the term reads), `label` (1: some level is Severe),
            `weight`, `pred`, `nll` (binary log loss), `term` ("any_severe_spinal"), `share`, `contribution`.
    """

    rows: pd.DataFrame
    studies: pd.DataFrame


def _parts(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, pd.DataFrame]:
    """The metric's pieces as arrays: (group, weight, nll, share) per row, and the per-study any-severe
    frame."""
    grade = table["grade"].to_numpy(dtype=np.int64)
    probs = np.clip(table[list(GRADES)].to_numpy(dtype=float), EPS, 1 - EPS)
    weight = np.asarray(GRADE_WEIGHTS)[grade]
    nll = -np.log(probs[np.arange(len(grade)), grade])
    group = table["condition"].map(CONDITION_GROUP).to_numpy()
    share = np.zeros(len(grade))
    for g in GROUPS:
        rows = group == g
        share[rows] = _shares(nll[rows], weight[rows])

    spinal = group == "spinal"
    per_study = (
        pd.DataFrame(
            {
                "study_id": table["study_id"].to_numpy()[spinal],
                "label": (grade[spinal] == 2).astype(float),
                "weight": weight[spinal],
                "pred": probs[spinal, 2],
            }
        )
        .groupby("study_id", sort=False)
        .max()
    )
    y = per_study["label"].to_numpy()
    p = np.clip(per_study["pred"].to_numpy(), EPS, 1 - EPS)
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    per_study["nll"] = bce
    per_study["share"] = _shares(bce, per_study["weight"].to_numpy())
    return group, weight, nll, share, per_study


def _term(share: np.ndarray) -> float:
    """A term from its items' shares; NaN when it has no item (the competition score is then undefined)."""
    return float(np.sum(share)) if len(share) else float("nan")


def score_aligned(table: pd.DataFrame) -> MetricResult:
    """The metric on labelled rows already joined with their probabilities (see `align_predictions`)."""
    group, _, _, share, per_study = _parts(table)
    terms = {g: _term(share[group == g]) for g in GROUPS}
    terms["any_severe_spinal"] = _term(per_study["share"].to_numpy())
    score = float(np.mean([terms[t] for t in TERMS]))
    return MetricResult(score=score, **terms, n_rows=len(table), n_studies=int(table["study_id"].nunique()))


def metric_parts(table: pd.DataFrame) -> MetricParts:
    """Each row's and study's share of the score, from the same arrays `score_aligned` sums (`MetricParts`).

    Args:
        table: labelled rows joined with their probabilities (`align_predictions`).
    """
    group, weight, nll, share, per_study = _parts(table)
    rows = table.reset_index(drop=True).assign(
        term=group, weight=weight, nll=nll, share=share, contribution=share / len(TERMS)
    )
    spinal = rows[rows["term"] == "spinal"]
    argmax = spinal.loc[spinal.groupby("study_id", sort=False)["severe"].idxmax(), ["study_id", "level"]]
    studies = per_study.reset_index().merge(argmax, on="study_id", how="left", validate="one_to_one")
    studies = studies.assign(term="any_severe_spinal", contribution=studies["share"] / len(TERMS))
    columns = ["study_id", "level", "label", "weight", "pred", "nll", "term", "share", "contribution"]
    return MetricParts(rows, studies[columns])


def competition_score(
    labels: pd.DataFrame, submission: pd.DataFrame, name: str = "submission"
) -> MetricResult:
    """The competition metric of a submission against the long label table.

    Every labelled row is scored; it must be in the submission. Submission rows without a label are ignored.

    Raises:
        SubmissionError: malformed submission, or labelled rows it lacks.
        ValueError: a label table with no labelled rows or unknown values.
    """
    return score_aligned(align_predictions(labels, submission, name=name))


def _submitted_studies(submission: pd.DataFrame, name: str) -> np.ndarray:
    try:
        return split_row_ids(submission["row_id"].astype(str))["study_id"].unique()
    except ValueError as e:
        raise SubmissionError(f"{name}: {e}") from None


def submitted_labels(
    labels: pd.DataFrame, submission: pd.DataFrame, name: str = "submission"
) -> pd.DataFrame:
    """The label rows of the studies that appear in the submission (what the `score` command scores).

    Raises:
        SubmissionError: a malformed row_id, or no submitted study with a label.
    """
    studies = _submitted_studies(submission, name)
    kept = labels[labels["study_id"].isin(studies) & labels["grade"].notna()]
    if len(kept) == 0:
        raise SubmissionError(f"{name}: none of its {len(studies)} studies has a label in the label table")
    return kept.reset_index(drop=True)


def score_test_set(
    labels: pd.DataFrame,
    submission: pd.DataFrame,
    prior_labels: pd.DataFrame,
    oracle: pd.DataFrame | None = None,
) -> tuple[dict[str, float], dict[str, pd.DataFrame]]:
    """A labelled test set's scores, so the demo and `fresh-eval` measure alike: the submission's, the class
    prior's (fitted on `prior_labels`, Laplace-smoothed) and the oracle's (when given and covering the set).

    Returns:
        (scores by name: "submission", "oracle", "prior"; the reference tables by name: "oracle", "prior").
    """
    studies = sorted(labels["study_id"].unique())
    references = {}
    if oracle is not None and len(rows := rows_of_studies(oracle, studies)):
        references["oracle"] = rows
    references["prior"] = prior_submission(prior_labels, studies, smoothing=1.0)
    scores = {"submission": competition_score(labels, submission, "submission").score}
    scores.update({name: competition_score(labels, table, name).score for name, table in references.items()})
    return scores, references


def format_table(result: MetricResult) -> str:
    """The terms as a small text table."""
    lines = [f"{'term':<20}{'loss':>12}", *(f"{t:<20}{getattr(result, t):>12.6f}" for t in TERMS)]
    lines.append(f"{'score (mean)':<20}{result.score:>12.6f}")
    lines.append(f"scored: {result.n_rows} labelled rows of {result.n_studies} studies")
    return "\n".join(lines)


def cli_score(args: argparse.Namespace) -> int:
    """`python -m lumbar score`: print the terms, then the one-line summary last (bad input: exit 2)."""

    labels = load_labels(args.labels)
    if args.submission:
        name = str(args.submission)
        submission = load_submission(args.submission)
        validate_submission(submission, name=name)
        studies = _submitted_studies(submission, name)
        validate_submission(submission, expected_row_ids=submission_row_ids(studies), name=name)
        scored = submitted_labels(labels, submission, name=name)
        not_submitted = labels["study_id"].nunique() - scored["study_id"].nunique()
        print(f"submission: {name} ({len(studies)} studies)")
        if not_submitted:
            print(f"note: {not_submitted} labelled studies are not in the submission and are not scored")
    else:
        name = f"baseline {args.baseline}"
        scored = labels
        studies = labels["study_id"].unique()
        if args.baseline == "uniform":
            submission = uniform_submission(studies)
        else:
            prior_labels = load_labels(args.prior_labels) if args.prior_labels else labels
            by = "condition" if args.baseline == "prior_condition" else "condition_level"
            submission = prior_submission(prior_labels, studies, by=by)
        print(f"submission: {name}" + (f" (priors from {args.prior_labels})" if args.prior_labels else ""))
    print(f"labels: {args.labels}")
    result = competition_score(scored, submission, name=name)
    print(format_table(result))
    print(result.line())
    return 0
