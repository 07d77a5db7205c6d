"""Study viewer: one study with its label points, the localizer's points, the crops and the predictions.

`load_study_view` gathers everything about one study, `plot_study` draws it as one static figure (safe under
papermill: matplotlib's object API, no pyplot), `interactive_viewer` adds a dropdown over studies and a
slider over slices in Jupyter (ipywidgets, imported only there).

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

Where the pieces come from, for a run folder `runs/<name>/`:
    * train studies: the localizer's out-of-fold points (`localizer_oof.csv`, manifest `oof_crops.coords`),
      the crops around them and around the label points (manifest `oof_crops.cache`, `preprocess.cache`), the
      out-of-fold predictions of the ensemble and of each model (`lumbar.ensemble.runs.run_oof_predictions`);
    * test studies (no labels): the run's localizer is run on the study, crops are cut around its points
      into a temporary folder and every model of the ensemble predicts them, as `predict` would;
    * no run (`run_dir=None`): the label points and labels alone, e.g. for a real study before any training.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lumbar.core.constants import (
    AXIAL_T2,
    CONDITION_ABBREV,
    CONDITIONS,
    GRADE_LABELS,
    GRADES,
    LEVELS,
    SAGITTAL_T1,
    SAGITTAL_T2,
    level_title,
)
from lumbar.core.paths import data_root, series_dir
from lumbar.core.run_contract import OofCropsRecord, PreprocessRecord, RunManifest
from lumbar.core.tables import load_coordinates, load_labels, split_row_ids
from lumbar.data.dicom import Series, Stack, pixel_to_patient, read_series
from lumbar.data.eda import display_window
from lumbar.data.eda_plots import GRADE_COLORS
from lumbar.data.index import build_index, series_geometry
from lumbar.ensemble.runs import run_oof_predictions
from lumbar.inference.predict import blend_members, ensemble_members
from lumbar.localize.evaluate import localization_errors
from lumbar.localize.predict import Localizer
from lumbar.preprocess.cache import build_cache, load_cache
from lumbar.preprocess.jitter import center_window
from lumbar.train.predict import predict_cache

TRUTH, LOCALIZER = "truth", "localizer"
#: How each point source is drawn: marker, colour, label.
POINT_STYLE = {TRUTH: ("o", "#2ecc71", "ground truth"), LOCALIZER: ("x", "#ff8c00", "localizer")}
#: A point farther than this from a panel's plane is drawn hollow, with its distance (mm).
OFF_PLANE_MM = 1.0
#: Image panels show the points' bounding box plus this margin (mm): sagittal, axial.
ZOOM_MARGIN_MM = {"sagittal": 40.0, "axial": 50.0}


@dataclass(frozen=True)
class PanelGroup:
    """Which points one image panel shows: a series, conditions, optionally one level."""

    description: str
    conditions: tuple[str, ...]
    level: str | None
    name: str


PANEL_GROUPS: tuple[PanelGroup, ...] = (
    PanelGroup(SAGITTAL_T2, ("spinal_canal_stenosis",), None, "spinal canal"),
    PanelGroup(SAGITTAL_T1, ("left_neural_foraminal_narrowing",), None, "left foramina"),
    PanelGroup(SAGITTAL_T1, ("right_neural_foraminal_narrowing",), None, "right foramina"),
    *(PanelGroup(AXIAL_T2, ("left_subarticular_stenosis", "right_subarticular_stenosis"), lv,
                 f"subarticular {level_title(lv)}") for lv in LEVELS),
)  # fmt: skip


@dataclass
class SlicePanel:
    """One stack at a reference slice, with the points (patient mm) to project onto whatever slice is shown.

    Attributes:
        points: `source, condition, level, px, py, pz` and `text` (what to write beside the point).
    """

    group: PanelGroup
    series_id: int
    stack: Stack
    slice_index: int
    points: pd.DataFrame

    def image(self, offset: int = 0) -> tuple[np.ndarray, pd.DataFrame, int, tuple[float, float]]:
        """The slice `offset` slices from the reference (clipped to the stack), display-windowed; the points
        projected onto it (`x, y, off_mm` added: pixel position on the slice, distance to its plane); the
        slice index; its pixel spacing (rows, columns) in mm."""
        index = int(np.clip(self.slice_index + offset, 0, len(self.stack) - 1))
        volume = self.stack.load([index])
        xyz = self.points[["px", "py", "pz"]].to_numpy(float)
        _, x, y, off = volume.patient_to_pixel(xyz) if len(xyz) else (None, [], [], [])
        spacing = (float(volume.spacings[0][0]), float(volume.spacings[0][1]))
        return display_window(volume.pixels[0]), self.points.assign(x=x, y=y, off_mm=off), index, spacing


@dataclass
class StudyView:
    """Everything `plot_study` draws for one study (`load_study_view`)."""

    study_id: int
    split: str
    panels: list[SlicePanel] = field(default_factory=list)
    labels: pd.DataFrame | None = None  # condition, level, grade
    predictions: dict[str, pd.DataFrame] = field(default_factory=dict)  # name -> condition, level, GRADES
    crops: dict[str, dict[tuple[str, str], np.ndarray]] = field(default_factory=dict)  # source -> 2D slices
    errors: pd.DataFrame | None = None  # localization_errors of the study
    notes: list[str] = field(default_factory=list)

    @property
    def has_truth(self) -> bool:
        return any((p.points["source"] == TRUTH).any() for p in self.panels)


def _study_index(root: Path, split: str, study_id: int, run_dir: Path | None) -> pd.DataFrame:
    """Header index rows of the study: from the run's index when it has them, else read now."""
    cached = run_dir / f"index_{split}.parquet" if run_dir is not None else None
    if cached is not None and cached.is_file():
        index = pd.read_parquet(cached)
        index = index[index["study_id"] == study_id]
        if len(index):
            return index.reset_index(drop=True)
    index, _ = build_index(root, split, studies=[study_id], progress=False)
    if index.empty:
        raise FileNotFoundError(f"{root}: study {study_id} has no readable images in the {split} split")
    return index


def _with_patient_mm(points: pd.DataFrame, index: pd.DataFrame) -> pd.DataFrame:
    """Coordinate rows with their patient position (`px, py, pz`), via their instance's geometry; rows whose
    instance is not in the index are dropped."""
    keys = ["study_id", "series_id", "instance_number"]
    geometry = index.drop_duplicates(keys)
    merged = points.merge(geometry, on=keys, how="inner", suffixes=("", "_index"))
    g = series_geometry(merged)
    xyz = pixel_to_patient(g["positions"], g["orientations"], g["spacings"], merged["x"].to_numpy(float),
                           merged["y"].to_numpy(float))  # fmt: skip
    return merged[[*points.columns]].assign(px=xyz[:, 0], py=xyz[:, 1], pz=xyz[:, 2])


def _point_text(row, errors: pd.DataFrame | None) -> str:
    """Level (and side) beside a point; a localizer point also gets its error against the truth."""
    side = "L " if row.condition.startswith("left") else "R " if row.condition.startswith("right") else ""
    text = f"{side}{level_title(row.level)}"
    if row.source == LOCALIZER and errors is not None:
        hit = errors[(errors["condition"] == row.condition) & (errors["level"] == row.level)]
        if len(hit) and not bool(hit["missing"].iloc[0]):
            text += f" {hit['error_mm'].iloc[0]:.1f} mm"
            shift = hit["slice_shift"].iloc[0]
            text += f" {int(shift):+d} sl" if pd.notna(shift) and shift != 0 else ""
    return text


def _reference_slice(reference: pd.DataFrame, index: pd.DataFrame) -> tuple[int, int, int]:
    """(series, stack, slice) of a panel: the stack most reference points sit on, at their median slice, so
    points marked on neighbouring slices (the foramina of one side often are) are all close to the plane."""
    keys = ["series_id", "instance_number"]
    placed = reference[keys].merge(index[[*keys, "stack_index", "slice_index"]].drop_duplicates(keys), on=keys)
    series_id, stack = placed.groupby(["series_id", "stack_index"]).size().idxmax()
    on_stack = placed[(placed["series_id"] == series_id) & (placed["stack_index"] == stack)]
    return int(series_id), int(stack), int(np.round(on_stack["slice_index"].median()))


def build_panels(root: Path, split: str, study_id: int, points: pd.DataFrame, index: pd.DataFrame,
                 errors: pd.DataFrame | None = None) -> tuple[list[SlicePanel], list[str]]:  # fmt: skip
    """One `SlicePanel` per `PANEL_GROUPS` entry that has points, and notes on the groups without.

    Args:
        points: coordinate rows of the study with a `source` column (`TRUTH`, `LOCALIZER`).
        index: the study's header index rows.
    """
    placed = _with_patient_mm(points, index)
    if len(placed) < len(points):
        notes = [f"{len(points) - len(placed)} point(s) on instances without images here: not drawn"]
    else:
        notes = []
    placed["text"] = [_point_text(r, errors) for r in placed.itertuples()]
    panels, series_cache = [], {}
    for group in PANEL_GROUPS:
        mine = placed[placed["condition"].isin(group.conditions)]
        if group.level is not None:
            mine = mine[mine["level"] == group.level]
        reference = mine[mine["source"] == TRUTH] if (mine["source"] == TRUTH).any() else mine
        if reference.empty:
            notes.append(f"{group.description} {group.name}: no points")
            continue
        series_id, stack, slice_index = _reference_slice(reference, index)
        if series_id not in series_cache:
            series_cache[series_id] = read_series(series_dir(root, split, study_id, series_id), skip_unreadable=True)
        series: Series = series_cache[series_id]
        panels.append(SlicePanel(group, series_id, series.stack(stack), slice_index, mine.reset_index(drop=True)))
    return panels, notes


def _long(predictions: pd.DataFrame, study_id: int) -> pd.DataFrame:
    """A study's rows of a submission table as `condition, level, normal_mild, moderate, severe`."""
    rows = predictions[predictions["row_id"].astype(str).str.startswith(f"{study_id}_")]
    keys = split_row_ids(rows["row_id"].astype(str))
    return pd.concat([keys[["condition", "level"]].reset_index(drop=True),
                      rows[list(GRADES)].reset_index(drop=True)], axis=1)  # fmt: skip


def _middle_slices(cache_dir: Path, study_id: int) -> dict[tuple[str, str], np.ndarray]:
    """The middle slice of the centre window of each crop of a study in an ROI cache (what a model sees)."""

    if not (cache_dir / "samples.parquet").is_file():
        return {}
    _, samples = load_cache(cache_dir)
    out = {}
    for row in samples[samples["study_id"] == study_id].itertuples():
        window = center_window(np.load(cache_dir / row.file), int(row.pad_slices), int(row.pad_px))
        out[(row.condition, row.level)] = np.asarray(window[len(window) // 2], dtype=np.float32)
    return out


def _train_pieces(view: StudyView, run_dir: Path, manifest: RunManifest,
                  everything: dict[str, pd.DataFrame] | None, candidate: str | None) -> pd.DataFrame | None:
    """Out-of-fold points, crops and predictions of a train study from the run folder; returns the points."""

    oof = manifest.oof_crops or OofCropsRecord()
    predicted = None
    if oof.coords and (run_dir / oof.coords).is_file():
        predicted = load_coordinates(run_dir / oof.coords)
        predicted = predicted[predicted["study_id"] == view.study_id]
    else:
        view.notes.append("the run has no out-of-fold localizer points (02_train_localizer with HOLDOUT = 0)")
    for source, entry in ((LOCALIZER, oof), (TRUTH, manifest.preprocess or PreprocessRecord())):
        if entry.cache:
            view.crops[source] = _middle_slices(run_dir / entry.cache, view.study_id)
    if manifest.ensemble:
        everything = everything if everything is not None else run_oof_predictions(run_dir)
        ensemble = manifest.ensemble
        first = candidate or ensemble.need.chosen
        names = [first, *(m for m in ensemble.need.models if m != first)]
        for name in names:
            if name in everything:
                rows = _long(everything[name], view.study_id)
                if len(rows):
                    view.predictions[f"{name} (chosen)" if name == ensemble.chosen else name] = rows
    else:
        view.notes.append("the run has no ensemble yet (04_ensemble): no out-of-fold predictions shown")
    return predicted


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """torch's CPU threads set to `threads` (0: left alone) inside the block, restored after it."""
    import torch

    previous = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _test_pieces(view: StudyView, root: Path, run_dir: Path, manifest: RunManifest, index: pd.DataFrame,
                 device: str) -> pd.DataFrame:  # fmt: skip
    """Localize, crop and predict one test study with the run, as `predict` does; returns the points."""

    predicted, notes, _ = Localizer(run_dir, device).localize_study(root, view.split, view.study_id, index)
    view.notes += notes
    if predicted.empty:
        view.notes.append("the localizer found no point: no crops, no predictions")
        return predicted
    members, params, prior = ensemble_members(run_dir, manifest)
    preds = {}
    with tempfile.TemporaryDirectory(prefix="lumbar-view-") as tmp:
        caches = {}
        for m in members:
            key = repr(sorted(m.roi.to_dict().items()))
            if key not in caches:
                caches[key] = build_cache(predicted, root, view.split, tmp, m.roi, progress=False,
                                          max_failed_share=1.0).cache_dir  # fmt: skip
            preds[m.name] = predict_cache(m.run_dir, caches[key], device=device, study_ids=[view.study_id])
        view.crops[LOCALIZER] = _middle_slices(next(iter(caches.values())), view.study_id)
    view.predictions["ensemble"] = _long(blend_members(preds, params, prior, predicted), view.study_id)
    if len(members) > 1:
        view.predictions.update({name: _long(p, view.study_id) for name, p in preds.items()})
    return predicted


def load_study_view(study_id: int, run_dir: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
                    split: str = "train", device: str = "cpu", predictions: dict[str, pd.DataFrame] | None = None,
                    candidate: str | None = None, threads: int = 0) -> StudyView:  # fmt: skip
    """Gather one study's slices, points, crops, labels and predictions (module docstring: where from).

    Args:
        study_id: the study.
        run_dir: a run folder (localizer, classifiers, ensemble); None: label points and labels only.
        data_dir: the competition-layout data folder (`lumbar.core.paths.data_root` decides when None).
        split: "train" (labels, label points, out-of-fold predictions) or "test" (the run predicts it now).
        device: for a test study's localizer and classifiers.
        predictions: the run's out-of-fold predictions by name (`run_oof_predictions`), when the caller has
            them already (read from the run otherwise).
        candidate: the out-of-fold candidate drawn first, before each model (default: the one 04 chose).
        threads: torch CPU threads for a test study's models (0: torch's default); 1 is faster than 2 on a
            machine whose cores are busy with other work.

    Raises:
        FileNotFoundError: the study has no images in the split, or `split="test"` without a run.
    """

    root = data_root(data_dir, must_exist=True)
    run = Path(run_dir) if run_dir is not None else None
    if split != "train" and run is None:
        raise FileNotFoundError(f"study {study_id} of the {split} split: a test study is shown with a run's "
                                "localizer and models; give run_dir")  # fmt: skip
    view = StudyView(int(study_id), split)
    index = _study_index(root, split, view.study_id, run)
    manifest = RunManifest.read(run) if run is not None else RunManifest()
    truth = None
    if split == "train":
        labels = load_labels(root / "train.csv")
        view.labels = labels[labels["study_id"] == view.study_id][["condition", "level", "grade"]]
        if (root / "train_label_coordinates.csv").is_file():
            coords = load_coordinates(root / "train_label_coordinates.csv")
            truth = coords[coords["study_id"] == view.study_id]
    predicted = None
    if run is not None:
        if split == "train":
            predicted = _train_pieces(view, run, manifest, predictions, candidate)
        else:
            with _torch_threads(threads):
                predicted = _test_pieces(view, root, run, manifest, index, device)
    if truth is not None and predicted is not None and len(truth) and len(predicted):
        view.errors = localization_errors(predicted, truth, index)
    parts = [t.assign(source=s) for s, t in ((TRUTH, truth), (LOCALIZER, predicted)) if t is not None and len(t)]
    if not parts:
        view.notes.append("no points to draw (no label points and no localizer)")
        return view
    points = pd.concat(parts, ignore_index=True)[["study_id", "series_id", "instance_number", "condition", "level",
                                                  "x", "y", "source"]]  # fmt: skip
    view.panels, notes = build_panels(root, split, view.study_id, points, index, view.errors)
    view.notes += notes
    return view


# ----------------------------------------------------------------------------------------------- drawing


def _zoom(ax, image: np.ndarray, points: pd.DataFrame, spacing: tuple[float, float], margin_mm: float) -> None:
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
            ax.scatter([p.x], [p.y], s=45, marker="o", facecolors="none", edgecolors=color, linewidths=1.4,
                       linestyle="--" if off else "-")  # fmt: skip
        else:
            ax.scatter([p.x], [p.y], s=40, marker="x", color=color, linewidths=1.4, alpha=0.55 if off else 1.0)
        text = p.text + (f" ({p.off_mm:.0f} mm off)" if off else "")
        if panel.group.level is None:  # sagittal: truth to the right, localizer to the left
            dx, dy = (7, 0) if p.source == TRUTH else (-7, 0)
        else:  # axial: the patient's right (image left) to the left, truth above, localizer below
            dx, dy = (-7 if p.condition.startswith("right") else 7), (6 if p.source == TRUTH else -6)
        ax.annotate(text, (p.x, p.y), xytext=(dx, dy), textcoords="offset points", color=color, fontsize=6.5,
                    va="center", ha="left" if dx > 0 else "right",
                    bbox={"boxstyle": "round,pad=0.1", "facecolor": "black", "alpha": 0.55, "linewidth": 0})  # fmt: skip
    instance = int(panel.stack.headers[index].instance_number)
    ax.set_title(f"{panel.group.description}: {panel.group.name}\ninstance {instance} (slice {index + 1}/"
                 f"{len(panel.stack)})", fontsize=8)  # fmt: skip
    ax.set_axis_off()


def _draw_crops(fig: Figure, view: StudyView) -> None:
    sources = [s for s in (LOCALIZER, TRUTH) if view.crops.get(s)]
    grades = ({(r.condition, r.level): int(r.grade) for r in view.labels.itertuples()}
              if view.labels is not None else {})  # fmt: skip
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
    fig.suptitle("crops: middle slice around the " + " / ".join(f"{s} point" for s in sources) + frame, fontsize=9)


def _draw_probabilities(fig: Figure, view: StudyView) -> None:
    names = list(view.predictions)
    labels = ({(r.condition, r.level): int(r.grade) for r in view.labels.itertuples()}
              if view.labels is not None else {})  # fmt: skip
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
                    ax.barh(y, p, left=left, height=height * 0.9, color=GRADE_COLORS[g],
                            alpha=1.0 if k == 0 else 0.55)  # fmt: skip
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
                ax.text(1.02, j, text, fontsize=6.5, va="center", color=GRADE_COLORS[grade], fontweight="bold")
        ax.set_yticks(range(len(LEVELS)), [level_title(lv) for lv in LEVELS], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.tick_params(labelsize=7)
        ax.set_title(CONDITION_ABBREV[condition], fontsize=8)
    order = ", ".join(f"{k + 1}. {n}" for k, n in enumerate(names))
    fig.suptitle(f"predicted probabilities, bars top to bottom: {order}; colours: "
                 + " / ".join(GRADE_LABELS) + ("; right: label and the first one's p(label)" if labels else ""),
                 fontsize=8)  # fmt: skip


def _draw_labels(fig: Figure, view: StudyView) -> None:
    """The labels alone (no predictions): condition x level cells in the grade's colour."""
    from matplotlib.colors import ListedColormap

    table = view.labels.pivot_table(index="condition", columns="level", values="grade", aggfunc="first")
    table = table.reindex(index=list(CONDITIONS), columns=list(LEVELS))
    ax = fig.subplots()
    ax.imshow(table.to_numpy(float), cmap=ListedColormap(GRADE_COLORS), vmin=-0.5, vmax=2.5, aspect="auto")
    for (i, j), g in np.ndenumerate(table.to_numpy(float)):
        ax.text(j, i, "no label" if np.isnan(g) else GRADE_LABELS[int(g)], ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(LEVELS)), [level_title(lv) for lv in LEVELS], fontsize=8)
    ax.set_yticks(range(len(CONDITIONS)), list(CONDITIONS), fontsize=8)
    ax.set_title("labels (no predictions)", fontsize=9)


def plot_study(view: StudyView, offset: int = 0) -> Figure:
    """The study as one figure (module docstring); `offset` moves every image panel that many slices."""
    sagittal = [p for p in view.panels if p.group.level is None]
    axial = [p for p in view.panels if p.group.level is not None]
    rows = ["images"] + (["axial"] if axial else []) + (["crops"] if view.crops else [])
    rows += ["probabilities"] if view.predictions or view.labels is not None else []
    heights = {"images": 4.6, "axial": 2.8, "crops": 0.75 * len(CONDITIONS) + 0.6,
               "probabilities": 0.45 * len(LEVELS) * max(1, len(view.predictions)) ** 0.5 + 1.2}  # fmt: skip
    fig = Figure(figsize=(15, sum(heights[r] for r in rows) + 0.6), layout="constrained")
    subs = np.atleast_1d(fig.subfigures(len(rows), 1, height_ratios=[heights[r] for r in rows]))
    where = dict(zip(rows, subs))
    images = where["images"].subplots(1, max(len(sagittal), 1), squeeze=False)[0]
    for ax, panel in zip(images, sagittal):
        _draw_panel(ax, panel, offset)
    for ax in images[len(sagittal):]:
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
    legend = ", ".join(f"{label} ({'circle' if marker == 'o' else 'cross'})"
                       for s, (marker, _, label) in POINT_STYLE.items() if s in sources)  # fmt: skip
    title = f"study {view.study_id} ({view.split}): {legend or 'no points'}; hollow/faded: off the shown slice"
    if view.notes:
        title += "\n" + "; ".join(view.notes[:4])
    fig.suptitle(title, fontsize=10)
    return fig


def figure_png(fig: Figure, dpi: int = 80) -> bytes:
    """A figure as PNG bytes (for `IPython.display.Image` and widgets, without pyplot)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def interactive_viewer(study_ids: Sequence[int], load: Callable[[int], StudyView], max_offset: int = 3):
    """A dropdown over studies and a slider over slices (offset from each panel's reference slice) in Jupyter.

    Args:
        study_ids: the studies to choose from.
        load: study id -> `StudyView` (e.g. `functools.partial(load_study_view, run_dir=..., data_dir=...)`);
            each study is loaded once.
        max_offset: the slider's range, slices either side.

    Returns:
        The ipywidgets box (display it as a notebook cell's last expression).

    Raises:
        ImportError: ipywidgets is not installed (the static `plot_study` figures need nothing more).
    """
    import ipywidgets as widgets
    from IPython.display import Image, display

    studies = widgets.Dropdown(options=[int(s) for s in study_ids], description="study")
    offset = widgets.IntSlider(value=0, min=-max_offset, max=max_offset, description="slice offset")
    out = widgets.Output()
    loaded: dict[int, StudyView] = {}

    def render(*_) -> None:
        if studies.value not in loaded:
            loaded[studies.value] = load(studies.value)
        with out:
            out.clear_output(wait=True)
            display(Image(data=figure_png(plot_study(loaded[studies.value], offset.value))))

    studies.observe(render, names="value")
    offset.observe(render, names="value")
    render()
    return widgets.VBox([widgets.HBox([studies, offset]), out])


def widgets_available() -> bool:
    """Whether ipywidgets can be imported (the interactive viewer needs it; the static figures do not)."""
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True
