"""Per-group slabs (`RoiConfig.foraminal_slices` and kin): deeper crops for one group, the rest as before."""

from __future__ import annotations

import hashlib
import json
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
from _train_data import tiny_build_model
from torch import nn

import lumbar.models
from lumbar.core.constants import CONDITION_GROUP, CONDITIONS
from lumbar.core.tables import load_coordinates
from lumbar.pipeline import load_config
from lumbar.pipeline.cost import _roi_config, cache_bytes, crop_array_bytes, step_parameters, unit_depth
from lumbar.preprocess.cache import build_cache, cache_name
from lumbar.preprocess.config import RoiConfig
from lumbar.train.loop import train
from lumbar.train.predict import predict_cache
from lumbar.train.tasks import build_tasks

FORAMINAL = "left_neural_foraminal_narrowing"
BASE = {"size": 32, "pad_px": 2}
#: (folder, digest) of the shared synthetic set's caches as the code before slabs built them (`_digest`).
BEFORE_SLABS = {
    (): ("target_window_32x32_5D_B2A2_none_a45f5068", "7ce07479872930e68713f55ed30efc7086404984"),
    ("axial_canal", "parasagittal_recess"): (
        "target_window_32x32_5D_B2A2_none_43e46d65", "d5d7eb7823b684843ab13bb3ac348ea41d0b09d2"),
}  # fmt: skip


def _digest(folder) -> str:
    """params.json (less the coordinates' path), the sample tables and every array, in table order."""
    h = hashlib.sha1()
    params = json.loads((folder / "params.json").read_text())
    params.pop("coordinates_source")
    h.update(json.dumps(params, sort_keys=True).encode())
    for table in ("samples.parquet", "views.parquet"):
        if (folder / table).is_file():
            samples = pd.read_parquet(folder / table)
            h.update(samples.to_csv(index=False).encode())
            for f in samples["file"]:
                h.update(np.load(folder / f).tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def caches(synthetic_dir, tmp_path_factory):
    """The shared synthetic set's crops without and with a 9-slice foraminal slab."""
    coords = load_coordinates(synthetic_dir / "train_label_coordinates.csv")
    root = tmp_path_factory.mktemp("slabs")
    plain = build_cache(coords, synthetic_dir, "train", root, RoiConfig(**BASE), progress=False)
    deep = build_cache(
        coords, synthetic_dir, "train", root, RoiConfig(**BASE, foraminal_slices=(4, 4)), progress=False
    )
    return plain, deep


def test_a_slab_is_cast_checked_and_the_global_window_elsewhere():
    cfg = RoiConfig.from_overrides({"foraminal_slices": "6,6"})
    assert cfg.foraminal_slices == (6, 6) and cfg.slabbed
    assert cfg.slab(FORAMINAL) == (6, 6) and cfg.depth_of(FORAMINAL) == 13
    assert cfg.depth_of("spinal_canal_stenosis") == cfg.out_depth == 5
    assert cfg.to_dict()["foraminal_slices"] == [6, 6] and RoiConfig.from_overrides(cfg.to_dict()) == cfg
    assert "foraminal_slices" not in RoiConfig().to_dict()
    same = RoiConfig(foraminal_slices=(2, 2))  # the global window: the same cache as unset
    assert same == RoiConfig() and not same.slabbed
    with pytest.raises(ValueError, match="foraminal_slices must be"):
        RoiConfig(foraminal_slices=(1, 2, 3))
    with pytest.raises(ValueError, match="spinal_slices must be"):
        RoiConfig(spinal_slices=(-1, 2))
    with pytest.raises(ValueError, match="target_window only"):
        RoiConfig(mode="full_series", subarticular_slices=(3, 3))


def test_a_slab_names_another_cache_and_none_keeps_the_old_names():
    assert cache_name(RoiConfig()) == "target_window_128x128_5D_B2A2_none"
    demo = RoiConfig(size=32, pad_px=3, spinal_mm=(18.0,) * 4, foraminal_mm=(16.0,) * 4, subarticular_mm=(16.0,) * 4)
    assert cache_name(demo) == "target_window_32x32_5D_B2A2_none_aea50889"  # the demo's, as before slabs
    names = {cache_name(RoiConfig(**{f"{g}_slices": (4, 4)})) for g in ("spinal", "foraminal", "subarticular")}
    assert len(names) == 3 and cache_name(RoiConfig()) not in names
    assert cache_name(RoiConfig(foraminal_slices=(2, 2))) == cache_name(RoiConfig())


@pytest.mark.parametrize("views", sorted(BEFORE_SLABS))
def test_a_cache_without_slabs_is_byte_for_byte_what_it_was(synthetic_dir, tmp_path, views):
    coords = load_coordinates(synthetic_dir / "train_label_coordinates.csv")
    report = build_cache(coords, synthetic_dir, "train", tmp_path, RoiConfig(**BASE, views=views), progress=False)
    assert (report.cache_dir.name, _digest(report.cache_dir)) == BEFORE_SLABS[views]


def test_a_foraminal_slab_deepens_only_the_foraminal_crops_around_the_labelled_slice(caches):
    plain, deep = caches
    assert plain.cache_dir != deep.cache_dir
    a, b = (r.samples.set_index("sample_id") for r in (plain, deep))
    foraminal = b["condition"].map(CONDITION_GROUP) == "foraminal"
    assert foraminal.any() and (~foraminal).any()
    assert set(b.loc[foraminal, "depth"]) == {9} and set(b.loc[~foraminal, "depth"]) == {5}
    assert set(b.loc[foraminal, "point_d"]) == {5.0} and set(b.loc[~foraminal, "point_d"]) == {3.0}
    for sample_id, row in b.iterrows():
        five = np.load(plain.cache_dir / a.loc[sample_id, "file"]).astype(np.float32)
        nine = np.load(deep.cache_dir / row["file"]).astype(np.float32)
        if not foraminal[sample_id]:
            np.testing.assert_array_equal(nine, five)
            continue
        assert nine.shape == (11, 36, 36) and five.shape == (7, 36, 36)
        middle = nine[2:9]  # the 5 slices and their pads of the plain crop, at the same places
        # the same pixels, only normalised over the deeper slab's percentiles: one linear map between them
        inside = (five > 0.02) & (five < 0.98) & (middle > 0.02) & (middle < 0.98)
        assert inside.mean() > 0.3
        slope, offset = np.polyfit(five[inside], middle[inside], 1)
        assert np.abs(middle[inside] - (slope * five[inside] + offset)).max() < 4e-3


def test_a_slab_reaches_01_preprocess_from_a_pipeline_yaml(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(
        f"name: t\nrun_dir: {tmp_path / 'run'}\ndata_dir: {tmp_path}\nnotebooks:\n"
        "  - notebook: 01_preprocess\n    parameters: {SIZE: 32, foraminal_slices: \"6,6\"}\n"
    )
    config = load_config(path)
    step = config.steps[0]
    assert step.parameters["EXTRA"] == {"foraminal_slices": "6,6"}
    roi = _roi_config(step_parameters(step, config))  # as 01_preprocess builds its RoiConfig
    assert roi.depth_of(FORAMINAL) == 13 and roi.depth_of("spinal_canal_stenosis") == 5
    text = path.read_text()
    path.write_text(text.replace('"6,6"', '"6"'))
    config = load_config(path)
    with pytest.raises(ValueError, match="foraminal_slices must be"):
        _roi_config(step_parameters(config.steps[0], config))  # the plan stops it
    path.write_text(text.replace("foraminal_slices", "foraminal_slice"))
    with pytest.raises(ValueError, match="unknown setting 'foraminal_slice'"):
        load_config(path)


def test_the_plan_sizes_each_group_by_its_slab():
    roi = RoiConfig(size=32, pad_px=2, foraminal_slices=(4, 4))
    assert crop_array_bytes(roi, FORAMINAL) > crop_array_bytes(roi, "spinal_canal_stenosis") == crop_array_bytes(
        RoiConfig(size=32, pad_px=2)
    )
    counts = {c: 10 for c in CONDITIONS}
    assert cache_bytes(counts, roi) > cache_bytes(counts, RoiConfig(size=32, pad_px=2))
    assert cache_bytes({**counts, "axial_canal": 10}, roi) - cache_bytes(counts, roi) == cache_bytes(
        {"spinal_canal_stenosis": 10}, roi
    ) - cache_bytes({}, roi)  # a view is as deep as the group it serves
    units = {t.name: unit_depth(roi, t) for t in build_tasks("competition")}
    assert units == {"spinal": 5, "foraminal": 9, "subarticular": 5}
    with pytest.raises(ValueError, match="foraminal_slices"):
        unit_depth(roi, build_tasks("multi_multiclass")[0])


class _DepthNet(nn.Module):
    """The tiny test model, refusing a batch of another depth than it was built for."""

    built: ClassVar[list[tuple[int, int]]] = []

    def __init__(self, depth: int, **kwargs) -> None:
        super().__init__()
        self.depth, self.net = depth, tiny_build_model(depth=depth, **kwargs)

    def forward(self, x, meta=None):
        assert x.shape[2] == self.depth, f"a {x.shape[2]}-slice batch for a {self.depth}-slice model"
        _DepthNet.built.append((x.shape[1], x.shape[2]))
        return self.net(x, meta)


def test_a_competition_run_trains_and_predicts_the_foraminal_unit_on_its_slab(caches, synthetic_dir, tmp_path,
                                                                              monkeypatch):
    depths = []

    def build(name, depth, **kwargs):
        depths.append((kwargs["num_meta"], depth))
        return _DepthNet(depth, name=name, **kwargs)

    monkeypatch.setattr(lumbar.models, "build_model", build, raising=False)
    _DepthNet.built = []
    deep = caches[1].cache_dir
    config = {"data_dir": str(synthetic_dir), "cache": str(deep), "out": str(tmp_path / "exp" / "slab"),
              "mode": "competition", "n_folds": 2, "folds": "0", "epochs": 1, "batch_size": 8,
              "device": "cpu", "progress": False, "threads": 1}
    result = train(config)
    assert result.summary["units"]["foraminal"]["depth"] == 9
    assert "depth" not in result.summary["units"]["spinal"] and result.summary["model"]["depth"] == 5
    assert sorted(set(depths)) == [(5, 5), (6, 5), (6, 9)]  # spinal (level meta), subarticular, foraminal (+ side)
    assert {d for _, d in _DepthNet.built} == {5, 9}
    depths.clear()
    sub = predict_cache(tmp_path / "exp" / "slab", deep, device="cpu")
    assert sorted(set(depths)) == [(5, 5), (6, 5), (6, 9)] and len(sub) == 25 * 3
    with pytest.raises(ValueError, match="foraminal_slices"):
        train({**config, "mode": "multi_multiclass", "out": str(tmp_path / "exp" / "multi")})
