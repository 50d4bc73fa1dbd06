"""One step of the GPU kit, in a process of its own:

    python -m bench.gpu.worker STEP --work DIR --deadline SECONDS_SINCE_EPOCH

The orchestrator (:mod:`bench.gpu.run`) starts one per step, so that a step past its time can be
stopped, and one step's GPU memory and compiled state never weigh on the next. The step reads
the run's settings from ``DIR/kit.json`` and records what it does in ``DIR/ledger.jsonl``.
"""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import click

from bench.gpu.clock import Clock
from bench.gpu.config import CONFIG_FILE, LEDGER_FILE, STEPS, KitConfig
from bench.gpu.ledger import BrokenCudaContext, Ledger

# step -> "module:function"; imported on use, so that installing the wheels needs no torch
RUNNERS = {
    "install": "bench.gpu.install:run",
    "environment": "bench.gpu.environment:run",
    "gpu_tests": "bench.gpu.gpu_tests:run",
    "latency": "bench.gpu.latency:run",
    "throughput": "bench.gpu.throughput:run",
    "ttt_speed": "bench.gpu.ttt_speed_step:run",
    "latency_large": "bench.gpu.latency:run_large",
}
assert set(RUNNERS) == set(STEPS)
TIMEOUT_EXIT = 124  # the step ran out of its time (as timeout(1) exits)
RESTART_EXIT = 75  # the step's CUDA context broke: run it again in a new process (EX_TEMPFAIL)


@click.command()
@click.argument("step", type=click.Choice(STEPS))
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--deadline", type=float, required=True, help="Seconds since the epoch by which the step must end.")
def main(step: str, work: Path, deadline: float) -> None:
    cfg = KitConfig.load(work / CONFIG_FILE)
    module, function = RUNNERS[step].split(":")
    runner = getattr(importlib.import_module(module), function)
    try:
        runner(cfg, work, Clock(deadline), Ledger(work / LEDGER_FILE, step))
    except subprocess.TimeoutExpired as exc:  # a tool the step ran (pytest, pip) was stopped at the deadline
        print(f"time is up: {exc}", flush=True)
        sys.exit(TIMEOUT_EXIT)
    except BrokenCudaContext as exc:
        print(f"a CUDA error broke this process's CUDA context ({exc}): the step goes on in a new process", flush=True)
        sys.exit(RESTART_EXIT)


if __name__ == "__main__":
    main()
