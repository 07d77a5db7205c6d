"""Pretrained encoder weights: one setting, `pretrained`, three sources; and the weights folder.

    none       random initialisation (the demo and the tests)
    imagenet   timm's pretrained weights for the model name and tag (`convnext_small.fb_in22k`; a name
               without a tag means timm's default tag), through timm's own hub loading: downloaded once into
               the Hugging Face cache where there is internet, read from that cache afterwards
    PATH       a local weights file, or a weights folder written by `python -m lumbar weights`, whose index
               (`encoders.json`) maps each timm name with tag to its file; e.g. that folder attached to a
               Kaggle notebook as a dataset

Every timm encoder (classifier backbones, the localizer's encoder, its slice scorer) is built by
`create_timm_model`. A local file goes to timm as `pretrained_cfg_overlay=dict(file=...)`, so for both
sources timm does the same adaptation: the first convolution is fitted to the input channels (the RGB
filters summed for one channel; repeated and scaled by 3 / C for C channels) and the classifier is
dropped. Networks timm has no weights for (the MONAI, MedicalNet and thesis 3D nets) load only local files
(`lumbar.models.base.load_pretrained`); `imagenet` is an error that says so.

Input statistics: crops and localizer inputs are single-channel intensities in [0, 1]. Every timm model
carries the mean and std of its pretraining (per RGB channel) in its pretrained config, also when built
without weights; `gray_stats` averages them into one scalar pair, and the models subtract and divide by
it in every forward pass of training and inference alike (classifiers: `lumbar.train.predict.
batch_to_device`; localizer: inside `HeatmapNet` and `SliceScorer`).

Inference never loads pretrained weights: it builds every model with `none` and loads the run's own
checkpoints, so the Kaggle kernel needs neither the hub nor the weights folder. timm is imported only by
the functions that build models, so `gray_stats` and the setting's checks stay cheap to import.

The weights folder that feeds `PATH` is written by `lumbar.weights` (`python -m lumbar weights`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import nn

NONE, IMAGENET = "none", "imagenet"
#: The index of a weights folder: {"encoders": {timm name with tag: {"file", "bytes", ...}}, "timm": version}.
INDEX_JSON = "encoders.json"
#: The weights folder as a Kaggle dataset: /kaggle/input/<slug> once attached.
DATASET_SLUG = "lumbar-encoders"
PretrainedLike = str | os.PathLike


def upgrade_saved_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """A config saved before `pretrained` replaced `pretrained_path` (a run's config.json or localizer entry),
    read as today's: "" was random init (`none`), a path stays that path. User overrides are not upgraded:
    there the old name is an error that suggests the new one."""
    values = dict(values)
    if "pretrained_path" in values and "pretrained" not in values:
        values["pretrained"] = values.pop("pretrained_path") or "none"
    return values


def check_setting(pretrained: PretrainedLike) -> str:
    """The setting as a string; an empty one is an error (say `none`)."""
    value = str(pretrained).strip() if pretrained is not None else ""
    if not value:
        raise ValueError("pretrained is empty: use none (random init), imagenet, or a weights file or folder")
    return value


def _timm_model(name: str) -> str:
    """`name`, checked to be a timm model (ValueError otherwise)."""
    import timm

    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r} (see timm.list_models())")
    return name


def timm_weights_name(name: str) -> str:
    """The timm model name with its pretrained tag (`resnet34` -> `resnet34.a1_in1k`, timm's default tag).

    Raises:
        ValueError: an unknown model or tag, or a tag timm has no weights for.
    """
    from timm.models import get_pretrained_cfg

    _timm_model(name)
    try:
        cfg = get_pretrained_cfg(name, allow_unregistered=False)
    except RuntimeError as e:
        raise ValueError(f"timm model {name!r}: {e}") from None
    if not (cfg.hf_hub_id or cfg.url):
        raise ValueError(
            f"timm has no pretrained weights for {name!r} (tag {cfg.tag!r}); use pretrained: none"
        )
    return f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture


def read_index(folder: str | os.PathLike) -> dict[str, Any]:
    """The index of a weights folder (`encoders.json`)."""
    path = Path(folder) / INDEX_JSON
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder}: no {INDEX_JSON}; a weights folder is written by `python -m lumbar weights`"
        )
    return json.loads(path.read_text())


def weights_file(pretrained: PretrainedLike, key: str) -> Path:
    """The local file holding the weights of `key` (a timm name with tag, or a registered architecture).

    `pretrained` is that file itself, or a weights folder whose index names the file.

    Raises:
        FileNotFoundError: the path does not exist, or the index names a file that is gone.
        ValueError: the folder holds no weights for `key`.
    """
    path = Path(check_setting(pretrained)).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(
            f"pretrained: {str(pretrained)!r} is not none, imagenet, a weights file or a "
            f"weights folder ({path.absolute()} does not exist)"
        )
    encoders = read_index(path).get("encoders", {})
    if key not in encoders:
        held = ", ".join(sorted(encoders)) or "none"
        raise ValueError(
            f"{path / INDEX_JSON}: no weights for {key!r} (it holds {held}); "
            f"run `python -m lumbar weights` for a config that names it"
        )
    file = path / encoders[key]["file"]
    if not file.is_file():
        raise FileNotFoundError(f"{path / INDEX_JSON} names {file.name} for {key!r}, but the file is missing")
    return file


def no_hub_message(name: str, error: BaseException) -> str:
    """What to do when timm's hub loading fails (no internet and nothing in the cache, or a hub error)."""
    from huggingface_hub import constants

    return (
        f"ImageNet weights of timm model {name!r} are not in the Hugging Face cache "
        f"({constants.HF_HUB_CACHE}) "
        f"and could not be downloaded ({type(error).__name__}): run `python -m lumbar weights "
        "--config CONFIG "
        f"--out DIR` where there is internet and set pretrained to DIR (on Kaggle: attach DIR as a dataset), "
        f"or set pretrained to none"
    )


@contextlib.contextmanager
def hub_errors(name: str) -> Iterator[None]:
    """A failed hub download (an OSError: offline and not cached, HTTP errors) -> one line saying what to
    do."""
    try:
        yield
    except OSError as e:
        raise OSError(no_hub_message(name, e)) from e


def create_timm_model(name: str, pretrained: PretrainedLike = NONE, **kwargs: Any) -> nn.Module:
    """`timm.create_model(name, **kwargs)` with weights from `pretrained` (module docstring).

    Raises:
        ValueError: an unknown model, an empty setting, or a folder without this model's weights.
        OSError: `imagenet` without internet and without the weights in the hub cache (one line: what to do);
            a missing local file.
    """
    import timm

    source = check_setting(pretrained)
    if source == NONE:
        return timm.create_model(_timm_model(name), pretrained=False, **kwargs)
    key = timm_weights_name(name)
    if source == IMAGENET:
        with hub_errors(key):
            return timm.create_model(key, pretrained=True, **kwargs)
    file = weights_file(source, key)
    return timm.create_model(key, pretrained=True, pretrained_cfg_overlay={"file": str(file)}, **kwargs)


def gray_stats(mean: Sequence[float], std: Sequence[float]) -> tuple[float, float]:
    """One (mean, std) for single-channel intensities: the pretraining's per-channel values, averaged."""
    return float(np.mean(mean)), float(np.mean(std))
