"""Train the localizer models from `train_label_coordinates.csv` and the header index.

`train_localizer(config, data_dir, coords, run)` trains, for each task of `config.tasks`
(`lumbar.localize.tasks`), one `HeatmapNet` and writes into the run folder:

    RUN/manifest.json["localizer"]  backbone, size, slices, per-task checkpoint and points, config
    RUN/localizer/<task>.pt         state dict (load with torch.load(..., weights_only=True))
    RUN/localizer/cache/<inputs>/   the model inputs as float16 .npy, named after their parameters

so `lumbar.localize.predict` needs only the run path. Inputs are decoded once (only the slices a task
needs) and cached; epochs read the cache into memory.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from lumbar.data.dicom import DicomReadError, Series, read_series
from lumbar.data.index import load_or_build_index
from lumbar.data.tables import load_coordinates
from lumbar.localize.augment import random_affine, random_intensity, random_mirror
from lumbar.localize.config import LocalizerConfig, parse_assignments
from lumbar.localize.device import autocast, resolve_device
from lumbar.localize.heatmap import HeatmapNet, heatmap_loss
from lumbar.localize.tasks import Task, axial_samples, get_task, placed_coordinates, sagittal_samples
from lumbar.localize.volumes import axial_input, cached_array, sagittal_input
from lumbar.manifest import manifest_path, update_manifest
from lumbar.paths import data_root, series_dir

log = logging.getLogger(__name__)

MANIFEST_KEY = "localizer"
MODEL_DIR = "localizer"


def build_model(task: Task, config: LocalizerConfig, pretrained_path: str | None = None) -> HeatmapNet:
    """The network of a task under a config (the same call at training and at inference)."""
    if task.plane == "sagittal":
        in_chans, depth_bins = config.slices, config.slices
    else:
        in_chans, depth_bins = 2 * config.axial_neighbors + 1, 1
    return HeatmapNet(config.backbone, in_chans, len(task.points), depth_bins, config.decoder_channels,
                      config.out_stride, pretrained_path=pretrained_path)  # fmt: skip


def cache_dir(run: Path, task: Task, config: LocalizerConfig) -> Path:
    """Cache folder of a task's inputs, named after every parameter that shapes them."""
    if task.plane == "sagittal":
        name = f"{task.name}_{config.size}x{config.size}_{config.slices}D"
    else:
        name = f"{task.name}_{config.size}x{config.size}_R{config.axial_neighbors + config.axial_slice_shift}"
    return run / MODEL_DIR / "cache" / name


def prepare_inputs(task: Task, placed: pd.DataFrame, root: Path, run: Path, config: LocalizerConfig,
                   progress: bool = True) -> tuple[np.ndarray, np.ndarray, list[str]]:  # fmt: skip
    """Model inputs and targets of every training sample of a task (decoded once, then cached).

    Returns:
        inputs (N, C, S, S) float16, targets (N, K, 3) float32 (NaN = unlabelled), and one line per
        series that could not be read (those samples are left out).
    """
    samples = sagittal_samples(task, placed) if task.plane == "sagittal" else axial_samples(task, placed)
    folder = cache_dir(run, task, config)
    radius = config.axial_neighbors + config.axial_slice_shift
    series_cache: dict[tuple[int, int], Series] = {}

    def build(s) -> np.ndarray:
        key = (s.study_id, s.series_id)
        if key not in series_cache:
            series_cache.clear()  # samples are sorted by study: keep one series' headers at a time
            series_cache[key] = read_series(series_dir(root, "train", *key), skip_unreadable=True)
        stack = series_cache[key].stacks[s.stack_index]
        if task.plane == "sagittal":
            return sagittal_input(stack, config.size, config.slices)
        return axial_input(stack, s.slice_index, radius, config.size)

    inputs, targets, problems = [], [], []
    for s in tqdm(samples, desc=f"inputs {task.name}", unit="sample", disable=not progress):
        try:
            arr = cached_array(folder / f"{s.key}.npy", partial(build, s))
        except (DicomReadError, IndexError) as e:
            problems.append(f"study {s.study_id} series {s.series_id}: {e}")
            continue
        inputs.append(arr)
        targets.append(s.points)
    if not inputs:
        return np.zeros((0,)), np.zeros((0,)), problems
    return np.stack(inputs).astype(np.float16), np.stack(targets).astype(np.float32), problems


def _batch_inputs(task: Task, inputs: np.ndarray, idx: np.ndarray, config: LocalizerConfig,
                  rng: np.random.Generator, train: bool) -> np.ndarray:  # fmt: skip
    """The network input of a batch; axial samples take their window of 2n+1 slices (shifted in training)."""
    batch = inputs[idx]
    if task.plane == "sagittal":
        return batch
    width = 2 * config.axial_neighbors + 1
    shift = config.axial_slice_shift
    offsets = rng.integers(0, 2 * shift + 1, len(idx)) if train else np.full(len(idx), shift)
    return np.stack([b[o : o + width] for b, o in zip(batch, offsets)])


def fit_task(task: Task, inputs: np.ndarray, targets: np.ndarray, config: LocalizerConfig,
             device: torch.device, progress: bool = True) -> tuple[HeatmapNet, list[float]]:  # fmt: skip
    """Train one task's model with AdamW and a one-cycle schedule; returns it and the mean loss per epoch."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    model = build_model(task, config, config.pretrained_path or None).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = int(np.ceil(len(inputs) / config.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps * config.epochs,
                                                pct_start=0.15)  # fmt: skip
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    history = []
    bar = tqdm(total=steps * config.epochs, desc=f"train {task.name}", unit="step", disable=not progress)
    model.train()
    for epoch in range(config.epochs):
        order = rng.permutation(len(inputs))
        losses = []
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            x = torch.from_numpy(_batch_inputs(task, inputs, idx, config, rng, True)).to(device).float()
            y = torch.from_numpy(targets[idx]).to(device)
            if config.augment:
                x, y = random_mirror(x, y, gen, task.plane, task.mirror)
                x, y = random_affine(x, y, gen, config.max_scale, config.max_rotate_deg, config.max_shift)
                x = random_intensity(x, gen)
            with autocast(device, use_amp):
                logits = model(x)
            loss = heatmap_loss(logits, y, config.sigma_px, config.sigma_slices)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{np.mean(losses):.3f}")
        history.append(float(np.mean(losses)))
    bar.close()
    model.eval()
    return model, history


def _save_state(model: torch.nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(path)


def train_localizer(config: LocalizerConfig, data_dir: str | os.PathLike | None, coords: str | os.PathLike | pd.DataFrame,
                    run: str | os.PathLike, index: pd.DataFrame | None = None, progress: bool = True) -> dict:  # fmt: skip
    """Train every task of `config.tasks` and write checkpoints and the manifest into `run`.

    Args:
        config: the settings.
        data_dir: competition-layout data folder (train split).
        coords: `train_label_coordinates.csv` (path or loaded table).
        run: run folder (created).
        index: header index of the train split; built (headers only) when not given.
        progress: tqdm bars.

    Returns:
        The localizer's manifest entry (also written to RUN/manifest.json under "localizer"). A task without any training sample is skipped
        and listed under "skipped".
    """
    t0 = time.perf_counter()
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    root = data_root(data_dir, must_exist=True)
    table = coords if isinstance(coords, pd.DataFrame) else load_coordinates(coords)
    studies = sorted(table["study_id"].unique())
    if config.max_studies:
        studies = studies[: config.max_studies]
    if index is None:
        index = load_or_build_index(root, "train", workers=config.workers, studies=studies)
    else:
        index = index[index["study_id"].isin(studies)]
    placed = placed_coordinates(table[table["study_id"].isin(studies)], index)
    device = resolve_device(config.device)
    manifest = {
        "kind": "lumbar-localizer",
        "backbone": config.backbone,
        "size": config.size,
        "slices": config.slices,
        "axial_neighbors": config.axial_neighbors,
        "config": config.to_dict(),
        "train_studies": int(placed["study_id"].nunique()),
        "device": str(device),
        "models": {},
        "skipped": {},
        "problems": [],
    }
    for name in config.task_names:
        task = get_task(name)
        t_task = time.perf_counter()
        inputs, targets, problems = prepare_inputs(task, placed, root, run, config, progress)
        manifest["problems"] += problems
        if len(inputs) == 0:
            manifest["skipped"][name] = "no training samples"
            log.warning("localizer task %s: no training samples, skipped", name)
            continue
        model, history = fit_task(task, inputs, targets, config, device, progress)
        checkpoint = Path(MODEL_DIR) / f"{name}.pt"
        _save_state(model, run / checkpoint)
        manifest["models"][name] = {
            "checkpoint": checkpoint.as_posix(),
            "series_description": task.series_description,
            "points": [list(p) for p in task.points],
            "samples": len(inputs),
            "loss_per_epoch": [round(v, 5) for v in history],
            "seconds": round(time.perf_counter() - t_task, 1),
        }
    manifest["seconds"] = round(time.perf_counter() - t0, 1)
    update_manifest(run, MANIFEST_KEY, manifest)
    return manifest


def cli_train_localizer(args: argparse.Namespace) -> int:
    """`python -m lumbar train-localizer`."""
    overrides = parse_assignments(args.set)
    for name in ("epochs", "size", "slices", "backbone", "batch_size", "lr", "device", "pretrained", "seed",
                 "tasks", "max_studies", "workers"):  # fmt: skip
        value = getattr(args, name, None)
        if value is not None:
            overrides["pretrained_path" if name == "pretrained" else name] = value
    config = LocalizerConfig().with_overrides(overrides)
    index = pd.read_parquet(args.index) if args.index else None
    manifest = train_localizer(config, args.data_dir, args.coords, args.run, index=index)
    for name, m in manifest["models"].items():
        print(f"train-localizer: {name}: {m['samples']} samples, loss {m['loss_per_epoch'][0]:.3f} -> "
              f"{m['loss_per_epoch'][-1]:.3f}, {m['seconds']:.0f} s")  # fmt: skip
    for name, why in manifest["skipped"].items():
        print(f"train-localizer: {name} skipped ({why})")
    for line in manifest["problems"][:10]:
        print(f"train-localizer: left out {line}")
    print(f"train-localizer: {manifest['train_studies']} studies, {manifest['seconds']:.0f} s on "
          f"{manifest['device']}; wrote {manifest_path(args.run)} ({MANIFEST_KEY})")  # fmt: skip
    return 0
