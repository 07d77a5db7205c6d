"""Depth-aware downsampling for 3D networks on thin stacks.

Crops are 1-15 slices deep but 64-224 pixels wide, so a 3D net that halves every axis at every stage
would pool a 5-slice stack down to one slice after two stages (and fail on one slice with kernel-2
pools). Every 3D net here therefore halves depth only while the stack stays at least `min_depth`
slices deep, and downsamples height and width as usual: `depth_strides` plans the depth strides, and
`keep_depth` rewrites a built stage (for library nets such as MONAI's) to stride only in-plane.
"""

from __future__ import annotations

from torch import nn


def depth_strides(depth: int, num_stages: int, min_depth: int = 2) -> list[int]:
    """Depth stride (1 or 2) of each downsampling stage for a stack `depth` slices deep.

    A stage halves depth only while the halved depth keeps `min_depth` slices: 15 slices become
    8, 4, 2; 5 become 3; 1 and 3 are never pooled in depth.

    Args:
        depth: slices in the input stack.
        num_stages: downsampling stages of the network, in forward order.
        min_depth: fewest slices a halving may leave.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    strides = []
    for _ in range(num_stages):
        if depth // 2 >= min_depth:
            strides.append(2)
            depth = (depth + 1) // 2
        else:
            strides.append(1)
    return strides


def _triple(value: int | tuple[int, ...]) -> tuple[int, int, int]:
    return (value,) * 3 if isinstance(value, int) else tuple(value)  # type: ignore[return-value]


def keep_depth(stage: nn.Module) -> None:
    """Make every 3D convolution and pooling inside `stage` stride only in-plane (depth kept).

    Convolutions keep their kernel and symmetric padding (same depth out); pools that strided in
    depth get a depth kernel of 1, so a single slice passes.
    """
    for m in stage.modules():
        if isinstance(m, nn.Conv3d):
            m.stride = (1, *m.stride[1:])
        elif isinstance(m, (nn.MaxPool3d, nn.AvgPool3d)):
            kernel, stride = _triple(m.kernel_size), _triple(m.stride or m.kernel_size)
            if stride[0] != 1:
                padding = _triple(m.padding)
                m.kernel_size, m.stride, m.padding = (1, *kernel[1:]), (1, *stride[1:]), (0, *padding[1:])
