"""Submission tables: validate, normalise and write them (`row_id, normal_mild, moderate, severe`).

Every prediction in the project travels in this format (OOF predictions, test predictions, blends), so the
metric, the blender and the final writer all check it here. Errors are `SubmissionError`s that name the
first offending rows, so a broken file can be fixed without a debugger.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from lumbar.core.constants import GRADES
from lumbar.core.paths import data_root, images_dir
from lumbar.core.tables import (
    SUBMISSION_COLUMNS,
    load_series_descriptions,
    load_submission,
    submission_row_ids,
    write_csv,
)

#: Tolerance on a row's probability sum.
SUM_TOLERANCE = 1e-6
#: How many offending rows an error message names.
SHOW = 5


class SubmissionError(ValueError):
    """A submission table that breaks the format (columns, row_ids or probabilities)."""


def first_of(items: Iterable[str], total: int | None = None) -> str:
    """The first few items joined for an error message, with the total when some are left out."""
    items = list(items)
    shown = ", ".join(items[:SHOW])
    total = len(items) if total is None else total
    return shown + (f", ... ({total} in all)" if total > SHOW else "")


def _rows(sub: pd.DataFrame, mask: np.ndarray, describe=None) -> str:
    """Name the first rows where `mask` holds: row_id and position (CSV line = position + 2)."""
    where = np.flatnonzero(mask)
    parts = []
    for i in where[:SHOW]:
        text = f"{sub['row_id'].iloc[i]} (row {i})"
        if describe is not None:
            text += f" {describe(i)}"
        parts.append(text)
    return first_of(parts, total=len(where))


def validate_submission(
    sub: pd.DataFrame, expected_row_ids: Iterable[str] | None = None, name: str = "submission"
) -> None:
    """Check a submission table; raise on the first kind of problem found.

    Checks, in order: columns (exactly `row_id, normal_mild, moderate, severe`, any order), at least one row,
    duplicate row_ids, missing and extra row_ids against `expected_row_ids` (when given), non-numeric or
    non-finite values, negative values, rows not summing to 1 within 1e-6.

    Args:
        sub: the table to check.
        expected_row_ids: the row_ids it must hold, no more and no fewer (e.g. the sample submission's).
        name: what to call the table in messages (its file name, say).

    Raises:
        SubmissionError: naming the problem and the first offending rows (row = 0-based position).
    """
    columns = list(sub.columns)
    if sorted(columns) != sorted(SUBMISSION_COLUMNS) or len(columns) != len(SUBMISSION_COLUMNS):
        missing = [c for c in SUBMISSION_COLUMNS if c not in columns]
        extra = [c for c in columns if c not in SUBMISSION_COLUMNS]
        raise SubmissionError(
            f"{name}: wrong columns (missing {missing}, unexpected {extra}); expected exactly "
            f"{SUBMISSION_COLUMNS}"
        )
    if len(sub) == 0:
        raise SubmissionError(f"{name}: no rows")
    ids = sub["row_id"].astype(str)
    dup = ids.duplicated(keep=False).to_numpy()
    if dup.any():
        raise SubmissionError(f"{name}: duplicate row_id(s): {_rows(sub, dup)}")
    if expected_row_ids is not None:
        expected = pd.Index(pd.Series(list(expected_row_ids), dtype=str))
        present = pd.Index(ids)
        missing = expected[~expected.isin(present)]
        if len(missing):
            raise SubmissionError(f"{name}: {len(missing)} expected row_id(s) missing: {first_of(missing)}")
        extra = ~ids.isin(expected).to_numpy()
        if extra.any():
            raise SubmissionError(f"{name}: {int(extra.sum())} unexpected row_id(s): {_rows(sub, extra)}")
    values = sub[list(GRADES)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    raw = sub[list(GRADES)]
    non_numeric = (np.isnan(values) & raw.notna().to_numpy()).any(axis=1)
    if non_numeric.any():
        raise SubmissionError(f"{name}: non-numeric probabilities in {_rows(sub, non_numeric)}")
    not_finite = (~np.isfinite(values)).any(axis=1)
    if not_finite.any():
        raise SubmissionError(f"{name}: NaN or infinite probabilities in {_rows(sub, not_finite)}")
    negative = (values < 0).any(axis=1)
    if negative.any():
        raise SubmissionError(f"{name}: negative probabilities in {_rows(sub, negative)}")
    sums = values.sum(axis=1)
    off = np.abs(sums - 1.0) > SUM_TOLERANCE
    if off.any():
        raise SubmissionError(
            f"{name}: rows not summing to 1 (within {SUM_TOLERANCE:g}): "
            f"{_rows(sub, off, lambda i: f'sum={sums[i]:.9g}')}"
        )


def write_submission(df: pd.DataFrame, path: str | Path, order: Iterable[str] | None = None) -> Path:
    """Validate and write a submission atomically.

    Args:
        df: the submission table.
        path: output CSV.
        order: the row_ids in the order to write them (e.g. `sample_submission.csv`'s); the table must hold
            exactly these. Without it, the table's own order is kept.

    Returns:
        The written path.
    """
    name = Path(path).name
    if order is not None:
        order = pd.Index(pd.Series(list(order), dtype=str))
        if order.has_duplicates:
            raise SubmissionError(
                f"{name}: duplicate row_id(s) in the requested order: {first_of(order[order.duplicated()])}"
            )
        validate_submission(df, expected_row_ids=order, name=name)
        out = df.assign(row_id=df["row_id"].astype(str)).set_index("row_id").loc[order].reset_index()
    else:
        validate_submission(df, name=name)
        out = df.assign(row_id=df["row_id"].astype(str))
    return write_csv(out[SUBMISSION_COLUMNS], path)


def split_studies(root: str | Path, split: str) -> list[int]:
    """The studies a submission for a split must cover: those of the series CSV and any study folder."""
    root = Path(root)
    studies = set()
    csv = root / f"{split}_series_descriptions.csv"
    if csv.is_file():
        studies |= set(load_series_descriptions(csv)["study_id"].tolist())
    base = images_dir(root, split)
    if base.is_dir():
        studies |= {int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit()}
    if not studies:
        raise FileNotFoundError(f"{root}: neither {csv.name} nor {base.name}/ lists any study")
    return sorted(studies)


def cli_validate_submission(args: argparse.Namespace) -> int:
    """`python -m lumbar validate-submission`: exit 0 when the file covers exactly the split's studies."""
    try:
        sub = load_submission(args.submission)
        studies = split_studies(data_root(args.data_dir), args.split)
        validate_submission(sub, expected_row_ids=submission_row_ids(studies), name=str(args.submission))
    except (SubmissionError, FileNotFoundError, ValueError) as e:
        print(f"invalid: {e}", file=sys.stderr)
        return 2
    print(f"valid: {args.submission}: {len(sub)} rows, {len(studies)} studies of {args.split}, rows sum to 1")
    return 0
