"""Second views: crops of a condition taken from another series than the one it is graded on.

A view is a registered crop source (condition group, series, point): its coordinate rows are derived, per
study, from the primary coordinate rows (ground truth, or a localizer's points) through DICOM geometry, and
the cache builds them beside the primary crops (`RoiConfig.views`). A classifier takes a view as one more
input channel (`TrainConfig.views`), so adding a view is configuration, not a new training loop.

    axial_canal          spinal canal on the Axial T2 slice of the level: centred between the two
                         subarticular points when both sit on one slice, else on the canal point projected
                         onto the nearest axial slice (1st, 4th and 9th place graded the canal from axial too)
    parasagittal_recess  each subarticular recess on the Sagittal T2/STIR slice through it, at the recess
                         point projected onto that slice (2nd and 6th place graded subarticular from sagittal)

A derived point must lie within `MAX_DISTANCE_MM` of the slice it is projected onto and inside its image;
otherwise the view is missing for that row (reported with the reason), and the classifier sees zeros there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lumbar.core.constants import AXIAL_T2, CONDITION_GROUP, SAGITTAL_T2, row_id
from lumbar.core.registry import Registry
from lumbar.data.dicom import DicomReadError, Series, patient_to_pixel, pixel_to_patient

#: A derived point farther than this from the nearest slice of its target series has no view there.
MAX_DISTANCE_MM = 10.0
#: The kind of crop an off-midline Sagittal T2/STIR view gives: a left-right mirror of its slice order does
#: not keep its meaning (unlike the midline canal's), so test-time augmentations are offered per kind.
LATERAL_T2 = "Sagittal T2/STIR off midline"

Derive = Callable[[list[dict], Mapping[int, Series]], list[tuple[dict, dict | None, str]]]


@dataclass(frozen=True)
class View:
    """A registered second view.

    Attributes:
        group: the condition group it serves (its crops join that group's primary crops).
        series: the series description its crops come from.
        kind: the crop's kind for test-time augmentation (`lumbar.train.tta`): its series, or `LATERAL_T2`.
        crop_as: the condition group whose margins (`RoiConfig.<group>_mm`) frame the crop on that series.
        derive: (the study's primary rows, its opened series by id) -> one (target row, derived row or None,
            why none) per primary row of `group`.
    """

    group: str
    series: str
    kind: str
    crop_as: str
    derive: Derive


_VIEWS: Registry[View] = Registry("view")


def list_views() -> list[str]:
    return sorted(_VIEWS)


def get_view(name: str) -> View:
    """The registered view; an unknown name is an error listing the registered ones."""
    if name not in _VIEWS:
        raise ValueError(f"unknown view {name!r}; registered: {list_views()}")
    return _VIEWS[name]


def view_sample_id(study_id: int, condition: str, level: str, view: str) -> str:
    """`<row_id>@<view>`: the primary sample's id tagged with the view."""
    return f"{row_id(study_id, condition, level)}@{view}"


def point_mm(row: Mapping, series: Series) -> np.ndarray:
    """A coordinate row's point in patient coordinates (mm), from its instance's header."""
    stack_index, slice_index = series.stack_of_instance(int(row["instance_number"]))
    h = series.stacks[stack_index].headers[slice_index]
    return pixel_to_patient(h.position, h.orientation, h.pixel_spacing, float(row["x"]), float(row["y"]))


def project(point: np.ndarray, series: Series) -> tuple[int, float, float] | str:
    """(instance number, x, y) of a patient point on the nearest slice of a series, or why there is none."""
    headers = [h for stack in series.stacks for h in stack.headers]
    if not headers:
        return f"{series.folder}: no readable slice"
    best, x, y, dist = patient_to_pixel(
        [h.position for h in headers],
        [h.orientation for h in headers],
        [h.pixel_spacing for h in headers],
        point,
    )
    h = headers[int(best)]
    if dist > MAX_DISTANCE_MM:
        return f"{series.folder}: no slice within {MAX_DISTANCE_MM:g} mm of the point (nearest "
        f"{float(dist):.1f} mm)"
    if not (0 <= x <= h.columns - 1 and 0 <= y <= h.rows - 1):
        return f"{series.folder}: the point falls outside instance {h.instance_number}'s image"
    return h.instance_number, float(x), float(y)


def _derived(
    target: dict, series_id: int, found: tuple[int, float, float] | str, view: str
) -> tuple[dict, dict | None, str]:
    if isinstance(found, str):
        return target, None, found
    instance, x, y = found
    return (
        target,
        {
            **target,
            "series_id": int(series_id),
            "instance_number": int(instance),
            "x": x,
            "y": y,
            "view": view,
            "crop_as": get_view(view).crop_as,
        },
        "",
    )


def _projected(
    target: dict, onto: int | None, description: str, series: Mapping[int, Series], view: str
) -> tuple[dict, dict | None, str]:
    """The target's point projected onto the nearest slice of the series `onto`, or why it cannot be."""
    if onto is None:
        return target, None, f"no {description} series among the study's coordinates"
    if int(target["series_id"]) not in series:
        return target, None, f"its own series {int(target['series_id'])} could not be read"
    try:
        found = project(point_mm(target, series[int(target["series_id"])]), series[onto])
    except DicomReadError as e:
        found = str(e)
    return _derived(target, onto, found, view)


def _series_of(rows: Sequence[dict], group: str, series: Mapping[int, Series]) -> int | None:
    """The series the study's `group` rows use (the first opened one), e.g. its Axial T2 for subarticular."""
    for r in rows:
        if CONDITION_GROUP[r["condition"]] == group and int(r["series_id"]) in series:
            return int(r["series_id"])
    return None


def _register(name: str, group: str, series: str, kind: str, crop_as: str) -> Callable[[Derive], Derive]:
    def decorate(derive: Derive) -> Derive:
        _VIEWS.register(name)(View(group, series, kind, crop_as, derive))
        return derive

    return decorate


@_register("axial_canal", group="spinal", series=AXIAL_T2, kind=AXIAL_T2, crop_as="subarticular")
def _axial_canal(rows: list[dict], series: Mapping[int, Series]) -> list[tuple[dict, dict | None, str]]:
    """Midway between the level's recess points on their slice (the labelled or localised slice of that
    level),
    else the canal point projected onto the study's Axial T2 series."""
    out = []
    axial = _series_of(rows, "subarticular", series)
    recesses: dict[str, list[dict]] = {}
    for r in rows:
        if CONDITION_GROUP[r["condition"]] == "subarticular":
            recesses.setdefault(r["level"], []).append(r)
    for target in (r for r in rows if CONDITION_GROUP[r["condition"]] == "spinal"):
        pair = recesses.get(target["level"], [])
        if len(pair) == 2 and len({(int(r["series_id"]), int(r["instance_number"])) for r in pair}) == 1:
            mid = (
                pair[0]["instance_number"],
                (pair[0]["x"] + pair[1]["x"]) / 2,
                (pair[0]["y"] + pair[1]["y"]) / 2,
            )
            out.append(_derived(target, pair[0]["series_id"], mid, "axial_canal"))
        else:
            out.append(_projected(target, axial, AXIAL_T2, series, "axial_canal"))
    return out


@_register("parasagittal_recess", group="subarticular", series=SAGITTAL_T2, kind=LATERAL_T2, crop_as="spinal")
def _parasagittal_recess(
    rows: list[dict], series: Mapping[int, Series]
) -> list[tuple[dict, dict | None, str]]:
    """Each recess point projected onto the Sagittal T2/STIR series the study's canal points are on."""
    sagittal = _series_of(rows, "spinal", series)
    return [
        _projected(target, sagittal, SAGITTAL_T2, series, "parasagittal_recess")
        for target in rows
        if CONDITION_GROUP[target["condition"]] == "subarticular"
    ]


def derive_rows(
    views: Sequence[str], rows: list[dict], series: Mapping[int, Series]
) -> tuple[list[dict], list[dict]]:
    """The derived coordinate rows of a study's views, and the failures (target row + `view`, `error`)."""
    derived, failed = [], []
    for name in views:
        for target, row, why in get_view(name).derive(rows, series):
            if row is None:
                failed.append({**target, "view": name, "error": why})
            else:
                derived.append(row)
    return derived, failed


def expected_ids(views: Sequence[str], rows: Sequence[dict]) -> list[str]:
    """The view sample ids a study's primary rows call for (one per row of each view's group)."""
    return [
        view_sample_id(r["study_id"], r["condition"], r["level"], name)
        for name in views
        for r in rows
        if CONDITION_GROUP[r["condition"]] == get_view(name).group
    ]
