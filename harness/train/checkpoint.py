"""Checkpoints: a folder with ``config.json`` (the model config), ``model.safetensors`` (weights)
and, for training runs, ``trainer.json`` (step, train config, history) + ``optimizer.pt``;
``checksums.json`` holds the sha256 of the binary files (weights, optimizer state). The JSON
files are left unchecksummed: people edit them by hand, and their parsing reports damage.
Runs on many processes write the weights and optimizer state as shards in ``sharded/`` instead
(:mod:`harness.train.sharded`, every shard checksummed); every reader here accepts both.

A Hugging Face export (``lcbench export-hf``) loads as a checkpoint too: its ``config.json``
holds the model config under ``lcbench`` and its tensors are named ``model.<our name>``.

Writes are atomic: everything goes to a temporary sibling folder that replaces the old one by
rename, so an interrupted save leaves the previous checkpoint intact. A save replaces only a
folder that lcbench wrote (it has ``checksums.json``, or holds nothing but checkpoint files) or
an empty one: a user's folder is never deleted. Loads verify the checksums, so a damaged file
gives a :class:`CheckpointError` instead of silently wrong weights (checkpoints written before
checksums existed, or by hand, load unverified).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from harness.api.errors import CheckpointError, LcbenchError, missing_path_error
from harness.api.interface import LCModel
from harness.api.registry import build_model, config_from_dict
from harness.api.staging import clear_stale, temp_prefix

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TRAINER_FILE = "trainer.json"
OPTIMIZER_FILE = "optimizer.pt"
CHECKSUMS_FILE = "checksums.json"
CHECKSUMMED = (WEIGHTS_FILE, OPTIMIZER_FILE)
CHECKPOINT_FILES = (CONFIG_FILE, WEIGHTS_FILE, TRAINER_FILE, OPTIMIZER_FILE, CHECKSUMS_FILE)
SHARDED_DIR = "sharded"  # torch.distributed.checkpoint's folder: weights and optimizer state of every rank
_HASH_CHUNK = 1 << 22
HF_MODEL_TYPE = "lcbench"  # an export's config.json: {"model_type": "lcbench", "lcbench": {our config}, ...}
HF_PREFIX = "model."  # an export's tensor names: the model is the ``model`` attribute of transformers' class


def is_sharded(path: str | os.PathLike) -> bool:
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / SHARDED_DIR / ".metadata").is_file()


MAX_NAMED = 4  # checkpoints below a folder that an error names (a sweep folder given as a checkpoint)


def is_checkpoint(path: str | os.PathLike) -> bool:
    path = Path(path)
    return ((path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()) or is_sharded(path)


def save_checkpoint(
    path: str | os.PathLike,
    model: LCModel,
    optimizer: torch.optim.Optimizer | None = None,
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    path = Path(path)
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_stale(path.parent)  # what a save killed earlier left beside this one
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path), dir=path.parent))
    try:
        (tmp / CONFIG_FILE).write_text(model.config.to_json())
        safetensors.torch.save_model(model, str(tmp / WEIGHTS_FILE), metadata={"arch": model.config.arch})
        if trainer_state is not None:
            (tmp / TRAINER_FILE).write_text(json.dumps(trainer_state, indent=2))
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        write_checksums(tmp, [name for name in CHECKSUMMED if (tmp / name).is_file()])
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def check_replaceable(path: Path) -> None:
    """Raise :class:`CheckpointError` unless ``path`` is absent, an empty folder, or a checkpoint
    lcbench wrote: saving replaces the whole folder, and a user's files must never go with it."""
    if not path.exists():
        return
    if not path.is_dir():
        raise CheckpointError(f"cannot save a checkpoint to {str(path)!r}: it is a file, not a folder")
    names = {p.name for p in path.iterdir()}
    if names and CHECKSUMS_FILE not in names and not (is_checkpoint(path) and names <= set(CHECKPOINT_FILES)):
        shown = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
        raise CheckpointError(f"cannot save a checkpoint to {str(path)!r}: the folder holds files lcbench did not "
                              f"write ({shown}); choose another folder")


def write_checksums(folder: Path, names: list[str]) -> None:
    """``checksums.json`` of ``folder``: the sha256 of each of its files ``names`` (relative paths)."""
    (folder / CHECKSUMS_FILE).write_text(json.dumps({name: file_sha256(folder / name) for name in names}, indent=2))


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: str | os.PathLike, name: str) -> None:
    """Raise :class:`CheckpointError` if file ``name`` of checkpoint ``path`` does not match the
    sha256 recorded at save (nothing to check when the checkpoint has no checksums)."""
    _check_file(Path(path), name, _recorded_checksums(Path(path)).get(name))


def verify_shards(path: str | os.PathLike) -> None:
    """:func:`verify` every shard file a sharded checkpoint recorded a checksum for."""
    for name, expected in _recorded_checksums(Path(path)).items():
        if name.startswith(f"{SHARDED_DIR}/"):
            _check_file(Path(path), name, expected)


def _recorded_checksums(path: Path) -> dict[str, str]:
    sums_file = path / CHECKSUMS_FILE
    if not sums_file.is_file():
        return {}
    try:
        sums = json.loads(sums_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{sums_file} is damaged ({exc}); the checkpoint cannot be verified") from exc
    if not isinstance(sums, dict):
        raise CheckpointError(f"{sums_file} is damaged (not a mapping); the checkpoint cannot be verified")
    return sums


def _check_file(path: Path, name: str, expected: str | None) -> None:
    if expected is not None and (path / name).is_file() and file_sha256(path / name) != expected:
        raise CheckpointError(f"{path / name} does not match the checksum recorded when it was saved; "
                              "the file is damaged or was replaced")


def content_hash(path: str | os.PathLike) -> str:
    """A sha256 of a checkpoint's config and tensors: what identifies the model it holds,
    wherever the folder is (a checkpoint replaced at the same path gets a new hash)."""
    config = read_config(path)  # a clear error for a folder that is not a checkpoint
    digest = hashlib.sha256(config.to_json().encode())
    for name, tensor in sorted(_tensors(path, config).items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _tensors(path: str | os.PathLike, config) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors by name (the tensors, not the files' bytes: safetensors writes its
    metadata in no fixed order, and shards depend on the number of processes that wrote them)."""
    if _sharded_only(path):
        model = build_model(config)
        load_weights(path, model)
        return model.state_dict()
    verify(path, WEIGHTS_FILE)
    with safetensors.safe_open(str(Path(path) / WEIGHTS_FILE), framework="pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}


def _sharded_only(path: str | os.PathLike) -> bool:
    return is_sharded(path) and not (Path(path) / WEIGHTS_FILE).is_file()


def replace_dir(new: Path, target: Path) -> None:
    old = new.with_name(f"{new.name}.old")  # unique like ``new``: no one else's folder can bear this name
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def read_config(path: str | os.PathLike):
    path = Path(path)
    if not path.exists():  # what its folder holds and the close match, as for a corpus or tokenizer
        raise CheckpointError(str(missing_path_error("checkpoint", path,
                                                     f"a folder holding {CONFIG_FILE} and {WEIGHTS_FILE}")))
    if not path.is_dir():
        raise CheckpointError(f"{str(path)!r} is a file; a checkpoint is a folder holding {CONFIG_FILE} and "
                              f"{WEIGHTS_FILE} (or {SHARDED_DIR}/)")
    if not is_checkpoint(path):
        present = sorted(p.name for p in path.iterdir())
        below = [str(p) for p in sorted(path.glob("*")) + sorted(path.glob("*/*")) if p.is_dir() and is_checkpoint(p)]
        hint = f"; the checkpoints in it: {', '.join(map(repr, below[:MAX_NAMED]))}" if below else ""
        raise CheckpointError(
            f"{str(path)!r} is not an lcbench checkpoint: it needs {CONFIG_FILE} and {WEIGHTS_FILE} "
            f"(or {SHARDED_DIR}/), found {present}{hint}{', ...' if len(below) > MAX_NAMED else ''}"
        )
    try:
        data = json.loads((path / CONFIG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path / CONFIG_FILE} is not valid JSON ({exc}); the checkpoint is corrupted") from exc
    if data.get("model_type") == HF_MODEL_TYPE and isinstance(data.get(HF_MODEL_TYPE), dict):
        data = data[HF_MODEL_TYPE]
    try:
        return config_from_dict(data)
    except LcbenchError as exc:
        raise CheckpointError(f"{path / CONFIG_FILE}: {exc}") from exc


def load_weights(path: str | os.PathLike, model: LCModel) -> None:
    """Load ``model.safetensors`` (or the shards) into ``model``, naming every missing or unexpected tensor."""
    if _sharded_only(path):
        from harness.train import sharded  # late: sharded builds on this module

        sharded.load(path, model)
        return
    file = Path(path) / WEIGHTS_FILE
    verify(path, WEIGHTS_FILE)
    try:
        with safetensors.safe_open(str(file), framework="pt") as f:
            exported = all(name.startswith(HF_PREFIX) for name in f.keys())
        if exported:
            tensors = {k.removeprefix(HF_PREFIX): v for k, v in safetensors.torch.load_file(str(file)).items()}
            missing, unexpected = model.load_state_dict(tensors, strict=False)
        else:
            missing, unexpected = safetensors.torch.load_model(model, str(file), strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise CheckpointError(f"{file} does not fit a {model.config.arch} model with this config: {exc}") from exc
    except Exception as exc:  # safetensors raises its own error types on a damaged file
        raise CheckpointError(f"{file} cannot be read ({type(exc).__name__}: {exc}); the file is corrupted") from exc
    if missing or unexpected:
        raise CheckpointError(
            f"{file} does not match the {model.config.arch} model: "
            f"missing tensors {sorted(missing)}, unexpected tensors {sorted(unexpected)}"
        )


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> LCModel:
    """Rebuild a model from its checkpoint folder."""
    model = build_model(read_config(path))
    load_weights(path, model)
    return model.to(device)


def load_trainer_state(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(trainer.json contents, optimizer state dict or None) of a training checkpoint."""
    path = Path(path)
    if not (path / TRAINER_FILE).is_file():
        raise CheckpointError(f"{str(path)!r} has no {TRAINER_FILE}: it is a weights-only checkpoint and cannot resume training")
    verify(path, OPTIMIZER_FILE)
    try:
        state = json.loads((path / TRAINER_FILE).read_text())
        # onto the CPU: a GPU run's state resumes on any device (load_state_dict moves it to the parameters')
        optim = (torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
                 if (path / OPTIMIZER_FILE).is_file() else None)
    except Exception as exc:
        raise CheckpointError(f"training state in {str(path)!r} cannot be read ({exc}); the checkpoint is corrupted") from exc
    if not isinstance(state, dict):  # hand-edited: readers would fail on .get with a bare error
        raise CheckpointError(f"{path / TRAINER_FILE} is damaged (a JSON {type(state).__name__}, not an object)")
    return state, optim
