"""Writing the figures: every registered figure of a result table, or those asked for, to a
folder (:func:`make_figures`), each in the formats asked for (:func:`save_figure`); a figure the
table has no data for is skipped with a logged reason."""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from harness.api import results
from harness.api.errors import check_choice
from harness.api.staging import prepare_output
from harness.report.claims import RunData, with_samples
from harness.report.figures import FIGURE_TASKS, FIGURES, SkipFigure, figure_names
from harness.report.plots.style import PAPER_RC, Context, series_styles
from harness.report.tables import NIAH_TASK, niah_metric_names, prepare
from harness.report.written import replace_written

log = logging.getLogger(__name__)

FIGURE_FORMATS = ("png", "pdf", "svg")
FIGURES_DIR = "figures"


def load(source: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """A result table from a DataFrame, a run folder or a results file."""
    return results.to_frame(source) if isinstance(source, pd.DataFrame) else results.read_table(source)


def make_figures(source: pd.DataFrame | str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 formats: Sequence[str] = ("png", "pdf"), only: Sequence[str] | None = None,
                 niah_metrics: Sequence[str] | None = None, samples: RunData | None = None) -> list[Path]:
    """Write the paper figures of a result table (a DataFrame, a run folder or a results file)
    to ``out_dir`` (default: ``<run folder>/figures``), one file per figure and format; return
    the paths written. ``only`` picks figures by name (the paper figures, :mod:`harness.report.plots`,
    and those tasks register, see :mod:`harness.report.figures`); ``niah_metrics`` the NIAH accuracies shown
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
