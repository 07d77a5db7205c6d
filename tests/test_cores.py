"""Processes and threads follow the core count unless a setting pins them."""

from __future__ import annotations

import pytest

from lumbar.core.processes import ProcessPlan, plan_processes, process_pool, split_cores


@pytest.mark.parametrize("tasks, jobs, threads, cores, expected", [
    (2, 0, 0, 2, (2, 1)),   # the demo's two classifiers on the 2-core machine: side by side, one thread each
    (2, 0, 0, 8, (2, 4)),   # ... on an 8-core laptop: four threads each
    (3, 0, 0, 2, (2, 1)),   # three fold localizers on 2 cores: two at a time
    (3, 0, 0, 16, (3, 5)),
    (1, 0, 0, 8, (1, 8)),   # one task: all the cores as threads
    (5, 0, 0, 1, (1, 1)),
    (2, 1, 0, 8, (1, 8)),   # pinned: one at a time
    (2, 0, 1, 8, (2, 1)),   # pinned: one thread each
    (2, 4, 0, 8, (2, 4)),   # never more processes than tasks
])  # fmt: skip
def test_split_cores(tasks, jobs, threads, cores, expected):
    assert split_cores(tasks, jobs, threads, cores) == expected


def test_the_cores_are_this_process_share_of_the_machine():
    """Restricted to one core (its affinity mask), a process plans for one core, whatever the machine has."""
    import os
    import subprocess
    import sys

    code = "from lumbar.core.processes import available_cores, split_cores; print(available_cores(), *split_cores(2))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}))
    assert done.stdout.split() == ["1", "1", "1"], done.stderr[-2000:]


@pytest.mark.parametrize("gpus, jobs, expected", [
    (0, 0, ProcessPlan(15, 1)),                 # CPU: 5 folds x 3 localizer models, one process per task (16 cores)
    (1, 0, ProcessPlan(1, 16, (0,))),           # one GPU: one process holds the models, the cores decode
    (2, 0, ProcessPlan(2, 8, (0, 1))),          # two GPUs: one process each, pinned
    (4, 0, ProcessPlan(4, 4, (0, 1, 2, 3))),
    (2, 8, ProcessPlan(2, 8, (0, 1))),          # JOBS=8 on 2 GPUs: still one process per GPU
    (4, 1, ProcessPlan(1, 16, (0,))),           # JOBS=1: one process on the first GPU
])  # fmt: skip
def test_processes_follow_the_devices(gpus, jobs, expected):
    assert plan_processes(15, "auto", jobs, cores=16, gpus=gpus) == expected
    assert plan_processes(15, "cpu", jobs, cores=16, gpus=gpus) == ProcessPlan(*split_cores(15, jobs, 0, 16))


@pytest.mark.parametrize("gpus, expected", [(1, 1), (2, 2), (4, 4)])
def test_four_classifiers_run_one_per_gpu(gpus, expected):
    assert plan_processes(4, "cuda", cores=16, gpus=gpus) == ProcessPlan(expected, 16 // expected,
                                                                         tuple(range(expected)))
    assert plan_processes(4, "cuda:1", cores=16, gpus=gpus).gpus == (1,)  # a named GPU: that one only


def _visible_device(_):
    import os
    import time

    time.sleep(0.2)  # keep both workers busy, so each takes tasks
    return os.getpid(), os.environ["CUDA_VISIBLE_DEVICES"], os.environ["OMP_NUM_THREADS"]


def test_each_worker_of_a_gpu_plan_sees_only_its_own_gpu(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with process_pool(ProcessPlan(2, 3, (0, 1))) as pool:
        seen = list(pool.map(_visible_device, range(6)))
    by_worker = {}
    for pid, gpu, threads in seen:
        by_worker.setdefault(pid, set()).add(gpu)
        assert threads == "3"
    assert sorted(g for gpus in by_worker.values() for g in gpus) == ["0", "1"]  # each worker one GPU, both used


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_threads_sleep_unless_the_environment_says_otherwise(given, expected):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    code = "import os, lumbar; print(os.environ['OMP_WAIT_POLICY'])"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == expected
