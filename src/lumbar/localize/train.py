"""Train the localizer models from `train_label_coordinates.csv` and the header index.

`train_localizer(config, data_dir, coords, run)` trains, for each task of `config.tasks`
(`lumbar.localize.tasks`), one `HeatmapNet`, then for each task of `config.refine_tasks` a slice scorer
(`lumbar.localize.slice_refine`), and writes into the run folder:

    RUN/manifest.json "localizer"   backbone, size, slices, per-model checkpoint, points, config
                                    (`lumbar.core.run_contract.LocalizerRecord`)
    RUN/localizer/<model>.pt        state dict (load with torch.load(..., weights_only=True))
    RUN/localizer/cache/<inputs>/   the model inputs as float16 .npy, named after their parameters
    RUN/localizer/tensorboard/      with `config.tensorboard`: each model's loss and learning rate per epoch

so `lumbar.localize.predict` needs only the run path. Inputs are decoded once (only the slices a model
needs) and cached; epochs read the cache into memory.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from lumbar.core.checkpoint import save_model
from lumbar.core.encoders import NONE
from lumbar.core.fallback import MAX_FALLBACK_SHARE, check_fallbacks
from lumbar.core.manifest import manifest_path
from lumbar.core.paths import data_root, series_dir
from lumbar.core.run_contract import LocalizerModelRecord, LocalizerRecord, save_record
from lumbar.core.runtime import Runtime, seed_everything, setup_runtime, teardown_runtime
from lumbar.core.settings import command_settings, given_flags
from lumbar.core.tables import load_coordinates
from lumbar.data.dicom import DicomReadError, Series, Stack, read_series
from lumbar.data.index import load_or_build_index
from lumbar.localize.augment import random_affine, random_depth_affine, random_intensity, random_mirror
from lumbar.localize.axial import foramina_halfspan_mm, foramina_offset_mm
from lumbar.localize.config import LocalizerConfig
from lumbar.localize.fit import fit
from lumbar.localize.heatmap import HeatmapNet, heatmap_loss
from lumbar.localize.slice_refine import CropGeometry, SliceScorer, draw_batch, scorer_loss, training_crops
from lumbar.localize.tasks import Task, axial_samples, get_task, placed_coordinates, sagittal_samples
from lumbar.localize.volumes import axial_input, cached_array, normalize_intensity, sagittal_input

log = logging.getLogger(__name__)

MODEL_DIR = "localizer"
#: TensorBoard curves of every model (`LocalizerConfig.tensorboard`):
#: `RUN/localizer/tensorboard/[<member>/]<model>`.
TENSORBOARD_DIR = "tensorboard"


def holdout_split(study_ids, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split study ids into (train, held out), a `fraction` held out at random (at least one when > 0).

    Args:
        study_ids: the studies.
        fraction: share held out, in [0, 1).
        seed: the draw.

    Returns:
        Two sorted arrays of study ids.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    ids = np.unique(np.asarray(list(study_ids), dtype=np.int64))
    n_out = 0 if fraction == 0 else max(1, round(fraction * len(ids)))
    if n_out >= len(ids):
        raise ValueError(f"holding out {n_out} of {len(ids)} studies leaves none to train on")
    out = np.random.default_rng(seed).choice(ids, size=n_out, replace=False)
    return np.setdiff1d(ids, out), np.sort(out)


def build_model(task: Task, config: LocalizerConfig, pretrained: str = NONE) -> HeatmapNet:
    """The heatmap network of a task under a config: the same call at training and at inference.

    Inference keeps `pretrained` none: the run's checkpoint replaces the weights.
    """
    if task.plane == "sagittal":
        in_chans, depth_bins = config.slices, config.slices
    else:
        in_chans, depth_bins = 2 * config.axial_neighbors + 1, 1
    return HeatmapNet(
        config.backbone,
        in_chans,
        len(task.points),
        depth_bins,
        config.decoder_channels,
        config.out_stride,
        pretrained=pretrained,
        normalize=config.normalize_inputs,
    )


def build_scorer(config: LocalizerConfig, pretrained: str = NONE) -> SliceScorer:
    """The slice scorer under a config (`pretrained` as for `build_model`)."""
    return SliceScorer(
        config.refine_backbone or config.backbone, pretrained=pretrained, normalize=config.normalize_inputs
    )


def crop_geometry(config: LocalizerConfig) -> CropGeometry:
    return CropGeometry(config.refine_crop_mm, config.refine_size, config.refine_jitter_mm)


def cache_dir(run: Path, task: Task, config: LocalizerConfig, kind: str = "heatmap") -> Path:
    """Cache folder of a model's inputs, named after every parameter that shapes them."""
    if kind == "slices":
        g = crop_geometry(config)
        name = f"{task.name}_slices_{g.width_mm:g}mm_{g.size}px_J{g.jitter_mm:g}mm"
    elif task.plane == "sagittal":
        name = f"{task.name}_{config.size}x{config.size}_{config.slices}D"
    else:
        name = f"{task.name}_{config.size}x{config.size}_R{config.axial_neighbors + config.axial_slice_shift}"
    return run / MODEL_DIR / "cache" / name


class _StackReader:
    """Reads stacks of the train split, keeping the last series' headers and the last stack's pixels."""

    def __init__(self, root: Path):
        self.root = root
        self._series: tuple[tuple[int, int], Series] | None = None
        self._pixels: tuple[tuple[int, int, int], np.ndarray, tuple[float, float]] | None = None

    def stack(self, study_id: int, series_id: int, stack_index: int) -> Stack:
        key = (study_id, series_id)
        if self._series is None or self._series[0] != key:
            self._series = (key, read_series(series_dir(self.root, "train", *key), skip_unreadable=True))
        return self._series[1].stack(stack_index)

    def normalized(
        self, study_id: int, series_id: int, stack_index: int
    ) -> tuple[np.ndarray, tuple[float, float]]:
        """The whole stack, intensity-normalised, and its pixel spacing (rows, columns) in mm."""
        key = (study_id, series_id, stack_index)
        if self._pixels is None or self._pixels[0] != key:
            volume = self.stack(*key).load()
            spacing = tuple(float(v) for v in np.median(volume.spacings, axis=0))
            self._pixels = (key, normalize_intensity(volume.pixels), spacing)
        return self._pixels[1], self._pixels[2]


def prepare_inputs(
    task: Task, placed: pd.DataFrame, root: Path, run: Path, config: LocalizerConfig, progress: bool = True
) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """Heatmap-model inputs and targets of every training sample of a task (decoded once, then cached).

    Returns:
        inputs (N, C, S, S) float16, targets (N, K, 3) float32 (NaN = unlabelled), and each sample whose
        series could not be read (left out) -> why.
    """
    samples = sagittal_samples(task, placed) if task.plane == "sagittal" else axial_samples(task, placed)
    folder = cache_dir(run, task, config)
    radius = config.axial_neighbors + config.axial_slice_shift
    reader = _StackReader(root)
    inputs, targets, problems = [], [], {}
    for s in tqdm(samples, desc=f"inputs {task.name}", unit="sample", disable=not progress):
        try:
            if task.plane == "sagittal":
                arr = cached_array(
                    folder / f"{s.key}.npy",
                    lambda s=s: sagittal_input(
                        reader.normalized(s.study_id, s.series_id, s.stack_index)[0],
                        config.size,
                        config.slices,
                    ),
                )
            else:
                arr = cached_array(
                    folder / f"{s.key}.npy",
                    lambda s=s: axial_input(
                        reader.stack(s.study_id, s.series_id, s.stack_index),
                        s.slice_index,
                        radius,
                        config.size,
                    ),
                )
        except DicomReadError as e:
            problems[f"study {s.study_id} series {s.series_id}"] = str(e)
            continue
        inputs.append(arr)
        targets.append(s.points)
    if not inputs:
        return np.zeros((0,)), np.zeros((0,)), problems
    return np.stack(inputs).astype(np.float16), np.stack(targets).astype(np.float32), problems


def prepare_slice_crops(
    task: Task, placed: pd.DataFrame, root: Path, run: Path, config: LocalizerConfig, progress: bool = True
) -> tuple[list[np.ndarray], np.ndarray, dict[str, str]]:
    """Slice-scorer training data of a sagittal task: per labelled point, crops of every slice of its stack
    around the true point (with jitter margin), and the true slice index. Cached like the inputs."""
    folder = cache_dir(run, task, config, "slices")
    geometry = crop_geometry(config)
    reader = _StackReader(root)
    crops, truth, problems = [], [], {}
    for s in tqdm(
        sagittal_samples(task, placed), desc=f"crops {task.name}", unit="stack", disable=not progress
    ):
        labelled = [k for k in range(len(task.points)) if not np.isnan(s.points[k, 0])]
        try:
            shape = reader.stack(s.study_id, s.series_id, s.stack_index).shape
            n = len(reader.stack(s.study_id, s.series_id, s.stack_index))
            for k in labelled:
                u, v, z = s.points[k]
                point = pd.DataFrame({"x": [u * shape[1] - 0.5], "y": [v * shape[0] - 0.5]})

                def build(point=point, s=s):
                    pixels, spacing = reader.normalized(s.study_id, s.series_id, s.stack_index)
                    return training_crops(pixels, spacing, point, geometry)[0]

                crops.append(cached_array(folder / f"{s.key}_{k}.npy", build))
                truth.append(round(float(z) * (n - 1)) if n > 1 else 0)
        except DicomReadError as e:
            problems[f"study {s.study_id} series {s.series_id}"] = str(e)
    return crops, np.asarray(truth, dtype=int), problems


def _heatmap_batches(
    task: Task, inputs: np.ndarray, targets: np.ndarray, config: LocalizerConfig, device: torch.device
):
    """The batch function of a heatmap model: inputs (axial: a shifted slice window) and augmentation."""
    width, shift = 2 * config.axial_neighbors + 1, config.axial_slice_shift

    def batch(idx: np.ndarray, rng: np.random.Generator, gen: torch.Generator):
        arr = inputs[idx]
        if task.plane == "axial":
            offsets = rng.integers(0, 2 * shift + 1, len(idx))
            arr = np.stack([a[o : o + width] for a, o in zip(arr, offsets)])
        x = torch.from_numpy(arr).to(device).float()
        y = torch.from_numpy(targets[idx]).to(device)
        if config.augment:
            x, y = random_mirror(x, y, gen, task.plane, task.mirror)
            x, y = random_affine(x, y, gen, config.max_scale, config.max_rotate_deg, config.max_shift)
            if task.plane == "sagittal":
                x, y = random_depth_affine(x, y, gen, config.max_depth_scale, config.max_depth_shift)
            x = random_intensity(x, gen, config.contrast == "wide")
        return x, y

    return batch


def _scorer_batches(
    crops: list[np.ndarray], truth: np.ndarray, config: LocalizerConfig, device: torch.device
):
    """The batch function of the slice scorer: candidate windows, jitter, mirror, intensity."""
    geometry = crop_geometry(config)

    def batch(idx: np.ndarray, rng: np.random.Generator, gen: torch.Generator):
        x, y = draw_batch(crops, truth, idx, config.refine_window, geometry, rng, config.augment)
        x = torch.from_numpy(x).to(device)
        if config.augment:
            x = random_intensity(x, gen, config.contrast == "wide")
        return x, torch.from_numpy(y).to(device)

    return batch


def _heatmap_loss(out: torch.Tensor, y: torch.Tensor, config: LocalizerConfig) -> torch.Tensor:
    return heatmap_loss(out, y, config.sigma_px, config.sigma_slices)


def train_localizer(
    config: LocalizerConfig,
    data_dir: str | os.PathLike | None,
    coords: str | os.PathLike | pd.DataFrame,
    run: str | os.PathLike,
    index: pd.DataFrame | None = None,
    progress: bool = True,
    member: str | None = None,
) -> dict:
    """Train every model of the config and write checkpoints and the manifest into `run`.

    Args:
        config: the settings.
        data_dir: competition-layout data folder (train split).
        coords: `train_label_coordinates.csv` (path or loaded table).
        run: run folder (created).
        index: header index of the train split; built (headers only) when not given.
        progress: tqdm bars.
        member: one of several localizers of the run (`lumbar.localize.folds`: "fold0", ...): its checkpoints
            go to `localizer/<member>/` and the caller records the entry; the input caches are shared.

    Returns:
        The localizer's manifest entry (written to RUN/manifest.json under "localizer" unless `member`). A
        model without any training sample is skipped and listed under "skipped".
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
    runtime = setup_runtime(config.device, amp=config.amp, channels_last=False, threads=config.threads)
    try:
        record = _train_all(_Training(config, placed, root, run, runtime, progress, member), t0)
    finally:
        teardown_runtime(runtime)
    record.foramina_offset_mm = foramina_offset_mm(placed, index)  # the axial anchors (localize.axial)
    record.foramina_halfspan_mm = foramina_halfspan_mm(placed, index)  # foramina without Sagittal T1
    if member is None:
        save_record(run, record)
    return record.to_dict()


def prepare_all(
    config: LocalizerConfig,
    data_dir: str | os.PathLike | None,
    coords: pd.DataFrame,
    run: str | os.PathLike,
    index: pd.DataFrame,
    progress: bool = True,
) -> None:
    """Decode and cache the inputs of every model of the config for all of `coords`' studies, once, so that
    several localizers of one run (the folds) read them instead of decoding them each (or racing to)."""
    root, run = data_root(data_dir, must_exist=True), Path(run)
    placed = placed_coordinates(coords, index[index["study_id"].isin(coords["study_id"].unique())])
    for name in config.task_names:
        inputs, _, problems = prepare_inputs(get_task(name), placed, root, run, config, progress)
        check_fallbacks(problems, len(inputs) + len(problems), MAX_FALLBACK_SHARE, f"{name} samples")
    for name in config.refine_task_names:
        crops, _, problems = prepare_slice_crops(get_task(name), placed, root, run, config, progress)
        check_fallbacks(
            problems, len(crops) + len(problems), MAX_FALLBACK_SHARE, f"{name} slice-scorer stacks"
        )


@dataclass(frozen=True)
class _Training:
    """What every model of one localizer is trained with: its samples, where it writes, how it runs."""

    config: LocalizerConfig
    placed: pd.DataFrame
    root: Path
    run: Path
    runtime: Runtime
    progress: bool
    member: str | None

    @property
    def _member(self) -> list[str]:
        """The member's name as a part of paths and labels: none for a run's only localizer."""
        return [self.member] if self.member else []

    def label(self, name: str) -> str:
        """The model in the epoch lines: "localizer fold0 sag_t2"."""
        return " ".join([MODEL_DIR, *self._member, name])

    def board(self, name: str) -> Path:
        """Its TensorBoard curves (with `config.tensorboard`)."""
        return Path(self.run, MODEL_DIR, TENSORBOARD_DIR, *self._member, name)

    def checkpoint(self, name: str) -> Path:
        """Its checkpoint, relative to the run (as the manifest records it)."""
        return Path(MODEL_DIR, *self._member, f"{name}.pt")


def _train_all(training: _Training, t0: float) -> LocalizerRecord:
    """Train the heatmap models, then the slice scorers; write checkpoints and the manifest entry."""
    manifest = _new_record(training)
    for name in training.config.task_names:
        _train_heatmap(training, manifest, name)
    for name in training.config.refine_task_names:
        _train_scorer(training, manifest, name)
    manifest.seconds = round(time.perf_counter() - t0, 1)
    return manifest


def _new_record(training: _Training) -> LocalizerRecord:
    """The localizer's manifest entry before any model: what the models are built and run with, so that
    `lumbar.localize.predict` rebuilds them from the run alone."""
    config, runtime = training.config, training.runtime
    return LocalizerRecord(
        kind=LocalizerRecord.ONE,
        precision=runtime.precision,
        backbone=config.backbone,
        size=config.size,
        slices=config.slices,
        axial_neighbors=config.axial_neighbors,
        config=config.to_dict(),
        train_studies=int(training.placed["study_id"].nunique()),
        device=str(runtime.device),
        models={},
        skipped={},
        problems=[],
    )


def _train_heatmap(training: _Training, manifest: LocalizerRecord, name: str) -> None:
    """One task's heatmap model, recorded in `manifest` (or listed as skipped when it has no sample)."""
    config, device = training.config, training.runtime.device
    task, started = get_task(name), time.perf_counter()
    inputs, targets, problems = prepare_inputs(
        task, training.placed, training.root, training.run, config, training.progress
    )
    _record_problems(manifest, problems, len(inputs), f"{name} samples")
    if len(inputs) == 0:
        manifest.skipped[name] = "no training samples"
        log.warning("localizer model %s: no training samples, skipped", name)
        return
    seed_everything(config.seed, deterministic=device.type == "cpu")  # initial weights too: reruns agree
    model = build_model(task, config, config.pretrained).to(device)
    batch = _heatmap_batches(task, inputs, targets, config, device)
    history = fit(
        model,
        len(inputs),
        batch,
        partial(_heatmap_loss, config=config),
        config.epochs_of(task.plane),
        config,
        training.runtime,
        training.label(name),
        training.progress,
        training.board(name),
    )
    entry = LocalizerModelRecord(
        kind=LocalizerModelRecord.HEATMAP,
        points=[list(p) for p in task.points],
        series_description=task.series_description,
        samples=len(inputs),
    )
    _save_trained(training, manifest, name, model, entry, history, started)


def _train_scorer(training: _Training, manifest: LocalizerRecord, name: str) -> None:
    """The slice scorer of a sagittal task, recorded in `manifest` (or listed as skipped when it has no
    sample)."""
    config, device = training.config, training.runtime.device
    task, started = get_task(name), time.perf_counter()
    if task.plane != "sagittal":
        raise ValueError(f"refine_tasks: slice refinement is for sagittal tasks, not {name!r}")
    crops, truth, problems = prepare_slice_crops(
        task, training.placed, training.root, training.run, config, training.progress
    )
    _record_problems(manifest, problems, len(crops), f"{name} slice-scorer stacks")
    scorer_name = f"{name}_slices"
    if not crops:
        manifest.skipped[scorer_name] = "no training samples"
        return
    seed_everything(config.seed, deterministic=device.type == "cpu")
    model = build_scorer(config, config.pretrained).to(device)
    batch = _scorer_batches(crops, truth, config, device)
    history = fit(
        model,
        len(crops),
        batch,
        scorer_loss,
        config.refine_epochs or config.epochs,
        config,
        training.runtime,
        training.label(scorer_name),
        training.progress,
        training.board(scorer_name),
    )
    entry = LocalizerModelRecord(kind=LocalizerModelRecord.SLICE_SCORER, refines=name, samples=len(crops))
    _save_trained(training, manifest, scorer_name, model, entry, history, started)


def _save_trained(
    training: _Training,
    manifest: LocalizerRecord,
    name: str,
    model: torch.nn.Module,
    entry: LocalizerModelRecord,
    history: list[float],
    started: float,
) -> None:
    """Write a trained model's checkpoint and record it, with its losses and training time, in `manifest`."""
    checkpoint = training.checkpoint(name)
    save_model(model, training.run / checkpoint)
    manifest.models[name] = entry.copy(
        checkpoint=checkpoint.as_posix(),
        loss_per_epoch=[round(v, 5) for v in history],
        seconds=round(time.perf_counter() - started, 1),
    )


def _record_problems(manifest: LocalizerRecord, problems: dict[str, str], kept: int, what: str) -> None:
    """Note the samples left out in the manifest; too many (`MAX_FALLBACK_SHARE`) fail the training."""
    manifest.problems += [f"{key}: {why}" for key, why in problems.items()]
    check_fallbacks(problems, kept + len(problems), MAX_FALLBACK_SHARE, what)


#: The flags of `train-localizer` that set a `LocalizerConfig` field of the same name (None = not given).
FLAG_FIELDS = (
    "epochs",
    "size",
    "slices",
    "backbone",
    "batch_size",
    "lr",
    "device",
    "pretrained",
    "seed",
    "tasks",
    "max_studies",
    "workers",
    "threads",
)


def config_from_args(args: argparse.Namespace) -> LocalizerConfig:
    """The `LocalizerConfig` of a parsed `train-localizer` command line: defaults < flags < `--set`."""
    return command_settings(LocalizerConfig(), given_flags(args, FLAG_FIELDS), args.set)


def cli_train_localizer(args: argparse.Namespace) -> int:
    """`python -m lumbar train-localizer`."""
    config = config_from_args(args)
    index = pd.read_parquet(args.index) if args.index else None
    manifest = LocalizerRecord.from_dict(
        train_localizer(config, args.data_dir, args.coords, args.run, index=index)
    )
    for name, m in manifest.models.items():
        print(
            f"train-localizer: {name}: {m.samples} samples, loss {m.loss_per_epoch[0]:.3f} -> "
            f"{m.loss_per_epoch[-1]:.3f}, {m.seconds:.0f} s"
        )
    for name, why in manifest.skipped.items():
        print(f"train-localizer: {name} skipped ({why})")
    for line in manifest.problems[:10]:
        print(f"train-localizer: left out {line}")
    print(
        f"train-localizer: {manifest.train_studies} studies, {manifest.seconds:.0f} s on "
        f"{manifest.device}; wrote {manifest_path(args.run)} ({LocalizerRecord.SECTION})"
    )
    return 0
