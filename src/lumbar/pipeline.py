"""Run the numbered notebooks in order with papermill, parameters from a YAML pipeline config.

Config (`configs/NAME.yaml`)::

    name: demo                    # run folder: runs/<name>/ (or `run_dir:`)
    notebook_dir: notebooks       # default
    data_dir: null                # null: lumbar.paths.data_root() decides
    parameters: {DEVICE: auto}    # passed to every notebook (UPPER_CASE, the notebooks' parameter names)
    jobs: 2                       # notebooks of a `parallel:` group run at most this many at once
    notebooks:
      - notebook: 00_eda          # notebooks/00_eda.ipynb
      - parallel:                 # independent notebooks: side by side when jobs > 1, else in order
          - notebook: 02_train_localizer
          - notebook: 03_train    # one notebook run once per architecture,
            output: 03_train_cnn3d  # each under its own name
            parameters: {ARCH: cnn3d}

Every notebook also receives `RUN_DIR` and `DATA_DIR`. Each notebook of a parallel group runs in its own
process and kernel with `OMP_NUM_THREADS` = CPU cores // jobs (unless the environment sets it), so the
group shares the cores instead of fighting over them; the manifest is updated under a file lock. Executed copies are saved as
`runs/<name>/<output>.ipynb`; the manifest's `notebooks` entry records status and seconds of each. On a
failing cell the pipeline stops and names the notebook, the cell and the error.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lumbar.manifest import read_manifest, update_manifest
from lumbar.overrides import parse_assignments
from lumbar.paths import PROJECT_ROOT, data_root

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"


class PipelineError(RuntimeError):
    """A notebook of the pipeline failed; the message names notebook, cell and error."""


@dataclass
class Step:
    notebook: str
    output: str
    parameters: dict[str, Any] = field(default_factory=dict)
    group: int = 0  # steps with the same group number form one `parallel:` block


@dataclass
class PipelineConfig:
    name: str
    run_dir: Path
    data_dir: Path
    steps: list[Step]
    source: Path | None = None
    notebook_dir: Path = NOTEBOOK_DIR
    jobs: int = 1


_TOP_KEYS = {
    "name",
    "run_dir",
    "data_dir",
    "parameters",
    "notebooks",
    "notebook_dir",
    "description",
    "synthetic",
    "jobs",
}
_STEP_KEYS = {"notebook", "output", "parameters"}


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Read and check a pipeline config; paths are relative to the project root.

    Args:
        path: the YAML file.
        overrides: parameters set on every notebook, over the config's common and per-notebook ones (the
            command line's `--set`).
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from e
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; expected some of {sorted(_TOP_KEYS)}")
    if not raw.get("notebooks"):
        raise ValueError(f"{path}: `notebooks` must list at least one notebook")
    name = raw.get("name") or path.stem
    run_dir = Path(raw.get("run_dir") or f"runs/{name}")
    run_dir = run_dir if run_dir.is_absolute() else PROJECT_ROOT / run_dir
    data_dir = data_root(raw.get("data_dir") and _project_path(raw["data_dir"]))
    notebook_dir = _project_path(raw["notebook_dir"]) if raw.get("notebook_dir") else NOTEBOOK_DIR
    common, overrides = raw.get("parameters") or {}, overrides or {}
    steps = []
    for i, entry in enumerate(raw["notebooks"]):
        parallel = isinstance(entry, dict) and "parallel" in entry
        members = entry["parallel"] if parallel else [entry]
        if parallel and (set(entry) != {"parallel"} or not isinstance(members, list) or not members):
            raise ValueError(f"{path}: notebooks[{i}]: a `parallel:` entry holds only a non-empty list of steps")
        for j, member in enumerate(members):
            where = f"{path}: notebooks[{i}]" + (f".parallel[{j}]" if parallel else "")
            steps.append(_step(member, i, common, overrides, notebook_dir, where))
    outputs = [s.output for s in steps]
    if len(set(outputs)) != len(outputs):
        raise ValueError(f"{path}: two steps write the same output name; give each an `output:`")
    jobs = raw.get("jobs", 1)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"{path}: jobs must be a whole number >= 1, got {jobs!r}")
    return PipelineConfig(name, run_dir, data_dir, steps, path, notebook_dir, jobs)


def _step(entry: Any, group: int, common: dict[str, Any], overrides: dict[str, Any], notebook_dir: Path,
          where: str) -> Step:  # fmt: skip
    """One notebook run: the config's common parameters, then the step's own, then the command line's."""
    entry = {"notebook": entry} if isinstance(entry, str) else dict(entry)
    bad = set(entry) - _STEP_KEYS
    if bad or "notebook" not in entry:
        raise ValueError(f"{where} has unknown key(s) {sorted(bad)} or no `notebook`")
    nb = entry["notebook"].removesuffix(".ipynb")
    if not (notebook_dir / f"{nb}.ipynb").is_file():
        raise ValueError(f"{where}: {notebook_dir / nb}.ipynb does not exist")
    return Step(nb, entry.get("output", nb), {**common, **(entry.get("parameters") or {}), **overrides}, group)


def _project_path(p: str) -> Path:
    p = Path(p)
    return p if p.is_absolute() else PROJECT_ROOT / p


def select_steps(steps: list[Step], start: str | None = None, only: str | None = None) -> list[Step]:
    """Steps from `start` on, or just `only`; each matched by output name or notebook name prefix ("03")."""

    def matches(step: Step, key: str) -> bool:
        return step.output == key or step.notebook == key or step.output.startswith(key)

    if only:
        chosen = [s for s in steps if matches(s, only)]
        if not chosen:
            raise ValueError(f"--only {only!r} matches no step of {[s.output for s in steps]}")
        return chosen
    if start:
        for i, s in enumerate(steps):
            if matches(s, start):
                return steps[i:]
        raise ValueError(f"--from {start!r} matches no step of {[s.output for s in steps]}")
    return steps


def run_step(step: Step, config: PipelineConfig, log_output: bool = False, threads: int = 0) -> float:
    """Execute one notebook with papermill; return its seconds. Raises PipelineError naming the cell.

    Args:
        threads: when > 0 and the environment sets no OMP_NUM_THREADS, the kernel gets this many CPU threads.
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    if threads > 0:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # inherited by the kernel this process starts
    config.run_dir.mkdir(parents=True, exist_ok=True)
    out = config.run_dir / f"{step.output}.ipynb"
    params = {"RUN_DIR": str(config.run_dir), "DATA_DIR": str(config.data_dir), **step.parameters}
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(
            str(config.notebook_dir / f"{step.notebook}.ipynb"),
            str(out),
            parameters=params,
            kernel_name="python3",
            progress_bar=False,
            log_output=log_output,
            cwd=str(config.notebook_dir),
        )
    except PapermillExecutionError as e:
        seconds = time.perf_counter() - t0
        update_manifest(config.run_dir, "notebooks", {"status": "failed", "seconds": round(seconds, 1),
                                                     "error": f"{e.ename}: {e.evalue}"}, item=step.output)  # fmt: skip
        raise PipelineError(
            f"notebook {step.output} ({step.notebook}.ipynb) failed in cell {e.exec_count} "
            f"(cell index {e.cell_index}): {e.ename}: {e.evalue}\n  executed copy: {out}"
        ) from None
    seconds = time.perf_counter() - t0
    update_manifest(config.run_dir, "notebooks", {"status": "ok", "seconds": round(seconds, 1),
                                                 "output": out.name}, item=step.output)  # fmt: skip
    return seconds


def run_pipeline(
    config: PipelineConfig, start: str | None = None, only: str | None = None, jobs: int | None = None
) -> dict[str, float]:
    """Run the chosen steps in order, a `parallel:` group side by side; stop at the first failure.

    Args:
        jobs: notebooks run at once inside a parallel group (default: the config's `jobs`).

    Raises:
        PipelineError: a notebook failed (in a parallel group: after the group's running notebooks ended).
    """
    jobs = jobs or config.jobs
    update_manifest(
        config.run_dir, "pipeline", {"config": str(config.source), "data_dir": str(config.data_dir), "jobs": jobs}
    )
    seconds: dict[str, float] = {}
    for _, group in itertools.groupby(select_steps(config.steps, start, only), key=lambda s: s.group):
        group = list(group)
        if len(group) > 1 and jobs > 1:
            seconds.update(_run_parallel(group, config, jobs))
            continue
        for step in group:
            print(f"[pipeline] {step.output} ...", flush=True)
            seconds[step.output] = run_step(step, config)
            print(f"[pipeline] {step.output} done in {seconds[step.output]:.1f} s", flush=True)
    return seconds


def _run_parallel(group: list[Step], config: PipelineConfig, jobs: int) -> dict[str, float]:
    """One parallel group: each notebook in its own process; the first failure is raised once all ended."""
    workers = min(jobs, len(group))
    threads = max(1, (os.cpu_count() or 1) // workers)
    print(f"[pipeline] {', '.join(s.output for s in group)}: {workers} at once, {threads} CPU thread(s) each",
          flush=True)  # fmt: skip
    seconds, errors = {}, []
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_step, step, config, False, threads): step for step in group}
        for future in as_completed(futures):
            step = futures[future]
            if future.cancelled():
                continue
            try:
                seconds[step.output] = future.result()
            except Exception as e:  # noqa: BLE001 - reported below, after the others have ended
                errors.append(e if isinstance(e, PipelineError) else PipelineError(f"notebook {step.output}: {e!r}"))
                for other in futures:
                    other.cancel()  # those not started yet
                continue
            print(f"[pipeline] {step.output} done in {seconds[step.output]:.1f} s", flush=True)
    if errors:
        also = "".join(f"\n  also failed: {e}" for e in errors[1:])
        skipped = [s.output for f, s in futures.items() if f.cancelled()]
        also += f"\n  not started: {', '.join(skipped)}" if skipped else ""
        raise PipelineError(f"{errors[0]}{also}")
    return seconds


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    """`--set EPOCHS=3` -> {"EPOCHS": 3}: values read as YAML, so numbers and lists keep their types."""
    return {key: yaml.safe_load(value) for key, value in parse_assignments(items).items()}


def cli_pipeline(args: argparse.Namespace) -> int:
    """`python -m lumbar pipeline`."""
    config = load_config(args.config, _parse_overrides(args.set or []))
    try:
        seconds = run_pipeline(config, args.start, args.only, args.jobs)
    except PipelineError as e:
        print(f"pipeline: FAILED: {e}")
        return 1
    print(f"pipeline: {len(seconds)} notebooks, {sum(seconds.values()):.1f} notebook-seconds; "
          f"run folder {config.run_dir}")
    print(
        f"pipeline: manifest {config.run_dir / 'manifest.json'} ({len(read_manifest(config.run_dir))} keys)"
    )
    return 0
