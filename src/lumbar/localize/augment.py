"""Batch augmentation on the device: one random draw per sample moves its image and its points together.

- Affine (zoom, rotation, shift) by `affine_grid` / `grid_sample`, the same warp for every channel (slice);
  points are moved by the inverse map and dropped (NaN) when they leave the image.
- Depth affine (sagittal stacks only): the slice axis is zoomed and shifted (edge slices repeated), so the
  first convolution sees each structure at many slice positions, as it would across patients placed
  off-centre or scanned with another slice count; the points' z moves with it.
- Mirror (left-right of the patient): a sagittal stack's slice order is reversed (z -> 1 - z), an axial
  slice is flipped horizontally (u -> 1 - u); in both cases left and right points swap (`Task.mirror`).
- Intensity: random contrast, brightness and gamma.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def random_affine(
    images: torch.Tensor,
    points: torch.Tensor,
    generator: torch.Generator,
    max_scale: float,
    max_rotate_deg: float,
    max_shift: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp images (B, C, H, W) and move normalised points (B, K, 3) (u, v in [0, 1]) with them."""
    b = images.shape[0]
    dev = images.device

    def draw(scale: float) -> torch.Tensor:
        return ((torch.rand(b, generator=generator) * 2 - 1) * scale).to(dev)

    zoom = 1.0 + draw(max_scale)
    angle = draw(math.radians(max_rotate_deg))
    shift = torch.stack([draw(2 * max_shift), draw(2 * max_shift)], -1)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # affine_grid maps output coordinates (in [-1, 1]) to input coordinates: in = A @ out + t
    a = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    theta = torch.cat([a, shift[..., None]], -1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    p_in = points[..., :2] * 2 - 1
    p_out = torch.einsum("bij,bkj->bki", torch.linalg.inv(a), p_in - shift[:, None, :])
    uv = (p_out + 1) / 2
    outside = ((uv < 0) | (uv > 1)).any(-1, keepdim=True)
    moved = torch.cat([uv, points[..., 2:]], -1)
    moved = torch.where(outside, torch.full_like(moved, float("nan")), moved)
    return warped, moved


def random_depth_affine(
    images: torch.Tensor, points: torch.Tensor, generator: torch.Generator, max_scale: float, max_shift: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample the channel (slice) axis of (B, D, H, W) by a random zoom and shift; move z of (B, K, 3).

    Channel d sits at z = d / (D - 1); output channel c samples input position
    centre + zoom * (c - centre) + shift * (D - 1), linearly between neighbouring channels.
    """
    b, d = images.shape[:2]
    if d < 2:
        return images, points
    dev = images.device

    def draw(scale: float) -> torch.Tensor:
        return ((torch.rand(b, generator=generator) * 2 - 1) * scale).to(dev)

    zoom, shift = 1.0 + draw(max_scale), draw(max_shift) * (d - 1)
    centre = (d - 1) / 2
    pos = centre + zoom[:, None] * (torch.arange(d, device=dev) - centre) + shift[:, None]  # (B, D)
    pos = pos.clamp(0, d - 1)
    lo = pos.floor().long().clamp(max=d - 2)
    w = (pos - lo)[..., None, None]

    def gather(i: torch.Tensor) -> torch.Tensor:
        return torch.gather(images, 1, i[..., None, None].expand(-1, -1, *images.shape[2:]))

    out = gather(lo) * (1 - w) + gather(lo + 1) * w
    z = (points[..., 2] * (d - 1) - centre - shift[:, None]) / zoom[:, None] + centre
    z = z / (d - 1)
    moved = torch.cat([points[..., :2], z[..., None]], -1)
    outside = ((z < 0) | (z > 1))[..., None]
    return out, torch.where(outside, torch.full_like(moved, float("nan")), moved)


def random_mirror(
    images: torch.Tensor,
    points: torch.Tensor,
    generator: torch.Generator,
    plane: str,
    permutation: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror half of the samples left-right: sagittal -> reverse slices, axial -> flip columns."""
    flip = (torch.rand(images.shape[0], generator=generator) < 0.5).to(images.device)
    if not flip.any():
        return images, points
    images, points = images.clone(), points.clone()
    if plane == "sagittal":
        images[flip] = images[flip].flip(1)
        points[flip, :, 2] = 1 - points[flip, :, 2]
    else:
        images[flip] = images[flip].flip(-1)
        points[flip, :, 0] = 1 - points[flip, :, 0]
    perm = torch.as_tensor(list(permutation), device=points.device)
    points[flip] = points[flip][:, perm]
    return images, points


def random_intensity(images: torch.Tensor, generator: torch.Generator, wide: bool = False) -> torch.Tensor:
    """Per-sample contrast (x0.8-1.2), brightness (+-0.1) and gamma (0.7-1.4), clipped to [0, 1].

    `wide` (LocalizerConfig.contrast = "wide") draws the contrasts real series show: contrast x0.4-1.2 (low-
    contrast series too), a coil-bias ramp (a gain of up to +-30 % across the image in a random direction),
    gamma 0.6-1.6 and, for one sample in ten, inverted intensities (the localizer must find the anatomy, not a
    grey level).
    """
    b, h, w = images.shape[0], images.shape[-2], images.shape[-1]
    shape = (b,) + (1,) * (images.dim() - 1)

    def draw(lo: float, hi: float) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(b, generator=generator)).to(images.device).view(shape)

    if not wide:
        out = (images * draw(0.8, 1.2) + draw(-0.1, 0.1)).clamp(0, 1)
        return out ** draw(0.7, 1.4)
    angle, strength = draw(0.0, 2 * math.pi), draw(-0.3, 0.3)
    ys = torch.linspace(-0.5, 0.5, h, device=images.device).view(h, 1)
    xs = torch.linspace(-0.5, 0.5, w, device=images.device).view(1, w)
    ramp = 1.0 + strength * (torch.cos(angle) * xs + torch.sin(angle) * ys)
    out = ((images * draw(0.4, 1.2) + draw(-0.1, 0.1)) * ramp).clamp(0, 1)
    out = out ** draw(0.6, 1.6)
    invert = draw(0.0, 1.0) < 0.1
    return torch.where(invert, 1.0 - out, out)
