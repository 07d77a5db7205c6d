"""Keypoint model: a timm encoder, a small feature-pyramid decoder, and one 3D heatmap per point.

Why heatmaps rather than regressing (x, y, z) from a pooled feature vector: a heatmap head is
convolutional, so the same weights find a disc level wherever it sits in the image; with a few dozen
training studies and random initialisation on a CPU, direct regression mostly learns the mean position,
while heatmaps reach pixel accuracy (the top competition localizers used heatmaps for the same reason).

Why 2.5D: a sagittal stack resampled to D slices is the encoder's D input channels (one forward pass
per series, cheap enough for CPU training); the head outputs, per point, D x h x w logits, one softmax over
all of them, i.e. a joint distribution over (slice, row, column). The slice comes from its marginal over
(row, column) and the in-plane position from the marginal over slices, each refined by a local
soft-argmax for sub-pixel (sub-slice) precision. The axial model is the same network with D = 1 and the
slice and its neighbours as channels.

Targets are separable Gaussians around the labelled point (in heatmap pixels and in slices); the loss is
the cross-entropy between the softmax and that target, averaged over labelled points only.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class HeatmapNet(nn.Module):
    """Encoder + top-down decoder -> logits (B, K, D, h, w), h = w = input size / out_stride.

    Args:
        backbone: timm model name (built with `features_only=True`).
        in_chans: input channels (sagittal: resampled slices; axial: 2 * neighbours + 1).
        num_points: K.
        depth_bins: D, the slice bins of each point's heatmap (1 for a 2D heatmap).
        decoder_channels: width of the decoder.
        out_stride: heatmap stride relative to the input.
        pretrained_path: a local weights file for the encoder; timm loads it (adapting the first
            convolution to `in_chans`); nothing is downloaded. None or "" = random init.
    """

    def __init__(self, backbone: str, in_chans: int, num_points: int, depth_bins: int = 1,
                 decoder_channels: int = 64, out_stride: int = 2, pretrained_path: str | None = None):  # fmt: skip
        super().__init__()
        kwargs = {"features_only": True, "in_chans": in_chans}
        if pretrained_path:
            kwargs["pretrained_cfg_overlay"] = {"file": str(pretrained_path)}
        self.encoder = timm.create_model(backbone, pretrained=bool(pretrained_path), **kwargs)
        self.num_points, self.depth_bins, self.out_stride = num_points, depth_bins, out_stride
        channels = self.encoder.feature_info.channels()
        self.lateral = nn.ModuleList(nn.Conv2d(c, decoder_channels, 1) for c in channels)
        self.smooth = nn.ModuleList(_conv_bn_relu(decoder_channels, decoder_channels) for _ in channels)
        self.head = nn.Sequential(
            _conv_bn_relu(decoder_channels, decoder_channels),
            nn.Conv2d(decoder_channels, num_points * depth_bins, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, S, S) -> logits (B, K, D, S / out_stride, S / out_stride)."""
        feats = self.encoder(x)
        y = self.smooth[-1](self.lateral[-1](feats[-1]))
        for i in range(len(feats) - 2, -1, -1):
            lat = self.lateral[i](feats[i])
            y = self.smooth[i](lat + F.interpolate(y, size=lat.shape[-2:], mode="bilinear", align_corners=False))
        h = x.shape[-2] // self.out_stride
        w = x.shape[-1] // self.out_stride
        if y.shape[-2:] != (h, w):
            y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
        out = self.head(y)
        return out.view(x.shape[0], self.num_points, self.depth_bins, h, w)


def gaussian_targets(points: torch.Tensor, shape: tuple[int, int, int], sigma_px: float,
                     sigma_slices: float) -> torch.Tensor:  # fmt: skip
    """Normalised separable Gaussians (B, K, D, h, w) at normalised points (B, K, 3) = (u, v, z).

    Heatmap pixel j is centred at u = (j + 0.5) / w; slice bin d at z = d / (D - 1).
    """
    d, h, w = shape
    pts = torch.nan_to_num(points.float(), nan=0.5)
    gx = _gauss(torch.arange(w, device=pts.device) + 0.5, pts[..., 0] * w, sigma_px)
    gy = _gauss(torch.arange(h, device=pts.device) + 0.5, pts[..., 1] * h, sigma_px)
    if d > 1:
        gz = _gauss(torch.arange(d, device=pts.device).float(), pts[..., 2] * (d - 1), sigma_slices)
    else:
        gz = torch.ones(*pts.shape[:2], 1, device=pts.device)
    target = gz[..., :, None, None] * gy[..., None, :, None] * gx[..., None, None, :]
    return target / target.flatten(2).sum(-1).clamp_min(1e-12)[..., None, None, None]


def _gauss(grid: torch.Tensor, centre: torch.Tensor, sigma: float) -> torch.Tensor:
    return torch.exp(-0.5 * ((grid.float() - centre[..., None]) / sigma) ** 2)


def heatmap_loss(logits: torch.Tensor, points: torch.Tensor, sigma_px: float, sigma_slices: float) -> torch.Tensor:
    """Cross-entropy between each point's softmax and its Gaussian target, mean over labelled points.

    Args:
        logits: (B, K, D, h, w).
        points: (B, K, 3) normalised targets; a point with NaN (unlabelled or pushed out of the image by
            augmentation) contributes nothing.
    """
    target = gaussian_targets(points, tuple(logits.shape[2:]), sigma_px, sigma_slices)
    logp = F.log_softmax(logits.float().flatten(2), dim=-1)
    per_point = -(target.flatten(2) * logp).sum(-1)
    valid = ~torch.isnan(points).any(-1)
    if not valid.any():
        return logits.sum() * 0.0
    return per_point[valid].mean()


def _local_mean(prob: torch.Tensor, peak: torch.Tensor, radius: int) -> torch.Tensor:
    """Probability-weighted mean index around `peak` along the last axis of prob (..., n).

    The window is +-radius, narrowed symmetrically near the ends (a peak on the edge stays there), so a
    truncated window never pulls the estimate inwards.
    """
    n = prob.shape[-1]
    idx = torch.arange(n, device=prob.device, dtype=prob.dtype)
    peak = peak.to(prob.dtype)
    r = torch.minimum(torch.minimum(peak, n - 1 - peak), torch.full_like(peak, float(radius)))
    near = (idx - peak[..., None]).abs() <= r[..., None]
    weights = prob * near
    return (weights * idx).sum(-1) / weights.sum(-1).clamp_min(1e-12)


def decode_heatmaps(logits: torch.Tensor, radius: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, K, D, h, w) -> normalised points (B, K, 3) = (u, v, z) and each point's peak probability.

    The slice is the argmax of the marginal over (row, column), refined by a local mean over +-1 bin;
    the in-plane position is the argmax of the marginal over slices, refined by a local soft-argmax over
    +-radius pixels along each axis (windows narrowed symmetrically at the edges).
    """
    b, k, d, h, w = logits.shape
    prob = F.softmax(logits.float().flatten(2), dim=-1).view(b, k, d, h, w)
    pz = prob.sum((-1, -2))
    pxy = prob.sum(2)
    flat = pxy.flatten(2).argmax(-1)
    row, col = flat // w, flat % w
    row_prob = torch.gather(pxy, 3, col[..., None, None].expand(b, k, h, 1))[..., 0]
    col_prob = torch.gather(pxy, 2, row[..., None, None].expand(b, k, 1, w))[..., 0, :]
    x = _local_mean(col_prob, col, radius)
    y = _local_mean(row_prob, row, radius)
    z = _local_mean(pz, pz.argmax(-1), 1)
    u, v = (x + 0.5) / w, (y + 0.5) / h
    zn = z / (d - 1) if d > 1 else torch.full_like(z, 0.5)
    return torch.stack([u, v, zn], -1), pxy.flatten(2).max(-1).values
