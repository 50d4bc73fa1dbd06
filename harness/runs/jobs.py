"""Sweeps as jobs on submitit: local processes (``--executor local``) or a Slurm cluster
(``--executor slurm``), several running at once, each running :func:`run_model_cells` into the
sweep folder's :class:`~harness.runs.store.ResultStore` (safe for concurrent writers).

One job per model (it trains the model, then runs its tasks) or one per cell (the models are
trained first, one job each, then every cell of a trained model is a job). A job that Slurm pre-empts or times
out is requeued by submitit and skips the cells it had finished; a job that dies is recorded
as status rows of its unfinished cells with the path of its log, and ``--retry-failed`` runs
them again. Rerunning the sweep submits only the cells not yet done.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from harness.api.device import resolve_device, resolve_dtype
from harness.api.errors import ConfigError, check_choice

try:
    import submitit
except ImportError as exc:  # the cluster extra; a traceback said only "No module named 'submitit'"
    raise ConfigError("--executor local and slurm run jobs through submitit, which is not installed: "
                      "pip install -e \".[cluster]\" (or leave --executor out: inline runs every cell here)") from exc
from harness.runs.cluster import ClusterOptions
from harness.runs.provenance import git_commit
from harness.runs.store import ResultStore
from harness.runs.sweep import (Cell, SweepResult, SweepSpec, cells_by_model, compute_kind, finish_sweep,
                                is_finished, local_device_kind, plan, record_lost_cells, run_model_cells, start_sweep)

EXECUTORS = ("local", "slurm")
JOBS_DIR = "jobs"
LOCAL_STOP_S = 10.0  # a stopped local job's controller kills its process within about 1 s; past this, give up waiting


class SweepJob(submitit.helpers.Checkpointable):
    """What a worker runs: the spec's cells with the given keys not yet done ok, model by model.
    Everything lives in the sweep folder, so a requeued job (pre-empted, timed out) just runs
    again. A failed cell among ``keys`` is one that ``--retry-failed`` submitted: it runs again."""

    def __call__(self, spec: dict[str, Any], out_dir: str, keys: list[str], train_only: bool = False,
                 auto_device: str | None = None) -> int:
        """``auto_device``: what the submitter planned ``auto`` as (:func:`jobs_auto_device`); None:
        this machine's kind."""
        if threading.current_thread() is threading.main_thread():
            # the submitter stops a local job with SIGINT (:func:`_stop_local_job`); one started
            # from a shell's background (``lcbench sweep ... &``) inherited SIGINT ignored
            signal.signal(signal.SIGINT, signal.default_int_handler)
        spec_obj = SweepSpec.from_dict(spec)
        auto_device = auto_device or local_device_kind()
        planned, wanted = plan(spec_obj, auto_device), set(keys)
        unplanned = wanted - {c.key for c in planned}
        if unplanned:  # else those cells would be neither run nor recorded, and the job would end as done
            raise ConfigError(f"{len(unplanned)} of this job's {len(keys)} cell(s) are not cells of the spec as planned "
                              "where it runs: a corpus, tokenizer or checkpoint it reads differs from when the sweep "
                              "submitted it (changed since, or another path or Python there); rerun the sweep")
        done = ResultStore(out_dir).finished()
        cells = [c for c in planned if c.key in wanted and not is_finished(c, done.get(c.key), retry_failed=True)]
        if train_only:  # train (or resume) each model once; its cells are other jobs
            for model in {id(c.model): c.model for c in cells}.values():
                model.train_once(Path(out_dir))
            return 0
        device = resolve_device(auto_device if spec_obj.device == "auto" else spec_obj.device)
        dtype = resolve_dtype(spec_obj.dtype, device)
        return sum(run_model_cells(list(group), out_dir, device, dtype)
                   for _, group in itertools.groupby(cells, key=lambda c: id(c.model)))


@dataclass
class Submitted:
    job: Any  # submitit.Job
    cells: list[Cell]


def make_executor(kind: str, options: ClusterOptions, log_dir: Path) -> submitit.Executor:
    check_choice("executor", kind, EXECUTORS)
    if kind == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError("--executor slurm needs Slurm's sbatch on PATH: run the sweep on the cluster's login node "
                          "(or use --executor local)")
    ignored = options.slurm_only_settings() if kind == "local" else {}
    if ignored:  # a spec written for a cluster, tried locally: its sbatch settings were dropped without a word
        warnings.warn("--executor local ignores the Slurm-only cluster settings "
                      + ", ".join(f"{k}={v!r}" for k, v in ignored.items()) + "; they apply to --executor slurm only")
    executor = submitit.AutoExecutor(folder=str(log_dir / "%j"), cluster=kind)
    executor.update_parameters(name="lcbench-sweep", **options.executor_parameters(kind))
    return executor


def run_sweep_jobs(spec: SweepSpec, out_dir: str, executor: str = "local", retry_failed: bool = False,
                   progress: bool = True, **overrides: Any) -> SweepResult:
    """Run the pending cells of ``spec`` as submitit jobs and wait for them. ``overrides``:
    :class:`~harness.runs.cluster.ClusterOptions` fields on top of the spec's ``cluster:``."""
    options = spec.cluster_options(**overrides)
    auto_device = jobs_auto_device(executor, options)
    out, cells, pending = start_sweep(spec, out_dir, retry_failed, auto_device)
    runner = make_executor(executor, options, out / JOBS_DIR)
    git, started = git_commit(), time.time()  # before the work: a commit during a long sweep is not what ran
    before = ResultStore(out).finished()  # a dead job's cells whose records are as here: unfinished by it
    groups = cells_by_model(pending)
    trained: list[Submitted] = []  # training jobs, which jobs: cell runs first
    with _local_jobs_stopped(executor) as running:
        if options.jobs == "cell":
            to_train = [g for g in groups if g[0].model.needs_training(out)]
            trained = _submit(runner, executor, spec, out, to_train, options.workers, auto_device, running,
                              train_only=True)
            _collect(trained, out, progress, git, before)
            # a model whose training job died has its cells recorded failed: a job each would train it again, at once
            groups = [[c] for c in pending if not c.model.needs_training(out)]
        submitted = _submit(runner, executor, spec, out, groups, options.workers, auto_device, running)
        _collect(submitted, out, progress, git, before)
    # what the jobs' cells computed on (a kind: each cell's record names its machine), not the spec's spelling
    ran_on = compute_kind(spec.device, spec.dtype, auto_device)
    return finish_sweep(spec, out, cells, len(pending), started, git, device=ran_on["device"],
                        on_cluster=executor == "slurm", dtype=ran_on["dtype"], executor=executor,
                        cluster=dataclasses.asdict(options), jobs=[s.job.job_id for s in trained + submitted])


def jobs_auto_device(kind: str, options: ClusterOptions) -> str:
    """What ``auto`` is in a job, not on the machine that submits it (a cluster's login node may
    have no GPU; local jobs see only the GPUs they ask for, by CUDA_VISIBLE_DEVICES): cuda when a
    job asks for GPUs and they exist, else cpu. The jobs plan and run with it, so their cells' keys
    are the submitter's and name the kind they run on."""
    if not options.gpus_per_job:
        return "cpu"
    return "cuda" if kind == "slurm" else local_device_kind()


def _submit(runner: submitit.Executor, kind: str, spec: SweepSpec, out: Path, groups: list[list[Cell]],
            workers: int, auto_device: str, running: list[Any], train_only: bool = False) -> list[Submitted]:
    """One job per group. Slurm runs them as one array, at most ``workers`` at once; locally at
    most ``workers`` processes run at once (submitit's local executor starts every job), each
    added to ``running`` as it starts."""
    args = [(spec.to_dict(), str(out), [c.key for c in group], train_only, auto_device) for group in groups]
    if kind == "slurm":
        with runner.batch():
            jobs = [runner.submit(SweepJob(), *a) for a in args]
        return [Submitted(job, group) for job, group in zip(jobs, groups)]
    submitted: list[Submitted] = []
    for a, group in zip(args, groups):
        while sum(not s.job.done() for s in submitted) >= workers:
            time.sleep(0.2)
        submitted.append(Submitted(runner.submit(SweepJob(), *a), group))
        running.append(submitted[-1].job)
    return submitted


@contextmanager
def _local_jobs_stopped(kind: str) -> Iterator[list[Any]]:
    """On Ctrl-C or SIGTERM, stop the local jobs started in the block (the list it yields) and wait
    for them, so that none runs on orphaned: a terminal's Ctrl-C reaches them too, but a SIGTERM
    sent to this process alone (kill, a time limit) would not. Their finished cells are kept, a
    model in training resumes from its last save. Slurm's jobs run on, as they do after Ctrl-C,
    recording their cells into the folder."""
    running: list[Any] = []
    try:
        yield running
    except KeyboardInterrupt:
        if kind == "local":
            stopped: set[int] = set()
            deadline = time.time() + LOCAL_STOP_S
            while True:  # again and again: a controller starts its job's process a moment after it starts
                for job in running:
                    _stop_local_job(job, stopped)
                if all(job.done() for job in running) or time.time() >= deadline:
                    break
                time.sleep(0.1)
        raise


def _stop_local_job(job: Any, stopped: set[int]) -> None:
    """Ctrl-C for a local job: SIGINT to the processes its submitit controller started (its job id
    is the controller's pid), which write their traceback into the job's log and whose end ends
    the controller. Sent to the controller itself (submitit's ``cancel``), it would print the
    controller's traceback here; that is the fallback while the controller has started none.
    ``stopped``: the pids signalled so far, each once (a second SIGINT would cut its clean-up)."""
    if job.done():
        return
    controller = int(job.job_id)
    try:
        tasks = [int(pid) for pid in Path(f"/proc/{controller}/task/{controller}/children").read_text().split()]
    except OSError:  # not Linux, or the controller has just ended
        tasks = []
    for pid in set(tasks) - stopped:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        stopped.add(pid)
    if not tasks and controller not in stopped:
        job.cancel()
        stopped.add(controller)


def _collect(submitted: list[Submitted], out: Path, progress: bool, git: dict[str, Any],
             before: dict[str, dict[str, Any]]) -> None:
    """Wait for every job; a job that died leaves status rows for its unfinished cells, recorded
    as made by ``git`` (the code the jobs were submitted with); ``before``: the folder's records
    when they were submitted (see :func:`record_dead_job`)."""
    bar = tqdm(total=len(submitted), desc="jobs", unit="job", disable=not progress)
    for item in submitted:
        try:
            item.job.result()
        except Exception as exc:  # noqa: BLE001 - submitit reports a dead job as any of several errors
            record_dead_job(out, item, exc, git, before)
        bar.update(1)
    bar.close()


def record_dead_job(out: Path, item: Submitted, exc: BaseException, git: dict[str, Any],
                    before: dict[str, dict[str, Any]] | None = None) -> None:
    """Status rows (and failed ``cells.jsonl`` records) for the cells a dead job left unfinished:
    those with no record, or with the record they had in ``before`` (the records when the job was
    submitted: a --retry-failed job's old failures), so the death is not hidden by an old reason."""
    reason = f"job {item.job.job_id} died ({death_reason(exc)}); log: {item.job.paths.stderr}"
    record_lost_cells(out, item.cells, reason, git, before)


def death_reason(exc: BaseException) -> str:
    """One line on why a job died: the error its traceback ends with where submitit gives one
    (a job that raised: its message opens with 'Job (task=0) failed during processing with
    trace:' and holds the trace between two rules of dashes), else the message's first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    rules = [i for i, line in enumerate(lines) if set(line) == {"-"}]
    if len(rules) >= 2 and rules[1] > rules[0] + 1:
        return lines[rules[1] - 1]
    return lines[0] if lines else type(exc).__name__
