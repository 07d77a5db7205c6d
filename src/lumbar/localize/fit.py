"""The localizer's one training loop: AdamW (fused), one-cycle schedule, AMP on CUDA, a tqdm bar per epoch.

Each model supplies how to draw a batch (inputs and targets, augmented) and its loss; the loop does the
rest, so the heatmap models and the slice scorer train the same way. Device, AMP dtype and CPU threads
come from the engine's `lumbar.core.runtime` (decided once, in one place). The localizer trains in one
process (its data is a few hundred samples); distributed training is the classifiers' business.
A step does not wait for the device: the losses stay there until the end of the epoch (and, for the bar,
every `LOG_EVERY` steps).

After every epoch one line is printed (`lumbar.core.progress.epoch_line`: the model, epoch, mean loss, seconds
and the time left of this model), whatever the bar: it is what the pipeline's step log and console show, also
when several localizers train side by side in their own processes (one write per line, `print_line`). With
`config.tensorboard` the loss and the learning rate per epoch also go to TensorBoard (`board`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from lumbar.core.progress import ScalarBoard, TimeLeft, epoch_line, print_line
from lumbar.core.runtime import Runtime, make_adamw
from lumbar.localize.config import LocalizerConfig

#: (sample indices, numpy rng, torch generator) -> (inputs, targets) on the device.
BatchFn = Callable[[np.ndarray, np.random.Generator, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
#: (model output, targets) -> scalar loss.
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: Steps between reads of the running loss for the progress bar (each read waits for the device).
LOG_EVERY = 50


def fit(
    model: torch.nn.Module,
    n_samples: int,
    batch: BatchFn,
    loss_fn: LossFn,
    epochs: int,
    config: LocalizerConfig,
    runtime: Runtime,
    desc: str = "train",
    progress: bool = True,
    board: str | Path | None = None,
) -> list[float]:
    """Train `model` (already on the runtime's device) in place; returns the mean loss of each epoch.

    Args:
        model: the network.
        n_samples: samples per epoch (indices 0..n-1 are shuffled and passed to `batch`).
        batch: draws a batch's inputs and targets, with augmentation.
        loss_fn: the loss of a batch.
        epochs: passes over the samples.
        config: batch size, learning rate, weight decay, seed, `tensorboard`.
        runtime: device and AMP (`lumbar.core.runtime.setup_runtime`).
        desc: the model's name in the epoch lines and on the bar ("localizer fold0 sag_t2").
        progress: show the bar.
        board: the folder of this model's TensorBoard curves, written when `config.tensorboard` is on.
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    opt = make_adamw(model.parameters(), config.lr, config.weight_decay, runtime.device)
    steps = int(np.ceil(n_samples / config.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.lr, total_steps=steps * epochs, pct_start=0.15
    )
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.needs_scaler)
    scalars = ScalarBoard(board) if config.tensorboard and board is not None else None
    history, clock = [], TimeLeft()
    model.train()
    for epoch in range(1, epochs + 1):
        tick = time.perf_counter()
        order = rng.permutation(n_samples)
        losses = []
        bar = tqdm(total=steps, desc=f"{desc} e{epoch}", unit="step", leave=False, disable=not progress)
        for start in range(0, n_samples, config.batch_size):
            x, y = batch(order[start : start + config.batch_size], rng, gen)
            with runtime.autocast():
                out = model(x)
            loss = loss_fn(out, y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            losses.append(loss.detach())
            bar.update(1)
            if not bar.disable and len(losses) % LOG_EVERY == 0:
                bar.set_postfix(loss=f"{np.mean(_floats(losses)):.3f}")
        bar.close()
        history.append(float(np.mean(_floats(losses))))
        seconds = time.perf_counter() - tick
        print_line(
            epoch_line(
                desc, epoch, epochs, {"train_loss": history[-1]}, seconds, clock.add(seconds, epochs - epoch)
            )
        )
        if scalars is not None:
            scalars.add(epoch, {"train/loss": history[-1], "train/lr": opt.param_groups[0]["lr"]})
    if scalars is not None:
        scalars.close()
    model.eval()
    return history


def _floats(losses: list[torch.Tensor]) -> np.ndarray:
    """Per-step losses as the float64 values `float(loss)` gives, in one device read."""
    return torch.stack(losses).to("cpu", torch.float64).numpy()
