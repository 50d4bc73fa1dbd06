"""From documents to tensors: train/validation splits, token ids, packed training rows,
reproducible batches, and whole long documents and evenly spread windows for evaluation.

Token tensors are cached per process (keyed by tokenizer name and document) and shared between
callers: treat them as read-only, ``clone()`` before writing into one.
"""
from __future__ import annotations

import hashlib
import numbers
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache

import torch
from tqdm.auto import tqdm

from harness.api.errors import ConfigError
from harness.data.corpora import Document
from harness.data.tokenizers import Tokenizer


def _unit_hash(*parts: object) -> float:
    """A stable hash of ``parts`` in [0, 1): the same on every machine and in every process."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def text_digest(text: str) -> str:
    """A short stable hash of a document's text: a checkpoint records those it trained on, so its
    held-out documents stay held out after its corpus changes (names can move; text cannot)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def split_documents(
    docs: Sequence[Document], val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[Document], list[Document]]:
    """(train, val), split by document: a document goes to val when the hash of (seed, name) is
    below ``val_fraction``, so its side does not depend on the other documents (the same stdlib
    package lands on the same side on every Python version). Copies (documents of the same text:
    a LICENSE in every folder of a code tree, a book twice) go where the first of them goes, so
    none is trained on while another is held out. With ``val_fraction > 0`` and at least two
    distinct documents, each side gets at least one (the lowest-hash document moves to val, or the
    highest to train). Order within each side is the input order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:  # as TrainConfig's: no run splits with it
        raise ConfigError(f"split seed must be a non-negative integer, got {seed!r}")
    docs = list(docs)
    first_copy: dict[str, int] = {}
    keys = [_unit_hash("split", seed, docs[first_copy.setdefault(d.text, i)].name) for i, d in enumerate(docs)]
    is_val = [val_fraction > 0 and k < val_fraction for k in keys]
    if val_fraction > 0 and len(set(keys)) >= 2:
        if not any(is_val):
            lowest = min(keys)
            is_val = [k == lowest for k in keys]
        elif all(is_val):
            highest = max(keys)
            is_val = [k != highest for k in keys]
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
    replaced = _TOKEN_CACHE.pop(key, None)  # a document listed twice is tokenized twice: count it once
    if replaced is not None:
        _token_cache_size -= replaced.numel()
    _TOKEN_CACHE[key] = ids
    _token_cache_size += ids.numel()
    while _token_cache_size > _TOKEN_CACHE_BUDGET:
        _, old = _TOKEN_CACHE.popitem(last=False)
        _token_cache_size -= old.numel()


def tokenize_documents(docs: Sequence[Document], tokenizer: Tokenizer, progress: bool = False,
                       desc: str = "tokenize") -> list[torch.Tensor]:
    """One 1-D int64 tensor per document (no special tokens added); cached per process.
    ``progress``: a bar over the characters to tokenize, shown once it has taken a second (a BPE
    reads about a megabyte a second: a large corpus takes minutes)."""
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
    bar = tqdm(total=sum(len(docs[i].text) for i in todo), disable=not (progress and todo), desc=desc, unit="char",
               unit_scale=True, delay=1.0, leave=False)
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
        bar.update(sum(len(t) for t in texts))
    bar.close()
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


def select_windows(lengths: list[int], length: int, budget_tokens: int) -> list[tuple[int, int]]:
    """(document index, start) of the windows of ``length`` tokens: at most ``budget // length``
    (at least one), shared out evenly between the documents that hold a whole window, each
    document's windows evenly spread over it."""
    slots = {i: n // length for i, n in enumerate(lengths) if n >= length}
    wanted = max(1, budget_tokens // length)
    counts = dict.fromkeys(slots, 0)
    total = 0
    while total < wanted:
        grew = False
        for i in slots:
            if counts[i] < slots[i] and total < wanted:
                counts[i] += 1
                total += 1
                grew = True
        if not grew:
            break
    windows = []
    for i, k in counts.items():
        m = slots[i]
        windows += [(i, (j * m // k) * length) for j in range(k)]
    return windows


def window_ends(lengths: list[int], length: int, budget_tokens: int) -> list[tuple[int, int]]:
    """(document index, end) of the windows :func:`select_windows` picks: end positions that
    windows of any shorter length can share, so every length scores the same targets."""
    return [(i, start + length) for i, start in select_windows(lengths, length, budget_tokens)]

