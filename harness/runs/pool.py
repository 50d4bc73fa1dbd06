"""Several models of one or more sweeps at once, on the cores of this machine: each model's cells
(:func:`~harness.runs.sweep.run_model_cells`, the unit a cluster job runs) go to one of
``workers`` worker processes. What the gate runs, so that its cells, independent and
single-threaded, fill a small machine's cores.

A worker runs its cells with the torch thread count of the process that made the pool, so a
cell's floats are those of an inline run. Workers are spawned, not forked: a forked child
inherits torch's thread pools half made. With ``workers=1`` there are no workers: a sweep runs
in this process when its result is asked for, so monkeypatched code (tests) is what runs.
"""
from __future__ import annotations

import multiprocessing
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import std as tqdm_std
from tqdm.auto import tqdm

from harness.api.device import dtype_name, resolve_device, resolve_dtype
from harness.api.errors import ConfigError
from harness.runs.provenance import git_commit
from harness.runs.store import ResultStore
from harness.runs.sweep import (Cell, SweepResult, SweepSpec, cells_by_model, finish_sweep, record_lost_cells,
                                run_model_cells, run_sweep, start_sweep)


@dataclass
class PendingSweep:
    """A sweep handed to a :class:`ModelPool`; :meth:`result` waits for it (or, inline, runs it)."""
    spec: SweepSpec
    out_dir: Path
    retry_failed: bool
    cells: list[Cell] | None = None  # the rest: set when its models went to workers
    ran: int = 0
    started: float = 0.0
    git: dict[str, Any] | None = None
    device: str = ""
    dtype: str = ""
    futures: dict[Future, list[Cell]] | None = None  # each model's job -> its cells
    before: dict[str, dict[str, Any]] | None = None  # the folder's records when the jobs were handed out

    def result(self, progress: bool = True) -> SweepResult:
        if self.futures is None:
            return run_sweep(self.spec, self.out_dir, progress, self.retry_failed)
        bar = tqdm(total=len(self.cells), initial=len(self.cells) - self.ran, desc=f"sweep {self.spec.name}",
                   unit="cell", disable=not progress)
        for future in as_completed(self.futures):
            cells = self.futures[future]
            try:  # a cell's own failure is a status row; this raises if its worker died (killed, out of memory)
                future.result()
            except Exception as exc:  # noqa: BLE001 - BrokenProcessPool, or an error outside the cells' guards
                reason = f"worker process died ({type(exc).__name__}: {exc})"
                record_lost_cells(self.out_dir, cells, reason, self.git or {}, self.before)
            bar.update(len(cells))
        bar.close()
        return finish_sweep(self.spec, self.out_dir, self.cells, self.ran, self.started, self.git, device=self.device,
                            dtype=self.dtype)


class ModelPool:
    """``workers`` processes running sweeps' models, each model's cells in one of them, in the
    order submitted (a pool shared by several sweeps runs their models side by side)."""

    def __init__(self, workers: int = 1) -> None:
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
        self._executor = None if workers == 1 else ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker, initargs=(torch.get_num_threads(),))

    def __enter__(self) -> ModelPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._executor is None:
            return
        if isinstance(exc_info[1], KeyboardInterrupt):  # Ctrl-C or SIGTERM: stop now, not after the running models
            # (a SIGTERM sent to this process alone reaches no worker); they die without a word, their
            # finished cells recorded and their training resumable from its last save, as after Ctrl-C
            for process in list(self._executor._processes.values()):  # no public way before Python 3.14
                process.terminate()
        self._executor.shutdown(cancel_futures=exc_info[0] is not None)

    def submit(self, spec: SweepSpec, out_dir: str | Path, retry_failed: bool = False) -> PendingSweep:
        """Queue the cells of ``spec`` not finished in ``out_dir`` (as :func:`run_sweep` would run
        them), one job per model."""
        if self._executor is None:
            return PendingSweep(spec, Path(out_dir), retry_failed)
        device = resolve_device(spec.device)
        dtype = resolve_dtype(spec.dtype, device)
        out, cells, pending = start_sweep(spec, out_dir, retry_failed)
        git, started = git_commit(), time.time()  # before the work: a commit during a long sweep is not what ran
        before = ResultStore(out).finished()
        futures = {self._executor.submit(run_model_cells, group, out, device, dtype): group
                   for group in cells_by_model(pending)}
        return PendingSweep(spec, out, retry_failed, cells, len(pending), started, git, str(device), dtype_name(dtype),
                            futures, before)


def _start_worker(threads: int) -> None:
    """A worker takes the pool maker's thread count, and its bars (drawn on its own stderr, if at
    all) a thread lock, not tqdm's default multiprocessing one: a worker that dies by a signal (its
    pool stopping it, a time limit) never removes that lock's semaphore, and multiprocessing then
    warns of it as leaked when the command ends."""
    torch.set_num_threads(threads)
    tqdm_std.tqdm.set_lock(threading.RLock())  # on the base class: every kind of bar takes it
