"""The whole inference: study folders in, a validated submission out (`python -m lumbar predict`).

index (headers) -> localize (level points) -> ROI crops -> every classifier x fold -> blend + calibration
-> fallback rows -> validation -> CSV, and the run's record beside it (`<out>.json`).

Studies stream through in chunks (`chunk_studies`): each chunk's crops are built, predicted and deleted
before the next, so memory and disk do not grow with the size of the test set. The localizer and every
classifier's fold models are built and loaded once (`lumbar.train.predict.RunPredictor`) and stay on the
device for all chunks. The ensemble can be capped (`max_folds`, `max_members`, or a `time_budget_s` that
`lumbar.inference.budget` turns into a cap after timing the first chunk). Every study of the split
gets its 25 rows: a target that could not be localised or cropped (missing or unreadable series) gets the
class prior of the training labels, and the report names the study, the rows and why. Only the errors bad
data raises are survived (`lumbar.core.fallback.DATA_ERRORS`), and when more than `max_fallback_share` of the
studies fall back the run fails, naming them.

Inference only reads the run folder and the data folder (on Kaggle both are read-only datasets under
`/kaggle/input`): crops go to `work_dir` (a temporary folder unless given), the submission and its record
to `out`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from lumbar.core.atomic import write_json
from lumbar.core.fallback import DATA_ERRORS, MAX_FALLBACK_SHARE, check_fallbacks
from lumbar.core.paths import data_root
from lumbar.core.run_contract import RunManifest
from lumbar.core.tables import load_submission, row_study_ids, submission_row_ids
from lumbar.data.index import build_index
from lumbar.ensemble.blend import EnsembleParams, apply_ensemble
from lumbar.inference.budget import EnsemblePlan, plan_to_budget, restrict_params, static_plan
from lumbar.localize.confidence import row_confidence
from lumbar.localize.predict import Localizer
from lumbar.preprocess.cache import CacheReport, build_cache
from lumbar.preprocess.config import RoiConfig
from lumbar.scoring.baselines import prior_rows
from lumbar.scoring.submission import split_studies, validate_submission, write_submission
from lumbar.train.predict import RunPredictor, read_run

STAGES = ("index", "localize", "crop", "classify", "blend")


@dataclass
class PredictReport:
    """What `predict` did: per-stage seconds, studies, and every row that fell back to the prior.

    `forward_seconds` is the part of the localize and classify stages spent in the models (the rest is reading
    DICOM files, resampling and cropping): what a faster device shortens; `member_seconds` the classify
    stage per ensemble member; `ensemble` the members and folds used and their weights' size.
    """

    studies: list[int] = field(default_factory=list)
    fallback_rows: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    notes: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    member_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    forward_seconds: dict[str, float] = field(default_factory=lambda: {"localize": 0.0, "classify": 0.0})
    ensemble: dict = field(default_factory=dict)
    coordinates: pd.DataFrame | None = field(default=None, repr=False)  # the points the crops came from
    budget_stopped: list[int] = field(default_factory=list)  # studies left to the prior when time ran out

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    def why(self, study: int) -> str:
        """Why a study has fallback rows (its notes), for messages."""
        return "; ".join(self.notes.get(study, [])) or "no crop"

    def summary(self) -> str:
        n = max(len(self.studies), 1)
        lines = [
            f"predict: {len(self.studies)} studies, {self.total_seconds:.1f} s "
            f"({self.total_seconds / n:.2f} s/study: "
            + ", ".join(f"{k} {v / n:.2f}" for k, v in self.seconds.items())
            + ")"
        ]
        if self.ensemble:
            lines.append(
                f"predict: ensemble {self.ensemble['used']} ({self.ensemble['models']} models "
                f"loaded once, {self.ensemble['model_mib']:.0f} MiB of weights)"
                + (f"; {self.ensemble['plan']}" if self.ensemble.get("plan") else "")
            )
        if self.budget_stopped:
            lines.append(
                f"predict: the time budget ran out: {len(self.budget_stopped)} studies were not "
                "predicted (prior rows)"
            )
        if self.fallback_rows:
            rows = sum(len(v) for v in self.fallback_rows.values())
            lines.append(
                f"predict: {rows} rows of {len(self.fallback_rows)} studies from the class prior (fallback):"
            )
            for study, ids in sorted(self.fallback_rows.items()):
                lines.append(f"  study {study}: {len(ids)} rows ({self.why(study)})")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The record written beside the submission (JSON-ready)."""
        n = max(len(self.studies), 1)
        return {
            "studies": len(self.studies),
            "fallback_studies": {
                str(s): {"rows": len(r), "why": self.why(s)} for s, r in sorted(self.fallback_rows.items())
            },
            "fallback_rows": sum(len(r) for r in self.fallback_rows.values()),
            "budget_stopped_studies": len(self.budget_stopped),
            "notes": {str(s): v for s, v in sorted(self.notes.items()) if v},
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "seconds_per_study": round(self.total_seconds / n, 3),
            "member_seconds": {k: round(v, 3) for k, v in self.member_seconds.items()},
            "forward_seconds": {k: round(v, 3) for k, v in self.forward_seconds.items()},
            "ensemble": self.ensemble,
        }


def record_path(out: str | os.PathLike) -> Path:
    """Where `predict` records a submission's run: beside it, `<name>.json`."""
    return Path(out).with_suffix(".json")


@dataclass
class Classifier:
    """One trained classifier of the ensemble: its run folder and the ROI parameters it was trained on."""

    name: str
    run_dir: Path
    roi: RoiConfig


def ensemble_members(
    run_dir: Path, manifest: RunManifest | dict
) -> tuple[list[Classifier], EnsembleParams, pd.DataFrame]:
    """The classifiers the ensemble uses, the ensemble parameters and the fallback prior, from the manifest.

    Each classifier's ROI parameters come from its `result.json` (the cache it was trained on), so the
    test crops match the training crops; the prior is the training labels'
    (`lumbar.train.predict.grade_prior`).
    """

    manifest = manifest if isinstance(manifest, RunManifest) else RunManifest.from_dict(manifest, run_dir)
    params = EnsembleParams.from_dict(json.loads((run_dir / manifest.need.ensemble.need.params).read_text()))
    members, prior = [], None
    for name in params.models:
        entry = (manifest.classifiers or {}).get(name)
        if entry is None:
            raise KeyError(
                f"{run_dir}/manifest.json: the ensemble uses {name!r}, which is not among its classifiers"
            )
        folder = run_dir / entry.need.path
        _, result = read_run(folder)
        members.append(Classifier(name, folder, RoiConfig.from_overrides(result["cache_params"]["config"])))
        prior = pd.DataFrame(result["prior"]) if prior is None else prior
    return members, params, prior


def blend_members(
    preds: dict[str, pd.DataFrame], params: EnsembleParams, prior: pd.DataFrame, points: pd.DataFrame | None
) -> pd.DataFrame:
    """The ensemble of the members' predictions of some studies, as the submission makes it: the predicted
    `points` give each row its localisation confidence and `prior` (condition x level table) the rows a
    widening ensemble moves doubtful rows towards."""
    ids = next(iter(preds.values()))["row_id"].astype(str).tolist()
    confidence = row_confidence(points) if points is not None else None
    return apply_ensemble(preds, params, confidence, prior_rows(prior, ids))


@contextmanager
def scratch_folder(work_dir: str | os.PathLike | None) -> Iterator[Path]:
    """`work_dir` (created), or a temporary folder removed afterwards: never the run or data folder."""
    if work_dir:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        yield Path(work_dir)
        return
    with tempfile.TemporaryDirectory(prefix="lumbar-predict-") as tmp:
        yield Path(tmp)


#: What `predict` does with an error that is not a data error (`DATA_ERRORS`) inside a chunk of studies.
ON_ERROR = ("raise", "prior")


@dataclass(frozen=True)
class PredictOptions:
    """How `predict` runs, apart from what it reads and writes: one value the CLI, the notebooks, the demo and
    the benchmarks fill with only what they change (the defaults are a local run's).

    Attributes:
        work_dir: scratch folder for crops (default: a temporary folder, removed at the end).
        device: "auto", "cpu" or "cuda".
        chunk_studies: studies per chunk (memory and scratch space are bounded by one chunk).
        workers: processes for the header index and the crops.
        progress: tqdm bars.
        max_fallback_share: the share of studies that may have rows from the prior (always at least one
            study); more fail the run (`lumbar.core.fallback.FallbackLimitError`) naming each and why. 1.0:
            never fail (the Kaggle kernel: a submission with prior rows beats none).
        max_folds: use the first this many folds of every classifier (0 = all).
        max_members: use this many members of the ensemble with the largest blend weights (0 = all; the
            kept weights renormalised).
        time_budget_s: seconds the call may take (0 = no limit): the first chunk runs the ensemble as capped
            above and is timed; the later chunks use the largest cap projected to fit
            (`lumbar.inference.budget.plan_to_budget`); a chunk that would end past the budget is not
            started, and its studies and all after it get prior rows (noted, counted in the record).
        place_foramina: a study without Sagittal T1 gets its foramina from its canal (`Localizer` of
            `lumbar.localize.predict`; off: the prior's rows, which scored better on a fresh set).
        on_error: "raise": an error that is not a data error propagates (a programming error must be seen);
            "prior": it gives the chunk's studies prior rows, noted with the error (the Kaggle kernel).
    """

    work_dir: str | os.PathLike | None = None
    device: str = "auto"
    chunk_studies: int = 16
    workers: int = 1
    progress: bool = True
    max_fallback_share: float = MAX_FALLBACK_SHARE
    max_folds: int = 0
    max_members: int = 0
    time_budget_s: float = 0.0
    on_error: str = "raise"
    place_foramina: bool = False


def predict(
    data_dir,
    split: str,
    run_dir,
    out=None,
    options: PredictOptions | None = None,
    *,
    coords: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, PredictReport]:
    """Predict every study of a split with a run's localizer and ensemble.

    Args:
        data_dir: competition-layout data folder (only `<split>_images/` and, when present,
            `<split>_series_descriptions.csv` and `sample_submission.csv` are read).
        split: "test" (or "train", to predict labelled studies).
        run_dir: the run folder (manifest with localizer, classifiers and ensemble); only read.
        out: write the submission CSV here (in sample_submission order when the data has one), and the
            run's record (`PredictReport.to_dict`, the run and data folders) beside it (`record_path`).
        options: how to run (`PredictOptions`; default: its defaults).
        coords: crop around these points instead of the localizer's (e.g. the synthetic test studies' label
            points: the same models on ground-truth crops show what localisation costs).
    """
    options = PredictOptions() if options is None else options
    if options.on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {options.on_error!r}")
    clock = _Clock(options.time_budget_s)
    root, run_dir = data_root(data_dir, must_exist=True), Path(run_dir)
    report = PredictReport(studies=split_studies(root, split))
    # JSON only: the prior is known before any model is built
    members, params, prior = ensemble_members(run_dir, RunManifest.read(run_dir))
    # by default only data errors, caught per study
    survive = (Exception,) if options.on_error == "prior" else ()
    job = _Job(root, split, run_dir, options, coords, clock, survive)
    try:
        parts = _predict_chunks(job, members, params, prior, report)
    except survive as e:  # models not built or loaded, the index not read: every row from the prior
        parts = [_fall_back(report.studies, prior, report, f"no prediction ({type(e).__name__}: {e})")]
    check_fallbacks(
        {s: report.why(s) for s in report.fallback_rows},
        len(report.studies),
        options.max_fallback_share,
        "studies",
    )
    return _write(pd.concat(parts, ignore_index=True), root, run_dir, split, out, report)


@dataclass(frozen=True)
class _Job:
    """What one `predict` call works on and how (the arguments its stages share)."""

    root: Path
    split: str
    run_dir: Path
    options: PredictOptions
    coords: pd.DataFrame | None
    clock: _Clock
    survive: tuple[type[BaseException], ...]


@dataclass(frozen=True)
class _Ensemble:
    """The ensemble as loaded for a call: the members in use and their blend parameters (a time budget may cut
    both after the first chunk), the static plan that loaded them, each member's folds, the loaded models."""

    members: list[Classifier]
    params: EnsembleParams
    plan: EnsemblePlan
    available: dict[str, int]
    predictors: dict[str, RunPredictor]


def _predict_chunks(
    job: _Job, members: list[Classifier], params: EnsembleParams, prior: pd.DataFrame, report: PredictReport
) -> list[pd.DataFrame]:
    """Index, load every model once, then localise, crop, classify and blend chunk by chunk."""
    options = job.options
    available = {m.name: member_folds(m.run_dir) for m in members}
    plan = static_plan(params, available, options.max_folds, options.max_members)
    members, params = [m for m in members if m.name in plan.members], restrict_params(params, plan.members)
    by_study = _index_studies(job.root, job.split, options.workers, report)
    localizer = (
        Localizer(job.run_dir, options.device, place_foramina=options.place_foramina)
        if job.coords is None
        else None
    )
    studies = report.studies
    chunks = [studies[i : i + options.chunk_studies] for i in range(0, len(studies), options.chunk_studies)]
    parts = []
    with scratch_folder(options.work_dir) as scratch, ExitStack() as stack:
        predictors = _load_members(members, plan, available, options.device, stack, report)
        ensemble = _Ensemble(members, params, plan, available, predictors)
        for i, chunk in enumerate(tqdm(chunks, desc="predict", unit="chunk", disable=not options.progress)):
            if job.clock.out_of_time(len(chunk)):
                rest = [s for c in chunks[i:] for s in c]
                parts.append(_fall_back(rest, prior, report, job.clock.why_stopped(len(rest))))
                report.budget_stopped = rest
                break
            t = time.perf_counter()
            try:
                points = (
                    _localize_chunk(localizer, job.root, job.split, chunk, by_study, report)
                    if job.coords is None
                    else _given_points(job.coords, chunk)
                )
                if points is not None:
                    report.coordinates = pd.concat([report.coordinates, points], ignore_index=True)
                preds, covered = _classify_chunk(job, ensemble, points, chunk, scratch / "crops", report)
                parts.append(_blend_chunk(chunk, preds, covered, ensemble.params, prior, points, report))
            except job.survive as e:
                shutil.rmtree(scratch / "crops", ignore_errors=True)
                parts.append(_fall_back(chunk, prior, report, f"chunk failed ({type(e).__name__}: {e})"))
            job.clock.chunk_done(len(chunk), time.perf_counter() - t)
            if job.clock.budget_s and i == 0 and len(chunks) > 1 and report.member_seconds:
                ensemble = _fit_to_budget(job.clock, chunk, chunks, report, ensemble)
        report.forward_seconds["classify"] = sum(p.forward_seconds for p in predictors.values())
    if localizer is not None:
        report.forward_seconds["localize"] = localizer.forward_seconds
    return parts


class _Clock:
    """The time budget of one `predict` call: seconds since the start, and whether the next chunk still fits.

    A chunk is projected at the seconds per study of the chunks run under the current ensemble (after the
    first chunk the budget may cut the ensemble: `restart` then projects from the plan until a chunk has run).
    """

    def __init__(self, budget_s: float) -> None:
        self.budget_s, self.started = budget_s, time.perf_counter()
        self.studies, self.seconds, self.projected_per_study = 0, 0.0, 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def chunk_done(self, studies: int, seconds: float) -> None:
        self.studies, self.seconds = self.studies + studies, self.seconds + seconds

    def restart(self, projected_per_study: float) -> None:
        """A new ensemble from the next chunk on: forget the chunks run with the old one."""
        self.studies, self.seconds, self.projected_per_study = 0, 0.0, projected_per_study

    def per_study(self) -> float:
        return self.seconds / self.studies if self.studies else self.projected_per_study

    def out_of_time(self, studies: int) -> bool:
        """True when a chunk of `studies` would end past the budget (never before the first chunk)."""
        if not self.budget_s or (not self.studies and not self.projected_per_study):
            return False
        return self.elapsed() + studies * self.per_study() > self.budget_s

    def why_stopped(self, studies: int) -> str:
        return (
            f"not predicted: the time budget of {self.budget_s:g} s would run out "
            f"({self.elapsed():.0f} s spent, "
            f"~{self.per_study():.1f} s per study, {studies} studies left)"
        )


def _index_studies(root: Path, split: str, workers: int, report: PredictReport) -> dict[int, pd.DataFrame]:
    """The split's header index by study; unreadable files are noted against their study."""
    t = time.perf_counter()
    index, index_report = build_index(root, split, workers=workers, studies=report.studies, progress=False)
    for path, problem in index_report.skipped:
        study = Path(path).parts[-3] if len(Path(path).parts) >= 3 else ""
        if study.isdigit():
            report.notes[int(study)].append(f"unreadable file {Path(path).name}: {problem}")
    report.seconds["index"] += time.perf_counter() - t
    return dict(tuple(index.groupby("study_id")))


def _given_points(coords: pd.DataFrame, chunk: list[int]) -> pd.DataFrame | None:
    points = coords[coords["study_id"].isin(chunk)]
    return points if len(points) else None


def _blend_chunk(
    chunk: list[int],
    preds: dict[str, pd.DataFrame],
    covered: set[str],
    params: EnsembleParams,
    prior: pd.DataFrame,
    points: pd.DataFrame | None,
    report: PredictReport,
) -> pd.DataFrame:
    """A chunk's rows: the ensemble's where every member could predict, the prior's for the rest (counted)."""
    t = time.perf_counter()
    fallback = [r for r in submission_row_ids(chunk) if r not in covered]
    parts = []
    if preds:
        blended = blend_members(preds, params, prior, points)
        parts.append(blended[blended["row_id"].isin(covered)])
    if fallback:
        parts.append(prior_rows(prior, fallback))
    for study, r in zip(row_study_ids(fallback), fallback):
        report.fallback_rows[int(study)].append(r)
    report.seconds["blend"] += time.perf_counter() - t
    return pd.concat(parts, ignore_index=True) if parts else prior_rows(prior, [])


def _fall_back(studies: list[int], prior: pd.DataFrame, report: PredictReport, why: str) -> pd.DataFrame:
    """Prior rows for every target of `studies` (their earlier rows, if any, are replaced), noted with
    `why`."""
    ids = submission_row_ids(studies)
    for study in studies:
        report.notes[study].append(why)
        report.fallback_rows[study] = [r for r in ids if r.startswith(f"{study}_")]
    return prior_rows(prior, ids)


def _fit_to_budget(
    clock: _Clock, chunk: list[int], chunks: list[list[int]], report: PredictReport, ensemble: _Ensemble
) -> _Ensemble:
    """After the timed first chunk: the largest ensemble whose projection fits the budget, from the next chunk
    on."""
    plan = ensemble.plan
    done = len(chunk)
    remaining = sum(map(len, chunks)) - done
    fixed = (report.total_seconds - report.seconds["index"] - report.seconds["classify"]) / done
    fold_s = {m: report.member_seconds[m] / (done * plan.folds[m]) for m in plan.members}
    budget = plan_to_budget(clock.budget_s, clock.elapsed(), remaining, fixed, fold_s, plan, ensemble.params)
    clock.restart((budget.projected_s - clock.elapsed()) / max(remaining, 1))
    return _apply_plan(budget, ensemble, report)


def _write(
    submission: pd.DataFrame, root: Path, run_dir: Path, split: str, out, report: PredictReport
) -> tuple:
    """Validate the submission against the split, write it (sample_submission's order) and its record."""
    validate_submission(submission, expected_row_ids=submission_row_ids(report.studies), name="prediction")
    order = None
    if (root / "sample_submission.csv").is_file():
        sample = load_submission(root / "sample_submission.csv")["row_id"].tolist()
        order = sample if set(sample) == set(submission["row_id"]) else None
    if out is not None:
        write_submission(submission, out, order=order)
        record = {
            "submission": Path(out).name,
            "run_dir": str(run_dir.resolve()),
            "data_dir": str(root.resolve()),
            "split": split,
            **report.to_dict(),
        }
        write_json(record, record_path(out))
    if order is not None:
        submission = submission.set_index("row_id").loc[order].reset_index()
    return submission.reset_index(drop=True), report


def _localize_chunk(
    localizer, root: Path, split: str, chunk: list[int], by_study: dict, report: PredictReport
):
    """Predicted coordinates of a chunk's studies (None when none could be localised); notes go to the report.

    A study whose data breaks the localizer (`DATA_ERRORS`) is noted and gets no points; its rows fall back.
    """
    t = time.perf_counter()
    coords = []
    for study in chunk:
        if study not in by_study:
            report.notes[study].append("no readable images")
            continue
        try:
            table, notes, _ = localizer.localize_study(root, split, study, by_study[study])
        except DATA_ERRORS as e:
            report.notes[study].append(f"localisation failed ({type(e).__name__}: {e})")
            continue
        coords.append(table)
        report.notes[study] += notes
    report.seconds["localize"] += time.perf_counter() - t
    coords = [c for c in coords if len(c)]
    return pd.concat(coords, ignore_index=True) if coords else None


def member_folds(run_dir: Path) -> int:
    """The most folds any unit of a classifier run has (what `max_folds` caps)."""

    _, result = read_run(run_dir)
    return max((len(u["checkpoints"]) for u in result["units"].values()), default=0)


def _load_members(
    members: list[Classifier],
    plan: EnsemblePlan,
    available: dict[str, int],
    device: str,
    stack: ExitStack,
    report: PredictReport,
) -> dict:
    """One `RunPredictor` per member, its fold models built and loaded once, closed with `stack`."""

    predictors = {
        m.name: stack.enter_context(RunPredictor(m.run_dir, device, max_folds=plan.folds[m.name]))
        for m in members
    }
    report.ensemble = {
        "used": plan.describe(available),
        "models": sum(p.n_models for p in predictors.values()),
        "model_mib": round(sum(p.parameter_bytes for p in predictors.values()) / 2**20, 1),
        "precision": sorted({p.runtime.precision for p in predictors.values()}),
    }
    return predictors


def _apply_plan(budget: EnsemblePlan, ensemble: _Ensemble, report: PredictReport) -> _Ensemble:
    """Cut the loaded ensemble to a budget plan (for the chunks after the timed first one)."""
    for name, predictor in ensemble.predictors.items():
        predictor.limit_folds(budget.folds.get(name, 0))
    report.ensemble["plan"] = (
        f"time budget: after the first chunk, {budget.describe(ensemble.available)}; "
        f"projected {budget.projected_s:.0f} s" + ("" if budget.fits else " (over the budget even so)")
    )
    return replace(
        ensemble,
        members=[m for m in ensemble.members if m.name in budget.members],
        params=restrict_params(ensemble.params, budget.members),
    )


def _classify_chunk(
    job: _Job,
    ensemble: _Ensemble,
    coords: pd.DataFrame | None,
    chunk: list[int],
    crops: Path,
    report: PredictReport,
) -> tuple[dict[str, pd.DataFrame], set[str]]:
    """Each member's predictions of a chunk, and the row_ids whose crop every member could build (the rest
    fall back; no predictions at all when no crop could be built).

    Crops are built once per distinct ROI configuration, predicted by the members' loaded models, and deleted
    with the chunk. A failed crop is noted in the report; its target falls back to the prior (the limit of
    `predict` counts it).
    """
    if coords is None:
        return {}, set()
    t = time.perf_counter()
    members = ensemble.members
    caches = member_crops(members, coords, job.root, job.split, crops, job.options.workers)
    for rep in caches.values():
        for f in rep.failures.itertuples():
            report.notes[int(f.study_id)].append(f"{f.condition} {f.level}: {f.error}")
    covered = set.intersection(*(set(rep.samples["sample_id"]) for rep in caches.values()))
    report.seconds["crop"] += time.perf_counter() - t
    preds = {}
    if covered:
        for m in members:
            t = time.perf_counter()
            cache = caches[roi_key(m.roi)].cache_dir
            preds[m.name] = ensemble.predictors[m.name].predict(cache, study_ids=chunk)
            seconds = time.perf_counter() - t
            report.seconds["classify"] += seconds
            report.member_seconds[m.name] += seconds
    shutil.rmtree(crops, ignore_errors=True)
    return preds, covered


def roi_key(roi: RoiConfig) -> str:
    """Members whose ROI parameters give the same key share one crop cache."""
    return json.dumps(roi.to_dict(), sort_keys=True)


def member_crops(
    members: list[Classifier], coords: pd.DataFrame, root: Path, split: str, crops: Path, workers: int = 1
) -> dict[str, CacheReport]:
    """The crops of `coords` under `crops`, one cache per distinct ROI configuration of the members (`roi_key`
    -> its build report, in the members' order): how `predict` and the study viewer crop alike; a failed crop
    is in its report's failures."""
    caches = {}
    for m in members:
        key = roi_key(m.roi)
        if key not in caches:
            caches[key] = build_cache(
                coords, root, split, crops, m.roi, workers=workers, progress=False, max_failed_share=1.0
            )
    return caches


def cli_predict(args: argparse.Namespace) -> int:
    """`python -m lumbar predict`."""
    options = PredictOptions(
        work_dir=args.work_dir,
        device=args.device,
        chunk_studies=args.chunk_studies,
        workers=args.workers,
        max_fallback_share=args.max_fallback_share,
        max_folds=args.max_folds,
        max_members=args.max_members,
        time_budget_s=args.time_budget,
        on_error=args.on_error,
    )
    sub, report = predict(args.data_dir, args.split, args.run, args.out, options)
    print(report.summary())
    print(
        f"predict: wrote {os.fspath(args.out)} ({len(sub)} rows, {len(report.studies)} studies) and "
        f"{record_path(args.out)}"
    )
    return 0
