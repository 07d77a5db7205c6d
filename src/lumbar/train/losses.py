"""Training losses, registered by name: weighted cross-entropy (the metric's 1/2/4) and focal loss.

Every loss takes logits (B, T, K) (T targets per sample, K classes), class targets (B, T) with -1 for "no
label", and per-target weights (B, T), and returns the weighted mean over the labelled targets:
sum(w * l) / sum(w). With w = 1/2/4 by true grade this is the competition's weighted log loss of the batch,
so the training loss and the metric agree. Binary tasks weight by the true grade too (a Severe case counts
4x as a Normal/Mild one, as in the metric).

`any_severe_spinal` is no loss of its own but the metric's fourth term added to one (`TrainConfig.
any_severe_weight`): it needs the batch's study index (`study`, one code per sample), so the batches must hold
whole studies (`lumbar.train.sampling.StudyBatchSampler`); a loss is called with `study` only then.
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


#: The registered name of the any-severe term wrapped around a base loss (`any_severe_spinal`).
ANY_SEVERE = "any_severe_spinal"
_SEVERE = 2


@register_loss("focal")
def focal(gamma: float = 2.0, **_: float) -> LossFn:
    """Focal loss (1 - p_t)^gamma * CE: down-weights easy Normal/Mild cases; gamma = 0 is cross-entropy."""

    def loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        nll = _nll(logits, targets)
        return _weighted_mean((1.0 - torch.exp(-nll)).pow(gamma) * nll, targets, weights)

    return loss


def any_severe_term(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, study: torch.Tensor
) -> torch.Tensor:
    """The metric's any_severe_spinal term of a batch of spinal crops (`lumbar.scoring.metric`): per study,
    the binary log loss of max p(severe) over its labelled levels against "some level is Severe", weighted by
    the largest of its levels' weights (1/2/4), averaged with those weights over the studies.

    Computed in log space (log max p = max log p, log(1 - max p) = min log(1 - p)), so a confident model
    gives no infinity where the metric would clip.

    Args:
        logits: (B, 1, 3) spinal crops (one target, three grades).
        targets, weights: (B, 1), as for every loss (-1: no label, left out as in the metric).
        study: (B,) one code per study (crops of one study share it).
    """
    if logits.shape[1:] != (1, 3):
        raise ValueError(
            f"the any-severe term reads one 3-grade target per crop, got logits {tuple(logits.shape)}"
        )
    labelled = targets[:, 0] >= 0
    log_p = torch.log_softmax(logits.float()[labelled, 0], dim=-1)
    log_severe = log_p[:, _SEVERE]
    log_not = torch.logsumexp(log_p[:, :_SEVERE], dim=-1)
    _, group = torch.unique(study[labelled], return_inverse=True)
    n = int(group.max()) + 1 if len(group) else 0

    def per_study(values: torch.Tensor, reduce: str) -> torch.Tensor:
        empty = torch.zeros(n, dtype=values.dtype, device=values.device)
        return empty.scatter_reduce(0, group, values, reduce, include_self=False)

    severe = per_study((targets[labelled, 0] == _SEVERE).to(log_severe.dtype), "amax")
    weight = per_study(weights[labelled, 0].to(log_severe.dtype), "amax")
    nll = -(severe * per_study(log_severe, "amax") + (1.0 - severe) * per_study(log_not, "amin"))
    return (weight * nll).sum() / weight.sum().clamp_min(torch.finfo(nll.dtype).tiny)


@register_loss(ANY_SEVERE)
def any_severe_spinal(base: LossFn, weight: float = 1.0, **_: float) -> LossFn:
    """`base` plus `weight` times the metric's any-severe term over the batch's studies."""

    def loss(
        logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, study: torch.Tensor
    ) -> torch.Tensor:
        return base(logits, targets, weights) + weight * any_severe_term(logits, targets, weights, study)

    return loss
