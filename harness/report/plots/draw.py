"""How every figure draws, a task's too: a series' line, interval bands, unstable and failed
points (:func:`draw_series`); the legend and what its bands are (:func:`seeds_legend`,
:func:`derived_legend`, :func:`figure_legend`); the figure and its panel grid; and the checks
and orderings of the table that the figure builders share."""
from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from harness.api import stats
from harness.report.figures import SkipFigure
from harness.report.plots.style import FAIL_MARKER, Context
from harness.report.tables import (
    FAILURE_LABELS,
    UNSTABLE_MARK,
    DerivedIntervals,
    Prepared,
)

SEEDS_GID = "interval over seeds: "  # + the seeds: what seeds_legend finds
DERIVED_GID = "derived interval: "  # + what a gap's or speed-up's band is (DerivedIntervals.short), for the legend


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
        mark_unstable(ax, ok, x, style.color)
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


def mark_unstable(ax: Axes, ok: pd.DataFrame, x: str, color: str) -> None:
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


def figure_legend(fig: Figure, series: Iterable[str], ctx: Context, failures: bool = False, side: bool = False,
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


def panel_grid(n: int, most: int) -> tuple[int, int]:
    """(columns, rows) for ``n`` panels, at most ``most`` a row, rows filled evenly: 4 panels
    make 2 x 2, not a row of 3 over a row of 1 beside two empty places."""
    rows = math.ceil(n / most)
    return math.ceil(n / rows), rows


def new_figure(ncols: int = 1, nrows: int = 1, panel: tuple[float, float] = (4.2, 3.0),
               **kwargs) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(panel[0] * ncols + 0.4, panel[1] * nrows + 0.9), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kwargs)


def hide_unused(axes: np.ndarray, used: int) -> None:
    for ax in axes.flat[used:]:
        ax.set_visible(False)


def any_failed(*frames: pd.DataFrame) -> bool:
    return any((f["status"] != "ok").any() for f in frames)


def need_rows(prep: Prepared, task: str, metric: str, what: str) -> None:
    if not prep.has(task, metric):
        raise SkipFigure(f"no {metric!r} rows of task {task!r} in the table ({what})")
    if not prep.has(task, metric, ok=True):
        raise SkipFigure(f"every {metric!r} cell of task {task!r} failed (see the tables for which and why)")


def table_order(prep: Prepared, column: str, values: Iterable) -> list:
    """``values`` in the order the table first lists them (the task's own order, e.g. NIAH variants)."""
    seen = list(dict.fromkeys(prep.rows[column].dropna()))
    wanted = set(values)
    return [v for v in seen if v in wanted]


def not_shown(ctx: Context, failed: dict[str, dict[str, str]], rows: bool) -> str:
    """'Not shown: Mamba 2 (OOM); SWA (NIAH: not measured)': each model a panel lacks, and why;
    with ``rows`` (loss and NIAH) which row lacks it, for it may be drawn in the other."""
    def why(reasons: dict[str, str]) -> str:
        return ", ".join(f"{row}: {FAILURE_LABELS.get(w, w)}" if rows else FAILURE_LABELS.get(w, w)
                         for row, w in reasons.items())

    return "Not shown: " + "; ".join(f"{ctx.styles[s].label} ({why(failed[s])})" for s in ctx.prep.order if s in failed)
