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


#: As `_LAUNCHER`, writing "<exit code> <ru_maxrss> <ru_utime> <ru_stime>": wait4's usage covers the command and
#: every descendant it waited for (pool and DataLoader workers are joined), so the CPU seconds are the tree's.
_TREE_LAUNCHER = _LAUNCHER.replace("{usage.ru_maxrss}", "{usage.ru_maxrss} {usage.ru_utime} {usage.ru_stime}")


@dataclass
class TreeMeasured(Measured):
    """`Measured`, plus the CPU seconds and the memory of the command's whole process tree.

    Attributes:
        cpu_s: user + system seconds of the command and the descendants it waited for.
        tree_pss_mib: peak over time of the summed proportional set size (PSS) of the command's process tree:
            what the tree holds in memory, shared pages (libraries, copy-on-write after fork) split among the
            processes that share them; sampled every `interval` seconds, so a shorter spike can be missed.
        tree_rss_mib: the same with RSS, which counts a shared page once per process (an upper bound).
        processes: the most processes of the tree seen at once.
    """

    cpu_s: float = 0.0
    tree_pss_mib: float = 0.0
    tree_rss_mib: float = 0.0
    processes: int = 0


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended meanwhile
            continue
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    return children


def tree_memory_kib(root: int) -> tuple[int, int, int]:
    """(PSS KiB, RSS KiB, processes) summed over the descendants of `root` (not `root` itself), Linux only."""
    children = _children_map()
    todo, pss, rss, n = list(children.get(root, [])), 0, 0, 0
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines()[1:] if ":" in line)
        pss += int(fields.get("Pss", "0 kB").split()[0])
        rss += int(fields.get("Rss", "0 kB").split()[0])
        n += 1
    return pss, rss, n


def run_tree_measured(cmd: list[str], timeout: float | None = None, env: dict | None = None,
                      interval: float = 0.5, cwd: str | os.PathLike | None = None) -> TreeMeasured:
    """Run `cmd` to the end, sampling its process tree's memory every `interval` seconds (`TreeMeasured`).

    Where /proc has no `smaps_rollup` (not Linux), the tree figures stay 0 and `peak_mib` still holds.

    Raises:
        subprocess.TimeoutExpired: after `timeout` seconds (the command and its children are killed).
    """
    import threading

    peaks = {"pss": 0, "rss": 0, "n": 0}
    with tempfile.TemporaryDirectory() as tmp:
        usage_file = Path(tmp) / "usage"
        out, err = Path(tmp) / "out", Path(tmp) / "err"
        with out.open("w") as fo, err.open("w") as fe:
            t0 = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _TREE_LAUNCHER, str(usage_file), *cmd],
                                    stdout=fo, stderr=fe, env=env, cwd=cwd, start_new_session=True)  # fmt: skip
            done = threading.Event()

            def sample() -> None:
                if not Path("/proc/self/smaps_rollup").is_file():
                    return
                while not done.wait(interval):
                    pss, rss, n = tree_memory_kib(proc.pid)
                    peaks.update(pss=max(peaks["pss"], pss), rss=max(peaks["rss"], rss), n=max(peaks["n"], n))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise subprocess.TimeoutExpired(cmd, timeout) from None
            finally:
                done.set()
                sampler.join()
            wall = time.perf_counter() - t0
        if not usage_file.is_file():
            raise RuntimeError(f"the launcher of {cmd[:3]} died (exit {proc.returncode}): {err.read_text()[-2000:]}")
        code, maxrss, utime, stime = usage_file.read_text().split()
        return TreeMeasured(int(code), _maxrss_mib(int(maxrss)), wall, out.read_text(), err.read_text(),
                            cpu_s=float(utime) + float(stime), tree_pss_mib=peaks["pss"] / 1024,
                            tree_rss_mib=peaks["rss"] / 1024, processes=peaks["n"])
