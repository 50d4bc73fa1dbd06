"""A corpus in numbers: documents, tokens, and how many documents reach long-context lengths."""
from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness.api.errors import ConfigError
from harness.data.corpora import Document, describe_documents
from harness.data.packing import split_documents, tokenize_documents
from harness.data.tokenizers import Tokenizer


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
    progress: bool = False,
) -> CorpusReport:
    """Sizes of ``docs`` under ``tokenizer``: documents, tokens, how many documents reach each
    length threshold (overall and in the validation split), the longest and the median.
    ``source`` describes where the documents came from (defaults to the stdlib's description
    when ``docs`` is the embedded corpus); ``progress``: a bar while a large corpus is tokenized."""
    docs = list(docs)
    if not docs:
        raise ConfigError("the corpus has no documents")
    if source is None:
        source = describe_documents(docs)
    train, val = split_documents(docs, val_fraction, seed)  # before tokenizing: a bad seed fails at once
    lengths = [ids.numel() for ids in tokenize_documents(docs, tokenizer, progress)]
    length_of = {id(d): n for d, n in zip(docs, lengths)}
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
