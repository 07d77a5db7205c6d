"""Kaggle's time budget: `predict` seconds per study with the ensemble of configs/full.yaml, projected to the hidden test.

A slice of `configs/full.yaml` is built here (`build_full_slice`): its crop geometry (01), its localizer (02:
the backbone, size and slices it names, one per trained fold), its four classifiers (03: architectures, batch
sizes and options, one model per condition group and trained fold), each trained for a few batches only (the
speed of a model does not depend on its weights; PRETRAINED=none), and an ensemble of all four with equal
weights. `predict` then runs on the test studies, timed per stage, with the time inside the model forwards
(localizer, classifiers) recorded apart (`PredictReport.forward_seconds`); on CPU a second pass counts their
FLOPs (`torch.utils.flop_counter`).

Projection of the submission notebook's `predict` on a Kaggle GPU, per study:
- CPU part, measured: every stage minus the model forwards (DICOM decoding, resampling, crops, blend), one
  process at this machine's per-core speed;
- GPU part: the forwards of the full ensemble (every fold of every classifier and of the localizer: the
  measured folds scaled to `--full-folds`), as FLOPs / an ASSUMED effective GPU throughput (`--gpu-tflops`);
  run on a GPU (`--device cuda`), the measured forward seconds instead;
then hours for 500, 1,000 and 2,000 studies against Kaggle's 9-hour limit, and the `--max-folds` that fits a
budget. Test-time augmentation is counted at its worst case: every unit of a classifier whose config lists TTA
candidates predicts with all of them (`lumbar.train.tta`: the identity, the slice reversal and two shifts
make 4 forwards per model instead of 1); a trained run may choose fewer.

    python benchmarks/bench_kaggle.py [--device cpu] [--folds 1] [--real-copies 1 | --test-studies 4]
        [--data DIR] [--image-size 256] [--gpu-tflops 5] [--tiny] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from lumbar.core.paths import PROJECT_ROOT

FULL_CONFIG = PROJECT_ROOT / "configs" / "full.yaml"
#: Kaggle's limit for a code competition's GPU notebook, and the budget the projection leaves `predict`.
KAGGLE_HOURS, BUDGET_HOURS = 9.0, 8.0
HIDDEN_STUDIES = (500, 1000, 2000)
#: --tiny: the sizes of a CPU smoke run (every step, a few minutes on 2 cores); the architectures stay full.yaml's.
TINY = {"crop": 32, "localizer_size": 64, "slices": 8, "batch_size": 2, "image_size": 96}


def full_steps(path: Path = FULL_CONFIG) -> dict:
    """The parameters of configs/full.yaml's steps: 01 (crops), 02 (localizer), each 03 (classifiers), N_FOLDS."""
    from lumbar.pipeline import load_config

    by_nb = {}
    for s in load_config(path).steps:  # as the pipeline reads it (parallel blocks, top-level parameters)
        by_nb.setdefault(s.notebook, []).append(s.parameters)
    return {"preprocess": by_nb["01_preprocess"][0], "localizer": by_nb["02_train_localizer"][0],
            "classifiers": by_nb["03_train"], "n_folds": int(by_nb["03_train"][0].get("N_FOLDS", 5))}


def build_full_slice(data: Path, run: Path, folds: int, device: str, tiny: bool, batches: int) -> dict:
    """configs/full.yaml's pipeline on `data`'s train split, a few batches per model; returns what was built."""
    from lumbar.core.manifest import update_manifest
    from lumbar.core.tables import load_coordinates, load_labels
    from lumbar.data.index import load_or_build_index
    from lumbar.ensemble.blend import EnsembleParams
    from lumbar.localize.config import LocalizerConfig
    from lumbar.localize.folds import train_localizer_folds
    from lumbar.localize.train import train_localizer
    from lumbar.preprocess.cache import build_cache
    from lumbar.preprocess.config import RoiConfig
    from lumbar.train import train
    from lumbar.train.folds import load_or_make_folds

    full = full_steps()
    t0 = time.perf_counter()
    coords = load_coordinates(data / "train_label_coordinates.csv")
    pre = full["preprocess"]
    roi = RoiConfig.from_overrides({"size": TINY["crop"] if tiny else pre.get("SIZE", 64),
                                    "before": pre.get("BEFORE", 2), "after": pre.get("AFTER", 2),
                                    "filter": pre.get("FILTER", "none"), **(pre.get("EXTRA") or {})})  # fmt: skip
    cache = build_cache(coords, data, "train", run / "cache", roi, progress=False).cache_dir
    update_manifest(run, "preprocess", {"cache": str(cache.relative_to(run))})
    n_folds = full["n_folds"]
    fold_table = load_or_make_folds(run / "folds.csv", load_labels(data / "train.csv"), n_folds, seed=42)
    loc = full["localizer"]
    overrides = {"backbone": loc["BACKBONE"], "size": TINY["localizer_size"] if tiny else loc["SIZE"],
                 "epochs": 1, "axial_epochs": 1, "refine_epochs": 1, "device": device, **(loc.get("EXTRA") or {})}
    if tiny:
        overrides["slices"] = TINY["slices"]
    config = LocalizerConfig.from_dict(overrides)
    t_loc = time.perf_counter()
    index = load_or_build_index(data, "train", cache=run / "index_train.parquet")
    if folds > 1:
        kept = fold_table[fold_table["fold"] < folds]
        train_localizer_folds(config, data, coords[coords["study_id"].isin(kept["study_id"])], run, kept, index,
                              jobs=1, device=device, progress=False)  # fmt: skip
    else:
        train_localizer(config, data, coords, run, index=index, progress=False)
    localizer_s = time.perf_counter() - t_loc
    names, timings = [], {}
    for step in full["classifiers"]:
        extra = dict(step.get("EXTRA") or {})
        name = step["ARCH"].replace(":", "_").replace(".", "_")
        batch = TINY["batch_size"] if tiny else int(step.get("BATCH_SIZE", 16))
        result = train({"data_dir": str(data), "cache": str(cache), "out": str(run / name), "arch": step["ARCH"],
                        "n_folds": n_folds, "folds": ",".join(map(str, range(folds))), "epochs": 1,
                        "fast_dev_run": batches, "batch_size": batch, "lr": float(step.get("LR", 1e-3)),
                        "device": device, "progress": False, "pretrained": "none",
                        "model_kwargs": extra.get("model_kwargs", {}), "ema_decay": extra.get("ema_decay", 0.0),
                        "views": extra.get("views", ()), "fusion": extra.get("fusion", "early"),
                        "workers": 0 if tiny else min(extra.get("workers", 0), os.cpu_count() or 1)})  # fmt: skip
        names.append(name)
        timings[name] = result.summary["timings"]
        if extra.get("tta"):  # the worst case of the fold-wise choice: every unit predicts with every candidate
            record = json.loads((run / name / "result.json").read_text())
            for unit in record["units"].values():
                unit["tta"] = list(extra["tta"])
            (run / name / "result.json").write_text(json.dumps(record))
        for last in (run / name).glob("*/fold*/last.pt"):  # resume state (weights, AdamW, EMA): predict reads final.pt
            last.unlink()
    params = EnsembleParams(names, {"all": [1.0 / len(names)] * len(names)})
    (run / "ensemble").mkdir(exist_ok=True)
    (run / "ensemble" / "params.json").write_text(json.dumps(params.to_dict()))
    update_manifest(run, "ensemble", {"models": names, "params": "ensemble/params.json", "chosen": "all four, "
                                      "equal weights (a speed benchmark)"})  # fmt: skip
    return {"classifiers": names, "timings": timings, "localizer_s": localizer_s, "roi": roi.to_dict(),
            "localizer": config.to_dict(), "seconds": time.perf_counter() - t0, "n_folds": n_folds}


def count_flops(data: Path, run: Path, device: str) -> dict[str, float]:
    """FLOPs of the localizer's and the classifiers' forwards over the test split (a second, counted `predict`)."""
    from torch.utils.flop_counter import FlopCounterMode

    import lumbar.train.predict as train_predict
    from lumbar.inference.predict import PredictOptions, predict
    from lumbar.localize.predict import Localizer

    flops = {"localize": 0.0, "classify": 0.0}

    def counted(fn, key):
        def wrapper(*args, **kwargs):
            with FlopCounterMode(display=False) as counter:
                out = fn(*args, **kwargs)
            flops[key] += counter.get_total_flops()
            return out

        return wrapper

    original = (Localizer.predict, train_predict.predict_probs)
    Localizer.predict = counted(Localizer.predict, "localize")
    train_predict.predict_probs = counted(train_predict.predict_probs, "classify")
    try:
        predict(data, "test", run, options=PredictOptions(device=device, progress=False,
                                                          max_fallback_share=1.0))
    finally:
        Localizer.predict, train_predict.predict_probs = original
    return flops


def projection(per_study_cpu: float, per_study_gpu_full: float, gpu_per_fold: float) -> list[dict]:
    """Hours for the hidden test sizes, and the most folds per model that fit the budget."""
    rows = []
    for n in HIDDEN_STUDIES:
        hours = n * (per_study_cpu + per_study_gpu_full) / 3600
        room = BUDGET_HOURS * 3600 / n - per_study_cpu
        k = max(0, min(5, math.floor(room / gpu_per_fold))) if gpu_per_fold > 0 else 5
        rows.append({"studies": n, "hours": hours, "fits": hours <= BUDGET_HOURS, "max_folds": k})
    return rows


def link_view(src: Path, split: str, out: Path) -> Path:
    """A data folder whose `split` is `src`'s (images linked, CSVs copied)."""
    (out / f"{split}_images").mkdir(parents=True)
    for study in (src / f"{split}_images").iterdir():
        (out / f"{split}_images" / study.name).symlink_to(study.resolve())
    for name in (f"{split}_series_descriptions.csv", "sample_submission.csv"):
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--folds", type=int, default=1, help="folds trained and predicted (scaled to --full-folds)")
    p.add_argument("--full-folds", type=int, default=0, help="folds of the full ensemble (0 = full.yaml's N_FOLDS)")
    p.add_argument("--data", default=None, help="a data folder with a train split (and a test split unless "
                                                "--real-copies); default: synthetic, written here")  # fmt: skip
    p.add_argument("--train-studies", type=int, default=6)
    p.add_argument("--test-studies", type=int, default=4, help="synthetic test studies (with --real-copies 0)")
    p.add_argument("--image-size", type=int, default=256, help="synthetic image size")
    p.add_argument("--real-copies", type=int, default=1, help="test on the real sample's 2 studies linked this "
                                                              "many times (0 = synthetic test studies)")  # fmt: skip
    p.add_argument("--sample", default=os.environ.get("LUMBAR_SAMPLE_DIR",
                                                      PROJECT_ROOT.parent / "shared" / "rsna2024-sample"))
    p.add_argument("--batches", type=int, default=1, help="training batches per fold model (they only need to exist)")
    p.add_argument("--gpu-tflops", type=float, default=5.0,
                   help="ASSUMED effective GPU throughput of the model forwards, TFLOP/s (CPU runs only)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--tiny", action="store_true", help="smoke sizes (crops 32, localizer 64 px, batch 2)")
    p.add_argument("--no-flops", dest="flops", action="store_false", help="skip the FLOP-counting pass")
    p.add_argument("--keep", default=None, help="build the slice here and keep it (default: a temporary folder)")
    args = p.parse_args()

    import torch

    from lumbar.data.synthetic import SynthConfig, generate
    from lumbar.inference.predict import PredictOptions, predict

    if args.threads:
        torch.set_num_threads(args.threads)
    full_folds = args.full_folds or full_steps()["n_folds"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        data = Path(args.data) if args.data else work / "synth"
        if not args.data:
            generate(data, SynthConfig(studies=args.train_studies, seed=0, image_size=TINY["image_size"] if args.tiny
                                       else args.image_size, test_studies=0 if args.real_copies else args.test_studies),
                     progress=False, workers=os.cpu_count() or 1)  # fmt: skip
        if args.real_copies:
            from bench_predict import real_view

            if not (Path(args.sample) / "train_images").is_dir():
                raise FileNotFoundError(f"real sample not found at {args.sample} (set LUMBAR_SAMPLE_DIR or "
                                        "--real-copies 0)")  # fmt: skip
            test = real_view(Path(args.sample), args.real_copies, work / "real")
            what = f"the real sample's 2 studies x {args.real_copies} (real image sizes, RLE-compressed DICOM)"
        else:
            test = link_view(data, "test", work / "test")
            what = f"{sum(1 for _ in (data / 'test_images').iterdir())} synthetic test studies"
        data_s = time.perf_counter() - t0
        built = build_full_slice(data, work / "run", args.folds, args.device, args.tiny, args.batches)
        options = PredictOptions(device=args.device, progress=False, max_fallback_share=1.0)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        cpu0 = time.process_time()
        sub, report = predict(test, "test", work / "run", options=options)
        cpu_s = time.process_time() - cpu0
        gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else None
        flops = count_flops(test, work / "run", args.device) if args.flops and not args.device.startswith("cuda") else None

    n = len(report.studies)
    scale = full_folds / args.folds
    stages = {k: v / n for k, v in report.seconds.items()}
    forward = {k: v / n for k, v in report.forward_seconds.items()}
    cpu_part = sum(stages.values()) - sum(forward.values())
    on_gpu = args.device.startswith("cuda")
    if on_gpu:
        gpu_full = sum(forward.values()) * scale
        gpu_source = f"measured forward seconds on {torch.cuda.get_device_name()} x {scale:g} (folds)"
    else:
        gpu_full = (sum(flops.values()) / n * scale / (args.gpu_tflops * 1e12)) if flops else float("nan")
        gpu_source = f"FLOPs (counted) x {scale:g} (folds) / an ASSUMED {args.gpu_tflops:g} TFLOP/s"
    rows = projection(cpu_part, gpu_full, gpu_full / full_folds)
    loc = built["localizer"]
    print(f"configs/full.yaml slice on {args.device} ({torch.get_num_threads()} CPU thread(s)): crops "
          f"{built['roi']['size']} px x {built['roi']['before'] + built['roi']['after'] + 1} slices; localizer "
          f"{loc['backbone']} at {loc['size']} px, {loc['slices']} slices; classifiers {', '.join(built['classifiers'])}"
          f"; {args.folds} of {full_folds} folds built ({built['seconds']:.0f} s, data {data_s:.0f} s), "
          f"{args.batches} training batch(es) each, untrained weights (speed only)\n")  # fmt: skip
    print(f"predict on {what}: {n} studies, {len(sub)} rows, {sum(report.seconds.values()):.1f} s "
          f"({cpu_s:.1f} CPU s), ensemble {report.ensemble['used']}, {report.ensemble['models']} models, "
          f"{report.ensemble['model_mib']:.0f} MiB of weights (x {scale:g} = "
          f"{report.ensemble['model_mib'] * scale:.0f} MiB for the full ensemble)"
          + (f", peak GPU memory {gpu_peak:.0f} MiB" if gpu_peak is not None else "") + "\n")  # fmt: skip
    print("| stage | s/study (measured) | of which model forwards | FLOPs/study (counted) |")
    print("|---|---:|---:|---:|")
    for k, v in stages.items():
        f = forward.get(k)
        g = (flops or {}).get(k)
        print(f"| {k} | {v:.3f} | {'' if f is None else f'{f:.3f}'} | {'' if g is None else f'{g / n / 1e9:,.1f} G'} |")
    print(f"| total | {sum(stages.values()):.3f} | {sum(forward.values()):.3f} | "
          f"{'' if not flops else f'{sum(flops.values()) / n / 1e9:,.1f} G'} |\n")
    print(f"projection per study on a Kaggle GPU notebook, {full_folds} folds of every model: CPU part "
          f"{cpu_part:.2f} s (measured: stages minus model forwards) + GPU part {gpu_full:.3f} s ({gpu_source}) = "
          f"{cpu_part + gpu_full:.2f} s; limit {KAGGLE_HOURS:g} h, `predict` budget {BUDGET_HOURS:g} h\n")  # fmt: skip
    print("| hidden test studies | projected hours (full ensemble) | fits the budget | --max-folds that fits |")
    print("|---:|---:|---|---:|")
    for r in rows:
        print(f"| {r['studies']:,} | {r['hours']:.2f} | {'yes' if r['fits'] else 'NO'} | {r['max_folds']} |")
    print("summary: " + json.dumps({"stage": f"Kaggle projection: 2,000 studies, full.yaml ensemble ({full_folds} "
                                             "folds)", "plain": "", "ratio": None,
                                    "lumbar": f"{rows[-1]['hours']:.2f} h ({cpu_part + gpu_full:.2f} s/study: CPU "
                                              f"{cpu_part:.2f} measured + GPU {gpu_full:.3f} from {gpu_source})"}))
    sys.exit(0)


if __name__ == "__main__":
    main()
