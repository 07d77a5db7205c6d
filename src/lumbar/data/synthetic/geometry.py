"""Scanner planes of synthetic series: sagittal stacks across the spine, oblique axial stacks along each disc.

Pixel <-> patient follows DICOM exactly: the centre of pixel (row i, column j) of a slice is
`IPP + j * PixelSpacing[1] * row_dir + i * PixelSpacing[0] * col_dir`, with ImageOrientationPatient =
(row_dir, col_dir) and the slice normal `row_dir x col_dir`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from lumbar.data.synthetic.anatomy import Phantom


def _unit(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, float) / np.linalg.norm(v)


@dataclass
class Stack:
    """Parallel slices that share orientation, image size and pixel spacing.

    Attributes:
        row_dir: (3,) patient direction of increasing column index (first half of IOP).
        col_dir: (3,) patient direction of increasing row index (second half of IOP).
        positions: (n, 3) ImagePositionPatient of each slice (centre of pixel (0, 0)).
        rows, cols: image size.
        pixel_spacing: (row spacing, column spacing) in mm, as DICOM's PixelSpacing.
        thickness: SliceThickness in mm.
        spacing: distance between neighbouring slice centres in mm (SpacingBetweenSlices).
    """

    row_dir: np.ndarray
    col_dir: np.ndarray
    positions: np.ndarray
    rows: int
    cols: int
    pixel_spacing: tuple[float, float]
    thickness: float
    spacing: float

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    @property
    def orientation(self) -> np.ndarray:
        """ImageOrientationPatient (6,)."""
        return np.concatenate([self.row_dir, self.col_dir])

    def __len__(self) -> int:
        return len(self.positions)

    def pixel_grid(self, offsets: np.ndarray | None = None) -> np.ndarray:
        """Patient positions of every pixel centre: (n, rows, cols, 3), shifted along the normal by `offsets`.

        Args:
            offsets: (n,) mm along the normal per slice (for sampling across the slice thickness).
        """
        i = np.arange(self.rows, dtype=np.float32)[:, None, None] * self.pixel_spacing[0]
        j = np.arange(self.cols, dtype=np.float32)[None, :, None] * self.pixel_spacing[1]
        plane = j * self.row_dir.astype(np.float32) + i * self.col_dir.astype(np.float32)
        origin = self.positions.astype(np.float32)
        if offsets is not None:
            origin = origin + np.asarray(offsets, np.float32)[:, None] * self.normal.astype(np.float32)
        return origin[:, None, None, :] + plane[None]

    def project(self, point: np.ndarray) -> tuple[int, float, float, float]:
        """A patient point -> (nearest slice index, column, row, distance to that slice's plane in mm)."""
        rel = np.asarray(point, float) - self.positions
        dist = rel @ self.normal
        k = int(np.argmin(np.abs(dist)))
        return (
            k,
            float(rel[k] @ self.row_dir / self.pixel_spacing[1]),
            float(rel[k] @ self.col_dir / self.pixel_spacing[0]),
            float(dist[k]),
        )


def _even(x: float) -> int:
    return max(16, 2 * round(x / 2))


def make_stack(
    centre: np.ndarray,
    normal: np.ndarray,
    row_hint: np.ndarray,
    n_slices: int,
    spacing: float,
    thickness: float,
    rows: int,
    cols: int,
    fov: float,
    in_plane_centre: np.ndarray | None = None,
) -> Stack:
    """Slices centred on `centre` along `normal`, with rows along `row_hint` (made orthogonal).

    Args:
        centre: patient point the middle of the stack passes through.
        normal: wanted slice normal (row_dir x col_dir).
        row_hint: direction the image columns should run along, approximately.
        n_slices, spacing, thickness: slice count, centre-to-centre distance and slice thickness (mm).
        rows, cols: image size in pixels.
        fov: field of view across the columns in mm (square pixels).
        in_plane_centre: patient point at the image centre (default `centre`).
    """
    n = _unit(normal)
    row = _unit(row_hint - (row_hint @ n) * n)
    col = np.cross(n, row)
    ps = fov / cols
    focus = np.asarray(centre if in_plane_centre is None else in_plane_centre, float)
    focus = focus - ((focus - centre) @ n) * n
    steps = (np.arange(n_slices) - (n_slices - 1) / 2) * spacing
    mid = focus - (cols - 1) / 2 * ps * row - (rows - 1) / 2 * ps * col
    positions = mid[None, :] + steps[:, None] * n[None, :]
    return Stack(row, col, positions, rows, cols, (ps, ps), thickness, spacing)


def _tilt(direction: np.ndarray, rng: np.random.Generator, degrees: float) -> np.ndarray:
    """`direction` turned by a small random rotation (scanner planes are set by hand, never exactly)."""
    return Rotation.from_rotvec(np.deg2rad(rng.normal(0.0, degrees, 3))).apply(direction)


def sagittal_stack(
    phantom: Phantom, rng: np.random.Generator, image_size: int, fov: tuple[float, float]
) -> Stack:
    """A sagittal series: 15-20 slices from the patient's right to left across the spine.

    Rows run down (feet), columns run back (posterior), like the real files: IOP ~ (0, 1, 0, 0, 0, -1).
    """
    n_slices = int(rng.integers(15, 21))
    thickness = float(rng.choice([3.0, 3.3, 3.5, 4.0]))
    spacing = thickness * rng.uniform(1.0, 1.15)
    cols = _even(image_size * rng.uniform(0.9, 1.1))
    rows = cols if rng.random() < 0.6 else _even(cols * rng.uniform(1.0, 1.06))
    mid_s = phantom.disc_centres_s[2] + rng.normal(0.0, 12.0)
    w_focus = phantom.body_half[3, 1] + rng.normal(0.0, 12.0)
    focus = phantom.to_patient(phantom.body_point(rng.normal(0.0, 3.0), w_focus, mid_s))
    left = _tilt(phantom.rotation[:, 0], rng, 1.5)
    centre = focus + left * rng.normal(0.0, 4.0)  # the middle slice misses the midline by a few mm
    posterior = phantom.rotation[:, 1]
    return make_stack(
        centre,
        -left,
        posterior,
        n_slices,
        spacing,
        thickness,
        rows,
        cols,
        rng.uniform(*fov),
        in_plane_centre=focus,
    )


def axial_stack(
    phantom: Phantom,
    rng: np.random.Generator,
    level: int,
    cols: int,
    fov: float,
    thickness: float,
    spacing: float,
    slices: tuple[int, int] = (3, 6),
) -> Stack:
    """An oblique axial stack of `slices` (fewest, most; 3-6 by default) slices centred on one disc, tilted to
    follow it.

    Columns run to the patient's left, rows run back: IOP ~ (1, 0, 0, 0, cos, -sin) with the disc's tilt.
    """
    n_slices = int(rng.integers(slices[0], slices[1] + 1))
    s = phantom.disc_centres_s[level]
    normal = _tilt(phantom.tangent(s), rng, 2.0)
    centre = phantom.to_patient(phantom.body_point(0.0, 0.0, s + rng.normal(0.0, 1.0)))
    canal = phantom.to_patient(
        phantom.body_point(
            rng.normal(0.0, 5.0), phantom.body_half[level + 1, 1] + 8.0 + rng.normal(0.0, 6.0), s
        )
    )
    return make_stack(
        centre,
        normal,
        phantom.rotation[:, 0],
        n_slices,
        spacing,
        thickness,
        cols,
        cols,
        fov,
        in_plane_centre=canal,
    )
