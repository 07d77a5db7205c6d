import numpy as np
import pandas as pd
import pytest

from lumbar.core.constants import GRADES
from lumbar.core.tables import load_submission, submission_row_ids
from lumbar.scoring.baselines import uniform_submission
from lumbar.scoring.submission import SubmissionError, validate_submission, write_submission


@pytest.fixture
def sub() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    out = uniform_submission([7, 8])
    out[list(GRADES)] = rng.dirichlet([1, 1, 1], len(out))
    return out


def test_valid_submission_passes(sub):
    validate_submission(sub, expected_row_ids=submission_row_ids([7, 8]))


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda s: s.drop(columns="severe"), r"wrong columns \(missing \['severe'\]"),
        (lambda s: s.assign(extra=0.0), r"wrong columns .*unexpected \['extra'\]"),
        (lambda s: s.rename(columns={"moderate": "Moderate"}), "wrong columns"),
        (lambda s: s.iloc[:0], "no rows"),
    ],
)
def test_column_and_empty_errors(sub, change, match):
    with pytest.raises(SubmissionError, match=match):
        validate_submission(change(sub), name="sub.csv")


def test_duplicate_row_ids_named(sub):
    bad = pd.concat([sub, sub.iloc[[4]]], ignore_index=True)
    with pytest.raises(SubmissionError, match=f"duplicate row_id.*{sub['row_id'].iloc[4]} \\(row 4\\)"):
        validate_submission(bad)


def test_missing_and_extra_row_ids_named(sub):
    expected = submission_row_ids([7, 8])
    with pytest.raises(SubmissionError, match=f"1 expected row_id\\(s\\) missing: {expected[3]}$"):
        validate_submission(sub[sub["row_id"] != expected[3]], expected_row_ids=expected)
    extra = pd.concat([sub, sub.iloc[[0]].assign(row_id="9_spinal_canal_stenosis_l1_l2")], ignore_index=True)
    with pytest.raises(SubmissionError, match="1 unexpected row_id.*9_spinal_canal_stenosis_l1_l2 \\(row 50\\)"):
        validate_submission(extra, expected_row_ids=expected)


@pytest.mark.parametrize(
    "value, match",
    [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"), (-0.1, "negative"), ("abc", "non-numeric")],
)
def test_bad_values_named(sub, value, match):
    bad = sub.astype({"moderate": object}) if isinstance(value, str) else sub.copy()
    bad.loc[[5, 9], "moderate"] = value
    with pytest.raises(SubmissionError, match=f"{match}.*{sub['row_id'].iloc[5]} \\(row 5\\), {sub['row_id'].iloc[9]}"):
        validate_submission(bad)


def test_rows_must_sum_to_one(sub):
    ok = sub.copy()
    ok.loc[2, "severe"] += 5e-7
    validate_submission(ok)
    bad = sub.copy()
    bad.loc[2, "severe"] += 1e-4
    with pytest.raises(SubmissionError, match=f"not summing to 1.*{sub['row_id'].iloc[2]} \\(row 2\\) sum=1.0001"):
        validate_submission(bad)


def test_error_names_first_five_and_count(sub):
    bad = sub.assign(severe=sub["severe"] * 2)
    with pytest.raises(SubmissionError, match=r"\.\.\. \(50 in all\)"):
        validate_submission(bad)


def test_write_submission_in_given_order(sub, tmp_path):
    order = list(reversed(submission_row_ids([7, 8])))
    path = write_submission(sub.sample(frac=1, random_state=0), tmp_path / "out" / "submission.csv", order=order)
    back = load_submission(path)
    assert back["row_id"].tolist() == order
    assert [p.name for p in path.parent.iterdir()] == ["submission.csv"]  # no temp file left
    merged = back.merge(sub, on="row_id", suffixes=("", "_in"))
    np.testing.assert_allclose(merged[list(GRADES)].to_numpy(), merged[[f"{g}_in" for g in GRADES]].to_numpy())
    with pytest.raises(SubmissionError, match="missing"):
        write_submission(sub.iloc[1:], tmp_path / "bad.csv", order=order)
    assert not (tmp_path / "bad.csv").exists()
