"""Sweeps as submitit jobs: concurrent workers give the serial run's table; dead jobs are
recorded with their log; cluster settings are checked. A pool of local worker processes (the
gate's) gives the serial table too. (Concurrent writers of the store itself:
tests/test_store.py.)"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import yaml

pytest.importorskip("submitit")

from harness.api import results  # noqa: E402
from harness.api.errors import ConfigError  # noqa: E402
from harness.api.timing import torch_threads  # noqa: E402
from harness.runs import jobs  # noqa: E402
from harness.runs.cluster import ClusterOptions  # noqa: E402
from harness.runs.pool import ModelPool  # noqa: E402
from harness.runs.provenance import read_run_json  # noqa: E402
from harness.runs.store import CELLS_FILE, ResultStore  # noqa: E402
from harness.runs.sweep import describe_failures, load_spec, plan, run_sweep  # noqa: E402

SMALL = {"d_model": 32, "n_heads": 2, "mlp_hidden": 64, "n_layers": 2}

NO_GIT = {"commit": None, "dirty": None}  # what a dead job's records name when git cannot be read


@pytest.fixture
def spec_path(tmp_path) -> Path:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("json", "csv", "textwrap", "string"):
        (corpus / f"{name}.txt").write_text(Path(__import__(name).__file__).read_text()[:4000])
    spec = {
        "name": "jobs",
        "train": {"steps": 2, "batch_size": 2, "seq_len": 32, "eval_batches": 1, "corpus": str(corpus)},
        "models": [{"arch": "swa", "set": {**SMALL, "window": 8}}, {"arch": "full_attention", "set": SMALL}],
        "tasks": [{"task": "loss_scaling", "options": {"tokens_per_context": 64, "resamples": 20, "chunk": 0},
                   "grid": {"contexts": [[16], [32]]}}],
        "cluster": {"workers": 2, "time_min": 10},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def sorted_table(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values(results.KEY_COLUMNS).reset_index(drop=True)


@pytest.fixture
def serial(spec_path, tmp_path):
    result = run_sweep(load_spec(spec_path), tmp_path / "serial", progress=False)
    assert result.failed == 0 and len(result.table)
    return result


@pytest.mark.slow
def test_concurrent_local_jobs_give_the_serial_table(spec_path, serial, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # workers reduce in the same order as this process
    spec = load_spec(spec_path)  # 2 models, one job each, both running at once (workers: 2)
    out = tmp_path / "jobs"
    result = jobs.run_sweep_jobs(spec, str(out), "local", progress=False)
    assert result.failed == 0 and result.ran == len(plan(spec))
    pd.testing.assert_frame_equal(sorted_table(result.table), sorted_table(serial.table))
    assert sum(p.name.isdigit() for p in (out / jobs.JOBS_DIR).iterdir()) == 2  # each job's log folder
    rerun = jobs.run_sweep_jobs(spec, str(out), "local", progress=False)
    assert rerun.ran == 0 and rerun.skipped == len(plan(spec))


def test_one_job_per_cell_trains_each_model_once_first(spec_path, serial, tmp_path, monkeypatch):
    import submitit

    # submitit's in-process executor: the same jobs and calls as --executor local, without the
    # start-up of a process per job (the concurrent path is the test above)
    submitted = []

    def in_process(kind, options, log_dir):
        executor = submitit.AutoExecutor(folder=str(log_dir / "%j"), cluster="debug")
        real_submit = executor.submit
        executor.submit = lambda fn, *args: submitted.append(args) or real_submit(fn, *args)
        return executor

    monkeypatch.setattr(jobs, "make_executor", in_process)
    spec = load_spec(spec_path)
    result = jobs.run_sweep_jobs(spec, str(tmp_path / "cells"), "local", progress=False, jobs="cell")
    pd.testing.assert_frame_equal(sorted_table(result.table), sorted_table(serial.table))
    train_jobs = [a for a in submitted if a[3]]
    assert len(train_jobs) == 2 and len(submitted) == 2 + len(plan(spec))
    assert all(len(a[2]) == 1 for a in submitted if not a[3])
    assert {a[4] for a in submitted} == {"cpu"}  # what auto is in a job that asks for no GPU
    # run.json listed the cell jobs only: the training jobs' logs were not named anywhere
    meta = read_run_json(tmp_path / "cells")
    assert len(meta["jobs"]) == len(submitted)
    # and named the spec's spelling of the device (auto), not what the cells computed on, as a serial run does
    assert meta["device"]["name"] == "cpu" and meta["spec"]["device"] == "auto" and meta["dtype"] == "float32"
    serial_meta = read_run_json(serial.out_dir)
    assert (serial_meta["device"]["name"], serial_meta["dtype"]) == (meta["device"]["name"], meta["dtype"])


def test_jobs_plan_auto_as_the_device_their_resources_give(monkeypatch):
    """Cell keys name the kind of device that ``auto`` is where a cell runs. A job plans the spec
    again where it runs, with the kind the submitter gives it, which the submitter cannot read off
    its own machine: a login node has no GPU, and local jobs see only the GPUs they ask for."""
    auto = jobs.jobs_auto_device
    monkeypatch.setattr(jobs, "local_device_kind", lambda: "cuda")  # a GPU machine submits
    assert auto("local", ClusterOptions()) == "cpu" and auto("local", ClusterOptions(gpus_per_job=1)) == "cuda"
    monkeypatch.setattr(jobs, "local_device_kind", lambda: "cpu")  # a login node without a GPU submits
    assert auto("slurm", ClusterOptions(gpus_per_job=1)) == "cuda" and auto("slurm", ClusterOptions()) == "cpu"
    assert auto("local", ClusterOptions(gpus_per_job=1)) == "cpu"  # none here to give


def test_a_dead_job_leaves_status_rows_with_its_log(spec_path, tmp_path):
    spec = load_spec(spec_path)
    out = tmp_path / "out"
    cells = plan(spec)[:2]
    job = SimpleNamespace(job_id="4242", paths=SimpleNamespace(stderr=tmp_path / "4242_0_log.err"))
    jobs.record_dead_job(out, jobs.Submitted(job, cells), RuntimeError("Job 4242 was OOM-killed\nmore"), NO_GIT)
    table = results.read_table(out)
    assert set(table["status"]) == {"error"} and len(table) == 2
    assert all("job 4242 died (Job 4242 was OOM-killed); log: " in m and "4242_0_log.err" in m for m in table["message"])
    assert {r["status"] for r in ResultStore(out).finished().values()} == {"failed"}
    assert len(describe_failures(out)) == 2


def test_a_job_whose_cells_plan_otherwise_where_it_runs_fails_and_says_why(spec_path, tmp_path):
    """A job plans the spec again where it runs. Where its cells got other keys there (a corpus
    edited while the job queued, another Python's library on a cluster node), it ran none of them
    and returned as done: the sweep counted them failed with no record and no reason."""
    spec = load_spec(spec_path)
    keys = [c.key for c in plan(spec)[:2]]
    (Path(spec.train["corpus"]) / "json.txt").write_text("edited while the job queued\n" * 50)
    with pytest.raises(ConfigError, match="2 of this job's 2 cell\\(s\\) are not cells of the spec as planned where it runs"):
        jobs.SweepJob()(spec.to_dict(), str(tmp_path / "out"), keys)


def test_a_dead_jobs_rows_name_the_error_its_trace_ends_with(spec_path, tmp_path):
    """submitit reports a job that raised as a FailedJobError whose first line is only 'Job (task=0)
    failed during processing with trace:': every dead job's rows said that and nothing more."""
    from submitit.core.utils import FailedJobError

    log = tmp_path / "7_0_log.err"
    trace = ("Traceback (most recent call last):\n  File \"jobs.py\", line 1, in __call__\n"
             "harness.api.errors.ConfigError: unknown task 'niha'\n")
    # submitit's own text for a job that raised (submitit/core/core.py, Job.exception)
    exc = FailedJobError(f"Job (task=0) failed during processing with trace:\n----------------------\n{trace}\n"
                         f"----------------------\nYou can check full logs with 'job.stderr(0)' and 'job.stdout(0)'"
                         f"or at paths:\n  - {log}\n  - {tmp_path / '7_0_log.out'}")
    job = SimpleNamespace(job_id="7", paths=SimpleNamespace(stderr=log))
    jobs.record_dead_job(tmp_path / "out", jobs.Submitted(job, plan(load_spec(spec_path))[:1]), exc, NO_GIT)
    (message,) = results.read_table(tmp_path / "out")["message"]
    assert "job 7 died (harness.api.errors.ConfigError: unknown task 'niha'); log: " in message


def test_cluster_settings_are_checked_and_mapped_to_submitit(spec_path):
    spec = load_spec(spec_path)
    with pytest.raises(ConfigError, match="Did you mean 'partition'"):
        spec.cluster_options(partitio="gpu")
    with pytest.raises(ConfigError, match="Did you mean 'cell'"):
        spec.cluster_options(jobs="cells")
    options = spec.cluster_options(partition="gpu", gpus_per_job=8, time_min=120, slurm={"exclusive": True})
    params = options.executor_parameters("slurm")
    assert params["slurm_partition"] == "gpu" and params["gpus_per_node"] == 8 and params["timeout_min"] == 120
    assert params["slurm_array_parallelism"] == 2 and params["slurm_additional_parameters"] == {"exclusive": True}
    assert not any(k.startswith("slurm_") for k in options.executor_parameters("local"))
    bad = yaml.safe_load(spec_path.read_text())
    bad["cluster"]["workerz"] = 3
    spec_path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="Did you mean 'workers'"):
        load_spec(spec_path)


def test_local_jobs_warn_once_of_the_slurm_only_settings_they_ignore(tmp_path, recwarn):
    """`--executor local` dropped a spec's partition, mem_gb, account, qos, constraint and slurm
    settings without a word."""
    jobs.make_executor("local", ClusterOptions(workers=2, time_min=5, cpus_per_job=2), tmp_path)
    assert not recwarn.list  # settings local jobs read
    jobs.make_executor("local", ClusterOptions(partition="gpu", mem_gb=64, slurm={"exclusive": True}), tmp_path)
    said = [str(w.message) for w in recwarn.list]
    assert said == ["--executor local ignores the Slurm-only cluster settings partition='gpu', mem_gb=64, "
                    "slurm={'exclusive': True}; they apply to --executor slurm only"]


def test_slurm_without_sbatch_is_a_clear_error(spec_path, tmp_path, monkeypatch):
    monkeypatch.setattr(jobs.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="sbatch"):
        jobs.run_sweep_jobs(load_spec(spec_path), str(tmp_path / "out"), "slurm", progress=False)


def test_retry_failed_runs_the_cells_of_a_dead_job_again(spec_path, tmp_path, monkeypatch):
    """Each job skipped every cell with a record, failed ones too: --retry-failed ran nothing."""
    import submitit

    monkeypatch.setattr(jobs, "make_executor", lambda kind, options, log_dir: submitit.AutoExecutor(
        folder=str(log_dir / "%j"), cluster="debug"))  # in process: the jobs and calls of --executor local
    spec = load_spec(spec_path)
    out = tmp_path / "out"
    lost = plan(spec)[:2]  # the first model's cells
    job = SimpleNamespace(job_id="4242", paths=SimpleNamespace(stderr=tmp_path / "4242_0_log.err"))
    jobs.record_dead_job(out, jobs.Submitted(job, lost), RuntimeError("Job 4242 was OOM-killed"), NO_GIT)
    result = jobs.run_sweep_jobs(spec, str(out), "local", retry_failed=True, progress=False)
    assert result.failed == 0 and result.ran == len(plan(spec))
    assert {ResultStore(out).finished()[c.key]["status"] for c in lost} == {"ok"}
    assert set(result.table["status"]) == {"ok"}


def test_a_retry_job_that_dies_records_its_death_over_the_old_failure(spec_path, tmp_path, monkeypatch):
    """A dead job's cells that had a record were taken as recorded by the job: a --retry-failed job
    that died (OOM-killed) left the cells' first failure, an old reason and log, as if the retry had
    failed that way."""
    spec = load_spec(spec_path)
    out = tmp_path / "out"
    lost = plan(spec)[:2]
    first = SimpleNamespace(job_id="1", paths=SimpleNamespace(stderr=tmp_path / "1.err"))
    jobs.record_dead_job(out, jobs.Submitted(first, lost), RuntimeError("node lost"), NO_GIT)
    retry = SimpleNamespace(job_id="2", paths=SimpleNamespace(stderr=tmp_path / "2.err"), done=lambda: True,
                            result=lambda: (_ for _ in ()).throw(RuntimeError("Job 2 was OOM-killed")))
    monkeypatch.setattr(jobs, "make_executor", lambda kind, options, log_dir: None)
    monkeypatch.setattr(jobs, "_submit", lambda runner, kind, spec, out, groups, workers, auto_device, train_only=False:
                        [jobs.Submitted(retry, group) for group in groups])
    jobs.run_sweep_jobs(spec, str(out), "local", retry_failed=True, progress=False)
    messages = [ResultStore(out).finished()[c.key]["message"] for c in lost]
    assert all("job 2 died (Job 2 was OOM-killed)" in m for m in messages), messages


def test_one_job_per_cell_runs_no_cell_whose_model_failed_to_train(spec_path, tmp_path, monkeypatch):
    """The dead training jobs' cells are recorded failed; a cell job for each would train the
    model again, all of them at once into one checkpoint folder."""
    dead = SimpleNamespace(job_id="7", paths=SimpleNamespace(stderr=tmp_path / "7.err"), done=lambda: True,
                           result=lambda: (_ for _ in ()).throw(RuntimeError("training node lost")))
    cell_jobs = []

    def submit(runner, kind, spec, out, groups, workers, auto_device, running, train_only=False):
        if train_only:
            return [jobs.Submitted(dead, group) for group in groups]
        cell_jobs.extend(groups)
        return []

    monkeypatch.setattr(jobs, "make_executor", lambda kind, options, log_dir: None)
    monkeypatch.setattr(jobs, "_submit", submit)
    spec = load_spec(spec_path)
    result = jobs.run_sweep_jobs(spec, str(tmp_path / "out"), "local", progress=False, jobs="cell")
    assert cell_jobs == [] and result.failed == len(plan(spec))
    assert all("died (training node lost)" in r["message"] for r in ResultStore(tmp_path / "out").finished().values())


# --- a pool of worker processes on this machine (harness.runs.pool, what the gate runs) ----------

def test_a_pool_of_two_workers_gives_the_inline_table_exactly(spec_path, serial, tmp_path):
    spec = load_spec(spec_path)  # 2 models, trained and measured in 2 workers at once
    with ModelPool(2) as pool:
        result = pool.submit(spec, tmp_path / "pool").result(progress=False)
    assert result.failed == 0 and result.ran == len(plan(spec))
    pd.testing.assert_frame_equal(sorted_table(result.table), sorted_table(serial.table), check_exact=True)
    records = (tmp_path / "pool" / CELLS_FILE).read_text()
    with ModelPool(2) as pool:
        rerun = pool.submit(spec, tmp_path / "pool").result(progress=False)
    assert rerun.ran == 0 and rerun.skipped == len(plan(spec))
    assert (tmp_path / "pool" / CELLS_FILE).read_text() == records  # no finished cell run again


def test_pool_workers_take_this_process_thread_count():
    """A cell's floats depend on its thread count: a worker uses the pool maker's, not its own default."""
    with torch_threads(3), ModelPool(2) as pool:
        assert pool._executor.submit(torch.get_num_threads).result() == 3


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_a_pool_needs_a_positive_number_of_workers(workers):
    with pytest.raises(ConfigError, match=f"workers must be an integer >= 1, got {workers!r}"):
        ModelPool(workers)


def test_a_pool_worker_that_dies_leaves_status_rows_and_a_retry_finishes(spec_path, serial, tmp_path):
    """A worker killed (say by the kernel's out-of-memory killer) broke the pool: result() raised,
    no cell said why, and run.json was not written."""
    spec, out = load_spec(spec_path), tmp_path / "pool"
    with ModelPool(2) as pool:
        pending = pool.submit(spec, out)
        os.kill(next(iter(pool._executor._processes)), signal.SIGKILL)  # before it can have finished a model
        result = pending.result(progress=False)
    assert result.failed > 0 and read_run_json(out)["failed"] == result.failed
    assert all("worker process died" in line for line in describe_failures(out, result.keys))
    with ModelPool(2) as pool:
        retried = pool.submit(spec, out, retry_failed=True).result(progress=False)
    assert retried.failed == 0
    pd.testing.assert_frame_equal(sorted_table(retried.table), sorted_table(serial.table), check_exact=True)



def test_a_slurm_sweep_s_run_json_names_the_machine_that_submitted_it_as_such(spec_path, tmp_path, monkeypatch):
    """A cluster's nodes run the cells (each cell's record names its own: cell_machines); run.json's
    top-level device described the login node that submitted them, as if the cells had run there."""
    import submitit

    from harness.report.html import render_report
    from harness.runs.provenance import device_info

    monkeypatch.setattr(jobs, "make_executor",  # in process, as the test above; submitted as to Slurm
                        lambda kind, options, log_dir: submitit.AutoExecutor(folder=str(log_dir / "%j"), cluster="debug"))
    spec, out = load_spec(spec_path), tmp_path / "slurm"
    assert jobs.run_sweep_jobs(spec, str(out), "slurm", progress=False).failed == 0
    meta = read_run_json(out)
    assert meta["executor"] == "slurm" and meta["device"] == {"name": "cpu"}  # the kind the cells computed on
    assert meta["submitted_from"]["cpu"] == device_info("cpu")["cpu"] and "name" not in meta["submitted_from"]
    assert sum(meta["cell_machines"].values()) == len(plan(spec))
    assert "machine</th><td class=\"text\">cpu (" in render_report(out)  # the report names the cells' machines

def test_a_pool_retry_whose_worker_dies_records_its_death_over_the_old_failure(spec_path, tmp_path):
    """The cells a dead worker left kept their old failure (an earlier job's), as if the retry had
    failed that way; run.json names the device the cells ran on, not the spec's 'auto'."""
    spec, out = load_spec(spec_path), tmp_path / "pool"
    lost = plan(spec)
    job = SimpleNamespace(job_id="1", paths=SimpleNamespace(stderr=tmp_path / "1.err"))
    jobs.record_dead_job(out, jobs.Submitted(job, lost), RuntimeError("node lost"), NO_GIT)
    with ModelPool(2) as pool:
        pending = pool.submit(spec, out, retry_failed=True)
        os.kill(next(iter(pool._executor._processes)), signal.SIGKILL)  # before it can have finished a model
        pending.result(progress=False)
    messages = [ResultStore(out).finished()[c.key]["message"] for c in lost]
    assert all("worker process died" in m and "node lost" not in m for m in messages), messages
    assert spec.device == "auto" and read_run_json(out)["device"]["name"] == "cpu"
    assert read_run_json(out)["dtype"] == "float32"  # and the dtype they computed in (seventh mutation audit)


def test_an_inline_pool_retries_failed_cells_when_asked(spec_path, tmp_path):
    spec, out = load_spec(spec_path), tmp_path / "inline"
    job = SimpleNamespace(job_id="1", paths=SimpleNamespace(stderr=tmp_path / "1.err"))
    jobs.record_dead_job(out, jobs.Submitted(job, plan(spec)), RuntimeError("node lost"), NO_GIT)
    with ModelPool() as pool:
        result = pool.submit(spec, out, retry_failed=True).result(progress=False)
    assert result.failed == 0 and result.ran == len(plan(spec))


def test_a_pool_left_by_an_error_runs_no_more_of_its_queued_jobs():
    """An error (or Ctrl-C) in the gate waited for every model still queued to be run first."""
    futures = []
    with pytest.raises(RuntimeError, match="stop"), ModelPool(2) as pool:
        futures = [pool._executor.submit(time.sleep, 0.5) for _ in range(8)]
        raise RuntimeError("stop")
    assert any(f.cancelled() for f in futures)
