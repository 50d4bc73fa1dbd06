"""What every importer shares: reading tensors, assigning them by name with a full report of what
does not fit, and writing the result as an lcbench checkpoint."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, Union

import torch
from safetensors import SafetensorError

from harness.api.errors import CheckpointError, ConfigError, listing
from harness.api.interface import LCModel
from harness.data.tokenizers import TOKENIZER_DIR
from harness.train.checkpoint import is_checkpoint, save_checkpoint

T = TypeVar("T")

IMPORT_FILE = "import.json"
# Files that make up a Hugging Face tokenizer (copied next to an imported checkpoint).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja")


class ImportMismatchError(CheckpointError):
    """The source's tensors do not fit the model built from its config."""


class ImportedCheckpointWarning(UserWarning):
    """An import filled something in that the user may not expect (bytes for a tokenizer,
    official defaults for settings the config lacks)."""


@dataclass(frozen=True)
class From:
    """Our tensor comes from source tensor ``name``, passed through ``transform`` (a slice, a
    transpose) before its shape is checked."""

    name: str
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    note: str = ""


@dataclass(frozen=True)
class Fill:
    """Our tensor has no counterpart in the source and is set to ``value`` (e.g. zeros for a
    sublayer the source does not have, which then adds nothing)."""

    value: float
    why: str


Source = Union[str, From, Fill]


def unique_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our state dict without aliases (a tied LM head is the embedding: it is set once)."""
    out, seen = {}, set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        out[name] = tensor
    return out


def _listing(items: list[str], limit: int = 25) -> str:
    shown = "\n".join(f"  - {item}" for item in items[:limit])
    return shown + (f"\n  ... and {len(items) - limit} more" if len(items) > limit else "")


def assign_weights(
    model: LCModel,
    tensors: Mapping[str, torch.Tensor],
    source_of: Callable[[str], Source | None],
    where: str,
    ignore: Callable[[str], bool] = lambda name: False,
) -> dict[str, str]:
    """Set every tensor of ``model`` from ``tensors``; ``source_of(our_name)`` says where each one
    comes from. Collects every problem before failing, and fails with one
    :class:`ImportMismatchError` listing each of our tensors without a source, each source tensor
    that is missing or has the wrong shape, and each source tensor left unused (``ignore`` exempts
    buffers such as RoPE tables). Returns {our name: what it came from}."""
    targets = unique_tensors(model)
    values: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    no_rule, missing, mismatched, used = [], [], [], set()
    for ours, target in targets.items():
        src = source_of(ours)
        if src is None:
            no_rule.append(f"{ours} {list(target.shape)}")
            continue
        if isinstance(src, Fill):
            values[ours] = torch.full_like(target, src.value)
            origin[ours] = f"filled with {src.value:g} ({src.why})"
            continue
        src = From(src) if isinstance(src, str) else src
        if src.name not in tensors:
            missing.append(f"{src.name} (for {ours} {list(target.shape)})")
            continue
        used.add(src.name)
        value = tensors[src.name]
        if src.transform is not None:
            value = src.transform(value)
        if tuple(value.shape) != tuple(target.shape):
            what = f"{src.name}{' ' + src.note if src.note else ''}"
            mismatched.append(f"{what}: {list(value.shape)} in the source, {list(target.shape)} expected by {ours}")
            continue
        values[ours] = value
        origin[ours] = src.name + (f" ({src.note})" if src.note else "")
    unused = sorted(n for n in tensors if n not in used and not ignore(n))
    if no_rule or missing or mismatched or unused:
        parts = [f"{where} does not fit a {model.config.arch} model built from its config:"]
        if missing:
            parts.append(f"missing tensors ({len(missing)}):\n{_listing(missing)}")
        if mismatched:
            parts.append(f"tensors with the wrong shape ({len(mismatched)}):\n{_listing(mismatched)}")
        if unused:
            parts.append(f"tensors this import does not recognise ({len(unused)}):\n"
                         f"{_listing([f'{n} {list(tensors[n].shape)}' for n in unused])}")
        if no_rule:
            parts.append(f"model tensors no source tensor maps to ({len(no_rule)}):\n{_listing(no_rule)}")
        raise ImportMismatchError("\n".join(parts))
    with torch.no_grad():
        for ours, value in values.items():
            targets[ours].copy_(torch.as_tensor(value).to(dtype=targets[ours].dtype, device=targets[ours].device))
    return origin


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc


def read_weight_file(path: Path, read: Callable[[Path], T]) -> T:
    """``read(path)``; a file its reader cannot parse (truncated, another format under the name, a
    Git LFS pointer) is bad input naming the file, not the reader's traceback."""
    try:
        return read(path)
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile,
            SafetensorError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(f"{path} cannot be read as weights ({type(exc).__name__}: {first}); is the file complete "
                              "(not a Git LFS pointer or a cut-off download)?") from exc


def check_import_out(out_dir: str | os.PathLike) -> None:
    """Refuse an output folder holding a checkpoint that no import wrote: saving replaces the whole
    folder, and a trained checkpoint's optimizer state and training record would go with it (an
    earlier import there is replaced, as rerunning an import means)."""
    out = Path(out_dir)
    if is_checkpoint(out) and not (out / IMPORT_FILE).is_file():
        raise ConfigError(f"output folder {str(out)!r} already holds a checkpoint that was not imported (one "
                          "`lcbench train` wrote, say), which the import would replace; choose another folder")


def check_tokenizer_folder(folder: str | os.PathLike) -> None:
    """A tokenizer folder given on purpose must hold one (:func:`copy_tokenizer` skips a folder
    without, and the checkpoint would then be read with bytes)."""
    path = Path(folder)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(f"tokenizer folder {str(path)!r} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
                          f"it holds {listing(path)}")


def copy_tokenizer(source: Path, out_dir: Path) -> Path | None:
    """Copy a Hugging Face tokenizer's files from ``source`` to ``out_dir/tokenizer``."""
    files = [source / name for name in TOKENIZER_FILES if (source / name).is_file()]
    if not files:
        return None
    target = out_dir / TOKENIZER_DIR
    target.mkdir(parents=True, exist_ok=True)
    for file in files:
        shutil.copy2(file, target / file.name)
    return target


def save_imported(model: LCModel, out_dir: str | os.PathLike, record: Mapping[str, Any],
                  tokenizer_from: str | os.PathLike | None = None) -> Path:
    """Write ``model`` as an lcbench checkpoint, the source's tokenizer (if any) under
    ``tokenizer/``, and ``import.json`` (``record``: source, format, tensor origins)."""
    out = save_checkpoint(out_dir, model)
    tokenizer = copy_tokenizer(Path(tokenizer_from), out) if tokenizer_from is not None else None
    if tokenizer is None:  # every later command would read the checkpoint's text as bytes
        where = f"in {str(tokenizer_from)!r}" if tokenizer_from is not None else "given"
        warnings.warn(f"{str(out)!r}: no tokenizer {where}, so lcbench reads this checkpoint's text as bytes, "
                      f"which fits only a model trained on bytes (its vocabulary: {model.config.vocab_size}); copy "
                      f"the model's tokenizer files into {str(out / TOKENIZER_DIR)!r} or pass --tokenizer to each "
                      "command", ImportedCheckpointWarning, stacklevel=3)
    record = {**record, "tokenizer": str(tokenizer.relative_to(out)) if tokenizer else None}
    (out / IMPORT_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return out


def check(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise ImportMismatchError(f"{where}: {message}")


def require_values(config: Mapping[str, Any], where: str, expected: Iterable[tuple[str, Any, str]]) -> None:
    """Each (key, allowed value or tuple of values, why) must hold in ``config`` (absent keys take
    the first allowed value); collects every violation into one error."""
    bad = []
    for key, allowed, why in expected:
        options = allowed if isinstance(allowed, tuple) else (allowed,)
        value = config.get(key, options[0])
        if value not in options:
            want = " or ".join(repr(o) for o in options)
            bad.append(f"{key}={value!r} (supported: {want}; {why})")
    if bad:
        raise ImportMismatchError(f"{where} uses settings our architecture does not implement:\n{_listing(bad)}")
