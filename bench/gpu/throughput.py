"""Step ``throughput``: training tokens/s and model FLOPs utilisation (MFU) of each architecture.

A timed step is :func:`harness.train.trainer.training_step`, the trainer's own: forward, next-token loss,
backward, gradient clipping and an AdamW update, on random tokens (``train_batch_size`` x
``train_seq_len``), parameters in fp32 under bf16 autocast on a GPU. ``train_warmup_steps``
untimed steps first (kernel compilation and autotuning happen there), then ``train_steps`` timed
ones (CUDA events on a GPU): tokens/s = tokens per step / the median step time, with a bootstrap
interval over the steps. MFU = tokens/s x training FLOPs per token / the GPU's dense bf16 peak
(:mod:`bench.gpu.flops` states both). One tidy table, the harness's schema, task
``train_throughput``.
"""
from __future__ import annotations

import json
import math
import time
import traceback
from pathlib import Path

import torch

from bench.gpu.clock import Clock
from bench.gpu.config import KitConfig
from bench.gpu.flops import peak_flops, train_flops_per_token
from bench.gpu.ledger import Ledger
from harness.api import registry, results, stats
from harness.api.results import make_row, status_rows
from harness.api.timing import PeakMemory, free_memory, is_oom, measure
from harness.train.trainer import TrainConfig, autocast_dtype, make_optimizer, training_step

TASK = "train_throughput"
PEAK_FILE = "peak.json"  # the device and the peak MFU divides by, for the summary
METRICS = ("train_step_s", "train_tok_s", "train_flops_per_token", "train_mfu", "train_peak_bytes")


def device_peak(cfg: KitConfig, device: torch.device) -> tuple[str, float | None]:
    """(the device's name, the peak FLOP/s MFU divides by; None where unknown)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = cfg.peak_tflops * 1e12 if cfg.peak_tflops else peak_flops(name)
    return name, peak


def measure_arch(arch: str, cfg: KitConfig, device: torch.device, peak: float | None) -> list[dict]:
    """The rows of one architecture; an out-of-memory or failing one gives status rows."""
    preset = cfg.run_preset or cfg.size
    where = dict(run="gpu_kit", model=f"{arch}:{preset}", arch=arch, train_ctx=cfg.train_seq_len, task=TASK,
                 batch_size=cfg.train_batch_size, device=device.type, dtype="float32", seed=0)
    model = None
    try:
        torch.manual_seed(0)
        with torch.device(device):
            model = registry.create_model(arch, preset, **({"backend": cfg.backend} if cfg.backend else {}))
        train_cfg = TrainConfig(batch_size=cfg.train_batch_size, seq_len=cfg.train_seq_len, dtype=cfg.dtype)
        amp_dtype = autocast_dtype(cfg.dtype, device)
        where.update(params=model.num_params(non_embedding=True), backend=model.backend_on(device),
                     variant="bf16_autocast" if amp_dtype else "fp32")
        optimizer = make_optimizer(model, train_cfg)
        model.train()
        tokens = torch.randint(0, model.config.vocab_size, (cfg.train_batch_size, cfg.train_seq_len), device=device)
        with PeakMemory(device) as memory:
            times = measure(lambda: training_step(model, optimizer, [tokens], train_cfg.grad_clip, amp_dtype),
                            device, cfg.train_steps, cfg.train_warmup_steps)
        flops = train_flops_per_token(model, cfg.train_seq_len)
    except Exception as exc:  # noqa: BLE001 - an out-of-memory or failing architecture is a result row
        traceback.print_exc()
        status = "oom" if is_oom(exc) else "error"
        return status_rows(METRICS, status, f"{type(exc).__name__}: {exc}"[:500], **where)
    finally:
        model = None  # the last reference: free_memory can return its memory
        free_memory(device)
    return throughput_rows(times, cfg.train_batch_size * cfg.train_seq_len, flops, peak, memory.peak, where)


def throughput_rows(times: list[float], tokens: int, flops: float, peak: float | None, peak_bytes: int,
                    where: dict) -> list[dict]:
    step = stats.bootstrap_median(times, seed=0)
    rate = [tokens / t if t > 0 else math.nan for t in (step.value, step.ci_high, step.ci_low)]
    rows = [make_row("train_step_s", step.value, ci_low=step.ci_low, ci_high=step.ci_high, n=step.n, **where),
            make_row("train_tok_s", rate[0], ci_low=rate[1], ci_high=rate[2], n=step.n, n_tokens=tokens, **where),
            make_row("train_flops_per_token", flops, n=1, **where),
            make_row("train_peak_bytes", peak_bytes, n=1, **where)]
    if peak:
        mfu = [r * flops / peak for r in rate]
        rows.append(make_row("train_mfu", mfu[0], ci_low=mfu[1], ci_high=mfu[2], n=step.n, **where))
    return rows


def run(cfg: KitConfig, work: Path, clock: Clock, ledger: Ledger) -> None:
    device = torch.device(cfg.device)
    name, peak = device_peak(cfg, device)
    print(f"device {name}; dense bf16 peak {f'{peak / 1e12:g} TFLOP/s' if peak else 'unknown: no MFU'}", flush=True)
    out = work / "throughput"
    # the table is rewritten after every architecture: a step stopped at its limit keeps what was measured
    results.write_table(out, results.validate([]))
    (out / PEAK_FILE).write_text(json.dumps({"device": name, "peak_flops": peak}))
    ledger.plan(cfg.archs)
    rows, slowest = [], 0.0
    for arch in cfg.archs:
        if not clock.fits(max(slowest, cfg.min_item_s)):
            ledger.record(arch, "skipped", message=f"{clock.left():.0f} s left; the slowest architecture so far took {slowest:.0f} s")
            continue
        started = time.time()
        arch_rows = measure_arch(arch, cfg, device, peak)
        seconds = time.time() - started
        slowest = max(slowest, seconds)
        failed = [r for r in arch_rows if r["status"] != "ok"]
        ledger.record(arch, "failed" if failed else "ok", seconds,
                      f"{failed[0]['status']}: {failed[0]['message']}" if failed else "")
        rows += arch_rows
        results.write_table(out, results.validate(rows))
