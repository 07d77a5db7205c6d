"""The offline Kaggle upload of a run: code, weights and kernel folders (`python -m lumbar kaggle-bundle`).

    python -m lumbar kaggle-bundle --run runs/full --out runs/full/kaggle

writes
    code/     the `lumbar` wheel, the dependency wheels (`lumbar.kaggle.wheels`), requirements.txt (what the kernel
              installs from this folder), image.json (the versions of the modules the kernel takes from Kaggle's
              image, as the bundle was built and tested with), dataset-metadata.json
    weights/  the run folder's manifest and every file it references under `run/`, the index of those files
              (`bundle.json`), a model card (README.md), dataset-metadata.json (`lumbar.kaggle.layout`)
    kernel/   submission.ipynb (`lumbar.kaggle.kernel`) and kernel-metadata.json (internet off, GPU T4, the
              competition and both datasets as sources)

and prints each folder's size and the command that uploads it. The kernel reads `/kaggle/input` (read-only)
and writes only under `/kaggle/working`; `LUMBAR_KAGGLE_ROOT` stands another folder in for `/kaggle`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from pathlib import Path

import nbformat

from lumbar import __version__
from lumbar.core.atomic import write_json, write_text
from lumbar.core.constants import COMPETITION_SLUG
from lumbar.core.manifest import MANIFEST_NAME, read_manifest
from lumbar.kaggle.kernel import kernel_notebook
from lumbar.kaggle.layout import ACCELERATOR, BUNDLE_INDEX, RUN_FOLDER, upload_command
from lumbar.kaggle.wheels import build_lumbar_wheel, collect_dependency_wheels, module_versions, pinned_specs
from lumbar.localize.config import LOCALIZER_KEY

#: The user name the ids carry when none is known (`kaggle_user`); `build_bundle` refuses it.
PLACEHOLDER_USER = "your-kaggle-username"


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
    """The Kaggle user name for dataset and kernel ids: `user`, else $KAGGLE_USERNAME, else the `username` of the
    Kaggle CLI's own kaggle.json (in $KAGGLE_CONFIG_DIR or ~/.kaggle), else `PLACEHOLDER_USER`."""
    if user or os.environ.get("KAGGLE_USERNAME"):
        return user or os.environ["KAGGLE_USERNAME"]
    config = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle")) / "kaggle.json"
    try:
        return json.loads(config.read_text())["username"]
    except (OSError, ValueError, KeyError, TypeError):
        return PLACEHOLDER_USER


def dataset_metadata(user: str, slug: str, title: str, license: str = "CC0-1.0") -> dict:
    """The `dataset-metadata.json` that `kaggle datasets create -p FOLDER` reads."""
    return {"title": title, "id": f"{user}/{slug}", "licenses": [{"name": license}]}


def referenced_files(manifest: dict) -> list[str]:
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
    intro = (f"Checkpoints and manifest of one `lumbar` run (RSNA 2024 lumbar spine), in `{RUN_FOLDER}/`; "
             f"`{BUNDLE_INDEX}` lists every file with its size.")
    lines = ["# lumbar weights", "", intro, ""]
    loc = manifest.get(LOCALIZER_KEY)
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


def kernel_metadata(user: str, code_slug: str, weights_slug: str, kernel_slug: str) -> dict:
    """The `kernel-metadata.json` that `kaggle kernels push -p FOLDER` reads: internet off, a T4 GPU, the
    competition and both datasets attached."""
    return {"id": f"{user}/{kernel_slug}", "title": kernel_slug, "code_file": "submission.ipynb", "language": "python",
            "kernel_type": "notebook", "is_private": True, "enable_gpu": True, "enable_tpu": False,
            "machine_shape": ACCELERATOR, "enable_internet": False,
            "dataset_sources": [f"{user}/{code_slug}", f"{user}/{weights_slug}"],
            "competition_sources": [COMPETITION_SLUG], "kernel_sources": []}  # fmt: skip


def build_bundle(run_dir: str | os.PathLike, out: str | os.PathLike, user: str | None = None, slug: str = "lumbar",
                 wheelhouse: Path | None = None, dependencies: bool = True) -> dict[str, Path]:  # fmt: skip
    """Write code/, weights/ and kernel/ for a run folder.

    Args:
        run_dir: a run folder with a manifest (`runs/NAME`).
        out: the bundle folder.
        user: Kaggle user name for the dataset/kernel ids (default: `kaggle_user`); there must be one.
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
    if user == PLACEHOLDER_USER:
        raise ValueError("no Kaggle user name for the dataset and kernel ids: set KAGGLE_USERNAME, pass --user, or "
                         "put the Kaggle CLI's kaggle.json into ~/.kaggle")
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

    _write_weights(run_dir, manifest, weights, f"{user}/{weights_slug}")
    write_json(dataset_metadata(user, weights_slug, "lumbar weights"), weights / "dataset-metadata.json")

    kernel.mkdir(parents=True)
    nbformat.write(kernel_notebook(code_slug, weights_slug), kernel / "submission.ipynb")
    write_json(kernel_metadata(user, code_slug, weights_slug, kernel_slug), kernel / "kernel-metadata.json")
    return {"code": code, "weights": weights, "kernel": kernel}


def _write_weights(run_dir: Path, manifest: dict, weights: Path, dataset: str) -> None:
    """The run's manifest and every file it references under `weights/run/`, their index, the model card."""
    run = weights / RUN_FOLDER
    run.mkdir(parents=True)
    for rel in referenced_files(manifest):
        src = run_dir / rel
        if not src.is_file():
            raise FileNotFoundError(f"{run_dir / MANIFEST_NAME} references {rel}, which does not exist")
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, run / rel)
    write_json(manifest, run / MANIFEST_NAME)
    files = {p.relative_to(run).as_posix(): p.stat().st_size for p in sorted(run.rglob("*")) if p.is_file()}
    write_json({"format": 1, "lumbar": __version__, "dataset": dataset, "run_folder": RUN_FOLDER, "files": files,
                "upload": upload_command(weights.as_posix(), new=True),
                "upload_version": upload_command(weights.as_posix(), new=False)}, weights / BUNDLE_INDEX)  # fmt: skip
    (weights / "README.md").write_text(model_card(manifest))


def folder_size(folder: Path) -> int:
    """Bytes of the files a folder uploads (the Kaggle CLI's metadata files are read, not uploaded)."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.name.endswith("-metadata.json"))


def cli_kaggle_bundle(args: argparse.Namespace) -> int:
    """`python -m lumbar kaggle-bundle`: the three folders, their sizes and the commands that upload them."""
    parts = build_bundle(args.run, args.out, user=args.user, slug=args.slug,
                         wheelhouse=Path(args.wheelhouse) if args.wheelhouse else None,
                         dependencies=not args.no_dependencies)  # fmt: skip
    for name, folder in parts.items():
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        print(f"{name}/: {folder_size(folder) / 1e6:.1f} MB, {len(files)} files: {', '.join(files[:8])}"
              + (" ..." if len(files) > 8 else ""))  # fmt: skip
    print(f"kaggle-bundle: wrote {args.out}; upload (every folder with its subfolders):")
    for name in ("code", "weights"):
        print(f"  {upload_command(parts[name].as_posix())}")
    print(f"  kaggle kernels push -p {parts['kernel'].as_posix()}")
    return 0
