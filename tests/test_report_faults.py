"""Faults a reader met in the report's figures and tables, each on a small table made for it
(with the harness's own row writers): an interval misstated or left out, context lengths that
print alike, a model or a failed cell left out unsaid, a panel with nothing to draw, rows out
of the task's order."""
from __future__ import annotations

import logging
import warnings

import matplotlib
import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_hex

from harness import cli
from harness.api import results
from harness.report import figures, plots, tables


def _row(arch: str, metric: str, value: float | None, **columns) -> dict:
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


def drawn_intervals(ax, xs) -> dict[tuple[str, float], tuple[float, float]]:
    """(colour, x) -> (low, high) that the intervals drawn in ``ax`` span at each of ``xs``: where
    a vertical line there crosses a band of some width, or an error bar."""
    out = {}
    for artist in ax.collections:
        band = isinstance(artist, PolyCollection)
        color = to_hex((artist.get_facecolor() if band else artist.get_color())[0], keep_alpha=False)
        for path in artist.get_paths():
            verts = path.vertices
            if band and np.ptp(verts[:, 0]) == 0:
                continue  # a band of one point: no width, nothing seen
            for x in xs:
                ys = [y for (x0, y0), (x1, y1) in zip(verts[:-1], verts[1:]) if min(x0, x1) <= x <= max(x0, x1)
                      for y in ((y0, y1) if x0 == x1 else (y0 + (y1 - y0) * (x - x0) / (x1 - x0),))]
                if ys:
                    out[color, float(x)] = (round(min(ys), 9), round(max(ys), 9))
    return out


def test_a_figure_draws_each_interval_of_the_table_and_no_other():
    """A band spans its series' points with an interval: one alone (a single context length, or
    between cells without one) was drawn as nothing, and a point without an interval (the mean
    of two runs of one seed) got one from the band joining its neighbours; the mean of two seeds
    has its own, over seeds."""
    rows = [_row("full_attention", "loss", 3.0, task="loss_scaling", eval_ctx=1024, ci_low=2.9, ci_high=3.2)]
    for T, runs, lo, hi in ((512, ((0, "r"),), 2.4, 2.7), (1024, ((0, "r"), (0, "again")), 0, 0),
                            (2048, ((0, "r"),), 2.2, 2.45), (4096, ((0, "r"), (1, "r")), 2.1, 2.4),
                            (8192, ((0, "r"),), 2.0, 2.3), (16384, ((0, "r"),), 1.9, 2.1)):
        rows += [_row("swa", "loss", (lo + hi) / 2 + 0.01 * i, task="loss_scaling", eval_ctx=T, seed=s, run=run,
                      ci_low=lo - 0.01 * i, ci_high=hi + 0.01 * i) for i, (s, run) in enumerate(runs)]
    prep = tables.prepare(results.validate(rows))
    ctx = plots.Context(prep, plots.series_styles(prep), [])
    with matplotlib.rc_context(plots.PAPER_RC):
        [(_, fig)] = plots.FIGURES["loss_vs_context"](ctx)
    pts = prep.points("loss_scaling", "loss", pos_start=None)
    expected = {(ctx.styles[r.series].color, float(r.eval_ctx)): (round(r.ci_low, 9), round(r.ci_high, 9))
                for r in pts.dropna(subset=["ci_low"]).itertuples()}
    assert len(expected) == 6
    assert drawn_intervals(fig.axes[0], pts["eval_ctx"].astype(float).unique()) == expected


def test_a_batch_size_facet_prints_as_a_whole_number():
    """Latency at two batch sizes, one model without: the batch column read "1.0", "2.0"."""
    rows = [_row(arch, "prefill_s", 0.1 * T / 1024, task="latency", eval_ctx=T, **extra)
            for arch, extra in (("full_attention", {"batch_size": 1}), ("swa", {}), ("swa", {"batch_size": 2}))
            for T in (1024, 4096)]
    header, cells = tables.text_rows(tables.summary_tables(results.validate(rows))["prefill_ms"])
    assert header[:3] == ["model", "arch", "batch_size"]
    assert [c[2] for c in cells] == ["1", "", "2"]


def test_the_pareto_view_names_a_model_it_leaves_out_for_want_of_a_measurement():
    """A model with a loss but no latency row at that length was left out of the view without a
    word (the note listed only failed cells)."""
    rows = []
    for arch in ("full_attention", "swa", "mamba2"):
        rows.append(_row(arch, "loss", 2.0, task="loss_scaling", eval_ctx=1024))
        if arch != "mamba2":
            rows.append(_row(arch, "prefill_s", 0.1, task="latency", eval_ctx=1024, batch_size=1))
    prep = tables.prepare(results.validate(rows))
    ctx = plots.Context(prep, plots.series_styles(prep), [])
    with matplotlib.rc_context(plots.PAPER_RC):
        [(stem, fig)] = plots.FIGURES["pareto"](ctx)
    assert stem == "pareto_1K"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["Full attention", "SWA"]
    assert fig._supxlabel is not None and "Mamba 2 (not measured)" in fig._supxlabel.get_text()


@pytest.fixture
def fresh_loggers(monkeypatch):
    """The loggers as in a fresh process: no handlers (pytest's own restored afterwards)."""
    for logger in (logging.getLogger(), logging.getLogger("harness")):
        monkeypatch.setattr(logger, "handlers", [])
        monkeypatch.setattr(logger, "level", logger.level)


def test_quick_and_report_say_why_a_figure_was_not_drawn(tmp_path, capsys, fresh_loggers):
    """`lcbench plot` printed why it skipped a figure; `lcbench quick` (its figures after the
    sweep) and `lcbench report` left a figure out without a word."""
    results.write_table(tmp_path, results.validate([_row("swa", "loss", 2.0, task="loss_scaling", eval_ctx=1024)]))
    cli._figures_and_tables(str(tmp_path))
    assert "skipped figure loss_gap: no full_attention model" in capsys.readouterr().err
    result = CliRunner().invoke(cli.main, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "skipped figure loss_gap: no full_attention model" in result.output


def test_the_mqar_legend_names_every_model_drawn():
    """The legend was the first panel's: a model measured only at the longer sequence length
    (or failed at the shorter one) was drawn without a legend entry."""
    rows = [_row(arch, "accuracy", 0.9, task="mqar", variant=f"pairs={p}", eval_ctx=L, ci_low=0.8, ci_high=0.95)
            for arch, lengths in (("full_attention", (64, 128)), ("mamba2", (128,))) for L in lengths for p in (4, 8)]
    prep = tables.prepare(results.validate(rows))
    ctx = plots.Context(prep, plots.series_styles(prep), [])
    assert "mqar" in figures.figure_names()  # the task's module registers it
    with matplotlib.rc_context(plots.PAPER_RC):
        [(_, fig)] = figures.FIGURES["mqar"](ctx)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["Full attention", "Mamba 2"]


def test_the_mqar_figure_names_the_cells_that_failed():
    """A failed cell was filtered out before drawing: full attention out of memory at the longer
    length simply had no line there, as if never run."""
    rows = [_row("mamba2", "accuracy", 0.5, task="mqar", variant=f"pairs={p}", eval_ctx=L)
            for L in (64, 128) for p in (4, 8)]
    rows += [_row("full_attention", "accuracy", 1.0, task="mqar", variant=f"pairs={p}", eval_ctx=64) for p in (4, 8)]
    rows += [_row("full_attention", "accuracy", None, status="oom", message="out of memory", task="mqar",
                  variant=f"pairs={p}", eval_ctx=128) for p in (4, 8)]
    prep = tables.prepare(results.validate(rows))
    ctx = plots.Context(prep, plots.series_styles(prep), [])
    figures.figure_names()
    with matplotlib.rc_context(plots.PAPER_RC):
        [(_, fig)] = figures.FIGURES["mqar"](ctx)
    assert fig._supxlabel is not None and fig._supxlabel.get_text() == "Not drawn: Full attention at length 128 (OOM)"


def test_a_memory_axis_over_cpu_and_gpu_rows_names_both_measures():
    """Rows from a GPU and a CPU (a sweep folder resumed on another machine) shared an axis
    labelled "Peak GPU memory": the CPU rows measure how far the resident set rose."""
    rows = [_row(arch, "prefill_peak_bytes", 2.0**20 * T / 1024, task="latency", eval_ctx=T, batch_size=1, device=device)
            for arch, device in (("full_attention", "cuda"), ("swa", "cpu")) for T in (1024, 4096)]
    prep = tables.prepare(results.validate(rows))
    ctx = plots.Context(prep, plots.series_styles(prep), [])
    with matplotlib.rc_context(plots.PAPER_RC):
        [(_, fig)] = plots.FIGURES["memory"](ctx)
    label = fig.axes[0].get_ylabel()
    assert "GPU" in label and "CPU" in label and "resident" in label.lower(), label


def test_memory_tables_name_what_each_device_measured():
    """The tables read "Peak memory while decoding" over CPU rows that count only what the work
    added to the resident set (not the weights, nor the state decoded from): full attention's
    decode "peak" (2.4 MiB at 2K in latency_cpu) sat below its own state size (9 MiB)."""
    def titles(devices: dict[str, str]) -> list[str]:
        rows = [_row(arch, metric, 2.0**20, task="latency", eval_ctx=1024, batch_size=1, device=device)
                for arch, device in devices.items() for metric in ("prefill_peak_bytes", "decode_peak_bytes")]
        out = tables.summary_tables(results.validate(rows))
        return [out[name].attrs["title"] for name in ("prefill_peak_mib", "decode_peak_mib")]

    assert titles({"swa": "cpu"}) == ["Resident memory added while prefilling (MiB) by context length",
                                      "Resident memory added while decoding (MiB) by context length"]
    assert titles({"swa": "cuda"})[1] == "Peak GPU memory while decoding (MiB) by context length"
    assert titles({"swa": "cpu", "full_attention": "cuda"})[0] == (
        "Peak memory (GPU allocated, CPU resident added) while prefilling (MiB) by context length")


def test_a_context_where_every_quality_cell_failed_does_not_crash_the_pareto_view(tmp_path, caplog):
    """One model, its loss out of memory at the longest length and its latency measured there:
    the empty memory panel's axis read the null data limits (inf) and `lcbench plot` died with
    OverflowError, every other figure unwritten."""
    where = dict(device="cuda", dtype="bfloat16")
    rows = [_row("full_attention", "loss", 2.0, task="loss_scaling", eval_ctx=1024, **where),
            _row("full_attention", "loss", None, status="oom", message="out of memory", task="loss_scaling",
                 eval_ctx=4096, **where)]
    rows += [_row("full_attention", metric, value * T, task="latency", eval_ctx=T, batch_size=1, **where)
             for T in (1024, 4096) for metric, value in (("prefill_s", 1e-5), ("prefill_peak_bytes", 1e6))]
    with caplog.at_level(logging.INFO, logger="harness.report.plots"):
        paths = plots.make_figures(results.validate(rows), tmp_path, formats=("png",), only=["pareto"])
    assert [p.name for p in paths] == ["pareto_1K.png"]
    assert "pareto at 4K: no model has both a quality and a cost there" in caplog.text


def test_a_batch_size_whose_every_memory_cell_failed_is_drawn_as_failures():
    """Latency at batch 8 out of memory at every length: its memory panel, only failure marks,
    died on the same null data limits (OverflowError), the batch-1 figure lost with it."""
    rows = []
    for T in (1024, 4096):
        rows.append(_row("full_attention", "prefill_peak_bytes", 1e6 * T, task="latency", eval_ctx=T, batch_size=1))
        rows.append(_row("full_attention", "prefill_peak_bytes", None, status="oom", message="out of memory",
                         task="latency", eval_ctx=T, batch_size=8))
    prep = tables.prepare(results.validate(rows))
    ctx = plots.Context(prep, plots.series_styles(prep), [])
    with matplotlib.rc_context(plots.PAPER_RC):
        drawn = dict(plots.FIGURES["memory"](ctx))
    assert list(drawn) == ["memory_bs1", "memory_bs8"]
    assert [t.get_text() for t in drawn["memory_bs8"].axes[0].texts] == ["OOM", "OOM"]


def test_a_position_panel_with_nothing_to_draw_keeps_its_token_axis():
    """The gap by position at a length where full attention ran out of memory has no point to
    draw: its log axis of token positions (set by the figure) must keep its ticks, not be reset
    to the linear one-tick axis of an empty memory panel (matplotlib warned and dropped them)."""
    rows = []
    for arch in ("full_attention", "swa"):
        for L in (256, 1024):
            where = dict(task="loss_scaling", eval_ctx=L)
            if arch == "full_attention" and L == 1024:
                rows.append(_row(arch, "loss", None, status="oom", message="out of memory", **where))
                continue
            rows.append(_row(arch, "loss", 3.0, **where))
            rows += [_row(arch, "loss", 3.0 - 0.1 * k, pos_start=2**k, pos_end=2 ** (k + 1), **where)
                     for k in range(L.bit_length() - 1)]
    prep = tables.prepare(results.validate(rows))
    ctx = plots.Context(prep, plots.series_styles(prep), [])
    with warnings.catch_warnings(), matplotlib.rc_context(plots.PAPER_RC):
        warnings.simplefilter("error")
        [(_, fig)] = plots.FIGURES["loss_gap_by_position"](ctx)
        fig.draw_without_rendering()
    empty = fig.axes[1]
    assert empty.get_title() == "Context 1K" and empty.get_xscale() == "log"
    assert [t.get_text() for t in empty.get_xticklabels()][-1] == "1K"


def test_a_thinned_context_axis_keeps_the_longest_length():
    """Past ten lengths every other tick is dropped, counting from the shortest: with twelve the
    longest context, the one a long-context figure is read for, lost its label."""
    lengths = [2**k for k in range(7, 19)]
    rows = [_row("swa", "loss", 3.0 - 0.01 * i, task="loss_scaling", eval_ctx=L) for i, L in enumerate(lengths)]
    prep = tables.prepare(results.validate(rows))
    ctx = plots.Context(prep, plots.series_styles(prep), [])
    with matplotlib.rc_context(plots.PAPER_RC):
        [(_, fig)] = plots.FIGURES["loss_vs_context"](ctx)
        fig.draw_without_rendering()
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels[-1] == "256K" and len(labels) <= 10


def test_the_repeat_figure_draws_each_gain_interval_and_names_a_failed_length():
    """The copy-gain panel drew its own band: nothing seen at a single length, and a length that
    failed (out of memory) left out without a mark."""
    rows = [_row(arch, metric, value, task="repeat", eval_ctx=256, ci_low=value - 0.1, ci_high=value + 0.2)
            for arch, gain in (("full_attention", 0.5), ("ttt_e2e", 0.8))
            for metric, value in (("copy_gain", gain), ("repeat_loss", 2.0 - gain), ("control_loss", 2.0))]
    rows += [_row("full_attention", metric, None, status="oom", message="out of memory", task="repeat", eval_ctx=1024)
             for metric in ("copy_gain", "repeat_loss", "control_loss")]
    prep = tables.prepare(results.validate(rows))
    ctx = plots.Context(prep, plots.series_styles(prep), [])
    assert "repeat" in figures.figure_names()
    with matplotlib.rc_context(plots.PAPER_RC):
        [(_, fig)] = figures.FIGURES["repeat"](ctx)
    gain = fig.axes[0]
    assert drawn_intervals(gain, [256.0]) == {(ctx.styles[s].color, 256.0): (round(v - 0.1, 9), round(v + 0.2, 9))
                                              for s, v in (("full_attention", 0.5), ("ttt_e2e", 0.8))}
    assert [t.get_text() for t in gain.texts] == ["OOM"]


def test_table_rows_keep_the_order_the_task_wrote_its_variants_in():
    """Rows of a text facet were sorted as strings: MQAR's pairs=16 came before pairs=4 and
    pairs=8, and NIAH's multikey before single, unlike the figures (which keep the task's order)."""
    rows = [_row("swa", "accuracy", 0.5, task="mqar", variant=f"pairs={p}", eval_ctx=64) for p in (4, 8, 16)]
    rows += [_row("swa", "gen_match", 0.5, task="niah", variant=v, haystack="text", eval_ctx=512)
             for v in ("single", "multikey")]
    t = tables.summary_tables(results.validate(rows))
    assert list(t["mqar_accuracy"].index.get_level_values("variant")) == ["pairs=4", "pairs=8", "pairs=16"]
    assert list(t["niah_gen_match"].index.get_level_values("variant")) == ["single", "multikey"]


def test_the_pareto_note_says_which_quality_a_model_lacks():
    """A model with a loss but no NIAH row at that length is drawn in the loss row; the note
    named it "Not shown" without saying it was the NIAH row it is missing from."""
    rows = []
    for arch in ("full_attention", "swa"):
        rows.append(_row(arch, "loss", 2.0, task="loss_scaling", eval_ctx=1024))
        rows.append(_row(arch, "prefill_s", 0.1, task="latency", eval_ctx=1024, batch_size=1))
    rows += [_row("swa", "cand_acc", v, task="niah", variant="single", haystack="text", eval_ctx=1024, **depth)
             for v, depth in ((0.5, {}), (0.5, {"depth": 0.5}))]
    prep = tables.prepare(results.validate(rows))
    ctx = plots.Context(prep, plots.series_styles(prep), ["cand_acc"])
    with matplotlib.rc_context(plots.PAPER_RC):
        [(_, fig)] = plots.FIGURES["pareto"](ctx)
    assert fig._supxlabel.get_text() == "Not shown: Full attention (NIAH: not measured)"


def test_a_gap_whose_reference_failed_says_so():
    """Where full attention ran out of memory, the loss-gap table showed blank cells without a word."""
    rows = [_row(arch, "loss", value, task="loss_scaling", eval_ctx=ctx, **extra)
            for arch, ctx, value, extra in (("full_attention", 256, 2.0, {}), ("swa", 256, 2.1, {}),
                                            ("full_attention", 1024, None, {"status": "oom", "message": "OOM"}),
                                            ("swa", 1024, 1.9, {}))]
    gap = tables.summary_tables(results.validate(rows))["loss_gap"]
    _, text = tables.text_rows(gap)
    swa = next(r for r in text if r[0] == "swa")
    assert swa[-2:] == ["+0.100", tables.UNSTABLE_MARK]
    assert "no full_attention reference at eval_ctx=1024 (oom)" in tables.render_markdown(gap)


def test_loss_by_position_shows_the_longest_context_lengths_when_there_are_too_many():
    """Past MAX_POSITION_PANELS lengths the figure drops the shortest: the long ones are the point."""
    lengths = [2**k for k in range(8, 8 + plots.MAX_POSITION_PANELS + 2)]
    rows = [_row("swa", "loss", 2.0, task="loss_scaling", eval_ctx=L, pos_start=1, pos_end=L) for L in lengths]
    prep = tables.prepare(results.validate(rows))
    _, shown = plots.loss._position_points(plots.Context(prep, plots.series_styles(prep), []))
    assert shown == lengths[-plots.MAX_POSITION_PANELS:]


def test_a_niah_heatmap_colours_accuracy_on_the_whole_0_to_1_scale():
    """Coloured on their own range, accuracies of 0.5 to 1 would paint a coin flip's score as the worst (red)."""
    rows = [_row("swa", "gen_match", value, task="niah", variant="single", haystack="text", eval_ctx=L, depth=depth)
            for L, depth, value in ((512, 0.0, 0.5), (512, 1.0, 1.0), (1024, 0.0, 0.75), (1024, 1.0, 1.0))]
    prep = tables.prepare(results.validate(rows))
    [(_, fig)] = plots.fig_niah_heatmaps(plots.Context(prep, plots.series_styles(prep), ["gen_match"]))
    assert fig.axes[0].images[0].get_clim() == (0, 1)


def test_the_memory_tables_are_named_by_the_devices_the_latency_task_ran_on_alone():
    """A table merging a GPU's loss run with a CPU's latency run: its memory is the CPU's
    resident memory added, not a GPU's allocator peak (the loss rows measured no memory)."""
    rows = [results.make_row("loss", 2.0, run="gpu", model="full_attention", arch="full_attention",
                         task="loss_scaling", eval_ctx=256, device="cuda"),
            results.make_row("prefill_peak_bytes", 2.0**20, run="cpu", model="full_attention", arch="full_attention",
                         task="latency", eval_ctx=256, batch_size=1, device="cpu")]
    out = tables.summary_tables(results.validate(rows))
    assert out["prefill_peak_mib"].attrs["title"] == "Resident memory added while prefilling (MiB) by context length"
