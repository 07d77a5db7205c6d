"""The code dataset's wheels: the `lumbar` wheel, the dependencies Kaggle's image may lack, and the check the
kernel runs after installing them.

Kaggle's image provides torch and the scientific stack (`IMAGE_MODULES`); the packages it may lack or hold at
another version travel as wheels (`KAGGLE_EXTRA_PACKAGES`, pinned as in requirements.txt), fetched from the
package registry at bundle time or taken from a wheelhouse that `python -m lumbar kaggle-wheels` filled once.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from lumbar.core.paths import PROJECT_ROOT

#: Installed on Kaggle from the code dataset: missing from Kaggle's image or needed at our pinned version.
#: The competition's files are RLE Lossless: pylibjpeg + pylibjpeg-rle decode them fast; the JPEG plugins are
#: left out (pydicom still decodes other transfer syntaxes with what the image has).
KAGGLE_EXTRA_PACKAGES = ("pydicom", "pylibjpeg", "pylibjpeg-rle", "monai", "timm")
#: The third-party modules `lumbar` imports (pyarrow: pandas' parquet engine) that the kernel takes from
#: Kaggle's image, not from the bundle. Their versions at bundle time go into code/image.json; the kernel
#: compares.
IMAGE_MODULES = (
    "torch",
    "torchvision",
    "numpy",
    "pandas",
    "pyarrow",
    "scipy",
    "sklearn",
    "cv2",
    "albumentations",
    "matplotlib",
    "yaml",
    "tqdm",
    "filelock",
)
#: Python versions whose binary wheels are fetched (Kaggle's image has moved between these).
KAGGLE_PYTHON_VERSIONS = ("3.10", "3.11", "3.12")
#: Binary wheels for the platforms Kaggle's image runs on (manylinux, x86-64).
_PLATFORMS = ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_28_x86_64")


def pinned_versions(requirements: Path = PROJECT_ROOT / "requirements.txt") -> dict[str, str]:
    """name (lower case) -> version from requirements.txt."""
    pins = {}
    for line in requirements.read_text().splitlines():
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def pinned_specs(packages=KAGGLE_EXTRA_PACKAGES) -> list[str]:
    """`name==version` of each package, pinned as in requirements.txt (bare name when it has no pin)."""
    pins = pinned_versions()
    return [f"{p}=={pins[p.lower()]}" if p.lower() in pins else p for p in packages]


def build_lumbar_wheel(out: Path) -> Path:
    """`pip wheel` of this project (no dependencies, no build isolation: works offline)."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(PROJECT_ROOT),
        ],
        check=True,
    )
    wheels = sorted(out.glob("lumbar-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip wheel wrote no lumbar wheel into {out}")
    # pip wheel leaves build/ and *.egg-info in the source tree
    shutil.rmtree(PROJECT_ROOT / "build", ignore_errors=True)
    for info in (PROJECT_ROOT / "src").glob("*.egg-info"):
        shutil.rmtree(info, ignore_errors=True)
    return wheels[-1]


def collect_dependency_wheels(
    out: Path,
    packages=KAGGLE_EXTRA_PACKAGES,
    wheelhouse: Path | None = None,
    python_versions=KAGGLE_PYTHON_VERSIONS,
) -> list[Path]:
    """Put wheels of `packages` (pinned versions) into `out`.

    From `wheelhouse` when given (offline; only the pinned version's wheels), else `pip download` from the
    package registry for each of `python_versions` (binary wheels for manylinux x86-64, as Kaggle runs).
    """
    out.mkdir(parents=True, exist_ok=True)
    specs = pinned_specs(packages)
    if wheelhouse is not None:
        return [w for spec in specs for w in _copy_from_wheelhouse(Path(wheelhouse), spec, out)]
    missing = []
    for spec in specs:
        got = 0
        for version in python_versions:
            platforms = [a for p in _PLATFORMS for a in ("--platform", p)]
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "-q",
                    "--no-deps",
                    "--only-binary=:all:",
                    "-d",
                    str(out),
                    "--python-version",
                    version,
                    "--implementation",
                    "cp",
                    *platforms,
                    spec,
                ],
                check=False,
                capture_output=True,
                text=True,
            )
            got += done.returncode == 0
            if done.returncode:
                missing.append(f"{spec} for Python {version}")
        if not got:
            raise RuntimeError(
                f"no wheel of {spec} for any of Python {python_versions}: {done.stderr[-500:]}"
            )
    if missing:
        print(f"kaggle-bundle: no wheel of {', '.join(missing)} (that Python then needs it in its image)")
    return sorted(out.glob("*.whl"))


def _copy_from_wheelhouse(wheelhouse: Path, spec: str, out: Path) -> list[Path]:
    name, _, version = spec.partition("==")
    prefix = name.lower().replace("-", "_") + "-" + (f"{version}-" if version else "")
    hits = [w for w in wheelhouse.glob("*.whl") if w.name.lower().startswith(prefix)]
    if not hits:
        raise FileNotFoundError(
            f"{wheelhouse}: no wheel of {spec} (fill it with `python -m lumbar kaggle-wheels`)"
        )
    for w in hits:
        shutil.copy2(w, out / w.name)
    return [out / w.name for w in hits]


def module_versions(modules=IMAGE_MODULES) -> dict[str, str]:
    """module -> its `__version__` in this environment (the one the bundle is built and tested in)."""
    return {m: str(getattr(importlib.import_module(m), "__version__", "unknown")) for m in modules}


def check_environment(code_dir: str | os.PathLike) -> dict[str, str]:
    """In the kernel, after the install: where the bundled packages came from, and the image's modules
    against the versions the bundle was built with (`code/image.json`).

    Prints one line per bundled distribution (`name version in folder`) and one per image module whose
    major.minor differs. A missing module is an ImportError naming every missing one.

    Returns:
        module -> version in this image.
    """
    importlib.invalidate_caches()  # the install just added distributions to site-packages
    for name in ("lumbar", *KAGGLE_EXTRA_PACKAGES):
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            print(f"{name} not installed (not in the bundle)")
            continue
        print(f"{name} {dist.version} in {dist.locate_file('')}")
    built = json.loads((Path(code_dir) / "image.json").read_text())
    missing, found = [], {}
    for module in built:
        try:
            found[module] = str(getattr(importlib.import_module(module), "__version__", "unknown"))
        except ImportError:
            missing.append(module)
    if missing:
        raise ImportError(f"Kaggle's image lacks {missing}; the bundle assumes it has them ({built})")
    for module, version in found.items():
        if version.split(".")[:2] != built[module].split(".")[:2]:
            print(f"image has {module} {version}; the bundle was built and tested with {built[module]}")
    return found


def cli_kaggle_wheels(args: argparse.Namespace) -> int:
    """`python -m lumbar kaggle-wheels`: the dependency wheels of the bundle, once, for offline bundling."""
    wheels = collect_dependency_wheels(
        Path(args.out), python_versions=tuple(args.python_version or KAGGLE_PYTHON_VERSIONS)
    )
    print(f"kaggle-wheels: {len(wheels)} wheels in {args.out}: {', '.join(w.name for w in wheels)}")
    return 0
