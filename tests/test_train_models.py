"""The engine with registered architectures (3D CNN and timm 2.5D), meta input, and inference from the run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lumbar.core.constants import GRADES
from lumbar.train.loop import build_unit_model, train
from lumbar.train.predict import input_normalization, predict_cache


@pytest.fixture(scope="module")
def tiny(tiny_data):
    return tiny_data(6, conditions=("left_neural_foraminal_narrowing", "right_neural_foraminal_narrowing"))


@pytest.mark.parametrize("arch", ["cnn3d", "timm25d:resnet18", "timmseq:resnet18"])
def test_registered_architecture_trains_and_predicts(tiny, tmp_path, arch):
    data_dir, cache_dir = tiny
    result = train({"data_dir": str(data_dir), "cache": str(cache_dir), "out": str(tmp_path / "exp" / "run"),
                    "arch": arch, "mode": "competition", "conditions": "lnfn,rnfn", "n_folds": 2, "folds": "0",
                    "epochs": 1, "batch_size": 4, "fast_dev_run": 2, "progress": False, "threads": 1})
    history = pd.read_csv(result.run_dir / "foraminal" / "fold0" / "history.csv")
    assert np.isfinite(history["train_loss"]).all() and history["batches"].iloc[0] == 2
    sub = predict_cache(result.run_dir, cache_dir, device="cpu", threads=1)
    assert len(sub) == 25 * 6 and np.allclose(sub[list(GRADES)].sum(axis=1), 1.0)
    assert result.summary["model"]["name"] == arch


def test_timm_models_get_their_pretrained_normalization(tiny, tmp_path):
    from lumbar.train.config import make_config
    from lumbar.train.dataset import read_cache
    from lumbar.train.tasks import build_tasks

    cache = read_cache(tiny[1])
    task = build_tasks("competition", ["lnfn", "rnfn"])[0]
    assert task.num_meta == 6
    timm_model = build_unit_model(make_config({"arch": "timm25d:resnet18"}), task, cache)
    mean, std = input_normalization(timm_model)
    assert mean == pytest.approx(np.mean(timm_model.mean)) and std == pytest.approx(np.mean(timm_model.std))
    assert input_normalization(build_unit_model(make_config({"arch": "cnn3d"}), task, cache)) is None
