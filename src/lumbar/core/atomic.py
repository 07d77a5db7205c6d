"""Atomic file writes: a killed run, or two processes writing the same file, never leave half a file.

Every writer goes through `atomic_path`: it hands out a temporary name beside the target (unique per process
and call, keeping the target's suffix so `savefig` and `np.save` see the right format) and renames it over
the target only when the write finished.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(data: Any, path: str | os.PathLike, indent: int = 2) -> Path:
    """Write JSON atomically (paths and other objects as strings)."""
    return write_text(json.dumps(data, indent=indent, default=str) + "\n", path)
