"""Keypoint model: a timm encoder, a small feature-pyramid decoder, and one 3D heatmap per point.

Why heatmaps rather than regressing (x, y, z) from a pooled feature vector: a heatmap head is
convolutional, so the same weights find a disc level wherever it sits in the image; with a few dozen
training studies and random initialisation on a CPU, direct regression mostly learns the mean position,
while heatmaps reach pixel accuracy (the top competition localizers used heatmaps for the same reason).

Why 2.5D: a sagittal stack resampled to D slices is the encoder's D input channels (one forward pass
per series, cheap enough for CPU training); the head outputs, per point, D x h x w logits, one softmax over
all of them, i.e. a joint distribution over (slice, row, column). The slice comes from its marginal over
(row, column) and the in-plane position from the marginal over slices, each refined to a fraction of a bin
(log-parabola through the peak). The five levels of a column are decoded jointly (`decode_columns`). The
axial model is the same network with D = 1 and the slice and its neighbours as channels. The default
heatmap is full resolution (`out_stride` 1): on the synthetic held-out set the spinal error was 2.9 mm
median at stride 2 (64 decoder channels), 1.1 mm at stride 1 (32 channels).

Targets are separable Gaussians around the labelled point (in heatmap pixels and in slices); the loss is
the cross-entropy between the softmax and that target, averaged over labelled points only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lumbar.core.encoders import NONE, create_timm_model, gray_stats


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class HeatmapNet(nn.Module):
    """Encoder + top-down decoder -> logits (B, K, D, h, w), h = w = input size / out_stride.

    Args:
        backbone: timm model name (built with `features_only=True`).
        in_chans: input channels (sagittal: resampled slices; axial: 2 * neighbours + 1).
        num_points: K.
        depth_bins: D, the slice bins of each point's heatmap (1 for a 2D heatmap).
        decoder_channels: width of the decoder.
        out_stride: heatmap stride relative to the input.
        pretrained: encoder weights, none, imagenet or a local file or folder (`lumbar.core.encoders`); timm
            adapts the first convolution to `in_chans`.

    Inputs in [0, 1] are normalised by the encoder's pretraining statistics (`gray_stats`) in `forward`, so
    training and inference see the same values (`normalize=False`: as runs saved before this did).
    """

    def __init__(
        self,
        backbone: str,
        in_chans: int,
        num_points: int,
        depth_bins: int = 1,
        decoder_channels: int = 64,
        out_stride: int = 2,
        pretrained: str = NONE,
        normalize: bool = True,
    ):
        super().__init__()
        self.encoder = create_timm_model(backbone, pretrained, features_only=True, in_chans=in_chans)
        stats = self.encoder.pretrained_cfg
        self.mean, self.std = gray_stats(stats["mean"], stats["std"]) if normalize else (0.0, 1.0)
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
        feats = self.encoder((x - self.mean) / self.std)
        y = self.smooth[-1](self.lateral[-1](feats[-1]))
        for i in range(len(feats) - 2, -1, -1):
            lat = self.lateral[i](feats[i])
            y = self.smooth[i](
                lat + F.interpolate(y, size=lat.shape[-2:], mode="bilinear", align_corners=False)
            )
        h = x.shape[-2] // self.out_stride
        w = x.shape[-1] // self.out_stride
        if y.shape[-2:] != (h, w):
            y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
        out = self.head(y)
        return out.view(x.shape[0], self.num_points, self.depth_bins, h, w)


def gaussian_targets(
    points: torch.Tensor, shape: tuple[int, int, int], sigma_px: float, sigma_slices: float
) -> torch.Tensor:
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


def heatmap_loss(
    logits: torch.Tensor, points: torch.Tensor, sigma_px: float, sigma_slices: float
) -> torch.Tensor:
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


def _subpixel_peak(prob: torch.Tensor, peak: torch.Tensor) -> torch.Tensor:
    """Refine integer peaks of profiles prob (..., n) by the vertex of a parabola through the log
    probabilities at peak - 1, peak, peak + 1 (exact for a Gaussian peak, unlike a windowed mean, which is
    pulled towards the heavier neighbour). A peak on the first or last index stays there."""
    n = prob.shape[-1]
    peak = peak.long()
    if n < 3:
        return peak.to(prob.dtype)
    lp = torch.log(prob.clamp_min(1e-30))
    i = peak.clamp(1, n - 2)[..., None]
    left, mid, right = (torch.gather(lp, -1, i + o)[..., 0] for o in (-1, 0, 1))
    curvature = left - 2 * mid + right
    offset = torch.where(
        curvature < 0, 0.5 * (left - right) / curvature.clamp(max=-1e-12), torch.zeros_like(mid)
    )
    edge = (peak == 0) | (peak == n - 1)
    return torch.where(edge, peak.to(prob.dtype), peak.to(prob.dtype) + offset.clamp(-0.5, 0.5))


def decode_heatmaps(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, K, D, h, w) -> normalised points (B, K, 3) = (u, v, z) and each point's peak probability.

    The slice is the argmax of the marginal over (row, column), the in-plane position the argmax of the
    marginal over slices; each is refined to a fraction of a bin (`_subpixel_peak`) along the profiles
    through the peak.
    """
    b, k, d, h, w = logits.shape
    prob = F.softmax(logits.float().flatten(2), dim=-1).view(b, k, d, h, w)
    pz = prob.sum((-1, -2))
    pxy = prob.sum(2)
    flat = pxy.flatten(2).argmax(-1)
    row, col = flat // w, flat % w
    row_prob = torch.gather(pxy, 3, col[..., None, None].expand(b, k, h, 1))[..., 0]
    col_prob = torch.gather(pxy, 2, row[..., None, None].expand(b, k, 1, w))[..., 0, :]
    x = _subpixel_peak(col_prob, col)
    y = _subpixel_peak(row_prob, row)
    z = _subpixel_peak(pz, pz.argmax(-1))
    u, v = (x + 0.5) / w, (y + 0.5) / h
    zn = z / (d - 1) if d > 1 else torch.full_like(z, 0.5)
    return torch.stack([u, v, zn], -1), pxy.flatten(2).max(-1).values


def decode_columns(logits: torch.Tensor, columns: Sequence[Sequence[int]]) -> torch.Tensor:
    """Decode points that form head-to-foot columns (the 5 levels of the canal, of each foramen side).

    Decoding each level on its own occasionally puts one level on its neighbour's disc (a 25 mm error)
    while the others are right. Here the levels of a column are placed jointly: the peaks of the column's
    summed heatmap are the candidate discs; the levels are assigned to candidates in head-to-foot order
    maximising the sum of each level's log probability mass near its candidate (dynamic programming);
    each point is then refined as the centroid of the summed heatmap around its candidate, and its slice
    from the summed heatmap's slice profile there. Candidates are local maxima holding at least a tenth
    of the highest; a column with fewer candidates than levels (merged peaks) falls back to
    `decode_heatmaps`.

    Args:
        logits: (B, K, D, h, w).
        columns: point indices of each column, head to foot (e.g. [[0..4]] or [[0..4], [5..9]]).

    Returns:
        Normalised points (B, K, 3); points in no column are decoded independently.
    """
    b, k, d, h, w = logits.shape
    prob = F.softmax(logits.float().flatten(2), dim=-1).view(b, k, d, h, w)
    out, _ = decode_heatmaps(logits)
    r = max(1, h // 40)
    for i in range(b):
        for col in columns:
            col = list(col)
            placed = _place_column(prob[i, col], r)
            if placed is not None:
                out[i, col] = placed
    return out


def _place_column(prob: torch.Tensor, r: int) -> torch.Tensor | None:
    """(n, D, h, w) probabilities of one column -> (n, 3) normalised points, or None without n peaks."""
    n, d, h, w = prob.shape
    pxy = prob.sum(1)
    total = pxy.sum(0)
    rows, cols = _candidate_peaks(total, r, max_peaks=4 * n)
    if len(rows) < n:
        return None
    mass = F.avg_pool2d(pxy[None], 2 * r + 1, 1, r)[0] * (2 * r + 1) ** 2
    score = torch.log(mass[:, rows, cols] + 1e-9).cpu().numpy()  # (n, M)
    points = []
    for j in _monotone_assignment(score):
        y0, x0 = rows[j], cols[j]
        ry, rx = min(r, y0, h - 1 - y0), min(r, x0, w - 1 - x0)
        window = total[y0 - ry : y0 + ry + 1, x0 - rx : x0 + rx + 1]
        y = y0 - ry + _subpixel_peak(window.sum(1), torch.tensor(ry))
        x = x0 - rx + _subpixel_peak(window.sum(0), torch.tensor(rx))
        pz = prob.sum(0)[:, y0 - ry : y0 + ry + 1, x0 - rx : x0 + rx + 1].sum((-1, -2))
        z = _subpixel_peak(pz, pz.argmax()) / (d - 1) if d > 1 else torch.tensor(0.5)
        points.append(torch.stack([(x + 0.5) / w, (y + 0.5) / h, z.to(x.dtype)]))
    return torch.stack(points)


def _candidate_peaks(total: torch.Tensor, r: int, max_peaks: int) -> tuple[list[int], list[int]]:
    """Local maxima of a (h, w) map holding at least a tenth of the highest, at least r + 1 pixels apart
    (greedy, strongest first, so a peak straddling two pixels counts once), sorted head to foot."""
    pooled = F.max_pool2d(total[None, None], 2 * r + 1, 1, r)[0, 0]
    rows, cols = torch.nonzero((total == pooled) & (total >= 0.1 * total.max()), as_tuple=True)
    order = torch.argsort(total[rows, cols], descending=True)
    kept: list[tuple[int, int]] = []
    for i in order.tolist():
        y, x = int(rows[i]), int(cols[i])
        if all(max(abs(y - ky), abs(x - kx)) > r for ky, kx in kept):
            kept.append((y, x))
        if len(kept) == max_peaks:
            break
    kept.sort()
    return [y for y, _ in kept], [x for _, x in kept]


def _monotone_assignment(score: np.ndarray) -> list[int]:
    """Candidate index per level, strictly increasing, maximising the summed score (n levels x M
    candidates)."""
    n, m = score.shape
    best = np.full((n, m), -np.inf)
    back = np.zeros((n, m), dtype=int)
    best[0] = score[0]
    for lv in range(1, n):
        run_max, run_arg = -np.inf, -1
        for j in range(m):
            if j > 0 and best[lv - 1, j - 1] > run_max:
                run_max, run_arg = best[lv - 1, j - 1], j - 1
            if run_arg >= 0:
                best[lv, j] = score[lv, j] + run_max
                back[lv, j] = run_arg
    j = int(np.argmax(best[-1]))
    assigned = [j]
    for lv in range(n - 1, 0, -1):
        j = int(back[lv, j])
        assigned.append(j)
    return assigned[::-1]


def point_confidence(
    logits: torch.Tensor, points: torch.Tensor, radius_px: int, radius_slices: int
) -> torch.Tensor:
    """Each point's own probability mass near where it was placed: (B, K) in [0, 1].

    The mass of point k's joint (slice, row, column) distribution within +-radius_px heatmap pixels and
    +-radius_slices slice bins of its decoded position. A sure, well-placed point keeps most of its mass
    there; a point on a noise image, a point whose heatmap has two rival peaks (the neighbouring disc), or
    one decoded away from its own peak (`decode_columns` placing levels jointly) gets little. With several
    fold models averaged (`ProbabilityMean`), their disagreement spreads the mass and lowers it too.

    Args:
        logits: (B, K, D, h, w), as the decoders take them.
        points: (B, K, 3) normalised (u, v, z), as the decoders return them.
    """
    b, k, d, h, w = logits.shape
    prob = F.softmax(logits.float().flatten(2), dim=-1).view(b, k, d, h, w)
    centre = [points[..., 0] * w - 0.5, points[..., 1] * h - 0.5, points[..., 2] * max(d - 1, 0)]

    def window(n: int, c: torch.Tensor, r: int) -> torch.Tensor:
        grid = torch.arange(n, device=logits.device, dtype=torch.float32)
        return ((grid - torch.round(c.float())[..., None]).abs() <= r).float()

    mx, my, mz = (
        window(w, centre[0], radius_px),
        window(h, centre[1], radius_px),
        window(d, centre[2], radius_slices),
    )
    return torch.einsum("bkdhw,bkd,bkh,bkw->bk", prob, mz, my, mx).clamp(0.0, 1.0)
