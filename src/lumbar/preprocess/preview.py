"""A picture of an ROI cache: the centre slice of a few samples per condition, titled with their grade.

Why: a wrong margin, a flipped side or a slice off by one is obvious in a grid of crops and invisible in
any number.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lumbar.core.constants import CONDITION_ABBREV, CONDITIONS, GRADE_LABELS
from lumbar.preprocess.cache import load_cache, load_sample
from lumbar.preprocess.jitter import center_window


def crop_grid(
    cache_dir: str | os.PathLike, labels: pd.DataFrame | None = None, per_condition: int = 6, seed: int = 0
) -> Figure:
    """One row per condition, `per_condition` samples each (the most severe first when labels are given).

    Args:
        cache_dir: an ROI cache folder.
        labels: the long label table, to title each crop with its grade and pick a spread of grades.
        per_condition: crops per row.
        seed: which samples are drawn.
    """
    _, samples = load_cache(cache_dir)
    if labels is not None:
        samples = samples.merge(labels[["study_id", "condition", "level", "grade"]], how="left")
    rng = np.random.default_rng(seed)
    conditions = [c for c in CONDITIONS if (samples["condition"] == c).any()]
    fig = Figure(figsize=(1.6 * per_condition, 1.8 * max(len(conditions), 1)), layout="constrained")
    axes = fig.subplots(max(len(conditions), 1), per_condition, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, condition in enumerate(conditions):
        rows = samples[samples["condition"] == condition]
        if "grade" in rows:  # one of each grade first, then at random
            picks = [g.sample(1, random_state=int(rng.integers(1 << 31))) for _, g in rows.groupby("grade")]
            rest = rows.sample(min(len(rows), per_condition), random_state=int(rng.integers(1 << 31)))
            rows = pd.concat([*picks, rest]).drop_duplicates("sample_id").head(per_condition)
        else:
            rows = rows.sample(min(len(rows), per_condition), random_state=int(rng.integers(1 << 31)))
        for j, row in enumerate(rows.to_dict("records")):
            arr = center_window(load_sample(cache_dir, row), int(row["pad_slices"]), int(row["pad_px"]))
            ax = axes[i, j]
            ax.imshow(arr[arr.shape[0] // 2].astype(np.float32), cmap="gray", vmin=0, vmax=1)
            grade = row.get("grade")
            label = GRADE_LABELS[int(grade)] if grade is not None and pd.notna(grade) else ""
            ax.set_title(f"{CONDITION_ABBREV[condition]} {row['level']}\n{label}", fontsize=7)
    fig.suptitle(f"{Path(cache_dir).name}: centre slice of the stored window", fontsize=9)
    return fig
