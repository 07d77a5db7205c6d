"""MONAI 3D networks as encoders: ResNet 10-101, DenseNet-121, SE-ResNeXt-50, EfficientNet-B0.

Each net is built by MONAI's own constructor with its classifier replaced by an identity, so it returns
pooled features. MONAI's nets halve every axis at every stage; here the stem convolution strides in-plane
only, and the later downsampling stages listed per family are rewritten to stride in-plane only where
`depth_strides` says depth cannot be halved (see `lumbar.models.depth`). Keeping depth in the 7x7x7 stems
also steers clear of a oneDNN fault: on CPU, torch 2.14's backward of a 7x7x7 stride-2 convolution over
5 slices corrupts the heap. Variants are rows of the table below, not classes.

MONAI is imported when one of these nets is built, not when the registry is: importing it takes about 7 CPU
seconds, which every notebook kernel and `predict` process paid even when it trains only timm or thesis nets.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

from torch import nn

from lumbar.models.base import load_pretrained
from lumbar.models.depth import depth_strides, keep_depth
from lumbar.models.registry import register_model

if TYPE_CHECKING:
    from monai.networks.nets import ResNet

PathLike = str | os.PathLike


def _plan_depth(stages: Sequence[nn.Module], depth: int) -> None:
    """Keep depth in every stage the depth plan does not let halve it."""
    for stage, stride in zip(stages, depth_strides(depth, len(stages))):
        if stride == 1:
            keep_depth(stage)


def build_resnet(
    arch: str,
    in_channels: int,
    depth: int,
    shortcut_type: str = "B",
    bias_downsample: bool = False,
    widen_factor: float = 1.0,
) -> ResNet:
    """MONAI ResNet (`arch` a key of MONAI's `resnet_params`, e.g. "resnet18") without classifier.

    The stem keeps MedicalNet's 7x7x7 kernel with stride (1, 2, 2); depth strides follow the plan over
    the max pool and layers 2-4.
    """
    from monai.networks.nets import ResNet
    from monai.networks.nets.resnet import get_inplanes, resnet_params

    block, layers = resnet_params[arch][:2]
    net = ResNet(
        block,
        layers,
        get_inplanes(),
        spatial_dims=3,
        n_input_channels=in_channels,
        conv1_t_size=7,
        conv1_t_stride=(1, 2, 2),
        shortcut_type=shortcut_type,
        widen_factor=widen_factor,
        feed_forward=False,
        bias_downsample=bias_downsample,
    )
    stages = (net.maxpool, net.layer2, net.layer3, net.layer4)
    for stage, stride in zip(stages, depth_strides(depth, len(stages))):
        if stride == 1:
            keep_depth(stage)
            for block_module in stage.modules():  # type-A shortcuts are pooling partials, not modules
                downsample = getattr(block_module, "downsample", None)
                if isinstance(downsample, partial) and downsample.keywords.get("stride", 1) != 1:
                    block_module.downsample = partial(
                        downsample.func, **{**downsample.keywords, "stride": (1, 2, 2)}
                    )
    net.num_features = net.in_planes
    return net


def build_densenet121(
    in_channels: int, depth: int, init_features: int = 64, growth_rate: int = 32
) -> nn.Module:
    """MONAI DenseNet-121 without classifier; stem keeps depth, plan over the pool and 3 transitions."""
    from monai.networks.nets import DenseNet121

    net = DenseNet121(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=1,
        init_features=init_features,
        growth_rate=growth_rate,
    )
    net.num_features = net.class_layers.out.in_features
    net.class_layers.out = nn.Identity()
    f = net.features
    keep_depth(f.conv0)
    _plan_depth([f.pool0, f.transition1, f.transition2, f.transition3], depth)
    return net


def build_seresnext50(in_channels: int, depth: int, layers: Sequence[int] = (3, 4, 6, 3)) -> nn.Module:
    """MONAI SE-ResNeXt-50 (32x4d) without classifier; stem keeps depth, plan over the pool and layers 2-4.

    `layers` (blocks per stage) can shrink the net for smoke tests.
    """
    from monai.networks.nets import SEResNext50

    net = SEResNext50(spatial_dims=3, in_channels=in_channels, num_classes=1, layers=tuple(layers))
    net.num_features = net.last_linear.in_features
    net.last_linear = nn.Identity()
    keep_depth(net.layer0.conv1)
    _plan_depth([net.layer0.pool, net.layer2, net.layer3, net.layer4], depth)
    return net


def build_efficientnet(model_name: str, in_channels: int, depth: int) -> nn.Module:
    """MONAI EfficientNet ("efficientnet-b0"...) without dropout and classifier.

    MONAI pads its strided convolutions explicitly, with "same" padding precomputed for a 224 cube; the
    depth padding is recomputed here for the planned depths: the stem keeps depth, the 4 strided block
    stacks halve it as planned.
    """
    from monai.networks.nets import EfficientNetBN

    net = EfficientNetBN(model_name, pretrained=False, spatial_dims=3, in_channels=in_channels, num_classes=1)
    net.num_features = net._fc.in_features
    net._fc, net._dropout = nn.Identity(), nn.Identity()
    strided = [
        (stack[0]._depthwise_conv, stack[0]._depthwise_conv_padding)
        for stack in net._blocks
        if stack[0].stride > 1
    ]
    strides = [1] + depth_strides(depth, len(strided))
    for (conv, padder), stride in zip([(net._conv_stem, net._conv_stem_padding), *strided], strides):
        if stride == 1:
            keep_depth(conv)
        pad = max((math.ceil(depth / stride) - 1) * stride + conv.kernel_size[0] - depth, 0)
        padder.padding = (*padder.padding[:4], pad // 2, pad - pad // 2)
        depth = math.ceil(depth / stride)
    return net


def _monai_factory(name: str, builder, **options):
    """A registry factory around a builder: adds in_channels/depth, local weights and user options."""

    def factory(in_channels: int, depth: int, pretrained: PathLike = "none", **kwargs) -> nn.Module:
        net = builder(in_channels=in_channels, depth=depth, **{**options, **kwargs})
        return load_pretrained(
            net, pretrained, name, "MONAI 3D nets are not timm models; a local weights file loads"
        )

    factory.__doc__ = builder.__doc__
    return factory


#: name -> (builder, fixed options). Options here can be overridden by build_model keyword arguments.
MONAI_VARIANTS = {
    "resnet3d_10": (build_resnet, {"arch": "resnet10"}),
    "resnet3d_18": (build_resnet, {"arch": "resnet18"}),
    "resnet3d_34": (build_resnet, {"arch": "resnet34"}),
    "resnet3d_50": (build_resnet, {"arch": "resnet50"}),
    "resnet3d_101": (build_resnet, {"arch": "resnet101"}),
    "densenet3d_121": (build_densenet121, {}),
    "seresnext3d_50": (build_seresnext50, {}),
    "efficientnet3d_b0": (build_efficientnet, {"model_name": "efficientnet-b0"}),
}

for _name, (_builder, _options) in MONAI_VARIANTS.items():
    register_model(_name)(_monai_factory(_name, _builder, **_options))
