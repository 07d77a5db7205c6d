"""Shared fixtures: the real competition sample beside the checkout, and small synthetic data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lumbar.paths import PROJECT_ROOT


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


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny training data of `_train_data.make_tiny_data` (8 studies), once per test module."""
    from _train_data import make_tiny_data

    return make_tiny_data(tmp_path_factory.mktemp("tiny"), n_studies=8)
