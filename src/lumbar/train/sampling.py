"""Training samplers: shuffled or grade-balanced, sharded over DDP ranks, reproducible from (seed, epoch).

Both are `DistributedSampler`s (a single process is world size 1), so one code path serves CPU, one GPU and
torchrun: each epoch's order is a function of (seed, epoch) only, which also makes a resumed run draw exactly
the order an uninterrupted run would have drawn.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler


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
