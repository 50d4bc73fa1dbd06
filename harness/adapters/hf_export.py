"""Export an lcbench checkpoint as a Hugging Face model folder (``lcbench export-hf``).

The folder holds ``config.json`` (transformers' fields, ``auto_map`` to the modeling file, and the
lcbench config under ``lcbench``), ``model.safetensors`` (the model's tensors under ``model.``),
``modeling_lcbench.py`` (one import: the classes live in :mod:`harness.adapters.hf_model`, so
lcbench must be installed where the folder is loaded) and the tokenizer's files, with BOS/EOS
tokens. ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` loads it, and
lm-eval's hf model runs it (``--model hf --model_args pretrained=FOLDER,trust_remote_code=True``).

An export into a folder that holds an earlier one replaces exactly the files that one wrote (listed
in ``lcbench_export.json``): a file of the earlier tokenizer's that the new one does not write
(a chat template) lingered, and the folder loaded as a mix of the two. Files the user added stay.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import safetensors.torch

from harness.adapters.hf_model import LcbenchConfig
from harness.adapters.hf_tokenizer import export_tokenizer
from harness.api.errors import ConfigError
from harness.api.staging import clear_stale, own_files, prepare_output, temp_prefix
from harness.data.heldout import checkpoint_tokenizer
from harness.data.tokenizers import auto_tokenizer, load_tokenizer
from harness.runs.evaluate import resolve_model
from harness.train.checkpoint import HF_PREFIX, WEIGHTS_FILE

MODELING_FILE = "modeling_lcbench.py"
EXPORT_FILE = "lcbench_export.json"  # what was exported, from where, and the files written
MODELING_SOURCE = '''"""An lcbench model for transformers' Auto classes (trust_remote_code); needs lcbench installed."""
from harness.adapters.hf_model import LcbenchConfig, LcbenchForCausalLM

__all__ = ["LcbenchConfig", "LcbenchForCausalLM"]
'''
AUTO_MAP = {"AutoConfig": "modeling_lcbench.LcbenchConfig",
            "AutoModelForCausalLM": "modeling_lcbench.LcbenchForCausalLM"}


def export_hf(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, tokenizer: str | None = None) -> Path:
    """Write ``checkpoint`` (a checkpoint folder, or ``arch[:preset]``) as a Hugging Face model
    folder ``out_dir``; ``tokenizer`` defaults to the checkpoint's own. Returns the folder."""
    model, info = resolve_model(checkpoint, device="cpu", dtype="float32")
    tok = load_tokenizer(tokenizer if tokenizer is not None else checkpoint_tokenizer(info))
    if tok.vocab_size > model.config.vocab_size:
        raise ConfigError(f"tokenizer {tok.name!r} has {tok.vocab_size} tokens but the model's vocab_size is "
                          f"{model.config.vocab_size}; pass the tokenizer the model was trained with")
    out = Path(out_dir)
    earlier = _earlier_export(out)
    clear_stale(out.parent)  # what an export killed earlier left beside this one
    stage = Path(tempfile.mkdtemp(prefix=temp_prefix(out), dir=out.parent))
    try:
        special = _special_tokens(export_tokenizer(tok, stage))
        config = LcbenchConfig(lcbench=model.config.to_dict(), architectures=["LcbenchForCausalLM"],
                               auto_map=AUTO_MAP, dtype="float32", **special)
        config.save_pretrained(str(stage))
        # every name, tied ones included, so that no tensor of the model is left to be initialised
        tensors = {HF_PREFIX + name: t.detach().contiguous().clone() for name, t in model.state_dict().items()}
        safetensors.torch.save_file(tensors, str(stage / WEIGHTS_FILE), metadata={"format": "pt"})
        (stage / MODELING_FILE).write_text(MODELING_SOURCE)
        record = {"source": str(checkpoint), "model": info.name, "arch": info.arch, "tokenizer": tok.name}
        _replace_export(stage, out, earlier, record)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out


def _earlier_export(out: Path) -> list[str]:
    """The files of the export in ``out`` (none when ``out`` is absent or empty), which the new
    export replaces; a folder that holds someone else's files, or an export that did not list its
    files (lcbench before it did), is refused."""
    out = prepare_output(out, "export folder")
    names = sorted(p.name for p in out.iterdir())
    if not names:
        return []
    record = _read_record(out / EXPORT_FILE)
    if record is None:
        raise ConfigError(f"cannot export to {str(out)!r}: the folder holds files lcbench did not export "
                          f"({', '.join(names[:5])}); choose another folder")
    if not isinstance(record.get("files"), list):
        raise ConfigError(f"cannot export to {str(out)!r}: the export there does not list the files it wrote "
                          "(an older lcbench made it), so they cannot be told from yours; remove that folder or "
                          "choose another")
    return [str(name) for name in record["files"]]


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _replace_export(stage: Path, out: Path, earlier: list[str], record: dict[str, Any]) -> None:
    """Move the export written in ``stage`` into ``out`` in place of the ``earlier`` one's files.
    The record lists both exports' files while they are swapped, so an export killed midway
    leaves a folder whose next export still removes every file of either."""
    staged = sorted(p.name for p in stage.iterdir())  # the record is written last, below
    new = [*staged, EXPORT_FILE]
    theirs = sorted(name for name in new if (out / name).exists() and name not in earlier)
    if theirs:  # a file the user put beside the earlier export, under a name this one writes
        raise ConfigError(f"cannot export to {str(out)!r}: the export would replace {', '.join(theirs)}, which "
                          "no earlier export there wrote; move it away or choose another folder")

    def write_record(files: list[str]) -> None:
        (stage / EXPORT_FILE).write_text(json.dumps({**record, "files": sorted(files)}, indent=2) + "\n")
        os.replace(stage / EXPORT_FILE, out / EXPORT_FILE)

    write_record(list(set(earlier) | set(new)))
    for path in own_files(out, sorted(set(earlier) - set(new))):
        path.unlink()
    for name in staged:
        os.replace(stage / name, out / name)
    write_record(new)


def _special_tokens(folder: Path) -> dict[str, Any]:
    hf = auto_tokenizer(folder)
    if hf.eos_token_id is None:
        raise ConfigError(f"the tokenizer in {str(folder)!r} has no end token (eos_token): lm-eval's hf model "
                          "needs one; give a tokenizer that defines it")
    bos = hf.bos_token_id if hf.bos_token_id is not None else hf.eos_token_id  # lm-eval's prefix rule
    return {"bos_token_id": int(bos), "eos_token_id": int(hf.eos_token_id)}
