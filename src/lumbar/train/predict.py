"""Running trained models over a cache: batched prediction (validation, OOF, inference) and the submission
table.

`RunPredictor(run_dir)` is the inference entry point of later stages: it reads a training run's `config.json`
and `result.json`, builds every unit's model once per fold from the checkpoint `result.json` names (`final.pt`
or `best.pt`, by the run's `select`) and keeps them; `predict(cache_dir)` averages the folds' probabilities
and returns the submission table (`predict_cache` does both for one cache); each unit predicts with the
test-time augmentation its out-of-fold rows chose (`result.json`, `lumbar.train.tta`). In competition mode
every study of the cache gets all 25 rows: a target without a crop (no coordinate, unreadable series) gets the
class prior of the training labels, and `predict_cache` says how many rows that was.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

import lumbar.models
from lumbar.core.checkpoint import load_checkpoint
from lumbar.core.constants import GRADES
from lumbar.core.encoders import gray_stats
from lumbar.core.runtime import RunningMean, Runtime, setup_runtime, teardown_runtime
from lumbar.core.tables import SUBMISSION_COLUMNS, submission_row_ids, table_row_ids
from lumbar.scoring.baselines import class_priors, prior_rows
from lumbar.train.config import TrainConfig
from lumbar.train.dataset import RoiDataset, read_cache
from lumbar.train.tasks import build_tasks
from lumbar.train.tta import tta_views

RESULT_JSON = "result.json"
CONFIG_JSON = "config.json"


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP or EMA wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def input_normalization(model: nn.Module) -> tuple[float, float] | None:
    """Scalar (mean, std) from a backbone's pretrained config (timm), averaged over its RGB channels; None if
    absent.

    Crops are single-channel intensities in [0, 1]; a pretrained 2D stem expects its own normalisation
    (`lumbar.core.encoders.gray_stats`). Training and prediction both go through `batch_to_device`.
    """
    inner = unwrap(model)
    mean, std = getattr(inner, "mean", None), getattr(inner, "std", None)
    if mean is None or std is None:
        return None
    return gray_stats(mean, std)


def batch_to_device(
    batch: dict[str, Any], runtime: Runtime, model: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image (normalised, channels-last where the model is 3D and runs channels-last here) and meta on the
    device."""
    x = batch["image"].to(runtime.device, non_blocking=True)
    norm = input_normalization(model)
    if norm is not None:
        x = (x - norm[0]) / norm[1]
    if runtime.memory_format(model) == torch.channels_last_3d:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x, batch["meta"].to(runtime.device, non_blocking=True)


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    loader: Iterable[dict[str, Any]],
    runtime: Runtime,
    num_targets: int,
    num_classes: int,
    loss_fn=None,
    class_weights: Iterable[float] | None = None,
    max_batches: int = 0,
    tta: Sequence[Callable[[torch.Tensor], torch.Tensor]] = (),
) -> tuple[np.ndarray, np.ndarray, float]:
    """Class probabilities of every item of a loader, gathered over DDP ranks.

    Args:
        model: the model (evaluated in eval mode).
        loader: yields batches of dataset samples (with `index`), a DataLoader or a list of its batches; under
            DDP each rank holds a shard.
        runtime: device, AMP and ranks.
        num_targets, num_classes: the task's output shape.
        loss_fn, class_weights: when given, also the weighted loss over labelled targets.
        max_batches: stop after this many batches (0 = all).
        tta: test-time views of the image batch (`lumbar.train.tta.tta_views`); the probabilities are the mean
            of their softmax (the loss is of that mean). Empty or one view: one pass, as without TTA.

    Returns:
        (indices (N,), probabilities (N, num_targets, num_classes), weighted loss or NaN), sorted by index.
    """
    model.eval()
    weights = torch.as_tensor(list(class_weights or (1.0, 2.0, 4.0)), device=runtime.device)
    indices, probs = [], []
    loss_sum, weight_sum = RunningMean(runtime.device), RunningMean(runtime.device)  # read once, at the end
    for b, batch in enumerate(loader):
        if max_batches and b >= max_batches:
            break
        x, meta = batch_to_device(batch, runtime, model)
        with runtime.autocast():
            if len(tta) > 1:
                p = sum(
                    torch.softmax(model(v(x), meta).float().reshape(len(x), num_targets, num_classes), dim=-1)
                    for v in tta
                ) / len(tta)
                logits = torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))  # softmax(log p) = p
            else:
                x = tta[0](x) if tta else x
                logits = model(x, meta).float().reshape(len(x), num_targets, num_classes)
        if loss_fn is not None:
            target = batch["target"].to(runtime.device, non_blocking=True)
            grade = batch["grade"].to(runtime.device, non_blocking=True)
            w = weights[grade.clamp_min(0)] * (target >= 0)
            w_sum = w.sum().to(loss_sum.dtype)
            loss_sum.add(loss_fn(logits, target, w).to(loss_sum.dtype) * w_sum, 1)
            weight_sum.add(w_sum, 1)
        probs.append(torch.softmax(logits, dim=-1))  # stays on the device until the loop ends
        indices.append(batch["index"].numpy())
    shard = (
        np.concatenate(indices) if indices else np.zeros(0, np.int64),
        torch.cat(probs).cpu().numpy() if probs else np.zeros((0, num_targets, num_classes), np.float32),
        loss_sum.sum(),
        weight_sum.sum(),
    )
    parts = runtime.all_gather(shard)
    idx = np.concatenate([p[0] for p in parts])
    prob = np.concatenate([p[1] for p in parts])
    total_w = sum(p[3] for p in parts)
    loss = sum(p[2] for p in parts) / total_w if total_w > 0 else float("nan")
    idx, first = np.unique(idx, return_index=True)  # DistributedSampler pads shards with repeats
    return idx, prob[first], loss


def eval_loader(dataset, batch_size: int, workers: int, runtime: Runtime) -> DataLoader:
    """In-order loader; sharded over ranks under DDP. It draws its workers' seed from a generator of its own,
    not
    from torch's global one, so validating (or not, `val_every`) leaves the training that follows as it
    was."""
    sampler = (
        DistributedSampler(dataset, runtime.world_size, runtime.rank, shuffle=False)
        if runtime.distributed
        else None
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=workers,
        pin_memory=runtime.device.type == "cuda",
        generator=torch.Generator().manual_seed(0),
    )


def grade_prior(labels: pd.DataFrame) -> pd.DataFrame:
    """Grade frequencies per condition x level, add-one smoothed so every cell exists (fallback
    predictions)."""
    return class_priors(labels, smoothing=1.0)


def to_submission(
    table: pd.DataFrame, study_ids: Iterable[int] | None = None, prior: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, int]:
    """Prediction rows (long table) -> the submission table.

    Args:
        table: `study_id, condition, level, normal_mild, moderate, severe` (one row per predicted target).
        study_ids: when given with `prior`, every one of these studies gets all 25 rows, the missing ones
            from `prior` (`grade_prior`).
        prior: the fallback grade frequencies.

    Returns:
        (submission table in sample_submission order, number of rows filled from the prior).
    """
    sub = pd.DataFrame({"row_id": table_row_ids(table).to_numpy()})
    probs = table[list(GRADES)].to_numpy(dtype=np.float64)
    sub[list(GRADES)] = probs / probs.sum(axis=1, keepdims=True)
    filled = 0
    if study_ids is not None and prior is not None:
        wanted = pd.Index(submission_row_ids(study_ids))
        missing = wanted.difference(pd.Index(sub["row_id"]))
        if len(missing):
            sub = pd.concat([sub, prior_rows(prior, missing)])
            filled = len(missing)
    sub = sub.sort_values("row_id", kind="stable").reset_index(drop=True)
    return sub[SUBMISSION_COLUMNS], filled


def read_run(run_dir: str | Path) -> tuple[Any, dict[str, Any]]:
    """The config and result of a finished training run folder."""

    run_dir = Path(run_dir)
    for name in (CONFIG_JSON, RESULT_JSON):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir / name}: not found; is {run_dir} a finished training run?")
    return TrainConfig.load(run_dir / CONFIG_JSON), json.loads((run_dir / RESULT_JSON).read_text())


class RunPredictor:
    """A training run's fold models, each built and loaded once, predicting any number of ROI caches.

    Building a model and reading its checkpoint cost as much as predicting a chunk of studies, so inference
    (`lumbar.inference.predict`) keeps one `RunPredictor` per classifier for the whole run and streams its
    chunks through it: the models stay on the device between chunks (`parameter_bytes` says how much they
    hold).

    Args:
        run_dir: a training run folder (`train(...).run_dir`).
        device: "auto", "cpu" or "cuda".
        batch_size: 0 = the run's batch size.
        workers: DataLoader workers.
        threads: torch CPU threads while the predictor is open (0 = torch's default; restored by `close`).
        max_folds: use only the first this many folds of each unit, in fold order (0 = all): the ensemble cap.
    """

    def __init__(
        self,
        run_dir: str | Path,
        device: str = "auto",
        batch_size: int = 0,
        workers: int = 0,
        threads: int = 0,
        max_folds: int = 0,
    ) -> None:

        self.run_dir = Path(run_dir)
        self.config, self.result = read_run(self.run_dir)
        self.batch_size, self.workers = batch_size or self.config.batch_size, workers
        self.runtime = setup_runtime(
            device, amp=self.config.amp, channels_last=self.config.channels_last, threads=threads
        )
        self.units: list[tuple[Any, list[nn.Module]]] = []
        self.tta: dict[
            str, tuple[str, ...]
        ] = {}  # unit -> the TTA set its OOF rows chose (`lumbar.train.tta`)
        self.forward_seconds = 0.0  # in the model passes (the crops are read before, once per unit)
        self.depths: dict[str, int] = {}  # unit -> the depth its models were trained on
        try:
            for task in build_tasks(
                self.config.mode, self.config.conditions, self.config.mirror_right, self.config.views
            ):
                unit = self.result["units"].get(task.name)
                if unit is None or not unit["checkpoints"]:
                    continue
                folds = sorted(unit["checkpoints"], key=int)[: max_folds or None]
                depth = unit.get("depth", self.result["model"]["depth"])
                self.units.append((task, [self._load(task, unit["checkpoints"][f], depth) for f in folds]))
                self.depths[task.name] = depth
                self.tta[task.name] = tuple(unit.get("tta", ()))
        except BaseException:
            self.close()
            raise

    def _load(self, task, path: str, depth: int) -> nn.Module:
        model = lumbar.models.build_model(
            **{**self.result["model"], "depth": depth}, **unit_sizes(task, self.config.fusion)
        )
        model.load_state_dict(load_checkpoint(self.run_dir / path))
        model.to(self.runtime.device)
        memory_format = self.runtime.memory_format(model)
        return model.to(memory_format=memory_format) if memory_format is not None else model

    def limit_folds(self, k: int) -> None:
        """Keep only the first `k` fold models of every unit (0: none), releasing the others."""
        self.units = [(task, models[:k]) for task, models in self.units if k > 0]

    @property
    def n_models(self) -> int:
        return sum(len(models) for _, models in self.units)

    @property
    def parameter_bytes(self) -> int:
        """Bytes of every loaded model's parameters and buffers (what stays on the device)."""
        return sum(
            t.numel() * t.element_size()
            for _, models in self.units
            for m in models
            for t in [*m.parameters(), *m.buffers()]
        )

    def predict(self, cache_dir: str | Path, study_ids: Iterable[int] | None = None) -> pd.DataFrame:
        """The fold-averaged submission table of every sample of an ROI cache (see `predict_cache`)."""

        cache = read_cache(cache_dir)
        shape = [cache.depth, cache.height, cache.width]
        if shape != list(self.result["input_shape"]):
            raise ValueError(
                f"{cache_dir}: tensors of shape {shape}, but run {self.run_dir} was trained on "
                f"{self.result['input_shape']}; build the cache with the run's preprocessing parameters"
            )
        tables = []
        for task, models in self.units:
            items = task.items(cache.samples, None, cache.views)
            if items.empty:
                continue
            if cache.depth_of(task.conditions) != self.depths[task.name]:
                raise ValueError(
                    f"{cache_dir}: {task.name} crops of {cache.depth_of(task.conditions)} slices, but run "
                    f"{self.run_dir} trained them on {self.depths[task.name]}; build the cache with the "
                    "run's preprocessing parameters"
                )
            # read once, for every fold model (a chunk's crops of one unit are tens of MiB at most)
            batches = list(
                eval_loader(RoiDataset(cache, task, items), self.batch_size, self.workers, self.runtime)
            )
            total = np.zeros((len(items), task.num_targets, task.num_classes))
            unit_views = tta_views(self.tta[task.name])
            for model in models:
                t = time.perf_counter()
                idx, probs, _ = predict_probs(
                    model, batches, self.runtime, task.num_targets, task.num_classes, tta=unit_views
                )
                self.forward_seconds += time.perf_counter() - t
                total[idx] += probs
            tables.append(task.prediction_rows(items, total / len(models)))
        if not tables:
            raise ValueError(f"{cache_dir}: no sample of the run's conditions {list(self.config.conditions)}")
        table = pd.concat(tables, ignore_index=True)
        if self.config.mode != "competition":
            sub, filled = to_submission(table)
        else:
            studies = cache.samples["study_id"].unique() if study_ids is None else study_ids
            sub, filled = to_submission(table, studies, pd.DataFrame(self.result["prior"]))
        sub.attrs["fallback_rows"] = filled
        return sub

    def close(self) -> None:
        """Restore the thread count (the models go with the object)."""
        if self.runtime is not None:
            teardown_runtime(self.runtime)
            self.runtime = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def predict_cache(
    run_dir: str | Path,
    cache_dir: str | Path,
    device: str = "auto",
    batch_size: int = 0,
    workers: int = 0,
    study_ids: Iterable[int] | None = None,
    threads: int = 0,
) -> pd.DataFrame:
    """Predict every sample of an ROI cache with a run's models, averaging the folds' selected checkpoints.

    One cache, so the models are built for it and dropped after; to predict many caches with one run, keep a
    `RunPredictor`.

    Args:
        run_dir: a training run folder (`train(...).run_dir`).
        cache_dir: an ROI cache made with the run's preprocessing parameters (same tensor shape).
        device: "auto", "cpu" or "cuda".
        batch_size: 0 = the run's batch size.
        workers: DataLoader workers.
        study_ids: studies that must get rows even when the cache lacks them (competition mode; e.g. the
            test split's studies). Default: the cache's studies.
        threads: torch CPU threads (0 = torch's default).

    Returns:
        The submission table (`row_id, normal_mild, moderate, severe`); in competition mode all 25 rows of
        every study, missing targets from the training labels' prior (`attrs["fallback_rows"]` counts them).
    """

    read_cache(cache_dir)  # a missing or broken cache fails before any model is built
    with RunPredictor(run_dir, device, batch_size, workers, threads) as predictor:
        return predictor.predict(cache_dir, study_ids)


def unit_sizes(task, fusion: str = "early") -> dict[str, int]:
    """The `build_model` sizes of a task unit: its channels, outputs and meta, and with `fusion="late"` one
    encoder stream per view (`lumbar.models.fusion`)."""
    sizes = {"in_channels": task.in_channels, "num_outputs": task.num_outputs, "num_meta": task.num_meta}
    if fusion == "late" and task.in_channels > 1 and task.layout == "crop":
        sizes["streams"] = task.in_channels
    return sizes
