"""SIGTERM (kill, Slurm's time limit, a container's stop) ends a command as Ctrl-C does: it says
so, and how to go on, exits 143, keeps the finished work and leaves no process running; and a
warning shown under a progress bar starts on a line of its own.

Each test waits for a file to appear (a checkpoint, a started cell), with a long bound that only
guards against a hang, then sends SIGTERM to the command alone, as ``kill PID`` does."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from tqdm.std import tqdm

from harness import cli
from harness.api.interrupts import EXIT_TERMINATED, Terminated, sigterm_raises
from harness.runs import jobs, pool
from harness.runs.pool import ModelPool
from harness.runs.store import ResultStore

ROOT = Path(__file__).resolve().parent.parent
HANG_GUARD_S = 600
TINY = {"window": 8, "d_model": 32, "n_heads": 2, "mlp_hidden": 64, "n_layers": 2}
# the CLI with the probe tasks registered (as a plugin's entry point would)
LCBENCH = [sys.executable, "-c", ("import sys, tests.probe_tasks; from harness.cli import main; "
                                  "sys.exit(main(prog_name='lcbench'))")]


def lcbench(tmp_path: Path, *args: str, sigint_ignored: bool = False) -> subprocess.Popen:
    """The command in a session of its own, so that what it leaves running can be found, its
    stderr in a file (a pipe would stay open while a process it left runs on). ``sigint_ignored``:
    started as a shell starts a background command (``lcbench ... &``), SIGINT ignored, which every
    process it starts inherits."""
    command = list(LCBENCH)
    if sigint_ignored:
        command[-1] = "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); " + command[-1]
    with open(tmp_path / "stderr.txt", "w") as err:
        return subprocess.Popen([*command, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)


def wait_for(ready: Callable[[], bool], proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not ready():
        assert proc.poll() is None, f"the command ended first, exit status {proc.returncode}"
        assert time.monotonic() < deadline, "hang guard"
        time.sleep(0.05)


def terminate(proc: subprocess.Popen, tmp_path: Path) -> str:
    """SIGTERM to the command alone (as ``kill PID``); its stderr once it has ended."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=HANG_GUARD_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    return (tmp_path / "stderr.txt").read_text()


def left_running(session: int) -> list[str]:
    """The live processes of ``session`` (zombies aside), as ``pid command``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # state, ppid, pgrp, session, ...
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")[:120]
        except OSError:  # ended meanwhile
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            found.append(f"{stat.parent.name} {command!r}")
    return found


def none_left(session: int) -> list[str]:
    """The live processes of ``session`` once any that are exiting have gone (a bound guards the
    wait); those still there are killed, so that a failing test leaves none running."""
    deadline = time.monotonic() + 30
    while (found := left_running(session)) and time.monotonic() < deadline:
        time.sleep(0.1)
    if found:
        os.killpg(session, signal.SIGKILL)  # the session's one process group: the command's
    return found


def checkpoint_step(folder: Path) -> int | None:
    try:
        return json.loads((folder / "trainer.json").read_text())["step"]
    except (OSError, ValueError, KeyError):  # none yet, or being replaced
        return None


def test_sigterm_ends_training_with_143_and_its_resume_goes_on(tmp_path):
    out = tmp_path / "ckpt"
    proc = lcbench(tmp_path, "train", "swa", "--steps", "100000", "--save-every", "2", "--eval-every", "0",
                   "--batch-size", "2", "--seq-len", "32", "--out", str(out),
                   *[f"--set={k}={v}" for k, v in TINY.items()])
    wait_for(lambda: checkpoint_step(out) is not None, proc)
    err = terminate(proc, tmp_path)
    assert proc.returncode == EXIT_TERMINATED, err
    assert "terminated (SIGTERM): the checkpoint last saved into --out" in err and "--resume" in err
    assert "Traceback" not in err
    saved = checkpoint_step(out)
    assert saved is not None and saved >= 2
    resumed = subprocess.run([*LCBENCH, "train", "swa", "--resume", "--out", str(out), "--steps", str(saved + 1)],
                             cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert resumed.returncode == 0, resumed.stderr
    assert f"after {saved + 1} steps" in resumed.stdout and checkpoint_step(out) == saved + 1


def waits_spec(tmp_path: Path, models: int) -> tuple[Path, Path]:
    """A spec of ``models`` untrained models, each with a cell that finishes and then one that
    waits for the file it returns (a rerun creates it)."""
    until = tmp_path / "go"
    spec = {"name": "stop", "models": [{"name": f"m{i}", "arch": "swa", "untrained": True, "set": TINY}
                                       for i in range(models)],
            "tasks": [{"task": "test_sweep_probe"}, {"task": "test_waits", "options": {"until": str(until)}}]}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, until


def started(until: Path, count: int) -> Callable[[], bool]:
    return lambda: len(list(until.parent.glob(f"{until.name}.*.started"))) >= count


def test_sigterm_stops_an_inline_sweep_keeping_its_finished_cell(tmp_path):
    spec, until = waits_spec(tmp_path, 1)
    out = tmp_path / "out"
    proc = lcbench(tmp_path, "sweep", str(spec), "--out", str(out))
    wait_for(started(until, 1), proc)  # the first cell is recorded before the second starts
    err = terminate(proc, tmp_path)
    assert proc.returncode == EXIT_TERMINATED, err
    assert "terminated (SIGTERM): the cells that finished are kept" in err and "Traceback" not in err
    kept = ResultStore(out).finished()
    assert len(kept) == 1 and next(iter(kept.values()))["status"] == "ok"
    until.touch()
    rerun = subprocess.run([*LCBENCH, "sweep", str(spec), "--out", str(out)], cwd=ROOT, capture_output=True,
                           text=True, timeout=HANG_GUARD_S)
    assert rerun.returncode == 0, rerun.stderr
    assert "1 cells run, 1 already done, 0 failed" in rerun.stdout


def test_sigterm_stops_a_local_jobs_sweep_and_its_jobs(tmp_path):
    """The submitit jobs (--executor local) ran on after the command was killed, orphaned. Started
    with SIGINT ignored, as from a shell's background: the SIGINT that stops a job reached jobs
    that ignored it, which ran on."""
    pytest.importorskip("submitit")
    spec = tmp_path / "spec.yaml"  # two models training (long) at once, a job each
    spec.write_text(yaml.safe_dump({
        "name": "stop", "train": {"steps": 100000, "batch_size": 2, "seq_len": 32, "eval_every": 0},
        "models": [{"arch": "swa", "set": TINY},
                   {"arch": "full_attention", "set": {k: v for k, v in TINY.items() if k != "window"}}],
        "tasks": [{"task": "loss_scaling"}]}))
    out = tmp_path / "out"
    proc = lcbench(tmp_path, "sweep", str(spec), "--out", str(out), "--executor", "local", "--workers", "2",
                   sigint_ignored=True)
    wait_for(lambda: len(list((out / ".locks").glob("*.lock"))) >= 2, proc)  # one per model a job trains
    err = terminate(proc, tmp_path)
    assert proc.returncode == EXIT_TERMINATED, err
    assert "terminated (SIGTERM): the cells that finished are kept" in err and "Traceback" not in err
    assert none_left(proc.pid) == []


def test_sigterm_stops_the_gate_and_its_pool_workers(tmp_path):
    """The gate's worker processes (--workers 2) ran on after the command was killed, orphaned."""
    locks = tmp_path / "gate" / "train" / ".locks"  # one per model a worker trains
    proc = lcbench(tmp_path, "gate", "--layer", "train", "--workers", "2", "--out", str(tmp_path / "gate"))
    wait_for(lambda: len(list(locks.glob("*.lock"))) >= 2, proc)
    err = terminate(proc, tmp_path)
    assert proc.returncode == EXIT_TERMINATED, err
    assert err.rstrip().endswith("terminated (SIGTERM)") and "Traceback" not in err  # the workers say nothing
    assert none_left(proc.pid) == []


@pytest.fixture
def unhandled_sigterm():
    """SIGTERM sent to this (test) process fails the test where lcbench leaves it unhandled, instead
    of killing the test run; the handler, which the test can expect back afterwards."""
    def unhandled(signum, frame):
        raise AssertionError("SIGTERM reached no handler of lcbench's")

    before = signal.signal(signal.SIGTERM, unhandled)
    yield unhandled
    signal.signal(signal.SIGTERM, before)


def test_sigterm_raises_only_while_asked_and_then_once(unhandled_sigterm):
    """A second SIGTERM (a clean-up that hangs) gets the handler that was there before, as does
    any after the block."""
    with sigterm_raises():
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(HANG_GUARD_S)  # the handler interrupts it
        with pytest.raises(AssertionError, match="no handler of lcbench's"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(HANG_GUARD_S)
    assert signal.getsignal(signal.SIGTERM) is unhandled_sigterm
    with sigterm_raises():  # a block that no SIGTERM reached restores the handler too
        pass
    assert signal.getsignal(signal.SIGTERM) is unhandled_sigterm


def visible_lines(written: str) -> list[str]:
    """What a terminal shows of ``written``: a carriage return goes back to the line's start, and
    what follows overwrites what was there."""
    lines = []
    for line in written.split("\n"):
        first, *rest = line.split("\r")
        shown = list(first)
        for part in rest:
            shown[:len(part)] = part
        lines.append("".join(shown).rstrip())
    return lines


def test_a_warning_under_a_progress_bar_starts_on_its_own_line(monkeypatch):
    """It was written after the bar's text, on the bar's line."""
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = cli._show_warning  # as `lcbench` sets it
        bar = tqdm(total=4, desc="sweep probe", file=sys.stderr, mininterval=0)
        bar.update(1)
        warnings.warn("a corpus file was skipped")
        bar.close()
    warned = [line for line in visible_lines(err.getvalue()) if "a corpus file was skipped" in line]
    assert warned == ["warning: a corpus file was skipped"], repr(err.getvalue())


@pytest.mark.parametrize("module, function, args", [
    ("harness.runs.evaluate", "run_eval", ["eval", "latency", "--model", "swa"]),
    ("harness.adapters.lm_eval", "run_lm_eval", ["lm-eval", "swa", "--tasks", "hellaswag"]),
    ("harness.runs.quick", "run_quick", ["quick"]),
    ("harness.runs.gate", "run_gate", ["gate"]),
])
def test_sigterm_in_a_command_says_terminated_and_exits_143(module, function, args, tmp_path, monkeypatch,
                                                           unhandled_sigterm):
    """SIGTERM killed the command without a word (and, for quick, without how to go on)."""
    pytest.importorskip(module)

    def work(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill` from another shell would, mid-work
        time.sleep(HANG_GUARD_S)  # the signal's handler interrupts it

    monkeypatch.setattr(sys.modules[module], function, work)
    result = CliRunner().invoke(cli.main, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == EXIT_TERMINATED == 143 and "terminated (SIGTERM)" in result.output, result.output
    assert ("rerun the same command to go on" in result.output) == (args[0] == "quick")
    assert signal.getsignal(signal.SIGTERM) is unhandled_sigterm  # restored for whatever runs next in this process


def test_sigterm_raises_does_nothing_outside_the_main_thread(unhandled_sigterm):
    """Python sets signal handlers only in the main thread: a command run in another thread (a
    notebook's worker, a test runner's) failed with ValueError before any work."""
    failed: list[BaseException] = []

    def command() -> None:
        try:
            with sigterm_raises():
                pass
        except BaseException as exc:  # noqa: BLE001 - the test reports any
            failed.append(exc)

    thread = threading.Thread(target=command)
    thread.start()
    thread.join()
    assert failed == [] and signal.getsignal(signal.SIGTERM) is unhandled_sigterm


def test_a_note_under_a_progress_bar_starts_on_its_own_line(monkeypatch):
    """lcbench's info lines (a figure skipped) are written through tqdm too, not after the bar."""
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    log = logging.getLogger("harness")
    level, handlers = log.level, list(log.handlers)
    try:
        cli._show_notes()  # as `lcbench plot` sets it
        bar = tqdm(total=4, desc="figures", file=sys.stderr, mininterval=0)
        bar.update(1)
        logging.getLogger("harness.report").info("a figure was skipped")
        bar.close()
    finally:
        log.handlers[:], log.level = handlers, level
    noted = [line for line in visible_lines(err.getvalue()) if "a figure was skipped" in line]
    assert noted == ["  a figure was skipped"], repr(err.getvalue())


class _Job:
    """A local job as submitit gives it, whose controller has ended (its pid is past any pid)."""

    def __init__(self, done: bool) -> None:
        self.job_id, self.finished, self.cancelled = str(2 ** 31 - 1), done, False

    def done(self) -> bool:
        return self.finished

    def cancel(self) -> None:
        self.cancelled = True


class _SlowJob(_Job):
    """One whose processes end on the third look after it was cancelled."""

    def __init__(self) -> None:
        super().__init__(done=False)
        self.looks = 0

    def done(self) -> bool:
        self.looks += self.cancelled
        return self.looks >= 3


@pytest.mark.parametrize("kind", ["local", "slurm"])
def test_ctrl_c_or_sigterm_cancels_the_local_jobs_still_running_and_leaves_slurm_s(kind):
    """A local job still running is stopped (its controller's processes, else the controller) and
    waited for; a finished one is left alone; Slurm's jobs run on, recording their cells."""
    running, finished = _SlowJob(), _Job(done=True)
    with pytest.raises(Terminated):
        with jobs._local_jobs_stopped(kind) as started:
            started += [running, finished]
            raise Terminated
    assert (running.cancelled, finished.cancelled) == (kind == "local", False)
    # locally, the command ends once they have (nothing of theirs runs on); Slurm's are not waited for
    assert running.looks == (3 if kind == "local" else 0)


class _Process:
    def __init__(self) -> None:
        self.terminated = False

    def terminate(self) -> None:
        self.terminated = True


class _Executor:
    def __init__(self) -> None:
        self._processes = {1: _Process(), 2: _Process()}
        self.cancelled: bool | None = None

    def shutdown(self, cancel_futures: bool = False) -> None:
        self.cancelled = cancel_futures


@pytest.mark.parametrize("error, stopped, cancelled", [(Terminated, True, True), (KeyboardInterrupt, True, True),
                                                      (RuntimeError, False, True), (None, False, False)])
def test_a_pool_stops_its_workers_at_once_only_when_interrupted(error, stopped, cancelled):
    """Ctrl-C or SIGTERM stops the workers now; an error leaves the running models to finish (their
    cells recorded), the queued ones cancelled; a pool that ends well waits for them all."""
    with pytest.raises(error) if error else contextlib.nullcontext():
        with ModelPool(workers=1) as models:
            models._executor = executor = _Executor()
            if error:
                raise error
    assert [p.terminated for p in executor._processes.values()] == [stopped] * 2
    assert executor.cancelled is cancelled


def test_a_pool_worker_s_bars_take_a_thread_lock():
    """tqdm's default lock holds a multiprocessing semaphore, which a worker stopped by a signal
    never removes: multiprocessing then warned of a leaked semaphore when the command ended."""
    before = tqdm.__dict__.get("_lock")
    try:
        pool._start_worker(torch.get_num_threads())
        assert isinstance(tqdm.get_lock(), type(threading.RLock()))
    finally:
        if before is None:
            del tqdm._lock
        else:
            tqdm._lock = before
