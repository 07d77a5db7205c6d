"""Batch-level augmentations that mix two samples (mixup, CutMix), registered by name, and their loss.

A mix pairs every sample of a batch with another of the same batch (a random permutation), draws a share
lam ~ Beta(alpha, alpha) and blends the images: mixup adds them (lam x + (1 - lam) x'), CutMix pastes a
box of area share 1 - lam of the partner through every slice and channel (lam is then the share actually
kept). The meta inputs (level, side) are blended with the same lam. The loss of a mixed batch is
lam L(y) + (1 - lam) L(y'), each part weighted by its own true grade's metric weight (1/2/4): with
cross-entropy that is the weighted loss against the soft target lam y + (1 - lam) y'.

Draws come from a generator seeded by (seed, epoch), on the host: a resumed epoch mixes as the first try did,
and nothing waits for the device. alpha <= 0 or p = 0 turns mixing off without a draw, so such a run trains
exactly as one without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lumbar.core.registry import Registry

#: (images, partner images, lam, generator) -> (mixed images, the share of the first image actually kept)
MixFn = Callable[[torch.Tensor, torch.Tensor, float, np.random.Generator], tuple[torch.Tensor, float]]
_MIXES: Registry[MixFn] = Registry("batch augmentation")


def register_mix(name: str) -> Callable[[MixFn], MixFn]:
    """Register a batch mixing function under `name` (a duplicate name is an error)."""
    return _MIXES.register(name)


def list_mixes() -> list[str]:
    """Registered batch augmentation names, sorted."""
    return sorted(_MIXES)


@register_mix("mixup")
def mixup(
    x: torch.Tensor, partner: torch.Tensor, lam: float, rng: np.random.Generator
) -> tuple[torch.Tensor, float]:
    """The weighted sum of the two images (Zhang et al., 2018)."""
    return lam * x + (1.0 - lam) * partner, lam


@register_mix("cutmix")
def cutmix(
    x: torch.Tensor, partner: torch.Tensor, lam: float, rng: np.random.Generator
) -> tuple[torch.Tensor, float]:
    """The partner's box of area share about 1 - lam, in-plane and through every slice (Yun et al., 2019)."""
    h, w = x.shape[-2:]
    bh, bw = round(h * np.sqrt(1.0 - lam)), round(w * np.sqrt(1.0 - lam))
    if bh == 0 or bw == 0:
        return x, 1.0
    top, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    mixed = x.clone()
    mixed[..., top : top + bh, left : left + bw] = partner[..., top : top + bh, left : left + bw]
    return mixed, 1.0 - bh * bw / (h * w)


@dataclass
class Mixed:
    """A mixed batch: images, meta, the kept share and the partner permutation (None: not mixed)."""

    x: torch.Tensor
    meta: torch.Tensor
    lam: float = 1.0
    perm: torch.Tensor | None = None


class BatchMix:
    """Mixes a batch with one of the registered mixes, chosen at random per batch.

    Args:
        names: registered mixes to choose from (empty: never mix).
        alpha: Beta(alpha, alpha) of the kept share (<= 0: never mix).
        p: probability that a batch is mixed.
        seed: with the epoch (`set_epoch`), seeds the draws.
    """

    def __init__(self, names: Sequence[str], alpha: float, p: float, seed: int) -> None:
        unknown = [n for n in names if n not in _MIXES]
        if unknown:
            raise ValueError(f"unknown batch augmentation(s) {unknown}; registered: {list_mixes()}")
        self.names, self.alpha, self.p, self.seed = tuple(names), alpha, p, seed
        self.rng = np.random.default_rng([seed, 0])

    @property
    def active(self) -> bool:
        return bool(self.names) and self.alpha > 0 and self.p > 0

    def set_epoch(self, epoch: int) -> None:
        self.rng = np.random.default_rng([self.seed, epoch])

    def __call__(self, x: torch.Tensor, meta: torch.Tensor) -> Mixed:
        if not self.active or len(x) < 2 or self.rng.random() >= self.p:
            return Mixed(x, meta)
        name = self.names[int(self.rng.integers(len(self.names)))]
        lam = float(self.rng.beta(self.alpha, self.alpha))
        perm = torch.from_numpy(self.rng.permutation(len(x))).to(x.device)
        mixed, lam = _MIXES[name](x, x[perm], lam, self.rng)
        return Mixed(mixed, lam * meta + (1.0 - lam) * meta[perm], lam, perm)


def mixed_loss(
    loss_fn,
    logits: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor,
    mixed: Mixed,
    study: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss of a (possibly) mixed batch: lam L(y) + (1 - lam) L(y') (module docstring).

    With `study` (a loss over whole studies, `lumbar.train.losses.any_severe_term`) the partner part groups
    each sample by its partner's study: the batch holds whole studies and the pairing is a permutation, so
    every partner study is whole too.
    """
    extra = {} if study is None else {"study": study}
    loss = loss_fn(logits, target, weights, **extra)
    if mixed.perm is None:
        return loss
    partner = {k: v[mixed.perm] for k, v in extra.items()}
    return mixed.lam * loss + (1.0 - mixed.lam) * loss_fn(
        logits, target[mixed.perm], weights[mixed.perm], **partner
    )
