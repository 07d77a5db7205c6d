"""The one model contract every architecture meets, so one training loop serves all.

A model is an *encoder* (any module mapping a stack `x` of shape (B, C, D, H, W) to features (B, F))
wrapped in `LumbarModel`, which adds the shared head: dropout, then the optional metadata vector
(B, num_meta) concatenated to the features (level one-hot and side for level-agnostic models), then
one linear layer to the logits (B, num_outputs). The split mirrors timm's `forward_features` /
`forward_head`, so feature extraction, head fine-tuning and embedding export need no per-model code.

Encoders carry three optional attributes the wrapper passes on:
    num_features   width F of the features (required)
    memory_format  `torch.channels_last_3d` for 3D convolutions (default), `torch.channels_last` for 2D
                   backbones (whose 4D weights cannot take the 3D format)
    mean, std      per-channel normalisation the backbone was pretrained with (timm), else None
    cpu_channels_last  True where that memory format is also faster on CPU (measured per architecture by
                   `benchmarks/profile_step.py`: cnn3d's forward took 20 ms instead of 39 ms at the demo's
                   size; MONAI's resnet3d_18 and the timm families were slower), so the runtime uses it there
                   too
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lumbar.core.checkpoint import load_checkpoint
from lumbar.core.encoders import IMAGENET, NONE, check_setting, weights_file

StateDict = dict[str, torch.Tensor]


class LumbarModel(nn.Module):
    """Encoder plus the shared classification head.

    Args:
        encoder: module mapping (B, C, D, H, W) to (B, encoder.num_features).
        in_channels: channels C of the input stack.
        num_outputs: number of logits.
        num_meta: width of the metadata vector concatenated to the features (0: no metadata).
        drop_rate: dropout on the features before the linear layer.
        config: the `build_model` arguments that rebuild this model (kept for checkpoints and manifests).
    """

    def __init__(
        self,
        encoder: nn.Module,
        in_channels: int,
        num_outputs: int,
        num_meta: int = 0,
        drop_rate: float = 0.0,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.in_channels = in_channels
        self.num_features = int(encoder.num_features)
        self.num_outputs = num_outputs
        self.num_meta = num_meta
        self.memory_format: torch.memory_format = getattr(encoder, "memory_format", torch.channels_last_3d)
        self.cpu_channels_last: bool = bool(getattr(encoder, "cpu_channels_last", False))
        self.mean: tuple[float, ...] | None = getattr(encoder, "mean", None)
        self.std: tuple[float, ...] | None = getattr(encoder, "std", None)
        self.config: dict[str, Any] = dict(config or {})
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features + num_meta, num_outputs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Encode a batch of stacks (B, C, D, H, W) into features (B, num_features)."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{self.config.get('name', type(self.encoder).__name__)}: expected input of shape "
                f"(B, {self.in_channels}, D, H, W), got {tuple(x.shape)}"
            )
        return self.encoder(x)

    def forward_head(self, features: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, num_outputs) from features (B, F) and, if num_meta > 0, meta (B, num_meta)."""
        x = self.head_drop(features)
        if self.num_meta:
            if meta is None or meta.shape != (x.shape[0], self.num_meta):
                got = None if meta is None else tuple(meta.shape)
                raise ValueError(
                    f"model built with num_meta={self.num_meta} needs meta of shape "
                    f"({x.shape[0]}, {self.num_meta}), got {got}"
                )
            x = torch.cat([x, meta.to(x.dtype)], dim=1)
        elif meta is not None:
            raise ValueError("meta given to a model built with num_meta=0")
        return self.head(x)

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, num_outputs) for stacks x (B, C, D, H, W) and optional meta (B, num_meta)."""
        return self.forward_head(self.forward_features(x), meta)


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = "module.") -> StateDict:
    """Drop a key prefix such as DataParallel's `module.` where present."""
    return {k.removeprefix(prefix): v for k, v in state_dict.items()}


def read_state_dict(path: str | os.PathLike) -> StateDict:
    """Read a state dict from a local file, unwrapping a {"state_dict": ...} or {"model": ...} checkpoint.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when the file holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {path}")
    obj = load_checkpoint(path)
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: no state dict of tensors found")
    return dict(obj)


def load_weights(
    module: nn.Module,
    path: str | os.PathLike,
    key_map: Callable[[StateDict], StateDict] = strip_prefix,
) -> None:
    """Load a local state dict into `module`, every key accounted for.

    BatchNorm's `num_batches_tracked` counters may be absent (checkpoints saved by PyTorch < 0.4.1);
    they are bookkeeping, not weights, and keep their current value.

    Args:
        module: the module to fill (usually an encoder).
        path: a .pth/.pt file holding the state dict, bare or under "state_dict"/"model".
        key_map: maps the file's keys and tensors onto the module's layout.

    Raises:
        ValueError: naming the file and the keys that are missing, unexpected or of the wrong shape.
    """
    state = key_map(read_state_dict(path))
    own = module.state_dict()
    wrong_shape = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    if wrong_shape or missing or unexpected:
        raise ValueError(
            f"{path}: weights do not fit {type(module).__name__}: wrong shape {wrong_shape[:5]}, "
            f"missing {missing[:5]} ({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})"
        )
    module.load_state_dict(state, strict=False)


def load_pretrained(
    module: nn.Module,
    pretrained: str | os.PathLike,
    arch: str,
    why_no_imagenet: str,
    key_map: Callable[[StateDict], StateDict] = strip_prefix,
) -> nn.Module:
    """Weights for a network timm has none for (`lumbar.core.encoders`): none leaves it, a local file loads.

    Args:
        module: the network to fill.
        pretrained: none, or a weights file, or a weights folder whose index has an entry named `arch`.
        arch: its registered name.
        why_no_imagenet: why `imagenet` cannot work and what does, for the error.
        key_map: maps the file's state dict onto the module (`load_weights`).

    Raises:
        ValueError: `imagenet`; weights that do not fit (`load_weights`).
    """
    source = check_setting(pretrained)
    if source == IMAGENET:
        raise ValueError(f"{arch}: no ImageNet weights ({why_no_imagenet}); use pretrained: none")
    if source != NONE:
        load_weights(module, weights_file(source, arch), key_map)
    return module
