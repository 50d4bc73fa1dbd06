"""Axes every figure shares: a log2 context-length axis labelled 1K, 4K, 128K
(:func:`context_axis`), and log or linear value axes with round ticks labelled in seconds, bytes,
ratios or tokens (:func:`log_axis`)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.ticker import FixedLocator, FuncFormatter, MultipleLocator, NullLocator

from harness.report.tables import context_label

ACCURACY_LIMITS = (-0.04, 1.06)  # the whole 0-1 range, markers at 0 and 1 clear of the frame


def context_axis(ax: Axes, values: Sequence[float], label: str = "Context length (tokens)") -> None:
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


def times_label(v: float, _=None) -> str:
    return f"{v:.3g}×"

UNITS = {"seconds": _seconds, "bytes": _bytes, "ratio": times_label, "tokens": lambda v, _=None: context_label(v)}


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


def log_axis(ax: Axes, which: str, unit: str) -> bool:
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


def scale_label(label: str, log: bool) -> str:
    return f"{label} (log scale)" if log else label
