"""Timers, peak memory and out-of-memory handling for measurements.

- :func:`measure` runs a function after warm-up runs and returns one wall time per repeat:
  CUDA events around the call (with synchronisation) on a GPU, ``time.perf_counter`` on CPU.
- :class:`PeakMemory` reports the peak memory of a block: ``torch.cuda.max_memory_allocated``
  on a GPU; on CPU the process's peak resident set size, reset at the start of the block
  (Linux ``/proc/self/clear_refs``) or, where that is not allowed, sampled by a thread, after
  the C allocator has handed back the memory it kept from earlier frees (glibc ``malloc_trim``).
- :func:`timing_flag` says when timings cannot be trusted as they are: repeats that spread
  beyond :data:`UNSTABLE_SPREAD`, or (on CPU) other processes taking a share of the CPUs while
  timing (:class:`OtherProcessesCPU`);
- :func:`is_oom` recognises out-of-memory errors of either device; :func:`free_memory`
  releases what can be released so that a sweep can go on to its next cell.
"""
from __future__ import annotations

import ctypes
import functools
import gc
import os
import resource
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from harness.api.errors import ConfigError


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], Any], device: torch.device | str = "cpu", repeats: int = 5, warmup: int = 1,
            setup: Callable[[], Any] | None = None) -> list[float]:
    """Seconds per call of ``fn`` over ``repeats`` timed calls after ``warmup`` untimed ones.

    ``setup`` (untimed) runs before every call and its result is passed to ``fn`` when given
    (e.g. a fresh copy of a decoding state)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    times = []
    for i in range(warmup + repeats):
        arg = setup() if setup is not None else None
        call = (lambda: fn(arg)) if setup is not None else fn
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            # on the measured device's stream: the current device's (record()'s default) is another
            # GPU's for cuda:1, whose events would time nothing
            stream = torch.cuda.current_stream(device)
            torch.cuda.synchronize(device)
            start.record(stream)
            call()
            end.record(stream)
            torch.cuda.synchronize(device)
            elapsed = start.elapsed_time(end) / 1000.0
        else:
            t0 = time.perf_counter()
            call()
            elapsed = time.perf_counter() - t0
        if i >= warmup:
            times.append(elapsed)
        arg = None  # free this call's copy before the next setup makes another
    return times


# Repeats whose median absolute deviation exceeds this fraction of their median are flagged: on
# a quiet machine the latency task's repeats stay within a few percent, so 10% means interference
# (other processes, frequency scaling), not the model.
UNSTABLE_SPREAD = 0.10
# CPU timings during which other processes (or the hypervisor, as steal) took more than this
# share of the machine's CPU time are flagged: on a quiet machine they take about 1%.
BUSY_SHARE = 0.25
# A block shorter than this many clock ticks of all cores together (10 ms each, usually) is too
# short to tell who used the CPUs: no share is reported for it.
MIN_OBSERVED_TICKS = 50


def relative_spread(times: list[float]) -> float:
    """Median absolute deviation of ``times`` over their median (0 for fewer than two)."""
    if len(times) < 2:
        return 0.0
    ordered = sorted(times)
    median = _median(ordered)
    return _median(sorted(abs(t - median) for t in ordered)) / median if median > 0 else 0.0


def _median(ordered: list[float]) -> float:
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def own_cpus() -> frozenset[int] | None:
    """The CPUs this process may run on (a container's cpuset, ``taskset``, a cluster job's
    cores), or None where the OS does not say (then every CPU is its)."""
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS)
        return None


def cpu_count(cpus: frozenset[int] | None) -> int:
    """How many CPUs ``cpus`` (from :func:`own_cpus`) are: every one of the host's where the OS
    does not say."""
    return len(cpus) if cpus else (os.cpu_count() or 1)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def cpu_ticks(cpus: frozenset[int] | None = None) -> tuple[int, int] | None:
    """(clock ticks ``cpus`` (None: all CPUs) spent busy, ticks this process spent, all its
    threads) since boot, from Linux's /proc; None where it does not tell. Busy includes steal:
    time a hypervisor gave these CPUs to another machine."""
    try:
        busy = 0
        for line in _read("/proc/stat").splitlines():
            name, _, rest = line.partition(" ")
            index = name.removeprefix("cpu")
            wanted = name == "cpu" if cpus is None else name.startswith("cpu") and index.isdigit() and int(index) in cpus
            if wanted:
                ticks = [int(x) for x in rest.split()[:8]]  # user nice system idle iowait irq softirq steal
                busy += sum(ticks) - ticks[3] - ticks[4]
        own = _read("/proc/self/stat").rsplit(")", 1)[1].split()  # fields after the command name, which may hold spaces
        return busy, int(own[11]) + int(own[12])  # utime + stime
    except (OSError, ValueError, IndexError):
        return None


class OtherProcessesCPU:
    """The share of this process's CPUs' time that other processes took while the block ran:
    what disturbs a CPU timing. Only the CPUs it may run on count (:func:`own_cpus`): on a node
    shared by jobs pinned to their own cores, the other jobs' work is no disturbance, and work on
    its own cores is not diluted by the rest. (The load average cannot tell: it counts this
    process's own threads, so a timing that keeps every core busy reads as a busy machine.)
    ``share`` is None where /proc does not tell or the block is shorter than
    :data:`MIN_OBSERVED_TICKS`."""

    share: float | None = None

    def __enter__(self) -> "OtherProcessesCPU":
        self._cpus = own_cpus()
        self._start, self._t0 = cpu_ticks(self._cpus), time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        end, elapsed = cpu_ticks(self._cpus), time.perf_counter() - self._t0
        count = cpu_count(self._cpus)
        available = elapsed * count * os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0
        if self._start is None or end is None or available < MIN_OBSERVED_TICKS:
            return
        others = (end[0] - self._start[0]) - (end[1] - self._start[1])
        self.share = min(1.0, max(0.0, others / available))


def timing_flag(times: list[float], device: torch.device | str, others: float | None = None) -> str:
    """``""`` for timings that can be trusted, else ``"unstable: ..."`` naming why: the repeats'
    relative spread above :data:`UNSTABLE_SPREAD`, or (CPU) other processes' share of the CPUs
    while timing (:class:`OtherProcessesCPU`) above :data:`BUSY_SHARE`."""
    reasons = []
    spread = relative_spread(times)
    if spread > UNSTABLE_SPREAD:
        reasons.append(f"repeats spread {spread:.0%} (median absolute deviation / median > {UNSTABLE_SPREAD:.0%})")
    if torch.device(device).type == "cpu" and others is not None and others > BUSY_SHARE:
        reasons.append(f"machine busy (other processes took {others:.0%} of the CPUs while timing > {BUSY_SHARE:.0%})")
    return "unstable: " + "; ".join(reasons) if reasons else ""


# ---------------------------------------------------------------------------------------------
# Memory


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """The process's peak resident set size since start (or since the last reset)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if os.uname().sysname == "Darwin" else peak * 1024


# What resident memory may grow by between the reset and the check that it took (other threads).
_RESET_SLACK = 16 * 2**20


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where it is not allowed or did
    not take (a kernel that accepts the write and ignores it would leave earlier peaks counted)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return peak_rss_bytes() <= current_rss_bytes() + _RESET_SLACK


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Return to the system the memory the C allocator keeps after frees (where it can: glibc).

    glibc keeps freed blocks for reuse (in every thread's arena, not only at the top of the
    heap), so a block measured after a warm-up that freed the same sizes reuses them and the
    resident set does not grow: every CPU prefill peak read 0. Trimmed, the block's allocations
    fault in fresh pages again and the peak resident set counts them."""
    gc.collect()  # tensors held only by reference cycles are freed memory too
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class PeakMemory:
    """Peak memory (bytes) of the block it guards: ``with PeakMemory(device) as pm: ...; pm.peak``.

    GPU: ``torch.cuda.max_memory_allocated`` (tensors only, the allocator's cache excluded).
    CPU: the process's peak resident set size, so it includes the weights, the interpreter and
    anything else alive; ``pm.baseline`` is the resident size when the block started (after
    :func:`release_freed_memory`), and ``pm.added`` what the block added above it (what a CPU
    measurement should report: the memory the block's work needs at its peak, as far as the
    allocator lays it out; where the C library cannot trim, memory freed before the block and
    reused in it is not counted)."""

    _active: set[str] = set()  # devices a block is measuring now: one resets the peak another reads

    def __init__(self, device: torch.device | str = "cpu", sample_interval: float = 0.001):
        self.device = torch.device(device)
        self.sample_interval = sample_interval
        self.peak = 0
        self.baseline = 0
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self._sampled = 0

    @property
    def added(self) -> int:
        """Bytes the block added above the memory in use when it started (never negative)."""
        return max(0, self.peak - self.baseline)

    @property
    def kind(self) -> str:
        return "cuda_max_allocated" if self.device.type == "cuda" else "cpu_peak_rss"

    def __enter__(self) -> "PeakMemory":
        where = self.device.type  # CPU: one resident set per process; CUDA: peaks reset together
        if where in PeakMemory._active:
            raise RuntimeError(f"PeakMemory blocks on {where} cannot nest: the inner one resets the peak the "
                               "outer one reads; measure the two blocks one after the other")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
        else:
            release_freed_memory()
            self.baseline = current_rss_bytes()
            if not _reset_peak_rss():
                self._sampled = self.baseline
                self._stop = threading.Event()
                self._thread = threading.Thread(target=self._sample, daemon=True)
                self._thread.start()
        PeakMemory._active.add(where)
        return self

    def _sample(self) -> None:
        assert self._stop is not None
        while not self._stop.is_set():
            self._sampled = max(self._sampled, current_rss_bytes())
            self._stop.wait(self.sample_interval)

    def __exit__(self, *exc: Any) -> None:
        PeakMemory._active.discard(self.device.type)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        elif self._thread is not None:
            assert self._stop is not None
            self._stop.set()
            self._thread.join()
            self.peak = max(self._sampled, current_rss_bytes())
        else:
            self.peak = peak_rss_bytes()


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error (CUDA allocator, host allocator)."""
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None), MemoryError) if t is not None)
    if isinstance(exc, oom_types):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                              or "not enough memory" in text)


def free_memory(device: torch.device | str | None = None) -> None:
    """Collect garbage and return cached GPU blocks, after an OOM or between cells."""
    gc.collect()
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.empty_cache()


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run a block with ``threads`` torch CPU threads (0: leave as set), restored afterwards."""
    if not isinstance(threads, int) or threads < 0:
        raise ConfigError(f"threads must be an integer >= 0 (0: leave as set), got {threads!r}")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
