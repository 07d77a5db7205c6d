"""Training throughput of every registered architecture through the real engine: loader vs model time per batch.

A throw-away ROI cache of random 5 x 128 x 128 crops (the competition's usual stage-2 size) is written to a
temporary folder; each architecture then trains `--batches` batches of `--batch-size` through `lumbar.train`
(`fast_dev_run`), which times the wait for the loader and the forward/backward/step separately. The first
batch (lazy initialisation) is included, so the numbers are slightly pessimistic.

    python benchmarks/bench_train.py [--arch cnn3d --arch timmseq:resnet18] [--batches 4] [--batch-size 16]
        [--workers 0] [--threads 1] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lumbar.constants import LEVELS
from lumbar.data.tables import labels_to_wide, write_csv

CONDITION = "spinal_canal_stenosis"
DEFAULT_FAMILIES = ("timm25d:resnet18", "timmseq:resnet18")


def write_cache(root: Path, n_studies: int, depth: int, size: int, pad_slices: int = 1, pad_px: int = 8) -> Path:
    """A data folder (train.csv) and a cache of random crops for the spinal canal; returns the root."""
    rng = np.random.default_rng(0)
    cache = root / "cache"
    samples, labels = [], []
    for s in range(n_studies):
        study = 100 + s
        (cache / str(study)).mkdir(parents=True, exist_ok=True)
        for lv in LEVELS:
            arr = rng.random((depth + 2 * pad_slices, size + 2 * pad_px, size + 2 * pad_px), dtype=np.float32)
            file = f"{study}/{CONDITION}_{lv}.npy"
            np.save(cache / file, arr.astype(np.float16))
            samples.append({"sample_id": f"{study}_{CONDITION}_{lv}", "study_id": study, "condition": CONDITION,
                            "level": lv, "file": file, "depth": depth, "height": size, "width": size,
                            "pad_slices": pad_slices, "pad_px": pad_px})
            labels.append((study, CONDITION, lv, int(rng.integers(3))))
    pd.DataFrame(samples).to_parquet(cache / "samples.parquet", index=False)
    (cache / "params.json").write_text(json.dumps({"size": size, "depth": depth, "benchmark": True}))
    write_csv(labels_to_wide(pd.DataFrame(labels, columns=["study_id", "condition", "level", "grade"])),
              root / "data" / "train.csv")
    return root


def main() -> None:
    from lumbar.models import list_models
    from lumbar.train.loop import train

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", action="append", default=None, help="architectures (default: every registered one)")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    archs = args.arch or [*list_models(), *DEFAULT_FAMILIES]
    n_studies = max(4, 2 * args.batches * args.batch_size // len(LEVELS) + 2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = write_cache(Path(tmp), n_studies, args.depth, args.size)
        for arch in archs:
            started = time.perf_counter()
            try:
                result = train({"data_dir": str(root / "data"), "cache": str(root / "cache"),
                                "out": str(root / "runs" / arch.replace(":", "_")), "arch": arch,
                                "mode": "competition", "conditions": "scs", "n_folds": 2, "folds": "0",
                                "batch_size": args.batch_size, "fast_dev_run": args.batches,
                                "workers": args.workers, "threads": args.threads, "device": args.device,
                                "progress": False})
            except Exception as e:  # noqa: BLE001  (one broken architecture must not hide the others)
                rows.append({"arch": arch, "error": f"{type(e).__name__}: {e}"[:80]})
                continue
            timing = result.summary["timings"]["spinal/fold0"]
            model_s, data_s = timing["model_s_per_batch"], timing["data_s_per_batch"]
            rows.append({"arch": arch, "samples_per_s": args.batch_size / model_s, "model_s_per_batch": model_s,
                         "loader_s_per_batch": data_s, "loader_share": data_s / (data_s + model_s),
                         "wall_s": time.perf_counter() - started})
    table = pd.DataFrame(rows)
    print(f"training throughput, {args.depth}x{args.size}x{args.size} crops, batch {args.batch_size}, "
          f"{args.batches} batches, workers {args.workers}, threads {args.threads}, device {args.device}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
