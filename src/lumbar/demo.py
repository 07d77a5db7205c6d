"""`make demo`: synthetic data (unless data is already there), the whole pipeline, one line of results.

The data folder is the config's own (`configs/demo.yaml`: `input/synthetic-demo/`), never the real data's:
`lumbar.pipeline.check_data_kind` stops the demo before it writes into a folder holding competition data.

The last line is meant for scripts:

    demo: oof_score=<v> prior=<v> oracle=<v> gap_closed=<f> test_score=<v> test_score_gt=<v> submission=<path>
    run=<path> seconds=<n>

- oof_score: the out-of-fold score of the ensemble `04_ensemble` chose, on the crops the test predictions use
  (around the out-of-fold localizer's points, when the run has them);
- prior: the condition x level class-prior baseline on the same studies, priors fitted out-of-fold;
- oracle: the generator's best possible prediction on the same studies (synthetic data only);
- gap_closed: (prior - oof_score) / (prior - oracle), the share of the reachable improvement achieved;
- test_score: the submission scored against the synthetic test studies' generated labels;
- test_score_gt: the same models and ensemble on crops around the test studies' true label points
  (`test_label_coordinates.csv`): `test_score - test_score_gt` is what localisation costs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from lumbar.core.paths import PROJECT_ROOT
from lumbar.core.processes import available_cores
from lumbar.core.run_contract import RunManifest
from lumbar.core.tables import load_coordinates, load_labels, load_submission, row_study_ids, rows_of_studies
from lumbar.data.synthetic import SynthConfig, generate
from lumbar.inference.predict import PredictOptions, predict
from lumbar.kaggle import SUBMISSION_NOTEBOOK
from lumbar.pipeline import PipelineConfig, PipelineError, check_data_kind, load_config, run_pipeline
from lumbar.scoring.baselines import out_of_fold_prior
from lumbar.scoring.metric import competition_score, score_test_set


def ensure_data(data_dir: Path, synthetic: dict, workers: int = 0) -> bool:
    """Write the synthetic set into `data_dir` unless it already holds a train.csv (`workers` processes, 0 =
    one
    per core); True when written."""
    if (data_dir / "train.csv").is_file():
        return False

    workers = workers or available_cores()

    summary = generate(data_dir, SynthConfig(**synthetic), oracle=data_dir / "oracle.csv", workers=workers)
    print(
        f"demo: wrote synthetic data {data_dir} ({summary.studies} train + {summary.test_studies} "
        "test studies, "
        f"{summary.seconds:.0f} s)"
    )
    return True


def submission_of(config: PipelineConfig) -> Path | None:
    """The submission the config's `05_submission` step writes (its OUT, relative to the notebooks'
    folder)."""
    steps = [s for s in config.steps if s.notebook == SUBMISSION_NOTEBOOK and "OUT" in s.parameters]
    return config.notebook_dir / steps[-1].parameters["OUT"] if steps else None


def demo_summary(run_dir: Path, data_dir: Path, submission: Path | None = None) -> dict:
    """The demo's figures from the run manifest, the data folder and the submission (when written)."""
    ensemble = RunManifest.read(run_dir).need.ensemble
    oof = pd.read_csv(run_dir / ensemble.need.oof)
    labels = load_labels(data_dir / "train.csv")
    studies = set(row_study_ids(oof["row_id"]))
    scored = labels[labels["study_id"].isin(studies)]
    folds = pd.read_csv(run_dir / ensemble.need.folds)
    folds = folds[folds["study_id"].isin(studies)]
    out = {"oof_score": competition_score(scored, oof, "oof").score}
    out["prior"] = competition_score(scored, out_of_fold_prior(labels, folds), "prior").score
    oracle = load_submission(data_dir / "oracle.csv") if (data_dir / "oracle.csv").is_file() else None
    if oracle is not None:
        out["oracle"] = competition_score(scored, rows_of_studies(oracle, studies), "oracle").score
        out["gap_closed"] = (out["prior"] - out["oof_score"]) / (out["prior"] - out["oracle"])
    if ensemble.scores:
        out["candidates"] = pd.read_csv(run_dir / ensemble.scores).set_index("model")["score"].to_dict()
        out["chosen"] = ensemble.chosen if ensemble.chosen is not None else ""
    submission = submission if submission is not None and submission.is_file() else None
    if submission and (data_dir / "test_labels.csv").is_file():
        test_labels = load_labels(data_dir / "test_labels.csv")
        scores, _ = score_test_set(test_labels, load_submission(submission), labels, oracle)
        out["test_score"] = scores["submission"]
        out["test_studies"] = test_labels["study_id"].nunique()
        out["test_prior"] = scores["prior"]
        if "oracle" in scores:
            out["test_oracle"] = scores["oracle"]
        if (data_dir / "test_label_coordinates.csv").is_file():
            out["test_score_gt"] = competition_score(
                test_labels, on_true_points(run_dir, data_dir), "gt crops"
            ).score
    out["submission"] = _project_relative(submission) if submission else ""
    return out


def on_true_points(run_dir: Path, data_dir: Path) -> pd.DataFrame:
    """The run's test predictions on crops around the synthetic test studies' label points."""

    coords = load_coordinates(data_dir / "test_label_coordinates.csv")
    options = PredictOptions(progress=False, max_fallback_share=1.0)
    submission, _ = predict(data_dir, "test", run_dir, options=options, coords=coords)
    return submission


def _project_relative(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path)


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def run_demo(config_path: str | Path, workers: int = 0) -> dict:
    """Data, pipeline, summary; returns the figures of the last line.

    Raises:
        ValueError: the config is not a synthetic-data one, or its data folder holds the real data.
    """
    t0 = time.perf_counter()
    config = load_config(config_path)
    if config.synthetic is None:
        raise ValueError(
            f"{config_path}: the demo runs only a synthetic-data config (one with a `synthetic:` block)"
        )
    check_data_kind(config)  # before writing: the demo never writes into the real data
    ensure_data(config.data_dir, config.synthetic, workers=workers)
    run_pipeline(config)
    summary = demo_summary(config.run_dir, config.data_dir, submission_of(config))
    summary["run"] = _project_relative(config.run_dir)
    summary["seconds"] = round(time.perf_counter() - t0)
    return summary


def cli_demo(args: argparse.Namespace) -> int:
    """`python -m lumbar demo`."""
    try:
        s = run_demo(args.config, workers=args.workers)
    except PipelineError as e:
        print(f"demo: FAILED: {e}")
        return 1
    if s.get("candidates"):
        marked = [f"{k}={_fmt(v)}{'*' if k == s.get('chosen') else ''}" for k, v in s["candidates"].items()]
        print("demo: out-of-fold candidates (* chosen): " + ", ".join(marked))
    if "test_prior" in s:
        print(
            f"demo: test set of {s['test_studies']} studies: submission={_fmt(s['test_score'])} "
            f"prior={_fmt(s['test_prior'])} oracle={_fmt(s.get('test_oracle', 'n/a'))}"
        )
    keys = (
        "oof_score",
        "prior",
        "oracle",
        "gap_closed",
        "test_score",
        "test_score_gt",
        "submission",
        "run",
        "seconds",
    )
    print("demo: " + " ".join(f"{k}={_fmt(s.get(k, 'n/a'))}" for k in keys))
    return 0
