"""Throughput of the ROI cache build (`lumbar.preprocess.build_cache`): samples/s and studies/s.

On a data folder with coordinates (e.g. one written by `python -m lumbar synth`), or on the real
sample's two studies linked `--copies` times under new study ids (symlinks, no copy). Each row builds
a fresh cache (nothing to resume), so the numbers are the cold cost of decoding, cropping and writing.

    python benchmarks/bench_preprocess.py [--data-dir DIR --coords FILE] [--copies 10] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import pandas as pd

from lumbar.data.tables import load_coordinates
from lumbar.paths import PROJECT_ROOT
from lumbar.preprocess.cache import build_cache, cache_name
from lumbar.preprocess.config import RoiConfig

CONFIGS = {
    "B2A2 128 none": RoiConfig(),
    "B2A2 128 mean_median": RoiConfig(filter="mean_median"),
    "B1A1 96 clahe thesis_px": RoiConfig(before=1, after=1, size=96, filter="clahe", margin_mode="thesis_px"),
    "full 96 15D none": RoiConfig(mode="full_series", size=96, depth=15),
}


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
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.data_dir:
            data, coords = Path(args.data_dir), load_coordinates(args.coords)
            source = f"{data}"
        else:
            data = Path(tmp) / "data"
            coords = link_sample(Path(args.sample), data, args.copies)
            source = f"real sample x {args.copies} (linked)"
        studies = coords["study_id"].nunique()
        print(f"data: {source}; {studies} studies, {len(coords)} coordinate rows; cpus: {os.cpu_count()}")
        print(
            f"{'config':28s} {'cache':42s} {'workers':>7s} {'samples':>8s} {'s':>7s} {'samples/s':>10s} {'studies/s':>10s}"
        )
        for name in args.configs:
            for workers in args.workers:
                cfg = CONFIGS[name]
                out = Path(tmp) / f"cache_{workers}"
                r = build_cache(coords, data, "train", out, cfg, workers=workers, progress=False)
                print(
                    f"{name:28s} {cache_name(cfg):42s} {workers:7d} {r.built:8d} {r.seconds:7.2f} "
                    f"{r.built / r.seconds:10.1f} {r.studies_opened / r.seconds:10.2f}"
                    + (f"  ({len(r.failures)} failed)" if len(r.failures) else "")
                )


if __name__ == "__main__":
    main()
