"""Gathering one study's view (`load_study_view`): its slices, points, crops, labels and predictions.

Where the pieces come from, for a run folder `runs/<name>/`:
    * train studies: the localizer's out-of-fold points (`localizer_oof.csv`, manifest `oof_crops.coords`),
      the crops around them and around the label points (manifest `oof_crops.cache`, `preprocess.cache`), the
      out-of-fold predictions of the ensemble and of each model (`lumbar.ensemble.runs.run_oof_predictions`);
    * test studies (no labels): the run's localizer is run on the study, crops are cut around its points
      into a temporary folder and every model of the ensemble predicts them, as `predict` would;
    * no run (`run_dir=None`): the label points and labels alone, e.g. for a real study before any training.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lumbar.core.constants import AXIAL_T2, GRADES, LEVELS, SAGITTAL_T1, SAGITTAL_T2, level_title
from lumbar.core.paths import data_root, series_dir
from lumbar.core.run_contract import OofCropsRecord, PreprocessRecord, RunManifest
from lumbar.core.tables import load_coordinates, load_labels, split_row_ids
from lumbar.data.dicom import Series, Stack, read_series
from lumbar.data.eda import display_window
from lumbar.data.geometry import points_mm
from lumbar.data.index import build_index
from lumbar.ensemble.runs import run_oof_predictions
from lumbar.inference.predict import blend_members, ensemble_members, member_crops, roi_key
from lumbar.localize.evaluate import localization_errors
from lumbar.localize.predict import Localizer
from lumbar.preprocess.cache import load_cache
from lumbar.preprocess.jitter import center_window
from lumbar.train.predict import predict_cache

#: The two sources of a study's points: the label points and the localizer's.
TRUTH, LOCALIZER = "truth", "localizer"


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
    *(
        PanelGroup(
            AXIAL_T2,
            ("left_subarticular_stenosis", "right_subarticular_stenosis"),
            lv,
            f"subarticular {level_title(lv)}",
        )
        for lv in LEVELS
    ),
)


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
    places = index[[*keys, "stack_index", "slice_index"]].drop_duplicates(keys)
    placed = reference[keys].merge(places, on=keys)
    series_id, stack = placed.groupby(["series_id", "stack_index"]).size().idxmax()
    on_stack = placed[(placed["series_id"] == series_id) & (placed["stack_index"] == stack)]
    return int(series_id), int(stack), int(np.round(on_stack["slice_index"].median()))


def build_panels(
    root: Path,
    split: str,
    study_id: int,
    points: pd.DataFrame,
    index: pd.DataFrame,
    errors: pd.DataFrame | None = None,
) -> tuple[list[SlicePanel], list[str]]:
    """One `SlicePanel` per `PANEL_GROUPS` entry that has points, and notes on the groups without.

    Args:
        points: coordinate rows of the study with a `source` column (`TRUTH`, `LOCALIZER`).
        index: the study's header index rows.
    """
    placed = points_mm(points, index, how="inner")  # points on instances without images are left out
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
            folder = series_dir(root, split, study_id, series_id)
            series_cache[series_id] = read_series(folder, skip_unreadable=True)
        series: Series = series_cache[series_id]
        mine = mine.reset_index(drop=True)
        panels.append(SlicePanel(group, series_id, series.stack(stack), slice_index, mine))
    return panels, notes


def _long(predictions: pd.DataFrame, study_id: int) -> pd.DataFrame:
    """A study's rows of a submission table as `condition, level, normal_mild, moderate, severe`."""
    rows = predictions[predictions["row_id"].astype(str).str.startswith(f"{study_id}_")]
    keys = split_row_ids(rows["row_id"].astype(str))
    return pd.concat(
        [keys[["condition", "level"]].reset_index(drop=True), rows[list(GRADES)].reset_index(drop=True)],
        axis=1,
    )


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


def _train_pieces(
    view: StudyView,
    run_dir: Path,
    manifest: RunManifest,
    everything: dict[str, pd.DataFrame] | None,
    candidate: str | None,
) -> pd.DataFrame | None:
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


def _test_pieces(
    view: StudyView, root: Path, run_dir: Path, manifest: RunManifest, index: pd.DataFrame, device: str
) -> pd.DataFrame:
    """Localize, crop and predict one test study with the run, through `predict`'s own crops and blend;
    returns the points. Every member's rows are blended, also those `predict` would give the prior (a failed
    crop)."""

    predicted, notes, _ = Localizer(run_dir, device).localize_study(root, view.split, view.study_id, index)
    view.notes += notes
    if predicted.empty:
        view.notes.append("the localizer found no point: no crops, no predictions")
        return predicted
    members, params, prior = ensemble_members(run_dir, manifest)
    with tempfile.TemporaryDirectory(prefix="lumbar-view-") as tmp:
        caches = member_crops(members, predicted, root, view.split, Path(tmp))
        preds = {}
        for m in members:
            cache = caches[roi_key(m.roi)].cache_dir
            preds[m.name] = predict_cache(m.run_dir, cache, device=device, study_ids=[view.study_id])
        view.crops[LOCALIZER] = _middle_slices(next(iter(caches.values())).cache_dir, view.study_id)
    view.predictions["ensemble"] = _long(blend_members(preds, params, prior, predicted), view.study_id)
    if len(members) > 1:
        view.predictions.update({name: _long(p, view.study_id) for name, p in preds.items()})
    return predicted


def load_study_view(
    study_id: int,
    run_dir: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    split: str = "train",
    device: str = "cpu",
    predictions: dict[str, pd.DataFrame] | None = None,
    candidate: str | None = None,
    threads: int = 0,
) -> StudyView:
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
        raise FileNotFoundError(
            f"study {study_id} of the {split} split: a test study is shown with a run's "
            "localizer and models; give run_dir"
        )
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
    sources = ((TRUTH, truth), (LOCALIZER, predicted))
    parts = [t.assign(source=s) for s, t in sources if t is not None and len(t)]
    if not parts:
        view.notes.append("no points to draw (no label points and no localizer)")
        return view
    columns = ["study_id", "series_id", "instance_number", "condition", "level", "x", "y", "source"]
    points = pd.concat(parts, ignore_index=True)[columns]
    view.panels, notes = build_panels(root, split, view.study_id, points, index, view.errors)
    view.notes += notes
    return view
