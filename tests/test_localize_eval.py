import re

import numpy as np
import pandas as pd
import pytest

from lumbar.cli import main
from lumbar.core.tables import write_coordinates
from lumbar.data.index import INDEX_COLUMNS
from lumbar.localize.evaluate import condition_lines, localization_errors, summarize, summary_line

STUDY, SAG, OTHER = 1, 10, 11
SPACING, GAP = 0.5, 4.0  # mm per pixel, mm between sagittal slices


def _sagittal_index(series_id: int, n: int = 5) -> pd.DataFrame:
    """A sagittal stack: slice k at x = k * GAP mm, rows along -z (feet), columns along +y (posterior)."""
    rows = []
    for k in range(n):
        rows.append({
            "study_id": STUDY, "series_id": series_id, "series_description": "Sagittal T2/STIR",
            "instance_number": k + 1, "stack_index": 0, "slice_index": k, "slice_position": k * GAP,
            "ipp_x": k * GAP, "ipp_y": 0.0, "ipp_z": 0.0,
            "iop_0": 0.0, "iop_1": 1.0, "iop_2": 0.0, "iop_3": 0.0, "iop_4": 0.0, "iop_5": -1.0,
            "pixel_spacing_row": SPACING, "pixel_spacing_col": SPACING, "rows": 200, "columns": 200,
            "path": f"{series_id}/{k + 1}.dcm",
        })  # fmt: skip
    return pd.DataFrame(rows)[INDEX_COLUMNS]


def _coords(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["study_id", "series_id", "instance_number", "condition", "level", "x", "y"])


@pytest.fixture
def case():
    index = pd.concat([_sagittal_index(SAG), _sagittal_index(OTHER)], ignore_index=True)
    c = "spinal_canal_stenosis"
    truth = _coords([
        (STUDY, SAG, 3, c, "l1_l2", 100.0, 100.0),
        (STUDY, SAG, 3, c, "l2_l3", 100.0, 120.0),
        (STUDY, SAG, 3, c, "l3_l4", 100.0, 140.0),
        (STUDY, SAG, 3, c, "l4_l5", 100.0, 160.0),
        (STUDY, SAG, 3, c, "l5_s1", 100.0, 180.0),
        (STUDY, SAG, 3, "left_neural_foraminal_narrowing", "l1_l2", 50.0, 50.0),
        (99, SAG, 3, c, "l1_l2", 1.0, 1.0),  # a study without images here: not evaluated
    ])  # fmt: skip
    pred = _coords([
        (STUDY, SAG, 3, c, "l1_l2", 106.0, 100.0),  # 6 px = 3 mm off, same slice
        (STUDY, SAG, 3, c, "l2_l3", 100.0, 134.0),  # 14 px = 7 mm off, same slice
        (STUDY, SAG, 4, c, "l3_l4", 100.0, 140.0),  # exact in-plane, one slice off
        (STUDY, SAG, 1, c, "l4_l5", 100.0, 160.0),  # two slices off
        (STUDY, OTHER, 3, c, "l5_s1", 100.0, 180.0),  # right place, another series: no slice match
        # left foramen l1_l2 missing
    ])  # fmt: skip
    return pred, truth, index


def test_errors_per_point(case):
    pred, truth, index = case
    err = localization_errors(pred, truth, index).set_index(["condition", "level"])
    assert len(err) == 6  # study 99 has no images here
    spinal = err.loc["spinal_canal_stenosis"]
    np.testing.assert_allclose(spinal["error_mm"].to_numpy(), [3.0, 7.0, 0.0, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(spinal.loc["l3_l4", "error_3d_mm"], GAP, atol=1e-9)
    np.testing.assert_allclose(spinal.loc["l1_l2", "error_3d_mm"], 3.0, atol=1e-9)
    assert list(spinal["slice_error"].iloc[:4]) == [0, 0, 1, 2] and np.isnan(spinal.loc["l5_s1", "slice_error"])
    assert err.loc[("left_neural_foraminal_narrowing", "l1_l2"), "missing"]
    assert not spinal["missing"].any()


def test_summary_fractions_and_line(case):
    pred, truth, index = case
    table = summarize(localization_errors(pred, truth, index))
    spinal, total = table.loc["spinal_canal_stenosis"], table.loc["all"]
    assert spinal["within5mm"] == pytest.approx(4 / 5)  # the 7 mm point is out
    assert spinal["within10mm"] == pytest.approx(1.0)
    assert spinal["slice_exact"] == pytest.approx(2 / 5) and spinal["slice_pm1"] == pytest.approx(3 / 5)
    assert total["missing"] == 1 and total["points"] == 6
    assert total["within5mm"] == pytest.approx(4 / 6)  # the missing point counts as a miss
    assert total["median_mm"] == pytest.approx(0.0)
    assert list(table.index) == ["spinal_canal_stenosis", "left_neural_foraminal_narrowing", "all"]
    line = summary_line(table)
    assert re.fullmatch(
        r"localize: within5mm=0\.6667 within10mm=0\.8333 slice_exact=0\.3333 slice_pm1=0\.5000 "
        r"median_mm=0\.000 missing=1",
        line,
    )


def test_one_line_per_condition_with_its_own_accuracy(case):
    pred, truth, index = case
    lines = condition_lines(summarize(localization_errors(pred, truth, index)))
    assert lines == [
        ("localize: spinal_canal_stenosis: within5mm=0.8000 slice_exact=0.4000 slice_pm1=0.6000 "
        "median_mm=0.000 missing=0"),
        ("localize: left_neural_foraminal_narrowing: within5mm=0.0000 slice_exact=0.0000 slice_pm1=0.0000 "
        "median_mm=nan missing=1"),
    ]


def test_cli_prints_table_then_summary_last(case, tmp_path, capsys):
    pred, truth, index = case
    (tmp_path / "data").mkdir()
    index.to_parquet(tmp_path / "index.parquet")
    write_coordinates(pred, tmp_path / "pred.csv")
    write_coordinates(truth, tmp_path / "truth.csv")
    rc = main(["localize-eval", "--pred", str(tmp_path / "pred.csv"), "--truth", str(tmp_path / "truth.csv"),
               "--data-dir", str(tmp_path / "data"), "--index", str(tmp_path / "index.parquet")])  # fmt: skip
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    assert out[-1].startswith("localize: within5mm=0.6667 within10mm=0.8333 slice_exact=0.3333 slice_pm1=0.5000")
    assert any(line.startswith("spinal_canal_stenosis") for line in out[:-1])
