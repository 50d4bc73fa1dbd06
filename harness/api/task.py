"""What a task runner implements, and the helpers every runner shares.

A task is a class registered with ``@register_task(name)``::

    @register_task("my_task")
    class MyTask(Task):
        @dataclass
        class Options:
            contexts: list[int] = option([256, 1024], "evaluation context lengths")

        def run(self, model, options, ctx):  # -> list of result rows (harness.results.make_row)
            ...

:func:`harness.evaluate.run_eval` resolves the model, parses the options (clear errors for
unknown names and bad values), calls ``run`` under ``torch.no_grad()`` (not inference mode:
test-time-training models take gradients inside their forward), fills in the columns that
identify the model and the run, validates and writes the table. A plain function
``fn(model, **options)`` (optionally with a ``ctx`` argument) registered as a task also works.

Runners reach the model only through the interface (:mod:`harness.interface`); the helpers here
(:func:`stream_token_losses`, :func:`continue_state`) use the optional ``forward_chunk(tokens,
state) -> (logits, state)`` capability when a model has it and fall back to the plain contract.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from harness.errors import ConfigError, unknown_message
from harness.interface import LCModel


def option(default: Any, help: str = "") -> Any:
    """A task option: its default and a one-line description (shown by the CLI)."""
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class NoOptions:
    pass


@dataclass
class DataOptions:
    """Where held-out text comes from. Unset fields take the checkpoint's training settings
    (so evaluation uses the documents training did not see), else the defaults."""

    corpus: str | None = option(None, "corpus (default: the checkpoint's training corpus, else the embedded stdlib)")
    tokenizer: str | None = option(None, "tokenizer (default: the checkpoint's, else bytes)")
    val_fraction: float | None = option(None, "held-out fraction of documents (default: the checkpoint's, else 0.1)")
    split_seed: int | None = option(None, "seed of the train/val split (default: the checkpoint's training seed, else 0)")


@dataclass
class ModelInfo:
    """What identifies the model in the result rows."""

    name: str
    arch: str
    params: int
    train_ctx: int | None = None
    train_config: dict[str, Any] | None = None  # the checkpoint's TrainConfig, when it has one
    source: str = "preset"  # "checkpoint" or "preset"
    path: str | None = None


@dataclass
class RunContext:
    """What a runner gets besides the model and its options."""

    model_info: ModelInfo
    device: torch.device
    dtype: torch.dtype
    seed: int = 0
    progress: bool = True
    samples: list[dict[str, Any]] = field(default_factory=list)

    def record(self, **sample: Any) -> None:
        """Keep a per-sample record (written to ``samples.jsonl`` beside the table)."""
        self.samples.append(sample)

    def bar(self, iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
        return tqdm(iterable, disable=not self.progress, leave=False, dynamic_ncols=True, **kwargs)

    def heldout(self, options: DataOptions, model: LCModel | None = None):
        """(tokenizer, held-out documents) for ``options``, checked against the model's vocabulary."""
        from harness import data

        train = self.model_info.train_config or {}

        def pick(name: str, key: str, default: Any) -> Any:
            value = getattr(options, name)
            return value if value is not None else train.get(key, default)

        tokenizer = data.load_tokenizer(pick("tokenizer", "tokenizer", None))
        if model is not None and tokenizer.vocab_size > model.config.vocab_size:
            raise ConfigError(
                f"tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                f"{model.config.vocab_size}; evaluate with the tokenizer the model was trained with"
            )
        docs = data.load_corpus(pick("corpus", "corpus", None))
        _, val = data.split_documents(docs, pick("val_fraction", "val_fraction", 0.1), pick("split_seed", "seed", 0))
        if not val:
            raise ConfigError("the held-out split is empty; raise val_fraction or use a corpus with more documents")
        return tokenizer, val


class Task:
    """Base of task runners: ``Options`` (a dataclass of settings) and ``run``."""

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions

    def run(self, model: LCModel, options: Any, ctx: RunContext) -> list[dict[str, Any]]:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# Options


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(value: Any, hint: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], name) if len(inner) == 1 else value
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        item = args[0] if args else str
        if isinstance(value, str):
            value = [v for v in (p.strip() for p in value.split(",")) if v]
        elif not isinstance(value, (list, tuple)):
            value = [value]
        return [_convert(v, item, name) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ConfigError(f"option {name!r} must be true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"option {name!r} must be a number, got {value!r}")
        try:
            number = float(value) if hint is float else _to_int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"option {name!r} must be {'an integer' if hint is int else 'a number'}, got {value!r}") from None
        return number
    if hint is str:
        return str(value)
    return value


def _to_int(value: Any) -> int:
    if isinstance(value, str):
        text = value.strip().lower()
        scale = 1
        if text.endswith("k"):
            text, scale = text[:-1], 1024
        elif text.endswith("m"):
            text, scale = text[:-1], 1024 * 1024
        number = float(text) * scale
    else:
        number = float(value)
    if not math.isfinite(number) or number != int(number):
        raise ValueError(value)
    return int(number)


def parse_options(options_class: type, raw: Mapping[str, Any] | None, task: str = "task") -> Any:
    """An ``options_class`` instance from ``raw`` (CLI strings or Python values).

    Unknown names raise a :class:`ConfigError` listing the valid ones with the close match;
    strings are converted to the field's type (``"1024,2K,4K"`` -> ``[1024, 2048, 4096]``)."""
    raw = dict(raw or {})
    fields = {f.name: f for f in dataclasses.fields(options_class)}
    hints = typing.get_type_hints(options_class)
    for key in raw:
        if key not in fields:
            raise ConfigError(unknown_message(f"option of task {task!r}", key, fields))
    values = {key: _convert(value, hints[key], key) for key, value in raw.items()}
    try:
        return options_class(**values)
    except TypeError as exc:
        raise ConfigError(f"bad options for task {task!r}: {exc}") from exc


def describe_options(options_class: type) -> list[dict[str, Any]]:
    """name, type, default and help of every option (for the CLI and the docs)."""
    hints = typing.get_type_hints(options_class)
    out = []
    for f in dataclasses.fields(options_class):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out.append({"name": f.name, "type": _type_name(hints[f.name]), "default": default,
                    "help": f.metadata.get("help", "")})
    return out


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def check_positive(name: str, values: Iterable[int | float], allow_zero: bool = False) -> None:
    for v in values:
        if v < 0 or (v == 0 and not allow_zero):
            raise ConfigError(f"option {name!r} must hold {'non-negative' if allow_zero else 'positive'} values, got {v!r}")


def function_task(fn: Callable, model: LCModel, raw: Mapping[str, Any] | None, ctx: RunContext, task: str) -> Any:
    """Run a task registered as a plain function ``fn(model, [ctx,] **options)``."""
    params = inspect.signature(fn).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    valid = [n for n, p in params.items() if n not in ("model", "ctx") and p.kind is not inspect.Parameter.VAR_KEYWORD]
    raw = dict(raw or {})
    if not accepts_any:
        for key in raw:
            if key not in valid:
                raise ConfigError(unknown_message(f"option of task {task!r}", key, valid))
    if "ctx" in params:
        raw["ctx"] = ctx
    return fn(model, **raw)


# ---------------------------------------------------------------------------------------------
# Reaching models through the interface


def has_chunks(model: LCModel) -> bool:
    return callable(getattr(model, "forward_chunk", None))


def continue_state(model: LCModel, state: Any, tokens: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Feed ``tokens [B, k]`` after ``state``: (logits ``[B, k, V]`` for the positions after each
    token, new state). One ``forward_chunk`` call when the model has it, else ``decode_step``s."""
    if tokens.size(1) == 0:
        raise ValueError("continue_state needs at least one token")
    if has_chunks(model):
        return model.forward_chunk(tokens, state)
    logits = []
    for i in range(tokens.size(1)):
        step, state = model.decode_step(state, tokens[:, i])
        logits.append(step)
    return torch.stack(logits, 1), state


def stream_token_losses(model: LCModel, tokens: torch.Tensor, chunk: int = 0) -> torch.Tensor:
    """Per-token NLL ``[B, T-1]`` (float32) of ``tokens [B, T]``.

    With ``chunk > 0`` and a model that has ``forward_chunk``, the sequence is read in pieces of
    ``chunk`` tokens carrying the state, so activation and logit memory stay bounded by the piece
    (the state itself may grow: a full-attention KV cache does). Otherwise ``token_losses``."""
    B, T = tokens.shape
    if T < 2:
        return tokens.new_zeros(B, 0, dtype=torch.float32)
    if chunk <= 0 or T <= chunk or not has_chunks(model):
        return model.token_losses(tokens).float()
    losses = []
    state, carry = None, None  # carry: logits [B, V] of the position before the piece
    for start in range(0, T, chunk):
        piece = tokens[:, start : start + chunk]
        logits, state = model.forward_chunk(piece, state)
        if carry is not None:
            losses.append(F.cross_entropy(carry.float(), piece[:, 0], reduction="none")[:, None])
        if piece.size(1) > 1:
            inner = logits[:, :-1].float()
            losses.append(F.cross_entropy(inner.reshape(-1, inner.size(-1)), piece[:, 1:].reshape(-1),
                                          reduction="none").view(B, -1))
        carry = logits[:, -1]
        del logits
    return torch.cat(losses, 1)
