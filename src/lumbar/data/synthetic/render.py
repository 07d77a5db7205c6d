"""Slice images of a phantom: the signal at every pixel's patient position, with the scanner's flaws.

Every image is the phantom evaluated at its pixels' patient positions (see `Stack.pixel_grid`), so the
sagittal and axial series of a study show one anatomy by construction. Each slice averages samples across its
thickness (partial volume); then a smooth receive-coil bias (brighter towards the back, where the spine coil
is) multiplies the signal, and Rician noise (the magnitude of complex Gaussian noise) is added.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from lumbar.data.synthetic.anatomy import Phantom
from lumbar.data.synthetic.geometry import Stack

#: Pixels rendered at once (a few hundred MB of intermediate arrays at most).
CHUNK_PIXELS = 1_000_000


@dataclass(frozen=True)
class ScannerEffects:
    """One series' acquisition flaws.

    Attributes:
        noise: standard deviation of each complex noise channel, relative to CSF on T2 (~1).
        bias: (3,) log-gain per 100 mm along patient x, y, z (a smooth coil sensitivity).
        bias_centre: (3,) patient point where the gain is 1.
    """

    noise: float
    bias: np.ndarray
    bias_centre: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, centre: np.ndarray) -> ScannerEffects:
        """Noise 2-5 %, bias up to about +-30 % over the field of view, strongest front to back."""
        bias = np.array([rng.normal(0.0, 0.08), rng.uniform(0.1, 0.35), rng.normal(0.0, 0.08)])
        return cls(noise=rng.uniform(0.02, 0.05), bias=bias, bias_centre=np.asarray(centre, float))


def render_stack(
    phantom: Phantom,
    stack: Stack,
    sequence: str,
    effects: ScannerEffects,
    rng: np.random.Generator,
    depth_samples: int = 2,
) -> np.ndarray:
    """The (n, rows, cols) float32 images of one stack, before storage scaling.

    Args:
        phantom: the study's anatomy.
        stack: slice geometry.
        sequence: "T1", "T2" or "STIR".
        effects: noise and bias of the series.
        rng: draws the noise.
        depth_samples: samples across the slice thickness averaged per pixel.
    """
    edge = float(max(stack.pixel_spacing))
    image = np.zeros((len(stack), stack.rows, stack.cols), np.float32)
    offsets = ((np.arange(depth_samples) + 0.5) / depth_samples - 0.5) * stack.thickness
    per_chunk = max(1, CHUNK_PIXELS // (stack.rows * stack.cols))  # bounds memory at large image sizes
    for start in range(0, len(stack), per_chunk):
        part = replace(stack, positions=stack.positions[start : start + per_chunk])
        for off in offsets:
            points = part.pixel_grid(np.full(len(part), off))
            image[start : start + len(part)] += phantom.intensity(points, sequence, edge=edge)
        points = part.pixel_grid()
        centre = effects.bias_centre.astype(np.float32)
        image[start : start + len(part)] *= np.exp(
            np.einsum("...k,k->...", points - centre, (effects.bias / 100.0).astype(np.float32))
        )
    image /= depth_samples
    noise = rng.standard_normal((2, *image.shape), dtype=np.float32) * np.float32(effects.noise)
    return np.sqrt((image + noise[0]) ** 2 + noise[1] ** 2)
