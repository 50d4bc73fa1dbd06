"""lm-evaluation-harness on any registered architecture.

Importing this module registers the lm-eval model ``lcbench`` (:class:`LcbenchLM`), which
implements lm-eval's three requests through our model interface:

- ``loglikelihood``: one forward pass over context + continuation (batched, right-padded: every
  architecture is causal, so padding after a sequence does not change its logits); a batch
  wider than ``chunk`` tokens is read in pieces through ``forward_chunk`` where the model has it,
  so memory stays bounded by a piece's logits, as ``loss_scaling`` reads long windows;
- ``loglikelihood_rolling``: the document scored in windows of ``max_length`` tokens (one window
  when ``max_length`` is unset: our models have no position limit);
- ``generate_until``: greedy decoding with ``prefill`` + ``decode_step``, stopping at any ``until``
  string, the tokenizer's end token or ``max_gen_toks`` (or its aliases, ``max_new_tokens`` ...).

lm-eval 0.4 finds models only in its own registry (no entry points), so its console script does not
see ``lcbench``. Run lm-eval's own command line through this module instead, with the same options::

    lcbench export-hf runs/quick/swa runs/quick/swa-hf   # a tokenizer folder RULER's tasks can load
    python -m harness.adapters.lm_eval --model lcbench --model_args checkpoint=runs/quick/swa,tokenizer=runs/quick/swa-hf \\
        --tasks niah_single_1 --metadata '{"max_seq_lengths": [1024]}' --limit 10

Model args (``batch_size`` and ``device`` here win over lm-eval's own options): ``checkpoint``
(a checkpoint folder, or ``arch[:preset]`` for untrained weights; ``pretrained`` is an alias),
``tokenizer`` (``byte`` or a local Hugging Face tokenizer folder/file; default: the checkpoint's
own, see :func:`harness.data.heldout.checkpoint_tokenizer`), ``device``, ``dtype`` (``auto``: bf16
on CUDA, fp32 on CPU), ``backend`` (mixer backend override), ``batch_size``, ``max_length``
(context cap in tokens; unset: no cap), ``max_gen_toks`` (default 256), ``chunk`` (batches wider than
this many tokens are read in pieces; default 2048, 0: whole), and lm-eval's hf model's
conventions: ``add_bos_token`` (default: when the tokenizer adds a start token by default, as
Llama's adds ``<s>``, it starts every text), ``prefix_token`` (the token an empty context or a
rolling document starts from; default: the tokenizer's BOS, else its end token, else the id of
``"\\n"``, the byte tokenizer's). A checkpoint that ``lcbench train`` made never saw a BOS (its
documents are packed without one, each after the end token), so by default its texts get none and
start from the end token; lm-eval's hf model on its export needs ``add_bos_token=False`` to score
the same. The end-of-text token's text also stops generation.

RULER's synthetic tasks size their prompts with ``AutoTokenizer.from_pretrained(tokenizer)``, where
``tokenizer`` comes from the model args (lm-eval hands them to tasks), so on lm-eval's own command
line give ``tokenizer=`` a folder that holds a Hugging Face tokenizer: an exported model
(``lcbench export-hf``) or an imported checkpoint's ``tokenizer/``. :func:`run_lm_eval` (behind
``lcbench lm-eval``) exports one itself and writes the scores as rows of our result table.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import pandas as pd
import torch
import torch.nn.functional as F
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from tqdm.auto import tqdm

from harness.adapters.hf_tokenizer import export_tokenizer
from harness.adapters.lm_eval_tasks import check_task_names, known_task_names
from harness.api import results, stats
from harness.api.decoding import greedy_decode, has_chunks
from harness.api.device import dtype_name, resolve_device, resolve_dtype
from harness.api.errors import ConfigError, close_match
from harness.api.failures import FailureGuard
from harness.api.options import split_items
from harness.api.staging import prepare_output, safe_name
from harness.data.heldout import model_tokenizer
from harness.runs.evaluate import identity_columns, resolve_model
from harness.runs.provenance import git_commit, run_metadata, write_run_json

log = logging.getLogger(__name__)

NAME = "lcbench"
TABLE_TASK_PREFIX = "lm_eval:"  # rows' task column: lm_eval:<lm-eval task name>
Z95 = 1.959964


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ConfigError(f"lcbench model arg {name}={value!r} must be true or false")


def _int_or_none(value: Any, name: str, least: int = 1) -> int | None:
    if value is None or value == "" or value == "None":
        return None
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"lcbench model arg {name}={value!r} must be an integer") from None
    if out < least:
        raise ConfigError(f"lcbench model arg {name}={value!r} must be "
                          + ("positive" if least == 1 else f">= {least}"))
    return out


def _token_id(value: Any, name: str, vocab_size: int) -> int:
    """A token id the model can embed (an id past the embedding fails deep in the forward pass)."""
    try:
        out = int(value)
    except (TypeError, ValueError):
        out = -1
    if not 0 <= out < vocab_size:
        raise ConfigError(f"lcbench model arg {name}={value!r} must be a token id from 0 to {vocab_size - 1}")
    return out


def _warn_cut(kind: str, lengths: list[int], total: int, max_length: int | None) -> None:
    """One warning for the requests whose context was cut to ``max_length`` (``lengths``: theirs)."""
    if lengths:
        warnings.warn(f"{len(lengths)} of {total} {kind} requests do not fit max_length={max_length}: the longest "
                      f"has {max(lengths)} tokens; their contexts were cut from the left", stacklevel=3)


class LcbenchLM(TemplateLM):
    """An lcbench model (checkpoint folder or ``arch[:preset]``) behind lm-eval's model contract."""

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        tokenizer: str | None = None,
        device: str | None = "auto",
        dtype: str = "auto",
        backend: str | None = None,
        batch_size: int | str | None = 1,
        max_length: int | str | None = None,
        max_gen_toks: int | str = 256,
        chunk: int | str = 2048,
        prefix_token: int | str | None = None,
        add_bos_token: bool | str | None = None,
        pretrained: str | os.PathLike | None = None,
        max_batch_size: Any = None,  # lm-eval passes it; batch sizes are fixed here
        **unknown: Any,
    ):
        super().__init__()
        if unknown:
            # lm-eval also hands model args to tasks as metadata, so task settings may arrive here;
            # one that nearly spells an arg of ours is named with it (a high cutoff: only typos)
            known = [name for name in inspect.signature(LcbenchLM).parameters if name != "unknown"]
            meant = [f"{close!r} for {name!r}" for name in sorted(unknown)
                     if (close := close_match(name, known, cutoff=0.8)) is not None]
            warnings.warn(f"lcbench model ignores args {sorted(unknown)} (they still reach tasks as metadata)"
                          + (f"; did you mean {', '.join(meant)}?" if meant else ""), stacklevel=2)
        spec = checkpoint if checkpoint is not None else pretrained
        if spec is None:
            raise ConfigError("lcbench model needs checkpoint=<checkpoint folder or arch[:preset]>")
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's command line asks for cuda:0 unless told otherwise
            warnings.warn(f"device {device!r} asked for but CUDA is not available; running on cpu", stacklevel=2)
            device = "cpu"
        self._device = resolve_device(device or "auto")
        self._dtype = resolve_dtype(dtype, self._device)
        self.model, self.info = resolve_model(spec, device=self._device, dtype=self._dtype, backend=backend)
        self.tok = model_tokenizer(tokenizer, self.info, self.model)  # checked as a task's is
        self.batch_size = 1 if batch_size is None or str(batch_size).startswith("auto") else \
            _int_or_none(batch_size, "batch_size")
        self.max_length = _int_or_none(max_length, "max_length")
        self.max_gen_toks = _int_or_none(max_gen_toks, "max_gen_toks")
        self.chunk = _int_or_none(chunk, "chunk", least=0) or 0
        # lm-eval's hf model: the tokenizer's default start token (BOS) before every text, and BOS,
        # else the end token, as the prefix of an empty context or a rolling document. A model
        # lcbench trained never saw BOS (documents are packed without it, each after the end
        # token): its texts start bare, and from the end token
        start = self.tok.bos_id if self.info.train_config is None else None
        self.add_bos = start is not None if add_bos_token in (None, "") else _bool(add_bos_token, "add_bos_token")
        # the end of text: the tokenizer's, else "\n" (the byte tokenizer's, also its BOS/EOS in an export)
        self._eot = int(self.tok.eos_id) if self.tok.eos_id is not None else self.tok.encode("\n")[-1]
        if prefix_token is not None and prefix_token != "":
            self._prefix = _token_id(prefix_token, "prefix_token", self.model.config.vocab_size)
        else:
            self._prefix = int(start) if start is not None else self._eot
        self._warned_sampling = False

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    # -- what TemplateLM needs ---------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self._eot

    @property
    def prefix_token_id(self) -> int:
        return self._prefix

    @property
    def tokenizer_name(self) -> str:
        return self.tok.name

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "LcbenchLM":
        return cls.create_from_arg_obj(lm_utils.simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None) -> "LcbenchLM":
        """As lm-eval's, but an arg in ``--model_args`` (``batch_size=4``) wins over lm-eval's own
        option of the same name instead of colliding with it, and lm-eval's default device
        (``cuda:0``, given even when nobody asked for it) becomes ``auto`` on a machine without CUDA."""
        given = dict(arg_dict)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in given}
        if str(extra.get("device", "")).startswith("cuda") and not torch.cuda.is_available():
            log.info("lm-eval's device %s is not available here; lcbench picks one", extra.pop("device"))
        return cls(**given, **extra)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        ids = list(self.tok.encode(string))
        add = self.add_bos if add_special_tokens is None else add_special_tokens
        if add and add_special_tokens is None and self.tok.bos_id is not None:
            # As lm-eval's hf model: a text that already starts with the start token (a chat
            # template's "<s>...") gets no second one.
            bos_text = self.tok.decode([self.tok.bos_id])
            add = not (bos_text and string.startswith(bos_text))
        return [self.tok.bos_id, *ids] if add and self.tok.bos_id is not None else ids

    def tok_decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """As lm-eval's hf model: by default the text a reader sees (special tokens dropped, the
        tokenizer's clean-up of spaces), which its metrics compare with the answers."""
        if skip_special_tokens:
            return getattr(self.tok, "decode_text", self.tok.decode)(list(ids))
        return self.tok.decode(list(ids))

    def get_model_info(self) -> dict[str, Any]:
        return {"lcbench_model": self.info.name, "lcbench_arch": self.info.arch, "lcbench_params": self.info.params,
                "lcbench_tokenizer": self.tok.name, "lcbench_dtype": dtype_name(self.dtype)}

    # -- scoring --------------------------------------------------------------------------

    @torch.no_grad()
    def _score(self, seqs: list[list[int]], n_targets: list[int]) -> list[tuple[float, bool]]:
        """For each token sequence, (sum of log-probs of its last ``n`` tokens, all of them greedy).
        A batch wider than ``chunk`` is read in pieces of it through ``forward_chunk`` (the state
        carried), so that one piece's logits are held at a time, not the whole width's."""
        lengths = [len(s) - 1 for s in seqs]
        width = max(lengths)
        inp = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            inp[i, : lengths[i]] = torch.tensor(s[:-1], dtype=torch.long)
        inp = inp.to(self.device)
        piece = self.chunk if 0 < self.chunk < width and has_chunks(self.model) else width
        totals, greedy, state = [0.0] * len(seqs), [True] * len(seqs), None
        for start in range(0, width, piece):
            if piece == width:
                logits = self.model(inp)
            else:
                logits, state = self.model.forward_chunk(inp[:, start : start + piece], state)
            for i, (s, n) in enumerate(zip(seqs, n_targets)):
                # input positions L - n .. L - 1 predict the last n tokens; those in this piece
                lo, hi = max(lengths[i] - n, start), min(lengths[i], start + piece)
                if lo >= hi:
                    continue
                logp = F.log_softmax(logits[i, lo - start : hi - start].float(), dim=-1)
                target = torch.tensor(s[lo + 1 : hi + 1], dtype=torch.long, device=logp.device)
                totals[i] += logp.gather(-1, target[:, None]).sum().item()
                greedy[i] = greedy[i] and bool((logp.argmax(-1) == target).all().item())
            del logits
        return list(zip(totals, greedy))

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        seqs, n_targets, cut = [], [], []
        for _, context_enc, continuation_enc in requests:
            if not continuation_enc:
                raise ConfigError("lm-eval asked for the log-likelihood of an empty continuation")
            # lm-eval moves a context's trailing spaces to the continuation, so a context of spaces
            # alone arrives as no tokens: it is an empty context, read from the prefix token
            whole = (list(context_enc) or [self.prefix_token_id]) + list(continuation_enc)
            if self.max_length is not None:
                if len(continuation_enc) > self.max_length:
                    raise ConfigError(
                        f"a continuation of {len(continuation_enc)} tokens does not fit max_length={self.max_length}"
                    )
                if len(whole) > self.max_length + 1:
                    cut.append(len(whole))
                whole = whole[-(self.max_length + 1) :]
            seqs.append(whole)
            n_targets.append(len(continuation_enc))
        _warn_cut("loglikelihood", cut, len(requests), self.max_length)
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))  # similar lengths share a batch
        answers: list[tuple[float, bool] | None] = [None] * len(seqs)
        bar = tqdm(total=len(seqs), disable=disable_tqdm, desc="lcbench loglikelihood", leave=False)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            for i, ans in zip(batch, self._score([seqs[i] for i in batch], [n_targets[i] for i in batch])):
                answers[i] = ans
                request = requests[i][0]
                if request is not None:
                    self.cache_hook.add_partial("loglikelihood", request, ans)
            bar.update(len(batch))
        bar.close()
        return answers  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for (string,) in tqdm([r.args for r in requests], disable=disable_tqdm, desc="lcbench rolling", leave=False):
            tokens = self.tok_encode(string)  # with BOS where the tokenizer adds one, as lm-eval's hf model
            if not tokens:
                out.append(0.0)
                continue
            window = self.max_length or len(tokens)
            windows = [
                (None, ctx, cont)
                for ctx, cont in map(
                    lm_utils.make_disjoint_window,
                    lm_utils.get_rolling_token_windows(tokens, self.prefix_token_id, window, context_len=1),
                )
            ]
            total = sum(ll for ll, _ in self._loglikelihood_tokens(windows, disable_tqdm=True))
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            out.append(total)
        return out

    # -- generation -----------------------------------------------------------------------

    @torch.no_grad()
    def greedy_generate(self, context: list[int], max_new: int, stop: Sequence[str] = ()) -> str:
        """Greedy continuation of ``context`` (prefill once, then one decode_step per token),
        cut before the first stop string."""
        logits, state = self.model.prefill(torch.tensor([context], dtype=torch.long, device=self.device))
        generated = greedy_decode(self.model, logits, state, max_new, eos=self.tok.eos_id,
                                  stop=lambda ids: any(s and s in self.tok_decode(ids) for s in stop))
        text = self.tok_decode(generated)
        cut = min((text.index(s) for s in stop if s and s in text), default=len(text))
        return text[:cut]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out, cut = [], []
        for context, gen_kwargs in tqdm([r.args for r in requests], disable=disable_tqdm,
                                        desc="lcbench generate", leave=False):
            # as lm-eval's hf model: max_new_tokens (and the other aliases) cap generation like
            # max_gen_toks, and the end-of-text token's text also stops it
            kwargs = normalize_gen_kwargs(gen_kwargs or {}, self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None),
                                          self.tok_decode([self.eot_token_id], skip_special_tokens=False))
            max_new = int(kwargs.pop("max_gen_toks"))
            if kwargs.get("do_sample") and not self._warned_sampling:
                warnings.warn("lcbench decodes greedily; do_sample/temperature are ignored", stacklevel=2)
                self._warned_sampling = True
            ids = self.tok_encode(context) or [self.prefix_token_id]
            if self.max_length is not None:
                keep = max(1, self.max_length - max_new)
                if len(ids) > keep:
                    cut.append(len(ids))
                ids = ids[-keep:]
            text = self.greedy_generate(ids, max_new, until)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            out.append(text)
        _warn_cut("generate_until", cut, len(requests), self.max_length)
        return out


if __name__ != "__main__":  # under ``python -m`` the module registers once, when main() imports it by name
    register_model(NAME)(LcbenchLM)


# ---------------------------------------------------------------------------------------------
# lcbench lm-eval: run tasks, write rows of our result table


def tokenizer_folder(lm: LcbenchLM, out_dir: str | os.PathLike | None) -> str:
    """A folder ``AutoTokenizer`` loads for ``lm``'s tokenizer: the tokenizer's own folder, else an
    export under ``out_dir/tokenizer`` (or a temporary folder, removed with ``lm``)."""
    tok = lm.tok
    path = getattr(tok, "path", None)
    if path is not None and Path(path).is_dir():
        return str(path)
    if out_dir is not None:
        return str(export_tokenizer(tok, Path(out_dir) / "tokenizer"))
    target = tempfile.mkdtemp(prefix="lcbench-tok-")
    weakref.finalize(lm, shutil.rmtree, target, True)  # every run left one behind
    return str(export_tokenizer(tok, Path(target)))


PROPORTION_METRICS = ("acc", "acc_norm", "exact_match", "em", "f1", "contains", "mc1", "mc2")


def is_proportion(metric: str) -> bool:
    """Whether an lm-eval metric is a rate in [0, 1] (accuracy and the like), by its base name."""
    return metric.split("/")[0].split(",")[0] in PROPORTION_METRICS


def _metric_rows(task: str, metrics: Mapping[str, Any], n_samples: int | None,
                 per_length_n: Mapping[int, int]) -> list[dict[str, Any]]:
    rows = []
    for key, value in metrics.items():
        # metric keys are "name,filter"; others (alias, sample_len) are bookkeeping
        if "," not in key or "_stderr," in key or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        name, _, filt = key.partition(",")
        stderr = metrics.get(f"{name}_stderr,{filt}")
        row: dict[str, Any] = {"task": TABLE_TASK_PREFIX + task}
        if name.isdigit():  # RULER: one metric per context length; -1 marks a length with no samples
            if value == -1:
                continue
            row.update(metric="score", eval_ctx=int(name), n=per_length_n.get(int(name), n_samples))
        else:
            row.update(metric=name if filt in ("", "none") else f"{name}/{filt}", n=n_samples)
        rate = (is_proportion(name) or name.isdigit()) and 0 <= value <= 1  # RULER's per-length scores are rates
        if rate and isinstance(row["n"], int) and row["n"] >= 1:
            # a rate over a known count takes a Wilson interval, as NIAH's do: stderr +- 1.96 gave a
            # certain [1, 1] when every answer was right, and overshot [0, 1] near its ends
            est = stats.wilson(float(value), row["n"])
            row.update(ci_low=est.ci_low, ci_high=est.ci_high)
        elif isinstance(stderr, (int, float)) and math.isfinite(stderr):
            low, high = value - Z95 * stderr, value + Z95 * stderr
            if rate:  # a normal interval can overshoot what a rate can be
                low, high = max(low, 0.0), min(high, 1.0)
            row.update(ci_low=low, ci_high=high)
        rows.append(results.make_row(row.pop("metric"), value, **row))
    return rows


def _per_length_counts(samples: Sequence[Mapping[str, Any]]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for s in samples:
        length = (s.get("doc") or {}).get("max_length")
        if isinstance(length, int):
            counts[length] = counts.get(length, 0) + 1
    return counts


# the least value of each count (None: lm-eval's default); limit may be a fraction of a task
_COUNT_MINIMA = {"batch_size": 1, "max_length": 1, "max_gen_toks": 1, "num_fewshot": 0, "prefix_token": 0, "seed": 0,
                 "bootstrap_iters": 0}


def _check_counts(limit: float | None, max_seq_lengths: Sequence[Any] | None, **counts: Any) -> None:
    """One line for a bad number before any model is loaded or task indexed."""
    for name, value in counts.items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < _COUNT_MINIMA[name]):
            raise ConfigError(f"{name} must be an integer >= {_COUNT_MINIMA[name]}, got {value!r}")
    if limit is not None and not (isinstance(limit, (int, float)) and math.isfinite(limit) and limit > 0
                                  and (limit < 1 or float(limit).is_integer())):  # lm-eval cuts 1.5 to 1 unsaid
        raise ConfigError(f"limit must be a whole count of examples, or a fraction below 1, got {limit!r}")
    for length in max_seq_lengths or []:
        if not isinstance(length, int) or isinstance(length, bool) or length < 1:
            raise ConfigError(f"RULER lengths must be positive integers, got {length!r} in {list(max_seq_lengths)}")


def default_out_dir(model_spec: str, tasks: Sequence[str]) -> Path:
    """``runs/lm_eval/TASKS-MODEL``, as ``lcbench eval`` makes ``runs/eval/TASK-MODEL``: a folder per
    list of tasks (``runs/lm_eval/MODEL`` was replaced by the model's next run on another task, and
    the first task's scores went with it). A long list is cut, with a hash of the whole."""
    joined = "+".join(map(safe_name, tasks))
    if len(joined) > 60:
        joined = f"{joined[:48]}-{hashlib.sha256(joined.encode()).hexdigest()[:8]}"
    return Path("runs", "lm_eval", f"{joined}-{Path(model_spec).name.replace(':', '-')}")


def run_lm_eval(
    checkpoint: str | os.PathLike,
    tasks: Sequence[str] | str,
    *,
    limit: int | float | None = None,
    out_dir: str | os.PathLike | None = None,
    max_seq_lengths: Sequence[int] | None = None,
    tokenizer: str | None = None,
    include_path: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    num_fewshot: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    backend: str | None = None,
    batch_size: int = 1,
    max_length: int | None = None,
    max_gen_toks: int = 256,
    add_bos_token: bool | None = None,
    prefix_token: int | None = None,
    seed: int = 0,
    run_name: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    bootstrap_iters: int = 1000,
    command: Sequence[str] | str | None = None,
) -> pd.DataFrame:
    """Evaluate a checkpoint (or ``arch[:preset]``) on lm-eval tasks; return (and with ``out_dir``
    write) the scores as tidy rows: task ``lm_eval:<task>``, metric, value, ci_low/ci_high (value
    ± 1.96 stderr, where lm-eval gives a stderr), n (samples).

    ``max_seq_lengths`` (RULER): each length is evaluated on its own, so ``limit`` applies per
    length; tasks without per-length metrics run once. A task that fails gives an ``error`` row
    (``oom`` for out-of-memory, CPU or CUDA) and the others go on; one that fails at the first
    length is still run at the others. ``out_dir`` also receives lm-eval's raw
    results (``lm_eval_results.json``), per-sample records and the exported tokenizer.
    """
    task_list = (split_items(tasks, "tasks", "hellaswag,ruler") if isinstance(tasks, str)
                 else [str(t).strip() for t in tasks or []])
    if not task_list:
        raise ConfigError("no lm-eval task given; name one or more, e.g. --tasks hellaswag,ruler")
    _check_counts(limit=limit, batch_size=batch_size, max_length=max_length, max_gen_toks=max_gen_toks,
                  num_fewshot=num_fewshot, prefix_token=prefix_token, seed=seed, bootstrap_iters=bootstrap_iters,
                  max_seq_lengths=max_seq_lengths)
    include = [str(p) for p in ([include_path] if isinstance(include_path, (str, os.PathLike))
                                else include_path or [])] or None
    for folder in include or []:
        if not Path(folder).is_dir():
            raise ConfigError(f"include path {folder!r} is not a folder of task YAMLs")
    # a misspelt name fails here, in seconds, not after the model loads and lm-eval indexes its tasks
    check_task_names(task_list, known_task_names(task_list, include))
    from lm_eval import simple_evaluate  # lm-eval's evaluator takes seconds to import; only running tasks needs it

    # the model first: a bad one left an empty run folder behind, which later errors listed as a run
    lm = LcbenchLM(checkpoint=checkpoint, tokenizer=tokenizer, device=device, dtype=dtype, backend=backend,
                   batch_size=batch_size, max_length=max_length, max_gen_toks=max_gen_toks,
                   add_bos_token=add_bos_token, prefix_token=prefix_token)
    if out_dir is not None:
        prepare_output(out_dir, "run folder")
    tok_dir = tokenizer_folder(lm, out_dir)
    run = run_name or (Path(out_dir).name if out_dir is not None else "run")
    identity = identity_columns(lm.info, "lm_eval", run, lm.model, lm.device, lm.dtype, seed)  # rows set their task

    rows: list[dict[str, Any]] = []
    raw: dict[str, Any] = {}
    samples_out: list[dict[str, Any]] = []
    lengths: list[int | None] = list(max_seq_lengths) if max_seq_lengths else [None]
    pending = list(task_list)
    started = time.time()
    manager = None
    for li, length in enumerate(lengths):
        meta = {"tokenizer": tok_dir, **(metadata or {})}
        if length is not None:
            meta["max_seq_lengths"] = [int(length)]
        manager = task_manager(pending, include, meta, manager)
        if li == 0:  # the index's word on names the text of the YAMLs gave (a file it cannot parse, it drops)
            check_task_names(pending, manager.all_tasks, include)
        length_aware = []
        for task in pending:
            label = task if length is None else f"{task}@{length}"
            # One failed task is recorded (oom, error) and the others go on.
            with FailureGuard(["score"], lm.device, **{**identity, "task": TABLE_TASK_PREFIX + task,
                                                       "eval_ctx": length}) as guard, quiet_git_hash(), \
                    offline_nltk():
                res = simple_evaluate(
                    model=lm, tasks=[task], num_fewshot=num_fewshot, limit=limit, task_manager=manager,
                    log_samples=True, bootstrap_iters=bootstrap_iters, random_seed=seed, numpy_random_seed=seed,
                    torch_random_seed=seed, fewshot_random_seed=seed, verbosity="WARNING",
                )
            if guard.failed:
                log.warning("lm-eval task %s failed: %s", label, guard.error)
                rows += guard.rows
                if task not in length_aware:  # its metrics are unknown: another length may fit
                    length_aware.append(task)
                continue
            samples = res.pop("samples", {}) or {}
            raw[label] = res
            for name, metrics in res.get("results", {}).items():
                n = (res.get("n-samples", {}).get(name) or {}).get("effective")
                task_samples = samples.get(name, [])
                new = _metric_rows(name, metrics, n, _per_length_counts(task_samples))
                rows += [{**identity, **r} for r in new]
                if any(r.get("eval_ctx") is not None for r in new) and task not in length_aware:
                    length_aware.append(task)
                samples_out += [_sample_record(run, lm.info.name, name, s) for s in task_samples]
        if li == 0:
            pending = length_aware  # only tasks with per-length metrics run at the other lengths
    table = results.validate(rows) if rows else results.to_frame([])
    if out_dir is not None:
        out = Path(out_dir)
        results.atomic_write(out / "lm_eval_results.json",
                             lambda f: f.write(json.dumps(raw, indent=2, default=str) + "\n"))
        results.write_jsonl(out / results.SAMPLES_JSONL, samples_out)
        results.write_table(out, table)
        meta = run_metadata(
            seed=seed, command=command, device=str(lm.device), task="lm_eval", run=run,
            options={"tasks": task_list, "limit": limit, "max_seq_lengths": list(max_seq_lengths or []),
                     "num_fewshot": num_fewshot, "max_length": max_length, "max_gen_toks": max_gen_toks,
                     "add_bos_token": lm.add_bos, "prefix_token": lm.prefix_token_id,
                     "tokenizer": lm.tok.name, "include_path": include},
            model={"spec": str(checkpoint), "name": lm.info.name, "path": lm.info.path,
                   "config": lm.model.config.to_dict(), "train_config": lm.info.train_config},
            dtype=dtype_name(lm.dtype),
        )
        meta["elapsed_s"] = round(time.time() - started, 3)
        meta["rows"] = len(table)
        write_run_json(out, meta)
    return table


@contextlib.contextmanager
def quiet_git_hash() -> Iterator[None]:
    """lm-eval records the commit of the working folder by running ``git describe`` with its
    stderr on the terminal, so outside a repository every run prints "fatal: not a git
    repository". Record it quietly instead ("unknown" outside git)."""
    from lm_eval import evaluator  # loads with the evaluator (see run_lm_eval)

    def commit() -> str:
        return git_commit(Path.cwd())["commit"] or "unknown"

    with mock.patch.object(evaluator, "get_git_commit_hash", commit):
        yield


# RULER's tasks whose haystack is essays, split into sentences with nltk's punkt_tab
ESSAY_TASKS = ("niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multivalue", "niah_multiquery")


def _nltk_hint(resource: str) -> str:
    return (f"lcbench downloads nothing at run time; tasks that split text into sentences need it (RULER's essay "
            f"haystacks: {', '.join(ESSAY_TASKS)}), others run without it. Install it once with "
            f"`python -m nltk.downloader {resource}`")


@contextlib.contextmanager
def offline_nltk() -> Iterator[None]:
    """lm-eval's task modules call ``nltk.download`` as they load (RULER's ``prepare_niah`` asks for
    punkt_tab whenever it is missing, even for tasks that never split sentences). While lm-eval runs,
    that call fetches nothing and warns once per resource; a task that then misses the resource fails
    with the command that installs it instead of nltk's own advice to download it from Python."""
    try:
        import nltk
        from nltk import downloader
    except ImportError:  # without nltk nothing downloads through it
        yield
        return
    warned: set[str] = set()

    def refuse(info_or_id: Any = None, *args: Any, **kwargs: Any) -> bool:
        resource = str(info_or_id)
        if resource not in warned:
            warned.add(resource)
            warnings.warn(f"lm-eval asked nltk to download {resource!r}; it was not fetched: " + _nltk_hint(resource),
                          stacklevel=2)
        return False  # as nltk's download says when it fetched nothing

    # both names callers use (``nltk.download`` is a method bound at import: patching the class misses it)
    with mock.patch.object(nltk, "download", refuse), mock.patch.object(downloader, "download", refuse):
        try:
            yield
        except LookupError as exc:  # nltk's "Resource 'punkt_tab' not found ... nltk.download('punkt_tab')"
            missing = re.search(r"nltk\.download\('([^']+)'\)", str(exc))
            if missing is None:
                raise
            raise LookupError(f"nltk resource {missing[1]!r} is not installed: " + _nltk_hint(missing[1])) from exc


def task_manager(tasks: Sequence[str], include: list[str] | None, meta: dict[str, Any], base: Any = None) -> Any:
    """An lm-eval TaskManager whose tasks get ``meta`` as metadata.

    Indexing lm-eval's ~10k built-in task files takes about 30 s on 2 cores, so it is skipped when
    every task is found in ``include``, and an index already built (``base``) is reused with new
    metadata."""
    from lm_eval.tasks import TaskManager  # loads with the evaluator (see run_lm_eval)

    if base is not None:
        try:
            from lm_eval.tasks._factory import TaskFactory

            manager = copy.copy(base)
            manager.metadata, manager._factory = meta, TaskFactory(meta=meta)
            return manager
        except (ImportError, AttributeError):  # another lm-eval layout: index again
            pass
    if include:
        manager = TaskManager(include_path=include, include_defaults=False, metadata=meta)
        if all(t in manager.all_tasks for t in tasks):
            return manager
    return TaskManager(include_path=include, metadata=meta)


def _sample_record(run: str, model: str, task: str, sample: Mapping[str, Any]) -> dict[str, Any]:
    keep = {k: sample[k] for k in ("doc_id", "target", "filtered_resps", "resps") if k in sample}
    # numeric fields are the sample's scores; RULER marks the lengths a sample is not of with -1
    scores = {k: v for k, v in sample.items()
              if isinstance(v, (int, float)) and k != "doc_id" and not (k.isdigit() and v == -1)}
    doc = sample.get("doc") or {}
    return {"run": run, "model": model, "task": TABLE_TASK_PREFIX + task, **keep, "scores": scores,
            **({"eval_ctx": doc["max_length"]} if isinstance(doc.get("max_length"), int) else {})}


def main(argv: Sequence[str] | None = None) -> None:
    """lm-eval's own command line, with ``--model lcbench`` registered."""
    from lm_eval.__main__ import cli_evaluate  # lm-eval's command line, loaded only to run it

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    with quiet_git_hash(), offline_nltk():
        cli_evaluate()


if __name__ == "__main__":
    from harness.adapters.lm_eval import main as _main  # the importable copy registers the model

    _main()
