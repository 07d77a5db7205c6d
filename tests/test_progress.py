"""Progress you can watch: epoch lines with the time left, the pipeline's step logs, TensorBoard curves."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from _train_data import engine_config
from test_pipeline import _config, _notebook
from torch import nn

from lumbar.core.progress import ScalarBoard, TimeLeft, epoch_line, format_seconds, print_line
from lumbar.core.runtime import setup_runtime, teardown_runtime
from lumbar.core.tables import load_coordinates
from lumbar.localize.config import LocalizerConfig
from lumbar.localize.fit import fit
from lumbar.localize.train import train_localizer
from lumbar.pipeline import load_config, run_pipeline
from lumbar.train.config import TrainConfig, make_config
from lumbar.train.loggers import PrintLogger
from lumbar.train.loop import train

CLASSIFIER_LINE = re.compile(
    r"^\[spinal fold (?P<fold>\d)\] epoch (?P<epoch>\d)/2: train_loss=(?P<train>[\d.]+)"
    r"(?: val_loss=(?P<val>[\d.]+) competition=(?P<score>[\d.]+))? \| [\d.]+ s \(data [\d.]+ s, model [\d.]+ s\), "
    r"left (?P<left>\d+:\d\d)$"
)


def scalars(folder) -> dict[str, dict[int, float]]:
    """tag -> {step: value} of the TensorBoard events in `folder`, read back with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def test_time_left_is_the_mean_epoch_times_the_epochs_still_planned():
    assert [format_seconds(s) for s in (0.4, 59.6, 61, 3600, 3725.2, float("nan"))] == [
        "0:00", "1:00", "1:01", "1:00:00", "1:02:05", "?"]  # fmt: skip
    clock = TimeLeft()
    assert clock.add(10.0, 5) == 50.0 and clock.add(20.0, 4) == 60.0  # mean 15 s x 4
    line = epoch_line("spinal fold 0", 3, 10, {"train_loss": 0.5, "val_loss": float("nan")}, 12.34, 3725.0)
    assert line == "[spinal fold 0] epoch 3/10: train_loss=0.5000 | 12.3 s, left 1:02:05"  # no validation: no val


def test_print_logger_counts_down_over_units_and_folds_and_survives_a_resume(capsys):
    def row(epoch, seconds):
        return {"epoch": epoch, "train_loss": 0.5, "val_loss": 0.6, "metric": "competition", "val_metric": 0.7,
                "seconds": seconds, "data_s": 1.0, "model_s": 2.0}

    logger = PrintLogger()
    logger.log_start(["spinal", "foraminal"], [0, 1], 3)  # 2 units x 2 folds x 3 epochs = 12 epochs
    logger.log_epoch("spinal", 0, row(1, 10.0))  # 11 epochs left at 10 s
    logger.log_epoch("spinal", 0, row(2, 20.0))  # 10 left at 15 s
    logger.log_epoch("foraminal", 1, row(3, 30.0))  # the last one
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("[spinal fold 0] epoch 1/3: train_loss=0.5000 val_loss=0.6000 competition=0.7000 | 10.0 s "
                        "(data 1.0 s, model 2.0 s), left 1:50")
    assert [line.rsplit("left ", 1)[1] for line in lines] == ["1:50", "2:30", "0:00"]

    resumed = PrintLogger()  # a run resumed in fold 1 of spinal at epoch 3: fold 0 was finished, nothing printed
    resumed.log_start(["spinal", "foraminal"], [0, 1], 3)
    resumed.log_epoch("spinal", 1, row(3, 40.0))  # the two foraminal folds are left: 6 epochs at 40 s
    assert capsys.readouterr().out.rstrip().endswith("left 4:00")


def test_a_classifier_run_prints_a_line_per_epoch_and_a_resumed_one_only_its_own(tiny, tmp_path, tiny_model, capsys):
    class Killed(Exception):
        pass

    class KillInFold1(PrintLogger):
        def log_epoch(self, unit, fold, row):
            super().log_epoch(unit, fold, row)
            if fold == 1:
                raise Killed

    config = engine_config(tiny, tmp_path / "exp" / "run", folds="0,1", val_every=2)
    with pytest.raises(Killed):
        train(config, logger=KillInFold1())
    out = capsys.readouterr().out.splitlines()
    lines = [CLASSIFIER_LINE.match(line) for line in out if line.startswith("[")]
    assert all(lines), out
    assert [(m["fold"], m["epoch"]) for m in lines] == [("0", "1"), ("0", "2"), ("1", "1")]
    assert lines[0]["val"] is None and lines[1]["val"] is not None  # validated every 2nd epoch (and the last)
    history = pd.read_csv(tmp_path / "exp" / "run" / "spinal" / "fold0" / "history.csv")
    assert float(lines[1]["score"]) == pytest.approx(history["val_metric"].iloc[1], abs=5e-5)

    train(config, logger=PrintLogger())  # fold 0 finished, fold 1 resumes at epoch 2: the one epoch left
    lines = [CLASSIFIER_LINE.match(line) for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert [(m["fold"], m["epoch"], m["left"]) for m in lines] == [("1", "2", "0:00")]


def test_tensorboard_curves_of_a_classifier_run_and_none_when_off(tiny, tmp_path, tiny_model):
    result = train(engine_config(tiny, tmp_path / "on" / "run", val_every=2, tensorboard=True))
    history = pd.read_csv(result.run_dir / "spinal" / "fold0" / "history.csv")
    curves = scalars(result.run_dir / "tensorboard" / "spinal" / "fold0")
    assert set(curves) == {"train/loss", "train/lr", "val/loss", "val/competition"}
    assert curves["train/loss"] == pytest.approx(dict(zip(history["epoch"], history["train_loss"])), rel=1e-6)
    assert curves["train/lr"] == pytest.approx(dict(zip(history["epoch"], history["lr"])), rel=1e-6)
    assert curves["val/loss"] == pytest.approx({2: history["val_loss"].iloc[1]}, rel=1e-6)  # epoch 1: no validation
    assert curves["val/competition"] == pytest.approx({2: history["val_metric"].iloc[1]}, rel=1e-6)
    assert json.loads((result.run_dir / "config.json").read_text())["tensorboard"] is True
    assert TrainConfig.load(result.run_dir / "config.json") == make_config(
        engine_config(tiny, tmp_path / "on" / "run", val_every=2, tensorboard=True))

    off = train(engine_config(tiny, tmp_path / "off" / "run", epochs=1))
    assert not (off.run_dir / "tensorboard").exists() and not list(off.run_dir.rglob("events.out.tfevents.*"))


def _fit_linear(config: LocalizerConfig, **kwargs) -> list[float]:
    torch.manual_seed(0)
    model, x, y = nn.Linear(3, 1), torch.randn(20, 3), torch.randn(20, 1)
    runtime = setup_runtime("cpu", threads=1)
    try:
        return fit(model, 20, lambda idx, rng, gen: (x[idx], y[idx]), lambda out, t: (out - t).pow(2).mean(), 3,
                   config, runtime, progress=False, **kwargs)
    finally:
        teardown_runtime(runtime)


def test_localizer_fit_prints_each_epoch_and_writes_curves_only_when_asked(tmp_path, capsys):
    config = LocalizerConfig.from_dict({"batch_size": 8, "lr": 1e-2, "device": "cpu", "tensorboard": True})
    assert LocalizerConfig.from_dict(config.to_dict()) == config
    history = _fit_linear(config, desc="localizer fold1 sag_t2", board=tmp_path / "on")
    lines = capsys.readouterr().out.splitlines()
    pattern = re.compile(r"^\[localizer fold1 sag_t2\] epoch (\d)/3: train_loss=([\d.]+) \| [\d.]+ s, left \d+:\d\d$")
    matches = [pattern.match(line) for line in lines]
    assert all(matches) and [int(m[1]) for m in matches] == [1, 2, 3], lines
    assert [float(m[2]) for m in matches] == pytest.approx(history, abs=5e-5) and lines[-1].endswith("left 0:00")
    curves = scalars(tmp_path / "on")
    assert set(curves) == {"train/loss", "train/lr"} and curves["train/loss"] == pytest.approx(
        dict(enumerate(history, start=1)), rel=1e-6)
    assert curves["train/lr"][3] < curves["train/lr"][1]  # the one-cycle schedule anneals

    _fit_linear(config.with_overrides(tensorboard=False), board=tmp_path / "off")
    assert not (tmp_path / "off").exists()


def test_train_localizer_names_the_member_and_model_in_lines_and_curves(synthetic_dir, tmp_path, capsys):
    coords = load_coordinates(synthetic_dir / "train_label_coordinates.csv")
    config = LocalizerConfig().with_overrides({"backbone": "test_resnet", "size": 32, "slices": 4, "epochs": 2,
                                               "tasks": "sag_t2", "refine_tasks": "", "batch_size": 4,
                                               "decoder_channels": 8, "device": "cpu", "threads": 1,
                                               "tensorboard": True})
    entry = train_localizer(config, synthetic_dir, coords, tmp_path / "run", progress=False, member="fold0")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[localizer")]
    assert [line.split(":")[0] for line in lines] == ["[localizer fold0 sag_t2] epoch 1/2",
                                                      "[localizer fold0 sag_t2] epoch 2/2"]
    curves = scalars(tmp_path / "run" / "localizer" / "tensorboard" / "fold0" / "sag_t2")
    assert list(curves["train/loss"].values()) == pytest.approx(entry["models"]["sag_t2"]["loss_per_epoch"], abs=1e-5)


def test_scalar_board_skips_nan_and_writes_nothing_unused(tmp_path):
    board = ScalarBoard(tmp_path / "unused")
    board.close()
    assert not (tmp_path / "unused").exists()
    board = ScalarBoard(tmp_path / "used")
    board.add(1, {"a": 1.5, "b": float("nan")})
    board.add(2, {"a": np.float32(2.5), "b": 3.0})
    board.close()
    assert scalars(tmp_path / "used") == {"a": {1: 1.5, 2: 2.5}, "b": {2: 3.0}}


TALK = """import subprocess, sys, time
print(f"epoch 1/2: loss={VALUE}", flush=True)
print("half a", end="")
print(" line")
print("bar 10%\\rbar 100%")
sys.stderr.write("a warning\\n")
subprocess.run([sys.executable, "-c", "print('from a child process', flush=True)"], check=True)
time.sleep(1)  # ipykernel forwards what a child wrote to the kernel's stdout from a thread: before the cell ends
"""
#: What TALK prints, in order; the child process's line comes whenever ipykernel forwards it.
PRINTED = ["epoch 1/2: loss=5", "half a line", "bar 100%", "a warning"]
CHILD = "from a child process"


def kernel_as_in_a_real_run(monkeypatch) -> None:
    """ipykernel forwards what the kernel's processes write to their stdout and stderr, except under pytest
    (it looks for PYTEST_CURRENT_TEST, which the kernel would inherit): as in a real pipeline run. Called in
    the test itself, as pytest sets the variable anew for each phase of a test."""
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)


def test_a_steps_printed_lines_go_to_its_log_and_the_console_with_its_name(tmp_path, capsys, monkeypatch):
    kernel_as_in_a_real_run(monkeypatch)
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    _notebook(nbdir / "00_talk.ipynb", TALK)
    run_pipeline(load_config(_config(tmp_path, nbdir, [{"notebook": "00_talk", "output": "00_talk_5",
                                                        "parameters": {"VALUE": 5}}])))
    console = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[00_talk_5] ")]
    assert [line for line in console if line != f"[00_talk_5] {CHILD}"] == [f"[00_talk_5] {p}" for p in PRINTED]
    assert console.count(f"[00_talk_5] {CHILD}") == 1
    log = (tmp_path / "run" / "logs" / "00_talk_5.log").read_text().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "
    assert all(re.match(stamp, line) for line in log)
    assert re.match(stamp + r"\[pipeline\] 00_talk_5 \(00_talk.ipynb\) started$", log[0])
    assert re.match(stamp + r"\[pipeline\] done \([\d.]+ s\)$", log[-1])
    assert sorted(line[20:] for line in log[1:-1]) == sorted([*PRINTED, CHILD])
    assert [line[20:] for line in log[1:-1] if not line.endswith(CHILD)] == PRINTED


def test_a_failing_step_says_so_in_its_log(tmp_path):
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    _notebook(nbdir / "01_fail.ipynb", "print('before the error')\nraise ValueError('broken on purpose')")
    with pytest.raises(Exception, match="broken on purpose"):
        run_pipeline(load_config(_config(tmp_path, nbdir, ["01_fail"])))
    log = (tmp_path / "run" / "logs" / "01_fail.log").read_text().splitlines()
    assert log[1].endswith(" before the error")
    assert "[pipeline] notebook 01_fail (01_fail.ipynb) failed in cell" in log[-1]
    assert "ValueError: broken on purpose" in log[-1]


@pytest.mark.slow
def test_a_parallel_groups_steps_each_log_their_own_lines(tmp_path, capfd, monkeypatch):
    kernel_as_in_a_real_run(monkeypatch)
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    _notebook(nbdir / "00_talk.ipynb", TALK)
    group = {"parallel": [{"notebook": "00_talk", "output": f"talk_{v}", "parameters": {"VALUE": v}} for v in (1, 2)]}
    run_pipeline(load_config(_config(tmp_path, nbdir, [group])), jobs=2)  # each step in its own spawned process
    console = capfd.readouterr().out.splitlines()
    for v in (1, 2):
        assert f"[talk_{v}] epoch 1/2: loss={v}" in console and console.count(f"[talk_{v}] {CHILD}") == 1
        log = (tmp_path / "run" / "logs" / f"talk_{v}.log").read_text()
        assert f" epoch 1/2: loss={v}\n" in log and f"loss={3 - v}" not in log and f" {CHILD}\n" in log
    assert CHILD not in [line.strip() for line in console]  # never without a name (the kernel's own copy of it)


class _Writes:
    """A stdout that records each write it is given."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        self.writes.append("<flush>")


def test_print_line_writes_the_line_and_its_newline_at_once_then_flushes(monkeypatch):
    out = _Writes()
    monkeypatch.setattr("sys.stdout", out)
    print_line("[localizer fold0 sag_t1] epoch 1/1: train_loss=8.4361")
    assert out.writes == ["[localizer fold0 sag_t1] epoch 1/1: train_loss=8.4361\n", "<flush>"]


_CHILD = """
import sys
from lumbar.core.progress import print_line
for i in range(400):
    print_line(f"[child {sys.argv[1]}] line {i:03d} " + "x" * 60)
"""


def test_processes_printing_to_one_pipe_unbuffered_interleave_whole_lines_only():
    """The failure this guards (seen in CI): unbuffered, `print(..., flush=True)` writes text and newline apart,
    and two fold localizers' epoch lines came out as one line in the step log. With `print` here this test
    failed 1 run in 3."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    read, write = os.pipe()
    children = [
        subprocess.Popen([sys.executable, "-c", _CHILD, str(k)], stdout=write, env=env) for k in range(3)
    ]
    os.close(write)
    with os.fdopen(read) as pipe:
        lines = pipe.read().splitlines()
    assert [c.wait() for c in children] == [0, 0, 0]
    pattern = re.compile(r"^\[child (\d)\] line (\d{3}) x{60}$")
    assert all(pattern.match(line) for line in lines), [line for line in lines if not pattern.match(line)][:3]
    for k in range(3):  # every line of every child, in its order
        assert [m[2] for m in map(pattern.match, lines) if m[1] == str(k)] == [f"{i:03d}" for i in range(400)]
