"""Fit the ensemble of a run folder's classifiers and record it in the manifest (the 04_ensemble notebook).

Writes `<run>/ensemble/`: params.json (the chosen candidate, used at test time), fold_params.json, oof.csv
(its out-of-fold predictions), scores.csv (every candidate: each model, the plain mean, the blend, the
calibrated blend, the second stage and the widening on the best of them, with `chosen`) and
`candidates/<n>.csv` (every candidate's out-of-fold predictions, so the error analysis can compare the blend
before and after calibration), and the manifest's ensemble section (`lumbar.core.run_contract.EnsembleRecord`)
that `predict` and `kaggle-bundle` read (`candidates`: candidate name -> its file).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from lumbar.core.atomic import write_json
from lumbar.core.paths import data_root
from lumbar.core.run_contract import EnsembleRecord, RunManifest, save_record
from lumbar.core.tables import load_coordinates, load_labels, load_submission, write_csv
from lumbar.ensemble.blend import BLEND, CALIBRATED, MEAN, EnsembleResult, fit_ensemble
from lumbar.localize.confidence import row_confidence
from lumbar.scoring.baselines import out_of_fold_prior

ENSEMBLE_DIR = "ensemble"
CANDIDATES_DIR = "candidates"


def competition_classifiers(manifest: RunManifest) -> list[str]:
    """Names of the run's classifiers trained in competition mode (the ones that can be blended)."""
    return [name for name, c in (manifest.classifiers or {}).items() if c.mode == "competition"]


def oof_confidence(run_dir: Path, manifest: RunManifest) -> pd.DataFrame | None:
    """`row_id, confidence` of the rows the classifiers were validated on: the out-of-fold localizer's points
    (`cache_oof/`), when the run has them with confidences (runs before confidences were recorded: None)."""
    if manifest.oof_crops is None or manifest.localizer is None or manifest.localizer.oof is None:
        return None
    coords = load_coordinates(run_dir / manifest.localizer.oof)
    return row_confidence(coords) if "confidence" in coords else None


def _blended_classifiers(run_dir: Path, manifest: RunManifest, models: list[str] | None) -> list[str]:
    """The classifiers to blend, checked against the manifest before any table is read: a wrong name stops
    here with the names the run has."""
    names = models or competition_classifiers(manifest)
    if not names:
        raise ValueError(f"{run_dir}/manifest.json lists no competition-mode classifier to blend")
    classifiers = manifest.classifiers or {}
    unknown = [n for n in names if n not in classifiers]
    if unknown:
        raise KeyError(
            f"{run_dir}/manifest.json has no classifier(s) {unknown}; it has {sorted(classifiers)}"
        )
    return names


def _write_candidates(run_dir: Path, result: EnsembleResult) -> dict[str, str]:
    """Every candidate's out-of-fold predictions at `ensemble/candidates/<slug>.csv` (a slug made unique
    by trailing underscores), so the error analysis can compare them; candidate name -> file."""
    candidates = {}
    for name, oof in result.candidates.items():
        slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")  # "blend + calibration (out-of-fold)"
        while f"{ENSEMBLE_DIR}/{CANDIDATES_DIR}/{slug}.csv" in candidates.values():
            slug += "_"
        candidates[name] = f"{ENSEMBLE_DIR}/{CANDIDATES_DIR}/{slug}.csv"
        write_csv(oof, run_dir / candidates[name])
    return candidates


def _write_ensemble(run_dir: Path, result: EnsembleResult) -> dict[str, str]:
    """The ensemble folder: the chosen candidate's params (what `predict` uses), the per-fold params, its
    out-of-fold predictions, every candidate's score and predictions; returns the candidates' files."""
    out = run_dir / ENSEMBLE_DIR
    write_json(result.params.to_dict(), out / "params.json")
    write_json({k: v.to_dict() for k, v in result.fold_params.items()}, out / "fold_params.json")
    write_csv(result.oof, out / "oof.csv")
    write_csv(result.scores, out / "scores.csv")
    return _write_candidates(run_dir, result)


def _record_ensemble(
    run_dir: Path,
    names: list[str],
    result: EnsembleResult,
    candidates: dict[str, str],
    folds_csv: str,
    per_group: bool,
    calibrate: bool,
) -> None:
    """The manifest's ensemble section, what `predict` and `kaggle-bundle` read: the files, the settings, the
    chosen candidate and its out-of-fold score."""
    chosen = result.scores.set_index("model").loc[result.chosen]
    save_record(
        run_dir,
        EnsembleRecord(
            models=names,
            params=f"{ENSEMBLE_DIR}/params.json",
            oof=f"{ENSEMBLE_DIR}/oof.csv",
            scores=f"{ENSEMBLE_DIR}/scores.csv",
            folds=folds_csv,
            per_group=per_group,
            calibrate=calibrate,
            chosen=result.chosen,
            widening=result.params.widening is not None,
            stack=result.params.stack is not None,
            oof_score=float(chosen["score"]),
            candidates=candidates,
        ),
    )


def fit_run_ensemble(
    run_dir: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    models: list[str] | None = None,
    per_group: bool = True,
    calibrate: bool = True,
    folds_csv: str = "folds.csv",
    widen: bool = True,
    stack: bool = True,
) -> EnsembleResult:
    """Fit fold-wise blend + calibration on the classifiers' OOF predictions and record it.

    Args:
        run_dir: the run folder (manifest with `classifiers`).
        data_dir: data folder with train.csv (labels).
        models: classifier names (default: every competition-mode classifier of the manifest).
        per_group: blend weights per metric group, else one vector.
        calibrate: fit temperatures and the spinal severe scale.
        folds_csv: the run's folds file, relative to the run folder.
        widen: make "the best candidate widened by localisation confidence" a candidate, when the
            classifiers were validated on the out-of-fold localizer's crops and its points have confidences.
        stack: make the study-level second stage (`lumbar.ensemble.stack`) on the best candidate a candidate.
    """
    run_dir = Path(run_dir)
    manifest = RunManifest.read(run_dir)
    names = _blended_classifiers(run_dir, manifest, models)
    classifiers = manifest.classifiers or {}
    preds = {n: load_submission(run_dir / classifiers[n].need.oof) for n in names}
    labels = load_labels(data_root(data_dir) / "train.csv")
    folds = pd.read_csv(run_dir / folds_csv)
    confidence = oof_confidence(run_dir, manifest) if widen else None
    prior = out_of_fold_prior(labels, folds) if confidence is not None else None
    result = fit_ensemble(
        preds,
        labels,
        folds,
        per_group=per_group,
        calibrate=calibrate,
        confidence=confidence,
        prior=prior,
        stack=stack,
    )
    candidates = _write_ensemble(run_dir, result)
    _record_ensemble(run_dir, names, result, candidates, folds_csv, per_group, calibrate)
    return result


def run_oof_predictions(run_dir: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """Out-of-fold predictions of a run by name: every ensemble candidate `04_ensemble` recorded.

    A run whose ensemble predates the candidate files gets each classifier's and the chosen candidate's.

    Raises:
        ManifestError (a FileNotFoundError): the manifest has no ensemble (run 04_ensemble first).
    """
    run_dir = Path(run_dir)
    manifest = RunManifest.read(run_dir)
    ensemble = manifest.need.ensemble
    files = ensemble.candidates or {
        **{n: manifest.classifier(n).need.oof for n in ensemble.need.models},
        ensemble.need.chosen: ensemble.need.oof,
    }
    return {name: load_submission(run_dir / path) for name, path in files.items()}


def calibration_pair(names: list[str]) -> tuple[str | None, str | None]:
    """The candidates before and after the ensemble's calibration, among a run's out-of-fold prediction names:
    the blend (with one model, that model) and the calibrated blend; None where the run has no such
    candidate."""
    models = [n for n in names if n not in (BLEND, CALIBRATED, MEAN)]
    before = BLEND if BLEND in names else (models[0] if len(models) == 1 else None)
    return before, CALIBRATED if CALIBRATED in names else None
