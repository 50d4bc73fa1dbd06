"""What happened to every item of every step, written line by line as it happens.

Each line of ``ledger.jsonl`` is one record ``{step, item, status, seconds, message}``; an item's
last record wins. A step first records its items as ``planned``: whatever is still ``planned``
when the step ends was cut off (the orchestrator then records it as ``timeout``), so nothing that
did not fit is ever silently dropped. Workers, the pytest plugin and the orchestrator append to
the same file, one at a time.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import pandas as pd

STATUSES = ("planned", "ok", "failed", "skipped", "timeout")
COLUMNS = ("step", "item", "status", "seconds", "message")
STEP_ITEM = "(step)"  # the record of a step as a whole
# CUDA errors that leave a process's CUDA context broken: every later CUDA call in it fails too
BROKEN_CUDA_CONTEXT = re.compile(r"illegal memory access|device-side assert|unspecified launch failure"
                                 r"|misaligned address|illegal instruction")
RUNNING = "running"  # the message of a planned item (a step, a GPU test) that has started
T = TypeVar("T")


class Ledger:
    def __init__(self, path: Path, step: str):
        self.path, self.step = Path(path), step

    def record(self, item: str, status: str, seconds: float = 0.0, message: str = "") -> None:
        if status not in STATUSES:
            raise ValueError(f"ledger status {status!r} is not one of {STATUSES}")
        line = json.dumps({"step": self.step, "item": item, "status": status, "seconds": round(seconds, 3),
                           "message": " ".join(str(message).split())[:500]})
        with open(self.path, "a+b") as f:
            if f.seek(0, os.SEEK_END) > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")  # the last line was cut short by a kill: start a new one
            f.write(line.encode("utf-8") + b"\n")

    def plan(self, items: Iterable[str]) -> None:
        for item in items:
            self.record(item, "planned")

    def run(self, item: str, fn: Callable[[], T]) -> T | None:
        """Run ``fn`` as ``item``: ``ok`` with its time, or ``failed`` with the error (the traceback
        goes to the log); None when it failed."""
        started = time.time()
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - one failed item must not stop the step
            traceback.print_exc(file=sys.stderr)
            self.record(item, "failed", time.time() - started, f"{type(exc).__name__}: {exc}")
            return None
        self.record(item, "ok", time.time() - started)
        return result


class BrokenCudaContext(RuntimeError):
    """An item failed with a CUDA error that breaks the process: the step ends, and the kit runs it
    again in a new process for the items not yet decided."""


def read(path: Path) -> "pd.DataFrame":
    """The last record of every (step, item), in the order items were first seen."""
    import pandas as pd  # here, not above: a worker only writes, and starts faster without pandas

    path = Path(path)
    records: dict[tuple[str, str], dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            records[(record["step"], record["item"])] = record
    return pd.DataFrame(list(records.values()), columns=list(COLUMNS))


def close_unfinished(path: Path, step: str, status: str, message: str) -> int:
    """Record every item of ``step`` still ``planned`` as ``status`` (the step's own record aside:
    the orchestrator writes it); how many there were."""
    table = read(path)
    open_items = table[(table["step"] == step) & (table["status"] == "planned") & (table["item"] != STEP_ITEM)]["item"]
    ledger = Ledger(path, step)
    for item in open_items:
        ledger.record(item, status, message=message)
    return len(open_items)


def decided(path: Path, step: str) -> set[str]:
    """The items of ``step`` with an outcome: what a step run again (a new process) leaves alone."""
    table = read(path)
    mine = table[(table["step"] == step) & (table["status"] != "planned") & (table["item"] != STEP_ITEM)]
    return set(mine["item"])
