"""Per-epoch history of one fold: a CSV log (rewritten after every epoch) and a PNG of the curves (at the
end)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from lumbar.core.atomic import atomic_path
from lumbar.core.tables import write_csv

HISTORY_CSV = "history.csv"
CURVES_PNG = "curves.png"


def write_history(rows: list[dict[str, Any]], fold_dir: str | Path) -> Path:
    """Write `history.csv` (one row per epoch) into a fold folder."""
    return write_csv(pd.DataFrame(rows), Path(fold_dir) / HISTORY_CSV)


def plot_history(rows: list[dict[str, Any]], fold_dir: str | Path) -> Path:
    """Write `curves.png`: train and validation loss, and the validation metric, per epoch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fold_dir = Path(fold_dir)
    table = pd.DataFrame(rows)
    fig = Figure(figsize=(9, 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_metric = fig.subplots(1, 2)
    ax_loss.plot(table["epoch"], table["train_loss"], marker="o", label="train")
    ax_loss.plot(table["epoch"], table["val_loss"], marker="o", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="weighted loss", title="loss")
    ax_loss.legend()
    metric = str(table["metric"].iloc[-1])
    ax_metric.plot(table["epoch"], table["val_metric"], marker="o", color="tab:green")
    ax_metric.set(xlabel="epoch", ylabel=metric, title=f"validation {metric}")
    png = fold_dir / CURVES_PNG
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=90)
    return png
