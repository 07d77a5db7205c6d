"""A whole tiny run (crops, localizer, two classifiers, ensemble), then `predict` and the Kaggle bundle on it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _readonly import readonly_argv, require_mount_namespace
from _runs import ARCHS, copy_test_split, copy_train_split, drop_series

from lumbar.cli import main
from lumbar.core.constants import GRADES
from lumbar.core.fallback import FallbackLimitError
from lumbar.core.manifest import read_manifest
from lumbar.core.tables import load_coordinates, load_labels, load_submission, submission_row_ids
from lumbar.inference.predict import PredictOptions, predict
from lumbar.scoring.baselines import uniform_submission
from lumbar.scoring.metric import competition_score

pytestmark = pytest.mark.slow


def _on_cpu(**options) -> PredictOptions:
    """`predict`'s options for a test: on the CPU, no progress bars, and `options`."""
    return PredictOptions(device="cpu", progress=False, **options)


def test_predict_writes_a_valid_scored_submission(tiny_run, synthetic_dir, tmp_path):
    out = tmp_path / "submission.csv"
    _, report = predict(synthetic_dir, "test", tiny_run, out, _on_cpu(work_dir=tmp_path / "work"))
    sample = load_submission(synthetic_dir / "sample_submission.csv")
    written = load_submission(out)
    assert list(written["row_id"]) == list(sample["row_id"])  # sample_submission order
    np.testing.assert_allclose(written[list(GRADES)].sum(axis=1), 1, atol=1e-6)
    assert set(report.seconds) == {"index", "localize", "crop", "classify", "blend"}
    assert not report.fallback_rows  # every row from the models, none from the prior
    labels = load_labels(synthetic_dir / "test_labels.csv")
    score = competition_score(labels, written).score
    uniform = competition_score(labels, uniform_submission(labels["study_id"].unique())).score
    # One epoch on three studies teaches the members little: their probabilities stay within 0.04 of 1/3 and
    # the score (0.905) is just below uniform's (0.925). The prior fitted on the three training studies (0.639)
    # and the oracle (0.586) are out of this run's reach, so the bar is uniform, with 0.01 to spare: the
    # predictions with Normal/Mild and Severe swapped score 0.955.
    assert np.isfinite(score) and score < uniform + 0.01, (score, uniform)
    assert not (tmp_path / "work" / "crops").exists()  # each chunk's crops are deleted


def test_predict_with_test_files_only_and_a_missing_series(tiny_run, synthetic_dir, tmp_path, capsys):
    data = copy_test_split(synthetic_dir, tmp_path / "data")
    study = min((data / "test_images").iterdir())
    series = pd.read_csv(data / "test_series_descriptions.csv")
    axial = series[(series["study_id"] == int(study.name)) & (series["series_description"] == "Axial T2")]
    for sid in axial["series_id"]:
        shutil.rmtree(study / str(sid), ignore_errors=True)
    out = tmp_path / "sub.csv"
    rc = main(["predict", "--data-dir", str(data), "--split", "test", "--run", str(tiny_run), "--out", str(out),
               "--device", "cpu", "--work-dir", str(tmp_path / "w")])  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 0
    sub = load_submission(out)
    studies = sorted(series["study_id"].unique())
    assert sorted(sub["row_id"]) == submission_row_ids(studies)
    assert f"study {study.name}: 10 rows" in printed  # the subarticular rows fall back to the prior, named
    assert main(["validate-submission", str(out), "--data-dir", str(data), "--split", "test"]) == 0


def test_predict_on_read_only_data_and_run_folders(tiny_run, synthetic_dir, tmp_path):
    require_mount_namespace()
    data, run = tmp_path / "data", tmp_path / "run"
    copy_test_split(synthetic_dir, data)
    shutil.copytree(tiny_run, run)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    out = tmp_path / "out" / "submission.csv"
    argv = [sys.executable, "-m", "lumbar", "predict", "--data-dir", str(data), "--split", "test", "--run", str(run),
            "--out", str(out), "--device", "cpu"]  # fmt: skip
    done = subprocess.run(readonly_argv(argv, [data, run]), capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["validate-submission", str(out), "--data-dir", str(data), "--split", "test"]) == 0
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert sorted(set(after) - set(before)) == [Path("out"), Path("out/submission.csv"), Path("out/submission.json")]


def test_a_programming_error_in_the_crop_code_fails_the_run(tiny_run, synthetic_dir, tmp_path, monkeypatch):
    from lumbar.preprocess import roi

    def broken(*args, **kwargs):
        raise TypeError("injected fault")

    monkeypatch.setattr(roi, "render_sample", broken)
    with pytest.raises(TypeError, match="injected fault"):
        predict(synthetic_dir, "test", tiny_run, tmp_path / "sub.csv", _on_cpu())
    assert not (tmp_path / "sub.csv").exists()


def test_more_fallback_studies_than_the_limit_fail_naming_them(tiny_run, synthetic_dir, tmp_path):
    data = copy_train_split(synthetic_dir, tmp_path / "data")
    studies = sorted(int(p.name) for p in (data / "train_images").iterdir())
    for study in studies[:2]:
        drop_series(data, "train", study, "Sagittal T2/STIR")
    with pytest.raises(FallbackLimitError, match=r"2 of 3 studies fell back, more than the 1 allowed") as info:
        predict(data, "train", tiny_run, tmp_path / "sub.csv", _on_cpu())
    for study in studies[:2]:
        assert f"{study}: no Sagittal T2/STIR series" in str(info.value)
    assert not (tmp_path / "sub.csv").exists()
    sub, report = predict(data, "train", tiny_run, tmp_path / "sub.csv", _on_cpu(max_fallback_share=1.0))
    assert sorted(report.fallback_rows) == studies[:2] and len(sub) == 75
    record = json.loads((tmp_path / "sub.json").read_text())
    # only the spinal targets fall back: the foramina and the learned offset still place the axial slices
    assert record["fallback_rows"] == 10 and set(record["fallback_studies"]) == {str(s) for s in studies[:2]}
    for study in studies[:2]:
        assert all("spinal_canal_stenosis" in row for row in report.fallback_rows[study])


def test_a_chunk_whose_crops_all_fail_gets_the_prior(tiny_run, synthetic_dir, tmp_path, monkeypatch):
    from lumbar.inference.predict import ensemble_members
    from lumbar.preprocess import roi
    from lumbar.scoring.baselines import prior_rows

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(roi, "save_atomic", disk_full)
    data = copy_train_split(synthetic_dir, tmp_path / "data")
    sub, report = predict(data, "train", tiny_run, tmp_path / "sub.csv",
                          _on_cpu(chunk_studies=2, max_fallback_share=1.0))
    studies = sorted(int(p.name) for p in (data / "train_images").iterdir())
    assert sorted(sub["row_id"]) == submission_row_ids(studies)
    assert sorted(report.fallback_rows) == studies and sum(map(len, report.fallback_rows.values())) == 75
    assert all("No space left on device" in report.why(s) for s in studies)
    _, _, prior = ensemble_members(tiny_run, read_manifest(tiny_run))
    expected = prior_rows(prior, list(sub["row_id"]))
    np.testing.assert_allclose(sub[list(GRADES)].to_numpy(), expected[list(GRADES)].to_numpy())


def test_fresh_eval_scores_a_new_synthetic_set_and_names_the_worst_studies(tiny_run, tmp_path):
    from lumbar.analysis.fresh import fresh_eval, result_line

    options = PredictOptions(device="cpu", workers=1, progress=False)
    result = fresh_eval(tiny_run, tmp_path, seed=5, test_studies=2, image_size=64, options=options)
    folder = tmp_path / "seed5_64px_stir0.25"
    assert {"submission.csv", "studies.csv", "targets.csv", "fresh_eval.json", "coordinates.csv"} <= {
        p.name for p in folder.iterdir()}  # fmt: skip
    assert result["test_studies"] == 2 and len(result["worst_studies"]) == 2
    assert result["oracle"] < result["prior"] and np.isfinite(result["test_score"])
    targets = pd.read_csv(folder / "targets.csv")
    assert result["target_max"] == targets["loss"].max()
    coords = load_coordinates(folder / "coordinates.csv")
    assert {"confidence", "plausible"} <= set(coords.columns) and coords["confidence"].between(0, 1).all()
    assert "study_max=" in result_line(result) and "localize" in result
    tails = result["tails"]  # the oracle's and the prior's tails on the same targets, beside the run's
    assert set(tails) == {"oracle", "prior", "oracle_excess_over_8", "prior_excess_over_8"}
    assert 0 <= tails["oracle_excess_over_8"] <= result["targets_over_8"]
    assert "oracle: targets_over_8=" in result_line(result)


def _two_member_run(tiny_run: Path, dst: Path, weights: list[float]) -> tuple[Path, list[str]]:
    """The tiny run (files linked) with an ensemble of both classifiers at the given blend weights."""
    from lumbar.ensemble.blend import EnsembleParams

    shutil.copytree(tiny_run, dst, copy_function=os.symlink)
    manifest = read_manifest(dst)
    names = list(manifest["classifiers"])
    params = dst / manifest["ensemble"]["params"]
    params.unlink()
    params.write_text(json.dumps(EnsembleParams(names, {"all": weights}).to_dict()))
    return dst, names


def test_predict_builds_every_model_once_however_many_chunks(tiny_run, synthetic_dir, tmp_path, monkeypatch):
    import lumbar.models

    data = copy_train_split(synthetic_dir, tmp_path / "data")
    run, _ = _two_member_run(tiny_run, tmp_path / "run", [0.5, 0.5])
    one_chunk, _ = predict(data, "train", run, options=_on_cpu(chunk_studies=3))
    builds = []
    real = lumbar.models.build_model
    monkeypatch.setattr(lumbar.models, "build_model", lambda **k: builds.append(k["name"]) or real(**k))
    per_study, report = predict(data, "train", run, options=_on_cpu(chunk_studies=1))
    assert sorted(builds) == sorted(a for a in ARCHS for _ in range(3 * 2))  # 3 units x 2 folds, not x 3 chunks
    assert report.ensemble["models"] == 12 and report.ensemble["model_mib"] > 0
    by_row = [t.sort_values("row_id").reset_index(drop=True) for t in (one_chunk, per_study)]
    pd.testing.assert_frame_equal(*by_row, check_exact=False, rtol=1e-6)


def test_predict_caps_folds_and_members(tiny_run, synthetic_dir, tmp_path, monkeypatch, capsys):
    import lumbar.train.predict as train_predict

    run, names = _two_member_run(tiny_run, tmp_path / "run", [0.25, 0.75])  # the second weighs more
    loaded = []
    real = train_predict.load_checkpoint
    monkeypatch.setattr(train_predict, "load_checkpoint", lambda p, **k: loaded.append(Path(p)) or real(p, **k))
    out = tmp_path / "sub.csv"
    rc = main(["predict", "--data-dir", str(synthetic_dir), "--split", "test", "--run", str(run), "--out", str(out),
               "--device", "cpu", "--max-folds", "1", "--max-members", "1"])  # fmt: skip
    assert rc == 0 and f"ensemble {names[1]} 1/2 folds; dropped {names[0]}" in capsys.readouterr().out
    assert len(loaded) == 3 and {p.parent.name for p in loaded} == {"fold0"}  # one fold of each unit
    assert all(p.relative_to(run).parts[0] == names[1] for p in loaded)
    assert json.loads(out.with_suffix(".json").read_text())["ensemble"]["models"] == 3


def _count_predictions(monkeypatch) -> list[tuple[str, int]]:
    """(member, fold models) of every `RunPredictor.predict` call from now on."""
    from lumbar.train.predict import RunPredictor

    calls = []
    real = RunPredictor.predict
    monkeypatch.setattr(RunPredictor, "predict",
                        lambda self, *a, **k: calls.append((self.run_dir.name, self.n_models)) or real(self, *a, **k))
    return calls


def test_a_time_budget_cuts_the_ensemble_after_the_first_chunk(tiny_run, synthetic_dir, tmp_path, monkeypatch):
    import lumbar.inference.predict as predict_module
    from lumbar.inference.budget import EnsemblePlan

    data = copy_train_split(synthetic_dir, tmp_path / "data")
    run, names = _two_member_run(tiny_run, tmp_path / "run", [0.25, 0.75])
    calls = _count_predictions(monkeypatch)
    planned = []

    def one_fold_of_the_heaviest(budget_s, elapsed_s, remaining, fixed_s, fold_s, start, params):
        planned.append((budget_s, remaining, sorted(fold_s)))
        return EnsemblePlan([names[1]], {names[1]: 1}, elapsed_s + 1.0, True)  # fits: 1 s left to spend

    monkeypatch.setattr(predict_module, "plan_to_budget", one_fold_of_the_heaviest)
    sub, report = predict(data, "train", run, options=_on_cpu(chunk_studies=1, time_budget_s=1e6))
    full = [(names[0], 6), (names[1], 6)]
    assert calls == [*full, (names[1], 3), (names[1], 3)]  # after the timed first study: 1 fold of the heaviest
    assert planned == [(1e6, 2, sorted(names))] and "time budget" in report.ensemble["plan"]
    assert len(sub) == 75 and not report.fallback_rows and not report.budget_stopped


def test_studies_the_budget_cannot_reach_get_prior_rows_and_are_counted(tiny_run, synthetic_dir, tmp_path, monkeypatch):
    from lumbar.inference.predict import ensemble_members
    from lumbar.scoring.baselines import prior_rows

    data = copy_train_split(synthetic_dir, tmp_path / "data")
    studies = sorted(int(p.name) for p in (data / "train_images").iterdir())
    run, names = _two_member_run(tiny_run, tmp_path / "run", [0.25, 0.75])
    calls = _count_predictions(monkeypatch)
    out = tmp_path / "sub.csv"
    sub, report = predict(data, "train", run, out,
                          _on_cpu(chunk_studies=1, time_budget_s=1e-3, max_fallback_share=1.0))
    assert calls == [(names[0], 6), (names[1], 6)]  # the first study only: the budget is spent
    assert report.budget_stopped == studies[1:] and sorted(report.fallback_rows) == studies[1:]
    assert sorted(sub["row_id"]) == submission_row_ids(studies)
    later = sub[sub["row_id"].str.split("_").str[0].astype(int).isin(studies[1:])].reset_index(drop=True)
    _, _, prior = ensemble_members(run, read_manifest(run))
    np.testing.assert_allclose(later[list(GRADES)], prior_rows(prior, list(later["row_id"]))[list(GRADES)])
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["budget_stopped_studies"] == 2 and record["fallback_rows"] == 50
    assert "time budget of 0.001 s would run out" in record["fallback_studies"][str(studies[1])]["why"]
    calls.clear()
    predict(data, "train", run, options=_on_cpu(chunk_studies=1, time_budget_s=1e6))
    assert calls == [(names[0], 6), (names[1], 6)] * 3  # a budget that fits changes nothing


def test_on_error_prior_survives_a_programming_error_in_a_chunk(tiny_run, synthetic_dir, tmp_path, monkeypatch):
    from lumbar.preprocess import roi

    data = copy_train_split(synthetic_dir, tmp_path / "data")
    studies = sorted(int(p.name) for p in (data / "train_images").iterdir())
    real, faults = roi.render_sample, [1]

    def broken_once(*args, **kwargs):  # the first crop of a run: the first study's chunk
        if faults[0]:
            faults[0] -= 1
            raise TypeError("injected fault")
        return real(*args, **kwargs)

    monkeypatch.setattr(roi, "render_sample", broken_once)
    with pytest.raises(TypeError, match="injected fault"):  # by default a programming error stops the run
        predict(data, "train", tiny_run, options=_on_cpu(chunk_studies=1, max_fallback_share=1.0))
    faults[0] = 1
    sub, report = predict(data, "train", tiny_run,
                          options=_on_cpu(chunk_studies=1, max_fallback_share=1.0, on_error="prior"))
    assert sorted(sub["row_id"]) == submission_row_ids(studies)
    assert sorted(report.fallback_rows) == [studies[0]] and len(report.fallback_rows[studies[0]]) == 25
    assert "chunk failed (TypeError: injected fault)" in report.why(studies[0])


def test_on_error_prior_writes_the_prior_when_no_model_loads(tiny_run, synthetic_dir, tmp_path, monkeypatch):
    from lumbar.train.predict import RunPredictor

    def broken(self, *args, **kwargs):
        raise RuntimeError("state dict does not match")

    monkeypatch.setattr(RunPredictor, "__init__", broken)
    sub, report = predict(synthetic_dir, "test", tiny_run,
                          options=_on_cpu(max_fallback_share=1.0, on_error="prior"))
    assert len(sub) == 25 and sum(map(len, report.fallback_rows.values())) == 25
    assert all("no prediction (RuntimeError: state dict does not match)" in report.why(s) for s in report.studies)
