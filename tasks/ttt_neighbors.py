"""``ttt_neighbors``: test-time training on nearest neighbours (Hübotter et al., arXiv 2509.24510).

Before predicting a test window, fine-tune a copy of the model for a few steps on the ``k``
training windows nearest to it, and measure how much its loss on the window drops; the control
fine-tunes on ``k`` random training windows instead. The paper finds the gain largest when the
model is under-parameterised for its data, shrinking as models grow.

- Test windows: ``test_windows`` windows of ``context`` tokens from the held-out documents,
  evenly spread over them (as :func:`harness.data.packing.select_windows` picks them).
- Candidates: ``train_windows`` windows of the same length from the training documents (the
  checkpoint's training split), evenly spread; ``0`` takes every whole window.
- Retrieval: exact cosine k-NN over embeddings from ``embedder`` (:mod:`harness.data.retrieval`;
  by default the model's mean-pooled hidden states), cached on disk.
- Fine-tuning: a copy of the model in training mode, AdamW without weight decay at constant
  ``lr``, ``steps`` steps on batches of ``batch_size`` of the k windows (cycling through them),
  the parameters chosen by ``tune``. For TTT-E2E this is ordinary outer-loop training of the copy.
  The copy is reset to the original weights (and a fresh optimizer) for every test window.

For models with an inner learning rate (``ttt_e2e``) and ``inner_gain``, the task also reads each
test window with the inner lr set to 0 (the same weights, no test-time updates), so TTT-E2E's own
in-context gain sits next to the neighbour gain in one table.

Rows (``eval_ctx`` = ``context``; values in nats/token, gains = loss before - loss after, so
positive is better):

================  ==========  ================================================================
metric            variant     value
================  ==========  ================================================================
loss_before                   mean loss of the test windows under the original model
loss_after        neighbors   ... after fine-tuning on the k nearest training windows
loss_after        random      ... after fine-tuning on k random training windows
gain              neighbors   loss_before - loss_after (neighbors)
gain              random      loss_before - loss_after (random)
gain_over_random              gain (neighbors) - gain (random)
loss_no_inner                 loss with the inner lr set to 0 (ttt_e2e only)
gain              in_context  loss_no_inner - loss_before (ttt_e2e only)
================  ==========  ================================================================

Confidence intervals are a cluster bootstrap over held-out documents (a document's windows are
resampled together; ``n`` is the number of documents). Per-window losses, the neighbours and
their similarities go to ``samples.jsonl``.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import nn

from harness.api import stats
from harness.api.errors import ConfigError, check_choice
from harness.api.interface import LCModel
from harness.api.registry import register_task
from harness.api.results import make_row
from harness.api.staging import ensure_writable
from harness.api.task import DataOptions, RunContext, Task, check_positive, option
from harness.data import retrieval
from harness.data.heldout import training_documents
from harness.data.packing import select_windows, tokenize_documents
from harness.report.figures import SkipFigure, register_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from harness.report.plots import Context

TUNE = ("all", "last_blocks", "last_mlps")
MLP_MODULES = ("mlp", "prime")  # a block's MLPs: its own, and TTT-E2E's prime MLP
NO_CACHE = ("off", "none", "")


@dataclass
class TTTNeighborsOptions(DataOptions):
    context: int = option(256, "window length in tokens (test windows and training windows)")
    test_windows: int = option(16, "held-out test windows, evenly spread over the held-out documents")
    train_windows: int = option(4096, "training windows to retrieve from, evenly spread (0: every whole window)")
    k: int = option(8, "neighbours (and random control windows) fine-tuned on per test window")
    steps: int = option(4, "fine-tuning steps per test window")
    lr: float = option(1e-3, "fine-tuning learning rate (AdamW, constant, no weight decay)")
    batch_size: int = option(8, "windows per fine-tuning step (the k windows are cycled through)")
    tune: str = option("all", "parameters fine-tuned: all | last_blocks | last_mlps")
    last_blocks: int = option(1, "how many last blocks tune=last_blocks/last_mlps trains")
    embedder: str = option("model", "retrieval embedding: model (hidden states, else log-probs) | hidden | "
                                    "logprobs | bytes")
    index: str = option("exact", "nearest-neighbour search: exact (torch, cosine) | faiss (if installed)")
    cache_dir: str | None = option(None, "embedding cache folder (default $LCBENCH_CACHE/embeddings, else "
                                          "~/.cache/lcbench/embeddings; 'off': none)")
    inner_gain: bool = option(True, "models with an inner lr (ttt_e2e): also measure the loss with it set to 0")
    resamples: int = option(2000, "bootstrap resamples for confidence intervals")

    def __post_init__(self) -> None:
        if self.context < 2:
            raise ConfigError(f"option 'context' must be at least 2 tokens, got {self.context}")
        check_positive("test_windows", [self.test_windows])
        check_positive("train_windows", [self.train_windows], allow_zero=True)
        check_positive("k", [self.k], allow_zero=True)
        check_positive("steps", [self.steps], allow_zero=True)
        check_positive("lr", [self.lr], allow_zero=True)
        check_positive("batch_size", [self.batch_size])
        check_positive("last_blocks", [self.last_blocks])
        check_positive("resamples", [self.resamples])
        check_choice("tune", self.tune, TUNE)
        check_choice("embedder", self.embedder, retrieval.EMBEDDERS)
        check_choice("index", self.index, retrieval.INDEXES)

    @property
    def cache_path(self) -> Path | None:
        if self.cache_dir is None:
            return retrieval.DEFAULT_CACHE
        return None if self.cache_dir.lower() in NO_CACHE else Path(self.cache_dir)


# ---------------------------------------------------------------------------------------------
# Fine-tuning


def tuned_parameters(model: LCModel, tune: str, last_blocks: int = 1) -> list[nn.Parameter]:
    """The parameters ``tune`` trains: all, those of the last blocks, or those blocks' MLPs."""
    check_choice("tune", tune, TUNE)
    if tune == "all":
        return list(model.parameters())
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ConfigError(f"tune={tune!r} needs a model with a `blocks` list ({type(model).__name__} has none); "
                          "use tune='all'")
    if last_blocks > len(blocks):
        raise ConfigError(f"last_blocks={last_blocks} but the model has {len(blocks)} blocks")
    chosen = list(blocks[-last_blocks:])
    if tune == "last_mlps":
        chosen = [m for b in chosen for name, m in b.named_children() if name in MLP_MODULES]
        if not chosen:
            raise ConfigError(f"tune='last_mlps': the last blocks have no child module named {MLP_MODULES}")
    return list({id(p): p for m in chosen for p in m.parameters()}.values())


class FineTuner:
    """Fine-tunes one working copy of a model, reset to the original weights before each run
    (the copy is made once; resetting is a state-dict load, not a new model)."""

    def __init__(self, model: LCModel, options: TTTNeighborsOptions):
        self.options = options
        self.original = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.work = copy.deepcopy(model)
        self.params = tuned_parameters(self.work, options.tune, options.last_blocks)

    def tune(self, windows: torch.Tensor) -> LCModel:
        """The copy after ``steps`` steps on ``windows [k, L]`` (the original weights when k or
        steps is 0; lr 0 runs the steps and must change nothing), in eval mode."""
        work, o = self.work, self.options
        work.load_state_dict(self.original)
        if len(windows) and o.steps:
            wanted = {id(p) for p in self.params}
            for p in work.parameters():
                p.requires_grad_(id(p) in wanted)
            optimizer = torch.optim.AdamW(self.params, lr=o.lr, weight_decay=0.0)
            order = torch.arange(len(windows)).repeat(math.ceil(o.steps * o.batch_size / len(windows)) + 1)
            work.train()
            with torch.enable_grad():  # run_task evaluates under no_grad
                for step in range(o.steps):
                    batch = windows[order[step * o.batch_size : (step + 1) * o.batch_size]]
                    loss = work.token_losses(batch).float().mean()
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            for p in work.parameters():
                p.requires_grad_(True)
        return work.eval()


def window_loss(model: LCModel, window: torch.Tensor) -> float:
    with torch.no_grad():
        return float(model.token_losses(window[None]).double().mean())


def without_inner_updates(model: LCModel) -> LCModel | None:
    """The same model with its inner learning rate set to 0 (rebuilt from its config with the
    same weights), or None when its config has no ``inner_lr``."""
    fields = {f.name for f in dataclasses.fields(model.config)}
    if "inner_lr" not in fields:
        return None
    changes = {name: 0.0 for name in ("inner_lr", "inner_lr_init") if name in fields}
    twin = type(model)(model.config.replace(**changes))
    twin.load_state_dict(model.state_dict())
    p = next(model.parameters())
    return twin.to(device=p.device, dtype=p.dtype).eval()


# ---------------------------------------------------------------------------------------------
# The task


def cut_windows(token_docs: Sequence[torch.Tensor], length: int,
                count: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """(windows ``[N, length]``, their (document, start)); ``count`` 0: every whole window."""
    lengths = [t.numel() for t in token_docs]
    budget = count * length if count else sum(lengths)
    where = select_windows(lengths, length, budget)
    if not where:
        return torch.empty(0, length, dtype=torch.long), []
    return torch.stack([token_docs[i][s : s + length] for i, s in where]), where


@register_task("ttt_neighbors")
class TTTNeighbors(Task):
    """Loss before/after fine-tuning on each test window's nearest training windows (vs random ones)."""

    name = "ttt_neighbors"
    Options = TTTNeighborsOptions

    def run(self, model: LCModel, options: TTTNeighborsOptions, ctx: RunContext):
        o = options
        tokenizer, test_docs = ctx.heldout(o, model)
        train_docs = training_documents(o, ctx.model_info, test_docs)
        test_ids, train_ids = (tokenize_documents(docs, tokenizer, ctx.progress) for docs in (test_docs, train_docs))
        tests, test_where = cut_windows(test_ids, o.context, o.test_windows)
        pool, pool_where = cut_windows(train_ids, o.context, o.train_windows)
        if not len(tests):
            raise ConfigError(f"no held-out document has {o.context} tokens; lower 'context'")
        if len(pool) < o.k:
            raise ConfigError(f"k={o.k} but only {len(pool)} training windows of {o.context} tokens exist")
        if o.cache_path is not None:  # fail before the embedding work, not with an OSError after it
            ensure_writable(o.cache_path.expanduser(), "embedding cache folder")

        embedder = retrieval.get_embedder(o.embedder, model)
        keys, queries = (retrieval.embed_windows(model, windows, embedder, cache_dir=o.cache_path, progress=ctx.progress)
                         for windows in (pool, tests))
        sims, neighbours = retrieval.nearest(queries, keys, o.k, o.index)

        tuner = FineTuner(model, o)
        no_inner = without_inner_updates(model) if o.inner_gain else None
        rng = np.random.default_rng([ctx.seed, o.context, o.k])
        pool_dev, losses = pool.to(ctx.device), []
        for w in ctx.bar(range(len(tests)), desc="ttt_neighbors", unit="window"):
            window = tests[w].to(ctx.device)
            randoms = torch.from_numpy(rng.choice(len(pool), size=o.k, replace=False))
            row = {"before": window_loss(model, window),
                   "after_neighbors": window_loss(tuner.tune(pool_dev[neighbours[w]]), window),
                   "after_random": window_loss(tuner.tune(pool_dev[randoms]), window)}
            if no_inner is not None:
                row["no_inner"] = window_loss(no_inner, window)
            losses.append(row)
            doc, start = test_where[w]
            ctx.record(kind="window", doc=test_docs[doc].name, start=int(start), eval_ctx=o.context, loss=row,
                       embedder=embedder.name, similarity=[round(float(s), 4) for s in sims[w]],
                       neighbor_windows=[[train_docs[pool_where[j][0]].name, int(pool_where[j][1])]
                                         for j in neighbours[w].tolist()])
        return self._rows(pd.DataFrame(losses), [d for d, _ in test_where], o, ctx)

    def _rows(self, losses: pd.DataFrame, docs: list[int], o: TTTNeighborsOptions, ctx: RunContext) -> list[dict]:
        which = np.unique(docs, return_inverse=True)[1]
        per_doc = np.bincount(which)
        before, near, rand = (losses[c].to_numpy() for c in ("before", "after_neighbors", "after_random"))
        series = {("loss_before", None): before, ("loss_after", "neighbors"): near, ("loss_after", "random"): rand,
                  ("gain", "neighbors"): before - near, ("gain", "random"): before - rand,
                  ("gain_over_random", None): rand - near}
        if "no_inner" in losses:
            series[("loss_no_inner", None)] = losses["no_inner"].to_numpy()
            series[("gain", "in_context")] = losses["no_inner"].to_numpy() - before
        rows = []
        for i, ((metric, variant), values) in enumerate(series.items()):
            est = stats.bootstrap_ratio(np.bincount(which, weights=values), per_doc, o.resamples,
                                        seed=[ctx.seed, o.context, i])
            rows.append(make_row(metric, **est.as_columns(), variant=variant, eval_ctx=o.context,
                                 n_tokens=len(values) * (o.context - 1)))
        return rows


# ---------------------------------------------------------------------------------------------
# Figure


@register_figure("gain_vs_size", task="ttt_neighbors")
def gain_vs_size(ctx: Context) -> Iterator[tuple[str, Figure]]:
    """``lcbench plot``'s figure of a table with ttt_neighbors rows (see :func:`gain_vs_size_figure`)."""
    yield "gain_vs_size", _gain_vs_size(ctx.prep.rows)


def gain_vs_size_figure(table: pd.DataFrame | str | os.PathLike, out_path: str | os.PathLike) -> list[Path]:
    """Gain (nats/token) against non-embedding parameters, one colour per architecture: TTT on
    neighbours (solid), on random windows (dashed), and TTT-E2E's in-context gain (dotted),
    with bootstrap error bars. Writes ``out_path`` as PNG and PDF; returns the paths."""
    import matplotlib  # matplotlib loads only to draw a figure

    from harness.report.plots import PAPER_RC, load, save_figure

    stem = Path(out_path)
    with matplotlib.rc_context(PAPER_RC):
        fig = _gain_vs_size(load(table))
        return save_figure(fig, stem.with_suffix("") if stem.suffix in (".png", ".pdf") else stem, ("png", "pdf"))


def _gain_vs_size(table: pd.DataFrame) -> Figure:
    """One panel per context length; a model measured several times at one length is drawn at the
    mean of its gains: over runs of one seed without an interval (one run's interval is not the
    mean's), over several seeds with their interval over seeds (:func:`tables.over_seeds`)."""
    from matplotlib.figure import Figure  # matplotlib loads only to draw a figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    from harness.report.plots import arch_style, seeds_gid, seeds_legend
    from harness.report.tables import context_label, over_seeds

    df = table[(table["task"] == "ttt_neighbors") & (table["metric"] == "gain") & (table["status"] == "ok")]
    if df.empty:
        raise SkipFigure("the table has no ok 'gain' rows of task ttt_neighbors")
    df = df.assign(eval_ctx=df["eval_ctx"] if "eval_ctx" in df else pd.NA)
    styles = {"neighbors": ("-", "TTT on neighbours"), "random": ("--", "TTT on random windows"),
              "in_context": (":", "TTT-E2E in-context")}
    contexts = sorted(df["eval_ctx"].dropna().unique()) or [None]
    fig = Figure(figsize=(6.0 if len(contexts) == 1 else 3.6 * len(contexts), 4.4), layout="constrained")
    axes = fig.subplots(1, len(contexts), sharey=True, squeeze=False)[0]
    label = lambda v, _=None: f"{v / 1e6:.2g}M"  # noqa: E731
    for ax, context in zip(axes, contexts):
        # rows at several lengths were joined into one zig-zag line
        at = df[df["eval_ctx"] == context] if context is not None else df
        for (arch, variant), measured in at.groupby(["arch", "variant"], sort=True):
            pts = measured.groupby("params", sort=True).agg(
                value=("value", "mean"), ci_low=("ci_low", "first"), ci_high=("ci_high", "first"),
                rows=("value", "size"), seeds=("seed", "nunique")).reset_index()
            pooled = pts["rows"] > 1
            pts.loc[pooled, ["ci_low", "ci_high"]] = float("nan")
            over_seeds(pts, measured, measured["params"].map({p: i for i, p in enumerate(pts["params"])}))
            color, marker = arch_style(arch)
            line, what = styles.get(variant, ("-.", variant))
            ax.errorbar(pts["params"], pts["value"], yerr=[pts["value"] - pts["ci_low"], pts["ci_high"] - pts["value"]],
                        color=color, marker=marker, linestyle=line, capsize=2, gid=seeds_gid(pts),
                        label=f"{arch}: {what}" if ax is axes[0] else None)
        ax.axhline(0.0, color="0.5", linewidth=0.8)
        ax.set_xscale("log")
        ticks = {label(v): v for v in sorted(at["params"].unique(), reverse=True)}  # matched sizes: one tick
        ax.xaxis.set_major_locator(FixedLocator(sorted(ticks.values())))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(label))
        ax.set_xlabel("Non-embedding parameters")
        if context is not None and len(contexts) > 1:
            ax.set_title(f"context {context_label(context)}", fontsize=9)
    axes[0].set_ylabel("Loss gain (nats/token)")
    fig.suptitle("Test-time training gain vs model size")
    handles, _ = axes[0].get_legend_handles_labels()
    fig.legend(handles=handles + seeds_legend(fig), loc="outside lower center", ncols=2, frameon=False, fontsize=7)
    return fig
