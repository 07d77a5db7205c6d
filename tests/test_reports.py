import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)

from lumbar.core.constants import GRADES
from lumbar.scoring.references import compare_with_references, load_references
from lumbar.scoring.reports import write_reports
from lumbar.scoring.thesis import TASK_MODES, evaluate_predictions

SCS, LNFN, NFN = "spinal_canal_stenosis", "left_neural_foraminal_narrowing", "neural_foraminal_narrowing"


@pytest.fixture
def table() -> pd.DataFrame:
    """40 studies x 2 conditions x 2 levels, every grade present in each slice, noisy but informative probs."""
    rng = np.random.default_rng(0)
    rows = [(s, c, lv) for s in range(40) for c in (SCS, LNFN) for lv in ("l4_l5", "l5_s1")]
    out = pd.DataFrame(rows, columns=["study_id", "condition", "level"])
    out["grade"] = np.tile(np.repeat([0, 0, 1, 2], 4), 10)
    logits = rng.normal(size=(len(out), 3)) + 1.5 * np.eye(3)[out["grade"]]
    out[list(GRADES)] = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return out


def test_multiclass_numbers_match_sklearn(table):
    report = evaluate_predictions(table, "single_multiclass")
    assert set(report.summary["scope"]) == {"condition", "condition_level"}
    rows = table[(table["condition"] == SCS) & (table["level"] == "l4_l5")]
    y, p = rows["grade"].to_numpy(), rows[list(GRADES)].to_numpy()
    pred = p.argmax(axis=1)
    got = report.summary.set_index(["condition", "level"]).loc[(SCS, "l4_l5")]
    assert got["n"] == len(rows) == 40
    assert got["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert got["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert got["f1_weighted"] == pytest.approx(f1_score(y, pred, average="weighted"))
    assert got["auroc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr"))
    ref = classification_report(y, pred, output_dict=True)
    per_class = report.per_class.set_index(["condition", "level", "class"])
    for k, key in enumerate(GRADES):
        assert per_class.loc[(SCS, "l4_l5", key), "recall"] == pytest.approx(ref[str(k)]["recall"])
        assert per_class.loc[(SCS, "l4_l5", key), "precision"] == pytest.approx(ref[str(k)]["precision"])
        assert per_class.loc[(SCS, "l4_l5", key), "support"] == ref[str(k)]["support"]
    np.testing.assert_array_equal(report.confusion_matrix("condition_level", SCS, "l4_l5"), confusion_matrix(y, pred))


def test_binary_mode_collapses_grades(table):
    report = evaluate_predictions(table, "multi_binary")
    assert {"all", "level", "condition", "condition_level"} == set(report.summary["scope"])
    y = (table["grade"] >= 1).to_numpy().astype(int)
    p_pos = (table["moderate"] + table["severe"]).to_numpy()
    pred = (p_pos > 0.5).astype(int)
    pooled = report.summary.iloc[0]
    assert pooled["scope"] == "all" and pooled["n"] == len(table)
    assert pooled["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert pooled["auroc"] == pytest.approx(roc_auc_score(y, p_pos))
    assert pooled["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    np.testing.assert_array_equal(report.confusion_matrix("all"), confusion_matrix(y, pred))


def test_slice_without_a_class_still_reports(table):
    no_severe = table[table["grade"] < 2]
    summary = evaluate_predictions(no_severe, "single_multiclass").summary
    assert np.isfinite(summary["auroc"]).all()  # macro over the classes present
    assert (summary["n"] > 0).all()


def test_write_reports_files(table, tmp_path):
    paths = write_reports(table, tmp_path / "reports", "multi_multiclass")
    for key in ("summary", "per_class", "confusion", "report", "references", "confusion_all", f"confusion_{SCS}"):
        assert paths[key].is_file(), key
    image = imread(paths[f"confusion_{SCS}"])
    assert image.ndim == 3 and image.shape[1] > image.shape[0] > 100
    summary = pd.read_csv(paths["summary"])
    report = evaluate_predictions(table, "multi_multiclass")
    np.testing.assert_allclose(summary["accuracy"], report.summary["accuracy"])
    document = json.loads(paths["report"].read_text())
    assert document["mode"] == "multi_multiclass" and len(document["per_class"]) == len(report.per_class)
    with pytest.raises(ValueError, match="unknown task mode"):
        write_reports(table, tmp_path / "x", "single_ternary")


def test_references_hold_the_published_numbers():
    refs = load_references()
    key = ["source", "model", "task_mode", "classes", "condition", "level", "metric"]
    assert not refs.duplicated(key).any()
    figures = refs.set_index(key)["value"]
    lstm, r18 = "3D CNN + LSTM + Attention", "ResNet-18"
    assert figures[("thesis", lstm, "single_multiclass", "multiclass", SCS, "l4_l5", "accuracy")] == 0.8737
    assert figures[("thesis", lstm, "single_binary", "binary", SCS, "l4_l5", "f1_macro")] == 0.92
    assert figures[("thesis", r18, "multi_binary", "binary", "right_neural_foraminal_narrowing", "l4_l5",
                    "class_average_accuracy")] == 0.77
    r12 = ("thesis", "Custom ResNet-12", "multi_multiclass", "multiclass", LNFN, "l4_l5", "accuracy")
    assert figures[r12] == 0.6878
    deepspine = refs[(refs["source"] == "DeepSPINE") & (refs["level"] == "l5_s1")]
    assert deepspine.set_index("condition")["value"].to_dict() == {SCS: 0.991, NFN: 0.912}
    # every thesis model, mode and condition carries the four metrics its classification report prints
    thesis = refs[(refs["source"] == "thesis") & ~refs["setting"].str.contains("96x96x5")]
    assert (thesis.groupby(["model", "task_mode", "condition"])["metric"].nunique() == 4).all()
    assert len(thesis) == 60 and set(refs["task_mode"]) == {"", *TASK_MODES}
    assert refs["citation"].str.contains("Skwierczyński").all()


def test_references_refuse_a_figure_without_its_origin(tmp_path):
    rows = load_references().head(2)
    path = tmp_path / "refs.csv"
    rows.assign(where=["slide 'x'", " "]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"refs\.csv, line 3: where is empty"):
        load_references(path)
    rows.assign(task_mode="single_ternary").to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"line 2: task_mode must be one of"):
        load_references(path)
    rows.drop(columns="citation").to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['citation'\]"):
        load_references(path)


def test_comparison_sets_run_beside_reference(table):
    out = compare_with_references(table)
    rows = table[(table["condition"] == SCS) & (table["level"] == "l4_l5")]
    y, pred = rows["grade"], rows[list(GRADES)].to_numpy().argmax(axis=1)
    thesis = out[(out["task_mode"] == "single_multiclass") & (out["condition"] == SCS)].set_index("metric")
    acc = accuracy_score(y, pred)
    assert thesis.loc["accuracy", "run"] == pytest.approx(acc)
    assert thesis.loc["accuracy", "difference"] == pytest.approx(acc - 0.8737)
    assert thesis.loc["class_average_accuracy", "run"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert thesis.loc["f1_macro", "run"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert thesis.loc["f1_weighted", "run"] == pytest.approx(f1_score(y, pred, average="weighted"))
    assert thesis["where"].str.startswith("slide 'Single Multiclass - SCS'").all()
    binary = out[(out["task_mode"] == "single_binary") & (out["condition"] == SCS)].set_index("metric")
    collapsed = rows[["moderate", "severe"]].sum(axis=1).to_numpy() > rows["normal_mild"].to_numpy()
    assert binary.loc["accuracy", "run"] == pytest.approx(accuracy_score(y >= 1, collapsed))
    foramina = out[(out["condition"] == NFN) & (out["level"] == "all")].iloc[0]
    assert foramina["run_n"] == 80  # left only here (right absent), all levels
    assert out[out["condition"] == "right_neural_foraminal_narrowing"]["run"].isna().all()
    assert set(compare_with_references(table, classes="binary")["classes"]) == {"binary"}
