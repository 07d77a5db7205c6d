"""Crop geometry: which slices a sample takes, where its window lies on each, and the resampling.

In-plane: the window around a label point spans (left, right, up, down) margins, in millimetres (through
each slice's PixelSpacing, so every scanner gives the same anatomy) or in the thesis's pixels of the slice
resized to a 512 x 512 reference (left 96, right 32, up 40, down 40: a 128 x 80 window). The label point
is projected through DICOM geometry onto every slice of the window, so a slice that was resized on load
or a stack whose slices shift in-plane still gets the same anatomy. The window is resampled to the output
size with one affine warp per slice (bilinear, zeros outside the image, Gaussian anti-aliasing when
shrinking), extended by `pad_px` output pixels on each side for jitter.

Through-plane, as positions in the stack's geometric order (index 0 = right-most sagittal slice,
head-most axial slice): `target_window` takes B slices before and A after the labelled one;
`full_series` samples the whole stack at `depth` evenly spaced positions (slice centres, as
`scipy.ndimage.zoom` / `torch.nn.functional.interpolate(align_corners=False)` would), linearly
interpolated. Positions beyond the series repeat the edge slice (the thesis dropped such samples; they
are kept and counted in `edge_slices`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from lumbar.preprocess.config import MARGIN_MODES, MODES, Margins


@dataclass(frozen=True)
class CropBox:
    """A window on one slice in source pixels: columns [x0, x0 + width), rows [y0, y0 + height)."""

    x0: float
    y0: float
    width: float
    height: float


def crop_box(
    x: float,
    y: float,
    margins: Margins,
    margin_mode: str,
    shape: tuple[int, int],
    spacing: tuple[float, float],
    reference_px: int = 512,
) -> CropBox:
    """The window around a point on a slice.

    Args:
        x, y: the point (column, row) in the slice's pixels.
        margins: (left, right, up, down), in mm or in reference pixels.
        margin_mode: "mm" or "thesis_px".
        shape: the slice's (rows, columns).
        spacing: the slice's PixelSpacing (between rows, between columns), mm.
        reference_px: side of the reference slice of "thesis_px".
    """
    left, right, up, down = margins
    if margin_mode == "mm":
        per_x, per_y = 1.0 / float(spacing[1]), 1.0 / float(spacing[0])
    elif margin_mode == "thesis_px":
        per_x, per_y = shape[1] / reference_px, shape[0] / reference_px
    else:
        raise ValueError(f"margin_mode must be one of {MARGIN_MODES}, got {margin_mode!r}")
    return CropBox(x - left * per_x, y - up * per_y, (left + right) * per_x, (up + down) * per_y)


def point_in_output(margins: Margins, out_hw: tuple[int, int], pad_px: int) -> tuple[float, float]:
    """(row, column) of the label point in a crop of `out_hw` stored with `pad_px` on each side."""
    left, right, up, down = margins
    return pad_px + out_hw[0] * up / (up + down), pad_px + out_hw[1] * left / (left + right)


def warp_crop(image: np.ndarray, box: CropBox, out_hw: tuple[int, int], pad_px: int = 0) -> np.ndarray:
    """Resample the window `box` of a 2D image to `out_hw`, plus `pad_px` output pixels on every side.

    Output pixel (i, j) samples source (x0 + (j - pad_px) * sx, y0 + (i - pad_px) * sy) with
    sx = width / out_w, sy = height / out_h: an integer box at scale 1 is an exact copy.

    Returns:
        float32 (out_h + 2 * pad_px, out_w + 2 * pad_px); zeros where the window leaves the image.
    """
    out_h, out_w = out_hw
    sx, sy = box.width / out_w, box.height / out_h
    image = np.asarray(image, dtype=np.float32)
    if sx > 1.0 or sy > 1.0:  # shrinking: blur first so the bilinear samples do not alias
        sigma_x, sigma_y = (np.sqrt(max(s * s - 1.0, 0.0)) / 2.0 for s in (sx, sy))
        image = cv2.GaussianBlur(image, (0, 0), sigmaX=max(sigma_x, 1e-3), sigmaY=max(sigma_y, 1e-3))
    matrix = np.array([[sx, 0.0, box.x0 - pad_px * sx], [0.0, sy, box.y0 - pad_px * sy]], dtype=np.float64)
    return cv2.warpAffine(
        image,
        matrix,
        (out_w + 2 * pad_px, out_h + 2 * pad_px),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0.0,
    )


def slice_positions(
    mode: str,
    n_slices: int,
    label_index: int,
    before: int = 2,
    after: int = 2,
    depth: int = 15,
    pad_slices: int = 0,
) -> tuple[np.ndarray, int]:
    """Source positions (fractional slice indices) of every output slice, edges clamped.

    Args:
        mode: "target_window" or "full_series".
        n_slices: slices in the stack.
        label_index: the labelled slice's position in the stack (target_window centre).
        before, after: target_window extent; depth: full_series output slices.
        pad_slices: extra output slices on each side (jitter context).

    Returns:
        positions, shape (out_depth + 2 * pad_slices,), within [0, n_slices - 1]; and how many of the
        un-padded output slices lay beyond the series and repeat an edge slice.
    """
    if n_slices < 1:
        raise ValueError("a stack needs at least one slice")
    if mode == "target_window":
        if not 0 <= label_index < n_slices:
            raise IndexError(f"label slice {label_index} outside a stack of {n_slices} slices")
        raw = label_index + np.arange(-before - pad_slices, after + pad_slices + 1, dtype=np.float64)
    elif mode == "full_series":
        k = np.arange(-pad_slices, depth + pad_slices, dtype=np.float64)
        raw = (k + 0.5) * n_slices / depth - 0.5
    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    core = raw[pad_slices : len(raw) - pad_slices]
    edge = int(np.sum((core < -1e-9) | (core > n_slices - 1 + 1e-9)))
    if mode == "full_series":
        edge = 0  # half-slice overhang of slice-centre sampling is not a missing slice
    return np.clip(raw, 0.0, n_slices - 1.0), edge


def label_position(
    mode: str, n_slices: int, label_index: int, before: int, depth: int, pad_slices: int
) -> float:
    """Where the labelled slice sits along the depth of the stored (padded) array."""
    if mode == "target_window":
        return float(pad_slices + before)
    return float(pad_slices + (label_index + 0.5) * depth / n_slices - 0.5)


def source_slices(positions: np.ndarray) -> np.ndarray:
    """The stack indices whose pixels `interpolate_depth` needs for these positions."""
    return np.unique(np.concatenate([np.floor(positions), np.ceil(positions)]).astype(np.int64))


def interpolate_depth(crops: dict[int, np.ndarray], positions: np.ndarray) -> np.ndarray:
    """Stack per-slice crops at fractional positions, linear between neighbouring slices.

    Args:
        crops: stack index -> 2D crop (every index of `source_slices(positions)`).
        positions: output positions from `slice_positions`.
    """
    out = []
    for p in positions:
        i0, i1 = int(np.floor(p)), int(np.ceil(p))
        w = float(p - i0)
        out.append(crops[i0] if w < 1e-6 or i0 == i1 else (1.0 - w) * crops[i0] + w * crops[i1])
    return np.stack(out).astype(np.float32, copy=False)


def project_in_plane(
    point_mm: np.ndarray, positions: np.ndarray, orientations: np.ndarray, spacings: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel (x, y) of a patient point projected along the normal onto each slice.

    Args:
        point_mm: (3,) patient position, mm.
        positions, orientations, spacings: per-slice ImagePositionPatient (n, 3),
            ImageOrientationPatient (n, 6) and PixelSpacing (n, 2).
    """
    delta = np.asarray(point_mm, dtype=np.float64)[None, :] - np.asarray(positions, dtype=np.float64)
    orientations = np.asarray(orientations, dtype=np.float64)
    spacings = np.asarray(spacings, dtype=np.float64)
    x = np.einsum("nk,nk->n", delta, orientations[:, :3]) / spacings[:, 1]
    y = np.einsum("nk,nk->n", delta, orientations[:, 3:]) / spacings[:, 0]
    return x, y
