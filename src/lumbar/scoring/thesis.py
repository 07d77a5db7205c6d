"""The thesis's clinical tables: accuracy, balanced accuracy, F1, per-class report, AUROC, confusion matrices.

Input is one prediction table over a whole evaluation set (`study_id, condition, level, grade,
normal_mild, moderate, severe`; `metric.align_predictions` makes it from labels and a submission), so every
number is computed over the whole set, never averaged over batches.

Task modes (the thesis's four): `<scope>_<classes>`.
    classes: `multiclass` (Normal/Mild, Moderate, Severe; prediction = argmax) or `binary` (Normal/Mild vs
        Moderate+Severe; p(positive) = moderate + severe, prediction = positive when p(positive) > 0.5).
    scope: `single` (each condition is its own task/model: reported per condition and per condition x level)
        or `multi` (one model for all conditions: additionally pooled over everything and per level).

AUROC is one-vs-rest per class; the macro AUROC is their plain mean over the classes whose one-vs-rest AUROC
is defined (both present in the slice), which is scikit-learn's `multi_class="ovr"` when every class occurs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)

from lumbar.core.constants import CONDITIONS, GRADE_LABELS, GRADES, LEVELS

TASK_MODES: tuple[str, ...] = ("single_multiclass", "single_binary", "multi_multiclass", "multi_binary")
PREDICTION_TABLE_COLUMNS = ["study_id", "condition", "level", "grade", *GRADES]
#: (column key, display name) of the classes of each class scheme.
CLASSES: dict[str, tuple[tuple[str, str], ...]] = {
    "multiclass": tuple(zip(GRADES, GRADE_LABELS)),
    "binary": (("normal_mild", "Normal/Mild"), ("moderate_severe", "Moderate/Severe")),
}
SLICE_KEYS = ["scope", "condition", "level"]
ALL = "all"


def parse_mode(mode: str) -> tuple[str, str]:
    """`"multi_binary"` -> `("multi", "binary")`; anything else than the four modes is an error."""
    if mode not in TASK_MODES:
        raise ValueError(f"unknown task mode {mode!r}; expected one of {TASK_MODES}")
    scope, classes = mode.split("_")
    return scope, classes


def targets_and_scores(table: pd.DataFrame, classes: str) -> tuple[np.ndarray, np.ndarray]:
    """True class and class probabilities of each row under a class scheme (binary collapses the grades)."""
    grade = table["grade"].to_numpy(dtype=np.int64)
    probs = table[list(GRADES)].to_numpy(dtype=float)
    if classes == "binary":
        pos = probs[:, 1] + probs[:, 2]
        return (grade >= 1).astype(np.int64), np.column_stack([1.0 - pos, pos])
    return grade, probs


def check_prediction_table(table: pd.DataFrame) -> pd.DataFrame:
    """The labelled rows of a prediction table, after checking its columns, grades and probabilities."""
    missing = [c for c in PREDICTION_TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"prediction table lacks column(s) {missing}; expected {PREDICTION_TABLE_COLUMNS}")
    table = table[table["grade"].notna()].reset_index(drop=True)
    if len(table) == 0:
        raise ValueError("prediction table has no labelled rows")
    bad = ~table["grade"].isin([0, 1, 2])
    if bad.any():
        raise ValueError(f"prediction table row {int(np.flatnonzero(bad)[0])}: grade must be 0, 1 or 2")
    probs = table[list(GRADES)].to_numpy(dtype=float)
    bad = ~np.isfinite(probs).all(axis=1)
    if bad.any():
        raise ValueError(f"prediction table row {int(np.flatnonzero(bad)[0])}: NaN or infinite probability")
    return table


def ovr_auroc(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """One-vs-rest AUROC of each class; NaN for a class that is absent from, or alone in, `y`."""
    out = np.full(scores.shape[1], np.nan)
    for k in range(scores.shape[1]):
        positive = y == k
        if 0 < positive.sum() < len(y):
            out[k] = roc_auc_score(positive, scores[:, k])
    return out


def slice_metrics(y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro/weighted F1 and macro AUROC of one slice (all classes counted)."""
    labels = list(range(scores.shape[1]))
    pred = scores.argmax(axis=1)
    auc = ovr_auroc(y, scores)
    with warnings.catch_warnings():  # a slice may lack a class; the per-class table shows its support
        warnings.simplefilter("ignore", UserWarning)
        return {
            "n": len(y),
            "accuracy": float(accuracy_score(y, pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
            "f1_macro": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
            "f1_weighted": float(f1_score(y, pred, labels=labels, average="weighted", zero_division=0)),
            "auroc": float(np.nanmean(auc)) if np.isfinite(auc).any() else float("nan"),
        }


@dataclass
class EvaluationReport:
    """All tables of one evaluation.

    Attributes:
        mode: the task mode.
        summary: one row per slice (`scope, condition, level`): n, accuracy, balanced_accuracy, f1_macro,
            f1_weighted, auroc.
        per_class: one row per slice and class: precision, recall, f1, support (classification_report), auroc.
        confusion: one row per slice and true class, a `predicted_<class>` count column per class.
    """

    mode: str
    summary: pd.DataFrame
    per_class: pd.DataFrame
    confusion: pd.DataFrame

    @property
    def class_names(self) -> list[str]:
        return [name for _, name in CLASSES[parse_mode(self.mode)[1]]]

    def confusion_matrix(self, scope: str, condition: str = ALL, level: str = ALL) -> np.ndarray:
        """The confusion matrix of one slice (rows true, columns predicted)."""
        rows = self.confusion[
            (self.confusion["scope"] == scope)
            & (self.confusion["condition"] == condition)
            & (self.confusion["level"] == level)
        ]
        if rows.empty:
            raise KeyError(f"no slice scope={scope!r} condition={condition!r} level={level!r}")
        return rows[[c for c in rows.columns if c.startswith("predicted_")]].to_numpy()


def _slices(table: pd.DataFrame, scope: str):
    """(scope, condition, level, rows) of every slice the mode reports, in the competition's order."""
    present_c = [c for c in CONDITIONS if c in set(table["condition"])]
    present_l = [lv for lv in LEVELS if lv in set(table["level"])]
    if scope == "multi":
        yield "all", ALL, ALL, table
        for lv in present_l:
            yield "level", ALL, lv, table[table["level"] == lv]
    for c in present_c:
        rows = table[table["condition"] == c]
        yield "condition", c, ALL, rows
        for lv in present_l:
            sub = rows[rows["level"] == lv]
            if len(sub):
                yield "condition_level", c, lv, sub


def evaluate_predictions(table: pd.DataFrame, mode: str) -> EvaluationReport:
    """Compute every table of the thesis's report for one task mode (see the module docstring)."""
    scope, classes = parse_mode(mode)
    table = check_prediction_table(table)
    keys = [k for k, _ in CLASSES[classes]]
    names = [n for _, n in CLASSES[classes]]
    summary, per_class, confusion = [], [], []
    for sc, cond, lv, rows in _slices(table, scope):
        where = {"scope": sc, "condition": cond, "level": lv}
        y, scores = targets_and_scores(rows, classes)
        pred = scores.argmax(axis=1)
        summary.append({**where, **slice_metrics(y, scores)})
        report = classification_report(
            y, pred, labels=list(range(len(keys))), target_names=names, output_dict=True, zero_division=0
        )
        auc = ovr_auroc(y, scores)
        for k, name in enumerate(names):
            r = report[name]
            per_class.append(
                {
                    **where,
                    "class": keys[k],
                    "precision": r["precision"],
                    "recall": r["recall"],
                    "f1": r["f1-score"],
                    "support": int(r["support"]),
                    "auroc": auc[k],
                }
            )
        cm = confusion_matrix(y, pred, labels=list(range(len(keys))))
        for k in range(len(keys)):
            confusion.append(
                {**where, "true": keys[k], **{f"predicted_{p}": int(cm[k, j]) for j, p in enumerate(keys)}}
            )
    return EvaluationReport(mode, pd.DataFrame(summary), pd.DataFrame(per_class), pd.DataFrame(confusion))
