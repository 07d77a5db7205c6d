"""One synthetic study, start to finish: grades, anatomy, scanner plan, DICOM files, label coordinates.

A study's randomness comes from its own seed (`SeedSequence(seed, spawn_key=(split, index))`), split into
independent streams for labels, anatomy, scan plan and pixel noise, so a study is the same whatever the worker
count, the number of other studies, or (for its labels and anatomy) the image size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lumbar.core.constants import (
    AXIAL_T2,
    CONDITION_SERIES,
    CONDITIONS,
    LEVELS,
    SAGITTAL_T1,
    SAGITTAL_T2,
)
from lumbar.core.paths import series_dir
from lumbar.data.synthetic.anatomy import Phantom, draw_phantom
from lumbar.data.synthetic.dicom_writer import SeriesTags, to_stored, write_instance
from lumbar.data.synthetic.geometry import Stack, axial_stack, sagittal_stack
from lumbar.data.synthetic.labels import LabelModel, target_index
from lumbar.data.synthetic.render import ScannerEffects, render_stack

SPLIT_KEY = {"train": 0, "test": 1}

#: How often each file-format case occurs (per series unless it says study).
QUIRK_RATES: dict[str, float] = {
    "rle": 0.5,  # RLE Lossless, else uncompressed Explicit VR Little Endian
    "rescale": 0.3,  # RescaleSlope / RescaleIntercept present
    "reversed_sagittal": 0.3,  # study: sagittal instance numbers run left to right
    "large_instances": 0.2,  # instance numbers start above 1000
    "instance_gaps": 0.2,  # instance numbers skip values
    "two_axial": 0.15,  # study: the axial discs are split over two series
    "missing_series": 0.03,  # study: a sagittal series is absent
    "stir": 0.25,  # the Sagittal T2/STIR series is a fat-suppressed STIR
    "mixed_axial_sizes": 0.1,  # the stacks of an axial series differ in image size
    "no_thickness_tags": 0.2,  # test split only: SliceThickness / SpacingBetweenSlices absent
}

#: Field of view (mm across the columns) of each series type.
FOV: dict[str, tuple[float, float]] = {
    SAGITTAL_T1: (240.0, 350.0),
    SAGITTAL_T2: (220.0, 300.0),
    AXIAL_T2: (150.0, 200.0),
}

#: Annotators' click error in mm (in-plane, each axis).
CLICK_SD_MM = 0.6


@dataclass
class SeriesPlan:
    """One series to write: its geometry, numbering and tags.

    Attributes:
        description: the CSV's series_description.
        sequence: contrast rendered ("T1", "T2" or "STIR").
        stacks: slice geometry, one Stack per oblique block (sagittal: one).
        instances: instance numbers per stack, aligned with each stack's slices.
        levels: for axial series, the disc index of each stack.
        tags: constant DICOM tags.
        effects: noise and coil bias.
        gain: stored value of unit intensity.
    """

    description: str
    sequence: str
    stacks: list[Stack]
    instances: list[np.ndarray]
    levels: list[int]
    tags: SeriesTags
    effects: ScannerEffects
    gain: float

    @property
    def series_id(self) -> int:
        return self.tags.series_id


@dataclass
class StudyResult:
    """What the orchestrator needs from a written study."""

    split: str
    study_id: int
    grades: np.ndarray  # (25,) float, NaN = blank
    oracle: np.ndarray  # (25, 3)
    series: list[tuple[int, int, str]]  # study_id, series_id, description
    coordinates: list[dict] = field(default_factory=list)
    files: int = 0
    bytes: int = 0


def _number_instances(rng: np.random.Generator, count: int) -> np.ndarray:
    """Instance numbers of a series in acquisition order: 1..n, or above 1000, or with gaps."""
    start = int(rng.integers(1001, 4000)) if rng.random() < QUIRK_RATES["large_instances"] else 1
    steps = rng.integers(1, 4, count) if rng.random() < QUIRK_RATES["instance_gaps"] else np.ones(count, int)
    steps[0] = 0
    return start + np.cumsum(steps)


def _series_ids(rng: np.random.Generator, n: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < n:
        candidate = int(rng.integers(10_000_000, 4_294_967_295))
        if candidate not in ids:
            ids.append(candidate)
    return ids


def _tags(
    rng: np.random.Generator, study_id: int, series_id: int, description: str, stack: Stack, split: str
) -> SeriesTags:
    rescale = (float(rng.choice([1.0, 2.0])), 0.0) if rng.random() < QUIRK_RATES["rescale"] else None
    missing = split == "test" and rng.random() < QUIRK_RATES["no_thickness_tags"]
    return SeriesTags(
        study_id,
        series_id,
        description,
        compressed=bool(rng.random() < QUIRK_RATES["rle"]),
        rescale=rescale,
        thickness_tags=not missing,
        thickness=stack.thickness,
        spacing=stack.spacing,
    )


def plan_series(
    phantom: Phantom,
    rng: np.random.Generator,
    study_id: int,
    image_size: int,
    axial_gap: int,
    split: str,
    stir_rate: float = QUIRK_RATES["stir"],
    axial_slices: tuple[int, int] = (3, 6),
) -> list[SeriesPlan]:
    """Every series of a study: Sagittal T1, Sagittal T2/STIR and one or two Axial T2 (one may be missing).

    Args:
        phantom: the study's anatomy.
        rng: the study's scan-plan stream.
        study_id: written into the tags.
        image_size: nominal image width in pixels; each series varies around it, its field of view stays real.
        axial_gap: how many top discs the axial series miss (their subarticular labels are blank).
        split: "train" or "test" (test files may lack thickness tags).
        stir_rate: share of Sagittal T2/STIR series rendered as fat-suppressed STIR.
    """
    ids = _series_ids(rng, 4)
    reversed_sagittal = rng.random() < QUIRK_RATES["reversed_sagittal"]
    missing = None
    if rng.random() < QUIRK_RATES["missing_series"]:
        missing = SAGITTAL_T1 if rng.random() < 2 / 3 else SAGITTAL_T2
    plans = []
    for description, sequence in (
        (SAGITTAL_T1, "T1"),
        (SAGITTAL_T2, "STIR" if rng.random() < stir_rate else "T2"),
    ):
        stack = sagittal_stack(phantom, rng, image_size, FOV[description])
        order = np.argsort(stack.positions @ phantom.rotation[:, 0])  # patient right to left
        if reversed_sagittal:
            order = order[::-1]
        numbers = np.empty(len(stack), int)
        numbers[order] = _number_instances(rng, len(stack))
        series_id = ids.pop()
        tags = _tags(rng, study_id, series_id, "T1" if sequence == "T1" else "T2", stack, split)
        effects = ScannerEffects.draw(rng, stack.positions.mean(axis=0))
        plan = SeriesPlan(
            description, sequence, [stack], [numbers], [], tags, effects, rng.uniform(700, 2000)
        )
        if description != missing:
            plans.append(plan)

    covered = list(range(axial_gap, len(LEVELS)))
    groups = [covered]
    if len(covered) >= 2 and rng.random() < QUIRK_RATES["two_axial"]:
        cut = int(rng.integers(1, len(covered)))
        groups = [covered[:cut], covered[cut:]]
    for group in groups:
        cols = int(2 * round(image_size * rng.uniform(0.75, 1.0) / 2))
        mixed = rng.random() < QUIRK_RATES["mixed_axial_sizes"]
        fov = rng.uniform(*FOV[AXIAL_T2])
        thickness = float(rng.choice([3.0, 3.5, 4.0]))
        spacing = thickness * rng.uniform(1.0, 1.1)
        stacks = []
        for level in group:
            size = int(2 * round(image_size * rng.uniform(0.75, 1.0) / 2)) if mixed else cols
            stacks.append(axial_stack(phantom, rng, level, size, fov, thickness, spacing, axial_slices))
        # Numbered top disc first, each stack from its superior slice down (positions run superior).
        numbers = _number_instances(rng, sum(len(s) for s in stacks))
        instances, used = [], 0
        for stack in stacks:
            instances.append(numbers[used : used + len(stack)][::-1].copy())
            used += len(stack)
        series_id = ids.pop()
        tags = _tags(rng, study_id, series_id, "T2", stacks[0], split)
        effects = ScannerEffects.draw(rng, stacks[len(stacks) // 2].positions.mean(axis=0))
        plans.append(
            SeriesPlan(AXIAL_T2, "T2", stacks, instances, list(group), tags, effects, rng.uniform(700, 2000))
        )
    return plans


def _content_time(rng: np.random.Generator) -> float:
    return float(rng.uniform(8 * 3600, 20 * 3600))


def _format_time(seconds: float) -> str:
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{int(h):02d}{int(m):02d}{s:09.6f}"


def write_series(
    plan: SeriesPlan, phantom: Phantom, rng: np.random.Generator, folder: Path, depth_samples: int = 2
) -> tuple[int, int]:
    """Render and write every slice of a series; returns (files, bytes)."""
    files = size = 0
    clock = _content_time(rng)
    for stack, numbers in zip(plan.stacks, plan.instances):
        images = render_stack(phantom, stack, plan.sequence, plan.effects, rng, depth_samples) * plan.gain
        for k in range(len(stack)):
            clock += rng.uniform(0.05, 0.2)
            size += write_instance(
                folder / f"{numbers[k]}.dcm",
                to_stored(images[k], plan.tags.rescale),
                plan.tags,
                int(numbers[k]),
                stack.positions[k],
                stack.orientation,
                stack.pixel_spacing,
                _format_time(clock),
            )
            files += 1
    return files, size


def label_coordinates(
    phantom: Phantom, plans: list[SeriesPlan], blank: np.ndarray, study_id: int, rng: np.random.Generator
) -> list[dict]:
    """Where an annotator clicks each labelled target, in train_label_coordinates.csv's columns.

    Spinal canal on the sagittal T2 slice nearest the canal's centre at the disc; each foramen on the T1 slice
    nearest its centre; each lateral recess on the nearest slice of the axial stack at its disc. x = column,
    y = row (float pixels), with a small click error.
    """
    landmarks = phantom.landmarks()
    by_description = {p.description: p for p in plans if p.description != AXIAL_T2}
    rows = []
    for condition in CONDITIONS:
        for k, level in enumerate(LEVELS):
            if blank[target_index(condition, level)]:
                continue
            description = CONDITION_SERIES[condition]
            if description == AXIAL_T2:
                found = [
                    (p, i)
                    for p in plans
                    if p.description == AXIAL_T2
                    for i, lv in enumerate(p.levels)
                    if lv == k
                ]
                if not found:
                    continue
                plan, i = found[0]
            elif description in by_description:
                plan, i = by_description[description], 0
            else:
                continue
            stack = plan.stacks[i]
            j, col, row, _ = stack.project(landmarks[(condition, level)])
            col += rng.normal(0.0, CLICK_SD_MM) / stack.pixel_spacing[1]
            row += rng.normal(0.0, CLICK_SD_MM) / stack.pixel_spacing[0]
            rows.append(
                {
                    "study_id": study_id,
                    "series_id": plan.series_id,
                    "instance_number": int(plan.instances[i][j]),
                    "condition": condition,
                    "level": level,
                    "x": col,
                    "y": row,
                }
            )
    return rows


def study_streams(seed: int, split: str, index: int) -> list[np.random.Generator]:
    """The study's four independent random streams: labels, anatomy, scan plan, pixels."""
    sequence = np.random.SeedSequence(seed, spawn_key=(SPLIT_KEY[split], index))
    return [np.random.default_rng(s) for s in sequence.spawn(4)]


def study_id_for(seed: int, split: str, index: int) -> int:
    """The study's identifier (the orchestrator resolves the rare clash between studies)."""
    sequence = np.random.SeedSequence(seed, spawn_key=(SPLIT_KEY[split], index, 0))
    return int(np.random.default_rng(sequence).integers(1_000_000, 4_294_967_295))


def make_study(
    out: Path,
    split: str,
    index: int,
    study_id: int,
    seed: int,
    image_size: int,
    labels: LabelModel,
    depth_samples: int = 2,
    stir_rate: float = QUIRK_RATES["stir"],
    axial_slices: tuple[int, int] = (3, 6),
) -> StudyResult:
    """Draw and write one study under `out/<split>_images/<study_id>/`.

    Args:
        out: the data folder.
        split: "train" or "test".
        index: the study's position in its split (with `seed`, fixes everything drawn).
        study_id: its identifier.
        seed: the run's seed.
        image_size: nominal image width in pixels.
        labels: the label model (noise settings).
        depth_samples: samples across each slice's thickness.
        stir_rate: share of Sagittal T2/STIR series rendered as STIR.
        axial_slices: (fewest, most) slices of each disc's axial stack.
    """
    r_labels, r_anatomy, r_scan, r_pixels = study_streams(seed, split, index)
    severity = labels.draw_latent(r_labels)
    grades = labels.draw_grades(r_labels, severity).astype(float)
    axial_gap = labels.draw_axial_gap(r_labels)
    blank = labels.draw_blanks(r_labels, axial_gap)
    phantom = draw_phantom(r_anatomy, severity)
    plans = plan_series(phantom, r_scan, study_id, image_size, axial_gap, split, stir_rate, axial_slices)
    present = {p.description for p in plans}
    for condition in CONDITIONS:  # a series that was not acquired cannot be read
        if CONDITION_SERIES[condition] not in present:
            blank[[target_index(condition, level) for level in LEVELS]] = True
    grades[blank] = np.nan
    result = StudyResult(
        split,
        study_id,
        grades,
        labels.oracle(severity),
        [(study_id, p.series_id, p.description) for p in plans],
    )
    for plan in plans:
        files, size = write_series(
            plan, phantom, r_pixels, series_dir(out, split, study_id, plan.series_id), depth_samples
        )
        result.files += files
        result.bytes += size
    # last draw of the study: the test studies' points (test_label_coordinates.csv) change nothing above
    result.coordinates = label_coordinates(phantom, plans, blank, study_id, r_scan)
    return result
