"""Claims over models trained with several seeds: the intervals resample the seeds as well as the
documents, test sequences and prompts (seeds that disagree made a tight interval that said
"holds"), the evidence shows each seed's value, and with one seed the numbers are as before."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from harness.api import results, stats
from harness.report import claims, tables
from tests.test_claims import ARCHS, BINS, GROWING, PAPER, _mqar, _run, _windows


def _seeded_run(per_seed: list[tuple[float, float, float]]) -> claims.RunData:
    """One (TTT-E2E's context gain, its position growth as a multiple of GROWING, its MQAR
    accuracy) per seed; the other models as the paper has them. Every seed reads the same six
    documents (a crossed design), and its own MQAR test sequences (a nested one)."""
    rng = np.random.default_rng(0)
    samples = []
    for seed, (gain, growth, recall) in enumerate(per_seed):
        for arch in ARCHS:
            ttt = arch == "ttt_e2e"
            position = growth * GROWING if ttt else np.zeros(len(BINS))
            samples += [{**w, "seed": seed} for w in _windows(arch, gain if ttt else PAPER[arch], position, rng)]
            accuracy = recall if ttt else 0.9 if arch == "full_attention" else 0.1
            samples += [{**p, "seed": seed} for p in _mqar(arch, accuracy, rng)]
    table = pd.DataFrame({"model": list(ARCHS), "arch": list(ARCHS), "task": "loss_scaling", "metric": "loss",
                          "status": "ok", "value": 2.0})
    return claims.RunData(table, samples)


def test_seeds_that_disagree_leave_claims_1_to_3_undecided_and_say_so():
    """Seed 0's TTT-E2E gains from context, from late positions and loses at recall; seeds 1 and 2
    show the opposite. Pooling every seed's windows as documents, each claim held, with a tight
    interval; over seeds the intervals hold the line, and the why says the seeds disagree."""
    run = _seeded_run([(0.09, 1.0, 0.1), (-0.01, -0.2, 1.0), (-0.01, -0.2, 1.0)])
    judged = [claims.context_claim(run), claims.position_claim(run), claims.recall_claim(run)]
    assert [c.verdict for c in judged] == ["undecided"] * 3, [c.why for c in judged]
    for claim in judged:
        assert "the seeds disagree" in claim.why, claim.why
    ttt = next(e for e in judged[0].evidence if e["comparison"].startswith("ttt_e2e: loss("))
    assert ttt["ci_low"] < claims.MIN_CONTEXT_GAIN < ttt["ci_high"]
    assert [s for s, _ in ttt["per_seed"]] == [0, 1, 2]
    assert ttt["per_seed"][0][1] == pytest.approx(0.09, abs=0.005) and ttt["per_seed"][1][1] < 0
    text = claims.render_markdown(judged)
    assert f"seed 0 {ttt['per_seed'][0][1]:+.4f}, seed 1 {ttt['per_seed'][1][1]:+.4f}" in text
    assert "not seed-to-seed variance" not in text


def test_a_share_s_interval_over_seeds_that_disagree_stays_inside_what_a_share_can_be():
    """Student's t over 3 seeds whose accuracies are 0.12, 1.0 and 1.0 reached [-0.54, 1.96]."""
    recall = claims.recall_claim(_seeded_run([(0.0, 0.0, 0.1), (0.0, 0.0, 1.0), (0.0, 0.0, 1.0)]))
    full, ttt, gap = recall.evidence[:3]
    assert ttt["ci_low"] == 0.0 and ttt["ci_high"] == 1.0 and gap["ci_low"] == -1.0
    assert 0.0 <= full["ci_low"] < full["value"] < full["ci_high"] <= 1.0 and gap["ci_high"] <= 1.0


def test_seeds_that_agree_uphold_claims_1_to_3():
    run = _seeded_run([(0.04, 1.0, 0.2)] * 3)
    judged = [claims.context_claim(run), claims.position_claim(run), claims.recall_claim(run)]
    assert [c.verdict for c in judged] == ["holds"] * 3, [c.why for c in judged]
    assert not any("seeds disagree" in c.why for c in judged)


def test_one_seed_keeps_the_interval_over_documents_to_the_last_digit():
    """The context gain of a one-seed run, read directly: the mean of per-window differences,
    each document's windows resampled together (stats.bootstrap_ratio, claims' seed 1)."""
    run = _run(PAPER, GROWING, {})
    by_doc: dict[str, list[float]] = {}
    windows = {(w["doc"], w["start"] + w["eval_ctx"], w["eval_ctx"]): w["scored_loss"] for w in run.windows("ttt_e2e")}
    for (doc, end, length), loss in sorted(windows.items()):
        if length == 1024:
            by_doc.setdefault(doc, []).append(windows[(doc, end, 512)] - loss)
    docs = sorted(by_doc)
    expected = stats.bootstrap_ratio([sum(by_doc[d]) for d in docs], [len(by_doc[d]) for d in docs],
                                     claims.RESAMPLES, seed=1)
    for records in (run, claims.RunData(run.table, [{**s, "seed": 7} for s in run.samples])):  # no seed, or one
        est, _ = claims.last_doubling_gain(records, "ttt_e2e")
        assert est.as_columns() == expected.as_columns()


def test_a_one_seed_run_says_once_what_its_intervals_cover():
    text = claims.render_markdown(claims.judge(_run(PAPER, GROWING, {"full_attention": 0.95, "ttt_e2e": 0.2})))
    assert text.count("seed-to-seed variance") == 1
    assert ("The intervals of `context`, `position` and `recall` cover the documents, test sequences and prompts "
            "that these models (one training seed) were scored on, not seed-to-seed variance.") in text
    assert "(seed 0 " not in text  # no per-seed values with one seed


def test_with_one_unit_per_seed_the_interval_is_a_bootstrap_over_the_seeds():
    values = [0.3, -0.1, 0.05, 0.2]
    direct = stats.bootstrap_ratio(values, np.ones(4), 500, seed=3)
    for units in (["d"] * 4, ["d0", "d1", "d2", "d3"]):  # one document read by every seed, or one each
        est = stats.bootstrap_seeded_ratio([0, 1, 2, 10], units, values, np.ones(4), 500, seed=3)
        assert est.as_columns() == {**direct.as_columns(), "n": len(set(units))}
        assert est.per_seed == tuple(zip([0, 1, 2, 10], values))  # seeds in numeric order


def test_identical_seeds_give_the_one_seed_interval():
    """Three seeds whose models score alike on the same documents: the seed stage adds nothing
    (its draws differ from one seed's, their distribution does not: 20000 of them keep the
    Monte Carlo error of an end near 1% of the width)."""
    rng = np.random.default_rng(5)
    docs = [f"d{i:02d}" for i in range(12)]  # in the order the units are resampled
    num, den = rng.normal(1.0, 0.5, 12), rng.integers(50, 150, 12).astype(float)
    one = stats.bootstrap_seeded_ratio([0] * 12, docs, num, den, 20_000, seed=2)
    assert one.as_columns() == stats.bootstrap_ratio(num, den, 20_000, seed=2).as_columns()
    seeds = np.repeat([0, 1, 2], 12).tolist()
    three = stats.bootstrap_seeded_ratio(seeds, docs * 3, np.tile(num, 3), np.tile(den, 3), 20_000, seed=2)
    assert three.value == pytest.approx(one.value, rel=1e-12) and three.n == 12
    width = one.ci_high - one.ci_low
    assert abs(three.ci_low - one.ci_low) < 0.05 * width and abs(three.ci_high - one.ci_high) < 0.05 * width
    # seeds whose ratios differ by 0.3 (+0.31, +0.01, -0.29): the interval reaches past each of them
    shifted = stats.bootstrap_seeded_ratio(seeds, docs * 3, np.concatenate([num + 0.3 * den, num, num - 0.3 * den]),
                                           np.tile(den, 3), 20_000, seed=2)
    assert [round(v - one.value, 6) for _, v in shifted.per_seed] == [0.3, 0.0, -0.3]
    assert shifted.ci_low < one.value - 0.3 and shifted.ci_high > one.value + 0.3


def test_a_table_of_values_averaged_over_seeds_says_so():
    """A loss cell over three seeds showed their mean, its interval dropped without a word."""
    def rows(seeds: list[int]) -> pd.DataFrame:
        return results.validate([results.make_row("loss", 2.0 + 0.1 * s, ci_low=1.9, ci_high=2.4, n=9, run="r", model=a,
                                                  arch=a, task="loss_scaling", eval_ctx=1024, seed=s)
                                 for a in ("full_attention", "ttt_e2e") for s in seeds])

    three = tables.summary_tables(rows([0, 1, 2]))
    for name in ("loss", "loss_gap"):
        assert tables.footnotes(three[name]) == [
            "A value over several training seeds (up to 3) is their mean, without an interval: each seed's covers its "
            "own model only; `lcbench claims` resamples the seeds too"]
    assert "2.100 |" in tables.render_markdown(three["loss"])  # the mean, no interval
    one = tables.summary_tables(rows([0]))["loss"]
    assert tables.footnotes(one) == [] and "2.000 [1.900, 2.400]" in tables.render_markdown(one)


def test_documents_shared_by_different_seeds_are_resampled_as_documents():
    """Ten documents, each read by its own pair of five seeds whose models score alike: the
    spread is the documents'. Drawn within strata of the seeds that read them (one document
    each), no document was ever resampled, and the interval was half as wide as the documents'."""
    values = np.random.default_rng(0).normal(0, 1, 10)
    pairs = list(itertools.combinations(range(5), 2))
    seeds = [s for pair in pairs for s in pair]
    units = [f"d{d}" for d, pair in enumerate(pairs) for _ in pair]
    est = stats.bootstrap_seeded_ratio(seeds, units, np.repeat(values, 2), np.ones(20))
    direct = stats.bootstrap_mean(values)
    assert est.value == pytest.approx(direct.value) and est.n == 10
    assert est.ci_low <= direct.ci_low and est.ci_high >= direct.ci_high
