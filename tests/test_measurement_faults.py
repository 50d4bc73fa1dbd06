"""Measurements that must not mislead: NaN models give nan rows in every task, timings are
medians and carry a flag when unstable (in rows, tables and figures), CPU peak memory is what the
work added, rate intervals stay in [0, 1], and undecodable corpus bytes are counted aloud."""
from __future__ import annotations

import codecs
import gc
import io

import math
import time
from pathlib import Path

import pytest
import torch

from harness.adapters.lm_eval import Z95, _metric_rows
from harness.api import results, stats, timing
from harness.api.timing import PeakMemory, UNSTABLE_SPREAD, relative_spread, timing_flag
from harness.data.corpora import CorpusWarning, Document, load_corpus
from harness.report.plots import make_figures
from harness.report.tables import UNSTABLE_MARK, render_markdown, summary_tables
from harness.runs.evaluate import run_eval
from tasks.latency import Latency, LatencyOptions
from tasks.niah import tie_aware_top1
from tests.conftest import small_model
from tests.test_tasks import NIAH_SMALL, UniformLM, corpus, data_options  # noqa: F401 - corpus is a fixture


class NaNLogitsLM(UniformLM):
    """Finite (no) weights, NaN outputs: what an overflow in a real model gives."""

    def prefill(self, tokens):
        logits, state = super().prefill(tokens)
        return logits + math.nan, state

    def decode_step(self, state, token):
        logits, state = super().decode_step(state, token)
        return logits + math.nan, state


def nan_weight_model():
    model = small_model("swa")
    with torch.no_grad():
        model.blocks[0].mixer.q_proj.weight[0, 0] = math.nan
    return model


@pytest.mark.parametrize("task, options", [
    ("niah", NIAH_SMALL), ("loss_scaling", {"contexts": "64"}),
    ("latency", {"contexts": "8", "repeats": 1, "decode_tokens": 1}),
])
def test_every_task_gives_nan_rows_for_a_model_with_a_nan_weight(task, options, corpus):
    opts = {**options, **(data_options(corpus) if task != "latency" else {})}
    table = run_eval(task, nan_weight_model(), None, opts, progress=False, model_name="nan").table
    assert len(table) and (table["status"] == "nan").all(), table[["metric", "status"]]
    assert table["message"].str.contains("NaN or infinity").all()


def test_niah_with_nan_outputs_gives_nan_rows_not_perfect_scores(corpus):
    table = run_eval("niah", NaNLogitsLM(), None, {**data_options(corpus), **NIAH_SMALL}, progress=False,
                     model_name="nan").table
    assert not (table["status"] == "ok").any()
    assert (table["status"] == "nan").all()


def test_a_rank_against_nan_is_nan_not_a_win():
    assert math.isnan(tie_aware_top1(math.nan, [1.0, 2.0]))
    assert math.isnan(tie_aware_top1(3.0, [math.nan, 2.0]))
    assert tie_aware_top1(3.0, [1.0, 2.0]) == 1.0


def test_latency_reports_the_median_not_the_mean_of_known_timings():
    times = [0.010, 0.011, 0.012, 0.013, 0.500]  # one slow outlier
    rows = Latency._timing_rows("prefill", times, 100, LatencyOptions(), _Ctx(), "", eval_ctx=8, batch_size=1)
    by_metric = {r["metric"]: r for r in rows}
    assert by_metric["prefill_s"]["value"] == pytest.approx(0.012)
    assert by_metric["prefill_tok_s"]["value"] == pytest.approx(100 / 0.012)
    assert by_metric["prefill_s"]["ci_low"] <= 0.012 <= by_metric["prefill_s"]["ci_high"]


class _Ctx:
    seed = 0


def test_unstable_timings_are_flagged_with_the_reason():
    steady = [1.00, 1.01, 0.99, 1.00, 1.02]
    assert relative_spread(steady) < UNSTABLE_SPREAD and timing_flag(steady, "cpu", others=0.05) == ""
    noisy = [1.0, 1.5, 2.0, 2.5, 3.0]
    assert "repeats spread 25%" in timing_flag(noisy, "cpu", others=0.05)
    assert "machine busy (other processes took 50% of the CPUs" in timing_flag(steady, "cpu", others=0.5)
    assert timing_flag(steady, "cuda", others=0.5) == ""  # host load does not time GPU kernels
    # an even number of repeats: the median is the mean of the middle two (1.5), and so is the
    # median of the deviations (0.5, 0.5, 0.5, 0.5)
    assert relative_spread([1.0, 1.0, 2.0, 2.0]) == pytest.approx(0.5 / 1.5)


def _fake_ticks(monkeypatch, readings: list[tuple[int, int]], seconds: float) -> None:
    """/proc read as ``readings`` (machine busy ticks, own ticks), the block lasting ``seconds``."""
    clock, ticks = iter([0.0, seconds]), iter(readings)
    monkeypatch.setattr(timing, "cpu_ticks", lambda cpus=None: next(ticks))
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(timing.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(timing.os, "sysconf", lambda name: 100)


def test_a_timing_that_keeps_every_core_busy_is_not_a_busy_machine(monkeypatch):
    """The 1-minute load average counted the timed process's own threads: on the 2-core machine a
    2-thread prefill of a few seconds read 'machine busy (load 1.01 per core)' with nothing else
    running (latency_cpu: every TTT-E2E prefill). Only other processes' CPU time counts now."""
    _fake_ticks(monkeypatch, [(1000, 50), (1400, 450)], seconds=2.0)  # all 400 ticks were ours
    with timing.OtherProcessesCPU() as alone:
        pass
    assert alone.share == 0.0
    _fake_ticks(monkeypatch, [(1000, 50), (1400, 250)], seconds=2.0)  # another process took one core
    with timing.OtherProcessesCPU() as shared:
        pass
    assert shared.share == pytest.approx(0.5)
    assert "machine busy" in timing_flag([1.0, 1.0, 1.0], "cpu", others=shared.share)
    _fake_ticks(monkeypatch, [(1000, 50), (1010, 55)], seconds=0.1)  # 20 ticks: too few to tell
    with timing.OtherProcessesCPU() as short:
        pass
    assert short.share is None


def _fake_proc(monkeypatch, busy: list[tuple[list[int], int]], own_cpus: set[int], seconds: float) -> None:
    """/proc read twice, before and after a block of ``seconds``: each reading (busy ticks of
    cpu0, cpu1, ..., this process's ticks); the process may run on ``own_cpus``."""
    texts = []
    for per_cpu, own in busy:
        lines = [f"cpu{i} {b} 0 0 1000 0 0 0 0 0 0" for i, b in enumerate(per_cpu)]
        texts += [f"cpu  {sum(per_cpu)} 0 0 {1000 * len(per_cpu)} 0 0 0 0 0 0\n" + "\n".join(lines) + "\nintr 1 2\n",
                  f"42 (py thon) R {' '.join(['0'] * 10)} {own} 0 0 0"]
    monkeypatch.setattr(timing, "open", lambda path, *a: io.StringIO(texts.pop(0)), raising=False)
    clock = iter([0.0, seconds])
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(timing.os, "sched_getaffinity", lambda pid: own_cpus)
    monkeypatch.setattr(timing.os, "sysconf", lambda name: 100)


def test_only_the_cpus_a_timing_may_run_on_count(monkeypatch):
    """On a 4-core node where this job is pinned to cores 0-1 (a container's cpuset, a cluster
    job), the share was of all 4 cores: other jobs busy on cores 2-3 read 'machine busy' (50%),
    and another process on the job's own core read 25%, under the flag's bound."""
    # 2 s: each core has 200 ticks. This process busy on cores 0-1; other jobs on cores 2-3.
    _fake_proc(monkeypatch, [([0, 0, 0, 0], 0), ([200, 200, 200, 200], 400)], {0, 1}, seconds=2.0)
    with timing.OtherProcessesCPU() as pinned:
        pass
    assert pinned.share == 0.0
    # this process on core 0; another on core 1 (its own cores); cores 2-3 idle
    _fake_proc(monkeypatch, [([0, 0, 0, 0], 0), ([200, 200, 0, 0], 200)], {0, 1}, seconds=2.0)
    with timing.OtherProcessesCPU() as crowded:
        pass
    assert crowded.share == pytest.approx(0.5)
    assert "machine busy" in timing_flag([1.0, 1.0, 1.0], "cpu", others=crowded.share)


def test_other_processes_share_is_read_from_this_machine():
    with timing.OtherProcessesCPU() as block:
        deadline = time.perf_counter() + 0.4
        while time.perf_counter() < deadline:
            pass
    if not Path("/proc/stat").exists():
        pytest.skip("no /proc here: no share is measured")
    assert block.share is not None and 0.0 <= block.share <= 1.0


def _latency_table(flag: str, flagged_arch: str = "swa"):
    rows = []
    for arch in ("full_attention", "swa"):
        for T in (8, 16):
            rows.append(results.make_row("decode_s", 0.001 * T, run="r", model=arch, arch=arch, task="latency",
                                         eval_ctx=T, batch_size=1, flag=flag if (arch, T) == (flagged_arch, 16) else ""))
    return results.to_frame(rows)


def test_a_speedup_over_an_unstable_reference_is_flagged():
    tables = summary_tables(_latency_table("unstable: machine busy", flagged_arch="full_attention"))
    speedup = render_markdown(tables["decode_speedup"])
    swa_row = next(line for line in speedup.splitlines() if line.startswith("| swa "))
    assert swa_row.count(UNSTABLE_MARK) == 1 and swa_row.endswith(f"{UNSTABLE_MARK} |"), speedup  # only at 16
    assert "2 value(s) flagged" in speedup
    assert UNSTABLE_MARK not in render_markdown(summary_tables(_latency_table(""))["decode_speedup"])


def test_flags_reach_tables_and_figures(tmp_path):
    table = _latency_table("unstable: repeats spread 40%")
    text = render_markdown(summary_tables(table)["decode_ms"])
    assert f"16.0{UNSTABLE_MARK}" in text or f"16{UNSTABLE_MARK}" in text, text
    assert "1 value(s) flagged, e.g. unstable: repeats spread 40%" in text
    assert UNSTABLE_MARK not in render_markdown(summary_tables(_latency_table(""))["decode_ms"])
    results.write_table(tmp_path, table)
    assert make_figures(tmp_path, formats=("png",))  # flagged points are drawn, not dropped


def test_a_mean_over_the_seeds_that_worked_is_flagged_partial():
    # seed 1 ran out of memory: the table showed seed 0's loss alone as the cell's, unmarked
    rows = [results.make_row("loss", 2.0, run="r", model="swa", arch="swa", task="loss_scaling", eval_ctx=16, seed=0),
            results.make_row("loss", 2.5, run="r", model="swa", arch="swa", task="loss_scaling", eval_ctx=32, seed=0),
            results.make_row("loss", 2.4, run="r", model="swa", arch="swa", task="loss_scaling", eval_ctx=32, seed=1),
            results.make_row("loss", None, run="r", model="swa", arch="swa", task="loss_scaling", eval_ctx=16, seed=1,
                             status="oom", message="out of memory")]
    text = render_markdown(summary_tables(results.to_frame(rows))["loss"])
    swa_row = next(line for line in text.splitlines() if line.startswith("| swa "))
    assert swa_row.count(UNSTABLE_MARK) == 1 and f"2{UNSTABLE_MARK}" in swa_row.replace(".000", ""), text
    # at 32 both seeds worked: their mean, not the first seed's 2.5, with Student's t over the two
    assert f"| 2.450 ± {stats.t_quantile(0.975, 1) * 0.05:.3f} |" in swa_row, text
    assert "1 value(s) flagged, e.g. partial: 1 of 2 rows ok, the others oom" in text


def test_cpu_peak_memory_is_what_the_work_added():
    with PeakMemory("cpu") as pm:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB
        block += 1
    assert pm.added >= 48 * 2**20
    assert pm.added < pm.peak  # the interpreter and libraries are not counted
    del block


def test_cpu_peak_memory_counts_work_that_reuses_what_a_warm_up_freed():
    """The latency task measures a prefill after warm-up runs; the C allocator kept what they freed,
    so the measured prefill reused it and every CPU peak read 0 (paper_small: 15 of 15 cells)."""
    model = small_model("mamba2")
    tokens = torch.randint(0, model.config.vocab_size, (1, 1024), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.prefill(tokens), model.prefill(tokens)  # the warm-up
        with PeakMemory("cpu") as pm:
            model.prefill(tokens)
            kept = torch.ones(2**20)  # 4 MiB still alive when the block ends
    assert pm.added >= kept.nbytes, pm.added


def test_garbage_of_earlier_work_does_not_hide_what_a_block_added():
    """Cyclic garbage left by earlier work, collected inside the block (the collector runs when
    the block allocates), lowered the resident set as much as the block raised it: added read 0
    (seen under pytest-xdist, after another module's tests)."""
    cycle: dict = {"tensor": torch.ones(128 * 2**20 // 4)}  # 128 MiB
    cycle["self"] = cycle
    del cycle
    with PeakMemory("cpu") as pm:
        gc.collect()  # what an automatic collection at the block's first allocation does
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB
        block += 1
    assert pm.added >= 48 * 2**20
    del block


def test_peak_memory_blocks_do_not_nest():
    # the inner block's reset would hide the outer block's earlier peak
    with PeakMemory("cpu") as outer:
        with pytest.raises(RuntimeError, match="cannot nest"):
            with PeakMemory("cpu"):
                pass
    with PeakMemory("cpu") as after:  # a finished block frees the device for the next
        pass
    assert outer.peak > 0 and after.peak > 0


def test_a_peak_reset_that_does_not_take_falls_back_to_sampling(monkeypatch):
    """A kernel that accepts the reset and ignores it would count an earlier, larger peak."""
    from harness.api import timing

    earlier = timing.current_rss_bytes() + 2**30  # a 1 GiB peak from before the block
    monkeypatch.setattr(timing, "peak_rss_bytes", lambda: earlier)
    assert not timing._reset_peak_rss()
    with PeakMemory("cpu") as pm:
        block = torch.ones(16 * 2**20 // 4)  # 16 MiB
        block += 1
    assert pm.added < 2**29  # sampled: the block's own, not the earlier gigabyte
    del block


def test_rate_intervals_stay_in_0_1_and_others_are_left_as_computed():
    rows = _metric_rows("t", {"acc,none": 0.99, "acc_stderr,none": 0.05, "perplexity,none": 3.0,
                              "perplexity_stderr,none": 2.0}, 100, {})
    by_metric = {r["metric"]: r for r in rows}
    acc = stats.wilson(0.99, 100)  # a rate over a known count: Wilson, inside [0, 1]
    assert (by_metric["acc"]["ci_low"], by_metric["acc"]["ci_high"]) == (acc.ci_low, acc.ci_high)
    assert 0.9 < acc.ci_low < 0.99 < acc.ci_high < 1
    assert by_metric["perplexity"]["ci_low"] == pytest.approx(3.0 - Z95 * 2.0)  # not a rate: left as computed
    # RULER's per-length score is a rate too (a share of the expected answers found)
    (ruler,) = _metric_rows("ruler", {"4096,none": 0.95, "4096_stderr,none": 0.1}, 10, {4096: 10})
    assert ruler["eval_ctx"] == 4096 and 0 < ruler["ci_low"] < 0.95 < ruler["ci_high"] <= 1
    # lengths run together (metadata naming several): each rests on its own samples; -1 marks a
    # length without any (the mutation audit: every length given all the samples survived)
    lengths = _metric_rows("ruler", {"1024,none": 0.5, "2048,none": 1.0, "4096,none": -1}, 8, {1024: 3, 2048: 5})
    assert [(r["eval_ctx"], r["n"]) for r in lengths] == [(1024, 3), (2048, 5)]
    assert lengths[0]["ci_low"] == stats.wilson(0.5, 3).ci_low
    # every answer right: lm-eval's stderr is 0, and +- 1.96 x 0 read as a certain [1, 1]
    (perfect,) = _metric_rows("t", {"acc,none": 1.0, "acc_stderr,none": 0.0}, 4, {})
    assert perfect["ci_high"] == 1.0 and perfect["ci_low"] < 0.6
    # no count known: the normal interval, clipped
    (unknown,) = _metric_rows("t", {"acc,none": 0.99, "acc_stderr,none": 0.05}, None, {})
    assert unknown["ci_high"] == 1.0 and unknown["ci_low"] == pytest.approx(0.99 - Z95 * 0.05)


def test_undecodable_and_binary_corpus_files_are_counted(tmp_path):
    (tmp_path / "good.txt").write_text("plain text " * 20)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me ".encode("latin-1") * 10)
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02" * 100)
    with pytest.warns(CorpusWarning) as caught:
        docs = load_corpus(str(tmp_path))
    messages = " ".join(str(w.message) for w in caught)
    assert "skipped 1 binary file(s)" in messages and "'blob.bin'" in messages
    assert "1 of 2 document(s) hold 20 character(s) that were not valid UTF-8" in messages
    assert sorted(d.name for d in docs) == ["good.txt", "latin1.txt"]


def test_utf16_and_utf32_corpus_files_with_a_mark_are_read_as_text(tmp_path):
    """A .txt saved as UTF-16 ("Unicode" in Windows editors) has NUL bytes: a folder corpus skipped
    it as binary, and a corpus naming the file read it as UTF-8, NULs and U+FFFD."""
    text = "caf\xe9 \u2713 \U0001f600 line\n" * 5
    for name, encoding in [("le16.txt", "utf-16-le"), ("be16.txt", "utf-16-be"), ("le32.txt", "utf-32-le"),
                           ("be32.txt", "utf-32-be")]:
        (tmp_path / name).write_bytes("\ufeff".encode(encoding) + text.encode(encoding))
    (tmp_path / "nul.bin").write_bytes(codecs.BOM_UTF16_BE + b"\x01\x02\x00\x00" * 50)  # a mark, then NULs
    (tmp_path / "odd.bin").write_bytes(codecs.BOM_UTF32_LE + b"\x00\x00\x01\x02" * 50)  # no code point
    with pytest.warns(CorpusWarning, match="skipped 2 binary file") as caught:
        docs = load_corpus(str(tmp_path))
    assert len(caught) == 1 and "'nul.bin'" in str(caught[0].message)
    assert {d.name: d.text for d in docs} == {name: text for name in ["be16.txt", "be32.txt", "le16.txt", "le32.txt"]}
    assert load_corpus(str(tmp_path / "le16.txt")) == [Document("le16.txt", text)]
