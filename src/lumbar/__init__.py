"""lumbar: RSNA 2024 lumbar spine degenerative classification, from DICOM studies to a submission."""

__version__ = "0.1.0"
