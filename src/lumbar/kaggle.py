"""The offline Kaggle upload: code, weights and kernel folders for a code competition run without internet.

    python -m lumbar kaggle-bundle --run runs/demo --out runs/demo/kaggle

writes
    code/     the `lumbar` wheel, wheels of the dependencies Kaggle's image may lack (`KAGGLE_EXTRA_PACKAGES`,
              pinned as in requirements.txt; fetched from the package registry at bundle time, or taken from
              `--wheelhouse DIR`, which `python -m lumbar kaggle-wheels` fills), requirements.txt (what the
              kernel installs from this folder), image.json (the versions of the modules the kernel takes
              from Kaggle's image, `IMAGE_MODULES`, as the bundle was built and tested with),
              dataset-metadata.json
    weights/  the run folder's manifest and every file it references (checkpoints of the ensemble's models and
              the localizer, ensemble parameters, priors), a model card (README.md), dataset-metadata.json
    kernel/   submission.ipynb (notebooks/05_submission.ipynb with an install cell first and Kaggle paths as
              parameters) and kernel-metadata.json (internet off, GPU on, the competition and both datasets as
              sources)

The kernel reads `/kaggle/input/<competition>` and the two datasets, all mounted read-only, and writes only
under `/kaggle/working` (`submission.csv`, its record `submission.json`, scratch crops); setting
`LUMBAR_KAGGLE_ROOT` stands another folder in for `/kaggle` (the tests do, with `input/` truly read-only).
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

import nbformat

from lumbar import __version__
from lumbar.atomic import write_json, write_text
from lumbar.constants import COMPETITION_SLUG
from lumbar.manifest import read_manifest
from lumbar.paths import PROJECT_ROOT

#: Installed on Kaggle from the code dataset: missing from Kaggle's image or needed at our pinned version.
#: The competition's files are RLE Lossless: pylibjpeg + pylibjpeg-rle decode them fast; the JPEG plugins are
#: left out (pydicom still decodes other transfer syntaxes with what the image has).
KAGGLE_EXTRA_PACKAGES = ("pydicom", "pylibjpeg", "pylibjpeg-rle", "monai", "timm")
#: The third-party modules `lumbar` imports (pyarrow: pandas' parquet engine) that the kernel takes from Kaggle's
#: image, not from the bundle. Their versions at bundle time go into code/image.json; the kernel compares.
IMAGE_MODULES = ("torch", "torchvision", "numpy", "pandas", "pyarrow", "scipy", "sklearn", "cv2", "albumentations",
                 "matplotlib", "yaml", "tqdm", "filelock")  # fmt: skip
#: Python versions whose binary wheels are fetched (Kaggle's image has moved between these).
KAGGLE_PYTHON_VERSIONS = ("3.10", "3.11", "3.12")
SUBMISSION_NOTEBOOK = "05_submission"


def pinned_versions(requirements: Path = PROJECT_ROOT / "requirements.txt") -> dict[str, str]:
    """name (lower case) -> version from requirements.txt."""
    pins = {}
    for line in requirements.read_text().splitlines():
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


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


def pinned_specs(packages=KAGGLE_EXTRA_PACKAGES) -> list[str]:
    """`name==version` of each package, pinned as in requirements.txt (bare name when it has no pin)."""
    pins = pinned_versions()
    return [f"{p}=={pins[p.lower()]}" if p.lower() in pins else p for p in packages]


def collect_dependency_wheels(out: Path, packages=KAGGLE_EXTRA_PACKAGES, wheelhouse: Path | None = None,
                              python_versions=KAGGLE_PYTHON_VERSIONS) -> list[Path]:  # fmt: skip
    """Put wheels of `packages` (pinned versions) into `out`.

    From `wheelhouse` when given (offline; only the pinned version's wheels), else `pip download` from the
    package registry for each of `python_versions` (binary wheels for manylinux x86-64, as Kaggle runs).
    """
    out.mkdir(parents=True, exist_ok=True)
    specs = pinned_specs(packages)
    if wheelhouse is not None:
        found = []
        for spec in specs:
            name, _, version = spec.partition("==")
            prefix = name.lower().replace("-", "_") + "-" + (f"{version}-" if version else "")
            hits = [w for w in Path(wheelhouse).glob("*.whl") if w.name.lower().startswith(prefix)]
            if not hits:
                raise FileNotFoundError(f"{wheelhouse}: no wheel of {spec} (fill it with `python -m lumbar kaggle-wheels`)")
            for w in hits:
                shutil.copy2(w, out / w.name)
                found.append(out / w.name)
        return found
    missing = []
    for spec in specs:
        got = 0
        for version in python_versions:
            done = subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(out),
                 "--python-version", version, "--implementation", "cp", "--platform", "manylinux_2_17_x86_64",
                 "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64", spec],
                check=False, capture_output=True, text=True,
            )  # fmt: skip
            got += done.returncode == 0
            if done.returncode:
                missing.append(f"{spec} for Python {version}")
        if not got:
            raise RuntimeError(f"no wheel of {spec} for any of Python {python_versions}: {done.stderr[-500:]}")
    if missing:
        print(f"kaggle-bundle: no wheel of {', '.join(missing)} (that Python then needs it in its image)")
    return sorted(out.glob("*.whl"))


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


def inference_manifest(run_dir: Path, manifest: dict) -> dict:
    """The manifest without the classifiers the ensemble does not use (their weights stay home), nor what only
    the analysis reads (the error analysis, every ensemble candidate's out-of-fold predictions).

    The ensemble's parameters name the models inference runs; when `04_ensemble` kept a single model, the
    other architectures' checkpoints would only make the upload larger.
    """
    manifest = {k: v for k, v in manifest.items() if k != "error_analysis"}
    ensemble = {k: v for k, v in (manifest.get("ensemble") or {}).items() if k != "candidates"}
    if not ensemble.get("params"):
        return manifest
    used = json.loads((run_dir / ensemble["params"]).read_text())["models"]
    classifiers = {k: v for k, v in manifest.get("classifiers", {}).items() if k in used}
    return {**manifest, "classifiers": classifiers, "ensemble": {**ensemble, "models": list(used)}}


def kaggle_user(user: str | None = None) -> str:
    """The Kaggle user name for dataset and kernel ids: `user`, else $KAGGLE_USERNAME, else a placeholder."""
    return user or os.environ.get("KAGGLE_USERNAME") or "your-kaggle-username"


def dataset_metadata(user: str, slug: str, title: str, license: str = "CC0-1.0") -> dict:
    """The `dataset-metadata.json` that `kaggle datasets create -p FOLDER` reads."""
    return {"title": title, "id": f"{user}/{slug}", "licenses": [{"name": license}]}


def _referenced_files(manifest: dict) -> list[str]:
    """Every relative path in the manifest that points at a file (checkpoints, params, priors...)."""
    found: list[str] = []

    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif (
            isinstance(x, str) and not os.path.isabs(x) and re.search(r"\.(pt|pth|json|csv|parquet|yaml)$", x)
        ):
            found.append(x)

    walk({k: v for k, v in manifest.items() if k not in ("notebooks", "pipeline")})
    return sorted(set(found))


def model_card(manifest: dict) -> str:
    """A short README for the weights dataset: architectures, parameters, folds, OOF scores."""
    lines = [
        "# lumbar weights",
        "",
        "Checkpoints and manifest of one `lumbar` run (RSNA 2024 lumbar spine).",
        "",
    ]
    loc = manifest.get("localizer")
    if loc:
        lines += ["## Localizer", "", f"```json\n{json.dumps(loc, indent=2, default=str)}\n```", ""]
    classifiers = manifest.get("classifiers", {})
    if classifiers:
        lines += ["## Classifiers", "", "| name | arch | mode | folds | OOF score |", "|---|---|---|---|---|"]
        for name, c in classifiers.items():
            lines.append(
                f"| {name} | {c.get('arch', '')} | {c.get('mode', '')} | {c.get('folds', '')} | {c.get('oof_score', '')} |"
            )
        lines.append("")
    ens = manifest.get("ensemble")
    if ens:
        lines += ["## Ensemble", "", f"```json\n{json.dumps(ens, indent=2, default=str)}\n```", ""]
    return "\n".join(lines)


def kernel_notebook(code_slug: str, weights_slug: str, source: Path | None = None) -> nbformat.NotebookNode:
    """The submission notebook for Kaggle: an install cell, then Kaggle paths as its parameters.

    The install takes exactly the code dataset's requirements.txt (`--no-deps`: everything else comes from
    Kaggle's image, whose distribution names need not match ours, e.g. opencv-python for cv2), then
    `check_environment` says where each package came from and which image modules differ from the bundle's.
    """
    source = source or PROJECT_ROOT / "notebooks" / f"{SUBMISSION_NOTEBOOK}.ipynb"
    nb = nbformat.read(source, as_version=4)
    install = nbformat.v4.new_code_cell(
        "# Offline install from the attached code dataset (internet is off on Kaggle; /kaggle/input is read-only).\n"
        "import os, subprocess, sys\n"
        "KAGGLE = os.environ.get('LUMBAR_KAGGLE_ROOT', '/kaggle')\n"
        f"CODE = os.path.join(KAGGLE, 'input', {code_slug!r})\n"
        "subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps', '--find-links', CODE,\n"
        "                '-r', os.path.join(CODE, 'requirements.txt')], check=True)\n"
        "from lumbar.kaggle import check_environment\n"
        "check_environment(CODE);"
    )
    params = nbformat.v4.new_code_cell(
        "# Kaggle paths (override the defaults of the notebook's parameters cell below)\n"
        f"DATA_DIR = os.path.join(KAGGLE, 'input', {COMPETITION_SLUG!r})\n"
        f"RUN_DIR = os.path.join(KAGGLE, 'input', {weights_slug!r})\n"
        "WORK_DIR = os.path.join(KAGGLE, 'working', 'lumbar')\n"
        "OUT = os.path.join(KAGGLE, 'working', 'submission.csv')\n"
        "TIME_BUDGET_S = 8 * 3600  # Kaggle stops the notebook at 9 h: predict fits the ensemble into 8 (start-up, slack)"
    )
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    if not tagged:
        raise ValueError(f"{source}: no cell tagged `parameters`")
    i = tagged[0]
    nb.cells = nb.cells[:i] + [install, nb.cells[i], params] + nb.cells[i + 1 :]
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    return nb


def build_bundle(run_dir: str | os.PathLike, out: str | os.PathLike, user: str | None = None, slug: str = "lumbar",
                 wheelhouse: Path | None = None, dependencies: bool = True) -> dict[str, Path]:  # fmt: skip
    """Write code/, weights/ and kernel/ for a run folder.

    Args:
        run_dir: a run folder with a manifest (`runs/NAME`).
        out: the bundle folder.
        user: Kaggle user name for the dataset/kernel ids (default: $KAGGLE_USERNAME).
        slug: prefix of the dataset and kernel slugs (`<slug>-code`, `<slug>-weights`, `<slug>-submission`).
        wheelhouse: take dependency wheels from here instead of the package registry.
        dependencies: bundle dependency wheels at all (off: only the lumbar wheel, for an image that has them).
    """
    run_dir, out = Path(run_dir), Path(out)
    manifest = read_manifest(run_dir)
    if not manifest:
        raise FileNotFoundError(f"{run_dir}: no manifest.json: train a run first (the pipeline writes it)")
    manifest = inference_manifest(run_dir, manifest)
    user = kaggle_user(user)
    code_slug, weights_slug, kernel_slug = f"{slug}-code", f"{slug}-weights", f"{slug}-submission"
    if out.exists():
        shutil.rmtree(out)
    code, weights, kernel = out / "code", out / "weights", out / "kernel"

    build_lumbar_wheel(code)
    requirements = [f"lumbar=={__version__}"]
    if dependencies:
        collect_dependency_wheels(code, wheelhouse=wheelhouse)
        requirements += pinned_specs()
    write_text("\n".join(requirements) + "\n", code / "requirements.txt")
    write_json(module_versions(), code / "image.json")
    write_json(dataset_metadata(user, code_slug, "lumbar code"), code / "dataset-metadata.json")

    weights.mkdir(parents=True)
    for rel in _referenced_files(manifest):
        src = run_dir / rel
        if not src.is_file():
            raise FileNotFoundError(f"{run_dir / 'manifest.json'} references {rel}, which does not exist")
        (weights / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, weights / rel)
    write_json(manifest, weights / "manifest.json")
    (weights / "README.md").write_text(model_card(manifest))
    write_json(dataset_metadata(user, weights_slug, "lumbar weights"), weights / "dataset-metadata.json")

    kernel.mkdir(parents=True)
    nbformat.write(kernel_notebook(code_slug, weights_slug), kernel / "submission.ipynb")
    write_json(
        {
            "id": f"{user}/{kernel_slug}",
            "title": kernel_slug,
            "code_file": "submission.ipynb",
            "language": "python",
            "kernel_type": "notebook",
            "is_private": True,
            "enable_gpu": True,
            "enable_internet": False,
            "dataset_sources": [f"{user}/{code_slug}", f"{user}/{weights_slug}"],
            "competition_sources": [COMPETITION_SLUG],
            "kernel_sources": [],
        },
        kernel / "kernel-metadata.json",
    )
    return {"code": code, "weights": weights, "kernel": kernel}


def cli_kaggle_wheels(args: argparse.Namespace) -> int:
    """`python -m lumbar kaggle-wheels`: the dependency wheels of the bundle, once, for offline bundling."""
    wheels = collect_dependency_wheels(Path(args.out), python_versions=tuple(args.python_version or KAGGLE_PYTHON_VERSIONS))
    print(f"kaggle-wheels: {len(wheels)} wheels in {args.out}: {', '.join(w.name for w in wheels)}")
    return 0


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def cli_kaggle_bundle(args: argparse.Namespace) -> int:
    """`python -m lumbar kaggle-bundle`."""
    parts = build_bundle(args.run, args.out, user=args.user, slug=args.slug,
                         wheelhouse=Path(args.wheelhouse) if args.wheelhouse else None,
                         dependencies=not args.no_dependencies)  # fmt: skip
    for name, folder in parts.items():
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        print(
            f"{name}/: {_size(folder) / 1e6:.1f} MB, {len(files)} files: {', '.join(files[:12])}"
            + (" ..." if len(files) > 12 else "")
        )
    print(f"kaggle-bundle: wrote {args.out}")
    return 0
