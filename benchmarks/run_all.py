"""Run every benchmark (`make bench`) and write benchmarks/results.md: machine, date, commands, one table per stage.

Each benchmark runs as its own subprocess, one after the other (never two at once: they would measure each
other), with defaults sized so the whole run takes about 10-15 minutes on a 2-core machine. Ratios to the
plain alternative are measured inside each benchmark's own process, so they hold on a machine shared with
other work; the load average before and after each benchmark is recorded beside it. The lines a benchmark
prints as `summary: {json}` become the summary table at the top.

    python benchmarks/run_all.py [--out benchmarks/results.md] [--only bench_dicom bench_predict]
        [--gpu-report FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Bench:
    """One benchmark: its script, arguments, the section title and what its table shows."""

    script: str
    args: tuple[str, ...]
    title: str
    note: str


BENCHES = (
    Bench("bench_dicom.py", ("--copies", "10", "--repeat", "3"), "DICOM header index and volume reading",
          "The real sample's 2 studies linked 10 times (1,740 files). Plain alternatives: a "
          "`pydicom.dcmread(f, stop_before_pixels=True)` loop and a `dcmread(f).pixel_array` loop on the same files."),
    Bench("bench_preprocess.py", ("--copies", "10"), "ROI tensor cache",
          "The real sample's 2 studies linked 10 times (20 studies, 500 coordinate rows). Plain alternative: per "
          "coordinate row, `dcmread` every file of the row's series, crop, normalise, resize, save. Then "
          "each intensity filter on one 512 x 512 slice beside its scipy.ndimage equivalent (target 50 ms)."),
    Bench("bench_models.py", ("--steps", "1", "--warmup", "1", "--threads", "1"),
          "Training step per registered architecture (plain PyTorch loop, CPU)",
          "Batch 16 x 1 x 5 x 128 x 128, one process per model (its own peak RSS), 1 warm-up + 1 timed step, "
          "1 torch thread. This bare loop is the reference the engine is compared with below."),
    Bench("bench_train.py", ("--arch", "cnn3d", "--arch", "resnet3d_18", "--arch", "timm25d:resnet18", "--arch",
                             "timmseq:resnet18", "--batches", "2", "--threads", "1", "--device", "cpu"),
          "Training through the engine vs the plain loop (main architectures, CPU)",
          "Batch 16 of 5 x 128 x 128 crops read from a cache by `lumbar.train` (2 batches, first included) vs the "
          "same model in a bare loop in the same process (2 steps, the first included too)."),
    Bench("profile_step.py", (), "The CPU training step of the demo's classifiers, phase by phase",
          "One step of `lumbar.train`'s loop at the demo's shape (16 x 1 x 5 x 32 x 32, one thread), CPU ms per "
          "phase, before (the loop at d87a623) and after the engine's changes, and each change alone. Plain "
          "alternative: the loop as it was (the `before` rows)."),
    Bench("bench_kaggle.py", ("--real-copies", "1", "--folds", "1", "--threads", "1"),
          "Kaggle time budget: configs/full.yaml's ensemble, projected",
          "A slice of configs/full.yaml (its crops, localizer and four classifiers, one fold each, a batch of "
          "training: speed only) predicts the real sample's 2 studies at their real sizes on this CPU; the model "
          "forwards' FLOPs are counted, scaled to 5 folds and divided by an assumed GPU throughput (in the table's "
          "text); the rest of each stage is measured CPU time."),
    Bench("bench_predict.py", ("--threads", "1"), "Inference: `predict` seconds per study and peak memory",
          "A demo ensemble (cnn3d + timm25d:resnet18, 3 folds each, localizer resnet18) trained for one epoch on "
          "8 synthetic studies, then each row one `predict` in a fresh process. Plain alternative: the same 20 "
          "studies in one chunk (nothing streamed)."),
)  # fmt: skip


def machine() -> dict[str, str]:
    """CPU model, cores, memory, OS and library versions of this machine."""
    cpu = platform.processor() or platform.machine()
    mem = ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))  # fmt: skip
        mem = f"{kib / 2**20:.1f} GiB"
    except (OSError, StopIteration):
        pass
    from importlib.metadata import PackageNotFoundError, version

    versions = []
    for name in ("numpy", "torch", "timm", "monai", "pydicom", "pylibjpeg", "pylibjpeg-rle", "opencv-python-headless",
                 "pandas"):  # fmt: skip
        try:
            versions.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            versions.append(f"{name} missing")
    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                            text=True, check=False).stdout.strip()  # fmt: skip
    return {"cpu": cpu, "cores": str(os.cpu_count()), "memory": mem, "os": platform.platform(),
            "python": platform.python_version(), "libraries": ", ".join(versions), "commit": commit or "unknown"}  # fmt: skip


def load() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def run_bench(bench: Bench, env: dict[str, str]) -> dict:
    """Run one benchmark to the end; its output split into tables and summary rows."""
    cmd = [sys.executable, str(HERE / bench.script), *bench.args]
    before = load()
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    seconds = time.perf_counter() - t0
    lines = done.stdout.splitlines()
    summary = [json.loads(line.split(":", 1)[1]) for line in lines if line.startswith("summary: ")]
    text = "\n".join(line for line in lines if not line.startswith("summary: ")).strip()
    print(f"run_all: {bench.script} exit {done.returncode} in {seconds:.0f} s", file=sys.stderr, flush=True)
    return {"bench": bench, "command": " ".join(["python", f"benchmarks/{bench.script}", *bench.args]),
            "returncode": done.returncode, "seconds": seconds, "load_before": before, "load_after": load(),
            "text": text, "summary": summary, "stderr": done.stderr.strip()}  # fmt: skip


def _ratio(row: dict) -> str:
    if row.get("ratio") is None:
        return ""
    kind = " (memory)" if row.get("ratio_kind") == "memory" else ""
    return f"{row['ratio']:.2f}x{kind}"


def render(results: list[dict], info: dict[str, str], started: str, total_s: float, gpu: Path | None) -> str:
    """results.md: header, summary, one section per benchmark, the GPU part."""
    out = [
        "# Benchmarks: speed and memory of every stage, beside the plain alternative",
        "",
        f"Written by `make bench` (`python benchmarks/run_all.py`) on {started}, {total_s / 60:.1f} minutes in all.",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {info['cpu']}, {info['cores']} cores |",
        f"| memory | {info['memory']} |",
        f"| OS, Python | {info['os']}, Python {info['python']} |",
        f"| libraries | {info['libraries']} |",
        f"| code | commit {info['commit']} |",
        "",
        ("The machine is shared with other jobs: its load average (1 / 5 / 15 min) is given before and after each "
         "benchmark. A load above the core count means other work held the cores, so absolute rates are low and "
         "noisy; the ratios compare contenders measured one after the other in the same process, on the same "
         "files, and hold better. Speed ratios are lumbar / plain (above 1 = lumbar faster)."),
        "",
        "## Summary",
        "",
        "| stage | lumbar | plain alternative | ratio |",
        "|---|---|---|---:|",
    ]
    for r in results:
        for row in r["summary"]:
            out.append(f"| {row['stage']} | {row['lumbar']} | {row['plain']} | {_ratio(row)} |")
    for r in results:
        b = r["bench"]
        out += ["", f"## {b.title}", "", b.note, "", f"`{r['command']}`", "",
                (f"{r['seconds']:.0f} s, exit {r['returncode']}; load average before {r['load_before']}, "
                 f"after {r['load_after']}"), "", r["text"] or "(no output)"]  # fmt: skip
        if r["returncode"] != 0:
            out += ["", "```", r["stderr"][-2000:], "```"]
    scale = HERE / "scale.md"  # `make bench-scale` (hours): kept from its last run
    if scale.is_file():
        out += ["", scale.read_text().strip()]
    out += ["", "## GPU", ""]
    if gpu is not None and gpu.is_file():
        out += [f"From `bash benchmarks/gpu_check.sh` on a lent GPU machine ({gpu.name}):", "",
                gpu.read_text().strip()]  # fmt: skip
    else:
        out.append("`benchmarks/gpu_check.sh` (environment, one AMP epoch per main architecture, `predict` "
                   "seconds per study; at most 8 minutes) was not run on a GPU for these results: no GPU machine "
                   "was lent to this session. Its CPU smoke test (`bash benchmarks/gpu_check.sh --cpu`) runs every "
                   "step at tiny sizes. On a GPU, run it and then `python benchmarks/run_all.py --gpu-report "
                   "<its gpu_check.md>` to put its tables here.")  # fmt: skip
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(HERE / "results.md"))
    p.add_argument("--only", nargs="+", choices=[b.script.removesuffix(".py") for b in BENCHES],
                   help="run only these benchmarks")  # fmt: skip
    p.add_argument("--gpu-report", default=str(HERE / "gpu_check.md"),
                   help="gpu_check.md written by gpu_check.sh on a GPU machine (default: benchmarks/gpu_check.md, "
                        "merged when it exists)")
    args = p.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}  # fmt: skip
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    t0 = time.perf_counter()
    benches = [b for b in BENCHES if not args.only or b.script.removesuffix(".py") in args.only]
    results = [run_bench(b, env) for b in benches]
    text = render(results, machine(), started, time.perf_counter() - t0, Path(args.gpu_report) if args.gpu_report else None)
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    print(f"run_all: wrote {out} ({(time.perf_counter() - t0) / 60:.1f} min)")
    sys.exit(max(r["returncode"] for r in results) if results else 0)


if __name__ == "__main__":
    main()
