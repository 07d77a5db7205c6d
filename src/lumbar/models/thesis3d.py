"""The master's thesis 3D CNNs: a plain 3D CNN, a 3D CNN + BiLSTM over slices, and a 12-conv 3D ResNet.

All three downsample height and width by 2 per stage and depth only where `depth_strides` allows, so
a 1-slice crop runs as well as a 15-slice one.

    cnn3d            conv-bn-relu-maxpool blocks, global average pooling
    cnn3d_lstm_attn  the same blocks pooling in-plane only (depth kept), average over the plane, a
                     BiLSTM along the slices (the sequence axis is depth), attention pooling
    resnet12_3d      three stages (32/64/128 channels) of two residual blocks: 12 3x3x3 convolutions
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from lumbar.models.base import load_pretrained
from lumbar.models.depth import depth_strides
from lumbar.models.pooling import AttentionPool
from lumbar.models.registry import register_model


def conv_bn_relu(
    in_channels: int, out_channels: int, stride: tuple[int, int, int] = (1, 1, 1)
) -> nn.Sequential:
    """3x3x3 convolution, batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
    )


def conv_pool_blocks(in_channels: int, channels: Sequence[int], strides: Sequence[int]) -> nn.Sequential:
    """conv-bn-relu then a max pool of (depth stride, 2, 2) per block."""
    blocks, width = [], in_channels
    for out, sd in zip(channels, strides):
        blocks.append(nn.Sequential(conv_bn_relu(width, out), nn.MaxPool3d((sd, 2, 2), ceil_mode=True)))
        width = out
    return nn.Sequential(*blocks)


class BasicBlock3d(nn.Module):
    """Residual block: two 3x3x3 conv-bn with ReLU, projection shortcut when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: tuple[int, int, int] = (1, 1, 1)) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(in_channels, out_channels, stride)
        self.conv2 = nn.Sequential(
            nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm3d(out_channels)
        )
        self.shortcut = nn.Identity()
        if in_channels != out_channels or stride != (1, 1, 1):
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm3d(out_channels),
            )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class CNN3D(nn.Module):
    """Plain 3D CNN encoder: conv-bn-relu-pool blocks, then global average pooling."""

    cpu_channels_last = True  # oneDNN's channels-last convolutions and max pools: about 1.4x a CPU step

    def __init__(self, in_channels: int, depth: int, channels: Sequence[int] = (32, 64, 128, 256)) -> None:
        super().__init__()
        self.blocks = conv_pool_blocks(in_channels, channels, depth_strides(depth, len(channels)))
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.num_features = channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.blocks(x)).flatten(1)


class CNN3DLSTMAttention(nn.Module):
    """3D CNN keeping every slice, a BiLSTM along the slices, attention pooling over them."""

    def __init__(self, in_channels: int, channels: Sequence[int] = (32, 64, 128), hidden: int = 128) -> None:
        super().__init__()
        self.blocks = conv_pool_blocks(in_channels, channels, [1] * len(channels))
        self.lstm = nn.LSTM(channels[-1], hidden, batch_first=True, bidirectional=True)
        self.attention = AttentionPool(2 * hidden)
        self.num_features = 2 * hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slices = self.blocks(x).mean(dim=(3, 4)).transpose(1, 2).contiguous()  # (B, D, C)
        sequence, _ = self.lstm(slices)
        return self.attention(sequence)


class ResNet12_3D(nn.Module):
    """The thesis's residual net: 3 stages x 2 basic blocks x 2 convs = 12 3x3x3 convolutions."""

    def __init__(self, in_channels: int, depth: int, channels: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__()
        stages, width = [], in_channels
        for out, sd in zip(channels, depth_strides(depth, len(channels))):
            stages.append(nn.Sequential(BasicBlock3d(width, out, (sd, 2, 2)), BasicBlock3d(out, out)))
            width = out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.num_features = channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(x)).flatten(1)


def _with_weights(encoder: nn.Module, pretrained: str | os.PathLike, name: str) -> nn.Module:
    return load_pretrained(
        encoder,
        pretrained,
        name,
        "the thesis nets have no public weights; a local file of their own weights loads",
    )


@register_model("cnn3d")
def cnn3d(
    in_channels: int,
    depth: int,
    pretrained: str | os.PathLike = "none",
    channels: Sequence[int] = (32, 64, 128, 256),
) -> nn.Module:
    """Plain 3D CNN (thesis baseline)."""
    return _with_weights(CNN3D(in_channels, depth, tuple(channels)), pretrained, "cnn3d")


@register_model("cnn3d_lstm_attn")
def cnn3d_lstm_attn(
    in_channels: int,
    depth: int,
    pretrained: str | os.PathLike = "none",
    channels: Sequence[int] = (32, 64, 128),
    hidden: int = 128,
) -> nn.Module:
    """3D CNN, BiLSTM over slices, attention pooling (thesis); `depth` is free since slices are kept."""
    return _with_weights(
        CNN3DLSTMAttention(in_channels, tuple(channels), hidden), pretrained, "cnn3d_lstm_attn"
    )


@register_model("resnet12_3d")
def resnet12_3d(
    in_channels: int,
    depth: int,
    pretrained: str | os.PathLike = "none",
    channels: Sequence[int] = (32, 64, 128),
) -> nn.Module:
    """The thesis's 12-convolution 3D ResNet."""
    return _with_weights(ResNet12_3D(in_channels, depth, tuple(channels)), pretrained, "resnet12_3d")
