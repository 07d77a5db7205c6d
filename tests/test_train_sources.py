"""Train as you infer: training crops from the ground truth, the localizer's out-of-fold points or both;
validation and OOF on the oof crops; OOF on the ground-truth crops beside them; the final weights by default."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from _train_data import make_oof_cache, make_tiny_data, tiny_build_model

from lumbar.core.checkpoint import load_checkpoint
from lumbar.core.constants import GRADES, row_id
from lumbar.preprocess import write_localizer_errors
from lumbar.train.loop import train
from lumbar.train.predict import predict_cache
from lumbar.train.tasks import build_tasks, validation_score

SCS = "spinal_canal_stenosis"


@pytest.fixture(autouse=True)
def tiny_model(monkeypatch):
    import lumbar.models

    monkeypatch.setattr(lumbar.models, "build_model", tiny_build_model, raising=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Ground-truth and oof caches; the localizer found no L1/L2 point in the first four studies."""
    root = tmp_path_factory.mktemp("sources")
    data_dir, cache_dir = make_tiny_data(root, n_studies=8, conditions=(SCS,))
    dropped = tuple(row_id(1000 + 7 * i, SCS, "l1_l2") for i in range(4))
    oof_dir = make_oof_cache(cache_dir, root / "oof_cache", drop=dropped)
    errors = pd.DataFrame({"condition": SCS, "slice_error": [0, 1, -1], "dx_mm": [0.0, 3.0, -5.0],
                           "dy_mm": [1.0, 0.0, -2.0]})
    jitter = write_localizer_errors(errors, root / "errors.json")
    return data_dir, cache_dir, oof_dir, dropped, jitter


def _config(tiny, out, **overrides):
    data_dir, cache_dir, oof_dir, _, _ = tiny
    base = {"data_dir": str(data_dir), "cache": str(cache_dir), "oof_cache": str(oof_dir), "out": str(out),
            "mode": "competition", "conditions": "scs", "n_folds": 2, "folds": "0", "epochs": 2, "batch_size": 64,
            "lr": 3e-3, "warmup_epochs": 0.5, "progress": False, "threads": 1}
    return {**base, **overrides}


def _held_out_rows(table, studies):
    return table[table["row_id"].str.split("_").str[0].astype(int).isin(studies)].reset_index(drop=True)


def test_both_doubles_the_training_items_and_validates_on_oof_crops(tiny, tmp_path):
    _, cache_dir, oof_dir, dropped, jitter = tiny
    result = train(_config(tiny, tmp_path / "exp" / "run", train_crops="both", jitter=str(jitter),
                           record_samples=True))
    folds = pd.read_csv(tmp_path / "exp" / "folds.csv")
    held_out = folds.loc[folds["fold"] == 0, "study_id"].tolist()
    fold_dir = result.run_dir / "spinal" / "fold0"

    # training: every item of the training fold twice, once where its oof crop is missing
    seen = Counter(json.loads((fold_dir / "samples_seen.json").read_text())["1"]["0"])
    train_ids = [row_id(s, SCS, lv) for s in folds.loc[folds["fold"] != 0, "study_id"]
                 for lv in ("l1_l2", "l2_l3", "l3_l4", "l4_l5", "l5_s1")]
    assert sorted(seen) == sorted(train_ids)
    assert all(seen[i] == (1 if i in dropped else 2) for i in train_ids)
    assert any(i in dropped for i in train_ids)

    # validation: the last epoch's metric is that of the final weights on the oof crops (predictions.csv)
    predictions = pd.read_csv(result.predictions_path)
    history = pd.read_csv(fold_dir / "history.csv")
    assert history["val_metric"].iloc[-1] == pytest.approx(validation_score(build_tasks("competition", [SCS])[0],
                                                                            predictions), rel=1e-6)
    # oof.csv: the recorded final weights on the oof crops; a missing oof crop gets the fold's prior
    n_missing = sum(s in held_out for s in (int(d.split("_")[0]) for d in dropped))
    assert result.summary["fallback_rows"] == 20 * len(held_out) + n_missing
    assert result.summary["fallback_rows_gt"] == 20 * len(held_out)
    for path, cache in ((result.oof_path, oof_dir), (result.oof_gt_path, cache_dir)):
        crops = pd.read_parquet(cache / "samples.parquet")["sample_id"]  # rows with a crop (others: priors)
        direct = predict_cache(result.run_dir, cache, device="cpu")
        direct = _held_out_rows(direct[direct["row_id"].isin(crops)], held_out)
        written = pd.read_csv(path)
        written = written[written["row_id"].isin(direct["row_id"])].reset_index(drop=True)
        assert len(written) == len(direct) == 5 * len(held_out) - (n_missing if cache == oof_dir else 0)
        np.testing.assert_allclose(written[list(GRADES)], direct[list(GRADES)], atol=1e-6)

    # the two OOF scores side by side, in result.json and the manifest
    summary = json.loads((result.run_dir / "result.json").read_text())
    gt_spinal, oof_spinal = summary["oof_score_gt"]["spinal"], summary["oof_score"]["spinal"]
    assert np.isfinite(gt_spinal) and gt_spinal == pytest.approx(result.oof_score_gt["spinal"])
    assert gt_spinal != pytest.approx(oof_spinal)  # other crops, other predictions
    assert summary["train_crops"] == "both" and summary["jitter"] == str(jitter)
    entry = json.loads((tmp_path / "exp" / "manifest.json").read_text())["classifiers"]["run"]
    assert entry["oof_gt"] == "run/oof_gt.csv"
    assert entry["oof_score_gt"] == pytest.approx(result.oof_score_gt["score"], nan_ok=True)
    assert entry["checkpoints"] == {"spinal": {"0": "run/spinal/fold0/final.pt"}}


def test_oof_crops_alone_train_without_a_ground_truth_cache(tiny, tmp_path):
    _, _, oof_dir, dropped, _ = tiny
    result = train(_config(tiny, tmp_path / "exp" / "run", cache="", train_crops="oof", epochs=1,
                           record_samples=True))
    seen = json.loads((result.run_dir / "spinal" / "fold0" / "samples_seen.json").read_text())["1"]["0"]
    assert len(seen) == len(set(seen)) and not set(seen) & set(dropped)  # once each, only oof crops
    assert result.oof_gt_path is None and not (result.run_dir / "oof_gt.csv").exists()
    assert result.summary["cache_params"] == json.loads((oof_dir / "params.json").read_text())


def test_select_last_records_the_final_ema_weights(tiny, tmp_path):
    result = train(_config(tiny, tmp_path / "exp" / "run", oof_cache="", ema_decay=0.9, keep_last=True))
    fold_dir = result.run_dir / "spinal" / "fold0"
    final, last = load_checkpoint(fold_dir / "final.pt"), load_checkpoint(fold_dir / "last.pt")
    assert last["epoch"] == 2 and final.keys() == last["model"].keys()
    for key, value in final.items():
        assert torch.equal(value, last["ema"][f"module.{key}"]), key
    assert result.summary["units"]["spinal"]["checkpoints"] == {"0": "spinal/fold0/final.pt"}


@pytest.mark.parametrize("overrides, message", [
    ({"train_crops": "oof", "oof_cache": ""}, "train_crops='oof' needs `oof_cache`"),
    ({"train_crops": "both", "cache": ""}, "train_crops='both' needs `cache`"),
    ({"train_crops": "predicted"}, "train_crops='predicted': expected one of"),
    ({"select": "first"}, "select='first': expected one of"),
    ({"patience": 2}, "use it with select=best"),
    ({"train_crops": "oof", "jitter": "errors.json"}, "train_crops='oof' has none"),
])
def test_source_and_selection_settings_are_checked(tiny, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train(_config(tiny, tmp_path / "exp" / "run", **overrides))


def test_caches_of_different_crops_are_an_error(tiny, tmp_path):
    _, cache_dir, oof_dir, _, _ = tiny
    other = shutil.copytree(oof_dir, tmp_path / "other")
    params = json.loads((other / "params.json").read_text())
    (other / "params.json").write_text(json.dumps({"config": {**params["config"], "filter": "clahe"}}))
    with pytest.raises(ValueError, match=f"{cache_dir} and {other}: params.json configs differ \\(filter\\)"):
        train(_config(tiny, tmp_path / "exp" / "run", oof_cache=str(other)))
    samples = pd.read_parquet(oof_dir / "samples.parquet")
    samples.assign(pad_px=2).to_parquet(other / "samples.parquet", index=False)
    with pytest.raises(ValueError, match=f"{cache_dir} and {other}: crops of different shapes"):
        train(_config(tiny, tmp_path / "exp" / "run", oof_cache=str(other)))
