"""Where a CPU training step of the demo's classifiers spends its time, before and after the engine's changes.

One step of `lumbar.train`'s loop, split into its phases (forward + loss, backward, gradient clipping, AdamW,
EMA, reading the loss), CPU seconds of the process (user + system: page faults count) per phase, median over
`--steps` steps after a warm-up, at the demo's shape (a batch of 16 crops of 1 x 5 x 32 x 32, one torch thread).
Each setting runs in a fresh process, so the allocator setting of one does not leak into the next:

- before: what the loop did at d87a623: torch's default AdamW (a loop over the parameters on CPU), contiguous
  tensors, `AveragedModel` EMA, `float(loss)` every step, glibc's default allocator behaviour;
- after: AdamW fused (`make_adamw`), channels-last where the model asks for it on CPU (`cpu_channels_last`),
  `ModelEma`, the loss summed on the device (`RunningMean`), freed blocks kept (`keep_freed_memory`);
- and each change alone on top of "before", to show what it is worth.

    python benchmarks/profile_step.py [--arch cnn3d --arch timm25d:resnet18] [--steps 12] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

PHASES = ("forward", "backward", "clip", "adamw", "ema", "loss read")
SETTINGS = {
    "before": {},
    "+ fused AdamW": {"fused": True},
    "+ channels-last (if the model asks)": {"channels_last": True},
    "+ freed blocks kept": {"malloc": True},
    "after (all, ModelEma, loss on the device)": {"fused": True, "channels_last": True, "malloc": True, "after": True},
}


def measure(arch: str, setting: dict, steps: int, batch_size: int) -> dict[str, float]:
    """Median CPU seconds per phase of one training step (this process)."""
    import torch
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from lumbar.core.runtime import RunningMean, Runtime, keep_freed_memory, make_adamw
    from lumbar.models import build_model
    from lumbar.train.ema import ModelEma

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)  # as the loop on CPU
    if setting.get("malloc"):
        keep_freed_memory()
    # the runtime `setup_runtime` would make, without its allocator setting (each setting decides that itself)
    runtime = Runtime(torch.device("cpu"), cpu_channels_last=bool(setting.get("channels_last")))
    torch.manual_seed(0)
    model = build_model(arch, in_channels=1, num_outputs=3, depth=5, num_meta=6)
    fmt = runtime.memory_format(model)
    if fmt is not None:
        model = model.to(memory_format=fmt)
    optimizer = (make_adamw(model.parameters(), 1e-3, 1e-2, runtime.device) if setting.get("fused")
                 else torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2))  # fmt: skip
    ema = (ModelEma(model, 0.99) if setting.get("after")
           else AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.99), use_buffers=True))
    x = torch.rand(batch_size, 1, 5, 32, 32)
    if fmt == torch.channels_last_3d:
        x = x.contiguous(memory_format=fmt)
    meta = torch.zeros(batch_size, 6)
    meta[:, 0] = 1
    y = torch.randint(0, 3, (batch_size,))
    running, total = RunningMean(runtime.device), 0.0
    times = {p: [] for p in PHASES}
    for step in range(steps + 3):
        marks = [time.process_time()]
        loss = torch.nn.functional.cross_entropy(model(x, meta).float(), y)
        marks.append(time.process_time())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        marks.append(time.process_time())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        marks.append(time.process_time())
        optimizer.step()
        marks.append(time.process_time())
        ema.update_parameters(model)
        marks.append(time.process_time())
        if setting.get("after"):
            running.add(loss, batch_size)
        else:
            total += float(loss.detach()) * batch_size
        marks.append(time.process_time())
        if step >= 3:
            for p, a, b in zip(PHASES, marks, marks[1:]):
                times[p].append(b - a)
    return {p: statistics.median(v) for p, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", action="append", default=None)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        arch, name = json.loads(args.one)
        print(json.dumps(measure(arch, SETTINGS[name], args.steps, args.batch_size)))
        return
    archs = args.arch or ["cnn3d", "timm25d:resnet18"]
    print(f"CPU training step, batch {args.batch_size} x 1 x 5 x 32 x 32 (the demo's crops), 1 torch thread, "
          f"deterministic algorithms on; CPU ms (user + system) per phase, median of {args.steps} steps after 3 "
          "warm-up steps, each setting in a fresh process\n")  # fmt: skip
    print("| arch | setting | " + " | ".join(PHASES) + " | step | vs before |")
    print("|---|---|" + "---:|" * (len(PHASES) + 2))
    for arch in archs:
        before = None
        for name in SETTINGS:
            done = subprocess.run([sys.executable, __file__, "--one", json.dumps([arch, name]), "--steps",
                                   str(args.steps), "--batch-size", str(args.batch_size)],
                                  capture_output=True, text=True, check=True)  # fmt: skip
            t = json.loads(done.stdout.strip().splitlines()[-1])
            step = sum(t.values())
            before = before or step
            print(f"| {arch} | {name} | " + " | ".join(f"{1000 * t[q]:.1f}" for q in PHASES)
                  + f" | {1000 * step:.1f} | {before / step:.2f}x |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
