"""Tiny training fixtures: a data folder with train.csv and an ROI cache in the contract's format.

The crops carry their grade: a bright square in the centre whose intensity grows with the grade, on noise,
so a small network learns something in one or two epochs. Right-side crops also get a bright first slice
and left-side crops a bright last slice, so a mirror (slice reversal) is visible in tests.
`make_oof_cache` writes a second cache of the same crops moved off centre, as crops around a localizer's
points would be.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from lumbar.core.constants import CONDITION_SIDE, CONDITIONS, LEVELS, row_id
from lumbar.core.tables import labels_to_wide, write_csv
from lumbar.preprocess import RoiConfig

DEPTH, SIZE, PAD_SLICES, PAD_PX = 8, 32, 1, 4
#: The RoiConfig the tiny caches claim (params.json "config"): 8 x 32 x 32 crops, pads 1 and 4.
TINY_ROI = RoiConfig(size=SIZE, before=3, after=4, pad_slices=PAD_SLICES, pad_px=PAD_PX)


def make_tiny_data(root: Path, n_studies: int = 12, seed: int = 0, conditions=CONDITIONS) -> tuple[Path, Path]:
    """Write `root/data/train.csv` and `root/cache/` (samples.parquet, params.json, .npy crops).

    Returns:
        (data_dir, cache_dir).
    """
    rng = np.random.default_rng(seed)
    data_dir, cache_dir = root / "data", root / "cache"
    data_dir.mkdir(parents=True, exist_ok=True)
    studies = [1000 + 7 * i for i in range(n_studies)]
    rows, samples = [], []
    for s in studies:
        for c in CONDITIONS:
            for lv in LEVELS:
                grade = int(rng.choice(3, p=[0.55, 0.3, 0.15]))
                rows.append((s, c, lv, grade))
                if c not in conditions:
                    continue
                shape = (DEPTH + 2 * PAD_SLICES, SIZE + 2 * PAD_PX, SIZE + 2 * PAD_PX)
                arr = 0.2 + 0.05 * rng.standard_normal(shape)
                mid = shape[1] // 2
                arr[:, mid - 6 : mid + 6, mid - 6 : mid + 6] += 0.25 * grade
                if CONDITION_SIDE[c] == "right":
                    arr[PAD_SLICES] = 0.9
                elif CONDITION_SIDE[c] == "left":
                    arr[-PAD_SLICES - 1] = 0.9
                file = f"{s}/{c}_{lv}.npy"
                (cache_dir / str(s)).mkdir(parents=True, exist_ok=True)
                np.save(cache_dir / file, np.clip(arr, 0, 1).astype(np.float16))
                samples.append({"sample_id": row_id(s, c, lv), "study_id": s, "condition": c, "level": lv,
                                "series_id": s * 10, "instance_number": 5, "x": 100.0, "y": 120.0,
                                "file": file, "depth": DEPTH, "height": SIZE, "width": SIZE,
                                "pad_slices": PAD_SLICES, "pad_px": PAD_PX})
    labels = pd.DataFrame(rows, columns=["study_id", "condition", "level", "grade"])
    write_csv(labels_to_wide(labels), data_dir / "train.csv")
    pd.DataFrame(samples).to_parquet(cache_dir / "samples.parquet", index=False)
    (cache_dir / "params.json").write_text(json.dumps({"config": TINY_ROI.to_dict()}))
    return data_dir, cache_dir


def make_oof_cache(cache_dir: Path, out: Path, drop: tuple[str, ...] = (), shift=(1, 2, -2)) -> Path:
    """A copy of a tiny cache with every crop rolled by `shift` (slices, rows, columns), like crops around a
    localizer's slightly wrong points, and without the samples `drop` (sample ids: the localizer found none).
    """
    samples = pd.read_parquet(cache_dir / "samples.parquet")
    samples = samples[~samples["sample_id"].isin(drop)].reset_index(drop=True)
    for file in samples["file"]:
        (out / file).parent.mkdir(parents=True, exist_ok=True)
        np.save(out / file, np.roll(np.load(cache_dir / file), shift, axis=(0, 1, 2)))
    samples.to_parquet(out / "samples.parquet", index=False)
    (out / "params.json").write_text((cache_dir / "params.json").read_text())
    return out


class TinyNet(nn.Module):
    """A test-only model with the registry's interface: (B, C, D, H, W) [+ meta] -> logits."""

    def __init__(self, in_channels: int, num_outputs: int, num_meta: int = 0, dropout: float = 0.2) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, 4, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.num_meta = num_meta
        self.head = nn.Linear(4 + num_meta, num_outputs)

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        f = self.drop(torch.relu(self.conv(x)).mean(dim=(2, 3, 4)))
        if self.num_meta:
            f = torch.cat([f, meta], dim=1)
        return self.head(f)


def tiny_build_model(name, in_channels, num_outputs, depth, pretrained="none", num_meta=0, drop_rate=0.0,
                     **kwargs):
    """Stand-in for `lumbar.models.build_model` in tests that must not depend on the registry."""
    return TinyNet(in_channels, num_outputs, num_meta)


def engine_config(tiny: tuple[Path, Path], out, **overrides) -> dict:
    """A `train` config on the tiny data (`make_tiny_data`): spinal only, 2 folds, fold 0, 2 epochs."""
    data_dir, cache_dir = tiny
    base = {"data_dir": str(data_dir), "cache": str(cache_dir), "out": str(out), "mode": "competition",
            "conditions": "scs", "n_folds": 2, "folds": "0", "epochs": 2, "batch_size": 8, "lr": 3e-3,
            "warmup_epochs": 0.5, "progress": False, "threads": 1}
    return {**base, **overrides}

