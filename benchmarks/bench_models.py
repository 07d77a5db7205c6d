"""Training throughput and peak memory of every registered architecture on CPU.

One training step = forward, cross-entropy, backward, AdamW step, on random stacks of shape
(batch, 1, depth, size, size) (default 16 x 1 x 5 x 128 x 128, the thesis's ROI crops): the plain PyTorch
loop, the reference the engine is compared with in bench_train.py. Each model runs in its own process, so
its peak resident memory is its own (`peak_memory.own_peak_mib`, the address space's high-water mark, not
`ru_maxrss`, which a child inherits from its parent): the table reports the peak RSS and its growth over the
process after imports (weights, optimizer state, activations and the allocator's caching).

    python benchmarks/bench_models.py [--steps 3] [--warmup 1] [--threads N] [--names cnn3d timmseq:resnet18]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from peak_memory import own_peak_mib

TIMM_NAMES = ("timm25d:resnet18", "timmseq:resnet18", "timm25d:convnext_atto", "timmseq:convnext_atto")


def rss_mib() -> float:
    """Current resident memory of this process (Linux /proc), else its peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return own_peak_mib()


def measure(name: str, args: argparse.Namespace) -> dict:
    """Build one model and time `args.steps` training steps after `args.warmup` untimed ones."""
    import torch

    from lumbar.models import build_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = rss_mib()
    model = build_model(name, in_channels=1, num_outputs=3, depth=args.depth)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(args.batch, 1, args.depth, args.size, args.size)
    y = torch.randint(0, 3, (args.batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = (time.perf_counter() - t0) / args.steps
    return {
        "name": name,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "step_s": seconds,
        "samples_per_s": args.batch / seconds,
        "peak_mib": own_peak_mib(),
        "growth_mib": own_peak_mib() - base,
    }


def run_isolated(name: str, args: argparse.Namespace) -> dict:
    """`measure` in a fresh interpreter; a crash or timeout becomes a row saying so."""
    cmd = [
        sys.executable,
        __file__,
        "--one",
        name,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
        "--batch",
        str(args.batch),
        "--depth",
        str(args.depth),
        "--size",
        str(args.size),
    ]
    try:
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"name": name, "error": f"timeout after {args.timeout} s"}
    if done.returncode != 0:
        return {"name": name, "error": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    """Markdown table, fastest first; failed models last with their error."""
    lines = [
        "| model | params (M) | samples/s | s/step | peak RSS (MiB) | growth over imports (MiB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: -r.get("samples_per_s", -1)):
        if "error" in r:
            lines.append(f"| {r['name']} | | | | | {r['error']} |")
        else:
            lines.append(
                f"| {r['name']} | {r['params_m']:.1f} | {r['samples_per_s']:.1f} | {r['step_s']:.2f} "
                f"| {r['peak_mib']:.0f} | {r['growth_mib']:.0f} |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--names", nargs="*", help="architectures (default: every registered one plus timm examples)"
    )
    p.add_argument("--steps", type=int, default=3, help="timed training steps per model")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (oneDNN builds its kernels)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--size", type=int, default=128)
    p.add_argument(
        "--timeout", type=float, default=600, help="seconds per model before it is reported as such"
    )
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args)))
        return

    from lumbar.models import list_models

    names = args.names or [*list_models(), *TIMM_NAMES]
    print(
        f"CPU training step (plain PyTorch loop): batch {args.batch} x 1 x {args.depth} x {args.size} x {args.size}, AdamW, "
        f"{args.threads} threads, {args.warmup} warm-up + {args.steps} timed steps; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs\n",
        flush=True,
    )
    rows = []
    t0 = time.perf_counter()
    for name in names:
        rows.append(run_isolated(name, args))
        print(f"  {name}: {rows[-1]}", file=sys.stderr, flush=True)
    print(table(rows))
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
