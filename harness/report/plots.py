"""Paper figures from a result table, as PNG and PDF.

Each figure follows the long-context papers (TTT-E2E, arXiv 2512.23675, and the works it
compares with), one fixed colour and marker per architecture throughout:

- ``loss_vs_context``: loss against evaluation context length;
- ``loss_gap``: loss minus full attention's, against context length;
- ``loss_by_position``: loss against token position, one panel per context length;
- ``loss_gap_by_position``: the same, minus full attention's loss at each position bin;
- ``niah_heatmap_<metric>_<haystack>``: NIAH accuracy by needle depth x context length, one
  panel per model (columns) and variant (rows);
- ``niah_vs_context_<metric>_<haystack>``: NIAH accuracy pooled over depths against context;
- ``latency``: prefill time and decode time per token against context (log-log), and below
  them the speed-up over full attention, annotated at the longest context;
- ``memory``: peak memory (prefill, decode) and state size against context (log-log);
- ``pareto_<ctx>``: quality (loss, NIAH accuracy) against cost (prefill time, decode time, peak
  memory) at one context length, with the Pareto front.

Lines join ``ok`` points, with bands from ``ci_low``/``ci_high`` over neighbours that have one (an
error bar at a point alone, and in the Pareto view); a point over several training seeds is their
mean, its band their interval over seeds (:func:`harness.api.stats.across_seeds`), which the legend
names (:func:`seeds_legend`).
The loss gap to full attention and the speed-ups over it get, where the run's samples are given
(:func:`make_figures`), the intervals the tables print (:func:`harness.report.tables.gap_intervals`,
:func:`~harness.report.tables.speedup_intervals`: paired by target window over documents; over
timing repeats, and seeds) as their bands (the gap by token position: each bin's gap paired alike), the legend naming them (:func:`derived_legend`) and a footnote
counting the points the samples do not bound; without samples they are drawn bare, as before.
A gap over several seeds gets that one band, which resamples the seeds with the documents, and
no band over seeds beside it;
a failed cell (``oom``, ``error``, ``nan``) is drawn as a cross labelled with its status where
the line would have gone on. A figure whose data the table lacks is skipped with a logged
reason. Figures are built on :class:`matplotlib.figure.Figure` directly: no pyplot, no display,
no global state (PNG is drawn by Agg). Each is registered by name (:mod:`harness.report.figures`),
as tasks register theirs; tasks draw in the same style with :data:`PAPER_RC`, :func:`arch_style`,
:func:`draw_series` and :func:`save_figure`.
"""
from __future__ import annotations

import logging
import math
import os
import textwrap
import zlib
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.text import Annotation
from matplotlib.ticker import FixedLocator, FuncFormatter, MultipleLocator, NullLocator

from harness.api import results, stats
from harness.api.errors import check_choice
from harness.api.staging import prepare_output
from harness.report.claims import RunData, with_samples
from harness.report.figures import FIGURE_TASKS, FIGURES, SkipFigure, figure_names, register_figure
from harness.report.tables import (
    FAILURE_LABELS, LATENCY_TASK, LOSS, MEMORY, NIAH_NAMES, NIAH_TASK, REFERENCE_ARCH, TIMES, UNSTABLE_MARK,
    DerivedIntervals, Prepared, context_label, gap_intervals, niah_metric_names, peak_memory_name, prepare,
    speedup_intervals,
)
from harness.report.written import replace_written

log = logging.getLogger(__name__)

FIGURE_FORMATS = ("png", "pdf", "svg")
FIGURES_DIR = "figures"
# Fixed per architecture; others take a colour and marker from these cycles, by a hash of the name.
ARCH_STYLES = {
    "full_attention": ("#222222", "o"),
    "swa": ("#1f77b4", "s"),
    "mamba2": ("#2ca02c", "^"),
    "gated_deltanet": ("#9467bd", "D"),
    "ttt_e2e": ("#d62728", "*"),
}
EXTRA_COLORS = ("#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
EXTRA_MARKERS = ("v", "P", "h", "<", ">", "p", "8")  # not FAIL_MARKER's X: a failed cell's mark
LINESTYLES = ("-", "--", ":", "-.")  # several series of one architecture (sizes, backends)
PAPER_RC = {
    "font.size": 9, "axes.titlesize": 9.5, "axes.labelsize": 9, "legend.fontsize": 8.5, "xtick.labelsize": 8,
    "ytick.labelsize": 8, "figure.titlesize": 11, "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.6,
    "axes.spines.top": False, "axes.spines.right": False, "lines.linewidth": 1.6, "lines.markersize": 5,
    "savefig.dpi": 200, "pdf.fonttype": 42, "ps.fonttype": 42,  # TrueType in PDFs: editable text
}
FAIL_MARKER = "X"
SEEDS_GID = "interval over seeds: "  # + the seeds: what seeds_legend finds
DERIVED_GID = "derived interval: "  # + what a gap's or speed-up's band is (DerivedIntervals.short): what _legend names
ACCURACY_LIMITS = (-0.04, 1.06)  # the whole 0-1 range, markers at 0 and 1 clear of the frame
COST_NAMES = {"prefill_s": "Prefill time", "decode_s": "Decode time per token",
              "prefill_peak_bytes": "Peak memory (prefill)"}
MEMORY_NAMES = {"prefill_peak_bytes": "Peak memory while prefilling", "decode_peak_bytes": "Peak memory while decoding",
                "state_bytes": "State size after the prefix"}


@dataclass(frozen=True)
class Style:
    color: str
    marker: str
    linestyle: str
    label: str
    face: str  # the marker's fill: hollow for every other series of one architecture

    def line(self) -> dict:
        return dict(color=self.color, marker=self.marker, linestyle=self.linestyle, label=self.label,
                    markerfacecolor=self.face)


def arch_style(arch: str, taken: Collection[tuple[str, str]] = ()) -> tuple[str, str]:
    """(colour, marker) of an architecture: fixed for the built-in ones, stable by name otherwise,
    and the next free one where that is ``taken`` (two plugins whose names hash alike)."""
    if arch in ARCH_STYLES:
        return ARCH_STYLES[arch]
    styles = [(c, m) for m in EXTRA_MARKERS for c in EXTRA_COLORS]
    h = zlib.crc32(arch.encode())
    free = [styles[(h + i) % len(styles)] for i in range(len(styles))]
    return next((s for s in free if s not in taken), free[0])


def series_styles(prep: Prepared) -> dict[str, Style]:
    """Each series' style: its architecture's colour and marker; a line style per series of one
    architecture, in paper order (smallest first), and every other one's markers hollow (a
    scatter, the Pareto view, has no line to tell them apart)."""
    styles = {}
    taken: set[tuple[str, str]] = set()
    for arch, group in prep.series.groupby("arch", sort=False):
        color, marker = arch_style(arch, taken)
        taken.add((color, marker))
        for i, row in enumerate(group.itertuples(index=False)):
            styles[row.series] = Style(color, marker, LINESTYLES[i % len(LINESTYLES)], row.label,
                                       color if i % 2 == 0 else "white")
    return styles


@dataclass
class Context:
    """What every figure builder reads: the prepared table, the styles, the NIAH metrics to show,
    and the run's samples where it kept them (the loss gaps' and speed-ups' intervals, as the
    tables print them)."""

    prep: Prepared
    styles: dict[str, Style]
    niah_metrics: list[str]
    samples: RunData | None = None

    def setting(self, batch: object = None) -> str:
        """'cuda, bfloat16, batch 1': what the latency measurements ran on, for a title."""
        rows = self.prep.rows[self.prep.rows["task"] == LATENCY_TASK]
        parts = [", ".join(sorted(rows[c].dropna().unique())) for c in ("device", "dtype")]
        if batch is not None and pd.notna(batch):
            parts.append(f"batch {batch}")
        return ", ".join(p for p in parts if p)

    def peak_memory(self) -> str:
        """What a peak-memory row measured: on a GPU the allocator's peak, weights included; on a
        CPU how far the resident set rose above its size before the work (the latency task)."""
        return peak_memory_name(set(self.prep.rows.loc[self.prep.rows["task"] == LATENCY_TASK, "device"].dropna()),
                                sep="\n")


# ---------------------------------------------------------------------------------------------
# Axes helpers


def _context_axis(ax: Axes, values: Sequence[float], label: str = "Context length (tokens)") -> None:
    """Log2 x axis with a tick at every context length (thinned past 10, counting from the
    longest, which keeps its label), labelled 1K, 4K, 128K."""
    ticks = sorted(set(int(v) for v in values if pd.notna(v)))  # a cell that failed before any context has none
    if len(ticks) > 10:
        ticks = ticks[::-1][:: math.ceil(len(ticks) / 10)][::-1]
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: context_label(v)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(label)


def _seconds(v: float, _=None) -> str:
    for scale, unit in ((1, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if v >= scale * 0.999:
            return f"{v / scale:.3g} {unit}"
    return f"{v * 1e9:.3g} ns"


def _bytes(v: float, _=None) -> str:
    for power, unit in ((40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if v >= 2**power:
            return f"{v / 2**power:.3g} {unit}"
    return f"{v:.3g} B"


def _times(v: float, _=None) -> str:
    return f"{v:.3g}×"


UNITS = {"seconds": _seconds, "bytes": _bytes, "ratio": _times, "tokens": lambda v, _=None: context_label(v)}


def _log_ticks(lo: float, hi: float, unit: str, most: int = 7) -> list[float]:
    """Round ticks in [lo, hi] on a log axis: powers of 2 for bytes and tokens, 1-2-5 otherwise."""
    if unit in ("bytes", "tokens"):
        powers = range(math.ceil(math.log2(lo)), math.floor(math.log2(hi)) + 1)
        return [2.0**k for k in powers][:: max(1, math.ceil(len(powers) / most))]
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    # (1, 2, 3, 5) before the finest: 70, 100, 150, 200, 300 ms run together in a narrow panel
    for mantissas in ((1,), (1, 2, 5), (1, 2, 3, 5), (1, 1.5, 2, 3, 5, 7)):
        ticks = [m * 10.0**e for e in decades for m in mantissas if lo <= m * 10.0**e <= hi]
        if len(ticks) >= 3 or mantissas[-1] == 7:
            return ticks[:: max(1, math.ceil(len(ticks) / most))]
    return ticks


def _log_axis(ax: Axes, which: str, unit: str) -> bool:
    """Log scale on ``which`` axis ('x' or 'y') with round ticks labelled in ``unit``; call it
    after plotting (the ticks follow the data's limits). Return whether the axis is logarithmic:
    data at or below zero (a CPU's memory rises by whole pages, often by none) keeps it linear,
    from zero, where a log axis would leave those points off without a trace."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    data = ax.dataLim.intervalx if which == "x" else ax.dataLim.intervaly
    drawn = np.isfinite(data).all()  # nothing drawn (only failure marks, an empty panel): (inf, -inf)
    if not drawn and axis.get_scale() == "log":
        data = axis.get_view_interval()  # the limits the caller set (token positions 1 to L)
    elif not min(data) > 0:
        _linear_axis(ax, which, unit, max(data) if drawn else 0.0)
        return False
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    ax.autoscale_view()
    lo, hi = sorted(axis.get_view_interval())
    if hi / lo < 4:  # one point or a narrow range: widen it so that round ticks fall inside
        centre = math.sqrt(lo * hi)
        lo, hi = centre / 2, centre * 2
        (ax.set_xlim if which == "x" else ax.set_ylim)(lo, hi)
    axis.set_major_locator(FixedLocator(_log_ticks(lo, hi, unit)))
    axis.set_major_formatter(FuncFormatter(UNITS[unit]))
    axis.set_minor_locator(NullLocator())
    return True


def _linear_axis(ax: Axes, which: str, unit: str, top: float) -> None:
    """A linear axis labelled in ``unit`` whose data reach ``top``: ticks at multiples of a power
    of two for bytes; nothing above zero (every value 0) is one tick at 0."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_formatter(FuncFormatter(UNITS[unit]))
    if not top > 0:
        (ax.set_xlim if which == "x" else ax.set_ylim)(-1, 1)
        axis.set_major_locator(FixedLocator([0]))
    elif unit == "bytes":
        axis.set_major_locator(MultipleLocator(2.0 ** math.floor(math.log2(top / 2))))


def _scale_label(label: str, log: bool) -> str:
    return f"{label} (log scale)" if log else label


def draw_series(ax: Axes, pts: pd.DataFrame, x: str, ctx: Context, band: bool = True,
                band_gid: str | None = None) -> None:
    """One line per series through its ok points (``pts``: :meth:`Prepared.points`, failures
    included), its intervals (:func:`_band`), rings at flagged points, labelled crosses at
    failures: how every figure draws a series, a task's too. ``band_gid`` says what the bands
    are where that is not the points' own intervals (by default: over seeds where they are)."""
    for series, g in pts.groupby("series", sort=False):
        style = ctx.styles[series]
        ok = g[(g["status"] == "ok") & g["value"].notna()].sort_values(x)
        if ok.empty:
            continue
        ax.plot(ok[x].astype(float), ok["value"], **style.line())
        if band:
            _band(ax, ok, x, style.color, band_gid or seeds_gid(ok))
        _unstable(ax, ok, x, style.color)
    _failures(ax, pts, x, ctx)


def _band(ax: Axes, ok: pd.DataFrame, x: str, color: str, gid: str | None = None) -> None:
    """The intervals of a series' points (sorted by ``x``): a band over each run of neighbours
    that have one, broken at a point without (a mean of a seed's rows, NIAH variants pooled: the
    band would give it its neighbours'), and an error bar at a point alone (a band of one point
    has no width). ``gid`` (:func:`seeds_gid`) marks intervals over seeds for the legend."""
    xs = ok[x].astype(float).to_numpy()
    low, high = ok["ci_low"].astype(float).to_numpy(), ok["ci_high"].astype(float).to_numpy()
    has = ~(np.isnan(low) | np.isnan(high))
    if not has.any():
        return
    ax.fill_between(xs, low, high, where=has, color=color, alpha=0.15, linewidth=0, gid=gid)
    alone = has & ~np.r_[False, has[:-1]] & ~np.r_[has[1:], False]
    if alone.any():
        values = ok["value"].astype(float).to_numpy()[alone]
        ax.errorbar(xs[alone], values, yerr=[values - low[alone], high[alone] - values], fmt="none",
                    ecolor=color, alpha=0.5, elinewidth=1.2, capsize=3, gid=gid)


def seeds_gid(points: pd.DataFrame) -> str | None:
    """The ``gid`` of artists that draw the intervals of ``points`` (:meth:`Prepared.points`) where
    some are over several training seeds, naming the most seeds (None where none is): the legend
    (:func:`seeds_legend`) finds them by it."""
    seeds = points.loc[points["ci_low"].notna() & (points["seeds"] > 1), "seeds"]
    return f"{SEEDS_GID}{int(seeds.max())}" if len(seeds) else None


def seeds_legend(fig: Figure) -> list[Patch]:
    """A legend entry saying what the bands and error bars of ``fig`` over several training seeds
    are (none where it draws none): one seed's interval covers its own model only, and a band
    over seeds is another statistic (:func:`stats.across_seeds`)."""
    counts = sorted(int(str(a.get_gid()).removeprefix(SEEDS_GID)) for a in fig.findobj()
                    if str(a.get_gid()).startswith(SEEDS_GID))
    if not counts:
        return []
    most = f"{'up to ' if counts[0] < counts[-1] else ''}{counts[-1]}"
    return [Patch(facecolor="0.5", alpha=0.3, linewidth=0,
                  label=f"mean of {most} seeds;\n{stats.DEFAULT_LEVEL:.0%} interval\nover seeds")]


def derived_gid(intervals: DerivedIntervals | None) -> str | None:
    """The ``gid`` of the bands of gaps or speed-ups that got ``intervals`` from the run's samples."""
    return None if intervals is None else DERIVED_GID + intervals.short


def derived_legend(fig: Figure) -> list[Patch]:
    """A legend entry for each kind of gap or speed-up band ``fig`` draws (:func:`derived_gid`)."""
    found = dict.fromkeys(str(a.get_gid()).removeprefix(DERIVED_GID) for a in fig.findobj()
                          if str(a.get_gid()).startswith(DERIVED_GID))
    return [Patch(facecolor="0.5", alpha=0.3, linewidth=0, label=label) for label in found]


def _unstable(ax: Axes, ok: pd.DataFrame, x: str, color: str) -> None:
    """A ring and a dagger at each flagged point (an unstable timing): seen, not trusted."""
    flagged = ok[ok["flag"].fillna("") != ""] if "flag" in ok else ok.iloc[:0]
    for row in flagged.itertuples(index=False):
        xv, y = float(getattr(row, x)), float(row.value)
        # above the points and error bars (zorder 3), which hid the dagger where points crowd
        ax.plot(xv, y, marker="o", markersize=10, markerfacecolor="none", markeredgecolor=color, linestyle="none",
                zorder=4)
        ax.annotate(UNSTABLE_MARK, (xv, y), xytext=(6, 4), textcoords="offset points", fontsize=8, color=color,
                    zorder=4)


def _failures(ax: Axes, pts: pd.DataFrame, x: str, ctx: Context) -> None:
    """A cross labelled OOM / error / NaN at each failed cell, at the height of the series'
    nearest ok point (so it reads as where the line stopped), or at the axes' bottom without one."""
    for row in pts[(pts["status"] != "ok") & pts[x].notna()].itertuples(index=False):
        style = ctx.styles[row.series]
        xv = float(getattr(row, x))
        ok = pts[(pts["series"] == row.series) & (pts["status"] == "ok") & pts["value"].notna()]
        if ok.empty:  # at the bottom of the axes (x in data, y in axes units)
            y, where = 0.03, dict(transform=ax.get_xaxis_transform(), clip_on=False)
        else:
            nearest = ok.iloc[int(np.argmin(np.abs(np.log(ok[x].astype(float).to_numpy() / xv))))]
            y, where = float(nearest["value"]), {}
            ax.plot([float(nearest[x]), xv], [y, y], color=style.color, linestyle=":", linewidth=1)
        ax.plot(xv, y, marker=FAIL_MARKER, color=style.color, markersize=7, linestyle="none", **where)
        ax.annotate(FAILURE_LABELS.get(row.status, row.status), (xv, y), xycoords=where.get("transform", "data"),
                    xytext=(0, 5), textcoords="offset points", ha="center", va="bottom", fontsize=7, color=style.color)


def _legend(fig: Figure, series: Iterable[str], ctx: Context, failures: bool = False, side: bool = False,
            note: str = "") -> None:
    """One legend for the figure, outside the axes (so it never covers data): below them in
    balanced rows, or at the right (``side``); a ``note`` below them goes above its entries (a
    figure's own footnote, ``supxlabel``, would be laid over a legend below the axes)."""
    wanted = set(series)
    handles = [Line2D([], [], **ctx.styles[s].line()) for s in ctx.prep.order if s in wanted]
    if failures:
        handles.append(Line2D([], [], color="0.3", marker=FAIL_MARKER, linestyle="none", label="failed (OOM, error)"))
    handles += seeds_legend(fig) + derived_legend(fig)
    if not handles:
        return
    if side:
        fig.legend(handles=handles, loc="outside right center", frameon=False)
        return
    per_row = max(1, int(fig.get_figwidth() / 1.9))
    rows = math.ceil(len(handles) / per_row)
    legend = fig.legend(handles=handles, loc="outside lower center", ncols=math.ceil(len(handles) / rows),
                        frameon=False)
    if note:  # wrapped to the figure's width: about 17 characters an inch at 7.5 points
        width = int(fig.get_figwidth() * 17)
        legend.set_title("\n".join(textwrap.fill(line, width) for line in note.splitlines()),
                         prop={"size": 7.5})
        legend.get_title().set_color("0.3")


def _grid(n: int, most: int) -> tuple[int, int]:
    """(columns, rows) for ``n`` panels, at most ``most`` a row, rows filled evenly: 4 panels
    make 2 x 2, not a row of 3 over a row of 1 beside two empty places."""
    rows = math.ceil(n / most)
    return math.ceil(n / rows), rows


def _figure(ncols: int = 1, nrows: int = 1, panel: tuple[float, float] = (4.2, 3.0),
            **kwargs) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(panel[0] * ncols + 0.4, panel[1] * nrows + 0.9), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kwargs)


def _hide_unused(axes: np.ndarray, used: int) -> None:
    for ax in axes.flat[used:]:
        ax.set_visible(False)


def _any_failed(*frames: pd.DataFrame) -> bool:
    return any((f["status"] != "ok").any() for f in frames)


def _need(prep: Prepared, task: str, metric: str, what: str) -> None:
    if not prep.has(task, metric):
        raise SkipFigure(f"no {metric!r} rows of task {task!r} in the table ({what})")
    if not prep.has(task, metric, ok=True):
        raise SkipFigure(f"every {metric!r} cell of task {task!r} failed (see the tables for which and why)")


def _order(prep: Prepared, column: str, values: Iterable) -> list:
    """``values`` in the order the table first lists them (the task's own order, e.g. NIAH variants)."""
    seen = list(dict.fromkeys(prep.rows[column].dropna()))
    wanted = set(values)
    return [v for v in seen if v in wanted]


# ---------------------------------------------------------------------------------------------
# Figures: each yields (file stem, figure), or raises SkipFigure


def _single_line_figure(ctx: Context, pts: pd.DataFrame, title: str, ylabel: str, band: bool = True,
                        zero: float | None = None, task: str = LOSS[0],
                        intervals: DerivedIntervals | None = None) -> Figure:
    fig, axes = _figure(panel=(4.8, 3.4))
    ax = axes[0, 0]
    if zero is not None:
        ax.axhline(zero, color=ARCH_STYLES[REFERENCE_ARCH][0], linewidth=0.8, zorder=1)
    draw_series(ax, pts, "eval_ctx", ctx, band=band, band_gid=derived_gid(intervals))
    _context_axis(ax, pts["eval_ctx"])
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=PAPER_RC["figure.titlesize"])
    _legend(fig, pts["series"], ctx, _any_failed(pts), side=True)
    # a model with nothing drawn vanished without a word: a failed cell of ``task`` (its training
    # diverged: one cell_failed row, none of the metric) or rows without a context
    drawn = set(pts.loc[pts["eval_ctx"].notna() & ((pts["status"] != "ok") | pts["value"].notna()), "series"])
    rows = ctx.prep.rows
    cells = rows[(rows["task"] == task) & (rows["metric"] == results.CELL_FAILED) & (rows["status"] != "ok")]
    missing = {s: {"": str(g["status"].iloc[0]) if (g["status"] != "ok").any() else "not measured"}
               for s, g in pd.concat([pts, cells]).groupby("series", sort=False) if s not in drawn}
    notes = [_not_shown(ctx, missing, rows=False)] if missing else []
    if intervals is not None and intervals.bare:
        notes.append(intervals.bare_note)
    if notes:
        fig.supxlabel("\n".join(notes), fontsize=7.5, color="0.3", wrap=True)
    return fig


@register_figure("loss_vs_context")
def fig_loss_vs_context(ctx: Context) -> Iterator[tuple[str, Figure]]:
    _need(ctx.prep, *LOSS, "run the loss_scaling task")
    pts = ctx.prep.points(*LOSS, pos_start=None)
    yield "loss_vs_context", _single_line_figure(ctx, pts, "Loss vs. context length", "Loss (nats/token)")


def _gap(ctx: Context, pts: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    archs = set(ctx.prep.series["arch"])
    if REFERENCE_ARCH not in archs:
        raise SkipFigure(f"no {REFERENCE_ARCH} model in the table to take the gap to")
    if archs == {REFERENCE_ARCH}:
        raise SkipFigure(f"only {REFERENCE_ARCH} models in the table: no gap to show")
    gap = ctx.prep.relative(pts, by, "gap")
    if not ((gap["arch"] != REFERENCE_ARCH) & gap["value"].notna()).any():
        raise SkipFigure(f"no model has a loss where its {REFERENCE_ARCH} reference has one")
    return gap


@register_figure("loss_gap")
def fig_loss_gap(ctx: Context) -> Iterator[tuple[str, Figure]]:
    _need(ctx.prep, *LOSS, "run the loss_scaling task")
    gap = _gap(ctx, ctx.prep.points(*LOSS, pos_start=None), ["eval_ctx"])
    # the table's interval of each gap (none without the run's samples: drawn bare, as the table prints it)
    intervals = gap_intervals(ctx.prep, gap, ctx.samples) if ctx.samples else None
    yield "loss_gap", _single_line_figure(ctx, gap, "Loss gap to full attention (below 0: better)",
                                          "Loss − full-attention loss (nats/token)", band=intervals is not None,
                                          zero=0.0, intervals=intervals)


MAX_POSITION_PANELS = 6


def _position_points(ctx: Context) -> tuple[pd.DataFrame, list[int]]:
    """Per-bin loss points (x = the bin's geometric centre) and the context lengths to show."""
    _need(ctx.prep, *LOSS, "run the loss_scaling task")
    pts = ctx.prep.points(*LOSS, by=("eval_ctx", "pos_start", "pos_end"))
    pts = pts[pts["pos_start"].notna()]
    if pts.empty:
        raise SkipFigure("the loss rows have no position bins (pos_start/pos_end)")
    pts = pts.assign(position=np.sqrt(pts["pos_start"].astype(float) * pts["pos_end"].astype(float)))
    contexts = sorted(int(c) for c in pts["eval_ctx"].unique())
    if len(contexts) > MAX_POSITION_PANELS:
        log.info("loss by position: showing the %d longest of %d context lengths", MAX_POSITION_PANELS, len(contexts))
        contexts = contexts[-MAX_POSITION_PANELS:]
    return pts, contexts


def _position_figure(ctx: Context, pts: pd.DataFrame, contexts: list[int], title: str, ylabel: str,
                     band: bool = True, zero: float | None = None,
                     intervals: DerivedIntervals | None = None) -> Figure:
    """One panel per context length: ``pts`` against token position, failures of the whole
    length listed in the panel; ``intervals``: what the bands of gaps are (:func:`_single_line_figure`)."""
    overall = ctx.prep.points(*LOSS, pos_start=None)
    fig, axes = _figure(*_grid(len(contexts), 3), panel=(3.3, 2.6), sharey=True)
    _hide_unused(axes, len(contexts))
    for ax, L in zip(axes.flat, contexts):
        if zero is not None:
            ax.axhline(zero, color=ARCH_STYLES[REFERENCE_ARCH][0], linewidth=0.8, zorder=1)
        draw_series(ax, pts[pts["eval_ctx"] == L], "position", ctx, band=band, band_gid=derived_gid(intervals))
        ax.set_xscale("log", base=2)
        ax.set_xlim(1, L)
        _log_axis(ax, "x", "tokens")
        ax.set_xlabel("Token position")
        ax.set_title(f"Context {context_label(L)}")
        failed = overall[(overall["eval_ctx"] == L) & (overall["status"] != "ok")]
        if len(failed):
            text = "\n".join(f"{ctx.styles[r.series].label}: {FAILURE_LABELS.get(r.status, r.status)}"
                             for r in failed.itertuples())
            ax.text(0.03, 0.04, text, transform=ax.transAxes, fontsize=7, va="bottom", color="0.25")
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    fig.suptitle(title, wrap=True)
    _legend(fig, pts["series"], ctx, note=intervals.bare_note if intervals is not None else "")
    return fig


@register_figure("loss_by_position")
def fig_loss_by_position(ctx: Context) -> Iterator[tuple[str, Figure]]:
    pts, contexts = _position_points(ctx)
    yield "loss_by_position", _position_figure(ctx, pts, contexts, "Loss by token position", "Loss (nats/token)")


@register_figure("loss_gap_by_position")
def fig_loss_gap_by_position(ctx: Context) -> Iterator[tuple[str, Figure]]:
    pts, contexts = _position_points(ctx)
    by = ["eval_ctx", "pos_start", "pos_end"]
    gap = _gap(ctx, pts, by)
    intervals = gap_intervals(ctx.prep, gap, ctx.samples, by) if ctx.samples else None
    yield "loss_gap_by_position", _position_figure(
        ctx, gap, contexts, "Loss gap to full attention by token position (below 0: better)",
        "Loss − full attn. (nats/token)", band=intervals is not None, zero=0.0, intervals=intervals)


def _niah_needed(ctx: Context) -> None:
    if not ctx.niah_metrics:
        raise SkipFigure(f"no measured NIAH accuracy rows ({', '.join(NIAH_NAMES)}) of task {NIAH_TASK!r} in the table")


@register_figure("niah_heatmap")
def fig_niah_heatmaps(ctx: Context) -> Iterator[tuple[str, Figure]]:
    _niah_needed(ctx)
    for metric in ctx.niah_metrics:
        cells = ctx.prep.points(NIAH_TASK, metric, by=("variant", "haystack", "eval_ctx", "depth"))
        for haystack in _order(ctx.prep, "haystack", cells["haystack"]):
            here = cells[cells["haystack"] == haystack]
            if here["depth"].isna().all():
                log.info("NIAH heatmap %s/%s: no per-depth rows", metric, haystack)
                continue
            yield f"niah_heatmap_{metric}_{haystack}", _heatmap_figure(ctx, here, metric, haystack)


def _share_label(v: float) -> str:
    """A share in [0, 1] in three characters: '1', '0', or '.42'."""
    text = f"{v:.2f}"
    return {"1.00": "1", "0.00": "0"}.get(text, text.removeprefix("0"))


def _heatmap_figure(ctx: Context, cells: pd.DataFrame, metric: str, haystack: str) -> Figure:
    """Rows: variants; columns: series; each panel depth (y) x context (x), failed lengths hatched."""
    variants = _order(ctx.prep, "variant", cells["variant"])
    series = [s for s in ctx.prep.order if s in set(cells["series"])]
    contexts = sorted(int(c) for c in cells["eval_ctx"].unique())
    depths = sorted(cells["depth"].dropna().unique())
    fig, axes = _figure(len(series), len(variants), panel=(1.9, 1.8), sharex=True, sharey=True)
    image = None
    for r, variant in enumerate(variants):
        for c, s in enumerate(series):
            ax = axes[r, c]
            mine = cells[(cells["variant"] == variant) & (cells["series"] == s)]
            grid = np.full((len(depths), len(contexts)), np.nan)
            flagged = np.zeros(grid.shape, dtype=bool)  # needles far from their depth: a dagger, as in tables
            for row in mine[mine["depth"].notna() & (mine["status"] == "ok")].itertuples():
                at = depths.index(row.depth), contexts.index(int(row.eval_ctx))
                grid[at] = row.value
                flagged[at] = isinstance(row.flag, str) and bool(row.flag)
            image = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
            if grid.size <= 120:
                for (i, j), v in np.ndenumerate(grid):
                    if np.isfinite(v):
                        ax.text(j, i, _share_label(v) + (UNSTABLE_MARK if flagged[i, j] else ""), ha="center",
                                va="center", fontsize=6.5, color="black" if 0.25 < v < 0.8 else "white")
            for row in mine[mine["status"] != "ok"].drop_duplicates("eval_ctx").itertuples():
                j = contexts.index(int(row.eval_ctx))
                ax.axvspan(j - 0.5, j + 0.5, facecolor="0.93", edgecolor="0.6", hatch="///", linewidth=0)
                ax.text(j, (len(depths) - 1) / 2, FAILURE_LABELS.get(row.status, row.status), rotation=90,
                        ha="center", va="center", fontsize=7, color="0.2",
                        bbox=dict(facecolor="0.93", edgecolor="none", pad=1))
            ax.grid(False)
            ax.tick_params(length=0)
            for spine in ax.spines.values():
                spine.set_visible(False)
            ax.set_xticks(range(len(contexts)), [context_label(L) for L in contexts])
            ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
            if r == 0:
                ax.set_title(ctx.styles[s].label, color=ctx.styles[s].color)
            if c == 0:
                ax.set_ylabel(f"{variant}\nneedle depth" if len(variants) > 1 else "Needle depth")
            if r == len(variants) - 1:
                ax.set_xlabel("Context length")
    fig.colorbar(image, ax=axes, shrink=min(0.9, 0.45 + 0.2 * len(variants)), aspect=25, label="Accuracy")
    fig.suptitle(f"{NIAH_NAMES.get(metric, metric)} by needle depth and context length ({haystack} haystack)",
                 wrap=True)
    return fig


@register_figure("niah_vs_context")
def fig_niah_vs_context(ctx: Context) -> Iterator[tuple[str, Figure]]:
    _niah_needed(ctx)
    for metric in ctx.niah_metrics:
        pts = ctx.prep.points(NIAH_TASK, metric, by=("variant", "haystack", "eval_ctx"), depth=None)
        for haystack in _order(ctx.prep, "haystack", pts["haystack"]):
            here = pts[pts["haystack"] == haystack]
            variants = _order(ctx.prep, "variant", here["variant"])
            fig, axes = _figure(*_grid(len(variants), 4), panel=(3.0, 2.5), sharey=True)
            _hide_unused(axes, len(variants))
            for ax, variant in zip(axes.flat, variants):
                draw_series(ax, here[here["variant"] == variant], "eval_ctx", ctx)
                _context_axis(ax, here["eval_ctx"])
                ax.set_ylim(*ACCURACY_LIMITS)
                ax.set_title(variant)
            for ax in axes[:, 0]:
                ax.set_ylabel("Accuracy")
            fig.suptitle(f"{NIAH_NAMES.get(metric, metric)} vs. context length ({haystack} haystack, all depths)",
                         wrap=True)
            _legend(fig, here["series"], ctx, _any_failed(here))
            yield f"niah_vs_context_{metric}_{haystack}", fig


def _batch_sizes(prep: Prepared, metrics: Sequence[str]) -> list:
    rows = prep.rows[(prep.rows["task"] == LATENCY_TASK) & prep.rows["metric"].isin(metrics)]
    return sorted(rows["batch_size"].unique(), key=lambda b: (pd.isna(b), 0 if pd.isna(b) else b))


def _batch_filter(batch) -> dict:
    return {"batch_size": None if pd.isna(batch) else int(batch)}


def _stem(name: str, batch, several: bool) -> str:
    return f"{name}_bs{batch}" if several and pd.notna(batch) else name


@register_figure("latency")
def fig_latency(ctx: Context) -> Iterator[tuple[str, Figure]]:
    metrics = [m for m in TIMES if ctx.prep.has(LATENCY_TASK, m, ok=True)]
    if not metrics:
        raise SkipFigure(f"no measured {' or '.join(TIMES)} rows of task {LATENCY_TASK!r} (run the latency task)")
    batches = _batch_sizes(ctx.prep, metrics)
    for batch in batches:
        pts = {m: ctx.prep.points(LATENCY_TASK, m, **_batch_filter(batch)) for m in metrics}
        ratios = {m: ctx.prep.relative(p, ["eval_ctx"], "speedup") for m, p in pts.items()}
        intervals = {m: _speedup_intervals(ctx, ratios[m], batch, m) for m in metrics}
        with_ratio = any(((r["arch"] != REFERENCE_ARCH) & r["value"].notna()).any() for r in ratios.values())
        fig, axes = _figure(len(metrics), 2 if with_ratio else 1, panel=(3.8, 2.5 if with_ratio else 3.2),
                            sharex="col", height_ratios=[1.5, 1] if with_ratio else None)
        end_labels: list[Annotation] = []
        for c, m in enumerate(metrics):
            ax = axes[0, c]
            draw_series(ax, pts[m], "eval_ctx", ctx)
            _context_axis(ax, pts[m]["eval_ctx"], label="" if with_ratio else "Context length (tokens)")
            ax.set_ylabel(_scale_label(COST_NAMES[m], _log_axis(ax, "y", "seconds")))
            ax.set_title("Prefill" if m == "prefill_s" else "Decode (per token)")
            if with_ratio:
                end_labels += _speedup_panel(axes[1, c], ratios[m], ctx, intervals[m])
        fig.suptitle(f"Latency vs. context length ({ctx.setting(batch=batch)})", wrap=True)
        bare = [f"{'Prefill' if m == 'prefill_s' else 'Decode'}: {i.bare_note}"
                for m, i in intervals.items() if with_ratio and i is not None and i.bare]
        _legend(fig, pd.concat(pts.values())["series"], ctx, _any_failed(*pts.values()), note="\n".join(bare))
        _spread_labels(fig, end_labels)
        yield _stem("latency", batch, len(batches) > 1), fig


def _speedup_intervals(ctx: Context, ratio: pd.DataFrame, batch: object, metric: str) -> DerivedIntervals | None:
    """Give the speed-ups ``ratio`` (of ``metric`` at ``batch``) the table's intervals over timing
    repeats (in place); None without the run's samples (drawn bare, as the table prints them)."""
    if ctx.samples is None or pd.isna(batch):
        return None
    keyed = ratio.assign(batch_size=batch)  # the tables' cells: by batch size and context
    intervals = speedup_intervals(ctx.prep, keyed, ctx.samples, metric.removesuffix("_s"))
    ratio[["ci_low", "ci_high"]] = keyed[["ci_low", "ci_high"]]
    return intervals


def _speedup_panel(ax: Axes, ratio: pd.DataFrame, ctx: Context,
                   intervals: DerivedIntervals | None = None) -> list[Annotation]:
    """Speed-up over full attention (its time / the model's), with the table's ``intervals`` as
    bands where it has them, the last ratio written out; return those labels (for
    :func:`_spread_labels`)."""
    others = ratio[(ratio["arch"] != REFERENCE_ARCH) & (ratio["status"] == "ok")]
    ax.axhline(1, color=ARCH_STYLES[REFERENCE_ARCH][0], linewidth=0.8)
    draw_series(ax, others, "eval_ctx", ctx, band=intervals is not None, band_gid=derived_gid(intervals))
    labels = []
    for series, g in others[others["value"].notna()].groupby("series", sort=False):
        last = g.sort_values("eval_ctx").iloc[-1]
        # 13 points right: clear of the unstable ring and dagger at the point
        labels.append(ax.annotate(_times(last["value"]), (float(last["eval_ctx"]), last["value"]), xytext=(13, 0),
                                  textcoords="offset points", va="center", fontsize=7,
                                  color=ctx.styles[series].color))
    values = others["value"].dropna()
    if len(values) and max(values.max(), 1) / min(values.min(), 1) > 4:
        _log_axis(ax, "y", "ratio")
    else:
        ax.yaxis.set_major_formatter(FuncFormatter(_times))
    ax.set_ylabel("Speed-up vs. full attn.")
    _context_axis(ax, ratio["eval_ctx"])
    ax.set_xlim(right=ax.get_xlim()[1] * 1.6)  # room for the ratio labels
    return labels


def _spread_labels(fig: Figure, labels: Sequence[Annotation], gap: float = 1.5) -> None:
    """Move each axes' labels apart vertically, in the order of their points, so that none
    overlaps another (``gap`` points between them): labels that would collide are stacked edge to
    edge, the stack centred on the points it labels. Call it when the figure is complete: it lays
    the figure out to know where the points fall."""
    if not labels:
        return
    fig.draw_without_rendering()
    pad = gap * fig.dpi / 72  # display units (pixels)
    by_axes: dict[Axes, list[Annotation]] = {}
    for label in labels:
        by_axes.setdefault(label.axes, []).append(label)

    def bottom(stack: list) -> float:  # where the stack sits closest to its labels' own places
        below = np.cumsum([0.0] + [box.height + pad for box, _ in stack[:-1]])
        return float(np.mean([box.y0 for box, _ in stack] - below))

    def top(stack: list) -> float:
        return bottom(stack) + sum(box.height + pad for box, _ in stack)

    for group in by_axes.values():
        stacks: list[list] = []
        for box, label in sorted(((t.get_window_extent(), t) for t in group), key=lambda bt: bt[0].y0):
            stacks.append([(box, label)])
            while len(stacks) > 1 and top(stacks[-2]) > bottom(stacks[-1]):
                stacks[-2:] = [stacks[-2] + stacks[-1]]
        for stack in stacks:
            y = bottom(stack)
            for box, label in stack:
                label.xyann = (label.xyann[0], label.xyann[1] + (y - box.y0) * 72 / fig.dpi)
                y += box.height + pad


@register_figure("memory")
def fig_memory(ctx: Context) -> Iterator[tuple[str, Figure]]:
    metrics = [m for m in MEMORY if ctx.prep.has(LATENCY_TASK, m, ok=True)]
    if not metrics:
        raise SkipFigure(f"no measured memory rows ({', '.join(MEMORY)}) of task {LATENCY_TASK!r} "
                         "(run the latency task)")
    batches = _batch_sizes(ctx.prep, metrics)
    for batch in batches:
        pts = {m: ctx.prep.points(LATENCY_TASK, m, **_batch_filter(batch)) for m in metrics}
        fig, axes = _figure(len(metrics), panel=(3.4, 3.0))
        for ax, m in zip(axes[0], metrics):
            draw_series(ax, pts[m], "eval_ctx", ctx)
            _context_axis(ax, pts[m]["eval_ctx"])
            log_scale = _log_axis(ax, "y", "bytes")
            ax.set_title(MEMORY_NAMES[m])
            ax.set_ylabel(_scale_label("State size" if m == "state_bytes" else ctx.peak_memory(), log_scale))
        fig.suptitle(f"Memory vs. context length ({ctx.setting(batch=batch)})", wrap=True)
        _legend(fig, pd.concat(pts.values())["series"], ctx, _any_failed(*pts.values()))
        yield _stem("memory", batch, len(batches) > 1), fig


@register_figure("pareto")
def fig_pareto(ctx: Context) -> Iterator[tuple[str, Figure]]:
    prep = ctx.prep
    quality: dict[str, tuple[pd.DataFrame, str, str]] = {}  # name -> (points, axis label, better)
    if prep.has(*LOSS, ok=True):
        quality["loss"] = (prep.points(*LOSS, pos_start=None), "Loss (nats/token)", "lower")
    if ctx.niah_metrics:
        metric = _telling_niah_metric(prep, ctx.niah_metrics)
        quality[metric] = (_niah_quality(prep, metric), NIAH_NAMES[metric], "higher")
    costs = [m for m in COST_NAMES if prep.has(LATENCY_TASK, m, ok=True)]
    if not quality or not costs:
        raise SkipFigure(f"needs a quality task ({LOSS[0]} or {NIAH_TASK}) and the {LATENCY_TASK} task in the table")
    batch = _batch_sizes(prep, costs)[0]
    cost_pts = {m: prep.points(LATENCY_TASK, m, **_batch_filter(batch)) for m in costs}
    contexts = sorted({int(L) for q, _, _ in quality.values() for L in q["eval_ctx"].dropna()}
                      & {int(L) for p in cost_pts.values() for L in p["eval_ctx"].dropna()})
    if not contexts:
        raise SkipFigure(f"the quality tasks and the {LATENCY_TASK} task share no context length")
    rank = {s: i for i, s in enumerate(prep.order)}
    for L in contexts:
        here = {name: v for name, v in quality.items() if (v[0]["eval_ctx"] == L).any()}
        fig, axes = _figure(len(costs), len(here), panel=(3.0, 2.6))
        shown: set[str] = set()
        failed: dict[str, dict[str, str]] = {}  # series -> quality row -> why a panel of it lacks the model
        for r, (name, (q, q_label, better)) in enumerate(here.items()):
            for c, m in enumerate(costs):
                ax = axes[r, c]
                # outer: a model measured on one side only is named below, not left out unsaid
                joined = q[q["eval_ctx"] == L].merge(cost_pts[m][cost_pts[m]["eval_ctx"] == L], on="series",
                                                     how="outer", suffixes=("_q", "_c"))
                joined = joined.sort_values("series", key=lambda s: s.map(rank))  # drawn in paper order
                good = (joined["status_q"] == "ok") & (joined["status_c"] == "ok")
                for row in joined[~good].itertuples(index=False):
                    why = ("not measured" if pd.isna(row.status_q) or pd.isna(row.status_c)
                           else row.status_q if row.status_q != "ok" else row.status_c)
                    failed.setdefault(row.series, {}).setdefault("loss" if name == "loss" else "NIAH", why)
                _pareto_panel(ax, joined[good], better, ctx)
                if name != "loss":  # an accuracy: its whole range, however close the models are
                    ax.set_ylim(*ACCURACY_LIMITS)
                shown |= set(joined.loc[good, "series"])
                log_scale = _log_axis(ax, "x", "bytes" if m.endswith("_bytes") else "seconds")
                if r == len(here) - 1:
                    cost = f"{ctx.peak_memory()} (prefill)" if m == "prefill_peak_bytes" else COST_NAMES[m]
                    ax.set_xlabel(_scale_label(cost, log_scale))
                if c == 0:
                    ax.set_ylabel(f"{q_label} {'↓' if better == 'lower' else '↑'}")
        if not shown:
            log.info("pareto at %s: no model has both a quality and a cost there", context_label(L))
            continue
        if failed:  # laid out below the axes, unlike fig.text
            fig.supxlabel(_not_shown(ctx, failed, len(here) > 1), fontsize=7.5, color="0.3", wrap=True)
        fig.suptitle(f"Quality vs. cost at context {context_label(L)} ({ctx.setting(batch=batch)}); "
                     "dashed: Pareto front", wrap=True)
        _legend(fig, shown, ctx, side=True)
        yield f"pareto_{context_label(L)}", fig


def _not_shown(ctx: Context, failed: dict[str, dict[str, str]], rows: bool) -> str:
    """'Not shown: Mamba 2 (OOM); SWA (NIAH: not measured)': each model a panel lacks, and why;
    with ``rows`` (loss and NIAH) which row lacks it, for it may be drawn in the other."""
    def why(reasons: dict[str, str]) -> str:
        return ", ".join(f"{row}: {FAILURE_LABELS.get(w, w)}" if rows else FAILURE_LABELS.get(w, w)
                         for row, w in reasons.items())

    return "Not shown: " + "; ".join(f"{ctx.styles[s].label} ({why(failed[s])})" for s in ctx.prep.order if s in failed)


def _telling_niah_metric(prep: Prepared, metrics: Sequence[str]) -> str:
    """The first of ``metrics`` (in order of preference) whose ok values differ between models:
    small models generate no needle (gen_match 0 for all), and a row of zeros ranks nothing."""
    for metric in metrics:
        values = prep.rows.loc[(prep.rows["task"] == NIAH_TASK) & (prep.rows["metric"] == metric)
                               & (prep.rows["status"] == "ok"), "value"]
        if values.nunique() > 1:
            return metric
    return metrics[0]


def _niah_quality(prep: Prepared, metric: str) -> pd.DataFrame:
    """NIAH accuracy per series and context, pooled over depths, then averaged over variants and
    haystacks. A context where one of them failed is that failure: the mean of the others would
    score the model on easier prompts than the models measured on all of them."""
    pooled = prep.points(NIAH_TASK, metric, depth=None)
    cells = prep.points(NIAH_TASK, metric, by=("variant", "haystack", "eval_ctx"), depth=None)
    for row in cells[cells["status"] != "ok"].drop_duplicates(["series", "eval_ctx"]).itertuples(index=False):
        at = (pooled["series"] == row.series) & (pooled["eval_ctx"] == row.eval_ctx)
        pooled.loc[at, ["value", "ci_low", "ci_high"]] = math.nan
        pooled.loc[at, ["status", "message"]] = [row.status, row.message]
    return pooled


def _pareto_panel(ax: Axes, ok: pd.DataFrame, better: str, ctx: Context) -> None:
    """Points with error bars both ways, rings at unstable costs, and the Pareto front (no point
    is cheaper and better)."""
    for row in ok.itertuples(index=False):
        style = ctx.styles[row.series]
        gid = seeds_gid(pd.DataFrame({"ci_low": [row.ci_low_q, row.ci_low_c], "seeds": [row.seeds_q, row.seeds_c]}))
        ax.errorbar(row.value_c, row.value_q, xerr=_err(row.value_c, row.ci_low_c, row.ci_high_c),
                    yerr=_err(row.value_q, row.ci_low_q, row.ci_high_q), color=style.color, marker=style.marker,
                    markerfacecolor=style.face, markersize=8 if style.marker == "*" else 6, linestyle="none",
                    elinewidth=0.8, zorder=3, gid=gid)
    if "flag_c" in ok:  # an unstable timing is ringed here as in the latency figure: seen, not trusted
        for series, g in ok.groupby("series", sort=False):
            _unstable(ax, g.assign(value=g["value_q"], flag=g["flag_c"]), "value_c", ctx.styles[series].color)
    sign = 1 if better == "lower" else -1
    best, xs, ys = math.inf, [], []
    for row in ok.sort_values(["value_c", "value_q"], ascending=[True, better == "lower"]).itertuples(index=False):
        if sign * row.value_q < best:
            best = sign * row.value_q
            xs.append(row.value_c)
            ys.append(row.value_q)
    if len(xs) > 1:
        ax.step(xs, ys, where="post", color="0.55", linestyle="--", linewidth=1, zorder=2)
    ax.margins(0.12)


def _err(value: float, low: float, high: float) -> list[list[float]] | None:
    if pd.isna(low) or pd.isna(high):
        return None
    return [[max(value - low, 0.0)], [max(high - value, 0.0)]]




# ---------------------------------------------------------------------------------------------
# Entry point


def load(source: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """A result table from a DataFrame, a run folder or a results file."""
    return results.to_frame(source) if isinstance(source, pd.DataFrame) else results.read_table(source)


def make_figures(source: pd.DataFrame | str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 formats: Sequence[str] = ("png", "pdf"), only: Sequence[str] | None = None,
                 niah_metrics: Sequence[str] | None = None, samples: RunData | None = None) -> list[Path]:
    """Write the paper figures of a result table (a DataFrame, a run folder or a results file)
    to ``out_dir`` (default: ``<run folder>/figures``), one file per figure and format; return
    the paths written. ``only`` picks figures by name (the paper figures above and those tasks
    register, see :mod:`harness.report.figures`); ``niah_metrics`` the NIAH accuracies shown
    (default: those in the table); ``samples`` the run's (:func:`harness.report.claims.load_run`),
    which give the loss gaps and speed-ups the bands of the intervals the tables print. Figures
    the table has no data for are skipped and logged."""
    for fmt in formats:
        check_choice("figure format", fmt, FIGURE_FORMATS)
    names = figure_names()
    for name in only or ():
        check_choice("figure", name, names)
    if out_dir is None:
        if isinstance(source, pd.DataFrame):
            raise ValueError("make_figures needs out_dir when given a DataFrame")
        base = Path(source)
        out_dir = (base if base.is_dir() else base.parent) / FIGURES_DIR
    prep = prepare(load(source))
    out_dir = prepare_output(out_dir, "figures folder")
    niah = [m for m in niah_metric_names(prep, niah_metrics) if prep.has(NIAH_TASK, m, ok=True)]
    ctx = Context(prep, series_styles(prep), niah, with_samples(samples))
    written: dict[str, list[Path]] = {}  # by figure name, the files of a skipped figure being none
    with matplotlib.rc_context(PAPER_RC):
        for name in only or names:
            files = written.setdefault(name, [])
            if prep.rows.empty:
                log.info("skipped figure %s: the table is empty", name)
                continue
            if only is None and name in FIGURE_TASKS and not (prep.rows["task"] == FIGURE_TASKS[name]).any():
                continue  # a task's own figure, and the table has nothing of that task
            try:
                for stem, fig in FIGURES[name](ctx):
                    files += save_figure(fig, out_dir / stem, formats)
            except SkipFigure as why:
                log.info("skipped figure %s: %s", name, why)
    replace_written(out_dir, written)
    return [path for files in written.values() for path in files]


def save_figure(fig: Figure, stem: Path, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write ``fig`` to ``stem.<format>`` for each format (atomically); return the paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        # No creation date in PDFs: the same table gives the same file.
        metadata = {"CreationDate": None} if fmt == "pdf" else None
        results.atomic_write(path, lambda f: fig.savefig(f, format=fmt, metadata=metadata), binary=True)
        paths.append(path)
    return paths
