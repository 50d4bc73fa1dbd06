"""Sharded training checkpoints (torch.distributed.checkpoint) for runs on many processes.

A sharded checkpoint is the ordinary checkpoint folder (``config.json``, ``trainer.json``,
``checksums.json``) with the weights and optimizer state in ``sharded/`` instead of
``model.safetensors`` + ``optimizer.pt``: every rank writes its own shards, and the metadata
records each tensor's global shape, so the folder resumes on any number of processes (DCP
reshards on load) and loads in a plain single process for evaluation. Every shard file is
checksummed like the one-process files, and verified before a load.

Saves are atomic as the one-process ones are: all ranks write into one temporary sibling folder
that rank 0 renames into place after every rank has finished, so a rank that dies mid-save
leaves the previous checkpoint intact.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from harness.api.errors import CheckpointError
from harness.api.interface import LCModel
from harness.api.staging import clear_stale, temp_prefix
from harness.train import checkpoint


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _shared_temp_folder(path: Path) -> Path:
    """A fresh sibling of ``path`` made by rank 0 under a unique name every rank receives; the
    name carries rank 0's process, so once that is gone a later save clears what it left."""
    name = [None]
    if _is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        clear_stale(path.parent)  # what a save killed earlier left beside this one
        name[0] = tempfile.mkdtemp(prefix=temp_prefix(path), dir=path.parent)
    if dist.is_initialized():
        dist.broadcast_object_list(name, src=0)
    return Path(name[0])


def save(path: str | os.PathLike, model: LCModel, optimizer: torch.optim.Optimizer,
         trainer_state: dict[str, Any]) -> Path:
    """Collective: every rank calls it with its (sharded or replicated) model and optimizer."""
    path = Path(path)
    checkpoint.check_replaceable(path)
    tmp = _shared_temp_folder(path)
    try:
        model_state, optim_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp / checkpoint.SHARDED_DIR))
        if _is_main():  # dcp.save returns on every rank once all shards and the metadata are written
            (tmp / checkpoint.CONFIG_FILE).write_text(model.config.to_json())
            (tmp / checkpoint.TRAINER_FILE).write_text(json.dumps(trainer_state, indent=2))
            shards = sorted(f.relative_to(tmp).as_posix() for f in (tmp / checkpoint.SHARDED_DIR).iterdir())
            checkpoint.write_checksums(tmp, shards)
            checkpoint.replace_dir(tmp, path)
    except BaseException:
        if _is_main():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    _barrier()  # no rank goes on (or exits) before the checkpoint is in place
    return path


def load(path: str | os.PathLike, model: LCModel, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Load weights (and optimizer state) into ``model`` as it is now laid out: sharded by
    FSDP2 across this process group, replicated, or whole in one process."""
    checkpoint.verify_shards(path)
    shards = Path(path) / checkpoint.SHARDED_DIR
    if optimizer is None:
        state = {"model": model.state_dict()}
        _check_tensors(shards, state["model"], model.config.arch)
        _read(shards, state)
        model.load_state_dict(state["model"])
        return
    model_state, optim_state = get_state_dict(model, optimizer)
    _check_tensors(shards, model_state, model.config.arch)
    state = {"model": model_state, "optim": optim_state}
    _read(shards, state)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def _check_tensors(shards: Path, model_state: dict[str, Any], arch: str) -> None:
    """Name every missing, unexpected or misshapen tensor, as a one-process load does: DCP reads
    only the tensors asked for, so a saved one the model lacks (a config of fewer layers) went unsaid."""
    try:
        saved = {key.removeprefix("model."): meta
                 for key, meta in dcp.FileSystemReader(str(shards)).read_metadata().state_dict_metadata.items()
                 if key.startswith("model.")}
    except Exception as exc:  # no or a damaged .metadata (a checkpoint without checksums)
        raise CheckpointError(f"sharded checkpoint {str(shards)!r} cannot be read: {_first_line(exc)}") from exc
    missing, unexpected = sorted(set(model_state) - set(saved)), sorted(set(saved) - set(model_state))
    if missing or unexpected:
        raise CheckpointError(f"sharded checkpoint {str(shards)!r} does not match the {arch} model: "
                              f"missing tensors {missing}, unexpected tensors {unexpected}")
    misfits = [f"{key} saved {tuple(saved[key].size)}, model {tuple(value.shape)}" for key, value in model_state.items()
               if hasattr(saved[key], "size") and tuple(saved[key].size) != tuple(value.shape)]
    if misfits:
        raise CheckpointError(f"sharded checkpoint {str(shards)!r} does not fit a {arch} model with this config: "
                              + "; ".join(misfits[:3]) + ("; ..." if len(misfits) > 3 else ""))


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, CheckpointException) and exc.failures:  # the first failed rank's own error
        exc = next(iter(exc.failures.values()))[0]
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _read(shards: Path, state: dict[str, Any]) -> None:
    try:
        with warnings.catch_warnings():  # a load in one process is what we ask for, not a fallback
            warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
            dcp.load(state, checkpoint_id=str(shards), no_dist=not dist.is_initialized())
    # DCP wraps every rank's reader errors in CheckpointException, a BaseException: `except Exception`
    # let a checkpoint that does not fit the model out as a page of DCP traceback
    except (Exception, CheckpointException) as exc:
        raise CheckpointError(
            f"sharded checkpoint {str(shards)!r} cannot be loaded into this model: {_first_line(exc)}") from exc
