"""The result store of a sweep folder, safe under concurrent writers.

A folder holds the tidy table (``results.parquet`` + ``.csv``), ``cells.jsonl`` (one record per
finished cell, appended) and ``cells/KEY.parquet`` (each finished cell's own rows, the cache a
cell's key points to). Every read-modify-write of the table and every append to ``cells.jsonl``
happens under an exclusive lock on ``.lcbench.lock`` (``flock``), so any number of processes —
two sweeps into one folder, or one job per cell from a cluster executor — can call
:meth:`ResultStore.record_cell` at once without losing rows.

A cell's rows are the truth; the table is the view of them. Recording a cell replaces the rows it
wrote before (a retried failure leaves no stale failure rows), those of the cells it supersedes
(earlier records of the same run, model, seed, task and options under another key: an edit of
the spec, whose numbers must not outlive it when the edited cell fails) and any other cell's rows
with the same identifying columns (the newest measurement is shown). :meth:`ResultStore.show_cells`
puts back the rows of cells that are finished but were displaced, e.g. when a spec is edited and
then reverted: the table then shows exactly the numbers of the spec that ran last, without rerunning.

A kill can cut the last line of ``cells.jsonl``: such a line is ignored when read (the cell is
redone), and the next append starts on a fresh line so that it is not glued to the torn one.
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from harness.api import results
from harness.api.staging import exclusive

CELLS_FILE = "cells.jsonl"
CELL_ROWS_DIR = "cells"
LOCK_FILE = ".lcbench.lock"


class ResultStore:
    """``ResultStore(folder)``: record finished cells and read the table (see the module doc)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Hold the folder's exclusive lock (blocks while another process holds it)."""
        return exclusive(self.root / LOCK_FILE)

    def finished(self) -> dict[str, dict[str, Any]]:
        """key -> the latest record of every cell in ``cells.jsonl`` (torn lines skipped)."""
        path = self.root / CELLS_FILE
        if not path.is_file():
            return {}
        done = {}
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.endswith("\n"):  # the last line, cut by a kill: that cell is redone
                    break
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("key"), str):
                    done[record["key"]] = record
        return done

    def cell_rows(self, key: str) -> pd.DataFrame | None:
        """The rows cell ``key`` recorded (None if it recorded none in this store)."""
        path = self._rows_path(key)
        return results.read_table(path, validate_schema=False) if path.is_file() else None

    def record_cell(self, key: str, rows: pd.DataFrame, record: dict[str, Any]) -> pd.DataFrame:
        """Store a finished cell: its rows replace those it wrote before and any that clash with
        them, and ``record`` (with ``key``) is appended to ``cells.jsonl``. Returns the table."""
        rows = results.validate(rows)
        with self.locked():
            table = self._read_table()
            for old in [key, *self._superseded({key: record})]:
                table = self._without_rows_of(table, old)
            table = pd.concat([f for f in (_drop_keys(table, rows), rows) if len(f)] or [results.to_frame([])],
                              ignore_index=True)
            results.write_table(self._rows_path(key), rows)
            table = results.write_table(self.root, table)
            self._append_record({**record, "key": key})
        return table

    def show_cells(self, keys: Iterable[str], run: str | None = None) -> pd.DataFrame:
        """Make the table show the stored rows of the finished cells ``keys`` (rows of other
        cells that clash with them are replaced). With ``run`` (the spec's name), the rows of that
        run's other recorded cells leave the table: cells an edit of the spec dropped (a model
        changed or removed, a grid point gone), which it would show beside the spec's own as if
        current; they stay in ``cells/`` and show again when a spec that has them runs. Cells
        recorded before rows were kept per cell are left as the table has them. Returns the table."""
        keys = list(keys)
        with self.locked():
            stored = [rows for rows in (self.cell_rows(k) for k in keys) if rows is not None and len(rows)]
            table = self._read_table()
            records = self.finished()
            dropped = [k for k, r in records.items() if run is not None and r.get("run") == run and k not in keys]
            for old in [*self._superseded({k: records[k] for k in keys if k in records}), *dropped]:
                table = self._without_rows_of(table, old)
            if not stored:
                return results.write_table(self.root, table) if dropped else table
            wanted = pd.concat(stored, ignore_index=True)
            wanted = wanted[~wanted.duplicated(results.KEY_COLUMNS, keep="last")]
            kept = _drop_keys(table, wanted)
            return results.write_table(self.root, pd.concat([f for f in (kept, wanted) if len(f)], ignore_index=True))

    def _superseded(self, cells: dict[str, dict[str, Any]]) -> list[str]:
        """The keys of the recorded cells that ``cells`` (key -> record) supersede: the same slot
        (see :func:`_slot`) under another key."""
        slots = {_slot(record) for record in cells.values()} - {None}
        return [k for k, record in self.finished().items() if k not in cells and _slot(record) in slots]

    def _without_rows_of(self, table: pd.DataFrame, key: str) -> pd.DataFrame:
        rows = self.cell_rows(key)
        return table if rows is None else _drop_keys(table, rows)

    def _read_table(self) -> pd.DataFrame:
        parquet, csv = self.root / results.TABLE_PARQUET, self.root / results.TABLE_CSV
        return results.read_table(self.root) if parquet.is_file() or csv.is_file() else results.to_frame([])

    def _rows_path(self, key: str) -> Path:
        return self.root / CELL_ROWS_DIR / f"{key}.parquet"

    def _append_record(self, record: dict[str, Any]) -> None:
        path = self.root / CELLS_FILE
        with open(path, "ab") as f:
            torn = f.tell() > 0 and _last_byte(path) != b"\n"
            f.write((b"\n" if torn else b"") + (json.dumps(record) + "\n").encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())


def _slot(record: dict[str, Any]) -> str | None:
    """What a cell measures, whatever the settings its key hashes: cells of one run with the same
    model, seed, task and options are edits of one cell (None for records that do not say)."""
    if "run" not in record:
        return None
    return json.dumps([record["run"], record.get("model"), record.get("seed"), record.get("task"),
                       record.get("options")], sort_keys=True, default=str)


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def _drop_keys(table: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """``table`` without the rows whose identifying columns appear in ``rows``."""
    if not len(table) or not len(rows):
        return table
    return table[~results.key_index(table).isin(results.key_index(rows))]
