"""Our tokenizers as Hugging Face tokenizer folders, for tools that load one with
``transformers.AutoTokenizer.from_pretrained(folder)`` (lm-eval's RULER tasks size their prompts
that way).

The byte tokenizer becomes a ``tokenizers`` BPE model over the 256-symbol ByteLevel alphabet with
no merges, a ByteLevel pre-tokenizer (no prefix space) and a ByteLevel decoder. Its vocabulary is
ordered by byte value, so token ids equal UTF-8 bytes: ``AutoTokenizer`` on the folder encodes any
text exactly as :class:`harness.data.ByteTokenizer` does, and decodes it back. Its BOS and EOS
token is the newline byte, the token lcbench's byte-level models start a document from; tools
that need both (lm-eval's hf model) then work, and nothing is added when text is encoded.

Needs the ``tokenizers`` and ``transformers`` packages (the ``lm-eval`` extra).
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

from harness.api.errors import ConfigError
from harness.data import ByteTokenizer, HFTokenizer, Tokenizer, load_tokenizer
from harness.data.tokenizers import auto_tokenizer

MARKER_FILE = "lcbench_tokenizer.json"  # what was exported, so a later export can be reused


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, the one ByteLevel uses."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def byte_level_tokenizer():
    """A ``tokenizers.Tokenizer`` whose ids are the UTF-8 bytes of the text."""
    try:
        from tokenizers import Tokenizer as RustTokenizer
        from tokenizers import decoders, models, pre_tokenizers
    except ImportError:
        raise ConfigError("exporting a tokenizer needs the 'tokenizers' package; pip install tokenizers") from None
    vocab = {char: byte for byte, char in bytes_to_unicode().items()}
    tok = RustTokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def _fast_tokenizer(tokenizer_object, **kwargs):
    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError:
        raise ConfigError("exporting a tokenizer needs the 'transformers' package; pip install transformers") from None
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer_object, **kwargs)


def export_tokenizer(tokenizer: Tokenizer | str | None, out_dir: str | os.PathLike) -> Path:
    """Write ``tokenizer`` (a :class:`Tokenizer`, or a spec for :func:`load_tokenizer`) as a folder
    that ``AutoTokenizer.from_pretrained`` loads offline; returns the folder.

    An export already in ``out_dir`` for the same tokenizer is reused.
    """
    if not isinstance(tokenizer, (ByteTokenizer, HFTokenizer)):
        tokenizer = load_tokenizer(tokenizer) if tokenizer is None or isinstance(tokenizer, str) else tokenizer
    out = Path(out_dir)
    marker = {"tokenizer": tokenizer.name, "format": 3}  # 3: a tokenizer.json's BOS/EOS are kept
    if (out / MARKER_FILE).is_file() and _read_json(out / MARKER_FILE) == marker:
        return out
    if isinstance(tokenizer, ByteTokenizer):
        newline = bytes_to_unicode()[ord("\n")]
        fast = _fast_tokenizer(byte_level_tokenizer(), model_max_length=int(1e30), bos_token=newline, eos_token=newline)
    elif isinstance(tokenizer, HFTokenizer) and tokenizer.path.is_dir():  # already a folder: copy it
        fast = auto_tokenizer(tokenizer.path)
    elif isinstance(tokenizer, HFTokenizer):  # a tokenizer.json file
        from tokenizers import Tokenizer as RustTokenizer  # optional; HFTokenizer loaded this file with it

        rust = RustTokenizer.from_file(str(tokenizer.path))
        # the file does not name its start and end tokens; lcbench found them (post-processor, eos candidates)
        special = {f"{kind}_token": rust.id_to_token(tid)
                   for kind, tid in (("bos", tokenizer.bos_id), ("eos", tokenizer.eos_id)) if tid is not None}
        fast = _fast_tokenizer(rust, **special)
    else:
        raise ConfigError(
            f"cannot export {tokenizer!r} as a Hugging Face tokenizer: only the byte tokenizer and "
            "Hugging Face tokenizers can be exported (give a tokenizer folder directly instead)"
        )
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    (out / MARKER_FILE).write_text(json.dumps(marker))
    return out


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
