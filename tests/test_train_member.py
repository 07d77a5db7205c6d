"""A run's classifier as 03_train wires it, in one process or two DDP processes started by the pipeline."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from lumbar.core.manifest import read_manifest, update_manifest
from lumbar.pipeline import load_config, run_pipeline
from lumbar.train.member import member_overrides, read_result


def _run_copy(tiny_run, dst):
    """The tiny run's crops (linked), with its ground-truth cache standing in for the localizer's crops."""
    dst.mkdir()
    for name in ("manifest.json", "folds.csv"):
        shutil.copy2(tiny_run / name, dst / name)
    os.symlink(tiny_run / "cache", dst / "cache")
    cache = read_manifest(dst)["preprocess"]["cache"]
    update_manifest(dst, "oof_crops", {"cache": cache})
    return dst


def test_the_wiring_reads_the_runs_crops_and_the_localizer_errors(tmp_path):
    run = tmp_path / "run"
    update_manifest(run, "preprocess", {"cache": "cache/gt_crops"})
    with pytest.raises(FileNotFoundError, match="has no crop cache: run 01_preprocess first"):
        member_overrides(tmp_path / "empty", "cnn3d")
    assert member_overrides(run, "cnn3d")["oof_cache"] == "" and member_overrides(run, "cnn3d")["jitter"] == ""
    update_manifest(run, "oof_crops", {"cache": "cache_oof/oof_crops"})
    update_manifest(run, "localizer", {"errors": "localizer_errors.json"})
    wired = member_overrides(run, "timm25d:resnet18", epochs=3)
    assert wired["cache"] == str(run / "cache/gt_crops") and wired["oof_cache"] == str(run / "cache_oof/oof_crops")
    assert wired["jitter"] == str(run / "localizer_errors.json") and wired["train_crops"] == "both"
    assert wired["out"] == str(run / "timm25d_resnet18") and wired["epochs"] == 3
    assert member_overrides(run, "cnn3d", crops="oof")["jitter"] == ""  # no ground-truth crops to shift
    with pytest.raises(ValueError, match="crops must be one of"):
        member_overrides(run, "cnn3d", crops="localizer")


@pytest.mark.slow
def test_two_gloo_processes_started_by_the_pipeline_train_what_one_process_trains(tiny_run, synthetic_dir, tmp_path):
    run = _run_copy(tiny_run, tmp_path / "run")
    common = {"ARCH": "cnn3d", "N_FOLDS": 2, "EPOCHS": 2, "BATCH_SIZE": 4, "LR": 0.003, "DEVICE": "cpu", "THREADS": 1}
    steps = [{"notebook": "03_train", "output": "03_train_one", "parameters": {**common, "NAME": "one"}},
             {"notebook": "03_train", "output": "03_train_ddp", "parameters": {**common, "NAME": "ddp", "NPROC": 2}}]
    config = tmp_path / "ddp.yaml"
    config.write_text(json.dumps({"name": "ddp", "run_dir": str(run), "data_dir": str(synthetic_dir),
                                  "synthetic": {}, "notebooks": steps}))  # fmt: skip
    run_pipeline(load_config(config))
    one, ddp = read_result(run / "one"), read_result(run / "ddp")
    tables = [pd.read_csv(r.oof_path).sort_values("row_id").reset_index(drop=True) for r in (one, ddp)]
    assert list(tables[0]["row_id"]) == list(tables[1]["row_id"])  # the same out-of-fold rows
    assert (run / "ddp" / "launch.yaml").is_file() and ddp.summary["train_crops"] == one.summary["train_crops"]
    assert ddp.summary["oof_cache"] == one.summary["oof_cache"] != ""  # the localizer's crops: validated on
    assert abs(one.oof_score["score"] - ddp.oof_score["score"]) < 0.15  # two ranks: half the steps, same data
    assert not np.allclose(tables[0]["severe"], tables[1]["severe"])  # really another training
