"""A whole tiny run (crops, localizer, two classifiers, ensemble), then `predict` and the Kaggle bundle on it."""

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from _readonly import readonly_argv, require_mount_namespace

from lumbar.cli import main
from lumbar.constants import COMPETITION_SLUG, GRADES
from lumbar.data.tables import load_coordinates, load_labels, load_submission, submission_row_ids
from lumbar.ensemble.runs import fit_run_ensemble
from lumbar.evaluate.metric import competition_score
from lumbar.fallback import FallbackLimitError
from lumbar.inference.predict import predict
from lumbar.kaggle import KAGGLE_EXTRA_PACKAGES, build_bundle
from lumbar.localize.config import LocalizerConfig
from lumbar.localize.train import train_localizer
from lumbar.manifest import read_manifest, update_manifest
from lumbar.preprocess.cache import build_cache
from lumbar.preprocess.config import RoiConfig
from lumbar.train import train

pytestmark = pytest.mark.slow

ARCHS = ("cnn3d", "timm25d:resnet18")


@pytest.fixture(scope="module")
def tiny_run(synthetic_dir, tmp_path_factory):
    """A run folder trained for one epoch on the shared 3-study synthetic set."""
    run = tmp_path_factory.mktemp("run")
    coords = load_coordinates(synthetic_dir / "train_label_coordinates.csv")
    report = build_cache(coords, synthetic_dir, "train", run / "cache", RoiConfig.from_overrides({"size": 24, "before": 1, "after": 1}),
                         progress=False)  # fmt: skip
    update_manifest(run, "preprocess", {"cache": str(report.cache_dir.relative_to(run))})
    config = LocalizerConfig.from_dict({"backbone": "resnet18", "size": 32, "slices": 8, "epochs": 1, "axial_epochs": 1,
                                        "refine_tasks": "", "device": "cpu", "decoder_channels": 8})
    train_localizer(config, synthetic_dir, coords, run, progress=False)
    for arch in ARCHS:
        train({"data_dir": str(synthetic_dir), "cache": str(report.cache_dir), "out": str(run / arch.replace(":", "_")),
               "arch": arch, "n_folds": 2, "epochs": 1, "batch_size": 16, "device": "cpu", "progress": False,
               "threads": 1})  # fmt: skip
    fit_run_ensemble(run, synthetic_dir)
    return run


def _test_only_copy(synthetic_dir: Path, dst: Path) -> Path:
    """A data folder holding only what Kaggle's test-time folder holds (no train files)."""
    dst.mkdir(parents=True)
    shutil.copytree(synthetic_dir / "test_images", dst / "test_images")
    for name in ("test_series_descriptions.csv", "sample_submission.csv"):
        shutil.copy2(synthetic_dir / name, dst / name)
    return dst


def test_predict_writes_a_valid_scored_submission(tiny_run, synthetic_dir, tmp_path):
    out = tmp_path / "submission.csv"
    _, report = predict(synthetic_dir, "test", tiny_run, out, work_dir=tmp_path / "work", device="cpu", progress=False)
    sample = load_submission(synthetic_dir / "sample_submission.csv")
    written = load_submission(out)
    assert list(written["row_id"]) == list(sample["row_id"])  # sample_submission order
    np.testing.assert_allclose(written[list(GRADES)].sum(axis=1), 1, atol=1e-6)
    assert set(report.seconds) == {"index", "localize", "crop", "classify", "blend"}
    score = competition_score(load_labels(synthetic_dir / "test_labels.csv"), written).score
    assert np.isfinite(score) and score < 3
    assert not (tmp_path / "work" / "crops").exists()  # each chunk's crops are deleted


def test_predict_with_test_files_only_and_a_missing_series(tiny_run, synthetic_dir, tmp_path, capsys):
    data = _test_only_copy(synthetic_dir, tmp_path / "data")
    study = min((data / "test_images").iterdir())
    series = pd.read_csv(data / "test_series_descriptions.csv")
    axial = series[(series["study_id"] == int(study.name)) & (series["series_description"] == "Axial T2")]
    for sid in axial["series_id"]:
        shutil.rmtree(study / str(sid), ignore_errors=True)
    out = tmp_path / "sub.csv"
    rc = main(["predict", "--data-dir", str(data), "--split", "test", "--run", str(tiny_run), "--out", str(out),
               "--device", "cpu", "--work-dir", str(tmp_path / "w")])  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 0
    sub = load_submission(out)
    studies = sorted(series["study_id"].unique())
    assert sorted(sub["row_id"]) == submission_row_ids(studies)
    assert f"study {study.name}: 10 rows" in printed  # the subarticular rows fall back to the prior, named
    assert main(["validate-submission", str(out), "--data-dir", str(data), "--split", "test"]) == 0


def _wheelhouse() -> Path:
    """Wheels of the packages the bundle carries (`make setup` downloads them into the venv)."""
    folder = Path(os.environ.get("LUMBAR_WHEELHOUSE", Path(sys.prefix) / "kaggle-wheels"))
    if not any(folder.glob("*.whl")):
        message = f"no dependency wheels in {folder}: run `make setup` (or set LUMBAR_WHEELHOUSE)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return folder


def _top_level_entries(distribution: str) -> set[str]:
    """site-packages entries (packages, modules, .dist-info) an installed distribution owns."""
    files = importlib.metadata.distribution(distribution).files or []
    return {f.parts[0] for f in files if f.parts[0] != ".."}


def _kaggle_python(tmp_path: Path, image_lacks=KAGGLE_EXTRA_PACKAGES) -> Path:
    """A fresh venv that sees this environment's packages as Kaggle's image would: all but lumbar and the ones
    the bundle brings (`image_lacks`), which the kernel must install from the code dataset."""
    env = tmp_path / "kenv"
    venv.EnvBuilder(with_pip=False).create(env)
    image = tmp_path / "image_site"
    image.mkdir()
    site = Path(next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()))
    left_out = set().union(*(_top_level_entries(d) for d in image_lacks))
    for entry in site.iterdir():
        if entry.name.lower().startswith(("lumbar", "__editable__")) or entry.name.endswith(".pth"):
            continue
        if entry.name not in left_out:
            (image / entry.name).symlink_to(entry)
    env_site = next((env / "lib").glob("python*/site-packages"))
    (env_site / "kaggle_image.pth").write_text(str(image) + "\n")
    return env / "bin" / "python"


def test_kaggle_bundle_runs_offline_on_read_only_inputs(tiny_run, synthetic_dir, tmp_path):
    require_mount_namespace()
    parts = build_bundle(tiny_run, tmp_path / "bundle", user="tester", wheelhouse=_wheelhouse())
    assert min(p.name for p in parts["code"].glob("*.whl")).startswith("lumbar-")
    meta = json.loads((parts["kernel"] / "kernel-metadata.json").read_text())
    assert meta["enable_internet"] is False and meta["enable_gpu"] is True
    assert meta["competition_sources"] == [COMPETITION_SLUG]
    manifest = read_manifest(parts["weights"])
    for entry in manifest["classifiers"].values():
        for ckpts in entry["checkpoints"].values():
            assert all((parts["weights"] / p).is_file() for p in ckpts.values())

    kaggle = tmp_path / "kaggle"
    _test_only_copy(synthetic_dir, kaggle / "input" / COMPETITION_SLUG)
    shutil.copytree(parts["code"], kaggle / "input" / "lumbar-code")
    shutil.copytree(parts["weights"], kaggle / "input" / "lumbar-weights")
    (kaggle / "working").mkdir()
    python = _kaggle_python(tmp_path)
    assert subprocess.run([str(python), "-c", "import timm"], capture_output=True, check=False).returncode != 0  # not in the image
    env = {**os.environ, "LUMBAR_KAGGLE_ROOT": str(kaggle), "PIP_NO_INDEX": "1", "PYTHONPATH": ""}
    argv = [str(python), "-m", "papermill", str(parts["kernel"] / "submission.ipynb"), str(tmp_path / "executed.ipynb"),
            "-p", "DEVICE", "cpu", "--cwd", str(kaggle / "working")]  # fmt: skip
    done = subprocess.run(readonly_argv(argv, [kaggle / "input"]), env=env, capture_output=True, text=True,
                          timeout=900, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    text = "\n".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    for package in ("lumbar", *KAGGLE_EXTRA_PACKAGES):  # each imported from the fresh environment's install
        line = next(ln for ln in text.splitlines() if ln.startswith(f"{package} "))
        assert str(tmp_path / "kenv") in line, line
    sub = load_submission(kaggle / "working" / "submission.csv")
    assert list(sub["row_id"]) == list(load_submission(synthetic_dir / "sample_submission.csv")["row_id"])
    record = json.loads((kaggle / "working" / "submission.json").read_text())
    assert record["studies"] == sub["row_id"].str.split("_").str[0].nunique()


def test_predict_on_read_only_data_and_run_folders(tiny_run, synthetic_dir, tmp_path):
    require_mount_namespace()
    data, run = tmp_path / "data", tmp_path / "run"
    _test_only_copy(synthetic_dir, data)
    shutil.copytree(tiny_run, run)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    out = tmp_path / "out" / "submission.csv"
    argv = [sys.executable, "-m", "lumbar", "predict", "--data-dir", str(data), "--split", "test", "--run", str(run),
            "--out", str(out), "--device", "cpu"]  # fmt: skip
    done = subprocess.run(readonly_argv(argv, [data, run]), capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["validate-submission", str(out), "--data-dir", str(data), "--split", "test"]) == 0
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert sorted(set(after) - set(before)) == [Path("out"), Path("out/submission.csv"), Path("out/submission.json")]


def _train_split_copy(synthetic_dir: Path, dst: Path) -> Path:
    """The train split as a folder to predict (3 studies), so fallbacks can be counted against a limit."""
    dst.mkdir(parents=True)
    shutil.copytree(synthetic_dir / "train_images", dst / "train_images")
    shutil.copy2(synthetic_dir / "train_series_descriptions.csv", dst / "train_series_descriptions.csv")
    return dst


def _drop_series(data: Path, split: str, study: int, description: str) -> None:
    series = pd.read_csv(data / f"{split}_series_descriptions.csv")
    chosen = series[(series["study_id"] == study) & (series["series_description"] == description)]
    for sid in chosen["series_id"]:
        shutil.rmtree(data / f"{split}_images" / str(study) / str(sid))


def test_a_programming_error_in_the_crop_code_fails_the_run(tiny_run, synthetic_dir, tmp_path, monkeypatch):
    from lumbar.preprocess import roi

    def broken(*args, **kwargs):
        raise TypeError("injected fault")

    monkeypatch.setattr(roi, "render_sample", broken)
    with pytest.raises(TypeError, match="injected fault"):
        predict(synthetic_dir, "test", tiny_run, tmp_path / "sub.csv", device="cpu", progress=False)
    assert not (tmp_path / "sub.csv").exists()


def test_more_fallback_studies_than_the_limit_fail_naming_them(tiny_run, synthetic_dir, tmp_path):
    data = _train_split_copy(synthetic_dir, tmp_path / "data")
    studies = sorted(int(p.name) for p in (data / "train_images").iterdir())
    for study in studies[:2]:
        _drop_series(data, "train", study, "Sagittal T2/STIR")
    with pytest.raises(FallbackLimitError, match=r"2 of 3 studies fell back, more than the 1 allowed") as info:
        predict(data, "train", tiny_run, tmp_path / "sub.csv", device="cpu", progress=False)
    for study in studies[:2]:
        assert f"{study}: no Sagittal T2/STIR series" in str(info.value)
    assert not (tmp_path / "sub.csv").exists()
    sub, report = predict(data, "train", tiny_run, tmp_path / "sub.csv", device="cpu", progress=False,
                          max_fallback_share=1.0)  # fmt: skip
    assert sorted(report.fallback_rows) == studies[:2] and len(sub) == 75
    record = json.loads((tmp_path / "sub.json").read_text())
    assert record["fallback_rows"] == 30 and set(record["fallback_studies"]) == {str(s) for s in studies[:2]}


def test_a_chunk_whose_crops_all_fail_gets_the_prior(tiny_run, synthetic_dir, tmp_path, monkeypatch):
    from lumbar.inference.predict import _prior_rows, ensemble_members
    from lumbar.preprocess import roi

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(roi, "save_atomic", disk_full)
    data = _train_split_copy(synthetic_dir, tmp_path / "data")
    sub, report = predict(data, "train", tiny_run, tmp_path / "sub.csv", device="cpu", progress=False,
                          chunk_studies=2, max_fallback_share=1.0)  # fmt: skip
    studies = sorted(int(p.name) for p in (data / "train_images").iterdir())
    assert sorted(sub["row_id"]) == submission_row_ids(studies)
    assert sorted(report.fallback_rows) == studies and sum(map(len, report.fallback_rows.values())) == 75
    assert all("No space left on device" in report.why(s) for s in studies)
    _, _, prior = ensemble_members(tiny_run, read_manifest(tiny_run))
    expected = _prior_rows(prior, list(sub["row_id"]))
    np.testing.assert_allclose(sub[list(GRADES)].to_numpy(), expected[list(GRADES)].to_numpy())


def test_fresh_eval_scores_a_new_synthetic_set_and_names_the_worst_studies(tiny_run, tmp_path):
    from lumbar.evaluate.fresh import fresh_eval, result_line

    result = fresh_eval(tiny_run, tmp_path, seed=5, test_studies=2, image_size=64, device="cpu", workers=1,
                        progress=False)  # fmt: skip
    folder = tmp_path / "seed5_64px_stir0.25"
    assert {"submission.csv", "studies.csv", "targets.csv", "fresh_eval.json", "coordinates.csv"} <= {
        p.name for p in folder.iterdir()}  # fmt: skip
    assert result["test_studies"] == 2 and len(result["worst_studies"]) == 2
    assert result["oracle"] < result["prior"] and np.isfinite(result["test_score"])
    targets = pd.read_csv(folder / "targets.csv")
    assert result["target_max"] == targets["loss"].max()
    coords = load_coordinates(folder / "coordinates.csv")
    assert {"confidence", "plausible"} <= set(coords.columns) and coords["confidence"].between(0, 1).all()
    assert "study_max=" in result_line(result) and "localize" in result
    tails = result["tails"]  # the oracle's and the prior's tails on the same targets, beside the run's
    assert set(tails) == {"oracle", "prior", "oracle_excess_over_8", "prior_excess_over_8"}
    assert 0 <= tails["oracle_excess_over_8"] <= result["targets_over_8"]
    assert "oracle: targets_over_8=" in result_line(result)


def _two_member_run(tiny_run: Path, dst: Path, weights: list[float]) -> tuple[Path, list[str]]:
    """The tiny run (files linked) with an ensemble of both classifiers at the given blend weights."""
    from lumbar.ensemble.blend import EnsembleParams

    shutil.copytree(tiny_run, dst, copy_function=os.symlink)
    manifest = read_manifest(dst)
    names = list(manifest["classifiers"])
    params = dst / manifest["ensemble"]["params"]
    params.unlink()
    params.write_text(json.dumps(EnsembleParams(names, {"all": weights}).to_dict()))
    return dst, names


def test_predict_builds_every_model_once_however_many_chunks(tiny_run, synthetic_dir, tmp_path, monkeypatch):
    import lumbar.models

    data = _train_split_copy(synthetic_dir, tmp_path / "data")
    run, _ = _two_member_run(tiny_run, tmp_path / "run", [0.5, 0.5])
    one_chunk, _ = predict(data, "train", run, device="cpu", progress=False, chunk_studies=3)
    builds = []
    real = lumbar.models.build_model
    monkeypatch.setattr(lumbar.models, "build_model", lambda **k: builds.append(k["name"]) or real(**k))
    per_study, report = predict(data, "train", run, device="cpu", progress=False, chunk_studies=1)
    assert sorted(builds) == sorted(a for a in ARCHS for _ in range(3 * 2))  # 3 units x 2 folds, not x 3 chunks
    assert report.ensemble["models"] == 12 and report.ensemble["model_mib"] > 0
    by_row = [t.sort_values("row_id").reset_index(drop=True) for t in (one_chunk, per_study)]
    pd.testing.assert_frame_equal(*by_row, check_exact=False, rtol=1e-6)


def test_predict_caps_folds_and_members(tiny_run, synthetic_dir, tmp_path, monkeypatch, capsys):
    import lumbar.train.predict as train_predict

    run, names = _two_member_run(tiny_run, tmp_path / "run", [0.25, 0.75])  # the second weighs more
    loaded = []
    real = train_predict.load_checkpoint
    monkeypatch.setattr(train_predict, "load_checkpoint", lambda p, **k: loaded.append(Path(p)) or real(p, **k))
    out = tmp_path / "sub.csv"
    rc = main(["predict", "--data-dir", str(synthetic_dir), "--split", "test", "--run", str(run), "--out", str(out),
               "--device", "cpu", "--max-folds", "1", "--max-members", "1"])  # fmt: skip
    assert rc == 0 and f"ensemble {names[1]} 1/2 folds; dropped {names[0]}" in capsys.readouterr().out
    assert len(loaded) == 3 and {p.parent.name for p in loaded} == {"fold0"}  # one fold of each unit
    assert all(p.relative_to(run).parts[0] == names[1] for p in loaded)
    assert json.loads(out.with_suffix(".json").read_text())["ensemble"]["models"] == 3


def test_a_time_budget_cuts_the_ensemble_after_the_first_chunk(tiny_run, synthetic_dir, tmp_path, monkeypatch):
    from lumbar.train.predict import RunPredictor

    data = _train_split_copy(synthetic_dir, tmp_path / "data")
    run, names = _two_member_run(tiny_run, tmp_path / "run", [0.25, 0.75])
    calls = []
    real = RunPredictor.predict
    monkeypatch.setattr(RunPredictor, "predict",
                        lambda self, *a, **k: calls.append((self.run_dir.name, self.n_models)) or real(self, *a, **k))
    sub, report = predict(data, "train", run, device="cpu", progress=False, chunk_studies=1, time_budget_s=1e-3)
    full = [(names[0], 6), (names[1], 6)]
    assert calls == [*full, (names[1], 3), (names[1], 3)]  # after the timed first study: 1 fold of the heaviest
    assert "time budget" in report.ensemble["plan"] and "over the budget" in report.ensemble["plan"]
    assert len(sub) == 75
    calls.clear()
    predict(data, "train", run, device="cpu", progress=False, chunk_studies=1, time_budget_s=1e6)
    assert calls == full * 3
