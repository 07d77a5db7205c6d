"""The ROI tensor cache on disk: naming, parameters, index table, parallel resumable build, the command.

Layout of `<root>/<cache_name>/` (CONTRACTS.md):
    params.json       every parameter (RoiConfig, split, coordinate source and digest, dtype, layout);
                      a different parameter set in the same folder is an error, never a silent reuse
    samples.parquet   one row per built sample (`roi.SAMPLE_COLUMNS`), sorted by study, condition, level
    failures.csv      coordinate rows that produced no sample and why (header only when none failed)
    <study_id>/<condition>_<level>.npy   float16 (depth + 2 pad_slices, size + 2 pad_px, size + 2 pad_px)
    views.parquet, view_failures.csv, <study_id>/<condition>_<level>@<view>.npy
                      with `RoiConfig.views`: the second views' samples (`roi.VIEW_COLUMNS`), the target rows
                      that have none (a missing view is a zero channel, not a failed build), their arrays

Resumable: a sample whose .npy exists is not rebuilt; a study whose samples all exist and are listed in
samples.parquet is not even opened. Samples are written atomically (temp file then rename), so a killed
run leaves only whole samples. Studies are built in parallel by a process pool.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, as_completed, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lumbar.core.atomic import write_json
from lumbar.core.constants import CONDITIONS, LEVELS, row_id
from lumbar.core.fallback import MAX_FALLBACK_SHARE, check_fallbacks
from lumbar.core.paths import data_root, images_dir
from lumbar.core.settings import command_settings, given_flags
from lumbar.core.tables import COORDINATE_COLUMNS, load_coordinates, write_csv, write_parquet
from lumbar.preprocess.config import RoiConfig
from lumbar.preprocess.roi import (
    FAILURE_COLUMNS,
    SAMPLE_COLUMNS,
    VIEW_COLUMNS,
    VIEW_FAILURE_COLUMNS,
    StudyResult,
    build_study,
)
from lumbar.preprocess.views import expected_ids

FORMAT_VERSION = 1
#: params.json keys that must match for a folder to be reused.
_IDENTITY_KEYS = ("format_version", "config", "split", "coordinates_sha1")


_NAMED_FIELDS = ("mode", "size", "depth", "before", "after", "filter")


def cache_name(config: RoiConfig) -> str:
    """The thesis's folder name plus the filter, and a digest of any other setting changed from its default.

    E.g. `target_window_128x128_5D_B2A2_none`, `full_series_96x96_15D_clahe`; with other margins or padding
    `target_window_32x32_5D_B2A2_none_aea50889` (the demo's), so two caches that differ only there never
    share a folder.
    """
    size = f"{config.size}x{config.size}_{config.out_depth}D"
    window = f"_B{config.before}A{config.after}" if config.mode == "target_window" else ""
    name = f"{config.mode}_{size}{window}_{config.filter}"
    defaults, values = RoiConfig().to_dict(), config.to_dict()
    changed = {k: v for k, v in values.items() if k not in _NAMED_FIELDS and v != defaults.get(k)}
    if changed:
        name += "_" + hashlib.sha1(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:8]
    return name


def coordinates_digest(coords: pd.DataFrame) -> str:
    """SHA-1 of a coordinates table, independent of row order (changed coordinates never reuse a cache)."""
    table = coords[COORDINATE_COLUMNS].sort_values(
        ["study_id", "condition", "level", "series_id"], ignore_index=True
    )
    return hashlib.sha1(table.to_csv(index=False, float_format="%.6f").encode()).hexdigest()


def _params(config: RoiConfig, split: str, coords: pd.DataFrame, source: str) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "cache_name": cache_name(config),
        "config": config.to_dict(),
        "split": split,
        "coordinates_source": source,
        "coordinates_rows": len(coords),
        "coordinates_sha1": coordinates_digest(coords),
        "dtype": "float16",
        "sample_shape": "(depth + 2*pad_slices, height + 2*pad_px, width + 2*pad_px)",
        "intensity": "per-sample-volume percentile clip then [0, 1], filter applied",
    }


def prepare_cache_dir(root: str | os.PathLike, params: dict) -> Path:
    """Create `<root>/<cache_name>/` with params.json, or check that an existing one has the same parameters.

    Raises:
        ValueError: the folder holds a cache built with other parameters (names the keys that differ).
    """
    folder = Path(root) / params["cache_name"]
    path = folder / "params.json"
    if path.is_file():
        old = json.loads(path.read_text())
        differ = [k for k in _IDENTITY_KEYS if old.get(k) != params[k]]
        if isinstance(old.get("config"), dict) and "config" in differ:
            differ.remove("config")
            differ += [f"config.{k}" for k in params["config"] if old["config"].get(k) != params["config"][k]]
        if differ:
            raise ValueError(
                f"{folder} holds a cache built with other parameters ({', '.join(differ)} differ); "
                "choose another --out or delete that folder"
            )
        return folder
    write_json(params, path)
    return folder


def load_views(cache_dir: str | os.PathLike) -> pd.DataFrame:
    """The second views' samples of a cache (`views.parquet`); empty for a cache built without views."""
    path = Path(cache_dir) / "views.parquet"
    return pd.read_parquet(path) if path.is_file() else pd.DataFrame(columns=VIEW_COLUMNS)


def load_cache(cache_dir: str | os.PathLike) -> tuple[dict, pd.DataFrame]:
    """(params, samples) of a cache folder, for training and inference."""
    cache_dir = Path(cache_dir)
    for name in ("params.json", "samples.parquet"):
        if not (cache_dir / name).is_file():
            raise FileNotFoundError(f"{cache_dir / name}: not found; is {cache_dir} a finished ROI cache?")
    return json.loads((cache_dir / "params.json").read_text()), pd.read_parquet(cache_dir / "samples.parquet")


def load_sample(cache_dir: str | os.PathLike, row) -> np.ndarray:
    """The stored (padded) float16 array of one samples.parquet row."""
    return np.load(Path(cache_dir) / row["file"])


@dataclass
class CacheReport:
    """What `build_cache` did."""

    cache_dir: Path
    samples: pd.DataFrame
    failures: pd.DataFrame
    views: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=VIEW_COLUMNS))
    view_failures: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=VIEW_FAILURE_COLUMNS))
    built: int = 0
    skipped: int = 0
    studies: int = 0
    studies_opened: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        t = max(self.seconds, 1e-9)
        lines = [
            (
                f"preprocess: {len(self.samples)} samples in cache ({self.built} built, "
                f"{self.skipped} already there), {len(self.failures)} failed; "
                f"{self.studies} studies ({self.studies_opened} opened)"
            ),
            (
                f"preprocess: {self.seconds:.1f} s, {self.built / t:.1f} samples/s built, "
                f"{self.studies_opened / t:.2f} studies/s"
            ),
        ]
        if len(self.failures):
            reasons = Counter(_reason(e) for e in self.failures["error"])
            example = {}
            for r in self.failures.itertuples():
                example.setdefault(_reason(r.error), f"{r.sample_id}: {r.error}")
            for reason, n in reasons.most_common(8):
                lines.append(f"  failed {n} x {reason} (e.g. {example[reason]})")
            lines.append(f"  all failed rows: {self.cache_dir / 'failures.csv'}")
        for view in sorted(set(self.views["view"]) | set(self.view_failures["view"])):
            n = int((self.views["view"] == view).sum())
            missing = self.view_failures[self.view_failures["view"] == view]
            reasons = Counter(_reason(e) for e in missing["error"]).most_common(3)
            lines.append(
                f"  view {view}: {n} samples, {len(missing)} target rows without one"
                + (f" ({'; '.join(f'{k} x {r}' for r, k in reasons)})" if reasons else "")
            )
        lines += [f"  note: {n}" for n in self.notes[:5]]
        lines.append(f"cache: {self.cache_dir}")
        return "\n".join(lines)


def _failure_row(row: dict, error: str) -> dict:
    return {"sample_id": row_id(row["study_id"], row["condition"], row["level"]), **row, "error": error}


def _reason(error: str) -> str:
    """The kind of an error message without its path and numbers."""
    return error.split(": ", 1)[-1].split(" (")[0]


def _ordered(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty:
        return df
    keys = df.assign(
        _c=df["condition"].map({c: i for i, c in enumerate(CONDITIONS)}),
        _l=df["level"].map({lv: i for i, lv in enumerate(LEVELS)}),
    )
    return df.loc[keys.sort_values(["study_id", "_c", "_l"]).index].reset_index(drop=True)


class Rows:
    """Table rows arriving as dicts, packed into a DataFrame every `chunk` rows: a 2,000-study build's 50,000
    sample rows held as dicts would take ~35 MiB (measured with tracemalloc), as frames ~7 MiB."""

    def __init__(self, columns: list[str], chunk: int = 4096) -> None:
        self.columns, self.chunk = columns, chunk
        self.buffer: list[dict] = []
        self.frames: list[pd.DataFrame] = []

    def extend(self, rows: list[dict]) -> None:
        self.buffer += rows
        if len(self.buffer) >= self.chunk:
            self.frames.append(pd.DataFrame(self.buffer, columns=self.columns))
            self.buffer = []

    def frame(self, *before: pd.DataFrame) -> pd.DataFrame:
        """All rows as one table, after the rows of the tables `before` (e.g. those a resumed build kept)."""
        buffered = pd.DataFrame(self.buffer, columns=self.columns)
        frames = [f for f in (*before, *self.frames, buffered) if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=self.columns)


def _read_table(path: Path, columns: list[str]) -> pd.DataFrame:
    return pd.read_parquet(path) if path.is_file() else pd.DataFrame(columns=columns)


def _run_studies(jobs: Iterator[tuple], workers: int) -> Iterator[StudyResult]:
    """`build_study` over the jobs, in a process pool when `workers` > 1, at most 2 per worker in flight (so
    neither the queued jobs' rows nor finished results pile up), results as they finish."""
    if workers <= 1:
        yield from (build_study(*job) for job in jobs)
        return
    # spawn, not fork: a forked child of a process whose OpenCV thread pool has run can deadlock
    with ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker
    ) as pool:
        pending = set()
        for job in jobs:
            pending.add(pool.submit(build_study, *job))
            if len(pending) >= 2 * workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (f.result() for f in done)
        for fut in as_completed(pending):
            yield fut.result()


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core already


def build_cache(
    coords: pd.DataFrame,
    data_dir: str | os.PathLike | None,
    split: str,
    out_root: str | os.PathLike,
    config: RoiConfig | None = None,
    workers: int = 1,
    progress: bool = True,
    coords_source: str = "DataFrame",
    max_failed_share: float = MAX_FALLBACK_SHARE,
) -> CacheReport:
    """Build (or complete) the ROI cache of a coordinates table.

    Args:
        coords: coordinates (ground truth or predicted), the `lumbar.core.tables.load_coordinates` table.
        data_dir: competition data folder (resolved by `lumbar.core.paths.data_root`).
        split: "train" or "test".
        out_root: the cache root; the cache is `<out_root>/<cache_name(config)>/`.
        config: the parameters (defaults when None).
        workers: processes, each building whole studies.
        progress: show a tqdm bar over studies.
        coords_source: where the coordinates came from, recorded in params.json.
        max_failed_share: the share of coordinate rows that may fail (always at least one); more fail the
            build (`lumbar.core.fallback.FallbackLimitError`, after samples.parquet and failures.csv are
            written), because so many failures mean a broken data folder or decoder, not a few odd files.

    Returns:
        The report; samples and failures are also written to the cache folder. Studies without images,
        unreadable series or files and duplicate coordinate rows fail only their own rows.
    """
    t0 = time.perf_counter()
    config = config or RoiConfig()
    root = data_root(data_dir)
    coords = coords[COORDINATE_COLUMNS].reset_index(drop=True)
    folder = prepare_cache_dir(out_root, _params(config, split, coords, coords_source))
    dup = coords.duplicated(["study_id", "condition", "level"])
    failures = [
        _failure_row(r, "duplicate coordinate row for this study, condition and level (the first is used)")
        for r in coords[dup].to_dict("records")
    ]
    coords = coords[~dup]
    report = CacheReport(folder, pd.DataFrame(), pd.DataFrame())
    resume = _plan_build(coords, root, split, folder, config, report, failures)
    report.studies_opened = len(resume.tasks)
    jobs = (
        (s, coords.iloc[positions].to_dict("records"), str(root), split, str(folder), config)
        for s, positions in resume.tasks
    )
    bar = tqdm(
        total=len(resume.tasks), desc=f"preprocess {cache_name(config)}", unit="study", disable=not progress
    )
    built = _collect(_run_studies(jobs, workers if len(resume.tasks) > 1 else 1), bar, report, failures)
    _write_tables(report, config, built, resume, failures)
    check_fallbacks(
        dict(zip(report.failures["sample_id"], report.failures["error"])),
        len(coords) + int(dup.sum()),
        max_failed_share,
        f"coordinate rows (samples) of {folder}",
    )
    report.seconds = time.perf_counter() - t0
    return report


@dataclass(frozen=True)
class _Resume:
    """What a (resumed) build starts from: the studies to build, as (study_id, positions of their coordinate
    rows), and the rows of samples.parquet and views.parquet it keeps (studies whose files are all there)."""

    tasks: list[tuple[int, np.ndarray]]
    samples: pd.DataFrame
    views: pd.DataFrame


@dataclass(frozen=True)
class _Built:
    """The rows the built studies returned: samples, second-view samples, target rows without a view."""

    samples: Rows
    views: Rows
    view_failures: Rows


def _plan_build(
    coords: pd.DataFrame,
    root: Path,
    split: str,
    folder: Path,
    config: RoiConfig,
    report: CacheReport,
    failures: list[dict],
) -> _Resume:
    """Sort the studies of `coords` into those to build and those already complete in `folder` (counted as
    skipped); a study without an image folder fails its rows (appended to `failures`)."""
    old = _read_table(folder / "samples.parquet", SAMPLE_COLUMNS)
    old_views = load_views(folder)
    known = dict(zip(old["sample_id"], old["file"]))  # id -> file: what a resumed build may keep
    known_views = dict(zip(old_views["sample_id"], old_views["file"]))
    kept, kept_views = [], []
    tasks: list[tuple[int, np.ndarray]] = []
    base = images_dir(root, split)
    for study_id, positions in coords.groupby("study_id", sort=True).indices.items():
        rows = coords.iloc[positions].to_dict("records")
        ids = [row_id(study_id, r["condition"], r["level"]) for r in rows]
        if not (base / str(study_id)).is_dir():
            failures.extend(_failure_row(r, f"{base / str(study_id)}: study folder not found") for r in rows)
            continue
        report.studies += 1
        view_ids = expected_ids(config.views, rows)
        if all(i in known and (folder / known[i]).is_file() for i in ids) and all(
            i in known_views and (folder / known_views[i]).is_file() for i in view_ids
        ):
            kept += ids
            kept_views += view_ids
            report.skipped += len(ids) + len(view_ids)
            continue
        # its rows are made again when it is built: none held meanwhile
        tasks.append((int(study_id), positions))
    return _Resume(
        tasks, old[old["sample_id"].isin(set(kept))], old_views[old_views["sample_id"].isin(set(kept_views))]
    )


def _collect(results: Iterator[StudyResult], bar, report: CacheReport, failures: list[dict]) -> _Built:
    """The built studies' rows, gathered as they finish; their counts and notes go to `report`, their failed
    rows to `failures`."""
    samples, views, view_failures = Rows(SAMPLE_COLUMNS), Rows(VIEW_COLUMNS), Rows(VIEW_FAILURE_COLUMNS)
    for r in results:
        samples.extend(r.samples)
        failures += r.failures
        views.extend(r.view_samples)
        view_failures.extend(r.view_failures)
        report.built += r.built
        report.skipped += r.skipped
        report.notes += r.notes
        bar.update()
    bar.close()
    return _Built(samples, views, view_failures)


def _write_tables(
    report: CacheReport, config: RoiConfig, built: _Built, resume: _Resume, failures: list[dict]
) -> None:
    """The cache's tables, the kept rows first, in study, condition, level order: into `report` and the
    folder (samples.parquet, failures.csv; with views, views.parquet and view_failures.csv)."""
    folder = report.cache_dir
    report.samples = _ordered(built.samples.frame(resume.samples))
    report.failures = _ordered(pd.DataFrame(failures, columns=FAILURE_COLUMNS))
    write_parquet(report.samples, folder / "samples.parquet")
    write_csv(report.failures, folder / "failures.csv")
    if config.views:
        report.views = _ordered(built.views.frame(resume.views))
        report.view_failures = _ordered(built.view_failures.frame())
        write_parquet(report.views, folder / "views.parquet")
        write_csv(report.view_failures, folder / "view_failures.csv")


#: CLI option -> RoiConfig field, for the options given explicitly.
_CLI_FIELDS = {
    "mode": "mode",
    "size": "size",
    "before": "before",
    "after": "after",
    "depth": "depth",
    "filter": "filter",
    "margin_mode": "margin_mode",
    "pad_px": "pad_px",
    "pad_slices": "pad_slices",
}


def cli_preprocess(args: argparse.Namespace) -> int:
    """`python -m lumbar preprocess`: prints the summary (samples/s, studies/s) and the cache path."""
    config = command_settings(RoiConfig(), given_flags(args, _CLI_FIELDS), args.set)
    coords = load_coordinates(args.coords)
    report = build_cache(
        coords,
        args.data_dir,
        args.split,
        args.out,
        config,
        workers=args.workers,
        coords_source=Path(args.coords).name,
    )
    print(report.summary())
    return 0
