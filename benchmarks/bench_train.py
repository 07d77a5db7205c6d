"""Training throughput through the real engine (loader vs model time per batch), beside a plain PyTorch loop.

A throw-away ROI cache of random 5 x 128 x 128 crops (the competition's usual stage-2 size) is written to a
temporary folder; each architecture then trains through `lumbar.train` (the spinal unit of competition mode):
`--batches` batches (`fast_dev_run`), or with `--epoch` one whole epoch over the training fold. The engine
times the wait for the loader and the forward/backward/step separately; the first batch (lazy initialisation)
is included, so its numbers are slightly pessimistic.

The plain alternative, in the same process right after: the same model, batch and thread count in a bare
loop (tensors already in memory, forward, cross-entropy, backward, AdamW step), `--batches` timed steps,
the first included as in the engine. The ratios say what the engine's data pipeline and extras (weighted loss,
gradient clipping, scheduler, AMP bookkeeping) cost over the bare model. The last lines (`summary: {json}`)
are the headline rows `run_all.py` collects.

With `--config configs/full.yaml` the architectures are that config's classifiers (03 steps), each at its own
batch size and options (`model_kwargs`), as the GPU check runs them. On CUDA the loader's wait per batch is the
time the device could starve (the step itself does not synchronise; the engine reads the loss once per epoch).

    python benchmarks/bench_train.py [--arch cnn3d --arch timmseq:resnet18 | --config configs/full.yaml]
        [--batches 4] [--batch-size 16] [--epoch --studies 64] [--workers 0] [--threads 1] [--device auto]
        [--no-plain]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lumbar.core.constants import LEVELS, row_id
from lumbar.core.tables import labels_to_wide, write_csv

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
            samples.append({"sample_id": row_id(study, CONDITION, lv), "study_id": study, "condition": CONDITION,
                            "level": lv, "file": file, "depth": depth, "height": size, "width": size,
                            "pad_slices": pad_slices, "pad_px": pad_px})
            labels.append((study, CONDITION, lv, int(rng.integers(3))))
    pd.DataFrame(samples).to_parquet(cache / "samples.parquet", index=False)
    (cache / "params.json").write_text(json.dumps({"size": size, "depth": depth, "benchmark": True}))
    write_csv(labels_to_wide(pd.DataFrame(labels, columns=["study_id", "condition", "level", "grade"])),
              root / "data" / "train.csv")
    return root


def config_archs(path: str) -> list[dict]:
    """The classifiers of a pipeline config (its 03_train steps): arch, batch size, model options."""
    from lumbar.pipeline import load_config

    return [{"arch": s.parameters["ARCH"], "batch_size": s.parameters.get("BATCH_SIZE"),
             "model_kwargs": (s.parameters.get("EXTRA") or {}).get("model_kwargs", {})}
            for s in load_config(path).steps if s.notebook == "03_train"]  # fmt: skip


def plain_samples_per_s(arch: str, args: argparse.Namespace) -> float:
    """Samples/s of a bare training loop on the engine's model (same architecture, shape, threads, device)."""
    import torch

    from lumbar.core.runtime import setup_runtime, teardown_runtime
    from lumbar.models import build_model

    runtime = setup_runtime(args.device, amp=False, channels_last=False, threads=args.threads)
    try:
        torch.manual_seed(0)
        dev = runtime.device
        model = build_model(arch, in_channels=1, num_outputs=3, depth=args.depth, num_meta=len(LEVELS)).to(dev)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.rand(args.batch_size, 1, args.depth, args.size, args.size, device=dev)
        meta = torch.nn.functional.one_hot(torch.arange(args.batch_size) % len(LEVELS), len(LEVELS)).float().to(dev)
        y = torch.randint(0, 3, (args.batch_size,), device=dev)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x, meta), y).backward()
            optimizer.step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        t0 = time.perf_counter()
        for _ in range(args.batches):
            step()
        return args.batch_size * args.batches / (time.perf_counter() - t0)
    finally:
        teardown_runtime(runtime)


def markdown(rows: list[dict], plain: bool) -> str:
    """One row per architecture: the engine's rates, the plain loop's, and their ratio."""
    head = ("| arch | batch | step ms | loader wait ms | engine samples/s (model) | engine samples/s (loader + model) "
            "| loader share |")
    head += " plain loop samples/s | engine vs plain (model) | engine vs plain (with loader) |" if plain else ""
    lines = [head, "|---|" + "---:|" * (head.count("|") - 2)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['arch']} | {r['error']} |")
            continue
        line = (f"| {r['arch']} | {r['batch_size']} | {1000 * r['step_s']:.0f} | {1000 * r['loader_s']:.0f} "
                f"| {r['samples_per_s']:.1f} | {r['wall_samples_per_s']:.1f} | {r['loader_share']:.0%} |")  # fmt: skip
        if plain:
            line += (f" {r['plain_samples_per_s']:.1f} | {r['samples_per_s'] / r['plain_samples_per_s']:.2f}x "
                     f"| {r['wall_samples_per_s'] / r['plain_samples_per_s']:.2f}x |")  # fmt: skip
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    from lumbar.models import list_models
    from lumbar.train.loop import train

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", action="append", default=None, help="architectures (default: every registered one)")
    p.add_argument("--config", default=None, help="the classifiers of this pipeline config, at their batch sizes")
    p.add_argument("--batches", type=int, default=4, help="batches per architecture (engine and plain loop)")
    p.add_argument("--epoch", action="store_true", help="train one whole epoch instead of --batches batches")
    p.add_argument("--studies", type=int, default=0, help="studies in the cache (0 = enough for --batches)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="AMP off (it is on by default, on CUDA)")
    p.add_argument("--no-plain", dest="plain", action="store_false", help="skip the plain-loop comparison")
    args = p.parse_args()
    if args.config:
        specs = config_archs(args.config)
    else:
        specs = [{"arch": a, "batch_size": None, "model_kwargs": {}} for a in args.arch or [*list_models(),
                                                                                           *DEFAULT_FAMILIES]]
    batch_sizes = [s["batch_size"] or args.batch_size for s in specs]
    n_studies = args.studies or max(4, 2 * args.batches * max(batch_sizes) // len(LEVELS) + 2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = write_cache(Path(tmp), n_studies, args.depth, args.size)
        for spec, batch_size in zip(specs, batch_sizes):
            arch = spec["arch"]
            started = time.perf_counter()
            try:
                result = train({"data_dir": str(root / "data"), "cache": str(root / "cache"),
                                "out": str(root / "runs" / arch.replace(":", "_")), "arch": arch,
                                "mode": "competition", "conditions": "scs", "n_folds": 2, "folds": "0",
                                "batch_size": batch_size, "epochs": 1, "model_kwargs": spec["model_kwargs"],
                                "fast_dev_run": 0 if args.epoch else args.batches, "amp": args.amp,
                                "workers": args.workers, "threads": args.threads, "device": args.device,
                                "progress": False})  # fmt: skip
                timing = result.summary["timings"]["spinal/fold0"]
                model_s, data_s = timing["model_s_per_batch"], timing["data_s_per_batch"]
                row = {"arch": arch, "batch_size": batch_size, "samples_per_s": batch_size / model_s,
                       "wall_samples_per_s": batch_size / (model_s + data_s), "loader_s": data_s,
                       "step_s": model_s, "loader_share": data_s / (data_s + model_s),
                       "wall_s": time.perf_counter() - started}  # fmt: skip
                if args.plain:
                    row["plain_samples_per_s"] = plain_samples_per_s(arch, args)
            except Exception as e:  # noqa: BLE001  (one broken architecture must not hide the others)
                row = {"arch": arch, "error": f"{type(e).__name__}: {e}"[:80]}
            rows.append(row)
    batch = args.config and "each config step's batch" or f"batch {args.batch_size}"
    print(f"training through lumbar.train, {args.depth}x{args.size}x{args.size} crops, {batch}, "
          f"{f'one epoch (fold 0 of 2 of {n_studies} studies)' if args.epoch else f'{args.batches} batches'}"
          f", loader workers {args.workers}, threads {args.threads or 'default'}, device {args.device}, "
          f"AMP {'on (CUDA only)' if args.amp else 'off'}\n")  # fmt: skip
    print(markdown(rows, args.plain))
    for r in rows:
        if "plain_samples_per_s" in r:
            print("summary: " + json.dumps({"stage": f"training {r['arch']}", "plain": f"{r['plain_samples_per_s']:.1f} "
                                            "samples/s (bare loop)", "lumbar": f"{r['wall_samples_per_s']:.1f} samples/s "
                                            "(engine, loader + model)", "ratio": r["wall_samples_per_s"] / r["plain_samples_per_s"]}))  # fmt: skip


if __name__ == "__main__":
    main()
