"""Grades of synthetic studies: a latent severity per target, a noisy reader, and the exact oracle.

Model, per study and per target (condition x level, the 25 columns of train.csv):

1. A continuous latent severity `s`, Gaussian with a per-target mean and spread, correlated within a
   study through shared factors (the study's overall degeneration, the level's disc, the condition, and the
   region: the foramina, or the central canal with its recesses). The anatomy is drawn from `s`.
2. A reader writes the grade: with probability `label_noise` a draw from the target's real grade
   frequencies (a careless read), otherwise `s + e`, `e ~ N(0, reader_sd**2)`, cut at `THRESHOLDS`
   (Normal/Mild below the first, Severe above the second).
3. The oracle is exactly P(written grade | s) under that model: the best any predictor that sees the
   anatomy perfectly can do.
4. Given s and the written grade g, the chance that g was a noise draw is known exactly too:
   label_noise * prior[g] / oracle[g] (`noise_posterior`), the truth a label-noise filter is measured
   against (`lumbar.analysis.label_noise`).

The means and spreads are solved so that the written grades have the real per-target frequencies
(`grade_counts.csv`, counted from the competition's train.csv), whatever `reader_sd` is; the mixing with
the same frequencies in step 2 keeps them. The factor weights were fitted (by simulation) so that the
average Spearman correlations between written grades match the real file's (see
`correlation_summary`): same condition at other levels 0.27, the two sides of one level 0.40, other
conditions at one level 0.35, different condition and level 0.19.

Blank cells follow the real file: subarticular L1/L2 (and with it, half the time, L2/L3) is blank when the
axial series does not reach that disc; every other cell is blank at its real rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from importlib import resources

import numpy as np
import pandas as pd
from scipy.special import ndtr, ndtri

from lumbar.core.constants import CONDITION_GROUP, CONDITIONS, GRADES, LABEL_COLUMNS, LEVELS

#: Cut points of the reader's severity scale: Normal/Mild | Moderate | Severe.
THRESHOLDS: tuple[float, float] = (0.0, 1.0)

#: Weights of the shared factors in the latent severity (the rest is the target's own variance).
FACTOR_WEIGHTS: dict[str, float] = {"study": 0.42, "level": 0.26, "condition": 0.15, "region": 0.03}

#: Region of each condition: one factor per region and level ties its targets together.
REGION: dict[str, str] = {
    c: "foramen" if CONDITION_GROUP[c] == "foraminal" else "central" for c in CONDITIONS
}

_N_TARGETS = len(LABEL_COLUMNS)
_COND_INDEX = np.repeat(np.arange(len(CONDITIONS)), len(LEVELS))
_LEVEL_INDEX = np.tile(np.arange(len(LEVELS)), len(CONDITIONS))
_REGION_INDEX = np.array([0 if REGION[c] == "central" else 1 for c in CONDITIONS])[_COND_INDEX]
_SUBARTICULAR = np.array([CONDITION_GROUP[c] == "subarticular" for c in CONDITIONS])[_COND_INDEX]


def target_index(condition: str, level: str) -> int:
    """Position of a target in the 25-vector (train.csv column order)."""
    return CONDITIONS.index(condition) * len(LEVELS) + LEVELS.index(level)


def load_grade_counts() -> pd.DataFrame:
    """The real grade counts per condition and level, in train.csv column order (package data)."""
    with resources.files("lumbar.data.synthetic").joinpath("grade_counts.csv").open() as f:
        counts = pd.read_csv(f, comment="#")
    order = pd.MultiIndex.from_arrays([np.repeat(CONDITIONS, len(LEVELS)), np.tile(LEVELS, len(CONDITIONS))])
    return counts.set_index(["condition", "level"]).reindex(order).rename_axis(["condition", "level"])


@dataclass(frozen=True)
class LabelModel:
    """Latent severities, written grades and their exact probabilities for one generator setting.

    Attributes:
        reader_sd: spread of the reader's error on the severity scale (thresholds are 1 apart).
        label_noise: probability that a written grade ignores the anatomy (drawn from the prior).
    """

    reader_sd: float = 0.25
    label_noise: float = 0.05

    def __post_init__(self):
        if not 0.0 <= self.label_noise < 1.0:
            raise ValueError(f"label_noise must be in [0, 1), got {self.label_noise}")
        if self.reader_sd <= 0:
            raise ValueError(f"reader_sd must be > 0, got {self.reader_sd}")
        if self.reader_sd >= self.total_sd.min():
            raise ValueError(
                f"reader_sd {self.reader_sd} leaves no room for anatomy (max {self.total_sd.min():.2f})"
            )

    @cached_property
    def counts(self) -> pd.DataFrame:
        return load_grade_counts()

    @cached_property
    def prior(self) -> np.ndarray:
        """(25, 3) real grade frequencies of each target (blank cells excluded)."""
        n = self.counts[list(GRADES)].to_numpy(float)
        return n / n.sum(axis=1, keepdims=True)

    @cached_property
    def total_sd(self) -> np.ndarray:
        """(25,) spread of latent + reader error that reproduces the real frequencies."""
        a, b = self._cut_quantiles
        return (THRESHOLDS[1] - THRESHOLDS[0]) / (b - a)

    @cached_property
    def _cut_quantiles(self) -> tuple[np.ndarray, np.ndarray]:
        cum = np.cumsum(self.prior, axis=1)
        return ndtri(cum[:, 0]), ndtri(cum[:, 1])

    @cached_property
    def latent_mean(self) -> np.ndarray:
        """(25,) mean of the latent severity per target."""
        return THRESHOLDS[0] - self._cut_quantiles[0] * self.total_sd

    @cached_property
    def latent_sd(self) -> np.ndarray:
        """(25,) spread of the latent severity per target."""
        return np.sqrt(self.total_sd**2 - self.reader_sd**2)

    @cached_property
    def blank_rate(self) -> np.ndarray:
        """(25,) real share of blank cells per target."""
        c = self.counts
        return (c["blank"] / c[[*GRADES, "blank"]].sum(axis=1)).to_numpy(float)

    def draw_latent(self, rng: np.random.Generator) -> np.ndarray:
        """One study's (25,) latent severities."""
        w = FACTOR_WEIGHTS
        own = 1.0 - sum(w.values())
        z = (
            np.sqrt(w["study"]) * rng.standard_normal()
            + np.sqrt(w["level"]) * rng.standard_normal(len(LEVELS))[_LEVEL_INDEX]
            + np.sqrt(w["condition"]) * rng.standard_normal(len(CONDITIONS))[_COND_INDEX]
            + np.sqrt(w["region"]) * rng.standard_normal((2, len(LEVELS)))[_REGION_INDEX, _LEVEL_INDEX]
            + np.sqrt(own) * rng.standard_normal(_N_TARGETS)
        )
        return self.latent_mean + self.latent_sd * z

    def oracle(self, severity: np.ndarray) -> np.ndarray:
        """P(written grade | latent severity): (..., 25) -> (..., 25, 3), rows sum to 1."""
        s = np.asarray(severity, float)
        cdf = ndtr((np.asarray(THRESHOLDS)[None, :] - s[..., None]) / self.reader_sd)  # P(s + e < t)
        read = np.diff(
            np.concatenate([np.zeros_like(cdf[..., :1]), cdf, np.ones_like(cdf[..., :1])], -1), axis=-1
        )
        return (1.0 - self.label_noise) * read + self.label_noise * self.prior

    def noise_posterior(self, oracle: np.ndarray, grades: np.ndarray) -> np.ndarray:
        """P(the written grade was a noise draw | grade, severity) = eps * prior / oracle, per target.

        Computed from what `draw_grades` drew from, so it costs no random draws (the generator's streams, and
        with them every written file, stay as they were).

        Args:
            oracle: (..., 25, 3) `oracle(severity)`.
            grades: (..., 25) written grades (NaN or negative = blank: NaN out).
        """
        grades = np.asarray(grades, float)
        blank = ~(grades >= 0)
        g = np.where(blank, 0, grades).astype(np.int64)
        prior = np.broadcast_to(self.prior, np.shape(oracle))
        noise = self.label_noise * np.take_along_axis(prior, g[..., None], -1)[..., 0]
        written = np.take_along_axis(np.asarray(oracle, float), g[..., None], -1)[..., 0]  # >= noise
        p = np.divide(noise, written, out=np.zeros_like(written), where=written > 0)
        return np.where(blank, np.nan, np.clip(p, 0.0, 1.0))

    def draw_grades(self, rng: np.random.Generator, severity: np.ndarray) -> np.ndarray:
        """Written grades (int8, 0/1/2) for (..., 25) severities, drawn from `oracle`."""
        p = self.oracle(severity)
        u = rng.random(p.shape[:-1])[..., None]
        return (u > np.cumsum(p, axis=-1)[..., :-1]).sum(-1).astype(np.int8)

    def draw_axial_gap(self, rng: np.random.Generator) -> int:
        """How many top discs (0, 1 or 2 from L1/L2 down) the axial series misses, at the real rates."""
        rate = self.blank_rate
        p_top1 = rate[
            [target_index(c, "l1_l2") for c in CONDITIONS if CONDITION_GROUP[c] == "subarticular"]
        ].mean()
        p_top2 = rate[
            [target_index(c, "l2_l3") for c in CONDITIONS if CONDITION_GROUP[c] == "subarticular"]
        ].mean()
        u = rng.random()
        return 2 if u < p_top2 else 1 if u < p_top1 else 0

    def draw_blanks(self, rng: np.random.Generator, axial_gap: int) -> np.ndarray:
        """(25,) bool: cells left blank. Subarticular cells at discs the axial series misses are blank."""
        blank = rng.random(_N_TARGETS) < self.blank_rate
        top = (_LEVEL_INDEX < 2) & _SUBARTICULAR
        blank[top] = False
        blank[_SUBARTICULAR & (_LEVEL_INDEX < axial_gap)] = True
        return blank


def correlation_summary(grades: pd.DataFrame) -> dict[str, float]:
    """Average Spearman correlation between targets, by kind of pair.

    Args:
        grades: one row per study, the 25 targets as columns (numbers, NaN where blank).

    Returns:
        Means over pairs of: `same_condition` (other levels), `sides` (left and right of one condition and
        level), `same_level` (other conditions at one level), `other` (condition and level both differ).
    """
    cols = list(LABEL_COLUMNS)
    corr = grades[cols].astype(float).corr(method="spearman").to_numpy()
    kinds: dict[str, list[float]] = {"same_condition": [], "sides": [], "same_level": [], "other": []}
    for i in range(_N_TARGETS):
        for j in range(i + 1, _N_TARGETS):
            ci, cj = CONDITIONS[_COND_INDEX[i]], CONDITIONS[_COND_INDEX[j]]
            if ci == cj:
                kind = "same_condition"
            elif _LEVEL_INDEX[i] != _LEVEL_INDEX[j]:
                kind = "other"
            elif ci.split("_", 1)[1] == cj.split("_", 1)[1]:
                kind = "sides"
            else:
                kind = "same_level"
            kinds[kind].append(float(corr[i, j]))
    return {k: float(np.mean(v)) for k, v in kinds.items()}
