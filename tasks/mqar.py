"""``mqar``: multi-query associative recall, trained from scratch (Zoology, arXiv 2312.04927).

Each sequence opens with ``pairs`` key-value bindings (keys from the lower half of a small
vocabulary, values from the upper half, all distinct), then asks for every key once more at a
gap drawn from a power law (``power_a``; 0.01 puts most queries near the bindings, 1 spreads
them uniformly); the model must predict the key's value at the query position. Every other
position is filler, random tokens with ``random_non_queries`` (as Zoology's default), and carries
no loss. The construction follows Zoology's ``multiquery_ar`` (its gap law, key/value halves and
label placement); the sampling is our own, vectorised in torch.

How it fits the sweep: MQAR has its own vocabulary and data, so a language model trained on text
cannot be scored on it. The task trains a fresh model of the evaluated model's architecture and
configuration (the vocabulary set to ``vocab_size``), seeded by the evaluation seed, for
``steps`` steps on freshly sampled batches that cycle through every (sequence length, pairs)
point of the grid, then measures it on held-out sequences of each point. The evaluated model's
own weights are not used, only its config: give the sweep an ``untrained: true`` entry (no
wasted text training) or reuse the text-trained entry of a comparison.

Rows: ``accuracy`` per (``eval_ctx`` = sequence length, ``variant`` = ``pairs=N``), the fraction
of queries whose value is the argmax over the whole vocabulary, with a bootstrap interval over
sequences; and the final training loss (``train_loss``, mean of the last tenth of the steps).
Each point's sample record holds every test sequence's accuracy and a digest of the sequences
(``sequences``): the test sequences are a function of the seed and of every option that shapes
them (the grid too: one generator draws every point in turn), so two models' answers pair
sequence by sequence only where the digests agree (the recall claim checks).
Attention can look a value up at any distance; a fixed-size state must hold every binding, so
accuracy falls as pairs grow against its state (the Zoology finding).

Budget: recurrent mixers learn recall late. The tiny Gated DeltaNet on one point (length 64, 4
pairs) answered 0.018 of the queries after 1000 steps and 0.75 after 3000, where tiny attention
with ``input_conv: 3`` answers all of it after 300 (results/reference/paper_small/README.md): an
accuracy near zero after a few hundred steps says the budget was short, not that the
architecture cannot recall.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from harness.api import registry, stats
from harness.api.errors import ConfigError
from harness.api.failures import require_finite
from harness.api.interface import LCModel
from harness.api.registry import register_task
from harness.api.results import make_row
from harness.api.task import Task, check_positive, option
from harness.report.figures import SkipFigure, register_figure
from harness.report.tables import FAILURE_LABELS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from harness.report.plots import Context

IGNORE = -100  # label of the positions that carry no loss


@dataclass
class MQAROptions:
    contexts: list[int] = option([64, 128, 256], "sequence lengths (tokens, even)")
    pairs: list[int] = option([4, 8, 16, 32], "key-value pairs per sequence (a point needs 4 x pairs <= length)")
    vocab_size: int = option(256, "vocabulary: keys from [1, V/2), values from [V/2, V)")
    steps: int = option(400, "training steps of the fresh model")
    batch_size: int = option(32, "training sequences per step")
    lr: float = option(3e-3, "peak learning rate (AdamW, linear warm-up over 10% of the steps, cosine decay)")
    test_sequences: int = option(128, "held-out sequences per (length, pairs) point")
    power_a: float = option(0.01, "power-law exponent of the query gaps (1: uniform)")
    random_non_queries: bool = option(True, "filler positions hold random tokens (else 0)")
    resamples: int = option(1000, "unused: accuracy takes a Wilson interval, not a bootstrap (kept so older commands parse)")

    def __post_init__(self) -> None:
        check_positive("contexts", self.contexts)
        check_positive("pairs", self.pairs)
        for name in ("vocab_size", "steps", "batch_size", "test_sequences", "resamples"):
            check_positive(name, [getattr(self, name)])
        check_positive("lr", [self.lr])
        check_positive("power_a", [self.power_a])
        if any(L % 2 for L in self.contexts):
            raise ConfigError(f"every MQAR sequence length must be even, got {self.contexts}")
        if max(self.pairs) > self.vocab_size // 2 - 1:
            raise ConfigError(f"{max(self.pairs)} pairs need {max(self.pairs)} distinct keys; vocab_size "
                              f"{self.vocab_size} has {self.vocab_size // 2 - 1}")
        self.contexts, self.pairs = sorted(set(self.contexts)), sorted(set(self.pairs))
        if not self.points():
            raise ConfigError(f"no (length, pairs) point fits (4 x pairs <= length): contexts {self.contexts}, "
                              f"pairs {self.pairs}")

    def points(self) -> list[tuple[int, int]]:
        """The (sequence length, pairs) grid points that fit: bindings plus one query slot per pair."""
        return [(L, n) for L in self.contexts for n in self.pairs if 4 * n <= L]


def mqar_batch(batch: int, length: int, pairs: int, vocab_size: int, generator: torch.Generator,
               power_a: float = 0.01, random_non_queries: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels), both [batch, length] int64: ``pairs`` key-value bindings, then each key
    queried once at an even offset after them; the label at a query is its value, else IGNORE."""
    half = vocab_size // 2
    keys = torch.rand(batch, half - 1, generator=generator).argsort(1)[:, :pairs] + 1
    values = torch.rand(batch, vocab_size - half, generator=generator).argsort(1)[:, :pairs] + half
    context = 2 * pairs
    inputs = torch.zeros(batch, length, dtype=torch.long)
    inputs[:, 0:context:2], inputs[:, 1:context:2] = keys, values
    # Query slots are every other position after the bindings; slot g is drawn with weight
    # proportional to (g+1)^(power_a-1), distinct slots per sequence.
    slots = (length - context) // 2
    weights = (torch.arange(1, slots + 1, dtype=torch.double) ** (power_a - 1)).expand(batch, slots)
    where = context + 2 * torch.multinomial(weights, pairs, replacement=False, generator=generator)
    inputs.scatter_(1, where, keys)
    labels = torch.full((batch, length), IGNORE, dtype=torch.long)
    labels.scatter_(1, where, values)
    if random_non_queries:
        filler = inputs == 0
        inputs[filler] = torch.randint(vocab_size, (int(filler.sum()),), generator=generator)
    return inputs, labels


def sequences_digest(inputs: torch.Tensor, labels: torch.Tensor) -> str:
    """A short digest of a batch of MQAR sequences (tokens and labels, as little-endian int64)."""
    digest = hashlib.sha256()
    for t in (inputs, labels):
        digest.update(t.numpy().astype("<i8").tobytes())
    return digest.hexdigest()[:16]


def mixed_precision(ctx) -> torch.autocast:
    """The run's dtype for the fresh model's compute, its parameters in fp32, as the trainer runs
    (bf16 autocast): its rows carry the run's dtype, which is then what it computed in."""
    low = ctx.dtype in (torch.bfloat16, torch.float16)
    return torch.autocast(ctx.device.type, dtype=ctx.dtype if low else torch.float32, enabled=low)


def _lr_at(step: int, steps: int, peak: float) -> float:
    warmup = max(1, steps // 10)
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


@register_task("mqar")
class MQAR(Task):
    """Associative recall accuracy against pairs and sequence length, of a model trained here."""

    name = "mqar"
    Options = MQAROptions

    def run(self, model: LCModel, options: MQAROptions, ctx):
        torch.manual_seed(ctx.seed)
        config = dataclasses.replace(model.config, vocab_size=options.vocab_size)
        fresh = registry.build_model(config).to(ctx.device)
        generator = torch.Generator().manual_seed(ctx.seed)
        losses = self._train(fresh, options, generator, ctx)
        fresh.eval()
        tail = losses[-max(1, len(losses) // 10):]
        rows = [make_row("train_loss", float(np.mean(tail)), n=len(tail))]
        test = torch.Generator().manual_seed(ctx.seed + 1_000_003)  # sequences training never drew
        for length, pairs in options.points():
            inputs, labels = mqar_batch(options.test_sequences, length, pairs, options.vocab_size, test,
                                        options.power_a, options.random_non_queries)
            correct = self._correct(fresh, inputs, labels, ctx)
            # a rate over sequences: a bootstrap reads all answers right as [1, 1] and under-covers near 1
            est = stats.clustered_rate(correct.mean(1), pairs)
            rows.append(make_row("accuracy", **est.as_columns(), eval_ctx=length, variant=f"pairs={pairs}",
                                 n_tokens=int(correct.size)))
            ctx.record(kind="point", eval_ctx=length, pairs=pairs, accuracy=float(correct.mean()),
                       per_sequence=[float(x) for x in correct.mean(1)], sequences=sequences_digest(inputs, labels))
        return rows

    def _train(self, model: LCModel, options: MQAROptions, generator: torch.Generator, ctx) -> list[float]:
        points = options.points()
        optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=0.1)
        on_step = getattr(model, "on_train_step", None)  # training progress, as the trainer gives it (TTT-E2E)
        model.train()
        losses = []
        with torch.enable_grad():  # tasks run under no_grad
            for step in ctx.bar(range(options.steps), desc="mqar train", unit="step"):
                if on_step is not None:
                    on_step(step, options.steps)
                length, pairs = points[step % len(points)]
                inputs, labels = mqar_batch(options.batch_size, length, pairs, options.vocab_size, generator,
                                            options.power_a, options.random_non_queries)
                with mixed_precision(ctx):
                    logits = model(inputs.to(ctx.device))
                loss = F.cross_entropy(logits.float().flatten(0, 1), labels.to(ctx.device).flatten(),
                                       ignore_index=IGNORE)
                for group in optimizer.param_groups:
                    group["lr"] = _lr_at(step, options.steps, options.lr)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                losses.append(loss.item())
        return losses

    @staticmethod
    def _correct(model: LCModel, inputs: torch.Tensor, labels: torch.Tensor, ctx, batch: int = 32) -> np.ndarray:
        """[sequences, pairs] booleans: each query answered by the argmax."""
        out = []
        for b in range(0, len(inputs), batch):
            x, y = inputs[b : b + batch].to(ctx.device), labels[b : b + batch].to(ctx.device)
            with mixed_precision(ctx):
                logits = model(x)
            # NaN logits have argmax 0, never a value: a diverged model would score 0 as if measured
            require_finite(logits, f"the logits of the {model.config.arch} model trained on MQAR")
            predicted = logits.argmax(-1)
            asked = y != IGNORE
            out.append((predicted[asked] == y[asked]).view(len(x), -1).cpu().numpy())
        return np.concatenate(out, 0)


# ---------------------------------------------------------------------------------------------
# Figure


@register_figure("mqar", task="mqar")
def mqar_figure(ctx: Context) -> Iterator[tuple[str, Figure]]:
    """Accuracy against pairs, one panel per sequence length, one line per series (Zoology's figure)."""
    from matplotlib.figure import Figure  # matplotlib loads only to draw a figure

    from harness.report.plots import seeds_gid, seeds_legend

    cells = ctx.prep.points("mqar", "accuracy", by=("eval_ctx", "variant"))
    pts = cells[cells["status"] == "ok"]
    if pts.empty:
        raise SkipFigure("the table has no ok 'accuracy' rows of task mqar")
    pts = pts.assign(pairs=pts["variant"].str.removeprefix("pairs=").astype(int))
    lengths = sorted(int(L) for L in pts["eval_ctx"].unique())
    fig = Figure(figsize=(3.2 * len(lengths) + 1.6, 2.8), layout="constrained")
    axes = fig.subplots(1, len(lengths), squeeze=False, sharey=True)[0]
    drawn = {}  # series -> its first line: the legend names every series, not the first panel's
    for ax, length in zip(axes, lengths):
        here = pts[pts["eval_ctx"] == length]
        for series in ctx.prep.order:
            line = here[here["series"] == series].sort_values("pairs")
            if line.empty:
                continue
            err = np.vstack([line["value"] - line["ci_low"], line["ci_high"] - line["value"]]).clip(0)
            handle = ax.errorbar(line["pairs"], line["value"], yerr=err, capsize=2, gid=seeds_gid(line),
                                 **ctx.styles[series].line())
            drawn.setdefault(series, handle)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(here["pairs"].unique()), [str(p) for p in sorted(here["pairs"].unique())])
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("Key-value pairs")
        ax.set_title(f"Sequence length {length}")
    axes[0].set_ylabel("MQAR accuracy")
    series = [s for s in ctx.prep.order if s in drawn]
    bands = seeds_legend(fig)  # what a bar over several seeds is
    fig.legend([drawn[s] for s in series] + bands, [ctx.styles[s].label for s in series] + [b.get_label() for b in bands],
               loc="outside right center", frameon=False)
    failed = cells[cells["status"] != "ok"].drop_duplicates(["series", "eval_ctx", "status"])
    if len(failed):  # no point to draw, but not to pass over
        fig.supxlabel("Not drawn: " + "; ".join(
            f"{ctx.styles[r.series].label} at length {int(r.eval_ctx)} ({FAILURE_LABELS.get(r.status, r.status)})"
            for r in failed.itertuples()), fontsize=7.5, color="0.3", wrap=True)
    fig.suptitle("Multi-query associative recall (trained from scratch)", wrap=True)
    yield "mqar", fig
