"""Run a pipeline config's steps with papermill: one process per notebook of a parallel group, each step's
printed lines in its log and on the console (`lumbar.pipeline`'s docstring).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from collections.abc import Mapping
from concurrent.futures import as_completed
from pathlib import Path
from typing import Any

from lumbar.core.processes import ProcessPlan, plan_processes, process_pool, visible_gpus, wants_gpu
from lumbar.core.progress import print_line
from lumbar.core.run_contract import NotebookRecord, PipelineRecord, save_record
from lumbar.pipeline.config import LOG_DIR, PipelineConfig, PipelineError, Step, check_data_kind, plan_steps


class StepLog:
    """A step's printed lines into its log file and onto the console (module docstring: Progress).

    `stream()` gives the file-like objects papermill writes each stream message of the kernel to
    (`stdout_file`, `stderr_file`); each keeps its own unfinished line, so two streams never mix within a
    line. A carriage return starts the line over, as on a terminal: a text progress bar leaves only its last
    state.
    """

    def __init__(self, path: Path, name: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.name = path, name
        self.file = path.open("a", encoding="utf-8")
        self.streams: list[_LineStream] = []

    def stream(self) -> _LineStream:
        self.streams.append(_LineStream(self))
        return self.streams[-1]

    def note(self, text: str) -> None:
        """A line of the pipeline's own into the log file only (the console has its `[pipeline]` lines), after
        any unfinished printed line."""
        for stream in self.streams:
            stream.flush_line()
        self.file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [pipeline] {text}\n")
        self.file.flush()

    def line(self, text: str) -> None:
        """One printed line: into the file with its time, onto the console with the step's name."""
        self.file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
        self.file.flush()
        print_line(f"[{self.name}] {text}")  # one write: the group's other processes print beside it

    def close(self) -> None:
        for stream in self.streams:
            stream.flush_line()
        self.file.close()


class _LineStream:
    """One output stream of a notebook, cut into lines for its `StepLog`."""

    def __init__(self, log: StepLog) -> None:
        self.log, self.pending = log, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self._emit(line)
        cut = self.pending.rfind("\r", 0, len(self.pending) - 1)  # a trailing \r may start a \r\n
        if cut >= 0:
            self.pending = self.pending[cut + 1 :]
        return len(text)

    def flush(self) -> None:
        """Lines go out as they end; an unfinished one waits for its end (or `flush_line`)."""

    def flush_line(self) -> None:
        self._emit(self.pending)
        self.pending = ""

    def _emit(self, line: str) -> None:
        line = line.rstrip("\r").rsplit("\r", 1)[-1].rstrip()
        if line:
            self.log.line(line)


def kernel_manager(stderr: Path) -> type:
    """The kernel manager papermill starts a step's kernel with: the kernel's own stdout goes nowhere, its
    stderr
    to `stderr` (`logs/kernel/<output>.log`).

    ipykernel sends what any process of the kernel writes to its stdout and stderr (a process pool's workers
    too) to the notebook's streams, which `StepLog` prints, and also copies it to the kernel's own stdout and
    stderr: left on the console, every line of a worker would show twice, once without the step's name. The
    stderr file keeps what only the kernel process says (a kernel that fails to start says why there).
    """
    from jupyter_client import AsyncKernelManager

    class StepKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw: Any) -> None:
            stderr.parent.mkdir(parents=True, exist_ok=True)
            with stderr.open("ab") as err:  # the kernel holds its own copy once started
                await super().start_kernel(**{"stdout": subprocess.DEVNULL, "stderr": err, **kw})

    return StepKernelManager


def log_path(config: PipelineConfig, step: Step) -> Path:
    """The step's log file: `runs/<name>/logs/<output>.log`."""
    return config.run_dir / LOG_DIR / f"{step.output}.log"


def run_step(step: Step, config: PipelineConfig, threads: int = 0) -> float:
    """Execute one notebook with papermill, its printed lines logged (`StepLog`); return its seconds.

    Args:
        threads: when > 0 and the environment sets no OMP_NUM_THREADS, the kernel gets this many CPU threads.

    Raises:
        PipelineError: naming the notebook, the cell and the error.
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    if threads > 0:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # inherited by the kernel this process starts
    config.run_dir.mkdir(parents=True, exist_ok=True)
    out = config.run_dir / f"{step.output}.ipynb"
    params = {**step.parameters, "RUN_DIR": str(config.run_dir), "DATA_DIR": str(config.data_dir)}
    log = StepLog(log_path(config, step), step.output)
    log.note(f"{step.output} ({step.notebook}.ipynb) started")
    t0, outcome = time.perf_counter(), "stopped"
    try:
        pm.execute_notebook(
            str(config.notebook_dir / f"{step.notebook}.ipynb"),
            str(out),
            parameters=params,
            kernel_name="python3",
            progress_bar=False,
            log_output=False,
            stdout_file=log.stream(),
            stderr_file=log.stream(),
            kernel_manager_class=kernel_manager(log.path.parent / "kernel" / log.path.name),
            cwd=str(config.notebook_dir),
        )
        outcome = "done"
    except PapermillExecutionError as e:
        failed = NotebookRecord(
            status=NotebookRecord.FAILED,
            seconds=round(time.perf_counter() - t0, 1),
            error=f"{e.ename}: {e.evalue}",
        )
        save_record(config.run_dir, failed, item=step.output)
        outcome = (
            f"notebook {step.output} ({step.notebook}.ipynb) failed in cell {e.exec_count} "
            f"(cell index {e.cell_index}): {e.ename}: {e.evalue}\n  executed copy: {out}"
        )
        raise PipelineError(outcome) from None
    except BaseException as e:
        outcome = f"stopped: {e!r}"
        raise
    finally:
        log.note(f"{outcome.splitlines()[0]} ({time.perf_counter() - t0:.1f} s)")
        log.close()
    seconds = time.perf_counter() - t0
    done = NotebookRecord(status=NotebookRecord.OK, seconds=round(seconds, 1), output=out.name)
    save_record(config.run_dir, done, item=step.output)
    return seconds


def run_pipeline(
    config: PipelineConfig,
    start: str | None = None,
    only: str | None = None,
    jobs: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    allow_synthetic: bool = False,
) -> dict[str, float]:
    """Run the chosen steps in order, a `parallel:` group side by side; stop at the first failure.

    Args:
        jobs: notebooks run at once inside a parallel group (default: the config's `jobs`; 0 = auto).
        overrides: parameters over the config's (the command line's `--set`), for the notebooks declaring
        them.
        allow_synthetic: see `check_data_kind`.

    Raises:
        ValueError: a parameter or the data folder is wrong (before any notebook runs).
        PipelineError: a notebook failed (in a parallel group: after the group's running notebooks ended).
    """
    steps = plan_steps(config, start, only, overrides)
    check_data_kind(config, allow_synthetic)
    jobs = config.jobs if jobs is None else jobs
    save_record(
        config.run_dir,
        PipelineRecord(config=str(config.source), data_dir=str(config.data_dir), jobs=jobs or "auto"),
    )
    seconds: dict[str, float] = {}
    for _, group in itertools.groupby(steps, key=lambda s: s.group):
        group = list(group)
        plan = group_plan(group, jobs)
        if plan.jobs > 1:
            seconds.update(_run_parallel(group, config, plan))
            continue
        for step in group:
            print_line(f"[pipeline] {step.output} ...")
            seconds[step.output] = run_step(step, config)
            print_line(f"[pipeline] {step.output} done in {seconds[step.output]:.1f} s")
    return seconds


def group_plan(
    group: list[Step], jobs: int = 0, gpus: int | None = None, cores: int | None = None
) -> ProcessPlan:
    """How a `parallel:` group runs: on a GPU machine, when its notebooks put models on the GPU (`DEVICE` auto
    or
    cuda), one notebook per GPU at once, each pinned to its GPU; otherwise one per core
    (`lumbar.core.processes`).

    A group whose notebooks name their GPUs themselves (`DEVICE: cuda:0`, `cuda:1`) is run as on the CPU: the
    pipeline does not pin what the config already placed.
    """
    devices = [str(s.parameters.get("DEVICE", "auto")) for s in group if "DEVICE" in s.declared]
    gpus = visible_gpus() if gpus is None else gpus
    placed = any(d.startswith("cuda:") for d in devices)
    on_gpu = not placed and any(wants_gpu(d, gpus) for d in devices)
    return plan_processes(len(group), "cuda" if on_gpu else "cpu", jobs, cores=cores, gpus=gpus)


def _run_parallel(group: list[Step], config: PipelineConfig, plan: ProcessPlan) -> dict[str, float]:
    """One parallel group, `plan.jobs` notebooks at once, each in its own process (`plan.threads` CPU threads,
    pinned to its GPU on a GPU plan); the first failure is raised once all ended."""
    print_line(f"[pipeline] {', '.join(s.output for s in group)}: {plan.describe()}")
    seconds, errors = {}, []
    with process_pool(plan) as pool:
        futures = {pool.submit(run_step, step, config, plan.threads): step for step in group}
        for future in as_completed(futures):
            step = futures[future]
            if future.cancelled():
                continue
            try:
                seconds[step.output] = future.result()
            except Exception as e:  # noqa: BLE001 - reported below, after the others have ended
                errors.append(
                    e if isinstance(e, PipelineError) else PipelineError(f"notebook {step.output}: {e!r}")
                )
                for other in futures:
                    other.cancel()  # those not started yet
                continue
            print_line(f"[pipeline] {step.output} done in {seconds[step.output]:.1f} s")
    if errors:
        also = "".join(f"\n  also failed: {e}" for e in errors[1:])
        skipped = [s.output for f, s in futures.items() if f.cancelled()]
        also += f"\n  not started: {', '.join(skipped)}" if skipped else ""
        raise PipelineError(f"{errors[0]}{also}")
    return seconds
