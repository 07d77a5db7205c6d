"""Shared fixtures: the real competition sample beside the checkout, and small synthetic data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lumbar.core.paths import PROJECT_ROOT


def sample_root() -> Path:
    """`../shared/rsna2024-sample` beside the checkout (or `LUMBAR_SAMPLE_DIR`)."""
    return Path(os.environ.get("LUMBAR_SAMPLE_DIR", PROJECT_ROOT.parent / "shared" / "rsna2024-sample"))


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The real competition sample; tests that need it skip, saying why, in a user's own clone."""
    root = sample_root()
    if not (root / "train.csv").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CI must have the real sample at {root}")
        pytest.skip(f"real competition sample not found at {root} (set LUMBAR_SAMPLE_DIR)")
    return root


#: The small synthetic set shared by tests: 3 training and 1 test study at 96 px (a few seconds to write).
SYNTHETIC_SMALL = {"studies": 3, "test_studies": 1, "seed": 11, "image_size": 96}


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """A synthetic data folder in the competition's layout, with `oracle.csv` beside its files."""
    from lumbar.data.synthetic import SynthConfig, generate

    root = tmp_path_factory.mktemp("synthetic")
    generate(root, SynthConfig(**SYNTHETIC_SMALL), oracle=root / "oracle.csv", progress=False)
    return root


@pytest.fixture
def tiny_model(monkeypatch):
    """Engine tests exercise the loop, not the architectures: a tiny stand-in model keeps them at seconds
    (`pytestmark = pytest.mark.usefixtures("tiny_model")` in such a module)."""
    from _train_data import tiny_build_model

    import lumbar.models

    monkeypatch.setattr(lumbar.models, "build_model", tiny_build_model, raising=False)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """`_train_data.make_tiny_data` memoised for the session: one folder per set of arguments, written once (the
    tests only read it; a test that changes a cache works on its own copy)."""
    from _train_data import make_tiny_data

    made: dict[tuple, tuple[Path, Path]] = {}

    def make(n_studies: int = 8, seed: int = 0, conditions: tuple[str, ...] | None = None) -> tuple[Path, Path]:
        key = (n_studies, seed, tuple(conditions) if conditions else None)
        if key not in made:
            extra = {"conditions": tuple(conditions)} if conditions else {}
            made[key] = make_tiny_data(tmp_path_factory.mktemp("tiny"), n_studies=n_studies, seed=seed, **extra)
        return made[key]

    return make


@pytest.fixture(scope="session")
def tiny(tiny_data):
    """The tiny training data of `_train_data.make_tiny_data` (8 studies), once per session."""
    return tiny_data(8)


@pytest.fixture(scope="session")
def tiny_run(synthetic_dir, tmp_path_factory) -> Path:
    """A run folder trained for one epoch on the shared 3-study synthetic set: ground-truth crops, a localizer,
    two classifiers (`_runs.ARCHS`) with 2 folds, their ensemble. Shared by every test that predicts."""
    from _runs import ARCHS

    from lumbar.core.manifest import update_manifest
    from lumbar.core.tables import load_coordinates
    from lumbar.ensemble.runs import fit_run_ensemble
    from lumbar.localize.config import LocalizerConfig
    from lumbar.localize.train import train_localizer
    from lumbar.preprocess.cache import build_cache
    from lumbar.preprocess.config import RoiConfig
    from lumbar.train import train

    run = tmp_path_factory.mktemp("run")
    coords = load_coordinates(synthetic_dir / "train_label_coordinates.csv")
    report = build_cache(coords, synthetic_dir, "train", run / "cache",
                         RoiConfig.from_overrides({"size": 24, "before": 1, "after": 1}), progress=False)
    update_manifest(run, "preprocess", {"cache": str(report.cache_dir.relative_to(run))})
    config = LocalizerConfig.from_dict({"backbone": "test_resnet", "size": 32, "slices": 8, "epochs": 1,
                                        "axial_epochs": 1, "refine_tasks": "", "device": "cpu", "decoder_channels": 8,
                                        "batch_size": 4})
    train_localizer(config, synthetic_dir, coords, run, progress=False)
    for arch in ARCHS:
        train({"data_dir": str(synthetic_dir), "cache": str(report.cache_dir), "out": str(run / arch.replace(":", "_")),
               "arch": arch, "n_folds": 2, "epochs": 1, "batch_size": 16, "device": "cpu", "progress": False,
               "threads": 1})
    fit_run_ensemble(run, synthetic_dir)
    return run
