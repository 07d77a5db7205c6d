"""Figures of the error analysis (`lumbar.analysis.errors`, `lumbar.analysis.calibration`).

matplotlib's object API (`Figure`, never pyplot), as `lumbar.data.eda_plots`: safe under papermill and in
tests. Each function returns the Figure; `lumbar.data.eda_plots.save_png` writes it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lumbar.core.constants import GRADE_LABELS, GRADES, GROUPS
from lumbar.data.eda_plots import GRADE_COLORS, heatmap


def contribution_heatmap(matrix: pd.DataFrame, score: float) -> Figure:
    """`errors.contribution_matrix` as an annotated heatmap of score points (x 1000 for legibility)."""
    return heatmap(
        1000 * matrix,
        f"Score points x 1000 per condition x level (sum = score {score:.4f})",
        fmt="{:.1f}",
        cmap="magma",
    )


def reliability_diagram(tables: dict[str, pd.DataFrame], eces: dict[str, dict[str, float]]) -> Figure:
    """Observed against predicted frequency per grade, one line per prediction set, its ECE in the legend.

    Args:
        tables: name -> `calibration.reliability_table`.
        eces: name -> `calibration.expected_calibration_error` of that table.
    """
    fig = Figure(figsize=(4.2 * len(GRADES), 4.4), layout="constrained")
    axes = fig.subplots(1, len(GRADES), sharey=True)
    styles = ["-o", "--s", ":^", "-.v"]
    for ax, grade, label in zip(axes, GRADES, GRADE_LABELS):
        ax.plot([0, 1], [0, 1], color="0.7", linewidth=1)
        for k, (name, table) in enumerate(tables.items()):
            t = table[(table["grade"] == grade) & (table["count"] > 0)]
            ax.plot(
                t["mean_pred"],
                t["observed"],
                styles[k % len(styles)],
                markersize=4,
                label=f"{name}: ECE {eces[name][grade]:.3f}",
            )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_xlabel(f"predicted p({label})")
        ax.set_title(label)
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("observed frequency")
    fig.suptitle("Reliability per grade (equal-width bins; on the diagonal = calibrated)")
    return fig


def study_bars(studies: pd.DataFrame, count: int = 15) -> Figure:
    """The `count` studies that cost the most score points (`errors.study_contributions`)."""
    top = studies.head(count).iloc[::-1]
    fig = Figure(figsize=(8, 0.32 * len(top) + 1.4), layout="constrained")
    ax = fig.add_subplot()
    ax.barh([str(s) for s in top["study_id"]], top["contribution"], color="#c0392b")
    for y, (value, worst) in enumerate(zip(top["contribution"], top["worst_target"])):
        ax.text(value, y, "  " + worst.split("_", 1)[1], va="center", fontsize=7)
    ax.set_xlabel("score points (its rows + its any-severe-spinal term)")
    ax.set_title(f"The {len(top)} most expensive studies (text: their most expensive target)")
    ax.margins(x=0.45)
    return fig


def localizer_scatter(table: pd.DataFrame) -> Figure:
    """Loss on the label (-log p) against the localizer's 3D error, per metric group
    (`errors.localizer_loss`)."""
    fig = Figure(figsize=(4.2 * len(GROUPS), 4), layout="constrained")
    axes = fig.subplots(1, len(GROUPS), sharey=True)
    for ax, group in zip(axes, GROUPS):
        t = table[(table["term"] == group) & table["error_3d_mm"].notna()]
        for g, color in enumerate(GRADE_COLORS):
            rows = t[t["grade"] == g]
            ax.scatter(rows["error_3d_mm"], rows["nll"], s=10, color=color, alpha=0.7, label=GRADE_LABELS[g])
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("localizer error, mm (3D, slice offset included)")
        ax.set_title(f"{group} ({len(t)} targets)")
    axes[0].set_ylabel("-log p(label)")
    axes[0].legend(fontsize=7, title="label", title_fontsize=7)
    fig.suptitle("Does a bad point explain a bad prediction?")
    return fig


def any_severe_heatmap(confusion: pd.DataFrame) -> Figure:
    """`errors.any_severe_confusion`: studies per cell, with the share of the term each cell carries."""
    counts, shares = confusion["studies"], confusion["share of term"]
    fig = Figure(figsize=(6.4, 3.2), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(shares.to_numpy(float), cmap="Reds", vmin=0, vmax=1, aspect="auto")
    for (i, j), n in np.ndenumerate(counts.to_numpy()):
        share = shares.to_numpy(float)[i, j]
        ax.text(
            j,
            i,
            f"{n} studies\n{share:.0%} of the term",
            ha="center",
            va="center",
            color="white" if share > 0.5 else "black",
        )
    ax.set_xticks(range(counts.shape[1]), list(counts.columns))
    ax.set_yticks(range(counts.shape[0]), list(counts.index))
    ax.set_title("any_severe_spinal: studies and where the term's loss comes from")
    return fig
