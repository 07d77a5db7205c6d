import numpy as np
import pytest

from lumbar.preprocess.config import RoiConfig
from lumbar.preprocess.jitter import center_window, random_window, window_at
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
