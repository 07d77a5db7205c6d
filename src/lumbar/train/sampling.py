"""Training samplers: shuffled or grade-balanced, sharded over DDP ranks, reproducible from (seed, epoch).

Both are `DistributedSampler`s (a single process is world size 1), so one code path serves CPU, one GPU and
torchrun: each epoch's order is a function of (seed, epoch) only, which also makes a resumed run draw exactly
the order an uninterrupted run would have drawn.

`StudyBatchSampler` batches whole studies instead (a loss over a study's levels together,
`lumbar.train.losses.any_severe_term`), with the same (seed, epoch) draws and rank sharding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler


class BalancedDistributedSampler(DistributedSampler):
    """Draws samples with replacement, with probability proportional to `weights`, then shards them by rank.

    Args:
        dataset: the dataset (its length is the epoch size).
        weights: one non-negative weight per sample (e.g. inverse frequency of its grade).
        num_replicas, rank, seed: as for `DistributedSampler`.
    """

    def __init__(
        self, dataset: Dataset, weights: np.ndarray, num_replicas: int = 1, rank: int = 0, seed: int = 0
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (len(dataset),) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("weights must be one non-negative value per sample, not all zero")
        self.weights = torch.as_tensor(weights)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        indices = torch.multinomial(self.weights, self.total_size, replacement=True, generator=g).tolist()
        return iter(indices[self.rank : self.total_size : self.num_replicas])


def balanced_weights(grades: np.ndarray) -> np.ndarray:
    """Per sample: 1 / (frequency of its grade), using each sample's worst labelled grade (-1 =
    unlabelled)."""
    grades = np.asarray(grades, dtype=np.int64)
    counts = np.bincount(grades[grades >= 0], minlength=3).astype(np.float64)
    weights = np.zeros(len(grades))
    ok = grades >= 0
    weights[ok] = 1.0 / counts[grades[ok]]
    return weights


def make_train_sampler(
    dataset: Dataset, balanced: bool, grades: np.ndarray | None, world_size: int, rank: int, seed: int
) -> DistributedSampler:
    """The training sampler: shuffled (`DistributedSampler`) or grade-balanced."""
    if balanced:
        return BalancedDistributedSampler(dataset, balanced_weights(grades), world_size, rank, seed)
    return DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)


class StudyBatchSampler(Sampler[list[int]]):
    """Batches of whole studies: every item of a study (one code of `studies`) lands in one batch.

    A batch holds `batch_size // (largest study)` studies, so never more than `batch_size` items, and an
    epoch has a fixed number of batches (the learning-rate schedule counts them): one per that many studies,
    the incomplete last one dropped with `drop_last`. The studies are shuffled, or drawn with replacement with
    probability proportional to `weights`; the batches are then shared out over the ranks (padded by repeating
    the first ones, as `DistributedSampler` pads). A study drawn twice into one batch keeps its one code: the
    loss sees it as one study of twice the crops, each an augmentation of its own.

    Args:
        studies: one study code per item of the dataset.
        batch_size: the most items a batch may hold; at least the largest study's.
        weights: None (shuffle), or one non-negative weight per study, in the order of `np.unique(studies)`.
        num_replicas, rank, seed: as for `DistributedSampler`.
        drop_last: drop the last batch when it holds fewer studies than the others.

    Raises:
        ValueError: a batch size below the largest study, or bad weights.
    """

    def __init__(
        self,
        studies: np.ndarray,
        batch_size: int,
        weights: np.ndarray | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        _, inverse = np.unique(np.asarray(studies), return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        self.members = np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1) if len(order) else []
        largest = max((len(m) for m in self.members), default=1)
        if batch_size < largest:
            raise ValueError(
                f"batch_size={batch_size} cannot hold a whole study of {largest} items; "
                f"use batch_size >= {largest} to batch whole studies"
            )
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if weights.shape != (len(self.members),) or (weights < 0).any() or weights.sum() <= 0:
                raise ValueError("weights must be one non-negative value per study, not all zero")
            weights = torch.as_tensor(weights)
        self.weights, self.per_batch = weights, batch_size // largest
        self.num_replicas, self.rank, self.seed = num_replicas, rank, seed
        self.shuffle, self.epoch = True, 0
        n = len(self.members)
        whole = n // self.per_batch
        self.total = whole if drop_last and whole > 0 else math.ceil(n / self.per_batch)
        self.num_batches = math.ceil(self.total / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        n = len(self.members)
        if self.weights is not None:
            order = torch.multinomial(self.weights, n, replacement=True, generator=g).tolist()
        elif self.shuffle:
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        k = self.per_batch
        batches = [order[i * k : (i + 1) * k] for i in range(self.total)]
        padded = [batches[i % len(batches)] for i in range(self.num_batches * self.num_replicas)]
        for batch in padded[self.rank :: self.num_replicas]:
            yield [int(i) for s in batch for i in self.members[s]]


def make_study_batch_sampler(
    studies: np.ndarray,
    batch_size: int,
    balanced: bool,
    grades: np.ndarray | None,
    world_size: int,
    rank: int,
    seed: int,
    drop_last: bool,
) -> StudyBatchSampler:
    """The training batch sampler of whole studies: shuffled, or balanced by each study's worst grade."""
    weights = None
    if balanced:
        _, inverse = np.unique(np.asarray(studies), return_inverse=True)
        worst = np.full(inverse.max() + 1 if len(inverse) else 0, -1, dtype=np.int64)
        np.maximum.at(worst, inverse, np.asarray(grades, dtype=np.int64))
        weights = balanced_weights(worst)
    return StudyBatchSampler(studies, batch_size, weights, world_size, rank, seed, drop_last)
