"""One localizer per fold of the experiment's folds, and the out-of-fold coordinates they give.

The classifiers meet the localizer's crops at test time, so they should be trained and, above all, scored on
such crops. For that every training study needs coordinates predicted by a localizer that never saw it:
`train_localizer_folds` trains one localizer per fold of the shared `folds.csv` (the classifiers' folds, so
a classifier's held-out fold is also its localizer's), and predicts each fold's studies with that fold's
localizer. At test time all folds' localizers are used together (`lumbar.localize.predict.Localizer`
averages their heatmap distributions).

Writes into the run folder, beside the checkpoints under `localizer/fold<k>/`:

    localizer_oof.csv          predicted coordinates of every train study (train_label_coordinates format
                               plus `fold`)
    localizer_oof_errors.csv   one row per ground-truth point: mm and signed slice errors, fold
    localizer_errors.json      the errors per condition as `lumbar.preprocess.jitter` reads them
    (training-time
                               jitter that matches the localizer)

and records them in the manifest's localizer section (`lumbar.core.run_contract.LocalizerRecord`: `folds`,
each fold's localizer; `oof`, `errors`, summaries).
`build_oof_crops` then builds the classifiers' crop cache around the out-of-fold points (`cache_oof/`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import pandas as pd

from lumbar.core.atomic import write_json
from lumbar.core.paths import data_root
from lumbar.core.processes import plan_processes, process_pool
from lumbar.core.progress import print_line
from lumbar.core.run_contract import LocalizerRecord, OofCropsRecord, RunManifest, save_record
from lumbar.core.settings import StaleRunError, setting_changes
from lumbar.core.tables import load_coordinates, write_coordinates, write_csv
from lumbar.localize.config import LocalizerConfig
from lumbar.localize.evaluate import (
    implausible_studies,
    localization_errors,
    slice_histogram,
    summarize_folds,
    summary_line,
)
from lumbar.localize.predict import localize
from lumbar.localize.train import MODEL_DIR, prepare_all, train_localizer
from lumbar.preprocess.cache import CacheReport, build_cache, coordinates_digest, load_cache
from lumbar.preprocess.config import RoiConfig
from lumbar.preprocess.jitter import write_localizer_errors

OOF_CSV = "localizer_oof.csv"
ERRORS_CSV = "localizer_oof_errors.csv"
ERRORS_JSON = "localizer_errors.json"
#: Root of the crop cache around the out-of-fold points (the ground-truth crops are under `cache/`).
OOF_CACHE_ROOT = "cache_oof"


def fold_member(fold: int) -> str:
    """The name of a fold's localizer in the manifest and under `localizer/`."""
    return f"fold{int(fold)}"


#: LocalizerConfig fields that do not change the trained weights: a run's localizers are reused with other
#: values.
RUN_ONLY = frozenset({"device", "amp", "workers", "threads", "canal_repair_mm", "tensorboard"})


@dataclasses.dataclass(frozen=True)
class _FoldData:
    """What every step of `train_localizer_folds` reads: the labelled studies, their folds and the run."""

    config: LocalizerConfig
    root: Path
    run: Path
    coords: pd.DataFrame  # ground-truth points of the studies with a fold
    fold_of: pd.Series  # study_id -> fold
    fold_ids: list[int]
    index: pd.DataFrame
    digest: str  # `coordinates_digest(coords)`: a rerun on other points cannot reuse the localizers


def train_localizer_folds(
    config: LocalizerConfig,
    data_dir: str | os.PathLike | None,
    coords: pd.DataFrame,
    run: str | os.PathLike,
    folds: pd.DataFrame,
    index: pd.DataFrame,
    jobs: int = 1,
    device: str = "auto",
    progress: bool = True,
    fresh: bool = False,
) -> dict:
    """Train a localizer per fold, predict each fold's studies out of fold, evaluate and record them.

    Args:
        config: the localizer settings (each fold's localizer gets the same).
        data_dir: competition data folder (train split).
        coords: ground-truth coordinates (`load_coordinates`).
        run: the run folder.
        folds: `study_id, fold` (the experiment's `folds.csv`); studies without a fold are not used.
        index: header index of the train split.
        jobs: models of the folds (`model_parts`) trained side by side, each in its own process with
            cores // jobs torch threads (unless `config.threads` pins them); 0 = one per GPU on CUDA (each
            pinned to its GPU), one per model and at most one per core on the CPU
            (`lumbar.core.processes.plan_processes`).
        device: for the out-of-fold prediction.
        progress: tqdm bars.
        fresh: train every model again; by default a rerun reuses the run's localizers when their settings,
            folds and coordinates are these (`RUN_ONLY` aside), resumes the models a killed run had not
            finished, and stops at once (`StaleRunError`) when anything that changes the weights differs.

    Returns:
        The manifest's localizer section (`LocalizerRecord.to_dict`).
    """
    t0 = time.perf_counter()
    data = _fold_data(config, data_dir, coords, run, folds, index)
    previous = RunManifest.read(data.run).localizer
    if not fresh and check_reusable(previous, config, data.fold_ids, data.digest, data.run):
        print(
            f"localizer: reusing the {len(data.fold_ids)} fold localizers of {data.run} (same settings, "
            "folds and coordinates; FRESH=True trains them again)",
            flush=True,
        )
        return previous.to_dict()
    if fresh:
        for record in (data.run / MODEL_DIR).glob(f"fold*/*{PART_RECORD}"):
            record.unlink()
    save_record(data.run, _folds_record(data, {}, status=LocalizerRecord.TRAINING))
    # the inputs decoded once, read by every fold
    prepare_all(config, data.root, data.coords, data.run, data.index, progress)
    members, device = _train_folds(data, jobs, device)
    save_record(data.run, _folds_record(data, members))
    entry = _predict_out_of_fold(data.run, data.root, data.coords, folds, data.index, device)
    entry.seconds = round(time.perf_counter() - t0, 1)
    save_record(data.run, entry)
    return entry.to_dict()


def _fold_data(
    config: LocalizerConfig,
    data_dir: str | os.PathLike | None,
    coords: pd.DataFrame,
    run: str | os.PathLike,
    folds: pd.DataFrame,
    index: pd.DataFrame,
) -> _FoldData:
    """The ground truth of the studies with a fold and the folds they fall in; fails before any training
    when the folds do not fit the data (no labelled study with a fold, or fewer than 2 such folds)."""
    run, root = Path(run), data_root(data_dir, must_exist=True)
    fold_of = folds.set_index("study_id")["fold"]
    coords = coords[coords["study_id"].isin(fold_of.index)]
    if coords.empty:
        raise ValueError(
            "no ground-truth coordinates of a study with a fold: is folds.csv made for this data?"
        )
    fold_ids = sorted(int(f) for f in fold_of[coords["study_id"].unique()].unique())
    if len(fold_ids) < 2:
        raise ValueError(f"a localizer per fold needs at least 2 folds with labelled studies, got {fold_ids}")
    return _FoldData(config, root, run, coords, fold_of, fold_ids, index, coordinates_digest(coords))


def _folds_record(
    data: _FoldData, members: dict[str, LocalizerRecord], status: str | None = None
) -> LocalizerRecord:
    """The manifest's section for this set of fold localizers: written empty (`TRAINING`) before the first
    model, so that a killed run is recognised and resumed, and again with every fold's localizer."""
    return LocalizerRecord(
        kind=LocalizerRecord.FOLDS,
        config=data.config.to_dict(),
        folds=members,
        fold_ids=data.fold_ids,
        coordinates_sha1=data.digest,
        status=status,
    )


def _train_folds(data: _FoldData, jobs: int, device: str) -> tuple[dict[str, LocalizerRecord], str]:
    """Every model of every fold (`model_parts`), in processes side by side or one after the other.

    Returns:
        Each fold's localizer by member name, and the device of the out-of-fold prediction: `device`, or
        with several processes the one the workers were given.
    """
    parts = model_parts(data.config)
    plan = plan_processes(len(data.fold_ids) * len(parts), data.config.device, jobs, data.config.threads)
    print(f"localizer: {len(data.fold_ids)} folds x {len(parts)} models, {plan.describe()}", flush=True)
    if plan.jobs > 1:  # a pinned worker's `cuda` is its own GPU
        device = "cuda" if plan.gpus else data.config.device
        parts = [dataclasses.replace(part, threads=plan.threads, device=device) for part in parts]
    tasks = [_fold_task(data, part, k) for k in data.fold_ids for part in parts]
    if plan.jobs > 1:
        with process_pool(plan) as pool:
            entries = list(pool.map(_train_one, tasks))
    else:
        entries = [_train_one(t) for t in tasks]
    n = len(parts)
    members = {
        fold_member(k): _merged(entries[i * n : (i + 1) * n], data.config).copy(fold=k)
        for i, k in enumerate(data.fold_ids)
    }
    return members, device


def _fold_task(data: _FoldData, part: LocalizerConfig, k: int) -> tuple:
    """One model of fold `k`'s localizer as a process-pool task (`_train_one`): trained on the studies of
    every other fold, so that it never sees the studies it predicts out of fold."""
    return (
        part,
        str(data.root),
        data.coords[data.coords["study_id"].map(data.fold_of) != k],
        str(data.run),
        data.index[~data.index["study_id"].map(data.fold_of).eq(k)],
        False,
        fold_member(k),
    )


def predict_out_of_fold(
    run: str | os.PathLike,
    data_dir: str | os.PathLike | None,
    coords: pd.DataFrame,
    folds: pd.DataFrame,
    index: pd.DataFrame,
    device: str = "auto",
) -> dict:
    """Each fold's studies predicted by that fold's localizer, evaluated against `coords`, written and
    recorded.

    Called by `train_localizer_folds`; on its own it re-predicts a trained run's out-of-fold points (e.g. to
    add confidences to a run trained before they were recorded: same points, the crops are reused).

    Returns:
        The manifest's localizer section with `oof`, `errors`, the summaries and `implausible_studies`.
    """
    return _predict_out_of_fold(run, data_dir, coords, folds, index, device).to_dict()


def _predict_out_of_fold(
    run: str | os.PathLike,
    data_dir: str | os.PathLike | None,
    coords: pd.DataFrame,
    folds: pd.DataFrame,
    index: pd.DataFrame,
    device: str,
) -> LocalizerRecord:
    run, root = Path(run), data_root(data_dir, must_exist=True)
    entry = RunManifest.read(run).need.localizer
    fold_of = folds.set_index("study_id")["fold"]
    coords = coords[coords["study_id"].isin(fold_of.index)]
    parts = []
    for name, member in entry.need.folds.items():
        k, t0 = int(member.need.fold), time.perf_counter()
        studies = sorted(int(s) for s in coords["study_id"].unique() if fold_of[s] == k)
        predicted, _ = localize(
            root, "train", run, studies=studies, index=index, device=device, progress=False, members=[name]
        )
        parts.append(predicted.assign(fold=k))
        print(
            f"localizer: {name} predicted its {len(studies)} held-out studies in "
            f"{time.perf_counter() - t0:.0f} s",
            flush=True,
        )  # a line a watched log shows between the epochs and the crops
    oof = pd.concat(parts, ignore_index=True)
    write_coordinates(oof, run / OOF_CSV)
    errors = localization_errors(oof, coords, index)
    errors["fold"] = errors["study_id"].map(fold_of)  # a point the localizer missed still counts in its fold
    write_csv(errors, run / ERRORS_CSV)
    measured = errors.dropna(subset=["slice_shift"])[["condition", "slice_shift", "dx_mm", "dy_mm"]]
    write_localizer_errors(measured.rename(columns={"slice_shift": "slice_error"}), run / ERRORS_JSON)
    table = summarize_folds(errors)
    per_fold = {f: summary_line(table.loc[f]) for f in table.index.get_level_values(0).unique()}
    entry = entry.copy(
        oof=OOF_CSV,
        errors=ERRORS_JSON,
        errors_table=ERRORS_CSV,
        oof_points=len(oof),
        summary=summary_line(table.loc["all"]),
        per_fold=per_fold,
        slice_histogram=slice_histogram(errors).to_dict("index"),
        implausible_studies=implausible_studies(oof),
    )
    save_record(run, entry)
    return entry


def model_parts(config: LocalizerConfig) -> list[LocalizerConfig]:
    """A localizer's models, one config each (a heatmap model or a slice scorer), so that the process pool
    gets
    folds x models tasks instead of one per fold: on 2 cores, 3 folds trained whole ran as two at once and
    then one alone, a core idle for a third of the time; 9 model tasks keep both busy. Each model seeds
    itself before it is built, so the parts train exactly the weights the whole localizer would."""
    parts = [dataclasses.replace(config, tasks=name, refine_tasks="") for name in config.task_names]
    return parts + [
        dataclasses.replace(config, tasks="", refine_tasks=name) for name in config.refine_task_names
    ]


def merge_parts(entries: list[dict], config: LocalizerConfig) -> dict:
    """One fold's manifest entry from its parts' entries (`model_parts`, in that order): models, skipped
    models and problems of all parts, the whole config, `seconds` the sum of the parts' training times."""
    return _merged(entries, config).to_dict()


def _merged(entries: list[dict], config: LocalizerConfig) -> LocalizerRecord:
    parts = [LocalizerRecord.from_dict(entry) for entry in entries]
    merged = parts[0].copy(config=config.to_dict(), models={}, skipped={}, problems=[])
    for part in parts:
        merged.models.update(part.models)
        merged.skipped.update(part.skipped)
        merged.problems += part.problems
    merged.seconds = round(sum(part.seconds for part in parts), 1)
    return merged


#: Each trained model of a fold writes its manifest entry beside its checkpoint (`<model>.part.json`), so a
#: killed run resumes with the models it had not finished.
PART_RECORD = ".part.json"


def _train_one(task: tuple) -> dict:
    """One model of one fold's localizer (a process-pool task), or its record when a killed run finished
    it."""
    config, root, coords, run, index, progress, member = task
    name = config.tasks or f"{config.refine_tasks}_slices"
    record = Path(run) / MODEL_DIR / member / f"{name}{PART_RECORD}"
    if record.is_file():
        print_line(f"localizer: {member} {name}: trained before, kept")
        return json.loads(record.read_text())
    entry = train_localizer(config, root, coords, run, index=index, progress=progress, member=member)
    write_json(entry, record)
    return entry


def check_reusable(
    previous: LocalizerRecord | None, config: LocalizerConfig, fold_ids: list[int], digest: str, run: Path
) -> bool:
    """True when `previous` (the run's localizer section) is a finished set of fold localizers with these
    settings, folds and coordinates; False when there is nothing to reuse, or a killed run to resume.

    Raises:
        StaleRunError: the run's localizers (finished or not) were trained with other settings, folds or
            coordinates: names each and how to train again.
    """
    if previous is None or previous.kind != LocalizerRecord.FOLDS:
        return False
    saved_config = LocalizerConfig.from_dict(previous.need.config).to_dict()
    changes = setting_changes(saved_config, config.to_dict(), RUN_ONLY)
    saved = previous.fold_ids or sorted(int(m.need.fold) for m in (previous.folds or {}).values())
    if saved != fold_ids:
        changes.append(f"folds: {saved} -> {fold_ids}")
    if previous.coordinates_sha1 not in (None, digest):
        changes.append("coordinates: other points (COORDS, COORDS_EXTRA or the competition's file changed)")
    if changes:
        raise StaleRunError(
            f"{run / MODEL_DIR} holds localizers trained with other settings or data ({'; '.join(changes)}): "
            "reusing them would keep points these settings never made; train again with FRESH=True in "
            f"02_train_localizer (pipeline: --fresh), or delete {run / MODEL_DIR}"
        )
    members = (previous.folds or {}).values()
    checkpoints = [run / m.need.checkpoint for f in members for m in f.need.models.values()]
    oof = previous.oof
    return bool(checkpoints) and all(c.is_file() for c in checkpoints) and bool(oof) and (run / oof).is_file()


def build_oof_crops(
    run: str | os.PathLike, data_dir: str | os.PathLike | None, workers: int = 1, progress: bool = True
) -> CacheReport:
    """The classifiers' crop cache around the out-of-fold points, with the ground-truth cache's parameters.

    Written under `RUN/OOF_CACHE_ROOT/` and recorded in the manifest (`OofCropsRecord`), where
    `03_train` finds it: the classifiers validate (and may train) on it, as the test predictions will be made.
    """
    run = Path(run)
    manifest = RunManifest.read(run)
    preprocess, localizer = manifest.preprocess, manifest.localizer
    if not (preprocess and preprocess.cache and localizer and localizer.oof):
        raise FileNotFoundError(
            f"{run}: out-of-fold crops need the ground-truth cache (01_preprocess) and "
            "out-of-fold coordinates (a localizer per fold, 02_train_localizer)"
        )
    params, _ = load_cache(run / preprocess.cache)
    oof = load_coordinates(run / localizer.oof)
    stale = run / OOF_CACHE_ROOT / params["cache_name"]
    built = json.loads((stale / "params.json").read_text()) if (stale / "params.json").is_file() else None
    if built is not None and built.get("coordinates_sha1") != coordinates_digest(oof):
        print(f"localizer: {stale} was cut around an earlier localizer's points: built again", flush=True)
        shutil.rmtree(stale)
    report = build_cache(
        oof,
        data_dir,
        "train",
        run / OOF_CACHE_ROOT,
        RoiConfig.from_overrides(params["config"]),
        workers=workers,
        progress=progress,
        coords_source=OOF_CSV,
    )
    save_record(
        run,
        OofCropsRecord(
            cache=report.cache_dir.relative_to(run).as_posix(),
            coords=OOF_CSV,
            samples=len(report.samples),
            failed=len(report.failures),
        ),
    )
    return report
