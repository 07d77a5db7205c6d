"""Drawing a study view (`plot_study`) as one static figure: matplotlib's object API, no pyplot, so it is safe
under papermill and in tests.

What the figure shows:
    * The three series at the relevant slices: Sagittal T2/STIR at the spinal-canal points, Sagittal T1 at
      the left and at the right foramina, Axial T2 at each level's subarticular points. Each panel's slice is
      the one most of its reference points sit on (the ground truth when known, else the localizer's); every
      point is projected onto it through DICOM geometry, so a point marked on another slice lands where it
      belongs in patient space, drawn hollow and with its distance to the slice's plane.
    * Ground-truth points (green circles) beside the localizer's (orange crosses), each localizer point with
      its in-plane error in mm and its slice shift against the truth (`lumbar.localize.evaluate`).
    * The crops: the middle slice of each target's crop around the localizer's point (what the predictions
      were made on) and, for a train study, around the true point (what training also saw).
    * Per condition x level the predicted probabilities (the ensemble first, then each model) next to the
      label, with the ensemble's loss on the label.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lumbar.analysis.viewer.gather import LOCALIZER, TRUTH, SlicePanel, StudyView
from lumbar.core.constants import CONDITION_ABBREV, CONDITIONS, GRADE_LABELS, GRADES, LEVELS, level_title
from lumbar.data.eda_plots import GRADE_COLORS

#: How each point source is drawn: marker, colour, label.
POINT_STYLE = {TRUTH: ("o", "#2ecc71", "ground truth"), LOCALIZER: ("x", "#ff8c00", "localizer")}
#: A point farther than this from a panel's plane is drawn hollow, with its distance (mm).
OFF_PLANE_MM = 1.0
#: Image panels show the points' bounding box plus this margin (mm): sagittal, axial.
ZOOM_MARGIN_MM = {"sagittal": 40.0, "axial": 50.0}


def _zoom(ax, image: np.ndarray, points: pd.DataFrame, spacing: tuple[float, float], margin_mm: float):
    """Show the points' bounding box plus `margin_mm` (within the image)."""
    if points.empty:
        return
    h, w = image.shape
    mx, my = margin_mm / spacing[1], margin_mm / spacing[0]
    cx, cy = (points["x"].min() + points["x"].max()) / 2, (points["y"].min() + points["y"].max()) / 2
    half_w = (points["x"].max() - points["x"].min()) / 2 + mx
    half_h = (points["y"].max() - points["y"].min()) / 2 + my
    half_w, half_h = max(half_w, 0.75 * half_h), max(half_h, 0.75 * half_w)  # not a sliver
    x0, x1 = max(cx - half_w, 0), min(cx + half_w, w - 1)
    y0, y1 = max(cy - half_h, 0), min(cy + half_h, h - 1)
    if x1 > x0 and y1 > y0:
        ax.set_xlim(x0, x1)
        ax.set_ylim(y1, y0)


def _draw_panel(ax, panel: SlicePanel, offset: int) -> None:
    image, points, index, spacing = panel.image(offset)
    ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    plane = "sagittal" if panel.group.level is None else "axial"
    _zoom(ax, image, points[points["off_mm"] < 20.0], spacing, ZOOM_MARGIN_MM[plane])
    for p in points.itertuples():
        marker, color, _ = POINT_STYLE[p.source]
        off = p.off_mm > OFF_PLANE_MM
        if marker == "o":
            ax.scatter(
                [p.x],
                [p.y],
                s=45,
                marker="o",
                facecolors="none",
                edgecolors=color,
                linewidths=1.4,
                linestyle="--" if off else "-",
            )
        else:
            alpha = 0.55 if off else 1.0
            ax.scatter([p.x], [p.y], s=40, marker="x", color=color, linewidths=1.4, alpha=alpha)
        text = p.text + (f" ({p.off_mm:.0f} mm off)" if off else "")
        if panel.group.level is None:  # sagittal: truth to the right, localizer to the left
            dx, dy = (7, 0) if p.source == TRUTH else (-7, 0)
        else:  # axial: the patient's right (image left) to the left, truth above, localizer below
            dx, dy = (-7 if p.condition.startswith("right") else 7), (6 if p.source == TRUTH else -6)
        box = {"boxstyle": "round,pad=0.1", "facecolor": "black", "alpha": 0.55, "linewidth": 0}
        ax.annotate(
            text,
            (p.x, p.y),
            xytext=(dx, dy),
            textcoords="offset points",
            color=color,
            fontsize=6.5,
            va="center",
            ha="left" if dx > 0 else "right",
            bbox=box,
        )
    instance = int(panel.stack.headers[index].instance_number)
    ax.set_title(
        f"{panel.group.description}: {panel.group.name}\ninstance {instance} (slice {index + 1}/"
        f"{len(panel.stack)})",
        fontsize=8,
    )
    ax.set_axis_off()


def _draw_crops(fig: Figure, view: StudyView) -> None:
    sources = [s for s in (LOCALIZER, TRUTH) if view.crops.get(s)]
    grades = (
        {(r.condition, r.level): int(r.grade) for r in view.labels.itertuples()}
        if view.labels is not None
        else {}
    )
    axes = fig.subplots(len(CONDITIONS), len(LEVELS) * len(sources), squeeze=False)
    for i, condition in enumerate(CONDITIONS):
        for j, level in enumerate(LEVELS):
            for k, source in enumerate(sources):
                ax = axes[i, j * len(sources) + k]
                ax.set_xticks([])
                ax.set_yticks([])
                crop = view.crops[source].get((condition, level))
                if crop is not None:
                    ax.imshow(crop, cmap="gray", vmin=0, vmax=1)
                grade = grades.get((condition, level))
                for spine in ax.spines.values():
                    spine.set_color(GRADE_COLORS[grade] if grade is not None else "0.6")
                    spine.set_linewidth(2.5 if grade is not None else 0.5)
                if i == 0:
                    ax.set_title(f"{level_title(level)}\n{source}", fontsize=7)
                if j == 0 and k == 0:
                    ax.set_ylabel(CONDITION_ABBREV[condition], fontsize=8)
    frame = " (frame: label grade)" if grades else ""
    around = " / ".join(f"{s} point" for s in sources)
    fig.suptitle(f"crops: middle slice around the {around}{frame}", fontsize=9)


def _draw_probabilities(fig: Figure, view: StudyView) -> None:
    names = list(view.predictions)
    labels = (
        {(r.condition, r.level): int(r.grade) for r in view.labels.itertuples()}
        if view.labels is not None
        else {}
    )
    axes = fig.subplots(1, len(CONDITIONS), sharex=True)
    height = 0.8 / max(len(names), 1)
    for ax, condition in zip(axes, CONDITIONS):
        for j, level in enumerate(LEVELS):
            for k, name in enumerate(names):
                rows = view.predictions[name]
                row = rows[(rows["condition"] == condition) & (rows["level"] == level)]
                if row.empty:
                    continue
                probs = row[list(GRADES)].to_numpy(float)[0]
                y = j + (k - (len(names) - 1) / 2) * height
                left = 0.0
                for g, p in enumerate(probs):
                    ax.barh(
                        y,
                        p,
                        left=left,
                        height=height * 0.9,
                        color=GRADE_COLORS[g],
                        alpha=1.0 if k == 0 else 0.55,
                    )
                    left += p
            grade = labels.get((condition, level))
            if grade is not None:
                first = view.predictions[names[0]] if names else None
                text = GRADE_LABELS[grade]
                if first is not None:
                    hit = first[(first["condition"] == condition) & (first["level"] == level)]
                    if len(hit):
                        p = float(hit[GRADES[grade]].iloc[0])
                        text += f"  p={p:.2f}"
                color = GRADE_COLORS[grade]
                ax.text(1.02, j, text, fontsize=6.5, va="center", color=color, fontweight="bold")
        ax.set_yticks(range(len(LEVELS)), [level_title(lv) for lv in LEVELS], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.tick_params(labelsize=7)
        ax.set_title(CONDITION_ABBREV[condition], fontsize=8)
    order = ", ".join(f"{k + 1}. {n}" for k, n in enumerate(names))
    colours = " / ".join(GRADE_LABELS)
    right = "; right: label and the first one's p(label)" if labels else ""
    title = f"predicted probabilities, bars top to bottom: {order}; colours: {colours}{right}"
    fig.suptitle(title, fontsize=8)


def _draw_labels(fig: Figure, view: StudyView) -> None:
    """The labels alone (no predictions): condition x level cells in the grade's colour."""
    from matplotlib.colors import ListedColormap

    table = view.labels.pivot_table(index="condition", columns="level", values="grade", aggfunc="first")
    table = table.reindex(index=list(CONDITIONS), columns=list(LEVELS))
    ax = fig.subplots()
    ax.imshow(table.to_numpy(float), cmap=ListedColormap(GRADE_COLORS), vmin=-0.5, vmax=2.5, aspect="auto")
    for (i, j), g in np.ndenumerate(table.to_numpy(float)):
        text = "no label" if np.isnan(g) else GRADE_LABELS[int(g)]
        ax.text(j, i, text, ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(LEVELS)), [level_title(lv) for lv in LEVELS], fontsize=8)
    ax.set_yticks(range(len(CONDITIONS)), list(CONDITIONS), fontsize=8)
    ax.set_title("labels (no predictions)", fontsize=9)


def plot_study(view: StudyView, offset: int = 0) -> Figure:
    """The study as one figure (module docstring); `offset` moves every image panel that many slices."""
    sagittal = [p for p in view.panels if p.group.level is None]
    axial = [p for p in view.panels if p.group.level is not None]
    rows = ["images"] + (["axial"] if axial else []) + (["crops"] if view.crops else [])
    rows += ["probabilities"] if view.predictions or view.labels is not None else []
    heights = {
        "images": 4.6,
        "axial": 2.8,
        "crops": 0.75 * len(CONDITIONS) + 0.6,
        "probabilities": 0.45 * len(LEVELS) * max(1, len(view.predictions)) ** 0.5 + 1.2,
    }
    fig = Figure(figsize=(15, sum(heights[r] for r in rows) + 0.6), layout="constrained")
    subs = np.atleast_1d(fig.subfigures(len(rows), 1, height_ratios=[heights[r] for r in rows]))
    where = dict(zip(rows, subs))
    images = where["images"].subplots(1, max(len(sagittal), 1), squeeze=False)[0]
    for ax, panel in zip(images, sagittal):
        _draw_panel(ax, panel, offset)
    for ax in images[len(sagittal) :]:
        ax.set_axis_off()
    if axial:
        for ax, panel in zip(where["axial"].subplots(1, len(LEVELS), squeeze=False)[0], axial):
            _draw_panel(ax, panel, offset)
    if view.crops:
        _draw_crops(where["crops"], view)
    if view.predictions:
        _draw_probabilities(where["probabilities"], view)
    elif view.labels is not None:
        _draw_labels(where["probabilities"], view)
    sources = {s for p in view.panels for s in p.points["source"]}
    legend = ", ".join(
        f"{label} ({'circle' if marker == 'o' else 'cross'})"
        for s, (marker, _, label) in POINT_STYLE.items()
        if s in sources
    )
    study = f"study {view.study_id} ({view.split})"
    title = f"{study}: {legend or 'no points'}; hollow/faded: off the shown slice"
    if view.notes:
        title += "\n" + "; ".join(view.notes[:4])
    fig.suptitle(title, fontsize=10)
    return fig


def figure_png(fig: Figure, dpi: int = 80) -> bytes:
    """A figure as PNG bytes (for `IPython.display.Image` and widgets, without pyplot)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()
