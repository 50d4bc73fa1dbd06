"""How a sweep's jobs run on submitit (:mod:`harness.runs.jobs`): the spec's ``cluster:``
mapping, overridden from the command line. Kept apart from the executor so a spec is checked
without submitit installed."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.api.errors import ConfigError, check_choice

JOB_UNITS = ("model", "cell")
SLURM_ONLY = ("partition", "mem_gb", "account", "qos", "constraint", "slurm")  # what local jobs leave unread


@dataclass
class ClusterOptions:
    jobs: str = "model"  # one job per model (train, then its tasks) or per cell
    workers: int = 4  # jobs running at once
    partition: str | None = None
    gpus_per_job: int = 0
    cpus_per_job: int | None = None
    mem_gb: int | None = None
    time_min: int = 60  # each job's time limit
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    slurm: dict[str, Any] = field(default_factory=dict)  # any other sbatch option, e.g. {exclusive: true}

    def __post_init__(self) -> None:
        check_choice("jobs", self.jobs, JOB_UNITS)
        for name in ("workers", "time_min"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"cluster.{name} must be positive, got {getattr(self, name)}")
        if self.gpus_per_job < 0:
            raise ConfigError(f"cluster.gpus_per_job must be >= 0, got {self.gpus_per_job}")
        for name in ("cpus_per_job", "mem_gb"):  # None: the executor's default
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"cluster.{name} must be positive (or left out: the executor's default), "
                                  f"got {getattr(self, name)}")

    def slurm_only_settings(self) -> dict[str, Any]:
        """The Slurm-only settings given (those not at their defaults): ``--executor local`` drops them."""
        defaults = ClusterOptions()
        return {name: getattr(self, name) for name in SLURM_ONLY if getattr(self, name) != getattr(defaults, name)}

    def executor_parameters(self, kind: str) -> dict[str, Any]:
        """submitit's parameters (its AutoExecutor names) for ``kind`` of executor."""
        params: dict[str, Any] = {"timeout_min": self.time_min, "gpus_per_node": self.gpus_per_job,
                                  "tasks_per_node": 1, "nodes": 1}
        if self.cpus_per_job is not None:
            params["cpus_per_task"] = self.cpus_per_job
        if kind == "slurm":
            if self.mem_gb is not None:
                params["mem_gb"] = self.mem_gb
            named = {"partition": self.partition, "account": self.account, "qos": self.qos,
                     "constraint": self.constraint}
            params.update({f"slurm_{k}": v for k, v in named.items() if v is not None})
            params["slurm_array_parallelism"] = self.workers
            if self.slurm:
                params["slurm_additional_parameters"] = dict(self.slurm)
        return params
