"""Throughput of the ROI cache build (`lumbar.preprocess.build_cache`): samples/s and studies/s, beside a plain loop.

On a data folder with coordinates (e.g. one written by `python -m lumbar synth`), or on the real
sample's two studies linked `--copies` times under new study ids (symlinks, no copy). Each row builds
a fresh cache (nothing to resume), so the numbers are the cold cost of decoding, cropping and writing.

The plain alternative, in the same process: per coordinate row, read the row's series with
`pydicom.dcmread(f).pixel_array` for every file, sort by InstanceNumber, take the window of slices around
the row's instance, crop a fixed pixel box around the point, scale to [0, 1] by percentiles, resize to the
output size and save float16 - what a first notebook does. It is compared with the default config
(B2A2 128 none). The `summary: {json}` lines are the headline rows `run_all.py` collects.

First, a table times each registered intensity filter (`lumbar.preprocess.filters`, OpenCV) on one 512 x 512
slice, best of `--filter-repeat` calls after a warm-up, beside its scipy.ndimage equivalent where there is
one, against the 50 ms per slice the cache's filters are meant to stay under (a unit test asserted this
until it moved here: a wall-clock bound fails on a busy shared machine without anything being wrong). It
runs first, in the fresh process, because a call's time includes allocating its output: there that takes
about 480 page faults per call, most of the 0.8 ms a 3 x 3 median takes here (the OpenCV call alone: 0.06
ms), while a process that has already churned through memory, as after the cache builds, reuses it and
times the same filters several times faster. The fresh-process numbers are the conservative ones.

    python benchmarks/bench_preprocess.py [--data-dir DIR --coords FILE] [--copies 10] [--workers 1 2]
        [--configs "B2A2 128 none" ...] [--filter-repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
from scipy import ndimage

from lumbar.core.paths import PROJECT_ROOT, series_dir
from lumbar.core.tables import load_coordinates
from lumbar.preprocess.cache import build_cache, cache_name
from lumbar.preprocess.config import RoiConfig
from lumbar.preprocess.filters import apply_filter, list_filters

CONFIGS = {
    "B2A2 128 none": RoiConfig(),
    "B2A2 128 mean_median": RoiConfig(filter="mean_median"),
    "B1A1 96 clahe thesis_px": RoiConfig(before=1, after=1, size=96, filter="clahe", margin_mode="thesis_px"),
    "full 96 15D none": RoiConfig(mode="full_series", size=96, depth=15),
}
#: The config the plain loop does the same work as.
PLAIN_CONFIG = "B2A2 128 none"
#: scipy.ndimage equivalents of the registered filters, per slice (3 x 3 in the plane, nothing across slices).
PLANE = (1, 3, 3)
SCIPY_FILTERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean_median": lambda s: 0.5 * (ndimage.uniform_filter(s, PLANE) + ndimage.median_filter(s, PLANE)),
    "median": lambda s: ndimage.median_filter(s, PLANE),
    "gaussian": lambda s: ndimage.gaussian_filter(s, sigma=(0, 1, 1)),
    "unsharp": lambda s: np.clip(2.0 * s - ndimage.gaussian_filter(s, sigma=(0, 1, 1)), 0.0, 1.0),
}
FILTER_TARGET_MS = 50.0


def link_sample(sample: Path, out: Path, copies: int) -> pd.DataFrame:
    """Symlink the sample's studies `copies` times under new ids; return their coordinates."""
    coords = load_coordinates(sample / "train_label_coordinates.csv")
    parts = []
    for c in range(copies):
        for study in sorted((sample / "train_images").iterdir()):
            new_id = int(f"{c + 1}{study.name}")
            (out / "train_images").mkdir(parents=True, exist_ok=True)
            (out / "train_images" / str(new_id)).symlink_to(study.resolve())
            parts.append(coords[coords["study_id"] == int(study.name)].assign(study_id=new_id))
    return pd.concat(parts, ignore_index=True)


def plain_cache(coords: pd.DataFrame, data: Path, out: Path, config: RoiConfig, half_px: int = 48) -> int:
    """The plain per-row loop (module docstring) for a target-window config; returns the samples written."""
    built = 0
    for r in coords.itertuples():
        try:
            files = sorted(series_dir(data, "train", r.study_id, r.series_id).glob("*.dcm"))
            ds = sorted((pydicom.dcmread(f) for f in files), key=lambda d: int(d.InstanceNumber))
            k = next(i for i, d in enumerate(ds) if int(d.InstanceNumber) == r.instance_number)
        except (OSError, StopIteration, ValueError):
            continue
        x, y = round(r.x), round(r.y)
        window = []
        for d in ds[max(k - config.before, 0) : k + config.after + 1]:
            img = d.pixel_array.astype(np.float32)
            crop = img[max(y - half_px, 0) : y + half_px, max(x - half_px, 0) : x + half_px]
            lo, hi = np.percentile(crop, (1, 99))
            crop = np.clip((crop - lo) / max(hi - lo, 1e-6), 0, 1)
            window.append(cv2.resize(crop, (config.size, config.size), interpolation=cv2.INTER_AREA))
        folder = out / str(r.study_id)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{r.condition}_{r.level}.npy", np.stack(window).astype(np.float16))
        built += 1
    return built


def best_ms(func: Callable[[], object], repeat: int) -> float:
    """Fastest of `repeat` calls after one warm-up call (OpenCV initialises lazily), in milliseconds."""
    func()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return 1000 * min(times)


def filter_times(repeat: int, size: int = 512) -> None:
    """Print the per-slice filter table and its summary row (module docstring)."""
    image = np.random.default_rng(1).random((1, size, size), dtype=np.float32)
    target = f"< {FILTER_TARGET_MS:.0f} ms"
    rows = []
    for name in list_filters():
        ms = best_ms(lambda name=name: apply_filter(name, image), repeat)
        plain = SCIPY_FILTERS.get(name)
        rows.append((name, ms, best_ms(lambda plain=plain: plain(image), repeat) if plain else None))
    print(f"intensity filters on one {size} x {size} float32 slice, best of {repeat} after a warm-up, in a "
          f"fresh process; target {target} per slice\n")
    print(f"| filter | lumbar (OpenCV) ms | scipy.ndimage ms | speed vs plain | {target} |")
    print("|---|---:|---:|---:|---|")
    for name, ms, plain_ms in rows:
        plain_cells = f"{plain_ms:.2f} | {plain_ms / ms:.1f}x" if plain_ms is not None else "| "
        print(f"| {name} | {ms:.2f} | {plain_cells} | {'met' if ms < FILTER_TARGET_MS else 'missed'} |")
    slowest = max(rows, key=lambda r: r[1])
    compared = [r for r in rows if r[2] is not None]
    print("summary: " + json.dumps({
        "stage": f"intensity filter, one {size} x {size} slice",
        "lumbar": f"slowest {slowest[1]:.1f} ms ({slowest[0]}); every filter {target}: "
                  f"{'met' if slowest[1] < FILTER_TARGET_MS else 'missed'}",
        "plain": f"scipy.ndimage ({', '.join(r[0] for r in compared)}), least speed-up shown",
        "ratio": min(r[2] / r[1] for r in compared),
    }))  # fmt: skip
    print()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="data folder with train_images/ (default: linked sample)")
    p.add_argument("--coords", default=None, help="coordinates CSV for --data-dir")
    p.add_argument(
        "--sample",
        default=os.environ.get("LUMBAR_SAMPLE_DIR", PROJECT_ROOT.parent / "shared" / "rsna2024-sample"),
    )
    p.add_argument("--copies", type=int, default=10)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--no-plain", dest="plain", action="store_false", help="skip the plain per-row loop")
    p.add_argument("--filter-repeat", type=int, default=3, help="timed calls per filter (the best is kept)")
    args = p.parse_args()
    filter_times(args.filter_repeat)
    with tempfile.TemporaryDirectory() as tmp:
        if args.data_dir:
            data, coords = Path(args.data_dir), load_coordinates(args.coords)
            source = f"{data}"
        else:
            data = Path(tmp) / "data"
            coords = link_sample(Path(args.sample), data, args.copies)
            source = f"real sample x {args.copies} (linked)"
        studies = coords["study_id"].nunique()
        for f in data.glob("train_images/*/*/*.dcm"):  # warm the page cache for every contender alike
            f.read_bytes()
        rows = []
        for name in args.configs:
            for workers in args.workers:
                cfg = CONFIGS[name]
                out = Path(tmp) / f"cache_{workers}"
                r = build_cache(coords, data, "train", out, cfg, workers=workers, progress=False)
                rows.append({"what": f"lumbar build_cache, {name}, {cache_name(cfg)}", "workers": workers,
                             "samples": r.built, "seconds": r.seconds, "studies": r.studies_opened,
                             "failed": len(r.failures), "config": name})  # fmt: skip
        plain = None
        if args.plain and PLAIN_CONFIG in args.configs:
            t0 = time.perf_counter()
            n = plain_cache(coords, data, Path(tmp) / "plain", CONFIGS[PLAIN_CONFIG])
            plain = {"what": f"plain loop: dcmread(f).pixel_array per file of the row's series, {PLAIN_CONFIG}",
                     "workers": 1, "samples": n, "seconds": time.perf_counter() - t0, "studies": studies,
                     "failed": len(coords) - n, "config": PLAIN_CONFIG}  # fmt: skip

    print(f"data: {source}; {studies} studies, {len(coords)} coordinate rows; cpus: {os.cpu_count()}\n")
    print("| what | workers | samples | s | samples/s | studies/s | failed | speed vs plain |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in [*rows, *([plain] if plain else [])]:
        rate = r["samples"] / r["seconds"]
        ratio = ""
        if plain is not None and r["config"] == PLAIN_CONFIG:
            ratio = f"{rate / (plain['samples'] / plain['seconds']):.2f}x"
        print(f"| {r['what']} | {r['workers']} | {r['samples']} | {r['seconds']:.2f} | {rate:.1f} "
              f"| {r['studies'] / r['seconds']:.2f} | {r['failed']} | {ratio} |")  # fmt: skip
    if plain is not None:
        best = max((r for r in rows if r["config"] == PLAIN_CONFIG), key=lambda r: r["samples"] / r["seconds"])
        rate, plain_rate = best["samples"] / best["seconds"], plain["samples"] / plain["seconds"]
        print("summary: " + json.dumps({"stage": "ROI tensor cache", "plain": f"{plain_rate:.1f} samples/s",
                                        "lumbar": f"{rate:.1f} samples/s, {best['studies'] / best['seconds']:.2f} "
                                                  f"studies/s ({PLAIN_CONFIG}, {best['workers']} worker(s))",
                                        "ratio": rate / plain_rate}))  # fmt: skip


if __name__ == "__main__":
    main()
