"""The figures of the loss gap to full attention and of the speed-ups draw the intervals the
tables print (from the run's samples: paired by target window over documents, over timing
repeats) as bands, and their legends say what the bands are; without samples they are drawn as
they were, bare; a gap or speed-up the samples do not bound stays bare, and a footnote counts it."""
from __future__ import annotations

import math
import shutil

import matplotlib
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from matplotlib.collections import LineCollection, PolyCollection

from harness import cli
from harness.api import results, stats
from harness.report import claims, plots, tables
from tests.test_plots_layout import frame_texts, overlapping
from tests.test_report_faults import drawn_intervals
from tests.test_tables_intervals import CONTEXTS, PAPER_SMALL, _latency_run, _loss_run

GAP_LEGEND = "95% interval of the gap,\npaired over documents"


def _figures(name: str, run: claims.RunData | None, table: pd.DataFrame) -> list:
    prep = tables.prepare(table)
    ctx = plots.Context(prep, plots.series_styles(prep), [], run)
    with matplotlib.rc_context(plots.PAPER_RC):
        return [fig for _, fig in plots.FIGURES[name](ctx)]


def _tabled(table: pd.DataFrame) -> dict[tuple[str, float], tuple[float, float]]:
    """(colour, context) -> (low, high) of every cell of ``table`` (a summary table of one model
    per architecture) with an interval."""
    out = {}
    lows, highs = table.attrs["ci_low"], table.attrs["ci_high"]
    for key in table.index:
        for L in table.columns:
            low, high = lows.loc[key, L], highs.loc[key, L]
            if pd.notna(low):
                out[plots.arch_style(key[1])[0], float(L)] = (round(float(low), 9), round(float(high), 9))
    return out


@pytest.fixture(scope="module")
def paper_small() -> tuple[claims.RunData, dict[str, pd.DataFrame], str]:
    """The committed run read as ``lcbench table`` reads it, its tables, and what that command prints."""
    run = cli._with_samples(str(PAPER_SMALL))
    out = CliRunner().invoke(cli.main, ["table", str(PAPER_SMALL), "--no-save"])
    assert out.exit_code == 0, out.output
    return run, tables.summary_tables(run.table, samples=run), out.output


def _printed(text: str, title: str) -> dict[str, list[str]]:
    """Model -> its cells as ``lcbench table`` printed them in the table titled ``title``."""
    block = text.split(f"**{title}**")[1].split("\n\n")[1]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()[2:]]
    return {r[0]: r[2:] for r in rows}


def test_paper_small_loss_gap_bands_are_the_intervals_lcbench_table_prints(paper_small):
    """The committed run's loss-gap figure drew bare lines beside a table whose every gap has a
    paired interval that separates the models (TTT-E2E's from Mamba 2's beyond 128 tokens)."""
    run, t, printed = paper_small
    [fig] = _figures("loss_gap", run, run.table)
    drawn = drawn_intervals(fig.axes[0], [128.0, 256.0, 512.0, 1024.0])
    expected = _tabled(t["loss_gap"])
    assert len(expected) == 16 and drawn == expected  # 4 models x 4 lengths; full attention's own gap has none
    cells = _printed(printed, "Loss gap to full attention (nats/token; negative: better)")
    for (color, L), (low, high) in drawn.items():
        arch = next(a for a, (c, _) in plots.ARCH_STYLES.items() if c == color)
        value = t["loss_gap"].loc[(arch, arch), int(L)]
        assert cells[arch][list(t["loss_gap"].columns).index(int(L))] == tables._cell_text(value, low, high, "+.3f")
    assert [t.get_text() for t in fig.legends[0].get_texts()][-1] == GAP_LEGEND


@pytest.mark.parametrize("phase, panel", [("prefill", 2), ("decode", 3)])
def test_paper_small_speedup_bands_are_the_spreads_lcbench_table_prints(paper_small, phase, panel):
    run, t, printed = paper_small
    [fig] = _figures("latency", run, run.table)
    drawn = drawn_intervals(fig.axes[panel], [256.0, 1024.0, 4096.0])
    expected = _tabled(t[f"{phase}_speedup"])
    assert len(expected) == 12 and drawn == expected
    cells = _printed(printed, f"{phase.capitalize()} speed-up over full attention (×)")
    for (color, L), (low, high) in drawn.items():
        arch = next(a for a, (c, _) in plots.ARCH_STYLES.items() if c == color)
        value = t[f"{phase}_speedup"].loc[(arch, arch), int(L)]
        assert cells[arch][list(t[f"{phase}_speedup"].columns).index(int(L))].rstrip("†") == \
            tables._cell_text(value, low, high, ".2f")
    assert [t.get_text() for t in fig.legends[0].get_texts()][-1] == "spread over 3\ntiming repeats"


def _drawn(fig) -> list:
    """Everything a figure draws, as data: lines, bands and bars, texts, the legend's entries."""
    out = []
    for ax in fig.axes:
        out += [("line", tuple(map(tuple, line.get_xydata())), line.get_color()) for line in ax.get_lines()]
        out += [("band" if isinstance(c, PolyCollection) else "bar" if isinstance(c, LineCollection) else "other",
                 tuple(tuple(map(tuple, p.vertices)) for p in c.get_paths())) for c in ax.collections]
        # a label's point (where it is set off to depends on the axes' range, which a band widens)
        out += [("text", t.get_text(), getattr(t, "xy", t.get_position())) for t in ax.texts]
    out += [("legend", t.get_text()) for legend in fig.legends for t in legend.get_texts()]
    return out


def test_paper_small_gap_by_position_bands_are_the_paired_gaps_of_each_bin(paper_small):
    """The gap by token position gets the same paired interval, over each window's loss on the
    bin's targets (:func:`claims.loss_gap` with ``positions``), where it reproduces the line."""
    run, _, _ = paper_small
    [fig] = _figures("loss_gap_by_position", run, run.table)
    panel = next(ax for ax in fig.axes if ax.get_title() == "Context 1K")
    pts = tables.prepare(run.table).points("loss_scaling", "loss", by=("eval_ctx", "pos_start", "pos_end"))
    bins = sorted({(int(r.pos_start), int(r.pos_end)) for r in pts[pts["eval_ctx"] == 1024].itertuples()
                   if pd.notna(r.pos_start)})
    centres = [math.sqrt(lo * hi) for lo, hi in bins]
    expected = {}
    for arch in ("swa", "mamba2", "gated_deltanet", "ttt_e2e"):
        for (lo, hi), x in zip(bins, centres):
            est = claims.loss_gap(run, arch, "full_attention", 1024, (lo, hi))
            line = pts[(pts["series"] == arch) & (pts["eval_ctx"] == 1024) & (pts["pos_start"] == lo)]["value"].item()
            ref = pts[(pts["series"] == "full_attention") & (pts["eval_ctx"] == 1024)
                      & (pts["pos_start"] == lo)]["value"].item()
            assert est.value == pytest.approx(line - ref, rel=1e-9)
            expected[plots.ARCH_STYLES[arch][0], x] = (round(est.ci_low, 9), round(est.ci_high, 9))
    assert len(bins) == 10 and drawn_intervals(panel, centres) == expected
    assert [t.get_text() for t in fig.legends[0].get_texts()][-1] == GAP_LEGEND


@pytest.mark.parametrize("name", ["loss_gap", "latency", "loss_gap_by_position"])
def test_without_samples_the_figures_draw_what_they_drew_and_with_them_only_add_the_bands(paper_small, name):
    run, _, _ = paper_small
    [bare] = _figures(name, None, run.table)
    [empty] = _figures(name, claims.RunData(run.table, []), run.table)
    [banded] = _figures(name, run, run.table)
    assert _drawn(bare) == _drawn(empty)
    # the gap and speed-up axes hold no band or bar without samples (the timings' own bands stay)
    derived = {"loss_gap": bare.axes, "latency": bare.axes[2:], "loss_gap_by_position": bare.axes}[name]
    assert all(not ax.collections for ax in derived)
    added = [d for d in _drawn(banded) if d not in _drawn(bare)]
    assert added and {d[0] for d in added} == {"band", "legend"}
    assert [d for d in _drawn(bare) if d not in _drawn(banded)] == []


def test_lcbench_plot_without_samples_writes_the_figures_byte_for_byte_as_the_bare_code_path(tmp_path):
    """A run folder without samples gets exactly the figures Context without samples draws."""
    bare = tmp_path / "paper_small"
    shutil.copytree(PAPER_SMALL, bare, ignore=shutil.ignore_patterns("samples", "figures"))
    derived = ["loss_gap", "latency", "loss_gap_by_position"]
    out = CliRunner().invoke(cli.main, ["plot", str(bare), "--format", "png", *(f"--only={n}" for n in derived)])
    assert out.exit_code == 0, out.output
    again = tmp_path / "again"
    plots.make_figures(bare, again, formats=("png",), only=derived)
    for stem in derived:
        assert (bare / "figures" / f"{stem}.png").read_bytes() == (again / f"{stem}.png").read_bytes()


def test_a_gap_the_samples_do_not_bound_stays_bare_and_the_footnote_counts_it():
    """One length paired, one not: the paired one is drawn (an error bar, a band of one point has
    no width), the other left bare, and the figure says how many and why."""
    rows, samples = _loss_run()
    table = results.validate(rows)
    moved = [{**s, "start": s["start"] + 1} if s["model"] == "ttt_e2e" and s["eval_ctx"] == 1024 else s
             for s in samples]
    run = claims.RunData(table, moved)
    [fig] = _figures("loss_gap", run, table)
    gap = tables.summary_tables(table, samples=run)["loss_gap"]
    low, high = gap.attrs["ci_low"].loc[("ttt_e2e", "ttt_e2e"), 256], gap.attrs["ci_high"].loc[("ttt_e2e", "ttt_e2e"), 256]
    assert drawn_intervals(fig.axes[0], [float(L) for L in CONTEXTS]) == {
        (plots.ARCH_STYLES["ttt_e2e"][0], 256.0): (round(low, 9), round(high, 9))}
    assert any(isinstance(c, LineCollection) for c in fig.axes[0].collections)  # the bar
    assert fig._supxlabel.get_text() == "1 gap(s) drawn without a band: not scored on the same windows"
    assert fig.legends[0].get_texts()[-1].get_text() == GAP_LEGEND


def test_speedups_over_enough_repeats_are_labelled_a_95_percent_interval():
    rows, samples = _latency_run(8)
    table = results.validate(rows)
    [fig] = _figures("latency", claims.RunData(table, samples), table)
    assert any(isinstance(c, PolyCollection) for c in fig.axes[1].collections)
    assert fig.legends[0].get_texts()[-1].get_text() == "95% interval over\ntiming repeats"


@pytest.mark.parametrize("repeats, legend", [(8, "95% interval over\ntiming repeats and seeds"),
                                             (3, "spread over 3\ntiming repeats a seed")])
def test_speedups_over_seeds_are_drawn_with_the_table_s_interval_and_the_legend_names_the_seeds(repeats, legend):
    """Over two seeds the speed-up panel drew no band and counted every speed-up as one the
    samples do not give; it draws the table's interval over repeats and seeds, and says so."""
    rows, samples = _latency_run(repeats, seeds=(0, 1))
    table = results.validate(rows)
    run = claims.RunData(table, samples)
    [fig] = _figures("latency", run, table)
    speed = tables.summary_tables(table, samples=run)["prefill_speedup"]
    expected = {(plots.ARCH_STYLES["ttt_e2e"][0], float(L)): tuple(
        round(float(speed.attrs[end].loc[("ttt_e2e", "ttt_e2e"), L]), 9) for end in ("ci_low", "ci_high"))
        for L in CONTEXTS}
    assert drawn_intervals(fig.axes[1], [float(L) for L in CONTEXTS]) == expected
    assert all(low < speed.loc[("ttt_e2e", "ttt_e2e"), L] < high
               for (_, L), (low, high) in expected.items())
    assert fig.legends[0].get_texts()[-1].get_text() == legend
    assert fig.legends[0].get_title().get_text() == ""  # no speed-up drawn without a band


def test_over_several_seeds_the_gap_figure_draws_one_band_the_paired_one_and_names_the_seeds():
    """With two training seeds the loss figure draws an interval over seeds; the gap figure draws
    only the table's gap interval, which resamples the seeds with the documents (so it covers what
    the band over seeds covers), and its legend names no second band."""
    _, samples = _loss_run()
    samples = samples + [{**s, "seed": 1, "scored_loss": s["scored_loss"] + 0.01 * (s["model"] == "ttt_e2e")}
                         for s in samples]
    frame = pd.DataFrame(samples)
    rows = [results.make_row("loss", float(g["scored_loss"].mean()), ci_low=float(g["scored_loss"].mean()) - 0.1,
                             ci_high=float(g["scored_loss"].mean()) + 0.1, n=9, run="r", model=m, arch=m,
                             task="loss_scaling", eval_ctx=int(L), seed=int(s))
            for (m, L, s), g in frame.groupby(["model", "eval_ctx", "seed"])]
    table = results.validate(rows)
    run = claims.RunData(table, samples)
    [fig] = _figures("loss_gap", run, table)
    gap = tables.summary_tables(table, samples=run)["loss_gap"]
    assert "documents and training seeds resampled" in tables.render_markdown(gap)
    expected = {(plots.ARCH_STYLES["ttt_e2e"][0], float(L)): (round(gap.attrs["ci_low"].loc[("ttt_e2e", "ttt_e2e"), L], 9),
                                                            round(gap.attrs["ci_high"].loc[("ttt_e2e", "ttt_e2e"), L], 9))
                for L in CONTEXTS}
    assert drawn_intervals(fig.axes[0], [float(L) for L in CONTEXTS]) == expected
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["Full attention", "TTT-E2E", GAP_LEGEND + "\nand seeds"]
    assert not any(str(a.get_gid()).startswith(plots.SEEDS_GID) for a in fig.findobj())
    assert all(math.isfinite(v) for pair in expected.values() for v in pair)


def test_a_speedup_the_samples_do_not_give_stays_bare_and_the_legend_says_so_clear_of_other_text():
    """A footnote below the axes (``supxlabel``) was laid over the latency figure's legend there:
    the note goes into the legend, above its entries."""
    rows, samples = _latency_run(3)
    table = results.validate(rows)
    run = claims.RunData(table, [s for s in samples if not (s["model"] == "ttt_e2e" and s["eval_ctx"] == 1024)])
    [fig] = _figures("latency", run, table)
    speed = tables.summary_tables(table, samples=run)["prefill_speedup"]
    low, high = (speed.attrs[end].loc[("ttt_e2e", "ttt_e2e"), 256] for end in ("ci_low", "ci_high"))
    assert drawn_intervals(fig.axes[1], [float(L) for L in CONTEXTS]) == {
        (plots.ARCH_STYLES["ttt_e2e"][0], 256.0): (round(low, 9), round(high, 9))}
    title = fig.legends[0].get_title().get_text()
    assert title.replace("\n", " ") == ("Prefill: 1 speed-up(s) drawn without a band: the samples do not give its "
                                        "value (no repeats, a mean over runs)")
    fig.draw_without_rendering()
    texts = frame_texts(fig) + [t for ax in fig.axes for t in ax.texts] + fig.legends[0].get_texts()
    assert overlapping([fig.legends[0].get_title(), *texts]) == []


def test_a_gap_by_position_the_samples_do_not_bound_stays_bare_and_the_legend_counts_it(paper_small):
    """One window of TTT-E2E's at 1K lacks its first bin: that bin's gap is drawn without a band,
    and the figure says so above its legend (the gap figure's footnote, one line per figure)."""
    run, _, _ = paper_small
    samples, cut = [], False
    for s in run.samples:
        if not cut and s.get("bins") and s["model"] == "ttt_e2e" and s["eval_ctx"] == 1024:
            s, cut = {**s, "bins": s["bins"][1:], "bin_loss": s["bin_loss"][1:]}, True
        samples.append(s)
    assert cut
    [fig] = _figures("loss_gap_by_position", claims.RunData(run.table, samples), run.table)
    title = fig.legends[0].get_title().get_text().replace("\n", " ")
    assert title == "1 gap(s) drawn without a band: not scored on the same windows"


def test_each_kind_of_band_is_named_once_in_the_legend(paper_small):
    """Four models' gap bands are one kind of band: one legend entry (seventh mutation audit)."""
    run, _, _ = paper_small
    [fig] = _figures("loss_gap", run, run.table)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend.count(GAP_LEGEND) == 1, legend


def test_the_speedup_bands_of_each_batch_size_are_that_batch_sizes_intervals():
    """Timed at batch sizes 1 and 2 (TTT-E2E 1.5x slower at 2), each batch's figure draws the
    intervals of its own timings (seventh mutation audit)."""
    rows, samples = _latency_run(8)
    rng = np.random.default_rng(5)
    for s in list(samples):
        reps = [x * (1.5 if s["model"] == "ttt_e2e" else 1.0) * (1 + rng.normal(0, 0.02)) for x in s["seconds"]]
        est = stats.bootstrap_median(reps)
        samples.append({**s, "batch_size": 2, "seconds": reps})
        rows.append(results.make_row("prefill_s", est.value, ci_low=est.ci_low, ci_high=est.ci_high, n=len(reps),
                                     run="r", model=s["model"], arch=s["model"], task="latency",
                                     eval_ctx=s["eval_ctx"], batch_size=2, seed=0))
    table = results.validate(rows)
    run = claims.RunData(table, samples)
    figs = _figures("latency", run, table)
    assert len(figs) == 2
    color = plots.arch_style("ttt_e2e")[0]
    for batch, fig in zip((1, 2), figs):
        expected = {}
        for L in CONTEXTS:
            est = claims.speedup(run.timings("full_attention", "prefill", batch)[L],
                                 run.timings("ttt_e2e", "prefill", batch)[L], L)
            expected[color, float(L)] = (round(est.ci_low, 9), round(est.ci_high, 9))
        assert drawn_intervals(fig.axes[1], [float(L) for L in CONTEXTS]) == expected, batch
