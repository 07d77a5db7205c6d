"""Helpers around a tiny trained run: data folders cut from the shared synthetic set, and the Kaggle kernel's
Python (a fresh environment that sees this one's packages as Kaggle's image would)."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
import venv
from pathlib import Path

import pandas as pd
import pytest

from lumbar.core.constants import COMPETITION_SLUG
from lumbar.core.tables import submission_row_ids
from lumbar.kaggle import KAGGLE_EXTRA_PACKAGES

#: The two architectures of the tiny run (`conftest.tiny_run`): the thesis's 3D CNN and a timm 2.5D member on timm's
#: test-sized ResNet (the size of the encoder is not the point there).
ARCHS = ("cnn3d", "timm25d:test_resnet")


def copy_test_split(synthetic_dir: Path, dst: Path) -> Path:
    """A data folder holding only what Kaggle's test-time folder holds (no train files)."""
    dst.mkdir(parents=True)
    shutil.copytree(synthetic_dir / "test_images", dst / "test_images")
    for name in ("test_series_descriptions.csv", "sample_submission.csv"):
        shutil.copy2(synthetic_dir / name, dst / name)
    return dst


def copy_train_split(synthetic_dir: Path, dst: Path) -> Path:
    """The train split as a folder to predict (3 studies), so fallbacks can be counted against a limit."""
    dst.mkdir(parents=True)
    shutil.copytree(synthetic_dir / "train_images", dst / "train_images")
    shutil.copy2(synthetic_dir / "train_series_descriptions.csv", dst / "train_series_descriptions.csv")
    return dst


def copy_as_competition(synthetic_dir: Path, dst: Path) -> list[int]:
    """A Kaggle test-time folder (`dst`) holding every study of the synthetic set, train ones as test studies
    (4 with the shared set): enough studies for fallback shares and budgets. Returns the study ids."""
    dst.mkdir(parents=True)
    series = []
    for split in ("train", "test"):
        for study in (synthetic_dir / f"{split}_images").iterdir():
            shutil.copytree(study, dst / "test_images" / study.name)
        series.append(pd.read_csv(synthetic_dir / f"{split}_series_descriptions.csv"))
    series = pd.concat(series, ignore_index=True)
    series.to_csv(dst / "test_series_descriptions.csv", index=False)
    studies = sorted(series["study_id"].unique().tolist())
    rows = submission_row_ids(studies)
    pd.DataFrame({"row_id": rows, "normal_mild": 1 / 3, "moderate": 1 / 3, "severe": 1 / 3}).to_csv(
        dst / "sample_submission.csv", index=False)
    return studies


def drop_series(data: Path, split: str, study: int, description: str) -> None:
    series = pd.read_csv(data / f"{split}_series_descriptions.csv")
    chosen = series[(series["study_id"] == study) & (series["series_description"] == description)]
    for sid in chosen["series_id"]:
        shutil.rmtree(data / f"{split}_images" / str(study) / str(sid))


def kaggle_competition_dir(kaggle: Path) -> Path:
    return kaggle / "input" / COMPETITION_SLUG


def wheelhouse() -> Path:
    """Wheels of the packages the bundle carries (`make setup` downloads them into the venv)."""
    folder = Path(os.environ.get("LUMBAR_WHEELHOUSE", Path(sys.prefix) / "kaggle-wheels"))
    if not any(folder.glob("*.whl")):
        message = f"no dependency wheels in {folder}: run `make setup` (or set LUMBAR_WHEELHOUSE)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return folder


def _top_level_entries(distribution: str) -> set[str]:
    """site-packages entries (packages, modules, .dist-info) an installed distribution owns."""
    files = importlib.metadata.distribution(distribution).files or []
    return {f.parts[0] for f in files if f.parts[0] != ".."}


def kaggle_python(tmp_path: Path, image_lacks=KAGGLE_EXTRA_PACKAGES) -> Path:
    """A fresh venv that sees this environment's packages as Kaggle's image would: all but lumbar and the ones
    the bundle brings (`image_lacks`), which the kernel must install from the code dataset."""
    env = tmp_path / "kenv"
    venv.EnvBuilder(with_pip=False).create(env)
    image = tmp_path / "image_site"
    image.mkdir()
    site = Path(next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()))
    left_out = set().union(*(_top_level_entries(d) for d in image_lacks))
    for entry in site.iterdir():
        if entry.name.lower().startswith(("lumbar", "__editable__")) or entry.name.endswith(".pth"):
            continue
        if entry.name not in left_out:
            (image / entry.name).symlink_to(entry)
    env_site = next((env / "lib").glob("python*/site-packages"))
    (env_site / "kaggle_image.pth").write_text(str(image) + "\n")
    return env / "bin" / "python"
