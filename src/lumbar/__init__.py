"""lumbar: RSNA 2024 lumbar spine degenerative classification, from DICOM studies to a submission."""

__version__ = "0.1.0"

from lumbar.core.processes import quiet_openmp

quiet_openmp()  # before anything imports torch (lumbar.core.processes)
