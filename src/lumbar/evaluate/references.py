"""Published reference numbers, and a run's accuracy set beside them.

The numbers live in `reference_results.csv` (package data), one row per figure with its source and setting:
the thesis (L4/L5, ground-truth crops, about 190 test studies; four task modes) and DeepSPINE (Lu et al. 2018,
on its own non-RSNA data). They are facts to compare with, not targets the code checks.

Matching: a reference row names a condition (or `neural_foraminal_narrowing` = left and right pooled), a level
(or `all`), a class scheme (the run's 3-grade probabilities are collapsed for `binary`), and a metric
(`accuracy`, or `class_average_accuracy` = the mean per-class recall = balanced accuracy). The run's value is
computed on exactly that selection of its prediction table.
"""

from __future__ import annotations

from importlib.resources import files

import numpy as np
import pandas as pd

from lumbar.constants import CONDITIONS
from lumbar.evaluate.reports import ALL, check_prediction_table, slice_metrics, targets_and_scores

REFERENCE_FILE = "reference_results.csv"
#: Reference condition names beyond the competition's own.
POOLED_CONDITIONS: dict[str, tuple[str, ...]] = {
    "neural_foraminal_narrowing": ("left_neural_foraminal_narrowing", "right_neural_foraminal_narrowing"),
}
#: Reference metric -> key of `reports.slice_metrics`.
METRIC_KEYS = {"accuracy": "accuracy", "class_average_accuracy": "balanced_accuracy"}
REFERENCE_COLUMNS = ["source", "model", "task_mode", "classes", "condition", "level", "metric", "value", "setting", "citation"]


def load_references() -> pd.DataFrame:
    """The published numbers shipped with the package."""
    with files("lumbar.evaluate").joinpath(REFERENCE_FILE).open("r", encoding="utf-8") as f:
        refs = pd.read_csv(f, keep_default_na=False, na_values={"value": [""]})
    missing = [c for c in REFERENCE_COLUMNS if c not in refs.columns]
    if missing:
        raise ValueError(f"{REFERENCE_FILE}: missing column(s) {missing}")
    for column, allowed in (("classes", {"multiclass", "binary"}), ("metric", set(METRIC_KEYS))):
        bad = ~refs[column].isin(allowed)
        if bad.any():
            raise ValueError(f"{REFERENCE_FILE}, line {int(np.flatnonzero(bad)[0]) + 2}: {column} must be one of {sorted(allowed)}")
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
    """Set a run's accuracy beside each published number.

    Args:
        table: the run's prediction table (`study_id, condition, level, grade, normal_mild, moderate, severe`).
        references: reference rows (default: the shipped file).
        classes: keep only references of this class scheme ("multiclass" or "binary").

    Returns:
        The reference rows with `run` (this run's value on the same selection, NaN when the run has no such
        rows), `run_n` (rows it is computed on) and `difference` (run - reference).
    """
    refs = load_references() if references is None else references.copy()
    if classes is not None:
        refs = refs[refs["classes"] == classes].reset_index(drop=True)
    table = check_prediction_table(table)
    run, run_n = [], []
    for ref in refs.itertuples(index=False):
        rows = table[table["condition"].isin(_conditions(ref.condition))]
        if ref.level != ALL:
            rows = rows[rows["level"] == ref.level]
        if len(rows) == 0:
            run.append(np.nan)
            run_n.append(0)
            continue
        y, scores = targets_and_scores(rows, ref.classes)
        run.append(slice_metrics(y, scores)[METRIC_KEYS[ref.metric]])
        run_n.append(len(rows))
    out = refs.assign(run=run, run_n=run_n)
    out["difference"] = out["run"] - out["value"]
    return out[["source", "model", "task_mode", "classes", "condition", "level", "metric", "value", "run",
                "difference", "run_n", "setting"]].rename(columns={"value": "reference"})
