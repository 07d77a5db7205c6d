"""MedicalNet-pretrainable 3D ResNets: MONAI's ResNet in the shape of Tencent's MedicalNet (Med3D).

MedicalNet's `resnet_<depth>.pth` checkpoints hold {"state_dict": ...} with DataParallel's `module.`
prefix, a one-channel `conv1`, a segmentation head `conv_seg.*`, and shortcut type A (parameter-free,
zero-padded) for ResNet-18/34 and B (1x1x1 conv + BN, no bias) otherwise; MONAI's ResNet uses the same
layer names, so the mapping strips the prefix, drops the segmentation head and spreads `conv1` over
`in_channels`. MedicalNet dilates layers 3-4 where MONAI strides them: the weights fit either way.
The shortcut settings come from MONAI's own `resnet_params` table.
"""

from __future__ import annotations

import os

from torch import nn

from lumbar.models.base import StateDict, load_pretrained, strip_prefix
from lumbar.models.monai3d import build_resnet
from lumbar.models.registry import register_model

MEDICALNET_VARIANTS = {f"medicalnet_resnet3d_{n}": f"resnet{n}" for n in (10, 18, 34, 50)}


def medicalnet_key_map(state_dict: StateDict, in_channels: int = 1) -> StateDict:
    """Map a MedicalNet state dict onto MONAI's ResNet (feed_forward=False).

    Args:
        state_dict: MedicalNet's `state_dict` (keys "module.conv1.weight", ..., "module.conv_seg.*").
        in_channels: input channels of the target model; the one-channel stem kernel is repeated and
            divided by `in_channels`, so identical channels give the pretrained response.
    """
    state = {k: v for k, v in strip_prefix(state_dict).items() if not k.startswith("conv_seg.")}
    stem = state.get("conv1.weight")
    if stem is not None and stem.shape[1] != in_channels:
        state["conv1.weight"] = stem.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1, 1) * (
            stem.shape[1] / in_channels
        )
    return state


def _medicalnet_factory(name: str, arch: str):
    def factory(
        in_channels: int,
        depth: int,
        pretrained: str | os.PathLike = "none",
        widen_factor: float = 1.0,
    ) -> nn.Module:
        from monai.networks.nets.resnet import resnet_params  # imported on use (see lumbar.models.monai3d)

        _, _, shortcut_type, bias_downsample, _ = resnet_params[arch]
        net = build_resnet(
            arch,
            in_channels,
            depth,
            shortcut_type=shortcut_type,
            bias_downsample=bias_downsample,
            widen_factor=widen_factor,
        )
        why = f"MedicalNet's own checkpoint, resnet_{arch.removeprefix('resnet')}.pth, loads as a local file"
        return load_pretrained(
            net, pretrained, name, why, key_map=lambda sd: medicalnet_key_map(sd, in_channels)
        )

    factory.__doc__ = f"MONAI {arch} laid out as MedicalNet's, loading its checkpoint from a local file."
    return factory


for _name, _arch in MEDICALNET_VARIANTS.items():
    register_model(_name)(_medicalnet_factory(_name, _arch))
