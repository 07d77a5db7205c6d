"""One localizer per fold: out-of-fold coordinates from the localizer that never saw the study, their errors,
the crops around them, and the folds' models averaged at test time."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from lumbar.core.manifest import read_manifest, update_manifest
from lumbar.core.tables import load_coordinates, load_labels
from lumbar.data.index import build_index
from lumbar.localize import folds as folds_module
from lumbar.localize.config import LocalizerConfig
from lumbar.localize.evaluate import HISTOGRAM_COLUMNS, localization_errors, slice_histogram
from lumbar.localize.folds import (
    build_oof_crops,
    fold_member,
    merge_parts,
    model_parts,
    train_localizer_folds,
)
from lumbar.localize.predict import Localizer, ProbabilityMean, localize
from lumbar.localize.train import train_localizer
from lumbar.preprocess.cache import build_cache, load_cache
from lumbar.preprocess.config import RoiConfig
from lumbar.train.folds import make_folds

pytestmark = pytest.mark.slow

TINY = {"backbone": "test_resnet", "size": 32, "slices": 4, "epochs": 1, "axial_epochs": 1, "refine_tasks": "",
        "batch_size": 4, "decoder_channels": 8, "device": "cpu", "threads": 1}


@pytest.fixture(scope="module")
def kfold_run(synthetic_dir, tmp_path_factory):
    """3 synthetic studies, 3 folds: each fold's localizer trains on the other 2 studies. Records which studies
    each fold's localizer trained on and which localizer predicted which studies."""
    run = tmp_path_factory.mktemp("kfold")
    coords = load_coordinates(synthetic_dir / "train_label_coordinates.csv")
    folds = make_folds(load_labels(synthetic_dir / "train.csv"), n_folds=3, seed=0)
    index, _ = build_index(synthetic_dir, "train", progress=False)
    seen, predicted_by = {}, {}
    real_train, real_localize = folds_module.train_localizer, folds_module.localize

    def spy_train(config, root, coords, run, index=None, progress=True, member=None):
        seen[member] = set(coords["study_id"])
        return real_train(config, root, coords, run, index=index, progress=progress, member=member)

    def spy_localize(*args, studies=None, members=None, **kwargs):
        for s in studies:
            predicted_by[s] = members
        return real_localize(*args, studies=studies, members=members, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(folds_module, "train_localizer", spy_train)
        mp.setattr(folds_module, "localize", spy_localize)
        entry = train_localizer_folds(LocalizerConfig.from_dict(TINY), synthetic_dir, coords, run, folds, index,
                                      progress=False)  # fmt: skip
    return run, coords, folds, index, entry, seen, predicted_by


def test_every_point_is_predicted_by_the_localizer_that_never_saw_its_study(kfold_run):
    run, coords, folds, _, entry, seen, predicted_by = kfold_run
    fold_of = folds.set_index("study_id")["fold"]
    assert set(entry["folds"]) == {fold_member(k) for k in range(3)} == set(seen)
    for k in range(3):
        assert seen[fold_member(k)] == set(fold_of[fold_of != k].index)  # trained without fold k
    assert {s: m for s, m in predicted_by.items()} == {s: [fold_member(fold_of[s])] for s in fold_of.index}
    oof = load_coordinates(run / entry["oof"])
    assert (oof["fold"] == oof["study_id"].map(fold_of)).all()
    keys = ["study_id", "condition", "level"]
    assert not oof.duplicated(keys).any()
    truth = set(map(tuple, coords[keys].to_numpy()))
    assert truth <= set(map(tuple, oof[keys].to_numpy()))  # one out-of-fold point per ground-truth point
    manifest = read_manifest(run)["localizer"]
    assert manifest["oof"] == "localizer_oof.csv" and manifest["summary"].startswith("localize: within5mm=")
    assert set(manifest["per_fold"]) == {"fold0", "fold1", "fold2", "all"}
    errors = pd.read_csv(run / entry["errors_table"])
    assert (errors["fold"] == errors["study_id"].map(fold_of)).all()  # missed points too
    for member in entry["folds"].values():  # each fold's checkpoints in its own folder
        assert all(m["checkpoint"].startswith(f"localizer/fold{member['fold']}/") for m in member["models"].values())


def test_a_localizer_trained_in_parts_is_the_whole_localizer(synthetic_dir, tmp_path):
    """The pool trains folds x models tasks (`model_parts`): the same weights and manifest entry as one
    localizer trained whole, the slice scorer included."""
    config = LocalizerConfig.from_dict({**TINY, "refine_tasks": "sag_t1", "refine_epochs": 1})
    coords = load_coordinates(synthetic_dir / "train_label_coordinates.csv")
    index, _ = build_index(synthetic_dir, "train", progress=False)
    parts = model_parts(config)
    assert [p.task_names + p.refine_task_names for p in parts] == [("sag_t2",), ("sag_t1",), ("axial",), ("sag_t1",)]

    def trained(cfg, folder):
        return train_localizer(cfg, synthetic_dir, coords, tmp_path / folder, index=index, progress=False, member="f")

    whole = trained(config, "whole")
    part_entries = [trained(p, "parts") for p in parts]
    merged = merge_parts(part_entries, config)
    assert list(merged["models"]) == list(whole["models"]) == ["sag_t2", "sag_t1", "axial", "sag_t1_slices"]
    for name, model in whole["models"].items():
        a = torch.load(tmp_path / "whole" / model["checkpoint"], weights_only=True)
        b = torch.load(tmp_path / "parts" / merged["models"][name]["checkpoint"], weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name

    def timeless(entry):
        return {**entry, "seconds": None, "models": {n: {**m, "seconds": None} for n, m in entry["models"].items()}}

    assert timeless(merged) == timeless(whole) and merged["config"]["tasks"] == "sag_t2,sag_t1,axial"
    assert merged["seconds"] == pytest.approx(sum(e["seconds"] for e in part_entries), abs=0.2)


def test_the_errors_file_holds_every_measured_point_signed(kfold_run):
    run, _, _, _, entry, _, _ = kfold_run
    errors = pd.read_csv(run / entry["errors_table"])
    data = json.loads((run / entry["errors"]).read_text())
    measured = errors.dropna(subset=["slice_shift"])
    for condition, group in measured.groupby("condition"):
        recorded = data["conditions"][condition]
        assert sorted(recorded["slice"]) == sorted(group["slice_shift"].astype(int))
        np.testing.assert_allclose(sorted(recorded["dx_mm"]), sorted(group["dx_mm"]), atol=1e-6)
    # the signed shift and the in-plane components agree with the unsigned errors
    assert (measured["slice_error"] == measured["slice_shift"].abs()).all()
    in_plane = np.hypot(errors["dx_mm"], errors["dy_mm"])
    np.testing.assert_allclose(in_plane, errors["error_mm"], atol=1e-6)


def test_signed_errors_and_histogram_on_a_known_shift(kfold_run):
    _, coords, _, index, _, _, _ = kfold_run
    study = coords["study_id"].iloc[0]
    truth = coords[coords["study_id"] == study]
    spinal = truth[truth["condition"] == "spinal_canal_stenosis"]
    moved = truth.copy()
    rows = index.set_index(["series_id", "instance_number"])
    spacing = rows.loc[(spinal["series_id"].iloc[0], spinal["instance_number"].iloc[0]), "pixel_spacing_col"]
    stack = index[index["series_id"] == spinal["series_id"].iloc[0]].sort_values("slice_index")
    sid, inst = spinal["series_id"].iloc[0], int(spinal["instance_number"].iloc[0])
    k = int(stack.loc[stack["instance_number"] == inst, "slice_index"].iloc[0])
    nxt = int(stack.loc[stack["slice_index"] == k + 1, "instance_number"].iloc[0])  # one slice further
    is_spinal = (moved["condition"] == "spinal_canal_stenosis") & (moved["series_id"] == sid)
    moved.loc[is_spinal & (moved["instance_number"] == inst), "instance_number"] = nxt
    moved.loc[is_spinal, "x"] += 4.0
    errors = localization_errors(moved, truth, index)
    e = errors[errors["condition"] == "spinal_canal_stenosis"]
    shifted = e["slice_shift"] == 1
    assert shifted.sum() == (is_spinal & (truth["instance_number"] == inst)).sum() >= 1
    np.testing.assert_allclose(e["dx_mm"], 4.0 * spacing, atol=1e-3)
    np.testing.assert_allclose(e["dy_mm"], 0.0, atol=1e-3)
    hist = slice_histogram(errors)
    assert list(hist.columns) == HISTOGRAM_COLUMNS
    assert hist.loc["spinal_canal_stenosis", "+1"] == shifted.sum()
    assert hist.loc["all"].sum() == len(errors)


def test_oof_crops_use_the_ground_truth_cache_parameters(kfold_run, synthetic_dir):
    run, coords, _, _, entry, _, _ = kfold_run
    roi = RoiConfig.from_overrides({"size": 16, "before": 1, "after": 1, "pad_px": 2})
    gt = build_cache(coords, synthetic_dir, "train", run / "cache", roi, progress=False)
    update_manifest(run, "preprocess", {"cache": gt.cache_dir.relative_to(run).as_posix()})
    report = build_oof_crops(run, synthetic_dir)
    params, samples = load_cache(report.cache_dir)
    assert params["config"] == load_cache(gt.cache_dir)[0]["config"] and params["coordinates_source"] == "localizer_oof.csv"
    assert report.cache_dir.parent.name == "cache_oof" and len(samples) == len(load_coordinates(run / entry["oof"]))
    assert read_manifest(run)["oof_crops"]["cache"] == report.cache_dir.relative_to(run).as_posix()


def test_oof_crops_cut_around_an_earlier_localizers_points_are_built_again(kfold_run, synthetic_dir, tmp_path, capsys):
    import shutil

    from lumbar.core.tables import write_coordinates
    from lumbar.preprocess.cache import coordinates_digest

    run = tmp_path / "run"
    shutil.copytree(kfold_run[0], run)
    if "preprocess" not in read_manifest(run):
        roi = RoiConfig.from_overrides({"size": 16, "before": 1, "after": 1, "pad_px": 2})
        gt = build_cache(kfold_run[1], synthetic_dir, "train", run / "cache", roi, progress=False)
        update_manifest(run, "preprocess", {"cache": gt.cache_dir.relative_to(run).as_posix()})
    build_oof_crops(run, synthetic_dir)
    oof = load_coordinates(run / "localizer_oof.csv")
    write_coordinates(oof.assign(x=oof["x"] + 1.0), run / "localizer_oof.csv")  # the localizer retrained (FRESH)
    report = build_oof_crops(run, synthetic_dir)
    params, _ = load_cache(report.cache_dir)
    assert params["coordinates_sha1"] == coordinates_digest(load_coordinates(run / "localizer_oof.csv"))
    assert "cut around an earlier localizer's points: built again" in capsys.readouterr().out


def test_test_time_averages_the_folds_heatmaps(kfold_run, synthetic_dir):
    run, *_ = kfold_run
    every = Localizer(run, "cpu")
    single = Localizer(run, "cpu", members=["fold1"])
    assert len(every.models["sag_t2"].members) == 3 and len(single.models["sag_t2"].members) == 1
    x = torch.rand(1, 4, 32, 32)
    with torch.no_grad():
        mean = torch.stack([torch.softmax(m(x).flatten(2), -1) for m in every.models["sag_t2"].members]).mean(0)
        np.testing.assert_allclose(torch.exp(every.models["sag_t2"](x).flatten(2)).numpy(), mean.numpy(), atol=1e-6)
        np.testing.assert_allclose(single.models["sag_t2"](x).numpy(), single.models["sag_t2"].members[0](x).numpy())
    with pytest.raises(ValueError, match=r"localizer\(s\) \['fold7'\] asked for; the run has"):
        Localizer(run, "cpu", members=["fold7"])
    coords, _ = localize(synthetic_dir, "test", run, device="cpu", progress=False)
    assert len(coords) and coords["study_id"].nunique() == 1


def test_probability_mean_of_one_member_passes_through():
    net = torch.nn.Linear(3, 4)
    x = torch.rand(2, 3)
    assert torch.equal(ProbabilityMean([net], start_dim=1)(x), net(x))


def test_a_rerun_reuses_the_fold_localizers_resumes_a_killed_one_and_stops_on_other_settings(synthetic_dir, tmp_path,
                                                                                            capsys):  # fmt: skip
    from lumbar.core.settings import StaleRunError

    coords = load_coordinates(synthetic_dir / "train_label_coordinates.csv")
    folds = make_folds(load_labels(synthetic_dir / "train.csv"), n_folds=3, seed=0)
    index, _ = build_index(synthetic_dir, "train", progress=False)
    config = LocalizerConfig.from_dict({**TINY, "tasks": "sag_t2"})
    trained = []
    real = folds_module.train_localizer

    def counting(config, root, coords, run, index=None, progress=True, member=None):
        trained.append(member)
        if member == "fold1" and killed:
            raise KeyboardInterrupt  # killed after fold0's model
        return real(config, root, coords, run, index=index, progress=progress, member=member)

    def run_folds(cfg=config, fresh=False, **kw):
        return train_localizer_folds(cfg, synthetic_dir, coords, tmp_path, folds, index, progress=False, fresh=fresh)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(folds_module, "train_localizer", counting)
        killed = True
        with pytest.raises(KeyboardInterrupt):
            run_folds()
        killed = False
        first = run_folds()  # resumes: fold0's model is kept, fold1's and fold2's train
        assert trained == ["fold0", "fold1", "fold1", "fold2"]
        again = run_folds(LocalizerConfig.from_dict({**TINY, "tasks": "sag_t2", "threads": 2, "device": "cpu"}))
        assert len(trained) == 4 and again["oof"] == first["oof"]  # reused, nothing trained
        assert "reusing the 3 fold localizers" in capsys.readouterr().out
        with pytest.raises(StaleRunError, match=r"epochs: 1 -> 2\): reusing them .* FRESH=True in 02_train_localizer"):
            run_folds(LocalizerConfig.from_dict({**TINY, "tasks": "sag_t2", "epochs": 2}))
        assert len(trained) == 4  # stopped before any training
        run_folds(LocalizerConfig.from_dict({**TINY, "tasks": "sag_t2", "epochs": 2}), fresh=True)
        assert trained[4:] == ["fold0", "fold1", "fold2"]
