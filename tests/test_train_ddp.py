"""Scale-out: `torchrun --nproc_per_node=2 -m lumbar train` on CPU (gloo) shards the data between the ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from _train_data import make_tiny_data


@pytest.mark.slow
def test_two_gloo_processes_see_different_samples(tmp_path):
    data_dir, cache_dir = make_tiny_data(tmp_path, n_studies=8, conditions=("spinal_canal_stenosis",))
    out = tmp_path / "exp" / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "lumbar",
           "train", "--data-dir", str(data_dir), "--cache", str(cache_dir), "--arch", "cnn3d", "--mode",
           "competition", "--condition", "scs", "--folds", "0", "--epochs", "1", "--batch-size", "5",
           "--out", str(out), "--set", "n_folds=2", "--set", "record_samples=true", "--set", "progress=false",
           "--set", "tensorboard=true"]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
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
