"""The training loop end to end on a tiny cache: OOF format, determinism, kill-and-resume, reports, inference."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from _train_data import engine_config

from lumbar.cli import main
from lumbar.core.checkpoint import load_checkpoint
from lumbar.core.constants import GRADES
from lumbar.core.tables import split_row_ids
from lumbar.train.loop import train
from lumbar.train.predict import predict_cache

pytestmark = pytest.mark.usefixtures("tiny_model")


def _config(tiny, out, **overrides):
    return engine_config(tiny, out, **overrides)


class Kill(Exception):
    pass


class KillAfterFirstEpoch:
    def log_epoch(self, unit, fold, row):
        if row["epoch"] == 1:
            raise Kill

    def log_result(self, result):
        pass


def test_competition_oof_in_submission_format(tiny, tmp_path):
    result = train(_config(tiny, tmp_path / "exp" / "tiny", ema_decay=0.9))
    oof = pd.read_csv(result.oof_path)
    assert list(oof.columns) == ["row_id", *GRADES]
    assert np.allclose(oof[list(GRADES)].sum(axis=1), 1.0) and oof["row_id"].is_unique
    folds = pd.read_csv(tmp_path / "exp" / "folds.csv")
    held_out = folds.loc[folds["fold"] == 0, "study_id"]
    assert len(oof) == 25 * len(held_out)  # every held-out study gets its 25 rows
    assert result.summary["fallback_rows"] == 20 * len(held_out)  # only spinal was trained
    assert np.isfinite(result.oof_score["spinal"]) and result.oof_score["n_studies"] == len(held_out)
    run = tmp_path / "exp" / "tiny"
    history = pd.read_csv(run / "spinal" / "fold0" / "history.csv")
    assert list(history["epoch"]) == [1, 2] and (run / "spinal" / "fold0" / "curves.png").stat().st_size > 0
    final = load_checkpoint(run / "spinal" / "fold0" / "final.pt")  # weights_only=True; select=last by default
    assert all(isinstance(v, torch.Tensor) for v in final.values())
    assert not (run / "spinal" / "fold0" / "best.pt").exists()
    manifest = json.loads((tmp_path / "exp" / "manifest.json").read_text())
    entry = manifest["classifiers"]["tiny"]
    assert entry["checkpoints"] == {"spinal": {"0": "tiny/spinal/fold0/final.pt"}}
    assert "oof_gt" not in entry and result.oof_gt_path is None  # one cache: no ground-truth comparison
    assert entry["oof_score"] == pytest.approx(result.oof_score["score"], nan_ok=True)
    assert json.loads((run / "config.json").read_text())["ema_decay"] == 0.9


def test_same_seed_same_oof_on_cpu(tiny, tmp_path):
    a = train(_config(tiny, tmp_path / "a" / "run"))
    b = train(_config(tiny, tmp_path / "b" / "run"))
    pd.testing.assert_frame_equal(pd.read_csv(a.oof_path), pd.read_csv(b.oof_path), check_exact=True)
    c = train(_config(tiny, tmp_path / "c" / "run", seed=7, folds_csv=str(tmp_path / "a" / "folds.csv")))
    assert not pd.read_csv(a.oof_path).equals(pd.read_csv(c.oof_path))


def test_kill_and_resume_matches_an_uninterrupted_run(tiny, tmp_path):
    whole = train(_config(tiny, tmp_path / "whole" / "run", keep_last=True))
    with pytest.raises(Kill):
        train(_config(tiny, tmp_path / "killed" / "run", keep_last=True), logger=KillAfterFirstEpoch())
    last = tmp_path / "killed" / "run" / "spinal" / "fold0" / "last.pt"
    assert load_checkpoint(last)["epoch"] == 1
    resumed = train(_config(tiny, tmp_path / "killed" / "run", keep_last=True))
    final_a = load_checkpoint(whole.run_dir / "spinal" / "fold0" / "last.pt")
    final_b = load_checkpoint(last)
    assert final_b["epoch"] == 2 and len(final_b["history"]) == 2
    for key, value in final_a["model"].items():
        assert torch.equal(value, final_b["model"][key]), key
    weights_a, weights_b = (load_checkpoint(r / "spinal" / "fold0" / "final.pt") for r in (whole.run_dir, last.parents[2]))
    assert all(torch.equal(v, weights_b[k]) for k, v in weights_a.items())  # what predict loads (select=last)
    pd.testing.assert_frame_equal(pd.read_csv(whole.oof_path), pd.read_csv(resumed.oof_path), check_exact=True)


@pytest.mark.parametrize("mode", ["multi_multiclass", "single_binary"])
def test_thesis_modes_write_reports_and_confusion_matrices(tiny, tmp_path, mode):
    conditions = "scs,lnfn,rnfn" if mode.startswith("multi") else "lnfn"
    result = train(_config(tiny, tmp_path / "exp" / mode, mode=mode, conditions=conditions, epochs=1))
    reports = result.run_dir / "reports"
    summary = pd.read_csv(reports / "summary.csv")
    assert {"accuracy", "balanced_accuracy", "f1_macro", "auroc"} <= set(summary.columns)
    assert (reports / "confusion_left_neural_foraminal_narrowing.png").is_file()
    predictions = pd.read_csv(result.predictions_path)
    assert set(predictions["condition"]) == set(result.summary["conditions"])
    if mode.endswith("binary"):  # p(Moderate or Severe) travels in `moderate`
        assert (predictions["severe"] == 0).all()
        assert set(pd.read_csv(reports / "per_class.csv")["class"]) == {"normal_mild", "moderate_severe"}
    else:
        assert (reports / "confusion_all.png").is_file()


@pytest.mark.parametrize("select, checkpoint", [("last", "final.pt"), ("best", "best.pt")])
def test_predict_cache_reproduces_the_held_out_predictions(tiny, tmp_path, select, checkpoint):
    result = train(_config(tiny, tmp_path / "exp" / "run", epochs=2, select=select))
    assert result.summary["units"]["spinal"]["checkpoints"] == {"0": f"spinal/fold0/{checkpoint}"}
    sub = predict_cache(result.run_dir, tiny[1], device="cpu")
    assert len(sub) == 25 * 8 and np.allclose(sub[list(GRADES)].sum(axis=1), 1.0)
    assert sub.attrs["fallback_rows"] == 20 * 8
    oof = pd.read_csv(result.oof_path)
    spinal = oof[split_row_ids(oof["row_id"])["condition"].eq("spinal_canal_stenosis").to_numpy()]
    merged = spinal.merge(sub, on="row_id", suffixes=("_oof", "_pred"))
    assert len(merged) == len(spinal)
    for g in GRADES:
        assert np.allclose(merged[f"{g}_oof"], merged[f"{g}_pred"], atol=1e-6)


def test_fast_dev_run_and_overfit_switches(tiny, tmp_path):
    fast = train(_config(tiny, tmp_path / "fast" / "run", fast_dev_run=1, epochs=5))
    history = pd.read_csv(fast.run_dir / "spinal" / "fold0" / "history.csv")
    assert list(history["epoch"]) == [1] and history["batches"].iloc[0] == 1
    over = train(_config(tiny, tmp_path / "over" / "run", overfit_batches=1, epochs=25, lr=5e-2,
                         class_weights="1,1,1"))
    losses = pd.read_csv(over.run_dir / "spinal" / "fold0" / "history.csv")["val_loss"]  # same batch, no dropout
    assert losses.iloc[-1] < 0.7 * losses.iloc[0]


def test_cli_train_and_config_errors(tiny, tmp_path, capsys):
    data_dir, cache_dir = tiny
    args = ["train", "--data-dir", str(data_dir), "--cache", str(cache_dir), "--arch", "tiny", "--mode",
            "single_multiclass", "--condition", "scs", "--folds", "1", "--epochs", "1",
            "--out", str(tmp_path / "exp" / "cli"), "--set", "n_folds=2", "--set", "progress=false"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "[scs fold 1] epoch 1" in out
    assert (tmp_path / "exp" / "cli" / "reports" / "summary.csv").is_file()
    assert main([*args, "--set", "learning_rate=1"]) == 2
    assert "unknown setting 'learning_rate'" in capsys.readouterr().err
    assert main([*args, "--mode", "triple"]) == 2


def _predict_as_before(run_dir, cache_dir):
    """The inference of main before models were kept: build and load every fold's model for this one cache."""
    from lumbar.core.runtime import setup_runtime, teardown_runtime
    from lumbar.models import build_model
    from lumbar.train.dataset import RoiDataset, read_cache
    from lumbar.train.predict import eval_loader, predict_probs, read_run, to_submission
    from lumbar.train.tasks import build_tasks

    config, result = read_run(run_dir)
    cache, runtime, tables = read_cache(cache_dir), setup_runtime("cpu", amp=False, channels_last=False), []
    for task in build_tasks(config.mode, config.conditions, config.mirror_right):
        items = task.items(cache.samples)
        loader = eval_loader(RoiDataset(cache, task, items), config.batch_size, 0, runtime)
        total = np.zeros((len(items), task.num_targets, task.num_classes))
        for path in result["units"][task.name]["checkpoints"].values():
            model = build_model(**result["model"], in_channels=task.in_channels, num_outputs=task.num_outputs,
                                num_meta=task.num_meta)
            model.load_state_dict(load_checkpoint(run_dir / path))
            idx, probs, _ = predict_probs(model, loader, runtime, task.num_targets, task.num_classes)
            total[idx] += probs
        tables.append(task.prediction_rows(items, total / len(result["units"][task.name]["checkpoints"])))
    teardown_runtime(runtime)
    return to_submission(pd.concat(tables), cache.samples["study_id"].unique(), pd.DataFrame(result["prior"]))[0]


def test_run_predictor_builds_each_model_once_and_predicts_as_before(tiny, tmp_path, monkeypatch):
    import lumbar.models
    from lumbar.train.predict import RunPredictor

    result = train(_config(tiny, tmp_path / "exp" / "run", folds="0,1"))
    halves = []  # two caches ("chunks") of 4 studies each
    samples = pd.read_parquet(tiny[1] / "samples.parquet")
    for i, studies in enumerate(np.array_split(sorted(samples["study_id"].unique()), 2)):
        part = tmp_path / f"chunk{i}"
        part.mkdir()
        samples[samples["study_id"].isin(studies)].to_parquet(part / "samples.parquet")
        (part / "params.json").write_text((tiny[1] / "params.json").read_text())
        for study in studies:
            (part / str(study)).symlink_to(tiny[1] / str(study))
        halves.append(part)
    before = [_predict_as_before(result.run_dir, part) for part in halves]
    builds = []
    real = lumbar.models.build_model
    monkeypatch.setattr(lumbar.models, "build_model", lambda *a, **k: builds.append(a) or real(*a, **k))
    with RunPredictor(result.run_dir, device="cpu") as predictor:
        after = [predictor.predict(part) for part in halves]
        assert predictor.n_models == 2 and predictor.parameter_bytes > 0
    assert len(builds) == 2  # one per fold, not per fold and chunk
    for a, b in zip(before, after):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    with RunPredictor(result.run_dir, device="cpu", max_folds=1) as first_fold:
        assert first_fold.n_models == 1
