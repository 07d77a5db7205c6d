"""Localization error of predicted coordinates against ground truth, in millimetres and in slices.

For each ground-truth point (study, condition, level) of a study that has images in the data folder:
- `error_mm`: in-plane distance. Both points go to patient space through their instance's DICOM geometry
  (pixel -> mm from the index); the difference is projected onto the truth slice's plane, so the
  error measures the point on the image and does not double-count a slice miss, which `slice_error`
  reports. `error_3d_mm` is the full distance, slice offset included.
- `slice_error`: |slice index difference| within the truth's stack; a prediction on another series or
  stack has no slice error (it counts as neither exact nor within +-1). `slice_shift` is the signed
  difference, predicted minus true slice index in the stack's geometric order.
- `dx_mm`, `dy_mm`: the in-plane error along the truth slice's columns and rows (predicted minus true), the
  shift that moves a crop around the true point onto the predicted one (`lumbar.preprocess.jitter`).
- missing: a truth point without a prediction (or with a prediction whose instance is not in the data).

Summaries: per condition and over all points, fractions over every truth point (a missing point counts
as a miss), the median over the points that have a prediction.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from lumbar.core.constants import CONDITIONS
from lumbar.core.paths import data_root
from lumbar.core.tables import load_coordinates
from lumbar.data.geometry import points_mm
from lumbar.data.index import load_or_build_index

KEYS = ["study_id", "condition", "level"]


def _geometry(coords: pd.DataFrame, index: pd.DataFrame) -> pd.DataFrame:
    """Patient position (mm), slice normal, and stack place of each coordinate row (NaN when unknown)."""
    orientation = [f"iop_{i}" for i in range(6)]
    merged = points_mm(coords, index, keep=["stack_index", "slice_index", *orientation])
    orientations = merged[orientation].to_numpy(np.float64)  # along the columns, then along the rows
    normal = np.cross(orientations[:, :3], orientations[:, 3:])
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    out = merged[KEYS + ["series_id", "stack_index", "slice_index", "px", "py", "pz"]].copy()
    out[["nx", "ny", "nz"]] = normal
    out[["rx", "ry", "rz", "cx", "cy", "cz"]] = orientations
    if "fold" in coords:
        out["fold"] = merged["fold"].to_numpy()
    return out


def localization_errors(pred: pd.DataFrame, truth: pd.DataFrame, index: pd.DataFrame) -> pd.DataFrame:
    """One row per evaluable truth point.

    Columns: `study_id, condition, level, missing, error_mm, error_3d_mm, slice_error, slice_shift, dx_mm,
    dy_mm`, and `fold` when the predictions have one (out-of-fold coordinates).

    Args:
        pred, truth: coordinate tables (snake-case names, `lumbar.core.tables.load_coordinates`).
        index: header index of the studies' images; truth points whose instance is not in it (no images
            here) are not evaluated.
    """
    truth = truth.drop(columns="fold", errors="ignore").drop_duplicates(KEYS)
    truth = truth[truth["study_id"].isin(index["study_id"].unique())]
    t = _geometry(truth, index)
    t = t[t[["px", "py", "pz"]].notna().all(axis=1)]
    p = _geometry(pred.drop_duplicates(KEYS), index)
    p = p[p[["px", "py", "pz"]].notna().all(axis=1)]
    m = t.merge(p, on=KEYS, how="left", suffixes=("", "_p"))
    missing = m["px_p"].isna().to_numpy()
    d = m[["px_p", "py_p", "pz_p"]].to_numpy(float) - m[["px", "py", "pz"]].to_numpy(float)
    n = m[["nx", "ny", "nz"]].to_numpy(float)
    in_plane = d - (d * n).sum(1, keepdims=True) * n
    same_stack = (m["series_id"] == m["series_id_p"]) & (m["stack_index"] == m["stack_index_p"])
    shift = np.where(same_stack, m["slice_index_p"] - m["slice_index"], np.nan)
    out = m[KEYS].copy()
    if "fold" in p:
        out["fold"] = m["fold"].to_numpy()
    out["missing"] = missing
    out["error_mm"] = np.linalg.norm(in_plane, axis=1)
    out["error_3d_mm"] = np.linalg.norm(d, axis=1)
    out["slice_error"] = np.abs(shift)
    out["slice_shift"] = shift
    out["dx_mm"] = (d * m[["rx", "ry", "rz"]].to_numpy(float)).sum(1)
    out["dy_mm"] = (d * m[["cx", "cy", "cz"]].to_numpy(float)).sum(1)
    return out.reset_index(drop=True)


def _summary(errors: pd.DataFrame) -> dict:
    n = len(errors)
    present = errors[~errors["missing"]]

    def fraction(hit: pd.Series) -> float:
        return float(hit.sum()) / n if n else float("nan")

    return {
        "points": n,
        "missing": int(errors["missing"].sum()),
        "median_mm": float(present["error_mm"].median()) if len(present) else float("nan"),
        "within5mm": fraction(errors["error_mm"] <= 5.0),
        "within10mm": fraction(errors["error_mm"] <= 10.0),
        "slice_exact": fraction(errors["slice_error"] == 0),
        "slice_pm1": fraction(errors["slice_error"] <= 1),
        "median_3d_mm": float(present["error_3d_mm"].median()) if len(present) else float("nan"),
    }


def summarize(errors: pd.DataFrame) -> pd.DataFrame:
    """Per-condition rows (competition order, conditions present only) and a final "all" row."""
    rows = {
        c: _summary(errors[errors["condition"] == c]) for c in CONDITIONS if (errors["condition"] == c).any()
    }
    rows["all"] = _summary(errors)
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("condition")


def summarize_folds(errors: pd.DataFrame) -> pd.DataFrame:
    """`summarize` of each fold's points (out-of-fold coordinates), then of all: a (fold, condition) index."""
    parts = {f"fold{int(f)}": summarize(e) for f, e in errors.groupby("fold", sort=True)}
    parts["all"] = summarize(errors)
    return pd.concat(parts, names=["fold"])


#: Columns of `slice_histogram`: signed slice shifts, beyond, another stack, no prediction.
HISTOGRAM_COLUMNS = ["<=-3", "-2", "-1", "0", "+1", "+2", ">=3", "other stack", "missing"]


def slice_histogram(errors: pd.DataFrame) -> pd.DataFrame:
    """Per condition (and "all"): how many points the prediction put how many slices off (signed)."""

    def row(e: pd.DataFrame) -> list[int]:
        s = e["slice_shift"]
        counts = (
            [int((s <= -3).sum())] + [int((s == k).sum()) for k in (-2, -1, 0, 1, 2)] + [int((s >= 3).sum())]
        )
        return counts + [int((s.isna() & ~e["missing"]).sum()), int(e["missing"].sum())]

    rows = {c: row(errors[errors["condition"] == c]) for c in CONDITIONS if (errors["condition"] == c).any()}
    rows["all"] = row(errors)
    return pd.DataFrame.from_dict(rows, orient="index", columns=HISTOGRAM_COLUMNS).rename_axis("condition")


def condition_lines(summary: pd.DataFrame) -> list[str]:
    """One line per condition of a `summarize` table: what a log shows of each point kind's accuracy (a good
    mean can hide a weak kind: the foramina depend on the slice scorer, the recesses on the axial mapping)."""
    return [
        f"localize: {condition}: within5mm={row['within5mm']:.4f} slice_exact={row['slice_exact']:.4f} "
        f"slice_pm1={row['slice_pm1']:.4f} median_mm={row['median_mm']:.3f} missing={int(row['missing'])}"
        for condition, row in summary.drop(index="all", errors="ignore").iterrows()
    ]


def summary_line(summary: pd.DataFrame) -> str:
    """The last line of `localize-eval` (over all points)."""
    a = summary.loc["all"]
    return (
        f"localize: within5mm={a['within5mm']:.4f} within10mm={a['within10mm']:.4f} "
        f"slice_exact={a['slice_exact']:.4f} slice_pm1={a['slice_pm1']:.4f} "
        f"median_mm={a['median_mm']:.3f} missing={int(a['missing'])}"
    )


def implausible_studies(coords: pd.DataFrame) -> list[int]:
    """Studies with at least one point that failed the level-set check (`lumbar.localize.confidence`)."""
    if "plausible" not in coords:
        return []
    return sorted(int(s) for s in coords.loc[coords["plausible"] == 0, "study_id"].unique())


def robustness_line(pred: pd.DataFrame, errors: pd.DataFrame, worst: int = 5) -> str:
    """Share of studies with an implausible level set, and the studies with the largest median error."""
    studies = pred["study_id"].nunique()
    bad = implausible_studies(pred)
    per_study = errors.groupby("study_id")["error_3d_mm"].median().sort_values(ascending=False)
    return (
        f"robustness: implausible level sets in {len(bad)}/{studies} studies "
        f"({len(bad) / max(studies, 1):.1%})"
        f"{' ' + str(bad[:10]) if bad else ''}; worst studies by median 3D error: "
        + ", ".join(f"{s} {v:.1f} mm" for s, v in per_study.head(worst).items())
    )


def cli_localize_eval(args: argparse.Namespace) -> int:
    """`python -m lumbar localize-eval`: the per-condition table, then the summary line."""
    root = data_root(args.data_dir, must_exist=True)
    pred, truth = load_coordinates(args.pred), load_coordinates(args.truth)
    studies = sorted(set(pred["study_id"]) | set(truth["study_id"]))
    index = (
        pd.read_parquet(args.index) if args.index else load_or_build_index(root, args.split, studies=studies)
    )
    errors = localization_errors(pred, truth, index)
    if errors.empty:
        print(f"localize-eval: no truth point of {args.truth} has images in {root} ({args.split})")
        return 1
    table = summarize_folds(errors) if "fold" in errors else summarize(errors)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(float_format=lambda v: f"{v:.3f}"))
        print("slice shift (predicted - true) per condition:")
        print(slice_histogram(errors).to_string())
    print(robustness_line(pred, errors))
    print(summary_line(table.loc["all"] if "fold" in errors else table))
    return 0
