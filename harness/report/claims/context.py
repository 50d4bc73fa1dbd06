"""Claims 1 and 2, read from ``loss_scaling`` windows: loss against context, and the gain over
SWA by token position. :func:`loss_gap` (a model's loss minus a reference's, paired by window)
also gives the tables' and figures' gap intervals.

1. ``context``: TTT-E2E's loss keeps falling with context like full attention's, while SWA,
   Mamba 2 and Gated DeltaNet level off. Read from ``loss_scaling`` run with ``targets: same``
   (the same targets at every length): a model *keeps falling* when its loss at the longest
   context is lower than at half of it (paired by window, interval above ``MIN_CONTEXT_GAIN``),
   and *levels off* when that interval lies below it (one that holds it decides neither).
   Where the run has the ``repeat`` task, each model's copy gain at its longest length (paired by
   window, over every seed) is shown alongside: whether it copies from that far back at all.
   Where TTT-E2E gains, full attention's gain minus TTT-E2E's (paired by window) is shown too,
   and the why names it when above ``MIN_CONTEXT_GAIN``: its loss keeps falling, but not like
   full attention's. Fixed-state models that still gain are named whatever the verdict.
2. ``position``: TTT-E2E's gain over SWA grows with token position. At the longest context, the
   gain (SWA's loss minus TTT-E2E's, paired by window) in the last position bin
   (the second half of the window) minus the gain before position L/8; only ``partly`` when the
   late gain itself is not above 0 (SWA still better there: a loss that narrows).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np

from harness.api import stats
from harness.report.claims.evidence import (
    Claim,
    evidence_row,
    family_note,
    interval_sign,
    noting_seeds,
    paired_mean,
    unresolved,
)
from harness.report.claims.rundata import FIXED_STATE, RunData

# A recurrent state keeps a trace of every token (decays of 1e-6 still count), and paired differences
# are so precise that such traces come out "significant": a model gains from context only when the
# interval lies above this many nats per token (0.2-0.5% of a small model's loss).
MIN_CONTEXT_GAIN = 0.005


# ---------------------------------------------------------------------------------------------
# 1. loss against context


def _trend(est: stats.Estimate) -> str:
    """``gains`` (interval above MIN_CONTEXT_GAIN), ``levels`` (below it) or ``unclear`` (it holds
    MIN_CONTEXT_GAIN, or there is no interval): an interval that cannot rule out a gain is no
    evidence that a model levels off."""
    if interval_sign(est, MIN_CONTEXT_GAIN) > 0:
        return "gains"
    return "levels" if est.ci_high < MIN_CONTEXT_GAIN else "unclear"  # NaN compares false


def _same_target_lengths(run: RunData, model: str) -> list[int]:
    # per_length windows of two lengths score different targets
    return [int(w["eval_ctx"]) for w in run.windows(model) if w.get("targets") == "same"]


def doubling_gains(run: RunData, model: str, longest: int | None = None) -> tuple[dict[tuple, float], int]:
    """(window (seed, doc, end) -> loss at half of context ``longest`` minus loss at ``longest``,
    ``longest``), over the same-target windows read at both lengths, each scored once (else none);
    ``longest`` defaults to the model's longest."""
    same = [w for w in run.windows(model) if w.get("targets") == "same"]
    longest = max((int(w["eval_ctx"]) for w in same), default=0) if longest is None else longest
    half, full = (_window_losses(same, length, by_end=True) or {} for length in (longest // 2, longest))
    return {k: half[k] - full[k] for k in half.keys() & full.keys()}, longest


def _by_window(diffs: dict[tuple, float], seed: int, level: float = stats.DEFAULT_LEVEL) -> stats.Estimate:
    """The mean of per-window differences (keys: (training seed, doc, end)), resampled by
    document and training seed."""
    # a seed may be None
    return paired_mean(((k[0], k[1], diffs[k], 1.0) for k in sorted(diffs, key=str)), seed=seed, level=level)


def loss_gap(run: RunData, model: str, reference: str, eval_ctx: int,
             positions: tuple[int, int] | None = None) -> stats.Estimate | None:
    """``model``'s loss minus ``reference``'s at context ``eval_ctx`` (the tables' gap to full
    attention), paired by target window: the mean over windows (the same document, start and
    training seed) of the difference of their scored losses, resampled by document (and seed);
    over several seeds, the mean of each seed's mean, as the tables average seeds (a seed that
    scored fewer windows, its own held-out split, weighs as much); with ``positions`` (a bin
    ``(pos_start, pos_end)``), of their losses on that bin's targets (the gap by token position).
    None unless both were scored on the same windows, each once: a mean over some is not the gap."""
    mine, theirs = (_window_losses(run.windows(m), eval_ctx, positions=positions) for m in (model, reference))
    if not mine or mine.keys() != (theirs or {}).keys():
        return None
    diffs = {k: mine[k] - theirs[k] for k in mine}
    windows = Counter(k[0] for k in diffs)
    if len(windows) == 1:
        return _by_window(diffs, seed=eval_ctx)
    return paired_mean(((k[0], k[1], diffs[k], 1.0 / windows[k[0]]) for k in sorted(diffs, key=str)), seed=eval_ctx)


def _window_losses(windows: Iterable[dict[str, Any]], eval_ctx: int, by_end: bool = False,
                   positions: tuple[int, int] | None = None) -> dict[tuple, float] | None:
    """(seed, doc, start) -> the scored loss of the ``windows`` at ``eval_ctx`` (``by_end``: keyed
    by their end, where windows of two lengths with the same targets meet; with ``positions``, the
    loss on that position bin); None when a window was scored twice (two cells of one model: which
    pairs with which is unknown) or lacks the bin."""
    out: dict[tuple, float] = {}
    for w in windows:
        if int(w["eval_ctx"]) == eval_ctx:
            key = (w.get("seed"), w["doc"], int(w["start"]) + (eval_ctx if by_end else 0))
            bins = [tuple(b) for b in w.get("bins", ())]
            if key in out or (positions is not None and positions not in bins):
                return None
            out[key] = float(w["scored_loss"] if positions is None else w["bin_loss"][bins.index(positions)])
    return out


def last_doubling_gain(run: RunData, model: str, longest: int | None = None,
                       level: float = stats.DEFAULT_LEVEL) -> tuple[stats.Estimate, int] | None:
    """Loss at half of context ``longest`` (default: the model's longest) minus loss at
    ``longest``, paired by window end, its interval at ``level``; None without same-target windows
    at both lengths."""
    diffs, longest = doubling_gains(run, model, longest)
    return (_by_window(diffs, seed=1, level=level), longest) if diffs else None


def _widening(run: RunData, full: str, ttt: str, longest: int) -> stats.Estimate | None:
    """Full attention's gain from the last doubling minus TTT-E2E's, paired by window: how much the
    gap between them widens over the doubling (the paper's claim: it does not)."""
    a, b = doubling_gains(run, full, longest)[0], doubling_gains(run, ttt, longest)[0]
    shared = set(a) & set(b)
    return _by_window({k: a[k] - b[k] for k in shared}, seed=13) if shared else None


def copy_gain(run: RunData, model: str) -> dict[str, Any] | None:
    """The ``repeat`` task's copy gain of ``model`` at its longest length (control loss - repeat
    loss, paired by window, resampled by document, over every seed), as an evidence row."""
    windows = [s for s in run.samples if s.get("model") == model and s.get("task") == "repeat" and s.get("kind") == "window"]
    if not windows:
        return None
    longest = max(int(w["eval_ctx"]) for w in windows)
    est = paired_mean(((w.get("seed"), w["doc"], float(w["control_loss"]) - float(w["repeat_loss"]), 1.0)
                       for w in windows if int(w["eval_ctx"]) == longest), seed=14)
    return evidence_row(f"{model}: copy gain at context {longest} (repeat task)", est)


@noting_seeds
def context_claim(run: RunData) -> Claim:
    statement = ("TTT-E2E's loss keeps falling with context like full attention's, while SWA, Mamba 2 and "
                 "Gated DeltaNet level off")
    gains = {}
    evidence = []
    models = {arch: m for arch in ("full_attention", "ttt_e2e", *FIXED_STATE) if (m := run.model_of(arch))}
    # one doubling for all: a model short of the longest context (an OOM there) is missing, not
    # judged on an earlier doubling than the others
    longest = max((L for m in models.values() for L in _same_target_lengths(run, m)), default=None)
    for arch, model in models.items():
        found = last_doubling_gain(run, model, longest) if longest else None
        if found is not None:
            gains[arch] = found[0]
            evidence.append(evidence_row(f"{model}: loss({found[1] // 2}) - loss({found[1]}), same targets",
                                         found[0], line=MIN_CONTEXT_GAIN, arch=arch))
    copying = {arch: copy_gain(run, m) for arch, m in models.items()}
    evidence += [row for row in copying.values() if row is not None]
    missing = [a for a in ("full_attention", "ttt_e2e") if a not in gains]
    absent = [a for a in ("full_attention", "ttt_e2e") if a not in models]
    if absent or not any(a in models for a in FIXED_STATE):  # no windows would help: say what the run lacks
        why = f"the run has no {' or '.join(absent)} model" if absent else "the run has none of " + ", ".join(FIXED_STATE)
        return Claim("context", statement, "undecided", why, evidence)
    if missing or not any(a in gains for a in FIXED_STATE):
        need = missing or ["one of " + ", ".join(FIXED_STATE)]
        at = f" at contexts {longest // 2} and {longest}" if longest else ""
        return Claim("context", statement, "undecided",
                     f"no same-target loss_scaling windows{at}, each scored once, for {', '.join(need)} (run "
                     "loss_scaling with targets: same and two lengths a doubling apart, in one cell of each model)",
                     evidence)
    trend = {arch: _trend(est) for arch, est in gains.items()}
    fixed = [a for a in FIXED_STATE if a in trend]
    # "holds" needs ALL fixed-state models to level off (intersection-union: each 95% interval
    # suffices); "partly" and the "against the claim" notes need ANY one to gain (union-intersection
    # over the k judged), so a fixed-state gain is read at Bonferroni's level: 95% family-wise
    shown = dict(gains)  # the interval a why quotes for each model
    if len(fixed) > 1:
        level = stats.family_level(stats.DEFAULT_LEVEL, len(fixed))
        for a in (a for a in fixed if trend[a] == "gains"):
            shown[a] = last_doubling_gain(run, models[a], longest, level)[0]
            trend[a] = _trend(shown[a])  # "gains" or "unclear": a wider interval cannot level off
    family = family_note(len(fixed), "fixed-state models")
    still_falling = [a for a in fixed if trend[a] == "gains"]
    against = f"; {', '.join(still_falling)} still gain(s), against the claim{family}" if still_falling else ""
    if trend["full_attention"] == "unclear":
        return Claim("context", statement, "undecided", "whether full attention gains from the last doubling of "
                     f"context is not resolved ({unresolved(gains['full_attention'], 'document', MIN_CONTEXT_GAIN)})"
                     + against, evidence)
    if trend["full_attention"] == "levels":
        others = ", ".join((["ttt_e2e"] if trend["ttt_e2e"] == "gains" else []) + still_falling) or "none of the others"
        others += family if still_falling else ""
        full_copy = copying.get("full_attention")
        copies = "" if full_copy is None else (
            f"; its copy gain at that length is {full_copy['value']:+.3f} nats/token (repeat task)")
        return Claim("context", statement, "undecided",
                     "full attention itself does not gain from the last doubling of context, so the run cannot "
                     f"show which architectures keep up with it (still gaining: {others}){copies}", evidence)
    if trend["ttt_e2e"] == "levels":
        if len(still_falling) == len(fixed):
            return Claim("context", statement, "contradicted", "TTT-E2E levels off while every fixed-state model "
                         "still gains", evidence)
        return Claim("context", statement, "contradicted", "TTT-E2E does not gain from the last doubling of "
                     "context, full attention does", evidence)
    lag = ""
    if trend["ttt_e2e"] == "gains":
        widening = _widening(run, models["full_attention"], models["ttt_e2e"], longest)
        if widening is not None:
            evidence.append(evidence_row(f"full attention's gain - TTT-E2E's, loss({longest // 2}) - loss({longest}), "
                                         "paired by window", widening, line=MIN_CONTEXT_GAIN))
            if interval_sign(widening, MIN_CONTEXT_GAIN) > 0:  # a trace of a lag is no lag (MIN_CONTEXT_GAIN)
                lag = (f"; TTT-E2E gains less than full attention: its gap to full attention widens by "
                       f"{widening.value:+.3f} [{widening.ci_low:+.3f}, {widening.ci_high:+.3f}] nats/token "
                       "over the doubling")
    if trend["ttt_e2e"] == "gains" and still_falling:
        return Claim("context", statement, "partly", f"TTT-E2E still gains{'' if lag else ' like full attention'}, "
                     "but so does " + ", ".join(still_falling) + family + lag, evidence)
    unclear = [a for a in ("ttt_e2e", *fixed) if trend[a] == "unclear"]
    if unclear:
        return Claim("context", statement, "undecided", "whether " + ", ".join(unclear) + " still gain(s) from the "
                     "last doubling is not resolved: " + "; ".join(
                         f"{a}: {unresolved(shown[a], 'document', MIN_CONTEXT_GAIN)}"
                         + (family if shown[a] is not gains[a] else "") for a in unclear) + against,
                     evidence)
    return Claim("context", statement, "holds", "full attention and TTT-E2E still gain from the last doubling; "
                 "the fixed-state models do not" + lag, evidence)


# ---------------------------------------------------------------------------------------------
# 2. gain over SWA by position


def _window_key(w: dict[str, Any]) -> tuple:
    """(eval_ctx, doc, start, seed): a window scored by one model of each architecture and seed."""
    return w["eval_ctx"], w["doc"], w["start"], w.get("seed")


@noting_seeds
def position_claim(run: RunData) -> Claim:
    statement = "TTT-E2E's gain over SWA grows with token position"
    ttt, swa = run.model_of("ttt_e2e"), run.model_of("swa")
    if ttt is None or swa is None:
        return Claim("position", statement, "undecided", "needs loss_scaling windows of both TTT-E2E and SWA")
    mine = {_window_key(w): w for w in run.windows(ttt)}
    theirs = {_window_key(w): w for w in run.windows(swa)}
    shared = set(mine) & set(theirs)
    if not shared:
        return Claim("position", statement, "undecided", "TTT-E2E and SWA were not scored on the same windows")
    longest = max(k[0] for k in shared)
    keys = sorted((k for k in shared if k[0] == longest), key=str)  # a seed may be None (older records)
    bins = [tuple(b) for b in mine[keys[0]]["bins"]]
    early = [i for i, (lo, hi) in enumerate(bins) if hi <= longest // 8]
    if not early or len(bins) < 2:
        return Claim("position", statement, "undecided", f"too few position bins at context {longest}")
    weights = np.array([hi - lo for lo, hi in bins], dtype=float)

    def gain(key: tuple, which: list[int]) -> float:
        diff = np.asarray(theirs[key]["bin_loss"]) - np.asarray(mine[key]["bin_loss"])
        return float(np.average(diff[which], weights=weights[which]))

    last = [len(bins) - 1]
    early_gain = paired_mean(((k[3], k[1], gain(k, early), 1.0) for k in keys), seed=2)
    late_gain = paired_mean(((k[3], k[1], gain(k, last), 1.0) for k in keys), seed=3)
    growth = paired_mean(((k[3], k[1], gain(k, last) - gain(k, early), 1.0) for k in keys), seed=4)
    lo, hi = bins[last[0]]
    evidence = [evidence_row(f"gain over SWA, positions < {bins[early[-1]][1]}", early_gain),  # L/8 for L a power of 2
                evidence_row(f"gain over SWA, positions {lo}-{hi}", late_gain, line=0),
                evidence_row("growth (late - early)", growth, line=0)]
    # one interval decides (growth), and "holds" needs the late gain's too (both must agree:
    # intersection-union), so each 95% interval keeps the verdict's level: no correction
    verdict = {1: "holds", -1: "contradicted", 0: "undecided"}[interval_sign(growth)]
    late = interval_sign(late_gain)
    if verdict == "holds" and late <= 0:  # a loss that narrows is no gain that grows
        verdict = "partly"
    why = {"holds": "the gain is larger late in the window than early",
           "partly": "the difference grows with position, but " + (
               f"SWA is still better late in the window (TTT-E2E's gain there: {late_gain.value:+.4f} "
               f"[{late_gain.ci_low:+.4f}, {late_gain.ci_high:+.4f}])" if late < 0 else
               f"TTT-E2E's gain late in the window is not resolved from 0 ({unresolved(late_gain, 'document', 0)})"),
           "contradicted": "the gain shrinks with position",
           "undecided": f"the growth is not resolved ({unresolved(growth, 'document', 0)})"}[verdict]
    return Claim("position", statement, verdict, why, evidence)
