"""The ``pareto_<ctx>`` figures: quality (loss, NIAH accuracy) against cost (prefill time,
decode time, peak memory) at one context length, with the Pareto front."""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from harness.report.figures import SkipFigure, register_figure
from harness.report.plots.axes import ACCURACY_LIMITS, log_axis, scale_label
from harness.report.plots.draw import (
    figure_legend,
    mark_unstable,
    new_figure,
    not_shown,
    seeds_gid,
)
from harness.report.plots.latency import COST_NAMES, batch_filter, batch_sizes
from harness.report.plots.style import Context
from harness.report.tables import (
    LATENCY_TASK,
    LOSS,
    NIAH_NAMES,
    NIAH_TASK,
    Prepared,
    context_label,
)

log = logging.getLogger(__name__)


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
    batch = batch_sizes(prep, costs)[0]
    cost_pts = {m: prep.points(LATENCY_TASK, m, **batch_filter(batch)) for m in costs}
    contexts = sorted({int(L) for q, _, _ in quality.values() for L in q["eval_ctx"].dropna()}
                      & {int(L) for p in cost_pts.values() for L in p["eval_ctx"].dropna()})
    if not contexts:
        raise SkipFigure(f"the quality tasks and the {LATENCY_TASK} task share no context length")
    rank = {s: i for i, s in enumerate(prep.order)}
    for L in contexts:
        here = {name: v for name, v in quality.items() if (v[0]["eval_ctx"] == L).any()}
        fig, axes = new_figure(len(costs), len(here), panel=(3.0, 2.6))
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
                log_scale = log_axis(ax, "x", "bytes" if m.endswith("_bytes") else "seconds")
                if r == len(here) - 1:
                    cost = f"{ctx.peak_memory()} (prefill)" if m == "prefill_peak_bytes" else COST_NAMES[m]
                    ax.set_xlabel(scale_label(cost, log_scale))
                if c == 0:
                    ax.set_ylabel(f"{q_label} {'↓' if better == 'lower' else '↑'}")
        if not shown:
            log.info("pareto at %s: no model has both a quality and a cost there", context_label(L))
            continue
        if failed:  # laid out below the axes, unlike fig.text
            fig.supxlabel(not_shown(ctx, failed, len(here) > 1), fontsize=7.5, color="0.3", wrap=True)
        fig.suptitle(f"Quality vs. cost at context {context_label(L)} ({ctx.setting(batch=batch)}); "
                     "dashed: Pareto front", wrap=True)
        figure_legend(fig, shown, ctx, side=True)
        yield f"pareto_{context_label(L)}", fig


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
            mark_unstable(ax, g.assign(value=g["value_q"], flag=g["flag_c"]), "value_c", ctx.styles[series].color)
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
