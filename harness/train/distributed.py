"""Data-parallel training across the processes ``torchrun`` launches, or one process alone.

The trainer talks to a :class:`Replicas` object and never to torch.distributed itself:
:class:`SingleProcess` is today's one-process run; :class:`DataParallel` is one rank of a
process group, with the model wrapped by FSDP2 (``fully_shard``: parameters, gradients and
optimizer state sharded across ranks) or DDP (replicated, gradients all-reduced).

The batch size stays global: every optimizer step sees ``batch_size * grad_accum`` sequences
whatever the number of processes: rank ``r`` of ``n`` reads the ``r``-th block of
``batch_size / n`` rows of the batch the one-process run reads, so a run on 2 processes computes
the same losses as on 1, up to the order of floating-point sums.

Mixed precision is the single-GPU trainer's bf16 autocast with fp32 parameters, all-gathers and
gradient reductions: the numbers match a one-GPU run, and TTT-E2E's fast weights (expanded per
sequence from the parameters inside the forward) keep fp32 updates.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from harness.api.device import resolve_device
from harness.api.errors import ConfigError, check_choice
from harness.api.interface import LCModel

STRATEGIES = ("fsdp", "ddp")
PARALLEL_CHOICES = ("auto", "none", *STRATEGIES)


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or a process on its own: the one that reports."""
    return os.environ.get("RANK", "0") == "0"


def resolve_parallel(parallel: str) -> str:
    """``auto``: FSDP2 under torchrun with more than one process, else none."""
    check_choice("parallel", parallel, PARALLEL_CHOICES)
    if parallel != "auto":
        return parallel
    return "fsdp" if launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1 else "none"


class Replicas:
    """What the trainer needs from "one or many processes": the device, its rank's share of a
    batch, the model call that keeps gradients in sync, sums over ranks."""

    rank: int = 0
    world_size: int = 1
    device: torch.device
    in_process_group = False  # then checkpoints are sharded (every rank writes its part)

    @property
    def is_main(self) -> bool:  # logs, progress bars and shared files
        return self.rank == 0

    def wrap(self, model: LCModel) -> Callable[[torch.Tensor], torch.Tensor]:
        """Prepare ``model`` in place; returns the call giving a batch's training loss (its
        ``token_losses`` stays callable for validation)."""
        return model.training_loss

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        return batch

    def no_grad_sync(self, runner: Callable, skip: bool) -> contextlib.AbstractContextManager:
        """Within it, backward passes do not synchronise gradients (accumulation micro-steps)."""
        return contextlib.nullcontext()

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        return values

    def mean(self, value: float) -> float:
        """The mean of a number over the ranks."""
        return value


class SingleProcess(Replicas):
    def __init__(self, device: str):
        self.device = resolve_device(device)


class DataParallel(Replicas):
    """This process as one rank of a torchrun launch (the process group is created here)."""

    in_process_group = True

    def __init__(self, strategy: str, device: str, timeout_s: float = 600.0):
        check_choice("parallel", strategy, STRATEGIES)
        if not launched_by_torchrun():
            raise ConfigError(
                f"parallel={strategy!r} needs a process group: launch with "
                "`torchrun --nproc_per_node=N --no-python lcbench train ...` (or use parallel='none')"
            )
        self.strategy = strategy
        self.rank, self.world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        requested = resolve_device(device)
        if requested.index is not None:  # torchrun gave each rank its own GPU
            raise ConfigError(f"device {device!r} names one GPU, but under torchrun each rank uses "
                              f"cuda:LOCAL_RANK; give device 'cuda' (or 'auto')")
        device_type = requested.type
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
            self.device = torch.device("cuda", local_rank)
        else:
            self.device = torch.device("cpu")
        if not dist.is_initialized():  # kept for the process's life: torchrun's store allows one
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo",
                                    timeout=datetime.timedelta(seconds=timeout_s))

    def wrap(self, model: LCModel) -> Callable[[torch.Tensor], torch.Tensor]:
        if self.strategy == "ddp":
            return nn.parallel.DistributedDataParallel(_TokenLosses(model))
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        for unit in model.shard_units():  # each its own all-gather, freed after its forward
            fully_shard(unit)
        fully_shard(model)
        # training_loss and validation call token_losses, not forward: it gathers the root unit
        register_fsdp_forward_method(model, "token_losses")
        return model.training_loss

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        if len(batch) % self.world_size:
            raise ConfigError(f"a batch of {len(batch)} rows does not split evenly over {self.world_size} processes")
        per_rank = len(batch) // self.world_size
        return batch[self.rank * per_rank : (self.rank + 1) * per_rank]

    def no_grad_sync(self, runner: Callable, skip: bool) -> contextlib.AbstractContextManager:
        if not skip:
            return contextlib.nullcontext()
        if self.strategy == "ddp":
            return runner.no_sync()
        return _fsdp_gradient_sync_off(runner.__self__)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        values = values.detach().clone()
        dist.all_reduce(values)
        return values

    def mean(self, value: float) -> float:
        return self.sum(torch.tensor(value, dtype=torch.float64, device=self.device)).item() / self.world_size


class _TokenLosses(nn.Module):
    """DDP synchronises gradients of what runs through its ``forward``: this forward is the loss."""

    def __init__(self, model: LCModel):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.training_loss(tokens)


@contextlib.contextmanager
def _fsdp_gradient_sync_off(model: nn.Module) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def shutdown() -> None:
    """End this process's part in the process group (once, when it has nothing left to run)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def start(parallel: str, device: str) -> Replicas:
    """The replicas of this run: ``parallel`` is auto | none | fsdp | ddp."""
    strategy = resolve_parallel(parallel)
    return SingleProcess(device) if strategy == "none" else DataParallel(strategy, device)


@dataclass
class RankShare:
    """Rows of a batch that one rank computes, and their weight in the batch's mean (an empty
    share still runs one row, weight 0, so that every rank takes part in every collective)."""

    rows: torch.Tensor
    weight: int


def share_of(replicas: Replicas, batch: torch.Tensor) -> RankShare:
    if replicas.world_size == 1:
        return RankShare(batch, len(batch))
    part = torch.tensor_split(batch, replicas.world_size)[replicas.rank]
    return RankShare(part, len(part)) if len(part) else RankShare(batch[:1], 0)
