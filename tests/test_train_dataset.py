"""The ROI dataset: shapes, meta, jitter, the left-right mirror with its label swap, and augmentations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from _train_data import DEPTH, SIZE, make_oof_cache

from lumbar.core.constants import LEVELS
from lumbar.core.tables import load_labels
from lumbar.preprocess import LocalizerJitter, center_window
from lumbar.preprocess.jitter import window_at
from lumbar.train.augment import StackAugment, list_augmentations, resolve_augmentations
from lumbar.train.dataset import RoiDataset, read_cache
from lumbar.train.tasks import build_tasks


@pytest.fixture(scope="module")
def tiny(tiny_data):
    data_dir, cache_dir = tiny_data(3)
    return read_cache(cache_dir), load_labels(data_dir / "train.csv")


def _task(mode, conditions=(), mirror_right=True, name=None):
    tasks = build_tasks(mode, conditions, mirror_right)
    return next(t for t in tasks if name is None or t.name == name)


def test_crop_sample_shapes_meta_and_target(tiny):
    cache, labels = tiny
    task = _task("competition", name="foraminal")
    items = task.items(cache.samples, labels)
    assert len(items) == 3 * 2 * 5 and task.num_meta == len(LEVELS) + 1
    sample = RoiDataset(cache, task, items)[0]
    assert sample["image"].shape == (1, DEPTH, SIZE, SIZE) and sample["image"].dtype == torch.float32
    item = items.iloc[0]
    assert sample["meta"][LEVELS.index(item["level"])] == 1 and sample["meta"][-1] == item["side"]
    assert sample["grade"].tolist() == list(item["grades"])
    grade = labels.set_index(["study_id", "condition", "level"])["grade"]
    assert item["grades"][0] == grade[(item["study_id"], item["conditions"][0], item["level"])]


def test_right_crops_are_mirrored_onto_the_left(tiny):
    cache, labels = tiny
    task = _task("competition", name="foraminal")
    items = task.items(cache.samples, labels)
    right = items.index[items["side"] == 1][0]
    left = items.index[items["side"] == 0][0]
    ds = RoiDataset(cache, task, items)
    # the fixture marks a right crop's first slice and a left crop's last one: both end up last
    for i in (left, right):
        image = ds[i]["image"][0]
        assert image[-1].mean() > 0.85 and image[0].mean() < 0.6
    plain = RoiDataset(cache, _task("competition", mirror_right=False, name="foraminal"), items.assign(mirror=False))
    assert plain[right]["image"][0][0].mean() > 0.85


def test_multi_mode_mirror_swaps_left_and_right_channels_and_labels(tiny):
    cache, labels = tiny
    task = _task("multi_multiclass")
    assert task.can_mirror and task.in_channels == 3
    items = task.items(cache.samples, labels)
    still = RoiDataset(cache, task, items, train=False)
    flipped = RoiDataset(cache, task, items, train=True, mirror_p=1.0, max_shift_slices=0, max_shift_px=0)
    a, b = still[0], flipped[0]
    # channels: scs, lnfn, rnfn; the mirrored lnfn channel shows the reversed rnfn crop and its grade
    assert torch.equal(b["image"][1], torch.flip(a["image"][2], dims=[0]))
    assert torch.equal(b["image"][2], torch.flip(a["image"][1], dims=[0]))
    assert torch.equal(b["image"][0], torch.flip(a["image"][0], dims=[0]))
    assert b["grade"].tolist() == [a["grade"][0], a["grade"][2], a["grade"][1]]


def test_mirror_only_where_the_labels_can_follow():
    assert not _task("single_multiclass", ["lnfn"]).can_mirror  # a mirrored left foramen is a right one
    assert _task("single_multiclass", ["scs"]).can_mirror  # midline: label unchanged
    assert not _task("competition", name="foraminal").can_mirror  # canonical left view only
    assert _task("competition", mirror_right=False, name="foraminal").can_mirror


def test_single_crop_mirror_flips_the_side_flag(tiny):
    cache, labels = tiny
    task = _task("competition", mirror_right=False, name="foraminal")
    items = task.items(cache.samples, labels)
    ds = RoiDataset(cache, task, items, train=True, mirror_p=1.0, max_shift_slices=0, max_shift_px=0)
    i = int(items.index[items["side"] == 1][0])
    sample = ds[i]
    assert sample["meta"][-1] == 0 and sample["image"][0][-1].mean() > 0.85
    assert sample["grade"].tolist() == list(items.iloc[i]["grades"])


def test_training_draws_depend_on_seed_epoch_and_index_only(tiny):
    cache, labels = tiny
    task = _task("single_multiclass", ["scs"])
    items = task.items(cache.samples, labels)
    make = lambda: RoiDataset(cache, task, items, train=True, augment=StackAugment(resolve_augmentations("default")),
                              seed=3)
    a, b = make(), make()
    assert torch.equal(a[4]["image"], b[4]["image"])
    b.set_epoch(1)
    assert not torch.equal(a[4]["image"], b[4]["image"])
    assert not torch.equal(a[4]["image"], RoiDataset(cache, task, items, train=False)[4]["image"])


@pytest.mark.parametrize("name", list_augmentations())
def test_every_augmentation_moves_all_slices_alike(name):
    rng = np.random.default_rng(0)
    plane = rng.random((SIZE, SIZE)).astype(np.float32)
    stack = np.repeat(plane[None, None], 5, axis=1)  # (C=1, D=5, H, W), identical slices
    out = StackAugment([name])(stack, seed=11)
    assert out.shape == stack.shape and out.dtype == np.float32
    assert np.allclose(out[0, 0], out[0, 4], atol=1e-6) or name == "noise"  # noise is drawn per pixel
    changed = any(not np.array_equal(StackAugment([name])(stack, seed=s), stack) for s in range(10))
    assert changed


def test_unknown_augmentation_is_an_error():
    with pytest.raises(ValueError, match="registered"):
        resolve_augmentations("affine,flipp")
    assert resolve_augmentations("default", ["left_subarticular_stenosis"])[0] == "affine_wide"


def test_localizer_jitter_shifts_ground_truth_crops_and_leaves_oof_crops(tiny, tmp_path):
    cache, labels = tiny
    oof = read_cache(make_oof_cache(cache.root, tmp_path / "oof"))
    task = _task("single_multiclass", ["scs"])
    items = pd.concat([task.items(cache.samples, labels).assign(source="gt"),
                       task.items(oof.samples, labels).assign(source="oof")], ignore_index=True)
    # the tiny crops span 64 x 48 mm in 32 px: 2 mm across -> 1 px, -1 mm down -> -0.67 -> -1 px
    jitter = LocalizerJitter({"scs": {"slice": [1], "dx_mm": [2.0], "dy_mm": [-1.0]}})
    ds = RoiDataset({"gt": cache, "oof": oof}, task, items, train=True, mirror_p=0.0, max_shift_px=0, jitter=jitter)
    gt_i, oof_i = 0, len(items) // 2
    stored = {s: np.load(c.root / items.iloc[i]["files"][0]) for s, c, i in (("gt", cache, gt_i), ("oof", oof, oof_i))}
    np.testing.assert_array_equal(ds[gt_i]["image"][0].numpy(), window_at(stored["gt"], 1, 4, (1, -1, 1)))
    np.testing.assert_array_equal(ds[oof_i]["image"][0].numpy(), center_window(stored["oof"], 1, 4))
    other = LocalizerJitter({"lnfn": {"slice": [1], "dx_mm": [2.0], "dy_mm": [-1.0]}})  # none for scs: uniform
    uniform = RoiDataset({"gt": cache, "oof": oof}, task, items, train=True, mirror_p=0.0, jitter=other)
    seen = set()
    for epoch in range(6):
        uniform.set_epoch(epoch)
        seen.add(uniform[gt_i]["image"].numpy().tobytes())
    assert len(seen) > 1
    with pytest.raises(ValueError, match=r"sources \['oof'\] without a cache"):
        RoiDataset({"gt": cache}, task, items)


def test_contrast_adds_the_protocol_augmentations_to_the_task_preset():
    axial = resolve_augmentations("contrast", ["left_subarticular_stenosis"])
    assert axial[: len(resolve_augmentations("axial"))] == resolve_augmentations("axial")
    assert {"gamma", "coil_bias"} <= set(axial) and "gamma" not in resolve_augmentations("default")
    stack = np.random.default_rng(0).random((5, 24, 24)).astype(np.float32)
    out = StackAugment(axial)(stack, seed=3)
    assert out.shape == stack.shape and out.min() >= 0 and out.max() <= 1
