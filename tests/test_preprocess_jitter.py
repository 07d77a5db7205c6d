import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from lumbar.preprocess.config import RoiConfig
from lumbar.preprocess.jitter import (
    LocalizerJitter,
    center_window,
    random_window,
    window_at,
    write_localizer_errors,
)
from lumbar.preprocess.windows import label_position, point_in_output


def _marked(cfg: RoiConfig, condition: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A zero array shaped like a cached sample with 1 at the label point (as samples.parquet places it)."""
    d, s = cfg.out_depth + 2 * cfg.pad_slices, cfg.size + 2 * cfg.pad_px
    arr = np.zeros((d, s, s), dtype=np.float16)
    py, px = point_in_output(cfg.margins(condition), (cfg.size, cfg.size), cfg.pad_px)
    pd_ = label_position(cfg.mode, 10, 5, cfg.before, cfg.depth, cfg.pad_slices)
    arr[int(pd_), int(py), int(px)] = 1
    return arr, (pd_, py, px)


@pytest.mark.parametrize("margin_mode", ["mm", "thesis_px"])
@pytest.mark.parametrize("condition", ["spinal_canal_stenosis", "left_subarticular_stenosis"])
def test_random_window_keeps_the_label_point_inside(margin_mode, condition):
    pad_px = 30 if margin_mode == "thesis_px" else 16  # the config allows at most 31 (thesis) and 47 (mm)
    cfg = RoiConfig(margin_mode=margin_mode, size=128, pad_px=pad_px, pad_slices=2)
    arr, _ = _marked(cfg, condition)
    rng = np.random.default_rng(0)
    shifts = set()
    for _ in range(300):
        win = random_window(arr, cfg.pad_slices, cfg.pad_px, rng, max_shift_slices=2, max_shift_px=pad_px)
        assert win.shape == (cfg.out_depth, cfg.size, cfg.size)
        assert win.max() == 1, "the label point left the window"
        shifts.add(tuple(np.argwhere(win == 1)[0]))
    assert len(shifts) > 50  # it does move


def test_point_argument_limits_shifts_near_the_border():
    arr = np.zeros((7, 20, 20), dtype=np.float32)
    arr[3, 4, 17] = 1  # one pixel from the un-padded window's right and top edges (pad 4)
    rng = np.random.default_rng(1)
    for _ in range(200):
        win = random_window(arr, 1, 4, rng, point=(3, 4, 17))
        assert win.shape == (5, 12, 12) and win.max() == 1


def test_center_window_is_the_unpadded_core():
    arr = np.arange(7 * 20 * 20, dtype=np.float32).reshape(7, 20, 20)
    core = center_window(arr, 1, 4)
    np.testing.assert_array_equal(core, arr[1:6, 4:16, 4:16])
    np.testing.assert_array_equal(window_at(arr, 1, 4, (-1, 4, -4)), arr[0:5, 8:20, 0:12])


def test_shifts_beyond_the_pads_are_errors():
    arr = np.zeros((7, 20, 20), dtype=np.float32)
    with pytest.raises(ValueError, match="within the stored pads"):
        random_window(arr, 1, 4, np.random.default_rng(0), max_shift_px=5)
    with pytest.raises(ValueError, match="exceeds the stored pads"):
        window_at(arr, 1, 4, (2, 0, 0))
    with pytest.raises(ValueError, match="do not fit"):
        center_window(arr, 4, 4)


# The localizer's measured errors as window shifts: 2 px/mm across and 1 px/mm down for the spinal canal
# (32 px over 16 mm and over 32 mm), 1 px/mm both ways for the left foramen; pads 1 slice and 4 px.
ERRORS_ROI = RoiConfig(size=32, before=1, after=1, pad_slices=1, pad_px=4, spinal_mm=(8.0, 8.0, 16.0, 16.0),
                       foraminal_mm=(16.0, 16.0, 16.0, 16.0))
ERRORS = pd.DataFrame([  # condition, slice_error, dx_mm, dy_mm -> expected shift (slices, rows, columns)
    ("spinal_canal_stenosis", 0, 0.0, 0.0),  # (0, 0, 0)
    ("spinal_canal_stenosis", 1, 1.2, -2.6),  # (1, -3, 2): dx 2.4 -> 2, dy -2.6 -> -3
    ("spinal_canal_stenosis", -3, -4.0, 9.0),  # (-1, 4, -4): every part clipped at the pads
    ("spinal_canal_stenosis", 0, 0.0, 0.0),  # a repeated error is twice as likely
    ("Left Neural Foraminal Narrowing", 2, 3.4, 0.6),  # (1, 1, 3)
    ("Left Neural Foraminal Narrowing", -1, -0.4, -1.5),  # (-1, -2, 0): -1.5 rounds to even
], columns=["condition", "slice_error", "dx_mm", "dy_mm"])
EXPECTED = {
    "spinal_canal_stenosis": {(0, 0, 0): 0.5, (1, -3, 2): 0.25, (-1, 4, -4): 0.25},
    "left_neural_foraminal_narrowing": {(1, 1, 3): 0.5, (-1, -2, 0): 0.5},
}


def test_localizer_jitter_reproduces_the_error_histogram_per_condition(tmp_path):
    path = write_localizer_errors(ERRORS, tmp_path / "errors.json")
    document = json.loads(path.read_text())
    assert document["kind"] == "lumbar-localizer-errors" and document["version"] == 1
    assert document["conditions"]["spinal_canal_stenosis"]["slice"] == [0, 1, -3, 0]
    jitter = LocalizerJitter.from_file(path)
    assert "right_neural_foraminal_narrowing" not in jitter  # absent: the dataset keeps the uniform jitter
    rng = np.random.default_rng(0)
    for condition, expected in EXPECTED.items():
        draws = Counter(jitter.draw(condition, rng, ERRORS_ROI) for _ in range(4000))
        assert set(draws) == set(expected)
        for shift, p in expected.items():
            assert abs(draws[shift] / 4000 - p) < 0.03, (condition, shift, draws)
        arr = np.arange(5 * 40 * 40, dtype=np.float32).reshape(5, 40, 40)
        for shift in draws:  # every draw is a valid window of the stored array
            assert window_at(arr, 1, 4, shift).shape == (3, 32, 32)


def test_localizer_jitter_in_thesis_px_and_full_series_caches():
    jitter = LocalizerJitter({"spinal_canal_stenosis": {"slice": [1], "dx_mm": [100.0], "dy_mm": [-100.0]}})
    thesis = RoiConfig(size=32, before=1, after=1, pad_slices=1, pad_px=4, margin_mode="thesis_px")
    rng = np.random.default_rng(1)
    draws = [jitter.draw("spinal_canal_stenosis", rng, thesis, uniform_px=2) for _ in range(500)]
    assert {d[0] for d in draws} == {1}  # the slice follows the errors
    assert {d[1] for d in draws} == {d[2] for d in draws} == {-2, -1, 0, 1, 2}  # in-plane stays uniform
    full = RoiConfig(mode="full_series", depth=5, size=32, pad_slices=1, pad_px=4)
    assert jitter.draw("spinal_canal_stenosis", rng, full) == (0, -4, 4)  # the whole stack: no slice shift


def test_localizer_errors_files_are_checked(tmp_path):
    with pytest.raises(ValueError, match="missing column"):
        write_localizer_errors(ERRORS.drop(columns="dx_mm"), tmp_path / "a.json")
    with pytest.raises(ValueError, match="whole slices"):
        write_localizer_errors(ERRORS.assign(slice_error=0.5), tmp_path / "a.json")
    with pytest.raises(ValueError, match="missing values"):
        write_localizer_errors(ERRORS.assign(dy_mm=np.nan), tmp_path / "a.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kind": "lumbar-localizer-errors", "version": 1,
                               "conditions": {"spinal_canal_stenosis": {"slice": [0, 1], "dx_mm": [0.0]}}}))
    with pytest.raises(ValueError, match=f"{bad}: condition 'spinal_canal_stenosis' needs lists"):
        LocalizerJitter.from_file(bad)
    bad.write_text(json.dumps({"kind": "something else"}))
    with pytest.raises(ValueError, match="not a localizer errors file"):
        LocalizerJitter.from_file(bad)
    with pytest.raises(FileNotFoundError, match="not found"):
        LocalizerJitter.from_file(tmp_path / "missing.json")
