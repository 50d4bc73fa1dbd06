"""Text for training and evaluation: tokenizers, corpora, splits, packing, held-out documents,
window retrieval. Nothing here downloads anything: tokenizers and corpora come from local paths,
and the default corpus is text every machine already has.

Modules: :mod:`~harness.data.tokenizers`, :mod:`~harness.data.corpora`,
:mod:`~harness.data.packing` (splits, token tensors, training rows and batches, evaluation
windows), :mod:`~harness.data.report` (a corpus in numbers), :mod:`~harness.data.heldout` (what
tasks evaluate on), :mod:`~harness.data.retrieval` (window embeddings and nearest neighbours).
The names below are re-exported so that ``from harness import data; data.load_corpus()`` reads
as before the split.
"""
from __future__ import annotations

from harness.data.corpora import Document, corpus_fingerprint, embedded_corpus, hash_files, load_corpus
from harness.data.packing import (
    long_documents,
    pack_sequences,
    sample_batch,
    select_windows,
    split_documents,
    text_digest,
    tokenize_documents,
)
from harness.data.report import CorpusReport, corpus_report
from harness.data.tokenizers import ByteTokenizer, HFTokenizer, Tokenizer, load_tokenizer, tokenizer_fingerprint

__all__ = [
    "Tokenizer",
    "ByteTokenizer",
    "HFTokenizer",
    "load_tokenizer",
    "tokenizer_fingerprint",
    "Document",
    "embedded_corpus",
    "load_corpus",
    "corpus_fingerprint",
    "hash_files",
    "split_documents",
    "text_digest",
    "tokenize_documents",
    "pack_sequences",
    "sample_batch",
    "long_documents",
    "select_windows",
    "CorpusReport",
    "corpus_report",
]
