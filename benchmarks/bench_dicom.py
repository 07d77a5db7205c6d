"""Header index and volume reader vs the plain pydicom loops, on the real sample's files.

The two sample studies are linked `--copies` times under new study ids (symlinks, no copy) so the
measurement covers ~1,700 files and process start-up is not the whole story. Every contender reads the same
files from a warm page cache, best of `--repeat`, in this one process. The last lines (`summary: {json}`)
are the headline rows `run_all.py` collects.

    python benchmarks/bench_dicom.py [--sample DIR] [--copies 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pydicom

from lumbar.core.paths import PROJECT_ROOT
from lumbar.data.dicom import read_series
from lumbar.data.index import build_index


def link_tree(sample: Path, out: Path, copies: int) -> list[Path]:
    """Symlink every sample DICOM file under `copies` fake study ids; return the files."""
    files = []
    for c in range(copies):
        for study in sorted((sample / "train_images").iterdir()):
            for series in sorted(study.iterdir()):
                dst = out / "train_images" / f"{c + 1}{study.name}" / series.name
                dst.mkdir(parents=True)
                for f in sorted(series.glob("*.dcm")):
                    (dst / f.name).symlink_to(f.resolve())
                    files.append(dst / f.name)
    return files


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--sample",
        default=os.environ.get("LUMBAR_SAMPLE_DIR", PROJECT_ROOT.parent / "shared" / "rsna2024-sample"),
    )
    p.add_argument("--copies", type=int, default=10)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = link_tree(Path(args.sample), root, args.copies)
        n = len(files)
        for f in files:  # warm the page cache for every contender alike
            f.read_bytes()
        series_dirs = sorted({f.parent for f in files})
        pixels = (
            sum(h.rows * h.columns for d in series_dirs[:6] for h in read_series(d).headers) * args.copies
        )

        rows = []
        t_plain_h = best_of(args.repeat, lambda: [pydicom.dcmread(f, stop_before_pixels=True) for f in files])
        rows.append(
            ("headers: plain dcmread(stop_before_pixels) loop", t_plain_h, n / t_plain_h, "files/s", 1.0)
        )
        for w in (1, 2):
            t = best_of(args.repeat, lambda w=w: build_index(root, "train", workers=w, progress=False))
            rows.append((f"headers: lumbar index --workers {w}", t, n / t, "files/s", t_plain_h / t))

        t_plain_p = best_of(args.repeat, lambda: [pydicom.dcmread(f).pixel_array for f in files])
        rows.append(
            ("pixels: plain dcmread(f).pixel_array loop", t_plain_p, pixels / t_plain_p / 1e6, "Mpx/s", 1.0)
        )

        def read_all():
            for d in series_dirs:
                s = read_series(d, decode=True)
                for k in range(len(s.stacks)):
                    s.load(k)

        t = best_of(args.repeat, read_all)
        rows.append(
            (
                "pixels: lumbar read_series(decode=True) + load per stack",
                t,
                pixels / t / 1e6,
                "Mpx/s",
                t_plain_p / t,
            )
        )

    plugins = decoding_plugins()
    print(f"{n} files ({args.copies} x the 2 sample studies), best of {args.repeat}; RLE Lossless decoding "
          f"plugin used: {plugins[0]} (available, in the order pydicom tries them: {', '.join(plugins)}; "
          f"pydicom {pydicom.__version__})\n")  # fmt: skip
    print("| what | seconds | rate | unit | speed vs plain |")
    print("|---|---:|---:|---|---:|")
    for what, t, rate, unit, ratio in rows:
        print(f"| {what} | {t:.3f} | {rate:,.1f} | {unit} | {ratio:.2f}x |")
    best = max(rows[1:3], key=lambda r: r[2])
    for stage, plain, ours in (("header index", rows[0], best), ("volume reading", rows[3], rows[4])):
        print("summary: " + json.dumps({"stage": stage, "lumbar": f"{ours[2]:,.1f} {ours[3]} ({ours[0].split(': ')[1]})",
                                        "plain": f"{plain[2]:,.1f} {plain[3]}", "ratio": ours[4]}))  # fmt: skip


def decoding_plugins() -> list[str]:
    """RLE Lossless decoders installed, in the order pydicom tries them (the first decodes, unless it fails)."""
    decoder = pydicom.pixels.decoders.RLELosslessDecoder
    return list(decoder._validate_plugins()) or list(decoder.available_plugins)  # no public API for the order


if __name__ == "__main__":
    main()
