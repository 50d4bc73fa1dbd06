"""The result store: concurrent writers (real processes) lose nothing, a torn cells.jsonl line is
not glued to the next record, and a cell's rows are its own (retries and edited specs)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from harness.api import results
from harness.runs.store import CELLS_FILE, ResultStore

ROOT = Path(__file__).resolve().parent.parent


def cell_rows(run: str, i: int, value: float = 1.0) -> pd.DataFrame:
    return results.to_frame([results.make_row("loss", value + i, run=run, model="m", arch="swa", task="t",
                                              eval_ctx=i + 1)])


WRITER = textwrap.dedent("""
    import sys
    from tests.test_store import cell_rows
    from harness.runs.store import ResultStore
    folder, run, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = ResultStore(folder)
    for i in range(n):
        store.record_cell(f"{run}-{i}", cell_rows(run, i), {"status": "ok"})
""")


def test_concurrent_writers_lose_no_rows_and_no_records(tmp_path):
    """Two processes record cells into one folder at once: every row and record survives (without
    the lock, each rewrites the table from a stale read and cells vanish while marked done)."""
    n = 12
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), run, str(n)], cwd=ROOT)
             for run in ("a", "b")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    store = ResultStore(tmp_path)
    table = results.read_table(tmp_path)
    assert len(table) == 2 * n
    assert sorted(table.groupby("run").size().tolist()) == [n, n]
    assert len(store.finished()) == 2 * n


def test_a_torn_last_line_is_skipped_and_not_glued_to_the_next(tmp_path):
    store = ResultStore(tmp_path)
    store.record_cell("one", cell_rows("r", 0), {"status": "ok"})
    with open(tmp_path / CELLS_FILE, "a") as f:
        f.write('{"key": "two", "sta')  # a kill in the middle of a write
    assert set(store.finished()) == {"one"}
    store.record_cell("three", cell_rows("r", 2), {"status": "ok"})
    assert set(store.finished()) == {"one", "three"}
    lines = (tmp_path / CELLS_FILE).read_text().splitlines()
    assert json.loads(lines[-1])["key"] == "three"


def test_a_torn_line_that_parses_is_still_not_trusted(tmp_path):
    """A record cut right after its closing brace, before the newline, is valid JSON but may not
    be the whole record: such a last line is redone."""
    store = ResultStore(tmp_path)
    (tmp_path / CELLS_FILE).write_text('{"key": "a", "status": "ok"}\n{"key": "b"}')
    assert set(store.finished()) == {"a"}


def test_recording_a_cell_again_replaces_its_own_old_rows(tmp_path):
    """A retried cell whose failure rows differ from its new rows leaves no stale failure row."""
    store = ResultStore(tmp_path)
    failed = results.to_frame(results.status_rows(["cell_failed"], "error", "boom", run="r", model="m", arch="swa",
                                                  task="t", variant="k"))
    store.record_cell("k", failed, {"status": "failed"})
    table = store.record_cell("k", cell_rows("r", 0), {"status": "ok"})
    assert table["status"].tolist() == ["ok"]


def test_show_cells_restores_displaced_rows(tmp_path):
    store = ResultStore(tmp_path)
    store.record_cell("sixty", cell_rows("r", 0, value=1.0), {"status": "ok"})
    store.record_cell("thirty", cell_rows("r", 0, value=5.0), {"status": "ok"})  # same identifying columns
    assert results.read_table(tmp_path)["value"].tolist() == [5.0]
    assert store.show_cells(["sixty"])["value"].tolist() == [1.0]


@pytest.mark.parametrize("garbage", [b"\x00\xff\xfe garbage", b"PAR1 not really parquet"])
def test_a_damaged_table_is_a_clear_error(tmp_path, garbage):
    (tmp_path / results.TABLE_PARQUET).write_bytes(garbage)
    with pytest.raises(results.SchemaError, match="cannot be read as a result table"):
        results.read_table(tmp_path)


def test_an_edited_cell_displaces_the_rows_of_the_cell_it_edits_and_no_other(tmp_path):
    """A cell recorded under a new key (an edit of the spec: same run, model, seed, task and
    options) takes the old key's rows out of the table even where its own rows differ (here it
    failed); a cell with other options is another cell, and its rows stay."""
    store = ResultStore(tmp_path)
    slot = {"run": "r", "model": "m", "seed": 0, "task": "t"}
    store.record_cell("old", cell_rows("r", 0), {**slot, "options": {"contexts": [1]}, "status": "ok"})
    store.record_cell("other", cell_rows("r", 1), {**slot, "options": {"contexts": [2]}, "status": "ok"})
    failed = results.to_frame(results.status_rows(["cell_failed"], "error", "boom", run="r", model="m", arch="swa",
                                                  task="t"))
    table = store.record_cell("edited", failed, {**slot, "options": {"contexts": [1]}, "status": "failed"})
    assert sorted(zip(table["metric"], table["eval_ctx"].fillna(0))) == [("cell_failed", 0), ("loss", 2)]


def test_show_cells_shows_the_last_of_two_clashing_cells_whatever_order_they_finished(tmp_path):
    """Two cells whose rows no column tells apart (a grid over corpus): the table shows the last
    one's, as the sweep's clash line says, also when the pool's workers finished it first."""
    store = ResultStore(tmp_path)
    store.record_cell("second", cell_rows("r", 0, value=5.0), {"status": "ok"})
    store.record_cell("first", cell_rows("r", 0, value=1.0), {"status": "ok"})  # finished last: shown now
    assert results.read_table(tmp_path)["value"].tolist() == [1.0]
    assert store.show_cells(["first", "second"])["value"].tolist() == [5.0]
    assert results.read_table(tmp_path)["value"].tolist() == [5.0]
