"""The TTT-E2E paper's five claims, judged on a run or sweep folder.

Each claim gets a verdict from the folder's own numbers, with the comparison behind it and a
bootstrap interval over documents (or test sequences), paired wherever the models were scored
on the same windows, or over timing repeats (claims 4 and 5). Where claims 1-3 read models of
several training seeds, the interval resamples the seeds as well (:func:`stats.bootstrap_seeded_ratio`:
models of one seed stay paired), the evidence shows each seed's value, and the why names the
comparisons whose seeds fall on both sides of the verdict's line; with one seed, ``claims.md``
says that its intervals cover the units scored, not seed-to-seed variance.

The claims, each module saying how it judges its own: 1. ``context`` and 2. ``position``
(:mod:`~harness.report.claims.context`), 3. ``recall`` (:mod:`~harness.report.claims.recall`),
4. ``speed`` and 5. ``constant_latency`` (:mod:`~harness.report.claims.latency`). They read the
run's table and samples (:mod:`~harness.report.claims.rundata`), share the evidence rows and
paired intervals of :mod:`~harness.report.claims.evidence`, and are judged together and written
as ``claims.md`` by :mod:`~harness.report.claims.verdicts`. The names below are re-exported, so
``from harness.report import claims; claims.loss_gap(...)`` reads as before the split.

Verdicts: ``holds``, ``contradicted``, ``partly`` (some of the claim's comparisons hold) or
``undecided``, which also says why: a model the claim needs is missing, or the reference itself
does not show the effect (full attention does not gain from context, or does not recall), so the
run cannot tell the architectures apart (or the timings do not compare: different machines). An
interval is a 95% bootstrap percentile interval. A verdict that needs ALL of its intervals to agree
(intersection-union: every ``holds``, claim 1's and 3's ``contradicted``) reads each at 95%: it errs
only when the one false among them is resolved. One that ANY of k intervals can reach
(union-intersection: claim 1's ``partly``, a fixed-state model that still gains; claim 5's
``partly`` and ``contradicted``, over the phases timed) reads them at 1 - 0.05 / k
(:func:`stats.family_level`, Bonferroni: 95% family-wise), and its why says so.
"""
from __future__ import annotations

from harness.report.claims.context import (
    MIN_CONTEXT_GAIN,
    context_claim,
    doubling_gains,
    last_doubling_gain,
    loss_gap,
    position_claim,
)
from harness.report.claims.evidence import RESAMPLES
from harness.report.claims.latency import (
    PREFILL_FLAT,
    constant_latency_claim,
    is_spread,
    per_token_growth,
    speed_claim,
    speedup,
)
from harness.report.claims.recall import recall_claim
from harness.report.claims.rundata import FIXED_STATE, RunData, load_run, with_samples
from harness.report.claims.verdicts import judge, render_markdown

__all__ = ["FIXED_STATE", "MIN_CONTEXT_GAIN", "PREFILL_FLAT", "RESAMPLES", "RunData", "constant_latency_claim",
           "context_claim", "doubling_gains", "is_spread", "judge", "last_doubling_gain", "load_run", "loss_gap",
           "per_token_growth", "position_claim", "recall_claim", "render_markdown", "speed_claim", "speedup",
           "with_samples"]
