"""How many processes, how many threads each and which GPU each: from the cores and GPUs this process may use,
unless a setting pins them.

Processes follow devices (`plan_processes`): on CUDA at most one process per visible GPU holds models, each
pinned to its own GPU (`process_pool` sets `CUDA_VISIBLE_DEVICES` in each worker before torch starts there, so
the worker's `cuda` is its GPU), and the cores are shared among them for decoding and cropping; on the CPU,
one process per core. A single process on one GPU runs its tasks in turn, in the calling process.

Independent tasks (the notebooks of a pipeline's `parallel:` group, the per-fold localizers) run as separate
processes, one per task up to the core count, and share the cores evenly as torch threads: on 2 cores two
tasks get one thread each, on 8 cores two tasks get four each. Processes side by side use the cores better
than threads inside one process (a CPU training step does not scale linearly with its threads), so processes
come first. A value > 0 pins that number instead.

Waiting OpenMP threads sleep (`OMP_WAIT_POLICY=PASSIVE`, set by `quiet_openmp` when `lumbar` is imported,
before torch loads its OpenMP runtime; the pipeline's kernels inherit it): by default GNU OpenMP's idle
threads spin, which on a machine shared with other jobs burns the cores the others need. `predict` on the
demo's 20 test studies with torch's 2 threads at load average 4 took 62 s and 65 CPU s spinning, 11 s and 17
CPU s passive (1 thread: 11 s, 17 CPU s). An OMP_WAIT_POLICY already in the environment wins.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one, else the machine's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def quiet_openmp() -> None:
    """Let waiting OpenMP threads sleep instead of spin (module docstring); no effect once torch is loaded."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def split_cores(tasks: int, jobs: int = 0, threads: int = 0, cores: int | None = None) -> tuple[int, int]:
    """(processes at once, torch threads per process) for `tasks` independent tasks.

    Args:
        tasks: how many tasks there are (at least one process, never more processes than tasks).
        jobs: processes at once; 0 = one per task, at most one per core.
        threads: threads per process; 0 = the cores divided among the processes (at least 1).
        cores: the cores to share (default: `available_cores()`).
    """
    cores = cores or available_cores()
    jobs = max(1, min(jobs or cores, max(1, tasks)))
    return jobs, threads or max(1, cores // jobs)


def visible_gpus() -> int:
    """CUDA devices this process may use (0 without CUDA or without torch's CUDA build)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def wants_gpu(device: str, gpus: int) -> bool:
    """Whether `device` ("auto", "cpu", "cuda", "cuda:N") puts models on a GPU when `gpus` are visible."""
    return gpus > 0 and str(device) != "cpu"


@dataclass(frozen=True)
class ProcessPlan:
    """Processes at once, torch CPU threads each, and the GPU each process is pinned to (empty on the CPU)."""

    jobs: int
    threads: int
    gpus: tuple[int, ...] = ()

    def describe(self) -> str:
        where = f"one per GPU ({', '.join(f'cuda:{g}' for g in self.gpus)})" if self.gpus else "on the CPU"
        return f"{self.jobs} process(es) {where}, {self.threads} CPU thread(s) each"


def plan_processes(
    tasks: int,
    device: str = "auto",
    jobs: int = 0,
    threads: int = 0,
    cores: int | None = None,
    gpus: int | None = None,
) -> ProcessPlan:
    """The processes for `tasks` independent tasks that put models on `device`.

    Args:
        tasks: how many tasks (never more processes than tasks).
        device: "cpu", "auto" (CUDA when there is a GPU), "cuda" or "cuda:N" (that GPU only).
        jobs: processes at once; 0 = one per GPU on CUDA, one per core on the CPU. On CUDA never more than the
            GPUs: two processes on one GPU would each hold their models and inputs there.
        threads: torch CPU threads per process; 0 = the cores divided among the processes.
        cores: the cores to share (default: `available_cores()`).
        gpus: the visible GPUs (default: `visible_gpus()`).
    """
    cores = cores or available_cores()
    gpus = visible_gpus() if gpus is None else gpus
    if not wants_gpu(device, gpus):
        return ProcessPlan(*split_cores(tasks, jobs, threads, cores))
    ids = [int(str(device).split(":")[1])] if str(device).startswith("cuda:") else list(range(gpus))
    n = max(1, min(jobs or len(ids), len(ids), max(1, tasks)))
    return ProcessPlan(n, threads or max(1, cores // n), tuple(ids[:n]))


def _pin_worker(gpus, threads: int) -> None:
    """Pool initializer: this worker's GPU (one of the queue's, each taken once) and its CPU threads."""
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get())
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def process_pool(plan: ProcessPlan) -> ProcessPoolExecutor:
    """`plan.jobs` spawned worker processes, each pinned to one GPU of the plan (its `cuda` is that GPU) and
    running `plan.threads` OpenMP threads. Spawned, not forked: a forked OpenCV or CUDA state can deadlock."""
    context = multiprocessing.get_context("spawn")
    queue = None
    if plan.gpus:
        queue = context.Queue()
        for gpu in plan.gpus:
            queue.put(gpu)
    return ProcessPoolExecutor(
        plan.jobs, mp_context=context, initializer=_pin_worker, initargs=(queue, plan.threads)
    )
