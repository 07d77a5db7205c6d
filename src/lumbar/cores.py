"""How many processes and how many threads each: from the cores this process may use, unless a setting pins them.

Independent tasks (the notebooks of a pipeline's `parallel:` group, the per-fold localizers) run as separate
processes, one per task up to the core count, and share the cores evenly as torch threads: on 2 cores two
tasks get one thread each, on 8 cores two tasks get four each. Processes side by side use the cores better
than threads inside one process (a CPU training step does not scale linearly with its threads), so processes
come first. A value > 0 pins that number instead.

Waiting OpenMP threads sleep (`OMP_WAIT_POLICY=PASSIVE`, set by `quiet_openmp` when `lumbar` is imported,
before torch loads its OpenMP runtime; the pipeline's kernels inherit it): by default GNU OpenMP's idle threads
spin, which on a machine shared with other jobs burns the cores the others need. `predict` on the demo's 20 test
studies with torch's 2 threads at load average 4 took 62 s and 65 CPU s spinning, 11 s and 17 CPU s passive
(1 thread: 11 s, 17 CPU s). An OMP_WAIT_POLICY already in the environment wins.
"""

from __future__ import annotations

import os


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
