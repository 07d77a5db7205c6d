"""Loggers receive per-epoch rows and the final result; the default does nothing, so offline runs stay offline.

Only rank 0 calls a logger. A tracking service can be plugged in by passing any object with these two
methods to `train(config, logger=...)`; none is built in, and nothing here touches the network.
"""

from __future__ import annotations

from typing import Any


class NullLogger:
    """Does nothing (the default)."""

    def log_epoch(self, unit: str, fold: int, row: dict[str, Any]) -> None:
        """Called after every epoch with the history row (see `lumbar.train.history`)."""

    def log_result(self, result: dict[str, Any]) -> None:
        """Called once at the end with the run's summary (`result.json`)."""


class PrintLogger(NullLogger):
    """One line per epoch on stdout (the `train` command's logger)."""

    def log_epoch(self, unit: str, fold: int, row: dict[str, Any]) -> None:
        print(f"[{unit} fold {fold}] epoch {row['epoch']}: train_loss={row['train_loss']:.4f} "
              f"val_loss={row['val_loss']:.4f} {row['metric']}={row['val_metric']:.4f} "
              f"({row['seconds']:.1f}s, data {row['data_s']:.1f}s, model {row['model_s']:.1f}s)", flush=True)

    def log_result(self, result: dict[str, Any]) -> None:
        score = result.get("oof_score")
        if score:
            print("oof " + " ".join(f"{k}={v:.6f}" for k, v in score.items() if isinstance(v, float)), flush=True)
