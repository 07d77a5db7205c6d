"""Processes and threads follow the core count unless a setting pins them."""

from __future__ import annotations

import pytest

from lumbar.cores import available_cores, split_cores


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


def test_available_cores_is_this_process_share():
    import os

    assert 1 <= available_cores() <= (os.cpu_count() or 1)
    assert split_cores(2) == (min(2, available_cores()), max(1, available_cores() // min(2, available_cores())))


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
