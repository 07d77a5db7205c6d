import numpy as np
import pytest

from lumbar.data.dicom import Volume
from lumbar.preprocess.config import RoiConfig
from lumbar.preprocess.filters import list_filters
from lumbar.preprocess.roi import render_sample
from lumbar.preprocess.windows import (
    crop_box,
    interpolate_depth,
    point_in_output,
    slice_positions,
    source_slices,
    warp_crop,
)

SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # rows run posterior, columns run down


def _sagittal_slices(n=9, shape=(120, 100), spacing=0.8, seed=0):
    """One-slice Volumes of a synthetic sagittal stack; slice i is brighter by 100 * i."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        pixels = (rng.integers(0, 50, size=(1, *shape)) + 100 * i).astype(np.uint16)
        out[i] = Volume(
            pixels, np.array([i + 1]), np.array([[4.0 * i, -40.0, 60.0]]),
            np.array([SAGITTAL]), np.array([[spacing, spacing]]),
        )  # fmt: skip
    return out


def _point_on_slice(x, y, spacing=0.8, slice_index=4):
    return np.array([4.0 * slice_index, -40.0 + x * spacing, 60.0 - y * spacing])


def test_thesis_pixel_margins_give_a_128x80_window_of_the_512_reference():
    box = crop_box(300.0, 200.0, (96, 32, 40, 40), "thesis_px", (512, 512), (0.7, 0.7))
    assert (box.width, box.height) == (128.0, 80.0) and (box.x0, box.y0) == (204.0, 160.0)
    small = crop_box(150.0, 100.0, (96, 32, 40, 40), "thesis_px", (256, 256), (1.4, 1.4))
    assert (small.width * 512 / 256, small.height * 512 / 256) == (128.0, 80.0)


def test_thesis_window_before_resizing_is_the_exact_pixel_block():
    image = np.random.default_rng(3).random((512, 512), dtype=np.float32)
    x, y = 300, 200
    box = crop_box(x, y, (96, 32, 40, 40), "thesis_px", image.shape, (0.7, 0.7))
    window = warp_crop(image, box, (80, 128))
    assert window.shape == (80, 128)
    np.testing.assert_allclose(window, image[y - 40 : y + 40, x - 96 : x + 32], atol=1e-6)


def test_mm_margins_follow_pixel_spacing():
    margins = (40.0, 24.0, 24.0, 24.0)
    fine = crop_box(100.0, 100.0, margins, "mm", (512, 512), (0.5, 0.5))
    coarse = crop_box(100.0, 100.0, margins, "mm", (256, 256), (1.0, 1.0))
    assert (fine.width, fine.height) == (128.0, 96.0) and (coarse.width, coarse.height) == (64.0, 48.0)


def test_warp_pads_with_zeros_outside_the_image_and_keeps_the_point_position():
    image = np.ones((50, 50), dtype=np.float32)
    box = crop_box(5.0, 5.0, (10, 10, 10, 10), "thesis_px", (50, 50), (1, 1), reference_px=50)
    out = warp_crop(image, box, (20, 20), pad_px=3)
    assert out.shape == (26, 26) and out[0, 0] == 0.0 and out[-1, -1] == 1.0
    assert point_in_output((10, 10, 10, 10), (20, 20), 3) == (13.0, 13.0)


@pytest.mark.parametrize(
    "label, expected, edge",
    [(0, [0, 0, 0, 1, 2], 2), (1, [0, 0, 1, 2, 3], 1), (4, [2, 3, 4, 5, 6], 0), (9, [7, 8, 9, 9, 9], 2)],
)
def test_target_window_repeats_the_edge_slice(label, expected, edge):
    positions, n_edge = slice_positions("target_window", 10, label, before=2, after=2)
    assert positions.tolist() == expected and n_edge == edge


def test_target_window_pad_slices_and_b1a1():
    positions, _ = slice_positions("target_window", 10, 5, before=1, after=1, pad_slices=1)
    assert positions.tolist() == [3, 4, 5, 6, 7]


@pytest.mark.parametrize("depth", [1, 15, 17, 19, 25])
def test_full_series_resamples_the_stack_to_depth(depth):
    positions, edge = slice_positions("full_series", 20, 3, depth=depth, pad_slices=1)
    assert len(positions) == depth + 2 and edge == 0
    assert np.all(np.diff(positions) >= 0) and positions.min() >= 0 and positions.max() <= 19
    if depth == 1:
        assert positions[1] == pytest.approx(9.5)  # the middle of 20 slices


def test_interpolate_depth_is_linear_between_slices():
    crops = {i: np.full((2, 2), float(i), dtype=np.float32) for i in range(4)}
    positions = np.array([0.0, 0.25, 2.5, 3.0])
    assert source_slices(positions).tolist() == [0, 1, 2, 3]
    out = interpolate_depth(crops, positions)
    np.testing.assert_allclose(out[:, 0, 0], [0.0, 0.25, 2.5, 3.0])


@pytest.mark.parametrize("mode", ["target_window", "full_series"])
@pytest.mark.parametrize("size", [96, 128])
@pytest.mark.parametrize("filter_name", list_filters())
def test_crop_shapes_for_every_mode_size_and_filter(mode, size, filter_name):
    cfg = RoiConfig(mode=mode, size=size, filter=filter_name, depth=15, pad_slices=1, pad_px=4)
    slices = _sagittal_slices()
    positions, _ = slice_positions(mode, len(slices), 4, cfg.before, cfg.after, cfg.depth, cfg.pad_slices)
    out = render_sample(slices, positions, _point_on_slice(50, 60), "spinal_canal_stenosis", cfg)
    assert out.shape == (cfg.out_depth + 2, size + 8, size + 8) and out.dtype == np.float16
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert out.max() > 0.5


def test_rendered_edge_slices_repeat_and_intensity_is_per_volume():
    cfg = RoiConfig(pad_slices=0, pad_px=0, size=32, spinal_mm=(8.0, 8.0, 8.0, 8.0))
    slices = _sagittal_slices()
    positions, edge = slice_positions("target_window", len(slices), 0, 2, 2)
    out = render_sample(
        slices, positions, _point_on_slice(50, 60, slice_index=0), "spinal_canal_stenosis", cfg
    )
    means = out.astype(np.float32).mean(axis=(1, 2))
    assert edge == 2 and means[0] == means[1] == means[2] < means[3] < means[4]
    assert means[0] < 0.15 and means[4] > 0.85  # darkest slice -> ~0, brightest -> ~1 after the 1-99 clip


def test_point_is_projected_onto_each_slice():
    """A stack whose slices shift in-plane: the window follows the anatomy, not the pixel index."""
    shape = (64, 64)
    slices = {}
    for i in range(3):
        pixels = np.zeros((1, *shape), dtype=np.uint16)
        pixels[0, 30, 20 + 5 * i] = 1000  # the same patient point, 5 px further right on each slice
        slices[i] = Volume(
            pixels,
            np.array([i]),
            np.array([[2.0 * i, -5.0 * i, 0.0]]),
            np.array([SAGITTAL]),
            np.array([[1.0, 1.0]]),
        )
    cfg = RoiConfig(before=1, after=1, pad_slices=0, pad_px=0, size=16, spinal_mm=(8.0, 8.0, 8.0, 8.0),
                    low_percentile=0.0, high_percentile=100.0)  # fmt: skip
    positions, _ = slice_positions("target_window", 3, 1, 1, 1)
    point = np.array([2.0, -5.0 + 25.0, -30.0])  # (x=25, y=30) on slice 1
    out = render_sample(slices, positions, point, "spinal_canal_stenosis", cfg).astype(np.float32)
    peaks = [np.unravel_index(np.argmax(s), s.shape) for s in out]
    assert peaks[0] == peaks[1] == peaks[2] == (8, 8)
