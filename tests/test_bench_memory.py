"""The benchmarks' peak-memory helper reports a child's own peak, not the parent's size a child inherits."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the inherited high-water mark is Linux's")
def test_run_measured_reports_the_childs_own_peak_not_the_parents(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    pm = importlib.import_module("peak_memory")
    ballast = b"\x01" * (200 * 2**20)  # this process is now 200 MiB bigger; a plain ru_maxrss child would say so
    assert pm.own_peak_mib() >= 200
    small = pm.run_measured([sys.executable, "-c", "print('hi')"])
    big = pm.run_measured([sys.executable, "-c", "x = b'\\x01' * (120 * 2**20); raise SystemExit(3)"])
    assert small.returncode == 0 and small.stdout == "hi\n"
    assert small.peak_mib < 100
    assert big.returncode == 3
    assert 110 < big.peak_mib - small.peak_mib < 180
    with pytest.raises(subprocess.TimeoutExpired):
        pm.run_measured(["sleep", "5"], timeout=0.3)
    del ballast
