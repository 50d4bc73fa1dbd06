"""The NIAH figures: ``niah_heatmap_<metric>_<haystack>`` (accuracy by needle depth x context
length, one panel per model and variant) and ``niah_vs_context_<metric>_<haystack>`` (pooled
over depths, against context length)."""
from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from harness.report.figures import SkipFigure, register_figure
from harness.report.plots.axes import ACCURACY_LIMITS, context_axis
from harness.report.plots.draw import (
    any_failed,
    draw_series,
    figure_legend,
    hide_unused,
    new_figure,
    panel_grid,
    table_order,
)
from harness.report.plots.style import Context
from harness.report.tables import (
    FAILURE_LABELS,
    NIAH_NAMES,
    NIAH_TASK,
    UNSTABLE_MARK,
    context_label,
)

log = logging.getLogger(__name__)


def _niah_needed(ctx: Context) -> None:
    if not ctx.niah_metrics:
        raise SkipFigure(f"no measured NIAH accuracy rows ({', '.join(NIAH_NAMES)}) of task {NIAH_TASK!r} in the table")


@register_figure("niah_heatmap")
def fig_niah_heatmaps(ctx: Context) -> Iterator[tuple[str, Figure]]:
    _niah_needed(ctx)
    for metric in ctx.niah_metrics:
        cells = ctx.prep.points(NIAH_TASK, metric, by=("variant", "haystack", "eval_ctx", "depth"))
        for haystack in table_order(ctx.prep, "haystack", cells["haystack"]):
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
    variants = table_order(ctx.prep, "variant", cells["variant"])
    series = [s for s in ctx.prep.order if s in set(cells["series"])]
    contexts = sorted(int(c) for c in cells["eval_ctx"].unique())
    depths = sorted(cells["depth"].dropna().unique())
    fig, axes = new_figure(len(series), len(variants), panel=(1.9, 1.8), sharex=True, sharey=True)
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
        for haystack in table_order(ctx.prep, "haystack", pts["haystack"]):
            here = pts[pts["haystack"] == haystack]
            variants = table_order(ctx.prep, "variant", here["variant"])
            fig, axes = new_figure(*panel_grid(len(variants), 4), panel=(3.0, 2.5), sharey=True)
            hide_unused(axes, len(variants))
            for ax, variant in zip(axes.flat, variants):
                draw_series(ax, here[here["variant"] == variant], "eval_ctx", ctx)
                context_axis(ax, here["eval_ctx"])
                ax.set_ylim(*ACCURACY_LIMITS)
                ax.set_title(variant)
            for ax in axes[:, 0]:
                ax.set_ylabel("Accuracy")
            fig.suptitle(f"{NIAH_NAMES.get(metric, metric)} vs. context length ({haystack} haystack, all depths)",
                         wrap=True)
            figure_legend(fig, here["series"], ctx, any_failed(here))
            yield f"niah_vs_context_{metric}_{haystack}", fig
