"""Losses: the weighted cross-entropy is the metric's weighted log loss; -1 targets are masked."""

from __future__ import annotations

import pytest
import torch

from lumbar.train.losses import build_loss


def test_weighted_ce_is_the_weighted_mean_log_loss():
    logits = torch.tensor([[[2.0, 0.0, -1.0]], [[0.0, 1.0, 0.0]], [[0.0, 0.0, 3.0]]])
    target = torch.tensor([[0], [1], [-1]])
    weight = torch.tensor([[1.0], [2.0], [4.0]])
    p = torch.softmax(logits, -1)[:, 0]
    expected = (-(1.0 * torch.log(p[0, 0])) - 2.0 * torch.log(p[1, 1])) / 3.0
    assert float(build_loss("ce")(logits, target, weight)) == pytest.approx(float(expected), rel=1e-6)


def test_focal_with_gamma_zero_is_ce_and_down_weights_easy_cases():
    torch.manual_seed(0)
    logits, target, weight = torch.randn(6, 2, 3), torch.randint(0, 3, (6, 2)), torch.ones(6, 2)
    ce = build_loss("ce")(logits, target, weight)
    assert float(build_loss("focal", gamma=0.0)(logits, target, weight)) == pytest.approx(float(ce))
    assert float(build_loss("focal", gamma=2.0)(logits, target, weight)) < float(ce)


def test_unknown_loss():
    with pytest.raises(ValueError, match="registered"):
        build_loss("dice")
