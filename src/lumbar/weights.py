"""The weights folder: every timm encoder a pipeline config names, fetched once (`python -m lumbar weights`).

The weights folder (`python -m lumbar weights --config configs/full.yaml --out DIR [--dry-run]`, run where
there is internet) holds every timm encoder a pipeline config names, each downloaded once through timm's
own hub loading and written in timm's layout; it is a Kaggle dataset as it is (`kaggle datasets create -p
DIR`):

    dataset-metadata.json       the dataset's id (<user>/lumbar-encoders) and title
    encoders.json               the index: timm name with tag -> file, bytes, parameters, source, license
    <name>.<tag>.safetensors    one state dict per encoder, classifier included (timm drops it on loading)

An encoder already in the folder is not fetched again. Which encoders a config names: the `ARCH` of each
`03_train` step (the timm families `timm25d:` and `timmseq:`; other nets are listed as having no timm
weights) and the `BACKBONE` of `02_train_localizer`, with its slice scorer's (`EXTRA.refine_backbone`) when
refine tasks are on; each from the step's parameters, else the notebook's default (`NOTEBOOK_ENCODERS`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lumbar.core.atomic import atomic_path, write_json
from lumbar.core.encoders import DATASET_SLUG, INDEX_JSON, hub_errors, read_index, timm_weights_name
from lumbar.kaggle import dataset_metadata, kaggle_user
from lumbar.localize.config import LocalizerConfig
from lumbar.models import registry
from lumbar.pipeline import load_config
from lumbar.pipeline.config import notebook_defaults
from lumbar.train.config import make_config

if TYPE_CHECKING:
    import os

    from torch import nn


@dataclass(frozen=True)
class Encoder:
    """One encoder a pipeline config names.

    Attributes:
        step: the pipeline step (its output name).
        role: classifier, localizer or slice scorer.
        arch: the architecture or backbone as the config names it.
        weights: the timm name with tag whose weights it takes; None for a network timm has none for.
    """

    step: str
    role: str
    arch: str
    weights: str | None


def _localizer_encoders(params: Mapping[str, Any]) -> list[tuple[str, str, str | None]]:
    config = LocalizerConfig.from_dict({"backbone": params["BACKBONE"], **(params.get("EXTRA") or {})})
    found = [("localizer", config.backbone)]
    if config.refine_task_names:
        found.append(("slice scorer", config.refine_backbone or config.backbone))
    return [(role, name, name) for role, name in found]


def _classifier_encoders(params: Mapping[str, Any]) -> list[tuple[str, str, str | None]]:
    arch = make_config({"arch": params["ARCH"], **(params.get("EXTRA") or {})}).arch
    return [("classifier", arch, registry.timm_encoder(arch))]


#: Notebooks that train encoders -> (role, architecture, timm model or None) from the step's parameters.
NOTEBOOK_ENCODERS: dict[str, Callable[[Mapping[str, Any]], list[tuple[str, str, str | None]]]] = {
    "02_train_localizer": _localizer_encoders,
    "03_train": _classifier_encoders,
}


def config_encoders(config_path: str | os.PathLike) -> list[Encoder]:
    """Every encoder the training notebooks of a pipeline config build, in the config's order.

    Raises:
        ValueError: a bad config (`lumbar.pipeline.load_config`), an unknown architecture, or a timm model
            without pretrained weights.
    """
    config = load_config(config_path)
    defaults: dict[str, dict[str, Any]] = {}
    found = []
    for step in config.steps:
        encoders_of = NOTEBOOK_ENCODERS.get(step.notebook)
        if encoders_of is None:
            continue
        if step.notebook not in defaults:
            defaults[step.notebook] = notebook_defaults(config.notebook_dir / f"{step.notebook}.ipynb")
        for role, arch, timm_name in encoders_of({**defaults[step.notebook], **step.parameters}):
            found.append(
                Encoder(step.output, role, arch, timm_weights_name(timm_name) if timm_name else None)
            )
    return found


def weights_source(weights: str) -> str:
    """Where timm downloads a model's weights from: its Hugging Face hub repository, else its URL."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(weights)
    return f"hf-hub:{cfg.hf_hub_id}" if cfg.hf_hub_id else str(cfg.url)


def fetch_encoder(weights: str) -> nn.Module:
    """timm's model with its pretrained weights, through timm's hub loading (the download, or the hub
    cache)."""
    import timm

    with hub_errors(weights):
        return timm.create_model(weights, pretrained=True)


def write_weights_folder(
    weights: Sequence[str],
    out: str | os.PathLike,
    user: str | None = None,
    slug: str = DATASET_SLUG,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fetch each encoder not yet in `out` and write the folder (module docstring); returns the index.

    The index is rewritten after every encoder, so an interrupted run keeps what it fetched.
    """
    import timm
    from safetensors.torch import save_file

    out = Path(out)
    index = read_index(out) if (out / INDEX_JSON).is_file() else {"encoders": {}}
    for name in dict.fromkeys(weights):
        entry = index["encoders"].get(name)
        if entry and (out / entry["file"]).is_file():
            log(f"weights: {name}: already in {out}")
            continue
        model = fetch_encoder(name)
        file = out / f"{name}.safetensors"
        with atomic_path(file) as tmp:
            save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(tmp))
        index["encoders"][name] = {
            "file": file.name,
            "bytes": file.stat().st_size,
            "params": sum(p.numel() for p in model.parameters()),
            "source": weights_source(name),
            "license": model.pretrained_cfg.get("license"),
        }
        index["timm"] = timm.__version__
        write_json(index, out / INDEX_JSON)
        log(f"weights: {name}: {file.stat().st_size / 2**20:.1f} MiB -> {file}")
    write_json(
        dataset_metadata(kaggle_user(user), slug, "lumbar encoders", license="other"),
        out / "dataset-metadata.json",
    )
    return index


def cli_weights(args: argparse.Namespace) -> int:
    """`python -m lumbar weights`: list (`--dry-run`) or fetch every pretrained encoder of a config."""
    encoders = config_encoders(args.config)
    fetch = list(dict.fromkeys(e.weights for e in encoders if e.weights))
    out = Path(args.out)
    held = read_index(out).get("encoders", {}) if (out / INDEX_JSON).is_file() else {}
    print(f"weights: {args.config} names {len(encoders)} encoders, {len(fetch)} distinct timm weights:")
    for e in encoders:
        if e.weights is None:
            what, where = e.arch, "no timm weights: pretrained none (or a local weights file)"
        else:
            what = e.weights
            where = (
                "in the folder"
                if e.weights in held
                else f"{weights_source(e.weights)} -> {e.weights}.safetensors"
            )
        print(f"  {e.step:<36} {e.role:<12} {what:<40} {where}")
    if args.dry_run:
        print(f"weights: dry run: nothing fetched, nothing written to {out}")
        return 0
    slug = args.slug or DATASET_SLUG
    index = write_weights_folder(fetch, out, user=args.user, slug=slug)
    size = sum(index["encoders"][name]["bytes"] for name in fetch)
    print(
        f"weights: {len(fetch)} encoders ({size / 2**20:.0f} MiB) in {out}: set pretrained (the notebooks' "
        f"PRETRAINED) to {out.absolute()}, or upload it with `kaggle datasets create -p {out}` and attach it "
        f"(/kaggle/input/{slug})"
    )
    return 0
