"""Competition scale, measured: every data stage at 100, 500 and 1,975 studies (`make bench-scale`).

For each size, a data folder holding the first N training studies of one competition-size synthetic set
(`--data-dir`, written by `lumbar synth` when missing; study folders are linked, the CSVs filtered), then
each stage as one command in a fresh process:

- header index: `lumbar index` over the N studies;
- crop cache: `lumbar preprocess` of their ground-truth coordinates at configs/full.yaml's crop geometry;
- loader: one epoch of the training data pipeline alone (`--loader`): every labelled item of the three
  competition units through `RoiDataset` (train: jitter, mirror, augmentation) and a `DataLoader` at the batch
  size of configs/full.yaml with `--loader-workers` workers; no model;
- localisation + prediction: `lumbar predict` of the N studies with a small ensemble trained here on 8 of
  them (`bench_predict.train_demo_run`: demo sizes, one epoch) or `--run`.

Each stage's CPU seconds are user + system of the process and every worker it waited for (so a shared,
busy machine changes its wall time but hardly its CPU seconds: growth is judged on CPU seconds); its memory
is the peak of the process tree's summed PSS, sampled every half second (`peak_memory.run_tree_measured`),
beside the largest single process's peak RSS. Finally (`--train-arch`) one architecture trains one epoch on
the largest cache with `--loader-workers` workers: its peak memory against the cache's size on disk.

    python benchmarks/bench_scale.py [--data-dir input/synthetic-scale] [--sizes 100 500 1975] [--work runs/scale]
        [--workers N] [--loader-workers 2] [--train-arch timm25d:convnext_atto] [--out benchmarks/scale.md]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from peak_memory import TreeMeasured, run_tree_measured
from run_all import load, machine

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: The sizes of the table; the largest is the competition's training set.
SIZES = (100, 500, 1975)
#: Test studies written beside the training studies when the set is made here.
TEST_STUDIES = 100
#: Matrix of the synthetic set (the demo's): 1.45 MB and 0.67 CPU s per study (2,075 studies: 2.93 GiB, 1,381 CPU s
#: at load up to 6, 2026-12-06); pixels, and with them most of both, grow with the matrix squared.
IMAGE_SIZE = 128
#: Studies the predict ensemble is trained on (one epoch; its speed matters here, not its accuracy).
RUN_STUDIES = 8
#: Growth allowed before a stage is called non-linear (marginal CPU s per study, 500->1975 vs 100->500)
#: or its memory not flat (peak at the largest size vs the smallest).
LINEAR_TOLERANCE, FLAT_TOLERANCE = 1.25, 1.2
#: The command-line settings a rendered table states (kept in rows.json with the measurements).
SETTINGS = ("argv", "sizes", "predict_sizes", "data_dir", "config", "workers", "predict_workers", "loader_workers")
#: Stages whose peak memory should not depend on the number of studies (they stream).
STREAMING = ("crop cache", "loader", "predict")
#: The GPU step rates the loader has to feed: training images/s of configs/full.yaml's encoders in timm's
#: published benchmark (huggingface/pytorch-image-models, results/benchmark-train-amp-nhwc-pt112-cu113-rtx3090.csv:
#: one RTX 3090, AMP, channels-last), at the image size listed there; not measured here. hgnetv2_b5 is not in it.
GPU_REFERENCE = {
    "timm25d:resnet34.a1_in1k": ("resnet34", 2036.51, 224),
    "timmseq:tf_efficientnetv2_s.in21k_ft_in1k": ("tf_efficientnetv2_s", 488.25, 300),
    "timmseq:convnext_small.fb_in22k": ("convnext_small", 487.15, 224),
}


def full_recipe(config: Path) -> tuple[dict, int]:
    """(ROI parameters of 01_preprocess, batch size of the first 03_train) in a pipeline config."""
    from lumbar.pipeline import load_config

    steps = load_config(config).steps  # as the pipeline reads it (parallel blocks, top-level parameters)
    pre = next(s.parameters for s in steps if s.notebook == "01_preprocess")
    batch = next(s.parameters["BATCH_SIZE"] for s in steps if s.notebook == "03_train")
    roi = {"size": pre["SIZE"], "before": pre["BEFORE"], "after": pre["AFTER"], "filter": pre.get("FILTER", "none"),
           **pre.get("EXTRA", {})}  # fmt: skip
    return roi, int(batch)


def cache_bytes_per_sample(roi: dict) -> int:
    """Bytes of one stored float16 crop: (depth + 2 pad_slices) x (size + 2 pad_px)^2 x 2."""
    from lumbar.preprocess.config import RoiConfig

    c = RoiConfig.from_overrides(roi)
    return (c.out_depth + 2 * c.pad_slices) * (c.size + 2 * c.pad_px) ** 2 * 2


def scale_view(src: Path, studies: list[int], out: Path) -> Path:
    """A data folder of `studies` of src's train split: image folders linked, train CSVs filtered."""
    import pandas as pd

    from lumbar.core.tables import write_csv

    if (out / "train.csv").is_file():
        return out
    (out / "train_images").mkdir(parents=True, exist_ok=True)
    for s in studies:
        link = out / "train_images" / str(s)
        if not link.exists():
            link.symlink_to((src / "train_images" / str(s)).resolve())
    for name in ("train_series_descriptions.csv", "train_label_coordinates.csv", "train.csv"):
        table = pd.read_csv(src / name)
        write_csv(table[table["study_id"].isin(studies)], out / name)
    shutil.copy(src / "synthetic.json", out / "synthetic.json")
    return out


def loader_epoch(cache_dir: Path, labels_csv: Path, batch_size: int, workers: int, seed: int = 42) -> dict:
    """The child side of the loader stage: one epoch of every labelled item of the competition units."""
    import torch
    from torch.utils.data import DataLoader

    from lumbar.core.tables import load_labels
    from lumbar.train.augment import StackAugment, resolve_augmentations
    from lumbar.train.config import TrainConfig
    from lumbar.train.dataset import RoiDataset, read_cache
    from lumbar.train.sampling import make_train_sampler
    from lumbar.train.tasks import build_tasks

    torch.set_num_threads(1)
    defaults = TrainConfig()
    cache, labels = read_cache(cache_dir), load_labels(labels_csv)
    samples = batches = 0
    t0 = time.perf_counter()
    for task in build_tasks("competition"):
        items = task.items(cache.samples, labels)
        items = items[[max(g) >= 0 for g in items["grades"]]]
        dataset = RoiDataset(cache, task, items, train=True, seed=seed, mirror_p=defaults.mirror_p,
                             augment=StackAugment(resolve_augmentations(defaults.augment, task.conditions)),
                             max_shift_slices=defaults.max_shift_slices, max_shift_px=defaults.max_shift_px)
        dataset.set_epoch(1)
        sampler = make_train_sampler(dataset, False, None, 1, 0, seed)
        loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True)
        for batch in loader:
            samples += len(batch["image"])
            batches += 1
    return {"samples": samples, "batches": batches, "seconds": time.perf_counter() - t0}


@dataclass
class Row:
    """One stage at one size."""

    stage: str
    studies: int
    units: float
    unit: str
    m: TreeMeasured
    load_before: str
    load_after: str
    extra: dict = field(default_factory=dict)


def measure(cmd: list[str], what: str, timeout: float | None = None) -> tuple[TreeMeasured, str, str]:
    """Run one stage command (niced like the caller), with the load average before and after."""
    before = load()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}  # fmt: skip
    m = run_tree_measured(cmd, timeout=timeout, env=env, cwd=str(ROOT))
    after = load()
    print(f"# {what}: exit {m.returncode}, {m.wall_s:.1f} s wall, {m.cpu_s:.1f} CPU s, tree PSS {m.tree_pss_mib:.0f} MiB, "
          f"largest RSS {m.peak_mib:.0f} MiB; load {before} -> {after}", file=sys.stderr, flush=True)  # fmt: skip
    if m.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {m.returncode}): {' '.join(cmd)}\n{m.stderr[-3000:]}")
    return m, before, after


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def ensure_data(data: Path, studies: int, rows: list[Row]) -> dict:
    """The synthetic set's manifest; the set is written first (`lumbar synth`, every core) when missing."""
    if not (data / "synthetic.json").is_file():
        cmd = [sys.executable, "-m", "lumbar", "synth", "--out", str(data), "--studies", str(studies),
               "--test-studies", str(TEST_STUDIES), "--seed", "0", "--image-size", str(IMAGE_SIZE)]  # fmt: skip
        m, before, after = measure(cmd, "synth", None)
        manifest = json.loads((data / "synthetic.json").read_text())
        rows.append(Row("synthetic set", studies + TEST_STUDIES, manifest["files"], "files", m, before, after,
                        {"disk_mib": manifest["bytes"] / 2**20}))  # fmt: skip
    manifest = json.loads((data / "synthetic.json").read_text())
    if manifest["config"]["studies"] < studies:
        raise ValueError(f"{data} holds {manifest['config']['studies']} training studies, the table needs {studies}")
    return manifest


def ensure_run(args: argparse.Namespace, data: Path, studies: list[int]) -> Path:
    """The predict ensemble: `--run`, or one trained here (once) on the first `RUN_STUDIES` studies."""
    if args.run:
        return Path(args.run)
    run = Path(args.work) / "run"
    if not (run / "manifest.json").is_file() or "ensemble" not in json.loads((run / "manifest.json").read_text()):
        view = scale_view(data, studies[:RUN_STUDIES], Path(args.work) / f"view-{RUN_STUDIES}")
        shutil.rmtree(run, ignore_errors=True)
        measure([sys.executable, __file__, "--train-run", str(view), str(run)], "train the predict ensemble")
    return run


def run_size(n: int, data: Path, studies: list[int], run: Path, args, roi: dict, batch: int) -> list[Row]:
    """The four stages on the first n studies."""
    work = Path(args.work)
    view = scale_view(data, studies[:n], work / f"view-{n}")
    rows = []
    index_out = work / f"index-{n}.parquet"
    m, b, a = measure([sys.executable, "-m", "lumbar", "index", "--data-dir", str(view), "--split", "train",
                       "--out", str(index_out), "--workers", str(args.workers)], f"index {n}")  # fmt: skip
    import pandas as pd

    files = len(pd.read_parquet(index_out, columns=["study_id"]))
    rows.append(Row("header index", n, files, "files", m, b, a))

    cache_root = work / f"cache-{n}"
    shutil.rmtree(cache_root, ignore_errors=True)
    cmd = [sys.executable, "-m", "lumbar", "preprocess", "--data-dir", str(view), "--split", "train", "--coords",
           str(view / "train_label_coordinates.csv"), "--out", str(cache_root), "--workers", str(args.workers),
           "--size", str(roi["size"]), "--before", str(roi["before"]), "--after", str(roi["after"]),
           "--filter", roi["filter"]]  # fmt: skip
    m, b, a = measure(cmd, f"crop cache {n}")
    cache_dir = next(p.parent for p in cache_root.glob("*/samples.parquet"))
    samples = len(pd.read_parquet(cache_dir / "samples.parquet", columns=["sample_id"]))
    rows.append(Row("crop cache", n, samples, "samples", m, b, a, {"disk_mib": disk_bytes(cache_dir) / 2**20}))

    sweep = args.loader_sweep if n == min(args.sizes) else []
    for w in [args.loader_workers, *[w for w in sweep if w != args.loader_workers]]:
        cmd = [sys.executable, __file__, "--loader", str(cache_dir), "--labels", str(view / "train.csv"),
               "--batch-size", str(batch), "--loader-workers", str(w)]  # fmt: skip
        m, b, a = measure(cmd, f"loader {n}, workers {w}")
        r = json.loads(m.stdout.strip().splitlines()[-1])
        rows.append(Row("loader" if w == args.loader_workers else f"loader, workers={w}", n, r["samples"], "samples",
                        m, b, a, {"workers": w, "loop_s": r["seconds"]}))  # fmt: skip

    if n not in args.predict_sizes:
        return _drop_cache(n, cache_root, args, rows)
    out = work / f"predict-{n}.csv"
    m, b, a = measure([sys.executable, "-m", "lumbar", "predict", "--data-dir", str(view), "--split", "train",
                       "--run", str(run), "--out", str(out), "--work-dir", str(work / f"predict-scratch-{n}"),
                       "--workers", str(args.predict_workers), "--device", "cpu"], f"predict {n}")  # fmt: skip
    record = json.loads(out.with_suffix(".json").read_text())
    rows.append(Row("predict", n, record["studies"], "studies", m, b, a, {"seconds": record["seconds"]}))
    return _drop_cache(n, cache_root, args, rows)


def _drop_cache(n: int, cache_root: Path, args, rows: list[Row]) -> list[Row]:
    """The rows of size n, after deleting its crop cache unless it is the largest (trained on) or --keep."""
    if n != max(args.sizes) and not args.keep:
        shutil.rmtree(cache_root, ignore_errors=True)
    return rows


def train_epoch(args, n: int, cache_dir: Path, batch: int) -> Row:
    """One epoch of `--train-arch` (fold 0 of 5: 4/5 of the items trained, 1/5 validated) on the largest cache."""
    out = Path(args.work) / "train" / args.train_arch.replace(":", "_")
    shutil.rmtree(out.parent, ignore_errors=True)
    cmd = [sys.executable, "-m", "lumbar", "train", "--data-dir", str(Path(args.work) / f"view-{n}"), "--cache",
           str(cache_dir), "--arch", args.train_arch, "--folds", "0", "--epochs", "1", "--batch-size", str(batch),
           "--workers", str(args.loader_workers), "--device", "cpu", "--out", str(out), "--set", "threads=1",
           "--set", "progress=false"]  # fmt: skip
    m, b, a = measure(cmd, f"train {args.train_arch} one epoch")
    import pandas as pd

    result = json.loads((out / "result.json").read_text())
    samples = sum(int(pd.read_csv(h)["samples"].sum()) for h in out.glob("*/fold*/history.csv"))
    return Row("train one epoch", n, samples, "samples", m, b, a, {"result": result, "command": " ".join(cmd[1:])})


def _row(d: dict) -> Row:
    return Row(**{**d, "m": TreeMeasured(**d["m"])})


def _fmt(v: float, digits: int = 1) -> str:
    return f"{v:,.{digits}f}"


def render(rows: list[Row], args, roi: dict, batch: int, info: dict, manifest: dict, started: str, total_s: float,
           train: Row | None) -> tuple[str, list[str]]:  # fmt: skip
    """The markdown section and the list of stages that are not linear or not flat."""
    per_sample = cache_bytes_per_sample(roi)
    n_max, sizes = max(args.sizes), args.sizes
    cfg = manifest["config"]
    lines = [
        "## Competition scale: every data stage at 100, 500 and 1,975 studies",
        "",
        (f"Written by `make bench-scale` (`python benchmarks/bench_scale.py {' '.join(args.argv)}`) on {started}, "
         f"{total_s / 60:.0f} minutes in all, at commit {info['commit']}; {info['cpu']}, {info['cores']} cores, "
         f"{info['memory']}, shared with other work (each stage's load average before and after is in its row)."),
        "",
        (f"Data: `{args.data_dir}`, {cfg['studies']:,} train + {cfg['test_studies']} test synthetic studies at "
         f"{cfg['image_size']} px (seed {cfg['seed']}), {manifest['files']:,} DICOM files, "
         f"{manifest['bytes'] / 2**30:.2f} GiB; each size is its first N training studies. Crop geometry and batch "
         f"size of `{args.config}`: {roi}, batch {batch}; a stored crop is {per_sample:,} bytes. Index and crop cache "
         f"use {args.workers} worker process(es), predict {args.predict_workers} (at "
         f"{', '.join(f'{n:,}' for n in getattr(args, 'predict_sizes', None) or sizes)} studies), the loader "
         f"{args.loader_workers}. "
         "Torch and OpenMP: one "
         "thread per process. CPU s = user + system of the stage's process tree. Memory, sampled every 0.5 s: the "
         "peak of the tree's summed RSS (a page shared by the tree's processes counted once per process: an upper "
         "bound, and the figure judged below), the peak of its summed PSS (shared pages split among every process "
         "mapping them, including other programs using the same libraries: lower, and noisier on a shared "
         "machine), and the largest single process's exact peak RSS."),
        "",
        ("| stage | studies | work | wall s | CPU s | per wall s | per CPU s | CPU s per study | tree RSS MiB "
         "| tree PSS MiB | largest RSS MiB | on disk MiB | load before -> after |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        disk = _fmt(r.extra["disk_mib"], 0) if "disk_mib" in r.extra else ""
        lines.append(
            f"| {r.stage} | {r.studies:,} | {r.units:,.0f} {r.unit} | {_fmt(r.m.wall_s)} | {_fmt(r.m.cpu_s)} "
            f"| {_fmt(r.units / r.m.wall_s)} | {_fmt(r.units / max(r.m.cpu_s, 1e-9))} "
            f"| {r.m.cpu_s / r.studies:.3f} | {_fmt(r.m.tree_rss_mib, 0)} | {_fmt(r.m.tree_pss_mib, 0)} "
            f"| {_fmt(r.m.peak_mib, 0)} | {disk} "
            f"| {r.load_before} -> {r.load_after} |")  # fmt: skip
    lines += ["", ("Growth: the marginal CPU seconds per study between sizes (the fixed start-up cancels), linear "
                   f"when the last step's slope is within {LINEAR_TOLERANCE}x of the first's; memory flat for a streaming "
                   f"stage when its peak tree RSS at {n_max:,} studies is within {FLAT_TOLERANCE}x of its peak at "
                   f"{min(args.sizes)}."),
              "", ("| stage | sizes | CPU s/study, first step | last step | slope ratio "
                   "| peak tree RSS, smallest -> largest | verdict |"), "|---|---|---:|---:|---:|---|---|"]  # fmt: skip
    problems = []
    for stage in dict.fromkeys(r.stage for r in rows if r.stage in ("header index", "crop cache", "loader", "predict")):
        by = sorted((r for r in rows if r.stage == stage), key=lambda r: r.studies)
        if len(by) < 3:
            continue
        slopes = [(b.m.cpu_s - a.m.cpu_s) / (b.studies - a.studies) for a, b in itertools.pairwise(by)]
        ratio = slopes[-1] / slopes[0] if slopes[0] > 0 else float("inf")
        growth = by[-1].m.tree_rss_mib / max(by[0].m.tree_rss_mib, 1e-9)
        linear = ratio <= LINEAR_TOLERANCE
        flat = growth <= FLAT_TOLERANCE or stage not in STREAMING
        verdict = ("linear" if linear else "NOT linear") + (
            (", memory flat" if flat else ", memory NOT flat") if stage in STREAMING else
            f", memory grows with the table ({(by[-1].m.tree_rss_mib - by[0].m.tree_rss_mib) / (by[-1].units - by[0].units) * 1024:.1f} KiB per {by[0].unit[:-1]})")  # fmt: skip
        if not (linear and flat):
            problems.append(f"{stage}: {verdict}")
        lines.append(f"| {stage} | {' -> '.join(f'{r.studies:,}' for r in by)} | {slopes[0]:.3f} | {slopes[-1]:.3f} "
                     f"| {ratio:.2f} | "
                     f"{by[0].m.tree_rss_mib:,.0f} -> {by[-1].m.tree_rss_mib:,.0f} MiB ({growth:.2f}x) | {verdict} |")
    lines += ["", gpu_feed(rows, roi)]
    pred = [r for r in rows if r.stage == "predict"]
    if pred:
        lines += ["", "predict's own stage seconds per study (from its record): " + "; ".join(
            f"{r.studies:,} studies: " + ", ".join(f"{k} {v / r.studies:.3f}" for k, v in r.extra["seconds"].items())
            for r in pred)]  # fmt: skip
    if train is not None:
        lines += ["", train_section(train, rows, per_sample)]
    return "\n".join(lines) + "\n", problems


def gpu_feed(rows: list[Row], roi: dict) -> str:
    """The loader's samples per CPU second against the GPU step rates it would have to feed."""
    from lumbar.preprocess.config import RoiConfig

    loader = max((r for r in rows if r.stage == "loader"), key=lambda r: r.studies)
    per_core = loader.units / loader.m.cpu_s
    c = RoiConfig.from_overrides(roi)
    pixels = c.out_depth * c.size**2
    lines = [(f"Loader against the GPU: one epoch's loader at {loader.studies:,} studies delivered {per_core:,.0f} "
              f"samples per CPU second (workers={loader.extra['workers']}, start-up included), so each loader "
              "worker on a free core feeds about that many samples/s. The step rates below are timm's published "
              "training throughput on one RTX 3090 (AMP, channels-last; `results/benchmark-train-amp-nhwc-pt112-"
              f"cu113-rtx3090.csv` in huggingface/pytorch-image-models), scaled by pixels to one {c.out_depth} x "
              f"{c.size} x {c.size} sample: estimates, not measured here; a newer GPU (A100, H100) steps faster "
              "still, and `benchmarks/gpu_check.sh` measures its loader-vs-step balance."), "",
             ("| architecture (configs/full.yaml) | reference images/s (size) | samples/s to feed | loader workers "
             "needed (one free core each) |"), "|---|---:|---:|---:|"]  # fmt: skip
    for arch, (name, rate, size) in GPU_REFERENCE.items():
        need = rate * size**2 / pixels
        lines.append(f"| {arch} | {rate:,.0f} ({name}, {size} px) | {need:,.0f} | {need / per_core:.1f} |")
    return "\n".join(lines)


def train_section(train: Row, rows: list[Row], per_sample: int) -> str:
    """One epoch of one architecture on the largest cache: memory against the cache's size on disk."""
    cache = next(r for r in reversed(rows) if r.stage == "crop cache")
    res = train.extra["result"]
    timings = res.get("timings", {})
    lines = [f"One training epoch on the {train.studies:,}-study cache: `python {train.extra['command']}`", "",
             ("| cache on disk | samples x bytes | trained (fold 0) | wall s | CPU s | tree PSS peak | tree RSS peak "
              "| largest RSS | processes | tree RSS / cache | load before -> after |"),
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
             (f"| {cache.extra['disk_mib'] / 1024:.2f} GiB | {cache.units:,.0f} x {per_sample:,} | {train.units:,.0f} "
              f"| {_fmt(train.m.wall_s)} | {_fmt(train.m.cpu_s)} | {train.m.tree_pss_mib:,.0f} MiB "
              f"| {train.m.tree_rss_mib:,.0f} MiB | {train.m.peak_mib:,.0f} MiB | {train.m.processes} "
              f"| {train.m.tree_rss_mib / cache.extra['disk_mib']:.2f} | {train.load_before} -> {train.load_after} |")]  # fmt: skip
    if timings:
        lines += ["", "| unit/fold | train s | loader s per batch | model s per batch |", "|---|---:|---:|---:|"]
        for unit, t in timings.items():
            lines.append(f"| {unit} | {t.get('train_seconds', 0):.0f} | {t.get('data_s_per_batch', 0):.3f} "
                         f"| {t.get('model_s_per_batch', 0):.3f} |")  # fmt: skip
    return "\n".join(lines)


def splice(results: Path, section: str) -> None:
    """Put `section` into results.md: replace its own heading's section, else insert it before `## GPU`."""
    text = results.read_text() if results.is_file() else ""
    head = section.splitlines()[0]
    if head in text:
        start = text.index(head)
        nxt = text.find("\n## ", start + len(head))
        text = text[:start] + section.rstrip() + "\n" + (text[nxt:] if nxt >= 0 else "")
    elif "\n## GPU" in text:
        at = text.index("\n## GPU")
        text = text[:at] + "\n" + section.rstrip() + "\n" + text[at:]
    else:
        text = text.rstrip() + "\n\n" + section
    tmp = results.with_name(f".{results.name}.tmp")
    tmp.write_text(text)
    tmp.replace(results)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="input/synthetic-scale", help="the competition-size synthetic set")
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--work", default="runs/scale", help="views, caches, predictions (caches of the smaller sizes "
                   "are deleted after their row unless --keep)")
    p.add_argument("--config", default="configs/full.yaml", help="crop geometry and batch size from this config")
    p.add_argument("--workers", type=int, default=0, help="processes of index, crop cache and predict (0 = cores)")
    p.add_argument("--loader-workers", type=int, default=2, help="DataLoader workers of the loader and training")
    p.add_argument("--loader-sweep", type=int, nargs="*", default=[0, 1],
                   help="more loader worker counts, at the smallest size only")
    p.add_argument("--predict-sizes", type=int, nargs="*", default=None,
                   help="the sizes at which predict runs (default: every size; predict costs about a CPU second "
                        "per study, the longest stage)")
    p.add_argument("--predict-workers", type=int, default=1,
                   help="predict's processes (1: its crop pool is started per chunk of 16 studies, which costs "
                        "more than it saves here)")
    p.add_argument("--run", default=None, help="a trained run for predict (default: train a small one here)")
    p.add_argument("--train-arch", default="", help="train this architecture one epoch on the largest cache")
    p.add_argument("--keep", action="store_true", help="keep every size's crop cache")
    p.add_argument("--out", default=str(HERE / "scale.md"), help="the section, also spliced into --results")
    p.add_argument("--results", default=str(HERE / "results.md"), help="results.md to update ('' = none)")
    p.add_argument("--loader", help=argparse.SUPPRESS)
    p.add_argument("--labels", help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--train-run", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--render", action="store_true", help="only render <work>/rows.json of an earlier run")
    args = p.parse_args()
    if args.render:
        roi, batch = full_recipe(ROOT / args.config)
        write_section(args, json.loads((Path(args.work) / "rows.json").read_text()), roi, batch)
        return
    if args.loader:
        print(json.dumps(loader_epoch(Path(args.loader), Path(args.labels), args.batch_size, args.loader_workers)))
        return
    if args.train_run:
        from bench_predict import train_demo_run

        print(json.dumps({"seconds": train_demo_run(Path(args.train_run[0]), Path(args.train_run[1]), "cpu")}))
        return

    import datetime

    from lumbar.data.synthetic.generate import available_cores

    args.argv = sys.argv[1:]
    args.workers = args.workers or available_cores()
    args.sizes = sorted(args.sizes)
    args.predict_sizes = sorted(args.sizes if args.predict_sizes is None else args.predict_sizes)
    if not set(args.predict_sizes) <= set(args.sizes):
        p.error(f"--predict-sizes {args.predict_sizes} must be among --sizes {args.sizes}")
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    t0 = time.perf_counter()
    roi, batch = full_recipe(ROOT / args.config)
    data, work = Path(args.data_dir), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    manifest = ensure_data(data, max(args.sizes), rows)
    settings = {k: getattr(args, k) for k in SETTINGS}
    train = None

    def save() -> dict:
        record = {"rows": [asdict(r) for r in rows], "train": asdict(train) if train else None, "manifest": manifest,
                  "started": started, "seconds": time.perf_counter() - t0, "settings": settings, "machine": machine()}
        (work / "rows.json").write_text(json.dumps(record, indent=1))
        return record

    studies = sorted(int(s.name) for s in (data / "train_images").iterdir() if s.name.isdigit())
    run = ensure_run(args, data, studies)
    for n in args.sizes:
        rows += run_size(n, data, studies, run, args, roi, batch)
        save()
    if args.train_arch:
        n = max(args.sizes)
        cache_dir = next(p.parent for p in (work / f"cache-{n}").glob("*/samples.parquet"))
        train = train_epoch(args, n, cache_dir, batch)
    write_section(args, save(), roi, batch)


def write_section(args: argparse.Namespace, record: dict, roi: dict, batch: int) -> None:
    """Render the measured rows (`<work>/rows.json`) into `--out` and results.md's section."""
    rows = [_row(r) for r in record["rows"]]
    train = _row(record["train"]) if record["train"] else None
    for k, v in record["settings"].items():
        setattr(args, k, v)
    section, problems = render(rows, args, roi, batch, record["machine"], record["manifest"], record["started"],
                               record["seconds"], train)  # fmt: skip
    print(section)
    Path(args.out).write_text(section)
    if args.results:
        splice(Path(args.results), section)
    for line in problems:
        print(f"bench_scale: {line}", file=sys.stderr)


if __name__ == "__main__":
    main()
