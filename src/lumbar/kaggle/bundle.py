"""The offline Kaggle upload of a run: code, weights and kernel folders (`python -m lumbar kaggle-bundle`).

    python -m lumbar kaggle-bundle --run runs/full --out runs/full/kaggle

writes
    code/     the `lumbar` wheel, the dependency wheels (`lumbar.kaggle.wheels`), requirements.txt (what the
    kernel
              installs from this folder), image.json (the versions of the modules the kernel takes from
              Kaggle's image, as the bundle was built and tested with), dataset-metadata.json
    weights/  the run folder's manifest and every file its records name under `run/` (`RunManifest.files`:
              checkpoints, tables, parameters), the index of those files
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
import shutil
from pathlib import Path

import nbformat

from lumbar import __version__
from lumbar.core.atomic import write_json, write_text
from lumbar.core.constants import COMPETITION_SLUG
from lumbar.core.manifest import MANIFEST_NAME
from lumbar.core.run_contract import RunManifest
from lumbar.kaggle.kernel import kernel_notebook
from lumbar.kaggle.layout import ACCELERATOR, BUNDLE_INDEX, RUN_FOLDER, upload_command
from lumbar.kaggle.wheels import build_lumbar_wheel, collect_dependency_wheels, module_versions, pinned_specs

#: The user name the ids carry when none is known (`kaggle_user`); `build_bundle` refuses it.
PLACEHOLDER_USER = "your-kaggle-username"


def inference_run(run_dir: Path, manifest: RunManifest) -> RunManifest:
    """The manifest without the classifiers the ensemble does not use (their weights stay home), nor what only
    the analysis reads (the error analysis, every ensemble candidate's out-of-fold predictions).

    The ensemble's parameters name the models inference runs; when `04_ensemble` kept a single model, the
    other architectures' checkpoints would only make the upload larger.
    """
    params = manifest.ensemble.params if manifest.ensemble else None
    used = json.loads((run_dir / params).read_text())["models"] if params else None  # EnsembleParams.models
    return manifest.for_inference(used)


def inference_manifest(run_dir: Path, manifest: dict) -> dict:
    """`inference_run` on `read_manifest`'s dict, given back as the dict the bundle writes (manifest.json)."""
    return inference_run(run_dir, RunManifest.from_dict(manifest, run_dir)).to_dict()


def kaggle_user(user: str | None = None) -> str:
    """The Kaggle user name for dataset and kernel ids: `user`, else $KAGGLE_USERNAME, else the `username` of
    the
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


def referenced_files(manifest: dict | RunManifest) -> list[str]:
    """Every file the manifest's records name (checkpoints, params, tables...): `RunManifest.files`."""
    return (manifest if isinstance(manifest, RunManifest) else RunManifest.from_dict(manifest)).files()


def model_card(manifest: RunManifest) -> str:
    """A short README for the weights dataset: architectures, parameters, folds, OOF scores."""
    intro = (
        f"Checkpoints and manifest of one `lumbar` run (RSNA 2024 lumbar spine), in `{RUN_FOLDER}/`; "
        f"`{BUNDLE_INDEX}` lists every file with its size."
    )
    lines = ["# lumbar weights", "", intro, ""]
    if manifest.localizer:
        lines += ["## Localizer", "", _json_block(manifest.localizer.to_dict()), ""]
    if manifest.classifiers:
        lines += ["## Classifiers", "", "| name | arch | mode | folds | OOF score |", "|---|---|---|---|---|"]
        for name, c in manifest.classifiers.items():
            cells = [_cell(v) for v in (c.arch, c.mode, c.folds, c.oof_score)]
            lines.append(f"| {name} | {' | '.join(cells)} |")
        lines.append("")
    if manifest.ensemble:
        lines += ["## Ensemble", "", _json_block(manifest.ensemble.to_dict()), ""]
    return "\n".join(lines)


def _cell(value) -> str:
    return "" if value is None else str(value)


def _json_block(value: dict) -> str:
    return f"```json\n{json.dumps(value, indent=2, default=str)}\n```"


def kernel_metadata(user: str, code_slug: str, weights_slug: str, kernel_slug: str) -> dict:
    """The `kernel-metadata.json` that `kaggle kernels push -p FOLDER` reads: internet off, a T4 GPU, the
    competition and both datasets attached."""
    return {
        "id": f"{user}/{kernel_slug}",
        "title": kernel_slug,
        "code_file": "submission.ipynb",
        "language": "python",
        "kernel_type": "notebook",
        "is_private": True,
        "enable_gpu": True,
        "enable_tpu": False,
        "machine_shape": ACCELERATOR,
        "enable_internet": False,
        "dataset_sources": [f"{user}/{code_slug}", f"{user}/{weights_slug}"],
        "competition_sources": [COMPETITION_SLUG],
        "kernel_sources": [],
    }


def build_bundle(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    user: str | None = None,
    slug: str = "lumbar",
    wheelhouse: Path | None = None,
    dependencies: bool = True,
) -> dict[str, Path]:
    """Write code/, weights/ and kernel/ for a run folder.

    Args:
        run_dir: a run folder with a manifest (`runs/NAME`).
        out: the bundle folder.
        user: Kaggle user name for the dataset/kernel ids (default: `kaggle_user`); there must be one.
        slug: prefix of the dataset and kernel slugs (`<slug>-code`, `<slug>-weights`, `<slug>-submission`).
        wheelhouse: take dependency wheels from here instead of the package registry.
        dependencies: bundle dependency wheels at all (off: only the lumbar wheel, for an image that has
        them).
    """
    run_dir, out = Path(run_dir), Path(out)
    manifest = RunManifest.read(run_dir)
    if manifest.is_empty():
        raise FileNotFoundError(f"{run_dir}: no manifest.json: train a run first (the pipeline writes it)")
    manifest = inference_run(run_dir, manifest)
    user = kaggle_user(user)
    if user == PLACEHOLDER_USER:
        raise ValueError(
            "no Kaggle user name for the dataset and kernel ids: set KAGGLE_USERNAME, pass --user, or "
            "put the Kaggle CLI's kaggle.json into ~/.kaggle"
        )
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


def _write_weights(run_dir: Path, manifest: RunManifest, weights: Path, dataset: str) -> None:
    """The run's manifest and every file its records name (`RunManifest.files`) under `weights/run/`, their
    index, the model card."""
    run = weights / RUN_FOLDER
    run.mkdir(parents=True)
    for rel in manifest.files():
        src = run_dir / rel
        if not src.is_file():
            raise FileNotFoundError(f"{run_dir / MANIFEST_NAME} references {rel}, which does not exist")
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, run / rel)
    write_json(manifest.to_dict(), run / MANIFEST_NAME)
    files = {p.relative_to(run).as_posix(): p.stat().st_size for p in sorted(run.rglob("*")) if p.is_file()}
    write_json(
        {
            "format": 1,
            "lumbar": __version__,
            "dataset": dataset,
            "run_folder": RUN_FOLDER,
            "files": files,
            "upload": upload_command(weights.as_posix(), new=True),
            "upload_version": upload_command(weights.as_posix(), new=False),
        },
        weights / BUNDLE_INDEX,
    )
    (weights / "README.md").write_text(model_card(manifest))


def folder_size(folder: Path) -> int:
    """Bytes of the files a folder uploads (the Kaggle CLI's metadata files are read, not uploaded)."""
    return sum(
        f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.name.endswith("-metadata.json")
    )


def cli_kaggle_bundle(args: argparse.Namespace) -> int:
    """`python -m lumbar kaggle-bundle`: the three folders, their sizes and the commands that upload them."""
    parts = build_bundle(
        args.run,
        args.out,
        user=args.user,
        slug=args.slug,
        wheelhouse=Path(args.wheelhouse) if args.wheelhouse else None,
        dependencies=not args.no_dependencies,
    )
    for name, folder in parts.items():
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        print(
            f"{name}/: {folder_size(folder) / 1e6:.1f} MB, {len(files)} files: {', '.join(files[:8])}"
            + (" ..." if len(files) > 8 else "")
        )
    print(f"kaggle-bundle: wrote {args.out}; upload (every folder with its subfolders):")
    for name in ("code", "weights"):
        print(f"  {upload_command(parts[name].as_posix())}")
    print(f"  kaggle kernels push -p {parts['kernel'].as_posix()}")
    return 0
