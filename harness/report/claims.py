"""The TTT-E2E paper's three claims, judged on a run or sweep folder.

Each claim gets a verdict from the folder's own numbers, with the comparison behind it and a
bootstrap interval over documents (or test sequences), paired wherever the models were scored
on the same windows:

1. ``context``: TTT-E2E's loss keeps falling with context like full attention's, while SWA,
   Mamba 2 and Gated DeltaNet level off. Read from ``loss_scaling`` run with ``targets: same``
   (the same targets at every length): a model *keeps falling* when its loss at the longest
   context is lower than at half of it (paired by window, interval above ``MIN_CONTEXT_GAIN``),
   and *levels off* when that interval lies below it (one that holds it decides neither).
   Where the run has the ``repeat`` task, each model's copy gain at its longest length is shown
   alongside: whether it copies from that far back at all.
2. ``position``: TTT-E2E's gain over SWA grows with token position. At the longest context, the
   gain (SWA's loss minus TTT-E2E's, paired by window) in the last position bin
   (the second half of the window) minus the gain before position L/8.
3. ``recall``: TTT-E2E is far worse than full attention at recall. Read from ``mqar`` accuracy
   (paired by test sequence, over every point of the grid) and, alongside, NIAH ``cand_acc``.

Verdicts: ``holds``, ``contradicted``, ``partly`` (some of the claim's comparisons hold) or
``undecided``, which also says why: a model the claim needs is missing, or the reference itself
does not show the effect (full attention does not gain from context, or does not recall), so the
run cannot tell the architectures apart. An interval is a 95% bootstrap percentile interval.
"""
from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.api import stats
from harness.api.errors import ConfigError, unknown_message
from harness.api.results import SAMPLES_JSONL, read_jsonl, read_table

FIXED_STATE = ("swa", "mamba2", "gated_deltanet")
RECALL_FLOOR = 0.5  # full attention must answer at least half the queries before recall can separate models
# A recurrent state keeps a trace of every token (decays of 1e-6 still count), and paired differences
# are so precise that such traces come out "significant": a model gains from context only when the
# interval lies above this many nats per token (0.2-0.5% of a small model's loss).
MIN_CONTEXT_GAIN = 0.005
RESAMPLES = 2000


@dataclass
class Claim:
    name: str
    statement: str
    verdict: str  # holds | contradicted | partly | undecided
    why: str
    evidence: list[dict[str, Any]] = field(default_factory=list)  # one row per comparison


@dataclass
class RunData:
    table: pd.DataFrame
    samples: list[dict[str, Any]]
    picks: dict[str, str] = field(default_factory=dict)  # arch -> the model judged for it

    def models(self, arch: str) -> list[str]:
        """The models of architecture ``arch`` in the table, in table order."""
        return [str(m) for m in self.table.loc[self.table["arch"] == arch, "model"].drop_duplicates()]

    def model_of(self, arch: str) -> str | None:
        """The model judged for ``arch``: the one picked, else the first in the table."""
        return self.picks.get(arch) or next(iter(self.models(arch)), None)

    def pick(self, picks: dict[str, str]) -> None:
        """Judge these models (arch -> model name) where an architecture has several."""
        for arch, model in picks.items():
            names = self.models(arch)
            if not names:
                present = sorted(self.table["arch"].dropna().unique())
                raise ConfigError(unknown_message("architecture of the run", arch, present))
            if model not in names:
                raise ConfigError(unknown_message(f"{arch} model of the run", model, names))
        self.picks = dict(picks)

    def judged_note(self) -> str:
        """Which model stands for each architecture that has several ("" when none has)."""
        lines = []
        for arch in ("full_attention", "ttt_e2e", *FIXED_STATE):
            judged = self.model_of(arch)
            others = [m for m in self.models(arch) if m != judged]
            if others:
                lines.append(f"- {arch}: `{judged}` (also in the run: {', '.join(f'`{m}`' for m in others)}; "
                             f"pick one with `--model {arch}=NAME`)")
        return "Judged models:\n\n" + "\n".join(lines) + "\n\n" if lines else ""

    def windows(self, model: str) -> list[dict[str, Any]]:
        return [s for s in self.samples
                if s.get("model") == model and s.get("task") == "loss_scaling" and s.get("kind") == "window"]


def load_run(run_dir: str | os.PathLike, sample_files: list[Path] | None = None) -> RunData:
    """A run folder's table and its sample records: ``sample_files`` (a sweep's current cells,
    from harness.runs.sweep.current_sample_files) or else every file (samples.jsonl, samples/)."""
    run_dir = Path(run_dir)
    files = sample_files if sample_files is not None else (
        sorted((run_dir / "samples").glob("*.jsonl")) + [p for p in [run_dir / SAMPLES_JSONL] if p.exists()])
    samples = [record for path in files for record in read_jsonl(path)]
    table = read_table(run_dir)
    if not samples:  # e.g. a table committed without them: every verdict would be undecided, wrongly reasoned
        raise ConfigError(f"{str(run_dir)!r} holds no samples (samples/*.jsonl or {SAMPLES_JSONL}), and every claim "
                          "pairs scores by window, document or test sequence; judge the folder the run wrote")
    return RunData(table, samples)


def _paired(pairs: Iterable[tuple[str, float, float]], seed: int) -> stats.Estimate:
    """Weighted mean of (unit, difference, weight) triples (a weight: the tokens or queries behind
    a difference), with an interval that resamples whole units (documents, test sequences)."""
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, float] = defaultdict(float)
    for doc, diff, weight in pairs:
        sums[doc] += diff * weight
        counts[doc] += weight
    keys = sorted(sums)
    return stats.bootstrap_ratio([sums[k] for k in keys], [counts[k] for k in keys], RESAMPLES, seed=seed)


def _sign(est: stats.Estimate, margin: float = 0.0) -> int:
    """+1 when the interval lies above ``margin``, -1 below ``-margin``, else 0 (also when undefined)."""
    if not np.isfinite(est.ci_low) or not np.isfinite(est.ci_high):
        return 0
    return 1 if est.ci_low > margin else -1 if est.ci_high < -margin else 0


def _trend(est: stats.Estimate) -> str:
    """``gains`` (interval above MIN_CONTEXT_GAIN), ``levels`` (below it) or ``unclear`` (it holds
    MIN_CONTEXT_GAIN, or there is no interval): an interval that cannot rule out a gain is no
    evidence that a model levels off."""
    if _sign(est, MIN_CONTEXT_GAIN) > 0:
        return "gains"
    return "levels" if est.ci_high < MIN_CONTEXT_GAIN else "unclear"  # NaN compares false


def _unresolved(est: stats.Estimate, units: str, holds: str) -> str:
    """Why an interval decides nothing: too few units for one, or it holds ``holds``."""
    if not np.isfinite(est.ci_low):
        return f"{est.n} {units}{'' if est.n == 1 else 's'}, too few for an interval"
    return f"its interval [{est.ci_low:+.4f}, {est.ci_high:+.4f}] holds {holds}"


def _row(what: str, est: stats.Estimate, **extra: Any) -> dict[str, Any]:
    return {"comparison": what, "value": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high, "n": est.n, **extra}


# ---------------------------------------------------------------------------------------------
# 1. loss against context


def _same_target_lengths(run: RunData, model: str) -> list[int]:
    # per_length windows of two lengths score different targets
    return [int(w["eval_ctx"]) for w in run.windows(model) if w.get("targets") == "same"]


def last_doubling_gain(run: RunData, model: str, longest: int | None = None) -> tuple[stats.Estimate, int] | None:
    """Loss at half of context ``longest`` (default: the model's longest) minus loss at
    ``longest``, paired by window end; None without same-target windows at both lengths."""
    by_length: dict[int, dict[tuple[str, int], float]] = defaultdict(dict)
    for w in run.windows(model):
        if w.get("targets") == "same":
            end = int(w["start"]) + int(w["eval_ctx"])
            by_length[int(w["eval_ctx"])][(w.get("seed"), w["doc"], end)] = float(w["scored_loss"])
    longest = max(by_length, default=0) if longest is None else longest
    half = by_length.get(longest // 2, {})
    shared = sorted(set(half) & set(by_length.get(longest, {})), key=str)  # a seed may be None
    if not shared:
        return None
    return _paired(((k[1], half[k] - by_length[longest][k], 1.0) for k in shared), seed=1), longest


def copy_gain(run: RunData, model: str) -> dict[str, Any] | None:
    """The ``repeat`` task's copy gain of ``model`` at its longest length, as an evidence row."""
    t = run.table
    rows = t[(t["model"] == model) & (t["task"] == "repeat") & (t["metric"] == "copy_gain") & (t["status"] == "ok")]
    if rows.empty:
        return None
    row = rows.loc[rows["eval_ctx"].idxmax()]
    return {"comparison": f"{model}: copy gain at context {int(row['eval_ctx'])} (repeat task)",
            "value": float(row["value"]), "ci_low": float(row["ci_low"]), "ci_high": float(row["ci_high"]),
            "n": int(row["n"])}


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
            evidence.append(_row(f"{model}: loss({found[1] // 2}) - loss({found[1]}), same targets", found[0],
                                 arch=arch))
    copying = {arch: copy_gain(run, m) for arch, m in models.items()}
    evidence += [row for row in copying.values() if row is not None]
    missing = [a for a in ("full_attention", "ttt_e2e") if a not in gains]
    if missing or not any(a in gains for a in FIXED_STATE):
        need = missing or ["one of " + ", ".join(FIXED_STATE)]
        at = f" at contexts {longest // 2} and {longest}" if longest else ""
        return Claim("context", statement, "undecided",
                     f"no same-target loss_scaling windows{at} for {', '.join(need)} (run loss_scaling with "
                     "targets: same and two lengths a doubling apart)", evidence)
    trend = {arch: _trend(est) for arch, est in gains.items()}
    fixed = [a for a in FIXED_STATE if a in trend]
    still_falling = [a for a in fixed if trend[a] == "gains"]
    if trend["full_attention"] == "unclear":
        return Claim("context", statement, "undecided", "whether full attention gains from the last doubling of "
                     f"context is not resolved ({_unresolved(gains['full_attention'], 'document', MIN_CONTEXT_GAIN)})",
                     evidence)
    if trend["full_attention"] == "levels":
        others = ", ".join((["ttt_e2e"] if trend["ttt_e2e"] == "gains" else []) + still_falling) or "none of the others"
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
    if trend["ttt_e2e"] == "gains" and still_falling:
        return Claim("context", statement, "partly", "TTT-E2E still gains like full attention, but so does "
                     + ", ".join(still_falling), evidence)
    unclear = [a for a in ("ttt_e2e", *fixed) if trend[a] == "unclear"]
    if unclear:
        return Claim("context", statement, "undecided", "whether " + ", ".join(unclear) + " still gain(s) from the "
                     "last doubling is not resolved: " + "; ".join(
                         f"{a}: {_unresolved(gains[a], 'document', MIN_CONTEXT_GAIN)}" for a in unclear), evidence)
    return Claim("context", statement, "holds", "full attention and TTT-E2E still gain from the last doubling; "
                 "the fixed-state models do not", evidence)


# ---------------------------------------------------------------------------------------------
# 2. gain over SWA by position


def _window_key(w: dict[str, Any]) -> tuple:
    """(eval_ctx, doc, start, seed): the seed last, so a key's second item is the resampled unit."""
    return w["eval_ctx"], w["doc"], w["start"], w.get("seed")


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
    early_gain = _paired(((k[1], gain(k, early), 1.0) for k in keys), seed=2)
    late_gain = _paired(((k[1], gain(k, last), 1.0) for k in keys), seed=3)
    growth = _paired(((k[1], gain(k, last) - gain(k, early), 1.0) for k in keys), seed=4)
    lo, hi = bins[last[0]]
    evidence = [_row(f"gain over SWA, positions < {longest // 8}", early_gain),
                _row(f"gain over SWA, positions {lo}-{hi}", late_gain),
                _row("growth (late - early)", growth)]
    verdict = {1: "holds", -1: "contradicted", 0: "undecided"}[_sign(growth)]
    why = {"holds": "the gain is larger late in the window than early",
           "contradicted": "the gain shrinks with position",
           "undecided": f"the growth is not resolved ({_unresolved(growth, 'document', 0)})"}[verdict]
    return Claim("position", statement, verdict, why, evidence)


# ---------------------------------------------------------------------------------------------
# 3. recall


def _mqar_points(run: RunData, model: str) -> dict[tuple[int, int, Any], list[float]]:
    """(length, pairs, seed) -> each test sequence's accuracy: every seed's point, not the last."""
    return {(int(s["eval_ctx"]), int(s["pairs"]), s.get("seed")): list(s["per_sequence"]) for s in run.samples
            if s.get("model") == model and s.get("task") == "mqar" and s.get("kind") == "point"}


def recall_claim(run: RunData) -> Claim:
    statement = "TTT-E2E is far worse than full attention at recall"
    full, ttt = run.model_of("full_attention"), run.model_of("ttt_e2e")
    evidence = []
    t = run.table
    pooled = t["depth"].isna() if "depth" in t else True  # rows pooled over needle depths, not the per-depth ones
    niah = t[(t["task"] == "niah") & (t["metric"] == "cand_acc") & (t["status"] == "ok") & pooled]
    for model in (full, ttt):
        mine = niah[niah["model"] == model]["value"]
        if model and len(mine):
            evidence.append({"comparison": f"{model}: NIAH cand_acc, mean of {len(mine)} cells pooled over depths",
                             "value": float(mine.mean()), "ci_low": np.nan, "ci_high": np.nan, "n": len(mine)})
    if full is None or ttt is None:
        return Claim("recall", statement, "undecided", "needs both full attention and TTT-E2E", evidence)
    a, b = _mqar_points(run, full), _mqar_points(run, ttt)
    points = sorted(set(a) & set(b), key=str)
    if not points:
        return Claim("recall", statement, "undecided", "no mqar points shared by full attention and TTT-E2E", evidence)
    # units: test sequences (the same sequences for both models), pooled over the grid's points;
    # a sequence weighs its queries (pairs), so the pooled accuracy is a share of queries as mqar's rows are
    units = [(f"{p}/{i}", x, y, float(p[1])) for p in points for i, (x, y) in enumerate(zip(a[p], b[p]))]
    full_acc = _paired(((u, x, w) for u, x, _, w in units), seed=5)
    ttt_acc = _paired(((u, y, w) for u, _, y, w in units), seed=6)
    gap = _paired(((u, x - y, w) for u, x, y, w in units), seed=7)
    evidence = [_row(f"{full}: MQAR accuracy", full_acc), _row(f"{ttt}: MQAR accuracy", ttt_acc),
                _row("full attention - TTT-E2E (MQAR)", gap), *evidence]
    if full_acc.value < RECALL_FLOOR:
        return Claim("recall", statement, "undecided",
                     f"full attention answers {full_acc.value:.2f} of MQAR queries (below {RECALL_FLOOR}): it has "
                     "not learned recall, so recall cannot separate the models", evidence)
    verdict = {1: "holds", -1: "contradicted", 0: "undecided"}[_sign(gap)]
    why = {"holds": "full attention answers more MQAR queries than TTT-E2E",
           "contradicted": "TTT-E2E answers more MQAR queries than full attention",
           "undecided": f"the accuracy gap is not resolved ({_unresolved(gap, 'test sequence', 0)})"}[verdict]
    return Claim("recall", statement, verdict, why, evidence)


def judge(run: RunData) -> list[Claim]:
    return [context_claim(run), position_claim(run), recall_claim(run)]


def render_markdown(claims: list[Claim], note: str = "") -> str:
    """The verdicts as Markdown, after ``note`` (e.g. :meth:`RunData.judged_note`)."""
    lines = [note + "| claim | verdict | why |", "|---|---|---|"]
    lines += [f"| {c.statement} | **{c.verdict}** | {c.why} |" for c in claims]
    for c in claims:
        if c.evidence:
            lines += ["", f"`{c.name}`:", "", "| comparison | value | 95% interval | n |", "|---|---|---|---|"]
            for e in c.evidence:
                ci = "" if not np.isfinite(e["ci_low"]) else f"[{e['ci_low']:+.4f}, {e['ci_high']:+.4f}]"
                lines.append(f"| {e['comparison']} | {e['value']:+.4f} | {ci} | {e['n']} |")
    return "\n".join(lines) + "\n"
