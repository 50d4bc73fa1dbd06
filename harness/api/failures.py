"""What a failed measurement becomes: status rows, so that a sweep, a task's grid or an adapter's
task list goes on past it.

Out of memory (CPU or CUDA) gives ``oom`` rows, a non-finite result raised as
``FloatingPointError`` (a diverged training loss) ``nan`` rows, anything else ``error`` rows;
each carries the exception's type and message. :class:`FailureGuard` catches the failure around
a block, frees memory, and holds the rows.
"""
from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Any

import torch

from harness.api.results import status_rows
from harness.api.timing import free_memory, is_oom

MESSAGE_LIMIT = 500  # characters of an exception's message kept in a row


def failure_status(exc: BaseException) -> str:
    """``oom``, ``nan`` or ``error``: the status of rows that ``exc`` kept from being measured."""
    if is_oom(exc):
        return "oom"
    return "nan" if isinstance(exc, FloatingPointError) else "error"


def failure_message(exc: BaseException, where: str = "") -> str:
    """``"OutOfMemoryError at 4096 tokens: ..."``, cut to :data:`MESSAGE_LIMIT` characters."""
    return f"{type(exc).__name__}{' ' + where if where else ''}: {exc}"[:MESSAGE_LIMIT]


def failure_rows(exc: BaseException, metrics: Iterable[str], where: str = "", /,
                 **columns: Any) -> list[dict[str, Any]]:
    """One status row per metric that ``exc`` kept from being measured; ``columns`` identify them."""
    return status_rows(metrics, failure_status(exc), failure_message(exc, where), **columns)


class FailureGuard:
    """``with FailureGuard(metrics, device, where=..., **columns) as guard: ...``: a failure inside
    the block becomes ``guard.rows`` (see :func:`failure_rows`) after memory is freed, and the
    code after the block goes on; ``guard.failed`` tells whether it happened.

    ``only_oom``: catch out-of-memory errors only and let every other exception through (a task
    whose other failures are bugs to surface, not cells to record)."""

    def __init__(self, metrics: Iterable[str], device: torch.device | str | None = None, /, *, where: str = "",
                 only_oom: bool = False, **columns: Any):  # positional-only: ``device`` is a column too
        self.metrics, self.device, self.where = list(metrics), device, where
        self.only_oom, self.columns = only_oom, columns
        self.error: BaseException | None = None
        self.rows: list[dict[str, Any]] = []

    @property
    def failed(self) -> bool:
        return self.error is not None

    def __enter__(self) -> "FailureGuard":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        if exc is None or not isinstance(exc, Exception) or (self.only_oom and not is_oom(exc)):
            return False
        self.rows = failure_rows(exc, self.metrics, self.where, **self.columns)
        self.error = exc
        drop_tracebacks(exc)
        del exc, tb
        free_memory(self.device)
        return True


def available_host_bytes() -> int | None:
    """Memory the host can still give (Linux ``MemAvailable``); None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def require_host_memory(nbytes: int, what: str) -> None:
    """Raise ``MemoryError`` (-> ``oom`` status rows) when ``what`` needs more host memory than
    is available: a clear row instead of the kernel killing the process, results and all."""
    available = available_host_bytes()
    if available is not None and nbytes > available:
        raise MemoryError(f"{what} needs about {nbytes / 2**30:.1f} GiB of host memory, "
                          f"{available / 2**30:.1f} GiB is available")


def require_finite(tensor: torch.Tensor, what: str) -> None:
    """Raise ``FloatingPointError`` (-> ``nan`` status rows) if ``tensor`` holds NaN or infinity."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise FloatingPointError(f"{what} hold NaN or infinity")


def require_finite_weights(model: torch.nn.Module) -> None:
    """Raise ``FloatingPointError`` if any floating parameter or buffer of ``model`` is not finite:
    every score of such a model is meaningless (and some, like a rank against NaN, look perfect)."""
    bad = [name for name, t in [*model.named_parameters(), *model.named_buffers()]
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise FloatingPointError(f"{len(bad)} weight tensor(s) hold NaN or infinity, e.g. {bad[0]!r}")


def drop_tracebacks(exc: BaseException) -> None:
    """Forget the tracebacks of ``exc`` and the exceptions chained to it: they hold the failed
    frames and, through them, their tensors, so memory cannot be freed while they live."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.__traceback__ = None
        link = link.__cause__ or link.__context__
