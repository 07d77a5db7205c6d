"""Coordinate rows in patient space (mm), through the geometry the header index holds
(`lumbar.data.index`)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from lumbar.data.dicom import pixel_to_patient
from lumbar.data.index import series_geometry

INSTANCE_KEYS = ["study_id", "series_id", "instance_number"]
GEOMETRY_COLUMNS = [
    *("ipp_x", "ipp_y", "ipp_z"),
    *(f"iop_{i}" for i in range(6)),
    *("pixel_spacing_row", "pixel_spacing_col"),
]


def points_mm(
    coords: pd.DataFrame, index: pd.DataFrame, keep: Sequence[str] = (), how: str = "left"
) -> pd.DataFrame:
    """Coordinate rows (`x, y` on an instance) with their patient position `px, py, pz` (mm): the one place
    the label and predicted points go from pixels to patient space, through their instance's index row.

    Args:
        coords: rows with `study_id, series_id, instance_number, x, y`.
        index: header index rows covering the instances.
        keep: index columns carried along (after the coordinate columns).
        how: "left": a row whose instance the index lacks gets NaN; "inner": it is dropped.
    """
    columns = list(dict.fromkeys([*INSTANCE_KEYS, *keep, *GEOMETRY_COLUMNS]))
    merged = coords.merge(index[columns].drop_duplicates(INSTANCE_KEYS), on=INSTANCE_KEYS, how=how)
    g = series_geometry(merged)
    x, y = merged["x"].to_numpy(float), merged["y"].to_numpy(float)
    mm = pixel_to_patient(g["positions"], g["orientations"], g["spacings"], x, y)
    return merged[[*coords.columns, *keep]].assign(px=mm[:, 0], py=mm[:, 1], pz=mm[:, 2])
