"""Export an lcbench checkpoint as a Hugging Face model folder (``lcbench export-hf``).

The folder holds ``config.json`` (transformers' fields, ``auto_map`` to the modeling file, and the
lcbench config under ``lcbench``), ``model.safetensors`` (the model's tensors under ``model.``),
``modeling_lcbench.py`` (one import: the classes live in :mod:`harness.adapters.hf_model`, so
lcbench must be installed where the folder is loaded) and the tokenizer's files, with BOS/EOS
tokens. ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` loads it, and
lm-eval's hf model runs it (``--model hf --model_args pretrained=FOLDER,trust_remote_code=True``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import safetensors.torch

from harness.adapters.hf_model import LcbenchConfig
from harness.adapters.hf_tokenizer import export_tokenizer
from harness.api.errors import ConfigError
from harness.api.staging import prepare_output
from harness.data.heldout import checkpoint_tokenizer
from harness.data.tokenizers import auto_tokenizer, load_tokenizer
from harness.runs.evaluate import resolve_model
from harness.train.checkpoint import HF_PREFIX, WEIGHTS_FILE

MODELING_FILE = "modeling_lcbench.py"
EXPORT_FILE = "lcbench_export.json"  # what was exported, from where
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
    out = _export_folder(Path(out_dir))
    special = _special_tokens(export_tokenizer(tok, out))
    config = LcbenchConfig(lcbench=model.config.to_dict(), architectures=["LcbenchForCausalLM"], auto_map=AUTO_MAP,
                           dtype="float32", **special)
    config.save_pretrained(str(out))
    # every name, tied ones included, so that no tensor of the model is left to be initialised
    tensors = {HF_PREFIX + name: t.detach().contiguous().clone() for name, t in model.state_dict().items()}
    safetensors.torch.save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    (out / MODELING_FILE).write_text(MODELING_SOURCE)
    (out / EXPORT_FILE).write_text(json.dumps({"source": str(checkpoint), "model": info.name, "arch": info.arch,
                                               "tokenizer": tok.name}, indent=2) + "\n")
    return out


def _export_folder(out: Path) -> Path:
    """``out`` made ready for an export: absent, empty or an earlier export, never someone's files."""
    if out.is_dir() and any(out.iterdir()) and not (out / EXPORT_FILE).is_file():
        shown = ", ".join(sorted(p.name for p in out.iterdir())[:5])
        raise ConfigError(f"cannot export to {str(out)!r}: the folder holds files lcbench did not export ({shown}); "
                          "choose another folder")
    return prepare_output(out, "export folder")


def _special_tokens(folder: Path) -> dict[str, Any]:
    hf = auto_tokenizer(folder)
    if hf.eos_token_id is None:
        raise ConfigError(f"the tokenizer in {str(folder)!r} has no end token (eos_token): lm-eval's hf model "
                          "needs one; give a tokenizer that defines it")
    bos = hf.bos_token_id if hf.bos_token_id is not None else hf.eos_token_id  # lm-eval's prefix rule
    return {"bos_token_id": int(bos), "eos_token_id": int(hf.eos_token_id)}
