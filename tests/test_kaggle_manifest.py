"""The Kaggle bundle: the weights dataset carries only the classifiers the ensemble uses; the kernel checks the image."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import lumbar
from lumbar.kaggle import IMAGE_MODULES, check_environment, inference_manifest
from lumbar.kaggle.bundle import referenced_files


def test_unused_classifiers_stay_out_of_the_bundle(tmp_path):
    (tmp_path / "ensemble").mkdir()
    (tmp_path / "ensemble" / "params.json").write_text(json.dumps({"models": ["cnn3d"], "weights": {"all": [1.0]}}))
    manifest = {
        "classifiers": {name: {"path": name, "checkpoints": {"spinal": {"0": f"{name}/spinal/fold0/best.pt"}}}
                        for name in ("cnn3d", "timm25d_resnet18")},
        "ensemble": {"models": ["cnn3d", "timm25d_resnet18"], "params": "ensemble/params.json"},
    }  # fmt: skip
    kept = inference_manifest(tmp_path, manifest)
    assert list(kept["classifiers"]) == ["cnn3d"] and kept["ensemble"]["models"] == ["cnn3d"]
    files = referenced_files(kept)
    assert "cnn3d/spinal/fold0/best.pt" in files and not any(f.startswith("timm25d") for f in files)
    assert list(manifest["classifiers"]) == ["cnn3d", "timm25d_resnet18"]  # the run's own manifest is untouched
    assert inference_manifest(tmp_path, {"classifiers": manifest["classifiers"]}) == {"classifiers": manifest["classifiers"]}


def test_what_only_the_error_analysis_reads_stays_out_of_the_bundle(tmp_path):
    (tmp_path / "ensemble").mkdir()
    (tmp_path / "ensemble" / "params.json").write_text(json.dumps({"models": ["cnn3d"], "weights": {"all": [1.0]}}))
    manifest = {
        "classifiers": {"cnn3d": {"path": "cnn3d", "checkpoints": {"spinal": {"0": "cnn3d/spinal/fold0/final.pt"}}}},
        "ensemble": {"models": ["cnn3d"], "params": "ensemble/params.json",
                     "candidates": {"cnn3d": "ensemble/candidates/cnn3d.csv"}},
        "error_analysis": {"figures": ["error_analysis/reliability.png"], "summary": "error_analysis/x.json"},
    }  # fmt: skip
    files = referenced_files(inference_manifest(tmp_path, manifest))
    assert files == ["cnn3d/spinal/fold0/final.pt", "ensemble/params.json"]


def test_the_kernel_names_what_the_image_lacks_or_has_at_another_version(tmp_path, capsys):
    (tmp_path / "image.json").write_text(json.dumps({"numpy": "0.1.0", "yaml": yaml.__version__}))
    found = check_environment(tmp_path)
    printed = capsys.readouterr().out
    assert f"image has numpy {np.__version__}; the bundle was built and tested with 0.1.0" in printed
    assert "yaml" not in printed and found["yaml"] == yaml.__version__
    assert "lumbar 0.1.0 in " in printed  # where each package the bundle brings was installed
    (tmp_path / "image.json").write_text(json.dumps({"numpy": np.__version__, "no_such_module_xyz": "1.0"}))
    with pytest.raises(ImportError, match=r"Kaggle's image lacks \['no_such_module_xyz'\]"):
        check_environment(tmp_path)


def _third_party_imports(root: Path) -> set[str]:
    names = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"lumbar", "__future__"}


def test_every_module_the_package_imports_comes_from_the_image_or_the_bundle():
    bundled = {"pydicom", "pylibjpeg", "monai", "timm"}  # pylibjpeg-rle is a decoder plugin, not imported
    build_time = {"nbformat", "papermill"}  # bundle and pipeline only: the kernel is a Jupyter notebook already
    build_time |= {"jupyter_client"}  # the pipeline's kernel manager (its steps' output to their logs)
    # timm's own dependencies, imported only where the hub is used (`weights`, `pretrained: imagenet`): the kernel
    # builds every model with `pretrained: none` (tests/test_pretrained.py)
    build_time |= {"huggingface_hub", "safetensors"}
    # the interactive study viewer (`lumbar.analysis.viewer.interactive_viewer`) only, in a Jupyter session
    build_time |= {"ipywidgets", "IPython"}
    assert _third_party_imports(Path(lumbar.__file__).parent) <= set(IMAGE_MODULES) | bundled | build_time


def test_the_viewer_imports_ipywidgets_only_when_it_is_asked_for():
    """The study viewer's static figures (papermill) and the Kaggle kernel's imports never need ipywidgets."""
    code = ("import sys, lumbar.analysis.viewer, lumbar.inference.predict; "
            "print(sorted(m for m in ('ipywidgets', 'IPython') if m in sys.modules))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
