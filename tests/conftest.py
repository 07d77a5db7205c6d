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
