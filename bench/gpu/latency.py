"""Steps ``latency`` and ``latency_large``: prefill and decode latency, peak memory and state size
through the latency task, with the models and task options of ``results/specs/latency_gpu.yaml``.

The step takes the spec's models of one size (its Llama-3-vocabulary entries: those without
config overrides) and runs each (context, model) as a one-cell sweep (:func:`harness.sweep.run_sweep`)
in its own folder, shortest contexts first, so what does not fit is the longest. A cell starts
only when the time it is expected to take is left: the slowest cell at that context so far, or
else the slowest at the longest shorter context scaled by the length ratio. A cell that fails
with a CUDA error that breaks the process ends the step (:class:`bench.gpu.ledger.BrokenCudaContext`);
the kit runs it again in a new process, which leaves the cells already decided as they are.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pandas as pd

from bench.gpu.clock import Clock
from bench.gpu.config import ROOT, KitConfig
from bench.gpu.ledger import BROKEN_CUDA_CONTEXT, BrokenCudaContext, Ledger, decided
from harness.api import results
from harness.api.errors import ConfigError
from harness.runs.sweep import ModelEntry, SweepSpec, TaskEntry, load_spec, run_sweep

TASK = "latency"


def spec_cells(spec: SweepSpec, size: str, contexts: list[int], archs: list[str]) -> list[tuple[int, ModelEntry]]:
    """(context, model) cells: the spec's ``size`` models of ``archs``, context by context."""
    entries = [m for m in spec.models if m.preset == size and not m.set and m.arch in archs]
    if not entries:
        raise ConfigError(f"the latency spec {spec.name!r} has no {size} models of {', '.join(archs)}")
    return [(ctx, entry) for ctx in sorted(contexts) for entry in entries]


def task_options(spec: SweepSpec, cfg: KitConfig) -> dict:
    """The spec's latency options with the kit's over them."""
    return {**next(t for t in spec.tasks if t.task == TASK).options, **cfg.latency_options}


def cell_spec(spec: SweepSpec, entry: ModelEntry, ctx: int, cfg: KitConfig) -> SweepSpec:
    """A one-cell sweep: the latency options at one context, on the kit's device and dtype."""
    model = dataclasses.replace(entry, preset=cfg.run_preset or entry.preset,
                                set={**entry.set, **({"backend": cfg.backend} if cfg.backend else {})})
    options = {**task_options(spec, cfg), "contexts": [ctx]}
    return SweepSpec(name=spec.name, models=[model], tasks=[TaskEntry(TASK, options=options)], seeds=spec.seeds[:1],
                     device=cfg.device, dtype=cfg.dtype)


def expected_seconds(seconds: dict[int, float], ctx: int) -> float:
    if ctx in seconds:
        return seconds[ctx]
    shorter = [c for c in seconds if c < ctx]
    return seconds[max(shorter)] * ctx / max(shorter) if shorter else 0.0


def run_cells(cfg: KitConfig, size: str, contexts: list[int], out: Path, clock: Clock, ledger: Ledger) -> None:
    spec = load_spec(ROOT / cfg.latency_spec)
    cells = spec_cells(spec, size, contexts, cfg.archs)
    names = [f"{entry.label}@{ctx}" for ctx, entry in cells]
    done = decided(ledger.path, ledger.step)  # run again after a broken CUDA context: those stay as they are
    ledger.plan(n for n in names if n not in done)
    slowest: dict[int, float] = {}
    folders = [f for f in (cell_folder(out, n) for n in names if n in done) if (f / results.TABLE_PARQUET).is_file()]
    write_cells(out, folders)
    for name, (ctx, entry) in zip(names, cells):
        if name in done:
            continue
        need = max(expected_seconds(slowest, ctx), cfg.min_item_s)
        if not clock.fits(need):
            ledger.record(name, "skipped", message=f"expected to take {need:.0f} s; {clock.left():.0f} s left")
            continue
        folder = cell_folder(out, name)
        started = time.time()
        try:
            result = run_sweep(cell_spec(spec, entry, ctx, cfg), folder, progress=False)
        except ConfigError as error:  # refused before any work (a kernel that cannot run here): the next cells go on
            ledger.record(name, "failed", time.time() - started, str(error))
            continue
        seconds = time.time() - started
        slowest[ctx] = max(slowest.get(ctx, 0.0), seconds)
        folders.append(folder)
        write_cells(out, folders)
        bad = result.table[result.table["status"] != "ok"]
        ledger.record(name, "failed" if len(bad) else "ok", seconds,
                      f"{bad['status'].iloc[0]}: {bad['message'].iloc[0]}" if len(bad) else "")
        broken = [m for m in bad["message"].astype(str) if BROKEN_CUDA_CONTEXT.search(m)]
        if broken:  # every later cell in this process would fail alike
            raise BrokenCudaContext(f"{name}: {broken[0]}")


def cell_folder(out: Path, name: str) -> Path:
    return out / "cells" / "".join(c if c.isalnum() or c in "-_.@" else "_" for c in name)


def write_cells(out: Path, folders: list[Path]) -> None:
    """The cells' tables as one, rewritten after every cell: a step stopped at its limit keeps
    what its finished cells measured (the bundle reads only this table)."""
    tables = [results.read_table(f) for f in folders if (f / results.TABLE_PARQUET).is_file()]
    results.write_table(out, pd.concat(tables, ignore_index=True) if tables else results.to_frame([]))


def run(cfg: KitConfig, work: Path, clock: Clock, ledger: Ledger) -> None:
    run_cells(cfg, cfg.size, cfg.contexts, work / "latency", clock, ledger)


def run_large(cfg: KitConfig, work: Path, clock: Clock, ledger: Ledger) -> None:
    run_cells(cfg, cfg.large_size, cfg.large_contexts, work / "latency_large", clock, ledger)
