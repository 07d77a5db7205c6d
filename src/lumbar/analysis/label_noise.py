"""Label-noise cleanup: flag training grades the out-of-fold ensemble finds unlikely, then retrain without
them.

The 2nd-place team of RSNA 2024 removed, after a first round, the training items whose out-of-fold probability
of the written grade was off by 0.8 or more, and retrained. Here: `flag_label_noise` flags a labelled row when
its out-of-fold probability of the written grade is at most `threshold` (default `DEFAULT_THRESHOLD` = 0.2,
the same rule: 1 - p_written >= 0.8), `flag_run` writes the list with its evidence into the run folder, and a
second round trains with `TrainConfig.exclude` (notebook 03's `EXCLUDE`) pointing at it: the listed rows leave
the *training* items only; validation and the out-of-fold predictions keep every item, so both rounds' scores
stay comparable. (`lumbar.analysis.errors.label_noise_candidates`, in 06, ranks such rows by their cost for
reading; this module is the step that acts on them.)

Files of `flag_run` (`<run>/label_noise/`, recorded in the manifest as a `LabelNoiseRecord`):
    flags.csv     the flagged rows only, most doubtful first (ascending `p_written`): row_id, study_id,
                  condition, level, grade (written), p_written, predicted (the most likely grade),
                  p_predicted, flagged (all true). It is the exclusion list as it stands; any CSV with a
                  `row_id` column is one too (`lumbar.core.tables.read_flagged_ids`).
    summary.json  threshold, rows judged, rows flagged, share, flags per condition, and on synthetic data the
                  expected precision and recall.

Measured against the truth on synthetic data: the generator writes `train_label_noise.csv`, the exact
probability `p_noise` that each written grade was a noise draw given the study's latent severities
(`lumbar.data.synthetic.labels.LabelModel.noise_posterior`). Whether a grade *was* a noise draw is itself
random given what the generator keeps, so precision and recall are expected values: precision = mean p_noise
over the flagged rows, recall = sum of p_noise over the flagged rows / sum over every judged row. (A noise
draw that happens to equal the reader's grade counts as noise, though it does no harm.)
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lumbar.core.atomic import write_json
from lumbar.core.constants import CONDITIONS, GRADES
from lumbar.core.paths import data_root
from lumbar.core.run_contract import LabelNoiseRecord, RunManifest, save_record
from lumbar.core.tables import load_labels, load_submission, table_row_ids, write_csv

#: Flag a row when the out-of-fold probability of its written grade is at most this (2nd place: off by >=
#: 0.8).
DEFAULT_THRESHOLD = 0.2
LABEL_NOISE_DIR = "label_noise"
FLAGS_CSV = "flags.csv"
SUMMARY_JSON = "summary.json"
#: The synthetic generator's truth file (`lumbar.data.synthetic.generate.LABEL_NOISE_CSV`).
TRUTH_CSV = "train_label_noise.csv"
FLAG_COLUMNS = [
    "row_id",
    "study_id",
    "condition",
    "level",
    "grade",
    "p_written",
    "predicted",
    "p_predicted",
    "flagged",
]


def flag_label_noise(
    oof: pd.DataFrame, labels: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD
) -> pd.DataFrame:
    """Every labelled row with out-of-fold evidence, and whether it is flagged as likely mislabelled.

    Args:
        oof: out-of-fold predictions in the submission format (`row_id, normal_mild, moderate, severe`).
        labels: the long label table (`study_id, condition, level, grade`); blank grades are skipped, and so
            are labelled rows without a prediction (nothing out of fold to judge them by).
        threshold: flag when p_written <= threshold.

    Returns:
        `FLAG_COLUMNS`, sorted by `p_written` (most doubtful first, ties by row_id).
    """
    graded = labels[labels["grade"].notna()]
    table = graded.assign(row_id=table_row_ids(graded).to_numpy(), grade=graded["grade"].astype("int64"))
    probs = oof.set_index("row_id")[list(GRADES)]
    table = table[table["row_id"].isin(probs.index)].reset_index(drop=True)
    p = probs.loc[table["row_id"]].to_numpy(float)
    table["p_written"] = p[np.arange(len(table)), table["grade"].to_numpy()]
    table["predicted"] = p.argmax(axis=1)
    table["p_predicted"] = p.max(axis=1)
    table["flagged"] = table["p_written"] <= threshold
    return table.sort_values(["p_written", "row_id"], kind="stable").reset_index(drop=True)[FLAG_COLUMNS]


def noise_precision_recall(flags: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    """Expected precision and recall of a flag set against the synthetic truth (module docstring).

    Args:
        flags: rows with `row_id`; a `flagged` column, when present, selects the flagged ones.
        truth: `row_id, p_noise` of every judged row (`train_label_noise.csv`, restricted to the judged rows).

    Returns:
        precision (mean p_noise over the flagged rows; NaN when none is flagged), recall (their share of the
        total p_noise; NaN when the truth holds no noise), flagged, expected_noisy (sum of p_noise).

    Raises:
        ValueError: a flagged row_id missing from the truth (flags and truth of different data).
    """
    flagged = flags[flags["flagged"].astype(bool)] if "flagged" in flags.columns else flags
    p_noise = truth.set_index("row_id")["p_noise"].astype(float)
    missing = sorted(set(flagged["row_id"]) - set(p_noise.index))
    if missing:
        raise ValueError(f"{len(missing)} flagged row(s) not in the truth table, e.g. {missing[0]}")
    hit = p_noise.loc[flagged["row_id"]]
    total = float(p_noise.sum())
    return {
        "precision": float(hit.mean()) if len(hit) else float("nan"),
        "recall": float(hit.sum()) / total if total > 0 else float("nan"),
        "flagged": len(hit),
        "expected_noisy": total,
    }


def flag_run(
    run_dir: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> dict[str, Any]:
    """Flag a run's training labels by its ensemble's out-of-fold predictions; write flags.csv and
    summary.json.

    Args:
        run_dir: a run folder whose manifest has an `ensemble` (notebook 04).
        data_dir: the data folder with train.csv (None: `lumbar.core.paths.data_root`); when it holds
            `train_label_noise.csv` (synthetic data) the summary gets the expected precision and recall.
        threshold: flag when p_written <= threshold.

    Returns:
        The summary (also in `summary.json`), with `line`, the one-line report.
    """
    run_dir = Path(run_dir)
    oof = RunManifest.read(run_dir).need.ensemble.need.oof
    root = data_root(data_dir, must_exist=True)
    evidence = flag_label_noise(load_submission(run_dir / oof), load_labels(root / "train.csv"), threshold)
    flags = evidence[evidence["flagged"]]
    out = run_dir / LABEL_NOISE_DIR
    write_csv(flags, out / FLAGS_CSV)
    n, m = len(flags), len(evidence)
    summary: dict[str, Any] = {
        "threshold": threshold,
        "rows": m,
        "flagged": n,
        "share": n / m if m else 0.0,
        "by_condition": {c: int((flags["condition"] == c).sum()) for c in CONDITIONS},
        "oof": oof,
        "flags": f"{LABEL_NOISE_DIR}/{FLAGS_CSV}",
    }
    line = f"label-noise: flagged={n} of {m} ({100 * summary['share']:.1f} %) threshold={threshold:g}"
    if (root / TRUTH_CSV).is_file():
        truth = pd.read_csv(root / TRUTH_CSV, dtype={"row_id": str})
        measured = noise_precision_recall(flags, truth[truth["row_id"].isin(evidence["row_id"])])
        summary.update({k: None if np.isnan(v) else v for k, v in measured.items() if k != "flagged"})
        line += f" precision={measured['precision']:.3f} recall={measured['recall']:.3f}"
    summary["line"] = line
    write_json(summary, out / SUMMARY_JSON)
    save_record(
        run_dir,
        LabelNoiseRecord(
            flags=summary["flags"],
            summary=f"{LABEL_NOISE_DIR}/{SUMMARY_JSON}",
            threshold=threshold,
            flagged=n,
        ),
    )
    return summary


def cli_label_noise(args: argparse.Namespace) -> int:
    """`python -m lumbar label-noise`: write the flags of a run, print one summary line."""
    print(flag_run(args.run, args.data_dir, args.threshold)["line"])
    return 0
