"""``loss_scaling``: next-token loss against evaluation context length, and by token position.

Windows of exactly L tokens (never padded) are cut from held-out documents, in one of two modes
(option ``targets``):

- ``same`` (the default): every context length scores the same target tokens. End positions are
  fixed once, as the ends of windows of the longest length L_max (``tokens_per_context // L_max``
  of them, shared out evenly between the documents at least L_max tokens long); for each length
  L the window is the L tokens that end there, and the overall loss is the mean NLL of its last
  ``target_tokens`` targets (default: half the shortest length). Those targets are the same tokens
  at every length, so a difference between lengths comes from context alone.
- ``per_length``: each length draws its own windows: a document with m = len // L whole windows
  gives up to m of them, evenly spread over it, shared out evenly between the documents until
  ``tokens_per_context`` tokens are reached; the overall loss is over every target of a window.
  Lengths are then measured on different text (and different documents), which can hide or
  invert the effect of context.

Either way the selection depends only on the data and the options, so every model is measured on
the same windows and the gap to full attention at each length is a paired comparison.

Rows, per length L (``eval_ctx``):

- ``loss``, all positions: the mean NLL (nats/token) of the scored targets (``same``: the last
  ``target_tokens`` of every window; ``per_length``: targets 1..L-1 of every window);
- ``loss`` per position bin ``[pos_start, pos_end)`` (log-spaced: ``bins_per_octave`` bins per
  doubling): the mean NLL of targets at those positions, i.e. predicted from that many tokens
  of context, over every target of the window in both modes. The bins partition 1..L-1, so in
  ``per_length`` mode their token-weighted mean is the overall loss.

``n`` is the number of documents and ``n_tokens`` the number of target tokens behind a value;
the confidence interval is a bootstrap over documents (the cluster bootstrap: a document's
windows are resampled together). Long windows are read in pieces of ``chunk`` tokens through the
model's ``forward_chunk`` when it has one, so memory stays bounded by the piece (plus the
model's state). Per-window and per-document losses go to ``samples.jsonl``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from harness.api import stats
from harness.api.errors import ConfigError, check_choice
from harness.api.failures import FailureGuard
from harness.api.registry import register_task
from harness.api.results import make_row
from harness.api.task import DataOptions, Task, check_positive, option, stream_token_losses
from harness.data.packing import select_windows, tokenize_documents, window_ends


TARGET_MODES = ("same", "per_length")


@dataclass
class LossScalingOptions(DataOptions):
    targets: str = option("same", "which targets each length scores: same (the same tokens at every length, for "
                                  "fixed end positions) or per_length (each length its own windows, every target)")
    target_tokens: int = option(0, "targets=same: targets scored at the end of each window (0: half the shortest length)")
    contexts: list[int] = option([256, 512, 1024, 2048, 4096], "evaluation context lengths (tokens)")
    tokens_per_context: int = option(65536, "tokens read per context length: windows = this // length (targets=same: "
                                             "// the longest length, the same end positions for all), at least 1")
    batch_size: int = option(4, "windows per forward pass")
    chunk: int = option(2048, "read long windows in pieces of this many tokens (0: whole window at once)")
    bins_per_octave: int = option(1, "position bins per doubling of position")
    resamples: int = option(2000, "bootstrap resamples for confidence intervals")

    def __post_init__(self) -> None:
        check_positive("contexts", self.contexts)
        if any(c < 2 for c in self.contexts):
            raise ConfigError(f"every context length must be at least 2 tokens, got {self.contexts}")
        check_positive("tokens_per_context", [self.tokens_per_context])
        check_positive("batch_size", [self.batch_size])
        check_positive("chunk", [self.chunk], allow_zero=True)
        check_positive("bins_per_octave", [self.bins_per_octave])
        if self.bins_per_octave > MAX_BINS_PER_OCTAVE:  # position_bins steps through every candidate edge
            raise ConfigError(f"bins_per_octave must be at most {MAX_BINS_PER_OCTAVE} (bins a few tokens wide at "
                              f"positions in the thousands), got {self.bins_per_octave}")
        check_positive("resamples", [self.resamples])
        self.contexts = sorted(set(self.contexts))
        check_choice("targets mode", self.targets, TARGET_MODES)
        check_positive("target_tokens", [self.target_tokens], allow_zero=True)
        if self.targets == "per_length" and self.target_tokens:
            raise ConfigError(f"target_tokens={self.target_tokens} applies to targets=same only; "
                              "targets=per_length scores every target of a window")
        if self.target_tokens >= self.contexts[0]:
            raise ConfigError(f"target_tokens must be below the shortest context length {self.contexts[0]}, "
                              f"got {self.target_tokens}")
        if self.targets == "same" and self.target_tokens == 0:
            self.target_tokens = max(1, self.contexts[0] // 2)

    def plan(self, lengths: list[int]) -> dict[int, list[tuple[int, int]]]:
        """(document index, start) of the windows of each context length."""
        if self.targets == "per_length":
            return {L: select_windows(lengths, L, self.tokens_per_context) for L in self.contexts}
        ends = window_ends(lengths, self.contexts[-1], self.tokens_per_context)
        return {L: [(i, end - L) for i, end in ends] for L in self.contexts}

    def scored(self, length: int) -> np.ndarray:
        """Mask over targets 1..length-1 of a window: those the overall loss averages."""
        mask = np.ones(length - 1, dtype=bool)
        if self.targets == "same":
            mask[: length - 1 - self.target_tokens] = False
        return mask


MAX_BINS_PER_OCTAVE = 64


def position_bins(length: int, bins_per_octave: int = 1) -> list[tuple[int, int]]:
    """Log-spaced bins ``[start, end)`` partitioning target positions 1..length-1."""
    top = math.log2(length)
    edges = {1, length}
    k = 1
    while k / bins_per_octave < top:
        edges.add(int(round(2 ** (k / bins_per_octave))))
        k += 1
    edges = sorted(e for e in edges if 1 <= e <= length)
    return list(zip(edges[:-1], edges[1:]))


@register_task("loss_scaling")
class LossScaling(Task):
    """Mean next-token loss vs evaluation context length, and loss by token position."""

    name = "loss_scaling"
    Options = LossScalingOptions

    def run(self, model, options: LossScalingOptions, ctx):
        tokenizer, docs = ctx.heldout(options, model)
        token_docs = tokenize_documents(docs, tokenizer, ctx.progress)
        lengths = [t.numel() for t in token_docs]
        plan = options.plan(lengths)
        rows = []
        bar = ctx.bar(total=sum(len(w) for w in plan.values()), desc="loss_scaling", unit="window")
        for L, windows in plan.items():
            bar.set_postfix(ctx=L)
            if not windows:
                need = L if options.targets == "per_length" else options.contexts[-1]
                rows.append(make_row("loss", None, eval_ctx=L, status="error",
                                     message=f"no held-out document has {need} tokens (longest: {max(lengths)})"))
                continue
            # One length running out of memory must not lose the others.
            with FailureGuard(["loss"], ctx.device, where=f"at {L} tokens", only_oom=True, eval_ctx=L) as guard:
                losses = self._evaluate(model, token_docs, windows, L, options, ctx, bar)
            rows += guard.rows if guard.failed else self._rows(L, windows, losses, docs, options, ctx)
        bar.close()
        return rows

    def _evaluate(self, model, token_docs, windows, L, options, ctx, bar) -> np.ndarray:
        """[windows, L-1] per-token losses."""
        out = []
        for b in range(0, len(windows), options.batch_size):
            batch = torch.stack([token_docs[i][s : s + L] for i, s in windows[b : b + options.batch_size]])
            losses = stream_token_losses(model, batch.to(ctx.device), options.chunk)
            out.append(losses.double().cpu().numpy())
            bar.update(batch.size(0))
        return np.concatenate(out, 0)

    def _rows(self, L, windows, losses, docs, options, ctx):
        doc_ids = sorted({i for i, _ in windows})
        which = np.array([doc_ids.index(i) for i, _ in windows])
        positions = np.arange(1, L)  # target position of each loss column

        def estimate(columns: np.ndarray, bin_index: int) -> tuple[stats.Estimate, int]:
            per_window = losses[:, columns].sum(1)
            sums = np.bincount(which, weights=per_window, minlength=len(doc_ids))
            counts = np.bincount(which, minlength=len(doc_ids)) * columns.sum()
            est = stats.bootstrap_ratio(sums, counts, options.resamples, seed=[ctx.seed, L, bin_index])
            return est, int(counts.sum())

        est, n_tokens = estimate(options.scored(L), 0)
        rows = [make_row("loss", **est.as_columns(), eval_ctx=L, n_tokens=n_tokens)]
        bins = position_bins(L, options.bins_per_octave)
        bin_means = []
        for k, (lo, hi) in enumerate(bins, start=1):
            columns = (positions >= lo) & (positions < hi)
            est, n_tokens = estimate(columns, k)
            rows.append(make_row("loss", **est.as_columns(), eval_ctx=L, pos_start=lo, pos_end=hi, n_tokens=n_tokens))
            bin_means.append(losses[:, columns].mean(1))
        bin_means = np.stack(bin_means, 1)
        scored = losses[:, options.scored(L)].mean(1)  # what the overall row averages: pairs windows across lengths
        for w, (i, start) in enumerate(windows):
            ctx.record(kind="window", eval_ctx=L, doc=docs[i].name, start=int(start), n_tokens=L - 1,
                       loss=float(losses[w].mean()), targets=options.targets, scored_loss=float(scored[w]), bins=[[lo, hi] for lo, hi in bins],
                       bin_loss=[float(x) for x in bin_means[w]])
        for d, i in enumerate(doc_ids):
            mine = which == d
            ctx.record(kind="document", eval_ctx=L, doc=docs[i].name, windows=int(mine.sum()),
                       n_tokens=int(mine.sum()) * (L - 1), loss=float(losses[mine].mean()))
        return rows
