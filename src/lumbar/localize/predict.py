"""Predict label coordinates for every study of a split from a trained run (no ground truth needed).

Per study:
1. Sagittal T2/STIR -> the 5 spinal-canal points and their slice (`sag_t2`).
2. Sagittal T1 -> left and right foramen per level, each with its own slice (`sag_t1`), the slice refined
   by the slice scorer (`lumbar.localize.slice_refine`) when the run has one. A study without Sagittal T1
   gets them placed from its canal points (`lumbar.localize.axial.foramina_from_canal`), on the slices of
   its Sagittal T2/STIR through them.
3. The predicted spinal points -> `lumbar.localize.axial.map_axial` -> each level's axial slice; that slice
   and its neighbours -> the left and right subarticular points (`axial`); both sides share the slice.

The five points of one column (spinal; each foramen side) are decoded jointly in head-to-foot order
(`heatmap.decode_columns`); a final sort by row keeps that order when decoding fell back to single points.
When a study has several series of one kind, the one with the largest stack is read (ties: lowest id).
A study missing a series, or whose series cannot be read, gets the rows that can still be predicted; the
report lists what is missing and why.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lumbar.core.checkpoint import load_checkpoint
from lumbar.core.constants import AXIAL_T2, CONDITIONS, LEVELS, SAGITTAL_T1, SAGITTAL_T2
from lumbar.core.manifest import manifest_path
from lumbar.core.paths import data_root, series_dir
from lumbar.core.run_contract import LocalizerModelRecord, LocalizerRecord, RunManifest
from lumbar.core.runtime import resolve_device
from lumbar.core.tables import COORDINATE_COLUMNS, write_coordinates
from lumbar.data.dicom import DicomReadError, Series, Stack, patient_to_pixel, read_series
from lumbar.data.index import load_or_build_index, series_geometry
from lumbar.localize.axial import (
    AXIAL_MAP_COLUMNS,
    FORAMINA,
    SPINAL,
    foramina_from_canal,
    level_anchors,
    map_axial,
)
from lumbar.localize.confidence import check_level_set
from lumbar.localize.config import LocalizerConfig
from lumbar.localize.heatmap import decode_columns, decode_heatmaps, point_confidence
from lumbar.localize.repair import repair_canal
from lumbar.localize.slice_refine import refine_slices
from lumbar.localize.tasks import TASKS, Task
from lumbar.localize.train import build_model, build_scorer, crop_geometry
from lumbar.localize.volumes import axial_input, normalize_intensity, sagittal_input

#: Predicted coordinates: the label format plus each point's confidence (`Localizer.predict`).
PREDICTED_COLUMNS = [*COORDINATE_COLUMNS, "confidence"]
#: What each sagittal task's rows are, for the notes on a study without them.
TASK_POINTS = {"sag_t2": "spinal", "sag_t1": "foraminal"}
#: The note's consequence for a study whose foramina come from its canal (`foramina_from_canal`).
PLACED_NOTE = f"foramina placed from the canal and the learned offset, cut from {SAGITTAL_T2}"


@dataclass
class LocalizeReport:
    """What `localize` produced: rows per study and, per study, what is missing or guessed and why."""

    rows_per_study: dict[int, int] = field(default_factory=dict)
    notes: list[tuple[int, str]] = field(default_factory=list)
    far_axial: list[tuple[int, str, float]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def incomplete(self) -> list[int]:
        """Studies with fewer than the 25 rows (5 spinal, 10 foraminal, 10 subarticular)."""
        return [s for s, n in self.rows_per_study.items() if n < len(CONDITIONS) * len(LEVELS)]

    def summary(self) -> str:
        studies, rows = len(self.rows_per_study), sum(self.rows_per_study.values())
        head = (
            f"localize: {studies} studies, {rows} rows ({rows / max(studies, 1):.1f} per study, 25 "
            "expected), "
            f"{len(self.incomplete)} studies incomplete, {self.seconds:.1f} s"
        )
        lines = [head] + [f"  study {s}: {what}" for s, what in self.notes]
        if self.far_axial:
            lines.append(
                f"  {len(self.far_axial)} levels mapped to an axial slice more than 10 mm away, e.g. "
                + ", ".join(f"{s} {lv} {d:.1f} mm" for s, lv, d in self.far_axial[:5])
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class _Study:
    """One study being localized: where its series are read from, and its rows of the header index."""

    root: Path
    split: str
    study_id: int
    index: pd.DataFrame

    def series(self, series_id: int) -> Series:
        """One of its series (unreadable files skipped: the rest of the series still predicts)."""
        return read_series(series_dir(self.root, self.split, self.study_id, series_id), skip_unreadable=True)


class ProbabilityMean(nn.Module):
    """Several models as one: their softmax distributions averaged, returned as log-probabilities.

    The log of a distribution is a valid logit vector for it, so every decoder that applies a softmax over
    dimensions `start_dim`... (the heatmaps' joint (slice, row, column) distribution, the slice scorer's
    candidates) reads the mean of the members' distributions. One member passes through unchanged.
    """

    def __init__(self, members: list[nn.Module], start_dim: int):
        super().__init__()
        self.members, self.start_dim = nn.ModuleList(members), start_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [m(x) for m in self.members]
        if len(outs) == 1:
            return outs[0]
        logp = torch.stack([F.log_softmax(o.float().flatten(self.start_dim), dim=-1) for o in outs])
        return (torch.logsumexp(logp, 0) - math.log(len(outs))).view(outs[0].shape)


def localizer_members(run: str | os.PathLike) -> dict[str, LocalizerRecord]:
    """The trained localizers of a run's manifest by name: one (`all`) from `train_localizer`, or one per fold
    (`fold0`, ...) from `lumbar.localize.folds`, each with its models and checkpoints."""
    return RunManifest.read(run).need.localizer.members()


class Localizer:
    """The trained models of a run, ready to predict.

    With one localizer per fold, every model of a task is the mean of the folds' models (`ProbabilityMean`:
    their heatmap distributions averaged); `members` restricts it, e.g. to the fold that did not see a study
    for out-of-fold coordinates. Inference runs in float32 (a few forward passes per study).

    Args:
        run: run folder whose manifest has a localizer (`lumbar.localize.train` or `.folds`).
        device: "auto", "cpu" or "cuda".
        members: names of the localizers to use (default: all of them).
    """

    def __init__(
        self,
        run: str | os.PathLike,
        device: str = "auto",
        members: list[str] | None = None,
        place_foramina: bool = False,
    ):
        self.run = Path(run)
        self.place_foramina = place_foramina
        available = localizer_members(self.run)
        names = list(available) if members is None else list(members)
        unknown = [n for n in names if n not in available]
        if unknown or not names:
            raise ValueError(
                f"{manifest_path(self.run)}: localizer(s) {unknown or names} asked for; the run has "
                f"{sorted(available)}"
            )
        chosen = [available[n] for n in names]
        self.config = LocalizerConfig.from_dict(chosen[0].need.config)
        self.device = resolve_device(device)
        heatmaps: dict[str, list[nn.Module]] = {}
        scorers: dict[str, list[nn.Module]] = {}  # by the task whose slices they refine
        for entry in chosen:
            for name, model_entry in entry.need.models.items():
                if model_entry.kind == LocalizerModelRecord.SLICE_SCORER:
                    model, into, key = build_scorer(self.config), scorers, model_entry.need.refines
                else:
                    model, into, key = build_model(TASKS[name], self.config), heatmaps, name
                checkpoint = self.run / model_entry.need.checkpoint
                model.load_state_dict(load_checkpoint(checkpoint))
                into.setdefault(key, []).append(model)
        self.models = {k: ProbabilityMean(v, start_dim=2).to(self.device).eval() for k, v in heatmaps.items()}
        self.scorers = {k: ProbabilityMean(v, start_dim=1).to(self.device).eval() for k, v in scorers.items()}
        offsets = [e.foramina_offset_mm for e in chosen if e.foramina_offset_mm is not None]
        # where each level's axial slice is looked for (`lumbar.localize.axial.level_anchors`); older runs:
        # the canal
        self.foramina_offset_mm = np.mean(offsets, axis=0).tolist() if offsets else None
        spans = [e.foramina_halfspan_mm for e in chosen if e.foramina_halfspan_mm is not None]
        # with the offset, a study's foramina without Sagittal T1 (`foramina_from_canal`); older runs: none
        self.foramina_halfspan_mm = np.mean(spans, axis=0).tolist() if spans else None
        self.forward_seconds = (
            0.0  # inside the heatmap models (the rest of localisation is reading and resampling)
        )

    @property
    def radii(self) -> tuple[int, int]:
        """The window of `point_confidence`: about two target spreads, in heatmap pixels and slice bins."""
        return max(1, math.ceil(2 * self.config.sigma_px)), max(1, math.ceil(2 * self.config.sigma_slices))

    @torch.no_grad()
    def predict(
        self, task: str, inputs: np.ndarray, heatmaps: list[torch.Tensor] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Normalised points (B, K, 3) = (u, v, z) for model inputs (B, C, S, S), and each point's confidence
        (B, K): its heatmap's probability mass within about two target spreads of it (`point_confidence`).

        Sagittal tasks decode each column of 5 levels jointly (`decode_columns`), in head-to-foot order.
        `heatmaps`, when given, receives the logits (for `canal_evidence`).
        """
        t = time.perf_counter()
        x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)).to(self.device)
        logits = self.models[task](x)
        if TASKS[task].plane == "sagittal":
            n = len(LEVELS)
            columns = [range(i, i + n) for i in range(0, len(TASKS[task].points), n)]
            points = decode_columns(logits, columns)
        else:
            points = decode_heatmaps(logits)[0]
        confidence = point_confidence(logits, points, *self.radii)
        if heatmaps is not None:
            heatmaps.append(logits)
        points, confidence = points.cpu().numpy(), confidence.cpu().numpy()
        self.forward_seconds += time.perf_counter() - t
        return points, confidence

    @torch.no_grad()
    def canal_evidence(self, logits: torch.Tensor, stack: Stack, rows: pd.DataFrame) -> np.ndarray:
        """For each row (a point on `stack`), the largest heatmap mass any level's canal map has near it
        (`point_confidence` of every channel at that point): is there a disc-level canal point there at
        all?"""
        instances = [int(h.instance_number) for h in stack.headers]
        out = np.zeros(len(rows))
        k = logits.shape[1]
        for i, r in enumerate(rows.itertuples()):
            if int(r.instance_number) not in instances:
                continue
            s = instances.index(int(r.instance_number))
            h = stack.headers[s]
            point = torch.tensor(
                [(r.x + 0.5) / h.columns, (r.y + 0.5) / h.rows, s / max(len(instances) - 1, 1)],
                dtype=torch.float32,
                device=logits.device,
            )
            out[i] = float(point_confidence(logits, point.expand(1, k, 3), *self.radii).max())
        return out

    def sagittal_points(
        self,
        task: Task,
        study_id: int,
        series_id: int,
        stack: Stack,
        heatmaps: list[torch.Tensor] | None = None,
    ) -> pd.DataFrame:
        """Coordinate rows of one sagittal task on a stack, each column of 5 levels ordered head to foot.

        The slice of each point comes from the heatmap, refined by the task's slice scorer when the run
        has one.
        """
        volume = stack.load()
        pixels = normalize_intensity(volume.pixels)
        pts, conf = self.predict(
            task.name, sagittal_input(pixels, self.config.size, self.config.slices)[None], heatmaps
        )
        pts, conf = pts[0], conf[0]
        for start in range(0, len(task.points), len(LEVELS)):
            order = start + np.argsort(pts[start : start + len(LEVELS), 1], kind="stable")
            pts[start : start + len(LEVELS)], conf[start : start + len(LEVELS)] = pts[order], conf[order]
        n = len(stack)
        slices = np.clip(np.rint(pts[:, 2] * (n - 1)), 0, n - 1).astype(int)
        if task.name in self.scorers:
            h, w = pixels.shape[1:]
            xy = np.stack([pts[:, 0] * w - 0.5, pts[:, 1] * h - 0.5], 1)
            spacing = tuple(float(v) for v in np.median(volume.spacings, axis=0))
            slices = refine_slices(
                self.scorers[task.name],
                pixels,
                spacing,
                xy,
                slices,
                self.config.refine_window,
                crop_geometry(self.config),
                self.device,
            )
        rows = [
            _point_row(study_id, series_id, stack.headers[k], condition, level, u, v, c)
            for (condition, level), (u, v, _), k, c in zip(task.points, pts, slices, conf)
        ]
        return pd.DataFrame(rows, columns=PREDICTED_COLUMNS)

    def axial_points(self, study_id: int, mapped: pd.DataFrame, series: dict[int, Series]) -> pd.DataFrame:
        """Subarticular rows for the mapped levels (`map_axial` output rows with an instance)."""
        task = TASKS["axial"]
        n, shift = self.config.axial_neighbors, self.config.axial_slice_shift
        inputs, places = [], []
        for r in mapped.itertuples():
            s = series[int(r.axial_series_id)]
            stack_i, slice_i = s.stack_of_instance(int(r.instance_number))
            stack = s.stack(stack_i)
            window = axial_input(stack, slice_i, n + shift, self.config.size)[shift : shift + 2 * n + 1]
            inputs.append(window)
            places.append((r.level, int(r.axial_series_id), stack.headers[slice_i]))
        if not inputs:
            return pd.DataFrame(columns=PREDICTED_COLUMNS)
        pts, conf = self.predict(task.name, np.stack(inputs))
        rows = [
            _point_row(study_id, series_id, h, condition, level, u, v, c)
            for (level, series_id, h), p, pc in zip(places, pts, conf)
            for (condition, _), (u, v, _), c in zip(task.points, p, pc)
        ]
        return pd.DataFrame(rows, columns=PREDICTED_COLUMNS)

    def localize_study(
        self,
        root: Path,
        split: str,
        study_id: int,
        index: pd.DataFrame,
        axial_max_distance_mm: float = math.inf,
    ) -> tuple[pd.DataFrame, list[str], list]:
        """Predicted coordinate rows of one study, notes on what is missing or guessed, far axial mappings.

        Args:
            root: data folder; split: "train" or "test".
            study_id: the study.
            index: header index rows of this study.
            axial_max_distance_mm: levels whose nearest axial slice is farther get no subarticular rows.
        """
        study = _Study(root, split, study_id, index)
        parts, spinal, canal_maps, notes = self._sagittal_parts(study)
        if spinal is not None and len(parts) == 2:  # canal points the foramina contradict move to their level
            spinal, parts, repaired = self._repaired(parts, index, canal_maps)
            notes += repaired
        axial, axial_notes, far, axial_distance = self._subarticular(
            study, parts, spinal, axial_max_distance_mm
        )
        notes += axial_notes
        placed = []
        if spinal is not None and len(parts) == 1 and self.places_foramina:
            placed, placed_notes = self._placed_foramina(study, spinal)
            notes += placed_notes
        parts = [p for p in parts + placed + axial if len(p)]
        table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=PREDICTED_COLUMNS)
        table, doubts = check_level_set(table, index, axial_distance)
        notes += [f"implausible level set: {d}" for d in doubts]
        return table, notes, far

    @property
    def places_foramina(self) -> bool:
        """Whether a study without foraminal rows (no Sagittal T1, or an unreadable one) but with canal rows
        gets its foramina from the canal (`foramina_from_canal`): asked for (`place_foramina`, off by default:
        a classifier trained on Sagittal T1 crops graded the placed Sagittal T2/STIR crops worse than the
        prior, docs/localizer.md) and a run with a foraminal model that recorded the offset and half-span."""
        return (
            self.place_foramina
            and "sag_t1" in self.models
            and self.foramina_offset_mm is not None
            and self.foramina_halfspan_mm is not None
        )

    def _sagittal_parts(
        self, study: _Study
    ) -> tuple[list[pd.DataFrame], pd.DataFrame | None, tuple[torch.Tensor, Stack] | None, list[str]]:
        """The spinal (`sag_t2`) and foraminal (`sag_t1`) rows that can be predicted, in that order, each task
        on its own series: a missing one still leaves the other's rows.

        Returns:
            The parts, the spinal rows and their canal heatmaps and stack (the repair's evidence; both None
            without spinal rows), and a note for each task without rows: why, and what takes their place.
        """
        parts, notes = [], []
        spinal, canal_maps = None, None
        for name, description in (("sag_t2", SAGITTAL_T2), ("sag_t1", SAGITTAL_T1)):
            found = self._sagittal_task(study, name, description)
            if isinstance(found, str):
                placed = name == "sag_t1" and spinal is not None and self.places_foramina
                notes.append(f"{found} -> " + (PLACED_NOTE if placed else f"no {TASK_POINTS[name]} points"))
                continue
            rows, heatmaps, stack = found
            parts.append(rows)
            if name == "sag_t2":
                spinal, canal_maps = rows, (heatmaps[0], stack)
        return parts, spinal, canal_maps, notes

    def _sagittal_task(
        self, study: _Study, name: str, description: str
    ) -> tuple[pd.DataFrame, list[torch.Tensor], Stack] | str:
        """One sagittal task's rows on the largest stack of the study's series of its kind, with the heatmaps
        kept for the canal (`sag_t2`) and the stack; or, when it has none, why."""
        task = TASKS[name]
        if name not in self.models:
            return f"no {name} model in the run"
        choice = choose_stack(study.index, description)
        if choice is None:
            return f"no {description} series"
        series_id, stack_index = choice
        try:
            stack = study.series(series_id).stack(stack_index)
            heatmaps: list[torch.Tensor] = []  # the canal maps, kept for the repair's evidence
            rows = self.sagittal_points(
                task, study.study_id, series_id, stack, heatmaps if name == "sag_t2" else None
            )
        except DicomReadError as e:
            return f"{description} series {series_id} unreadable ({e})"
        return rows, heatmaps, stack

    def _repaired(
        self, parts: list[pd.DataFrame], index: pd.DataFrame, canal_maps: tuple[torch.Tensor, Stack]
    ) -> tuple[pd.DataFrame, list[pd.DataFrame], list[str]]:
        """Canal points that the foramina contradict moved to the foramina's level (`repair_canal`), so that
        the axial slices are looked for at the right levels.

        Returns:
            The spinal rows, the parts (spinal, foraminal) and a note per moved point.
        """
        both, repaired = repair_canal(
            pd.concat(parts, ignore_index=True),
            index,
            self.foramina_offset_mm,
            self.config.canal_repair_mm,
            lambda moved: self.canal_evidence(*canal_maps, moved),
        )
        is_canal = both["condition"] == SPINAL
        spinal = both[is_canal].reset_index(drop=True)
        return spinal, [spinal, both[~is_canal].reset_index(drop=True)], repaired

    def _placed_foramina(self, study: _Study, spinal: pd.DataFrame) -> tuple[list[pd.DataFrame], list[str]]:
        """The foraminal rows of a study without Sagittal T1 rows, placed from its canal points on their
        Sagittal T2/STIR series (`foramina_from_canal`), each with its canal point's confidence (the only
        evidence of where its level is); and a note on the foramina no slice holds (they stay with the prior).
        """
        placed = foramina_from_canal(spinal, study.index, self.foramina_offset_mm, self.foramina_halfspan_mm)
        confidence = spinal.drop_duplicates("level").set_index("level")["confidence"]
        rows = placed.assign(confidence=placed["level"].map(confidence).to_numpy())
        found = set(zip(placed["condition"], placed["level"], strict=True))
        lost = [f"{c.split('_')[0]} {lv}" for c in FORAMINA for lv in spinal["level"] if (c, lv) not in found]
        notes = [f"no {SAGITTAL_T2} slice holds the placed foramen at {', '.join(lost)}"] if lost else []
        return [rows[PREDICTED_COLUMNS]], notes

    def _subarticular(
        self,
        study: _Study,
        parts: list[pd.DataFrame],
        spinal: pd.DataFrame | None,
        max_distance_mm: float,
    ) -> tuple[list[pd.DataFrame], list[str], list, dict[str, float]]:
        """The subarticular rows on each level's axial slice, found from the sagittal points (`axial_slices`).

        Returns:
            The rows (one part, or none when there is no axial model, no spinal point or an unreadable axial
            series), notes, the levels mapped more than 10 mm away, and each mapped level's distance to its
            slice (for `check_level_set`).
        """
        if "axial" not in self.models:
            return [], ["no axial model in the run -> no subarticular points"], [], {}
        if spinal is None and (self.foramina_offset_mm is None or not parts):
            return [], ["no spinal points to map onto the axial series -> no subarticular points"], [], {}
        found, notes = axial_slices(
            pd.concat(parts, ignore_index=True), study.index, max_distance_mm, self.foramina_offset_mm
        )
        if spinal is None:
            notes = [
                "no canal points: each level's axial slice from its two foramina and the learned offset",
                *notes,
            ]
        far = [
            (study.study_id, r.level, float(r.distance_mm))
            for r in found.itertuples()
            if r.distance_mm > 10.0
        ]
        axial_distance = dict(zip(found["level"], found["distance_mm"].astype(float)))
        try:
            series = {int(sid): study.series(int(sid)) for sid in found["axial_series_id"].unique()}
            rows = [self.axial_points(study.study_id, found, series)]
        except DicomReadError as e:
            return (
                [],
                [*notes, f"axial series unreadable ({e}) -> no subarticular points"],
                far,
                axial_distance,
            )
        return rows, notes, far, axial_distance


def _point_row(study_id, series_id, header, condition, level, u, v, confidence) -> tuple:
    """One `PREDICTED_COLUMNS` row: a heatmap point (u, v in [0, 1]) in the slice's pixel coordinates."""
    x, y = u * header.columns - 0.5, v * header.rows - 0.5
    return (study_id, series_id, header.instance_number, condition, level, x, y, float(confidence))


def axial_slices(
    sagittal: pd.DataFrame,
    index: pd.DataFrame,
    max_distance_mm: float = math.inf,
    foramina_offset_mm: list[float] | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """The axial slice of each level from predicted sagittal points (`map_axial`: the canal point, or with
    `foramina_offset_mm` the median of the canal and the offset foramina), and notes on lost levels.

    A point that no axial slice covers in-plane (a poor sagittal prediction, or an axial series that
    misses a disc) gets the slice whose plane is nearest when `max_distance_mm` is infinite: a guess that
    the report names beats a hole for the classifiers. With a finite limit such levels are left out.

    Returns:
        `map_axial` rows that have an instance, and one note per kind of lost or guessed level.
    """
    axial = index[index["series_description"] == AXIAL_T2].reset_index(drop=True)
    if axial.empty:
        return pd.DataFrame(columns=AXIAL_MAP_COLUMNS), ["no Axial T2 series -> no subarticular points"]
    mapped = map_axial(
        sagittal, index, max_distance_mm=max_distance_mm, foramina_offset_mm=foramina_offset_mm
    )
    notes = []
    uncovered = mapped["distance_mm"].isna()
    if uncovered.any() and math.isinf(max_distance_mm):
        levels = mapped.loc[uncovered, "level"]
        pts = level_anchors(sagittal, index, foramina_offset_mm).set_index("level").loc[levels].reset_index()
        g = series_geometry(axial)
        best, x, y, dist = patient_to_pixel(
            g["positions"], g["orientations"], g["spacings"], pts[["px", "py", "pz"]].to_numpy()
        )
        mapped.loc[uncovered, "axial_series_id"] = axial["series_id"].to_numpy()[best]
        mapped.loc[uncovered, "instance_number"] = axial["instance_number"].to_numpy()[best]
        mapped.loc[uncovered, ["distance_mm", "x", "y"]] = np.stack([dist, x, y], 1)
        notes.append(
            f"predicted spinal point outside every axial slice at {', '.join(levels)} -> nearest plane used"
        )
    lost = mapped["instance_number"].isna()
    if lost.any():
        notes.append(
            f"no axial slice within {max_distance_mm} mm at {', '.join(mapped.loc[lost, 'level'])} "
            "-> no subarticular points there"
        )
    return mapped[~lost].reset_index(drop=True), notes


def choose_stack(index: pd.DataFrame, description: str) -> tuple[int, int] | None:
    """(series_id, stack_index) of the largest stack of a study's series with that description."""
    rows = index[index["series_description"] == description]
    if rows.empty:
        return None
    sizes = rows.groupby(["series_id", "stack_index"]).size().reset_index(name="n")
    best = sizes.sort_values(["n", "series_id", "stack_index"], ascending=[False, True, True]).iloc[0]
    return int(best["series_id"]), int(best["stack_index"])


def sort_coordinates(coords: pd.DataFrame) -> pd.DataFrame:
    """Rows ordered by study, then condition and level in the competition's order."""
    order = coords.assign(
        _c=coords["condition"].map({c: i for i, c in enumerate(CONDITIONS)}),
        _l=coords["level"].map({lv: i for i, lv in enumerate(LEVELS)}),
    )
    return (
        order.sort_values(["study_id", "_c", "_l"], kind="stable")
        .drop(columns=["_c", "_l"])
        .reset_index(drop=True)
    )


def localize(
    data_dir: str | os.PathLike | None,
    split: str,
    run: str | os.PathLike,
    studies: list[int] | None = None,
    index: pd.DataFrame | None = None,
    device: str = "auto",
    axial_max_distance_mm: float = math.inf,
    progress: bool = True,
    members: list[str] | None = None,
    place_foramina: bool = False,
) -> tuple[pd.DataFrame, LocalizeReport]:
    """Predicted coordinates (the `train_label_coordinates.csv` format) for the studies of a split.

    Args:
        data_dir: competition-layout data folder.
        split: "train" or "test".
        run: run folder with a trained localizer.
        studies: restrict to these studies (default: every study with images).
        index: header index of the split (built, headers only, when not given).
        device: "auto", "cpu" or "cuda".
        axial_max_distance_mm: a level whose nearest axial slice is farther gets no subarticular rows
            (default: always take the nearest slice; distances over 10 mm are reported).
        progress: tqdm bar.
        members: the run's localizers to use (`Localizer`; default all, averaged).
        place_foramina: a study without Sagittal T1 gets its foramina from its canal (`Localizer`).
    """
    t0 = time.perf_counter()
    root = data_root(data_dir, must_exist=True)
    localizer = Localizer(run, device, members, place_foramina)
    if index is None:
        index = load_or_build_index(root, split, studies=studies)
    elif studies is not None:
        index = index[index["study_id"].isin(studies)]
    report = LocalizeReport()
    parts = []
    for study_id, rows in tqdm(
        index.groupby("study_id", sort=True), desc="localize", unit="study", disable=not progress
    ):
        table, notes, far = localizer.localize_study(root, split, int(study_id), rows, axial_max_distance_mm)
        parts.append(table)
        report.rows_per_study[int(study_id)] = len(table)
        report.notes += [(int(study_id), m) for m in notes]
        report.far_axial += far
    parts = [p for p in parts if len(p)]
    coords = (
        sort_coordinates(pd.concat(parts, ignore_index=True))
        if parts
        else pd.DataFrame(columns=COORDINATE_COLUMNS)
    )
    coords = coords.astype(
        {
            "study_id": "int64",
            "series_id": "int64",
            "instance_number": "int64",
            "x": "float64",
            "y": "float64",
        }
    )
    report.seconds = time.perf_counter() - t0
    return coords, report


def cli_localize(args: argparse.Namespace) -> int:
    """`python -m lumbar localize`: writes the CSV and prints the report; exit code 0 even when studies are
    incomplete (they are listed), 1 when nothing could be predicted."""
    index = pd.read_parquet(args.index) if args.index else None
    coords, report = localize(
        args.data_dir,
        args.split,
        args.run,
        index=index,
        device=args.device,
        axial_max_distance_mm=args.axial_max_distance_mm,
        place_foramina=args.place_foramina,
    )
    write_coordinates(coords, args.out)
    print(report.summary())
    print(f"localize: wrote {args.out}")
    return 0 if len(coords) else 1
