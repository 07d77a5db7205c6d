"""Repair a canal point that the foramina contradict.

The canal points come from one series (Sagittal T2/STIR), the foramina from another (Sagittal T1). When the
canal series misleads the localizer (a fat-suppressed STIR it rarely saw, low contrast, a partial field of
view) its points leave the canal while both foramina of the level still agree with each other. Each level's
anchor (`lumbar.localize.axial.level_anchors`: the median of the canal point and the two foramen points moved
by the learned foramina-to-canal offset) is then where the evidence puts the canal. A canal point more than
`max_mm` from its anchor is moved to the anchor's projection on the nearest slice of the canal series' stack;
its confidence becomes the smaller of the two foramina's mean (the evidence that placed it) and the canal
heatmaps' support for a disc-level canal point there (none on a noise or mirrored series, whose crop would be
nonsense). A canal point that agrees is kept as predicted, so a good Sagittal T2 loses nothing.

Measured on fresh synthetic sets with the demo's localizer (docs/localizer.md): canal points more than 10 mm
off 7.4 % -> 0 % (STIR 25 %) and 30.2 % -> 1.6 % (STIR 90 %), the median error 2.0 -> 1.6 mm and 6.0 -> 1.9
mm.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from lumbar.data.dicom import patient_to_pixel
from lumbar.data.geometry import points_mm
from lumbar.data.index import series_geometry
from lumbar.localize.axial import FORAMINA, SPINAL, level_anchors


def repair_canal(
    coords: pd.DataFrame,
    index: pd.DataFrame,
    foramina_offset_mm: Sequence[float] | None,
    max_mm: float = 5.0,
    evidence: Callable[[pd.DataFrame], np.ndarray] | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """One study's predicted rows with the contradicted canal points moved to their anchors, and a note each.

    Args:
        coords: the study's predicted rows (`PREDICTED_COLUMNS`: canal and foramina; others pass through).
        index: the study's header index rows.
        foramina_offset_mm: the localizer's learned offset (None: nothing is repaired).
        max_mm: a canal point farther than this from its anchor is moved (0: never).
        evidence: the moved rows -> the canal series' own support for each new place (the localizer's
            heatmap mass there, `Localizer.canal_evidence`); a moved point's confidence is the smaller of that
            and the foramina's. None: the foramina's alone.
    """
    out = coords.reset_index(drop=True).copy()
    if foramina_offset_mm is None or max_mm <= 0 or not (out["condition"] == SPINAL).any():
        return out, []
    anchors = level_anchors(out, index, foramina_offset_mm).set_index("level")
    canal = out.index[out["condition"] == SPINAL]
    points = points_mm(out.loc[canal], index).set_index(canal)
    notes, moved = [], []
    for r in canal:
        level = out.at[r, "level"]
        foramina = out[(out["level"] == level) & out["condition"].isin(FORAMINA)]
        if level not in anchors.index or len(foramina) < 2:
            continue
        anchor = anchors.loc[level, ["px", "py", "pz"]].to_numpy(float)
        here = points.loc[r, ["px", "py", "pz"]].to_numpy(float)
        if np.isnan(anchor).any() or np.isnan(here).any() or np.linalg.norm(here - anchor) <= max_mm:
            continue
        series = index[index["series_id"] == out.at[r, "series_id"]].drop_duplicates("instance_number")
        stack = series.loc[series["instance_number"] == out.at[r, "instance_number"], "stack_index"]
        series = (
            series[series["stack_index"] == stack.iloc[0]] if len(stack) else series
        )  # stay on the read stack
        g = series_geometry(series)
        best, x, y, _ = patient_to_pixel(g["positions"], g["orientations"], g["spacings"], anchor)
        out.at[r, "instance_number"] = int(series["instance_number"].iloc[int(best)])
        out.at[r, "x"], out.at[r, "y"] = float(x), float(y)
        out.at[r, "confidence"] = float(foramina["confidence"].mean())
        moved.append(r)
        notes.append(
            f"canal {level} {np.linalg.norm(here - anchor):.0f} mm from the foramina's level -> moved there"
        )
    if moved and evidence is not None:  # a noise or mirrored series has no canal where the foramina point
        out.loc[moved, "confidence"] = np.minimum(out.loc[moved, "confidence"], evidence(out.loc[moved]))
    return out, notes
