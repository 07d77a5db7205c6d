"""Competition scale: the training data streams from disk, and the scale benchmark measures what it says."""

from __future__ import annotations

import importlib
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _train_data import make_tiny_data
from torch.utils.data import DataLoader

from lumbar.core.tables import load_labels
from lumbar.train.augment import StackAugment, resolve_augmentations
from lumbar.train.dataset import RoiDataset, read_cache
from lumbar.train.tasks import build_tasks

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(monkeypatch):
    """The benchmarks folder's modules, importable as the scripts import each other."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module


@pytest.mark.slow
def test_an_epoch_holds_a_few_samples_not_the_cache(tmp_path):
    """The dataset reads each crop from disk when asked: an epoch's traced peak is a few samples, not the cache."""
    data_dir, cache_dir = make_tiny_data(tmp_path, n_studies=24)
    cache, labels = read_cache(cache_dir), load_labels(data_dir / "train.csv")
    cache_bytes = sum(np.load(cache_dir / f).nbytes for f in cache.samples["file"])
    one = np.load(cache_dir / cache.samples["file"].iloc[0]).nbytes
    datasets = [RoiDataset(cache, task, task.items(cache.samples, labels), train=True, seed=0,
                           augment=StackAugment(resolve_augmentations("default", task.conditions)))
                for task in build_tasks("competition")]
    seen = 0
    tracemalloc.start()
    try:
        for ds in datasets:
            for batch in DataLoader(ds, batch_size=4, shuffle=True, num_workers=0):
                seen += len(batch["image"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == len(cache.samples) == 600
    assert peak < cache_bytes / 10  # 600 crops on disk; an epoch holds about a batch of them (and their float32)
    assert peak > one  # the tracer saw the crops it read


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").is_file(), reason="needs Linux /proc smaps_rollup")
def test_tree_measurement_counts_the_workers_memory_and_cpu(bench):
    pm = bench("peak_memory")
    script = textwrap.dedent("""
        import multiprocessing as mp, time
        def work(_):
            block = bytearray(120 * 2**20)  # 120 MiB in each worker, touched
            total = sum(range(3 * 10**6))
            time.sleep(1.5)
            return len(block) + total
        if __name__ == "__main__":
            with mp.get_context("fork").Pool(2) as pool:
                pool.map(work, [0, 1])
    """)
    idle = pm.run_tree_measured([sys.executable, "-c", "import time; time.sleep(1.5)"], timeout=60, interval=0.1)
    busy = pm.run_tree_measured([sys.executable, "-c", script], timeout=60, interval=0.1)
    assert busy.returncode == 0 and idle.returncode == 0
    assert busy.processes >= 3 and idle.processes == 1
    assert busy.tree_rss_mib - idle.tree_rss_mib > 200  # both workers' 120 MiB, at once
    assert busy.peak_mib < busy.tree_rss_mib  # the largest single process holds less than the tree
    assert busy.cpu_s > idle.cpu_s + 0.1  # the workers' loops are counted, though they ran in other processes


def test_scale_bench_reads_the_full_recipe_and_splices_its_section(bench, tmp_path):
    scale = bench("bench_scale")
    roi, batch = scale.full_recipe(ROOT / "configs" / "full.yaml")
    assert (roi["size"], roi["before"], roi["after"], batch) == (128, 2, 2, 32)
    assert scale.cache_bytes_per_sample(roi) == (5 + 2) * (128 + 16) ** 2 * 2  # 290,304 bytes per crop

    results = tmp_path / "results.md"
    results.write_text("# Benchmarks\n\n## DICOM\n\ntable\n\n## GPU\n\nnot run\n")
    section = "## Competition scale: every data stage\n\nfirst\n"
    scale.splice(results, section)
    assert results.read_text() == "# Benchmarks\n\n## DICOM\n\ntable\n\n## Competition scale: every data stage\n\nfirst\n\n## GPU\n\nnot run\n"
    scale.splice(results, section.replace("first", "second"))  # a rerun replaces its own section only
    text = results.read_text()
    assert "second" in text and "first" not in text and text.count("## Competition scale") == 1
    assert text.endswith("## GPU\n\nnot run\n")


def test_scale_view_holds_only_the_chosen_studies(bench, synthetic_dir, tmp_path):
    scale = bench("bench_scale")
    studies = sorted(int(p.name) for p in (synthetic_dir / "train_images").iterdir())[:2]
    view = scale.scale_view(synthetic_dir, studies, tmp_path / "view")
    assert sorted(int(p.name) for p in (view / "train_images").iterdir()) == studies
    for name in ("train.csv", "train_label_coordinates.csv", "train_series_descriptions.csv"):
        table = pd.read_csv(view / name)
        assert set(table["study_id"]) == set(studies), name
    assert (view / "synthetic.json").is_file()
