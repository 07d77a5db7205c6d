"""Folds: grouped by study, stratified on the count of Moderate-or-worse labels, written once and reused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lumbar.core.constants import CONDITIONS, LEVELS
from lumbar.train.folds import load_or_make_folds, make_folds, severity_strata


def _labels(n_studies: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [(1000 + s, c, lv, int(rng.choice(3, p=[0.75, 0.17, 0.08])))
            for s in range(n_studies) for c in CONDITIONS for lv in LEVELS]
    return pd.DataFrame(rows, columns=["study_id", "condition", "level", "grade"])


def test_every_study_in_exactly_one_fold_and_folds_balanced():
    labels = _labels()
    folds = make_folds(labels, n_folds=4, seed=1)
    assert sorted(folds["study_id"]) == sorted(labels["study_id"].unique())
    assert folds["study_id"].is_unique and set(folds["fold"]) == {0, 1, 2, 3}
    assert folds["fold"].value_counts().max() - folds["fold"].value_counts().min() <= 2
    strata = severity_strata(labels, 4)
    mean_by_fold = strata.groupby(folds.set_index("study_id")["fold"]).mean()
    assert mean_by_fold.max() - mean_by_fold.min() < 0.5 * strata.std() + 1  # stratified: similar severity


def test_strata_merge_rare_counts():
    strata = severity_strata(_labels(), 5)
    assert strata.value_counts().min() >= 5


def test_written_once_then_reused(tmp_path):
    labels = _labels()
    path = tmp_path / "folds.csv"
    first = load_or_make_folds(path, labels, n_folds=4, seed=1)
    again = load_or_make_folds(path, labels, n_folds=4, seed=99)  # another seed: the file wins
    pd.testing.assert_frame_equal(first, again)
    assert make_folds(labels, 4, seed=1).equals(first)  # stable for a seed
    with pytest.raises(ValueError, match="holds 4 folds"):
        load_or_make_folds(path, labels, n_folds=5)
    more = pd.concat([labels, labels.assign(study_id=labels["study_id"] + 10_000)])
    with pytest.raises(ValueError, match="have no fold"):
        load_or_make_folds(path, more, n_folds=4)
