"""``latency``: prefill time for T tokens and decode time per token after a T-token prefix.

For each prefix length T of the grid (``eval_ctx``), on random tokens of ``batch_size``
sequences:

- ``prefill_s``: seconds for ``prefill`` of the [batch_size, T] prefix; ``prefill_tok_s`` is
  batch_size * T / prefill_s;
- ``decode_s``: seconds per ``decode_step`` (one token for each sequence) after the prefix,
  timed over ``decode_tokens`` greedy steps, each repeat from a fresh copy of the state after
  the prefix and one untimed decode step (so a cache's one-off growth is not timed);
  ``decode_tok_s`` is batch_size / decode_s. TTT-E2E takes its inner step once per mini-batch,
  in the decode step after the mini-batch fills: after a prefix of whole mini-batches that is
  the untimed step, so ``decode_s`` is its time between updates (the update, spread over a
  mini-batch, adds about 1% on CPU at width 144, 256 tokens: 28 ms once vs 8.3 ms a step);
- ``state_bytes``: the size of the state after the prefix (``state_bytes``);
- ``prefill_peak_bytes`` / ``decode_peak_bytes``: peak memory while prefilling / decoding (the
  timed calls, after the warm-up):
  ``torch.cuda.max_memory_allocated`` on a GPU (weights included); on CPU, how far the
  process's resident set rose above its size before the work (what the work added; the
  interpreter, libraries and weights already resident are not counted).

Each timing runs ``warmup`` untimed calls, then ``repeats`` timed ones: the value is the
median, the interval a bootstrap interval of the median over repeats (``n`` = repeats), and
``samples.jsonl`` keeps every single time. A timing whose repeats spread too far, or during which
other processes took a share of a CPU machine's cores, carries an ``unstable: ...`` flag (see
:func:`harness.api.timing.timing_flag`), shown in tables and figures. CUDA events with synchronisation time GPU work;
``time.perf_counter`` times CPU work. An out-of-memory error at one T becomes ``oom`` rows
for what that T could not measure, memory is freed, and the sweep goes on with the next T
(any other error becomes ``error`` rows with its message).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.api import stats
from harness.api.errors import ConfigError, unknown_message
from harness.api.failures import FailureGuard
from harness.api.interface import clone_state
from harness.api.registry import register_task
from harness.api.results import make_row
from harness.api.task import Task, check_positive, option
from harness.api.timing import (OtherProcessesCPU, PeakMemory, free_memory, measure, timing_flag,
                                torch_threads)

PHASES = ("prefill", "decode")
METRICS = {
    "prefill": ("prefill_s", "prefill_tok_s", "prefill_peak_bytes"),
    "state": ("state_bytes",),
    "decode": ("decode_s", "decode_tok_s", "decode_peak_bytes"),
}


@dataclass
class LatencyOptions:
    contexts: list[int] = option([256, 512, 1024, 2048, 4096], "prefix lengths T in tokens")
    batch_size: int = option(1, "sequences per call")
    warmup: int = option(1, "untimed calls before timing")
    repeats: int = option(5, "timed calls per measurement")
    decode_tokens: int = option(16, "decode steps per timed decode call")
    phases: list[str] = option(list(PHASES), f"what to time: {', '.join(PHASES)}")
    resamples: int = option(2000, "bootstrap resamples for confidence intervals")
    threads: int = option(0, "CPU threads for torch while timing (0: leave as set); 1 is steadiest on a shared machine")

    def __post_init__(self) -> None:
        check_positive("contexts", self.contexts)
        check_positive("batch_size", [self.batch_size])
        check_positive("warmup", [self.warmup], allow_zero=True)
        check_positive("repeats", [self.repeats])
        check_positive("decode_tokens", [self.decode_tokens])
        check_positive("resamples", [self.resamples])
        check_positive("threads", [self.threads], allow_zero=True)
        if not self.phases:
            raise ConfigError(f"option 'phases' must name at least one of {', '.join(PHASES)}")
        for p in self.phases:
            if p not in PHASES:
                raise ConfigError(unknown_message("latency phase", p, PHASES))
        self.contexts = sorted(set(self.contexts))


@register_task("latency")
class Latency(Task):
    """Prefill and per-token decode time, peak memory and state size vs prefix length."""

    name = "latency"
    Options = LatencyOptions

    def run(self, model, options: LatencyOptions, ctx):
        with torch_threads(options.threads):
            return self._sweep(model, options, ctx)

    def _sweep(self, model, options: LatencyOptions, ctx):
        rows = []
        device = ctx.device
        B = options.batch_size
        wanted = [m for phase in ("prefill", "state", "decode")
                  if phase == "state" or phase in options.phases for m in METRICS[phase]]
        for T in ctx.bar(options.contexts, desc="latency", unit="T"):
            where = dict(eval_ctx=T, batch_size=B)
            measured: list[dict] = []
            # Any failure at one T (out of memory above all) is recorded for what it left unmeasured;
            # the tensors of that T die with _measure's frame, so the guard can free them.
            with FailureGuard(wanted, device, where=f"at T={T}, batch_size={B}", **where) as guard:
                self._measure(model, T, options, ctx, measured)
            rows += measured
            if guard.failed:
                got = {r["metric"] for r in measured}
                rows += [r for r in guard.rows if r["metric"] not in got]
                first = guard.rows[0]
                ctx.record(kind="failure", eval_ctx=T, batch_size=B, status=first["status"], message=first["message"])
            free_memory(device)
        return rows

    def _measure(self, model, T: int, options: LatencyOptions, ctx, rows: list[dict]) -> None:
        """Append the rows of prefix length ``T`` to ``rows`` as they are measured."""
        device, B = ctx.device, options.batch_size
        where = dict(eval_ctx=T, batch_size=B)
        g = torch.Generator().manual_seed(ctx.seed * 1_000_003 + T)
        tokens = torch.randint(0, model.config.vocab_size, (B, T), generator=g).to(device)
        if "prefill" in options.phases:
            # warm-up outside the peak: what compiles and autotunes once (Triton's benchmark
            # buffers) is no prefill's memory
            measure(lambda: model.prefill(tokens), device, repeats=0, warmup=options.warmup)
            with OtherProcessesCPU() as others, PeakMemory(device) as peak:
                times = measure(lambda: model.prefill(tokens), device, options.repeats, warmup=0)
            rows += self._timing_rows("prefill", times, B * T, options, ctx, timing_flag(times, device, others.share),
                                      **where)
            rows.append(make_row("prefill_peak_bytes", _peak(peak), n=1, **where))
            ctx.record(kind="timing", phase="prefill", eval_ctx=T, batch_size=B, threads=torch.get_num_threads(),
                       seconds=times, peak_bytes=peak.peak, memory=peak.kind, others_cpu=others.share)
        logits, state = model.prefill(tokens)
        rows.append(make_row("state_bytes", model.state_bytes(state), n=1, **where))
        if "decode" in options.phases:
            # One untimed step first: a cache that grows (full attention's)
            # grows on the first step after prefill; timing the steady state leaves that out.
            logits, state = model.decode_step(state, logits.argmax(-1))
            first = logits.argmax(-1)
            steps = options.decode_tokens

            def decode(s):
                token = first
                for _ in range(steps):
                    out, s = model.decode_step(s, token)
                    token = out.argmax(-1)
                return s

            with OtherProcessesCPU() as others:
                times = measure(decode, device, options.repeats, options.warmup, setup=lambda: clone_state(state))
            per_token = [t / steps for t in times]
            rows += self._timing_rows("decode", per_token, B, options, ctx,
                                      timing_flag(per_token, device, others.share), **where)
            with PeakMemory(device) as peak:
                decode(state)  # the last use of this state: no copy inflates the peak
            rows.append(make_row("decode_peak_bytes", _peak(peak), n=1, **where))
            ctx.record(kind="timing", phase="decode", eval_ctx=T, batch_size=B, threads=torch.get_num_threads(),
                       seconds_per_token=per_token, decode_tokens=steps, peak_bytes=peak.peak, memory=peak.kind,
                       others_cpu=others.share)

    @staticmethod
    def _timing_rows(phase: str, times: list[float], tokens: int, options: LatencyOptions, ctx, flag: str, **where):
        est = stats.bootstrap_median(times, options.resamples, seed=[ctx.seed, where["eval_ctx"], PHASES.index(phase)])
        rate = {"value": tokens / est.value,
                "ci_low": tokens / est.ci_high if est.ci_high > 0 else float("nan"),
                "ci_high": tokens / est.ci_low if est.ci_low > 0 else float("nan")}
        return [
            make_row(f"{phase}_s", **est.as_columns(), flag=flag, **where),
            make_row(f"{phase}_tok_s", rate["value"], ci_low=rate["ci_low"], ci_high=rate["ci_high"], n=est.n,
                     flag=flag, **where),
        ]


def _peak(peak: PeakMemory) -> int:
    """What a peak-memory row reports: the allocator's peak on a GPU, the added RSS on CPU."""
    return peak.peak if peak.device.type == "cuda" else peak.added
