import numpy as np
import torch

from lumbar.core.runtime import setup_runtime, teardown_runtime
from lumbar.localize.config import LocalizerConfig
from lumbar.localize.fit import fit
from lumbar.localize.slice_refine import (
    CropGeometry,
    SliceScorer,
    draw_batch,
    masked_logits,
    refine_slices,
    scorer_loss,
    window_of,
)
from lumbar.localize.train import _scorer_batches, crop_geometry
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


#: A slice scorer trained on `_bar_stacks` through the localizer's own fit and batches: test_resnet on 16 px.
SCORER = {"backbone": "test_resnet", "refine_size": 16, "refine_crop_mm": 32.0, "refine_jitter_mm": 4.0,
          "refine_window": 2, "batch_size": 16, "lr": 1e-2, "seed": 0, "device": "cpu", "threads": 1}


def _bar_stacks(n: int, seed: int, side: int, depth: int = 9) -> tuple[list[np.ndarray], np.ndarray]:
    """Stacks of `depth` noisy crops: a horizontal bar through the centre on every slice but the true one,
    which has a vertical bar instead. Every slice is equally bright: only the bar's direction tells."""
    rng = np.random.default_rng(seed)
    vertical = np.zeros((side, side), np.float32)
    vertical[:, side // 2 - 1 : side // 2 + 2] = 0.35
    truth = rng.integers(0, depth, n)
    crops = []
    for t in truth:
        stack = 0.3 + 0.08 * rng.standard_normal((depth, side, side)).astype(np.float32) + vertical.T
        stack[t] += vertical - vertical.T
        crops.append(np.clip(stack, 0, 1))
    return crops, truth


def _ranked_first(model, crops, truth, geometry) -> tuple[float, float, float]:
    """(share of windows whose true slice the model scores highest, the chance share, the mean loss) over
    windows around held-out stacks with every training augmentation (offset, jitter, mirror)."""
    x, y = draw_batch(crops, truth, np.arange(len(crops)), SCORER["refine_window"], geometry,
                      np.random.default_rng(3), augment=True)  # fmt: skip
    target = torch.from_numpy(y)
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
    first = masked_logits(logits, target[:, 1:].bool()).argmax(1) == target[:, 0].long()
    chance = float((1 / target[:, 1:].sum(1)).mean())
    return float(first.float().mean()), chance, float(scorer_loss(logits, target))


def test_scorer_learns_to_rank_the_true_slice_first():
    """Trained for 4 epochs on 64 stacks (with the localizer's `fit` and scorer batches: jitter, mirror,
    intensity), the scorer ranks the true slice first in 0.92-1.0 of held-out windows (training seeds 0-2;
    chance 0.30, windows at a stack's ends having fewer candidates; untrained 0.22-0.55, at a held-out loss of
    1.30, near log 5); its epoch loss falls from 1.0-1.2 to below 0.001."""
    config = LocalizerConfig.from_overrides(SCORER)
    geometry = crop_geometry(config)
    side = geometry.padded[1]
    crops, truth = _bar_stacks(64, seed=1, side=side)
    held_crops, held_truth = _bar_stacks(64, seed=2, side=side)
    runtime = setup_runtime("cpu", amp=False, channels_last=False, threads=1)
    try:
        torch.manual_seed(config.seed)
        model = SliceScorer(config.backbone)
        assert model(torch.rand(3, 5, geometry.size, geometry.size)).shape == (3, 5)
        history = fit(model, len(crops), _scorer_batches(crops, truth, config, torch.device("cpu")), scorer_loss,
                      4, config, runtime, progress=False)  # fmt: skip
    finally:
        teardown_runtime(runtime)
    first, chance, loss = _ranked_first(model, held_crops, held_truth, geometry)
    assert history[-1] < 0.1 * history[0], history
    assert chance < 0.35 and first >= 0.85, f"true slice ranked first in {first:.2f} (chance {chance:.2f})"
    assert loss < 0.5 * np.log(5), loss
