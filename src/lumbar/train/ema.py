"""Exponential moving average of a model's weights that never waits for the device.

torch's `AveragedModel.update_parameters` asks its on-device step counter `n_averaged` twice per update
whether it is zero, and each question is a host-device synchronisation: on CUDA that stalls every training
step. `ModelEma` is the same `AveragedModel` (same arithmetic: the first update copies the weights, every
later one is `ema += (1 - decay) * (w - ema)` over parameters and buffers; same state dict, so checkpoints of
either load into the other), with the counter mirrored on the host.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class ModelEma(AveragedModel):
    """EMA of parameters and buffers (`AveragedModel(..., multi_avg_fn=get_ema_multi_avg_fn(decay),
    use_buffers=True)`) whose update queues its kernels without waiting for the device."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.updates = 0  # host mirror of n_averaged

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        averaged = [p.detach() for p in itertools.chain(self.module.parameters(), self.module.buffers())]
        current = [
            p.detach().to(a.device)
            for p, a in zip(itertools.chain(model.parameters(), model.buffers()), averaged, strict=True)
        ]
        if self.updates == 0:
            for a, c in zip(averaged, current):
                a.copy_(c)
        else:
            groups: dict[tuple[torch.device, torch.dtype], tuple[list, list]] = {}
            for a, c in zip(averaged, current):
                pair = groups.setdefault((a.device, a.dtype), ([], []))
                pair[0].append(a)
                pair[1].append(c)
            for ema_group, model_group in groups.values():
                self.multi_avg_fn(ema_group, model_group, None)
        self.n_averaged += 1
        self.updates += 1

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.updates = int(self.n_averaged)  # one read, at resume
        return result
