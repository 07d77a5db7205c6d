"""Pooling over the slice (depth) axis: learned attention weights over a sequence of slice features."""

from __future__ import annotations

import torch
from torch import nn


class AttentionPool(nn.Module):
    """Weighted mean over a sequence, weights softmax(v . tanh(W h_t)) learned per position.

    Lets a model attend to the one or two slices that show the disc, instead of averaging them away.

    Args:
        dim: feature width of the sequence.
        hidden: width of the scoring layer (default dim // 2).
    """

    def __init__(self, dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or max(dim // 2, 1)
        self.score = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, F) -> (B, F)."""
        weights = torch.softmax(self.score(x), dim=1)
        return (weights * x).sum(dim=1)
