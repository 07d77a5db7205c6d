"""A trained run judged on a synthetic set no training or tuning saw: `python -m lumbar fresh-eval`.

The demo's own 20 test studies swing the score by more than 0.3 between seeds, and a mean hides the few
studies in which the localizer is lost. This draws a new set (its own seed, optionally another image size or
STIR rate than training), predicts its test studies exactly as the submission would, and reports the test
score beside the generator's oracle and the class prior, the per-study and per-target loss distribution
(`lumbar.analysis.robustness`), the worst studies, and the localisation error of the predicted points.
Everything goes into one folder: the data (reused when it is already there), the submission, the predicted
coordinates, `studies.csv`, `targets.csv` and `fresh_eval.json`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pandas as pd

from lumbar.analysis.robustness import reference_tails, robustness_report, summary_line, tails_line
from lumbar.core.atomic import write_json
from lumbar.core.run_contract import RunManifest
from lumbar.core.tables import (
    load_coordinates,
    load_labels,
    load_submission,
    write_coordinates,
)
from lumbar.data.index import load_or_build_index
from lumbar.data.synthetic import SynthConfig, generate
from lumbar.inference.predict import PredictOptions, predict
from lumbar.localize.evaluate import localization_errors, summarize
from lumbar.localize.evaluate import summary_line as localize_line
from lumbar.scoring.metric import score_test_set


def set_folder(out: Path, seed: int, image_size: int, stir_rate: float) -> Path:
    return out / f"seed{seed}_{image_size}px_stir{stir_rate:g}"


def run_training_labels(run_dir: Path) -> pd.DataFrame | None:
    """The labels the run trained on (its pipeline's data folder), for the class prior; None when absent."""
    pipeline = RunManifest.read(run_dir).pipeline
    data_dir = pipeline.data_dir if pipeline else None
    path = Path(data_dir) / "train.csv" if data_dir else None
    return load_labels(path) if path is not None and path.is_file() else None


def fresh_eval(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    seed: int,
    test_studies: int = 100,
    image_size: int = 128,
    stir_rate: float = 0.25,
    device: str = "auto",
    workers: int = 2,
    progress: bool = True,
) -> dict:
    """Generate (or reuse) a fresh synthetic set, predict its test studies with the run, score them.

    Returns:
        The summary written to `fresh_eval.json`: test score, oracle and prior (the prior from the run's own
        training labels when its data folder is still there, else from the fresh set's few train studies),
        the loss distribution (`robustness.loss_summary`), the worst studies, the oracle's and the prior's
        loss tails on the same targets (`robustness.reference_tails`) and the localisation summary.
    """

    run_dir = Path(run_dir)
    folder = set_folder(Path(out), seed, image_size, stir_rate)
    data = folder / "data"
    if not (data / "test_labels.csv").is_file():
        config = SynthConfig(
            studies=1, test_studies=test_studies, seed=seed, image_size=image_size, stir_rate=stir_rate
        )
        generate(data, config, oracle=data / "oracle.csv", workers=workers, overwrite=True)
    options = PredictOptions(device=device, workers=workers, progress=progress, max_fallback_share=1.0)
    submission, report = predict(data, "test", run_dir, out=folder / "submission.csv", options=options)
    labels = load_labels(data / "test_labels.csv")
    studies = sorted(labels["study_id"].unique())
    prior_labels = run_training_labels(run_dir)
    prior_labels = prior_labels if prior_labels is not None else load_labels(data / "train.csv")
    summary, per_study, per_target = robustness_report(labels, submission)
    oracle = load_submission(data / "oracle.csv")
    scores, references = score_test_set(labels, submission, prior_labels, oracle)
    result = {
        "run": str(run_dir),
        "seed": seed,
        "image_size": image_size,
        "stir_rate": stir_rate,
        "test_studies": len(studies),
        "test_score": scores["submission"],
        "oracle": scores["oracle"],
        "prior": scores["prior"],
        "fallback_studies": len(report.fallback_rows),
        **summary,
        "tails": reference_tails(per_target, labels, references),
    }
    if report.coordinates is not None and len(report.coordinates):
        write_coordinates(report.coordinates, folder / "coordinates.csv")
        truth = load_coordinates(data / "test_label_coordinates.csv")
        errors = localization_errors(report.coordinates, truth, load_or_build_index(data, "test"))
        result["localize"] = localize_line(summarize(errors))
    per_study.to_csv(folder / "studies.csv", index=False)
    per_target.to_csv(folder / "targets.csv", index=False)
    write_json(result, folder / "fresh_eval.json")
    return result


def result_line(r: dict) -> str:
    head = (
        f"fresh-eval: seed={r['seed']} image_size={r['image_size']} stir_rate={r['stir_rate']:g} "
        f"studies={r['test_studies']} test_score={r['test_score']:.4f} oracle={r['oracle']:.4f} "
        f"prior={r['prior']:.4f}"
    )
    line = head + " " + summary_line(r) + f" worst_studies={r['worst_studies']}"
    return line + ("\n  beside it, " + tails_line(r["tails"]) if "tails" in r else "")


def cli_fresh_eval(args: argparse.Namespace) -> int:
    """`python -m lumbar fresh-eval`: one line per seed, the localisation summary under it."""
    for seed in args.seeds:
        r = fresh_eval(
            args.run,
            args.out,
            seed,
            args.test_studies,
            args.image_size,
            args.stir_rate,
            args.device,
            args.workers,
        )
        print(result_line(r))
        if "localize" in r:
            print("  " + r["localize"])
    return 0
