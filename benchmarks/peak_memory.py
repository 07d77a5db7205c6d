"""Peak resident memory of a process, its own: not inherited from the process that started it.

On Linux a child's `ru_maxrss` (from `wait4`, `RUSAGE_CHILDREN` or its own `RUSAGE_SELF`) starts at the
resident size of its parent at spawn time: fork copies the high-water mark and exec keeps it. A benchmark
that trained a model in-process and then spawned `predict` would report its own size for every child.
So `run_measured` starts the command through a small launcher interpreter and reads the command's `wait4`
usage there (the floor is the launcher's few MiB, not the caller's size), and `own_peak_mib` reads the
high-water mark of the current address space (`VmHWM`), which exec resets.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

#: Runs argv[2:], waits for it, writes "<exit code> <ru_maxrss>" to argv[1], exits with its code.
_LAUNCHER = (
    "import os, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "code = os.waitstatus_to_exitcode(status)\n"
    "open(sys.argv[1], 'w').write(f'{code} {usage.ru_maxrss}')\n"
    "sys.exit(code if code >= 0 else 128 - code)\n"
)


@dataclass
class Measured:
    """A finished command: exit code, its own peak resident memory, wall seconds, and its output."""

    returncode: int
    peak_mib: float
    wall_s: float
    stdout: str
    stderr: str


def _maxrss_mib(value: int) -> float:
    return value / (2**20 if sys.platform == "darwin" else 2**10)  # bytes on macOS, KiB on Linux


def own_peak_mib() -> float:
    """Peak resident memory of this process's address space (`VmHWM`; `ru_maxrss` where /proc is missing)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return _maxrss_mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return int(re.search(r"^VmHWM:\s+(\d+) kB", text, re.MULTILINE).group(1)) / 1024


def run_measured(cmd: list[str], timeout: float | None = None, env: dict | None = None) -> Measured:
    """Run `cmd` to the end; its peak RSS (itself and the children it waited for), wall time and output.

    Raises:
        subprocess.TimeoutExpired: after `timeout` seconds (the command and its children are killed).
    """
    with tempfile.TemporaryDirectory() as tmp:
        usage_file = Path(tmp) / "usage"
        out, err = Path(tmp) / "out", Path(tmp) / "err"
        with out.open("w") as fo, err.open("w") as fe:
            t0 = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _LAUNCHER, str(usage_file), *cmd],
                                    stdout=fo, stderr=fe, env=env, start_new_session=True)  # fmt: skip
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise subprocess.TimeoutExpired(cmd, timeout) from None
            wall = time.perf_counter() - t0
        if not usage_file.is_file():
            raise RuntimeError(f"the launcher of {cmd[:3]} died (exit {proc.returncode}): {err.read_text()[-2000:]}")
        code, maxrss = (int(v) for v in usage_file.read_text().split())
        return Measured(code, _maxrss_mib(maxrss), wall, out.read_text(), err.read_text())
