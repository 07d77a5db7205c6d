"""Sagittal level points -> the axial slice of each level, through DICOM geometry alone.

Each level's anchor (a patient position in mm) is found on the sagittal series; every slice of every axial
series of the study is a plane; the chosen slice is the one whose plane is nearest to the anchor among the
slices on which the anchor also falls inside the image (an oblique stack aimed at another disc can pass near
a point far outside its field of view). Matches farther than `max_distance_mm` keep their distance but no
instance: a missed level is better reported than guessed.

The anchor is the spinal-canal point (Sagittal T2/STIR), or, given the foramina's offset to the canal learned
from training labels (`foramina_offset_mm`, stored by the localizer), the per-coordinate median of the canal
point and both foramen points (Sagittal T1) moved by that offset: one wrong series of the three then cannot
move the level. Measured on fresh synthetic sets (predicted points, the demo's localizer): the true axial
slice exactly 52 % -> 73 % of levels, within one slice 86 % -> 98 %; on a set with 90 % STIR series, where
the canal points suffer, 18 % -> 68 % and 50 % -> 97 % (docs/localizer.md).

The inverse serves a study without Sagittal T1: with the offset and the foramina's learned left-right
half-span (`foramina_halfspan_mm`), each canal point places its level's two foramina (`foramina_from_canal`)
on the slices of the canal's own series through them, so their targets are cropped and predicted instead of
left to the prior.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from lumbar.core.constants import AXIAL_T2, LEVELS
from lumbar.core.paths import data_root
from lumbar.core.tables import COORDINATE_COLUMNS, load_coordinates, write_csv
from lumbar.data.dicom import plane_coordinates
from lumbar.data.geometry import points_mm
from lumbar.data.index import load_or_build_index, series_geometry

AXIAL_MAP_COLUMNS = ["study_id", "level", "axial_series_id", "instance_number", "distance_mm", "x", "y"]
SPINAL = "spinal_canal_stenosis"
FORAMINA = ("left_neural_foraminal_narrowing", "right_neural_foraminal_narrowing")


def foramina_offset_mm(coords: pd.DataFrame, index: pd.DataFrame) -> list[float] | None:
    """Median patient-space offset (mm) from the mean of a level's two foramen points to its canal point, over
    the labelled levels that have all three; None when none has. The foramina sit a few mm above and in front
    of the disc the axial slice is aimed at, so without the offset they would pick the slice above."""
    points = points_mm(coords[coords["condition"].isin((SPINAL, *FORAMINA))], index)
    offsets = []
    for _, group in points.groupby(["study_id", "level"], sort=False):
        canal, foramina = _level_points(group)
        if canal is not None and len(foramina) == 2:
            offsets.append(canal - foramina.mean(0))
    return np.median(offsets, axis=0).round(3).tolist() if offsets else None


def foramina_halfspan_mm(coords: pd.DataFrame, index: pd.DataFrame) -> list[float] | None:
    """Median patient-space half of the vector from a level's right foramen to its left one (mm), over the
    labelled levels that have both; None when none has. Beside `foramina_offset_mm` it places a level's
    foramina from its canal point alone (`foramina_from_canal`), in a study without Sagittal T1."""
    points = points_mm(coords[coords["condition"].isin(FORAMINA)], index)
    halves = []
    for _, group in points.groupby(["study_id", "level"], sort=False):
        xyz = group[["px", "py", "pz"]].to_numpy(float)
        sides = {c: p for c, p in zip(group["condition"], xyz) if not np.isnan(p).any()}
        if len(sides) == 2:
            halves.append((sides[FORAMINA[0]] - sides[FORAMINA[1]]) / 2)
    return np.median(halves, axis=0).round(3).tolist() if halves else None


def foramina_from_canal(
    canal: pd.DataFrame,
    index: pd.DataFrame,
    foramina_offset_mm: Sequence[float],
    foramina_halfspan_mm: Sequence[float],
    max_distance_mm: float = 10.0,
) -> pd.DataFrame:
    """Each canal point's left and right foramen, for a study without Sagittal T1: the canal point minus the
    offset, plus (left) and minus (right) the half-span, in patient mm, each on the slice of the canal's own
    series nearest to it among those whose image holds it, so that its crop is cut through the foramen.

    Returns:
        `COORDINATE_COLUMNS` and `distance_mm` (the foramen's distance to its slice's plane), one row per
        placed foramen; one that no slice holds within `max_distance_mm` is left out (its target stays
        with the prior).
    """
    points = points_mm(canal[canal["condition"] == SPINAL].reset_index(drop=True), index)
    points = points[points[["px", "py", "pz"]].notna().all(axis=1)]
    out = []
    for (study_id, series_id), group in points.groupby(["study_id", "series_id"], sort=False):
        slices = index[(index["study_id"] == study_id) & (index["series_id"] == series_id)]
        centre = group[["px", "py", "pz"]].to_numpy(float) - np.asarray(foramina_offset_mm, float)
        for condition, sign in zip(FORAMINA, (1.0, -1.0), strict=True):
            near = nearest_slices(centre + sign * np.asarray(foramina_halfspan_mm, float), slices)
            out.append(near.assign(study_id=study_id, condition=condition, level=group["level"].to_numpy()))
    columns = [*COORDINATE_COLUMNS, "distance_mm"]
    if not out:
        return pd.DataFrame(columns=columns)
    placed = pd.concat(out, ignore_index=True)
    placed = placed[placed["distance_mm"] <= max_distance_mm].reindex(columns=columns)
    return placed.astype({"series_id": "int64", "instance_number": "int64"}).reset_index(drop=True)


def _level_points(group: pd.DataFrame) -> tuple[np.ndarray | None, np.ndarray]:
    """One level's canal point (or None) and foramen points, mm, from `points_mm` rows."""
    xyz = group[["px", "py", "pz"]].to_numpy(float)
    ok = ~np.isnan(xyz).any(axis=1)
    canal = xyz[ok & (group["condition"] == SPINAL).to_numpy()]
    return (canal[0] if len(canal) else None), xyz[ok & group["condition"].isin(FORAMINA).to_numpy()]


def level_anchors(
    coords: pd.DataFrame, index: pd.DataFrame, foramina_offset_mm: Sequence[float] | None = None
) -> pd.DataFrame:
    """One row per (study, level) with a canal point: `study_id, level, px, py, pz`, the position its axial
    slice is looked for at. The canal point; with `foramina_offset_mm` and both foramen points of the level,
    the per-coordinate median of the canal point and the two offset foramen points. A study without any canal
    point (no Sagittal T2/STIR) takes, with the offset, the mean of its two offset foramen points: its levels
    still reach the axial series instead of leaving the subarticular targets to the prior."""
    wanted = (SPINAL, *FORAMINA) if foramina_offset_mm is not None else (SPINAL,)
    rows = coords[coords["condition"].isin(wanted)].drop_duplicates(["study_id", "condition", "level"])
    points = points_mm(rows.reset_index(drop=True), index)
    with_canal = set(points.loc[points["condition"] == SPINAL, "study_id"])
    out = []
    for (study_id, level), group in points.groupby(["study_id", "level"], sort=False):
        canal, foramina = _level_points(group)
        if study_id not in with_canal and foramina_offset_mm is not None and len(foramina) == 2:
            out.append((study_id, level, *np.mean(foramina + np.asarray(foramina_offset_mm), axis=0)))
            continue
        if not (group["condition"] == SPINAL).any():
            continue
        anchor = np.full(3, np.nan) if canal is None else canal
        if canal is not None and foramina_offset_mm is not None and len(foramina) == 2:
            anchor = np.median(np.vstack([canal, foramina + np.asarray(foramina_offset_mm)]), axis=0)
        out.append((study_id, level, *anchor))
    return pd.DataFrame(out, columns=["study_id", "level", "px", "py", "pz"])


def nearest_slices(points: np.ndarray, slices: pd.DataFrame) -> pd.DataFrame:
    """For each point (n, 3), the slice (of the index rows `slices`) whose plane is nearest among those the
    point falls inside.

    Returns:
        One row per point: series_id, instance_number, distance_mm, x, y (pixel on that slice); series and
        instance -1 and the rest NaN where no slice contains the point.
    """
    points = np.atleast_2d(points)
    slices = slices.reset_index(drop=True)
    g = series_geometry(slices)
    dist, x, y = plane_coordinates(g["positions"], g["orientations"], g["spacings"], points)
    inside = (
        (x >= 0) & (y >= 0) & (x <= slices["columns"].to_numpy() - 1) & (y <= slices["rows"].to_numpy() - 1)
    )
    dist_inside = np.where(inside, dist, np.inf)
    best = np.argmin(dist_inside, axis=1)
    rows = np.arange(len(points))
    found = np.isfinite(dist_inside[rows, best])
    return pd.DataFrame(
        {
            "series_id": np.where(found, slices["series_id"].to_numpy()[best], -1),
            "instance_number": np.where(found, slices["instance_number"].to_numpy()[best], -1),
            "distance_mm": np.where(found, dist_inside[rows, best], np.nan),
            "x": np.where(found, x[rows, best], np.nan),
            "y": np.where(found, y[rows, best], np.nan),
        }
    )


def map_axial(
    coords: pd.DataFrame,
    index: pd.DataFrame,
    max_distance_mm: float = 10.0,
    foramina_offset_mm: Sequence[float] | None = None,
) -> pd.DataFrame:
    """Map each level's anchor (`level_anchors`) to the nearest axial slice per study and level.

    Args:
        coords: coordinates table (any conditions; the spinal-canal rows, and the foramina's with an offset).
        index: header index covering the studies (needs the sagittal instances and the axial series).
        max_distance_mm: farther matches keep `distance_mm` but get an empty `instance_number`.
        foramina_offset_mm: see `level_anchors`; None: the canal points alone.

    Returns:
        `AXIAL_MAP_COLUMNS`, one row per (study, level) with a spinal point; `instance_number` and
        `axial_series_id` are nullable integers (empty when no axial slice is near enough or the study has
        no axial series).
    """
    pts = level_anchors(coords, index, foramina_offset_mm)
    axial = index[index["series_description"] == AXIAL_T2]
    out = []
    for study_id, group in pts.groupby("study_id", sort=True):
        study_axial = axial[axial["study_id"] == study_id]
        result = pd.DataFrame({"study_id": study_id, "level": group["level"].to_numpy()})
        valid = group[["px", "py", "pz"]].notna().all(axis=1).to_numpy()
        if len(study_axial) and valid.any():
            near = nearest_slices(group[["px", "py", "pz"]].to_numpy()[valid], study_axial)
            near = near.rename(columns={"series_id": "axial_series_id"})
            for col in near.columns:
                result.loc[valid, col] = near[col].to_numpy()
        out.append(result)
    cols = AXIAL_MAP_COLUMNS
    if not out:
        return pd.DataFrame(columns=cols)
    result = pd.concat(out, ignore_index=True).reindex(columns=cols)
    too_far = ~(result["distance_mm"] <= max_distance_mm)
    result.loc[too_far, ["instance_number", "x", "y"]] = np.nan
    result.loc[result["axial_series_id"] == -1, "axial_series_id"] = np.nan
    result["level"] = pd.Categorical(result["level"], categories=LEVELS, ordered=True)
    result = result.sort_values(["study_id", "level"], ignore_index=True)
    result["level"] = result["level"].astype(str)
    return result.astype({"axial_series_id": "Int64", "instance_number": "Int64"})


def cli_map_axial(args: argparse.Namespace) -> int:
    """`python -m lumbar map-axial`: studies without images are counted and left out of the output."""
    root = data_root(args.data_dir)
    coords = load_coordinates(args.coords)
    index = load_or_build_index(
        root, args.split, cache=args.index, studies=sorted(coords["study_id"].unique())
    )
    with_images = coords["study_id"].isin(index["study_id"])
    result = map_axial(coords[with_images], index, args.max_distance_mm)
    write_csv(result, args.out)
    absent = coords.loc[~with_images, "study_id"].nunique()
    n, found = len(result), int(result["instance_number"].notna().sum())
    print(
        f"map-axial: {found}/{n} study-levels on an axial slice within {args.max_distance_mm} mm"
        + (f"; {absent} studies of the coordinates have no images here (left out)" if absent else "")
        + f"; wrote {os.fspath(args.out)}"
    )
    return 0
