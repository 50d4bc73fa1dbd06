"""Claim 3, ``recall``: TTT-E2E is far worse than full attention at recall. Read from ``mqar``
accuracy (paired by test sequence, over every point of the grid both were tested on the same
sequences at: a point whose sequence digests or counts differ is left out, and named) and,
alongside, NIAH ``cand_acc`` (paired by prompt, over the prompts both read the same tokens of:
one whose digests differ is left out, and named; prompts recorded before digests pair by id):
``partly`` when the two resolve opposite ways.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.api import stats
from harness.report.claims.evidence import (
    Claim,
    evidence_row,
    interval_sign,
    noting_seeds,
    paired_mean,
    unresolved,
)
from harness.report.claims.rundata import RunData

RECALL_FLOOR = 0.5  # full attention must answer at least half the queries before recall can separate models
SHARE, SHARE_GAP = (0.0, 1.0), (-1.0, 1.0)  # the ranges of an accuracy and of a gap between two accuracies


@dataclass
class MQARPoint:
    per_sequence: list[float]  # each test sequence's accuracy
    sequences: str | None  # the digest of the test sequences (None: recorded before digests were)


def _mqar_points(run: RunData, model: str) -> dict[tuple[int, int, Any], MQARPoint]:
    """(length, pairs, seed) -> the point's test sequences: every seed's point, not the last."""
    return {(int(s["eval_ctx"]), int(s["pairs"]), s.get("seed")): MQARPoint(list(s["per_sequence"]), s.get("sequences"))
            for s in run.samples if s.get("model") == model and s.get("task") == "mqar" and s.get("kind") == "point"}


def _same_sequences(a: MQARPoint, b: MQARPoint) -> bool:
    """Whether two models' answers at a point pair sequence by sequence. The same seed draws the
    same sequences only under the same options (test_sequences, vocab_size, power_a, the grid...);
    the digest says so where both points have one, a different count of sequences everywhere."""
    if len(a.per_sequence) != len(b.per_sequence):
        return False
    return a.sequences is None or b.sequences is None or a.sequences == b.sequences


def _some(names: list[str]) -> str:
    """The first three of ``names`` and how many more."""
    return "; ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _point_names(points: list[tuple[int, int, Any]]) -> str:
    return _some([f"length {length}, {pairs} pairs" + (f", seed {seed}" if seed is not None else "")
                  for length, pairs, seed in points])


@dataclass
class NIAHPrompt:
    cand_acc: float
    read: str | None  # the digest of the token ids the model read (None: recorded before digests were)


def _niah_prompts(run: RunData, model: str) -> dict[tuple[Any, str], NIAHPrompt]:
    """(seed, prompt) -> the prompt's NIAH ``cand_acc`` and what the model read: the same seed
    and cell build the same prompt only under the same tokenizer, held-out text and niah options."""
    return {(s.get("seed"), str(s["prompt_id"])): NIAHPrompt(float(s["cand_acc"]), s.get("read_digest"))
            for s in run.samples if s.get("model") == model and s.get("task") == "niah" and s.get("kind") == "prompt"
            and np.isfinite(s.get("cand_acc", np.nan))}


@dataclass
class NIAHEvidence:
    rows: list[dict[str, Any]]
    gap: stats.Estimate | None  # full attention's cand_acc minus TTT-E2E's, paired by prompt (None: no prompt paired)
    apart: list[tuple[Any, str]]  # (seed, prompt) both scored, left out: the two read different tokens


def _niah_evidence(run: RunData, full: str, ttt: str) -> NIAHEvidence:
    """Both models' NIAH candidate accuracy on the prompts both read alike (the digests agree where
    both have one), and its gap paired by prompt."""
    a, b = _niah_prompts(run, full), _niah_prompts(run, ttt)
    both = sorted(set(a) & set(b), key=str)  # a seed may be None
    shared = [k for k in both if a[k].read is None or b[k].read is None or a[k].read == b[k].read]
    apart = [k for k in both if k not in shared]
    if not shared:
        return NIAHEvidence([], None, apart)
    ests = [paired_mean(((k[0], str(k), x[k].cand_acc, 1.0) for k in shared), seed=seed, within=SHARE)
            for x, seed in ((a, 10), (b, 11))]
    gap = paired_mean(((k[0], str(k), a[k].cand_acc - b[k].cand_acc, 1.0) for k in shared), seed=12, within=SHARE_GAP)
    rows = [evidence_row(f"{full}: NIAH cand_acc", ests[0]), evidence_row(f"{ttt}: NIAH cand_acc", ests[1]),
            evidence_row("full attention - TTT-E2E (NIAH cand_acc, paired by prompt)", gap, line=0)]
    return NIAHEvidence(rows, gap, apart)


def _niah_note(niah: NIAHEvidence, mqar: int) -> str:
    """What NIAH's paired gap says beside MQAR's verdict (``mqar``: +1 full attention recalls more),
    and the prompts left out because the two models read them differently."""
    gap, n = niah.gap, len(niah.apart)
    names = _some([p + (f" (seed {seed})" if seed is not None else "") for seed, p in niah.apart])
    differ = "their tokenizers, held-out text or niah options differ; rerun both with the same ones"
    if gap is None:
        return (f"; NIAH not compared: full attention and TTT-E2E read every prompt both scored as different tokens "
                f"({n} prompt{'' if n == 1 else 's'}: {names}): {differ}" if n else "")
    left_out = (f"; left out {n} NIAH prompt{'' if n == 1 else 's'} that full attention and TTT-E2E read as "
                f"different tokens ({names}): {differ}" if n else "")
    said = f"gap {gap.value:+.2f}" + (f" [{gap.ci_low:+.2f}, {gap.ci_high:+.2f}]" if np.isfinite(gap.ci_low) else "")
    said += f" over {gap.n} prompt{'' if gap.n == 1 else 's'}"
    side = interval_sign(gap)
    if side == 0:
        return f"; NIAH candidate ranking does not resolve a gap ({said}){left_out}"
    who = "full attention" if side > 0 else "TTT-E2E"
    verb = "" if mqar == 0 else " agrees" if side == mqar else " disagrees"
    return f"; NIAH{verb}: {who} ranks the needle's value first more often ({said}){left_out}"


@noting_seeds
def recall_claim(run: RunData) -> Claim:
    """MQAR accuracy (paired by test sequence) decides; NIAH candidate ranking (paired by prompt)
    is shown beside it, and where it resolves the other way the claim is only ``partly``."""
    statement = "TTT-E2E is far worse than full attention at recall"
    full, ttt = run.model_of("full_attention"), run.model_of("ttt_e2e")
    if full is None or ttt is None:
        return Claim("recall", statement, "undecided", "needs both full attention and TTT-E2E")
    niah = _niah_evidence(run, full, ttt)
    a, b = _mqar_points(run, full), _mqar_points(run, ttt)
    shared = sorted(set(a) & set(b), key=str)
    points = [p for p in shared if _same_sequences(a[p], b[p])]
    apart = [p for p in shared if p not in points]
    left_out = (f"; left out MQAR points where the two were tested on different sequences ({_point_names(apart)}): "
                "their mqar options differ; rerun both with the same options" if apart else "")
    if not points:
        why = ("no mqar points shared by full attention and TTT-E2E" if not apart else
               f"full attention and TTT-E2E were tested on different MQAR sequences at every point both ran "
               f"({_point_names(apart)}): their mqar options differ; rerun both with the same options and seed")
        return Claim("recall", statement, "undecided", why + _niah_note(niah, 0), niah.rows)
    # units: test sequences (the same sequences for both models), pooled over the grid's points;
    # a sequence weighs its queries (pairs), so the pooled accuracy is a share of queries as mqar's rows are
    units = [(p[2], f"{p}/{i}", x, y, float(p[1])) for p in points
             for i, (x, y) in enumerate(zip(a[p].per_sequence, b[p].per_sequence))]
    full_acc = paired_mean(((s, u, x, w) for s, u, x, _, w in units), seed=5, within=SHARE)
    ttt_acc = paired_mean(((s, u, y, w) for s, u, _, y, w in units), seed=6, within=SHARE)
    gap = paired_mean(((s, u, x - y, w) for s, u, x, y, w in units), seed=7, within=SHARE_GAP)
    evidence = [evidence_row(f"{full}: MQAR accuracy", full_acc), evidence_row(f"{ttt}: MQAR accuracy", ttt_acc),
                evidence_row("full attention - TTT-E2E (MQAR)", gap, line=0), *niah.rows]
    if full_acc.value < RECALL_FLOOR:
        return Claim("recall", statement, "undecided",
                     f"full attention answers {full_acc.value:.2f} of MQAR queries (below {RECALL_FLOOR}): it has "
                     "not learned recall, so recall cannot separate the models" + left_out + _niah_note(niah, 0),
                     evidence)
    # one interval decides: MQAR pooled over the grid's points, not one interval per point; "partly"
    # needs NIAH's to resolve the other way as well (both agree: intersection-union), so no correction
    mqar = interval_sign(gap)
    verdict = {1: "holds", -1: "contradicted", 0: "undecided"}[mqar]
    if niah.gap is not None and interval_sign(niah.gap) == -mqar != 0:  # the two recall tasks resolve opposite ways
        verdict = "partly"
    # the shares themselves: "far worse" is the claim, and a resolved gap can be a few points
    shares = f" ({full_acc.value:.2f} vs {ttt_acc.value:.2f} of the queries)"
    why = {1: "full attention answers more MQAR queries than TTT-E2E" + shares,
           -1: "TTT-E2E answers more MQAR queries than full attention" + shares,
           0: f"the accuracy gap is not resolved ({unresolved(gap, 'test sequence', 0)})"}[mqar]
    return Claim("recall", statement, verdict, why + left_out + _niah_note(niah, mqar), evidence)
