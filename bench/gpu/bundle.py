"""The kit's output folder: every result of a run in at most 8 flat files of at most 15 MiB each
and 60 MiB together (the device tool brings back 8 files of 16 MiB, 64 MiB in all, no more than
two folders down).

The names are fixed (:data:`FILES`), so the count cannot grow; a text over the size limit keeps
its head and tail with a note of what was left out, and the logs share the limit step by step so
that one chatty step cannot crowd out the others. The folder is rewritten after every step.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from bench.gpu import environment, gpu_tests, ledger, ttt_speed_step
from bench.gpu.config import LEDGER_FILE, STEPS
from harness.api import results

MAX_BYTES = 15 * 2**20
MAX_TOTAL = 60 * 2**20  # the device tool brings back 64 MiB in all
SUMMARY, STEPS_CSV, LOGS = "summary.md", "steps.csv", "logs.txt"
FILES = (SUMMARY, STEPS_CSV, environment.FILE, gpu_tests.JUNIT, "latency.csv", "throughput.csv",
         ttt_speed_step.TABLE, LOGS)
LOG_DIR = "logs"
KIT_LOG = "kit"  # the orchestrator's own log, before the steps'


def fit(text: str, limit: int = MAX_BYTES) -> str:
    """``text`` if it fits in ``limit`` UTF-8 bytes, else its head and tail and what was cut."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    note = f"\n\n[... {len(data) - limit + 200:,} bytes left out to stay under the size limit ...]\n\n".encode()
    keep = (limit - 200) // 2
    return (data[:keep] + note + data[-keep:]).decode("utf-8", errors="ignore")


def log_path(work: Path, name: str) -> Path:
    return work / LOG_DIR / f"{name}.log"


def read_ends(path: Path, limit: int) -> str:
    """``path``'s text, or its head and tail when it is over ``limit`` bytes, without reading the
    rest: a step that printed gigabytes must not stall the kit, which rewrites this every 30 s."""
    size = path.stat().st_size
    if size <= limit:
        return path.read_text(errors="replace")
    keep = max(0, limit - 200) // 2
    with open(path, "rb") as f:
        head = f.read(keep)
        f.seek(size - keep)
        tail = f.read(keep)
    note = f"\n\n[... {size - 2 * keep:,} bytes left out to stay under the size limit ...]\n\n"
    return head.decode(errors="replace") + note + tail.decode(errors="replace")


def logs_text(work: Path) -> str:
    names = [n for n in (KIT_LOG, *STEPS) if log_path(work, n).is_file()]
    share = MAX_BYTES // max(1, len(names)) - 200
    return "".join(f"===== {name} =====\n{fit(read_ends(log_path(work, name), share), share)}\n" for name in names)


def tables_csv(folders: list[Path]) -> str | None:
    """The tidy tables of these run folders as one CSV; None when none exists."""
    tables = [results.read_table(f) for f in folders if (f / results.TABLE_PARQUET).is_file()]
    return pd.concat(tables, ignore_index=True).to_csv(index=False) if tables else None


def collect(work: Path) -> dict[str, str]:
    """Every output file but the summary, by name: those whose step produced something."""
    files: dict[str, str | None] = {
        STEPS_CSV: ledger.read(work / LEDGER_FILE).to_csv(index=False),
        "latency.csv": tables_csv([work / "latency", work / "latency_large"]),
        "throughput.csv": tables_csv([work / "throughput"]),
        LOGS: logs_text(work),
    }
    for name, path in ((environment.FILE, work / environment.FILE), (gpu_tests.JUNIT, work / gpu_tests.JUNIT),
                       (ttt_speed_step.TABLE, work / "ttt_speed" / ttt_speed_step.TABLE)):
        files[name] = path.read_text(errors="replace") if path.is_file() else None
    return {name: text for name, text in files.items() if text is not None}


def write(out: Path, files: Mapping[str, str]) -> list[Path]:
    unknown = [name for name in files if name not in FILES]
    if unknown:
        raise ValueError(f"not an output file of the kit: {unknown}; the folder holds only {', '.join(FILES)}")
    limits = shares({name: len(text.encode("utf-8")) for name, text in files.items()})
    return [results.atomic_write(out / name, lambda f, t=fit(text, limits[name]): f.write(t))
            for name, text in files.items()]


def shares(sizes: Mapping[str, int]) -> dict[str, int]:
    """Each file's byte limit: at most :data:`MAX_BYTES` each and :data:`MAX_TOTAL` together, the
    smaller files whole and the larger sharing what they leave: 8 files of 15 MiB would be 120 MiB,
    and past 64 MiB the device tool leaves files out, whichever they are."""
    limits, left = {}, MAX_TOTAL
    for i, (name, size) in enumerate(sorted(sizes.items(), key=lambda item: item[1])):
        limits[name] = min(size, MAX_BYTES, left // (len(sizes) - i))
        left -= limits[name]
    return limits
