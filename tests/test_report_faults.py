"""Faults a reader met in the report's figures and tables, each on a small table made for it: a
cell's interval misstated, context lengths that print alike, an interval the figure left out."""
from __future__ import annotations

import matplotlib

from harness.api import results
from harness.report import plots, tables


def _row(arch: str, metric: str, value: float, **columns) -> dict:
    base = dict(run="r", model=arch, arch=arch, params=1000, train_ctx=1024, device="cpu", dtype="float32", seed=0)
    return results.make_row(metric, value, **{**base, **columns})


def test_a_table_cell_states_the_interval_the_figure_draws():
    """An accuracy of 0 with the interval [0, 0.30] printed "0.00 ± 0.15": a range below zero that
    no interval holds, and not the band the figure draws; an asymmetric interval is printed as its
    two ends, a symmetric one keeps ±."""
    rows = [_row("full_attention", "gen_match", 0.0, task="niah", variant="single", haystack="text", eval_ctx=512,
                 ci_low=0.0, ci_high=0.2991),
            _row("full_attention", "loss", 2.297, task="loss_scaling", eval_ctx=128, ci_low=2.195, ci_high=2.423),
            _row("full_attention", "loss", 2.0, task="loss_scaling", eval_ctx=256, ci_low=1.9, ci_high=2.1),
            _row("full_attention", "prefill_s", 0.01819, task="latency", eval_ctx=256, batch_size=1,
                 ci_low=0.01701, ci_high=0.02270)]
    t = tables.summary_tables(results.validate(rows))
    _, [niah] = tables.text_rows(t["niah_gen_match"])
    assert niah[-1] == "0.00 [0.00, 0.30]"
    _, [loss] = tables.text_rows(t["loss"])
    assert loss[-2:] == ["2.297 [2.195, 2.423]", "2.000 ± 0.100"]
    _, [prefill] = tables.text_rows(t["prefill_ms"])
    assert prefill[-1] == "18.2 [17.0, 22.7]"
    assert r"0.00 [0.00, 0.30]" in tables.render_latex(t["niah_gen_match"])


def test_context_lengths_that_differ_print_differently():
    """Labels had three significant digits: 131000 and 131072 tokens both printed "128K" (two
    columns of one name; the second pareto_128K file overwrote the first), 3000 "2.93K", and
    1024000 "1e+03K". A length is shortened only where the short form is exact."""
    assert [tables.context_label(n) for n in (131000, 131072, 3000, 1024000, 1280, 2**20 + 2**19)] == \
        ["131000", "128K", "3000", "1000K", "1.25K", "1.5M"]
    rows = [_row(arch, metric, value * T / 1e5, task=task, eval_ctx=T, **({"batch_size": 1} if task == "latency" else {}))
            for arch in ("full_attention", "swa") for T in (131000, 131072)
            for task, metric, value in (("loss_scaling", "loss", 2.0), ("latency", "prefill_s", 0.1))]
    prep = tables.prepare(results.validate(rows))
    header, _ = tables.text_rows(tables.summary_tables(prep)["loss"])
    assert header[-2:] == ["131000", "128K"]
    ctx = plots.Context(prep, plots.series_styles(prep), [])
    with matplotlib.rc_context(plots.PAPER_RC):
        assert [stem for stem, _ in plots.FIGURES["pareto"](ctx)] == ["pareto_131000", "pareto_128K"]
