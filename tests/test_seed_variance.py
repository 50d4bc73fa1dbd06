"""Claims over models trained with several seeds: the intervals resample the seeds as well as the
documents, test sequences and prompts (seeds that disagree made a tight interval that said
"holds"), the evidence shows each seed's value, and with one seed the numbers are as before.
Tables and figures give a point over several seeds an interval over seeds, and say what it is;
the latency claims read a model over seeds as the tables do, and compare no machines."""
from __future__ import annotations

import itertools

import matplotlib
import numpy as np
import pandas as pd
import pytest

from harness.api import results, stats
from harness.report import claims, figures, plots, tables
from tests.test_claims import (ARCHS, BINS, CPU, FLAT_DECODE, GROWING, H100, PAPER, _latency, _mqar, _run, _windows,
                               linear, quadratic)
from tests.test_report_faults import drawn_intervals


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


def _loss_rows(seeds: list[int], spread: float = 0.1) -> pd.DataFrame:
    """Loss at 1K of full attention and TTT-E2E, seed s's model scoring 2 + ``spread`` * s with
    the interval [1.9, 2.4] over its own documents."""
    return results.validate([results.make_row("loss", 2.0 + spread * s, ci_low=1.9, ci_high=2.4, n=9, run="r", model=a,
                                              arch=a, task="loss_scaling", eval_ctx=1024, seed=s)
                             for a in ("full_attention", "ttt_e2e") for s in seeds])


def test_a_table_of_values_over_seeds_prints_their_interval_over_seeds_and_says_what_it_is():
    """A loss cell over three seeds showed their mean, without an interval (no seed's own covers
    seed-to-seed variance): a multi-seed run's tables showed no uncertainty at all."""
    three = tables.summary_tables(_loss_rows([0, 1, 2], spread=0.2))
    half = stats.t_quantile(0.975, 2) * 0.2 / np.sqrt(3)  # Student's t over 2.0, 2.2, 2.4: wider than [1.9, 2.4]
    assert f"2.200 ± {half:.3f} |" in tables.render_markdown(three["loss"])
    assert tables.footnotes(three["loss"]) == [
        "A value over several training seeds (up to 3) is their mean; its interval is over seeds: the wider, at each "
        "end, of Student's t 95% interval over the seeds' values and the seeds' own intervals averaged, so that it "
        "covers seed-to-seed variance"]
    # a gap between two models' means has no interval, and its footnote claims none
    assert tables.footnotes(three["loss_gap"]) == ["A value over several training seeds (up to 3) is their mean"]
    one = tables.summary_tables(_loss_rows([0]))["loss"]
    assert tables.footnotes(one) == [] and "2.000 [1.900, 2.400]" in tables.render_markdown(one)


def test_an_interval_over_seeds_is_the_wider_of_t_over_their_values_and_their_own_intervals():
    """Seeds that disagree: Student's t over their values; seeds that agree on documents they all
    read (their spread hides the documents'): no narrower than their own intervals, averaged."""
    half = stats.t_quantile(0.975, 2) / np.sqrt(3)
    apart = stats.across_seeds([1.0, 2.0, 3.0], [0.9, 1.9, 2.9], [1.1, 2.1, 3.1])
    assert apart.as_columns() == pytest.approx({"value": 2.0, "ci_low": 2 - half, "ci_high": 2 + half, "n": 3})
    alike = stats.across_seeds([2.0, 2.01, 2.02], [1.5, 1.6, 1.7], [2.6, 2.7, 2.5])
    assert alike.as_columns() == pytest.approx({"value": 2.01, "ci_low": 1.6, "ci_high": 2.6, "n": 3})
    # an end each way: own intervals reach further below, Student's t further above
    mixed = stats.across_seeds([2.0, 2.02, 2.04], [1.0, 1.1, 1.2], [2.03, 2.05, 2.07])
    assert mixed.ci_low == pytest.approx(1.1) and mixed.ci_high == pytest.approx(2.02 + 0.02 * half)
    # a seed without an interval of its own (one unit): Student's t alone; one seed: none
    assert stats.across_seeds([2.0, 2.0], [1.0, np.nan], [3.0, np.nan]).as_columns() == {
        "value": 2.0, "ci_low": 2.0, "ci_high": 2.0, "n": 2}
    assert np.isnan(stats.across_seeds([2.0], [1.0], [3.0]).ci_low)


def test_a_point_over_seeds_is_the_mean_of_each_seed_s_mean():
    """NIAH pooled over variants: seed 0 scored 0.2 and 0.4, seed 1 0.9 on the variant it ran (the
    other out of memory). The mean of the rows weighed seed 0 twice (0.5); each seed is one
    model, and the interval is over seeds, so the point is the seeds' mean (0.6), flagged partial."""
    rows = [results.make_row("cand_acc", v, ci_low=max(v - 0.1, 0), ci_high=v + 0.1, n=8, run="r", model="swa",
                             arch="swa", task="niah", variant=variant, haystack="text", eval_ctx=512, seed=s)
            for s, variant, v in ((0, "single", 0.2), (0, "multikey", 0.4), (1, "single", 0.9))]
    rows.append(results.make_row("cand_acc", None, status="oom", message="out of memory", run="r", model="swa",
                                 arch="swa", task="niah", variant="multikey", haystack="text", eval_ctx=512, seed=1))
    [point] = tables.prepare(results.validate(rows)).points("niah", "cand_acc", depth=None).itertuples()
    assert point.value == pytest.approx(0.6) and point.flag.startswith("partial: 3 of 4 rows ok")
    # seed 0's mean has no interval of its own (two rows): Student's t over 0.3 and 0.9, cut to [0, 1]
    assert point.ci_low == 0.0 and point.ci_high == 1.0


def test_a_seed_whose_every_row_failed_is_not_counted_among_the_seeds_of_a_mean():
    """Seed 1 ran out of memory everywhere: each cell is seed 0's value (flagged partial), not a
    mean over two seeds, and no footnote says it is."""
    rows = _loss_rows([0])
    rows = results.validate(list(rows.to_dict("records")) + [
        results.make_row("loss", None, status="oom", message="out of memory", run="r", model=a, arch=a,
                         task="loss_scaling", eval_ctx=1024, seed=1) for a in ("full_attention", "ttt_e2e")])
    loss = tables.summary_tables(rows)["loss"]
    assert loss.attrs["seeds"] == 1
    assert not any("training seeds" in note for note in tables.footnotes(loss)), tables.footnotes(loss)


def test_an_accuracy_s_interval_over_seeds_stays_inside_zero_to_one():
    """Student's t over three seeds that scored 0.2, 1.0 and 1.0 reached [-0.39, 1.86]."""
    rows = [results.make_row("cand_acc", v, ci_low=lo, ci_high=hi, n=8, run="r", model="ttt_e2e", arch="ttt_e2e",
                             task="niah", variant="single", haystack="text", eval_ctx=512, seed=s)
            for s, (v, lo, hi) in enumerate(((0.2, 0.05, 0.5), (1.0, 0.7, 1.0), (1.0, 0.7, 1.0)))]
    rows += [results.make_row("loss", 2.0 + 0.9 * s, ci_low=1.9 + 0.9 * s, ci_high=2.1 + 0.9 * s, run="r",
                              model="ttt_e2e", arch="ttt_e2e", task="loss_scaling", eval_ctx=512, seed=s)
             for s in range(3)]
    prep = tables.prepare(results.validate(rows))
    [acc] = prep.points("niah", "cand_acc", by=("variant", "haystack", "eval_ctx"), depth=None).itertuples()
    assert acc.value == pytest.approx(2.2 / 3) and (acc.ci_low, acc.ci_high) == (0.0, 1.0)
    # a share above 1 (a task's bug) keeps its value inside its interval: a bar below 0 failed to draw
    over = [dict(r, value=r["value"] + 0.1, ci_low=r["ci_low"] + 0.1, ci_high=r["ci_high"] + 0.1) for r in rows[1:3]]
    [high] = tables.prepare(results.validate(over)).points("niah", "cand_acc", depth=None).itertuples()
    assert high.ci_low < high.value == pytest.approx(1.1) == high.ci_high
    under = [dict(r, value=r["value"] - 1.1, ci_low=r["ci_low"] - 1.1, ci_high=r["ci_high"] - 1.1) for r in rows[1:3]]
    [low] = tables.prepare(results.validate(under)).points("niah", "cand_acc", depth=None).itertuples()
    assert low.ci_low <= low.value <= low.ci_high and low.value == pytest.approx(-0.1)  # one below 0 likewise
    [loss] = prep.points("loss_scaling", "loss").itertuples()  # a loss has no such bound
    assert loss.ci_low == pytest.approx(2.9 - stats.t_quantile(0.975, 2) * 0.9 / np.sqrt(3))


def test_a_figure_draws_the_interval_over_seeds_as_its_band_and_its_legend_says_what_it_is():
    """A multi-seed run's figures drew no band at all: the band broke at every mean of seeds."""
    prep = tables.prepare(pd.concat([_loss_rows([0, 1, 2]).assign(eval_ctx=L) for L in (512, 1024)]))
    ctx = plots.Context(prep, plots.series_styles(prep), [])
    with matplotlib.rc_context(plots.PAPER_RC):
        [(_, fig)] = plots.FIGURES["loss_vs_context"](ctx)
    pts = prep.points("loss_scaling", "loss")
    assert pts["ci_low"].notna().all()
    expected = {(ctx.styles[r.series].color, float(r.eval_ctx)): (round(r.ci_low, 9), round(r.ci_high, 9))
                for r in pts.itertuples()}
    assert drawn_intervals(fig.axes[0], [512.0, 1024.0]) == expected
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["Full attention", "TTT-E2E", "mean of 3 seeds;\n95% interval\nover seeds"]
    one = tables.prepare(_loss_rows([0]))
    with matplotlib.rc_context(plots.PAPER_RC):
        [(_, fig)] = plots.FIGURES["loss_vs_context"](plots.Context(one, plots.series_styles(one), []))
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["Full attention", "TTT-E2E"]


def test_the_mqar_figure_draws_the_interval_over_seeds_and_names_it():
    rows = [results.make_row("accuracy", a, ci_low=a - 0.05, ci_high=a + 0.05, n=16, run="r", model=m, arch=m,
                             task="mqar", eval_ctx=64, variant=f"pairs={p}", seed=s)
            for m in ("full_attention", "ttt_e2e") for p in (4, 8) for s, a in ((0, 0.5), (1, 0.7))]
    prep = tables.prepare(results.validate(rows))
    figures.figure_names()  # loads the task modules, whose figures register
    with matplotlib.rc_context(plots.PAPER_RC):
        [(_, fig)] = plots.FIGURES["mqar"](plots.Context(prep, plots.series_styles(prep), []))
    half = stats.t_quantile(0.975, 1) * 0.1 / np.sqrt(2)
    bars = [seg for c in fig.axes[0].collections for seg in c.get_segments()]
    assert len(bars) == 4 and all(seg[:, 1] == pytest.approx([max(0.6 - half, 0), min(0.6 + half, 1)]) for seg in bars)
    assert fig.legends[0].get_texts()[-1].get_text() == "mean of 2 seeds;\n95% interval\nover seeds"


def _two_seeds(run: claims.RunData, scale: float = 1.0) -> claims.RunData:
    """``run``'s latency rows and timings again as seed 1's, its times ``scale`` times seed 0's
    (another process, another load)."""
    again = [{**s, "seed": 1, **{k: [t * scale for t in s[k]] for k in ("seconds", "seconds_per_token") if k in s}}
             for s in run.samples]
    table = run.table.assign(seed=1)
    times = table["metric"].isin(["prefill_s", "decode_s"])
    table.loc[times, "value"] = table.loc[times, "value"] * scale
    return claims.RunData(pd.concat([run.table, table], ignore_index=True), run.samples + again,
                          run_device=run.run_device)


def test_latency_claims_read_a_model_over_seeds_as_the_tables_do():
    """Over two seeds the speed claim pooled each model's repeats: its speed-up at 16K was neither
    the table's value (full attention's mean over seeds of each seed's median over TTT-E2E's) nor
    its interval. It gives the table's, says how many seeds each side averages, and the
    constant-latency ratio is the table's times' ratio per token."""
    run = _two_seeds(_latency({"full_attention": quadratic, "ttt_e2e": linear}), scale=1.02)
    pooled = stats.bootstrap_median_ratio(*([t for s in run.samples if s["model"] == m and s["phase"] == "prefill"
                                             and s["eval_ctx"] == 16384 for t in s["seconds"]]
                                            for m in ("full_attention", "ttt_e2e")))
    t = tables.summary_tables(run.table, samples=run)
    key = ("ttt_e2e", "ttt_e2e")
    value, low, high = (x.loc[key, 16384] for x in (t["prefill_speedup"], *(t["prefill_speedup"].attrs[e]
                                                                             for e in ("ci_low", "ci_high"))))
    assert abs(pooled.value - value) > 1e-6  # the premise: the pooled repeats give another value
    [longest] = [e for e in claims.speed_claim(run).evidence if e["comparison"].startswith("prefill at 16384")]
    assert (longest["value"], longest["ci_low"], longest["ci_high"]) == pytest.approx((value, low, high), rel=1e-12)
    assert low < value < high and longest["n"] == 8
    assert [len(seed) for m in ("full_attention", "ttt_e2e") for seed in run.timings(m, "prefill", 1)[16384]] == [8] * 4
    assert longest["comparison"] == "prefill at 16384: full_attention time / ttt_e2e time (batch 1), 2 seeds each"
    [growth] = [e for e in claims.constant_latency_claim(run).evidence if e["comparison"].startswith("ttt_e2e: prefill")]
    prefill = t["prefill_ms"]
    assert growth["value"] == pytest.approx(prefill.loc[key, 16384] / prefill.loc[key, 1024] / 16, rel=1e-12)
    assert growth["ci_low"] < growth["value"] < growth["ci_high"]


def test_full_attention_timed_on_two_machines_gives_the_constant_latency_claim_no_contrast():
    """Full attention's seeds (or contexts) timed on a CPU and a GPU: its time per token "grew"
    between machines, and TTT-E2E's flat one was judged "holds" against it."""
    run = _latency({"full_attention": quadratic, "ttt_e2e": linear}, FLAT_DECODE)
    run.machines = {"full_attention": [CPU, H100], "ttt_e2e": [CPU]}
    claim = claims.constant_latency_claim(run)
    assert claim.verdict == "undecided", claim.why
    assert "full attention's timings come from different machines and do not compare" in claim.why
    assert "full_attention on cpu (AMD EPYC, 2 cores), cuda (NVIDIA H100 80GB HBM3)" in claim.why
    run.machines = {"full_attention": [CPU], "ttt_e2e": [CPU]}
    assert claims.constant_latency_claim(run).verdict == "holds"


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


def test_the_pareto_view_and_the_gain_by_size_draw_intervals_over_seeds():
    """The Pareto view's error bars and the TTT gain by model size (tasks/ttt_neighbors) took a
    mean of seeds without its interval too."""
    from tasks import ttt_neighbors

    rows = [results.make_row(metric, v * (1 + 0.1 * s), ci_low=v * (0.99 + 0.1 * s), ci_high=v * (1.01 + 0.1 * s), n=8,
                             run="r", model=a,
                             arch=a, task=task, eval_ctx=1024, seed=s, **({"batch_size": 1} if task == "latency" else {}))
            for a in ("full_attention", "swa") for s in (0, 1, 2)
            for task, metric, v in (("loss_scaling", "loss", 2.0), ("latency", "prefill_s", 0.1))]
    prep = tables.prepare(results.validate(rows))
    with matplotlib.rc_context(plots.PAPER_RC):
        [(_, fig)] = plots.FIGURES["pareto"](plots.Context(prep, plots.series_styles(prep), []))
    loss = stats.across_seeds([2.0, 2.2, 2.4], [1.98, 2.18, 2.38], [2.02, 2.22, 2.42])
    ys = {tuple(np.round(seg[:, 1], 9)) for c in fig.axes[0].collections for seg in c.get_segments()
          if np.ptp(seg[:, 1]) > 0}
    assert ys == {(round(loss.ci_low, 9), round(loss.ci_high, 9))}
    assert fig.legends[0].get_texts()[-1].get_text() == "mean of 3 seeds;\n95% interval\nover seeds"

    gains = [dict(run="r", model="ttt_e2e:s", arch="ttt_e2e", params=1e5, task="ttt_neighbors", metric="gain",
                  variant="neighbors", eval_ctx=256, seed=s, value=g, ci_low=g - 0.01, ci_high=g + 0.01, status="ok")
             for s, g in ((0, 0.1), (1, 0.3))]
    fig = ttt_neighbors._gain_vs_size(pd.DataFrame(gains))
    gain = stats.across_seeds([0.1, 0.3], [0.09, 0.29], [0.11, 0.31])
    [bar] = [seg for c in fig.axes[0].collections for seg in c.get_segments()]
    assert bar[:, 1] == pytest.approx([gain.ci_low, gain.ci_high])
    assert fig.legends[0].get_texts()[-1].get_text() == "mean of 2 seeds;\n95% interval\nover seeds"


def test_the_gain_by_size_counts_seeds_not_runs_and_gives_runs_of_one_seed_no_interval():
    """Two runs of one seed: their mean is drawn without one run's interval; beside a second
    seed, the interval is over 2 seeds (not over 3 rows)."""
    from tasks import ttt_neighbors

    def gains(measured):
        return pd.DataFrame([{"run": f"r{i}", "model": "ttt_e2e:s", "arch": "ttt_e2e", "params": 1e5,
                              "task": "ttt_neighbors", "metric": "gain", "variant": "neighbors", "eval_ctx": 256,
                              "seed": s, "value": g, "ci_low": g - 0.01, "ci_high": g + 0.01, "status": "ok"}
                             for i, (s, g) in enumerate(measured)])

    fig = ttt_neighbors._gain_vs_size(gains([(0, 0.1), (0, 0.3)]))
    bars = [seg for c in fig.axes[0].collections for seg in c.get_segments() if len(seg) and np.isfinite(seg).all()]
    assert bars == [] and [t.get_text() for t in fig.legends[0].get_texts()] == ["ttt_e2e: TTT on neighbours"]
    fig = ttt_neighbors._gain_vs_size(gains([(0, 0.1), (0, 0.3), (1, 0.5)]))
    assert fig.legends[0].get_texts()[-1].get_text() == "mean of 2 seeds;\n95% interval\nover seeds"


def test_the_repeat_figure_names_its_band_over_seeds():
    rows = [results.make_row(metric, v + 0.1 * s, ci_low=v + 0.1 * s - 0.05, ci_high=v + 0.1 * s + 0.05, n=8, run="r",
                             model=a, arch=a, task="repeat", eval_ctx=L, seed=s)
            for a in ("full_attention", "swa") for s in (0, 1) for L in (256, 512)
            for metric, v in (("copy_gain", 0.5), ("control_loss", 2.5), ("repeat_loss", 2.0))]
    prep = tables.prepare(results.validate(rows))
    figures.figure_names()  # loads the task modules, whose figures register
    with matplotlib.rc_context(plots.PAPER_RC):
        [(_, fig)] = plots.FIGURES["repeat"](plots.Context(prep, plots.series_styles(prep), []))
    assert drawn_intervals(fig.axes[0], [256.0, 512.0])  # a band over seeds
    assert fig.legends[0].get_texts()[-1].get_text() == "mean of 2 seeds;\n95% interval\nover seeds"


@pytest.mark.parametrize("both, words", [("full_attention", "2 and 1 seed(s)"), ("ttt_e2e", "1 and 2 seed(s)")])
def test_a_speedup_over_seeds_on_one_side_says_how_many_each_side_averages(both, words):
    """One model timed with two seeds, the other with one: the evidence says how many each side
    averages (full attention's first), not "2 seeds each", nor nothing."""
    run = _two_seeds(_latency({"full_attention": quadratic, "ttt_e2e": linear}), scale=1.02)
    keep = [s for s in run.samples if s["seed"] == 0 or s["model"] == both]
    run = claims.RunData(run.table[(run.table["seed"] == 0) | (run.table["model"] == both)], keep,
                         run_device=run.run_device)
    [longest] = [e for e in claims.speed_claim(run).evidence if e["comparison"].startswith("prefill at 16384")]
    assert longest["comparison"] == f"prefill at 16384: full_attention time / ttt_e2e time (batch 1), {words}"
