"""Late fusion of views: one encoder per input view, their features concatenated before the shared head.

A multi-view unit (`lumbar.train.tasks.Task.views`) stacks its views as input channels. With `fusion: early`
one encoder takes them all as channels; with `fusion: late` (`build_model(..., streams=k)`) each view gets its
own encoder of the same architecture (a two-stream model, as the multi-view teams built theirs), so a
Sagittal T2 stack and an axial stack are never mixed in the first convolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ViewStreams(nn.Module):
    """Encoders applied to equal channel groups of (B, C, D, H, W); features (B, sum of their widths)."""

    def __init__(self, encoders: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(encoders) < 2:
            raise ValueError(f"ViewStreams needs two or more encoders, got {len(encoders)}")
        self.streams = nn.ModuleList(encoders)
        first = encoders[0]
        self.num_features = sum(int(e.num_features) for e in encoders)
        for name in ("memory_format", "cpu_channels_last", "mean", "std"):
            if hasattr(first, name):
                setattr(self, name, getattr(first, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] % len(self.streams):
            raise ValueError(f"{x.shape[1]} input channels do not split into {len(self.streams)} views")
        views = x.chunk(len(self.streams), dim=1)
        return torch.cat([encoder(v) for encoder, v in zip(self.streams, views)], dim=1)
