"""One self-contained HTML page for a run or sweep folder (``lcbench report RUN_DIR``).

The page holds everything in itself, so it opens from disk with no server and no network: every
figure as a base64 PNG, the summary tables, the failed rows with their messages, the run's
metadata (``run.json``) and, for a sweep, its spec (``spec.json``). It has no scripts.
"""
from __future__ import annotations

import base64
import html
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from harness.api import results
from harness.api.machine import machine_name
from harness.api.staging import prepare_output
from harness.report.claims import RunData
from harness.report.plots import make_figures
from harness.report.tables import footnotes, summary_tables, text_rows

REPORT_FILE = "report.html"
SPEC_FILE = "spec.json"  # what a sweep folder keeps of its spec (harness.runs.sweep writes it)
# What names a failed cell; the task's columns (variant ... batch_size) shown where a failed row has one.
FAILURE_COLUMNS = ["model", "task", "metric", "variant", "haystack", "eval_ctx", "depth", "batch_size", "status",
                   "message"]
FAILURE_OPTIONAL = ("variant", "haystack", "depth", "batch_size")
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0 1.5em; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f4f4f4; } td.text, th.text { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption, caption { font-size: .9em; color: #555; } caption { text-align: left; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: .85em; }
.failed td { background: #fff3f3; }
"""


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                 samples: RunData | None = None, unfinished: Sequence[str] = ()) -> Path:
    """Write the page for ``run_dir`` to ``out`` (default ``RUN_DIR/report.html``); return its path.
    With the run's ``samples`` (:func:`harness.report.claims.load_run`), its tables carry the
    intervals ``lcbench table`` gives them (loss gaps, speed-ups), and its figures draw them.
    ``unfinished``: a line per cell of the sweep's spec that has no result yet
    (:func:`harness.runs.sweep.unfinished_cells`), which the page lists."""
    run_dir = Path(run_dir)
    page = render_report(run_dir, samples, unfinished)
    path = Path(out) if out is not None else run_dir / REPORT_FILE
    prepare_output(path.parent, "report's folder")
    results.atomic_write(path, lambda f: f.write(page))
    return path


def render_report(run_dir: str | os.PathLike, samples: RunData | None = None, unfinished: Sequence[str] = ()) -> str:
    """The page for a run or sweep folder, as one HTML string (``samples``, ``unfinished``: as
    :func:`write_report`)."""
    run_dir = Path(run_dir)
    table = samples.table if samples is not None else results.read_table(run_dir)  # read once
    with tempfile.TemporaryDirectory(prefix="lcbench-report-") as tmp:
        figures = [(path.stem, _data_uri(path)) for path in make_figures(table, tmp, formats=("png",), samples=samples)]
    meta = _read_json(run_dir / results.RUN_JSON)
    spec = _read_json(run_dir / SPEC_FILE)
    failed = table[table["status"] != "ok"]
    sections = [
        f"<h1>lcbench report: {html.escape(run_dir.resolve().name)}</h1>",
        _overview(table, meta, len(unfinished)),
        *([_unfinished(unfinished)] if unfinished else []),
        "<h2>Figures</h2>" + ("".join(_figure(stem, uri) for stem, uri in figures) or "<p>No figure: the table "
                                                                                   "has no data any figure draws.</p>"),
        "<h2>Summary tables</h2>" + ("".join(f"<h3>{html.escape(name)}</h3>{_summary_table(df)}"
                                             for name, df in summary_tables(table, samples=samples).items())
                                     or "<p>No summary table for this run's tasks.</p>"),
        f"<h2>Failed ({len(failed)} rows)</h2>" + (_table(_failures(failed), css="failed") if len(failed)
                                                   else "<p>Every row is ok.</p>"),
    ]
    if spec is not None:
        sections.append("<h2>Spec</h2>" + _json_block(spec))
    if meta is not None:
        sections.append("<h2>Run metadata</h2>" + _json_block(meta))
    title = html.escape(f"lcbench report: {run_dir.resolve().name}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(sections) + "\n</body></html>\n")


def _overview(table: pd.DataFrame, meta: Mapping[str, Any] | None, unfinished: int = 0) -> str:
    facts = {
        "rows": len(table),
        "models": ", ".join(sorted(table["model"].dropna().unique())),
        "tasks": ", ".join(sorted(table["task"].dropna().unique())),
        "failed rows": int((table["status"] != "ok").sum()),
        **({"cells not run": unfinished} if unfinished else {}),
    }
    if meta:
        git = meta.get("git") or {}
        facts.update({"commit": git.get("commit") or "unknown", "created": meta.get("created", ""),
                      "command": " ".join(meta["command"]) if isinstance(meta.get("command"), list)
                      else meta.get("command", ""), "machine": _machines(meta)})
    rows = "".join(f'<tr><th class="text">{html.escape(k)}</th><td class="text">{html.escape(str(v))}</td></tr>'
                   for k, v in facts.items())
    return f"<table>{rows}</table>"


def _unfinished(lines: Sequence[str]) -> str:
    """The spec's cells with no result: an interrupted sweep's page read as complete, every row ok."""
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return (f"<h2>Not run ({len(lines)} cells)</h2><p>The sweep's spec has {len(lines)} cells with no result yet "
            "(the sweep was interrupted, or is still running): the figures and tables leave them out. Rerun the "
            f"same <code>lcbench sweep</code> command to finish them.</p><ul>{items}</ul>")


def _machines(meta: Mapping[str, Any]) -> str:
    """Where the run ran: a sweep's machines with their cells (each cell's record names its own),
    else run.json's device, by name (its CPU capability too)."""
    cells = meta.get("cell_machines")
    if isinstance(cells, dict) and cells:
        return "; ".join(f"{name}: {n} cell{'' if n == 1 else 's'}" for name, n in cells.items())
    device = meta.get("device")
    return machine_name(device) if isinstance(device, dict) else "not recorded"


def _failures(failed: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in FAILURE_COLUMNS if c in failed.columns
            and (c not in FAILURE_OPTIONAL or failed[c].notna().any())]
    return failed[cols].drop_duplicates().reset_index(drop=True)


def _summary_table(df: pd.DataFrame) -> str:
    """A summary table as ``lcbench table`` prints it (the same text: format, ± interval, † on a
    flagged value, context labels), with its title and flag note."""
    header, rows = text_rows(df)
    n_index = df.index.nlevels
    text = ' class="text"'

    def cells(tag: str, values: list[str]) -> str:
        return "".join(f"<{tag}{text if i < n_index else ''}>{html.escape(v)}</{tag}>" for i, v in enumerate(values))

    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    title = df.attrs.get("title")
    caption = f"<caption>{html.escape(title)}</caption>" if title else ""
    note = "".join(f"<p>{html.escape(line)}</p>" for line in footnotes(df))
    return f"<table>{caption}<thead><tr>{cells('th', header)}</tr></thead><tbody>{body}</tbody></table>{note}"


def _table(df: pd.DataFrame, css: str = "") -> str:
    head = "".join(f"<th{_cls(df[c])}>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td{_cls(df[c])}>{html.escape(_cell(v))}</td>" for c, v in zip(df.columns, row)) + "</tr>"
        for row in df.itertuples(index=False)
    )
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _cls(column: pd.Series) -> str:
    return "" if pd.api.types.is_numeric_dtype(column) else ' class="text"'


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _figure(stem: str, uri: str) -> str:
    name = html.escape(stem)
    return f'<figure><img src="{uri}" alt="{name}"><figcaption>{name}</figcaption></figure>'


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _json_block(data: Any) -> str:
    return f"<pre>{html.escape(json.dumps(data, indent=2, default=str))}</pre>"


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {"unreadable": str(path)}
