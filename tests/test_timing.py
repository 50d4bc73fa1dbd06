"""harness.timing on a GPU: CUDA-event timing, peak memory and out-of-memory handling, and the
latency task end to end on CUDA. (The CPU paths are exercised by the latency tests in test_tasks.)"""
from __future__ import annotations

import statistics
import time

import pytest
import torch

from harness.runs.evaluate import resolve_model, run_task
from harness.api.timing import PeakMemory, free_memory, is_oom, measure
from tests.conftest import small_model

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
SPIN_CYCLES = 20_000_000  # about 10 ms of one GPU thread spinning at 2 GHz


def spin(cycles: int = SPIN_CYCLES) -> None:
    torch.cuda._sleep(cycles)  # queued at once; the GPU then spins for that many clock cycles


@pytest.mark.gpu
@needs_cuda
def test_cuda_timing_measures_the_devices_work_not_the_launch():
    """Consistency of clocks, not speed: events see the queued kernel (twice the cycles, about
    twice the time; about what a host clock that waits for the device sees), and a setup's
    GPU work is finished before the timed call starts."""
    one = statistics.median(measure(spin, "cuda", repeats=5, warmup=2))
    two = statistics.median(measure(lambda: spin(2 * SPIN_CYCLES), "cuda", repeats=5, warmup=2))
    assert 1.5 < two / one < 2.5
    torch.cuda.synchronize()
    started = time.perf_counter()
    spin()
    torch.cuda.synchronize()
    host = time.perf_counter() - started
    assert 0.5 < one / host < 2.0
    idle = statistics.median(measure(lambda _: None, "cuda", repeats=3, warmup=1, setup=lambda: spin(4 * SPIN_CYCLES)))
    assert idle < 0.1 * one


@pytest.mark.gpu
@needs_cuda
def test_cuda_peak_memory_counts_the_block_and_starts_afresh():
    size = 64 * 2**20
    with PeakMemory("cuda") as block:
        buffer = torch.empty(size, dtype=torch.uint8, device="cuda")
        del buffer
    assert block.kind == "cuda_max_allocated" and block.peak - block.baseline >= size
    with PeakMemory("cuda") as quiet:
        pass
    assert quiet.peak - quiet.baseline < size  # the earlier block's peak does not carry over


@pytest.mark.gpu
@needs_cuda
def test_cuda_out_of_memory_is_recognised_and_the_device_stays_usable():
    total = torch.cuda.get_device_properties(0).total_memory
    with pytest.raises(torch.OutOfMemoryError) as caught:
        torch.empty(2 * total, dtype=torch.uint8, device="cuda")  # one plain allocation: refused at once
    assert is_oom(caught.value)
    free_memory("cuda")
    assert torch.ones(1024, device="cuda").sum().item() == 1024


@pytest.mark.gpu
@needs_cuda
def test_latency_task_on_cuda():
    model, info = resolve_model(small_model("swa"), device="cuda", dtype="float32")
    table, samples, _ = run_task("latency", model, info, {"contexts": [64, 200], "repeats": 2, "decode_tokens": 2},
                                 device=torch.device("cuda"), dtype=torch.float32)
    assert (table["status"] == "ok").all() and (table["device"] == "cuda").all()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    peaks = table[table["metric"].str.endswith("_peak_bytes")]["value"]
    assert (peaks >= weights).all()  # max_memory_allocated counts the weights
    assert {s["memory"] for s in samples if s.get("kind") == "timing"} == {"cuda_max_allocated"}
