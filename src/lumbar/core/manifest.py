"""The run manifest: `runs/<name>/manifest.json`, the file that makes a run folder describe itself.

Every stage records what it produced under its own key (localizer, classifiers, ensemble, notebooks, ...),
with paths relative to the run folder, so `predict` and `kaggle-bundle` need only the run's path and the
folder can be moved or uploaded as a whole. Updates are read-modify-write under a file lock, with an
atomic replace, so notebooks running side by side (a parallel group of the pipeline) never lose each
other's entries.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from filelock import FileLock

from lumbar.core.atomic import write_json

MANIFEST_NAME = "manifest.json"


def manifest_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / MANIFEST_NAME


def read_manifest(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a run folder ({} when none has been written yet)."""
    path = manifest_path(run_dir)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def update_manifest(
    run_dir: str | os.PathLike, key: str, value: Any, item: str | None = None
) -> dict[str, Any]:
    """Set `manifest[key] = value`, or `manifest[key][item] = value` for keyed collections
    (classifiers...)."""
    path = manifest_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(f".{path.name}.lock")):  # notebooks of a parallel group share the manifest
        manifest = read_manifest(run_dir)
        if item is None:
            manifest[key] = value
        else:
            manifest.setdefault(key, {})[item] = value
        write_json(manifest, path)
    return manifest
