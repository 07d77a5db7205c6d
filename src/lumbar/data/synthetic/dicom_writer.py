"""DICOM files shaped like the competition's: the same tags, the same encodings, the same quirks.

The real files (see the sample's headers) carry no SOP Class UID in the dataset, only in the file meta
("Enhanced MR Image Storage"); SOP Instance UID is `<study>.1.<instance>`, Series Instance UID
`<study>.<series>`; SeriesDescription is just "T1" or "T2"; pixels are 16-bit MONOCHROME2 with 12 bits stored,
RLE Lossless. Synthetic series also come uncompressed (Explicit VR Little Endian), with or without rescale
tags, and (on the test split) without SliceThickness / SpacingBetweenSlices, so readers meet every variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

#: Enhanced MR Image Storage, as in the real files' meta header.
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
IMPLEMENTATION_CLASS_UID = "1.2.40.0.13.1.1.1"
MAX_STORED = 4095  # 12 bits stored


@dataclass(frozen=True)
class SeriesTags:
    """What one series writes into each of its files.

    Attributes:
        study_id, series_id: the competition's identifiers.
        description: SeriesDescription inside the file ("T1" or "T2").
        compressed: RLE Lossless when True, else uncompressed Explicit VR Little Endian.
        rescale: (slope, intercept) written as RescaleSlope / RescaleIntercept, or None for no tags.
        thickness_tags: write SliceThickness and SpacingBetweenSlices.
        thickness, spacing: their values in mm.
        date: ContentDate.
    """

    study_id: int
    series_id: int
    description: str
    compressed: bool
    rescale: tuple[float, float] | None
    thickness_tags: bool
    thickness: float
    spacing: float
    date: str = "20240503"

    @property
    def frame_uid(self) -> str:
        return generate_uid(entropy_srcs=[str(self.study_id), str(self.series_id)])


def _ds(value: float) -> str:
    """A decimal string within DICOM's 16 characters."""
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.8g}"


def to_stored(image: np.ndarray, rescale: tuple[float, float] | None) -> np.ndarray:
    """Float intensities -> uint16 stored values (12 bits), inverting the rescale a reader will apply."""
    slope, intercept = rescale or (1.0, 0.0)
    return np.clip(np.rint((image - intercept) / slope), 0, MAX_STORED).astype(np.uint16)


def write_instance(
    path: str | Path,
    stored: np.ndarray,
    tags: SeriesTags,
    instance_number: int,
    position: np.ndarray,
    orientation: np.ndarray,
    pixel_spacing: tuple[float, float],
    content_time: str,
) -> int:
    """Write one slice; returns the file's size in bytes.

    Args:
        path: file to write (`<instance>.dcm`).
        stored: (rows, cols) uint16 stored values.
        tags: the series' constant tags.
        instance_number: InstanceNumber.
        position: ImagePositionPatient (3,).
        orientation: ImageOrientationPatient (6,).
        pixel_spacing: PixelSpacing (row spacing, column spacing).
        content_time: ContentTime (HHMMSS.ffffff).
    """
    if stored.dtype != np.uint16 or stored.ndim != 2:
        raise ValueError(
            f"{path}: stored pixels must be a 2-D uint16 array, got {stored.dtype} {stored.shape}"
        )
    sop_uid = f"{tags.study_id}.1.{instance_number}"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = "PYDICOM " + pydicom.__version__

    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPInstanceUID = sop_uid
    ds.ContentDate = tags.date
    ds.ContentTime = content_time
    ds.SeriesDescription = tags.description
    ds.PatientID = str(tags.study_id)
    if tags.thickness_tags:
        ds.SliceThickness = _ds(tags.thickness)
        ds.SpacingBetweenSlices = _ds(tags.spacing)
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = str(tags.study_id)
    ds.SeriesInstanceUID = f"{tags.study_id}.{tags.series_id}"
    ds.InstanceNumber = str(int(instance_number))
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.ImageOrientationPatient = [_ds(v) for v in orientation]
    ds.FrameOfReferenceUID = tags.frame_uid
    normal = np.cross(orientation[:3], orientation[3:])
    ds.SliceLocation = _ds(float(np.dot(position, normal)))
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.PixelSpacing = [_ds(v) for v in pixel_spacing]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    slope, intercept = tags.rescale or (1.0, 0.0)
    lo, hi = np.percentile(stored, [1, 99.5]) * slope + intercept
    ds.WindowCenter = _ds(round(0.5 * (lo + hi)))
    ds.WindowWidth = _ds(max(1, round(hi - lo)))
    if tags.rescale is not None:
        ds.RescaleIntercept = _ds(intercept)
        ds.RescaleSlope = _ds(slope)
    ds.PixelData = stored.tobytes()
    if tags.compressed:
        ds.compress(RLELossless, stored, generate_instance_uid=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path.stat().st_size
