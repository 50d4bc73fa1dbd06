"""The GPU kit: every GPU path of lcbench proven and measured in one run of a few minutes.

    python -m bench.gpu.run --out DIR [--budget-s 480] [--wheels .whl] [--dry-run] [--only STEP ...]

Steps, in order (weights in :data:`bench.gpu.config.STEP_WEIGHTS`):

1. ``install``: the GPU extras from the wheel folder, and this checkout, into ``<work>/site``;
2. ``environment``: nvidia-smi, package versions, the backend ``auto`` picks per architecture;
3. ``gpu_tests``: ``pytest -m gpu``, each test's outcome recorded as it finishes;
4. ``latency``: prefill/decode latency, peak memory, state size of the five architectures at
   125M on 8K/32K/128K tokens (the models and options of ``results/specs/latency_gpu.yaml``);
5. ``throughput``: training tokens/s and MFU of each architecture at 125M on 8K tokens;
6. ``ttt_speed``: ``bench.gpu.ttt_speed`` where present;
7. ``latency_large``: the 760M models at 128K, with whatever time is left.

Each step runs in its own process (:mod:`bench.gpu.worker`) under a time limit: its weight's
share of the budget still left (:func:`bench.gpu.clock.step_seconds`). The step itself starts an
item only when the item is expected to fit, and records the rest as ``skipped``; a step still
running at its limit is stopped and its unfinished items recorded as ``timeout``. The output
folder is rewritten after every step and every ``write_every_s`` while one runs, and on SIGTERM
(the device call's time limit) the kit stops the step and writes it at once, so a run cut short
still leaves everything done so far: at most 8 flat files (:mod:`bench.gpu.bundle`),
``summary.md`` the one to read first. Steps run in the kit's session, so whatever ends the kit's
session ends them too.

``--dry-run`` runs the same steps on a CPU in about a minute (tiny models, fp32, torch
reference kernels, short contexts); CI runs it (tests/test_gpu_kit.py).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

# before the imports below: the budget counts them too (seconds on a fresh machine's cold disk)
PROCESS_STARTED = time.time()

import click

from bench.gpu import bundle, ledger, summary
from bench.gpu.clock import step_seconds
from bench.gpu.config import CONFIG_FILE, LEDGER_FILE, ROOT, STEP_WEIGHTS, STEPS, KitConfig
from bench.gpu.install import python_path
from bench.gpu.ledger import RUNNING
from bench.gpu.worker import RESTART_EXIT, TIMEOUT_EXIT
from harness.api.interrupts import sigterm_raises, stop_words
from harness.cli import friendly_errors

GRACE_S = 5.0  # after its limit, a step gets this long to end by itself before it is stopped
MIN_STEP_S = 1.0  # a step given less than this is skipped
STOP_WAIT_S = 20.0  # how long a stopped step may take to end


class Kit:
    """One run: its settings, its work folder (everything) and its output folder (the bundle)."""

    def __init__(self, cfg: KitConfig, out: Path, work: Path, started: float | None = None):
        self.cfg, self.out, self.work = cfg, out, work
        self.started = time.time() if started is None else started
        self.end = self.started + cfg.budget_s - cfg.reserve_s  # the steps end here; bundling after
        (work / bundle.LOG_DIR).mkdir(parents=True, exist_ok=True)
        cfg.save(work / CONFIG_FILE)

    def say(self, message: str) -> None:
        line = f"[{time.time() - self.started:6.1f} s] {message}"
        print(line, flush=True)
        with open(bundle.log_path(self.work, bundle.KIT_LOG), "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def run(self) -> Path:
        """Every step, then the output folder. Stopped (SIGTERM, Ctrl-C) part-way, it stops the step
        running, records it and the steps not started, writes the output folder and re-raises."""
        steps = self.cfg.steps
        begun = 0  # steps started (or skipped)
        try:
            with sigterm_raises():
                for i, step in enumerate(steps):
                    begun = i + 1
                    limit = step_seconds(self.end - time.time(), STEP_WEIGHTS[step],
                                         [STEP_WEIGHTS[s] for s in steps[i + 1:]])
                    if limit < MIN_STEP_S:
                        ledger.Ledger(self.work / LEDGER_FILE, step).record(ledger.STEP_ITEM, "skipped",
                                                                            message="no time left in the budget")
                        self.say(f"{step}: skipped, no time left")
                    else:
                        self.run_step(step, limit)
                    if begun < len(steps):
                        self.write_output(final=False)
        except KeyboardInterrupt as stop:  # Terminated (SIGTERM: the device call's time limit) among them
            previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut this write short
            why = f"the kit was {stop_words(stop)[0]}"
            for step in steps[begun:]:
                ledger.Ledger(self.work / LEDGER_FILE, step).record(ledger.STEP_ITEM, "skipped",
                                                                    message=f"{why} before it")
            self.write_output(final=False)
            self.say(f"{why}: {self.out} holds what was done")
            signal.signal(signal.SIGTERM, previous)
            raise
        text = self.write_output(final=True)
        self.say(f"done: {self.out}")
        print(text, flush=True)
        return self.out

    def run_step(self, step: str, limit: float) -> None:
        record = ledger.Ledger(self.work / LEDGER_FILE, step)
        deadline = time.time() + limit
        command = [sys.executable, "-m", "bench.gpu.worker", step, "--work", str(self.work), "--deadline", repr(deadline)]
        env = {**os.environ, "PYTHONPATH": python_path(self.work), "PYTHONUNBUFFERED": "1"}
        if self.cfg.torch_threads:
            env["OMP_NUM_THREADS"] = str(self.cfg.torch_threads)  # torch's CPU threads, from its start
        self.say(f"{step}: started, limit {limit:.0f} s")
        record.record(ledger.STEP_ITEM, "planned", message=f"{RUNNING}, limit {limit:.0f} s")  # for interim summaries
        started, stopped = time.time(), None
        with open(bundle.log_path(self.work, step), "w", encoding="utf-8") as log:
            while True:
                # a process group of its own, so that stopping the step stops its children (pytest, pip,
                # compilers); in the kit's session, so that whatever ends that session ends the step too:
                # in a session of its own, a step outlived a kit stopped at the device call's time limit
                # and held the GPU into the next call
                proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        preexec_fn=os.setpgrp)
                try:
                    code = self.wait(proc, deadline + GRACE_S)
                except KeyboardInterrupt as stop:
                    code, stopped = None, stop
                finally:
                    stop_group(proc)
                if code != RESTART_EXIT or deadline - time.time() < MIN_STEP_S:
                    break
                self.say(f"{step}: a CUDA error broke its process; the items not yet done go on in a new one")
        seconds = time.time() - started
        if stopped is not None:
            status, why = "timeout", f"the kit was {stop_words(stopped)[0]} {seconds:.0f} s into the step"
        elif code is None or code == TIMEOUT_EXIT:
            status, why = "timeout", f"stopped at its limit of {limit:.0f} s"
        elif code != 0:
            status, why = "failed", f"exit status {code}: {last_line(bundle.log_path(self.work, step))}"
        else:
            status, why = "ok", f"limit {limit:.0f} s"
        cut = ledger.close_unfinished(self.work / LEDGER_FILE, step, "failed" if status == "failed" else "timeout",
                                      f"unfinished when the step ended ({why})")
        record.record(ledger.STEP_ITEM, status, seconds, why + (f"; {cut} item(s) unfinished" if cut else ""))
        self.say(f"{step}: {status} in {seconds:.1f} s ({why})")
        if stopped is not None:
            raise stopped

    def wait(self, proc: subprocess.Popen, deadline: float) -> int | None:
        """The step's exit status, or None at ``deadline``. Meanwhile the output folder is rewritten
        every ``write_every_s``: a kit killed mid-step (SIGKILL at the device call's time limit)
        still leaves what the step had done."""
        while (left := deadline - time.time()) > 0:
            try:
                return proc.wait(timeout=min(left, self.cfg.write_every_s))
            except subprocess.TimeoutExpired:
                self.write_output(final=False)
        return None

    def write_output(self, final: bool) -> str:
        # whatever fails here, what can be written is: the results must reach the output folder
        try:
            files = bundle.collect(self.work)
        except Exception:  # noqa: BLE001
            files = {bundle.LOGS: f"collecting the output failed:\n{traceback.format_exc()}"}
        try:
            text = summary.render(self.work, self.cfg, time.time() - self.started, final)
        except Exception:  # noqa: BLE001
            text = f"# lcbench GPU kit: the summary failed\n\n```\n{traceback.format_exc()}```\n"
        bundle.write(self.out, {**files, bundle.SUMMARY: text})
        return text


def stop_group(proc: subprocess.Popen) -> None:
    """Stop the step and whatever it started that is still running (its process group). A process
    stuck in the GPU driver ends only when the driver lets it: the kit waits for that a while, not
    for ever, so that the output folder is still written."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # all ended already
        pass
    try:
        proc.wait(timeout=STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        print(f"step process {proc.pid} still there {STOP_WAIT_S:.0f} s after SIGKILL: going on without it", flush=True)


def last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder: at most 8 files (summary.md first).")
@click.option("--budget-s", type=float, default=KitConfig.budget_s, show_default=True,
              help="Seconds for the whole run, the output folder included.")
@click.option("--wheels", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of .whl files to install offline (bench.gpu.fill_wheels fills it); one missing is "
                   "reported and the run goes on without it.")
@click.option("--dry-run", is_flag=True, help="The same steps on a CPU in about a minute: tiny models, reference kernels.")
@click.option("--only", "only", multiple=True,
              help=f"Run only these steps (repeatable), after the install: {', '.join(STEPS[1:])}.")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for everything else (sweep folders, logs, installed wheels); default: a new temporary one.")
@click.option("--peak-tflops", type=float, default=None, help="The GPU's dense bf16 peak for MFU (default: by its name).")
@friendly_errors
def main(out: Path, budget_s: float, wheels: Path | None, dry_run: bool, only: tuple[str, ...], work: Path | None,
         peak_tflops: float | None) -> None:
    """Run the GPU kit: install, GPU tests, latency, training throughput, TTT-E2E speed, within a budget."""
    settings = dict(budget_s=budget_s, wheels=str(wheels.resolve()) if wheels else None, peak_tflops=peak_tflops,
                    **({"steps": ["install", *only]} if only else {}))  # a fresh machine has nothing installed
    cfg = KitConfig.dry(**settings) if dry_run else KitConfig.gpu(**settings)
    work = (work or Path(tempfile.mkdtemp(prefix="lcbench-gpu-kit-"))).resolve()
    Kit(cfg, out.resolve(), work, started=PROCESS_STARTED).run()


if __name__ == "__main__":
    main()
