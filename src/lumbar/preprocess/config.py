"""`RoiConfig`: every parameter of an ROI tensor cache, typed, with defaults and checked overrides.

Overrides (from the CLI, YAML or a notebook's parameters cell) are cast to the type of the field's default,
so "128" becomes 128 and "48,24,24,24" a margin tuple; an unknown name is an error that suggests the
nearest field, so a typo never silently falls back to a default.

Crop margins are (left, right, up, down) as the slice is displayed (x = column to the right, y = row
downwards). In the competition data sagittal rows run anterior -> posterior, so "left" is anterior (the
disc and vertebral body in front of the canal); axial columns run patient right -> left.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lumbar.core.constants import CONDITION_GROUP, CONDITIONS
from lumbar.core.settings import cast_overrides
from lumbar.preprocess.filters import list_filters
from lumbar.preprocess.views import get_view

MODES: tuple[str, ...] = ("target_window", "full_series")
MARGIN_MODES: tuple[str, ...] = ("mm", "thesis_px")
#: The per-group slab fields (`RoiConfig.slab`), left out of `to_dict` while unset.
SLAB_FIELDS: tuple[str, ...] = ("spinal_slices", "foraminal_slices", "subarticular_slices")

Margins = tuple[float, float, float, float]


@dataclass(frozen=True)
class RoiConfig:
    """Parameters of one ROI cache (all of them go to `params.json`).

    Attributes:
        mode: "target_window" (the labelled slice with `before`/`after` neighbours) or "full_series"
            (the whole stack of the labelled slice resampled to `depth` slices).
        size: output height and width in pixels (the crop is resized to size x size).
        before: slices before the labelled one (target_window).
        after: slices after the labelled one (target_window).
        depth: output slices (full_series; the thesis used 1, 15, 17, 19, 25).
        filter: a name of `lumbar.preprocess.filters` applied to the cropped, normalised tensor.
        margin_mode: "mm" (scanner-independent millimetres, the default) or "thesis_px" (pixels of the
            slice resized to `reference_px` x `reference_px`).
        spinal_mm: (left, right, up, down) around a spinal-canal point on Sagittal T2/STIR: reaches
            forward over the disc and vertebral bodies, back over the canal and the facets.
        foraminal_mm: around a foramen point on Sagittal T1 (the foramen between both pedicles).
        subarticular_mm: around a subarticular-recess point on Axial T2 (recess, canal and facet).
        thesis_px: (left, right, up, down) in reference pixels: the thesis's 96, 32, 40, 40 (a 128 x 80
            window of a 512 x 512 slice).
        reference_px: side of the reference slice of `thesis_px`.
        pad_slices: extra slices stored on each side of the depth axis for slice-shift jitter.
        pad_px: extra pixels (output scale) stored on each side of height and width for centre jitter.
        low_percentile: intensity clipped below this percentile of the sample's volume, mapped to 0.
        high_percentile: intensity clipped above this percentile, mapped to 1.
        views: second views built beside the primary crops (`lumbar.preprocess.views`: "axial_canal",
            "parasagittal_recess"); empty = none.
        spinal_slices, foraminal_slices, subarticular_slices: (before, after) slices of that group's crops
            (target_window), e.g. a deeper foraminal slab as the top teams fed the foramina (2nd place 24
            Sagittal T1 frames, 6th 13); empty = the global `before`/`after`. A second view takes the slab of
            the condition it serves, so its channel stacks with the primary crop.
    """

    mode: str = "target_window"
    size: int = 128
    before: int = 2
    after: int = 2
    depth: int = 15
    filter: str = "none"
    margin_mode: str = "mm"
    spinal_mm: Margins = (40.0, 24.0, 24.0, 24.0)
    foraminal_mm: Margins = (28.0, 28.0, 28.0, 28.0)
    subarticular_mm: Margins = (28.0, 28.0, 28.0, 28.0)
    thesis_px: Margins = (96.0, 32.0, 40.0, 40.0)
    reference_px: int = 512
    pad_slices: int = 1
    pad_px: int = 8
    low_percentile: float = 1.0
    high_percentile: float = 99.0
    views: tuple[str, ...] = ()
    spinal_slices: tuple[int, ...] = ()
    foraminal_slices: tuple[int, ...] = ()
    subarticular_slices: tuple[int, ...] = ()

    def __post_init__(self) -> None:

        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.margin_mode not in MARGIN_MODES:
            raise ValueError(f"margin_mode must be one of {MARGIN_MODES}, got {self.margin_mode!r}")
        if self.filter not in list_filters():
            raise ValueError(f"unknown filter {self.filter!r}; registered: {list_filters()}")
        for name in ("size", "depth", "reference_px"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("before", "after", "pad_slices", "pad_px"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("spinal_mm", "foraminal_mm", "subarticular_mm", "thesis_px"):
            value = getattr(self, name)
            if len(value) != 4 or value[0] + value[1] <= 0 or value[2] + value[3] <= 0:
                raise ValueError(
                    f"{name} must be (left, right, up, down) spanning a non-empty window, got {value}"
                )
        if not 0 <= self.low_percentile < self.high_percentile <= 100:
            raise ValueError(
                "percentiles must satisfy 0 <= low < high <= 100, "
                f"got {self.low_percentile}, {self.high_percentile}"
            )
        for view in self.views:
            get_view(view)
        self._check_slabs()
        self._check_jitter_keeps_point()

    def _check_slabs(self) -> None:
        """A slab is (before, after) >= 0, only in target_window; one equal to the global window is dropped,
        so it names the same cache as leaving it unset."""
        for name in SLAB_FIELDS:
            value = tuple(int(v) for v in getattr(self, name))
            if not value:
                continue
            if len(value) != 2 or min(value) < 0:
                raise ValueError(f"{name} must be (before, after) slices >= 0 or empty, got {value}")
            if self.mode != "target_window":
                raise ValueError(f"{name}={value} applies to mode target_window only, got mode {self.mode!r}")
            object.__setattr__(self, name, () if value == (self.before, self.after) else value)

    def _check_jitter_keeps_point(self) -> None:
        """A centre shift of up to `pad_px` must leave the label point inside the final window."""
        names = (
            ("thesis_px",)
            if self.margin_mode == "thesis_px"
            else ("spinal_mm", "foraminal_mm", "subarticular_mm")
        )
        for name in names:
            left, right, up, down = getattr(self, name)
            room = min(
                self.size * left / (left + right),
                self.size * right / (left + right),
                self.size * up / (up + down),
                self.size * down / (up + down),
            )
            if self.pad_px > room - 1:
                raise ValueError(
                    f"pad_px={self.pad_px} lets jitter push the label point out of a {self.size}-px window "
                    f"with {name}={getattr(self, name)} (at most {max(0, int(room - 1))})"
                )

    @property
    def out_depth(self) -> int:
        """Slices of the final (un-padded) tensor of a group without its own slab."""
        return self.before + 1 + self.after if self.mode == "target_window" else self.depth

    def slab(self, condition: str) -> tuple[int, int]:
        """(before, after) slices of a condition's crops (target_window): its group's slab, else the
        global."""
        if condition not in CONDITIONS:
            raise ValueError(f"unknown condition {condition!r}")
        return getattr(self, f"{CONDITION_GROUP[condition]}_slices") or (self.before, self.after)

    def depth_of(self, condition: str) -> int:
        """Slices of the final (un-padded) tensor of a condition's crops."""
        before, after = self.slab(condition)
        return before + 1 + after if self.mode == "target_window" else self.depth

    @property
    def slabbed(self) -> bool:
        """Whether some group has a slab of its own (crops of more than one depth)."""
        return any(getattr(self, name) for name in SLAB_FIELDS)

    def margins(self, condition: str) -> Margins:
        """(left, right, up, down) of a condition's crop, in mm or reference pixels by `margin_mode`."""
        if self.margin_mode == "thesis_px":
            return self.thesis_px
        if condition not in CONDITIONS:
            raise ValueError(f"unknown condition {condition!r}")
        return getattr(self, f"{CONDITION_GROUP[condition]}_mm")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (tuples become lists); `views` and the slabs only when set, so a cache
        built before they existed keeps its parameters (and its folder name)."""
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        for name in ("views", *SLAB_FIELDS):
            if not values[name]:
                del values[name]
        return values

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> RoiConfig:
        """Defaults updated by `overrides` (and keyword arguments), each cast to its default's type.

        Raises:
            KeyError: an unknown parameter name (the message suggests the closest one).
            ValueError: a value that cannot be cast, or a combination `__post_init__` rejects.
        """
        return cls(**cast_overrides(cls, {**(overrides or {}), **kwargs}))
