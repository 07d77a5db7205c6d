"""Published reference numbers, and a run's accuracy set beside them.

The numbers live in `reference_results.csv` (package data), one row per figure: `source`, `model`,
`task_mode` (the thesis's mode; empty for other works, whose grade schemes are not the project's modes),
`classes`, `condition`, `level`, `metric`, `value`, `setting` (data, input, grades, test-set size), `where`
(the slide and table of the thesis presentation it is read from, with the figure as printed) and `citation`.
Sources: J. Skwierczyński's master's thesis (Politechnika Wrocławska; RSNA 2024 data, sagittal ROI crops at
L4/L5, 189-198 test studies, the four task modes) and the works its literature review quotes: DeepSPINE
(Lu et al., MLHC 2018) and, from DeepSPINE's Table 3, Jamaludin et al. 2017a, both on their own data. They are
facts to compare with, not targets the code checks.

Matching: a reference row names a condition (or `neural_foraminal_narrowing` = left and right pooled), a level
(or `all`), a class scheme (the run's 3-grade probabilities are collapsed for `binary`), and a metric
(`accuracy`; `class_average_accuracy` = the mean per-class recall = balanced accuracy, which is also the
thesis's "macro avg" recall; `f1_macro`; `f1_weighted`). The run's value is computed on exactly that
selection of its prediction table.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd

from lumbar.core.constants import CONDITIONS
from lumbar.scoring.thesis import ALL, TASK_MODES, check_prediction_table, slice_metrics, targets_and_scores

REFERENCE_FILE = "reference_results.csv"
#: Reference condition names beyond the competition's own.
POOLED_CONDITIONS: dict[str, tuple[str, ...]] = {
    "neural_foraminal_narrowing": ("left_neural_foraminal_narrowing", "right_neural_foraminal_narrowing"),
}
#: Reference metric -> key of `reports.slice_metrics`.
METRIC_KEYS = {
    "accuracy": "accuracy",
    "class_average_accuracy": "balanced_accuracy",
    "f1_macro": "f1_macro",
    "f1_weighted": "f1_weighted",
}
REFERENCE_COLUMNS = [
    "source",
    "model",
    "task_mode",
    "classes",
    "condition",
    "level",
    "metric",
    "value",
    "setting",
    "where",
    "citation",
]


def load_references(path: str | Path | None = None) -> pd.DataFrame:
    """The published numbers shipped with the package (or those of another file with the same columns)."""
    source = files("lumbar.scoring").joinpath(REFERENCE_FILE) if path is None else Path(path)
    name = REFERENCE_FILE if path is None else str(path)
    with source.open("r", encoding="utf-8") as f:
        refs = pd.read_csv(f, keep_default_na=False, na_values={"value": [""]})
    missing = [c for c in REFERENCE_COLUMNS if c not in refs.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {missing}")
    problems = [
        (column, f"must be one of {sorted(allowed)}", ~refs[column].isin(allowed))
        for column, allowed in (
            ("classes", {"multiclass", "binary"}),
            ("metric", set(METRIC_KEYS)),
            ("task_mode", {"", *TASK_MODES}),
        )
    ]
    problems += [
        (column, "is empty: every figure says where it comes from", refs[column].str.strip().eq(""))
        for column in ("where", "citation")
    ]
    problems.append(("value", "is not a number", pd.to_numeric(refs["value"], errors="coerce").isna()))
    for column, problem, bad in problems:
        if bad.any():
            raise ValueError(f"{name}, line {int(np.flatnonzero(bad)[0]) + 2}: {column} {problem}")
    return refs


def _conditions(name: str) -> tuple[str, ...]:
    if name in POOLED_CONDITIONS:
        return POOLED_CONDITIONS[name]
    if name in CONDITIONS:
        return (name,)
    raise ValueError(f"{REFERENCE_FILE}: unknown condition {name!r}")


def compare_with_references(
    table: pd.DataFrame, references: pd.DataFrame | None = None, classes: str | None = None
) -> pd.DataFrame:
    """Set a run's figures beside each published number.

    Args:
        table: the run's prediction table (`study_id, condition, level, grade, normal_mild, moderate,
        severe`).
        references: reference rows (default: the shipped file).
        classes: keep only references of this class scheme ("multiclass" or "binary").

    Returns:
        The reference rows with `run` (this run's value on the same selection, NaN when the run has no such
        rows), `run_n` (rows it is computed on), `difference` (run - reference), `setting` and `where`.
    """
    refs = load_references() if references is None else references.copy()
    if classes is not None:
        refs = refs[refs["classes"] == classes].reset_index(drop=True)
    table = check_prediction_table(table)
    metrics: dict[tuple[str, str, str], dict[str, float]] = {}  # one computation per selection
    run, run_n = [], []
    for ref in refs.itertuples(index=False):
        key = (ref.condition, ref.level, ref.classes)
        if key not in metrics:
            rows = table[table["condition"].isin(_conditions(ref.condition))]
            if ref.level != ALL:
                rows = rows[rows["level"] == ref.level]
            metrics[key] = slice_metrics(*targets_and_scores(rows, ref.classes)) if len(rows) else {"n": 0}
        run.append(metrics[key].get(METRIC_KEYS[ref.metric], np.nan))
        run_n.append(metrics[key]["n"])
    out = refs.assign(run=run, run_n=run_n)
    out["difference"] = out["run"] - out["value"]
    measured = REFERENCE_COLUMNS[: REFERENCE_COLUMNS.index("value") + 1]
    return out[[*measured, "run", "difference", "run_n", "setting", "where"]].rename(
        columns={"value": "reference"}
    )
