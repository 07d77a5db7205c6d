import numpy as np
import pytest
from scipy import ndimage

from lumbar.preprocess.filters import apply_filter, get_filter, list_filters, register_filter

EXPECTED = {"none", "mean_median", "median", "gaussian", "clahe", "hist_eq", "unsharp"}


def test_every_thesis_filter_is_registered():
    assert EXPECTED <= set(list_filters())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_filter_keeps_shape_and_range(name):
    stack = np.random.default_rng(0).random((3, 40, 56), dtype=np.float32)
    out = apply_filter(name, stack)
    assert out.shape == stack.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    if name != "none":
        assert not np.allclose(out, stack), f"{name} left a noisy stack unchanged"


def test_mean_median_is_the_average_of_mean_and_median():
    stack = np.random.default_rng(2).random((2, 20, 24), dtype=np.float32)
    ref = 0.5 * (ndimage.uniform_filter(stack, size=(1, 3, 3)) + ndimage.median_filter(stack, size=(1, 3, 3)))
    out = apply_filter("mean_median", stack)
    np.testing.assert_allclose(out[:, 1:-1, 1:-1], ref[:, 1:-1, 1:-1], atol=1e-5)


def test_filters_work_per_slice():
    stack = np.zeros((3, 16, 16), dtype=np.float32)
    stack[1, 8, 8] = 1.0
    out = apply_filter("gaussian", stack)
    assert out[0].max() == 0 and out[2].max() == 0 and out[1].max() > 0


def test_registry_rejects_duplicates_and_unknown_names():
    with pytest.raises(ValueError, match="registered twice"):
        register_filter("median")(lambda s: s)
    with pytest.raises(ValueError, match="unknown filter 'sharpen'"):
        get_filter("sharpen")
    with pytest.raises(ValueError, match="D, H, W"):
        apply_filter("none", np.zeros((4, 4)))
