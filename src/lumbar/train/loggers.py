"""Loggers receive the plan, per-epoch rows and the final result; the default does nothing, so offline runs
stay
offline.

Only rank 0 calls a logger. `train` calls `log_start(units, folds, epochs)` once (optional: a logger without
it is not told), `log_epoch(unit, fold, row)` after every epoch and `log_result(result)` at the end, so a
tracking service can be plugged in by passing any object with the last two methods to `train(config,
logger=...)`; none is built in, and nothing here touches the network. `PrintLogger` prints the epoch lines
(`lumbar.core.progress.epoch_line`) with the time left of the whole `train` call; `TensorBoardLogger` writes
the curves that `TrainConfig.tensorboard` asks for.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lumbar.core.progress import ScalarBoard, TimeLeft, epoch_line, print_line


class NullLogger:
    """Does nothing (the default)."""

    def log_start(self, units: Sequence[str], folds: Sequence[int], epochs: int) -> None:
        """Called once before the first epoch: the units and folds `train` fits (each unit's folds in turn)
        and the
        epochs of each fold."""

    def log_epoch(self, unit: str, fold: int, row: dict[str, Any]) -> None:
        """Called after every epoch with the history row (see `lumbar.train.history`)."""

    def log_result(self, result: dict[str, Any]) -> None:
        """Called once at the end with the run's summary (`result.json`)."""


class PrintLogger(NullLogger):
    """One line per epoch on stdout (the `train` command's and `03_train`'s logger): unit, fold, epoch,
    losses,
    validation score, seconds and the time left of the whole `train` call.

    The time left is the mean seconds of the epochs run so far in this call times the epochs still planned
    (`log_start`); a fold resumed or found finished counts as done up to where it was, so it never skews the
    mean. Early stopping (`patience`) ends a fold before its planned epochs: the estimate is then an upper
    bound.
    """

    def __init__(self) -> None:
        self.plan: list[tuple[str, int]] = []
        self.epochs = 0
        self.clock = TimeLeft()

    def log_start(self, units: Sequence[str], folds: Sequence[int], epochs: int) -> None:
        self.plan = [(unit, int(fold)) for unit in units for fold in folds]
        self.epochs, self.clock = epochs, TimeLeft()

    def remaining_epochs(self, unit: str, fold: int, epoch: int) -> int:
        """Epochs planned after `epoch` of this unit and fold, the later folds' and units' included."""
        later = (
            len(self.plan) - self.plan.index((unit, int(fold))) - 1 if (unit, int(fold)) in self.plan else 0
        )
        return later * self.epochs + max(self.epochs - epoch, 0)

    def log_epoch(self, unit: str, fold: int, row: dict[str, Any]) -> None:
        left = self.clock.add(row["seconds"], self.remaining_epochs(unit, fold, row["epoch"]))
        if not self.plan:
            left = float("nan")  # no plan: nothing to count down from
        values = {
            "train_loss": row["train_loss"],
            "val_loss": row["val_loss"],
            row["metric"]: row["val_metric"],
        }
        line = epoch_line(
            f"{unit} fold {fold}",
            row["epoch"],
            self.epochs,
            values,
            row["seconds"],
            left,
            note=f"data {row['data_s']:.1f} s, model {row['model_s']:.1f} s",
        )
        print_line(line)

    def log_result(self, result: dict[str, Any]) -> None:
        score = result.get("oof_score")
        if score:
            print_line("oof " + " ".join(f"{k}={v:.6f}" for k, v in score.items() if isinstance(v, float)))


class TensorBoardLogger(NullLogger):
    """TensorBoard curves of every unit and fold under `root/<unit>/fold<k>`: train and validation loss, the
    validation score (as `val/<metric>`) and the learning rate, per epoch."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.boards: dict[tuple[str, int], ScalarBoard] = {}

    def log_epoch(self, unit: str, fold: int, row: dict[str, Any]) -> None:
        board = self.boards.setdefault((unit, fold), ScalarBoard(self.root / unit / f"fold{fold}"))
        board.add(
            row["epoch"],
            {
                "train/loss": row["train_loss"],
                "train/lr": row["lr"],
                "val/loss": row["val_loss"],
                f"val/{row['metric']}": row["val_metric"],
            },
        )

    def close(self) -> None:
        for board in self.boards.values():
            board.close()


class Loggers(NullLogger):
    """Several loggers as one; a logger without `log_start` is not told the plan."""

    def __init__(self, *loggers: Any) -> None:
        self.loggers = [logger for logger in loggers if logger is not None]

    def log_start(self, units: Sequence[str], folds: Sequence[int], epochs: int) -> None:
        for logger in self.loggers:
            if hasattr(logger, "log_start"):
                logger.log_start(units, folds, epochs)

    def log_epoch(self, unit: str, fold: int, row: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.log_epoch(unit, fold, row)

    def log_result(self, result: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.log_result(result)
