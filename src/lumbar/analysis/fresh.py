"""A trained run judged on a synthetic set no training or tuning saw: `python -m lumbar fresh-eval`.

The demo's own 20 test studies swing the score by more than 0.3 between seeds, and a mean hides the few
studies in which the localizer is lost. This draws a new set (its own seed, optionally another image size or
STIR rate than training), predicts its test studies exactly as the submission would, and reports the test
score beside the generator's oracle and the class prior, the per-study and per-target loss distribution
(`lumbar.analysis.robustness`), the worst studies, and the localisation error of the predicted points.
Everything goes into one folder: the data (reused when it is already there), the submission, the predicted
coordinates, `studies.csv`, `targets.csv` and `fresh_eval.json`.

Missing series (`drop_series`): real test sets have studies without a Sagittal T1 or Sagittal T2/STIR series.
A share of the fresh set's test studies can lose a series type (or several joined by `+`), each study at most
one entry, chosen by the set's seed; the set is then a hard-linked copy with those series folders and rows
removed, and the summary adds, per group (each entry and `intact`), the studies, their prior rows and their
score beside the oracle's on the same studies.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from lumbar.analysis.robustness import reference_tails, robustness_report, summary_line, tails_line
from lumbar.core.atomic import atomic_path, write_json
from lumbar.core.run_contract import RunManifest
from lumbar.core.tables import (
    load_coordinates,
    load_labels,
    load_series_descriptions,
    load_submission,
    rows_of_studies,
    write_coordinates,
)
from lumbar.data.index import load_or_build_index
from lumbar.data.synthetic import SynthConfig, generate
from lumbar.inference.predict import PredictOptions, predict
from lumbar.localize.evaluate import localization_errors, summarize
from lumbar.localize.evaluate import summary_line as localize_line
from lumbar.scoring.metric import competition_score, score_test_set

INTACT = "intact"


def set_folder(
    out: Path, seed: int, image_size: int, stir_rate: float, drop: dict[str, float] | None = None
) -> Path:
    name = f"seed{seed}_{image_size}px_stir{stir_rate:g}"
    if drop:
        name += "_drop-" + "-".join(f"{k.replace('/', '').replace(' ', '')}{v:g}" for k, v in drop.items())
    return out / name


def parse_drop(items: list[str] | None) -> dict[str, float]:
    """`["Sagittal T1=0.1", "Sagittal T1+Sagittal T2/STIR=0.05"]` -> {series types: share of test studies}."""
    out = {}
    for item in items or []:
        key, sep, value = item.rpartition("=")
        if not sep or not key:
            raise ValueError(f"--drop-series {item!r}: expected SERIES=SHARE, e.g. 'Sagittal T1=0.1'")
        out[key.strip()] = float(value)
    if sum(out.values()) > 1.0:
        raise ValueError(f"--drop-series: shares add up to {sum(out.values()):g} > 1 ({out})")
    return out


def drop_series(data: Path, folder: Path, drop: dict[str, float], seed: int) -> pd.DataFrame:
    """A hard-linked copy of the set in `folder` with a share of test studies' series removed (module
    docstring); returns `study_id, group` for every test study."""
    series = load_series_descriptions(data / "test_series_descriptions.csv")
    studies = np.array(sorted(series["study_id"].unique()))
    np.random.default_rng(seed).shuffle(studies)
    groups = pd.Series(INTACT, index=studies, name="group")
    start = 0
    for key, share in drop.items():
        kinds = [k.strip() for k in key.split("+")]
        unknown = set(kinds) - set(series["series_description"])
        if unknown:
            raise ValueError(f"--drop-series: no series of type {sorted(unknown)} in {data}")
        count = round(share * len(studies))
        groups.iloc[start : start + count] = key
        start += count
    if folder.exists():
        shutil.rmtree(folder)
    subprocess.run(["cp", "-al", str(data), str(folder)], check=True)
    dropped = series.join(groups, on="study_id")
    gone = dropped.apply(lambda r: r["series_description"] in r["group"].split("+"), axis=1)
    for r in dropped[gone].itertuples():
        shutil.rmtree(folder / "test_images" / str(r.study_id) / str(r.series_id))
    with atomic_path(folder / "test_series_descriptions.csv") as tmp:
        series[~gone.to_numpy()].to_csv(tmp, index=False)
    table = groups.rename_axis("study_id").reset_index().sort_values("study_id")
    table.to_csv(folder / "dropped.csv", index=False)
    return table


def group_scores(
    groups: pd.DataFrame, labels: pd.DataFrame, submission: pd.DataFrame, oracle: pd.DataFrame, report
) -> dict[str, dict]:
    """Per group of studies: how many, their prior rows, their score and the oracle's on them."""
    out = {}
    for group, rows in groups.groupby("group"):
        studies = sorted(rows["study_id"])
        own = labels[labels["study_id"].isin(studies)]
        out[group] = {
            "studies": len(studies),
            "prior_rows": sum(len(report.fallback_rows.get(s, [])) for s in studies),
            "score": competition_score(own, rows_of_studies(submission, studies), group).score,
            "oracle": competition_score(own, rows_of_studies(oracle, studies), "oracle").score,
        }
    return out


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
    drop: dict[str, float] | None = None,
    options: PredictOptions | None = None,
) -> dict:
    """Generate (or reuse) a fresh synthetic set, predict its test studies with the run, score them.

    `options` is how the run predicts (default: 2 workers); every study is predicted, prior rows counted
    (`max_fallback_share` 1.0). The set is written with as many workers.

    Returns:
        The summary written to `fresh_eval.json`: test score, oracle and prior (the prior from the run's own
        training labels when its data folder is still there, else from the fresh set's few train studies),
        the loss distribution (`robustness.loss_summary`), the worst studies, the oracle's and the prior's
        loss tails on the same targets (`robustness.reference_tails`) and the localisation summary; with
        `drop`, the groups' scores (`group_scores`).
    """

    run_dir = Path(run_dir)
    options = dataclasses.replace(options or PredictOptions(workers=2), max_fallback_share=1.0)
    folder = set_folder(Path(out), seed, image_size, stir_rate)
    data = folder / "data"
    if not (data / "test_labels.csv").is_file():
        config = SynthConfig(
            studies=1, test_studies=test_studies, seed=seed, image_size=image_size, stir_rate=stir_rate
        )
        generate(data, config, oracle=data / "oracle.csv", workers=options.workers, overwrite=True)
    groups = None
    if drop:
        folder = set_folder(Path(out), seed, image_size, stir_rate, drop)
        folder.mkdir(parents=True, exist_ok=True)
        groups = drop_series(data, folder / "data", drop, seed)
        data = folder / "data"
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
    if groups is not None:
        result["drop"] = drop
        result["groups"] = group_scores(groups, labels, submission, oracle, report)
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
    line += "\n  beside it, " + tails_line(r["tails"]) if "tails" in r else ""
    for group, g in r.get("groups", {}).items():
        line += (
            f"\n  {group}: studies={g['studies']} prior_rows={g['prior_rows']} score={g['score']:.4f} "
            f"oracle={g['oracle']:.4f}"
        )
    return line


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
            parse_drop(args.drop_series),
            PredictOptions(device=args.device, workers=args.workers, place_foramina=args.place_foramina),
        )
        print(result_line(r))
        if "localize" in r:
            print("  " + r["localize"])
    return 0
