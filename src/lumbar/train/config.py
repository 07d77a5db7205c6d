"""The training configuration: one typed dataclass with defaults, overridden from YAML, the CLI or papermill.

Overrides arrive as strings (CLI `--set key=value`), YAML scalars or notebook parameters; each is cast to the
type of the field's default (`"0,1"` -> `(0, 1)`, `"true"` -> `True`, a JSON/YAML mapping for dicts), and a
key that is no field is an error that names the closest field, so a typo never silently trains the default.
The resolved config is written as `config.json` into the run folder and read back by `predict_cache`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lumbar.core.atomic import write_json
from lumbar.core.encoders import upgrade_saved_settings
from lumbar.core.settings import resolve_settings
from lumbar.preprocess.views import list_views
from lumbar.train.losses import ANY_SEVERE
from lumbar.train.mixing import list_mixes
from lumbar.train.tta import list_tta

#: Values of `TrainConfig.train_crops` and `TrainConfig.select`.
TRAIN_CROPS: tuple[str, ...] = ("gt", "oof", "both")
SELECT: tuple[str, ...] = ("last", "best")
#: Values of `TrainConfig.fusion`.
FUSIONS: tuple[str, ...] = ("early", "late")


@dataclass
class TrainConfig:
    """Everything one training run needs; an experiment is a set of overrides of these defaults.

    Attributes:
        data_dir: competition data folder (holds `train.csv`); None resolves through `lumbar.core.paths`.
        cache: the ROI tensor cache folder (`samples.parquet`, `params.json`, the .npy crops) built around the
            ground-truth label points; may be empty when only `oof_cache` crops are used.
        oof_cache: a cache of the same `RoiConfig` built around the localizer's out-of-fold points (each train
            study localised by the localizer of the fold that did not see it). When given, validation (the
            per-epoch metric, `oof.csv`, `oof_score`) runs on it, as test predictions are made; with `cache`
            too, `oof_gt.csv` and `oof_score_gt` give the same fold models on the ground-truth crops (what
            localisation costs, out of fold).
        train_crops: where the training items come from: "gt" (`cache`), "oof" (`oof_cache`) or "both" (each
            item twice, once per source; an item without an oof crop once).
        out: the run folder (checkpoints, logs, OOF predictions, reports, manifest).
        arch: registered model name (`lumbar.models.list_models()`, or `family:variant`).
        mode: task mode (`lumbar.train.tasks.TASK_MODES`).
        conditions: conditions to train (snake case or the thesis's abbreviations); empty = the mode's default
            (single: scs; multi: scs, lnfn, rnfn; competition: all five).
        folds: folds to train; empty = all of `n_folds`.
        n_folds: number of folds written to the folds CSV.
        folds_csv: the shared folds file; empty = `folds.csv` beside the run folder (its parent), so every
            architecture of one experiment reuses it.
        epochs, batch_size, lr, weight_decay, warmup_epochs: optimisation (AdamW, cosine decay after a
            linear warm-up, stepped per batch).
        loss: registered loss name (`lumbar.train.losses`): "ce" or "focal".
        class_weights: weight of a sample by its true grade (Normal/Mild, Moderate, Severe): the metric's.
        focal_gamma: focusing parameter of the focal loss.
        any_severe_weight: competition mode, spinal unit: adds this times the metric's any_severe_spinal term
            (per study, the weighted binary log loss of max p(severe) over its levels;
            `lumbar.train.losses.any_severe_term`) to `loss`, the batches then holding whole studies
            (`lumbar.train.sampling.StudyBatchSampler`: batch_size // 5 studies a batch); the other units
            train as without it. 0 = off (the loss and batches as before).
        weighted_from_epoch: the first epoch whose loss takes `class_weights` and the any-severe term; the
            epochs before it train unweighted (every grade weight 1, no term). 5th place's two-step schedule:
            unweighted training, then a weighted + any-severe fine-tune ("significantly improved" there).
            1 = weighted from the start (as before).
        balanced_sampling: draw training samples with probability inverse to their grade's frequency.
        augment: "default" (the task's preset), "none", or comma-separated registered augmentation names.
        mirror_p: probability of a left-right mirror with label swap, where the task allows it.
        mix: batch augmentations mixing two samples (`lumbar.train.mixing`: "mixup", "cutmix"; one drawn per
            batch); empty = none.
        mix_alpha: the kept share lam ~ Beta(mix_alpha, mix_alpha); <= 0 turns mixing off.
        mix_p: probability that a batch is mixed.
        views: second views (`lumbar.preprocess.views`: "axial_canal" for spinal, "parasagittal_recess" for
            subarticular) read as further input channels of their condition group's unit; the caches must be
            built with them (`RoiConfig.views`); empty = one view per condition.
        fusion: how a multi-view unit combines its views: "early" (one encoder, views as channels) or "late"
            (one encoder per view, features concatenated: `lumbar.models.fusion`).
        tta: candidate test-time augmentations (`lumbar.train.tta`: "reverse_slices", "shifts"); after
            training each unit chooses a subset of them fold-wise by out-of-fold score, for its OOF rows and
            its test predictions (recorded in result.json); empty = none.
        max_shift_slices, max_shift_px: uniform crop jitter in training (`preprocess.jitter.random_window`);
            capped by the context the cache stores.
        jitter: "" = the uniform jitter above for every training crop; else a localizer errors file
            (`preprocess.jitter.write_localizer_errors`): ground-truth crops are shifted by one recorded
            out-of-fold error of their condition (slice and in-plane together, clipped to the stored pads;
            `LocalizerJitter`), oof crops are not shifted (they carry the localizer's real error); a condition
            absent from the file keeps the uniform jitter, and so does the in-plane part with
            `margin_mode="thesis_px"` caches.
        exclude: "" = train on every labelled item; else an exclusion list (a CSV with a `row_id` column, e.g.
            `label_noise/flags.csv` of a first round, `lumbar.analysis.label_noise`): the grades it names are
            left out of the *training* items (an item with no grade left is dropped); validation, the OOF
            predictions and their scores keep every item, so rounds stay comparable.
        ema_decay: exponential moving average of the weights (0 = off); evaluation and checkpoints use it.
        amp: mixed precision on CUDA (bf16 from compute capability 8.0, else fp16 with a grad scaler where the
        GPU
            computes it natively; `lumbar.core.runtime.amp_dtype_for`); ignored on CPU.
        channels_last: channels-last memory format on CUDA.
        grad_clip: max gradient norm (0 = off).
        select: which weights make the OOF predictions and the inference checkpoint: "last" (after the last
            epoch, the EMA weights when EMA is on: `final.pt`) or "best" (the epoch with the best validation
            score: `best.pt`; chosen on the fold it is then scored on, so its OOF score is optimistic).
        patience: epochs without improvement of the validation metric before stopping (0 = never stop); it
            chooses the stopping epoch on the scored fold too, so only with select="best".
        val_every: validate every this many epochs, and always after the last one (select="best" validates
        every
            epoch). With select="last" validation only draws the learning curves, so fewer points cost nothing
            in the predictions.
        checkpoint_every: write `last.pt` (the state a killed run resumes from) every this many epochs, and
            always after the last one; a resnet18's `last.pt` (weights, EMA, AdamW moments) takes a third of
            a second to write on the demo machine.
        log_every: steps between reads of the running training loss for the progress bar (each read waits for
            the device; nothing else in a step does).
        seed: seeds weights, sampling order and augmentation (deterministic on CPU).
        workers: DataLoader worker processes.
        threads: torch CPU threads of this process (0 = torch's default); 1 is much faster than 2 on a machine
            whose cores are busy with other work (OpenMP threads wait on each other).
        device: "auto" (CUDA when present), "cpu" or "cuda".
        fast_dev_run: when > 0: 1 epoch of that many train and validation batches (smoke test).
        overfit_batches: when > 0: train and validate on the same first batches, without augmentation.
        pretrained: encoder weights: "none" (random init), "imagenet" (timm's, through its hub cache) or a
        local
            weights file or folder (`python -m lumbar weights`); see `lumbar.core.encoders`. Training only:
            inference loads the run's own checkpoints.
        drop_rate: dropout before the head.
        model_kwargs: the architecture's own options (passed to `build_model`).
        mirror_right: competition mode: mirror right-side crops onto the left (flip + side flag), pooling
        sides.
        resume: continue a fold from its `last.pt`, or reuse a finished fold, when the folder's saved settings
            and inputs equal these (`RUN_ONLY` fields aside); otherwise `train` stops at once naming what
            differs.
            False: train every fold again from scratch.
        keep_last: keep a finished fold's `last.pt` (optimizer state: twice the weights' size, or more); by
            default it is removed once the fold has finished and `final.pt`/`best.pt` is written.
        progress: tqdm bars (rank 0 only).
        tensorboard: write TensorBoard curves of every unit and fold under `<out>/tensorboard/` (rank 0 only;
        needs
            the `tensorboard` package).
        record_samples: write the sample ids each rank trained on per epoch (`samples_seen.json`; for tests).
    """

    data_dir: str = ""
    cache: str = ""
    oof_cache: str = ""
    train_crops: str = "gt"
    out: str = "runs/train"
    arch: str = "cnn3d"
    mode: str = "competition"
    conditions: tuple[str, ...] = ()
    folds: tuple[int, ...] = ()
    n_folds: int = 5
    folds_csv: str = ""
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_epochs: float = 1.0
    loss: str = "ce"
    class_weights: tuple[float, ...] = (1.0, 2.0, 4.0)
    focal_gamma: float = 2.0
    any_severe_weight: float = 0.0
    weighted_from_epoch: int = 1
    balanced_sampling: bool = False
    augment: str = "default"
    mirror_p: float = 0.5
    mix: tuple[str, ...] = ()
    mix_alpha: float = 0.4
    mix_p: float = 0.5
    tta: tuple[str, ...] = ()
    views: tuple[str, ...] = ()
    fusion: str = "early"
    max_shift_slices: int = 1
    max_shift_px: int = 8
    jitter: str = ""
    exclude: str = ""
    ema_decay: float = 0.0
    amp: bool = True
    channels_last: bool = True
    grad_clip: float = 1.0
    select: str = "last"
    patience: int = 0
    val_every: int = 1
    checkpoint_every: int = 1
    log_every: int = 50
    seed: int = 42
    workers: int = 0
    threads: int = 0
    device: str = "auto"
    fast_dev_run: int = 0
    overfit_batches: int = 0
    pretrained: str = "none"
    drop_rate: float = 0.0
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    mirror_right: bool = True
    resume: bool = True
    keep_last: bool = False
    progress: bool = True
    tensorboard: bool = False
    record_samples: bool = False

    @property
    def fold_epochs(self) -> int:
        """Epochs each fold trains: `epochs`, or 1 in a `fast_dev_run`."""
        return 1 if self.fast_dev_run else self.epochs

    def check(self) -> None:
        """The combinations a run needs (a layered override may pass through others, so `train` checks here).

        Raises:
            ValueError: an unknown `train_crops`, `select`, `mix` or `tta` name, a crop source without its
            cache,
                a jitter file without ground-truth training crops, an interval below 1, patience with
                select="last", or `any_severe_weight` below 0 or outside the competition mode.
        """
        if self.train_crops not in TRAIN_CROPS:
            raise ValueError(f"train_crops={self.train_crops!r}: expected one of {list(TRAIN_CROPS)}")
        if self.select not in SELECT:
            raise ValueError(f"select={self.select!r}: expected one of {list(SELECT)}")
        if self.train_crops in ("gt", "both") and not self.cache:
            raise ValueError(f"train_crops={self.train_crops!r} needs `cache` (the ground-truth crops)")
        if self.train_crops in ("oof", "both") and not self.oof_cache:
            raise ValueError(
                f"train_crops={self.train_crops!r} needs `oof_cache` (the localizer's out-of-fold crops)"
            )
        if self.jitter and self.train_crops == "oof":
            raise ValueError(
                "jitter shifts the ground-truth training crops, and train_crops='oof' has none; "
                "set jitter='' or train on gt or both"
            )

        for kind, names, registered in (("mix", self.mix, list_mixes()), ("tta", self.tta, list_tta())):
            unknown = [n for n in names if n not in registered]
            if unknown:
                raise ValueError(f"{kind}={list(names)}: unknown {unknown}; registered: {registered}")

        self._check_any_severe()

        unknown = [v for v in self.views if v not in list_views()]
        if unknown:
            raise ValueError(f"views={list(self.views)}: unknown {unknown}; registered: {list_views()}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion={self.fusion!r}: expected one of {list(FUSIONS)}")
        for name in ("val_every", "checkpoint_every", "log_every", "weighted_from_epoch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected a whole number >= 1")
        if self.patience > 0 and self.select != "best":
            raise ValueError(
                f"patience={self.patience} chooses the stopping epoch on the fold that is then scored "
                "out of fold; use it with select=best, or set patience=0"
            )

    def _check_any_severe(self) -> None:
        if self.loss == ANY_SEVERE:
            raise ValueError(
                f"loss={ANY_SEVERE!r} is the term any_severe_weight adds to a loss; "
                "set loss to ce or focal and any_severe_weight > 0"
            )
        if self.any_severe_weight < 0:
            raise ValueError(f"any_severe_weight={self.any_severe_weight}: expected >= 0 (0 = off)")
        if self.any_severe_weight > 0 and self.mode != "competition":
            raise ValueError(
                f"any_severe_weight={self.any_severe_weight} is the competition metric's term for the "
                f"competition mode's spinal unit; mode={self.mode!r} has none (set any_severe_weight=0)"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def save(self, path: str | Path) -> Path:
        """Write the resolved config as JSON (atomically)."""
        return write_json(self.to_dict(), path, indent=1)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a config written by `save` (unknown keys are errors, as for any override; older runs' settings
        are
        upgraded, `lumbar.core.encoders.upgrade_saved_settings`)."""

        return make_config(upgrade_saved_settings(json.loads(Path(path).read_text())), source=str(path))


#: Settings that do not change what a fold's weights are (where and how fast it runs, what is logged, which
#: folds this call trains, how the held-out rows are predicted): a run may resume or be reused with other
#: values.
RUN_ONLY = frozenset(
    {
        "data_dir",
        "cache",
        "oof_cache",
        "jitter",
        "exclude",
        "out",
        "folds",
        "folds_csv",
        "tta",
        "amp",
        "channels_last",
        "val_every",
        "checkpoint_every",
        "log_every",
        "workers",
        "threads",
        "device",
        "resume",
        "keep_last",
        "progress",
        "record_samples",
        "tensorboard",
    }
)


def make_config(
    overrides: Mapping[str, Any] | None = None, base: TrainConfig | None = None, source: str = "overrides"
) -> TrainConfig:
    """A config from defaults (or `base`) and overrides cast to the fields' types.

    Args:
        overrides: key -> value; dashes in keys are read as underscores (CLI spelling).
        base: the config to start from (default: the dataclass defaults).
        source: where the overrides come from, for error messages.

    Raises:
        KeyError: an unknown key; ValueError: a value of the wrong type.
    """
    return resolve_settings(base or TrainConfig(), [(source, overrides)])


def load_yaml_overrides(path: str | Path) -> dict[str, Any]:
    """The overrides of a YAML file: a mapping at the top level, or under a `train:` key."""
    path = Path(path)
    document = yaml.safe_load(path.read_text()) or {}
    if isinstance(document, Mapping) and isinstance(document.get("train"), Mapping):
        document = document["train"]
    if not isinstance(document, Mapping):
        kind = type(document).__name__
        raise ValueError(f"{path}: expected a mapping of config keys, got {kind}")  # noqa: TRY004
    return dict(document)
