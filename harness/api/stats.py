"""Uncertainty of a score: percentile bootstrap confidence intervals over independent units.

Means and ratios take the expanded percentile interval (:func:`expanded_level`), which keeps its
level over the few units a small run has (9 documents, 4 cells), widened to Student's t interval
where that is wider (2 to 5 units, where no resampled mean can leave the units' range); medians
(and ratios of two medians) the plain percentile one.

The unit is whatever was sampled independently: a document for losses (its tokens are not
independent of each other), a prompt for NIAH, a repeat for timings. A rate over a few units
(NIAH's prompts) takes a Wilson score interval instead (:func:`rate`). A ratio statistic
(``sum(numerators) / sum(denominators)``) covers token-weighted means: resampling documents and
dividing their summed losses by their summed token counts is the cluster bootstrap of the
per-token mean loss. Where models of several training seeds were scored, the seeds are resampled
too (:func:`bootstrap_seeded_ratio`): an interval over units alone covers those trained models only.
A result table keeps no units, only each seed's value and interval; :func:`across_seeds` makes the
interval over seeds of those (the tables' and figures' points).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

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


def _satterthwaite(parts: Sequence[tuple[float, float]]) -> tuple[float, float | None]:
    """The sum of independent variances, each given with its degrees of freedom, and the
    Welch-Satterthwaite degrees of freedom of that sum (None where every variance is 0)."""
    variance = sum(v for v, _ in parts)
    spread = sum(v * v / df for v, df in parts)
    return variance, (variance * variance / spread if spread > 0 else None)


def _rng(seed: int | Sequence[int]) -> np.random.Generator:
    return np.random.default_rng(seed)


@functools.lru_cache(maxsize=None)
def t_quantile(q: float, df: int) -> float:
    """Student's t quantile (0.5 < q < 1) with ``df`` degrees of freedom: its CDF integrated
    numerically and inverted by bisection (numpy only; accurate to about 1e-7)."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float) -> float:  # 0.5 + the density's integral over [0, x] (Simpson's rule)
        t = np.linspace(0.0, x, 4001)
        f = np.exp(log_norm - (df + 1) / 2 * np.log1p(t * t / df))
        return 0.5 + float((f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum()) * (t[1] - t[0]) / 3)

    lo, hi = 0.0, 1.0
    while cdf(hi) < q:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < q else (lo, mid)
    return (lo + hi) / 2


@functools.lru_cache(maxsize=None)
def expanded_level(level: float, n: int) -> float:
    """The level whose percentile interval has ``level``'s coverage at ``n`` units (Hesterberg's
    expanded percentile interval): the plain percentile bootstrap is too narrow for few units (it
    divides the variance by n, and takes normal quantiles where t's apply), covering 0.89 instead
    of 0.95 at 9 documents and 0.79 at 4. Its normal quantile becomes sqrt(n / (n - 1)) times
    t's with n - 1 degrees of freedom."""
    z = math.sqrt(n / (n - 1)) * t_quantile(0.5 + level / 2, n - 1)
    return 2 * NormalDist().cdf(z) - 1


def family_level(level: float, k: int) -> float:
    """Bonferroni's level for each of ``k`` intervals that are to cover together with ``level``
    (family-wise): ``1 - (1 - level) / k``.

    A verdict that ANY one of k intervals can reach (union-intersection: "some fixed-state model
    still gains") errs when one of k true nulls is resolved by chance, up to k times as often as one
    interval errs: 23% for five independent 95% intervals; at this level, at most 5%. A verdict
    that needs ALL k to agree (intersection-union) errs only when the one false among them is
    resolved, at most as often as one interval errs: it needs no correction. Holm's first step is
    this Bonferroni test, so for an any-of-k verdict Holm decides the same."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    if k < 1:
        raise ValueError(f"k (the intervals in the family) must be at least 1, got {k}")
    return 1.0 - (1.0 - level) / k


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
    low, high = _interval(stats, value, expanded_level(level, n))
    # A resampled mean never leaves the units' range, which holds the true mean with chance at most
    # 1 - 2 / 2^n (:func:`median_max_coverage`): 50% at 2 units, 75% at 3, 88% at 4, whatever the
    # level. Student's t interval (the ratio's linearised standard error) has no such ceiling.
    half = t_quantile(0.5 + level / 2, n - 1) * math.sqrt(n / (n - 1) * float(((num - value * den) ** 2).sum())) / abs(total)
    return Estimate(value, min(low, value - half), max(high, value + half), n)


@dataclass(frozen=True)
class SeededEstimate(Estimate):
    """An :class:`Estimate` over models trained with several seeds, with each seed's own point
    estimate (``per_seed``: (seed, value) pairs, in seed order)."""

    per_seed: tuple[tuple[Any, float], ...] = ()


def seed_order(seed: Any) -> tuple:
    """A sort key of training seeds: in numeric order (2 before 10); a seed may be None (records
    from before seeds were written), after the numbered ones."""
    return (0, seed, "") if isinstance(seed, (int, np.integer)) else (1, 0, str(seed))


def bootstrap_seeded_ratio(
    seeds: Sequence[Any],
    units: Sequence[Any],
    numerators: Sequence[float] | np.ndarray,
    denominators: Sequence[float] | np.ndarray,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int | Sequence[int] = 0,
) -> SeededEstimate:
    """``sum(numerators) / sum(denominators)`` over cells (one training seed's model scored on
    one unit: a document, test sequence or prompt), with an interval that covers seed-to-seed
    variance (another init or data order gives another model), not only the units these models
    happened to be scored on. ``n``: the distinct units; ``per_seed``: each seed's own ratio.

    One seed: :func:`bootstrap_ratio` over the units, as before (there is no seed to resample).
    Several: a two-stage cluster bootstrap. Each resample draws the seeds with replacement, then
    the units: a unit scored by one seed alone (an MQAR test sequence, a document of that seed's
    own held-out split) comes with its seed, whose mean already holds its noise (resampling the
    top level of a nested design, as Davison & Hinkley advise); the units scored by several seeds
    (the same held-out document) are drawn with replacement, each draw counting for every seed
    that scored it (Owen's pigeonhole bootstrap for a crossed design: the seeds share a
    document's effect, which the seed draw alone cannot see). A cell weighs its seed's count
    times its unit's, and its score is formed before any resampling, so what is paired (two
    models of one seed on one window) stays paired. Over few seeds the percentile interval is
    too narrow (3 seeds give 10 distinct draws), so as in :func:`bootstrap_ratio` it takes the
    expanded level and at least Student's t interval, with the two stages' linearised variances
    added and Satterthwaite's degrees of freedom: near seeds - 1 where the seeds disagree, near
    shared units - 1 where they agree (identical seeds give the one-seed interval).

    Simulated (seed, document and cell effects, 300 runs per case), it covered the mean in
    94-98% of runs at 3 and 5 seeds x 9 documents, nested, crossed or partly shared (99% when
    crossed cells hold noise alone: the pigeonhole counts it twice), and 90-97% at 2 seeds, which
    can hardly estimate their own spread; the bootstrap over units alone covered 15-97%."""
    num = np.asarray(numerators, dtype=np.float64).reshape(-1)
    den = np.asarray(denominators, dtype=np.float64).reshape(-1)
    if not len(seeds) == len(units) == num.size == den.size:
        raise ValueError(f"seeds, units, numerators and denominators differ in length: "
                         f"{len(seeds)}, {len(units)}, {num.size}, {den.size}")
    seed_names = sorted(set(seeds), key=seed_order)
    unit_names = sorted(set(units), key=str)
    s_of, u_of = {s: i for i, s in enumerate(seed_names)}, {u: i for i, u in enumerate(unit_names)}
    s_index = np.array([s_of[s] for s in seeds], dtype=np.int64)
    u_index = np.array([u_of[u] for u in units], dtype=np.int64)
    n_seeds, n_units = len(seed_names), len(unit_names)
    top, bottom = np.zeros((n_seeds, n_units)), np.zeros((n_seeds, n_units))
    np.add.at(top, (s_index, u_index), num)
    np.add.at(bottom, (s_index, u_index), den)
    seed_top, seed_bottom = top.sum(1), bottom.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_seed = tuple(zip(seed_names, (seed_top / seed_bottom).tolist()))
    if n_seeds < 2:
        est = bootstrap_ratio(top.sum(0), bottom.sum(0), resamples, level, seed)
        return SeededEstimate(est.value, est.ci_low, est.ci_high, est.n, per_seed)
    total = seed_bottom.sum()
    value = float(seed_top.sum() / total) if total != 0 else math.nan
    if not math.isfinite(value):
        return SeededEstimate(value, math.nan, math.nan, n_units, per_seed)
    scored = np.zeros((n_seeds, n_units), dtype=bool)
    scored[s_index, u_index] = True
    shared = scored.sum(0) > 1  # units scored by two seeds or more; one seed's alone come with their seed
    rng = _rng(seed)
    seed_counts = _counts(rng.integers(0, n_seeds, size=(resamples, n_seeds)), n_seeds)
    n_shared = int(shared.sum())
    unit_counts = _counts(rng.integers(0, n_shared, size=(resamples, n_shared)), n_shared)

    def resampled(scores: np.ndarray) -> np.ndarray:
        return seed_counts @ scores[:, ~shared].sum(1) + ((seed_counts @ scores[:, shared]) * unit_counts).sum(1)

    with np.errstate(invalid="ignore", divide="ignore"):
        stats = resampled(top) / resampled(bottom)
    # linearised variances of the two stages (as bootstrap_ratio's), each with its degrees of freedom
    parts = [(n_seeds / (n_seeds - 1) * float(((seed_top - value * seed_bottom) ** 2).sum()), n_seeds - 1)]
    if n_shared > 1:
        z = (top - value * bottom)[:, shared].sum(0)
        parts.append((n_shared / (n_shared - 1) * float(((z - z.mean()) ** 2).sum()), n_shared - 1))
    variance, df = _satterthwaite(parts)
    if df is None:
        df = n_seeds - 1
    low, high = _interval(stats, value, expanded_level(level, df + 1))
    half = t_quantile(0.5 + level / 2, df) * math.sqrt(variance) / abs(total)
    return SeededEstimate(value, min(low, value - half), max(high, value + half), n_units, per_seed)


def across_seeds(
    values: Sequence[float] | np.ndarray,
    lows: Sequence[float] | np.ndarray,
    highs: Sequence[float] | np.ndarray,
    level: float = DEFAULT_LEVEL,
) -> Estimate:
    """The mean of several training seeds' values (one model each, one value per seed) with an
    interval that covers seed-to-seed variance, from the seeds' values and their own intervals
    (``lows``, ``highs``; NaN where a seed has none) alone, as a result table holds them: the
    wider, at each end, of Student's t interval over the values (seeds - 1 degrees of freedom)
    and the seeds' own intervals averaged (where every seed has one). ``n``: the seeds.

    The t interval covers the seeds' spread and, where each seed was scored on units of its own
    (the default held-out split follows the training seed; NIAH prompts, MQAR test sequences and
    timing repeats are each seed's), the units' noise too, which is in that spread. Where the
    seeds read the same units (a fixed ``split_seed``) they share the units' noise, which no
    spread between them shows, and a table cannot tell the two designs apart; the averaged
    intervals bound that shared part (an average's spread is at most the average spread), as
    :func:`bootstrap_seeded_ratio`'s unit stage does from the units themselves. Simulated (300-4000
    runs a case: 2, 3, 5 and 10 seeds x 9 units, seed spread 0 to 3 times a seed's standard error,
    units nested or crossed) it covered the mean in 91-100% of runs; the t interval alone covered
    17-95% where the units were crossed."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    lo = np.asarray(lows, dtype=np.float64).reshape(-1)
    hi = np.asarray(highs, dtype=np.float64).reshape(-1)
    if not v.size == lo.size == hi.size:
        raise ValueError(f"values, lows and highs differ in length: {v.size}, {lo.size}, {hi.size}")
    k = int(v.size)
    value = float(v.mean()) if k else math.nan
    if k < 2 or not math.isfinite(value):
        return Estimate(value, math.nan, math.nan, k)
    half = t_quantile(0.5 + level / 2, k - 1) * float(v.std(ddof=1)) / math.sqrt(k)
    low, high = value - half, value + half
    if np.isfinite(lo).all() and np.isfinite(hi).all():
        low, high = min(low, float(lo.mean())), max(high, float(hi.mean()))
    return Estimate(value, low, high, k)


def _counts(drawn: np.ndarray, size: int) -> np.ndarray:
    """(resamples, size) counts of each index among each row of ``drawn`` (resamples, k)."""
    offsets = drawn + size * np.arange(drawn.shape[0])[:, None]
    return np.bincount(offsets.ravel(), minlength=size * drawn.shape[0]).reshape(drawn.shape[0], size).astype(np.float64)


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

    A NaN among the values makes the median NaN, and then the interval too, as for the mean.
    Few values bound what any interval of a median can claim: from n timings the widest, their
    range, covers the true median with probability 1 - 2 / 2^n (75% at 3 repeats, 94% at 5;
    :func:`median_max_coverage`), so read the interval of a median over fewer than 6 repeats as a
    spread, not a 95% interval."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    n = int(values.size)
    value = float(np.median(values)) if n else math.nan
    if n < 2 or not math.isfinite(value):
        return Estimate(value, math.nan, math.nan, n)
    idx = _rng(seed).integers(0, n, size=(resamples, n))
    low, high = _interval(np.median(values[idx], axis=1), value, level)
    return Estimate(value, low, high, n)


def median_max_coverage(n: int) -> float:
    """The most that any interval of a median over ``n`` values can cover: the widest, their
    range, misses the true median only when every value falls on one side of it, with chance
    2 / 2^n (0.75 at 3 values, 0.94 at 5; 0 below 2). Below the level asked for, a median's
    interval is a spread of the values, not a confidence interval."""
    return max(0.0, 1.0 - 2.0 ** (1 - n))


def bootstrap_median_ratio(
    numerators: Sequence[float] | np.ndarray,
    denominators: Sequence[float] | np.ndarray,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int | Sequence[int] = 0,
) -> Estimate:
    """``median(numerators) / median(denominators)`` of two independent samples (two models'
    timing repeats: not paired), with a bootstrap interval that resamples each on its own.

    ``n`` is the smaller sample, which bounds the interval as :func:`bootstrap_median` says
    (:func:`median_max_coverage`); with fewer than 2 values on either side there is no interval."""
    num = np.asarray(numerators, dtype=np.float64).reshape(-1)
    den = np.asarray(denominators, dtype=np.float64).reshape(-1)
    n = int(min(num.size, den.size))
    with np.errstate(invalid="ignore", divide="ignore"):
        value = float(np.median(num) / np.median(den)) if n else math.nan
    if n < 2 or not math.isfinite(value):
        return Estimate(value, math.nan, math.nan, n)
    rng = _rng(seed)
    top = np.median(num[rng.integers(0, num.size, size=(resamples, num.size))], axis=1)
    bottom = np.median(den[rng.integers(0, den.size, size=(resamples, den.size))], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        low, high = _interval(top / bottom, value, level)
    return Estimate(value, low, high, n)


@dataclass(frozen=True)
class StratifiedEstimate(Estimate):
    """An :class:`Estimate` of a ratio of two means over seeds (:func:`bootstrap_seeded_median_ratio`),
    with how many seeds each side has (``seeds``: numerator's, denominator's)."""

    seeds: tuple[int, int] = (1, 1)


def bootstrap_seeded_median_ratio(
    numerators: Sequence[Sequence[float]],
    denominators: Sequence[Sequence[float]],
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int | Sequence[int] = 0,
) -> Estimate:
    """The mean over seeds of each seed's median of ``numerators`` over the same of
    ``denominators`` (each: one list of timing repeats per training seed, as a table's point
    over seeds averages their medians), with an interval over the repeats and, where a side has
    several seeds, over its seeds.

    One seed each: :func:`bootstrap_median_ratio`, to the last digit. Several: a stratified
    bootstrap, each seed's repeats resampled on their own (the seeds held fixed), widened at
    each end to Student's t interval of the ratio over the seeds of the sides that have two or
    more (their medians' spread, linearised as :func:`bootstrap_ratio`'s, Welch-Satterthwaite's
    degrees of freedom): each seed's repeats ran in a process of its own, whose load no repeat
    of another shows, as :func:`across_seeds` widens a time's own interval. ``n``: the fewest
    repeats of any seed, which bounds the interval as :func:`bootstrap_median` says."""
    if len(numerators) == 1 and len(denominators) == 1:
        return bootstrap_median_ratio(numerators[0], denominators[0], resamples, level, seed)
    sides = [[np.asarray(s, dtype=np.float64).reshape(-1) for s in side] for side in (numerators, denominators)]
    counts = (len(sides[0]), len(sides[1]))
    n = min((s.size for side in sides for s in side), default=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        medians = [np.array([np.median(s) if s.size else math.nan for s in side]) for side in sides]
        means = [float(m.mean()) if m.size else math.nan for m in medians]
        value = means[0] / means[1] if n else math.nan
    if n < 2 or not math.isfinite(value):
        return StratifiedEstimate(value, math.nan, math.nan, n, counts)
    rng = _rng(seed)
    drawn = [np.mean([np.median(s[rng.integers(0, s.size, size=(resamples, s.size))], axis=1) for s in side], axis=0)
             for side in sides]
    with np.errstate(invalid="ignore", divide="ignore"):
        low, high = _interval(drawn[0] / drawn[1], value, level)
    # d(a / b) = da / b - a db / b^2: each side's seeds' variance of its mean, with its degrees of freedom
    scale = (1.0 / means[1], means[0] / means[1] ** 2)
    parts = [(float(m.var(ddof=1)) / m.size * g * g, m.size - 1) for m, g in zip(medians, scale) if m.size > 1]
    variance, df = _satterthwaite(parts)
    if df is not None:
        half = t_quantile(0.5 + level / 2, df) * math.sqrt(variance)
        low, high = min(low, value - half), max(high, value + half)
    return StratifiedEstimate(value, low, high, n, counts)


def rate(values: Sequence[float] | np.ndarray, level: float = DEFAULT_LEVEL) -> Estimate:
    """The mean of ``values``, each one unit's rate in [0, 1] (a prompt's share of answers found),
    with a Wilson score interval over the units.

    A percentile bootstrap fails a rate over a few units: when every unit scores the same (3
    prompts, all answered) it has width 0, and at 3 units and a true rate of 0.8 it covered the
    rate in 46% of 2000 simulated cells, not 95%. The Wilson interval takes the variance
    p(1 - p), the largest a unit in [0, 1] with mean p can have, so it keeps its level for
    fractional units too (conservatively) and stays inside [0, 1]."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    n = int(values.size)
    if ((values < 0) | (values > 1)).any():
        raise ValueError(f"a rate's units must lie in [0, 1], got {values[(values < 0) | (values > 1)][:3]}")
    return wilson(float(values.mean()) if n else math.nan, n, level)


def wilson(p: float, n: int, level: float = DEFAULT_LEVEL) -> Estimate:
    """A rate ``p`` over ``n`` units in [0, 1] with its Wilson score interval (see :func:`rate`);
    for a rate whose units are gone, such as lm-eval's aggregated accuracies."""
    return _wilson(p, n, n, level)


def clustered_rate(values: Sequence[float] | np.ndarray, trials: int, level: float = DEFAULT_LEVEL) -> Estimate:
    """The mean of ``values``, each one unit's share of ``trials`` answers right (an MQAR test
    sequence's queries), with a Wilson interval over the effective number of answers.

    The unit is the sequence (its answers share one model state), so the effective count is
    Kish's: the answers divided by the design effect, the units' observed variance over the
    binomial p(1 - p) / trials, kept between the units (answers wholly dependent) and the answers
    (independent). A percentile bootstrap over sequences claims certainty when every answer is
    right (a zero-width [1, 1]) and covered a rate of 0.99 over 16 sequences of 4 queries in 85%
    of simulated runs; this keeps the level there and its width elsewhere."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if trials < 1:
        raise ValueError(f"trials must be at least 1, got {trials}")
    if ((values < 0) | (values > 1)).any():
        raise ValueError(f"a rate's units must lie in [0, 1], got {values[(values < 0) | (values > 1)][:3]}")
    n = int(values.size)
    p = float(values.mean()) if n else math.nan
    spread = float(values.var(ddof=1)) if n > 1 else 0.0
    answers = n * trials
    effective = answers if spread == 0 else min(answers, max(n, n * p * (1 - p) / spread))
    return _wilson(p, n, effective, level)


def _wilson(p: float, n: int, effective: float, level: float) -> Estimate:
    """``p`` reported over ``n`` units, its Wilson interval over ``effective`` independent ones."""
    if not (math.isfinite(p) and n >= 1):
        return Estimate(p, math.nan, math.nan, n)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    shrink = 1 + z * z / effective
    center = (p + z * z / (2 * effective)) / shrink
    half = z * math.sqrt(p * (1 - p) / effective + z * z / (4 * effective * effective)) / shrink
    # rounding must not push an end past the rate itself or out of [0, 1]
    return Estimate(p, max(0.0, min(center - half, p)), min(1.0, max(center + half, p)), n)
