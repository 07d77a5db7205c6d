"""A torch Dataset over the ROI tensor cache, joined with the labels through a task's items.

A sample is the dict `image` (C, D, H, W) float32 in [0, 1], `meta` (level one-hot [+ side]) float32,
`target` (T,) int64 class targets (-1 = no label), `grade` (T,) int64 true grades (-1 = none; the loss
weights by grade), `index` (position in the items table, to map predictions back), `study` (a code shared by
the items of one study and crop source: `RoiDataset.studies`, for a loss over a study's levels together).

Items may come from several caches of one crop geometry (a `source` column: "gt" crops around the label
points, "oof" crops around the localizer's out-of-fold points; `check_same_crops`).

Training draws, per sample, one generator from (seed, epoch, index): the crop jitter window (uniform,
`preprocess.jitter.random_window`, or one of the localizer's recorded errors, `LocalizerJitter`), the
left-right mirror where the task allows it, and the seed of the in-plane augmentations. So a sample's
augmentation does not depend on the worker that loads it, and a run resumed at epoch k sees exactly what an
uninterrupted run saw. Evaluation takes the centre window, no augmentation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from lumbar.core.constants import CONDITION_SIDE, LEVELS
from lumbar.preprocess import LocalizerJitter, RoiConfig, center_window, load_cache, random_window
from lumbar.preprocess.cache import load_views
from lumbar.preprocess.jitter import window_at
from lumbar.train.augment import StackAugment
from lumbar.train.tasks import MIRROR_CONDITION, Task

CACHE_COLUMNS = [
    "sample_id",
    "study_id",
    "condition",
    "level",
    "file",
    "depth",
    "height",
    "width",
    "pad_slices",
    "pad_px",
]
_SHAPE_COLUMNS = ["depth", "height", "width", "pad_slices", "pad_px"]
#: The crop source whose crops sit around the localizer's (out-of-fold) points: never shifted by `jitter`.
LOCALIZED = "oof"


@dataclass
class RoiCache:
    """An ROI tensor cache folder as the training engine reads it.

    Attributes:
        root: the cache folder.
        samples: `samples.parquet`.
        params: `params.json` (the preprocessing parameters).
        depth, height, width: final tensor shape; `depth` that of the groups without a slab of their own
            (`RoiConfig.out_depth`), see `depths`.
        pad_slices, pad_px: stored jitter context.
        views: the second views' samples (`views.parquet`; empty without views).
        depths: condition -> slices of its crops (one per condition; they differ with `RoiConfig` slabs).
    """

    root: Path
    samples: pd.DataFrame
    params: dict[str, Any]
    depth: int
    height: int
    width: int
    pad_slices: int
    pad_px: int
    views: pd.DataFrame = field(default_factory=pd.DataFrame)
    depths: dict[str, int] = field(default_factory=dict)

    def depth_of(self, conditions) -> int:
        """The one depth of these conditions' crops (`depth` for a condition the cache lacks).

        Raises:
            ValueError: their crops differ in depth (a unit stacks them as channels of one sample).
        """
        found = {c: self.depths.get(c, self.depth) for c in conditions}
        if len(set(found.values())) > 1:
            raise ValueError(
                f"{self.root}: crops of {found} slices cannot be channels of one sample; train these "
                "conditions in a one-crop mode (competition, single_*) or build the cache with one slab for "
                "them (RoiConfig spinal_slices / foraminal_slices / subarticular_slices)"
            )
        return next(iter(found.values()), self.depth)

    @property
    def built_views(self) -> tuple[str, ...]:
        """The views the cache was built with (params.json), whether or not every target has one."""
        return tuple((self.params.get("config") or {}).get("views", ()))


def read_cache(cache_dir: str | Path) -> RoiCache:
    """Open a cache folder (`preprocess.load_cache`), checking what the engine relies on: the contract's
    columns and one tensor shape for all samples.

    Raises:
        FileNotFoundError: a missing folder, `samples.parquet` or `params.json`.
        ValueError: missing columns, no samples, or mixed shapes (a cache is one parameter set).
    """
    root = Path(cache_dir)
    params, samples = load_cache(root)
    table = root / "samples.parquet"
    missing = [c for c in CACHE_COLUMNS if c not in samples.columns]
    if missing:
        raise ValueError(f"{table}: missing column(s) {missing}")
    if samples.empty:
        raise ValueError(f"{table}: no samples")
    by_condition = samples[["condition", *_SHAPE_COLUMNS]].drop_duplicates()
    shapes = by_condition[_SHAPE_COLUMNS[1:]].drop_duplicates()
    if len(shapes) > 1 or by_condition["condition"].duplicated().any():
        raise ValueError(
            f"{table}: samples of different shapes {by_condition.to_dict('records')[:3]}; "
            "a cache must hold one parameter set"
        )
    depths = {str(c): int(d) for c, d in zip(by_condition["condition"], by_condition["depth"])}
    shape = {k: int(v) for k, v in shapes.iloc[0].items()}
    depth = _common_depth(params, depths, table)
    return RoiCache(root, samples, params, depth, **shape, views=load_views(root), depths=depths)


def _common_depth(params: dict, depths: dict[str, int], table: Path) -> int:
    """The depth of the groups without a slab: the only one, else the params' `RoiConfig.out_depth`."""
    if len(set(depths.values())) == 1:
        return next(iter(depths.values()))
    if not params.get("config"):
        raise ValueError(
            f"{table}: crops of depths {depths} without a 'config' in params.json to explain them"
        )
    return RoiConfig.from_overrides(params["config"]).out_depth


def check_same_crops(a: RoiCache, b: RoiCache) -> None:
    """Two caches whose crops can stand in for each other: one tensor shape, pads and `RoiConfig`.

    Raises:
        ValueError: naming both folders and what differs.
    """
    shape_a, shape_b = ({k: getattr(c, k) for k in _SHAPE_COLUMNS} for c in (a, b))
    if shape_a != shape_b:
        raise ValueError(
            f"{a.root} and {b.root}: crops of different shapes ({shape_a} vs {shape_b}); "
            "build both caches with one RoiConfig"
        )
    config_a, config_b = a.params.get("config"), b.params.get("config")
    if config_a != config_b:
        differ = sorted(
            k
            for k in {**(config_a or {}), **(config_b or {})}
            if (config_a or {}).get(k) != (config_b or {}).get(k)
        )
        raise ValueError(
            f"{a.root} and {b.root}: params.json configs differ ({', '.join(differ)}); "
            "build both caches with one RoiConfig"
        )


def roi_config(cache: RoiCache) -> RoiConfig:
    """The `RoiConfig` a cache was built with (params.json "config").

    Raises:
        ValueError: params.json has no config (the crop geometry is unknown).
    """
    config = cache.params.get("config")
    if not config:
        raise ValueError(
            f"{cache.root / 'params.json'}: no 'config' (RoiConfig); the crop geometry is unknown"
        )
    return RoiConfig.from_overrides(config)


class RoiDataset(Dataset):
    """Items of one task unit read from an ROI cache, or from several caches of one crop geometry.

    Args:
        cache: the opened cache; or source name -> cache, each item's `source` column naming its cache.
        task: the task unit (layout, mirror rules, meta).
        items: its items table (`Task.items`), possibly one fold's subset (plus `source` with several caches).
        train: shifted window, mirror and augmentation (else the centre window as stored).
        augment: in-plane augmentation (train only); None for none.
        mirror_p: probability of a random left-right mirror when `task.can_mirror`.
        max_shift_slices, max_shift_px: uniform jitter bounds, capped by the cache's stored context.
        seed: base seed of the per-sample generators.
        jitter: the localizer's recorded errors: crops of the source `LOCALIZED` are not shifted, the others
        by
            one error of their condition (uniform where the file has no errors for it); None: all uniform.
    """

    def __init__(
        self,
        cache: RoiCache | Mapping[str, RoiCache],
        task: Task,
        items: pd.DataFrame,
        train: bool = False,
        augment: StackAugment | None = None,
        mirror_p: float = 0.5,
        max_shift_slices: int = 1,
        max_shift_px: int = 8,
        seed: int = 0,
        jitter: LocalizerJitter | None = None,
    ) -> None:
        self.caches = dict(cache) if isinstance(cache, Mapping) else {None: cache}
        self.task, self.train = task, train
        self.items = items.reset_index(drop=True)
        if isinstance(cache, Mapping) and "source" not in self.items:
            raise ValueError(f"items need a `source` column to choose among the caches {sorted(self.caches)}")
        self.sources = (
            self.items["source"].tolist() if isinstance(cache, Mapping) else [None] * len(self.items)
        )
        unknown = set(self.sources) - set(self.caches)
        if unknown:
            raise ValueError(
                f"items from sources {sorted(unknown)} without a cache (have {sorted(self.caches)})"
            )
        self.cache = next(iter(self.caches.values()))  # the shape and pads of all of them
        self.depth = self.cache.depth_of(task.conditions)
        self.augment = augment if train else None
        self.mirror_p = mirror_p if (train and task.can_mirror) else 0.0
        self.max_shift_slices = max(0, min(max_shift_slices, self.cache.pad_slices))
        self.max_shift_px = max(0, min(max_shift_px, self.cache.pad_px))
        self.seed = seed
        self.epoch = 0
        self.jitter = jitter if train else None
        self.roi = roi_config(self.cache) if self.jitter is not None else None
        self.axes = {c: task.mirror_axes(c) for c in task.conditions}  # each channel's left-right axis
        keys = pd.DataFrame({"study": self.items["study_id"], "source": [str(x) for x in self.sources]})
        self.studies = keys.groupby(["study", "source"], sort=True).ngroup().to_numpy(dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's random draws (call before each training epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def sample_ids(self, indices) -> list[str]:
        return self.items["item_id"].iloc[list(indices)].tolist()

    def _load(
        self, file: str | None, source: str | None, condition: str | None, rng: np.random.Generator | None
    ) -> np.ndarray:
        """One channel's window; `condition` None for a second view (uniform jitter: the localizer's recorded
        errors are of the primary points)."""
        c = self.caches[source]
        if file is None:
            return np.zeros((self.depth, c.height, c.width), dtype=np.float32)
        path = c.root / file
        try:
            arr = np.load(path)
        except (OSError, ValueError) as e:
            raise OSError(f"{path}: cannot read cached sample ({e})") from e
        if rng is None or (self.jitter is not None and source == LOCALIZED):
            window = center_window(arr, c.pad_slices, c.pad_px)
        elif self.jitter is not None and condition in self.jitter:
            window = window_at(
                arr,
                c.pad_slices,
                c.pad_px,
                self.jitter.draw(condition, rng, self.roi, uniform_px=self.max_shift_px),
            )
        else:
            window = random_window(arr, c.pad_slices, c.pad_px, rng, self.max_shift_slices, self.max_shift_px)
        return window.astype(np.float32)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items.iloc[index]
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.train else None
        conditions = list(item["conditions"])
        grades = list(item["grades"])
        side = int(item["side"])
        files = item["files"]
        channel_conditions = conditions + [None] * (
            len(files) - len(conditions)
        )  # views after the primary crop
        arrays = [self._load(f, self.sources[index], c, rng) for f, c in zip(files, channel_conditions)]
        axes = self.axes[conditions[0]]
        if item["mirror"]:  # canonical orientation: right-side crops shown as left ones
            arrays = [np.flip(a, axis) for a, axis in zip(arrays, axes)]
        if self.mirror_p and rng.random() < self.mirror_p:
            arrays, conditions, grades, side = self._mirror(arrays, axes, conditions, grades, side)
        image = np.stack(arrays)  # (C, D, H, W)
        if self.augment is not None:
            image = self.augment(image, seed=int(rng.integers(2**31 - 1)))
        grades_arr = np.asarray(grades, dtype=np.int64)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            "meta": torch.from_numpy(self.meta(item["level"], side)),
            "target": torch.from_numpy(self.task.targets(grades_arr)),
            "grade": torch.from_numpy(grades_arr),
            "index": index,
            "study": int(self.studies[index]),
        }

    def meta(self, level: str, side: int) -> np.ndarray:
        """Level one-hot, then the side flag when the task uses it."""
        meta = np.zeros(self.task.num_meta, dtype=np.float32)
        meta[LEVELS.index(level)] = 1.0
        if self.task.side_meta:
            meta[len(LEVELS)] = float(side)
        return meta

    def _mirror(self, arrays, axes, conditions, grades, side):
        """Left-right mirror: every channel flipped on its left-right axis; left and right labels swap."""
        arrays = [np.flip(a, axis) for a, axis in zip(arrays, axes)]
        if self.task.layout == "channels":  # channel order is fixed: channel j now shows its mirror condition
            flipped = dict(zip(conditions, zip(arrays, grades)))
            new = [flipped[MIRROR_CONDITION[c]] for c in conditions]
            return [a for a, _ in new], conditions, [g for _, g in new], side
        c = conditions[0]
        return arrays, [MIRROR_CONDITION[c]], grades, (1 - side) if CONDITION_SIDE[c] else side
