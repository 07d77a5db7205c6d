"""Where the data lives: one resolution rule for notebooks, commands and tests.

Order: an explicit argument, then the `LUMBAR_DATA_DIR` environment variable, then Kaggle's mounted
competition folder (`$LUMBAR_KAGGLE_ROOT` or `/kaggle`, then `input/<slug>`), then `input/<slug>` under
the project root.
"""

from __future__ import annotations

import os
from pathlib import Path

from lumbar.core.constants import COMPETITION_SLUG

PROJECT_ROOT = Path(__file__).resolve().parents[3]

#: Every synthetic data folder holds this file (`lumbar.data.synthetic`); the competition's never does.
SYNTHETIC_MARKER = "synthetic.json"


def kaggle_root() -> Path:
    """Kaggle's root folder; tests stand a temporary folder in for it with `LUMBAR_KAGGLE_ROOT`."""
    return Path(os.environ.get("LUMBAR_KAGGLE_ROOT", "/kaggle"))


def default_input_dir() -> Path:
    """The project's own data folder, `input/<slug>`."""
    return PROJECT_ROOT / "input" / COMPETITION_SLUG


def data_root(path: str | os.PathLike | None = None, must_exist: bool = False) -> Path:
    """Resolve the competition data folder.

    Args:
        path: an explicit folder; wins over everything else.
        must_exist: raise if the resolved folder does not exist.

    Returns:
        The folder the first rule that applies names.
    """
    kaggle = kaggle_root() / "input" / COMPETITION_SLUG
    if path:
        root = Path(path)
    elif os.environ.get("LUMBAR_DATA_DIR"):
        root = Path(os.environ["LUMBAR_DATA_DIR"])
    elif kaggle.is_dir():
        root = kaggle
    else:
        root = default_input_dir()
    if must_exist and not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    return root


def is_synthetic(root: str | os.PathLike) -> bool:
    """True when `root` is a synthetic data folder (it holds `SYNTHETIC_MARKER`)."""
    return (Path(root) / SYNTHETIC_MARKER).is_file()


def images_dir(root: Path, split: str) -> Path:
    """`train_images/` or `test_images/` under a data root."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return Path(root) / f"{split}_images"


def series_dir(root: Path, split: str, study_id: int, series_id: int) -> Path:
    """The folder holding one series' DICOM files."""
    return images_dir(root, split) / str(study_id) / str(series_id)
