"""A spec's ``cluster:`` settings (:mod:`harness.runs.cluster`): what no executor can use is
refused, and each setting reaches submitit under its own name. Needs no submitit."""
from __future__ import annotations

import re

import pytest

from harness.api.errors import ConfigError
from harness.runs.cluster import ClusterOptions


@pytest.mark.parametrize("setting, says", [
    ({"workers": 0}, "cluster.workers must be positive, got 0"),
    ({"time_min": 0}, "cluster.time_min must be positive, got 0"),
    ({"gpus_per_job": -1}, "cluster.gpus_per_job must be >= 0, got -1"),
    ({"cpus_per_job": 0}, "cluster.cpus_per_job must be positive (or left out: the executor's default), got 0"),
])
def test_settings_no_executor_can_use_are_refused(setting, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        ClusterOptions(**setting)


def test_every_setting_reaches_submitit_under_its_own_name():
    options = ClusterOptions(workers=3, partition="gpu", gpus_per_job=0, cpus_per_job=8, mem_gb=64, time_min=30,
                             account="lab", qos="high", constraint="h100", slurm={"exclusive": True})
    assert options.executor_parameters("slurm") == {
        "timeout_min": 30, "gpus_per_node": 0, "tasks_per_node": 1, "nodes": 1, "cpus_per_task": 8, "mem_gb": 64,
        "slurm_partition": "gpu", "slurm_account": "lab", "slurm_qos": "high", "slurm_constraint": "h100",
        "slurm_array_parallelism": 3, "slurm_additional_parameters": {"exclusive": True}}
    # left out: the executor's own defaults; one job per model unless asked
    default = ClusterOptions()
    assert default.jobs == "model"
    assert default.executor_parameters("local") == {"timeout_min": 60, "gpus_per_node": 0, "tasks_per_node": 1,
                                                    "nodes": 1}


def test_a_job_executor_without_submitit_is_one_clear_error(monkeypatch):
    """`lcbench sweep --executor local` without the cluster extra gave a traceback ending in
    "No module named 'submitit'"."""
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "submitit", None)  # what an environment without it gives
    monkeypatch.delitem(sys.modules, "harness.runs.jobs", raising=False)
    with pytest.raises(ConfigError, match=r"submitit, which is not installed: pip install -e \"\.\[cluster\]\""):
        importlib.import_module("harness.runs.jobs")
