"""Every registered filter against an independent reference: scipy.ndimage for the smoothing filters, and the
published histogram algorithms (global equalisation, OpenCV's CLAHE) restated in numpy for the 8-bit ones."""

import numpy as np
import pytest
from scipy import ndimage

from lumbar.preprocess.filters import apply_filter, get_filter, list_filters, register_filter

EXPECTED = {"none", "mean_median", "median", "gaussian", "clahe", "hist_eq", "unsharp"}
#: (H, W) of the test slices: 8 x 8 CLAHE tiles of 16 x 16 pixels (no padding), where a clip limit of 2 is a
#: count of 2 per level and clips the noise's histogram.
SHAPE = (128, 128)


def _u8(image: np.ndarray) -> np.ndarray:
    """8-bit levels of a slice whose values are float32 (scaled in float32, as a float32 slice is)."""
    return np.rint(np.clip(image.astype(np.float32), 0, 1) * np.float32(255)).astype(np.int64)


def _hist_eq(image: np.ndarray) -> np.ndarray:
    """Global histogram equalisation of 8-bit levels: level v -> 255 * (count of levels in (v_min, v]) /
    (pixels - count of v_min), the lowest level present mapped to 0."""
    u8 = _u8(image)
    hist = np.bincount(u8.ravel(), minlength=256)
    lowest = int(np.flatnonzero(hist)[0])
    cdf = np.cumsum(hist) - hist[lowest]
    lut = np.rint(cdf * 255.0 / (u8.size - hist[lowest]))
    lut[lowest] = 0
    return lut[u8] / 255.0


def _clahe(image: np.ndarray, clip: float = 2.0, tiles: int = 8) -> np.ndarray:
    """Contrast-limited adaptive equalisation as Zuiderveld describes it and OpenCV implements it: per tile an
    8-bit histogram clipped at clip * area / 256 (at least 1), the excess spread evenly (the remainder one
    count at a time, at a fixed stride), its scaled CDF as the tile's mapping; each pixel bilinearly
    interpolates the mappings of the four tiles whose centres surround it (edge tiles extended)."""
    u8 = _u8(image)
    h, w = u8.shape
    th, tw = h // tiles, w // tiles
    area = th * tw
    limit = max(int(clip * area / 256), 1)
    luts = np.empty((tiles, tiles, 256))
    for ty in range(tiles):
        for tx in range(tiles):
            hist = np.bincount(u8[ty * th:(ty + 1) * th, tx * tw:(tx + 1) * tw].ravel(), minlength=256)
            excess = int(np.maximum(hist - limit, 0).sum())
            hist = np.minimum(hist, limit) + excess // 256
            residual = excess % 256
            if residual:
                hist[::max(256 // residual, 1)][:residual] += 1
            luts[ty, tx] = np.rint(np.cumsum(hist) * 255.0 / area)

    def corners(n: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        f = np.arange(n) / size - 0.5  # position in tile units, from the first tile's centre
        first = np.floor(f).astype(int)
        return np.maximum(first, 0), np.minimum(first + 1, tiles - 1), f - first

    y1, y2, ya = (a[:, None] for a in corners(h, th))
    x1, x2, xa = (a[None, :] for a in corners(w, tw))
    out = ((luts[y1, x1, u8] * (1 - xa) + luts[y1, x2, u8] * xa) * (1 - ya)
           + (luts[y2, x1, u8] * (1 - xa) + luts[y2, x2, u8] * xa) * ya)
    return np.rint(out) / 255.0


def _gaussian(image: np.ndarray) -> np.ndarray:
    return ndimage.gaussian_filter(image.astype(np.float64), 1.0, mode="mirror", truncate=4.0)


#: name -> (reference on one float64 slice, tolerance). Borders as OpenCV's: mirrored without repeating the
#: edge (scipy "mirror") for the box and Gaussian filters, the edge repeated ("nearest") for the median.
REFERENCES = {
    "none": (lambda im: im, 0.0),
    "median": (lambda im: ndimage.median_filter(im, size=3, mode="nearest"), 1e-6),
    "mean_median": (lambda im: 0.5 * (ndimage.uniform_filter(im, size=3, mode="mirror")
                                      + ndimage.median_filter(im, size=3, mode="nearest")), 1e-5),
    "gaussian": (_gaussian, 1e-5),
    "unsharp": (lambda im: np.clip(2.0 * im - _gaussian(im), 0.0, 1.0), 1e-5),
    "hist_eq": (_hist_eq, 1.01 / 255),  # OpenCV interpolates in float32: a level may round the other way
    "clahe": (_clahe, 1.01 / 255),
}


def _stack() -> np.ndarray:
    """Three slices of noise over a ramp and a bright square, each slice different (values in [0, 1])."""
    rng = np.random.default_rng(0)
    x = np.arange(SHAPE[1])[None, :]
    slices = []
    for k in range(3):
        image = 0.15 + 0.5 * x / SHAPE[1] + 0.12 * rng.standard_normal(SHAPE)
        image[10 + 4 * k : 26 + 4 * k, 20:36] += 0.3
        slices.append(image)
    return np.clip(np.stack(slices), 0.0, 1.0).astype(np.float32)


def test_every_thesis_filter_is_registered():
    assert EXPECTED <= set(list_filters())


@pytest.mark.parametrize("name", list_filters())
def test_each_filter_matches_its_reference_slice_by_slice(name):
    """Each registered filter, on a small stack, equals an independent implementation applied to each slice
    on its own (so a filter that mixes slices fails too); a filter added without a reference fails here."""
    assert name in REFERENCES, f"filter {name!r} has no reference implementation in this test"
    reference, atol = REFERENCES[name]
    stack = _stack()
    out = apply_filter(name, stack)
    assert out.shape == stack.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    expected = np.stack([reference(image.astype(np.float64)) for image in stack])
    np.testing.assert_allclose(out, expected, rtol=0, atol=atol, err_msg=name)
    if atol > 1e-5:  # rounding may move a few 8-bit levels, not many
        assert np.mean(np.abs(out - expected) > 1e-6) < 0.01, name
    if name != "none":
        assert not np.allclose(out, stack, atol=1e-3), f"{name} left a noisy stack unchanged"


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
