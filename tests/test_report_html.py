"""``lcbench report``: one self-contained HTML page (figures embedded, tables, failures, spec,
metadata) that opens from disk; rendered in headless Chromium where it is installed."""
from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.api import results
from harness.cli import main
from harness.report.html import REPORT_FILE, SPEC_FILE, render_report, write_report
from harness.report.tables import context_label
from tests.test_plots import LOSS_CTX, synthetic_table

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "chrome")
                 if shutil.which(n)), None)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A sweep-like folder: the plots' synthetic table (with oom and error rows; one NIAH metric,
    since drawing is the test's cost), run.json and spec.json."""
    out = tmp_path_factory.mktemp("sweep")
    table = synthetic_table()
    results.write_table(out, table[table.metric != "cand_acc"])
    (out / results.RUN_JSON).write_text(json.dumps({"git": {"commit": None}, "command": ["lcbench", "sweep", "x.yaml"],
                                                    "created": "2026-01-01T00:00:00"}))
    (out / SPEC_FILE).write_text(json.dumps({"models": [{"arch": "swa", "preset": "tiny"}], "tasks": ["niah"]}))
    return out


@pytest.fixture(scope="module")
def page(run_dir) -> Path:
    result = CliRunner().invoke(main, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(run_dir / REPORT_FILE)
    return run_dir / REPORT_FILE


def test_every_figure_is_embedded_and_nothing_is_fetched(page):
    text = page.read_text()
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', text)
    expected = {"loss_vs_context", "loss_gap", "loss_by_position", "loss_gap_by_position", "niah_heatmap_gen_match_text",
                "niah_vs_context_gen_match_text", "latency", "memory", *(f"pareto_{context_label(L)}" for L in LOSS_CTX)}
    assert set(re.findall(r"<figcaption>([^<]+)</figcaption>", text)) == expected
    assert len(images) == len(expected)
    assert all(base64.b64decode(b).startswith(b"\x89PNG\r\n\x1a\n") for b in images)
    assert not re.findall(r'(?:src|href)="(?!data:)', text)  # no file, server or network reference
    assert "<script" not in text


def test_tables_failures_spec_and_metadata_are_on_the_page(page):
    text = html.unescape(page.read_text())
    assert "<h3>loss</h3>" in text and "<h3>niah_gen_match</h3>" in text and "<h3>prefill_speedup</h3>" in text
    assert "out of memory at 16384 tokens" in text and "prompt too long" in text and "CUDA out of memory" in text
    assert '"tasks": [\n    "niah"\n  ]' in text  # the spec
    assert "lcbench sweep x.yaml" in text and "unknown" in text  # the command; no commit recorded


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed")
def test_chromium_loads_every_figure_without_script_errors(page, tmp_path):
    """The page as a browser opens it from disk: every image decoded, no error event."""
    probe = ("<script>window.__errors=[];window.addEventListener('error',e=>window.__errors.push("
             "String(e.message||(e.target&&e.target.tagName)||e.type)),true);</script>")
    report = ("<script>window.addEventListener('load',()=>{const i=[...document.images];document.body.setAttribute("
              "'data-check',JSON.stringify({n:i.length,ok:i.filter(x=>x.complete&&x.naturalWidth>0).length,"
              "errors:window.__errors}))});</script>")
    text = page.read_text().replace("<head>", "<head>" + probe, 1).replace("</body>", report + "</body>", 1)
    probed = tmp_path / "probed.html"
    probed.write_text(text)
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                           "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'data-check="([^"]+)"', done.stdout)
    assert found, done.stdout[-2000:]
    check = json.loads(html.unescape(found.group(1)))
    assert check["n"] == page.read_text().count("<img ") and check["ok"] == check["n"] > 3
    assert check["errors"] == []


def test_a_folder_without_a_table_is_one_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code != 0 and "no result table" in result.output
    with pytest.raises(Exception, match="no result table"):
        write_report(tmp_path, tmp_path / "elsewhere.html")


def _flagged_run(tmp_path: Path) -> Path:
    """Loss with intervals (a gap table) and a prefill timing flagged unstable."""
    rows = []
    for model, arch, loss, prefill in (("fa", "full_attention", 3.0, 2.0), ("m2", "mamba2", 3.1, 0.5)):
        base = dict(run="r", model=model, arch=arch, params=100)
        rows.append(results.make_row("loss", loss, task="loss_scaling", eval_ctx=1024, ci_low=loss - 0.02,
                                     ci_high=loss + 0.02, **base))
        rows.append(results.make_row("prefill_s", prefill, task="latency", eval_ctx=1024, batch_size=1,
                                     flag="unstable: spread 30%" if arch == "mamba2" else "", **base))
    results.write_table(tmp_path, results.validate(rows))
    return tmp_path


def test_summary_tables_on_the_page_read_as_the_printed_tables(tmp_path):
    """The page showed raw values (``.4g``: no ±, no † on an unstable timing, 1024 for 1K, gap 0.1
    for +0.100): numbers that differ from ``lcbench table``'s."""
    text = html.unescape(render_report(_flagged_run(tmp_path)))
    for cells in (["fa", "Full attention", "3.000 ± 0.020"], ["m2", "Mamba 2", "+0.100"],
                  ["m2", "Mamba 2", "500†"], ["m2", "Mamba 2", "4.00†"]):
        assert "".join(f'<td class="text">{c}</td>' if i < 2 else f"<td>{c}</td>" for i, c in enumerate(cells)) \
            in text, cells
    assert "<th>1K</th>" in text and "<th>1024</th>" not in text
    assert "Loss gap to full attention" in text  # the table's title
    assert "† 1 value(s) flagged, e.g. unstable: spread 30%" in text


def test_failed_rows_name_the_cell_that_failed(tmp_path):
    """Two NIAH variants failing alike showed as one row without a variant: which cell failed was lost."""
    base = dict(run="r", model="m2", arch="mamba2", task="niah", haystack="text", eval_ctx=4096)
    rows = [results.make_row("gen_match", 1.0, variant="single", **{**base, "eval_ctx": 1024})]
    rows += results.status_rows(["gen_match"], "error", "prompt too long", variant="single", **base)
    rows += results.status_rows(["gen_match"], "error", "prompt too long", variant="multikey", **base)
    results.write_table(tmp_path, results.validate(rows))
    text = html.unescape(render_report(tmp_path))
    failed = text[text.index("<h2>Failed (2 rows)</h2>"):]
    assert "<th class=\"text\">variant</th>" in failed
    assert failed.count("prompt too long") == 2 and "multikey" in failed and "single" in failed


def test_overview_and_failed_rows_say_what_failed_and_where(tmp_path):
    """Every row not ok counts as failed (out of memory too), the models are the table's labels,
    and each failed cell is one line with the task's columns some failed row has, blank where a
    row has none, numbers as measured (a depth of 0.125) and right-aligned."""
    base = {"run": "r", "model": "m2", "arch": "mamba2"}
    rows = [results.make_row("loss", 2.0, task="custom", eval_ctx=1024, run="r", model="fa", arch="full_attention")]
    for seed in (0, 1):  # two seeds of one cell failing alike: one line
        rows += results.status_rows(["loss"], "oom", "out of memory", task="custom", eval_ctx=4096, depth=0.125,
                                    seed=seed, **base)
    rows += results.status_rows(["prefill_s"], "error", "boom", task="latency", eval_ctx=1024, batch_size=2, **base)
    results.write_table(tmp_path, results.validate(rows))
    text = html.unescape(render_report(tmp_path))
    for fact, value in (("models", "fa, m2"), ("tasks", "custom, latency"), ("failed rows", "3")):
        assert f'<tr><th class="text">{fact}</th><td class="text">{value}</td></tr>' in text, fact
    failed = text[text.index("<h2>Failed (3 rows)</h2>"):]
    text_cell, number = '<{0} class="text">{1}</{0}>', "<{0}>{1}</{0}>"
    header = [("model", 1), ("task", 1), ("metric", 1), ("eval_ctx", 0), ("depth", 0), ("batch_size", 0),
              ("status", 1), ("message", 1)]
    assert "".join((text_cell if t else number).format("th", c) for c, t in header) in failed
    for line in (["m2", "custom", "loss", "4096", "0.125", "", "oom", "out of memory"],
                 ["m2", "latency", "prefill_s", "1024", "", "2", "error", "boom"]):
        cells = "".join((text_cell if t else number).format("td", v) for v, (_, t) in zip(line, header))
        assert failed.count(cells) == 1, line


def test_the_overview_names_the_machine_with_its_cpu_capability(tmp_path):
    """The machine (AVX2 or AVX-512 kernels time and round differently) showed only deep in the
    metadata's JSON; a sweep's cells name their machines, the command's run.json only its own."""
    results.write_table(tmp_path, results.validate([results.make_row("loss", 2.0, task="custom", run="r", model="m", arch="swa")]))
    device = {"name": "cpu", "cpu": "AMD EPYC", "cpu_count": 2, "cpu_capability": "AVX512"}
    meta = {"git": {"commit": None}, "command": "lcbench eval", "device": device}

    def machine() -> str:
        (tmp_path / results.RUN_JSON).write_text(json.dumps(meta))
        text = html.unescape(render_report(tmp_path))
        return text.split('<th class="text">machine</th><td class="text">')[1].split("</td>")[0]

    assert machine() == "cpu (AMD EPYC, 2 cores, ATen AVX512)"
    meta["cell_machines"] = {"cpu (AMD EPYC, 2 cores, ATen AVX2)": 3, "cpu (AMD EPYC, 2 cores, ATen AVX512)": 1}
    assert machine() == "cpu (AMD EPYC, 2 cores, ATen AVX2): 3 cells; cpu (AMD EPYC, 2 cores, ATen AVX512): 1 cell"
    meta["cell_machines"] = {}  # a sweep none of whose cells named a machine: run.json's device
    assert machine() == "cpu (AMD EPYC, 2 cores, ATen AVX512)"
    del meta["cell_machines"], meta["device"]
    assert machine() == "not recorded"


def test_one_failed_row_an_unreadable_run_json_and_a_page_written_elsewhere(tmp_path):
    run = tmp_path / "run"
    rows = [results.make_row("loss", 2.0, task="custom", run="r", model="fa", arch="full_attention"),
            *results.status_rows(["loss"], "error", "boom", task="custom", eval_ctx=8, run="r", model="fa",
                                 arch="full_attention")]
    results.write_table(run, results.validate(rows))
    (run / results.RUN_JSON).write_text("{not json")
    path = write_report(run, tmp_path / "pages" / "page.html")
    assert path == tmp_path / "pages" / "page.html" and not (run / REPORT_FILE).exists()
    text = html.unescape(path.read_text())
    assert "<h2>Failed (1 rows)</h2>" in text and "Every row is ok" not in text and "boom" in text
    assert f'"unreadable": "{run / results.RUN_JSON}"' in text  # said, not passed over as if there were none


def test_lcbench_report_gives_the_tables_the_intervals_lcbench_table_gives(tmp_path):
    """With the run's samples, `lcbench table` gives the loss gap a paired interval; the report's
    tables showed the bare gap, so the page and the tables disagreed."""
    from tests.test_tables_intervals import _loss_run, _write_run

    rows, samples = _loss_run()
    _write_run(tmp_path, rows, samples)
    out = CliRunner().invoke(main, ["report", str(tmp_path), "--out", str(tmp_path / "page.html")])
    assert out.exit_code == 0, out.output
    page = (tmp_path / "page.html").read_text(encoding="utf-8")
    table = CliRunner().invoke(main, ["table", str(tmp_path), "--no-save"]).output
    assert "paired by target window over documents" in page and "paired by target window over documents" in table
    gap = re.search(r"\| ttt_e2e \| TTT-E2E \| ([^|]+) \|", table.split("Loss gap")[1])[1].strip()
    assert "±" in gap or "[" in gap, gap
    assert html.escape(gap) in page  # the same cell, interval and all
