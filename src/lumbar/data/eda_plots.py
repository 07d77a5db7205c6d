"""Figures of the EDA tables (`lumbar.data.eda`): bar charts, heatmaps, label-point scatter, example slices.

Built with matplotlib's object API (`Figure`, never pyplot), so nothing touches a global figure list or
backend: safe under Agg, in tests and in papermill. Each function returns the Figure; `save_png` writes it
and closes nothing because nothing global was opened.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lumbar.core.constants import CONDITION_SIDE, CONDITIONS, GRADE_LABELS, GRADES, LEVELS, level_title
from lumbar.data.eda import SlicePanel

#: One colour per grade (Normal/Mild, Moderate, Severe) and per level, shared by every figure.
GRADE_COLORS: tuple[str, ...] = ("#4c9f70", "#f0a030", "#c0392b")
_LABEL_BOX = {"boxstyle": "round,pad=0.15", "facecolor": "black", "alpha": 0.6, "linewidth": 0}
LEVEL_COLORS: dict[str, str] = dict(zip(LEVELS, ("#1f77b4", "#2ca02c", "#ffbf00", "#d62728", "#9467bd")))


def save_png(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write a figure as PNG (parent folders created) and return the path, for `IPython.display.Image`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png", bbox_inches="tight")
    return path


def grade_share_bars(counts: pd.DataFrame, title: str) -> Figure:
    """Horizontal stacked bars of grade shares, one bar per row of `eda.grade_counts`, shares written in.

    Args:
        counts: rows (conditions, levels, ...) x the `GRADES` count columns.
        title: the figure title.
    """
    values = counts[list(GRADES)].to_numpy(dtype=float)
    shares = values / np.where(values.sum(axis=1, keepdims=True) == 0, 1, values.sum(axis=1, keepdims=True))
    fig = Figure(figsize=(9, 0.45 * len(counts) + 1.2), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(counts))[::-1]
    left = np.zeros(len(counts))
    for j, (label, color) in enumerate(zip(GRADE_LABELS, GRADE_COLORS)):
        bars = ax.barh(y, shares[:, j], left=left, color=color, label=label)
        texts = [f"{s:.1%}" if s >= 0.04 else "" for s in shares[:, j]]
        ax.bar_label(bars, labels=texts, label_type="center")
        left += shares[:, j]
    ax.set_yticks(y, [str(i) for i in counts.index])
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of labelled targets")
    ax.set_title(title)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.08), ncols=3, frameon=False)
    return fig


def grade_count_bars(counts: pd.DataFrame, title: str) -> Figure:
    """Grouped bars of grade counts per row (e.g. per level), counts written on the bars."""
    fig = Figure(figsize=(9, 4), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(counts))
    width = 0.8 / len(GRADES)
    for j, (grade, label, color) in enumerate(zip(GRADES, GRADE_LABELS, GRADE_COLORS)):
        bars = ax.bar(x + (j - 1) * width, counts[grade].to_numpy(), width, color=color, label=label)
        ax.bar_label(bars, fontsize=8)
    ax.set_xticks(x, [str(i) for i in counts.index])
    ax.set_ylabel("labelled targets")
    ax.set_title(title)
    ax.legend(frameon=False)
    return fig


def heatmap(table: pd.DataFrame, title: str, fmt: str = "{:.0f}", cmap: str = "viridis") -> Figure:
    """An annotated heatmap of a numeric table (rows x columns as given)."""
    values = table.to_numpy(dtype=float)
    fig = Figure(figsize=(1.3 * table.shape[1] + 3.5, 0.6 * table.shape[0] + 1.5), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap=cmap, aspect="auto")
    fig.colorbar(image, ax=ax)
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns])
    ax.set_yticks(range(table.shape[0]), [str(i) for i in table.index])
    middle = np.nanmin(values) + 0.5 * (np.nanmax(values) - np.nanmin(values)) if values.size else 0
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, fmt.format(v), ha="center", va="center", color="black" if v > middle else "white")
    ax.set_title(title)
    return fig


def series_count_bars(distribution: pd.DataFrame, title: str = "Series per study") -> Figure:
    """Grouped bars: studies per number of series of each description (log scale: the rare 0 and 3+ show).

    Args:
        distribution: `eda.series_count_distribution` (rows: number of series; columns: descriptions).
    """
    fig = Figure(figsize=(9, 4), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(distribution))
    width = 0.8 / max(distribution.shape[1], 1)
    for j, column in enumerate(distribution.columns):
        values = distribution[column].to_numpy()
        bars = ax.bar(x + (j - (distribution.shape[1] - 1) / 2) * width, values, width, label=column)
        ax.bar_label(bars, labels=[str(v) if v else "" for v in values], fontsize=8)
    ax.set_yscale("log")
    ax.set_xticks(x, [str(n) for n in distribution.index])
    ax.set_xlabel("series of that description in the study")
    ax.set_ylabel("studies (log)")
    ax.set_title(title)
    ax.legend(frameon=False)
    return fig


def label_point_scatter(points: pd.DataFrame, title: str = "Label points (x / columns, y / rows)") -> Figure:
    """One panel per condition: each label point at its normalised image position, coloured by level.

    Args:
        points: `eda.normalized_points` (needs condition, level, x_norm, y_norm).
    """
    fig = Figure(figsize=(3.2 * len(CONDITIONS), 3.6), layout="constrained")
    axes = fig.subplots(1, len(CONDITIONS), sharex=True, sharey=True)
    alpha = 0.8 if len(points) < 2000 else 0.25
    for ax, condition in zip(axes, CONDITIONS):
        here = points[points["condition"] == condition]
        for level in LEVELS:
            at = here[here["level"] == level]
            ax.scatter(
                at["x_norm"],
                at["y_norm"],
                s=6,
                alpha=alpha,
                color=LEVEL_COLORS[level],
                label=level_title(level),
            )
        ax.set_title(f"{condition}\n({len(here)} points)", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(1, 0)  # image convention: row 0 at the top
        ax.set_aspect("equal")
        ax.set_xlabel("x / columns")
    axes[0].set_ylabel("y / rows")
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False, markerscale=2)
    fig.suptitle(title)
    return fig


def example_slices(panels: Sequence[SlicePanel], title: str, columns: int = 4) -> Figure:
    """The decoded slices of `eda.example_panels`, each with its label points and their levels drawn."""
    rows = max(1, math.ceil(len(panels) / columns))
    fig = Figure(figsize=(3.4 * columns, 3.6 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False).ravel())
    for ax in axes:
        ax.set_axis_off()
    for ax, panel in zip(axes, panels):
        ax.imshow(panel.image, cmap="gray", vmin=0, vmax=1)
        one_level = panel.points["level"].nunique() == 1
        for point in panel.points.itertuples():
            color = LEVEL_COLORS[point.level]
            ax.scatter([point.x], [point.y], s=40, facecolors="none", edgecolors=color, linewidths=1.5)
            side = CONDITION_SIDE[point.condition][:1].upper()
            text = side if one_level and side else f"{level_title(point.level)} {side}".strip()
            ax.annotate(
                text,
                (point.x, point.y),
                xytext=(6, 0),
                textcoords="offset points",
                color=color,
                fontsize=7,
                va="center",
                bbox=_LABEL_BOX,
            )
        ax.set_title(panel.title, fontsize=8)
    fig.suptitle(title)
    return fig
