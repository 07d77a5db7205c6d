"""Run a command with some folders truly read-only, as Kaggle mounts `/kaggle/input`.

As root, file permissions do not stop writes, so the folders are bind-mounted read-only onto themselves in a
private mount namespace (`unshare -m`; `unshare -rm` maps an unprivileged user to root in its own namespace).
The command sees the same paths; nothing outside the namespace changes.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

UNSHARE = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-r", "-m"]


def require_mount_namespace() -> None:
    """Skip (fail under CI) where this machine cannot make a private mount namespace."""
    try:
        ok = subprocess.run([*UNSHARE, "true"], capture_output=True, check=False).returncode == 0
    except FileNotFoundError:
        ok = False
    if not ok:
        message = f"`{' '.join(UNSHARE)} true` failed: no private mount namespace for read-only folders"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def readonly_argv(argv: Sequence[str], folders: Sequence[os.PathLike | str]) -> list[str]:
    """`argv` wrapped so that it runs with each of `folders` read-only.

    The wrapper first proves that a write into each folder fails (exit code 97 otherwise).
    """
    steps = []
    for folder in folders:
        q = shlex.quote(str(Path(folder).resolve()))
        steps += [
            f"mount --bind {q} {q}",
            f"mount -o remount,ro,bind {q} {q}",
            f"if touch {q}/.write-probe 2>/dev/null; then echo 'still writable: '{q} >&2; exit 97; fi",
        ]
    return [*UNSHARE, "sh", "-c", " && ".join(steps + [f"exec {shlex.join(map(str, argv))}"])]
