"""The look every figure shares, a task's too: one fixed colour and marker per architecture
(:func:`arch_style`), a line style per series of one architecture (:func:`series_styles`), the
paper's rc settings (:data:`PAPER_RC`), and the context a figure builder reads (:class:`Context`)."""
from __future__ import annotations

import zlib
from collections.abc import Collection
from dataclasses import dataclass

import pandas as pd

from harness.report.claims import RunData
from harness.report.tables import LATENCY_TASK, Prepared, peak_memory_name

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
