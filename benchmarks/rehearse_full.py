"""`configs/full.yaml` rehearsed on this machine: every step on a synthetic set with the real data's geometry,
measured (wall and CPU seconds, the process tree's peak memory, the disk it wrote) beside what
`pipeline --plan` predicted for the same run, and both carried to the competition's 1,975 studies.

    python benchmarks/rehearse_full.py [--studies 200] [--data input/synthetic-rehearsal] [--run runs/rehearsal]

The set: `synth --image-size 448 --axial-slices 6,12` (sagittal series of 15-20 slices at 400-490 px, axial
series of 30-60 slices at 336-448 px, 15 % of the studies with two axial series, the real set's quirks). The
run: every step of full.yaml with `--set DEVICE=cpu EPOCHS=1 PRETRAINED=none` (the localizer's axial model and
slice scorer one epoch too) and the machine's cores for its workers; the classifiers train folds 0 and 1 only (`FOLDS=0,1`: the ensemble fits fold-wise, so it needs two) for
`--batches` steps each (`fast_dev_run`), so their epoch is projected from the measured seconds per batch;
everything else runs whole. The 1,975-study column scales the
measured figures linearly with the studies (time and disk; memory as measured) and sets them beside the plan
of the set's index replicated to 2,000 studies. Writes benchmarks/rehearsal.md and its section of
benchmarks/results.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from bench_scale import splice
from peak_memory import run_tree_measured

from lumbar.core.processes import available_cores

CONFIG = ROOT / "configs" / "full.yaml"
COMPETITION_STUDIES = 1975
HEADING = "## The full recipe, rehearsed"


def synthesize(data: Path, studies: int, seed: int, workers: int) -> dict:
    """The synthetic set with the real data's geometry (written once; its time and size recorded)."""
    record = data / "rehearsal_synth.json"
    if record.is_file():
        return json.loads(record.read_text())
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lumbar", "synth", "--out", str(data), "--studies", str(studies),
                    "--test-studies", "10", "--image-size", "448", "--axial-slices", "6,12", "--seed", str(seed),
                    "--workers", str(workers)], check=True)  # fmt: skip
    files = list(data.rglob("*.dcm"))
    out = {"seconds": round(time.perf_counter() - t0, 1), "files": len(files),
           "bytes": sum(f.stat().st_size for f in files), "studies": studies, "seed": seed}  # fmt: skip
    record.write_text(json.dumps(out))
    return out


def overrides(cores: int, batches: int) -> dict[str, list[str]]:
    """The `--set` values of each kind of step (a classifier's EXTRA merges into its own)."""
    common = ["DEVICE=cpu", "EPOCHS=1", "PRETRAINED=none"]
    return {"00": ["INDEX_WORKERS=" + str(cores)], "01": [f"WORKERS={cores}"],
            "02": ["DEVICE=cpu", "EPOCHS=1", "PRETRAINED=none", f"WORKERS={cores}",
                   "EXTRA={axial_epochs: 1, refine_epochs: 1}"],
            "03": [*common, "FOLDS=0,1", f"EXTRA={{workers: {cores}, fast_dev_run: {batches}}}"],
            "04": [], "05": ["DEVICE=cpu", f"WORKERS={cores}"], "06": ["DEVICE=cpu"]}  # fmt: skip


def disk_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0


def run_step(output: str, data: Path, run: Path, sets: list[str]) -> dict:
    """One step of full.yaml through the pipeline, measured."""
    argv = [sys.executable, "-m", "lumbar", "pipeline", "--config", str(CONFIG), "--only", output,
            "--data-dir", str(data), "--run-dir", str(run), "--allow-synthetic"]  # fmt: skip
    for value in sets:
        argv += ["--set", value]
    before, load = disk_bytes(run), os.getloadavg()[0]
    measured = run_tree_measured(argv, cwd=ROOT)
    if measured.returncode:
        raise RuntimeError(f"{output} failed:\n{measured.stdout[-3000:]}\n{measured.stderr[-3000:]}")
    return {"step": output, "wall_s": round(measured.wall_s, 1), "cpu_s": round(measured.cpu_s, 1),
            "tree_rss_mib": round(measured.tree_rss_mib), "tree_pss_mib": round(measured.tree_pss_mib),
            "largest_mib": round(measured.peak_mib), "disk_bytes": disk_bytes(run) - before,
            "load_before": round(load, 2)}  # fmt: skip


def planned(data: Path, run: Path, sets: dict[str, list[str]], replicate: int = 1) -> dict[str, dict]:
    """`pipeline --plan`'s figures per step for the rehearsal's settings; with `replicate` > 1 on the set's index
    and coordinates copied that many times (new study ids), the competition's size."""
    from lumbar.pipeline import load_config, plan_steps
    from lumbar.pipeline.command import _parse_overrides
    from lumbar.pipeline.cost import DataFacts, estimate_steps, read_facts

    config = load_config(CONFIG, data_dir=data, run_dir=run)
    facts = read_facts(data, run, available_cores())
    if replicate > 1:
        shift = lambda t, k: t.assign(study_id=t["study_id"] + k * 10**10)
        facts = DataFacts(facts.data_dir, pd.concat([shift(facts.index, k) for k in range(replicate)]),
                          pd.concat([shift(facts.coords, k) for k in range(replicate)]),
                          facts.test_studies * replicate, f"{facts.index_note}, replicated x{replicate}")
    out = {}
    for step in config.steps:
        values = _parse_overrides(sets[step.output[:2]])
        chosen = plan_steps(config, only=step.output, overrides=values)
        cost = estimate_steps(config, chosen, facts, cuda=False)[0]
        out[step.output] = {"disk_bytes": cost.disk.value, "ram_bytes": cost.ram.value, "seconds": cost.seconds.value,
                            "epochs": [(name, e.value) for name, e in cost.epochs]}  # fmt: skip
    return out


def classifier_epochs(run: Path, output: str) -> str:
    """A classifier's measured seconds per batch (data + model), per unit."""
    from lumbar.pipeline import load_config

    step = next(s for s in load_config(CONFIG).steps if s.output == output)
    name = step.parameters.get("NAME") or step.parameters["ARCH"].replace(":", "_")  # as 03_train names its folder
    result = json.loads((run / name / "result.json").read_text())
    per_batch = {u.split("/")[0]: t["data_s_per_batch"] + t["model_s_per_batch"] for u, t in result["timings"].items()}
    return ", ".join(f"{unit} {s:.2f} s/batch" for unit, s in per_batch.items())


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.0f} MiB"


def _time(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else (f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s")


def _scaled(row: dict, scale: float, localizer_fixed: int) -> str:
    """The step carried to 1,975 studies where it grows with them: the data steps whole, 02 less its checkpoints
    (as many at any size); the classifiers ran a few batches (their epochs: below), 04-06 depend on the models."""
    step = row["step"][:2]
    if step in ("00", "01"):
        return f"{_time(row['wall_s'] * scale)}, {_gib(row['disk_bytes'] * scale)}"
    if step == "02":
        return f"{_time(row['wall_s'] * scale)}, {_gib((row['disk_bytes'] - localizer_fixed) * scale + localizer_fixed)}"
    return "-"


def report(rows: list[dict], plan: dict, plan_full: dict, synth: dict, studies: int, run: Path, cpu: str) -> str:
    scale = COMPETITION_STUDIES / studies
    lines = [HEADING, "",
             (f"`python benchmarks/rehearse_full.py --studies {studies}` ({time.strftime('%Y-%m-%d')}, {cpu}, "
             f"{available_cores()} cores, no GPU): `configs/full.yaml` step by step (`pipeline --only STEP "
             "--allow-synthetic --set DEVICE=cpu EPOCHS=1 PRETRAINED=none`, workers on the cores; the classifiers "
             "folds 0 and 1 for a few batches each, `FOLDS=0,1 EXTRA={fast_dev_run: N}`) on "
             f"{studies} synthetic studies with the real data's geometry (`synth --image-size 448 --axial-slices "
             f"6,12`: {synth['files']:,} DICOM files, {_gib(synth['bytes'])}, written in {_time(synth['seconds'])}). "
             "Measured: wall and CPU seconds, the peak of the process tree's summed RSS and PSS (every notebook kernel and "
             "worker; RSS counts a shared page once per process, PSS splits it), the bytes the step added under the "
             "run folder. Plan: `pipeline --plan` for the same "
             "settings on this machine (CPU). The last two columns carry the measurement to 1,975 studies "
             "(00-02: time and disk scaled with the studies, 02's checkpoints as they are) beside the plan of the "
             "set's index replicated to 2,000 studies. A classifier's time is the few batches it ran, not an epoch: its "
             "seconds per batch are listed below, and the plan's epoch beside them."), "",
             ("| step | wall | CPU | peak RSS / PSS (tree) | disk | plan: time | plan: RAM | plan: disk | x1,975: time, disk "
             "(measured, scaled) | plan at 2,000: time, RAM, disk |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    fixed = disk_bytes(run / "localizer") - disk_bytes(run / "localizer" / "cache")  # 02's checkpoints: no scaling
    for row in rows:
        p, f = plan.get(row["step"], {}), plan_full.get(row["step"], {})
        lines.append(
            f"| {row['step']} | {_time(row['wall_s'])} | {_time(row['cpu_s'])} | {_gib(row['tree_rss_mib'] * 2**20)} "
            f"/ {_gib(row['tree_pss_mib'] * 2**20)} | {_gib(row['disk_bytes'])} | {_time(p.get('seconds', math.nan))} "
            f"| {_gib(p.get('ram_bytes', 0))} | {_gib(p.get('disk_bytes', 0))} | {_scaled(row, scale, fixed)} "
            f"| {_time(f.get('seconds', math.nan))}, {_gib(f.get('ram_bytes', 0))}, {_gib(f.get('disk_bytes', 0))} |")
    lines += ["", "Classifiers, seconds per batch measured (data + model) beside the plan's epoch on this machine:", ""]
    for row in rows:
        if row["step"].startswith("03_"):
            epochs = "; ".join(f"{n}: {_time(s)}" for n, s in plan[row["step"]]["epochs"])
            lines.append(f"- {row['step']}: {classifier_epochs(run, row['step'])}; plan: {epochs}")
    total = sum(r["disk_bytes"] for r in rows)
    lines += ["", (f"Whole run folder: {_gib(total)} at {studies} studies; plan: "
              f"{_gib(sum(v['disk_bytes'] for v in plan.values()))}, at 2,000 studies "
              f"{_gib(sum(v['disk_bytes'] for v in plan_full.values()))}. Load average before each "
              f"step: {', '.join(str(r['load_before']) for r in rows)}.")]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--studies", type=int, default=200)
    p.add_argument("--data", default="input/synthetic-rehearsal")
    p.add_argument("--run", default="runs/rehearsal")
    p.add_argument("--seed", type=int, default=29)
    p.add_argument("--batches", type=int, default=2, help="batches of each classifier fold (fast_dev_run)")
    p.add_argument("--from-step", default="", help="resume the rehearsal at this step (its measurements kept)")
    p.add_argument("--report-only", action="store_true", help="write the report from the recorded steps only")
    args = p.parse_args()
    data, run = (ROOT / args.data).resolve(), (ROOT / args.run).resolve()
    cores = available_cores()
    synth = synthesize(data, args.studies, args.seed, cores)
    sets = overrides(cores, args.batches)
    record = run.parent / f"{run.name}_steps.json"
    rows = json.loads(record.read_text()) if record.is_file() and (args.from_step or args.report_only) else []
    from lumbar.pipeline import load_config

    steps = [s.output for s in load_config(CONFIG).steps]
    start = len(steps) if args.report_only else steps.index(args.from_step) if args.from_step else 0
    rows = [r for r in rows if r["step"] in steps[:start]]
    for output in steps[start:]:
        print(f"rehearsal: {output} ...", flush=True)
        rows.append(run_step(output, data, run, sets[output[:2]]))
        print(f"rehearsal: {rows[-1]}", flush=True)
        record.write_text(json.dumps(rows, indent=1))
    plan = planned(data, run, sets)
    plan_full = planned(data, run, sets, replicate=math.ceil(COMPETITION_STUDIES / args.studies))
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "unknown CPU")  # fmt: skip
    section = report(rows, plan, plan_full, synth, args.studies, run, cpu)
    (ROOT / "benchmarks" / "rehearsal.md").write_text(section.replace(HEADING, "# The full recipe, rehearsed", 1))
    splice(ROOT / "benchmarks" / "results.md", section)
    print(section)


if __name__ == "__main__":
    main()
