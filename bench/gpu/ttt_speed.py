"""TTT-E2E's inner loop on one GPU (issue 17): the reference loop, each fast path alone and all
together, beside full attention (SDPA) and SWA (FlexAttention), in one budgeted run.

    python -m bench.gpu.ttt_speed --out DIR [--budget-s 600] [--dry-run]

Untrained weights, bf16, batch 1, the median of 3 timed calls after one untimed call (whose time,
compilation and CUDA-graph capture included, is kept as ``first_call_s``). What it measures, in
this order, so that what the budget leaves out is the least needed:

1. 125M, Llama-3 vocabulary (128256): prefill at 128K, then 8K and 32K, of full attention, SWA,
   and TTT-E2E as the reference loop, the eager levers together, and each lever alone
   (:data:`VARIANTS`); then the variants that compile (their first call compiles);
2. decode time per token (over :attr:`Setting.decode_tokens` tokens after the prefill; for
   TTT-E2E they include the inner step of the mini-batch the prefill ended in);
3. the same prefill with a 32K vocabulary, where the LM head weighs less;
4. meta-training (second order) time per token of TTT-E2E vs SWA at 125M on 8K tokens
   (fp32 parameters, bf16 autocast, as the trainer runs);
5. 760M at 128K.

The compiled and captured steps serve the steady state only, once the window is full (a
context longer than the window): at 8K with an 8K window every step runs eager.

A cell starts only if the time it is expected to take (from the cells measured so far) is left;
otherwise it is recorded as ``skipped``, as are the later cells of a model whose earlier cell
failed. The table (``ttt_speed.csv``, one row per measurement) is rewritten after every cell, so
a run cut short keeps what it measured; ``summary.md`` lays it out against the issue's goals.
``dry_run=True`` runs the same code on CPU: tiny models, short contexts, fp32, no FlexAttention,
no compilation, CUDA graphs or Liger (those variants run eager, Liger's with the chunked loss):
seconds, and numbers that mean nothing.
"""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import pandas as pd
import torch

from harness.api.errors import ConfigError
from harness.api.interface import LCModel, clone_state
from harness.api.registry import build_model, get_model_class, make_config
from harness.api.results import atomic_write
from harness.api.timing import free_memory, is_oom, measure

TABLE = "ttt_speed.csv"
SUMMARY = "summary.md"
COLUMNS = ["task", "model", "arch", "variant", "size", "vocab_size", "eval_ctx", "device", "dtype", "metric", "value",
           "n", "status", "message", "fields"]
SIZE_FACTOR = {"125m": 1.0, "760m": 5.0}  # time per token relative to 125m, for budgeting before a 760m cell

REFERENCE = dict(inner_loss="reference", inner_step="eager", fast_weight_dtype="model", backend="sdpa")
FAST = dict(inner_loss="chunked", fast_weight_dtype="float32", prefix_backend="flex")
# TTT-E2E variants: the reference loop (plain PyTorch: autograd over the whole logits, bf16 fast
# weights, sdpa everywhere), each lever alone, and all together.
VARIANTS: dict[str, dict[str, Any]] = {
    "reference": REFERENCE,
    "chunked_loss": {**REFERENCE, "inner_loss": "chunked"},
    "liger_loss": {**REFERENCE, "inner_loss": "liger"},
    "fp32_fast_weights": {**REFERENCE, "fast_weight_dtype": "float32"},
    "prefix_flex": {**REFERENCE, "prefix_backend": "flex"},
    "cudagraph": {**REFERENCE, "inner_step": "cudagraph"},
    "all": {**REFERENCE, **FAST, "inner_step": "cudagraph"},
    "compile": {**REFERENCE, "inner_step": "compile"},
    "all_compiled": {**REFERENCE, **FAST, "inner_step": "compile+cudagraph"},
}
COMPILING = ("compile", "all_compiled")
BASELINES: dict[str, dict[str, Any]] = {"full_attention": dict(backend="sdpa"), "swa": dict(backend="flex")}


@dataclass(frozen=True)
class Setting:
    """What one run measures, and where."""

    device: str
    dtype: torch.dtype
    presets: dict[str, str]  # size label -> registry preset
    vocabs: dict[str, int]  # vocabulary label -> size
    contexts: tuple[int, ...]
    train_context: int
    decode_tokens: int = 16
    repeats: int = 3
    rate_s_per_token: float = 2e-5  # a first guess of prefill time, before anything is measured
    compile_s: float = 120.0  # a first guess of a compiling variant's first call
    kernels: bool = True  # FlexAttention, torch.compile, CUDA graphs
    overrides: dict[str, Any] = field(default_factory=dict)  # config fields for every model


GPU = Setting(device="cuda", dtype=torch.bfloat16, presets={"125m": "125m", "760m": "760m"},
              vocabs={"v128k": 128256, "v32k": 32768}, contexts=(8192, 32768, 131072), train_context=8192)
DRY_RUN = Setting(device="cpu", dtype=torch.float32, presets={"125m": "tiny", "760m": "tiny"},
                  vocabs={"v128k": 256, "v32k": 128}, contexts=(128, 256), train_context=128, decode_tokens=4,
                  repeats=2, rate_s_per_token=2e-4, compile_s=0.0, kernels=False,
                  overrides=dict(mini_batch_size=32, window=64))


@dataclass(frozen=True)
class Cell:
    task: str  # prefill | decode | train
    arch: str
    variant: str  # a VARIANTS name for ttt_e2e, the arch itself for the baselines
    size: str
    vocab: str
    context: int

    @property
    def model(self) -> str:
        return f"{self.arch}:{self.size}:{self.vocab}"


def plan(s: Setting) -> Iterator[Cell]:
    """Every cell, most wanted first: a run cut short (the GPU kit gives this step about a minute)
    still has issue 17's goal, prefill at the longest context against both baselines, reference
    loop and all levers, then the shortest context (flatness), then the others."""
    eager = ["reference", "all", *(v for v in VARIANTS if v not in (*COMPILING, "reference", "all"))]
    big, small = s.contexts[-1], [s.contexts[-1], *s.contexts[:-1]]

    def prefill(size: str, vocab: str, variants: list[str], contexts=small, baselines=True) -> Iterator[Cell]:
        for ctx in contexts:
            if baselines:
                yield from (Cell("prefill", arch, arch, size, vocab, ctx) for arch in BASELINES)
            yield from (Cell("prefill", "ttt_e2e", v, size, vocab, ctx) for v in variants)

    yield from prefill("125m", "v128k", eager)
    yield from prefill("125m", "v128k", list(COMPILING), baselines=False)
    for ctx in small:
        yield from (Cell("decode", arch, arch, "125m", "v128k", ctx) for arch in BASELINES)
        yield from (Cell("decode", "ttt_e2e", v, "125m", "v128k", ctx) for v in ("reference", "all"))
    yield from prefill("125m", "v32k", ["reference", "all", "all_compiled"])
    yield Cell("train", "swa", "swa", "125m", "v128k", s.train_context)
    yield Cell("train", "ttt_e2e", "reference", "125m", "v128k", s.train_context)
    yield from prefill("760m", "v128k", ["reference", "all"], contexts=[big])


def model_fields(cell: Cell, s: Setting) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(get_model_class(cell.arch).config_class)}
    fields = {k: v for k, v in s.overrides.items() if k in known} | {"vocab_size": s.vocabs[cell.vocab]}
    if cell.arch == "ttt_e2e":
        fields.update(VARIANTS[cell.variant] if cell.task != "train" else {})
    else:
        fields.update(BASELINES[cell.arch])
        if cell.arch == "full_attention":
            fields.pop("window", None)
    if not s.kernels:  # the dry run: the same code without GPU kernels
        fields.update({k: "sdpa" for k in ("backend", "prefix_backend") if fields.get(k) == "flex"})
        if fields.get("inner_step", "eager") != "eager":
            fields["inner_step"] = "eager"
        if fields.get("inner_loss") == "liger":  # Liger's kernels are Triton: the chunked loss stands in
            fields["inner_loss"] = "chunked"
    return fields


class Models:
    """Models built once and kept while cells use them (compiled or captured steps live in the
    model), released when the size or vocabulary changes."""

    def __init__(self, s: Setting):
        self.s, self.models, self.group = s, {}, None

    def get(self, cell: Cell) -> LCModel:
        training = cell.task == "train"
        group = (cell.size, cell.vocab)
        if group != self.group:
            self.release()
            self.group = group
        key = (cell.arch, cell.variant, training)
        if key not in self.models:
            torch.manual_seed(0)
            config = make_config(cell.arch, self.s.presets[cell.size], **model_fields(cell, self.s))
            with torch.device(self.s.device):
                model = build_model(config)
            # training: fp32 parameters under bf16 autocast, as the trainer runs
            self.models[key] = model.train() if training else model.to(self.s.dtype).eval()
        return self.models[key]

    def release(self) -> None:
        self.models.clear()
        torch._dynamo.reset()  # compiled steps belong to the released models
        free_memory(self.s.device)


# ---------------------------------------------------------------------------------------------
# One cell


def time_calls(fn: Callable[[], Any], s: Setting, setup: Callable[[], Any] | None = None) -> tuple[float, float]:
    """(the first call's seconds, the median of ``repeats`` calls after it)."""
    times = measure(fn, s.device, repeats=1 + s.repeats, warmup=0, setup=setup)
    return times[0], statistics.median(times[1:])


def measure_cell(cell: Cell, model: LCModel, s: Setting) -> dict[str, float]:
    """metric -> value for one cell."""
    gen = torch.Generator().manual_seed(cell.context)
    vocab = s.vocabs[cell.vocab]
    tokens = torch.randint(0, vocab, (1, cell.context + 1), generator=gen).to(s.device)
    if cell.task == "prefill":
        with torch.no_grad():
            first, median = time_calls(lambda: model.prefill(tokens[:, :-1]), s)
        return {"first_call_s": first, "prefill_s": median, "prefill_tok_s": cell.context / median}
    if cell.task == "decode":
        steps = torch.randint(0, vocab, (s.decode_tokens, 1), generator=gen).to(s.device)
        with torch.no_grad():
            _, state = model.prefill(tokens[:, :-1])

            def decode(state):
                for token in steps:
                    _, state = model.decode_step(state, token)

            first, median = time_calls(decode, s, setup=lambda: clone_state(state))
        return {"first_call_s": first, "decode_s": median / s.decode_tokens}

    def train_step():
        with torch.autocast(s.device, dtype=torch.bfloat16, enabled=s.device == "cuda"):
            loss = model.training_loss(tokens)
        loss.backward()
        model.zero_grad(set_to_none=True)

    first, median = time_calls(train_step, s)
    return {"first_call_s": first, "train_s": median, "train_s_per_token": median / cell.context}


# ---------------------------------------------------------------------------------------------
# The run


class Budget:
    """Seconds left, and what a cell is expected to take from the cells measured before it."""

    def __init__(self, seconds: float, s: Setting):
        self.deadline, self.s = time.time() + seconds, s
        self.seconds: dict[tuple[str, str, str], tuple[Cell, float]] = {}  # (task, model, variant) -> (cell, s)

    def left(self) -> float:
        return self.deadline - time.time()

    def record(self, cell: Cell, median_s: float) -> None:
        self.seconds[(cell.task, cell.model, cell.variant)] = (cell, median_s)

    def expected(self, cell: Cell, compiled: bool) -> float:
        """(1 + repeats) calls, scaled from this variant (else the reference, else the slowest
        cell of the task) at another length (linearly, quadratically for full attention's
        prefill) and size (:data:`SIZE_FACTOR`)."""
        power = 2 if cell.arch == "full_attention" and cell.task == "prefill" else 1
        same_task = [v for (task, *_), v in self.seconds.items() if task == cell.task]
        known = (self.seconds.get((cell.task, cell.model, cell.variant))
                 or self.seconds.get((cell.task, cell.model, "reference"))
                 or max(same_task, key=lambda v: v[1] / v[0].context, default=None))
        if known is None:
            call = self.s.rate_s_per_token * cell.context * SIZE_FACTOR[cell.size]
        else:
            seen, seconds = known
            call = seconds * (cell.context / seen.context) ** power * SIZE_FACTOR[cell.size] / SIZE_FACTOR[seen.size]
        first = self.s.compile_s if cell.variant in COMPILING and not compiled else 0.0
        return first + (1 + self.s.repeats) * call


def run(out_dir: Path, budget_s: float, dry_run: bool = False) -> pd.DataFrame:
    """Measure within ``budget_s`` seconds; write ``ttt_speed.csv`` and ``summary.md`` into
    ``out_dir`` and return the table."""
    s = DRY_RUN if dry_run else GPU
    if s.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("bench.gpu.ttt_speed measures on CUDA, and none is available here; use dry_run=True")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    budget, models, rows = Budget(budget_s, s), Models(s), []
    failed: dict[tuple[str, str], str] = {}  # (model, variant) -> why
    for cell in plan(s):
        where = dict(task=cell.task, model=cell.model, arch=cell.arch, variant=cell.variant, size=cell.size,
                     vocab_size=s.vocabs[cell.vocab], eval_ctx=cell.context, device=s.device,
                     dtype=str(s.dtype).removeprefix("torch."),
                     fields=json.dumps(model_fields(cell, s), sort_keys=True))
        need = budget.expected(cell, compiled=(cell.task, cell.model, cell.variant) in budget.seconds)
        if (cell.model, cell.variant) in failed:
            why = f"an earlier cell failed: {failed[cell.model, cell.variant]}"
        elif need > budget.left():
            why = f"expected to take {need:.0f} s; {budget.left():.0f} s left"
        else:
            why = ""
            rows.extend(run_cell(cell, models, budget, s, where, failed))
        if why:
            rows.append({**where, "status": "skipped", "message": why})
        write_table(out_dir, rows)
    models.release()
    table = pd.DataFrame(rows, columns=COLUMNS)
    atomic_write(out_dir / SUMMARY, lambda f: f.write(summary(table, dry_run)))
    return table


def run_cell(cell: Cell, models: Models, budget: Budget, s: Setting, where: dict[str, Any],
             failed: dict[tuple[str, str], str]) -> list[dict[str, Any]]:
    try:
        values = measure_cell(cell, models.get(cell), s)
    except Exception as exc:  # noqa: BLE001 - a failed cell is a row; the run goes on
        status = "oom" if is_oom(exc) else "error"
        message = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]
        failed[cell.model, cell.variant] = message
        free_memory(s.device)
        return [{**where, "status": status, "message": message}]
    budget.record(cell, next(v for k, v in values.items() if k in ("prefill_s", "decode_s", "train_s")))
    return [{**where, "metric": metric, "value": value, "n": s.repeats, "status": "ok", "message": ""}
            for metric, value in values.items()]


def write_table(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    table = pd.DataFrame(rows, columns=COLUMNS)
    atomic_write(out_dir / TABLE, lambda f: table.to_csv(f, index=False))


# ---------------------------------------------------------------------------------------------
# Summary


def markdown(table: pd.DataFrame, digits: int = 4) -> str:
    def cell(v: Any) -> str:
        return "" if isinstance(v, float) and math.isnan(v) else f"{v:.{digits}g}" if isinstance(v, float) else str(v)

    head = [table.index.name or ""] + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join([str(i)] + [cell(v) for v in row]) + " |" for i, row in zip(table.index, table.values)]
    return "\n".join(lines)


def values(table: pd.DataFrame, metric: str, **where: Any) -> pd.DataFrame:
    ok = table[(table["status"] == "ok") & (table["metric"] == metric)]
    for column, value in where.items():
        ok = ok[ok[column] == value]
    return ok


def summary(table: pd.DataFrame, dry_run: bool) -> str:
    lines = ["# TTT-E2E inner-loop speed (bench.gpu.ttt_speed)", ""]
    if dry_run:
        lines += ["Dry run on CPU (tiny models, no kernels): these numbers test the code, not the speed.", ""]
    for size, vocab in (("125m", "v128k"), ("125m", "v32k"), ("760m", "v128k")):
        prefill = values(table, "prefill_s", size=size, task="prefill")
        prefill = prefill[prefill["model"].str.endswith(vocab)]
        if len(prefill):
            grid = prefill.pivot_table(index="variant", columns="eval_ctx", values="value", aggfunc="first")
            lines += [f"## Prefill seconds, {size}, {vocab}", "", markdown(grid), ""]
            lines += goals(grid, vocab) + [""]
    decode = values(table, "decode_s", task="decode")
    if len(decode):
        grid = decode.pivot_table(index="variant", columns="eval_ctx", values="value", aggfunc="first")
        lines += ["## Decode seconds per token, 125m, v128k", "", markdown(grid), ""]
        for variant in ("reference", "all"):
            times = grid.loc[variant].dropna() if variant in grid.index else ()
            if len(times) >= 2:
                lines.append(f"- {variant} decode time per token at {times.index[-1]}: "
                             f"{times.iloc[-1] / times.iloc[0]:.2f}x its time at {times.index[0]} (flat within 5% wanted)")
        lines.append("")
    train = values(table, "train_s_per_token", task="train")
    if len(train):
        per_token = dict(zip(train["arch"], train["value"]))
        lines += ["## Meta-training seconds per token, 125m", "", markdown(train.set_index("arch")[["value"]]), ""]
        if {"ttt_e2e", "swa"} <= set(per_token):
            lines.append(f"TTT-E2E / SWA: {per_token['ttt_e2e'] / per_token['swa']:.2f}x (goal: at most 2x)")
    skipped = table[table["status"] != "ok"]
    if len(skipped):
        lines += ["", "## Not measured", ""]
        lines += [f"- {r.model} {r.variant} {r.task} @ {r.eval_ctx}: {r.status}: {r.message}"
                  for r in skipped.itertuples()]
    return "\n".join(lines) + "\n"


def goals(grid: pd.DataFrame, vocab: str) -> list[str]:
    """The issue's goals for what this grid holds, each with what was measured."""
    lines = []
    longest = max(grid.columns)
    column = grid[longest]
    full = column.get("full_attention")
    for variant in ("reference", "all", "all_compiled"):
        ours = column.get(variant)
        if ours is not None and full is not None and not math.isnan(ours) and not math.isnan(full):
            goal = "at least 2.7x" if vocab == "v32k" else "at least 2.2x"
            lines.append(f"- {variant} at {longest}: {full / ours:.2f}x faster than full attention ({goal} wanted)")
    for variant in ("reference", "all", "all_compiled"):
        if variant in grid.index and grid.loc[variant].notna().sum() >= 2:
            rate = (grid.columns / grid.loc[variant]).dropna()
            lines.append(f"- {variant} tokens/s from {rate.index[0]} to {rate.index[-1]}: "
                         f"{rate.iloc[-1] / rate.iloc[0]:.2f}x of the first (flat within 10% wanted)")
    return lines


@click.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="folder for the table and summary")
@click.option("--budget-s", type=float, default=600.0, show_default=True, help="seconds to measure for")
@click.option("--dry-run", is_flag=True, help="the same code on CPU with tiny models, in seconds")
def main(out_dir: Path, budget_s: float, dry_run: bool) -> None:
    """Measure TTT-E2E's inner-loop fast paths beside full attention and SWA."""
    table = run(out_dir, budget_s, dry_run)
    click.echo((out_dir / SUMMARY).read_text())
    click.echo(f"{int((table['status'] == 'ok').sum())} measurements, table in {out_dir / TABLE}")


if __name__ == "__main__":
    main()
