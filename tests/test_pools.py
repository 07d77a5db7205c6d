"""One process-pool helper: the header index and the synthetic generator start their workers as every pool
of the package does (`lumbar.core.processes.process_pool`: spawned, as forking OpenCV or CUDA state can
deadlock), with the same results as one process."""

from __future__ import annotations

import filecmp
import importlib

import pandas as pd

import lumbar.data.index
from lumbar.core import processes
from lumbar.data.index import build_index
from lumbar.data.synthetic import SynthConfig, generate
from lumbar.data.synthetic.generate import MANIFEST


def test_index_and_generator_spawn_their_pools_and_match_one_process(synthetic_dir, tmp_path, monkeypatch):
    started = []

    def recording(plan):
        pool = processes.process_pool(plan)
        started.append((plan.jobs, pool._mp_context.get_start_method()))
        return pool

    monkeypatch.setattr(lumbar.data.index, "process_pool", recording)
    # the module, not the function `lumbar.data.synthetic.generate` its package exports under the same name
    monkeypatch.setattr(importlib.import_module("lumbar.data.synthetic.generate"), "process_pool", recording)
    one, _ = build_index(synthetic_dir, "train", workers=1, progress=False)
    two, _ = build_index(synthetic_dir, "train", workers=2, progress=False)
    pd.testing.assert_frame_equal(one, two)
    config = SynthConfig(studies=2, test_studies=1, seed=5, image_size=64)
    generate(tmp_path / "one", config, workers=1, progress=False)
    generate(tmp_path / "two", config, workers=2, progress=False)
    assert started == [(2, "spawn"), (2, "spawn")]
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*")
                                     if p.is_file())
    differ = [p for p in files if not filecmp.cmp(tmp_path / "one" / p, tmp_path / "two" / p, shallow=False)]
    assert differ == [] and MANIFEST in {p.name for p in files}
