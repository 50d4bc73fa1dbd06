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

Modules: the shared look and figure context (:mod:`~harness.report.plots.style`), axes
(:mod:`~harness.report.plots.axes`) and drawing (:mod:`~harness.report.plots.draw`); the figure
families, registered in the order above (:mod:`~harness.report.plots.loss`,
:mod:`~harness.report.plots.niah`, :mod:`~harness.report.plots.latency`,
:mod:`~harness.report.plots.pareto`); and writing them (:mod:`~harness.report.plots.make`). The
names below are re-exported, so ``from harness.report import plots; plots.make_figures(...)``
reads as before the split.
"""
from __future__ import annotations

# isort: off
# the figure families register their figures on import: in this order, the order they are drawn in
from harness.report.plots import loss, niah, latency, pareto  # noqa: F401
# isort: on
from harness.report.figures import FIGURES
from harness.report.plots.draw import SEEDS_GID, draw_series, seeds_gid, seeds_legend
from harness.report.plots.loss import MAX_POSITION_PANELS
from harness.report.plots.make import FIGURES_DIR, load, make_figures, save_figure
from harness.report.plots.niah import fig_niah_heatmaps
from harness.report.plots.style import (
    ARCH_STYLES, EXTRA_COLORS, EXTRA_MARKERS, FAIL_MARKER, PAPER_RC, Context, Style, arch_style, series_styles,
)

__all__ = ["ARCH_STYLES", "EXTRA_COLORS", "EXTRA_MARKERS", "FAIL_MARKER", "FIGURES", "FIGURES_DIR",
           "MAX_POSITION_PANELS", "PAPER_RC", "SEEDS_GID", "Context", "Style", "arch_style", "draw_series",
           "fig_niah_heatmaps", "load", "make_figures", "save_figure", "seeds_gid", "seeds_legend", "series_styles"]
