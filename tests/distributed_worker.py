"""One rank of the distributed training tests, launched by torchrun (tests/test_distributed.py).

Usage: python -m torch.distributed.run --nproc_per_node=N tests/distributed_worker.py JOBS.json

JOBS.json lists training jobs run in order: {"config" (the model config's dict), "train"
(TrainConfig fields), "out", "parallel", "resume", "report"}. Rank 0 writes each job's loss
history to its "report" file. A job with "kill": [rank, step] SIGKILLs that rank when it
samples the batch of that (0-based) step, as a crash or a pre-empted node would.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch

from harness import data
from harness.api import registry
from harness.train.distributed import shutdown
from harness.train.trainer import TrainConfig, train

torch.set_num_threads(1)


def die_at(rank: int, step: int, grad_accum: int) -> None:
    sample = data.sample_batch

    def sample_or_die(packed, batch_size, index, seed):
        if int(os.environ["RANK"]) == rank and index == step * grad_accum:
            os.kill(os.getpid(), signal.SIGKILL)
        return sample(packed, batch_size, index, seed)

    data.sample_batch = sample_or_die


def main(jobs_file: str) -> None:
    for job in json.loads(Path(jobs_file).read_text()):
        cfg = TrainConfig(**job["train"])
        if "kill" in job:
            die_at(*job["kill"], cfg.grad_accum)
        result = train(registry.config_from_dict(job["config"]), cfg, out_dir=job.get("out"),
                       resume=job.get("resume", False), progress=False, parallel=job.get("parallel", "auto"))
        if os.environ["RANK"] == "0" and job.get("report"):
            Path(job["report"]).write_text(json.dumps({"history": result.history, "val_loss": result.val_loss}))
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
