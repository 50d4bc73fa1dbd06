"""The loss figures: ``loss_vs_context``, ``loss_gap`` (to full attention), and both by token
position (``loss_by_position``, ``loss_gap_by_position``: one panel per context length)."""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from harness.api import results
from harness.report.figures import SkipFigure, register_figure
from harness.report.plots.axes import context_axis, log_axis
from harness.report.plots.draw import (
    any_failed,
    derived_gid,
    draw_series,
    figure_legend,
    hide_unused,
    need_rows,
    new_figure,
    not_shown,
    panel_grid,
)
from harness.report.plots.style import ARCH_STYLES, PAPER_RC, Context
from harness.report.tables import (
    FAILURE_LABELS,
    LOSS,
    REFERENCE_ARCH,
    DerivedIntervals,
    context_label,
    gap_intervals,
)

log = logging.getLogger(__name__)


def _single_line_figure(ctx: Context, pts: pd.DataFrame, title: str, ylabel: str, band: bool = True,
                        zero: float | None = None, task: str = LOSS[0],
                        intervals: DerivedIntervals | None = None) -> Figure:
    fig, axes = new_figure(panel=(4.8, 3.4))
    ax = axes[0, 0]
    if zero is not None:
        ax.axhline(zero, color=ARCH_STYLES[REFERENCE_ARCH][0], linewidth=0.8, zorder=1)
    draw_series(ax, pts, "eval_ctx", ctx, band=band, band_gid=derived_gid(intervals))
    context_axis(ax, pts["eval_ctx"])
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=PAPER_RC["figure.titlesize"])
    figure_legend(fig, pts["series"], ctx, any_failed(pts), side=True)
    # a model with nothing drawn vanished without a word: a failed cell of ``task`` (its training
    # diverged: one cell_failed row, none of the metric) or rows without a context
    drawn = set(pts.loc[pts["eval_ctx"].notna() & ((pts["status"] != "ok") | pts["value"].notna()), "series"])
    rows = ctx.prep.rows
    cells = rows[(rows["task"] == task) & (rows["metric"] == results.CELL_FAILED) & (rows["status"] != "ok")]
    missing = {s: {"": str(g["status"].iloc[0]) if (g["status"] != "ok").any() else "not measured"}
               for s, g in pd.concat([pts, cells]).groupby("series", sort=False) if s not in drawn}
    notes = [not_shown(ctx, missing, rows=False)] if missing else []
    if intervals is not None and intervals.bare:
        notes.append(intervals.bare_note)
    if notes:
        fig.supxlabel("\n".join(notes), fontsize=7.5, color="0.3", wrap=True)
    return fig


@register_figure("loss_vs_context")
def fig_loss_vs_context(ctx: Context) -> Iterator[tuple[str, Figure]]:
    need_rows(ctx.prep, *LOSS, "run the loss_scaling task")
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
    need_rows(ctx.prep, *LOSS, "run the loss_scaling task")
    gap = _gap(ctx, ctx.prep.points(*LOSS, pos_start=None), ["eval_ctx"])
    # the table's interval of each gap (none without the run's samples: drawn bare, as the table prints it)
    intervals = gap_intervals(ctx.prep, gap, ctx.samples) if ctx.samples else None
    yield "loss_gap", _single_line_figure(ctx, gap, "Loss gap to full attention (below 0: better)",
                                          "Loss − full-attention loss (nats/token)", band=intervals is not None,
                                          zero=0.0, intervals=intervals)


MAX_POSITION_PANELS = 6


def _position_points(ctx: Context) -> tuple[pd.DataFrame, list[int]]:
    """Per-bin loss points (x = the bin's geometric centre) and the context lengths to show."""
    need_rows(ctx.prep, *LOSS, "run the loss_scaling task")
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
    fig, axes = new_figure(*panel_grid(len(contexts), 3), panel=(3.3, 2.6), sharey=True)
    hide_unused(axes, len(contexts))
    for ax, L in zip(axes.flat, contexts):
        if zero is not None:
            ax.axhline(zero, color=ARCH_STYLES[REFERENCE_ARCH][0], linewidth=0.8, zorder=1)
        draw_series(ax, pts[pts["eval_ctx"] == L], "position", ctx, band=band, band_gid=derived_gid(intervals))
        ax.set_xscale("log", base=2)
        ax.set_xlim(1, L)
        log_axis(ax, "x", "tokens")
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
    figure_legend(fig, pts["series"], ctx, note=intervals.bare_note if intervals is not None else "")
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
