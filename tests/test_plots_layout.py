"""Figures read cleanly: no text drawn over other text, nothing cut off at the figure's edge,
axes that show every point. Each table here is small and built for the case it checks (close
end values, zero memory on a CPU, a narrow cost range), and each figure is laid out as it is
saved (``draw_without_rendering``) before its text boxes are measured."""
from __future__ import annotations

import itertools

import matplotlib
import pandas as pd
import pytest
from matplotlib.collections import LineCollection
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.text import Text

from harness.api import results
from harness.report import figures, plots, tables
from tests.test_plots import synthetic_table

ARCHS = ("full_attention", "swa", "mamba2", "gated_deltanet", "ttt_e2e")
CONTEXTS = (256, 1024, 4096)
UNSTABLE = "unstable: load 1.02 per core"


def _base(arch: str, **columns) -> dict:
    return dict(run="layout", model=arch, arch=arch, params=1_000_000, train_ctx=1024, device="cpu",
                dtype="float32", seed=0, backend="auto", batch_size=1, **columns)


def latency_rows(prefill: dict[str, list[float]], memory: dict[str, list[float]] | None = None,
                 flag: str = UNSTABLE) -> list[dict]:
    """Prefill times per architecture at CONTEXTS (decode a hundredth of them), every timing
    flagged; ``memory``: prefill peak bytes (decode's all zero, as a CPU's added RSS often is)."""
    rows = []
    for arch, times in prefill.items():
        for i, (T, t) in enumerate(zip(CONTEXTS, times)):
            where = _base(arch, task="latency", eval_ctx=T)
            for metric, value in (("prefill_s", t), ("decode_s", t / 100)):
                rows.append(results.make_row(metric, value, ci_low=value * 0.9, ci_high=value * 1.1, n=5,
                                             flag=flag, **where))
            if memory is not None:
                rows.append(results.make_row("prefill_peak_bytes", memory[arch][i], n=1, **where))
                rows.append(results.make_row("decode_peak_bytes", 0.0, n=1, **where))
                rows.append(results.make_row("state_bytes", 2**16 * (i + 1), n=1, **where))
    return rows


def draw(rows: list[dict], name: str, niah_metrics: tuple[str, ...] = ()) -> dict[str, Figure]:
    """The figures ``name`` builds from ``rows``, laid out as when saved."""
    prep = tables.prepare(results.validate(rows))
    ctx = plots.Context(prep, plots.series_styles(prep), list(niah_metrics))
    with matplotlib.rc_context(plots.PAPER_RC):
        figures = dict(plots.FIGURES[name](ctx))
        for fig in figures.values():
            fig.draw_without_rendering()
    return figures


def overlapping(texts: list[Text]) -> list[tuple[str, str]]:
    boxes = [(t.get_text(), t.get_window_extent()) for t in texts if t.get_visible() and t.get_text()]
    return [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2) if box_a.overlaps(box_b)]


def test_speedup_end_labels_overlap_neither_each_other_nor_the_unstable_marks():
    # full attention 0.40 s at 4K, Mamba 2 and Gated DeltaNet 1.53x and 1.63x faster: two labels
    # a few points apart, each beside a dagger
    prefill = {"full_attention": [0.02, 0.07, 0.40], "swa": [0.015, 0.075, 0.26],
               "mamba2": [0.024, 0.07, 0.40 / 1.53], "gated_deltanet": [0.04, 0.08, 0.40 / 1.63],
               "ttt_e2e": [0.05, 0.25, 0.85]}
    fig = draw(latency_rows(prefill), "latency")["latency"]
    speedup = fig.axes[2]  # row 2, column 1: prefill's speed-up panel
    labels = [t for t in speedup.texts if t.get_text().endswith("×")]
    daggers = [t for t in speedup.texts if t.get_text() == tables.UNSTABLE_MARK]
    assert len(labels) == 4 and daggers
    assert overlapping(labels) == []
    assert [pair for pair in overlapping(labels + daggers) if pair.count(tables.UNSTABLE_MARK) == 1] == []


def niah_rows(accuracy: dict[str, list[float]], metric: str = "cand_acc", contexts=(512, 1024)) -> list[dict]:
    """One NIAH variant ('single', text haystack): pooled accuracy per architecture and context."""
    return [results.make_row(metric, acc, n=9, **_base(arch, task="niah", variant="single", haystack="text",
                                                        eval_ctx=L))
            for arch, accs in accuracy.items() for L, acc in zip(contexts, accs)]


def test_a_one_panel_figure_wraps_its_title_inside_the_figure():
    accuracy = {arch: [0.1 * i, 0.1 * i + 0.05] for i, arch in enumerate(ARCHS)}
    fig = draw(niah_rows(accuracy), "niah_vs_context", ("cand_acc",))["niah_vs_context_cand_acc_text"]
    title = fig.get_suptitle()
    assert "vs. context length (text haystack" in title
    box = fig._suptitle.get_window_extent()
    assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1, (box, fig.bbox)


def test_memory_a_cpu_added_nothing_is_drawn_at_zero_not_left_off_a_log_axis():
    # on a CPU the peak rows are the resident memory the work added: 0 for SWA and TTT-E2E here,
    # 0 for every model while decoding
    prefill = {arch: [0.02, 0.07, 0.4] for arch in ARCHS}
    memory = {"full_attention": [12288] * 3, "swa": [0] * 3, "mamba2": [131072, 12288, 12288],
              "gated_deltanet": [24576] * 3, "ttt_e2e": [0] * 3}
    fig = draw(latency_rows(prefill, memory), "memory")["memory"]
    prefill_ax, decode_ax, state_ax = fig.axes[:3]
    for ax in (prefill_ax, decode_ax):
        assert ax.get_yscale() == "linear"
        lo, hi = ax.get_ylim()
        assert lo < 0 < hi  # the zeros are inside the panel
        assert "added" in ax.get_ylabel() and "log" not in ax.get_ylabel()
    assert len([line for line in prefill_ax.lines if line.get_label() in ("SWA", "TTT-E2E")]) == 2
    assert [t.get_text() for t in decode_ax.get_yticklabels()] == ["0 B"]
    assert state_ax.get_yscale() == "log" and "log" in state_ax.get_ylabel()


def loss_rows(loss: dict[str, float], context: int = 1024) -> list[dict]:
    return [results.make_row("loss", value, ci_low=value - 0.08, ci_high=value + 0.08, n=9,
                             **_base(arch, task="loss_scaling", eval_ctx=context)) for arch, value in loss.items()]


def test_pareto_tick_labels_do_not_run_into_each_other_and_accuracy_spans_0_to_1():
    # prefill 70-300 ms at 1K: a narrow log range whose finest round ticks (70, 100, 150, 200,
    # 300 ms) ran together; every model's NIAH accuracy 0, which zoomed the axis to +-0.06
    prefill = {"full_attention": [0.02, 0.070, 0.4], "swa": [0.015, 0.075, 0.26], "mamba2": [0.024, 0.072, 0.26],
               "gated_deltanet": [0.04, 0.080, 0.25], "ttt_e2e": [0.05, 0.255, 0.8]}
    loss = dict(zip(ARCHS, (2.29, 2.21, 1.61, 1.75, 1.33)))
    rows = (latency_rows(prefill) + loss_rows(loss) + loss_rows(loss, context=256)
            + niah_rows({arch: [0.0, 0.0] for arch in ARCHS}, "gen_match"))
    drawn = draw(rows, "pareto", ("gen_match",))
    fig = drawn["pareto_1K"]
    for ax in fig.axes:
        assert overlapping(ax.get_xticklabels()) == [], ax.get_xlabel()
    loss_row, accuracy_row = fig.axes[:2], fig.axes[2:]  # costs: prefill and decode time
    for ax in loss_row:
        lo, hi = ax.get_ylim()
        assert lo < 1.33 and 2.29 < hi < 3
    for ax in accuracy_row:
        lo, hi = ax.get_ylim()
        assert lo <= 0 and hi >= 1
    for ax in drawn["pareto_256"].axes:  # loss alone (no NIAH at 256): a loss range in every column
        lo, hi = ax.get_ylim()
        assert lo < 1.33 and 2.29 < hi < 3


def test_pareto_ranks_by_the_niah_metric_that_tells_models_apart():
    # paper_small: no small model generates a needle (gen_match 0 for all), candidate ranking differs
    prefill = {arch: [0.02, 0.07, 0.3] for arch in ARCHS}
    rows = (latency_rows(prefill) + niah_rows({arch: [0.0, 0.0] for arch in ARCHS}, "gen_match")
            + niah_rows({arch: [0.1 * i, 0.2 * i] for i, arch in enumerate(ARCHS)}, "cand_acc"))
    labels = {ax.get_ylabel() for ax in draw(rows, "pareto", ("gen_match", "cand_acc"))["pareto_1K"].axes} - {""}
    assert labels == {tables.NIAH_NAMES["cand_acc"] + " ↑"}, labels
    told = niah_rows({arch: [0.0, 0.1 * i] for i, arch in enumerate(ARCHS)}, "gen_match")  # generation differs
    rows = latency_rows(prefill) + told + niah_rows({arch: [0.5, 0.5] for arch in ARCHS}, "cand_acc")
    labels = {ax.get_ylabel() for ax in draw(rows, "pareto", ("gen_match", "cand_acc"))["pareto_1K"].axes} - {""}
    assert labels == {tables.NIAH_NAMES["gen_match"] + " ↑"}, labels


def frame_texts(fig: Figure) -> list[Text]:
    """The text around the data: titles, axis labels, tick labels, the figure's own labels."""
    texts = [t for t in (fig._suptitle, fig._supxlabel, fig._supylabel) if t is not None]
    for ax in fig.axes:
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label, *drawn_ticklabels(ax)]
    return texts


def drawn_ticklabels(ax) -> list[Text]:
    """Tick labels inside the axes' span (matplotlib keeps labels of ticks beyond it, not drawn)."""
    span = ax.get_window_extent().padded(1)
    return ([t for t in ax.get_xticklabels() if span.x0 <= _centre(t)[0] <= span.x1]
            + [t for t in ax.get_yticklabels() if span.y0 <= _centre(t)[1] <= span.y1])


def _centre(text: Text) -> tuple[float, float]:
    box = text.get_window_extent()
    return (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2


def test_repeat_axis_labels_of_the_two_panels_do_not_run_into_each_other():
    rows = []
    for arch, gain in zip(ARCHS, (0.007, 0.0, 0.001, 0.002, 0.76)):
        for L in (128, 256, 512, 1024):
            where = _base(arch, task="repeat", eval_ctx=L)
            rows += [results.make_row("copy_gain", gain, ci_low=gain - 0.05, ci_high=gain + 0.05, n=64, **where),
                     results.make_row("control_loss", 2.0, n=64, **where),
                     results.make_row("repeat_loss", 2.0 - gain, n=64, **where)]
    figures.figure_names()  # the repeat task registers its figure when loaded
    fig = draw(rows, "repeat")["repeat"]
    assert overlapping(frame_texts(fig)) == []
    assert "span" in " ".join(t.get_text() for t in frame_texts(fig))  # what the x axis means is still said


def two_seeds(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` and its copy as seed 1's, whose scores (but NIAH's shares) are 3% higher."""
    again = table.assign(seed=1)
    higher = (again["status"] == "ok") & (again["task"] != "niah")
    again.loc[higher, ["value", "ci_low", "ci_high"]] *= 1.03
    return results.validate(pd.concat([table, again], ignore_index=True))


@pytest.mark.parametrize("seeds", [1, 2])
def test_no_paper_figure_draws_its_labels_over_each_other(seeds):
    # every paper figure of the many-series synthetic run (two sizes of one architecture, a
    # plugin architecture, failed cells), drawn once; with two seeds, the legend names the
    # interval over seeds (its first wording narrowed the Pareto view's panels into each other)
    table = synthetic_table() if seeds == 1 else two_seeds(synthetic_table())
    prep = tables.prepare(table)
    ctx = plots.Context(prep, plots.series_styles(prep), ["cand_acc"])
    drawn = []
    with matplotlib.rc_context(plots.PAPER_RC):
        for name in figures.figure_names():
            if name in figures.FIGURE_TASKS:
                continue  # a task's figure: the synthetic run has none of those tasks
            for stem, fig in plots.FIGURES[name](ctx):
                fig.draw_without_rendering()
                labels = frame_texts(fig) + (fig.legends[0].get_texts() if fig.legends else [])
                assert overlapping(labels) == [], stem
                drawn.append(stem)
    assert "latency" in drawn and "pareto_4K" in drawn


def test_two_sizes_of_one_architecture_are_told_apart_in_the_pareto_scatter():
    # the same colour and marker, and a scatter has no line style: one size's markers are hollow
    table = synthetic_table()
    tiny_and_small = table[table["arch"].isin(["full_attention", "ttt_e2e"])]
    fig = draw(tiny_and_small.to_dict("records"), "pareto", ("cand_acc",))["pareto_4K"]
    stars = [line for line in fig.axes[0].lines if line.get_marker() == "*"]
    assert len(stars) == 2
    assert len({to_hex(line.get_markerfacecolor()) for line in stars}) == 2
    legend = {t.get_text(): h for t, h in zip(fig.legends[0].get_texts(), fig.legends[0].legend_handles)}
    assert legend["ttt_e2e:tiny"].get_markerfacecolor() != legend["ttt_e2e:small"].get_markerfacecolor()


def test_panel_grids_fill_their_rows_evenly():
    # 4 context lengths drew a row of 3 over a row of 1, beside two empty places
    assert plots.draw.panel_grid(4, 3) == (2, 2)
    assert [plots.draw.panel_grid(n, 3) for n in (1, 2, 3, 5, 6, 7)] == [(1, 1), (2, 1), (3, 1), (3, 2), (3, 2), (3, 3)]
    assert plots.draw.panel_grid(5, 4) == (3, 2) and plots.draw.panel_grid(8, 4) == (4, 2)


def test_pareto_rings_the_points_whose_timing_is_unstable_as_the_latency_figure_does():
    # the README: an unstable timing carries "a ring in figures"; the Pareto views drew none
    prefill = {arch: [0.02, 0.07 * (i + 1), 0.4] for i, arch in enumerate(ARCHS)}
    loss = dict(zip(ARCHS, (2.29, 2.21, 1.61, 1.75, 1.33)))
    stable = [r for r in latency_rows(prefill, flag="") if r["model"] != "mamba2"]
    unstable = [r for r in latency_rows(prefill) if r["model"] == "mamba2"]
    fig = draw(stable + unstable + loss_rows(loss), "pareto")["pareto_1K"]
    prefill_ax, decode_ax = fig.axes[:2]
    for ax, seconds in ((prefill_ax, 0.21), (decode_ax, 0.0021)):  # Mamba 2 at 1K; loss 1.61
        rings = [line for line in ax.lines if line.get_marker() == "o" and line.get_markerfacecolor() == "none"]
        assert [(line.get_xdata()[0], line.get_ydata()[0]) for line in rings] == [pytest.approx((seconds, 1.61))]
        assert to_hex(rings[0].get_markeredgecolor()) == to_hex(plots.series_styles(
            tables.prepare(results.validate(stable + unstable)))["mamba2"].color)
        assert [t.get_text() for t in ax.texts] == [tables.UNSTABLE_MARK]
        # ring and dagger above every point and error bar, which hid the dagger where points crowd
        below = max(c.get_zorder() for c in ax.get_children() if str(c.get_gid()).startswith(plots.SEEDS_GID)
                    or isinstance(c, LineCollection) or (c not in rings and c in ax.lines))
        assert min(rings[0].get_zorder(), ax.texts[0].get_zorder()) > below
