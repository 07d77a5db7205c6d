"""Progress a person can watch while a model trains for hours: one line per epoch with the time left, and
TensorBoard scalars.

The classifiers' loop (`lumbar.train.loggers`) and the localizer's (`lumbar.localize.fit`) both print their
epochs with `epoch_line` and estimate the time left with `TimeLeft`, so every step's log reads the same. Each
line goes out in one write (`print_line`): several processes printing to one pipe at once (a parallel pipeline
group, the localizer's folds) interleave whole lines, never parts of them. `print(line, flush=True)` does not
promise that: with unbuffered output (`PYTHONUNBUFFERED`, set on many machines) it writes the text and its
newline apart, and another process's line can land between them. `ScalarBoard` writes one set of curves into
its own folder, so `tensorboard --logdir RUN` shows every model of a run side by side; it imports TensorBoard
only when a first value is written, so runs with the setting off need neither the package nor write a file.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from pathlib import Path


def print_line(text: str) -> None:
    """`text` and its newline to stdout in one write, flushed (module docstring: whole lines from many
    processes)."""
    sys.stdout.write(f"{text}\n")
    sys.stdout.flush()


def format_seconds(seconds: float) -> str:
    """`h:mm:ss` (or `m:ss` under an hour); `?` when unknown (NaN)."""
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(round(max(seconds, 0.0)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class TimeLeft:
    """The time left of a run, from the mean seconds of the epochs timed so far by this object.

    Only epochs run in this process are timed: a resumed run counts its earlier epochs as done (by the
    caller's count of remaining epochs), never as fast or slow ones.
    """

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def add(self, seconds: float, remaining_epochs: int) -> float:
        """Time an epoch; return the estimated seconds of the `remaining_epochs` still to run."""
        self.seconds.append(float(seconds))
        return sum(self.seconds) / len(self.seconds) * max(remaining_epochs, 0)


def epoch_line(
    name: str,
    epoch: int,
    epochs: int,
    values: Mapping[str, float],
    seconds: float,
    left: float,
    note: str = "",
) -> str:
    """`[name] epoch 3/10: train_loss=0.4123 val_loss=0.5012 competition=0.4870 | 12.3 s (note), left
    1:02:03`.

    A NaN value (an epoch without validation) is left out of the line; `epochs` 0 (unknown) shows the epoch
    alone.
    """
    shown = " ".join(f"{k}={v:.4f}" for k, v in values.items() if not math.isnan(v))
    of = f"/{epochs}" if epochs else ""
    detail = f" ({note})" if note else ""
    return f"[{name}] epoch {epoch}{of}: {shown} | {seconds:.1f} s{detail}, left {format_seconds(left)}"


class ScalarBoard:
    """TensorBoard scalars of one set of curves (a classifier unit's fold, a localizer model) in `folder`.

    The writer opens with the first value and flushes after every step, so a run killed at any point keeps its
    curves and `tensorboard` shows an epoch as soon as it ends.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._writer = None

    def add(self, step: int, scalars: Mapping[str, float]) -> None:
        """Write `tag -> value` at `step` (an epoch); NaN values (an epoch without validation) are skipped."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.folder))
        for tag, value in scalars.items():
            if not math.isnan(value):
                self._writer.add_scalar(tag, float(value), global_step=step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
