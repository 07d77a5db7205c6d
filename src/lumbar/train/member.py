"""One classifier of a run, as the pipeline trains it: its settings wired from the run's manifest, in one
process
or data-parallel under torchrun, the same either way.

The wiring (`member_overrides`) is what `notebooks/03_train.ipynb` does for every architecture: train on the
ground-truth crops and the localizer's out-of-fold crops (`CROPS`), shift the ground-truth ones as the
localizer errs (`JITTER`), validate on the localizer's crops; the paths come from the manifest (`preprocess`,
`oof_crops`, `localizer.errors`). `train_member` trains it in this process, or, with `nproc > 1`, starts
`torchrun --nproc-per-node N -m lumbar train --config <out>/launch.yaml` on exactly those settings (DDP: NCCL
with one GPU per rank on CUDA, gloo on the CPU) and reads the result back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from lumbar.core.atomic import write_text
from lumbar.core.run_contract import RunManifest
from lumbar.train.loop import OOF_CSV, OOF_GT_CSV, PREDICTIONS_CSV, TrainResult, train
from lumbar.train.predict import CONFIG_JSON, RESULT_JSON

#: Training crops: `gt` around the label points, `oof` around the localizer's out-of-fold points, or both.
CROPS = ("gt", "oof", "both")
LAUNCH_YAML = "launch.yaml"


def member_overrides(
    run_dir: str | os.PathLike,
    arch: str,
    name: str = "",
    crops: str = "both",
    jitter: str = "localizer",
    exclude: str = "",
    **settings: Any,
) -> dict[str, Any]:
    """The `TrainConfig` overrides of a run's classifier, its inputs read from the run's manifest.

    Args:
        run_dir: the run folder (after 01 and 02: the crop caches and the localizer's errors).
        arch: the registered architecture.
        name: its folder under the run (default: `arch` with colons replaced).
        crops: training crops (`CROPS`); validation is on the localizer's crops whenever the run has them.
        jitter: "localizer": shift the ground-truth crops by draws from the localizer's measured errors;
            "uniform": up to `max_shift_*`.
        exclude: an exclusion list of grades (relative to the run folder), e.g. `label_noise/flags.csv`.
        settings: any other `TrainConfig` field (epochs, lr, device, ...).
    """
    if crops not in CROPS:
        raise ValueError(f"crops must be one of {CROPS}, got {crops!r}")
    run_dir = Path(run_dir)
    manifest = RunManifest.read(run_dir)
    cache = manifest.need.preprocess.need.cache
    oof_crops = manifest.oof_crops.cache if manifest.oof_crops else None
    errors = manifest.localizer.errors if manifest.localizer else None
    use_jitter = errors and jitter == "localizer" and crops != "oof"
    return {
        "cache": str(run_dir / cache),
        "train_crops": crops,
        "oof_cache": str(run_dir / oof_crops) if oof_crops else "",
        "jitter": str(run_dir / errors) if use_jitter else "",
        "exclude": str(run_dir / exclude) if exclude else "",
        "out": str(run_dir / (name or arch.replace(":", "_"))),
        "arch": arch,
        **settings,
    }


def train_member(overrides: Mapping[str, Any], nproc: int = 1, logger=None) -> TrainResult:
    """Train a classifier in this process (`nproc` 1) or in `nproc` DDP processes under torchrun."""
    if nproc <= 1:
        return train(dict(overrides), logger=logger)
    return train_distributed(overrides, nproc)


def train_distributed(overrides: Mapping[str, Any], nproc: int) -> TrainResult:
    """`torchrun --standalone --nproc-per-node nproc -m lumbar train --config <out>/launch.yaml`, its output
    streamed; the result as `train` returns it.

    Raises:
        RuntimeError: a rank failed (the message has torchrun's exit code; the ranks' output was printed).
    """
    out = Path(overrides["out"])
    out.mkdir(parents=True, exist_ok=True)
    spec = write_text(yaml.safe_dump(dict(overrides), sort_keys=False), out / LAUNCH_YAML)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "lumbar",
        "train",
        "--config",
        str(spec),
    ]
    print(f"train: {nproc} DDP processes: {' '.join(cmd[2:])}", flush=True)
    done = subprocess.run(cmd, check=False)
    if done.returncode:
        raise RuntimeError(
            f"torchrun ({nproc} processes) of {out.name} failed with exit code {done.returncode}"
        )
    return read_result(out)


def read_result(out: str | os.PathLike) -> TrainResult:
    """The `TrainResult` of a finished classifier folder (its result.json and tables)."""
    out = Path(out)
    summary = json.loads((out / RESULT_JSON).read_text())
    if not (out / CONFIG_JSON).is_file():
        raise FileNotFoundError(f"{out}: no {CONFIG_JSON}: not a classifier folder")
    gt = out / OOF_GT_CSV
    return TrainResult(
        out,
        out / OOF_CSV,
        out / PREDICTIONS_CSV,
        summary.get("oof_score"),
        {k: out / p for k, p in summary.get("reports", {}).items()},
        summary,
        gt if gt.is_file() else None,
        summary.get("oof_score_gt"),
    )
