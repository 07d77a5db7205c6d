"""The whole inference: study folders in, a validated submission out (`python -m lumbar predict`).

index (headers) -> localize (level points) -> ROI crops -> every classifier x fold -> blend + calibration
-> fallback rows -> validation -> CSV.

Studies stream through in chunks (`chunk_studies`): each chunk's crops are built, predicted and deleted
before the next, so memory and disk do not grow with the size of the test set. Every study of the split
gets its 25 rows: a target that could not be localised or cropped (missing or unreadable series) gets the
class prior of the training labels, and the report names the study, the rows and why.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from lumbar.constants import GRADES
from lumbar.data.index import build_index
from lumbar.data.tables import load_submission, submission_row_ids
from lumbar.ensemble.blend import EnsembleParams, apply_ensemble
from lumbar.inference.submission import split_studies, validate_submission, write_submission
from lumbar.manifest import read_manifest
from lumbar.paths import data_root
from lumbar.preprocess.cache import build_cache, load_cache
from lumbar.preprocess.config import RoiConfig

STAGES = ("index", "localize", "crop", "classify", "blend")


@dataclass
class PredictReport:
    """What `predict` did: per-stage seconds, studies, and every row that fell back to the prior."""

    studies: list[int] = field(default_factory=list)
    fallback_rows: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    notes: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    def summary(self) -> str:
        n = max(len(self.studies), 1)
        lines = [
            f"predict: {len(self.studies)} studies, {self.total_seconds:.1f} s ({self.total_seconds / n:.2f} s/study: "
            + ", ".join(f"{k} {v / n:.2f}" for k, v in self.seconds.items())
            + ")"
        ]
        if self.fallback_rows:
            rows = sum(len(v) for v in self.fallback_rows.values())
            lines.append(
                f"predict: {rows} rows of {len(self.fallback_rows)} studies from the class prior (fallback):"
            )
            for study, ids in sorted(self.fallback_rows.items()):
                why = "; ".join(self.notes.get(study, [])) or "no crop"
                lines.append(f"  study {study}: {len(ids)} rows ({why})")
        return "\n".join(lines)


@dataclass
class Classifier:
    """One trained classifier of the ensemble: its run folder and the ROI parameters it was trained on."""

    name: str
    run_dir: Path
    roi: RoiConfig


def ensemble_members(run_dir: Path, manifest: dict) -> tuple[list[Classifier], EnsembleParams, pd.DataFrame]:
    """The classifiers the ensemble uses, the ensemble parameters and the fallback prior, from the manifest.

    Each classifier's ROI parameters come from its `result.json` (the cache it was trained on), so the
    test crops match the training crops; the prior is the training labels' (`lumbar.train.predict.grade_prior`).
    """
    from lumbar.train.predict import read_run

    ensemble = manifest.get("ensemble")
    if not ensemble:
        raise FileNotFoundError(f"{run_dir}/manifest.json has no ensemble: run 04_ensemble (or the pipeline) first")
    params = EnsembleParams.from_dict(json.loads((run_dir / ensemble["params"]).read_text()))
    members, prior = [], None
    for name in params.models:
        entry = manifest.get("classifiers", {}).get(name)
        if entry is None:
            raise KeyError(f"{run_dir}/manifest.json: the ensemble uses {name!r}, which is not among its classifiers")
        _, result = read_run(run_dir / entry["path"])
        members.append(Classifier(name, run_dir / entry["path"], RoiConfig.from_overrides(result["cache_params"]["config"])))
        prior = pd.DataFrame(result["prior"]) if prior is None else prior
    return members, params, prior


def _prior_rows(prior: pd.DataFrame, row_ids: list[str]) -> pd.DataFrame:
    """Class-prior rows (prior table: condition, level, normal_mild, moderate, severe) for row_ids."""
    keyed = prior.assign(key=prior["condition"] + "_" + prior["level"]).set_index("key")[list(GRADES)]
    keys = [r.split("_", 1)[1] for r in row_ids]
    return pd.DataFrame({"row_id": row_ids, **{g: keyed.loc[keys, g].to_numpy() for g in GRADES}})


def predict(data_dir, split: str, run_dir, out=None, work_dir=None, device: str = "auto",
            chunk_studies: int = 16, workers: int = 1, progress: bool = True) -> tuple[pd.DataFrame, PredictReport]:  # fmt: skip
    """Predict every study of a split with a run's localizer and ensemble.

    Args:
        data_dir: competition-layout data folder (only `<split>_images/` and, when present,
            `<split>_series_descriptions.csv` and `sample_submission.csv` are read).
        split: "test" (or "train", to predict labelled studies).
        run_dir: the run folder (manifest with localizer, classifiers and ensemble).
        out: write the submission CSV here (in sample_submission order when the data has one).
        work_dir: scratch folder for crops (default: `<run_dir>/predict_<split>`); must be writable.
        device: "auto", "cpu" or "cuda".
        chunk_studies: studies per chunk (memory and scratch space are bounded by one chunk).
        workers: processes for the header index and the crops.
        progress: tqdm bars.
    """
    from lumbar.localize.predict import Localizer
    from lumbar.train.predict import predict_cache

    root, run_dir = data_root(data_dir, must_exist=True), Path(run_dir)
    work_dir = Path(work_dir) if work_dir else run_dir / f"predict_{split}"
    manifest = read_manifest(run_dir)
    members, params, prior = ensemble_members(run_dir, manifest)
    report = PredictReport(studies=split_studies(root, split))

    t = time.perf_counter()
    index, index_report = build_index(root, split, workers=workers, studies=report.studies, progress=False)
    for path, problem in index_report.skipped:
        study = Path(path).parts[-3] if len(Path(path).parts) >= 3 else ""
        if study.isdigit():
            report.notes[int(study)].append(f"unreadable file {Path(path).name}: {problem}")
    report.seconds["index"] += time.perf_counter() - t
    localizer = Localizer(run_dir, device)
    by_study = dict(tuple(index.groupby("study_id")))
    parts = []
    chunks = [report.studies[i : i + chunk_studies] for i in range(0, len(report.studies), chunk_studies)]
    for chunk in tqdm(chunks, desc="predict", unit="chunk", disable=not progress):
        t = time.perf_counter()
        coords = []
        for study in chunk:
            if study not in by_study:
                report.notes[study].append("no readable images")
                continue
            table, notes, _ = localizer.localize_study(root, split, study, by_study[study])
            coords.append(table)
            report.notes[study] += notes
        coords = (
            pd.concat([c for c in coords if len(c)], ignore_index=True)
            if any(len(c) for c in coords)
            else None
        )
        report.seconds["localize"] += time.perf_counter() - t
        expected = submission_row_ids(chunk)
        covered = set()
        preds = {}
        if coords is not None:
            t = time.perf_counter()
            caches = {}
            for m in members:
                key = json.dumps(m.roi.to_dict(), sort_keys=True)
                if key not in caches:
                    rep = build_cache(
                        coords, root, split, work_dir / "crops", m.roi, workers=workers, progress=False
                    )
                    caches[key] = rep.cache_dir
                    for f in rep.failures.itertuples():
                        report.notes[int(f.study_id)].append(f"{f.condition} {f.level}: {f.error}")
            sample_sets = [set(load_cache(c)[1]["sample_id"]) for c in caches.values()]
            covered = set.intersection(*sample_sets) if sample_sets else set()
            report.seconds["crop"] += time.perf_counter() - t
            t = time.perf_counter()
            for m in members:
                cache = caches[json.dumps(m.roi.to_dict(), sort_keys=True)]
                preds[m.name] = predict_cache(m.run_dir, cache, device=device, study_ids=chunk)
            report.seconds["classify"] += time.perf_counter() - t
            shutil.rmtree(work_dir / "crops", ignore_errors=True)
        t = time.perf_counter()
        fallback = [r for r in expected if r not in covered]
        if preds:
            blended = apply_ensemble(preds, params)
            blended = blended[~blended["row_id"].isin(fallback)]
        else:
            blended = pd.DataFrame(columns=["row_id", *GRADES])
        parts += [blended, _prior_rows(prior, fallback)] if fallback else [blended]
        for r in fallback:
            report.fallback_rows[int(r.split("_", 1)[0])].append(r)
        report.seconds["blend"] += time.perf_counter() - t
    submission = pd.concat(parts, ignore_index=True)
    validate_submission(submission, expected_row_ids=submission_row_ids(report.studies), name="prediction")
    order = None
    if (root / "sample_submission.csv").is_file():
        sample = load_submission(root / "sample_submission.csv")["row_id"].tolist()
        order = sample if set(sample) == set(submission["row_id"]) else None
    if out is not None:
        write_submission(submission, out, order=order)
    if order is not None:
        submission = submission.set_index("row_id").loc[order].reset_index()
    return submission.reset_index(drop=True), report


def cli_predict(args: argparse.Namespace) -> int:
    """`python -m lumbar predict`."""
    sub, report = predict(args.data_dir, args.split, args.run, args.out, work_dir=args.work_dir, device=args.device,
                          chunk_studies=args.chunk_studies, workers=args.workers)  # fmt: skip
    print(report.summary())
    print(f"predict: wrote {os.fspath(args.out)} ({len(sub)} rows, {len(report.studies)} studies)")
    return 0
