"""The figure registry: name -> builder, filled by ``@register_figure(name)``.

A builder takes the figure context (:class:`harness.report.plots.Context`: the prepared table,
the series' styles, the NIAH metrics shown) and yields ``(file stem, matplotlib Figure)`` pairs,
or raises :class:`SkipFigure` saying what the table lacks. The paper figures
(:mod:`harness.report.plots`) and the figures of tasks, plugins included, register alike, so
``lcbench plot`` draws a task's figure without the task reaching into the report's internals.
This module imports no matplotlib: a task registers its figure at import time for free.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from harness.api import registry
from harness.api.errors import ConfigError

FigureBuilder = Callable[[Any], Iterator[tuple[str, Any]]]
FIGURES: dict[str, FigureBuilder] = {}
FIGURE_TASKS: dict[str, str] = {}  # figure -> the task whose rows it draws (drawn only when present)


class SkipFigure(ConfigError):
    """The table lacks what a figure needs (the message says what)."""


def register_figure(name: str, task: str | None = None) -> Callable[[FigureBuilder], FigureBuilder]:
    """Register a figure builder; with ``task``, the figure is drawn only for tables holding rows
    of that task (asked for by name, it is tried anyway and its skip is logged)."""

    def decorator(build: FigureBuilder) -> FigureBuilder:
        registered = registry.register_in(FIGURES, "figure", name)(build)
        if task is not None:  # once registered: a refused name must not tie the figure holding it to a task
            FIGURE_TASKS[name] = task
        return registered

    return decorator


def figure_names() -> list[str]:
    """Every registered figure, in registration order (the paper figures first); task modules are
    loaded first so that their figures are among them."""
    registry.load_plugins(registry.TASK_GROUP)
    return list(FIGURES)

