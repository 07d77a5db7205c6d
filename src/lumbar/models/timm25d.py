"""2.5D models over timm 2D backbones, the approach of the top RSNA 2024 teams.

    timm25d:<timm name>  the slices (times channels) of a stack become the image channels of one 2D
                         backbone: in_chans = C * D, so the model is built for exactly D slices
    timmseq:<timm name>  one 2D backbone encodes every slice (in_chans = C); the slice features then
                         pass a BiGRU (pool="gru") or go straight (pool="attn") to attention pooling
                         over the slices; any D works

The backbone is `timm.create_model(name, pretrained=False, in_chans=..., num_classes=0)`. Pretrained
weights come only from a local `pretrained_path`, given to timm as `pretrained_cfg_overlay=dict(file=...)`,
so timm adapts the stem to `in_chans` and drops the classifier as it does for its own weights; nothing
is downloaded. The backbone's normalisation (`mean`, `std` of its pretrained_cfg, per RGB channel) is
exposed for data pipelines; timm sums or cycles the RGB stem filters for other channel counts.
"""

from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
from torch import nn

from lumbar.models.pooling import AttentionPool
from lumbar.models.registry import register_model

PathLike = str | os.PathLike


def create_backbone(name: str, in_chans: int, pretrained_path: PathLike | None = None) -> nn.Module:
    """A timm backbone returning pooled features, with weights from a local file only.

    Raises:
        ValueError: for a name timm does not know.
        FileNotFoundError: for a missing weight file.
    """
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r} (see timm.list_models())")
    kwargs: dict = {"pretrained": False, "in_chans": in_chans, "num_classes": 0}
    if pretrained_path is not None:
        path = Path(pretrained_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"pretrained weights not found: {path} (weights load only from a local file)"
            )
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    return timm.create_model(name, **kwargs)


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

    def __init__(
        self, name: str, in_channels: int, depth: int, pretrained_path: PathLike | None = None
    ) -> None:
        super().__init__()
        self.depth = depth
        self.backbone = create_backbone(name, in_channels * depth, pretrained_path)
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
        pretrained_path: local backbone weights.
        pool: "gru" (BiGRU over slices, then attention pooling) or "attn" (attention pooling only).
        hidden: GRU width per direction.
    """

    def __init__(
        self,
        name: str,
        in_channels: int,
        pretrained_path: PathLike | None = None,
        pool: str = "gru",
        hidden: int = 256,
    ) -> None:
        super().__init__()
        if pool not in ("gru", "attn"):
            raise ValueError(f"pool must be 'gru' or 'attn', got {pool!r}")
        self.backbone = create_backbone(name, in_channels, pretrained_path)
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


@register_model("timm25d", family=True)
def timm25d(name: str, in_channels: int, depth: int, pretrained_path: PathLike | None = None) -> nn.Module:
    """timm backbone with the stack's slices as image channels."""
    return Timm25DEncoder(name, in_channels, depth, pretrained_path)


@register_model("timmseq", family=True)
def timmseq(
    name: str,
    in_channels: int,
    depth: int,
    pretrained_path: PathLike | None = None,
    pool: str = "gru",
    hidden: int = 256,
) -> nn.Module:
    """timm backbone per slice, pooled across slices; `depth` is free."""
    return TimmSequenceEncoder(name, in_channels, pretrained_path, pool=pool, hidden=hidden)
