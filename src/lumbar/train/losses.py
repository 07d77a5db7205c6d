"""Training losses, registered by name: weighted cross-entropy (the metric's 1/2/4) and focal loss.

Every loss takes logits (B, T, K) (T targets per sample, K classes), class targets (B, T) with -1 for "no
label", and per-target weights (B, T), and returns the weighted mean over the labelled targets:
sum(w * l) / sum(w). With w = 1/2/4 by true grade this is the competition's weighted log loss of the batch,
so the training loss and the metric agree. Binary tasks weight by the true grade too (a Severe case counts
4x as a Normal/Mild one, as in the metric).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from lumbar.core.registry import Registry

LossFn = Callable[..., torch.Tensor]
_LOSSES: Registry[Callable[..., LossFn]] = Registry("loss")


def register_loss(name: str) -> Callable:
    """Register a loss factory under `name` (a duplicate name is an error)."""
    return _LOSSES.register(name)


def list_losses() -> list[str]:
    return sorted(_LOSSES)


def build_loss(name: str, **kwargs) -> LossFn:
    """The loss registered as `name`, configured with its keyword arguments (e.g. `gamma` for focal)."""
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; registered: {list_losses()}")
    return _LOSSES[name](**kwargs)


def _weighted_mean(per_target: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    mask = (targets >= 0).to(per_target.dtype)
    w = weights.to(per_target.dtype) * mask
    total = w.sum()
    return (per_target * w).sum() / total.clamp_min(torch.finfo(per_target.dtype).tiny)


def _nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-target cross-entropy (B, T); 0 where the target is -1."""
    k = logits.shape[-1]
    nll = F.cross_entropy(
        logits.float().reshape(-1, k), targets.reshape(-1), reduction="none", ignore_index=-1
    )
    return nll.reshape(targets.shape)


@register_loss("ce")
def cross_entropy(**_: float) -> LossFn:
    """Cross-entropy, weighted per target (masked where the target is -1)."""

    def loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return _weighted_mean(_nll(logits, targets), targets, weights)

    return loss


@register_loss("focal")
def focal(gamma: float = 2.0, **_: float) -> LossFn:
    """Focal loss (1 - p_t)^gamma * CE: down-weights easy Normal/Mild cases; gamma = 0 is cross-entropy."""

    def loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        nll = _nll(logits, targets)
        return _weighted_mean((1.0 - torch.exp(-nll)).pow(gamma) * nll, targets, weights)

    return loss
