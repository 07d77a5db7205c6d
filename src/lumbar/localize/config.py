"""The localizer's settings: one typed dataclass with defaults, overridden by name.

Overrides (CLI `--set key=value`, papermill, YAML) arrive as strings or numbers; each is cast to the type
of the field (`lumbar.core.settings`), and an unknown name is an error naming the closest one, so a typo never
trains a model silently with a default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lumbar.core.encoders import upgrade_saved_settings
from lumbar.core.settings import apply_overrides


@dataclass(frozen=True)
class LocalizerConfig:
    """Everything that decides how the localizer models are built and trained.

    Attributes:
        backbone: timm encoder name (`features_only` must be supported, e.g. resnet18, resnet10t).
        pretrained: weights of the encoder and the slice scorer's: "none" (random init), "imagenet" (timm's,
            through its hub cache) or a local weights file or folder (`lumbar.core.encoders`); training only.
        normalize_inputs: the encoders subtract their pretraining mean and divide by its std in every forward
            pass; runs saved before this setting existed were trained without it and load with it off.
        size: slices are resized to size x size pixels.
        slices: sagittal stacks are resampled to this many slices (the encoder's input channels).
        axial_neighbors: slices on each side of the axial slice given as extra channels.
        out_stride: heatmap stride relative to the input (2 -> a 64 x 64 heatmap at size 128).
        decoder_channels: width of the feature-pyramid decoder.
        sigma_px: Gaussian target spread in heatmap pixels.
        sigma_slices: Gaussian target spread across the resampled slices.
        epochs: epochs of each sagittal model.
        axial_epochs: epochs of the axial model (0 = `epochs`); it has five samples per study (one per
            level) where the sagittal models have one, so it needs fewer epochs for as many steps.
        batch_size: samples per step.
        lr: AdamW peak learning rate (one-cycle schedule).
        weight_decay: AdamW weight decay.
        augment: random affine, mirror and intensity augmentation during training.
        contrast: the intensity augmentation's range: "standard", or "wide" (low contrast, coil bias, inverted
            series: the contrasts real studies show; `augment.random_intensity`).
        max_scale: augmentation zoom range (+-).
        max_rotate_deg: augmentation rotation range (+-).
        max_shift: augmentation translation range, as a fraction of the image (+-).
        max_depth_scale: sagittal slice-axis zoom range (+-).
        max_depth_shift: sagittal slice-axis shift range, as a fraction of the stack (+-).
        axial_slice_shift: training draws the axial slice up to this many slices off the labelled one, so
            the model tolerates an imperfect sagittal-to-axial mapping.
        tasks: comma-separated heatmap models to train (sag_t2, sag_t1, axial).
        refine_tasks: comma-separated sagittal tasks whose slice a slice scorer refines ("" = none).
        refine_backbone: timm encoder of the slice scorer ("" = `backbone`).
        refine_window: the scorer chooses among the heatmap's slice +- this many.
        refine_crop_mm: side of the square cropped around a point on each candidate slice, mm.
        refine_size: that square in pixels.
        refine_jitter_mm: training shifts the crop centre by up to this much (the heatmap's in-plane error).
        refine_epochs: epochs of each slice scorer (0 = `epochs`); each epoch sees every labelled point.
        canal_repair_mm: at prediction, a canal point farther than this from where the two foramina put its
            level is moved there (`lumbar.localize.repair`; 0 = never).
        device: "auto" (CUDA when present), "cpu" or "cuda[:i]".
        amp: mixed precision on CUDA (ignored on CPU).
        seed: random seed of initialisation, shuffling and augmentation.
        max_studies: train on at most this many studies (0 = all), for smoke runs.
        workers: processes reading DICOM headers for the index.
        threads: torch CPU threads (0 = torch's default); 1 is faster than 2 on a machine whose cores are
            busy with other work (OpenMP threads wait on each other).
        tensorboard: write each model's loss and learning rate per epoch as TensorBoard events under
            `RUN/localizer/tensorboard/` (needs the `tensorboard` package).
    """

    backbone: str = "resnet18"
    pretrained: str = "none"
    size: int = 128
    slices: int = 20
    axial_neighbors: int = 1
    out_stride: int = 1
    decoder_channels: int = 32
    sigma_px: float = 1.5
    sigma_slices: float = 1.0
    epochs: int = 15
    axial_epochs: int = 5
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    augment: bool = True
    contrast: str = "standard"
    normalize_inputs: bool = True
    max_scale: float = 0.15
    max_rotate_deg: float = 10.0
    max_shift: float = 0.08
    max_depth_scale: float = 0.15
    max_depth_shift: float = 0.1
    axial_slice_shift: int = 1
    tasks: str = "sag_t2,sag_t1,axial"
    refine_tasks: str = "sag_t1"
    refine_backbone: str = ""
    refine_window: int = 2
    refine_crop_mm: float = 40.0
    refine_size: int = 24
    refine_jitter_mm: float = 3.0
    refine_epochs: int = 4
    canal_repair_mm: float = 5.0
    device: str = "auto"
    amp: bool = True
    seed: int = 0
    max_studies: int = 0
    workers: int = 1
    threads: int = 0
    tensorboard: bool = False

    def __post_init__(self):
        if self.size < 32 or self.size % 32:
            raise ValueError(f"size must be a multiple of 32 and >= 32, got {self.size}")
        if self.slices < 1 or self.axial_neighbors < 0 or self.axial_slice_shift < 0:
            raise ValueError("slices must be >= 1, axial_neighbors and axial_slice_shift >= 0")
        if self.out_stride not in (1, 2, 4, 8):
            raise ValueError(f"out_stride must be 1, 2, 4 or 8, got {self.out_stride}")
        if self.contrast not in ("standard", "wide"):
            raise ValueError(f"contrast must be 'standard' or 'wide', got {self.contrast!r}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")
        if self.epochs < 1 or self.batch_size < 1 or self.axial_epochs < 0 or self.refine_epochs < 0:
            raise ValueError("epochs and batch_size must be >= 1, axial_epochs and refine_epochs >= 0")
        if self.refine_window < 1 or self.refine_size < 8 or self.refine_crop_mm <= 0:
            raise ValueError("refine_window must be >= 1, refine_size >= 8, refine_crop_mm > 0")

    def epochs_of(self, plane: str) -> int:
        """Epochs of a model by its plane ("sagittal" or "axial")."""
        return self.axial_epochs if plane == "axial" and self.axial_epochs else self.epochs

    @property
    def task_names(self) -> tuple[str, ...]:
        """The heatmap models to train, in the order given."""
        return tuple(t.strip() for t in self.tasks.split(",") if t.strip())

    @property
    def refine_task_names(self) -> tuple[str, ...]:
        """The sagittal tasks that get a slice scorer."""
        return tuple(t.strip() for t in self.refine_tasks.split(",") if t.strip())

    def with_overrides(self, overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> LocalizerConfig:
        """A copy with fields replaced, each value cast to the type of the field's default.

        Raises:
            ValueError: an unknown field name, or a value that does not cast (e.g. "abc" for an int).
        """
        return apply_overrides(self, {**(overrides or {}), **kwargs}, owner="LocalizerConfig")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> LocalizerConfig:
        """The defaults with `overrides` applied (see `with_overrides`)."""
        return cls().with_overrides(overrides, **kwargs)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LocalizerConfig:
        """Rebuild from `to_dict` output (a run's manifest), casting and checking every key (an older run's
        settings upgraded: `lumbar.core.encoders.upgrade_saved_settings`)."""

        upgraded = upgrade_saved_settings(values)
        if "pretrained_path" in values:  # saved before the encoders normalised their inputs
            upgraded.setdefault("normalize_inputs", False)
        return cls().with_overrides(upgraded)
