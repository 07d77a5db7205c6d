"""Header index: one row per DICOM file of a split, with geometric slice order and geometry tags.

Built once per data folder (headers only, parallel over series) and reused by every later stage, so no
stage walks the image tree or parses headers again.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lumbar.core.paths import data_root, images_dir
from lumbar.core.processes import ProcessPlan, process_pool, split_cores
from lumbar.core.tables import load_series_descriptions, write_parquet
from lumbar.data.dicom import DicomReadError, group_stacks, read_header, series_files

log = logging.getLogger(__name__)

INDEX_COLUMNS = [
    "study_id",
    "series_id",
    "series_description",
    "instance_number",
    "stack_index",
    "slice_index",
    "slice_position",
    "ipp_x",
    "ipp_y",
    "ipp_z",
    "iop_0",
    "iop_1",
    "iop_2",
    "iop_3",
    "iop_4",
    "iop_5",
    "pixel_spacing_row",
    "pixel_spacing_col",
    "rows",
    "columns",
    "path",
]


@dataclass
class IndexReport:
    """What `build_index` found: counts, skipped files with reasons, studies without images."""

    files: int = 0
    series: int = 0
    studies: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    missing_studies: list[int] = field(default_factory=list)
    missing_series: list[tuple[int, int]] = field(default_factory=list)
    unlisted_series: list[tuple[int, int]] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [
            (
                f"index: {self.files} files, {self.series} series, {self.studies} studies, "
                f"{len(self.skipped)} files skipped, {self.seconds:.1f} s"
            )
        ]
        reasons = Counter(problem.split(" (")[0] for _, problem in self.skipped)
        lines += [f"  skipped {n} x {reason}" for reason, n in reasons.most_common()]
        lines += [f"  e.g. {path}: {problem}" for path, problem in self.skipped[:3]]
        if self.missing_studies:
            lines.append(
                f"  {len(self.missing_studies)} studies listed in the CSV have no images, e.g. "
                f"{self.missing_studies[:5]}"
            )
        if self.missing_series:
            lines.append(
                f"  {len(self.missing_series)} listed series have no readable images, e.g. "
                f"{self.missing_series[:5]}"
            )
        if self.unlisted_series:
            lines.append(
                f"  {len(self.unlisted_series)} series folders are not in the series CSV, e.g. "
                f"{self.unlisted_series[:5]}"
            )
        return "\n".join(lines)


def _index_series(folder: str) -> tuple[list[dict], list[tuple[str, str]]]:
    """Rows for one series folder, plus the files skipped and why."""
    rows, skipped = [], []
    try:
        files = series_files(folder)
    except DicomReadError as e:
        return [], [(str(e.path), e.problem)]
    headers = []
    for f in files:
        try:
            headers.append(read_header(f))
        except DicomReadError as e:
            skipped.append((str(e.path), e.problem))
    folder_path = Path(folder)
    study_id, series_id = int(folder_path.parent.name), int(folder_path.name)
    for stack_index, stack in enumerate(group_stacks(headers)):
        slice_positions = stack.slice_positions
        for slice_index, h in enumerate(stack.headers):
            rows.append(
                {
                    "study_id": study_id,
                    "series_id": series_id,
                    "instance_number": h.instance_number,
                    "stack_index": stack_index,
                    "slice_index": slice_index,
                    "slice_position": float(slice_positions[slice_index]),
                    "ipp_x": h.position[0],
                    "ipp_y": h.position[1],
                    "ipp_z": h.position[2],
                    **{f"iop_{i}": v for i, v in enumerate(h.orientation)},
                    "pixel_spacing_row": h.pixel_spacing[0],
                    "pixel_spacing_col": h.pixel_spacing[1],
                    "rows": h.rows,
                    "columns": h.columns,
                    "path": h.path,
                }
            )
    return rows, skipped


def _series_folders(root: Path, split: str, studies: set[int] | None) -> list[Path]:
    base = images_dir(root, split)
    if not base.is_dir():
        return []
    folders = []
    for study in sorted(base.iterdir(), key=lambda p: p.name):
        if (
            not study.is_dir()
            or not study.name.isdigit()
            or (studies is not None and int(study.name) not in studies)
        ):
            continue
        folders += sorted(
            (s for s in study.iterdir() if s.is_dir() and s.name.isdigit()), key=lambda p: p.name
        )
    return folders


def build_index(
    data_dir: str | os.PathLike | None = None,
    split: str = "train",
    workers: int = 1,
    studies: list[int] | None = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, IndexReport]:
    """Index every DICOM header of a split.

    Args:
        data_dir: competition data folder (resolved by `lumbar.core.paths.data_root`).
        split: "train" or "test".
        workers: processes reading headers (series are the unit of work), spawned as every pool of the package
            (`lumbar.core.processes.process_pool`).
        studies: restrict to these study ids.
        progress: show a tqdm bar.

    Returns:
        The index (columns `INDEX_COLUMNS`, sorted by study, series, stack, slice) and a report. Series
        descriptions come from `<split>_series_descriptions.csv` when present (empty otherwise).
    """
    t0 = time.perf_counter()
    root = data_root(data_dir)
    wanted = None if studies is None else {int(s) for s in studies}
    folders = _series_folders(root, split, wanted)
    report = IndexReport()
    rows: list[dict] = []
    if workers > 1 and len(folders) > 1:
        chunk = max(1, len(folders) // (workers * 8))
        with process_pool(ProcessPlan(*split_cores(len(folders), workers))) as pool:
            results = pool.map(_index_series, [str(f) for f in folders], chunksize=chunk)
            for r, s in tqdm(
                results, total=len(folders), desc=f"index {split}", unit="series", disable=not progress
            ):
                rows += r
                report.skipped += s
    else:
        for f in tqdm(folders, desc=f"index {split}", unit="series", disable=not progress):
            r, s = _index_series(str(f))
            rows += r
            report.skipped += s
    index = pd.DataFrame(rows, columns=[c for c in INDEX_COLUMNS if c != "series_description"])
    index = index.astype(
        {
            "study_id": "int64",
            "series_id": "int64",
            "instance_number": "int64",
            "stack_index": "int16",
            "slice_index": "int16",
            "rows": "int32",
            "columns": "int32",
        }
    )
    csv = root / f"{split}_series_descriptions.csv"
    if csv.is_file():
        series = load_series_descriptions(csv)
        if wanted is not None:
            series = series[series["study_id"].isin(wanted)]
        index = index.merge(series, on=["study_id", "series_id"], how="left")
        found = set(map(tuple, index[["study_id", "series_id"]].drop_duplicates().to_numpy()))
        listed = set(map(tuple, series[["study_id", "series_id"]].to_numpy()))
        report.missing_series = sorted((int(a), int(b)) for a, b in listed - found)
        report.unlisted_series = sorted((int(a), int(b)) for a, b in found - listed)
        report.missing_studies = sorted(set(series["study_id"]) - set(index["study_id"]))
    else:
        log.warning("%s not found: series descriptions left empty", csv)
        index["series_description"] = ""
    index["series_description"] = index["series_description"].fillna("")
    index = index[INDEX_COLUMNS].sort_values(
        ["study_id", "series_id", "stack_index", "slice_index"], ignore_index=True
    )
    report.files, report.series = len(index), index.groupby(["study_id", "series_id"]).ngroups
    report.studies = index["study_id"].nunique()
    report.seconds = time.perf_counter() - t0
    return index, report


def write_index(index: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write the index as parquet, atomically."""
    return write_parquet(index, path)


def load_or_build_index(
    data_dir,
    split: str,
    cache: str | os.PathLike | None = None,
    workers: int = 1,
    studies: list[int] | None = None,
) -> pd.DataFrame:
    """Read the index from `cache` when it exists, else build it (and write it there when given)."""
    if cache is not None and Path(cache).is_file():
        index = pd.read_parquet(cache)
        return index if studies is None else index[index["study_id"].isin(studies)].reset_index(drop=True)
    index, report = build_index(data_dir, split, workers=workers, studies=studies, progress=False)
    if report.skipped or report.missing_series:
        log.warning(report.summary())
    if cache is not None:
        write_index(index, cache)
    return index


def series_geometry(index: pd.DataFrame) -> dict[str, np.ndarray]:
    """Geometry arrays of index rows, ready for `lumbar.data.dicom.patient_to_pixel` / `pixel_to_patient`."""
    return {
        "positions": index[["ipp_x", "ipp_y", "ipp_z"]].to_numpy(np.float64),
        "orientations": index[[f"iop_{i}" for i in range(6)]].to_numpy(np.float64),
        "spacings": index[["pixel_spacing_row", "pixel_spacing_col"]].to_numpy(np.float64),
    }


def cli_index(args: argparse.Namespace) -> int:
    """`python -m lumbar index`."""
    index, report = build_index(args.data_dir, args.split, workers=args.workers)
    write_index(index, args.out)
    print(report.summary())
    print(f"wrote {args.out} ({len(index)} rows)")
    return 0
