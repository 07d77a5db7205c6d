"""Inference speed and peak memory of `predict`: seconds per study by stage, peak RSS over 5 and 20 studies.

A small demo-sized run is trained first on synthetic data (the steps of tests/test_end_to_end.py's fixture
at the demo's sizes: ROI cache -> localizer -> classifiers -> ensemble, one epoch each), unless `--run` names
a trained one (e.g. runs/demo). Every measurement is one `predict` in a fresh process, so its peak resident
memory is its own (`peak_memory.run_measured`); imports are done before the clock starts and reported apart:

- synthetic test studies, 5 and then 20 of them, streamed in chunks of `--chunk` studies: the 20-study peak
  must stay within 1.2x of the 5-study peak;
- the plain alternative: the same 20 studies in one chunk (`chunk_studies` = all, nothing streamed);
- the real sample's two studies linked `--real-copies` times as test studies (real image sizes and RLE
  decoding): the per-file and per-study rates that project the time of the hidden test set.

    python benchmarks/bench_predict.py [--run runs/demo] [--studies 5 20] [--chunk 16] [--real-copies 2]
        [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from peak_memory import run_measured

from lumbar.core.paths import PROJECT_ROOT
from lumbar.inference.predict import PredictOptions, predict

#: The hidden test set the projection assumes (its size is not public).
HIDDEN_STUDIES, HIDDEN_FILES_PER_STUDY = 2000, 75
#: The demo ensemble (configs/demo.yaml), trained one epoch on a few studies: its speed, not its accuracy.
DEMO_ROI = {"size": 48, "before": 2, "after": 2}
DEMO_LOCALIZER = {"backbone": "resnet18", "size": 96, "epochs": 1, "axial_epochs": 1, "refine_epochs": 1}
DEMO_ARCHS = ("cnn3d", "timm25d:resnet18")
DEMO_FOLDS = 3
#: predict's own default chunk size: the streamed rows run what a user runs.
DEFAULT_CHUNK = PredictOptions().chunk_studies
#: Stages whose cost follows the files read (the others follow the studies).
FILE_STAGES = ("index", "localize", "crop")


def study_view(src: Path, split: str, studies: list[int], out: Path) -> Path:
    """A data folder holding only `studies` of a split (image folders linked, the series CSV filtered)."""
    import pandas as pd

    from lumbar.core.tables import write_csv

    (out / f"{split}_images").mkdir(parents=True)
    for s in studies:
        (out / f"{split}_images" / str(s)).symlink_to((src / f"{split}_images" / str(s)).resolve())
    series = pd.read_csv(src / f"{split}_series_descriptions.csv")
    write_csv(series[series["study_id"].isin(studies)], out / f"{split}_series_descriptions.csv")
    return out


def real_view(sample: Path, copies: int, out: Path) -> Path:
    """The real sample's studies linked `copies` times under new ids as test studies (no train files)."""
    import pandas as pd

    from lumbar.core.tables import write_csv

    series = pd.read_csv(sample / "train_series_descriptions.csv")
    parts = []
    (out / "test_images").mkdir(parents=True)
    for c in range(copies):
        for study in sorted((sample / "train_images").iterdir()):
            new_id = int(f"{c + 1}{study.name}")
            (out / "test_images" / str(new_id)).symlink_to(study.resolve())
            parts.append(series[series["study_id"] == int(study.name)].assign(study_id=new_id))
    write_csv(pd.concat(parts, ignore_index=True), out / "test_series_descriptions.csv")
    return out


def train_demo_run(data: Path, run: Path, device: str) -> float:
    """Train the demo ensemble for one epoch on `data`'s training studies; returns the seconds it took."""
    from lumbar.core.manifest import update_manifest
    from lumbar.core.tables import load_coordinates
    from lumbar.ensemble.runs import fit_run_ensemble
    from lumbar.localize.config import LocalizerConfig
    from lumbar.localize.train import train_localizer
    from lumbar.preprocess.cache import build_cache
    from lumbar.preprocess.config import RoiConfig
    from lumbar.train import train

    t0 = time.perf_counter()
    coords = load_coordinates(data / "train_label_coordinates.csv")
    report = build_cache(coords, data, "train", run / "cache", RoiConfig.from_overrides(DEMO_ROI), progress=False)
    update_manifest(run, "preprocess", {"cache": str(report.cache_dir.relative_to(run))})
    train_localizer(LocalizerConfig.from_dict({**DEMO_LOCALIZER, "device": device}), data, coords, run, progress=False)
    for arch in DEMO_ARCHS:
        train({"data_dir": str(data), "cache": str(report.cache_dir), "out": str(run / arch.replace(":", "_")),
               "arch": arch, "n_folds": DEMO_FOLDS, "epochs": 1, "batch_size": 32, "device": device,
               "progress": False, "threads": 1})  # fmt: skip
    fit_run_ensemble(run, data)
    return time.perf_counter() - t0


def predict_once(args: argparse.Namespace) -> dict:
    """The child side: one `predict` over a data folder's test split; what it measured, as a dict."""
    t0 = time.perf_counter()
    import torch

    import lumbar.localize.predict
    import lumbar.models  # noqa: F401  (imports are start-up, not per-study work)

    if args.threads:
        torch.set_num_threads(args.threads)
    startup = time.perf_counter() - t0
    data = Path(args.one)
    files = sum(1 for _ in (data / "test_images").glob("*/*/*.dcm"))  # glob follows the linked study folders
    options = PredictOptions(work_dir=Path(args.work_dir), device=args.device, chunk_studies=args.chunk,
                             progress=False)
    sub, report = predict(data, "test", args.run, out=None, options=options)
    return {"studies": len(report.studies), "files": files, "rows": len(sub), "seconds": report.seconds,
            "startup_s": startup, "fallback_rows": sum(len(v) for v in report.fallback_rows.values())}  # fmt: skip


def measure_predict(data: Path, run: Path, chunk: int, args: argparse.Namespace, work: Path) -> dict:
    """`predict_once` in a fresh interpreter, with that process's own peak RSS."""
    cmd = [sys.executable, __file__, "--one", str(data), "--run", str(run), "--chunk", str(chunk),
           "--device", args.device, "--threads", str(args.threads), "--work-dir", str(work)]  # fmt: skip
    m = run_measured(cmd, timeout=args.timeout)
    if m.returncode != 0:
        raise RuntimeError(f"predict on {data} failed (exit {m.returncode}):\n{m.stderr[-3000:]}")
    result = {**json.loads(m.stdout.strip().splitlines()[-1]), "peak_mib": m.peak_mib, "process_s": m.wall_s}
    print(f"# {data.name}, chunk {chunk}: {result}", file=sys.stderr, flush=True)
    return result


def projection(r: dict) -> dict:
    """Seconds for the hidden test set from one measurement: file-bound stages per file, the rest per study."""
    per_file = sum(r["seconds"][k] for k in FILE_STAGES) / r["files"]
    per_study = sum(v for k, v in r["seconds"].items() if k not in FILE_STAGES) / r["studies"]
    return {"per_file_s": per_file, "per_study_s": per_study,
            "hidden_s": HIDDEN_STUDIES * (HIDDEN_FILES_PER_STUDY * per_file + per_study)}  # fmt: skip


def report_tables(rows: dict[str, dict], few: str, many: str, plain: str, real: str | None) -> tuple[str, float]:
    """The markdown tables and the 20-vs-5 peak memory ratio."""
    lines = [("| studies | n | files/study | s/study | index | localize | crop | classify | blend | start-up s "
              "| peak RSS (MiB) | vs plain (one chunk) |"), "|---|" + "---:|" * 10 + "---|"]  # fmt: skip
    for label, r in rows.items():
        n, total = r["studies"], sum(r["seconds"].values())
        ratio = ""
        if label == many:
            p = rows[plain]
            ratio = (f"speed {sum(p['seconds'].values()) / total:.2f}x, "
                     f"peak memory {r['peak_mib'] / p['peak_mib']:.2f}x")  # fmt: skip
        elif label == plain:
            ratio = "1.00x (the plain alternative)"
        stages = " | ".join(f"{v / n:.2f}" for v in r["seconds"].values())
        lines.append(f"| {label} | {n} | {r['files'] / n:.0f} | {total / n:.2f} | {stages} | {r['startup_s']:.1f} "
                     f"| {r['peak_mib']:.0f} | {ratio} |")  # fmt: skip
    growth = rows[many]["peak_mib"] / rows[few]["peak_mib"]
    lines += ["", (f"peak memory, {rows[many]['studies']} vs {rows[few]['studies']} studies (streamed): "
                   f"{rows[many]['peak_mib']:.0f} / {rows[few]['peak_mib']:.0f} MiB = {growth:.2f}x "
                   f"(target <= 1.2x: {'met' if growth <= 1.2 else 'NOT MET'})")]  # fmt: skip
    lines += ["", (f"projection to the hidden test set ({HIDDEN_STUDIES:,} studies x {HIDDEN_FILES_PER_STUDY} files) "
                   "at the measured CPU rate: index + localize + crop scale with files, classify + blend with studies"),
              "", "| measured on | s/file | s/study (classify + blend) | projected s/study | projected hours |",
              "|---|---:|---:|---:|---:|"]  # fmt: skip
    for label in (real, many):
        if label:
            pr = projection(rows[label])
            lines.append(f"| {label} | {pr['per_file_s']:.4f} | {pr['per_study_s']:.2f} "
                         f"| {pr['hidden_s'] / HIDDEN_STUDIES:.2f} | {pr['hidden_s'] / 3600:.1f} |")  # fmt: skip
    return "\n".join(lines), growth


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=None, help="a trained run folder (default: train a small demo run first)")
    p.add_argument("--studies", type=int, nargs=2, default=[5, 20], metavar=("FEW", "MANY"))
    p.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help="predict's chunk_studies for the streamed runs")
    p.add_argument("--train-studies", type=int, default=8, help="synthetic training studies of the demo run")
    p.add_argument("--image-size", type=int, default=128, help="synthetic image size (the demo's)")
    p.add_argument("--real-copies", type=int, default=2, help="copies of the real sample's 2 studies (0 = none)")
    p.add_argument(
        "--sample",
        default=os.environ.get("LUMBAR_SAMPLE_DIR", PROJECT_ROOT.parent / "shared" / "rsna2024-sample"),
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads in predict (0 = torch's default; 1 is faster on a busy machine)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per predict before it is an error")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--work-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(predict_once(args)))
        return

    from lumbar.data.synthetic import SynthConfig, generate

    n_few, n_many = args.studies
    few, many = (f"{n} synthetic, chunks of {args.chunk}" for n in (n_few, n_many))
    plain = f"{n_many} synthetic, one chunk (plain)"
    real = f"{2 * args.real_copies} real (sample linked), chunks of {args.chunk}" if args.real_copies else None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        train_n = 1 if args.run else args.train_studies
        generate(tmp / "synth", SynthConfig(studies=train_n, test_studies=n_many, seed=0, image_size=args.image_size),
                 progress=False, workers=min(8, os.cpu_count() or 1))  # fmt: skip
        generated = time.perf_counter() - t0
        run, trained = (Path(args.run), None) if args.run else (tmp / "run", train_demo_run(tmp / "synth", tmp / "run", args.device))
        studies = sorted(int(s.name) for s in (tmp / "synth" / "test_images").iterdir())
        rows = {}
        for label, n in ((few, n_few), (many, n_many)):
            view = study_view(tmp / "synth", "test", studies[:n], tmp / f"test{n}")
            rows[label] = measure_predict(view, run, args.chunk, args, tmp / "work")
        rows[plain] = measure_predict(tmp / f"test{n_many}", run, n_many, args, tmp / "work")
        if real:
            if not (Path(args.sample) / "train_images").is_dir():
                raise FileNotFoundError(f"real sample not found at {args.sample} (set LUMBAR_SAMPLE_DIR or --real-copies 0)")
            rows[real] = measure_predict(real_view(Path(args.sample), args.real_copies, tmp / "real"), run,
                                         args.chunk, args, tmp / "work")  # fmt: skip

    what = f"run {args.run}" if args.run else (
        f"demo ensemble trained here ({' + '.join(DEMO_ARCHS)}, {DEMO_FOLDS} folds each, ROI {DEMO_ROI}, localizer "
        f"{DEMO_LOCALIZER['backbone']} {DEMO_LOCALIZER['size']} px; 1 epoch on {train_n} synthetic studies, {trained:.0f} s)")
    print(f"predict with the {what}; device {args.device}, torch threads {args.threads or 'default'}; synthetic "
          f"studies at {args.image_size} px ({generated:.0f} s to write); each row is one predict in a fresh process, "
          "seconds per study by stage (start-up = imports, once per process, not in s/study)\n")  # fmt: skip
    text, growth = report_tables(rows, few, many, plain, real)
    print(text)
    for label, stage in ((real, "inference, real studies"), (many, "inference, synthetic studies")):
        if label:
            r = rows[label]
            n = r["studies"]
            print("summary: " + json.dumps({
                "stage": stage, "plain": "" if label == real else f"{sum(rows[plain]['seconds'].values()) / n:.2f} "
                f"s/study in one chunk, peak {rows[plain]['peak_mib']:.0f} MiB",
                "lumbar": f"{sum(r['seconds'].values()) / n:.2f} s/study (" + ", ".join(
                    f"{k} {v / n:.2f}" for k, v in r["seconds"].items()) + f"), {label}, peak {r['peak_mib']:.0f} MiB",
                "ratio": None if label == real else sum(rows[plain]["seconds"].values()) / sum(r["seconds"].values()),
            }))  # fmt: skip
    print("summary: " + json.dumps({"stage": f"predict peak memory, {n_many} vs {n_few} studies",
                                    "lumbar": f"{rows[many]['peak_mib']:.0f} vs {rows[few]['peak_mib']:.0f} MiB "
                                              f"(target <= 1.2x: {'met' if growth <= 1.2 else 'NOT MET'})",
                                    "plain": "", "ratio": growth, "ratio_kind": "memory"}))  # fmt: skip
    pr = projection(rows[real or many])
    print("summary: " + json.dumps({"stage": f"projection: hidden test set, {HIDDEN_STUDIES:,} studies x "
                                             f"{HIDDEN_FILES_PER_STUDY} files", "plain": "", "ratio": None,
                                    "lumbar": f"{pr['hidden_s'] / 3600:.1f} h on this CPU ({args.threads or 'default'} "
                                              f"thread(s); {pr['hidden_s'] / HIDDEN_STUDIES:.2f} s/study, from the "
                                              f"{real or many} row)"}))  # fmt: skip
    sys.exit(0 if growth <= 1.2 else 1)


if __name__ == "__main__":
    main()
