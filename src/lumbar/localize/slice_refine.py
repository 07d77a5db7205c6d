"""Slice refinement: choose each sagittal point's slice among the neighbours of the heatmap's choice.

Why a second model: the 2.5D heatmap network sees the slices as input channels, so it learns each slice
position separately and, with few training studies, leans on a prior for how far a foramen lies from the
midline (its slice errors on the two sides of one study have opposite signs). The slice scorer looks at
the same small square (`crop_mm` wide) around the predicted point on each candidate slice, with one set of
weights for every slice (a timm encoder per crop, then a 1D convolution across the candidates to compare
neighbours), and scores which slice holds the point: equivariant along the slice axis, and on native
slices (no resampling).

Candidates: the heatmap's slice +-`window`; outside the stack they are masked. Training draws the
candidate window around the true slice with a random offset (so the truth sits anywhere in it, as the
heatmap's error would put it) and jitters the crop centre by up to `jitter_mm` (its in-plane error).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from lumbar.core.encoders import NONE, create_timm_model, gray_stats
from lumbar.localize.volumes import point_crops


class SliceScorer(nn.Module):
    """Crops (B, W, P, P) of W candidate slices -> logits (B, W).

    Args:
        backbone: timm model name (global-pooled features, `num_classes=0`).
        pretrained: encoder weights, none, imagenet or a local file or folder (`lumbar.core.encoders`).
        hidden: channels of the 1D convolution across candidates.
        normalize: crops in [0, 1] are normalised by the encoder's pretraining statistics (`gray_stats`) in
            `forward` (off: as runs saved before this did).
    """

    def __init__(self, backbone: str, pretrained: str = NONE, hidden: int = 64, normalize: bool = True):
        super().__init__()
        self.encoder = create_timm_model(backbone, pretrained, in_chans=1, num_classes=0)
        stats = self.encoder.pretrained_cfg
        self.mean, self.std = gray_stats(stats["mean"], stats["std"]) if normalize else (0.0, 1.0)
        features = getattr(self.encoder, "head_hidden_size", None) or self.encoder.num_features
        self.mix = nn.Sequential(nn.Conv1d(features, hidden, 3, padding=1), nn.ReLU(inplace=True))
        self.score = nn.Conv1d(hidden, 1, 1)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        b, w, p, q = crops.shape
        x = (crops.reshape(b * w, 1, p, q) - self.mean) / self.std
        feats = self.encoder(x).view(b, w, -1).transpose(1, 2)
        return self.score(self.mix(feats))[:, 0]


def masked_logits(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Candidates outside the stack get a very low score."""
    return logits.float().masked_fill(~valid, -1e4)


def scorer_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the candidate logits; `target` is (B, 1 + W): the true position, then the mask."""
    return F.cross_entropy(masked_logits(logits, target[:, 1:].bool()), target[:, 0].long())


@dataclass
class CropGeometry:
    """How crops are cut: width in mm, output pixels, and the extra margin kept for training jitter."""

    width_mm: float
    size: int
    jitter_mm: float

    @property
    def pad(self) -> int:
        """Extra pixels on each side of a training crop, enough for the largest jitter."""
        return math.ceil(self.jitter_mm / (self.width_mm / self.size))

    @property
    def padded(self) -> tuple[float, int]:
        """Width (mm) and pixels of a training crop with its jitter margin."""
        step = self.width_mm / self.size
        return self.width_mm + 2 * self.pad * step, self.size + 2 * self.pad


def training_crops(
    pixels: np.ndarray, spacing: tuple[float, float], points: pd.DataFrame, geometry: CropGeometry
) -> list[np.ndarray]:
    """Crops of every slice around each true point (rows with x, y in stack pixels), with jitter margin."""
    width, size = geometry.padded
    return [point_crops(pixels, r.x, r.y, spacing, width, size) for r in points.itertuples()]


def window_of(centre: int, window: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidate slice indices centre-window..centre+window clipped to the stack, and which are real."""
    idx = np.arange(centre - window, centre + window + 1)
    return np.clip(idx, 0, n - 1), (idx >= 0) & (idx < n)


def draw_batch(
    crops: list[np.ndarray],
    truth: np.ndarray,
    idx: np.ndarray,
    window: int,
    geometry: CropGeometry,
    rng: np.random.Generator,
    augment: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Training batch: candidate crops (B, W, P, P) and targets (B, 1 + W) = true position, validity mask.

    The window is centred at truth + offset (offset uniform in +-window), the crop centre shifted by up to
    the jitter margin, and with `augment` half the windows are reversed (a left-right mirror of the patient).
    """
    pad, size, width = geometry.pad, geometry.size, 2 * window + 1
    xs = np.empty((len(idx), width, size, size), np.float32)
    ys = np.empty((len(idx), 1 + width), np.float32)
    for b, i in enumerate(idx):
        stack, t = crops[i], int(truth[i])
        offset = int(rng.integers(-window, window + 1)) if augment else 0
        slices, valid = window_of(t + offset, window, len(stack))
        dy, dx = rng.integers(-pad, pad + 1, 2) if augment else (0, 0)
        x = stack[slices, pad + dy : pad + dy + size, pad + dx : pad + dx + size]
        target = window - offset
        if augment and rng.random() < 0.5:
            x, valid, target = x[::-1], valid[::-1], width - 1 - target
        xs[b], ys[b, 0], ys[b, 1:] = x, target, valid
    return xs, ys


@torch.no_grad()
def refine_slices(
    model: nn.Module,
    pixels: np.ndarray,
    spacing: tuple[float, float],
    xy: np.ndarray,
    slices: np.ndarray,
    window: int,
    geometry: CropGeometry,
    device: torch.device,
) -> np.ndarray:
    """The refined slice of each point.

    Args:
        model: the trained scorer (or several averaged, `lumbar.localize.predict.ProbabilityMean`).
        pixels: the normalised stack (n, H, W).
        spacing: (between rows, between columns), mm.
        xy: (K, 2) points in stack pixels (column, row).
        slices: (K,) the heatmap's slice of each point.
        window: candidates on each side.
        geometry: crop width and size.
        device: where the model is.
    """
    batch, masks = [], []
    for (x, y), s in zip(xy, slices):
        idx, valid = window_of(int(s), window, len(pixels))
        batch.append(point_crops(pixels[idx], x, y, spacing, geometry.width_mm, geometry.size))
        masks.append(valid)
    logits = model(torch.from_numpy(np.stack(batch)).to(device))
    best = masked_logits(logits, torch.from_numpy(np.stack(masks)).to(device)).argmax(1).cpu().numpy()
    return np.asarray(slices, int) - window + best
