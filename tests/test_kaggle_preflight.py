"""The kernel's first check: the run found in every layout an upload can give, missing files named in one line
with the command that ships them, attached datasets found where they are mounted, the GPU checked."""

from __future__ import annotations

import json
import shutil

import nbformat
import papermill
import pytest
import torch

from lumbar.core.paths import PROJECT_ROOT
from lumbar.core.runtime import UnsupportedGPUError
from lumbar.kaggle import build_bundle, kaggle_user, kernel_notebook
from lumbar.kaggle.layout import BUNDLE_INDEX, RUN_FOLDER
from lumbar.kaggle.preflight import (
    KernelCheckError,
    check_run,
    find_dataset,
    gpu_report,
    locate_run,
    preflight,
)

FILES = {"manifest.json": '{"classifiers": {"cnn3d": {"checkpoints": {"spinal": {"0": "cnn3d/spinal/fold0/final.pt"}}}}}',
         "cnn3d/spinal/fold0/final.pt": "weights" * 100}  # fmt: skip


def _weights(tmp_path, layout: str):
    """A weights dataset as Kaggle could mount it: `folder` (run/ unpacked into a folder named after its archive),
    `root` (unpacked in place), `zip` / `tar` (left packed), `skip` (the folder never uploaded)."""
    run = tmp_path / "source" / RUN_FOLDER
    for rel, text in FILES.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text(text)
    dataset = tmp_path / "input" / "lumbar-weights"
    dataset.mkdir(parents=True)
    index = {"dataset": "tester/lumbar-weights", "run_folder": RUN_FOLDER,
             "files": {rel: (run / rel).stat().st_size for rel in FILES},
             "upload_version": "kaggle datasets version -p runs/x/kaggle/weights --dir-mode zip -m 'new weights'"}  # fmt: skip
    (dataset / BUNDLE_INDEX).write_text(json.dumps(index))
    if layout == "folder":
        shutil.copytree(run, dataset / RUN_FOLDER)
    elif layout == "root":
        shutil.copytree(run, dataset, dirs_exist_ok=True)
    elif layout in ("zip", "tar"):
        shutil.make_archive(str(dataset / RUN_FOLDER), layout, run)
    return dataset


@pytest.mark.parametrize("layout", ["folder", "root", "zip", "tar"])
def test_the_run_is_found_in_every_layout_an_upload_can_give(tmp_path, layout):
    dataset = _weights(tmp_path, layout)
    run = locate_run(dataset, scratch=tmp_path / "scratch")
    assert (run / "cnn3d/spinal/fold0/final.pt").read_text() == FILES["cnn3d/spinal/fold0/final.pt"]
    if layout in ("zip", "tar"):
        assert run == tmp_path / "scratch" / RUN_FOLDER  # unpacked into the scratch folder, not /kaggle/input
    assert check_run(run)["cnn3d/spinal/fold0/final.pt"] == len(FILES["cnn3d/spinal/fold0/final.pt"])


def test_a_run_uploaded_without_its_folders_is_one_line_naming_the_files_and_the_upload(tmp_path):
    dataset = _weights(tmp_path, "skip")
    with pytest.raises(KernelCheckError) as info:
        locate_run(dataset, scratch=tmp_path / "scratch")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"2 of 2 files of the run did not arrive in {dataset} (")
    assert "cnn3d/spinal/fold0/final.pt" in message and "manifest.json" in message
    assert message.endswith("upload it again with: kaggle datasets version -p runs/x/kaggle/weights --dir-mode zip "
                            "-m 'new weights'")  # fmt: skip


def test_a_truncated_checkpoint_counts_as_missing(tmp_path):
    dataset = _weights(tmp_path, "folder")
    (dataset / RUN_FOLDER / "cnn3d/spinal/fold0/final.pt").write_text("weights")  # cut short
    with pytest.raises(KernelCheckError, match=r"1 of 2 files .*\(cnn3d/spinal/fold0/final.pt\)"):
        locate_run(dataset)


def test_a_manifest_naming_a_file_the_bundle_lacks_stops_the_check(tmp_path):
    dataset = _weights(tmp_path, "folder")
    (dataset / RUN_FOLDER / "cnn3d/spinal/fold0/final.pt").unlink()
    with pytest.raises(KernelCheckError, match=r"names 1 files that are not there or not readable "
                                               r"\(cnn3d/spinal/fold0/final.pt\)"):  # fmt: skip
        check_run(dataset / RUN_FOLDER)


def test_attached_datasets_are_found_where_they_are_mounted(tmp_path):
    inputs = tmp_path / "input"
    nested = inputs / "datasets" / "tester" / "lumbar-weights"
    nested.mkdir(parents=True)
    (nested / BUNDLE_INDEX).write_text("{}")
    assert find_dataset(inputs, "lumbar-weights", BUNDLE_INDEX) == nested
    (inputs / "lumbar-weights").mkdir()
    (inputs / "lumbar-weights" / BUNDLE_INDEX).write_text("{}")
    assert find_dataset(inputs, "lumbar-weights", BUNDLE_INDEX) == inputs / "lumbar-weights"
    assert find_dataset(inputs, "lumbar-code", "requirements.txt") is None


def test_preflight_names_a_dataset_that_is_not_attached(tmp_path, capsys):
    (tmp_path / "input").mkdir()
    with pytest.raises(KernelCheckError, match="the weights dataset 'lumbar-weights' is not attached"):
        preflight(tmp_path, "lumbar-weights", device="cpu")
    _weights(tmp_path, "folder")
    with pytest.raises(KernelCheckError, match="the competition's data is not attached"):
        preflight(tmp_path, "lumbar-weights", device="cpu")
    data = tmp_path / "input" / "rsna-2024-lumbar-spine-degenerative-classification"
    data.mkdir()
    (data / "test_series_descriptions.csv").write_text("study_id,series_id,series_description\n")
    run, found = preflight(tmp_path, "lumbar-weights", device="cpu")
    assert run == str(tmp_path / "input" / "lumbar-weights" / RUN_FOLDER) and found == str(data)
    assert "2 files" in capsys.readouterr().out


def _fake_gpu(monkeypatch, name: str, capability: tuple[int, int], arch_list: list[str]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: arch_list)


ARCH_LIST = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]


def test_the_kernel_stops_on_a_gpu_the_torch_build_cannot_run(monkeypatch):
    _fake_gpu(monkeypatch, "Tesla P100-PCIE-16GB", (6, 0), ARCH_LIST)
    with pytest.raises(UnsupportedGPUError) as info:
        gpu_report("auto")
    assert str(info.value).startswith("Tesla P100-PCIE-16GB (sm_60) is not supported by this torch build (")
    assert str(info.value).endswith("choose GPU T4 x2 (sm_75) or a newer GPU") and "\n" not in str(info.value)
    _fake_gpu(monkeypatch, "Tesla T4", (7, 5), ARCH_LIST)
    line = gpu_report("auto")
    assert "GPU Tesla T4, compute capability 7.5" in line and "sm_75 sm_80" in line
    assert line.endswith("precision float16 autocast + GradScaler (Tesla T4, sm_75)")


def test_the_kernel_notebook_carries_kaggle_values_that_papermill_can_override(tmp_path):
    nb = kernel_notebook("lumbar-code", "lumbar-weights")
    path = tmp_path / "k.ipynb"
    nbformat.write(nb, path)
    params = {p["name"]: p["default"] for p in papermill.inspect_notebook(str(path)).values()}
    assert params["MAX_FALLBACK_SHARE"] == "1.0" and params["ON_ERROR"] == '"prior"'
    assert params["TIME_BUDGET_S"] == "8 * 3600" and params["WEIGHTS"] == "'lumbar-weights'"
    assert params["RUN_DIR"] == '""' and params["DEVICE"] == '"auto"'
    sources = [c.source for c in nb.cells if c.cell_type == "code"]
    assert "pip" in sources[0] and "parameters" in nb.cells[1].metadata.tags and "preflight(" in sources[2]
    local = {p["name"]: p["default"] for p in papermill.inspect_notebook(
        str(PROJECT_ROOT / "notebooks" / "05_submission.ipynb")).values()}
    assert local["MAX_FALLBACK_SHARE"] == "0.05" and local["ON_ERROR"] == '"raise"'  # 05 run by hand keeps the limit


def test_the_bundle_needs_a_kaggle_user_name(tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text('{"classifiers": {}}')
    with pytest.raises(ValueError, match="no Kaggle user name .* set KAGGLE_USERNAME, pass --user"):
        build_bundle(tmp_path / "run", tmp_path / "bundle", dependencies=False)
    (tmp_path / "kaggle.json").write_text(json.dumps({"username": "from-json", "key": "x"}))
    assert kaggle_user() == "from-json"
    monkeypatch.setenv("KAGGLE_USERNAME", "from-env")
    assert kaggle_user() == "from-env" and kaggle_user("given") == "given"
