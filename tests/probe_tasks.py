"""Cheap tasks for sweep and CLI tests, registered once: test modules import this module under
one name (``tests.probe_tasks``), as do the subprocesses that tests start."""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from harness.api import registry, results

FLAKY = {"fail": True}  # test_flaky fails while this is set
WAIT_GUARD_S = 600  # test_waits gives up after this: a hang guard, not a timing


@registry.register_task("test_sweep_probe")
def probe_task(model, contexts=(8,), boom: bool = False):
    """The model's mean loss on a fixed sequence, one row per context."""
    if boom:
        raise RuntimeError("this cell fails on purpose")
    rows = []
    for length in ([contexts] if isinstance(contexts, int) else contexts):
        x = torch.arange(length).remainder(256).view(1, -1)
        rows.append(results.make_row("loss", model.token_losses(x).mean().item(), eval_ctx=length))
    return rows


@registry.register_task("test_flaky")
def flaky_task(model):
    if FLAKY["fail"]:
        raise RuntimeError("flaky failure")
    return [results.make_row("loss", 1.0)]


@registry.register_task("test_half_fails")
def half_fails_task(model):
    """One ok row and one error row: a cell that fails in part."""
    return [results.make_row("loss", 1.0), *results.status_rows(["other"], "error", "the second part broke")]


@registry.register_task("test_corpus_probe")
def corpus_probe_task(model, corpus: str = "stdlib"):
    """The corpus's length in characters: a cell whose numbers depend only on its data."""
    from harness.data import load_corpus

    return [results.make_row("chars", float(sum(len(d.text) for d in load_corpus(corpus))))]


@registry.register_task("test_bad_sample")
def bad_sample_task(model, ctx):
    """Records a sample that JSON cannot hold (a set), then a good row."""
    ctx.record(pairs={1, 2})
    return [results.make_row("loss", 1.0)]


@registry.register_task("test_refused_mid_bar")
def refused_mid_bar_task(model, ctx):
    """Bad input found while its progress bar is drawn (a plugin's, or a late check's)."""
    from harness.api.errors import ConfigError

    bar = ctx.bar(total=2, desc="probe")
    bar.update(1)
    raise ConfigError("the second step is refused")


@registry.register_task("test_waits")
def waits_task(model, until: str):
    """Says it started (a file ``{until}.{pid}.started``), then waits until the file ``until``
    exists: a cell surely running when a test stops its sweep, which a rerun finishes at once."""
    Path(f"{until}.{os.getpid()}.started").touch()
    deadline = time.monotonic() + WAIT_GUARD_S
    while not Path(until).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{until} did not appear within {WAIT_GUARD_S} s")
        time.sleep(0.05)
    return [results.make_row("loss", 1.0)]


@registry.register_task("test_refused_under_two_bars")
def refused_under_two_bars_task(model, ctx):
    """Bad input found while an outer and an inner progress bar are drawn (a sweep's and a cell's)."""
    from harness.api.errors import ConfigError

    outer = ctx.bar(total=2, desc="outer")
    outer.update(1)
    inner = ctx.bar(total=3, desc="inner")
    inner.update(1)
    raise ConfigError("the inner step is refused")
