import numpy as np
import torch

from lumbar.localize.slice_refine import (
    CropGeometry,
    SliceScorer,
    draw_batch,
    refine_slices,
    scorer_loss,
    window_of,
)
from lumbar.localize.volumes import point_crops

GEOMETRY = CropGeometry(width_mm=20.0, size=8, jitter_mm=5.0)  # 2.5 mm per pixel, 2 pixels of jitter margin


def _labelled_stack(n: int) -> np.ndarray:
    """Crops of n slices whose pixels hold their slice index."""
    size = GEOMETRY.padded[1]
    return np.arange(n, dtype=np.float32)[:, None, None] * np.ones((n, size, size), np.float32)


def test_window_of_masks_slices_outside_the_stack():
    idx, valid = window_of(1, 2, 10)
    assert list(idx) == [0, 0, 1, 2, 3] and list(valid) == [False, True, True, True, True]


def test_training_windows_hold_the_true_slice_at_the_target():
    crops = [_labelled_stack(12), _labelled_stack(6)]
    truth = np.array([10, 0])
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = draw_batch(crops, truth, np.array([0, 1]), 2, GEOMETRY, rng, augment=True)
        assert x.shape == (2, 5, 8, 8)
        for b in range(2):
            target, valid = int(y[b, 0]), y[b, 1:].astype(bool)
            assert valid[target] and x[b, target, 0, 0] == truth[b]
            steps = np.diff(x[b, valid, 0, 0])
            assert np.all(steps == 1) or np.all(steps == -1)  # consecutive slices (reversed when mirrored)
    x, y = draw_batch(crops, truth, np.array([0]), 2, GEOMETRY, rng, augment=False)
    assert int(y[0, 0]) == 2 and list(x[0, :, 0, 0]) == [8, 9, 10, 11, 11] and list(y[0, 1:]) == [1, 1, 1, 1, 0]


def test_point_crops_are_centred_in_millimetres():
    img = np.zeros((2, 100, 100), np.float32)
    img[:, 40, 60] = 1.0  # row 40, column 60
    crops = point_crops(img, x=60.0, y=40.0, spacing=(0.5, 0.5), width_mm=4.0, size=9)
    assert crops.shape == (2, 9, 9)
    row, col = np.unravel_index(np.argmax(crops[0]), (9, 9))
    assert (row, col) == (4, 4)


class _PickBrightest(torch.nn.Module):
    """A stand-in scorer: the candidate with the highest mean intensity wins."""

    def forward(self, crops):
        return crops.mean((-1, -2))


def test_refine_moves_to_the_best_candidate_and_never_leaves_the_stack():
    n = 10
    pixels = np.zeros((n, 50, 50), np.float32)
    pixels[7] = 1.0
    xy = np.array([[25.0, 25.0], [25.0, 25.0], [25.0, 25.0]])
    refined = refine_slices(_PickBrightest(), pixels, (1.0, 1.0), xy, np.array([6, 9, 2]), 2, GEOMETRY,
                            torch.device("cpu"))  # fmt: skip
    assert list(refined) == [7, 7, 0]  # the last: all candidates equal, the first real one


def test_scorer_trains_on_its_loss():
    model = SliceScorer("test_resnet")
    crops = torch.rand(3, 5, 32, 32)
    logits = model(crops)
    assert logits.shape == (3, 5)
    target = torch.tensor([[2, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 0], [4, 0, 1, 1, 1, 1]], dtype=torch.float32)
    loss = scorer_loss(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters() if p.requires_grad)
