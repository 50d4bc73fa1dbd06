"""Tokenizers, corpora, splits and long-document packing.

Nothing here downloads anything: tokenizers and corpora come from local paths, and the
default corpus is text every machine already has.

- Tokenizers: :class:`ByteTokenizer` (the default: UTF-8 bytes, vocabulary 256, no files) or
  :class:`HFTokenizer` (any Hugging Face tokenizer from a local folder or ``tokenizer.json``).
  :func:`load_tokenizer` picks one from a CLI-style spec.
- Corpora: :func:`embedded_corpus` (the running interpreter's standard library, one document
  per package) and :func:`load_corpus` for user text files, folders, JSONL, Parquet and local
  ``datasets`` folders.
- :func:`split_documents` splits by document, so no text is in both train and validation;
  :func:`tokenize_documents`, :func:`pack_sequences` and :func:`sample_batch` turn documents into
  training batches; :func:`long_documents` keeps whole long documents for long-context
  evaluation; :func:`corpus_report` summarises a corpus for the CLI.

Token tensors are cached per process (keyed by tokenizer name and document) and shared between
callers: treat them as read-only, ``clone()`` before writing into one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import statistics
import sys
import sysconfig
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from harness.errors import ConfigError, close_match

__all__ = [
    "Tokenizer",
    "ByteTokenizer",
    "HFTokenizer",
    "load_tokenizer",
    "Document",
    "embedded_corpus",
    "load_corpus",
    "split_documents",
    "tokenize_documents",
    "pack_sequences",
    "sample_batch",
    "long_documents",
    "CorpusReport",
    "corpus_report",
]

# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------


@runtime_checkable
class Tokenizer(Protocol):
    """What the harness needs from a tokenizer. ``name`` identifies it (and keys the caches)."""

    name: str
    vocab_size: int
    eos_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


# Optional fast paths that tokenize_documents uses when a tokenizer has them:
# ``encode_tensor(text) -> 1-D int64 tensor`` and ``encode_batch(texts) -> list[list[int]]``.


def _as_list(ids: Sequence[int] | torch.Tensor) -> list[int]:
    return ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, no special tokens, no files."""

    name = "byte"
    vocab_size = 256
    eos_id: int | None = None

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


def _missing_package(package: str, what: str) -> ConfigError:
    return ConfigError(f"{what} needs the {package!r} package, which is not installed; pip install {package}")


class HFTokenizer:
    """A Hugging Face tokenizer from a local path; nothing is downloaded.

    - a ``.json`` file: loaded with ``tokenizers.Tokenizer.from_file``;
    - a folder: ``transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)``; when
      ``transformers`` is not installed and the folder has a ``tokenizer.json``, that file is
      loaded with ``tokenizers`` instead (``eos_token`` then comes from ``tokenizer_config.json``).

    Text is encoded without special tokens (no BOS/EOS added); ``eos_id`` is the tokenizer's end
    token, if it has one, for use as a document separator.
    """

    def __init__(self, path: str | os.PathLike[str]):
        p = Path(path).expanduser()
        if not p.exists():
            raise _missing_path_error(
                "tokenizer path", p, "'byte', or a local folder or tokenizer.json (hub names are not downloaded)"
            )
        self.path = p.resolve()
        self.name = f"hf:{self.path}"
        self._hf: Any = None  # transformers tokenizer
        self._tk: Any = None  # tokenizers.Tokenizer
        if p.is_dir():
            try:
                import transformers
            except ImportError:
                transformers = None
            if transformers is not None:
                try:
                    self._hf = transformers.AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
                    # Whole documents are encoded at once; the limit only matters to the model.
                    self._hf.model_max_length = sys.maxsize
                except Exception as exc:  # noqa: BLE001 - any load failure becomes a user error
                    raise ConfigError(
                        f"could not load a tokenizer from folder {str(p)!r} with transformers: {exc}; "
                        f"the folder holds: {_listing(p)}"
                    ) from exc
            elif (p / "tokenizer.json").is_file():
                self._load_json(p / "tokenizer.json")
            else:
                raise _missing_package(
                    "transformers", f"tokenizer folder {str(p)!r} (it has no tokenizer.json: {_listing(p)})"
                )
        else:
            self._load_json(p)
        if self._hf is not None:
            self.vocab_size = int(len(self._hf))
            eos = getattr(self._hf, "eos_token_id", None)
            self.eos_id = None if eos is None else int(eos)
        else:
            self.vocab_size = int(self._tk.get_vocab_size(with_added_tokens=True))
            self.eos_id = self._find_eos()

    def _load_json(self, file: Path) -> None:
        try:
            import tokenizers
        except ImportError:
            raise _missing_package("tokenizers", f"tokenizer file {str(file)!r}") from None
        try:
            self._tk = tokenizers.Tokenizer.from_file(str(file))
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"{str(file)!r} is not a Hugging Face tokenizer.json: {exc}") from exc
        self._config_file = file.with_name("tokenizer_config.json")

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
        for token in names:
            tid = self._tk.token_to_id(token)
            if tid is not None:
                return int(tid)
        return None

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

    def __repr__(self) -> str:
        return f"HFTokenizer({str(self.path)!r})"


def load_tokenizer(spec: str | None = None) -> Tokenizer:
    """``None`` or ``"byte"``: :class:`ByteTokenizer`; anything else: a local path for :class:`HFTokenizer`."""
    if spec is None or spec == "byte":
        return ByteTokenizer()
    return HFTokenizer(spec)


# --------------------------------------------------------------------------------------------
# Corpora
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    name: str
    text: str


def _listing(folder: Path, limit: int = 20) -> str:
    try:
        names = sorted(e.name + ("/" if e.is_dir() else "") for e in folder.iterdir())
    except OSError:
        return "(cannot be listed)"
    if not names:
        return "(empty)"
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _missing_path_error(kind: str, path: Path, valid: str) -> ConfigError:
    msg = f"{kind} {str(path)!r} does not exist; valid: {valid}"
    parent = path.parent
    if not parent.is_dir():
        while not parent.is_dir() and parent != parent.parent:
            parent = parent.parent
        return ConfigError(f"{msg}. Its folder does not exist either; the nearest that does is {str(parent)!r}")
    msg += f". {str(parent)!r} holds: {_listing(parent)}"
    try:
        suggestion = close_match(path.name, [e.name for e in parent.iterdir()])
    except OSError:
        suggestion = None
    if suggestion is not None:
        msg += f". Did you mean {str(parent / suggestion)!r}?"
    return ConfigError(msg)


# -- the embedded default corpus --------------------------------------------------------------

# The stdlib's own test suite (``test``) is left out: it is over half of the stdlib's bytes, so as
# one document it would dominate whichever side of the split it fell on; it holds deliberately
# odd files (non-UTF-8 encodings, bad syntax); and distributions often ship it separately or not
# at all (Debian's libpython3-testsuite, slim images), so keeping it would make the default corpus
# differ more between machines than it must.
_EXCLUDED_PACKAGES = frozenset({"test", "site-packages"})
STDLIB_SOURCE = "stdlib"


def _stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_description() -> str:
    return f"stdlib (Python {sys.version.split()[0]}, {_stdlib_dir()})"


def _read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def _concat_files(root: Path, files: list[Path]) -> str:
    parts = []
    for file in sorted(files, key=lambda f: f.relative_to(root).as_posix()):
        text = _read_text(file)
        if text and not text.endswith("\n"):
            text += "\n"
        parts.append(f"# file: {file.relative_to(root).as_posix()}\n{text}")
    return "".join(parts)


@lru_cache(maxsize=1)
def _embedded() -> tuple[Document, ...]:
    root = _stdlib_dir()
    if not root.is_dir():
        raise ConfigError(f"the standard library folder {str(root)!r} does not exist; pass a corpus path instead")
    docs: list[tuple[str, str]] = []
    groups: dict[str, list[Path]] = {}
    for entry in root.iterdir():
        if entry.is_file() and entry.suffix == ".py":
            # Top-level modules, grouped by first letter (leading underscores ignored), so that
            # e.g. `typing.py`, `tarfile.py` and `threading.py` form the document "toplevel/t".
            groups.setdefault(entry.name.lstrip("_")[:1].lower() or "_", []).append(entry)
        elif entry.is_dir() and entry.name not in _EXCLUDED_PACKAGES and (entry / "__init__.py").is_file():
            # A package: every .py below it (subpackages included), skipping __pycache__.
            files = [f for f in entry.rglob("*.py") if "__pycache__" not in f.parts and f.is_file()]
            docs.append((entry.name, _concat_files(root, files)))
    docs += [(f"toplevel/{letter}", _concat_files(root, files)) for letter, files in groups.items()]
    return tuple(Document(name, text) for name, text in sorted(docs))


def embedded_corpus() -> list[Document]:
    """The default corpus: this interpreter's standard library source, read once per process.

    One document per top-level package (its ``.py`` files, subpackages included, concatenated in
    sorted path order, each preceded by a ``# file: relative/path.py`` line). Top-level
    single-file modules are grouped by their first letter (leading ``_`` ignored) into documents
    named ``toplevel/a`` ... ``toplevel/z``: one document per module would make hundreds of tiny
    ones, and one for all of them a single outsized one. Skipped: ``site-packages``,
    ``__pycache__``, non-``.py`` files, folders that are not packages (``lib-dynload``,
    ``config-*``), and the ``test`` package (see ``_EXCLUDED_PACKAGES``). Sorted by name.
    The corpus depends on the interpreter: :func:`corpus_report` names the version and folder.
    """
    return list(_embedded())


# -- user corpora -----------------------------------------------------------------------------

_TEXT_SUFFIXES = (".txt", ".md")
_RECORD_SUFFIXES = (".jsonl", ".parquet")
_CORPUS_VALID = (
    f"{STDLIB_SOURCE!r}, a .txt/.md file, a .jsonl or .parquet file, "
    "a folder of text files, or a `datasets` save_to_disk folder"
)


def _field_error(field: str, where: str, present: Sequence[str]) -> ConfigError:
    msg = f"text field {field!r} not found in {where}; fields there: {', '.join(map(str, present)) or '(none)'}"
    suggestion = close_match(field, [str(p) for p in present])
    if suggestion is not None:
        msg += f". Did you mean text field {suggestion!r}?"
    return ConfigError(msg)


def _documents(prefix: str, texts: Sequence[Any], where: str, field: str) -> list[Document]:
    """One document per non-null value of a record column, named ``prefix + row``."""
    docs = []
    for row, text in enumerate(texts):
        if text is None:
            continue
        if not isinstance(text, str):
            raise ConfigError(f"{where} row {row}: field {field!r} is not a string but {type(text).__name__}")
        docs.append(Document(f"{prefix}{row}", text))
    return docs


def _load_jsonl(path: Path, field: str, prefix: str) -> list[Document]:
    docs = []
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise ConfigError(f"{str(path)!r} line {lineno} is not valid JSON: {exc}") from exc
            if not isinstance(record, dict):
                raise ConfigError(f"{str(path)!r} line {lineno} is a JSON {type(record).__name__}, not an object")
            if field not in record:
                raise _field_error(field, f"{str(path)!r} line {lineno}", list(record))
            text = record[field]
            if text is None:
                continue
            if not isinstance(text, str):
                raise ConfigError(
                    f"{str(path)!r} line {lineno}: field {field!r} is not a string but {type(text).__name__}"
                )
            docs.append(Document(f"{prefix}:{lineno}", text))
    return docs


def _load_parquet(path: Path, field: str, prefix: str) -> list[Document]:
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"{str(path)!r} is not a readable Parquet file: {exc}") from exc
    if field not in names:
        raise _field_error(field, f"{str(path)!r}", names)
    column = pq.read_table(path, columns=[field]).column(field).to_pylist()
    return _documents(f"{prefix}:", column, repr(str(path)), field)


def _is_datasets_folder(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "dataset_info.json").is_file() and (path / "state.json").is_file()
    )


def _load_datasets_folder(path: Path, field: str) -> list[Document]:
    try:
        import datasets
    except ImportError:
        raise _missing_package("datasets", f"corpus {str(path)!r} (a `datasets` save_to_disk folder)") from None
    loaded = datasets.load_from_disk(str(path))
    # A DatasetDict contributes every split, in sorted order; lcbench makes its own split.
    splits = sorted(loaded.items()) if isinstance(loaded, datasets.DatasetDict) else [("", loaded)]
    docs = []
    for split, ds in splits:
        if field not in ds.column_names:
            raise _field_error(field, f"{str(path)!r}" + (f" split {split!r}" if split else ""), ds.column_names)
        docs += _documents(f"{split}:" if split else "", ds[field], f"{str(path)!r}", field)
    return docs


def _looks_binary(path: Path) -> bool:
    with path.open("rb") as f:
        return b"\0" in f.read(8192)


def _load_folder(root: Path, field: str) -> list[Document]:
    files = sorted(
        (p for p in root.rglob("*") if p.is_file()),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    docs = []
    for file in files:
        rel = file.relative_to(root)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        name = rel.as_posix()
        if file.suffix == ".jsonl":
            docs += _load_jsonl(file, field, name)
        elif file.suffix == ".parquet":
            docs += _load_parquet(file, field, name)
        elif not _looks_binary(file):
            docs.append(Document(name, _read_text(file)))
    return docs


def load_corpus(source: str | None = None, text_field: str = "text") -> list[Document]:
    """Documents from ``source``; ``None`` or ``"stdlib"`` is :func:`embedded_corpus`.

    - a ``.txt`` or ``.md`` file: one document, named after the file;
    - a ``.jsonl`` file: one document per line, from its ``text_field`` (``file:LINE``);
    - a ``.parquet`` file: one document per row of column ``text_field`` (``file:ROW``);
    - a ``datasets`` ``save_to_disk`` folder (needs ``datasets``): one per row of ``text_field``;
    - any other folder: recursively, in sorted path order, each text file one document named by
      its relative path (``.jsonl``/``.parquet`` files inside are read as records, as above);
      hidden files and folders, ``__pycache__`` and binary files (a NUL byte in the first 8 KiB)
      are skipped.

    Text is read as UTF-8 (bad bytes become U+FFFD); empty and null texts are dropped.
    """
    if source is None or source == STDLIB_SOURCE:
        return embedded_corpus()
    path = Path(source).expanduser()
    if not path.exists():
        raise _missing_path_error("corpus", path, _CORPUS_VALID)
    if path.is_dir():
        docs = _load_datasets_folder(path, text_field) if _is_datasets_folder(path) else _load_folder(path, text_field)
    elif path.suffix == ".jsonl":
        docs = _load_jsonl(path, text_field, path.name)
    elif path.suffix == ".parquet":
        docs = _load_parquet(path, text_field, path.name)
    elif path.suffix in _TEXT_SUFFIXES:
        docs = [Document(path.name, _read_text(path))]
    else:
        raise ConfigError(
            f"corpus file {str(path)!r} has an unsupported extension {path.suffix!r}; valid: "
            f"{', '.join(_TEXT_SUFFIXES + _RECORD_SUFFIXES)} files, or a folder"
        )
    docs = [d for d in docs if d.text]
    if not docs:
        raise ConfigError(f"corpus {str(path)!r} holds no non-empty text documents")
    return docs


# --------------------------------------------------------------------------------------------
# Splits, tokens, packing, batches
# --------------------------------------------------------------------------------------------


def _unit_hash(*parts: object) -> float:
    """A stable hash of ``parts`` in [0, 1): the same on every machine and in every process."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def split_documents(
    docs: Sequence[Document], val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[Document], list[Document]]:
    """(train, val), split by document: a document goes to val when the hash of (seed, name) is
    below ``val_fraction``, so its side does not depend on the other documents (the same stdlib
    package lands on the same side on every Python version). With ``val_fraction > 0`` and at
    least two documents, each side gets at least one (the lowest-hash document moves to val,
    or the highest to train). Order within each side is the input order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    docs = list(docs)
    keys = [_unit_hash("split", seed, d.name) for d in docs]
    is_val = [val_fraction > 0 and k < val_fraction for k in keys]
    if val_fraction > 0 and len(docs) >= 2:
        if not any(is_val):
            is_val[min(range(len(docs)), key=keys.__getitem__)] = True
        elif all(is_val):
            is_val[max(range(len(docs)), key=keys.__getitem__)] = False
    train = [d for d, v in zip(docs, is_val) if not v]
    val = [d for d, v in zip(docs, is_val) if v]
    return train, val


_TOKEN_CACHE: OrderedDict[tuple[str, Document], torch.Tensor] = OrderedDict()
_TOKEN_CACHE_BUDGET = 1 << 27  # tokens (1 GiB of int64); least recently used go first
_token_cache_size = 0


def _cache_put(key: tuple[str, Document], ids: torch.Tensor) -> None:
    global _token_cache_size
    if ids.numel() > _TOKEN_CACHE_BUDGET:
        return
    _TOKEN_CACHE[key] = ids
    _token_cache_size += ids.numel()
    while _token_cache_size > _TOKEN_CACHE_BUDGET:
        _, old = _TOKEN_CACHE.popitem(last=False)
        _token_cache_size -= old.numel()


def tokenize_documents(docs: Sequence[Document], tokenizer: Tokenizer) -> list[torch.Tensor]:
    """One 1-D int64 tensor per document (no special tokens added); cached per process."""
    out: list[torch.Tensor | None] = []
    todo: list[int] = []
    for i, doc in enumerate(docs):
        ids = _TOKEN_CACHE.get((tokenizer.name, doc))
        if ids is not None:
            _TOKEN_CACHE.move_to_end((tokenizer.name, doc))
        else:
            todo.append(i)
        out.append(ids)
    encode_tensor = getattr(tokenizer, "encode_tensor", None)
    encode_batch = getattr(tokenizer, "encode_batch", None)
    for start in range(0, len(todo), 64):
        chunk = todo[start : start + 64]
        texts = [docs[i].text for i in chunk]
        if encode_tensor is not None:
            encoded = [encode_tensor(t) for t in texts]
        elif encode_batch is not None:
            encoded = [torch.tensor(ids, dtype=torch.int64) for ids in encode_batch(texts)]
        else:
            encoded = [torch.tensor(tokenizer.encode(t), dtype=torch.int64) for t in texts]
        for i, ids in zip(chunk, encoded):
            out[i] = ids
            _cache_put((tokenizer.name, docs[i]), ids)
    return out  # type: ignore[return-value]


def pack_sequences(token_docs: Sequence[torch.Tensor], seq_len: int, separator: int | None = None) -> torch.Tensor:
    """``[N, seq_len]`` int64 rows cut from the documents laid end to end, in order.

    With ``separator`` (e.g. the tokenizer's ``eos_id``), that token follows every document.
    The ragged tail shorter than ``seq_len`` is dropped. Rows may span document boundaries;
    use :func:`long_documents` for evaluation on whole documents.
    """
    if not isinstance(seq_len, int) or seq_len <= 0:
        raise ConfigError(f"seq_len must be a positive integer, got {seq_len!r}")
    parts: list[torch.Tensor] = []
    sep = None if separator is None else torch.tensor([separator], dtype=torch.int64)
    for ids in token_docs:
        parts.append(ids.reshape(-1).to(torch.int64))
        if sep is not None:
            parts.append(sep)
    flat = torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)
    rows = flat.numel() // seq_len
    if rows == 0:
        raise ConfigError(
            f"the documents hold {flat.numel()} tokens, fewer than one sequence of seq_len={seq_len}; "
            "use a shorter seq_len or a larger corpus"
        )
    return flat[: rows * seq_len].view(rows, seq_len)


@lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(_unit_hash("epoch", seed, epoch) * 2**63))
    return torch.randperm(n, generator=g)


def sample_batch(packed: torch.Tensor, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """The ``[batch_size, seq_len]`` batch for training step ``step``: a pure function of
    (packed, batch_size, step, seed), so a resumed run sees exactly the batches it would have.

    Rows are visited in epochs: each epoch is a permutation of all rows seeded by (seed, epoch),
    and step ``s`` takes positions ``s*batch_size ... (s+1)*batch_size - 1`` of that endless
    sequence, so every row is seen once per epoch.
    """
    if packed.ndim != 2 or packed.shape[0] == 0:
        raise ConfigError(f"packed must be a non-empty [N, seq_len] tensor, got shape {tuple(packed.shape)}")
    if batch_size <= 0 or step < 0:
        raise ConfigError(f"batch_size must be positive and step non-negative, got {batch_size}, {step}")
    n = packed.shape[0]
    positions = torch.arange(step * batch_size, (step + 1) * batch_size)
    epochs, offsets = positions // n, positions % n
    index = torch.empty(batch_size, dtype=torch.int64)
    for epoch in epochs.unique().tolist():
        mask = epochs == epoch
        index[mask] = _epoch_order(n, seed, epoch)[offsets[mask]]
    return packed[index.to(packed.device)]


def long_documents(token_docs: Sequence[torch.Tensor], min_tokens: int) -> list[torch.Tensor]:
    """The documents with at least ``min_tokens`` tokens, in order, whole (never padded)."""
    return [ids for ids in token_docs if ids.numel() >= min_tokens]


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _short(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 and n >= 1024 else str(n)


@dataclass
class CorpusReport:
    source: str
    tokenizer: str
    vocab_size: int
    documents: int
    tokens: int
    docs_at_least: dict[int, int]  # threshold (tokens) -> documents with at least that many
    val_docs_at_least: dict[int, int]  # the same, validation documents only
    longest_doc: str
    longest_tokens: int
    median_tokens: float
    train_documents: int
    val_documents: int
    train_tokens: int
    val_tokens: int
    val_fraction: float
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def format(self) -> str:
        counts = "\n".join(
            f"  >= {_short(t):>5} tokens: {self.docs_at_least[t]:>5} documents ({self.val_docs_at_least[t]} in val)"
            for t in self.docs_at_least
        )
        return (
            f"corpus     {self.source}\n"
            f"tokenizer  {self.tokenizer} (vocab {self.vocab_size})\n"
            f"documents  {self.documents:,} (train {self.train_documents:,}, val {self.val_documents:,}; "
            f"val_fraction {self.val_fraction}, seed {self.seed})\n"
            f"tokens     {self.tokens:,} (train {self.train_tokens:,}, val {self.val_tokens:,})\n"
            f"length     median {self.median_tokens:,.0f} tokens; longest {self.longest_doc!r} "
            f"({self.longest_tokens:,} tokens)\n"
            f"long documents:\n{counts}"
        )

    __str__ = format


def corpus_report(
    docs: Sequence[Document],
    tokenizer: Tokenizer,
    thresholds: Sequence[int] = (4096, 16384, 65536, 131072),
    val_fraction: float = 0.1,
    seed: int = 0,
    source: str | None = None,
) -> CorpusReport:
    """Sizes of ``docs`` under ``tokenizer``: documents, tokens, how many documents reach each
    length threshold (overall and in the validation split), the longest and the median.
    ``source`` describes where the documents came from (defaults to the stdlib's description
    when ``docs`` is the embedded corpus)."""
    docs = list(docs)
    if not docs:
        raise ConfigError("the corpus has no documents")
    if source is None:
        is_stdlib = _embedded.cache_info().currsize > 0 and tuple(docs) == _embedded()
        source = _stdlib_description() if is_stdlib else "(given documents)"
    lengths = [ids.numel() for ids in tokenize_documents(docs, tokenizer)]
    length_of = {id(d): n for d, n in zip(docs, lengths)}
    train, val = split_documents(docs, val_fraction, seed)
    val_lengths = [length_of[id(d)] for d in val]
    longest = max(range(len(docs)), key=lengths.__getitem__)
    return CorpusReport(
        source=source,
        tokenizer=tokenizer.name,
        vocab_size=tokenizer.vocab_size,
        documents=len(docs),
        tokens=sum(lengths),
        docs_at_least={int(t): sum(n >= t for n in lengths) for t in thresholds},
        val_docs_at_least={int(t): sum(n >= t for n in val_lengths) for t in thresholds},
        longest_doc=docs[longest].name,
        longest_tokens=lengths[longest],
        median_tokens=float(statistics.median(lengths)),
        train_documents=len(train),
        val_documents=len(val),
        train_tokens=sum(lengths) - sum(val_lengths),
        val_tokens=sum(val_lengths),
        val_fraction=val_fraction,
        seed=seed,
    )
