"""The held-out text a task evaluates on: the documents training did not see.

Runners hand :func:`heldout_documents` to tasks as ``RunContext.heldout``. Unset data options
take the checkpoint's training settings (corpus, tokenizer, validation fraction, split seed), so a
checkpoint is evaluated on its own validation documents. A checkpoint given another corpus (a test
set beside its training set) is evaluated on all of it, less any text it trained on, unless a
split is asked for.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.api.errors import ConfigError
from harness.api.interface import LCModel
from harness.api.task import DataOptions, ModelInfo
from harness.data.corpora import CorpusWarning, Document, corpus_fingerprint, load_corpus
from harness.data.packing import split_documents, text_digest
from harness.data.tokenizers import TOKENIZER_DIR, Tokenizer, load_tokenizer, tokenizer_fingerprint

# Either file marks a folder AutoTokenizer loads (tokenizer.json alone loads as a fast tokenizer).
HF_TOKENIZER_MARKERS = ("tokenizer_config.json", "tokenizer.json")


def checkpoint_tokenizer(info: ModelInfo) -> str | None:
    """The tokenizer that belongs to a checkpoint: the one it was trained with, else the folder an
    import copied beside it (``tokenizer/``), else the checkpoint folder itself when it holds one
    (a Hugging Face export), else None (bytes)."""
    trained = (info.train_config or {}).get("tokenizer")
    if trained is not None:
        return trained
    if info.path is None:
        return None
    for folder in (Path(info.path) / TOKENIZER_DIR, Path(info.path)):
        if any((folder / marker).is_file() for marker in HF_TOKENIZER_MARKERS):
            return str(folder)
    return None


def _same_corpus(given: str | None, trained: str | None) -> bool:
    """Whether ``given`` (None: the training corpus) is the training corpus, however it is spelled
    ("stdlib" for the default, another path to the same files)."""
    return given is None or given == trained or corpus_fingerprint(given) == corpus_fingerprint(trained)


def trained_split(train_config: Mapping[str, Any]) -> tuple[float, int]:
    """(val_fraction, split seed) of a checkpoint's own train/validation split."""
    seed = train_config.get("split_seed")
    if seed is None:  # checkpoints made before split_seed existed split by their training seed
        seed = train_config.get("seed", 0)
    return train_config.get("val_fraction", 0.1), seed


def _on_own_corpus(options: DataOptions, info: ModelInfo) -> bool:
    """Whether a checkpoint is evaluated on the corpus it trained on."""
    return info.train_config is not None and _same_corpus(options.corpus, info.train_config.get("corpus"))


def _reads_another_corpus(options: DataOptions, info: ModelInfo, own: bool) -> bool:
    """Whether a checkpoint is evaluated on a whole corpus it did not train on (``own``: whether it
    is its own corpus): another corpus given, and no split asked for. Every document of it is then
    held out (a test set beside the training set, as PG-19's test/ beside train/), less any the
    checkpoint trained on."""
    return info.train_config is not None and not own and options.val_fraction is None and options.split_seed is None


def _load_trained(kind: str, value: Any, load: Callable[[Any], Any]) -> Any:
    """``load(value)``, a corpus or tokenizer that the checkpoint's training settings name: a failure
    says whose it is (a relative path is read from here, not from where the checkpoint trained)."""
    try:
        return load(value)
    except ConfigError as exc:
        relative = isinstance(value, str) and not Path(value).expanduser().is_absolute()
        raise ConfigError(
            f"the checkpoint's {kind}, {value!r}"
            + (" (a relative path, read from where it trained)" if relative else "")
            + f", cannot be read from {str(Path.cwd())!r}: {exc}; give the task's {kind!r} option") from None


def _trained_on(train_config: Mapping[str, Any]) -> list[Document]:
    """The training split of a checkpoint's own corpus."""
    docs = _load_trained("corpus", train_config.get("corpus"), load_corpus)
    return split_documents(docs, *trained_split(train_config))[0]


def _drop_trained_text(docs: list[Document], trained: Callable[[Document], bool], where: str) -> list[Document]:
    """``docs`` less those ``trained`` says the checkpoint trained on, counted in a warning
    (``where``: the documents' description); none left is an error."""
    kept = [d for d in docs if not trained(d)]
    if len(kept) < len(docs):
        first = next(d.name for d in docs if trained(d))
        if not kept:
            raise ConfigError(f"every document of {where} is text the checkpoint trained on, e.g. {first!r}; "
                              "evaluate on documents it did not see")
        warnings.warn(f"{len(docs) - len(kept)} of the {len(docs)} documents of {where} are text the checkpoint "
                      f"trained on (e.g. {first!r}); they are left out of the held-out documents",
                      CorpusWarning, stacklevel=4)
    return kept


def _recorded_training_text(info: ModelInfo) -> Callable[[Document], bool] | None:
    """Whether a document is text the checkpoint trained on, from the digests its training state
    records (None: it records none)."""
    digests = frozenset(info.trained_data.get("train_text_digests") or ())
    return (lambda d: text_digest(d.text) in digests) if digests else None


def _without_training_text(docs: list[Document], source: str, info: ModelInfo) -> list[Document]:
    """``docs`` less those whose text the checkpoint trained on (``source`` holds its training
    corpus: the folder above it, a copy): by the digests it records, else by reading its training
    split again."""
    trained = _recorded_training_text(info)
    if trained is None:
        try:
            seen = {d.text for d in _trained_on(info.train_config or {})}
        except ConfigError as exc:  # moved or deleted since it trained: nothing to compare with
            warnings.warn(f"corpus {source!r}: could not check it for the checkpoint's training text ({exc})",
                          CorpusWarning, stacklevel=3)
            return docs
        trained = lambda d: d.text in seen  # noqa: E731
    return _drop_trained_text(docs, trained, f"corpus {source!r}")


def training_documents(options: DataOptions, info: ModelInfo, heldout: Sequence[Document]) -> list[Document]:
    """The documents outside ``heldout`` that count as training text: on the checkpoint's own
    corpus, only its training split (a narrowed held-out split leaves documents it never saw);
    when another corpus is held out whole, the checkpoint's own training split."""
    train = info.train_config or {}
    own = _on_own_corpus(options, info)
    if _reads_another_corpus(options, info, own):
        return _trained_on(train)
    docs = (load_corpus(options.corpus) if options.corpus is not None
            else _load_trained("corpus", train.get("corpus"), load_corpus))
    if own:
        docs, _ = split_documents(docs, *trained_split(train))
    held = {d.name for d in heldout}
    return [d for d in docs if d.name not in held]


def _changed_since_training(kind: str, given: str | None, info: ModelInfo,
                            fingerprint: Callable[[str | None], str]) -> str | None:
    """How the checkpoint's own ``kind`` ("corpus" or "tokenizer"), read from where it trained,
    changed since it trained ("fingerprint A -> B"), or None: unchanged, another one ``given``, no
    fingerprint recorded, or the files gone (loading them fails with its own error)."""
    trained = (info.train_config or {}).get(kind)
    recorded = info.trained_data.get(f"{kind}_fingerprint")
    if recorded is None or given not in (None, trained):
        return None
    now = fingerprint(trained)
    if now == recorded or now.startswith("absent:"):
        return None
    return f"fingerprint {recorded} -> {now}"


def _check_trained_tokenizer(given: str | None, info: ModelInfo) -> None:
    """Raise if the tokenizer the checkpoint trained with is read from files changed since: the
    text would become other ids than the model learnt."""
    change = _changed_since_training("tokenizer", given, info, tokenizer_fingerprint)
    if change is not None:
        raise ConfigError(
            f"the checkpoint's tokenizer {(info.train_config or {}).get('tokenizer')!r} holds other files than when "
            f"it trained ({change}): its token ids are not the ones the model learnt; restore the tokenizer's files")


def _without_recorded_training_text(val: list[Document], info: ModelInfo, corpus: str, change: str) -> list[Document]:
    """``val``, drawn from the checkpoint's own corpus changed since it trained (``change``), less
    the documents whose text it records training on; without that record, a warning that some may be."""
    where = f"the checkpoint's corpus {corpus!r}, which holds other files than when it trained ({change})"
    trained = _recorded_training_text(info)
    if trained is None:
        warnings.warn(f"{where}: its held-out split is drawn from the text as it is now, and documents whose names "
                      "moved (records named by line or row after an insertion, renamed files) may be text it "
                      "trained on; evaluate on the corpus as it trained, or on a separate test corpus",
                      CorpusWarning, stacklevel=4)
        return val
    return _drop_trained_text(val, trained, f"the held-out split of {where}")


def model_tokenizer(given: str | None, info: ModelInfo, model: LCModel | None = None) -> Tokenizer:
    """The tokenizer to read text for a model with: ``given``, else the checkpoint's
    (:func:`checkpoint_tokenizer`); refused if the checkpoint's has changed since it trained, or if
    it has more tokens than the model's vocabulary."""
    tokenizer = (load_tokenizer(given) if given is not None
                 else _load_trained("tokenizer", checkpoint_tokenizer(info), load_tokenizer))
    _check_trained_tokenizer(given, info)
    if model is not None and tokenizer.vocab_size > model.config.vocab_size:
        raise ConfigError(
            f"tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} tokens but the model's vocab_size is "
            f"{model.config.vocab_size}; read the text with the tokenizer the model was trained with"
        )
    return tokenizer


def heldout_documents(options: DataOptions, info: ModelInfo,
                      model: LCModel | None = None) -> tuple[Tokenizer, list[Document]]:
    """(tokenizer, held-out documents) for ``options``, checked against the model's vocabulary."""
    train = info.train_config or {}
    tokenizer = model_tokenizer(options.tokenizer, info, model)
    # its own corpus changed since it trained: its held-out documents are split from the text as it
    # is now, and a document whose name moved (a record named by its line or row when lines are
    # inserted, a renamed file) is held out or not afresh
    change = _changed_since_training("corpus", options.corpus, info, corpus_fingerprint)
    docs = (load_corpus(options.corpus) if options.corpus is not None
            else _load_trained("corpus", train.get("corpus"), load_corpus))
    own = _on_own_corpus(options, info)  # hashes a given corpus's files: once
    if _reads_another_corpus(options, info, own):
        return tokenizer, _without_training_text(docs, options.corpus, info)
    trained_fraction, trained_seed = trained_split(train)
    split_seed = options.split_seed if options.split_seed is not None else trained_seed
    val_fraction = options.val_fraction if options.val_fraction is not None else trained_fraction
    _, val = split_documents(docs, val_fraction, split_seed)
    if not val:
        raise ConfigError("the held-out split is empty; raise val_fraction or use a corpus with more documents")
    if own:
        trained_on, _ = split_documents(docs, trained_fraction, trained_seed)
        seen = {d.name for d in trained_on} & {d.name for d in val}
        if seen:  # an overridden split can hand the model its own training text as held-out
            raise ConfigError(
                f"the held-out split (val_fraction={val_fraction}, split_seed={split_seed}) holds {len(seen)} of "
                f"its {len(val)} documents that the checkpoint trained on (its split: val_fraction="
                f"{trained_fraction}, split_seed={trained_seed}), e.g. {sorted(seen)[0]!r}; leave "
                "val_fraction and split_seed unset to evaluate on the checkpoint's own held-out documents")
    if change is not None:
        val = _without_recorded_training_text(val, info, train.get("corpus") or "stdlib", change)
    return tokenizer, val
