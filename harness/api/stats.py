"""Uncertainty of a score: percentile bootstrap confidence intervals over independent units.

The unit is whatever was sampled independently: a document for losses (its tokens are not
independent of each other), a prompt for NIAH, a repeat for timings. A ratio statistic
(``sum(numerators) / sum(denominators)``) covers token-weighted means: resampling documents and
dividing their summed losses by their summed token counts is the cluster bootstrap of the
per-token mean loss.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap interval and the number of units behind it."""

    value: float
    ci_low: float
    ci_high: float
    n: int

    def as_columns(self) -> dict[str, float | int]:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high, "n": self.n}


def _rng(seed: int | Sequence[int]) -> np.random.Generator:
    return np.random.default_rng(seed)


def _interval(stats: np.ndarray, value: float, level: float) -> tuple[float, float]:
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return math.nan, math.nan
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    # A percentile interval can miss the point estimate of a skewed statistic by a hair; widen
    # it so that ci_low <= value <= ci_high always holds.
    return float(min(low, value)), float(max(high, value))


def bootstrap_ratio(
    numerators: Sequence[float] | np.ndarray,
    denominators: Sequence[float] | np.ndarray,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int | Sequence[int] = 0,
) -> Estimate:
    """``sum(numerators) / sum(denominators)`` with a bootstrap interval over units (pairs).

    With one unit, or none, the interval is NaN: there is nothing to resample."""
    num = np.asarray(numerators, dtype=np.float64).reshape(-1)
    den = np.asarray(denominators, dtype=np.float64).reshape(-1)
    if num.shape != den.shape:
        raise ValueError(f"numerators and denominators differ in length: {num.size} vs {den.size}")
    n = int(num.size)
    total = den.sum()
    value = float(num.sum() / total) if n and total != 0 else math.nan
    if n < 2 or not math.isfinite(value):
        return Estimate(value, math.nan, math.nan, n)
    idx = _rng(seed).integers(0, n, size=(resamples, n))
    with np.errstate(invalid="ignore", divide="ignore"):
        stats = num[idx].sum(1) / den[idx].sum(1)
    low, high = _interval(stats, value, level)
    return Estimate(value, low, high, n)


def bootstrap_mean(
    values: Sequence[float] | np.ndarray,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int | Sequence[int] = 0,
) -> Estimate:
    """The mean of ``values`` (one per independent unit) with a bootstrap interval."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    return bootstrap_ratio(values, np.ones_like(values), resamples, level, seed)


def bootstrap_median(
    values: Sequence[float] | np.ndarray,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int | Sequence[int] = 0,
) -> Estimate:
    """The median of ``values`` with a bootstrap interval (timings: robust to a slow outlier).

    A NaN among the values makes the median NaN, and then the interval too, as for the mean."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    n = int(values.size)
    value = float(np.median(values)) if n else math.nan
    if n < 2 or not math.isfinite(value):
        return Estimate(value, math.nan, math.nan, n)
    idx = _rng(seed).integers(0, n, size=(resamples, n))
    low, high = _interval(np.median(values[idx], axis=1), value, level)
    return Estimate(value, low, high, n)
