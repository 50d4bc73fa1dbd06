"""The cost figures of the latency task: ``latency`` (prefill and decode time against context,
with the speed-up over full attention below them) and ``memory`` (peak memory and state size),
one of each per batch size timed."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.text import Annotation
from matplotlib.ticker import FuncFormatter

from harness.report.figures import SkipFigure, register_figure
from harness.report.plots.axes import context_axis, log_axis, scale_label, times_label
from harness.report.plots.draw import (
    any_failed,
    derived_gid,
    draw_series,
    figure_legend,
    new_figure,
)
from harness.report.plots.style import ARCH_STYLES, Context
from harness.report.tables import (
    LATENCY_TASK,
    MEMORY,
    REFERENCE_ARCH,
    TIMES,
    DerivedIntervals,
    Prepared,
    speedup_intervals,
)

COST_NAMES = {"prefill_s": "Prefill time", "decode_s": "Decode time per token",
              "prefill_peak_bytes": "Peak memory (prefill)"}
MEMORY_NAMES = {"prefill_peak_bytes": "Peak memory while prefilling", "decode_peak_bytes": "Peak memory while decoding",
                "state_bytes": "State size after the prefix"}


def batch_sizes(prep: Prepared, metrics: Sequence[str]) -> list:
    rows = prep.rows[(prep.rows["task"] == LATENCY_TASK) & prep.rows["metric"].isin(metrics)]
    return sorted(rows["batch_size"].unique(), key=lambda b: (pd.isna(b), 0 if pd.isna(b) else b))


def batch_filter(batch) -> dict:
    return {"batch_size": None if pd.isna(batch) else int(batch)}


def _stem(name: str, batch, several: bool) -> str:
    return f"{name}_bs{batch}" if several and pd.notna(batch) else name


@register_figure("latency")
def fig_latency(ctx: Context) -> Iterator[tuple[str, Figure]]:
    metrics = [m for m in TIMES if ctx.prep.has(LATENCY_TASK, m, ok=True)]
    if not metrics:
        raise SkipFigure(f"no measured {' or '.join(TIMES)} rows of task {LATENCY_TASK!r} (run the latency task)")
    batches = batch_sizes(ctx.prep, metrics)
    for batch in batches:
        pts = {m: ctx.prep.points(LATENCY_TASK, m, **batch_filter(batch)) for m in metrics}
        ratios = {m: ctx.prep.relative(p, ["eval_ctx"], "speedup") for m, p in pts.items()}
        intervals = {m: _speedup_intervals(ctx, ratios[m], batch, m) for m in metrics}
        with_ratio = any(((r["arch"] != REFERENCE_ARCH) & r["value"].notna()).any() for r in ratios.values())
        fig, axes = new_figure(len(metrics), 2 if with_ratio else 1, panel=(3.8, 2.5 if with_ratio else 3.2),
                               sharex="col", height_ratios=[1.5, 1] if with_ratio else None)
        end_labels: list[Annotation] = []
        for c, m in enumerate(metrics):
            ax = axes[0, c]
            draw_series(ax, pts[m], "eval_ctx", ctx)
            context_axis(ax, pts[m]["eval_ctx"], label="" if with_ratio else "Context length (tokens)")
            ax.set_ylabel(scale_label(COST_NAMES[m], log_axis(ax, "y", "seconds")))
            ax.set_title("Prefill" if m == "prefill_s" else "Decode (per token)")
            if with_ratio:
                end_labels += _speedup_panel(axes[1, c], ratios[m], ctx, intervals[m])
        fig.suptitle(f"Latency vs. context length ({ctx.setting(batch=batch)})", wrap=True)
        bare = [f"{'Prefill' if m == 'prefill_s' else 'Decode'}: {i.bare_note}"
                for m, i in intervals.items() if with_ratio and i is not None and i.bare]
        figure_legend(fig, pd.concat(pts.values())["series"], ctx, any_failed(*pts.values()), note="\n".join(bare))
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
        labels.append(ax.annotate(times_label(last["value"]), (float(last["eval_ctx"]), last["value"]), xytext=(13, 0),
                                  textcoords="offset points", va="center", fontsize=7,
                                  color=ctx.styles[series].color))
    values = others["value"].dropna()
    if len(values) and max(values.max(), 1) / min(values.min(), 1) > 4:
        log_axis(ax, "y", "ratio")
    else:
        ax.yaxis.set_major_formatter(FuncFormatter(times_label))
    ax.set_ylabel("Speed-up vs. full attn.")
    context_axis(ax, ratio["eval_ctx"])
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
    batches = batch_sizes(ctx.prep, metrics)
    for batch in batches:
        pts = {m: ctx.prep.points(LATENCY_TASK, m, **batch_filter(batch)) for m in metrics}
        fig, axes = new_figure(len(metrics), panel=(3.4, 3.0))
        for ax, m in zip(axes[0], metrics):
            draw_series(ax, pts[m], "eval_ctx", ctx)
            context_axis(ax, pts[m]["eval_ctx"])
            log_scale = log_axis(ax, "y", "bytes")
            ax.set_title(MEMORY_NAMES[m])
            ax.set_ylabel(scale_label("State size" if m == "state_bytes" else ctx.peak_memory(), log_scale))
        fig.suptitle(f"Memory vs. context length ({ctx.setting(batch=batch)})", wrap=True)
        figure_legend(fig, pd.concat(pts.values())["series"], ctx, any_failed(*pts.values()))
        yield _stem("memory", batch, len(batches) > 1), fig
