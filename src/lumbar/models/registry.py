"""Architecture registry: a name -> an encoder factory, so an architecture is a string in a config.

Two kinds of entries:
    model   a fixed architecture, e.g. "cnn3d" or "resnet3d_18"
    family  a prefix taking a variant after a colon, e.g. "timm25d:convnext_tiny": the family factory
            receives "convnext_tiny" as its first argument

A factory takes `in_channels`, `depth`, `pretrained` (none, imagenet or a local file/folder:
`lumbar.core.encoders`) and its own keyword arguments and returns an encoder (see `lumbar.models.base`);
`build_model` wraps it in `LumbarModel` with the shared head. A family registered with `timm=True` takes a
timm model name as its variant, so `timm_encoder` can name the weights an architecture needs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from torch import nn

from lumbar.core.registry import Registry
from lumbar.models.base import LumbarModel
from lumbar.models.fusion import ViewStreams

EncoderFactory = Callable[..., nn.Module]

_MODELS: Registry[EncoderFactory] = Registry("model")
_FAMILIES: Registry[EncoderFactory] = Registry("model")
_TIMM_FAMILIES: set[str] = set()
FAMILY_SEPARATOR = ":"


def register_model(
    name: str, family: bool = False, timm: bool = False
) -> Callable[[EncoderFactory], EncoderFactory]:
    """Decorator registering an encoder factory under `name`.

    Args:
        name: the registry name (no colon).
        family: register a family: `build_model("<name>:<variant>")` calls the factory with the variant
            as its first argument.
        timm: (families) the variant is a timm model name, whose pretrained weights the encoder takes.

    Raises:
        ValueError: when the name is taken or contains the family separator.
    """
    if not name or FAMILY_SEPARATOR in name:
        raise ValueError(f"model name must be non-empty and without {FAMILY_SEPARATOR!r}: {name!r}")
    if timm and not family:
        raise ValueError(f"model {name!r}: timm=True is for families (the variant names the timm model)")
    if name in (_MODELS if family else _FAMILIES):  # one name space for both kinds
        raise ValueError(f"model {name!r} registered twice")
    register = (_FAMILIES if family else _MODELS).register(name)

    def decorate(factory: EncoderFactory) -> EncoderFactory:
        register(factory)
        if timm:
            _TIMM_FAMILIES.add(name)
        return factory

    return decorate


def list_models() -> list[str]:
    """Registered fixed architectures, sorted (families are listed by `list_families`)."""
    return sorted(_MODELS)


def list_families() -> list[str]:
    """Registered family prefixes, sorted; build one as "<family>:<variant>"."""
    return sorted(_FAMILIES)


def _resolve(name: str) -> tuple[EncoderFactory, tuple[str, ...]]:
    prefix, sep, variant = name.partition(FAMILY_SEPARATOR)
    factory = _FAMILIES.get(prefix) if sep else _MODELS.get(name)
    if factory is None or (sep and not variant):
        known = list_models() + [f"{f}{FAMILY_SEPARATOR}<name>" for f in list_families()]
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(known)}")
    return factory, ((variant,) if sep else ())


def timm_encoder(name: str) -> str | None:
    """The timm model an architecture's encoder is (`timm25d:resnet34` -> `resnet34`); None for other nets.

    Raises:
        ValueError: for an unknown name.
    """
    _resolve(name)
    prefix, sep, variant = name.partition(FAMILY_SEPARATOR)
    return variant if sep and prefix in _TIMM_FAMILIES else None


def build_model(
    name: str,
    in_channels: int,
    num_outputs: int,
    depth: int,
    pretrained: str | os.PathLike = "none",
    num_meta: int = 0,
    drop_rate: float = 0.0,
    streams: int = 1,
    **kwargs: Any,
) -> LumbarModel:
    """Build a registered architecture behind the common contract.

    Args:
        name: a registered name ("cnn3d") or family name ("timmseq:resnet18").
        in_channels: channels C of the input stack (B, C, D, H, W); usually 1.
        num_outputs: number of logits (e.g. 3 grades, or 15 for 5 levels x 3 grades).
        depth: slices D the model is built for; 3D nets plan their depth downsampling on it, 2.5D
            nets stack exactly this many slices as channels.
        pretrained: the encoder's weights: none (random init), imagenet (timm's, for timm encoders) or a
            local weights file or folder (`lumbar.core.encoders`).
        num_meta: width of the metadata vector given to `forward` (0: none).
        drop_rate: dropout before the linear head.
        streams: 1 = one encoder over all input channels; k > 1 = late fusion of k views
            (`lumbar.models.fusion.ViewStreams`): one encoder per group of in_channels / k channels.
        **kwargs: the architecture's own options (e.g. `pool="attn"` for timmseq); a typo is an error.

    Returns:
        A `LumbarModel`: `model(x, meta=None)` -> logits (B, num_outputs).

    Raises:
        ValueError: for an unknown name (listing the registered ones) or invalid sizes.
    """
    factory, variant = _resolve(name)
    sizes = {"in_channels": in_channels, "num_outputs": num_outputs, "depth": depth}
    for key, value in sizes.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive int, got {value!r}")
    if num_meta < 0:
        raise ValueError(f"num_meta must be >= 0, got {num_meta}")
    if streams < 1 or in_channels % streams:
        raise ValueError(f"streams={streams} must be >= 1 and divide in_channels={in_channels}")
    encoders = [
        factory(*variant, in_channels=in_channels // streams, depth=depth, pretrained=pretrained, **kwargs)
        for _ in range(streams)
    ]
    encoder = encoders[0] if streams == 1 else ViewStreams(encoders)
    config = dict(name=name, **sizes, num_meta=num_meta, drop_rate=drop_rate, **kwargs)
    if streams > 1:
        config["streams"] = streams
    return LumbarModel(
        encoder, in_channels, num_outputs, num_meta=num_meta, drop_rate=drop_rate, config=config
    )
