"""The one training loop for every architecture and task mode: `train(config) -> TrainResult`.

For each unit of the task mode (`lumbar.train.tasks`) and each requested fold: build the registered model,
train it with AdamW (fused) and a per-step cosine schedule after a linear warm-up, the weighted loss
(`lumbar.train.losses`) on batches optionally mixed (`lumbar.train.mixing`), gradient clipping, optional EMA,
AMP and channels-last on CUDA; validate every `val_every` epochs and after the last on the held-out fold (the
competition metric in competition mode, balanced accuracy in thesis modes); keep `last.pt` (every
`checkpoint_every` epochs and after the last); then predict the held-out fold with the selected weights: those
after the last epoch (`final.pt`, select="last") or of the best validation epoch (`best.pt`, select="best",
optionally stopping early after `patience` epochs without improvement), as it is or with test-time
augmentation chosen fold-wise per unit (`lumbar.train.tta`). A run killed at any point resumes from `last.pt`
(finished folds are not retrained). Under `torchrun` the model is wrapped in DistributedDataParallel and the
data sharded; only rank 0 writes files and logs.

A training step does not wait for the device: the loss is summed on the device (`RunningMean`) and read once
per `log_every` steps and at the end of the epoch, the EMA keeps its step count on the host (`ModelEma`),
batches arrive from pinned memory with non-blocking copies. So on CUDA `data_s` (time waiting for the loader)
is the time the device may have starved, and `model_s` the host's time in the steps (including any wait for a
busy device when its queue is full).

Crop sources ("train as you infer"): training items come from the ground-truth crops (`cache`), the
localizer's out-of-fold crops (`oof_cache`) or both (`train_crops`); validation and the OOF predictions use
the oof crops whenever they are given, so the OOF score is measured on crops made as test crops are.

Any-severe term (`any_severe_weight` > 0): the competition's spinal unit trains on batches of whole studies
(`StudyBatchSampler`) with the metric's any_severe_spinal term added to its loss over the batch's studies
(`losses.any_severe_term`; the `study` of each sample); validation, its loss and the predictions are as
without it, and so are the other units.

Label-noise cleanup: `exclude` names grades (row_ids, `lumbar.analysis.label_noise`) to leave out of the
training items; validation and the OOF predictions keep them, so a cleaned round is scored on the same rows.

Run folder (`config.out`):
    config.json                       the resolved config
    <unit>/fold<k>/final.pt or best.pt, last.pt   checkpoints (state dicts)
    <unit>/fold<k>/history.csv, curves.png
    tensorboard/<unit>/fold<k>/       TensorBoard events (with `tensorboard`): losses, score, learning rate
    predictions.csv                   every held-out prediction: study_id, condition, level, grade, fold,
                                      probs
    oof.csv                           the same in the submission format (competition mode: 25 rows per study)
    oof_gt.csv                        with both caches: the same models on the held-out ground-truth crops
    reports/                          thesis modes: `lumbar.scoring.thesis` tables and confusion matrices
    result.json                       units, checkpoints, model arguments, scores, timings
and an entry under `classifiers` in the experiment's manifest (`<out>/../manifest.json`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import lumbar.models  # `lumbar.models.build_model` looked up per call: a stand-in set there (tests) is built
from lumbar.core.atomic import write_json
from lumbar.core.checkpoint import (
    BEST,
    FINAL,
    LAST,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from lumbar.core.constants import CONDITION_GROUP, GRADES, row_id
from lumbar.core.paths import data_root
from lumbar.core.run_contract import ClassifierRecord, save_record
from lumbar.core.runtime import (
    RunningMean,
    Runtime,
    make_adamw,
    seed_everything,
    setup_runtime,
    teardown_runtime,
)
from lumbar.core.settings import StaleRunError, setting_changes
from lumbar.core.tables import load_labels, read_flagged_ids, table_row_ids, write_csv
from lumbar.preprocess import LocalizerJitter
from lumbar.scoring.baselines import fold_prior
from lumbar.scoring.metric import competition_score
from lumbar.scoring.reports import write_reports
from lumbar.train.augment import StackAugment, resolve_augmentations
from lumbar.train.config import RUN_ONLY, TrainConfig, make_config
from lumbar.train.dataset import LOCALIZED, RoiCache, RoiDataset, check_same_crops, read_cache
from lumbar.train.ema import ModelEma
from lumbar.train.folds import load_or_make_folds, read_folds
from lumbar.train.history import plot_history, write_history
from lumbar.train.loggers import Loggers, TensorBoardLogger
from lumbar.train.losses import ANY_SEVERE, build_loss
from lumbar.train.mixing import BatchMix, mixed_loss
from lumbar.train.predict import (
    CONFIG_JSON,
    RESULT_JSON,
    batch_to_device,
    eval_loader,
    grade_prior,
    predict_probs,
    to_submission,
    unit_sizes,
    unwrap,
)
from lumbar.train.sampling import StudyBatchSampler, make_study_batch_sampler, make_train_sampler
from lumbar.train.tasks import Task, build_tasks, resolve_conditions, validation_score
from lumbar.train.tta import IDENTITY, candidate_sets, choose_fold_wise, combine, tta_views, usable

PREDICTIONS_CSV = "predictions.csv"
#: What the run's weights were trained on (`input_fingerprints`), beside config.json.
INPUTS_JSON = "inputs.json"
#: A finished fold's record (epochs, history, best epoch): reused with its final.pt or best.pt on a rerun.
STATE_JSON = "state.json"
OOF_CSV = "oof.csv"
OOF_GT_CSV = "oof_gt.csv"
#: TensorBoard curves of the run (`TrainConfig.tensorboard`): `<out>/tensorboard/<unit>/fold<k>`.
TENSORBOARD_DIR = "tensorboard"
GROUND_TRUTH = "gt"
#: The crop sources of each `train_crops` value.
TRAIN_SOURCES: dict[str, tuple[str, ...]] = {
    "gt": (GROUND_TRUTH,),
    "oof": (LOCALIZED,),
    "both": (GROUND_TRUTH, LOCALIZED),
}
#: The checkpoint each `select` value predicts with and records for inference.
SELECTED_CHECKPOINT: dict[str, str] = {"last": FINAL, "best": BEST}


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        run_dir: the run folder.
        oof_path: `oof.csv` (submission format).
        predictions_path: `predictions.csv` (long table with grades and folds, for the reports).
        oof_score: the competition metric's terms on the OOF rows (competition mode), else None.
        reports: thesis modes: report kind -> path.
        summary: the content of `result.json`.
        oof_gt_path: `oof_gt.csv` (the same models on the held-out ground-truth crops) when both caches were
            given, else None.
        oof_score_gt: its competition metric terms (competition mode), else None.
    """

    run_dir: Path
    oof_path: Path
    predictions_path: Path
    oof_score: dict[str, float] | None
    reports: dict[str, Path] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    oof_gt_path: Path | None = None
    oof_score_gt: dict[str, float] | None = None


@dataclass
class FoldData:
    """The items of one unit and fold: training items (column `source`), the held-out items validation
    predicts, and the held-out ground-truth items when validation runs on oof crops (else None)."""

    train: pd.DataFrame
    valid: pd.DataFrame
    valid_gt: pd.DataFrame | None = None


@dataclass(frozen=True)
class RunContext:
    """What every unit and fold of one run shares (its settings, device, crop caches, jitter, logger and
    folder), passed as one value so the fold and the finish steps need not take each piece apart."""

    config: TrainConfig
    runtime: Runtime
    caches: dict[str, RoiCache]
    jitter: LocalizerJitter | None
    logger: Any
    out: Path

    @property
    def run_root(self) -> Path:
        """The experiment's folder (folds.csv, manifest.json), the run folder's parent."""
        return self.out.parent


@dataclass(frozen=True)
class _HeldOut:
    """What the units' folds produced, for `_finish` to write and score: the held-out prediction rows (with
    TTA as chosen), the same on the ground-truth crops (both caches) and without TTA (TTA candidates), the
    units' records for result.json, the folds' timings, the labelled rows the exclusion list kept out, and
    the run's seconds."""

    predictions: pd.DataFrame
    predictions_gt: pd.DataFrame | None
    predictions_plain: pd.DataFrame | None
    units: dict[str, dict[str, Any]]
    timings: dict[str, dict[str, float]]
    n_excluded: int
    seconds: float


@dataclass(frozen=True)
class _UnitFit:
    """One unit trained on every fold: its record for result.json, its folds' timings, its prediction rows."""

    record: dict[str, Any]
    timings: dict[str, dict[str, float]]
    tables: list[pd.DataFrame]
    tables_gt: list[pd.DataFrame]
    plain: list[pd.DataFrame]


@dataclass(frozen=True)
class _FoldFeed:
    """The data side of one fold: its datasets, the training sampler and both loaders, and the dataset
    arguments (`common`) any further evaluation dataset of the fold is made with."""

    train_ds: RoiDataset
    valid_ds: RoiDataset
    sampler: Any
    train_loader: DataLoader
    valid_loader: DataLoader
    common: dict[str, Any]


@dataclass(frozen=True)
class _Learner:
    """The model of one fold and everything that updates it, built once per fold; `net` is the model as it
    trains (wrapped for DDP), `evaluator` what validates and predicts (the EMA when there is one)."""

    model: nn.Module
    net: nn.Module
    ema: ModelEma | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    loss_fn: Any
    weights: torch.Tensor
    mix: BatchMix
    train_loss_fn: Any = None

    @property
    def evaluator(self) -> nn.Module:
        return self.ema if self.ema is not None else self.model

    @property
    def by_study(self) -> bool:
        """Whether the training loss reads the batch's study index (`any_severe_weight`)."""
        return self.train_loss_fn is not None

    def checkpoint(self, state: dict[str, Any]) -> dict[str, Any]:
        """`last.pt`'s content: every state a resume needs, the random generators' and the fold's record."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else {},
            "rng": rng_state(),
            **state,
        }

    def resume(self, ckpt: dict[str, Any]) -> None:
        """Load a `last.pt` (`checkpoint`), the random generators last, as they were after its epoch."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None and ckpt["ema"]:
            self.ema.load_state_dict(ckpt["ema"])
        set_rng_state(ckpt["rng"])


def train(config: TrainConfig | Mapping[str, Any], logger=None) -> TrainResult:
    """Train one architecture on one task mode for the configured folds (see the module docstring).

    Args:
        config: a `TrainConfig` or a mapping of overrides (cast and checked by `make_config`).
        logger: receives the plan, per-epoch rows and the result on rank 0 (`lumbar.train.loggers`; default:
            none, e.g. `PrintLogger()` for the epoch lines); with `config.tensorboard` a `TensorBoardLogger`
            listens too.

    Returns:
        The run's `TrainResult` (on every rank; only rank 0 wrote the files).
    """
    if not isinstance(config, TrainConfig):
        config = make_config(config)
    runtime = setup_runtime(
        config.device, amp=config.amp, channels_last=config.channels_last, threads=config.threads
    )
    board = (
        TensorBoardLogger(Path(config.out) / TENSORBOARD_DIR)
        if config.tensorboard and runtime.is_main
        else None
    )
    try:
        return _train(config, runtime, Loggers(logger, board))
    finally:
        if board is not None:
            board.close()
        teardown_runtime(runtime)


def _train(config: TrainConfig, runtime: Runtime, logger) -> TrainResult:
    started = time.perf_counter()
    config.check()
    out = Path(config.out)
    all_labels = load_labels(data_root(config.data_dir or None, must_exist=True) / "train.csv")
    caches = _open_caches(config)
    jitter = LocalizerJitter.from_file(config.jitter) if config.jitter else None
    ctx = RunContext(config, runtime, caches, jitter, logger, out)
    excluded = _read_excluded(config.exclude)
    conditions = resolve_conditions(config.mode, config.conditions)
    labels = all_labels[all_labels["condition"].isin(conditions)].reset_index(drop=True)
    folds, fold_ids = _prepare_folds(ctx, all_labels)
    fold_of = folds.set_index("study_id")["fold"]
    tasks = build_tasks(config.mode, conditions, config.mirror_right, config.views)
    for task in tasks:  # a unit whose channels differ in depth stops the run before any fold
        for cache in caches.values():
            cache.depth_of(task.conditions)
    if runtime.is_main:
        logger.log_start([task.name for task in tasks], fold_ids, config.fold_epochs)
    tables, tables_gt, plain, units, timings = [], [], [], {}, {}
    for task in tasks:
        unit = _fit_unit(ctx, task, labels, fold_of, fold_ids, excluded)
        tables += unit.tables
        tables_gt += unit.tables_gt
        plain += unit.plain
        units[task.name] = unit.record
        timings.update(unit.timings)
    n_excluded = int(table_row_ids(labels[labels["grade"].notna()]).isin(excluded).sum())
    held = _HeldOut(
        pd.concat(tables, ignore_index=True),
        pd.concat(tables_gt, ignore_index=True) if tables_gt else None,
        pd.concat(plain, ignore_index=True) if plain else None,
        units,
        timings,
        n_excluded,
        time.perf_counter() - started,
    )
    result = _finish(ctx, labels, folds, fold_ids, held)
    if runtime.is_main:
        logger.log_result(result.summary)
    return result


def _prepare_folds(ctx: RunContext, all_labels: pd.DataFrame) -> tuple[pd.DataFrame, list[int]]:
    """Check that the run folder may be resumed, write folds.csv (once per experiment), config.json and
    inputs.json (rank 0), and return the folds and the fold ids to train (checked against them)."""
    config, runtime, out = ctx.config, ctx.runtime, ctx.out
    folds_path = Path(config.folds_csv) if config.folds_csv else ctx.run_root / "folds.csv"
    inputs = input_fingerprints(config, ctx.caches)
    check_resumable(config, out, inputs)  # before anything is written: a stale folder stops the run here
    if runtime.is_main:  # from all labels, so every run of the experiment makes the same file
        load_or_make_folds(folds_path, all_labels, config.n_folds, config.seed)
        config.save(out / CONFIG_JSON)
        write_json(inputs, out / INPUTS_JSON)
    runtime.barrier()
    folds = read_folds(folds_path)
    fold_ids = list(config.folds) or sorted(folds["fold"].unique().tolist())
    unknown = sorted(set(fold_ids) - set(folds["fold"]))
    if unknown:
        raise ValueError(f"folds {unknown} not in {folds_path} (folds {sorted(folds['fold'].unique())})")
    return folds, fold_ids


def _fit_unit(
    ctx: RunContext,
    task: Task,
    labels: pd.DataFrame,
    fold_of: pd.Series,
    fold_ids: list[int],
    excluded: set[str],
) -> _UnitFit:
    """Train one unit on every fold, then choose its TTA fold-wise and make its held-out prediction rows."""
    config = ctx.config
    items = _unit_items(task, ctx.caches, labels, fold_of)
    pool = _drop_excluded(
        pd.concat([items[s] for s in TRAIN_SOURCES[config.train_crops]], ignore_index=True), excluded
    )
    checkpoints, per_fold, per_fold_gt, timings = {}, {}, {}, {}
    for fold in fold_ids:
        data = _fold_data(ctx, task, fold, items, pool)
        fold_dir = ctx.out / task.name / f"fold{fold}"
        per_fold[fold], per_fold_gt[fold], timing = fit_fold(ctx, task, fold, data, fold_dir)
        checkpoints[str(fold)] = str((fold_dir / SELECTED_CHECKPOINT[config.select]).relative_to(ctx.out))
        timings[f"{task.name}/fold{fold}"] = timing
    chosen, tta_record = _choose_tta(config, task, per_fold)
    tables, tables_gt, plain = [], [], []
    for fold in fold_ids:
        tables.append(tta_table(per_fold[fold], chosen[fold]).assign(fold=fold))
        if config.tta:
            plain.append(per_fold[fold][IDENTITY].assign(fold=fold))
        if per_fold_gt[fold] is not None:
            tables_gt.append(tta_table(per_fold_gt[fold], chosen[fold]).assign(fold=fold))
    record = {
        "conditions": list(task.conditions),
        "checkpoints": checkpoints,
        "layout": task.layout,
        "num_classes": task.num_classes,
        **_unit_depth(task, next(iter(ctx.caches.values()))),
        **tta_record,
    }
    return _UnitFit(record, timings, tables, tables_gt, plain)


def _unit_depth(task: Task, cache: RoiCache) -> dict[str, int]:
    """The unit's crop depth for its record, where a group slab makes it differ from the model's `depth`."""
    depth = cache.depth_of(task.conditions)
    return {"depth": depth} if depth != cache.depth else {}


def _unit_items(
    task: Task, caches: dict[str, RoiCache], labels: pd.DataFrame, fold_of: pd.Series
) -> dict[str, pd.DataFrame]:
    """A unit's labelled items of each crop source, with their source and fold."""
    items = {}
    for source, cache in caches.items():
        table = task.items(cache.samples, labels, cache.views)
        table = table[[max(g) >= 0 for g in table["grades"]]].assign(source=source)
        items[source] = table.assign(fold=table["study_id"].map(fold_of))
    return items


def _fold_data(
    ctx: RunContext, task: Task, fold: int, items: dict[str, pd.DataFrame], pool: pd.DataFrame
) -> FoldData:
    """One fold's items: training from the pool of the training sources, validation from the oof crops when
    given (else the ground-truth crops), and the held-out ground-truth crops beside them with both caches."""
    caches = ctx.caches
    valid_source = LOCALIZED if LOCALIZED in caches else GROUND_TRUTH
    data = FoldData(
        pool[pool["fold"].notna() & (pool["fold"] != fold)],
        items[valid_source][items[valid_source]["fold"] == fold],
    )
    if len(caches) == 2:
        data.valid_gt = items[GROUND_TRUTH][items[GROUND_TRUTH]["fold"] == fold]
    if data.train.empty or data.valid.empty:
        raise ValueError(
            f"unit {task.name} fold {fold}: {len(data.train)} training samples "
            f"({ctx.config.train_crops} crops) and {len(data.valid)} validation samples "
            f"(in {caches[valid_source].root})"
        )
    return data


def input_fingerprints(config: TrainConfig, caches: dict[str, RoiCache]) -> dict[str, Any]:
    """What a run's weights were trained on, independent of where it lies: each crop cache's identity (its
    crop settings and the SHA-1 of the coordinates it was cut around) and the SHA-1 of the jitter and
    exclusion files."""
    field_of = {GROUND_TRUTH: "cache", LOCALIZED: "oof_cache"}
    identity = ("config", "split", "coordinates_sha1")
    found: dict[str, Any] = {
        field_of[source]: {k: cache.params.get(k) for k in identity} for source, cache in caches.items()
    }
    for name in ("jitter", "exclude"):
        path = getattr(config, name)
        found[name] = hashlib.sha1(Path(path).read_bytes()).hexdigest() if path else ""
    return found


def check_resumable(config: TrainConfig, out: Path, inputs: dict[str, Any]) -> None:
    """Stop when `out` holds checkpoints made with other settings or inputs than these (`resume` on).

    A fold resumes from `last.pt`, or a finished fold is reused, only when nothing that changes its weights
    changed (`lumbar.train.config.RUN_ONLY` may); otherwise the run would keep weights its `config.json` no
    longer describes. Raises `StaleRunError` naming each difference and how to train again.
    """
    saved = out / CONFIG_JSON
    if not config.resume or not saved.is_file() or not _has_checkpoints(out):
        return
    # to_dict: the defaults filled in on both sides
    changes = setting_changes(TrainConfig.load(saved).to_dict(), config.to_dict(), RUN_ONLY)
    if (out / INPUTS_JSON).is_file():
        previous = json.loads((out / INPUTS_JSON).read_text())
        changes += [
            f"{name}: its content changed"
            for name in dict.fromkeys([*previous, *inputs])
            if previous.get(name) != inputs.get(name)
        ]
    if changes:
        raise StaleRunError(
            f"{out} holds checkpoints trained with other settings or inputs ({'; '.join(changes)}): "
            "reusing them would keep weights these settings never trained; train again from scratch with "
            f"FRESH=True in 03_train (pipeline: --fresh), resume=false for `lumbar train`, or delete {out}"
        )


def _has_checkpoints(out: Path) -> bool:
    return any(out.glob(f"*/fold*/{LAST}")) or any(out.glob(f"*/fold*/{STATE_JSON}"))


def tta_table(entries: dict[str, pd.DataFrame], subset: tuple[str, ...]) -> pd.DataFrame:
    """The prediction rows of a TTA set from the rows each entry predicted (same items, same order)."""
    table = entries[IDENTITY].copy()
    table[list(GRADES)] = combine({k: v[list(GRADES)].to_numpy() for k, v in entries.items()}, subset)
    return table


def _choose_tta(
    config: TrainConfig, task: Task, per_fold: dict[int, dict[str, pd.DataFrame]]
) -> tuple[dict[int, tuple[str, ...]], dict[str, Any]]:
    """The TTA set of each fold's held-out rows and of the test predictions, chosen fold-wise on the unit's
    validation score among the candidates usable on its series (`lumbar.train.tta`); none: the plain
    prediction everywhere.

    Returns:
        (fold -> set, the unit's record for result.json: "tta" (the test set), "tta_folds", "tta_scores").
    """
    candidates = usable(config.tta, task.crop_kinds)
    if not candidates:
        return dict.fromkeys(per_fold, ()), {"tta": []} if config.tta else {}
    scores = {
        s: {f: validation_score(task, tta_table(entries, s)) for f, entries in per_fold.items()}
        for s in candidate_sets(candidates)
    }
    chosen, for_test = choose_fold_wise(scores, task.higher_is_better)
    record = {
        "tta": list(for_test),
        "tta_folds": {str(f): list(s) for f, s in chosen.items()},
        "tta_scores": {
            "+".join(s) or IDENTITY: {str(f): v for f, v in by_fold.items()} for s, by_fold in scores.items()
        },
    }
    return chosen, record


def _read_excluded(path: str) -> set[str]:
    """The row_ids of the exclusion list (empty without one); a missing file or column is an error naming
    it."""
    if not path:
        return set()
    return read_flagged_ids(path)


def _drop_excluded(items: pd.DataFrame, excluded: set[str]) -> pd.DataFrame:
    """Training items with the excluded grades set to -1 (no label, masked in the loss); items left with no
    grade are dropped."""
    if not excluded or items.empty:
        return items
    grades = [
        tuple(-1 if row_id(study, c, level) in excluded else g for c, g in zip(conditions, item_grades))
        for study, level, conditions, item_grades in zip(
            items["study_id"], items["level"], items["conditions"], items["grades"]
        )
    ]
    items = items.assign(grades=grades)
    return items[[max(g) >= 0 for g in grades]].reset_index(drop=True)


def _open_caches(config: TrainConfig) -> dict[str, RoiCache]:
    """The configured crop caches by source ("gt", "oof"; `config.check` made sure the training source is
    there), checked to hold crops of one geometry."""
    paths = {GROUND_TRUTH: config.cache, LOCALIZED: config.oof_cache}
    caches = {source: read_cache(path) for source, path in paths.items() if path}
    if len(caches) == 2:
        check_same_crops(caches[GROUND_TRUTH], caches[LOCALIZED])
    for cache in caches.values():
        missing = [v for v in config.views if v not in cache.built_views]
        if missing:
            raise ValueError(
                f"{cache.root}: built without the view(s) {missing} the config asks for (it has "
                f"{list(cache.built_views)}); build the caches with RoiConfig "
                f"views={list(config.views)}"
            )
    return caches


def _oof_table(
    config: TrainConfig,
    predictions: pd.DataFrame,
    labels: pd.DataFrame,
    folds: pd.DataFrame,
    fold_ids: list[int],
) -> tuple[pd.DataFrame, int]:
    """Held-out prediction rows -> the submission table; in competition mode every held-out study gets its
    25 rows, a missing crop its fold's training prior. Returns (table, rows filled from a prior)."""
    if config.mode != "competition":
        return to_submission(predictions)
    parts, filled = [], 0
    for fold in fold_ids:
        studies = folds.loc[folds["fold"] == fold, "study_id"]
        prior = fold_prior(labels, studies)
        part, n = to_submission(predictions[predictions["fold"] == fold], studies, prior)
        parts.append(part)
        filled += n
    return pd.concat(parts).sort_values("row_id", kind="stable").reset_index(drop=True), filled


def _finish(
    ctx: RunContext, labels: pd.DataFrame, folds: pd.DataFrame, fold_ids: list[int], held: _HeldOut
) -> TrainResult:
    """Write predictions, OOF (and OOF on ground-truth crops), scores or reports, result.json and the
    manifest entry (rank 0); with TTA candidates the rows without TTA are scored as `oof_score_plain`."""
    config, runtime, out = ctx.config, ctx.runtime, ctx.out
    held_out = folds.loc[folds["fold"].isin(fold_ids), "study_id"]
    oof_labels = labels[labels["study_id"].isin(held_out)]
    oof, filled = _oof_table(config, held.predictions, labels, folds, fold_ids)
    oof_score, oof_score_gt, reports = None, None, {}
    scored = held.predictions[held.predictions["grade"] >= 0]
    summary = _summary(ctx, fold_ids, held, grade_prior(labels), len(oof), filled)
    if runtime.is_main:
        write_csv(held.predictions, out / PREDICTIONS_CSV)
        oof_path = write_csv(oof, out / OOF_CSV)
        if config.mode == "competition":
            oof_score = competition_score(oof_labels, oof, name=str(oof_path)).as_dict()
            summary["oof_score"] = oof_score
            if held.predictions_plain is not None:
                plain, _ = _oof_table(config, held.predictions_plain, labels, folds, fold_ids)
                summary["oof_score_plain"] = competition_score(oof_labels, plain).as_dict()
        elif not scored.empty:
            reports = write_reports(scored.drop(columns="fold"), out / "reports", config.mode)
            summary["reports"] = {k: str(p.relative_to(out)) for k, p in reports.items()}
        if held.predictions_gt is not None:
            oof_gt, summary["fallback_rows_gt"] = _oof_table(
                config, held.predictions_gt, labels, folds, fold_ids
            )
            oof_gt_path = write_csv(oof_gt, out / OOF_GT_CSV)
            if config.mode == "competition":
                oof_score_gt = competition_score(oof_labels, oof_gt, name=str(oof_gt_path)).as_dict()
                summary["oof_score_gt"] = oof_score_gt
        write_json(summary, out / RESULT_JSON)
        entry = _manifest_entry(ctx, summary, with_gt=held.predictions_gt is not None)
        save_record(ctx.run_root, ClassifierRecord.from_dict(entry), item=out.name)
    runtime.barrier()
    return TrainResult(
        out,
        out / OOF_CSV,
        out / PREDICTIONS_CSV,
        oof_score,
        reports,
        summary,
        out / OOF_GT_CSV if held.predictions_gt is not None else None,
        oof_score_gt,
    )


def _summary(
    ctx: RunContext, fold_ids: list[int], held: _HeldOut, prior: pd.DataFrame, oof_rows: int, filled: int
) -> dict[str, Any]:
    """result.json before the scores: the settings, crop geometry, units, timings and the prior."""
    config = ctx.config
    cache = next(iter(ctx.caches.values()))  # the crop geometry (the same in both caches)
    return {
        "arch": config.arch,
        "mode": config.mode,
        "conditions": list(resolve_conditions(config.mode, config.conditions)),
        "folds": list(fold_ids),
        "input_shape": [cache.depth, cache.height, cache.width],
        "cache": str(config.cache),
        "oof_cache": str(config.oof_cache),
        "train_crops": config.train_crops,
        "jitter": str(config.jitter),
        "exclude": str(config.exclude),
        "excluded_rows": held.n_excluded,
        "select": config.select,
        "cache_params": cache.params,
        "model": {
            "name": config.arch,
            "depth": cache.depth,
            "drop_rate": config.drop_rate,
            **config.model_kwargs,
        },
        "units": held.units,
        "oof_rows": oof_rows,
        "fallback_rows": filled,
        "seconds": round(held.seconds, 1),
        "timings": held.timings,
        "prior": prior.to_dict(orient="list"),
        "precision": ctx.runtime.precision,
    }


def _manifest_entry(ctx: RunContext, summary: dict[str, Any], with_gt: bool) -> dict[str, Any]:
    """The run's entry under `classifiers` in the experiment's manifest (paths relative to the experiment)."""
    config, out = ctx.config, ctx.out
    entry = {
        "path": str(out.relative_to(ctx.run_root)),
        "arch": config.arch,
        "mode": config.mode,
        "conditions": summary["conditions"],
        "folds": list(summary["folds"]),
        "checkpoints": {
            u: {f: str(Path(out.name) / p) for f, p in v["checkpoints"].items()}
            for u, v in summary["units"].items()
        },
        "model": summary["model"],
        "input_shape": summary["input_shape"],
        "oof": str(Path(out.name) / OOF_CSV),
        "config": str(Path(out.name) / CONFIG_JSON),
        "result": str(Path(out.name) / RESULT_JSON),
        "oof_score": (summary.get("oof_score") or {}).get("score"),
        "precision": ctx.runtime.precision,
    }
    if with_gt:
        entry.update(
            oof_gt=str(Path(out.name) / OOF_GT_CSV),
            oof_score_gt=(summary.get("oof_score_gt") or {}).get("score"),
        )
    return entry


def _loader(
    dataset: RoiDataset, sampler, config: TrainConfig, runtime: Runtime, drop_last: bool
) -> DataLoader:
    """The training loader: batches of `batch_size` drawn by `sampler`, or a batch sampler's own batches."""
    batching = (
        {"batch_sampler": sampler}
        if isinstance(sampler, StudyBatchSampler)
        else {"batch_size": config.batch_size, "sampler": sampler, "drop_last": drop_last}
    )
    return DataLoader(
        dataset, num_workers=config.workers, pin_memory=runtime.device.type == "cuda", **batching
    )


def any_severe_unit(config: TrainConfig, task: Task) -> bool:
    """Whether a unit trains with the any-severe term (`any_severe_weight`): the competition's spinal unit."""
    return (
        config.any_severe_weight > 0
        and task.mode == "competition"
        and CONDITION_GROUP[task.conditions[0]] == "spinal"
    )


def build_unit_model(config: TrainConfig, task: Task, cache: RoiCache) -> nn.Module:
    """The registered architecture sized for a task unit and its crops' depth in a cache, its encoder's
    weights from `pretrained`."""
    return lumbar.models.build_model(
        config.arch,
        depth=cache.depth_of(task.conditions),
        pretrained=config.pretrained,
        drop_rate=config.drop_rate,
        **unit_sizes(task, config.fusion),
        **config.model_kwargs,
    )


def fit_fold(
    ctx: RunContext, task: Task, fold: int, data: FoldData, fold_dir: Path
) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame] | None, dict[str, float]]:
    """Train (or resume, or skip when finished) one unit on one fold; predict its held-out items with the
    selected weights (`config.select`).

    Returns:
        (held-out prediction rows with grades by TTA entry (`_predict_rows`), the same on the held-out
        ground-truth crops when `data.valid_gt` is given (else None), timing summary: loader and model seconds
        per batch).
    """
    config, runtime = ctx.config, ctx.runtime
    seed = config.seed + 1000 * fold
    seed_everything(seed, deterministic=runtime.device.type == "cpu")
    feed = _fold_feed(ctx, task, data, seed)
    learner = _build_learner(config, runtime, task, feed, seed)
    state, reused = _restore(config, runtime, learner, fold_dir)
    for epoch in range(state["epoch"] + 1, config.fold_epochs + 1):
        if state["finished"]:
            break
        _fit_epoch(ctx, task, fold, fold_dir, feed, learner, state, epoch)
    _close_fold(config, runtime, learner, state, fold_dir, reused)
    evaluator, max_batches = learner.evaluator, config.fast_dev_run
    table = _predict_rows(evaluator, feed.valid_ds, task, config, runtime, max_batches)
    table_gt = None
    if data.valid_gt is not None:
        valid_gt = RoiDataset(ctx.caches, task, data.valid_gt, **feed.common)
        table_gt = _predict_rows(evaluator, valid_gt, task, config, runtime, max_batches)
    return table, table_gt, _fold_timing(state)


def _fold_feed(ctx: RunContext, task: Task, data: FoldData, seed: int) -> _FoldFeed:
    """The fold's datasets and loaders; with `overfit_batches` a few training batches, unaugmented, in order,
    that validation predicts too (a learning check)."""
    config, runtime = ctx.config, ctx.runtime
    train_items, valid_items = data.train, data.valid
    augment = StackAugment(resolve_augmentations(config.augment, task.conditions))
    if config.overfit_batches:
        train_items = train_items.iloc[: config.overfit_batches * config.batch_size]
        valid_items, augment = train_items, StackAugment(())
    common = {"max_shift_slices": config.max_shift_slices, "max_shift_px": config.max_shift_px, "seed": seed}
    train_ds = RoiDataset(
        ctx.caches,
        task,
        train_items,
        train=not config.overfit_batches,
        augment=augment,
        mirror_p=config.mirror_p,
        jitter=ctx.jitter,
        **common,
    )
    valid_ds = RoiDataset(ctx.caches, task, valid_items, train=False, **common)
    worst = np.array([max(g) for g in train_ds.items["grades"]])
    drop_last = len(train_ds) // runtime.world_size > config.batch_size  # no 1-sample batches for BatchNorm
    if any_severe_unit(config, task):
        sampler = make_study_batch_sampler(
            train_ds.studies,
            config.batch_size,
            config.balanced_sampling,
            worst,
            runtime.world_size,
            runtime.rank,
            seed,
            drop_last,
        )
    else:
        sampler = make_train_sampler(
            train_ds, config.balanced_sampling, worst, runtime.world_size, runtime.rank, seed
        )
    if config.overfit_batches:
        sampler.shuffle = False
    train_loader = _loader(train_ds, sampler, config, runtime, drop_last)
    valid_loader = eval_loader(valid_ds, config.batch_size, config.workers, runtime)
    return _FoldFeed(train_ds, valid_ds, sampler, train_loader, valid_loader, common)


def _build_learner(config: TrainConfig, runtime: Runtime, task: Task, feed: _FoldFeed, seed: int) -> _Learner:
    """The fold's model (sized for the crops), its EMA, DDP wrapper, optimizer, per-step schedule, gradient
    scaler, loss, batch mixing and class weights."""
    max_batches = config.fast_dev_run
    epochs = config.fold_epochs
    train_loader = feed.train_loader
    steps_per_epoch = min(len(train_loader), max_batches) if max_batches else len(train_loader)
    # the crop geometry: one for every source
    model = build_unit_model(config, task, feed.train_ds.cache).to(runtime.device)
    memory_format = runtime.memory_format(model)
    if memory_format is not None:
        model = model.to(memory_format=memory_format)
    ema = ModelEma(model, config.ema_decay) if config.ema_decay > 0 else None
    net = model
    if runtime.distributed:
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=device_ids)
    optimizer = make_adamw(model.parameters(), config.lr, config.weight_decay, runtime.device)
    scheduler = _schedule(optimizer, steps_per_epoch * epochs, round(config.warmup_epochs * steps_per_epoch))
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.needs_scaler)
    loss_fn = build_loss(config.loss, gamma=config.focal_gamma)
    train_loss_fn = (
        build_loss(ANY_SEVERE, base=loss_fn, weight=config.any_severe_weight)
        if any_severe_unit(config, task)
        else None
    )
    mix = BatchMix(() if config.overfit_batches else config.mix, config.mix_alpha, config.mix_p, seed)
    weights = torch.as_tensor(config.class_weights, dtype=torch.float32, device=runtime.device)
    if len(config.class_weights) != len(GRADES):
        raise ValueError(
            f"class_weights needs one weight per grade ({len(GRADES)}), got {config.class_weights}"
        )
    return _Learner(model, net, ema, optimizer, scheduler, scaler, loss_fn, weights, mix, train_loss_fn)


def _restore(
    config: TrainConfig, runtime: Runtime, learner: _Learner, fold_dir: Path
) -> tuple[dict[str, Any], bool]:
    """The fold's record to go on from, and whether the fold is reused: finished before (its last.pt removed),
    the kept weights loaded to predict with and nothing to train; or resumed from last.pt; or fresh."""
    state = {
        "epoch": 0,
        "best_score": None,
        "best_epoch": 0,
        "bad_epochs": 0,
        "finished": False,
        "history": [],
    }
    last, done = fold_dir / LAST, fold_dir / STATE_JSON
    selected = fold_dir / SELECTED_CHECKPOINT[config.select]
    reused = config.resume and not last.is_file() and done.is_file() and selected.is_file()
    if reused:
        state = json.loads(done.read_text())
        unwrap(learner.evaluator).load_state_dict(load_checkpoint(selected, map_location=runtime.device))
    elif config.resume and last.is_file():
        ckpt = load_checkpoint(last, map_location=runtime.device)
        learner.resume(ckpt)
        state = {k: ckpt[k] for k in state}
    return state, reused


def _fit_epoch(
    ctx: RunContext,
    task: Task,
    fold: int,
    fold_dir: Path,
    feed: _FoldFeed,
    learner: _Learner,
    state: dict[str, Any],
    epoch: int,
) -> None:
    """One epoch of a fold: train, validate when due, add its row to `state` (updated in place), and on rank 0
    keep the checkpoints, the history and the samples seen, and log the row."""
    config, runtime = ctx.config, ctx.runtime
    tick = time.perf_counter()
    feed.sampler.set_epoch(epoch)
    feed.train_ds.set_epoch(epoch)
    learner.mix.set_epoch(epoch)
    weighted = epoch >= config.weighted_from_epoch
    stats = _train_epoch(
        learner, feed.train_loader, config, runtime, task, f"{task.name} f{fold} e{epoch}", weighted
    )
    validate = epoch == config.fold_epochs or config.select == "best" or epoch % config.val_every == 0
    score, val_loss, improved = math.nan, math.nan, False
    if validate:
        score, val_loss, improved = _validate(config, runtime, task, feed, learner, state, epoch)
    row = {
        "epoch": epoch,
        "lr": learner.optimizer.param_groups[0]["lr"],
        "train_loss": stats["loss"],
        "val_loss": val_loss,
        "metric": task.metric,
        "val_metric": score,
        "best_epoch": state["best_epoch"],
        "samples": stats["samples"],
        "data_s": stats["data_s"],
        "model_s": stats["model_s"],
        "batches": stats["batches"],
        "seconds": time.perf_counter() - tick,
    }
    state["history"].append(row)
    state["epoch"] = epoch
    stopped = config.patience > 0 and state["bad_epochs"] >= config.patience
    state["finished"] = epoch == config.fold_epochs or stopped
    if runtime.is_main:
        if improved and config.select == "best":
            save_checkpoint(unwrap(learner.evaluator).state_dict(), fold_dir / BEST)
        if state["finished"] or epoch % config.checkpoint_every == 0:
            save_checkpoint(learner.checkpoint(state), fold_dir / LAST)
        write_history(state["history"], fold_dir)
        if config.record_samples:
            _record_samples(fold_dir, epoch, stats["seen"])
        ctx.logger.log_epoch(task.name, fold, row)
    runtime.barrier()


def _validate(
    config: TrainConfig,
    runtime: Runtime,
    task: Task,
    feed: _FoldFeed,
    learner: _Learner,
    state: dict[str, Any],
    epoch: int,
) -> tuple[float, float, bool]:
    """Score the held-out items after an epoch and track the best epoch in `state`: (score, loss,
    improved)."""
    idx, probs, val_loss = predict_probs(
        learner.evaluator,
        feed.valid_loader,
        runtime,
        task.num_targets,
        task.num_classes,
        learner.loss_fn,
        config.class_weights,
        config.fast_dev_run,
    )
    score = validation_score(task, task.prediction_rows(feed.valid_ds.items.iloc[idx], probs))
    sign = 1.0 if task.higher_is_better else -1.0
    improved = state["best_score"] is None or (
        not math.isnan(score)
        and (math.isnan(state["best_score"]) or sign * (score - state["best_score"]) > 0)
    )
    if improved:
        state.update(best_score=score, best_epoch=epoch, bad_epochs=0)
    else:
        state["bad_epochs"] += 1
    return score, val_loss, improved


def _close_fold(
    config: TrainConfig,
    runtime: Runtime,
    learner: _Learner,
    state: dict[str, Any],
    fold_dir: Path,
    reused: bool,
) -> None:
    """After the epochs: the curves, `final.pt` (select="last"), the fold's record (finished: last.pt removed
    unless `keep_last`) on rank 0; then the selected weights loaded into the evaluator on every rank."""
    evaluator = learner.evaluator
    if runtime.is_main and not reused:
        if state["history"]:
            plot_history(state["history"], fold_dir)
        if config.select == "last":  # after the last epoch; also after a resume that found the fold finished
            save_checkpoint(unwrap(evaluator).state_dict(), fold_dir / FINAL)
        if state["finished"]:  # the fold's record; the optimizer state is no longer needed
            write_json(state, fold_dir / STATE_JSON)
            if not config.keep_last:
                (fold_dir / LAST).unlink(missing_ok=True)
    runtime.barrier()
    if config.select == "best":
        unwrap(evaluator).load_state_dict(load_checkpoint(fold_dir / BEST, map_location=runtime.device))


def _fold_timing(state: dict[str, Any]) -> dict[str, float]:
    """The fold's epochs, best epoch, loader and model seconds per batch, training seconds (result.json)."""
    history = state["history"]
    batches = sum(r["batches"] for r in history) or 1
    return {
        "epochs": state["epoch"],
        "best_epoch": state["best_epoch"],
        "data_s_per_batch": sum(r["data_s"] for r in history) / batches,
        "model_s_per_batch": sum(r["model_s"] for r in history) / batches,
        "train_seconds": sum(r["seconds"] for r in history),
    }


def _predict_rows(
    model: nn.Module, dataset: RoiDataset, task: Task, config: TrainConfig, runtime: Runtime, max_batches: int
) -> dict[str, pd.DataFrame]:
    """Prediction rows (with grades) of every item of an evaluation dataset: the plain prediction (`IDENTITY`)
    and, per TTA candidate (`config.tta`), the mean over that entry's own views."""
    # the same batches on every pass
    loader = eval_loader(dataset, config.batch_size, config.workers, runtime)
    tables = {}
    for entry in (IDENTITY, *(c for c in usable(config.tta, task.crop_kinds) if c != IDENTITY)):
        # one pass per entry: a fold's crops at the competition's size are GBs, too many to hold for all
        # passes
        idx, probs, _ = predict_probs(
            model,
            loader,
            runtime,
            task.num_targets,
            task.num_classes,
            max_batches=max_batches,
            tta=tta_views([entry], identity=False),
        )
        tables[entry] = task.prediction_rows(dataset.items.iloc[idx], probs)
    return tables


def _schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    """Linear warm-up from 1 % of the learning rate, then cosine decay to 0, stepped per batch."""
    total_steps = max(1, total_steps)
    warmup_steps = min(max(0, warmup_steps), total_steps - 1)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps - warmup_steps)
    if warmup_steps == 0:
        return cosine
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=warmup_steps)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])


def _train_epoch(
    learner: _Learner,
    loader: DataLoader,
    config: TrainConfig,
    runtime: Runtime,
    task: Task,
    desc: str,
    weighted: bool = True,
) -> dict[str, Any]:
    """One pass over the training loader, its batches mixed by `learner.mix` (at most `config.fast_dev_run`
    batches when set), weighted or not (`weighted_from_epoch`); returns mean loss, sample count, loader and
    model seconds.

    Nothing in a step waits for the device (module docstring): the loss is read every `config.log_every` steps
    for the progress bar (only when it is shown) and once at the end.
    """
    learner.net.train()
    max_batches = config.fast_dev_run
    data_s, model_s, batches, seen = 0.0, 0.0, 0, []
    running = RunningMean(runtime.device)
    bar = tqdm(
        total=max_batches or len(loader),
        desc=desc,
        leave=False,
        disable=not (config.progress and runtime.is_main),
    )
    tick = time.perf_counter()
    for batch in loader:
        if max_batches and batches >= max_batches:
            break
        fetched = time.perf_counter()
        data_s += fetched - tick
        loss, n = _train_step(learner, batch, config, runtime, task, weighted)
        running.add(loss, n)
        batches += 1
        if config.record_samples:
            seen.extend(loader.dataset.sample_ids(batch["index"].tolist()))
        tick = time.perf_counter()
        model_s += tick - fetched
        bar.update()
        if not bar.disable and batches % config.log_every == 0:
            bar.set_postfix(loss=f"{running.value():.4f}")
    bar.close()
    stats = runtime.all_gather((running.sum(), running.count, seen))
    n = sum(s[1] for s in stats)
    return {
        "loss": sum(s[0] for s in stats) / max(n, 1),
        "samples": n,
        "data_s": data_s,
        "model_s": model_s,
        "batches": batches,
        "seen": [s[2] for s in stats],
    }


def _train_step(
    learner: _Learner,
    batch: dict[str, Any],
    config: TrainConfig,
    runtime: Runtime,
    task: Task,
    weighted: bool = True,
) -> tuple[torch.Tensor, int]:
    """One optimisation step on a batch: mixed, scaled, clipped, scheduled, the EMA updated. Unweighted
    (before `weighted_from_epoch`): every grade weight 1 and no any-severe term. Returns the loss (on the
    device, not read) and the batch's size."""
    model, optimizer, scaler = learner.model, learner.optimizer, learner.scaler
    x, meta = batch_to_device(batch, runtime, model)
    target = batch["target"].to(runtime.device, non_blocking=True)
    grade = batch["grade"].to(runtime.device, non_blocking=True)
    w = (learner.weights[grade.clamp_min(0)] if weighted else 1.0) * (target >= 0)
    mixed = learner.mix(x, meta)
    with runtime.autocast():
        logits = learner.net(mixed.x, mixed.meta).float().reshape(len(x), task.num_targets, task.num_classes)
    if learner.by_study and weighted:
        study = batch["study"].to(runtime.device, non_blocking=True)
        loss = mixed_loss(learner.train_loss_fn, logits, target, w, mixed, study)
    else:
        loss = mixed_loss(learner.loss_fn, logits, target, w, mixed)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if config.grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    learner.scheduler.step()
    if learner.ema is not None:
        learner.ema.update_parameters(model)
    return loss, len(x)


def _record_samples(fold_dir: Path, epoch: int, seen: list[list[str]]) -> None:
    path = fold_dir / "samples_seen.json"
    record = json.loads(path.read_text()) if path.is_file() else {}
    record[str(epoch)] = {str(rank): ids for rank, ids in enumerate(seen)}
    write_json(record, path)
