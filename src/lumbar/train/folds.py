"""Cross-validation folds: grouped by study, stratified on how degenerated a study is, made once and shared.

Every architecture and task of an experiment must see the same split, or their out-of-fold predictions
cannot be compared or blended. So the folds are written once to a CSV (`study_id, fold`) and every later run
reads it back. The split is scikit-learn's `StratifiedGroupKFold` with the study as the group (no study in
two folds) and, as the stratum, the study's number of Moderate-or-worse labels (the top teams' choice), with
adjacent counts merged so that every stratum has at least `n_folds` studies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from lumbar.core.tables import write_csv

FOLD_COLUMNS = ["study_id", "fold"]


def severity_strata(labels: pd.DataFrame, n_folds: int) -> pd.Series:
    """Per study: its number of Moderate-or-worse labels, adjacent counts merged until each stratum holds
    at least `n_folds` studies (the stratum is named by its smallest count)."""
    graded = labels[labels["grade"].notna()]
    counts = (graded["grade"].astype(int) >= 1).groupby(graded["study_id"]).sum().astype(int)
    counts = counts.reindex(sorted(labels["study_id"].unique()), fill_value=0)
    sizes = counts.value_counts().sort_index()
    groups, current, size = [], [], 0
    for value, n in sizes.items():
        current.append(value)
        size += n
        if size >= n_folds:
            groups.append(current)
            current, size = [], 0
    if current:  # a too-small top stratum joins the one below
        if groups:
            groups[-1] += current
        else:
            groups.append(current)
    stratum = {v: group[0] for group in groups for v in group}
    return counts.map(stratum)


def make_folds(labels: pd.DataFrame, n_folds: int = 5, seed: int = 42) -> pd.DataFrame:
    """Assign every labelled study a fold.

    Args:
        labels: the long label table (`study_id, condition, level, grade`).
        n_folds: number of folds (at least 2, at most the number of studies).
        seed: shuffling seed of the split.

    Returns:
        `study_id, fold`, sorted by study.
    """
    studies = np.array(sorted(labels["study_id"].unique()))
    if n_folds < 2 or n_folds > len(studies):
        raise ValueError(f"n_folds must be in [2, {len(studies)}] for {len(studies)} studies, got {n_folds}")
    strata = severity_strata(labels, n_folds).reindex(studies).to_numpy()
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold = np.full(len(studies), -1)
    for k, (_, held_out) in enumerate(splitter.split(studies, strata, groups=studies)):
        fold[held_out] = k
    return pd.DataFrame({"study_id": studies, "fold": fold})


def read_folds(path: str | Path) -> pd.DataFrame:
    """Read a folds CSV, checking its columns and that each study has one fold."""
    path = Path(path)
    folds = pd.read_csv(path)
    missing = [c for c in FOLD_COLUMNS if c not in folds.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {FOLD_COLUMNS}")
    dup = folds["study_id"].duplicated()
    if dup.any():
        raise ValueError(f"{path}: study {folds['study_id'][dup].iloc[0]} appears twice")
    return folds[FOLD_COLUMNS].astype("int64")


def load_or_make_folds(
    path: str | Path, labels: pd.DataFrame, n_folds: int = 5, seed: int = 42
) -> pd.DataFrame:
    """The folds in `path`; made from `labels` and written there first when the file does not exist.

    Raises:
        ValueError: when an existing file has another number of folds, or lacks labelled studies.
    """
    path = Path(path)
    if not path.is_file():
        return _write(make_folds(labels, n_folds, seed), path)
    folds = read_folds(path)
    found = int(folds["fold"].nunique())
    if found != n_folds:
        raise ValueError(
            f"{path}: holds {found} folds but n_folds={n_folds}; delete it or set n_folds={found}"
        )
    absent = sorted(set(labels["study_id"].unique()) - set(folds["study_id"]))
    if absent:
        raise ValueError(
            f"{path}: {len(absent)} labelled studies have no fold (first: {absent[:5]}); "
            "the file was made for other data"
        )
    return folds


def _write(folds: pd.DataFrame, path: Path) -> pd.DataFrame:
    write_csv(folds, path)
    return folds
