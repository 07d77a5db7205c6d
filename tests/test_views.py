"""Second views: crops of a condition from another series, derived through DICOM geometry, read as channels."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from _train_data import engine_config, make_tiny_data

from lumbar.core.paths import series_dir
from lumbar.core.tables import load_coordinates
from lumbar.data.dicom import read_series
from lumbar.models.fusion import ViewStreams
from lumbar.preprocess.cache import build_cache, cache_name, load_views
from lumbar.preprocess.config import RoiConfig
from lumbar.preprocess.views import MAX_DISTANCE_MM, point_mm
from lumbar.train.dataset import RoiDataset, read_cache
from lumbar.train.loop import train
from lumbar.train.predict import RunPredictor
from lumbar.train.tasks import build_tasks

STUDY = 100206310
VIEWS = ("axial_canal", "parasagittal_recess")
ROI = RoiConfig(size=32, pad_px=2, views=VIEWS)


def _coords(sample_dir):
    coords = load_coordinates(sample_dir / "train_label_coordinates.csv")
    return coords[coords["study_id"] == STUDY].reset_index(drop=True)


def _series(sample_dir, series_id):
    return read_series(series_dir(sample_dir, "train", STUDY, int(series_id)))


def test_views_on_a_real_study_follow_its_geometry_and_resume(sample_dir, tmp_path):
    coords = _coords(sample_dir)
    report = build_cache(coords, sample_dir, "train", tmp_path, ROI, progress=False)
    assert cache_name(RoiConfig(size=32, pad_px=2)) != report.cache_dir.name  # views never share a folder
    views = load_views(report.cache_dir)
    assert len(report.view_failures) == 0 and views["view"].value_counts().to_dict() == {
        "axial_canal": 5, "parasagittal_recess": 10}
    for row in views.itertuples():
        assert np.load(report.cache_dir / row.file).shape == (5 + 2, 32 + 4, 32 + 4)
    # the canal on the axial slice sits midway between the two recesses labelled on that slice
    recess = coords[coords["condition"].str.contains("subarticular")]
    for row in views[views["view"] == "axial_canal"].itertuples():
        pair = recess[recess["level"] == row.level]
        assert row.instance_number == pair["instance_number"].iloc[0] == pair["instance_number"].iloc[1]
        assert row.x == pytest.approx(pair["x"].mean()) and row.y == pytest.approx(pair["y"].mean())
    # each recess on the Sagittal T2 slice through it: the derived pixel lies on that slice within the limit
    sagittal = _series(sample_dir, coords.loc[coords["condition"] == "spinal_canal_stenosis", "series_id"].iloc[0])
    axial = {s: _series(sample_dir, s) for s in recess["series_id"].unique()}
    for row in views[views["view"] == "parasagittal_recess"].itertuples():
        target = recess[(recess["condition"] == row.condition) & (recess["level"] == row.level)].iloc[0]
        truth = point_mm(target, axial[target["series_id"]])
        on_slice = point_mm({"instance_number": row.instance_number, "x": row.x, "y": row.y}, sagittal)
        assert np.linalg.norm(truth - on_slice) < MAX_DISTANCE_MM
        others = [np.abs(np.dot(truth - np.asarray(h.position), sagittal.stacks[0].normal))
                  for h in sagittal.stacks[0].headers]
        assert np.linalg.norm(truth - on_slice) == pytest.approx(min(others), abs=1e-6)  # the nearest slice
    # left and right recesses land on slices on either side of the canal's
    para = views[views["view"] == "parasagittal_recess"].set_index(["condition", "level"])["instance_number"]
    canal = coords[coords["condition"] == "spinal_canal_stenosis"].set_index("level")["instance_number"]
    left, right = para["left_subarticular_stenosis"], para["right_subarticular_stenosis"]
    assert ((left - canal) * (right - canal) <= 0).all() and (left != right).all()
    again = build_cache(coords, sample_dir, "train", tmp_path, ROI, progress=False)
    assert again.built == 0 and again.studies_opened == 0 and len(again.views) == 15


def test_a_missing_recess_pair_falls_back_to_the_projected_canal_and_a_missing_view_is_reported(sample_dir, tmp_path):
    coords = _coords(sample_dir)
    full = load_views(build_cache(coords, sample_dir, "train", tmp_path / "full", ROI, progress=False).cache_dir)
    no_pair = coords[~(coords["condition"].str.contains("subarticular") & (coords["level"] == "l4_l5"))]
    report = build_cache(no_pair, sample_dir, "train", tmp_path / "no_pair", ROI, progress=False)
    canal = report.views[report.views["view"] == "axial_canal"].set_index("level")
    expected = full[full["view"] == "axial_canal"].set_index("level")
    assert len(canal) == 5 and abs(int(canal.at["l4_l5", "instance_number"])
                                   - int(expected.at["l4_l5", "instance_number"])) <= 1
    assert abs(canal.at["l4_l5", "x"] - expected.at["l4_l5", "x"]) < 12  # pixels of a 512-px axial image
    no_spinal = coords[coords["condition"] != "spinal_canal_stenosis"]
    report = build_cache(no_spinal, sample_dir, "train", tmp_path / "no_spinal", ROI, progress=False)
    assert report.views.empty and len(report.failures) == 0  # a missing view fails no sample
    failures = pd.read_csv(report.cache_dir / "view_failures.csv")
    assert len(failures) == 10 and set(failures["view"]) == {"parasagittal_recess"}
    assert failures["error"].str.contains("no Sagittal T2/STIR series").all()
    assert "view parasagittal_recess: 0 samples, 10 target rows without one" in report.summary()


# --- a multi-view unit in the engine --------------------------------------------------------------------------


def _add_view(cache_dir, drop: int = 1) -> None:
    """An `axial_canal` view for the tiny cache's spinal crops (the view carries the grade, moved off centre),
    missing for the first `drop` of them; params.json then names the view."""
    samples = pd.read_parquet(cache_dir / "samples.parquet")
    spinal = samples[samples["condition"] == "spinal_canal_stenosis"].iloc[drop:]
    rows = []
    for row in spinal.to_dict("records"):
        file = row["file"].replace(".npy", "@axial_canal.npy")
        np.save(cache_dir / file, np.roll(np.load(cache_dir / row["file"]), 3, axis=2))
        rows.append({**row, "sample_id": f"{row['sample_id']}@axial_canal", "file": file, "view": "axial_canal"})
    pd.DataFrame(rows).to_parquet(cache_dir / "views.parquet", index=False)
    params = json.loads((cache_dir / "params.json").read_text())
    params["config"]["views"] = ["axial_canal"]
    (cache_dir / "params.json").write_text(json.dumps(params))


@pytest.fixture(scope="module")
def tiny_views(tmp_path_factory):
    data_dir, cache_dir = make_tiny_data(tmp_path_factory.mktemp("views"), n_studies=8)  # its own: views are added
    _add_view(cache_dir)
    return data_dir, cache_dir


def test_a_view_is_a_channel_mirrored_on_its_own_axis(tiny_views):
    cache = read_cache(tiny_views[1])
    (task,) = [t for t in build_tasks("competition", ["spinal_canal_stenosis"], views=["axial_canal"])]
    assert task.in_channels == 2 and task.mirror_axes() == (0, 2)
    items = task.items(cache.samples, None, cache.views)
    assert items["files"].map(len).eq(2).all() and items["files"].map(lambda f: f[1] is None).sum() == 1
    plain = RoiDataset(cache, task, items)
    missing = int(np.flatnonzero(items["files"].map(lambda f: f[1] is None))[0])
    assert plain[missing]["image"][1].abs().sum() == 0  # the missing view is zeros, the item is kept
    mirrored = RoiDataset(cache, task, items.assign(mirror=True))
    k = (missing + 1) % len(items)
    a, b = plain[k]["image"], mirrored[k]["image"]
    assert torch.equal(b[0], a[0].flip(0)) and torch.equal(b[1], a[1].flip(2))
    with pytest.raises(ValueError, match="holds no 'parasagittal_recess' view"):
        build_tasks("competition", ["lss"], views=["parasagittal_recess"])[0].items(cache.samples, None, cache.views)


@pytest.mark.parametrize("fusion", ["early", "late"])
def test_a_multi_view_model_trains_and_predicts_through_the_same_engine(tiny_views, tmp_path, fusion):
    config = engine_config(tiny_views, tmp_path / "run", arch="cnn3d", views="axial_canal", fusion=fusion,
                           model_kwargs={"channels": [4, 8, 8, 8]}, epochs=1)
    result = train(config)
    with RunPredictor(result.run_dir, "cpu", threads=1) as predictor:
        ((task, (model,)),) = predictor.units
        assert task.views == ("axial_canal",) and model.in_channels == 2
        assert isinstance(model.encoder, ViewStreams) == (fusion == "late")
        before = predictor.predict(tiny_views[1])
    assert len(before) == 8 * 25 and np.isfinite(before[["normal_mild", "moderate", "severe"]].to_numpy()).all()
    views = load_views(tiny_views[1])
    saved = {f: np.load(tiny_views[1] / f) for f in views["file"]}
    try:  # the view's channel is read at inference: blank it and the spinal rows change
        for f, a in saved.items():
            np.save(tiny_views[1] / f, np.zeros_like(a))
        with RunPredictor(result.run_dir, "cpu", threads=1) as predictor:
            after = predictor.predict(tiny_views[1])
    finally:
        for f, a in saved.items():
            np.save(tiny_views[1] / f, a)
    spinal = before["row_id"].str.contains("spinal")
    assert not np.allclose(before.loc[spinal, "severe"], after.loc[spinal, "severe"])


def test_views_the_caches_lack_are_an_error(tmp_path):
    data_dir, cache_dir = make_tiny_data(tmp_path, n_studies=4)
    with pytest.raises(ValueError, match="built without the view"):
        train(engine_config((data_dir, cache_dir), tmp_path / "run", views="axial_canal"))
    with pytest.raises(ValueError, match="unknown"):
        train(engine_config((data_dir, cache_dir), tmp_path / "run2", views="coronal"))
