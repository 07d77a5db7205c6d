"""Reruns are safe: a folder resumes or is reused only with the settings and inputs it was trained with; otherwise
the run stops before training, naming what differs; a finished fold keeps no optimizer state."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from _train_data import engine_config

from lumbar.core.settings import StaleRunError
from lumbar.preprocess.jitter import write_localizer_errors
from lumbar.train.loop import train

pytestmark = pytest.mark.usefixtures("tiny_model")


class CountEpochs:
    def __init__(self) -> None:
        self.epochs = 0

    def log_epoch(self, unit, fold, row):
        self.epochs += 1

    def log_result(self, result):
        pass


def test_a_finished_fold_keeps_no_optimizer_state_and_a_rerun_reuses_it(tiny, tmp_path):
    config = engine_config(tiny, tmp_path / "exp" / "run")
    first = train(config)
    fold = first.run_dir / "spinal" / "fold0"
    assert not (fold / "last.pt").exists() and (fold / "final.pt").is_file()
    assert json.loads((fold / "state.json").read_text())["finished"] is True
    counter = CountEpochs()
    again = train({**config, "workers": 0, "threads": 1}, logger=counter)  # run-only settings may change
    assert counter.epochs == 0  # reused, not retrained
    pd.testing.assert_frame_equal(pd.read_csv(first.oof_path), pd.read_csv(again.oof_path), check_exact=True)


def test_a_rerun_with_a_changed_setting_stops_before_training_and_names_it(tiny, tmp_path):
    config = engine_config(tiny, tmp_path / "exp" / "run")
    first = train(config)
    saved = (first.run_dir / "config.json").read_text()
    counter = CountEpochs()
    with pytest.raises(StaleRunError, match=r"epochs: 2 -> 3; lr: 0\.003 -> 0\.02\): reusing them") as info:
        train({**config, "epochs": 3, "lr": 0.02}, logger=counter)
    assert "FRESH=True in 03_train" in str(info.value) and counter.epochs == 0
    assert (first.run_dir / "config.json").read_text() == saved  # the folder still says what its weights are
    retrained = train({**config, "epochs": 3, "lr": 0.02, "resume": False}, logger=counter)
    assert counter.epochs == 3 and json.loads((retrained.run_dir / "config.json").read_text())["epochs"] == 3


def test_a_rerun_on_changed_inputs_stops_too(tiny, tmp_path):
    def errors(mm: float) -> pd.DataFrame:
        return pd.DataFrame({"condition": "spinal_canal_stenosis", "slice_error": [0, 0, 1, -1],
                             "dx_mm": [mm, -mm, 0.0, 0.5], "dy_mm": [0.0, mm, -mm, 0.5]})

    jitter = write_localizer_errors(errors(1.0), tmp_path / "errors.json")
    config = engine_config(tiny, tmp_path / "exp" / "run", jitter=str(jitter))
    train(config)
    write_localizer_errors(errors(6.0), jitter)  # the localizer was retrained: other errors, the same file name
    with pytest.raises(StaleRunError, match="jitter: its content changed"):
        train(config)
