"""DICOM series reader: headers first, pixels on demand, slices in true geometric order.

Why not sort by file name or instance number: in the competition data sagittal instance numbers run in
either direction, can be non-contiguous and exceed 5,000, and axial series hold several oblique stacks.
The only reliable order is the position (ImagePositionPatient) projected on the slice normal.

Rules (documented once, used everywhere):
- A *stack* is the set of slices of a series sharing one ImageOrientationPatient (within 1e-3 per
  component). Stacks are numbered in acquisition order (smallest instance number first).
- Within a stack, `slice_index` increases along the stack's *canonical normal*: patient left (+x, LPS) for
  sagittal, feet (-z) for axial, posterior (+y) for coronal, so index 0 is the right-most sagittal slice and
  the top-most axial slice whatever the scanner's instance numbering.
- Slices of one stack with a shape other than the stack's most common shape are resized to that shape on
  load (bilinear), their pixel spacing scaled so the field of view is kept; geometry stays exact.
- Pixels keep their stored integer type; a stack in which any file has RescaleSlope/RescaleIntercept
  (other than identity) is float32 with the rescale applied. Crops convert to float32 anyway.
- `read_series(decode=True)` reads every file once (header and pixels from one parse): the fast path for
  whole series. Without it only headers are read and `Stack.load(indices)` decodes just those slices.
- Only ImagePositionPatient, ImageOrientationPatient and PixelSpacing are used for geometry: SliceThickness
  and SpacingBetweenSlices are missing in some hidden-test files.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pydicom.pixels
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

#: Tags read for the header index; parsing only these is ~1.6x faster than a full header.
HEADER_TAGS = [
    0x00080060,  # Modality
    0x0008103E,  # SeriesDescription
    0x0020000D,  # StudyInstanceUID
    0x0020000E,  # SeriesInstanceUID
    0x00200013,  # InstanceNumber
    0x00200032,  # ImagePositionPatient
    0x00200037,  # ImageOrientationPatient
    0x00280010,  # Rows
    0x00280011,  # Columns
    0x00280030,  # PixelSpacing
    0x00281052,  # RescaleIntercept
    0x00281053,  # RescaleSlope
]
ORIENTATION_TOLERANCE = 1e-3


#: What pydicom's decoders raise on bad pixel data: every plugin failed (RuntimeError; NotImplementedError for
#: an unsupported transfer syntax), no pixel data element (AttributeError), a frame that does not fit the
#: header's size (ValueError), a short file (EOFError, OSError). Anything else, MemoryError included,
#: propagates.
DECODE_ERRORS = (RuntimeError, ValueError, AttributeError, EOFError, OSError)


class DicomReadError(ValueError):
    """A DICOM file or series folder that cannot be read; the message names the path."""

    def __init__(self, path: str | os.PathLike, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = Path(path), problem


@dataclass(frozen=True)
class SliceHeader:
    """The geometry and identity of one DICOM file, read without its pixels."""

    path: str
    instance_number: int
    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float]
    pixel_spacing: tuple[float, float]  # (between rows, between columns), mm
    rows: int
    columns: int
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    series_description: str = ""


def read_header(path: str | os.PathLike) -> SliceHeader:
    """Read one file's header (no pixel data).

    Raises:
        DicomReadError: not DICOM, truncated before the pixel data, or missing a geometry tag.
    """
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError) as e:
        raise DicomReadError(path, f"not a readable DICOM file ({type(e).__name__}: {e})") from e
    return header_from_dataset(ds, path)


_REQUIRED = {
    "InstanceNumber": 0x00200013,
    "ImagePositionPatient": 0x00200032,
    "ImageOrientationPatient": 0x00200037,
    "PixelSpacing": 0x00280030,
}


def _numbers(ds: pydicom.Dataset, tag: int) -> list[float] | None:
    """A DS/IS element as floats, parsed from its raw bytes when still raw (pydicom's DS objects are slow)."""
    elem = ds.get_item(tag)
    if elem is None:
        return None
    value = elem.value
    if isinstance(elem, RawDataElement):
        return [float(v) for v in value.split(b"\\")] if value and value.strip() else None
    if value is None or value == "":
        return None
    return [float(v) for v in (value if isinstance(value, MultiValue | list | tuple) else [value])]


def header_from_dataset(ds: pydicom.Dataset, path: str | os.PathLike) -> SliceHeader:
    """The `SliceHeader` of an already parsed dataset."""
    try:
        values = {name: _numbers(ds, tag) for name, tag in _REQUIRED.items()}
        rows, columns = ds.get("Rows"), ds.get("Columns")
        missing = [name for name, v in values.items() if v is None] + [
            name for name, v in (("Rows", rows), ("Columns", columns)) if v is None
        ]
        if missing:
            raise DicomReadError(path, f"missing DICOM tag(s) {missing} (truncated file or not an MR image?)")
        slope, intercept = _numbers(ds, 0x00281053), _numbers(ds, 0x00281052)
        return SliceHeader(
            path=str(path),
            instance_number=int(values["InstanceNumber"][0]),
            position=tuple(values["ImagePositionPatient"][:3]),
            orientation=tuple(values["ImageOrientationPatient"][:6]),
            pixel_spacing=tuple(values["PixelSpacing"][:2]),
            rows=int(rows),
            columns=int(columns),
            rescale_slope=slope[0] if slope else 1.0,
            rescale_intercept=intercept[0] if intercept else 0.0,
            series_description=str(ds.get("SeriesDescription", "")),
        )
    except DicomReadError:
        raise
    except (TypeError, ValueError, IndexError) as e:
        raise DicomReadError(path, f"malformed geometry tag ({e})") from e


def canonical_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit slice normal, signed to point patient-left (sagittal), feet-ward (axial) or posterior
    (coronal)."""
    o = np.asarray(orientation, dtype=np.float64)
    normal = np.cross(o[:3], o[3:])
    normal /= np.linalg.norm(normal)
    axis = int(np.argmax(np.abs(normal)))
    if (axis == 2) == (normal[axis] > 0):
        normal = -normal
    return normal


def read_pixels(header: SliceHeader, dataset: pydicom.Dataset | None = None) -> np.ndarray:
    """Decode one file's pixels: stored integers, or float32 when the file has a modality rescale.

    Args:
        header: the file's header.
        dataset: the already parsed dataset, to avoid reading the file again.
    """
    try:
        arr = pydicom.pixels.pixel_array(header.path if dataset is None else dataset)
    except DECODE_ERRORS as e:
        raise DicomReadError(header.path, f"cannot decode pixel data ({type(e).__name__}: {e})") from e
    except BaseException as e:
        if type(e).__name__ != "PanicException":
            raise
        # a Rust decoder (pylibjpeg-rle) panics on corrupt data, a BaseException that is not an Exception
        raise DicomReadError(header.path, f"corrupt pixel data, the decoder panicked ({e})") from None
    if arr.ndim != 2:
        raise DicomReadError(header.path, f"expected a single 2D frame, got an array of shape {arr.shape}")
    if header.rescale_slope != 1.0 or header.rescale_intercept != 0.0:
        return arr.astype(np.float32) * np.float32(header.rescale_slope) + np.float32(
            header.rescale_intercept
        )
    return arr


def _resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.resize(image, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


@dataclass
class Volume:
    """Decoded slices of one stack in geometric order, with per-slice geometry.

    Attributes:
        pixels: (n, H, W): the stored integer type (lossless, half the memory of float32), or float32
            when any slice carries a modality rescale.
        instance_numbers: (n,) int.
        positions: (n, 3) ImagePositionPatient, mm.
        orientations: (n, 6) ImageOrientationPatient.
        spacings: (n, 2) pixel spacing (between rows, between columns) after any resize, mm.
        paths: the source file of each slice.
    """

    pixels: np.ndarray
    instance_numbers: np.ndarray
    positions: np.ndarray
    orientations: np.ndarray
    spacings: np.ndarray
    paths: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pixels)

    def index_of_instance(self, instance_number: int) -> int:
        """Position in the volume of a DICOM instance number."""
        hits = np.flatnonzero(self.instance_numbers == int(instance_number))
        if len(hits) == 0:
            raise KeyError(f"instance {instance_number} not in this volume ({len(self)} slices)")
        return int(hits[0])

    def pixel_to_patient(
        self, slice_index: np.ndarray | int, x: np.ndarray | float, y: np.ndarray | float
    ) -> np.ndarray:
        """Pixel (x = column, y = row) on a slice -> patient position in mm, shape (..., 3)."""
        return pixel_to_patient(
            self.positions[slice_index], self.orientations[slice_index], self.spacings[slice_index], x, y
        )

    def patient_to_pixel(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Patient points (..., 3) -> (nearest slice index, x, y, distance to that slice's plane in mm)."""
        return patient_to_pixel(self.positions, self.orientations, self.spacings, points)


def pixel_to_patient(position, orientation, spacing, x, y) -> np.ndarray:
    """DICOM's pixel -> patient map: IPP + x * col_spacing * row_dir + y * row_spacing * col_dir."""
    position, orientation, spacing = (
        np.asarray(a, dtype=np.float64) for a in (position, orientation, spacing)
    )
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    row_dir, col_dir = orientation[..., :3], orientation[..., 3:]
    return position + (x * spacing[..., 1])[..., None] * row_dir + (y * spacing[..., 0])[..., None] * col_dir


def _as_float(*arrays) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(a, dtype=np.float64) for a in arrays)


def _plane_offsets(positions: np.ndarray, orientations: np.ndarray, points: np.ndarray):
    """The points' offsets from every slice's origin (..., n, 3) and distances to its plane (..., n)."""
    normals = np.cross(orientations[:, :3], orientations[:, 3:])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    delta = points[..., None, :] - positions  # (..., n, 3)
    return delta, np.abs(np.einsum("...nk,nk->...n", delta, normals))


def _in_plane(delta: np.ndarray, orientations: np.ndarray, spacings: np.ndarray) -> tuple[np.ndarray, ...]:
    """Offsets from slice origins -> pixel position (x = column, y = row) on those slices."""
    x = np.einsum("...k,...k->...", delta, orientations[..., :3]) / spacings[..., 1]
    y = np.einsum("...k,...k->...", delta, orientations[..., 3:]) / spacings[..., 0]
    return x, y


def plane_coordinates(positions, orientations, spacings, points) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every point on every slice: its distance to the slice's plane (mm) and its pixel position there; the
    axial matching (`lumbar.localize.axial`) keeps the nearest slice whose image holds the point.

    Args:
        positions, orientations, spacings: per-slice geometry, shapes (n, 3), (n, 6), (n, 2).
        points: patient points, shape (..., 3).

    Returns:
        distance in mm, x (column), y (row); each of shape (..., n).
    """
    positions, orientations, spacings, points = _as_float(positions, orientations, spacings, points)
    delta, dist = _plane_offsets(positions, orientations, points)
    return (dist, *_in_plane(delta, orientations, spacings))


def patient_to_pixel(positions, orientations, spacings, points) -> tuple[np.ndarray, ...]:
    """Nearest slice (by distance to its plane) of each point and the point's pixel coordinates on it.

    Args:
        positions, orientations, spacings: per-slice geometry, shapes (n, 3), (n, 6), (n, 2).
        points: patient points, shape (..., 3).

    Returns:
        slice index, x (column), y (row), distance in mm to the slice plane; each of shape (...).
    """
    positions, orientations, spacings, points = _as_float(positions, orientations, spacings, points)
    delta, dist = _plane_offsets(positions, orientations, points)
    best = np.argmin(dist, axis=-1)
    d = np.take_along_axis(delta, best[..., None, None], axis=-2)[..., 0, :]
    x, y = _in_plane(d, orientations[best], spacings[best])
    return best, x, y, np.take_along_axis(dist, best[..., None], axis=-1)[..., 0]


@dataclass
class Stack:
    """Headers of one stack, sorted along the canonical normal; decode pixels with `load`."""

    headers: list[SliceHeader]
    normal: np.ndarray
    decoded: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.headers)

    @property
    def instance_numbers(self) -> np.ndarray:
        return np.array([h.instance_number for h in self.headers], dtype=np.int64)

    @property
    def positions(self) -> np.ndarray:
        return np.array([h.position for h in self.headers], dtype=np.float64)

    @property
    def slice_positions(self) -> np.ndarray:
        """Position of each slice along the canonical normal, mm (increasing)."""
        return self.positions @ self.normal

    @property
    def shape(self) -> tuple[int, int]:
        """The stack's most common (rows, columns): every loaded slice has it."""
        return Counter((h.rows, h.columns) for h in self.headers).most_common(1)[0][0]

    def load(self, indices: Sequence[int] | None = None) -> Volume:
        """Decode the chosen slices (all by default), in the order given.

        Args:
            indices: positions in this stack's geometric order; out-of-range raises IndexError.
        """
        idx = list(range(len(self))) if indices is None else [int(i) for i in indices]
        for i in idx:
            if not -len(self) <= i < len(self):
                raise IndexError(f"slice {i} out of range for a stack of {len(self)} slices")
        shape = self.shape
        headers = [self.headers[i] for i in idx]
        rescaled = any(h.rescale_slope != 1.0 or h.rescale_intercept != 0.0 for h in self.headers)
        pixels = None
        spacings = np.array([h.pixel_spacing for h in headers], dtype=np.float64).reshape(-1, 2)
        for k, h in enumerate(headers):
            img = self.decoded.get(h.path)
            if img is None:
                img = read_pixels(h)
            if pixels is None:
                pixels = np.empty((len(headers), *shape), dtype=np.float32 if rescaled else img.dtype)
            if img.shape != shape:
                spacings[k] *= np.array(img.shape, dtype=np.float64) / np.array(shape, dtype=np.float64)
                img = _resize(img, shape)
            pixels[k] = img
        return Volume(
            pixels=pixels if pixels is not None else np.empty((0, *shape), dtype=np.float32),
            instance_numbers=np.array([h.instance_number for h in headers], dtype=np.int64),
            positions=np.array([h.position for h in headers], dtype=np.float64).reshape(-1, 3),
            orientations=np.array([h.orientation for h in headers], dtype=np.float64).reshape(-1, 6),
            spacings=spacings,
            paths=[h.path for h in headers],
        )


@dataclass
class Series:
    """One series folder: its stacks in acquisition order."""

    folder: Path
    stacks: list[Stack]

    @property
    def headers(self) -> list[SliceHeader]:
        return [h for s in self.stacks for h in s.headers]

    def stack_of_instance(self, instance_number: int) -> tuple[int, int]:
        """(stack index, slice index) of an instance number.

        Raises:
            DicomReadError: no readable file of the series has that instance (missing or unreadable file).
        """
        for si, stack in enumerate(self.stacks):
            hits = np.flatnonzero(stack.instance_numbers == int(instance_number))
            if len(hits):
                return si, int(hits[0])
        raise DicomReadError(self.folder, f"no readable file with instance {instance_number}")

    def stack(self, index: int) -> Stack:
        """One stack by index; an index the series as read does not have (unreadable files left out of it,
        or a stale header index) is a `DicomReadError` naming the folder."""
        if not 0 <= index < len(self.stacks):
            raise DicomReadError(
                self.folder,
                f"stack {index} asked for, but the readable files form {len(self.stacks)} stack(s)",
            )
        return self.stacks[index]

    def load(self, stack: int = 0, indices: Sequence[int] | None = None) -> Volume:
        """Decode slices of one stack (the first by default)."""
        return self.stack(stack).load(indices)


def group_stacks(headers: Sequence[SliceHeader], decoded: dict[str, np.ndarray] | None = None) -> list[Stack]:
    """Split headers into stacks of equal orientation and sort each along its canonical normal."""
    groups: list[list[SliceHeader]] = []
    keys: list[np.ndarray] = []
    for h in sorted(headers, key=lambda h: h.instance_number):
        o = np.asarray(h.orientation)
        for key, group in zip(keys, groups):
            if np.max(np.abs(key - o)) <= ORIENTATION_TOLERANCE:
                group.append(h)
                break
        else:
            keys.append(o)
            groups.append([h])
    stacks = []
    for key, group in zip(keys, groups):
        normal = canonical_normal(key)
        order = np.argsort(np.array([h.position for h in group]) @ normal, kind="stable")
        members = [group[i] for i in order]
        cache = {h.path: decoded[h.path] for h in members if h.path in decoded} if decoded else {}
        stacks.append(Stack(members, normal, cache))
    return stacks


def series_files(folder: str | os.PathLike) -> list[Path]:
    """The .dcm files of a series folder; an absent or empty folder is an error naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DicomReadError(folder, "series folder not found")
    files = sorted(folder.glob("*.dcm"))
    if not files:
        raise DicomReadError(folder, "series folder holds no .dcm files")
    return files


def _read_file(path: Path, decode: bool) -> tuple[SliceHeader, np.ndarray | None]:
    if not decode:
        return read_header(path), None
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError) as e:
        raise DicomReadError(path, f"not a readable DICOM file ({type(e).__name__}: {e})") from e
    header = header_from_dataset(ds, path)
    return header, read_pixels(header, ds)


def read_series(folder: str | os.PathLike, decode: bool = False, skip_unreadable: bool = False) -> Series:
    """Read a series folder and split it into geometric stacks.

    Args:
        folder: `<images>/<study_id>/<series_id>/`.
        decode: also decode every slice, reading each file once (fast path for whole series); otherwise
            only headers are read and `Stack.load` decodes the slices asked for.
        skip_unreadable: leave out files that cannot be read (the index does, and reports them); by
            default the first such file raises.
    """
    headers, decoded = [], {}
    for f in series_files(folder):
        try:
            header, pixels = _read_file(f, decode)
        except DicomReadError:
            if not skip_unreadable:
                raise
            continue
        headers.append(header)
        if pixels is not None:
            decoded[header.path] = pixels
    if not headers:
        raise DicomReadError(folder, "no readable DICOM file in the series")
    return Series(Path(folder), group_stacks(headers, decoded))


def read_volume(folder: str | os.PathLike, stack: int = 0) -> Volume:
    """All slices of one stack of a series folder (the first by default), each file read once."""
    return read_series(folder, decode=True).load(stack)
