"""The kernel's first check, before any prediction: does the GPU fit this torch build, did the whole run
arrive, where is the competition's data?

A run that arrived without its checkpoints (an upload with the Kaggle CLI's default `--dir-mode skip`), a GPU
the image's torch cannot run (Kaggle's retired P100, sm_60) or a dataset that is not attached would otherwise
fail late, deep in a traceback, or not at all (a kernel of prior rows). Here each stops the kernel with one
line that names what is wrong and what to do (`KernelCheckError`), and a good start prints what it found.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from lumbar.core.constants import COMPETITION_SLUG
from lumbar.core.manifest import MANIFEST_NAME
from lumbar.core.run_contract import RunManifest
from lumbar.core.runtime import amp_dtype_for, check_gpu_supported, precision_name, resolve_device
from lumbar.kaggle.layout import BUNDLE_INDEX, RUN_FOLDER, upload_command

#: How deep under /kaggle/input an attached dataset may be mounted (`/kaggle/input/<slug>` is depth 1).
SEARCH_DEPTH = 3
#: How many missing files the message names before it says how many more.
SHOW = 5


class KernelCheckError(RuntimeError):
    """What the kernel was given cannot make a submission; the message says what and how to fix it."""


def preflight(
    kaggle: str | os.PathLike,
    weights: str,
    run_dir: str = "",
    data_dir: str = "",
    device: str = "auto",
    scratch: str | os.PathLike | None = None,
) -> tuple[str, str]:
    """Check the GPU, the weights dataset and the data folder; print what was found.

    Args:
        kaggle: Kaggle's root (`/kaggle`, or what `LUMBAR_KAGGLE_ROOT` stands in for it).
        weights: the weights dataset's slug (`lumbar-weights`), mounted at `<kaggle>/input/<slug>` or below.
        run_dir: the run folder when given (else found in the weights dataset, `locate_run`).
        data_dir: the competition's folder when given (else found under `<kaggle>/input`).
        device: the device the kernel predicts on.
        scratch: where an archive Kaggle left packed is unpacked (default: a temporary folder).

    Returns:
        (run folder, data folder), as strings for the notebook's parameters.

    Raises:
        KernelCheckError / UnsupportedGPUError: one line naming what is wrong and what to do.
    """
    print(gpu_report(device))
    inputs = Path(kaggle) / "input"
    if not run_dir:
        dataset = find_dataset(inputs, weights, BUNDLE_INDEX)
        if dataset is None:
            raise KernelCheckError(
                f"the weights dataset {weights!r} is not attached (nothing under {inputs} holds "
                f"its {BUNDLE_INDEX}): Add Input -> Your Datasets -> {weights}"
            )
        run_dir = str(locate_run(dataset, Path(scratch) if scratch else None))
    files = check_run(Path(run_dir))
    print(f"preflight: run {run_dir}: {len(files)} files, {sum(files.values()) / 1e6:.1f} MB, all present")
    if not data_dir:
        found = find_dataset(inputs, COMPETITION_SLUG, "test_series_descriptions.csv")
        if found is None:
            raise KernelCheckError(
                f"the competition's data is not attached (no {COMPETITION_SLUG} with "
                f"test_series_descriptions.csv under {inputs}): Add Input -> Competitions"
            )
        data_dir = str(found)
    print(f"preflight: data {data_dir}")
    return run_dir, data_dir


def gpu_report(device: str = "auto") -> str:
    """One line: the GPU, its compute capability, the torch build's architectures and the precision chosen.

    Raises:
        UnsupportedGPUError: the GPU is not among the build's architectures (one line, naming what to choose).
    """
    dev = resolve_device(device)
    if dev.type != "cuda":
        visible = "no GPU" if not torch.cuda.is_available() else f"a GPU, but device {device!r}"
        return (
            f"preflight: {visible}: the models run on the CPU ({torch.get_num_threads()} threads), "
            "far slower; "
            "choose GPU T4 x2 in the notebook's settings"
        )
    check_gpu_supported(dev)
    capability = torch.cuda.get_device_capability(dev)
    return (
        f"preflight: GPU {torch.cuda.get_device_name(dev)}, compute capability "
        f"{capability[0]}.{capability[1]}; "
        f"torch {torch.__version__} built for {' '.join(torch.cuda.get_arch_list())}; "
        f"precision {precision_name(dev, amp_dtype_for(capability))}"
    )


def find_dataset(inputs: Path, slug: str, marker: str) -> Path | None:
    """The attached dataset `slug` holding `marker`: `inputs/slug` when it is there, else the first folder up
    to
    `SEARCH_DEPTH` levels below `inputs` that is named `slug` (or, failing that, any) and holds `marker`."""
    if (inputs / slug / marker).is_file():
        return inputs / slug
    hits = [
        p.parent
        for depth in range(1, SEARCH_DEPTH + 1)
        for p in sorted(inputs.glob("/".join(["*"] * depth) + "/" + marker))
    ]
    named = [h for h in hits if h.name == slug]
    return (named or hits or [None])[0]


def locate_run(dataset: Path, scratch: Path | None = None) -> Path:
    """The run folder inside the weights dataset, however the upload laid it out (`lumbar.kaggle.layout`).

    Tried in order: `run/` (the archive unpacked into a folder named after it), the dataset's root (unpacked
    in place), then `run.zip` / `run.tar` left packed (unpacked into `scratch`). The first place where every
    file of `bundle.json` is present with its size wins.

    Raises:
        KernelCheckError: no place holds the whole run: one line naming the missing files (from the place that
            came closest) and the upload command that ships them.
    """
    index = json.loads((dataset / BUNDLE_INDEX).read_text())
    files: dict[str, int] = index["files"]
    folder = index.get("run_folder", RUN_FOLDER)
    candidates = [dataset / folder, dataset]
    best: tuple[Path, list[str]] | None = None
    for place in candidates + _archives(dataset, folder):
        if place.is_file():
            place = _unpack(place, scratch)
        missing = missing_files(place, files)
        if not missing:
            return place
        if best is None or len(missing) < len(best[1]):
            best = (place, missing)
    place, missing = best
    upload = index.get("upload_version") or upload_command("<bundle>/weights", new=False)
    raise KernelCheckError(
        f"{len(missing)} of {len(files)} files of the run did not arrive in {dataset} ({_first(missing)}): "
        "the dataset was uploaded without its folders (the Kaggle CLI skips folders unless given "
        "--dir-mode); "
        f"upload it again with: {upload}"
    )


def _archives(dataset: Path, folder: str) -> list[Path]:
    return [
        dataset / f"{folder}{suffix}"
        for suffix in (".zip", ".tar", ".tar.gz")
        if (dataset / f"{folder}{suffix}").is_file()
    ]


def _unpack(archive: Path, scratch: Path | None) -> Path:
    """Unpack an archive Kaggle left packed into `scratch/run` (a temporary folder by default)."""
    target = (scratch or Path(tempfile.mkdtemp(prefix="lumbar-run-"))) / RUN_FOLDER
    if target.exists():
        shutil.rmtree(target)
    print(f"preflight: {archive.name} arrived packed: unpacking it into {target}")
    shutil.unpack_archive(archive, target)
    return target


def missing_files(place: Path, files: dict[str, int]) -> list[str]:
    """The files of `files` (relative path -> size) that are not at `place` with their size, or not
    readable."""
    missing = []
    for rel, size in files.items():
        path = place / rel
        try:
            with open(path, "rb") as f:
                f.read(1)
            ok = path.stat().st_size == size
        except OSError:
            ok = False
        if not ok:
            missing.append(rel)
    return missing


def check_run(run_dir: Path) -> dict[str, int]:
    """Every file the run's manifest names (`RunManifest.files`), present and readable (path -> size).

    Raises:
        KernelCheckError: naming the missing files.
    """
    manifest = RunManifest.read(run_dir)
    if manifest.is_empty():
        raise KernelCheckError(f"{run_dir} holds no {MANIFEST_NAME}: not a run folder")
    files = {MANIFEST_NAME: (run_dir / MANIFEST_NAME).stat().st_size}
    missing = []
    for rel in manifest.files():
        path = run_dir / rel
        if missing_files(run_dir, {rel: path.stat().st_size if path.is_file() else -1}):
            missing.append(rel)
        else:
            files[rel] = path.stat().st_size
    if missing:
        raise KernelCheckError(
            f"{run_dir}/{MANIFEST_NAME} names {len(missing)} files that are not there or not "
            f"readable ({_first(missing)}): build the bundle again with kaggle-bundle"
        )
    return files


def _first(items: list[str]) -> str:
    return ", ".join(items[:SHOW]) + (f" and {len(items) - SHOW} more" if len(items) > SHOW else "")
