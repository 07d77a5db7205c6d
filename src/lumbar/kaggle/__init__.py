"""The offline Kaggle submission: the upload bundle (`bundle`, `wheels`, `layout`), the kernel notebook
(`kernel`) and the kernel's first check of what arrived (`preflight`).

The kernel imports `lumbar.kaggle.check_environment` right after its install cell; the names below stay
importable from here for it and for older kernels.
"""

from lumbar.kaggle.bundle import build_bundle, dataset_metadata, inference_manifest, kaggle_user
from lumbar.kaggle.kernel import SUBMISSION_NOTEBOOK, kernel_notebook
from lumbar.kaggle.wheels import IMAGE_MODULES, KAGGLE_EXTRA_PACKAGES, check_environment

__all__ = [
    "IMAGE_MODULES",
    "KAGGLE_EXTRA_PACKAGES",
    "SUBMISSION_NOTEBOOK",
    "build_bundle",
    "check_environment",
    "dataset_metadata",
    "inference_manifest",
    "kaggle_user",
    "kernel_notebook",
]
