"""Which errors a run may survive, and how many survivals it may have before it fails.

A real data set has odd files: a truncated DICOM, a degenerate geometry tag, a series that is missing. One
such study must not stop a 2,000-study training run or a Kaggle submission; it falls back (its sample is left
out, its rows get the class prior) and the run names it. Only the errors that bad input raises are caught
(`DATA_ERRORS`); a programming error (TypeError, KeyError, IndexError, AttributeError...) or running out of
memory propagates. And a run in which many inputs fall back is itself broken (a missing decoder, a wrong
folder), so past a limit it fails too, naming what fell back and why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import cv2

#: What malformed data raises while a sample or study is built (DicomReadError is a ValueError).
DATA_ERRORS = (ValueError, ZeroDivisionError, OSError, cv2.error)
#: Default share of studies (or samples) that may fall back before a run fails.
MAX_FALLBACK_SHARE = 0.05
#: How many fallbacks an error message lists before it says how many more there are.
SHOW = 20


class FallbackLimitError(ValueError):
    """More inputs fell back than a run allows; the message names them and why."""


def fallback_limit(total: int, share: float) -> int:
    """How many of `total` inputs may fall back: `share` of them, and always at least one."""
    if not 0 <= share <= 1:
        raise ValueError(f"the share of inputs that may fall back must be within [0, 1], got {share}")
    return max(1, math.floor(share * total))


def check_fallbacks(fallbacks: Mapping[object, str], total: int, share: float, what: str) -> None:
    """Raise `FallbackLimitError` when more than `fallback_limit(total, share)` inputs fell back.

    Args:
        fallbacks: each input that fell back (a study id, a sample id) -> why.
        total: how many inputs the run had.
        share: the share allowed (`MAX_FALLBACK_SHARE` by default in the callers).
        what: the inputs' name in the message, e.g. "studies".
    """
    allowed = fallback_limit(total, share)
    if len(fallbacks) <= allowed:
        return
    items = sorted(fallbacks.items(), key=lambda kv: (isinstance(kv[0], str), kv[0]))  # study ids numerically
    lines = [f"  {key}: {why}" for key, why in items[:SHOW]]
    if len(items) > SHOW:
        lines.append(f"  ... and {len(items) - SHOW} more")
    raise FallbackLimitError(
        f"{len(fallbacks)} of {total} {what} fell back, more than the {allowed} allowed "
        f"(share {share:g}); something is wrong with the data or the code:\n" + "\n".join(lines)
    )
