"""What a pipeline run will cost before it starts: `python -m lumbar pipeline --config C --plan`.

A run of `configs/full.yaml` on the competition data writes tens of GB (two crop caches with second views, the
localizer's decoded inputs, checkpoints with optimizer state), needs RAM in proportion to its processes and
takes hours. The plan resolves every step's parameters as the run would (`plan_steps`: the notebook's own
defaults < the config < the step < `--set`), reads the train split's header index (built and cached as
`RUN_DIR/index_train.parquet` when missing, where `01_preprocess` then finds it: the only file the plan
writes) and the label coordinates, and prints per step the samples, the disk it writes, its peak RAM, its
seconds per epoch on its device and in all; then the totals, the free space where the run goes, and a warning
when the run does not fit there. Nothing is trained.

Every figure is an estimate and says what it rests on:

- `measured`: a figure of a benchmark table of this repository for the same setting (the table is named);
- `projected`: computed by the rule it shows: array shapes x bytes (caches, the localizer's inputs), parameter
  counts x bytes (checkpoints: each model is built with `pretrained: none` on torch's meta device, so no
  weights are allocated or fetched), counted FLOPs / an ASSUMED throughput (model time), or a measured rate or
  memory (`Source`, listed under the plan) scaled by samples, workers or processes.

The rules:

- crop caches (01; 02's around the out-of-fold points): arrays x (depth + 2 pad_slices) x (size + 2 pad_px)^2
  x 2 B (float16) + a 128 B .npy header + ~200 B of table rows (depth: each group's slab). 01's arrays: one
  per ground-truth coordinate row whose image is in the index, plus each second view at most once per row of
  its group in a study that has a row on the view's series (a point more than 10 mm off that series gets no
  view: an upper bound). 02's: 5 levels of every condition whose series the study has (subarticular also needs
  the Sagittal T2/STIR, as `localize` does).
- the localizer's decoded inputs: samples x stored channels x size^2 x 2 B, and the slice scorer's crops of
  every slice of its stack per labelled point; decoded in the notebook's one process.
- checkpoints: `final.pt`/`best.pt` = the state dict; `last.pt` = the model, its EMA and AdamW's two moments
  (about 4 x the state dict), per unit and fold; the localizer: its models' state dicts, per fold. Each tensor
  costs `PICKLE_BYTES_PER_TENSOR` more in torch's zip format.
- model time: a training step costs 3 x the forward's FLOPs (counted with torch's FlopCounterMode on the meta
  device), validation and each test-time augmentation view one forward; divided by `GPU_FLOPS` on one GPU or
  by `CPU_FLOPS_PER_THREAD` x the step's threads. A classifier's epoch lasts at least its loading time (one
  crop per input channel of an item, `LOADER_SAMPLES_PER_S` per DataLoader worker); without workers loading
  adds to it.
- memory: a process's base plus what the step holds (the localizer's inputs twice while they are stacked, in
  every model process running at once), or a measured peak scaled by its workers.
- a `parallel:` group's notebooks overlap: the group takes its longest member's time and the sum of their RAM.

The notebooks' own code is mirrored where a setting is derived from parameters (`RoiConfig` as 01 builds it,
`LocalizerConfig` as 02, the training config as 03).
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lumbar.core.constants import (
    AXIAL_T2,
    CONDITION_GROUP,
    CONDITIONS,
    GROUPS,
    LEVELS,
    SAGITTAL_T1,
    SAGITTAL_T2,
)
from lumbar.core.paths import images_dir
from lumbar.core.processes import available_cores, plan_processes, visible_gpus
from lumbar.core.tables import load_coordinates
from lumbar.data.index import load_or_build_index
from lumbar.localize.config import LocalizerConfig
from lumbar.localize.tasks import TASKS, placed_coordinates
from lumbar.localize.train import build_model as build_localizer_model
from lumbar.localize.train import build_scorer, crop_geometry
from lumbar.models import build_model
from lumbar.pipeline.config import PipelineConfig, Step, check_data_kind, notebook_defaults, plan_steps
from lumbar.pipeline.runner import group_plan
from lumbar.preprocess.cache import cache_name
from lumbar.preprocess.config import RoiConfig
from lumbar.preprocess.views import get_view
from lumbar.train.config import make_config
from lumbar.train.predict import unit_sizes
from lumbar.train.tasks import build_tasks, resolve_conditions
from lumbar.train.tta import n_views, usable

MIB, GIB = 2**20, 2**30
NPY_HEADER_BYTES = 128
CPU, GPU = "CPU", "one GPU"  # where a step's time is spent


@dataclass(frozen=True)
class Source:
    """A number the plan scales: its short name in the plan's lines, its value, and (as printed) the value
    with
    where it comes from."""

    name: str
    value: float
    where: str


#: Figures of this repository's benchmark tables (benchmarks/results.md, benchmarks/scale.md).
HEADERS_PER_S = Source(
    "header rate", 1893.1, "1,893 files/s per worker: results.md 'DICOM header index' (real sample)"
)
DECODE_PX_PER_S = Source(
    "decode rate", 82.4e6, "82.4 Mpx/s: results.md 'volume reading', read_series (real sample)"
)
CROP_STUDIES_PER_S = Source(
    "crop rate",
    2.68,
    "2.68 studies/s per worker: results.md 'ROI tensor cache' (B2A2 128 none, 1 worker, real sample)",
)
CROP_MAIN_MIB = Source(
    "crop RSS",
    332,
    "332 MiB, the main process, + 134 MiB per worker: scale.md 'crop cache' at "
    "1,975 studies (tree 601 MiB with 2 workers; synthetic 128-px studies)",
)
CROP_WORKER_MIB = Source("crop RSS", (601 - 332) / 2, CROP_MAIN_MIB.where)
INDEX_BYTES_PER_FILE = Source(
    "index RSS", 1.6 * 1024, "1.6 KiB per indexed file: scale.md 'header index' growth"
)
LOADER_SAMPLES_PER_S = Source(
    "loader rate",
    204,
    "204 crops of 284 KiB per CPU second per DataLoader worker: scale.md "
    "'Loader against the GPU' (1,975 studies); other crop sizes scaled by "
    "their bytes (ASSUMED)",
)
LOADER_CROP_BYTES = (
    290_304 + NPY_HEADER_BYTES
)  # the crops of that measurement (128 px, 5 + 2 slices, 8 px pads)
TRAIN_MAIN_MIB = Source(
    "train RSS",
    1586,
    "1,586 MiB, the training process, + 956 MiB per DataLoader worker: scale.md "
    "'One training epoch' at 1,975 studies (tree 3,498 MiB with 2 workers; "
    "RSS counts shared pages per process: an upper bound)",
)
TRAIN_WORKER_MIB = Source("train RSS", (3498 - 1586) / 2, TRAIN_MAIN_MIB.where)
TORCH_PROCESS_MIB = Source(
    "process RSS",
    942,
    "942 MiB, a process after importing torch and timm: results.md "
    "'Training step per registered architecture' (peak RSS - growth)",
)
PREDICT_MIB = Source(
    "predict RSS", 1770, "1,770 MiB: scale.md 'Predict at 1,975 studies' (tree RSS, a small ensemble)"
)
PREDICT_CPU_S = Source(
    "predict CPU",
    3.42,
    "3.42 s per study outside the model forwards: results.md 'Kaggle time "
    "budget' (configs/full.yaml's ensemble, real sample)",
)
LOCALIZE_CPU_S = Source(
    "localize CPU",
    8.388 - 6.582,
    "1.81 s per study outside the forwards: results.md 'Kaggle time budget', localize (256 px, real sample)",
)
ENSEMBLE_S = Source(
    "ensemble rate",
    24 / 60 / 2,
    "0.2 s per study and member: README, the demo's 04_ensemble (24 s, 60 studies, 2 members)",
)
#: Assumptions: not measured here; every line that uses one says ASSUMED.
GPU_FLOPS = Source(
    "GPU rate",
    25e12,
    "25 TFLOP/s per GPU, ASSUMED: timm's published RTX 3090 AMP training rates x "
    "counted FLOPs give 25 for convnext_small (16 efficientnetv2_s, 45 resnet34; "
    "scale.md quotes the rates); an A100 or H100 is faster: scale by your card",
)
CPU_FLOPS_PER_THREAD = Source(
    "CPU rate",
    70e9,
    "70 GFLOP/s per thread, ASSUMED: the median of six rows of results.md's "
    "training-step table x their counted FLOPs (45-139 G)",
)
NOTEBOOK_BYTES = Source("notebook size", 2 * MIB, "2 MiB per executed notebook with its figures, ASSUMED")
PICKLE_BYTES_PER_TENSOR = (
    320  # torch.save's zip record and pickle entry per tensor (measured with io.BytesIO)
)
STACK_COPIES = (
    3  # the localizer's inputs while `prepare_inputs` stacks them: the list, np.stack, the astype copy
)
TABLE_BYTES_PER_ROW = 200  # samples.parquet / views.parquet / CSV rows, generous
STACK_KEYS = ["study_id", "series_id", "stack_index"]


@dataclass(frozen=True)
class Estimate:
    """One figure of the plan: its value (bytes or seconds), whether a benchmark measured it, how it was made,
    and the sources it scales."""

    value: float
    how: str
    sources: tuple[Source, ...] = ()
    measured: bool = False

    @property
    def basis(self) -> str:
        return "measured" if self.measured else "projected"


@dataclass
class StepCost:
    """What one step costs; `epochs`: (model, seconds per epoch and fold on the step's device)."""

    output: str
    samples: str
    disk: Estimate
    ram: Estimate
    seconds: Estimate
    device: str
    epochs: list[tuple[str, Estimate]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    group: int = 0
    parallel: bool = False


@dataclass
class DataFacts:
    """What the plan counts on: the train split's header index, the label coordinates, the test studies."""

    data_dir: Path
    index: pd.DataFrame
    coords: pd.DataFrame
    test_studies: int
    index_note: str

    @property
    def studies(self) -> int:
        return int(self.coords["study_id"].nunique())


@dataclass
class RunState:
    """What earlier steps leave for later ones: the crop geometry, the caches' counts, the models' sizes."""

    roi: Any = None  # the RoiConfig of 01 (RoiConfig's defaults when the config has no 01)
    folds: int = 5
    gt_crops: dict[str, int] = field(default_factory=dict)  # condition or view -> arrays
    oof_crops: dict[str, int] = field(default_factory=dict)
    localizer_bytes: int = 0  # all folds' localizer checkpoints
    localizer_flops: float = 0.0  # forward FLOPs per study, all folds (as `predict` runs them)
    members: dict[str, tuple[int, float]] = field(
        default_factory=dict
    )  # classifier -> (weights, FLOPs per study)
    models: dict[tuple, tuple[int, int, int, float]] = field(default_factory=dict)  # `model_figures` by key


@dataclass(frozen=True)
class Machine:
    """Where a step runs: the CPU threads its notebook gets, the machine's cores, whether CUDA is there (what
    DEVICE=auto picks) and how many GPUs (processes that hold models: one per GPU,
    `lumbar.core.processes.plan_processes`)."""

    threads: int
    cores: int
    cuda: bool
    gpus: int = 1


# --- parameters ---------------------------------------------------------------------------------------------


def step_parameters(step: Step, config: PipelineConfig) -> dict[str, Any]:
    """Every parameter a step's notebook will see: its defaults, then the step's resolved values."""
    return {**notebook_defaults(config.notebook_dir / f"{step.notebook}.ipynb"), **step.parameters}


def on_gpu(device: str, machine: Machine) -> bool:
    """Whether a DEVICE value runs on CUDA ("auto": when this machine has it)."""
    return str(device).startswith("cuda") or (device == "auto" and machine.cuda)


# --- counting -----------------------------------------------------------------------------------------------


def indexed_rows(coords: pd.DataFrame, index: pd.DataFrame) -> pd.DataFrame:
    """The coordinate rows a crop cache builds: one per study, condition and level, whose instance is
    indexed."""
    keys = ["study_id", "series_id", "instance_number"]
    rows = coords.drop_duplicates(["study_id", "condition", "level"])
    return rows.merge(index[keys].drop_duplicates(), on=keys, how="inner")


def crop_counts(rows: pd.DataFrame, views: tuple[str, ...]) -> dict[str, int]:
    """Arrays of a crop cache by condition, and by second view (at most one per row of the view's group, in
    studies with a row on the series the view is cut from)."""

    group = rows["condition"].map(CONDITION_GROUP)
    counts = {c: int((rows["condition"] == c).sum()) for c in CONDITIONS}
    on_series = {SAGITTAL_T2: "spinal", SAGITTAL_T1: "foraminal", AXIAL_T2: "subarticular"}
    for name in views:
        view = get_view(name)
        has_series = set(rows.loc[group == on_series[view.series], "study_id"])
        counts[name] = int(((group == view.group) & rows["study_id"].isin(has_series)).sum())
    return counts


def primary_crops(counts: Mapping[str, int]) -> int:
    """The crops of a cache's `crop_counts` without its second views."""
    return sum(counts.get(c, 0) for c in CONDITIONS)


def oof_rows(index: pd.DataFrame, studies: set[int]) -> pd.DataFrame:
    """The rows the localizer predicts for `studies` (`lumbar.localize.predict`): 5 levels of each condition
    whose series the study has; subarticular also needs the Sagittal T2/STIR (its slices come from the
    canal)."""
    need = {"spinal": {SAGITTAL_T2}, "foraminal": {SAGITTAL_T1}, "subarticular": {SAGITTAL_T2, AXIAL_T2}}
    series = index[index["study_id"].isin(studies)].groupby("study_id")["series_description"].agg(set)
    rows = [
        (study, condition, level)
        for study, has in series.items()
        for condition in CONDITIONS
        if need[CONDITION_GROUP[condition]] <= has
        for level in LEVELS
    ]
    return pd.DataFrame(rows, columns=["study_id", "condition", "level"])


def crop_depth(roi, key: str | None = None) -> int:
    """Slices of a crop of a condition, or of a second view (its target's group's slab); None: the common."""
    if key is None:
        return roi.out_depth
    if key not in CONDITIONS:
        key = next(c for c in CONDITIONS if CONDITION_GROUP[c] == get_view(key).group)
    return roi.depth_of(key)


def unit_depth(roi, task) -> int:
    """The one depth of a unit's crops; a unit stacking crops of several depths is an error naming the
    slabs."""
    depths = {c: roi.depth_of(c) for c in task.conditions}
    if len(set(depths.values())) > 1:
        raise ValueError(
            f"unit {task.name!r} stacks crops of {depths} slices as channels of one sample; give its "
            "groups one slab (01_preprocess spinal_slices / foraminal_slices / subarticular_slices) or "
            "train a one-crop mode"
        )
    return next(iter(depths.values()))


def crop_array_bytes(roi, key: str | None = None) -> int:
    """Bytes of one stored crop (`lumbar.preprocess.cache`) of a condition or view (`crop_depth`): float16
    with its jitter context, and its header."""
    side = roi.size + 2 * roi.pad_px
    return 2 * (crop_depth(roi, key) + 2 * roi.pad_slices) * side * side + NPY_HEADER_BYTES


def cache_bytes(counts: Mapping[str, int], roi) -> int:
    """A crop cache on disk: its arrays and their table rows, params.json and the failure lists."""
    return sum(n * (crop_array_bytes(roi, k) + TABLE_BYTES_PER_ROW) for k, n in counts.items()) + 16 * 1024


def localizer_samples(coords: pd.DataFrame, index: pd.DataFrame, config) -> dict[str, dict[str, Any]]:
    """Per localizer model: samples, the model's input shape, the pixels decoded for them and the bytes of
    their
    cached inputs; counted as `lumbar.localize.tasks` forms the samples (one per sagittal stack with points,
    one per study and level on the axial series, one per labelled point for a slice scorer)."""

    placed = placed_coordinates(coords, index[index["study_id"].isin(coords["study_id"].unique())])
    stack_px = index.assign(px=index["rows"].astype(float) * index["columns"]).groupby(STACK_KEYS)["px"].sum()

    def rows_of(task) -> pd.DataFrame:
        conditions = {c for c, _ in task.points}
        return placed[
            (placed["series_description"] == task.series_description) & placed["condition"].isin(conditions)
        ]

    def stack_pixels(rows: pd.DataFrame) -> float:  # whole stacks are decoded for the sagittal models
        stacks = rows.drop_duplicates(STACK_KEYS)[STACK_KEYS]
        return float(stack_px.reindex(pd.MultiIndex.from_frame(stacks)).fillna(0).sum())

    out: dict[str, dict[str, Any]] = {}
    for name in config.task_names:
        task, rows = TASKS[name], rows_of(TASKS[name])
        if task.plane == "sagittal":
            n, pixels = len(rows.drop_duplicates(STACK_KEYS)), stack_pixels(rows)
            stored = channels = config.slices
        else:  # the stored window is wider than the model's input by the training-time slice shift
            centres = rows.drop_duplicates(["study_id", "level"])
            n, channels = len(centres), 2 * config.axial_neighbors + 1
            stored = 2 * (config.axial_neighbors + config.axial_slice_shift) + 1
            pixels = float((centres["rows"].astype(float) * centres["columns"]).sum() * stored)
        out[name] = {
            "samples": n,
            "shape": (channels, config.size, config.size),
            "pixels": pixels,
            "bytes": n * (2 * stored * config.size**2 + NPY_HEADER_BYTES),
        }
    geometry = crop_geometry(config)
    side = geometry.size + 2 * geometry.pad
    for name in config.refine_task_names:  # sagittal tasks only (`train_localizer` refuses others)
        rows = rows_of(TASKS[name])
        points = rows.drop_duplicates([*STACK_KEYS, "condition", "level"])
        out[f"{name}_slices"] = {
            "samples": len(points),
            "shape": (2 * config.refine_window + 1, geometry.size, geometry.size),
            "pixels": stack_pixels(rows),
            "bytes": int((points["n_slices"] * 2 * side * side + NPY_HEADER_BYTES).sum()),
        }
    return out


# --- models -------------------------------------------------------------------------------------------------


def state_dict_bytes(model) -> tuple[int, int, int]:
    """(bytes of the state dict's tensors, how many tensors, parameters) of a model, on any device (meta
    too)."""
    state = model.state_dict()
    size = sum(t.numel() * t.element_size() for t in state.values())
    return size, len(state), sum(p.numel() for p in model.parameters())


def checkpoint_bytes(
    state_bytes: int, tensors: int, parameters: int, kind: str = "state", ema: bool = True
) -> int:
    """A checkpoint file's size: "state" (`final.pt`, `best.pt`, a localizer model) or "last" (`last.pt`: the
    model and its EMA when on, AdamW's exp_avg and exp_avg_sq in float32 and a step per parameter tensor, the
    RNG state)."""
    if kind == "state":
        return state_bytes + tensors * PICKLE_BYTES_PER_TENSOR + 1024
    copies = 2 if ema else 1
    return (
        copies * state_bytes
        + 2 * 4 * parameters
        + (copies + 2) * tensors * PICKLE_BYTES_PER_TENSOR
        + 8 * 1024
    )


def model_figures(build: Callable[[], Any], inputs: Callable[[], tuple]) -> tuple[int, int, int, float]:
    """(state bytes, tensors, parameters, forward FLOPs of `inputs`) of a model built on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build()
        args = inputs()
    size, tensors, params = state_dict_bytes(model)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(*args)
    return size, tensors, params, float(counter.get_total_flops())


def _figures(state: RunState, key: tuple, build: Callable[[], Any], inputs: Callable[[], tuple]):
    """`model_figures`, once per distinct model of the plan."""
    if key not in state.models:
        state.models[key] = model_figures(build, inputs)
    return state.models[key]


def model_seconds(flops: float, gpu: bool, threads: int) -> float:
    """Seconds of model work: FLOPs / the assumed GPU rate, or / (the assumed CPU rate per thread x
    threads)."""
    return flops / (GPU_FLOPS.value if gpu else CPU_FLOPS_PER_THREAD.value * max(threads, 1))


def _rate(gpu: bool, threads: int) -> tuple[str, Source]:
    if gpu:
        return "FLOPs / 25 TFLOP/s (GPU rate, ASSUMED)", GPU_FLOPS
    return f"FLOPs / ({threads} thread(s) x 70 GFLOP/s, CPU rate, ASSUMED)", CPU_FLOPS_PER_THREAD


def _device(gpu: bool) -> str:
    return GPU if gpu else CPU


# --- the steps ----------------------------------------------------------------------------------------------


def eda_cost(p: dict, facts: DataFacts, state: RunState, machine: Machine) -> StepCost:
    """00_eda: tables and figures, and the headers of MAX_SCATTER_STUDIES studies for the label scatter."""
    studies = sorted(facts.coords["study_id"].unique())
    n = min(len(studies), p["MAX_SCATTER_STUDIES"] or len(studies))
    files = int(facts.index["study_id"].isin(studies[:n]).sum())
    workers = max(1, p.get("INDEX_WORKERS") or 1)
    return StepCost(
        "00_eda",
        f"{len(studies):,} labelled studies; the headers of {n:,} ({files:,} files) for the scatter",
        Estimate(
            3 * NOTEBOOK_BYTES.value,
            "figures, summary.json and the notebook, 3 x notebook size",
            (NOTEBOOK_BYTES,),
        ),
        Estimate(
            TORCH_PROCESS_MIB.value * MIB + files * INDEX_BYTES_PER_FILE.value,
            f"process RSS + {files:,} headers x index RSS",
            (TORCH_PROCESS_MIB, INDEX_BYTES_PER_FILE),
        ),
        Estimate(
            files / (HEADERS_PER_S.value * workers) + 30,
            f"{files:,} files / ({workers} x header rate) + 30 s of figures",
            (HEADERS_PER_S,),
        ),
        CPU,
    )


def _roi_config(p: dict):
    """The crop settings as 01_preprocess builds them."""

    return RoiConfig.from_overrides(
        dict(
            mode=p["MODE"],
            size=p["SIZE"],
            before=p["BEFORE"],
            after=p["AFTER"],
            depth=p["DEPTH"],
            filter=p["FILTER"],
            margin_mode=p["MARGIN_MODE"],
            **(p["EXTRA"] or {}),
        )
    )


def _cache_samples(counts: Mapping[str, int]) -> str:
    groups = ", ".join(
        f"{g} {sum(counts.get(c, 0) for c in CONDITIONS if CONDITION_GROUP[c] == g):,}" for g in GROUPS
    )
    views = [f"{k} {v:,}" for k, v in counts.items() if k not in CONDITIONS]
    return f"{primary_crops(counts):,} crops ({groups})" + (
        f" + second views, at most {', '.join(views)}" if views else ""
    )


def _cache_disk(counts: Mapping[str, int], roi) -> Estimate:
    side = roi.size + 2 * roi.pad_px
    return Estimate(
        cache_bytes(counts, roi),
        f"{sum(counts.values()):,} arrays x {_depths(counts, roi)}"
        f" x {side} x {side} x 2 B (float16) + 128 B header + table rows",
    )


def _depths(counts: Mapping[str, int], roi) -> str:
    """The stored slices of a cache's arrays: one number, or each group's where slabs differ."""
    if not roi.slabbed:
        return str(roi.out_depth + 2 * roi.pad_slices)
    by_group = {g: crop_depth(roi, next(c for c in CONDITIONS if CONDITION_GROUP[c] == g)) for g in GROUPS}
    return "(" + ", ".join(f"{g} {d + 2 * roi.pad_slices}" for g, d in by_group.items()) + ")"


def _crop_build(counts: Mapping[str, int], studies: int, workers: int) -> tuple[Estimate, Estimate]:
    """(seconds, RAM) of building a crop cache."""
    factor = sum(counts.values()) / max(primary_crops(counts), 1)
    seconds = Estimate(
        studies / (CROP_STUDIES_PER_S.value * workers) * factor,
        f"{studies:,} studies / ({workers} x crop rate) x {factor:.2f} arrays per crop (views)",
        (CROP_STUDIES_PER_S,),
    )
    ram = Estimate(
        (CROP_MAIN_MIB.value + workers * CROP_WORKER_MIB.value) * MIB,
        f"crop RSS with {workers} worker(s)",
        (CROP_MAIN_MIB,),
    )
    return seconds, ram


def preprocess_cost(p: dict, facts: DataFacts, state: RunState, machine: Machine) -> StepCost:
    """01_preprocess: folds, the header index (the plan has cached it), the crops around the ground-truth
    points."""

    roi = state.roi = _roi_config(p)
    state.folds = p["N_FOLDS"]
    state.gt_crops = crop_counts(indexed_rows(facts.coords, facts.index), roi.views)
    workers = max(1, p["WORKERS"])
    seconds, crop_ram = _crop_build(state.gt_crops, facts.studies, workers)
    cache = _cache_disk(state.gt_crops, roi)
    index_bytes = len(facts.index) * INDEX_BYTES_PER_FILE.value
    return StepCost(
        "01_preprocess",
        f"{facts.studies:,} studies; {_cache_samples(state.gt_crops)}",
        Estimate(
            cache.value + len(facts.index) * 150 + NOTEBOOK_BYTES.value,
            f"{cache.how}; index_train.parquet ~150 B per file; notebook size",
            (NOTEBOOK_BYTES,),
        ),
        Estimate(
            crop_ram.value + index_bytes,
            f"{crop_ram.how} + {len(facts.index):,} files x index RSS",
            (*crop_ram.sources, INDEX_BYTES_PER_FILE),
        ),
        seconds,
        CPU,
        notes=[f"crops in cache/{cache_name(roi)}/"],
    )


def _localizer_config(p: dict):
    """The localizer settings as 02_train_localizer builds them."""

    return LocalizerConfig.from_dict(
        dict(
            backbone=p["BACKBONE"],
            pretrained="none",
            size=p["SIZE"],
            epochs=p["EPOCHS"],
            device=p["DEVICE"],
            seed=p["SEED"],
            **(p["EXTRA"] or {}),
        )
    )


def _localizer_model(name: str, sample: dict, config, state: RunState) -> tuple[tuple, int, int]:
    """(`model_figures`, epochs, forward passes per study) of one localizer model (a slice scorer: one window
    of
    candidate slices per point it refines)."""
    import torch

    shape = sample["shape"]
    if name.endswith("_slices"):
        figures = _figures(
            state,
            ("scorer", config.refine_backbone or config.backbone, shape),
            lambda: build_scorer(config),
            lambda: (torch.zeros(1, *shape),),
        )
        return figures, config.refine_epochs or config.epochs, len(TASKS[name.removesuffix("_slices")].points)
    task = TASKS[name]
    figures = _figures(
        state,
        ("heatmap", name, config.backbone, shape, config.decoder_channels, config.out_stride),
        lambda: build_localizer_model(task, config),
        lambda: (torch.zeros(1, *shape),),
    )
    return figures, config.epochs_of(task.plane), 1 if task.plane == "sagittal" else len(LEVELS)


@dataclass(frozen=True)
class _LocalizerRun:
    """What the parts of a 02_train_localizer estimate share: its settings, device, folds and samples."""

    config: Any
    gpu: bool
    per_fold: bool  # one localizer per fold (HOLDOUT 0), else one on a held-out share
    folds: int  # localizers trained
    share: float  # the training share of the samples
    samples: dict[str, dict[str, Any]]  # `localizer_samples`
    machine: Machine


@dataclass(frozen=True)
class _LocalizerModels:
    """The models of one localizer: the epoch lines, the bytes and forward FLOPs per study of one fold's
    models, and the training seconds of every fold."""

    epochs: list[tuple[str, Estimate]]
    fold_bytes: int
    fold_flops: float
    seconds: float


def _localizer_models(r: _LocalizerRun, state: RunState) -> _LocalizerModels:
    """Each model of the localizer: its checkpoint and forwards per study, its epoch time on the device."""
    rule, rate = _rate(r.gpu, r.machine.threads)
    epochs, fold_bytes, fold_flops, train_s = [], 0, 0.0, 0.0
    for name, sample in r.samples.items():
        (size, tensors, _, flops), n_epochs, per_study = _localizer_model(name, sample, r.config, state)
        fold_bytes += checkpoint_bytes(size, tensors, 0)
        fold_flops += per_study * flops
        epoch = model_seconds(3 * flops * sample["samples"] * r.share, r.gpu, r.machine.threads)
        epochs.append(
            (
                f"{name}, {sample['samples']:,} samples x {r.share:.2f}, {n_epochs} epochs",
                Estimate(epoch, f"3 x forward {rule}", (rate,)),
            )
        )
        train_s += epoch * n_epochs * r.folds
    return _LocalizerModels(epochs, fold_bytes, fold_flops, train_s)


def _localizer_oof(
    r: _LocalizerRun, facts: DataFacts, state: RunState, studies: set, fold_flops: float, workers: int
) -> tuple[Estimate, float, float, list[str]]:
    """(disk, seconds, RAM, notes) of the out-of-fold points and their crops: with a localizer per fold each
    study is predicted by its fold's localizer, then cropped as 01 crops; none with a holdout."""
    if not r.per_fold:
        return Estimate(0, "none"), 0.0, 0.0, []
    roi = state.roi or _default_roi()
    state.oof_crops = crop_counts(oof_rows(facts.index, studies), roi.views)
    crop_s, crop_ram = _crop_build(state.oof_crops, len(studies), max(1, workers))
    oof_s = crop_s.value + len(studies) * (
        LOCALIZE_CPU_S.value + model_seconds(fold_flops, r.gpu, r.machine.threads)
    )
    notes = [f"out of fold: {_cache_samples(state.oof_crops)}"]
    return _cache_disk(state.oof_crops, roi), oof_s, crop_ram.value, notes


def _localizer_ram(r: _LocalizerRun, jobs: int, oof_ram: float) -> tuple[Estimate, str]:
    """(peak RAM, note): every model of every fold trains in its own process (`model_parts`), JOBS at once,
    each stacking its inputs; or the decoding before them, or the out-of-fold crop build after."""
    machine = r.machine
    parts = [STACK_COPIES * s["bytes"] * r.share for s in r.samples.values()] * r.folds
    at_once = plan_processes(
        len(parts), "cuda" if r.gpu else "cpu", jobs, cores=machine.cores, gpus=machine.gpus if r.gpu else 0
    ).jobs  # as train_localizer_folds plans them
    concurrent = sum(sorted(parts, reverse=True)[:at_once]) + at_once * TORCH_PROCESS_MIB.value * MIB
    decoding = TORCH_PROCESS_MIB.value * MIB + STACK_COPIES * max(
        (s["bytes"] for s in r.samples.values()), default=0
    )
    where = f"one per GPU, {machine.gpus} GPU(s)" if r.gpu else f"{machine.cores} cores"
    note = (
        f"{len(parts)} model processes, {at_once} at once (JOBS={jobs}, {where}; --set JOBS=N bounds "
        "the RAM)" + ("; each also loads CUDA's libraries (not counted)" if r.gpu else "")
    )
    ram = Estimate(
        max(concurrent, decoding, oof_ram),
        f"the most of: {at_once} model process(es) at once, each process "
        "RSS + 3 x its inputs (list, np.stack, astype copy); decoding; the crop build",
        (TORCH_PROCESS_MIB, CROP_MAIN_MIB),
    )
    return ram, note


def localizer_cost(p: dict, facts: DataFacts, state: RunState, machine: Machine) -> StepCost:
    """02_train_localizer: decoded inputs, a localizer per fold, its out-of-fold points and the crops around
    them."""
    config = _localizer_config(p)
    per_fold = p["HOLDOUT"] == 0
    folds = state.folds if per_fold else 1
    r = _LocalizerRun(
        config,
        on_gpu(p["DEVICE"], machine),
        per_fold,
        folds,
        (folds - 1) / folds if per_fold else 1 - p["HOLDOUT"],
        localizer_samples(facts.coords, facts.index, config),
        machine,
    )
    models = _localizer_models(r, state)
    state.localizer_bytes, state.localizer_flops = folds * models.fold_bytes, folds * models.fold_flops
    decode_s = sum(s["pixels"] for s in r.samples.values()) / DECODE_PX_PER_S.value
    inputs = sum(s["bytes"] for s in r.samples.values())
    studies = set(facts.coords["study_id"].unique())
    oof_disk, oof_s, oof_ram, notes = _localizer_oof(
        r, facts, state, studies, models.fold_flops, p["WORKERS"]
    )
    ram, processes = _localizer_ram(r, p["JOBS"], oof_ram)
    checkpoints = folds * models.fold_bytes
    disk = inputs + checkpoints + oof_disk.value + 3 * len(studies) * 25 * 100 + NOTEBOOK_BYTES.value
    return StepCost(
        "02_train_localizer",
        f"{len(studies):,} studies; "
        + ", ".join(f"{k} {s['samples']:,}" for k, s in r.samples.items())
        + f"; {folds} localizer(s)",
        Estimate(
            disk,
            f"decoded inputs {_bytes(inputs)} (samples x stored channels x {config.size}^2 x 2 B); "
            f"checkpoints {folds} x {_bytes(models.fold_bytes)} (state dicts of the meta-built models); "
            f"out-of-fold crops {_bytes(oof_disk.value)} ({oof_disk.how})",
        ),
        ram,
        Estimate(
            decode_s + models.seconds + oof_s,
            f"decoding {_duration(decode_s)} (pixels / decode rate) + training "
            f"{_duration(models.seconds)} (epochs below x folds) + out-of-fold points (localize CPU + "
            f"forwards) and crops (crop rate) {_duration(oof_s)}",
            (DECODE_PX_PER_S, LOCALIZE_CPU_S, CROP_STUDIES_PER_S),
        ),
        _device(r.gpu),
        models.epochs,
        [*notes, processes],
    )


def _default_roi():
    """The crop settings when the config has no 01_preprocess (its caches exist): RoiConfig's defaults."""

    return RoiConfig()


def _train_config(p: dict):
    """The training settings as 03_train passes them (where its caches are does not matter here)."""

    return make_config(
        dict(
            arch=p["ARCH"],
            mode=p["MODE"],
            conditions=p["CONDITIONS"],
            folds=p["FOLDS"],
            n_folds=p["N_FOLDS"],
            epochs=p["EPOCHS"],
            batch_size=p["BATCH_SIZE"],
            lr=p["LR"],
            pretrained="none",
            device=p["DEVICE"],
            threads=p["THREADS"],
            train_crops=p["CROPS"],
            progress=False,
            **(p["EXTRA"] or {}),
        )
    )


@dataclass(frozen=True)
class _Training:
    """What every unit of a 03_train step shares (its settings, crop geometry, device and model-time rule),
    built once so that each part of the estimate takes one value instead of eight."""

    config: Any
    roi: Any
    gpu: bool
    threads: int
    rule: str
    rate: Source
    folds: tuple[int, ...]
    share: float  # the training share of the labelled items in a fold


def _training(p: dict, state: RunState, machine: Machine) -> _Training:
    """The shared settings of a 03_train step, resolved as the notebook resolves them."""
    config = _train_config(p)
    gpu = on_gpu(config.device, machine)
    threads = config.threads or machine.threads
    rule, rate = _rate(gpu, threads)
    return _Training(
        config,
        state.roi or _default_roi(),
        gpu,
        threads,
        rule,
        rate,
        tuple(config.folds) or tuple(range(config.n_folds)),
        (config.n_folds - 1) / config.n_folds,
    )


@dataclass(frozen=True)
class _UnitCost:
    """One unit of a 03_train step over all its folds: the figures `classifier_cost` adds up (or takes the
    largest of, for what exists only once at a time)."""

    epoch: tuple[str, Estimate]  # (model, seconds per epoch and fold)
    seconds: float
    disk: int
    training_last: int  # the last.pt of the fold in training, removed once the fold has finished
    held: int  # weights, EMA and AdamW moments: in RAM when training on the CPU
    weights: int  # every fold's final.pt, which `predict` loads
    study_flops: float  # forward FLOPs per study at prediction time


def _unit_figures(t: _Training, task, state: RunState) -> tuple[int, int, int, float]:
    """`model_figures` of a unit's model as 03_train builds it; once per distinct model of the plan."""
    import torch

    config, roi = t.config, t.roi
    sizes = unit_sizes(task, config.fusion)
    depth = unit_depth(roi, task)
    key = (
        config.arch,
        depth,
        roi.size,
        repr(sorted(config.model_kwargs.items())),
        tuple(sorted(sizes.items())),
    )
    return _figures(
        state,
        key,
        lambda: build_model(
            config.arch,
            depth=depth,
            pretrained="none",
            drop_rate=config.drop_rate,
            **sizes,
            **config.model_kwargs,
        ),
        lambda: (
            torch.zeros(1, sizes["in_channels"], depth, roi.size, roi.size),
            torch.zeros(1, sizes["num_meta"]),
        ),
    )


def _unit_epoch(t: _Training, task, flops: float, train_n: float, valid_n: float) -> Estimate:
    """Seconds of one epoch of a unit: its model time and its loading time overlap with DataLoader workers,
    add up without; the line says which of the two binds."""
    config, roi = t.config, t.roi
    validated = math.ceil(config.epochs / config.val_every) / config.epochs  # validations per epoch
    compute = model_seconds(flops * (3 * train_n + validated * valid_n), t.gpu, t.threads)
    workers = max(config.workers, 1)
    crop = crop_array_bytes(roi, task.conditions[0])
    per_s = LOADER_SAMPLES_PER_S.value * LOADER_CROP_BYTES / crop  # scaled by the crop's size
    loading = (train_n + valid_n) * task.in_channels / (per_s * workers)
    epoch = max(compute, loading) if config.workers else compute + loading
    binds = "loading binds" if loading > compute else "the model binds"
    scaled = "" if crop == LOADER_CROP_BYTES else f" x its crop / {_bytes(crop)}"
    return Estimate(
        epoch,
        f"{'max' if config.workers else 'sum'} of model (3 x forward {t.rule}) and loading "
        f"({task.in_channels} crop(s) per item / ({workers} x loader rate{scaled})): {binds}",
        (t.rate, LOADER_SAMPLES_PER_S),
    )


def _unit_cost(t: _Training, task, facts: DataFacts, state: RunState) -> _UnitCost:
    """One unit on every fold: its epochs, held-out predictions and checkpoints, from the crops it trains on
    (ground truth, out of fold or both, as the step's `train_crops` chooses)."""
    config = t.config
    size, tensors, params, flops = _unit_figures(t, task, state)
    gt, oof = state.gt_crops, state.oof_crops
    n_gt, n_oof = sum(gt.get(c, 0) for c in task.conditions), sum(oof.get(c, 0) for c in task.conditions)
    pool = {"gt": n_gt, "oof": n_oof, "both": n_gt + n_oof}[config.train_crops] if n_oof else n_gt
    train_n, valid_n = pool * t.share, (n_oof or n_gt) / config.n_folds
    epoch = _unit_epoch(t, task, flops, train_n, valid_n)
    views = 1 + sum(
        n_views(c) for c in usable(config.tta, task.crop_kinds)
    )  # at most, every candidate chosen
    held_out = valid_n * views * (2 if n_oof and n_gt else 1)  # oof_gt.csv: the ground-truth crops too
    final = checkpoint_bytes(size, tensors, params)
    last = checkpoint_bytes(size, tensors, params, "last", config.ema_decay > 0)
    folds = len(t.folds)
    return _UnitCost(
        (f"{task.name}, {train_n:,.0f} training items", epoch),
        folds * (config.epochs * epoch.value + model_seconds(flops * held_out, t.gpu, t.threads)),
        folds * (final + (last if config.keep_last else 0)),
        0 if config.keep_last else last,
        (2 if config.ema_decay > 0 else 1) * size + 2 * 4 * params,
        folds * final,
        folds * flops * views * (n_oof or n_gt) / max(facts.studies, 1),
    )


def _train_ram(t: _Training, facts: DataFacts, held: int) -> Estimate:
    """Peak RAM of a 03_train step: the measured training process and its workers, + on the CPU the largest
    unit's weights, EMA and AdamW moments; measured where the setting is scale.md's own."""
    config, gpu = t.config, t.gpu
    return Estimate(
        (TRAIN_MAIN_MIB.value + config.workers * TRAIN_WORKER_MIB.value) * MIB + (0 if gpu else held),
        f"train RSS with {config.workers} DataLoader worker(s)"
        + ("" if gpu else " + the largest unit's weights, EMA and AdamW moments"),
        (TRAIN_MAIN_MIB,),
        measured=not gpu
        and config.workers == 2
        and facts.studies >= 1900  # scale.md's own setting
        and crop_array_bytes(t.roi) == LOADER_CROP_BYTES,
    )


def classifier_cost(p: dict, facts: DataFacts, state: RunState, machine: Machine) -> StepCost:
    """03_train: one architecture, every unit of its task mode on every fold: checkpoints, epochs, OOF
    tables."""
    t = _training(p, state, machine)
    config = t.config
    tasks = build_tasks(
        config.mode, resolve_conditions(config.mode, config.conditions), config.mirror_right, config.views
    )
    units = [_unit_cost(t, task, facts, state) for task in tasks]
    disk = sum(u.disk for u in units) + max((u.training_last for u in units), default=0)
    state.members[p["OUTPUT"]] = (sum(u.weights for u in units), sum(u.study_flops for u in units))
    tables = 3 * facts.studies * 25 * 120 + NOTEBOOK_BYTES.value  # predictions, oof, oof_gt
    return StepCost(
        p["OUTPUT"],
        f"{len(units)} unit(s) x {len(t.folds)} fold(s) x {config.epochs} epochs; training crops "
        f"{config.train_crops} (ground truth {primary_crops(state.gt_crops):,}, out of fold "
        f"{primary_crops(state.oof_crops):,})",
        Estimate(
            disk + tables,
            "per unit and fold: final.pt (the state dict) of the meta-built model, and the "
            "last.pt (model, EMA, AdamW moments) of the fold in training (every fold's with "
            "keep_last); tables",
        ),
        _train_ram(t, facts, max((u.held for u in units), default=0)),
        Estimate(
            sum(u.seconds for u in units),
            f"folds x epochs x the epochs below, + held-out predictions (validation, TTA) {t.rule}",
            (t.rate,),
        ),
        _device(t.gpu),
        [u.epoch for u in units],
        [f"GPU memory is not estimated (batch {config.batch_size})"] if t.gpu else [],
    )


def ensemble_cost(p: dict, facts: DataFacts, state: RunState, machine: Machine) -> StepCost:
    """04_ensemble: fits on the members' out-of-fold tables: small and quick."""
    members = max(len(state.members), 1)
    return StepCost(
        "04_ensemble",
        f"{members} member(s) x {facts.studies:,} studies x 25 rows",
        Estimate(6 * facts.studies * 25 * 120 + NOTEBOOK_BYTES.value, "a few tables of 25 rows per study"),
        Estimate(
            TORCH_PROCESS_MIB.value * MIB + members * facts.studies * 25 * 200,
            "process RSS + the members' tables",
            (TORCH_PROCESS_MIB,),
        ),
        Estimate(
            facts.studies * members * ENSEMBLE_S.value, "studies x members x ensemble rate", (ENSEMBLE_S,)
        ),
        CPU,
    )


def _predict_figures(
    studies: int, state: RunState, gpu: bool, threads: int
) -> tuple[Estimate, Estimate, str]:
    """(seconds, RAM, GPU note) of `predict` with every model of the run on `studies` studies."""
    weights = sum(w for w, _ in state.members.values()) + state.localizer_bytes
    flops = state.localizer_flops + sum(f for _, f in state.members.values())
    rule, rate = _rate(gpu, threads)
    seconds = Estimate(
        studies * (PREDICT_CPU_S.value + model_seconds(flops, gpu, threads)),
        f"studies x (predict CPU + every fold's forwards, {rule})",
        (PREDICT_CPU_S, rate),
    )
    held = 0 if gpu else weights  # on a GPU the models move to its memory one by one
    ram = Estimate(
        PREDICT_MIB.value * MIB + held,
        "predict RSS" + ("" if gpu else " + the run's weights"),
        (PREDICT_MIB,),
    )
    return (
        seconds,
        ram,
        f"the run's weights, {_bytes(weights)}, are held in " + ("GPU memory" if gpu else "RAM"),
    )


def submission_cost(p: dict, facts: DataFacts, state: RunState, machine: Machine) -> StepCost:
    """05_submission: `predict` on the data folder's split (the test split: its studies here, not
    Kaggle's)."""
    gpu = on_gpu(p["DEVICE"], machine)
    studies = facts.test_studies if p["SPLIT"] == "test" else facts.studies
    seconds, ram, held = _predict_figures(studies, state, gpu, machine.threads)
    return StepCost(
        "05_submission",
        f"{studies:,} {p['SPLIT']} stud{'y' if studies == 1 else 'ies'} (this data folder's)",
        Estimate(
            studies * 25 * 60 + 64 * 1024 + NOTEBOOK_BYTES.value,
            f"25 rows per study and its record at OUT "
            f"({p['OUT']}, relative to notebooks/): outside the run folder",
        ),
        ram,
        seconds,
        _device(gpu),
        notes=[held],
    )


def error_analysis_cost(p: dict, facts: DataFacts, state: RunState, machine: Machine) -> StepCost:
    """06_error_analysis: tables and figures of the run; a few studies predicted again for the viewer."""
    gpu = on_gpu(p["DEVICE"], machine)
    viewed = p["WORST_STUDIES"] + p["TEST_STUDIES"]
    seconds, ram, held = _predict_figures(viewed, state, gpu, machine.threads)
    return StepCost(
        "06_error_analysis",
        f"{viewed} studies drawn, {facts.studies:,} analysed",
        Estimate((viewed + 8) * 300 * 1024 + NOTEBOOK_BYTES.value, "figures of ~300 KiB"),
        ram,
        Estimate(seconds.value + 30, f"{seconds.how}, + 30 s of figures", seconds.sources),
        _device(gpu),
        notes=[held],
    )


#: The estimator of each notebook; a notebook without one is listed as not estimated.
ESTIMATORS: dict[str, Callable[[dict, DataFacts, RunState, Machine], StepCost]] = {
    "00_eda": eda_cost,
    "01_preprocess": preprocess_cost,
    "02_train_localizer": localizer_cost,
    "03_train": classifier_cost,
    "04_ensemble": ensemble_cost,
    "05_submission": submission_cost,
    "06_error_analysis": error_analysis_cost,
}


# --- the plan -----------------------------------------------------------------------------------------------


def read_facts(data_dir: Path, run_dir: Path, workers: int = 1) -> DataFacts:
    """The train split's index (read from, or built and cached at, RUN_DIR/index_train.parquet as 01 does),
    the
    ground-truth coordinates, and the test studies."""

    cache = run_dir / "index_train.parquet"
    existed, t0 = cache.is_file(), time.perf_counter()
    index = load_or_build_index(data_dir, "train", cache=cache, workers=workers)
    how = (
        f"read from {cache}"
        if existed
        else f"built in {_duration(time.perf_counter() - t0)} ({workers} worker(s)) and cached at "
        f"{cache} for 01"
    )
    coords = load_coordinates(data_dir / "train_label_coordinates.csv")
    test = images_dir(data_dir, "test")
    tests = sum(1 for d in test.iterdir() if d.is_dir()) if test.is_dir() else 0
    return DataFacts(data_dir, index, coords, tests, f"header index of {len(index):,} files {how}")


def estimate_steps(
    config: PipelineConfig,
    steps: list[Step],
    facts: DataFacts,
    jobs: int | None = None,
    cuda: bool | None = None,
    cores: int | None = None,
    gpus: int | None = None,
) -> list[StepCost]:
    """The cost of each of `steps` (the selected ones). Earlier steps feed later ones their settings (crop
    geometry, folds, the models' sizes): as selected and overridden, or as configured when not selected.

    Args:
        jobs: notebooks of a parallel group at once (default: the config's), as `run_pipeline` shares the
        cores.
        cuda: whether DEVICE=auto means CUDA (default: whether this machine has it).
        cores: the run machine's cores (default: this one's).
        gpus: the run machine's GPUs (default: this one's, at least one when `cuda`).
    """
    import torch

    cuda = torch.cuda.is_available() if cuda is None else cuda
    cores = cores or available_cores()
    gpus = max(1, visible_gpus()) if gpus is None and cuda else (gpus or 0)
    chosen = {s.output: s for s in steps}
    state, costs = RunState(), []
    for number, group in itertools.groupby(config.steps, key=lambda s: s.group):
        group = [chosen.get(s.output, s) for s in group]
        plan = group_plan(group, config.jobs if jobs is None else jobs, gpus=gpus if cuda else 0, cores=cores)
        workers, threads = plan.jobs, plan.threads
        for step in group:
            estimator = ESTIMATORS.get(step.notebook)
            if estimator is None:
                cost = StepCost(
                    step.output,
                    "not estimated (no estimator for this notebook)",
                    *[Estimate(0, "-")] * 3,
                    "?",
                )
            else:
                params = {**step_parameters(step, config), "OUTPUT": step.output}
                cost = estimator(params, facts, state, Machine(threads, cores, cuda, max(gpus, 1)))
            cost.output, cost.group, cost.parallel = step.output, number, workers > 1
            if step.output in chosen:
                costs.append(cost)
            if len(costs) == len(chosen):
                return costs  # later steps feed nothing back
    return costs


def free_bytes(path: Path) -> int:
    """Free space on the disk that holds `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def machine_memory() -> int | None:
    """This machine's physical memory in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def plan_report(
    config: PipelineConfig,
    start: str | None = None,
    only: str | None = None,
    jobs: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    allow_synthetic: bool = False,
) -> str:
    """The plan (module docstring) after the checks `run_pipeline` makes before its first notebook.

    Raises:
        ValueError: a parameter or the data folder is wrong, as `run_pipeline` would raise it.
    """
    steps = plan_steps(config, start, only, overrides)
    check_data_kind(config, allow_synthetic)
    preprocess = next((s for s in config.steps if s.notebook == "01_preprocess"), None)
    workers = step_parameters(preprocess, config).get("WORKERS", 1) if preprocess else 1
    facts = read_facts(config.data_dir, config.run_dir, max(1, workers))
    return format_plan(config, facts, estimate_steps(config, steps, facts, jobs))


def totals(costs: list[StepCost]) -> tuple[float, float, float, str]:
    """(disk, seconds, peak RAM, the step or group at the peak): a parallel group's notebooks overlap."""
    seconds, peak, where = 0.0, 0.0, ""
    for _, group in itertools.groupby(costs, key=lambda c: c.group):
        group = list(group)
        if group[0].parallel:
            seconds += max(c.seconds.value for c in group)
            candidates = [(sum(c.ram.value for c in group), " + ".join(c.output for c in group))]
        else:
            seconds += sum(c.seconds.value for c in group)
            candidates = [(c.ram.value, c.output) for c in group]
        for ram, name in candidates:
            if ram > peak:
                peak, where = ram, name
    return sum(c.disk.value for c in costs), seconds, peak, where


def format_plan(config: PipelineConfig, facts: DataFacts, costs: list[StepCost]) -> str:
    """The plan as text: what it read, a block per step, the totals, the free disk, the sources."""
    lines = [
        (
            f"plan: {config.source} on {facts.data_dir}: {facts.studies:,} labelled studies, "
            f"{facts.test_studies:,} "
            f"test studies; run folder {config.run_dir}"
        ),
        f"plan: {facts.index_note}",
        (
            "plan: estimates, not promises. measured = a figure of this repository's benchmark tables "
            "for the same setting; projected = computed by the rule shown from shapes, parameter counts of "
            "models built on the meta device, counted FLOPs at an ASSUMED rate, or the measured figures "
            "listed under `sources`, scaled"
        ),
    ]
    used: dict[str, Source] = {}
    for cost in costs:
        lines += [f"{cost.output}  [{cost.device}]", f"  samples   {cost.samples}"]
        rows = [
            ("disk", _bytes(cost.disk.value), cost.disk, ""),
            ("RAM", _bytes(cost.ram.value), cost.ram, ""),
        ]
        rows += [("epoch", _duration(e.value), e, f"{name}: ") for name, e in cost.epochs]
        rows.append(("time", _duration(cost.seconds.value), cost.seconds, ""))
        for label, value, estimate, what in rows:
            lines.append(f"  {label:<7} {value:>10}  {estimate.basis}: {what}{estimate.how}")
            used.update({s.name: s for s in estimate.sources})
        lines += [f"  note      {n}" for n in cost.notes]
    disk, seconds, peak, where = totals(costs)
    free = free_bytes(config.run_dir)
    lines.append(
        f"total: disk {_bytes(disk)} under {config.run_dir} ({_bytes(free)} free there); peak RAM "
        f"{_bytes(peak)} ({where}); time {_duration(seconds)}; all projected"
    )
    if disk > free:
        lines.append(
            f"WARNING: the run writes about {_bytes(disk)} but only {_bytes(free)} are free on the disk of "
            f"{config.run_dir}: give --run-dir a folder on a bigger disk"
        )
    memory = machine_memory()
    if memory and peak > memory:
        lines.append(
            f"WARNING: {where} may need about {_bytes(peak)} of RAM, this machine has {_bytes(memory)}"
        )
    lines.append("sources:")
    lines += [f"  {s.name:<14} {s.where}" for s in used.values()]
    return "\n".join(lines)


def _bytes(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"
