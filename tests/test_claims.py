"""The paper's claims judged on synthetic runs whose answer is known: each verdict, and undecided
where the reference itself shows no effect."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from harness.api import results, stats
from harness.cli import main
from harness.report import claims
from harness.report.claims import context as claims_context
from harness.report.claims import evidence as claims_evidence
from harness.report.claims import latency as claims_latency
from harness.report.claims import recall as claims_recall
from harness.runs.store import ResultStore

ARCHS = ("full_attention", "ttt_e2e", "swa", "mamba2", "gated_deltanet")
BINS = [[1, 2], [2, 4], [4, 8], [8, 16], [16, 32], [32, 64], [64, 128], [128, 256], [256, 512], [512, 1024]]


def _windows(model: str, gain_512_to_1k: float, position_gain: np.ndarray, rng: np.random.Generator) -> list[dict]:
    """Same-target windows at 512 and 1024 ending at shared positions, 6 documents x 4 ends."""
    out = []
    for d in range(6):
        for e in range(4):
            end = 2048 + 512 * e
            noise = rng.normal(0, 0.01)
            base = 2.0 + 0.1 * d + noise  # documents differ far more than the paired differences
            for L, loss in ((512, base), (1024, base - gain_512_to_1k + rng.normal(0, 0.002))):
                bins = BINS[: int(np.log2(L))]
                out.append({"model": model, "task": "loss_scaling", "kind": "window", "eval_ctx": L, "doc": f"d{d}",
                            "start": end - L, "targets": "same", "scored_loss": loss, "bins": bins,
                            "bin_loss": list(base - position_gain[: len(bins)] + rng.normal(0, 0.002, len(bins)))})
    return out


def _mqar(model: str, accuracy: float, rng: np.random.Generator) -> list[dict]:
    return [{"model": model, "task": "mqar", "kind": "point", "eval_ctx": 64, "pairs": p,
             "per_sequence": list((rng.random(40) < accuracy).astype(float))} for p in (4, 8)]


def _run(gains: dict[str, float], ttt_position_gain: np.ndarray, recall: dict[str, float]) -> claims.RunData:
    rng = np.random.default_rng(0)
    samples = []
    for arch in ARCHS:
        position_gain = ttt_position_gain if arch == "ttt_e2e" else np.zeros(len(BINS))
        samples += _windows(arch, gains[arch], position_gain, rng)
        samples += _mqar(arch, recall.get(arch, 0.1), rng)
    table = pd.DataFrame({"model": list(ARCHS), "arch": list(ARCHS), "task": "loss_scaling", "metric": "loss",
                          "status": "ok", "value": 2.0})
    return claims.RunData(table, samples)


PAPER = {"full_attention": 0.05, "ttt_e2e": 0.04, "swa": 0.0, "mamba2": 0.0, "gated_deltanet": 0.0}
GROWING = np.linspace(0.0, 0.1, len(BINS))  # TTT-E2E's advantage grows with position


def test_a_run_shaped_like_the_paper_upholds_every_claim():
    run = _run(PAPER, GROWING, {"full_attention": 0.95, "ttt_e2e": 0.2})
    verdicts = {c.name: c.verdict for c in [claims.context_claim(run), claims.position_claim(run),
                                             claims.recall_claim(run)]}
    assert verdicts == {"context": "holds", "position": "holds", "recall": "holds"}


def test_contradictions_are_reported_as_such():
    run = _run({**PAPER, "ttt_e2e": 0.0}, -GROWING, {"full_attention": 0.6, "ttt_e2e": 0.95})
    assert claims.context_claim(run).verdict == "contradicted"
    assert claims.position_claim(run).verdict == "contradicted"
    assert claims.recall_claim(run).verdict == "contradicted"


def test_a_fixed_state_model_that_keeps_up_makes_the_context_claim_partial():
    claim = claims.context_claim(_run({**PAPER, "mamba2": 0.05}, GROWING, {}))
    assert claim.verdict == "partly" and "mamba2" in claim.why


def test_undecided_when_the_reference_shows_no_effect():
    run = _run({**PAPER, "full_attention": 0.0}, np.zeros(len(BINS)), {"full_attention": 0.2, "ttt_e2e": 0.1})
    context, position, recall = claims.context_claim(run), claims.position_claim(run), claims.recall_claim(run)
    assert context.verdict == "undecided" and "full attention itself" in context.why
    assert position.verdict == "undecided"
    assert recall.verdict == "undecided" and "not learned recall" in recall.why


def _repeat_windows(model: str, gains: dict[int, float], seed: int = 0) -> list[dict]:
    """The repeat task's window records: 6 documents x 2 ends, copy gain ``gains[L]`` at length L."""
    rng = np.random.default_rng(seed)
    return [{"model": model, "task": "repeat", "kind": "window", "seed": seed, "eval_ctx": L, "doc": f"d{d}",
             "end": 4096 + 512 * e, "control_loss": (c := 2.0 + 0.1 * d + rng.normal(0, 0.01)),
             "repeat_loss": c - gain + rng.normal(0, 0.001)}
            for L, gain in gains.items() for d in range(6) for e in range(2)]


def test_the_repeat_task_shows_whether_each_model_copies_from_that_far_back():
    run = _run({**PAPER, "full_attention": 0.0}, GROWING, {})
    # at a shorter distance full attention copies (0.5): not the one shown
    run.samples += _repeat_windows("full_attention", {512: 0.5, 1024: 0.002}) + _repeat_windows("ttt_e2e", {512: 0.3, 1024: 0.3})
    claim = claims.context_claim(run)
    assert claim.verdict == "undecided" and "its copy gain at that length is +0.002" in claim.why
    shown = {e["comparison"]: e for e in claim.evidence if "copy gain" in e["comparison"]}
    assert set(shown) == {"full_attention: copy gain at context 1024 (repeat task)",
                          "ttt_e2e: copy gain at context 1024 (repeat task)"}
    full, ttt = shown.values()
    assert full["value"] == pytest.approx(0.002, abs=0.001) and ttt["value"] == pytest.approx(0.3, abs=0.001)
    assert full["n"] == 6 and full["ci_low"] < full["value"] < full["ci_high"]


def test_the_copy_gain_shown_pools_every_seed():
    """Two seeds' repeat rows at the longest length: the evidence showed the first row's (one
    seed's) gain as the model's."""
    run = _run(PAPER, GROWING, {})
    run.samples += _repeat_windows("ttt_e2e", {1024: 0.1}, seed=0) + _repeat_windows("ttt_e2e", {1024: 0.3}, seed=1)
    rows = [results.make_row("copy_gain", gain, ci_low=gain - 0.01, ci_high=gain + 0.01, n=6, run="t", model="ttt_e2e",
                             arch="ttt_e2e", task="repeat", eval_ctx=1024, seed=seed) for seed, gain in ((0, 0.1), (1, 0.3))]
    run.table = pd.concat([run.table, results.to_frame(rows)], ignore_index=True)  # as the run's table has them
    row = next(e for e in claims.context_claim(run).evidence if e["comparison"].startswith("ttt_e2e: copy gain"))
    assert row["value"] == pytest.approx(0.2, abs=0.001) and row["n"] == 6


def test_a_context_claim_short_of_a_model_says_which_model_the_run_lacks():
    """`lcbench quick --arch full_attention --arch swa` then `lcbench claims`: the context claim told
    the user to run loss_scaling with same targets, which the run had done; TTT-E2E was missing."""
    full = _run(PAPER, GROWING, {})
    for drop, why in ((["ttt_e2e"], "the run has no ttt_e2e model"),
                      (claims.FIXED_STATE, "the run has none of " + ", ".join(claims.FIXED_STATE))):
        run = claims.RunData(full.table[~full.table["arch"].isin(drop)],
                             [s for s in full.samples if s["model"] not in drop])
        claim = claims.context_claim(run)
        assert claim.verdict == "undecided" and claim.why == why, claim.why


def test_per_length_windows_are_never_paired_across_lengths():
    run = _run(PAPER, GROWING, {})
    for s in run.samples:
        s["targets"] = "per_length"
    claim = claims.context_claim(run)
    assert claim.verdict == "undecided" and "targets: same" in claim.why


def test_every_model_is_judged_at_the_same_doubling():
    """Full attention measured up to 512 only (an OOM at 1024, say) gained from 256 -> 512, and
    that was set against the others' 512 -> 1024: "holds", with no full-attention number at 1024."""
    run = _run(PAPER, GROWING, {})
    for s in run.samples:
        if s["model"] == "full_attention" and s["task"] == "loss_scaling":
            end = s["start"] + s["eval_ctx"]
            s["eval_ctx"] //= 2
            s["start"] = end - s["eval_ctx"]
    claim = claims.context_claim(run)
    assert claim.verdict == "undecided" and "full_attention" in claim.why and "1024" in claim.why
    assert not any(e["comparison"].startswith("full_attention: loss(") for e in claim.evidence)


def test_the_context_comparison_is_paired_by_window():
    """Documents differ by 0.5 nats, far more than the 0.05 gain: an unpaired interval would hold 0."""
    est, longest = claims.last_doubling_gain(_run(PAPER, GROWING, {}), "full_attention")
    assert longest == 1024 and abs(est.value - 0.05) < 0.005 and est.ci_low > 0.04


def test_cli_writes_the_verdicts_of_a_run_folder(tmp_path):
    run = _run(PAPER, GROWING, {"full_attention": 0.95, "ttt_e2e": 0.2})
    rows = [results.make_row("loss", 2.0, run="r", model=a, arch=a, task="loss_scaling", eval_ctx=1024, seed=0)
            for a in ARCHS]
    results.write_table(tmp_path, results.validate(rows))
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "all.jsonl").write_text("".join(json.dumps(s) + "\n" for s in run.samples))
    out = CliRunner().invoke(main, ["claims", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert out.output.count("**holds**") == 3
    assert (tmp_path / "claims.md").read_text() == out.output


def test_a_table_without_its_samples_is_refused_and_its_claims_md_kept(tmp_path):
    """A results table copied without samples/ (results/reference/paper_small) cannot be judged:
    every claim pairs windows, documents or test sequences. Say so, and leave claims.md alone."""
    rows = [results.make_row("loss", 2.0, run="r", model=a, arch=a, task="loss_scaling", eval_ctx=1024, seed=0)
            for a in ARCHS]
    results.write_table(tmp_path, results.validate(rows))
    (tmp_path / "claims.md").write_text("committed verdicts")
    out = CliRunner().invoke(main, ["claims", str(tmp_path)])
    assert out.exit_code == 2 and "no samples" in out.output and "samples/" in out.output, out.output
    assert (tmp_path / "claims.md").read_text() == "committed verdicts"


def test_a_trace_of_context_too_small_to_matter_is_not_a_gain():
    """Recurrent states keep 1e-6-sized traces that paired intervals call significant."""
    from harness.api.stats import Estimate

    assert claims_context._trend(Estimate(1e-4, 0.9e-4, 1.1e-4, 9)) == "levels"
    assert claims_context._trend(Estimate(0.05, 0.04, 0.06, 9)) == "gains"
    assert claims_context._trend(Estimate(0.01, 0.001, 0.02, 9)) == "unclear"


def test_a_run_with_several_models_of_an_architecture_says_which_is_judged_and_takes_a_pick(tmp_path):
    # the first model of each architecture was judged, silently, e.g. in a train_lengths sweep
    run = _run(PAPER, GROWING, {"full_attention": 0.95, "ttt_e2e": 0.2})
    flat = _run({**PAPER, "ttt_e2e": 0.0}, np.zeros(len(BINS)), {"full_attention": 0.95, "ttt_e2e": 0.2})
    samples = run.samples + [{**s, "model": "ttt_e2e@short"} for s in flat.samples if s["model"] == "ttt_e2e"]
    rows = [results.make_row("loss", 2.0, run="r", model=a, arch=a, task="loss_scaling", eval_ctx=1024, seed=0)
            for a in ARCHS]
    rows.append(results.make_row("loss", 2.0, run="r", model="ttt_e2e@short", arch="ttt_e2e", task="loss_scaling",
                                 eval_ctx=1024, seed=0))
    results.write_table(tmp_path, results.validate(rows))
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "all.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    first = CliRunner().invoke(main, ["claims", str(tmp_path)])
    assert first.exit_code == 0, first.output
    assert "- ttt_e2e: `ttt_e2e` (also in the run: `ttt_e2e@short`; pick one with `--model ttt_e2e=NAME`)" in first.output
    assert first.output.count("**holds**") == 3
    picked = CliRunner().invoke(main, ["claims", str(tmp_path), "--model", "ttt_e2e=ttt_e2e@short"])
    assert picked.exit_code == 0, picked.output
    assert "- ttt_e2e: `ttt_e2e@short` (also in the run: `ttt_e2e`;" in picked.output
    run = claims.load_run(tmp_path)
    run.pick({"ttt_e2e": "ttt_e2e@short"})
    assert claims.context_claim(run).verdict == "contradicted"  # the picked model gains nothing from context
    bad = CliRunner().invoke(main, ["claims", str(tmp_path), "--model", "ttt_e2e=ttt_e2e@shrot"])
    assert bad.exit_code == 2 and "Did you mean 'ttt_e2e@short'" in bad.output
    assert CliRunner().invoke(main, ["claims", str(tmp_path), "--model", "ttt"]).exit_code == 2


def test_a_fixed_state_model_whose_gain_is_unresolved_does_not_level_off():
    """SWA gains 0.008 nats, noisily: its interval holds MIN_CONTEXT_GAIN, so it neither keeps
    falling nor levels off, and "holds" (the fixed-state models do not gain) was not shown."""
    run = _run(PAPER, GROWING, {})
    rng = np.random.default_rng(1)
    for s in run.windows("swa"):
        if s["eval_ctx"] == 1024:
            s["scored_loss"] -= 0.008 + rng.normal(0, 0.04)
    swa = claims.last_doubling_gain(run, "swa")[0]
    assert swa.ci_low < claims.MIN_CONTEXT_GAIN < swa.ci_high  # the premise
    claim = claims.context_claim(run)
    assert claim.verdict == "undecided" and "swa" in claim.why and "interval" in claim.why
    assert "family-wise" not in claim.why, claim.why  # its own 95% interval, unresolved: read once


def test_one_document_gives_no_interval_and_the_verdicts_say_so():
    run = _run(PAPER, GROWING, {})
    run.samples = [s for s in run.samples if s.get("kind") != "window" or s["doc"] == "d0"]
    for claim in (claims.context_claim(run), claims.position_claim(run)):
        # the reasons were "full attention itself does not gain" and "the growth's interval holds 0"
        assert claim.verdict == "undecided" and "1 document" in claim.why, claim.why


def test_pooled_mqar_accuracy_counts_queries_like_the_mqar_rows():
    """A 16-pair sequence asks 4x the queries of a 4-pair one; the pooled accuracy was the mean of
    per-sequence accuracies, which weighed every sequence alike (0.75 here, not 0.6)."""
    run = _run(PAPER, GROWING, {})
    run.samples = [s for s in run.samples if s.get("task") != "mqar"]
    for model, at_16 in (("full_attention", 0.5), ("ttt_e2e", 0.25)):
        run.samples += [{"model": model, "task": "mqar", "kind": "point", "eval_ctx": 64, "pairs": p,
                         "per_sequence": [acc] * 10} for p, acc in ((4, 1.0), (16, at_16))]
    full, ttt, gap = claims.recall_claim(run).evidence[:3]
    assert full["value"] == pytest.approx((4 * 1.0 + 16 * 0.5) / 20) and ttt["value"] == pytest.approx(0.4)
    assert gap["value"] == pytest.approx(0.2) and full["n"] == 20


def test_mqar_answers_pair_only_where_both_models_read_the_same_sequences():
    """The recall claim paired per-sequence answers by (length, pairs, seed) and position alone:
    runs with other mqar options (another grid, test_sequences) read other sequences there, and
    their answers were paired all the same (zip cut the longer list short)."""
    run = _run(PAPER, GROWING, {"full_attention": 0.95, "ttt_e2e": 0.2})
    assert claims.recall_claim(run).verdict == "holds"  # no digests (recorded before them): paired as before
    for s in run.samples:
        if s.get("task") == "mqar":
            s["sequences"] = f"seqs-{s['pairs']}"
    next(s for s in run.samples if s.get("task") == "mqar" and s["model"] == "ttt_e2e" and s["pairs"] == 8)[
        "sequences"] = "other"
    claim = claims.recall_claim(run)
    assert claim.verdict == "holds" and claim.evidence[0]["n"] == 40  # the 4-pair point alone
    assert "left out MQAR points where the two were tested on different sequences (length 64, 8 pairs)" in claim.why
    for s in run.samples:
        if s.get("task") == "mqar" and s["model"] == "ttt_e2e":
            s["sequences"] = "other"
    claim = claims.recall_claim(run)
    assert claim.verdict == "undecided" and claim.evidence[:1] == []
    assert claim.why.startswith("full attention and TTT-E2E were tested on different MQAR sequences at every point "
                                "both ran (length 64, 4 pairs; length 64, 8 pairs)")
    for s in run.samples:  # one model's points recorded before digests: paired as before, whichever model
        if s.get("task") == "mqar":
            s["sequences"] = None if s["model"] == "ttt_e2e" else "x"
    claim = claims.recall_claim(run)
    assert claim.verdict == "holds" and claim.evidence[0]["n"] == 80 and "left out" not in claim.why, claim.why
    # without digests, a different count of sequences still tells
    for s in run.samples:
        if s.get("task") == "mqar":
            del s["sequences"]
            if s["model"] == "ttt_e2e" and s["pairs"] == 4:
                s["per_sequence"] = s["per_sequence"][:30]
    claim = claims.recall_claim(run)
    assert claim.evidence[0]["n"] == 40 and "(length 64, 4 pairs)" in claim.why

def test_every_seed_of_a_multi_seed_run_is_judged_not_only_the_last():
    # sample records had no seed, so each window or point kept only the last seed's record
    rng = np.random.default_rng(1)
    samples = []
    for seed, ttt_gain in ((0, 0.0), (1, 0.08)):  # seed 0's TTT-E2E gains nothing, seed 1's 0.08
        for arch in ARCHS:
            gain = ttt_gain if arch == "ttt_e2e" else PAPER[arch]
            samples += [{**w, "seed": seed} for w in _windows(arch, gain, np.zeros(len(BINS)), rng)]
            samples += [{**p, "seed": seed} for p in _mqar(arch, 0.9 if arch == "full_attention" else 0.1 * seed, rng)]
    table = pd.DataFrame({"model": list(ARCHS), "arch": list(ARCHS), "task": "loss_scaling", "metric": "loss",
                          "status": "ok", "value": 2.0})
    run = claims.RunData(table, samples)
    est, _ = claims.last_doubling_gain(run, "ttt_e2e")
    assert est.value == pytest.approx(0.04, abs=0.005)  # the mean over both seeds, not seed 1's 0.08
    recall = claims.recall_claim(run)
    ttt_row = next(r for r in recall.evidence if r["comparison"] == "ttt_e2e: MQAR accuracy")
    assert ttt_row["n"] == 2 * 2 * 40 and ttt_row["value"] == pytest.approx(0.05, abs=0.03)
    # NIAH prompts too: the same prompt ids in both seeds are different prompts
    for seed in (0, 1):
        run.samples += [{**p, "seed": seed} for p in _niah_prompts({"full_attention": 0.9, "ttt_e2e": 0.1}, rng)]
    gap = next(r for r in claims.recall_claim(run).evidence if "NIAH cand_acc, paired by prompt" in r["comparison"])
    assert gap["n"] == 2 * 40


def test_the_context_gain_is_that_of_the_last_doubling():
    # losses 3.0, 2.5 and 2.5 at 256, 512 and 1024: the model gained early and levels off at the end
    samples = [{"model": "m", "task": "loss_scaling", "kind": "window", "eval_ctx": L, "doc": f"d{d}", "start": 4096 - L,
                "targets": "same", "scored_loss": loss + 0.01 * d}
               for d in range(4) for L, loss in ((256, 3.0), (512, 2.5), (1024, 2.5))]
    est, longest = claims.last_doubling_gain(claims.RunData(pd.DataFrame(), samples), "m")
    assert longest == 1024 and est.value == pytest.approx(0.0, abs=1e-12)



def test_a_window_scored_twice_at_a_length_gives_no_doubling_gain():
    """Two loss_scaling cells of one model (say target_tokens 256 at 512 and 1024, and 128 at 1024
    alone) score windows with the same end: the gain paired the first cell's loss at 512 with the
    second's at 1024, other targets, as if one run had scored both. The loss gap already refused
    a window scored twice; the doubling now does too."""
    samples = [{"model": "m", "task": "loss_scaling", "kind": "window", "eval_ctx": L, "doc": f"d{d}", "start": 4096 - L,
                "targets": "same", "scored_loss": loss + 0.01 * d}
               for d in range(4) for L, loss in ((512, 3.0), (1024, 2.9), (1024, 2.0))]
    run = claims.RunData(pd.DataFrame(), samples)
    assert claims.doubling_gains(run, "m") == ({}, 1024) and claims.last_doubling_gain(run, "m") is None
    assert claims.loss_gap(run, "m", "m", 1024) is None
    ttt = [{**w, "model": "ttt"} for w in samples]
    table = pd.DataFrame({"model": ["m", "ttt", "swa"], "arch": ["full_attention", "ttt_e2e", "swa"]})
    claim = claims.context_claim(claims.RunData(table, samples + ttt + _windows("swa", 0.0, GROWING, np.random.default_rng(0))))
    assert claim.verdict == "undecided" and "each scored once, for full_attention, ttt_e2e" in claim.why


def test_the_doubling_is_read_at_the_longest_same_target_length_not_a_longer_next_token_one():
    """A model also scored with next-token targets at 2048 (the default loss_scaling windows):
    its doubling gain is still 512 -> 1024, the longest length read with the same targets."""
    windows = _windows("m", 0.05, GROWING, np.random.default_rng(0))
    longer = [{**w, "eval_ctx": 2048, "start": 0, "targets": "next"} for w in windows if w["eval_ctx"] == 1024]
    gains, longest = claims.doubling_gains(claims.RunData(pd.DataFrame(), windows + longer), "m")
    assert longest == 1024 and len(gains) == 24
    assert np.mean(list(gains.values())) == pytest.approx(0.05, abs=0.005)

# ---------------------------------------------------------------------------------------------
# 4-5. latency: synthetic timings whose answer is known

CONTEXTS = (1024, 4096, 16384)
CPU = {"name": "cpu", "platform": "Linux", "cpu": "AMD EPYC", "cpu_count": 2, "torch_threads": 2}
H100 = {"name": "cuda", "platform": "Linux", "cpu": "Intel Xeon", "cpu_count": 32, "torch_threads": 32,
        "gpu": "NVIDIA H100 80GB HBM3"}


def quadratic(T: int) -> float:
    """Full attention's prefill: linear work per token plus attention's, which grows with T."""
    return 1e-6 * T * (1 + T / 4096)


def linear(T: int) -> float:
    """A constant time per token: 2e-6 s, so slower than quadratic() below 4096, faster above."""
    return 2e-6 * T


def _latency(prefill: dict[str, Any], decode: dict[str, Any] | None = None, repeats: int = 8, noise: float = 0.01,
             device: dict = CPU, oom: dict[str, set[int]] | None = None, flags: dict | None = None) -> claims.RunData:
    """A run whose latency task timed each model's prefill (``prefill[model](T)``: seconds) and
    decode (seconds per token) at CONTEXTS, ``repeats`` times each; ``oom``: model -> contexts
    that ran out of memory; ``flags``: (model, phase, T) -> flag."""
    rng = np.random.default_rng(4)
    rows, samples = [], []
    for phase, times in (("prefill", prefill), ("decode", decode or {})):
        for model, seconds in times.items():
            for T in CONTEXTS:
                where = dict(run="t", model=model, arch=model, task="latency", eval_ctx=T, batch_size=1, seed=0,
                             device=device["name"])
                if T in (oom or {}).get(model, ()):
                    rows.append(results.make_row(f"{phase}_s", None, status="oom", message="out of memory", **where))
                    continue
                reps = list(seconds(T) * (1 + rng.normal(0, noise, repeats)))
                rows.append(results.make_row(f"{phase}_s", float(np.median(reps)), n=repeats,
                                             flag=(flags or {}).get((model, phase, T), ""), **where))
                key = "seconds" if phase == "prefill" else "seconds_per_token"
                samples.append({"run": "t", "model": model, "task": "latency", "seed": 0, "kind": "timing",
                                "phase": phase, "eval_ctx": T, "batch_size": 1, key: reps})
    return claims.RunData(results.to_frame(rows), samples, run_device=device)


FLAT_DECODE = {"full_attention": lambda T: 1e-3 * (1 + T / 4096), "ttt_e2e": lambda T: 1e-3}


def test_a_faster_prefill_at_the_longest_context_upholds_the_speed_claim_and_names_the_crossover():
    claim = claims.speed_claim(_latency({"full_attention": quadratic, "ttt_e2e": linear}))
    assert claim.verdict == "holds", claim.why
    speedups = {e["comparison"].split(":")[0]: e for e in claim.evidence}
    at_16k = speedups["prefill at 16384"]
    assert at_16k["value"] == pytest.approx(quadratic(16384) / linear(16384), rel=0.02) and at_16k["ci_low"] > 1
    assert speedups["prefill at 1024"]["ci_high"] < 1  # slower at short context
    assert "at context 16384" in claim.why and "faster from context 16384 on" in claim.why
    everywhere = claims.speed_claim(_latency({"full_attention": quadratic, "ttt_e2e": lambda T: 0.5 * linear(T)}))
    assert everywhere.verdict == "holds" and "faster at every context timed, from 1024 on" in everywhere.why


def test_a_slower_or_unresolved_prefill_does_not_uphold_the_speed_claim():
    slower = claims.speed_claim(_latency({"full_attention": quadratic, "ttt_e2e": lambda T: 3 * linear(T)}))
    assert slower.verdict == "contradicted" and "TTT-E2E is slower" in slower.why and "no crossover" in slower.why
    # as fast as full attention, with repeats too noisy to tell them apart
    tied = claims.speed_claim(_latency({"full_attention": quadratic, "ttt_e2e": quadratic}, noise=0.1))
    assert tied.verdict == "undecided" and "not resolved from 1" in tied.why, tied.why


def test_an_out_of_memory_failure_at_long_context_counts_against_the_model_that_failed():
    # TTT-E2E is slower wherever both ran, but full attention ran out of memory at 16384
    run = _latency({"full_attention": quadratic, "ttt_e2e": lambda T: 3 * linear(T)}, oom={"full_attention": {16384}})
    claim = claims.speed_claim(run)
    assert claim.verdict == "holds" and "full attention ran out of memory where TTT-E2E ran" in claim.why
    assert "prefill at 16384: full_attention out of memory, ttt_e2e ran (batch 1)" in [
        e["comparison"] for e in claim.evidence]
    assert "| prefill at 16384: full_attention out of memory, ttt_e2e ran (batch 1) | - |  | 0 |" in (
        claims.render_markdown([claim]))
    reverse = claims.speed_claim(_latency({"full_attention": quadratic, "ttt_e2e": linear}, oom={"ttt_e2e": {16384}}))
    assert reverse.verdict == "contradicted" and "TTT-E2E ran out of memory where full attention ran" in reverse.why


def test_a_constant_time_per_token_upholds_the_constant_latency_claim_with_full_attention_as_contrast():
    claim = claims.constant_latency_claim(_latency({"full_attention": quadratic, "ttt_e2e": linear}, FLAT_DECODE))
    assert claim.verdict == "holds", claim.why
    ratios = {e["comparison"]: e for e in claim.evidence}
    ttt = ratios["ttt_e2e: prefill time per token, context 16384 / 1024 (batch 1)"]
    assert ttt["value"] == pytest.approx(1.0, abs=0.02) and 1 / claims.PREFILL_FLAT < ttt["ci_low"]
    full = ratios["full_attention: prefill time per token, context 16384 / 1024 (batch 1)"]
    assert full["value"] == pytest.approx(5 / 1.25, rel=0.02)  # (1 + 16384/4096) / (1 + 1024/4096)
    assert "prefill: TTT-E2E's time per token at 16384 over at 1024 is 1.00" in claim.why
    assert "full attention's (16384 over 1024) 4.00" in claim.why and "grows" in claim.why
    assert "decode: TTT-E2E's" in claim.why and len(claim.evidence) == 4


def test_a_growing_time_per_token_contradicts_the_constant_latency_claim_in_that_phase():
    growing = {"full_attention": quadratic, "ttt_e2e": lambda T: linear(T) * (1 + T / 8192)}
    partly = claims.constant_latency_claim(_latency(growing, FLAT_DECODE))
    assert partly.verdict == "partly" and "grows (flat: inside [0.909, 1.10], issue 17)" in partly.why
    assert partly.evidence[0]["value"] == pytest.approx((1 + 16384 / 8192) / (1 + 1024 / 8192), rel=0.02)
    both = claims.constant_latency_claim(_latency(growing, {**FLAT_DECODE, "ttt_e2e": FLAT_DECODE["full_attention"]}))
    assert both.verdict == "contradicted", both.why
    # a 3% growth of decode time: past neither tolerance's bound, inside neither
    unclear = claims.constant_latency_claim(_latency({"full_attention": quadratic, "ttt_e2e": linear},
                                                     {**FLAT_DECODE, "ttt_e2e": lambda T: 1e-3 * (1 + T / 500_000)},
                                                     noise=0.02))
    assert unclear.verdict == "partly" and "unclear (flat: inside [0.952, 1.05], issue 17)" in unclear.why, unclear.why


def test_a_flat_time_per_token_where_full_attention_s_is_flat_too_decides_nothing():
    """Contexts too short for attention's cost to show (full attention's time per token flat as
    well) cannot tell a constant time per token from a growing one: the claim read "holds"."""
    flat = {"full_attention": linear, "ttt_e2e": linear}
    claim = claims.constant_latency_claim(_latency(flat, {"full_attention": lambda T: 1e-3, "ttt_e2e": lambda T: 1e-3}))
    assert claim.verdict == "undecided", claim.why
    assert "without full attention's time per token growing here, these contexts cannot tell" in claim.why
    # full attention's decode grows, its prefill does not: only decode counts for the claim
    partly = claims.constant_latency_claim(_latency(flat, FLAT_DECODE))
    assert partly.verdict == "partly", partly.why
    # full attention timed at one context only: no contrast either
    run = _latency({"full_attention": quadratic, "ttt_e2e": linear})
    run.samples = [s for s in run.samples if s["model"] != "full_attention" or s["eval_ctx"] == CONTEXTS[0]]
    one = claims.constant_latency_claim(run)
    assert one.verdict == "undecided" and "full attention timed at fewer than two contexts" in one.why, one.why


def test_noisy_timings_leave_the_constant_latency_claim_undecided():
    claim = claims.constant_latency_claim(_latency({"full_attention": quadratic, "ttt_e2e": linear}, noise=0.2))
    assert claim.verdict == "undecided" and "unclear" in claim.why
    assert "decode: TTT-E2E not timed" in claim.why  # prefill alone was timed, and the why says so


def test_latency_claims_need_the_latency_task_and_both_models():
    no_task = _run(PAPER, GROWING, {})
    for claim in (claims.speed_claim(no_task), claims.constant_latency_claim(no_task)):
        assert claim.verdict == "undecided" and claim.why == "the run has no latency task"
    run = _latency({"full_attention": quadratic, "ttt_e2e": linear})
    run.table = run.table[run.table["model"] != "ttt_e2e"]
    for claim in (claims.speed_claim(run), claims.constant_latency_claim(run)):
        assert claim.verdict == "undecided" and "needs both full attention and TTT-E2E" in claim.why
    # TTT-E2E is in the run, but not in its latency task
    run = _latency({"full_attention": quadratic, "ttt_e2e": linear})
    run.table = pd.concat([run.table[run.table["model"] != "ttt_e2e"], no_task.table[no_task.table["arch"] == "ttt_e2e"]],
                          ignore_index=True)
    assert claims.speed_claim(run).why == "ttt_e2e not in the run's latency task"


def test_latency_claims_name_the_device_and_on_a_cpu_what_its_timings_can_test():
    times = {"full_attention": quadratic, "ttt_e2e": linear}
    for claim in (claims.speed_claim(_latency(times)), claims.constant_latency_claim(_latency(times, FLAT_DECODE))):
        assert "Timed on cpu (AMD EPYC, 2 cores). The paper's claim is about an H100: CPU timings test only its " \
               "shape, not its size." in claim.why
    on_gpu = claims.speed_claim(_latency(times, device=H100))
    assert "Timed on cuda (NVIDIA H100 80GB HBM3)." in on_gpu.why and "CPU" not in on_gpu.why
    unrecorded = _latency(times)
    unrecorded.run_device = None
    assert "The machine is not recorded (no run.json); device: cpu. The paper's claim is about an H100" in (
        claims.speed_claim(unrecorded).why)


def test_times_from_different_machines_are_not_compared():
    run = _latency({"full_attention": quadratic, "ttt_e2e": linear})
    run.machines = {"full_attention": [CPU], "ttt_e2e": [H100]}
    claim = claims.speed_claim(run)
    assert claim.verdict == "undecided" and "different machines do not compare" in claim.why
    assert "full_attention on cpu (AMD EPYC, 2 cores); ttt_e2e on cuda (NVIDIA H100 80GB HBM3)" in claim.why
    run.machines = {"ttt_e2e": [CPU, H100]}  # TTT-E2E's own contexts timed on two machines
    assert claims.constant_latency_claim(run).verdict == "undecided"


def test_a_sweep_whose_older_cells_predate_the_cpu_capability_field_is_one_machine():
    """ATen's CPU capability (AVX2 or AVX-512 kernels) changes speed, so cells that name different
    ones, or different CPUs, are timings of different machines; a cell written before records named
    it is one machine with the newer cells of the same CPU (a sweep resumed by a newer lcbench)."""
    avx2, avx512 = {**CPU, "cpu_capability": "AVX2"}, {**CPU, "cpu_capability": "AVX512"}
    other_cpu = {**avx2, "cpu": "Intel Xeon"}
    run = _latency({"full_attention": quadratic, "ttt_e2e": linear}, FLAT_DECODE)
    for older in ([CPU, avx2], [avx2, CPU]):  # either order in the records
        run.machines = {"full_attention": [avx2], "ttt_e2e": older}
        speed, constant = claims.speed_claim(run), claims.constant_latency_claim(run)
        assert speed.verdict == "holds" and constant.verdict == "holds", (speed.why, constant.why)
        assert "Timed on cpu (AMD EPYC, 2 cores, ATen AVX2)." in speed.why
    for second in (avx512, other_cpu):
        run.machines = {"full_attention": [avx2], "ttt_e2e": [avx2, second]}
        speed, constant = claims.speed_claim(run), claims.constant_latency_claim(run)
        assert speed.verdict == constant.verdict == "undecided", (speed.why, constant.why)
        assert "different machines do not compare" in speed.why
        assert "TTT-E2E's timings at different contexts come from different machines" in constant.why
        run.machines = {"full_attention": [avx2], "ttt_e2e": [second]}
        assert claims.speed_claim(run).verdict == "undecided"
    run.machines = {"full_attention": [avx2], "ttt_e2e": [avx512]}
    assert ("full_attention on cpu (AMD EPYC, 2 cores, ATen AVX2); ttt_e2e on cpu (AMD EPYC, 2 cores, ATen AVX512)"
            in claims.speed_claim(run).why)
    # a record without the field, beside records of two capabilities, could be either: it stays unnamed
    run.machines = {"full_attention": [avx2], "ttt_e2e": [CPU, avx512]}
    assert "ttt_e2e on cpu (AMD EPYC, 2 cores), cpu (AMD EPYC, 2 cores, ATen AVX512)" in claims.speed_claim(run).why
    gpu = {**H100, "cpu_capability": "AVX512"}  # a GPU's timings are named by the GPU, as before
    run.machines = {"full_attention": [H100], "ttt_e2e": [gpu]}
    assert "Timed on cuda (NVIDIA H100 80GB HBM3)." in claims.speed_claim(run).why


def test_latency_claims_name_the_timings_flagged_unstable_and_the_spread_of_few_repeats():
    flag = "unstable: repeats spread 14% (median absolute deviation / median > 10%)"
    run = _latency({"full_attention": quadratic, "ttt_e2e": linear}, FLAT_DECODE, repeats=3,
                   flags={("ttt_e2e", "prefill", 16384): flag, ("full_attention", "decode", 1024): flag})
    speed, constant = claims.speed_claim(run), claims.constant_latency_claim(run)
    assert f'flagged timings used here unstable (ttt_e2e prefill at 16384; e.g. "{flag}")' in speed.why
    assert "ttt_e2e prefill at 16384; full_attention decode at 1024;" in constant.why
    for claim in (speed, constant):
        assert "as few as 3 timing repeats are spreads, not 95% intervals" in claim.why and "75%" in claim.why
    steady = claims.speed_claim(_latency({"full_attention": quadratic, "ttt_e2e": linear}, repeats=6))
    assert "unstable" not in steady.why and "spreads" not in steady.why
    # the evidence tables head their column "95% interval": a spread's row says it is one
    few, enough = claims.render_markdown([speed, constant]), claims.render_markdown([steady])
    timing_rows = [line for line in few.splitlines() if line.startswith("| prefill at") or "per token, context" in line]
    assert timing_rows and all("(spread: too few repeats for 95%)" in line for line in timing_rows), few
    assert "spread:" not in enough


def _sweep_folder(tmp_path, run: claims.RunData) -> None:
    """``run``'s table and samples as a sweep writes them, one sample file (cell) per model."""
    results.write_table(tmp_path, results.validate(run.table))
    (tmp_path / "samples").mkdir()
    for model in ("full_attention", "ttt_e2e"):
        (tmp_path / "samples" / f"key-{model}.jsonl").write_text(
            "".join(json.dumps(s) + "\n" for s in run.samples if s["model"] == model))


def test_load_run_takes_each_latency_cell_s_machine_from_the_sweep_s_records(tmp_path):
    _sweep_folder(tmp_path, _latency({"full_attention": quadratic, "ttt_e2e": linear}))
    (tmp_path / "run.json").write_text(json.dumps({"device": CPU}))  # the machine the sweep command last ran on
    records = [{"key": f"key-{m}", "model": m, "task": "latency", "machine": H100} for m in ("full_attention", "ttt_e2e")]
    records.append({"key": "replaced", "model": "ttt_e2e", "task": "latency", "machine": CPU})  # not a current cell
    loaded = claims.load_run(tmp_path, sorted((tmp_path / "samples").glob("*.jsonl")), records)
    assert loaded.machines == {"full_attention": [H100], "ttt_e2e": [H100]}
    assert "Timed on cuda (NVIDIA H100 80GB HBM3)." in claims.speed_claim(loaded).why
    plain = claims.load_run(tmp_path)  # a single run: run.json's device
    assert plain.run_device == CPU and "Timed on cpu (AMD EPYC, 2 cores)." in claims.speed_claim(plain).why
    (tmp_path / "cells.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:2]))
    out = CliRunner().invoke(main, ["claims", str(tmp_path), "--out", str(tmp_path / "elsewhere.md")])
    assert out.exit_code == 0, out.output
    assert out.output.count("Timed on cuda (NVIDIA H100 80GB HBM3).") == 2 and "**holds**" in out.output


def test_cells_recorded_before_and_after_the_cpu_capability_field_are_one_machine(tmp_path):
    _sweep_folder(tmp_path, _latency({"full_attention": quadratic, "ttt_e2e": linear}))
    files = sorted((tmp_path / "samples").glob("*.jsonl"))
    for ttt_machine, verdict in ((CPU, "holds"), ({**CPU, "cpu_capability": "AVX512"}, "undecided")):
        records = [{"key": "key-full_attention", "model": "full_attention", "task": "latency",
                    "machine": {**CPU, "cpu_capability": "AVX2"}},
                   {"key": "key-ttt_e2e", "model": "ttt_e2e", "task": "latency", "machine": ttt_machine}]
        claim = claims.speed_claim(claims.load_run(tmp_path, files, records))
        assert claim.verdict == verdict, claim.why


def test_latency_claims_judge_the_smallest_batch_size_both_models_were_timed_at():
    """Full attention timed at batches 1, 4 and 8, TTT-E2E at 4 and 8: judged at 4, where TTT-E2E is
    faster (at 8 it is slower)."""
    fast = _latency({"full_attention": quadratic, "ttt_e2e": linear})
    slow = _latency({"full_attention": quadratic, "ttt_e2e": lambda T: 3 * linear(T)})
    alone = _latency({"full_attention": quadratic})
    run = claims.RunData(pd.concat([fast.table.assign(batch_size=4), slow.table.assign(batch_size=8), alone.table],
                                   ignore_index=True),
                         [{**s, "batch_size": 4} for s in fast.samples] + [{**s, "batch_size": 8} for s in slow.samples]
                         + alone.samples, run_device=CPU)
    claim = claims.speed_claim(run)
    assert claim.verdict == "holds" and claim.evidence and all("(batch 4)" in e["comparison"] for e in claim.evidence)
    ttt_at_2 = fast.table[fast.table["model"] == "ttt_e2e"].assign(batch_size=2)
    run.table = pd.concat([alone.table, ttt_at_2], ignore_index=True)
    assert claims.speed_claim(run).why == "full attention and TTT-E2E were timed at no common batch size ([1] vs [2])"


def test_a_gain_over_swa_that_grows_but_stays_a_loss_does_not_uphold_the_position_claim():
    """TTT-E2E worse than SWA at every position, less so late: the gap narrows (growth > 0), and
    the verdict was "holds" with no word that SWA is still better late in the window."""
    run = _run(PAPER, np.linspace(-0.3, -0.05, len(BINS)), {})
    claim = claims.position_claim(run)
    assert claim.verdict == "partly" and "SWA is still better late in the window" in claim.why, claim.why
    # late in the window as good as SWA on average: 0.01 better on half the documents, worse on the others
    level = _run(PAPER, np.linspace(-0.3, 0.0, len(BINS)), {})
    swa = {(w["eval_ctx"], w["doc"], w["start"]): w["bin_loss"] for w in level.windows("swa")}
    for w in level.windows("ttt_e2e"):
        w["bin_loss"][-1] = swa[w["eval_ctx"], w["doc"], w["start"]][-1] + (0.01 if int(w["doc"][1:]) % 2 else -0.01)
    claim = claims.position_claim(level)
    assert claim.verdict == "partly" and "holds 0" in claim.why, claim.why
    assert claims.position_claim(_run(PAPER, GROWING, {})).verdict == "holds"



def _niah_prompts(accuracy: dict[str, float], rng: np.random.Generator, prompts: int = 40) -> list[dict]:
    """NIAH prompt records (cand_acc per prompt), the same prompts for every model."""
    return [{"model": arch, "task": "niah", "kind": "prompt", "seed": 0, "prompt_id": f"single/text/512/0.5/{i}",
             "cand_acc": float(rng.random() < acc)} for arch, acc in accuracy.items() for i in range(prompts)]


def test_niah_recall_that_contradicts_mqar_keeps_the_recall_claim_from_holding():
    """MQAR says full attention recalls far better; NIAH says TTT-E2E does (the committed
    paper_small run: cand_acc 0.11 vs 0.86). The verdict was "holds" and the why named MQAR alone."""
    run = _run(PAPER, GROWING, {"full_attention": 0.95, "ttt_e2e": 0.2})
    run.samples += _niah_prompts({"full_attention": 0.1, "ttt_e2e": 0.9}, np.random.default_rng(3))
    claim = claims.recall_claim(run)
    assert claim.verdict == "partly" and "NIAH" in claim.why and "TTT-E2E ranks" in claim.why, claim.why
    niah = {e["comparison"]: e for e in claim.evidence if "NIAH" in e["comparison"]}
    gap = niah["full attention - TTT-E2E (NIAH cand_acc, paired by prompt)"]
    assert gap["n"] == 40 and gap["ci_high"] < 0 and gap["value"] == pytest.approx(
        niah["full_attention: NIAH cand_acc"]["value"] - niah["ttt_e2e: NIAH cand_acc"]["value"])
    assert claim.why.startswith("full attention answers more MQAR queries than TTT-E2E (0.99 vs 0.21 of the queries)")
    agree = _run(PAPER, GROWING, {"full_attention": 0.95, "ttt_e2e": 0.2})
    agree.samples += _niah_prompts({"full_attention": 0.9, "ttt_e2e": 0.1}, np.random.default_rng(3))
    claim = claims.recall_claim(agree)
    assert claim.verdict == "holds" and "NIAH agrees" in claim.why, claim.why
    # NIAH resolving no gap either way takes nothing from MQAR's verdict
    tied = _run(PAPER, GROWING, {"full_attention": 0.95, "ttt_e2e": 0.2})
    prompts = _niah_prompts({"full_attention": 1.0, "ttt_e2e": 1.0}, np.random.default_rng(0))
    tied.samples += [{**p, "cand_acc": float((i + (p["model"] == "ttt_e2e")) % 2)}  # each wins half the prompts
                     for i, p in enumerate(prompts)]
    claim = claims.recall_claim(tied)
    assert claim.verdict == "holds" and "NIAH candidate ranking does not resolve a gap" in claim.why, claim.why
    unlearned = _run(PAPER, GROWING, {"full_attention": 0.2, "ttt_e2e": 0.1})
    unlearned.samples += _niah_prompts({"full_attention": 0.1, "ttt_e2e": 0.9}, np.random.default_rng(3))
    claim = claims.recall_claim(unlearned)
    assert claim.verdict == "undecided" and "; NIAH: TTT-E2E ranks" in claim.why, claim.why


def test_niah_answers_pair_only_where_both_models_read_the_same_prompt():
    """NIAH prompts are seeded by prompt id, but the tokenizer, the held-out text and the niah
    options shape them too: answers of models that read other tokens under the same id were
    paired all the same (here NIAH, contradicting MQAR, made the verdict "partly")."""
    run = _run(PAPER, GROWING, {"full_attention": 0.95, "ttt_e2e": 0.2})
    run.samples += _niah_prompts({"full_attention": 0.1, "ttt_e2e": 0.9}, np.random.default_rng(3))
    niah = [s for s in run.samples if s.get("task") == "niah"]
    for s in niah:
        s["read_digest"] = f"read-{s['prompt_id']}"
    claim = claims.recall_claim(run)  # the same prompts: paired as without digests
    assert claim.verdict == "partly" and "left out" not in claim.why and claim.evidence[-1]["n"] == 40
    for s in niah:
        if s["model"] == "ttt_e2e" and int(s["prompt_id"].rsplit("/", 1)[1]) < 10:
            s["read_digest"] = "another tokenizer"
    claim = claims.recall_claim(run)
    gap = claim.evidence[-1]
    assert gap["comparison"] == "full attention - TTT-E2E (NIAH cand_acc, paired by prompt)" and gap["n"] == 30
    assert claim.why.endswith("; left out 10 NIAH prompts that full attention and TTT-E2E read as different tokens "
                              "(single/text/512/0.5/0 (seed 0); single/text/512/0.5/1 (seed 0); "
                              "single/text/512/0.5/2 (seed 0) and 7 more): their tokenizers, held-out text or niah "
                              "options differ; rerun both with the same ones"), claim.why
    for s in niah:
        if s["model"] == "ttt_e2e":
            s["read_digest"] = "other needle options"
    claim = claims.recall_claim(run)  # MQAR alone decides
    assert claim.verdict == "holds" and not any("NIAH" in e["comparison"] for e in claim.evidence)
    assert "; NIAH not compared: full attention and TTT-E2E read every prompt both scored as different tokens " \
           "(40 prompts: single/text/512/0.5/0 (seed 0);" in claim.why, claim.why
    # one model's records from before digests: paired by id, as they were
    for s in niah:
        if s["model"] == "full_attention":
            del s["read_digest"]
    claim = claims.recall_claim(run)
    assert claim.verdict == "partly" and claim.evidence[-1]["n"] == 40 and "left out" not in claim.why
    for s in niah:  # the other model's records from before digests: the same
        s["read_digest"] = "x" if s["model"] == "full_attention" else None
    claim = claims.recall_claim(run)
    assert claim.verdict == "partly" and claim.evidence[-1]["n"] == 40 and "left out" not in claim.why


def test_a_ttt_e2e_gain_far_below_full_attention_s_is_named_beside_the_context_verdict():
    """Full attention gains 0.3 nats/token from the last doubling, TTT-E2E 0.012: "keeps falling like
    full attention's" read "holds" with no word that its gap to full attention widens by 0.29."""
    claim = claims.context_claim(_run({**PAPER, "full_attention": 0.3, "ttt_e2e": 0.012}, GROWING, {}))
    widening = next(e for e in claim.evidence if e["comparison"].startswith("full attention's gain - TTT-E2E's"))
    assert widening["value"] == pytest.approx(0.288, abs=0.003) and widening["ci_low"] > 0.28 and widening["n"] == 6
    assert "TTT-E2E gains less than full attention: its gap to full attention widens by +0.289" in claim.why, claim.why
    close = claims.context_claim(_run({**PAPER, "ttt_e2e": 0.048}, GROWING, {}))  # within MIN_CONTEXT_GAIN
    assert close.verdict == "holds" and "gains less" not in close.why


def test_the_early_positions_named_are_those_averaged():
    """At a context that is no power of 2 (1536: bins ... [64, 128), [128, 256) ...) the early gain
    averages positions below 128, the last bin edge at or below 1536 / 8 = 192; it was labelled
    "positions < 192"."""
    run = _run(PAPER, GROWING, {})
    for w in run.windows("ttt_e2e") + run.windows("swa"):
        if w["eval_ctx"] == 1024:
            w["eval_ctx"], w["start"] = 1536, w["start"] + 1024 - 1536
            w["bins"] = [*w["bins"][:-1], [512, 1024], [1024, 1536]]
            w["bin_loss"] = [*w["bin_loss"], w["bin_loss"][-1]]
    early = claims.position_claim(run).evidence[0]["comparison"]
    assert early == "gain over SWA, positions < 128", early


def test_a_fixed_state_model_that_still_gains_is_named_when_ttt_e2e_s_gain_is_unresolved():
    """Mamba 2 gains 0.2 nats/token from the last doubling ("levels off" is contradicted); the why
    named only TTT-E2E's unresolved gain."""
    claim = claims.context_claim(_run({**PAPER, "ttt_e2e": 0.005, "mamba2": 0.2}, GROWING, {}))
    assert claim.verdict == "undecided" and "ttt_e2e: its interval" in claim.why, claim.why
    assert "mamba2 still gain(s), against the claim (95% family-wise over 3 fixed-state models, Bonferroni)" \
        in claim.why, claim.why


def test_scores_that_are_not_numbers_are_named_not_called_too_few_units():
    """A TTT-E2E whose losses diverged to NaN left every comparison with it undecided "(6 documents,
    too few for an interval)": six documents are plenty; its scores are NaN."""
    run = _run(PAPER, GROWING, {})
    for w in run.windows("ttt_e2e"):
        w["scored_loss"], w["bin_loss"] = float("nan"), [float("nan")] * len(w["bin_loss"])
    for claim in (claims.context_claim(run), claims.position_claim(run)):
        assert claim.verdict == "undecided" and "too few" not in claim.why, claim.why
        assert "no value: the scores of its 6 documents hold NaN or infinity" in claim.why, claim.why


# ---------------------------------------------------------------------------------------------
# multiple comparisons: a verdict that any one of k intervals can reach reads them at 1 - 0.05 / k


def test_any_of_k_null_intervals_trips_a_verdict_far_more_often_than_5_percent_unless_bonferroni():
    """Five comparisons with no effect (9 documents each, as claims' paired_mean makes them): "some
    interval resolves" happened in 19% of 400 runs at 95% each, 4% at stats.family_level's 99%."""
    k, runs = 5, 400
    rng = np.random.default_rng(0)
    tripped = {0.95: 0, stats.family_level(0.95, k): 0}
    for r in range(runs):
        data = rng.normal(0.0, 1.0, (k, 9))
        for level in tripped:
            ests = [claims_evidence.paired_mean(((0, f"d{i}", x, 1.0) for i, x in enumerate(row)), seed=r * k + j,
                                                level=level) for j, row in enumerate(data)]
            tripped[level] += any(claims_evidence.interval_sign(e) != 0 for e in ests)
    assert list(tripped) == [0.95, 0.99]
    assert tripped[0.95] / runs > 0.10 and tripped[0.99] / runs <= 0.05, tripped


def test_family_level_is_bonferroni_and_names_a_bad_argument():
    assert stats.family_level(0.95, 1) == 0.95 and stats.family_level(0.95, 2) == pytest.approx(0.975)
    with pytest.raises(ValueError, match="k .* at least 1, got 0"):
        stats.family_level(0.95, 0)
    with pytest.raises(ValueError, match="strictly between 0 and 1, got 95"):
        stats.family_level(95, 3)
    for level in (0.0, 1.0):  # no interval has either level: each is refused, not a level of 1
        with pytest.raises(ValueError, match=f"strictly between 0 and 1, got {level}"):
            stats.family_level(level, 3)


def _set_swa_gain_between_levels(run: claims.RunData, k: int = 3, end: int = 0) -> None:
    """Shift SWA's noisy gain so that MIN_CONTEXT_GAIN lies between the ``end`` (0: low, 1: high)
    of its 95% interval and that of its interval at Bonferroni's level over ``k`` (0: the 95% one
    lies above it, the family's holds it; 1: the 95% one lies below it) (a shift moves every
    interval by itself)."""
    rng = np.random.default_rng(1)
    longs = [s for s in run.windows("swa") if s["eval_ctx"] == 1024]
    for s in longs:
        s["scored_loss"] -= rng.normal(0, 0.04)
    single = claims.last_doubling_gain(run, "swa")[0]
    family = claims.last_doubling_gain(run, "swa", level=stats.family_level(0.95, k))[0]
    assert family.ci_low < single.ci_low and family.ci_high > single.ci_high  # the premise: the wider interval
    shift = claims.MIN_CONTEXT_GAIN - ((single.ci_low, single.ci_high)[end] + (family.ci_low, family.ci_high)[end]) / 2
    for s in longs:
        s["scored_loss"] -= shift


def test_a_fixed_state_gain_resolved_only_at_95_percent_each_does_not_make_the_context_claim_partly():
    """"partly" names a fixed-state model as soon as any one of the three gains: it read "partly"
    from SWA's 95% interval alone; over three models that reaches 7.5% instead of 2.5%."""
    run = _run(PAPER, GROWING, {})
    _set_swa_gain_between_levels(run)
    claim = claims.context_claim(run)
    assert claim.verdict == "undecided", claim.why
    assert "swa: its interval [" in claim.why and "95% family-wise over 3 fixed-state models, Bonferroni" in claim.why
    # a run with SWA its only fixed-state model: one interval, no correction
    alone = _run(PAPER, GROWING, {})
    alone.table = alone.table[~alone.table["arch"].isin(["mamba2", "gated_deltanet"])]
    _set_swa_gain_between_levels(alone)
    claim = claims.context_claim(alone)
    assert claim.verdict == "partly" and "swa" in claim.why and "family-wise" not in claim.why, claim.why
    # a gain resolved at the family's level is named, and the why says how it was read
    clear = claims.context_claim(_run({**PAPER, "mamba2": 0.05}, GROWING, {}))
    assert clear.verdict == "partly" and "but so does mamba2 (95% family-wise over 3 fixed-state models" in clear.why


@pytest.mark.parametrize("fixed", [("swa", "mamba2", "gated_deltanet"), ("swa", "mamba2")])
def test_the_gain_a_why_quotes_is_read_at_bonferroni_s_level_over_the_fixed_state_models_judged(fixed):
    """k is the fixed-state models the run judged: SWA's interval in the why is the one at
    1 - 0.05 / k, and two models are a family as three are."""
    run = _run(PAPER, GROWING, {})
    run.table = run.table[~run.table["arch"].isin(set(claims.FIXED_STATE) - set(fixed))]
    _set_swa_gain_between_levels(run, k=len(fixed))
    family = claims.last_doubling_gain(run, "swa", level=stats.family_level(0.95, len(fixed)))[0]
    claim = claims.context_claim(run)
    assert claim.verdict == "undecided", claim.why
    assert (f"swa: its interval [{family.ci_low:+.4f}, {family.ci_high:+.4f}] holds {claims.MIN_CONTEXT_GAIN} "
            f"(95% family-wise over {len(fixed)} fixed-state models, Bonferroni)") in claim.why, claim.why


def test_a_fixed_state_model_that_levels_off_at_95_percent_keeps_the_context_claim():
    """"holds" needs every fixed-state model to level off: each 95% interval suffices (an all-of-k
    verdict needs no correction), so a gain below MIN_CONTEXT_GAIN at 95% is not read again wider."""
    run = _run(PAPER, GROWING, {})
    _set_swa_gain_between_levels(run, end=1)  # levels at 95%, not at 98.3%
    claim = claims.context_claim(run)
    assert claim.verdict == "holds" and "family-wise" not in claim.why, claim.why


def _scale_ttt_prefill_between_levels(run: claims.RunData, end: int) -> None:
    """Scale TTT-E2E's prefill times at the longest context so that PREFILL_FLAT lies between the
    ``end`` (0: low, 1: high) of its 95% interval and that of its 97.5% one (two phases)."""
    ends = [claims.per_token_growth(run, "ttt_e2e", "prefill", 1, level)[0] for level in (0.95, 0.975)]
    single, family = ((e.ci_low, e.ci_high)[end] for e in ends)
    assert family != single  # the premise: the wider interval reaches further
    factor = claims.PREFILL_FLAT / np.sqrt(single * family)
    for s in run.samples:
        if s["model"] == "ttt_e2e" and s["phase"] == "prefill" and s["eval_ctx"] == max(CONTEXTS):
            s["seconds"] = [t * factor for t in s["seconds"]]


UNCLEAR_DECODE = {**FLAT_DECODE, "ttt_e2e": lambda T: 1e-3 * (1 + T / 500_000)}  # a 3% growth: unclear


def test_one_phase_resolved_only_at_95_percent_decides_neither_partly_nor_contradicted():
    """"partly" (any phase holds) and "contradicted" (any phase grows) are reached by one of the
    two phases: each read at 95% they err up to twice as often as one interval."""
    flat = _latency({"full_attention": quadratic, "ttt_e2e": linear}, UNCLEAR_DECODE, noise=0.02)
    _scale_ttt_prefill_between_levels(flat, 1)  # flat at 95%, not at 97.5%
    claim = claims.constant_latency_claim(flat)
    assert claim.verdict == "undecided", claim.why
    assert "prefill: TTT-E2E's time per token" in claim.why and ", flat (flat: inside" in claim.why
    assert "Read at 97.5% each (95% family-wise over 2 phases, Bonferroni), as one phase alone decides partly or " \
           "contradicted: prefill undecided (TTT-E2E [" in claim.why
    theirs = claims.per_token_growth(flat, "full_attention", "prefill", 1, 0.975)[0]  # the contrast, read alike
    contrast = f" unclear, full attention {claims_latency._interval(theirs)} grows); decode undecided"
    assert contrast in claim.why, claim.why
    grows = _latency({"full_attention": quadratic, "ttt_e2e": lambda T: 1.1 * linear(T)}, UNCLEAR_DECODE, noise=0.02)
    _scale_ttt_prefill_between_levels(grows, 0)  # grows at 95%, not at 97.5%
    claim = claims.constant_latency_claim(grows)
    assert claim.verdict == "undecided" and ", grows (flat: inside" in claim.why, claim.why
    # prefill alone timed: one interval, no correction
    alone = _latency({"full_attention": quadratic, "ttt_e2e": lambda T: 1.1 * linear(T)}, noise=0.02)
    _scale_ttt_prefill_between_levels(alone, 0)
    claim = claims.constant_latency_claim(alone)
    assert claim.verdict == "contradicted" and "family-wise" not in claim.why and "Read at" not in claim.why, claim.why


def test_every_phase_flat_at_95_percent_upholds_the_constant_latency_claim_without_correction():
    """"holds" needs both phases flat (an all-of-k verdict): each 95% interval suffices, and no
    wider reading is made or said."""
    run = _latency({"full_attention": quadratic, "ttt_e2e": linear}, FLAT_DECODE, noise=0.02)
    _scale_ttt_prefill_between_levels(run, 1)  # flat at 95%, not at 97.5%
    claim = claims.constant_latency_claim(run)
    assert claim.verdict == "holds" and "Read at" not in claim.why and "family-wise" not in claim.why, claim.why


def test_full_attention_timed_on_two_machines_gives_no_phase_a_contrast_even_read_family_wise():
    """Full attention's growth between contexts timed on two machines is the machines' difference:
    no phase holds on it, at 95% or at the family's level (TTT-E2E's prefill growth, resolved only at
    95%, sends the verdict to the family reading)."""
    run = _latency({"full_attention": quadratic, "ttt_e2e": lambda T: 1.1 * linear(T)}, FLAT_DECODE, noise=0.02)
    _scale_ttt_prefill_between_levels(run, 0)  # grows at 95%, not at 97.5%
    run.machines = {"full_attention": [CPU, H100], "ttt_e2e": [CPU]}
    claim = claims.constant_latency_claim(run)
    assert claim.verdict == "undecided", claim.why
    assert "; full attention's timings come from different machines and do not compare" in claim.why
    assert "decode undecided (TTT-E2E [" in claim.why and "full attention [" not in claim.why, claim.why


def test_one_niah_prompt_left_out_is_one_prompt():
    one = claims_recall.NIAHEvidence([], None, [(0, "single/text/512/0.5/3")])
    assert claims_recall._niah_note(one, 0) == (
        "; NIAH not compared: full attention and TTT-E2E read every prompt both scored as different tokens (1 prompt: "
        "single/text/512/0.5/3 (seed 0)): their tokenizers, held-out text or niah options differ; rerun both with the "
        "same ones")
    gap = stats.Estimate(0.0, -0.1, 0.1, 30)
    assert "; left out 1 NIAH prompt that full attention and TTT-E2E read as different tokens (single/text/512/0.5/3 " \
           "(seed 0))" in claims_recall._niah_note(dataclasses.replace(one, gap=gap), 1)


PAPER_SMALL = Path(__file__).resolve().parents[1] / "results" / "reference" / "paper_small"
NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")


def test_the_committed_paper_small_claims_are_judged_again_from_its_committed_samples():
    """results/reference/paper_small commits its sweep's samples and cell records, so its claims.md
    is judged again from the files beside it by the code as it is: the same verdicts and reasons, and
    every number within one unit of its last printed digit (float sums may round otherwise on
    another CPU). A change to the claims' code that moves a committed verdict or number fails here."""
    run = claims.load_run(PAPER_SMALL, None, ResultStore(PAPER_SMALL).finished().values())
    text = claims.render_markdown(claims.judge(run), run.judged_note())
    committed = (PAPER_SMALL / "claims.md").read_text(encoding="utf-8")
    assert NUMBER.sub("#", text) == NUMBER.sub("#", committed)
    for new, old in zip(NUMBER.findall(text), NUMBER.findall(committed), strict=True):
        last_digit = 10.0 ** -len(old.partition(".")[2])
        assert abs(float(new) - float(old)) <= last_digit * 1.0001, (new, old)
