"""Scale-out: `torchrun --nproc_per_node=2 -m lumbar train` on CPU (gloo) shards the data between the ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from _train_data import make_tiny_data


def _torchrun(tmp_path, *sets: str, epochs: int = 1, batch_size: int = 5) -> tuple[subprocess.CompletedProcess, Path]:
    """`lumbar train` of the spinal unit on 8 tiny studies under two gloo ranks; its result and its folder."""
    data_dir, cache_dir = make_tiny_data(tmp_path, n_studies=8, conditions=("spinal_canal_stenosis",))
    out = tmp_path / "exp" / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "lumbar",
           "train", "--data-dir", str(data_dir), "--cache", str(cache_dir), "--arch", "cnn3d", "--mode",
           "competition", "--condition", "scs", "--folds", "0", "--epochs", str(epochs), "--batch-size",
           str(batch_size), "--out", str(out), "--set", "n_folds=2", "--set", "record_samples=true",
           "--set", "progress=false", *[a for s in sets for a in ("--set", s)]]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc, out


@pytest.mark.slow
def test_two_gloo_processes_see_different_samples(tmp_path):
    proc, out = _torchrun(tmp_path, "tensorboard=true")
    seen = json.loads((out / "spinal" / "fold0" / "samples_seen.json").read_text())["1"]
    rank0, rank1 = set(seen["0"]), set(seen["1"])
    assert rank0 and rank1 and not rank0 & rank1  # disjoint shards
    folds = pd.read_csv(tmp_path / "exp" / "folds.csv")
    n_train = 5 * int((folds["fold"] != 0).sum())
    assert len(rank0 | rank1) == n_train  # together, one pass over the training fold
    assert proc.stdout.count("[spinal fold 0] epoch 1/1: ") == 1  # only rank 0 logs
    events = list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert [e.parent.relative_to(out).as_posix() for e in events] == ["tensorboard/spinal/fold0"]  # rank 0's only
    oof = pd.read_csv(out / "oof.csv")
    assert len(oof) == 25 * int((folds["fold"] == 0).sum())


@pytest.mark.slow
def test_the_two_step_any_severe_schedule_under_two_gloo_ranks_gives_each_rank_whole_studies(tmp_path):
    """Epoch 1 unweighted without the term, epoch 2 weighted with it (the switch is by epoch number, the same on
    every rank): both epochs train under DDP, and each rank's batches hold whole studies in both."""
    _, out = _torchrun(tmp_path, "any_severe_weight=1.0", "weighted_from_epoch=2", epochs=2, batch_size=10)
    seen = json.loads((out / "spinal" / "fold0" / "samples_seen.json").read_text())
    history = pd.read_csv(out / "spinal" / "fold0" / "history.csv")
    assert list(history["epoch"]) == [1, 2] and history["train_loss"].notna().all()
    for epoch in ("1", "2"):
        studies = [{i.split("_")[0] for i in seen[epoch][rank]} for rank in ("0", "1")]
        assert studies[0] and studies[1] and not studies[0] & studies[1]  # no study split between the ranks
