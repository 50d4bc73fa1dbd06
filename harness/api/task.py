"""What a task runner implements, and what it gets from the runner.

A task is a class registered with ``@register_task(name)``::

    @register_task("my_task")
    class MyTask(Task):
        @dataclass
        class Options:
            contexts: list[int] = option([256, 1024], "evaluation context lengths")

        def run(self, model, options, ctx):  # -> list of result rows (harness.api.results.make_row)
            ...

:func:`harness.runs.evaluate.run_eval` resolves the model, parses the options (clear errors for
unknown names and bad values), calls ``run`` under ``torch.no_grad()`` (not inference mode:
test-time-training models take gradients inside their forward), fills in the columns that
identify the model and the run, validates and writes the table. A plain function
``fn(model, **options)`` (optionally with a ``ctx`` argument) registered as a task also works.

Runners reach the model only through the interface (:mod:`harness.api.interface`) and the
helpers of :mod:`harness.api.decoding`; options are declared with :func:`harness.api.options.option`.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from harness.api.decoding import continue_state, has_chunks, stream_token_losses
from harness.api.errors import ConfigError, unknown_message
from harness.api.interface import LCModel
from harness.api.options import check_positive, convert_options, describe_options, function_hints, option, parse_options

# A task author finds the whole task contract here: options and the decoding helpers are
# re-exported from their modules (this also keeps ``from harness.api.task import ...`` working).
__all__ = ["DataOptions", "ModelInfo", "NoOptions", "RunContext", "Task", "check_function_options", "check_positive",
           "continue_state", "describe_options", "function_task", "has_chunks", "option", "parse_options", "stream_token_losses"]


@dataclass
class NoOptions:
    pass


@dataclass
class DataOptions:
    """Where held-out text comes from. Unset fields take the checkpoint's training settings
    (so evaluation uses the documents training did not see), else the defaults."""

    corpus: str | None = option(None, "corpus (default: the checkpoint's training corpus, else the embedded stdlib)")
    tokenizer: str | None = option(None, "tokenizer (default: the checkpoint's, else bytes)")
    val_fraction: float | None = option(None, "held-out fraction of documents (default: the checkpoint's on its own "
                                              "corpus; all of another corpus, less its training text; else 0.1)")
    split_seed: int | None = option(None, "seed of the train/val split (default: the checkpoint's split seed or training seed, else 0)")


@dataclass
class ModelInfo:
    """What identifies the model in the result rows."""

    name: str
    arch: str
    params: int
    train_ctx: int | None = None
    train_config: dict[str, Any] | None = None  # the checkpoint's TrainConfig, when it has one
    # what its corpus's and tokenizer's files held when it trained ("corpus_fingerprint", "tokenizer_fingerprint"),
    # and the digests of the documents it trained on ("train_text_digests")
    trained_data: dict[str, Any] = field(default_factory=dict)
    source: str = "preset"  # "checkpoint", "preset" (untrained weights) or "object" (a model built in Python)
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
    # (options, model info, model) -> (tokenizer, held-out documents). The runner sets it
    # (harness.data.heldout.heldout_documents) so that the contract does not import the data floor.
    heldout_source: Callable[[DataOptions, ModelInfo, LCModel | None], tuple[Any, list[Any]]] | None = None

    def record(self, **sample: Any) -> None:
        """Keep a per-sample record (written to ``samples.jsonl`` beside the table)."""
        self.samples.append(sample)

    def bar(self, iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
        return tqdm(iterable, disable=not self.progress, leave=False, dynamic_ncols=True, **kwargs)

    def heldout(self, options: DataOptions, model: LCModel | None = None) -> tuple[Any, list[Any]]:
        """(tokenizer, held-out documents) for ``options``, checked against the model's vocabulary."""
        if self.heldout_source is None:
            raise ConfigError("this RunContext has no heldout_source; harness.runs.evaluate.run_task gives it one")
        return self.heldout_source(options, self.model_info, model)


class Task:
    """Base of task runners: ``Options`` (a dataclass of settings) and ``run``."""

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions

    def run(self, model: LCModel, options: Any, ctx: RunContext) -> list[dict[str, Any]]:
        raise NotImplementedError

    def check_context(self, options: Any, tokenizer: Any, seeds: Sequence[int]) -> list[str]:
        """What in ``options`` is bound to fail before any model runs, one line each (the value,
        why, what would work): a context too short for the task's prompts, say. ``tokenizer``: the
        one the run reads text with (None where the options are no :class:`DataOptions`);
        ``seeds``: every seed the options run with (one run's; a sweep's cells', so that what would
        work works for all of them). A sweep asks once per task cell before any model trains,
        ``lcbench eval`` before the task runs; the base class finds nothing."""
        return []


def function_task(fn: Callable, model: LCModel, raw: Mapping[str, Any] | None, ctx: RunContext, task: str) -> Any:
    """Run a task registered as a plain function ``fn(model, [ctx,] **options)``."""
    raw = check_function_options(fn, raw, task)
    if "ctx" in inspect.signature(fn).parameters:
        raw["ctx"] = ctx
    return fn(model, **raw)


def check_function_options(fn: Callable, raw: Mapping[str, Any] | None, task: str) -> dict[str, Any]:
    """``raw`` as a dict, after checking that ``fn`` (a function task) takes every option it names,
    each value converted to the option's type (:func:`harness.api.options.function_hints`)."""
    params = inspect.signature(fn).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    valid = [n for n, p in params.items() if n not in ("model", "ctx") and p.kind is not inspect.Parameter.VAR_KEYWORD]
    raw = dict(raw or {})
    if not accepts_any:
        for key in raw:
            if key not in valid:
                raise ConfigError(unknown_message("option", key, valid, of=f"task {task!r}"))
    hints = {key: hint for key, hint in function_hints(fn).items() if key in valid}
    return convert_options(raw, hints, task)
