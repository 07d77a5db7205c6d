"""Augmentations of ROI stacks with albumentations: one random draw per sample, the same for every slice.

A stack (channels x slices, H, W) is handed to albumentations as one (H, W, channels x slices) image, so a
rotation, shift, brightness change or dropout hole is drawn once and applied to every slice and channel
alike, as a patient moving or a scanner setting would. Only in-plane transforms live here: in-plane flips are
not anatomically valid (a sagittal image flipped vertically or front-to-back is no spine). The one valid
flip, the left-right mirror, changes which side a crop shows and therefore its labels; it is applied by the
dataset, where the task says whether the labels can follow (see `lumbar.train.tasks`).

Each augmentation is registered under one name with a factory; a preset is a list of names. Randomness
comes from a seed drawn per sample by the caller, so results do not depend on worker processes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import albumentations as A
import numpy as np

from lumbar.core.constants import AXIAL_T2, CONDITION_SERIES
from lumbar.core.registry import Registry

AugmentFactory = Callable[[], A.BasicTransform]
_AUGMENTATIONS: Registry[AugmentFactory] = Registry("augmentation")


def register_augmentation(name: str) -> Callable[[AugmentFactory], AugmentFactory]:
    """Register an augmentation factory under `name` (a duplicate name is an error)."""
    return _AUGMENTATIONS.register(name)


def list_augmentations() -> list[str]:
    """Registered augmentation names, sorted."""
    return sorted(_AUGMENTATIONS)


@register_augmentation("affine")
def _affine() -> A.BasicTransform:
    """Shift-scale-rotate: the crop centre and the patient's pose vary between studies."""
    return A.Affine(translate_percent=(-0.0625, 0.0625), scale=(0.9, 1.1), rotate=(-15, 15), p=0.75)


@register_augmentation("affine_wide")
def _affine_wide() -> A.BasicTransform:
    """Shift-scale-rotate with wider rotations, for axial slices (the patient's axial pose varies more)."""
    return A.Affine(translate_percent=(-0.0625, 0.0625), scale=(0.9, 1.1), rotate=(-25, 25), p=0.75)


@register_augmentation("brightness_contrast")
def _brightness_contrast() -> A.BasicTransform:
    """Brightness and contrast: scanners and protocols differ."""
    return A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.75)


@register_augmentation("gamma")
def _gamma() -> A.BasicTransform:
    """Gamma 0.7-1.5: T2 against fat-suppressed STIR, and vendors' contrast curves, differ in mid-tones."""
    return A.RandomGamma(gamma_limit=(70, 150), p=0.5)


@register_augmentation("coil_bias")
def _coil_bias() -> A.BasicTransform:
    """A smooth brightness ramp across the crop: the receive coil's sensitivity falls off with distance."""
    return A.Illumination(mode="linear", intensity_range=(0.05, 0.2), p=0.5)


@register_augmentation("blur")
def _blur() -> A.BasicTransform:
    """Gaussian or motion blur: resolution and patient motion differ."""
    return A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 5))], p=0.3)


@register_augmentation("noise")
def _noise() -> A.BasicTransform:
    """Gaussian noise: low-field and fast acquisitions are noisy."""
    return A.GaussNoise(std_range=(0.01, 0.05), p=0.3)


@register_augmentation("coarse_dropout")
def _coarse_dropout() -> A.BasicTransform:
    """Rectangular holes through the whole stack: no single region may carry the decision."""
    return A.CoarseDropout(
        num_holes_range=(1, 4), hole_height_range=(0.05, 0.15), hole_width_range=(0.05, 0.15), fill=0.0, p=0.5
    )


#: Named lists of augmentations; "default" picks "axial" or "sagittal" by the task's series.
PRESETS: dict[str, tuple[str, ...]] = {
    "sagittal": ("affine", "brightness_contrast", "blur", "noise", "coarse_dropout"),
    "axial": ("affine_wide", "brightness_contrast", "blur", "noise", "coarse_dropout"),
    "light": ("affine", "brightness_contrast"),
    "none": (),
}


#: Added to the task's preset by `augment: contrast` (configs/full.yaml): the real data mixes T2 and STIR,
#: vendors and coils.
CONTRAST: tuple[str, ...] = ("gamma", "coil_bias")


def task_preset(conditions: Sequence[str]) -> str:
    """The default preset of a task: "axial" when all its conditions are read on Axial T2, else "sagittal"."""
    axial = [CONDITION_SERIES[c] == AXIAL_T2 for c in conditions]
    return "axial" if axial and all(axial) else "sagittal"


def resolve_augmentations(spec: str, conditions: Sequence[str] = ()) -> tuple[str, ...]:
    """The augmentation names a config's `augment` string means.

    Args:
        spec: "default" (the task's preset, see `task_preset`), "contrast" (that preset plus `CONTRAST`), a
            preset name, or comma-separated names.
        conditions: the task's conditions, for "default".

    Raises:
        ValueError: for an unknown name (listing the registered ones).
    """
    spec = spec.strip()
    if spec == "contrast":  # the task's preset plus the contrasts of other protocols
        return PRESETS[task_preset(conditions)] + CONTRAST
    if spec == "default":
        spec = task_preset(conditions)
    if spec in PRESETS:
        return PRESETS[spec]
    names = tuple(n.strip() for n in spec.split(",") if n.strip())
    unknown = [n for n in names if n not in _AUGMENTATIONS]
    if unknown:
        raise ValueError(
            f"unknown augmentation(s) {unknown}; registered: {list_augmentations()}, presets: {list(PRESETS)}"
        )
    return names


class StackAugment:
    """The same random in-plane transform for every slice and channel of a stack.

    Args:
        names: registered augmentation names, applied in order.
    """

    def __init__(self, names: Sequence[str]) -> None:
        unknown = [n for n in names if n not in _AUGMENTATIONS]
        if unknown:
            raise ValueError(f"unknown augmentation(s) {unknown}; registered: {list_augmentations()}")
        self.names = tuple(names)
        self.compose = A.Compose([_AUGMENTATIONS[n]() for n in self.names]) if self.names else None

    def __call__(self, stack: np.ndarray, seed: int) -> np.ndarray:
        """Augment a (..., H, W) float32 stack with the draw `seed`; returns the same shape, clipped to [0,
        1]."""
        if self.compose is None:
            return stack
        shape = stack.shape
        image = np.ascontiguousarray(stack.reshape(-1, *shape[-2:]).transpose(1, 2, 0))
        self.compose.set_random_seed(int(seed))
        out = self.compose(image=image)["image"]
        if out.ndim == 2:  # a single channel may come back squeezed
            out = out[..., None]
        return np.clip(out.transpose(2, 0, 1).reshape(shape), 0.0, 1.0).astype(np.float32, copy=False)
