import numpy as np
import pytest
import timm
import torch

from lumbar.localize.augment import random_affine, random_depth_affine, random_intensity, random_mirror
from lumbar.localize.config import LocalizerConfig
from lumbar.localize.heatmap import (
    HeatmapNet,
    decode_columns,
    decode_heatmaps,
    gaussian_targets,
    heatmap_loss,
)
from lumbar.localize.tasks import TASKS
from lumbar.localize.volumes import resample_depth, window_indices

BACKBONE = "resnet10t"


def test_config_overrides_cast_and_reject_typos():
    cfg = LocalizerConfig().with_overrides({"epochs": "3", "lr": "1e-3", "augment": "false", "size": 64.0})
    assert (cfg.epochs, cfg.lr, cfg.augment, cfg.size) == (3, 1e-3, False, 64)
    assert isinstance(cfg.epochs, int) and isinstance(cfg.lr, float)
    with pytest.raises(ValueError, match="unknown setting 'epochz'; did you mean 'epochs'"):
        LocalizerConfig().with_overrides(epochz=3)
    with pytest.raises(ValueError, match="LocalizerConfig.epochs: expected int"):
        LocalizerConfig().with_overrides(epochs="2.5")
    with pytest.raises(ValueError, match="size must be a multiple of 32"):
        LocalizerConfig().with_overrides(size=100)
    assert LocalizerConfig.from_dict(cfg.to_dict()) == cfg


def test_decode_recovers_points_from_their_target():
    pts = torch.tensor([[[0.31, 0.62, 0.4], [0.8, 0.15, 1.0]]])
    target = gaussian_targets(pts, (8, 32, 32), sigma_px=1.5, sigma_slices=1.0)
    assert torch.allclose(target.flatten(2).sum(-1), torch.ones(1, 2))
    decoded, peak = decode_heatmaps(torch.log(target + 1e-12))
    np.testing.assert_allclose(decoded[0].numpy(), pts[0].numpy(), atol=0.005)  # sub-pixel, sub-slice
    assert (peak > 0).all()


def _column_logits(mix_level1: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Five levels down the image; level 1's map puts `mix_level1` of its mass on level 2's disc."""
    discs = torch.tensor([[0.5, v, 0.5] for v in (0.2, 0.35, 0.5, 0.65, 0.8)])
    target = gaussian_targets(discs[None], (4, 64, 64), 1.5, 1.0)[0]
    target[1] = (1 - mix_level1) * target[1] + mix_level1 * target[2]
    return torch.log(target + 1e-12)[None], discs


def test_column_decoding_keeps_levels_on_their_own_discs():
    logits, discs = _column_logits(0.7)  # level 1's own peak sits on level 2's disc
    alone, _ = decode_heatmaps(logits)
    assert abs(float(alone[0, 1, 1]) - 0.5) < 0.02  # decoded on its own: the neighbour's disc
    joint = decode_columns(logits, [range(5)])
    np.testing.assert_allclose(joint[0].numpy(), discs.numpy(), atol=0.005)
    assert (torch.diff(joint[0, :, 1]) > 0).all()


def test_column_decoding_falls_back_when_peaks_merge():
    logits, _ = _column_logits(0.0)
    logits[0, 4] = logits[0, 3]  # two levels on one disc: four peaks for five levels
    np.testing.assert_allclose(decode_columns(logits, [range(5)]).numpy(), decode_heatmaps(logits)[0].numpy())


def test_loss_prefers_the_right_place_and_ignores_unlabelled_points():
    pts = torch.tensor([[[0.3, 0.6, 0.5], [float("nan")] * 3]])
    good = torch.log(gaussian_targets(torch.tensor([[[0.3, 0.6, 0.5], [0.5, 0.5, 0.5]]]), (4, 16, 16), 1.5, 1.0))
    bad = torch.log(gaussian_targets(torch.tensor([[[0.7, 0.2, 0.5], [0.3, 0.6, 0.5]]]), (4, 16, 16), 1.5, 1.0))
    assert heatmap_loss(good, pts, 1.5, 1.0) < heatmap_loss(bad, pts, 1.5, 1.0)
    # only the labelled point counts: changing the unlabelled point's logits changes nothing
    other = good.clone()
    other[:, 1] = 0
    assert heatmap_loss(other, pts, 1.5, 1.0) == pytest.approx(float(heatmap_loss(good, pts, 1.5, 1.0)))


def test_network_shape_and_backward():
    net = HeatmapNet(BACKBONE, in_chans=6, num_points=5, depth_bins=6, decoder_channels=16, out_stride=2)
    x = torch.rand(2, 6, 64, 64)
    out = net(x)
    assert out.shape == (2, 5, 6, 32, 32)
    heatmap_loss(out, torch.rand(2, 5, 3), 1.5, 1.0).backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_pretrained_weights_come_from_a_local_file(tmp_path):
    source = timm.create_model(BACKBONE, pretrained=False)
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    net = HeatmapNet(BACKBONE, in_chans=5, num_points=2, pretrained=str(tmp_path / "weights.pth"))
    np.testing.assert_array_equal(
        net.encoder.state_dict()["layer3.0.conv1.weight"].numpy(), source.state_dict()["layer3.0.conv1.weight"].numpy()
    )
    assert net.encoder.state_dict()["conv1.0.weight"].shape[1] == 5  # first convolution adapted to 5 channels


def test_affine_moves_points_with_the_image():
    img = torch.zeros(4, 3, 64, 64)
    pts = torch.tensor([[0.3, 0.7, 0.5]]).repeat(4, 1, 1)
    img[:, :, round(0.7 * 64 - 0.5), round(0.3 * 64 - 0.5)] = 1.0
    img = torch.nn.functional.avg_pool2d(img, 5, 1, 2)  # a blob, so bilinear sampling keeps a clear peak
    gen = torch.Generator().manual_seed(1)
    warped, moved = random_affine(img, pts, gen, max_scale=0.2, max_rotate_deg=20, max_shift=0.1)
    for b in range(4):
        row, col = divmod(int(warped[b, 0].argmax()), 64)
        assert abs((col + 0.5) / 64 - float(moved[b, 0, 0])) < 2.5 / 64
        assert abs((row + 0.5) / 64 - float(moved[b, 0, 1])) < 2.5 / 64
    assert torch.equal(moved[..., 2], pts[..., 2])


def test_affine_drops_points_pushed_outside():
    pts = torch.tensor([[[0.99, 0.5, 0.5], [0.5, 0.5, 0.5]]]).repeat(32, 1, 1)
    gen = torch.Generator().manual_seed(0)
    _, moved = random_affine(torch.rand(32, 1, 16, 16), pts, gen, max_scale=0.0, max_rotate_deg=0, max_shift=0.2)
    edge, centre = moved[:, 0], moved[:, 1]
    assert 0 < int(torch.isnan(edge[:, 0]).sum()) < 32  # shifted right of the image about half the time
    assert not torch.isnan(centre).any()
    inside = edge[~torch.isnan(edge[:, 0])]
    assert ((inside[:, :2] >= 0) & (inside[:, :2] <= 1)).all()


def test_depth_affine_moves_z_with_the_slices():
    d = 20
    planes = torch.arange(d, dtype=torch.float32).view(1, d, 1, 1).repeat(16, 1, 4, 4)  # channel c holds value c
    pts = torch.tensor([[0.5, 0.5, 7 / (d - 1)], [0.5, 0.5, 12 / (d - 1)]]).repeat(16, 1, 1)
    out, moved = random_depth_affine(planes, pts, torch.Generator().manual_seed(3), max_scale=0.2, max_shift=0.1)
    assert out.shape == planes.shape and not torch.equal(out, planes)
    for b in range(16):
        for k, value in ((0, 7.0), (1, 12.0)):
            c = float(moved[b, k, 2]) * (d - 1)  # the point's new (fractional) channel still shows its slice
            lo = min(int(c), d - 2)
            seen = out[b, lo, 0, 0] * (1 - (c - lo)) + out[b, lo + 1, 0, 0] * (c - lo)
            assert abs(float(seen) - value) < 1e-3
    assert torch.equal(moved[..., :2], pts[..., :2])


def test_mirror_swaps_sides():
    task = TASKS["sag_t1"]
    img = torch.arange(4.0).view(1, 4, 1, 1).repeat(64, 1, 2, 2)
    pts = torch.rand(64, 10, 3)
    gen = torch.Generator().manual_seed(0)
    out_img, out_pts = random_mirror(img, pts, gen, "sagittal", task.mirror)
    flipped = out_img[:, 0, 0, 0] == 3
    assert 0 < flipped.sum() < 64
    assert torch.allclose(out_pts[flipped, :5, 2], 1 - pts[flipped, 5:, 2])  # right became left, z mirrored
    assert torch.equal(out_pts[~flipped], pts[~flipped])
    axial = TASKS["axial"]
    a_img, a_pts = random_mirror(torch.rand(64, 3, 8, 8), torch.rand(64, 2, 3), torch.Generator().manual_seed(0),
                                 "axial", axial.mirror)  # fmt: skip
    assert a_img.shape == (64, 3, 8, 8) and a_pts.shape == (64, 2, 3)


def test_depth_resampling_and_windows():
    stack = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 2, 2), np.float32)
    out = resample_depth(stack, 9)
    np.testing.assert_allclose(out[:, 0, 0], np.linspace(0, 4, 9))
    assert resample_depth(stack, 5) is not None and resample_depth(stack, 5).shape == (5, 2, 2)
    assert window_indices(0, 2, 10) == [0, 0, 0, 1, 2] and window_indices(9, 1, 10) == [8, 9, 9]


def test_wide_intensity_augmentation_stays_in_range_and_sometimes_inverts():
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(400, 1, 32, 32).contiguous()
    out = random_intensity(ramp, torch.Generator().manual_seed(0), wide=True)
    assert out.min() >= 0 and out.max() <= 1 and out.shape == ramp.shape
    falling = (out[:, 0, 16, -4] < out[:, 0, 16, 3]).float().mean()  # an inverted ramp falls left to right
    assert 0.04 < falling < 0.2
    again = random_intensity(ramp, torch.Generator().manual_seed(0), wide=True)
    assert torch.equal(out, again)
    standard = random_intensity(ramp, torch.Generator().manual_seed(0))
    assert (standard[:, 0, 16, -4] >= standard[:, 0, 16, 3]).all()  # the standard draw never inverts
