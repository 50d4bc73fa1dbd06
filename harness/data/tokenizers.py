"""Tokenizers: bytes by default, or any Hugging Face tokenizer from a local path.

- :class:`ByteTokenizer`: UTF-8 bytes, vocabulary 256, no files;
- :class:`HFTokenizer`: a Hugging Face tokenizer from a local folder or ``tokenizer.json``;
- :func:`load_tokenizer` picks one from a CLI-style spec.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from harness.api.errors import ConfigError, listing, missing_path_error
from harness.data.local import hash_file, missing_package


TOKENIZER_DIR = "tokenizer"  # a checkpoint's own tokenizer folder (an import copies the source's there)


@runtime_checkable
class Tokenizer(Protocol):
    """What the harness needs from a tokenizer. ``name`` identifies it (and keys the caches)."""

    name: str
    vocab_size: int
    eos_id: int | None
    bos_id: int | None  # the start token the tokenizer adds by default (None: it adds none)

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


# Optional fast paths that tokenize_documents uses when a tokenizer has them:
# ``encode_tensor(text) -> 1-D int64 tensor`` and ``encode_batch(texts) -> list[list[int]]``.
# Optional ``decode_text(ids) -> str``: generated text as its library shows it to a reader (the
# lm-eval adapter's answers); without it, ``decode``.


def _as_list(ids: Sequence[int] | torch.Tensor) -> list[int]:
    return ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, no special tokens, no files."""

    name = "byte"
    vocab_size = 256
    eos_id: int | None = None
    bos_id: int | None = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_tensor(self, text: str) -> torch.Tensor:
        """The same ids as :meth:`encode`, as a 1-D int64 tensor, without a Python list."""
        return torch.from_numpy(np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64))

    def decode(self, ids: Sequence[int]) -> str:
        # Ids outside 0..255 (a model with a larger vocabulary) decode as U+FFFD, like bad bytes.
        data = bytes(i if 0 <= i < 256 else 0xFF for i in _as_list(ids))
        return data.decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer()"


_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|eos|>", "[SEP]")

# The files a tokenizer folder is read from (not a checkpoint's weights beside them).
_TOKENIZER_FILES = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab*", "merges*", "*.model",
                    "*.tiktoken", "chat_template*")


CONFIG_FILE = "tokenizer_config.json"


def _tokenizer_files(folder: Path) -> list[Path]:
    return [f for f in folder.iterdir()
            if f.is_file() and any(fnmatch(f.name, pattern) for pattern in _TOKENIZER_FILES)]


def tokenizer_fingerprint(spec: str | os.PathLike[str] | None) -> str:
    """What tokenizer ``spec`` holds: ``byte``, or a short hash of its file (a folder: of its tokenizer
    files), so that what is keyed on it (token caches, a resumed run, a sweep's models) changes when
    a tokenizer is retrained at the same path. A path that does not exist is ``absent:PATH``."""
    if spec is None or spec == ByteTokenizer.name:
        return ByteTokenizer.name
    path = Path(spec).expanduser()
    if not path.exists():
        return f"absent:{path}"
    if path.is_file():  # a tokenizer.json file is read with the tokenizer_config.json beside it (its end token)
        files = [path, *(f for f in [path.with_name(CONFIG_FILE)] if f.is_file() and f != path)]
    else:
        files = sorted(_tokenizer_files(path))
    digest = hashlib.sha256()
    for file in files:
        hash_file(digest, file.name, file)
    return digest.hexdigest()[:16]


def auto_tokenizer(folder: str | os.PathLike[str]) -> Any:
    """``transformers.AutoTokenizer`` on a local folder, offline. AutoTokenizer also reads the
    folder's config.json, whose ``auto_map`` (an lcbench export's modeling_lcbench.py) made
    transformers stop to ask whether to run that code (15 s on a terminal); a tokenizer needs
    none of it. A tokenizer that is itself custom code (its own ``auto_map``) is still asked about."""
    import transformers  # optional: callers say what is missing without it

    config = Path(folder) / CONFIG_FILE
    try:
        custom = "auto_map" in json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        custom = False
    kwargs = {} if custom else {"trust_remote_code": False}
    return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True, **kwargs)


class HFTokenizer:
    """A Hugging Face tokenizer from a local path; nothing is downloaded.

    - a ``.json`` file: loaded with ``tokenizers.Tokenizer.from_file``;
    - a folder: ``transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)``; when
      ``transformers`` is not installed and the folder has a ``tokenizer.json``, that file is
      loaded with ``tokenizers`` instead (``eos_token`` then comes from ``tokenizer_config.json``).

    Text is encoded without special tokens (no BOS/EOS added); ``eos_id`` is the tokenizer's end
    token, if it has one, for use as a document separator (the tokenizer's own, else the first of
    ``_EOS_CANDIDATES`` in its vocabulary, either way it is loaded); ``bos_id`` is the start token
    the tokenizer adds by default (as a Llama tokenizer adds ``<s>``), else None. ``name`` is
    ``hf:PATH@HASH``, the hash of its files (:func:`tokenizer_fingerprint`).
    """

    def __init__(self, path: str | os.PathLike[str]):
        require_tokenizer(path)
        p = Path(path).expanduser()
        self.path = p.resolve()
        # the files' content too: a tokenizer retrained at the same path must not reuse cached ids
        self.name = f"hf:{self.path}@{tokenizer_fingerprint(self.path)}"
        self._hf: Any = None  # transformers tokenizer
        self._tk: Any = None  # tokenizers.Tokenizer
        if p.is_dir():
            try:
                import transformers
            except ImportError:
                transformers = None
            if transformers is not None:
                try:
                    self._hf = auto_tokenizer(self.path)
                    # Whole documents are encoded at once; the limit only matters to the model.
                    self._hf.model_max_length = sys.maxsize
                except Exception as exc:  # noqa: BLE001 - any load failure becomes a user error
                    raise _no_tokenizer_files(p) or ConfigError(
                        f"could not load a tokenizer from folder {str(p)!r} with transformers: "
                        f"{' '.join(str(exc).split())}; the folder holds: {listing(p)}"
                    ) from exc
            elif (p / "tokenizer.json").is_file():
                self._load_json(p / "tokenizer.json")
            else:
                raise _no_tokenizer_files(p) or missing_package(
                    "transformers", f"tokenizer folder {str(p)!r} (it has no tokenizer.json: {listing(p)})"
                )
        else:
            self._load_json(p)
        if self._hf is not None:
            self.vocab_size = int(len(self._hf))
            eos = getattr(self._hf, "eos_token_id", None)
            # a folder holding only a tokenizer.json names no eos_token: look for one as for the file
            self.eos_id = int(eos) if eos is not None else _first_in_vocab(_EOS_CANDIDATES, self._hf.get_vocab().get)
            self.bos_id = self._added_start(self._hf.encode("a", add_special_tokens=True), self.encode("a"))
        else:
            self.vocab_size = int(self._tk.get_vocab_size(with_added_tokens=True))
            self.eos_id = self._find_eos()
            self.bos_id = self._added_start(self._tk.encode("a").ids, self.encode("a"))

    @staticmethod
    def _added_start(with_special: Sequence[int], plain: Sequence[int]) -> int | None:
        """The token encoding with special tokens puts before the text, if any."""
        extra = len(with_special) - len(plain)
        return int(with_special[0]) if extra > 0 and list(with_special[1 : 1 + len(plain)]) == list(plain) else None

    def _load_json(self, file: Path) -> None:
        try:
            import tokenizers
        except ImportError:
            raise missing_package("tokenizers", f"tokenizer file {str(file)!r}") from None
        try:
            self._tk = tokenizers.Tokenizer.from_file(str(file))
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"{str(file)!r} is not a Hugging Face tokenizer.json: {exc}") from exc
        self._config_file = file.with_name(CONFIG_FILE)

    def _find_eos(self) -> int | None:
        names = list(_EOS_CANDIDATES)
        if self._config_file.is_file():
            try:
                token = json.loads(self._config_file.read_text(encoding="utf-8")).get("eos_token")
            except (OSError, ValueError, AttributeError):
                token = None
            if isinstance(token, dict):
                token = token.get("content")
            if isinstance(token, str):
                names.insert(0, token)
        return _first_in_vocab(names, self._tk.token_to_id)

    def encode(self, text: str) -> list[int]:
        if self._hf is not None:
            return list(self._hf.encode(text, add_special_tokens=False))
        return list(self._tk.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Several texts at once (in parallel inside the Rust tokenizer)."""
        if self._hf is not None:
            return [list(ids) for ids in self._hf(texts, add_special_tokens=False)["input_ids"]]
        return [list(enc.ids) for enc in self._tk.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        ids = _as_list(ids)
        if self._hf is not None:
            return self._hf.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return self._tk.decode(ids, skip_special_tokens=False)

    def decode_text(self, ids: Sequence[int]) -> str:
        """As transformers' ``decode`` with its defaults, what lm-eval's hf model answers with:
        special tokens dropped and the tokenizer's own ``clean_up_tokenization_spaces`` as
        transformers applies it (" ," -> ","; transformers 5 skips it for BPE tokenizers).
        :meth:`decode` keeps every token's text as it is."""
        ids = _as_list(ids)
        if self._hf is not None:
            return self._hf.decode(ids, skip_special_tokens=True)
        return self._tk.decode(ids, skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"HFTokenizer({str(self.path)!r})"


def _no_tokenizer_files(folder: Path) -> ConfigError | None:
    """The error for a tokenizer folder that holds no tokenizer file at all (a checkpoint's folder,
    the one above the tokenizer's), naming a subfolder that holds them; None when it holds some
    (transformers' own error then says what is wrong with them)."""
    try:
        if _tokenizer_files(folder):
            return None
        inside = sorted(d for d in folder.iterdir() if d.is_dir() and _tokenizer_files(d))
    except OSError:
        return None
    hint = f". Did you mean {str(inside[0])!r}?" if inside else ""
    return ConfigError(f"tokenizer folder {str(folder)!r} holds no tokenizer files (tokenizer.json, "
                       f"tokenizer_config.json, tokenizer.model, vocab.json, ...); it holds: {listing(folder)}{hint}")


def _first_in_vocab(tokens: Sequence[str], token_id: Any) -> int | None:
    """The id of the first of ``tokens`` that ``token_id`` (token -> id or None) knows, else None."""
    for token in tokens:
        tid = token_id(token)
        if tid is not None:
            return int(tid)
    return None


def require_tokenizer(spec: str | os.PathLike[str] | None) -> None:
    """Raise :func:`load_tokenizer`'s error when ``spec`` names no file or folder; reads nothing."""
    if spec is None or spec == ByteTokenizer.name:
        return
    path = Path(spec).expanduser()
    if not path.exists():
        raise missing_path_error("tokenizer path", path,
                                 "'byte', or a local folder or tokenizer.json (hub names are not downloaded)",
                                 names=(ByteTokenizer.name,))


def load_tokenizer(spec: str | None = None) -> Tokenizer:
    """``None`` or ``"byte"``: :class:`ByteTokenizer`; anything else: a local path for :class:`HFTokenizer`."""
    if spec is None or spec == "byte":
        return ByteTokenizer()
    return HFTokenizer(spec)
