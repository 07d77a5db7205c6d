"""Test-time augmentation: views of a batch that keep the anatomy's meaning, their probabilities averaged.

A TTA entry is registered under one name, with the series whose crops it keeps the meaning of, and gives
one or more views of a batch (B, C, D, H, W): "reverse_slices" reads the slices in the opposite order, a
left-right mirror of a Sagittal T2 stack around the midline (spinal canal) or head-to-foot of Axial T2 slices
around a disc (subarticular), but not of a Sagittal T1 stack around one foramen, whose slices run from the
canal outwards; "shifts" moves the crop two ways in-plane by 1/16 of its size (edges replicated), as the
localizer's error would, on every series. The prediction of a TTA set is the mean of the softmax over the
identity and every view of its entries (`tta_views`).

Which set helps is measured, not assumed: `TrainConfig.tta` lists the candidate entries; after training
every unit (condition group) predicts its held-out items once per entry `usable` on its series, and each
subset of those is then a weighted mean of the entries' predictions (`combine`). `choose_fold_wise` gives the
rows of fold k the subset that scores best on the other folds' rows (no choice is fitted on the rows it
scores) and the test set the subset that scores best on all of them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from lumbar.core.constants import AXIAL_T2, SAGITTAL_T1, SAGITTAL_T2
from lumbar.core.registry import Registry
from lumbar.preprocess.views import LATERAL_T2

ViewFn = Callable[[torch.Tensor], torch.Tensor]
#: The kinds of crop (`lumbar.train.tasks.Task.channel_kinds`): the three series and an off-midline Sagittal
#: T2/STIR view (`lumbar.preprocess.views.LATERAL_T2`), whose slices, like a foramen's, run from the canal
#: outwards.
ALL_SERIES = frozenset({SAGITTAL_T1, SAGITTAL_T2, AXIAL_T2, LATERAL_T2})
IDENTITY = "identity"


@dataclass(frozen=True)
class TtaEntry:
    """A registered TTA entry: its view functions' factory and the series whose crops it keeps the meaning
    of."""

    make_views: Callable[[], list[ViewFn]]
    series: frozenset[str]


_TTA: Registry[TtaEntry] = Registry("test-time augmentation")


def register_tta(name: str, series: Sequence[str] = tuple(ALL_SERIES)) -> Callable:
    """Register a factory of view functions under `name`, valid on crops of `series` (a duplicate name is an
    error)."""

    def decorate(factory: Callable[[], list[ViewFn]]) -> Callable[[], list[ViewFn]]:
        _TTA.register(name)(TtaEntry(factory, frozenset(series)))
        return factory

    return decorate


def list_tta() -> list[str]:
    """Registered TTA names, sorted."""
    return sorted(_TTA)


@register_tta(IDENTITY)
def _identity() -> list[ViewFn]:
    """The batch as it is (returned, not copied: a set of only this view is the plain prediction)."""
    return [lambda x: x]


@register_tta("reverse_slices", series=(SAGITTAL_T2, AXIAL_T2))
def _reverse_slices() -> list[ViewFn]:
    """The slices in the opposite order (dimension D of (B, C, D, H, W))."""
    return [lambda x: x.flip(-3)]


def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Move the content of (..., H, W) by (dy, dx) pixels, replicating the edge it leaves."""
    h, w = x.shape[-2:]
    pad = (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0))  # left, right, top, bottom
    flat = x.reshape(-1, 1, h, w)
    moved = F.pad(flat, pad, mode="replicate")[
        ..., max(-dy, 0) : max(-dy, 0) + h, max(-dx, 0) : max(-dx, 0) + w
    ]
    return moved.reshape(x.shape)


@register_tta("shifts")
def _shifts() -> list[ViewFn]:
    """Two in-plane shifts of 1/16 of the crop (diagonally, both ways): the localizer misses by a few
    pixels."""

    def view(sign: int) -> ViewFn:
        def fn(x: torch.Tensor) -> torch.Tensor:
            s = sign * max(1, round(x.shape[-1] / 16))
            return shift(x, s, s)

        return fn

    return [view(1), view(-1)]


def tta_views(names: Sequence[str], identity: bool = True) -> list[ViewFn]:
    """The view functions of TTA entries, after the identity when `identity`.

    Raises:
        ValueError: an unknown name (listing the registered ones).
    """
    unknown = [n for n in names if n not in _TTA]
    if unknown:
        raise ValueError(f"unknown test-time augmentation(s) {unknown}; registered: {list_tta()}")
    if identity:  # the identity first, and once
        names = [IDENTITY, *(n for n in names if n != IDENTITY)]
    return [fn for name in names for fn in _TTA[name].make_views()]


def usable(candidates: Sequence[str], kinds: Iterable[str]) -> tuple[str, ...]:
    """The candidate entries that keep the meaning of every kind of crop a unit reads (`Task.crop_kinds`)."""
    kinds = set(kinds)
    return tuple(c for c in candidates if kinds <= _TTA[c].series)


def n_views(name: str) -> int:
    return len(_TTA[name].make_views())


def candidate_sets(candidates: Sequence[str]) -> list[tuple[str, ...]]:
    """Every subset of the candidate entries, the empty one (plain prediction) first."""
    candidates = list(dict.fromkeys(c for c in candidates if c != IDENTITY))
    return [s for k in range(len(candidates) + 1) for s in itertools.combinations(candidates, k)]


def combine(per_entry: Mapping[str, np.ndarray], subset: Sequence[str]) -> np.ndarray:
    """The probabilities of a TTA set from each entry's mean over its own views (`per_entry[IDENTITY]` the
    plain
    prediction): the mean over all views, each view counted once."""
    if not subset:
        return per_entry[IDENTITY]
    total = per_entry[IDENTITY].astype(np.float64)
    count = 1
    for name in subset:
        k = n_views(name)
        total = total + k * per_entry[name]
        count += k
    return total / count


def choose_fold_wise(
    scores: Mapping[tuple[str, ...], Mapping[int, float]], higher_is_better: bool
) -> tuple[dict[int, tuple[str, ...]], tuple[str, ...]]:
    """Per fold, the set with the best mean score over the *other* folds' rows; and the best over all folds.

    Args:
        scores: TTA set -> fold -> score of that fold's held-out rows with the set.
        higher_is_better: the direction of the unit's metric.

    Returns:
        (fold -> set for its rows, the set for the test predictions). With one fold there are no other rows:
        that fold keeps the plain prediction, and the test set gets the best on it.
    """
    sign = 1.0 if higher_is_better else -1.0
    sets = list(scores)
    folds = sorted(next(iter(scores.values())))

    def best(on: list[int]) -> tuple[str, ...]:
        def value(s: tuple[str, ...]) -> float:
            v = [scores[s][f] for f in on if not math.isnan(scores[s][f])]
            return sign * float(np.mean(v)) if v else -math.inf

        return max(sets, key=lambda s: (value(s), -len(s)))  # ties: the cheaper set

    per_fold = {f: (best([g for g in folds if g != f]) if len(folds) > 1 else ()) for f in folds}
    return per_fold, best(folds)


def tta_report(summary: Mapping) -> pd.DataFrame:
    """One row per unit and TTA set of a run's `result.json`: its mean held-out score over the folds, the
    folds
    whose rows use it and whether the test predictions do (empty when the run had no candidates)."""
    rows = []
    for unit, record in summary.get("units", {}).items():
        for name, by_fold in record.get("tta_scores", {}).items():
            subset = [] if name == IDENTITY else name.split("+")
            rows.append(
                {
                    "unit": unit,
                    "tta": name,
                    "mean_score": float(np.nanmean(list(by_fold.values()))),
                    "folds": ",".join(f for f, s in record["tta_folds"].items() if s == subset),
                    "test": record["tta"] == subset,
                }
            )
    return pd.DataFrame(rows, columns=["unit", "tta", "mean_score", "folds", "test"])
