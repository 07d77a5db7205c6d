"""The thesis's reports written to a folder: the tables as CSV and JSON, the confusion matrices as PNGs, and
this run beside the thesis's published numbers (`lumbar.scoring.references`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from sklearn.metrics import ConfusionMatrixDisplay

from lumbar.core.atomic import atomic_path, write_json
from lumbar.core.tables import write_csv
from lumbar.scoring.references import compare_with_references
from lumbar.scoring.thesis import ALL, SLICE_KEYS, EvaluationReport, evaluate_predictions


def plot_confusion_matrices(report: EvaluationReport, out_dir: str | Path) -> list[Path]:
    """One PNG heatmap per condition (all levels, then each level) and, in multi modes, one for all
    conditions.

    Uses matplotlib's object API (no pyplot), so no display or global backend is touched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = report.summary
    figures: dict[str, list[tuple[str, str, str]]] = {}
    for sc, cond, lv in summary[SLICE_KEYS].itertuples(index=False):
        figure = ALL if sc in ("all", "level") else cond
        figures.setdefault(figure, []).append((sc, cond, lv))
    paths = []
    for figure, panels in figures.items():
        fig = Figure(figsize=(3.2 * len(panels), 3.4), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (sc, cond, lv) in zip(axes, panels):
            display = ConfusionMatrixDisplay(
                report.confusion_matrix(sc, cond, lv), display_labels=report.class_names
            )
            display.plot(ax=ax, colorbar=False, values_format="d", cmap="Blues")
            ax.set_title("all levels" if lv == ALL else lv, fontsize=9)
            ax.tick_params(labelsize=7)
            ax.xaxis.label.set_size(8)
            ax.yaxis.label.set_size(8)
        fig.suptitle(f"{figure} ({report.mode})", fontsize=10)
        path = out_dir / f"confusion_{figure}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100)
        paths.append(path)
    return paths


def _records(df: pd.DataFrame) -> list[dict]:
    return json.loads(df.to_json(orient="records"))  # NaN -> null


def write_reports(
    table: pd.DataFrame, out_dir: str | Path, mode: str, references: bool = True
) -> dict[str, Path]:
    """Evaluate a prediction table and write every report into a folder.

    Files: `summary.csv`, `per_class.csv`, `confusion.csv`, `report.json` (all three tables),
    `confusion_<condition|all>.png`, and with `references` `references.csv` (this run beside the published
    numbers, see `lumbar.scoring.references`).

    Returns:
        File kind -> path (PNGs under `confusion_<name>`).
    """
    report = evaluate_predictions(table, mode)
    out_dir = Path(out_dir)
    paths = {
        "summary": write_csv(report.summary, out_dir / "summary.csv"),
        "per_class": write_csv(report.per_class, out_dir / "per_class.csv"),
        "confusion": write_csv(report.confusion, out_dir / "confusion.csv"),
    }
    document = {
        "mode": mode,
        **{k: _records(getattr(report, k)) for k in ("summary", "per_class", "confusion")},
    }
    json_path = out_dir / "report.json"
    write_json(document, json_path, indent=1)
    paths["report"] = json_path
    for png in plot_confusion_matrices(report, out_dir):
        paths[png.stem] = png
    if references:
        paths["references"] = write_csv(compare_with_references(table), out_dir / "references.csv")
    return paths
