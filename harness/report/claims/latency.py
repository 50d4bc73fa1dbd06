"""Claims 4 and 5, read from the ``latency`` task's timing repeats; :func:`speedup` (full
attention's median time over a model's) also gives the tables' and figures' speed-up intervals.

4. ``speed``: TTT-E2E's prefill is faster than full attention's at long context (the paper: 2.7x
   at 128K on an H100). From the ``latency`` task's timing repeats (samples), at the smallest
   batch size both were timed at: full attention's median prefill time over TTT-E2E's at each
   context, each model's repeats resampled on their own (they are not paired). The verdict is
   the longest context's (an out-of-memory failure of one model where the other ran counts
   against the one that failed); the why names the crossover, the shortest context from which
   TTT-E2E is faster at every context timed.
5. ``constant_latency``: TTT-E2E's time per token stays constant with context. Its prefill time
   per token (and decode time per token, where timed) at its longest context over at its
   shortest: flat inside [1 / tolerance, tolerance] (``PREFILL_FLAT``, ``DECODE_FLAT``: issue
   17's), grows above it; full attention's ratio alongside as the contrast: a flat phase counts
   only where full attention's grows (else those contexts cannot tell). ``holds`` when every
   phase timed is flat, ``partly`` when some are, ``contradicted`` when none is and one grows.

Claims 4 and 5 read a model timed with several training seeds as the tables do, by the mean of
the seeds' medians, with an interval over each seed's repeats and over the seeds
(:meth:`RunData.timings`, :func:`stats.bootstrap_seeded_median_ratio`), and name the machines the timings ran on (a sweep's cell records, else run.json; a machine is
its GPU, or its CPU model, cores and ATen CPU capability: :mod:`harness.api.machine`): timings of
different machines are not compared (full attention's from two machines give claim 5 no
contrast); on a CPU they say that the paper timed an H100, so that CPU timings test only the claim's shape;
they name timings the latency task flagged ``unstable``, and say when an interval rests on so
few repeats that it is a spread rather than a 95% interval (:func:`stats.median_max_coverage`).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np

from harness.api import stats
from harness.api.machine import machine_names
from harness.report.claims.evidence import (
    RESAMPLES,
    Claim,
    evidence_row,
    family_note,
    interval_side,
)
from harness.report.claims.rundata import RunData

# Issue 17's tolerances for "constant": TTT-E2E's prefill tokens/s flat within 10% from 8K to
# 128K, its decode time per token within 5%. A ratio of times per token (longest context over
# shortest) is flat when its interval lies inside [1 / tolerance, tolerance].
PREFILL_FLAT = 1.10
DECODE_FLAT = 1.05
FLAT = {"prefill": PREFILL_FLAT, "decode": DECODE_FLAT}
PAPER_DEVICE = "an H100"  # where the paper timed its latency claims


def is_spread(n: int) -> bool:
    """Whether an interval of medians over ``n`` repeats cannot reach the level asked for."""
    return stats.median_max_coverage(n) < stats.DEFAULT_LEVEL


def _timing_row(what: str, est: stats.Estimate) -> dict[str, Any]:
    """A row of medians over timing repeats: too few of them make its interval a spread; over
    several seeds, it says how many (``n``: the fewest repeats of a seed)."""
    seeds = getattr(est, "seeds", (1, 1))
    if seeds != (1, 1):
        what += f", {_seeds_text(seeds)}"
    return evidence_row(what, est, spread=is_spread(est.n))


def _seeds_text(seeds: tuple[int, int]) -> str:
    """'2 seeds each', '3 and 1 seed(s)': how many training seeds the two sides of a ratio average."""
    return f"{seeds[0]} seeds each" if seeds[0] == seeds[1] else f"{seeds[0]} and {seeds[1]} seed(s)"


def _latency_pair(run: RunData) -> tuple[str, str, int] | str:
    """(full attention's model, TTT-E2E's, the batch size judged: the smallest both were timed
    at), or why the run cannot say."""
    t = run.table
    latency = t[t["task"] == "latency"]
    if latency.empty:
        return "the run has no latency task"
    full, ttt = run.model_of("full_attention"), run.model_of("ttt_e2e")
    if full is None or ttt is None:
        return "needs both full attention and TTT-E2E"
    sizes = {m: {int(b) for b in latency.loc[latency["model"] == m, "batch_size"].dropna()} for m in (full, ttt)}
    untimed = [m for m, b in sizes.items() if not b]
    if untimed:
        return f"{' and '.join(untimed)} not in the run's latency task"
    shared = sizes[full] & sizes[ttt]
    if not shared:
        return f"full attention and TTT-E2E were timed at no common batch size ({sorted(sizes[full])} vs {sorted(sizes[ttt])})"
    return full, ttt, min(shared)


def _out_of_memory(run: RunData, model: str, phase: str, batch: int) -> set[int]:
    rows = run.latency_rows(model, phase)
    return {int(c) for c in rows.loc[(rows["status"] == "oom") & (rows["batch_size"] == batch), "eval_ctx"].dropna()}


def _device_note(run: RunData, models: list[str]) -> tuple[str, dict[str, set[str]]]:
    """A sentence naming the machines ``models`` were timed on (a CPU: what its timings can
    test), and each model's machines by name."""
    # named together: a record that predates a field is named by the records that have it
    named = iter(machine_names([x for m in models for x in run.timing_machines(m)]))
    names = {m: {next(named) for _ in run.timing_machines(m)} for m in models}
    t = run.table
    devices = set(t.loc[(t["task"] == "latency") & t["model"].isin(models), "device"].dropna())
    on_cpu = "cpu" in devices or any(x.get("name") == "cpu" for m in models for x in run.timing_machines(m))
    every = set().union(*names.values())
    if not every:
        text = "The machine is not recorded (no run.json)" + (f"; device: {', '.join(sorted(devices))}" if devices else "")
    elif len(every) == 1 and all(names.values()):
        text = f"Timed on {next(iter(every))}"
    else:
        text = "Timed on different machines: " + "; ".join(
            f"{m} on {', '.join(sorted(n)) or 'an unrecorded one'}" for m, n in names.items())
    if on_cpu:
        text += f". The paper's claim is about {PAPER_DEVICE}: CPU timings test only its shape, not its size"
    return text + ".", names


def _unstable(run: RunData, cells: Iterable[tuple[str, str, int]], batch: int) -> str:
    """A sentence naming the timings among ``cells`` ((model, phase, context)) that the latency
    task flagged unstable ("" when none)."""
    flagged: dict[tuple[str, str], list[int]] = defaultdict(list)
    example = ""
    for model, phase, ctx in cells:
        rows = run.latency_rows(model, phase)
        rows = rows[(rows["eval_ctx"] == ctx) & (rows["batch_size"] == batch)
                    & rows["flag"].fillna("").str.startswith("unstable")]
        if len(rows):
            flagged[(model, phase)].append(ctx)
            example = example or str(rows["flag"].iloc[0])
    if not flagged:
        return ""
    where = "; ".join(f"{m} {p} at {', '.join(map(str, sorted(set(c))))}" for (m, p), c in flagged.items())
    return f" The latency task flagged timings used here unstable ({where}; e.g. \"{example}\"): read them with care."


def _few_repeats(ests: Iterable[stats.Estimate]) -> str:
    """A sentence saying that intervals over few repeats are spreads ("" when there are none)."""
    n = min((e.n for e in ests if np.isfinite(e.ci_low)), default=None)
    if n is None or not is_spread(n):
        return ""
    return (f" Intervals over as few as {n} timing repeats are spreads, not 95% intervals (a median's interval over "
            f"{n} values covers it at most {stats.median_max_coverage(n):.0%} of the time).")


def _interval(est: stats.Estimate) -> str:
    if not np.isfinite(est.ci_low):
        return f"(no interval: {est.n} repeat{'' if est.n == 1 else 's'})"
    return f"[{est.ci_low:.2f}, {est.ci_high:.2f}]"


def speedup(theirs: list[list[float]], mine: list[list[float]], ctx: int) -> stats.Estimate:
    """Full attention's median time over a model's at context ``ctx`` (``theirs``, ``mine``: each
    seed's timing repeats, :meth:`RunData.timings`; over several seeds, the mean of the seeds'
    medians, as the tables show it), each model's repeats resampled on their own: they are not
    paired (:func:`stats.bootstrap_seeded_median_ratio`)."""
    return stats.bootstrap_seeded_median_ratio(theirs, mine, RESAMPLES, seed=[8, ctx])


def speed_claim(run: RunData) -> Claim:
    """Full attention's median prefill time over TTT-E2E's at each context both were timed at
    (repeats resampled per model: they are not paired), judged at the longest; an out-of-memory
    failure of one where the other ran counts against the one that failed."""
    statement = ("TTT-E2E's prefill is faster than full attention at long context (the paper: 2.7x at 128K on "
                 f"{PAPER_DEVICE})")
    pair = _latency_pair(run)
    if isinstance(pair, str):
        return Claim("speed", statement, "undecided", pair)
    full, ttt, batch = pair
    note, machines = _device_note(run, [full, ttt])
    theirs, mine = run.timings(full, "prefill", batch), run.timings(ttt, "prefill", batch)
    full_oom, ttt_oom = _out_of_memory(run, full, "prefill", batch), _out_of_memory(run, ttt, "prefill", batch)
    faster: dict[int, int] = {}  # context -> +1 TTT-E2E is faster, -1 slower, 0 not resolved
    ests: dict[int, stats.Estimate] = {}
    evidence = []
    for ctx in sorted(set(theirs) | set(mine) | full_oom | ttt_oom):
        if ctx in theirs and ctx in mine:
            ests[ctx] = est = speedup(theirs[ctx], mine[ctx], ctx)
            faster[ctx] = interval_side(est, 1.0, 1.0)
            evidence.append(_timing_row(f"prefill at {ctx}: {full} time / {ttt} time (batch {batch})", est))
        elif (ctx in mine and ctx in full_oom) or (ctx in theirs and ctx in ttt_oom):
            failed, ran = (full, ttt) if ctx in mine else (ttt, full)
            faster[ctx] = 1 if failed == full else -1
            evidence.append({"comparison": f"prefill at {ctx}: {failed} out of memory, {ran} ran (batch {batch})",
                             "value": np.nan, "ci_low": np.nan, "ci_high": np.nan, "n": 0})
    if not faster:
        return Claim("speed", statement, "undecided", f"the samples hold prefill timings of full attention and "
                     f"TTT-E2E at no common context (batch {batch}). {note}", evidence)
    if len(set().union(*machines.values())) > 1:
        return Claim("speed", statement, "undecided", f"timings from different machines do not compare. {note}",
                     evidence)
    longest = max(faster)
    at = f"at context {longest} (the longest timed here; the paper's: 128K)"
    if longest in ests:
        est = ests[longest]
        head = f"{at}, full attention's prefill takes {est.value:.2f}x TTT-E2E's time {_interval(est)}" + {
            1: ": TTT-E2E is faster", -1: ": TTT-E2E is slower", 0: ", not resolved from 1"}[faster[longest]]
    elif faster[longest] > 0:
        head = f"{at}, full attention ran out of memory where TTT-E2E ran, which counts for the claim"
    else:
        head = f"{at}, TTT-E2E ran out of memory where full attention ran, which counts against the claim"
    # The verdict is one interval's (the longest context's). The crossover is a fixed-sequence test,
    # from the longest context down, stopping at the first not resolved: it names a context only
    # when every longer one is resolved, so it is wrong only if the longest truly-not-faster context
    # was resolved by chance, at most one interval's error; no correction. The contexts listed
    # where there is no crossover are each at 95%, beside the verdict, not a verdict.
    crossover = None
    for ctx in sorted(faster, reverse=True):  # the shortest context from which TTT-E2E is faster at every one
        if faster[ctx] != 1:
            break
        crossover = ctx
    if crossover is None:
        elsewhere = [c for c, side in faster.items() if side == 1]
        cross = "no crossover: TTT-E2E is not faster at the longest context" + (
            f" (it is at {', '.join(map(str, elsewhere))})" if elsewhere else "")
    elif crossover == min(faster):
        cross = f"TTT-E2E is faster at every context timed, from {crossover} on (the crossover lies at or below it)"
    else:
        cross = f"TTT-E2E is faster from context {crossover} on (the crossover)"
    verdict = {1: "holds", -1: "contradicted", 0: "undecided"}[faster[longest]]
    cells = [(m, "prefill", ctx) for ctx in faster for m in (full, ttt)]
    return Claim("speed", statement, verdict, f"{head}; {cross}. {note}{_few_repeats(ests.values())}"
                 f"{_unstable(run, cells, batch)}", evidence)


def per_token_growth(run: RunData, model: str, phase: str, batch: int,
                     level: float = stats.DEFAULT_LEVEL) -> tuple[stats.Estimate, int, int] | None:
    """``model``'s time per token of ``phase`` at its longest timed context over that at its
    shortest (over several seeds, of the seeds' mean medians; its interval at ``level``), with the
    two contexts; None when it was timed at fewer than two."""
    timed = run.timings(model, phase, batch)
    if len(timed) < 2:
        return None
    short, long = min(timed), max(timed)
    # prefill times a whole prefix, decode one step: per token, prefill divides by the prefix
    tokens = (lambda ctx: batch * ctx) if phase == "prefill" else (lambda ctx: batch)
    est = stats.bootstrap_seeded_median_ratio([[t / tokens(long) for t in seed] for seed in timed[long]],
                                              [[t / tokens(short) for t in seed] for seed in timed[short]],
                                              RESAMPLES, level, seed=[9, list(FLAT).index(phase), short, long])
    return est, short, long


def _shape(est: stats.Estimate, tolerance: float) -> str:
    """``flat`` (the interval inside [1 / tolerance, tolerance]), ``grows`` (above it), ``falls``
    (below it) or ``unclear`` (it holds a bound, or there is no interval)."""
    if np.isfinite(est.ci_low) and 1 / tolerance <= est.ci_low and est.ci_high <= tolerance:
        return "flat"
    return {1: "grows", -1: "falls", 0: "unclear"}[interval_side(est, 1 / tolerance, tolerance)]


def _phase_verdict(mine: stats.Estimate, theirs: stats.Estimate | None, tolerance: float) -> str:
    """One phase's verdict from TTT-E2E's ratio (``mine``) and full attention's (``theirs``; None
    where it gives no contrast): ``holds`` when TTT-E2E's is flat while full attention's grows,
    ``contradicted`` when TTT-E2E's grows, else ``undecided``."""
    shape = _shape(mine, tolerance)
    if shape == "grows":
        return "contradicted"
    return "holds" if shape == "flat" and theirs is not None and _shape(theirs, tolerance) == "grows" else "undecided"


def _phases_family(run: RunData, ttt: str, full: str, batch: int,
                   contrast: dict[str, bool]) -> tuple[dict[str, str], str]:
    """Each phase's verdict (the phases: ``contrast``'s keys) with every interval at Bonferroni's
    level over the phases (full attention's only where ``contrast`` says it gives one), and a
    sentence that says so."""
    level = stats.family_level(stats.DEFAULT_LEVEL, len(contrast))
    verdicts, texts = {}, []
    for phase, contrasted in contrast.items():
        tolerance = FLAT[phase]
        mine = per_token_growth(run, ttt, phase, batch, level)[0]
        found = per_token_growth(run, full, phase, batch, level) if contrasted else None
        theirs = found[0] if found else None
        verdicts[phase] = _phase_verdict(mine, theirs, tolerance)
        texts.append(f"{phase} {verdicts[phase]} (TTT-E2E {_interval(mine)} {_shape(mine, tolerance)}"
                     + (f", full attention {_interval(theirs)} {_shape(theirs, tolerance)})" if theirs else ")"))
    return verdicts, (f" Read at {level:.1%} each{family_note(len(contrast), 'phases')}, as one phase alone "
                      "decides partly or contradicted: " + "; ".join(texts) + ".")


def constant_latency_claim(run: RunData) -> Claim:
    """TTT-E2E's time per token at its longest context over its shortest, for prefill and decode
    (where timed), each within its tolerance (:data:`FLAT`), with full attention's alongside.
    Each phase is ``holds`` when flat while full attention's grows (where it does not, or was not
    timed at two contexts, the contexts cannot tell a constant cost from a growing one),
    ``contradicted`` when it grows, else ``undecided`` (a time per token that falls, fixed costs
    spread over more tokens, is no constant either); together:
    ``holds`` when every phase timed holds, ``partly`` when some do, ``contradicted`` when none
    does and one grows, else ``undecided``."""
    statement = "TTT-E2E's time per token stays constant with context"
    pair = _latency_pair(run)
    if isinstance(pair, str):
        return Claim("constant_latency", statement, "undecided", pair)
    full, ttt, batch = pair
    note, machines = _device_note(run, [full, ttt])
    if len(machines[ttt]) > 1:
        return Claim("constant_latency", statement, "undecided", f"TTT-E2E's timings at different contexts come from "
                     f"different machines and do not compare. {note}")
    evidence, parts, ests = [], [], []
    judged: dict[str, str] = {}
    contrast_ok: dict[str, bool] = {}  # phase -> whether full attention's ratio gives a contrast
    cells: list[tuple[str, str, int]] = []
    for phase, tolerance in FLAT.items():
        mine = per_token_growth(run, ttt, phase, batch)
        if mine is None:
            parts.append(f"{phase}: TTT-E2E {'timed at one context only' if run.timings(ttt, phase, batch) else 'not timed'}")
            continue
        est, short, long = mine
        shape = _shape(est, tolerance)
        ests.append(est)
        cells += [(ttt, phase, short), (ttt, phase, long)]
        evidence.append(_timing_row(f"{ttt}: {phase} time per token, context {long} / {short} (batch {batch})", est))
        text = (f"{phase}: TTT-E2E's time per token at {long} over at {short} is {est.value:.2f} {_interval(est)}, "
                f"{shape} (flat: inside [{1 / tolerance:.3f}, {tolerance:.2f}], issue 17)")
        oom = _out_of_memory(run, ttt, phase, batch)
        text += f" (out of memory at {', '.join(map(str, sorted(oom)))})" if oom else ""
        theirs = per_token_growth(run, full, phase, batch)
        contrast, contrast_est = None, None
        if theirs is None:
            text += "; full attention timed at fewer than two contexts"
        elif len(machines[full]) > 1:  # its growth would be the machines' difference: no contrast
            text += "; full attention's timings come from different machines and do not compare"
        else:
            other, a, b = theirs
            ests.append(other)
            cells += [(full, phase, a), (full, phase, b)]
            evidence.append(_timing_row(f"{full}: {phase} time per token, context {b} / {a} (batch {batch})", other))
            contrast, contrast_est = _shape(other, tolerance), other
            text += f"; full attention's ({b} over {a}) {other.value:.2f} {_interval(other)}, {contrast}"
        contrast_ok[phase] = contrast_est is not None
        judged[phase] = _phase_verdict(est, contrast_est, tolerance)
        if shape == "flat" and contrast != "grows":
            text += (": without full attention's time per token growing here, these contexts cannot tell a "
                     "constant one from a growing one")
        oom = _out_of_memory(run, full, phase, batch)
        text += f" (full attention out of memory at {', '.join(map(str, sorted(oom)))})" if oom else ""
        parts.append(text)
    if not judged:
        return Claim("constant_latency", statement, "undecided", f"TTT-E2E was timed at fewer than two contexts "
                     f"(batch {batch}): {'; '.join(parts)}. {note}", evidence)
    got = set(judged.values())
    family = ""
    # "holds" needs ALL phases to hold (intersection-union: each 95% interval suffices); "partly"
    # (ANY phase holds) and "contradicted" (ANY phase grows) are union-intersection verdicts over
    # the phases judged, so they read the intervals at Bonferroni's level, 95% family-wise
    if got != {"holds"} and len(judged) > 1 and got & {"holds", "contradicted"}:
        by_phase, family = _phases_family(run, ttt, full, batch, contrast_ok)
        got = set(by_phase.values())
    verdict = ("holds" if got == {"holds"} else "partly" if "holds" in got
               else "contradicted" if "contradicted" in got else "undecided")
    return Claim("constant_latency", statement, verdict, f"{'; '.join(parts)}. {note}{family}{_few_repeats(ests)}"
                 f"{_unstable(run, cells, batch)}", evidence)
