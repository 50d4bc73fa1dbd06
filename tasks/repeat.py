"""``repeat``: how far back a model copies from — the loss on a span of text it has seen before.

Loss against context (``loss_scaling``) says whether a model gains from far context, not why; a
gain can come from style, topic or copying. This task isolates copying (the induction behaviour
of Olsson et al., 2022): for fixed end positions in held-out documents and each length L, the
natural window of L tokens ending there is read twice:

- ``control``: the window as it is;
- ``repeat``: the same window with its first ``span`` tokens replaced by its last ``span``
  tokens, so the span at the end has appeared once before, L - span tokens earlier.

Both score the same targets (the span's tokens after its first ``prefix``, which let the model
see that the text repeats) after the same amount of context; the only difference is the earlier
occurrence. ``copy_gain`` = control loss - repeat loss (nats/token) is then what the model
gained from having seen the span L - span tokens back: near 0 for a model that cannot reach
that far (a window, a decaying state), up to the whole control loss for one that copies. The
end positions are the same at every length (the windows of the longest length, shared out
between held-out documents as ``loss_scaling`` does), so lengths are paired too.

Rows, per length L (``eval_ctx``): ``repeat_loss``, ``control_loss`` and ``copy_gain``, each the
mean over scored targets with a bootstrap interval over documents (a document's windows are
resampled together; the gain is paired by window). Per-window losses go to ``samples.jsonl``.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from harness.api import stats
from harness.api.errors import ConfigError
from harness.api.failures import FailureGuard
from harness.api.registry import register_task
from harness.api.results import make_row, status_rows
from harness.api.task import DataOptions, Task, check_positive, option, stream_token_losses
from harness.data.packing import tokenize_documents, window_ends
from harness.report.figures import SkipFigure, register_figure
from harness.report.tables import context_label

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from harness.report.plots import Context

METRICS = ("repeat_loss", "control_loss", "copy_gain")


@dataclass
class RepeatOptions(DataOptions):
    contexts: list[int] = option([128, 256, 512, 1024], "window lengths L (tokens): the span repeats L - span tokens back")
    span: int = option(32, "tokens of the repeated span")
    prefix: int = option(4, "tokens of the span's second occurrence read before scoring starts (not scored)")
    windows: int = option(64, "end positions (windows per length), shared out between held-out documents")
    batch_size: int = option(8, "windows per forward pass (each is read twice: repeat and control)")
    chunk: int = option(2048, "read long windows in pieces of this many tokens (0: whole window at once)")
    resamples: int = option(1000, "bootstrap resamples for confidence intervals")

    def __post_init__(self) -> None:
        check_positive("contexts", self.contexts)
        for name in ("span", "windows", "batch_size", "resamples"):
            check_positive(name, [getattr(self, name)])
        check_positive("chunk", [self.chunk], allow_zero=True)
        check_positive("prefix", [self.prefix], allow_zero=True)
        if self.prefix >= self.span:
            raise ConfigError(f"prefix={self.prefix} leaves nothing of the span={self.span} to score; "
                              f"choose a prefix below {self.span}")
        self.contexts = sorted(set(self.contexts))
        short = [L for L in self.contexts if L < 2 * self.span]
        if short:
            raise ConfigError(f"context length(s) {short} cannot hold the span ({self.span} tokens) twice; every "
                              f"length must be at least 2 x span = {2 * self.span} (or choose a smaller span)")

    def scored(self, length: int) -> slice:
        """Columns of the per-token losses [.., length-1] (column j scores token j+1) of the targets:
        the last span's tokens after its prefix."""
        return slice(length - self.span + self.prefix - 1, length - 1)


def repeat_pair(window: torch.Tensor, span: int) -> torch.Tensor:
    """[2, L]: the window with its first ``span`` tokens replaced by its last ones (repeat), and
    the window itself (control)."""
    repeated = window.clone()
    repeated[:span] = window[-span:]
    return torch.stack([repeated, window])


@register_task("repeat")
class Repeat(Task):
    """Loss on a span seen L - span tokens earlier, against the same span unseen: copying by distance."""

    name = "repeat"
    Options = RepeatOptions

    def run(self, model, options: RepeatOptions, ctx):
        tokenizer, docs = ctx.heldout(options, model)
        token_docs = tokenize_documents(docs, tokenizer, ctx.progress)
        lengths = [t.numel() for t in token_docs]
        longest = options.contexts[-1]
        ends = window_ends(lengths, longest, options.windows * longest)
        if not ends:
            message = f"no held-out document has {longest} tokens (longest: {max(lengths, default=0)})"
            return [row for L in options.contexts for row in status_rows(METRICS, "error", message, eval_ctx=L)]
        rows = []
        bar = ctx.bar(total=len(ends) * len(options.contexts), desc="repeat", unit="window")
        for L in options.contexts:
            bar.set_postfix(ctx=L)
            with FailureGuard(list(METRICS), ctx.device, where=f"at {L} tokens", only_oom=True, eval_ctx=L) as guard:
                repeat, control = self._evaluate(model, token_docs, ends, L, options, ctx, bar)
            rows += guard.rows if guard.failed else self._rows(L, ends, repeat, control, docs, ctx, options)
        bar.close()
        return rows

    def _evaluate(self, model, token_docs, ends, L, options, ctx, bar) -> tuple[np.ndarray, np.ndarray]:
        """Per-window mean loss of the scored targets: (repeat, control), each [windows]."""
        scored = options.scored(L)
        repeat, control = [], []
        for b in range(0, len(ends), options.batch_size):
            pairs = [repeat_pair(token_docs[i][e - L : e], options.span) for i, e in ends[b : b + options.batch_size]]
            batch = torch.cat(pairs).to(ctx.device)  # rows: repeat, control, repeat, control, ...
            losses = stream_token_losses(model, batch, options.chunk)[:, scored].double().mean(1).cpu().numpy()
            repeat.append(losses[0::2])
            control.append(losses[1::2])
            bar.update(len(pairs))
        return np.concatenate(repeat), np.concatenate(control)

    def _rows(self, L, ends, repeat, control, docs, ctx, options):
        doc_ids = sorted({i for i, _ in ends})
        which = np.array([doc_ids.index(i) for i, _ in ends])
        targets = options.span - options.prefix
        counts = np.bincount(which, minlength=len(doc_ids)).astype(float)
        rows = []
        for k, (metric, per_window) in enumerate(zip(METRICS, (repeat, control, control - repeat))):
            sums = np.bincount(which, weights=per_window, minlength=len(doc_ids))
            est = stats.bootstrap_ratio(sums, counts, options.resamples, seed=[ctx.seed, L, k])
            rows.append(make_row(metric, **est.as_columns(), eval_ctx=L, n_tokens=len(ends) * targets))
        for (i, end), r, c in zip(ends, repeat, control):
            ctx.record(kind="window", eval_ctx=L, doc=docs[i].name, end=int(end), distance=L - options.span,
                       repeat_loss=float(r), control_loss=float(c))
        return rows


# ---------------------------------------------------------------------------------------------
# Figure


@register_figure("repeat", task="repeat")
def repeat_figure(ctx: Context) -> Iterator[tuple[str, Figure]]:
    """Copy gain against context length (left) and the two losses it is the difference of (right)."""
    from matplotlib.figure import Figure  # matplotlib loads only to draw a figure
    from matplotlib.lines import Line2D

    from harness.report.plots import draw_series, seeds_legend

    gain = ctx.prep.points("repeat", "copy_gain")
    if not (gain["status"] == "ok").any():
        raise SkipFigure("the table has no ok 'copy_gain' rows of task repeat")
    losses = {m: ctx.prep.points("repeat", m) for m in ("control_loss", "repeat_loss")}
    fig = Figure(figsize=(9.0, 3.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.axhline(0.0, color="0.5", linewidth=0.8)
    draw_series(left, gain, "eval_ctx", ctx)  # its intervals and its failures (OOM) as every figure draws them
    for series in ctx.prep.order:
        style = ctx.styles[series]
        for metric, dash in (("control_loss", ":"), ("repeat_loss", "-")):
            pts = losses[metric]
            pts = pts[(pts["series"] == series) & (pts["status"] == "ok")].sort_values("eval_ctx")
            right.plot(pts["eval_ctx"], pts["value"], **{**style.line(), "linestyle": dash, "label": None})
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ticks = sorted(int(L) for L in gain["eval_ctx"].unique())
        ax.set_xticks(ticks, [context_label(L) for L in ticks])
        ax.minorticks_off()
    # one label under both panels: two of this length ran into each other
    fig.supxlabel("Context length L (the span appeared L - span tokens back)", fontsize="medium")
    left.set_ylabel("Copy gain (nats/token)")
    left.set_title("Control loss - repeat loss")
    right.set_ylabel("Loss on the span (nats/token)")
    right.set_title("Repeat (solid) and control (dotted)")
    shown = [s for s in ctx.prep.order if s in set(gain["series"])]  # a model that failed everywhere too
    fig.legend(handles=[Line2D([], [], **ctx.styles[s].line()) for s in shown] + seeds_legend(fig),
               loc="outside right center", frameon=False)
    fig.suptitle("Copying from far back: loss on a span seen before", wrap=True)
    yield "repeat", fig
