"""Architectures behind one contract: `build_model(name, ...)` -> logits from (B, C, D, H, W) stacks.

Importing the package registers every architecture: the thesis 3D CNNs, MONAI 3D nets, MedicalNet
ResNets and the timm 2.5D families (`timm25d:<name>`, `timmseq:<name>`).
"""

from lumbar.models import medicalnet, monai3d, thesis3d, timm25d  # noqa: F401  (registration)
from lumbar.models.base import LumbarModel
from lumbar.models.registry import build_model, list_families, list_models, register_model

__all__ = ["LumbarModel", "build_model", "list_families", "list_models", "register_model"]
