"""A rehearsal of the README's Kaggle submission: the real Kaggle CLI uploads the bundle of a tiny run to a
stand-in for Kaggle's servers (`_kaggle_server`), and the pushed kernel runs on what Kaggle would mount, read-only,
with the internet's packages out of reach."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import nbformat
import pytest
from _kaggle_server import KaggleServer, cli, parse, readme_block
from _readonly import readonly_argv, require_mount_namespace
from _runs import copy_as_competition, drop_series, kaggle_competition_dir, kaggle_python, wheelhouse

from lumbar.cli import main
from lumbar.core.constants import COMPETITION_SLUG
from lumbar.core.manifest import read_manifest
from lumbar.core.paths import PROJECT_ROOT
from lumbar.core.tables import load_submission, submission_row_ids
from lumbar.kaggle import KAGGLE_EXTRA_PACKAGES, inference_manifest
from lumbar.kaggle.bundle import referenced_files

README = PROJECT_ROOT / "README.md"
USER = "tester"


def _upload(run: Path, bundle: Path, kaggle: Path, monkeypatch, drop: str = "") -> tuple[KaggleServer, dict]:
    """Run the README's block: the bundle of `run` into `bundle`, the uploads into `kaggle/input`.

    `drop` is removed from every command line first (`--dir-mode zip`: the upload a user gets by leaving it out).
    Returns the server and what each `kaggle` command printed (by its line).
    """
    server, printed = KaggleServer(kaggle), {}
    for line in readme_block(README, "## Submitting on Kaggle"):
        line = line.replace("<you>", USER).replace("runs/full/kaggle", bundle.as_posix())
        line = re.sub(r"\s+", " ", line.replace(drop, "")) if drop else line
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            monkeypatch.setenv(name, value)
        elif line.startswith("make kaggle RUN=runs/full"):
            recipe = (PROJECT_ROOT / "Makefile").read_text().split("\nkaggle:")[1].splitlines()[1].strip()
            assert recipe == "$(PY) -m lumbar kaggle-bundle --run $(RUN) --out $(RUN)/kaggle"
            assert main(["kaggle-bundle", "--run", str(run), "--out", str(bundle), "--wheelhouse", str(wheelhouse())]) == 0
        else:
            printed[line] = cli(line, server)
    return server, printed


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory) -> Path:
    """Kaggle's Python: this environment's packages but lumbar and the five the bundle brings."""
    python = kaggle_python(tmp_path_factory.mktemp("kaggle_python"))
    assert subprocess.run([str(python), "-c", "import timm"], capture_output=True, check=False).returncode != 0
    return python


@pytest.fixture(scope="module")
def readme_upload(tiny_run, synthetic_dir, tmp_path_factory):
    """The README's commands run once; the competition folder holds 4 studies, 2 without Sagittal T2/STIR."""
    root = tmp_path_factory.mktemp("readme_upload")
    with pytest.MonkeyPatch.context() as monkeypatch:
        server, printed = _upload(tiny_run, root / "bundle", root / "kaggle", monkeypatch)
    studies = copy_as_competition(synthetic_dir, kaggle_competition_dir(root / "kaggle"))
    for study in studies[:2]:
        drop_series(kaggle_competition_dir(root / "kaggle"), "test", study, "Sagittal T2/STIR")
    return server, printed, studies, root


def _run_kernel(server: KaggleServer, kaggle: Path, python: Path, work: Path, *params: str) -> subprocess.CompletedProcess:
    """The pushed notebook under papermill, `kaggle/input` read-only, `LUMBAR_KAGGLE_ROOT=kaggle`."""
    require_mount_namespace()
    work.mkdir(parents=True, exist_ok=True)
    (kaggle / "working").mkdir(exist_ok=True)
    notebook = server.kernel_notebook(work / "pushed.ipynb")
    env = {**os.environ, "LUMBAR_KAGGLE_ROOT": str(kaggle), "PIP_NO_INDEX": "1", "PYTHONPATH": ""}
    argv = [str(python), "-m", "papermill", str(notebook), str(work / "executed.ipynb"), "-p", "DEVICE", "cpu",
            *params, "--cwd", str(kaggle / "working")]  # fmt: skip
    return subprocess.run(readonly_argv(argv, [kaggle / "input"]), env=env, capture_output=True, text=True,
                          timeout=900, check=False)  # fmt: skip


def _printed(printed: dict[str, str], *words: str) -> str:
    return next(out for line, out in printed.items() if all(w in line for w in words))


def _outputs(path: Path) -> str:
    executed = nbformat.read(path, as_version=4)
    return "\n".join(o.get("text", "") + "".join(o.get("traceback", []))
                     for c in executed.cells if c.cell_type == "code" for o in c.outputs)  # fmt: skip


@pytest.mark.parametrize("command", re.findall(r"`(kaggle [^`]+)`", README.read_text().split("## Submitting on Kaggle")[1]
                                               .split("\n## ")[0]))  # fmt: skip
def test_every_kaggle_command_the_readme_names_is_one_the_kaggle_cli_reads(command):
    """Beside the block the rehearsal runs, the commands named in the text: the real CLI's parser takes each."""
    method, arguments = parse(command.replace("<you>", USER).replace('"..."', "notes"))
    assert method.removesuffix("_cli") in {"dataset_create_new", "dataset_create_version", "kernels_push",
                                           "kernels_status", "competition_submit"}, (command, method)
    if method.startswith("dataset_create"):
        assert arguments["dir_mode"] == "zip", command  # a folder upload that ships the subfolders


@pytest.mark.slow
def test_the_readme_commands_upload_what_the_kernel_needs_and_submit_it(readme_upload, tiny_run):
    server, printed, _, root = readme_upload
    weights = root / "kaggle" / "input" / "lumbar-weights"
    assert "Upload successful: run.zip" in _printed(printed, "datasets create", "weights")
    index = json.loads((weights / "bundle.json").read_text())
    assert index["dataset"] == f"{USER}/lumbar-weights" and index["files"]
    for rel, size in index["files"].items():  # every file of the run arrived, unpacked into run/
        assert (weights / "run" / rel).stat().st_size == size, rel
    needed = referenced_files(inference_manifest(tiny_run, read_manifest(tiny_run)))
    assert set(needed) <= set(index["files"]) and sum(rel.endswith(".pt") for rel in needed) >= 9
    code = root / "kaggle" / "input" / "lumbar-code"
    assert {p.name.split("-")[0] for p in code.glob("*.whl")} >= {"lumbar", "timm", "monai", "pydicom"}
    kernel = server.kernels[-1]
    assert kernel.slug == f"{USER}/lumbar-submission" and kernel.enable_internet is False
    assert kernel.enable_gpu is True and kernel.machine_shape == "NvidiaTeslaT4"
    assert kernel.dataset_data_sources == [f"{USER}/lumbar-code", f"{USER}/lumbar-weights"]
    assert kernel.competition_data_sources == [COMPETITION_SLUG]
    submission = server.submissions[-1]
    assert (submission.competition_name, submission.kernel_slug, submission.kernel_version) == (
        COMPETITION_SLUG, "lumbar-submission", 1)
    assert submission.file_name == "submission.csv"


@pytest.mark.slow
def test_the_uploaded_kernel_submits_every_row_though_half_the_studies_fall_back(readme_upload, kernel_env):
    server, _, studies, root = readme_upload
    kaggle = root / "kaggle"
    done = _run_kernel(server, kaggle, kernel_env, root / "full")
    assert done.returncode == 0, done.stderr[-3000:]
    text = _outputs(root / "full" / "executed.ipynb")
    for package in ("lumbar", *KAGGLE_EXTRA_PACKAGES):  # each imported from the fresh environment's install
        line = next(ln for ln in text.splitlines() if ln.startswith(f"{package} "))
        assert str(kernel_env.parents[1]) in line, line
    assert re.search(r"preflight: run .*lumbar-weights/run: \d+ files, .* MB, all present", text)
    assert "preflight: no GPU" in text  # this machine: the kernel says it predicts on the CPU
    sub = load_submission(kaggle / "working" / "submission.csv")
    assert sorted(sub["row_id"]) == submission_row_ids(studies)  # 2 of 4 studies fell back: 50 % > 5 %, no failure
    record = json.loads((kaggle / "working" / "submission.json").read_text())
    assert set(record["fallback_studies"]) == {str(s) for s in studies[:2]}
    assert all("Sagittal T2/STIR" in v["why"] for v in record["fallback_studies"].values())
    assert record["ensemble"]["precision"] == ["float32 (cpu)"]


@pytest.mark.slow
def test_a_kernel_whose_time_budget_runs_out_still_writes_every_row(readme_upload, kernel_env):
    server, _, studies, root = readme_upload
    kaggle = root / "kaggle"
    (kaggle / "working" / "submission.csv").unlink(missing_ok=True)
    done = _run_kernel(server, kaggle, kernel_env, root / "budget", "-p", "TIME_BUDGET_S", "0.001",
                       "-p", "CHUNK_STUDIES", "1")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    sub = load_submission(kaggle / "working" / "submission.csv")
    assert sorted(sub["row_id"]) == submission_row_ids(studies)
    record = json.loads((kaggle / "working" / "submission.json").read_text())
    assert record["budget_stopped_studies"] == len(studies) - 1  # the first study ran, then the budget was spent
    assert "the time budget ran out: 3 studies were not predicted" in _outputs(root / "budget" / "executed.ipynb")


@pytest.mark.slow
def test_an_upload_that_skips_folders_stops_the_kernel_at_its_first_check(tiny_run, synthetic_dir, kernel_env,
                                                                          tmp_path, monkeypatch):  # fmt: skip
    server, printed = _upload(tiny_run, tmp_path / "bundle", tmp_path / "kaggle", monkeypatch, drop="--dir-mode zip")
    assert "Skipping folder: run; use '--dir-mode' to upload folders" in _printed(printed, "datasets create", "weights")
    weights = tmp_path / "kaggle" / "input" / "lumbar-weights"
    assert sorted(p.name for p in weights.iterdir()) == ["README.md", "bundle.json"]
    copy_as_competition(synthetic_dir, kaggle_competition_dir(tmp_path / "kaggle"))
    done = _run_kernel(server, tmp_path / "kaggle", kernel_env, tmp_path / "work")
    assert done.returncode != 0
    n = len(json.loads((weights / "bundle.json").read_text())["files"])
    line = next(ln for ln in done.stderr.splitlines() if ln.startswith("KernelCheckError: "))
    assert f"{n} of {n} files of the run did not arrive in {weights} (ensemble/oof.csv, " in line
    assert f"upload it again with: kaggle datasets version -p {(tmp_path / 'bundle' / 'weights').as_posix()} --dir-mode zip" in line
    text = _outputs(tmp_path / "work" / "executed.ipynb")
    assert "predict:" not in text and not (tmp_path / "kaggle" / "working" / "submission.csv").exists()
    print(line)
