"""The figure registry (:mod:`harness.report.figures`): the paper figures first, then the tasks';
a name taken by another builder is refused and changes nothing."""
from __future__ import annotations

import pytest

from harness.report import plots  # noqa: F401 - registers the paper figures
from harness.report.figures import FIGURE_TASKS, FIGURES, figure_names, register_figure

PAPER = ["loss_vs_context", "loss_gap", "loss_by_position", "loss_gap_by_position", "niah_heatmap", "niah_vs_context",
         "latency", "memory", "pareto"]


def test_the_paper_figures_come_first_in_their_order_then_the_tasks_figures():
    names = figure_names()
    assert names[:len(PAPER)] == PAPER
    assert {"mqar", "repeat"} <= set(names[len(PAPER):])  # loaded with the task modules
    assert FIGURE_TASKS["mqar"] == "mqar" and "latency" not in FIGURE_TASKS


def test_a_figure_refused_for_a_taken_name_leaves_the_registered_one_as_it_was():
    """A plugin's figure named like a paper figure failed to load (a warning) but tied the paper
    figure to the plugin's task: ``lcbench plot`` then skipped it, without a word, for every
    table without that task."""
    figure_names()
    tasks, builders = dict(FIGURE_TASKS), dict(FIGURES)
    try:
        with pytest.raises(ValueError, match=r"figure 'latency' is already registered by harness\.report\.plots\."
                                             r"latency\.fig_latency"):
            register_figure("latency", task="my_task")(lambda ctx: iter(()))
        assert FIGURE_TASKS == tasks and FIGURES == builders
    finally:
        FIGURE_TASKS.clear()
        FIGURE_TASKS.update(tasks)
