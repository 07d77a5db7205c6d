"""2.5D models over timm 2D backbones, the approach of the top RSNA 2024 teams.

    timm25d:<timm name>  the slices (times channels) of a stack become the image channels of one 2D
                         backbone: in_chans = C * D, so the model is built for exactly D slices
    timmseq:<timm name>  one 2D backbone encodes every slice (in_chans = C); the slice features then
                         pass a BiGRU (pool="gru") or go straight (pool="attn") to attention pooling
                         over the slices; any D works

The backbone is `timm.create_model(name, in_chans=..., num_classes=0)` with the weights `pretrained` names
(none, imagenet, or a local file or weights folder: `lumbar.core.encoders.create_timm_model`); either way timm
adapts the stem to `in_chans` (summing the RGB filters for one channel, repeating them for more) and drops
the classifier. The backbone's normalisation (`mean`, `std` of its pretrained config, per RGB channel) is
exposed for the data pipeline, which applies it to the one-channel crops (`lumbar.core.encoders.gray_stats`).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from lumbar.core.encoders import NONE, create_timm_model
from lumbar.models.pooling import AttentionPool
from lumbar.models.registry import register_model

PathLike = str | os.PathLike


def create_backbone(name: str, in_chans: int, pretrained: PathLike = NONE) -> nn.Module:
    """A timm backbone returning pooled features, weights as `pretrained` says (`create_timm_model`)."""
    return create_timm_model(name, pretrained, in_chans=in_chans, num_classes=0)


def feature_width(backbone: nn.Module) -> int:
    """Width of the pooled features a classifier-free timm model returns (after any pre-logits layer)."""
    return int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)


class _TimmEncoder(nn.Module):
    """Shared attributes of the 2.5D encoders: 2D memory format and backbone normalisation."""

    memory_format = torch.channels_last

    def _expose(self, backbone: nn.Module) -> None:
        cfg = backbone.pretrained_cfg
        self.mean: tuple[float, ...] = tuple(cfg.get("mean", (0.0,)))
        self.std: tuple[float, ...] = tuple(cfg.get("std", (1.0,)))


class Timm25DEncoder(_TimmEncoder):
    """Slices as channels: (B, C, D, H, W) -> (B, C*D, H, W) -> one 2D backbone."""

    def __init__(self, name: str, in_channels: int, depth: int, pretrained: PathLike = NONE) -> None:
        super().__init__()
        self.depth = depth
        self.backbone = create_backbone(name, in_channels * depth, pretrained)
        self.num_features = feature_width(self.backbone)
        self._expose(self.backbone)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] != self.depth:
            raise ValueError(f"timm25d model built for depth {self.depth} got a stack of {x.shape[2]} slices")
        return self.backbone(x.flatten(1, 2))


class TimmSequenceEncoder(_TimmEncoder):
    """A 2D backbone per slice, then a BiGRU (optional) and attention pooling across slices.

    Args:
        name: timm model name.
        in_channels: channels C per slice.
        pretrained: backbone weights (none, imagenet, or a local file or folder).
        pool: "gru" (BiGRU over slices, then attention pooling) or "attn" (attention pooling only).
        hidden: GRU width per direction.
    """

    def __init__(
        self,
        name: str,
        in_channels: int,
        pretrained: PathLike = NONE,
        pool: str = "gru",
        hidden: int = 256,
    ) -> None:
        super().__init__()
        if pool not in ("gru", "attn"):
            raise ValueError(f"pool must be 'gru' or 'attn', got {pool!r}")
        self.backbone = create_backbone(name, in_channels, pretrained)
        width = feature_width(self.backbone)
        self.gru = nn.GRU(width, hidden, batch_first=True, bidirectional=True) if pool == "gru" else None
        self.num_features = 2 * hidden if self.gru is not None else width
        self.attention = AttentionPool(self.num_features)
        self._expose(self.backbone)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        slices = self.backbone(x.transpose(1, 2).reshape(b * d, c, h, w)).reshape(b, d, -1)
        if self.gru is not None:
            slices, _ = self.gru(slices)
        return self.attention(slices)


@register_model("timm25d", family=True, timm=True)
def timm25d(name: str, in_channels: int, depth: int, pretrained: PathLike = NONE) -> nn.Module:
    """timm backbone with the stack's slices as image channels."""
    return Timm25DEncoder(name, in_channels, depth, pretrained)


@register_model("timmseq", family=True, timm=True)
def timmseq(
    name: str,
    in_channels: int,
    depth: int,
    pretrained: PathLike = NONE,
    pool: str = "gru",
    hidden: int = 256,
) -> nn.Module:
    """timm backbone per slice, pooled across slices; `depth` is free."""
    return TimmSequenceEncoder(name, in_channels, pretrained, pool=pool, hidden=hidden)
