"""What every claim's verdict is made of: the :class:`Claim` itself, the paired bootstrap mean
with its interval over units and seeds (:func:`paired_mean`), which side of a line an interval
lies on, the evidence rows, and the why's notes on disagreeing seeds and family-wise levels."""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.api import stats
from harness.report.claims.rundata import RunData

RESAMPLES = 2000


@dataclass
class Claim:
    name: str
    statement: str
    verdict: str  # holds | contradicted | partly | undecided
    why: str
    evidence: list[dict[str, Any]] = field(default_factory=list)  # one row per comparison


def paired_mean(cells: Iterable[tuple[Any, str, float, float]], seed: int,
                within: tuple[float, float] | None = None, level: float = stats.DEFAULT_LEVEL) -> stats.SeededEstimate:
    """Weighted mean of (training seed, unit, difference, weight) cells (a weight: the tokens or
    queries behind a difference), with an interval that resamples whole units (documents, test
    sequences, prompts) and, where models of several seeds were scored, the seeds too
    (:func:`stats.bootstrap_seeded_ratio`), cut to ``within``, the range the mean cannot leave
    (a share of answers: [0, 1]; Student's t over 3 seeds that disagree reaches far past it)."""
    seeds, units, numerators, denominators = [], [], [], []
    for trained, unit, diff, weight in cells:
        seeds.append(trained)
        units.append(unit)
        numerators.append(diff * weight)
        denominators.append(weight)
    est = stats.bootstrap_seeded_ratio(seeds, units, numerators, denominators, RESAMPLES, level, seed=seed)
    if within is None or not np.isfinite(est.ci_low):
        return est
    return dataclasses.replace(est, ci_low=max(est.ci_low, within[0]), ci_high=min(est.ci_high, within[1]))


def interval_side(est: stats.Estimate, low: float, high: float) -> int:
    """+1 when the interval lies above ``high``, -1 below ``low``, else 0 (also when undefined)."""
    if not np.isfinite(est.ci_low) or not np.isfinite(est.ci_high):
        return 0
    return 1 if est.ci_low > high else -1 if est.ci_high < low else 0


def interval_sign(est: stats.Estimate, margin: float = 0.0) -> int:
    """+1 when the interval lies above ``margin``, -1 below ``-margin``, else 0 (also when undefined)."""
    return interval_side(est, -margin, margin)


def unresolved(est: stats.Estimate, units: str, holds: str) -> str:
    """Why an interval decides nothing: scores that are not numbers (a diverged model), too few
    units for one, or it holds ``holds``."""
    if not np.isfinite(est.value) and est.n:
        return f"no value: the scores of its {est.n} {units}{'' if est.n == 1 else 's'} hold NaN or infinity"
    if not np.isfinite(est.ci_low):
        return f"{est.n} {units}{'' if est.n == 1 else 's'}, too few for an interval"
    return f"its interval [{est.ci_low:+.4f}, {est.ci_high:+.4f}] holds {holds}"


def evidence_row(what: str, est: stats.Estimate, line: float | None = None, **extra: Any) -> dict[str, Any]:
    """An evidence row; an estimate over trained seeds brings each seed's value (``per_seed``), and
    ``line`` is where the verdict reads it (seeds on both sides of it disagree)."""
    if isinstance(est, stats.SeededEstimate):
        extra.update(per_seed=est.per_seed, line=line)
    return {"comparison": what, "value": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high, "n": est.n, **extra}


def per_seed_text(row: dict[str, Any]) -> str:
    """``seed 0 +0.1200, seed 1 -0.0300``: each seed's own value of an evidence row."""
    return ", ".join(f"seed {s} {v:+.4f}" for s, v in row["per_seed"])


def _seeds_disagree(row: dict[str, Any]) -> bool:
    """Whether the seeds' own values of a deciding row lie on both sides of its line."""
    values = [v for _, v in row.get("per_seed", ()) if np.isfinite(v)]
    line = row.get("line")
    return line is not None and any(v > line for v in values) and any(v < line for v in values)


def noting_seeds(judge_claim: Callable[[RunData], Claim]) -> Callable[[RunData], Claim]:
    """``judge_claim`` whose why adds the comparisons whose seeds disagree: an interval over
    seeds that holds its line can come from seeds that each resolve it, opposite ways."""
    @functools.wraps(judge_claim)
    def judged(run: RunData) -> Claim:
        claim = judge_claim(run)
        for row in filter(_seeds_disagree, claim.evidence):
            side = "in sign" if row["line"] == 0 else f"(either side of {row['line']:+g})"
            claim.why += f"; the seeds disagree {side} on {row['comparison']}: {per_seed_text(row)}"
        return claim
    return judged


def family_note(k: int, what: str) -> str:
    """How an any-of-k verdict read its intervals: `` (95% family-wise over 3 fixed-state models,
    Bonferroni)``; "" for one interval, which needs no correction."""
    return f" ({stats.DEFAULT_LEVEL:.0%} family-wise over {k} {what}, Bonferroni)" if k > 1 else ""
