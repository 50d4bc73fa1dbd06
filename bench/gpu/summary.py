"""``summary.md``: one page on a kit run, from its work folder: the device, every step's outcome
and time, the GPU tests, the latency tables (times, speed-ups over full attention, memory, state)
and the paper's latency claims judged on them, training throughput and MFU, TTT-E2E's speed, and
everything that failed, was skipped or timed out."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bench.gpu import environment, flops, latency, ttt_speed_step
from bench.gpu.config import LEDGER_FILE, ROOT, KitConfig
from bench.gpu.ledger import STEP_ITEM, read
from bench.gpu.throughput import PEAK_FILE
from harness.api import results
from harness.api.errors import ConfigError
from harness.runs.store import ResultStore
from harness.runs.sweep import current_sample_files, load_spec
from harness.report import claims
from harness.report.tables import ARCH_ORDER, render_markdown, summary_tables

LATENCY_TABLES = ("prefill_ms", "prefill_speedup", "decode_ms", "decode_speedup", "prefill_peak_mib",
                  "decode_peak_mib", "state_mib")
GIB = 2**30


def _text_table(df: pd.DataFrame) -> str:
    return render_markdown(df.astype(str), title=False)


def title(work: Path, cfg: KitConfig, elapsed_s: float) -> str:
    path = work / environment.FACTS_FILE
    facts = json.loads(path.read_text()) if path.is_file() else {}
    kind = "DRY RUN on CPU (tiny models, fp32, torch reference kernels): checks the code path, measures nothing" \
        if cfg.dry_run else f"{cfg.dtype}, device {cfg.device}"
    return (f"# lcbench GPU kit: {facts.get('device', 'device unknown (environment step did not run)')}\n\n"
            f"{kind}. Commit {facts.get('git', 'unknown')}, torch {facts.get('torch', '?')} (CUDA "
            f"{facts.get('cuda', '?')}). Budget {cfg.budget_s:.0f} s, took {elapsed_s:.0f} s.")


def steps_section(steps: pd.DataFrame, cfg: KitConfig) -> str:
    rows = []
    for step in cfg.steps:
        mine = steps[steps["step"] == step]
        whole = mine[mine["item"] == STEP_ITEM]
        items = mine[mine["item"] != STEP_ITEM]["status"].value_counts()
        status = whole["status"].iloc[0] if len(whole) else "not reached"
        rows.append({"step": step, "status": "running" if status == "planned" else status,
                     "seconds": f"{whole['seconds'].iloc[0]:.1f}" if len(whole) else "",
                     "items": ", ".join(f"{n} {s}" for s, n in items.items()),
                     "note": whole["message"].iloc[0] if len(whole) else ""})
    return "## Steps\n\n" + _text_table(pd.DataFrame(rows).set_index("step"))


def tests_section(steps: pd.DataFrame) -> str | None:
    tests = steps[(steps["step"] == "gpu_tests") & (steps["item"] != STEP_ITEM)]
    if tests.empty:
        return None
    counts = tests["status"].value_counts()
    lines = [(f"## GPU tests (`pytest -m gpu`)\n\n{counts.get('ok', 0)} passed, {counts.get('failed', 0)} failed, "
             f"{counts.get('skipped', 0)} skipped, {counts.get('timeout', 0)} not finished, of {len(tests)} selected.")]
    for row in tests[tests["status"].isin(["failed", "timeout"])].itertuples():
        lines.append(f"- {row.status.upper()} `{row.item}`: {row.message}")
    skipped = tests[tests["status"] == "skipped"]["message"].value_counts()
    lines += [f"- skipped ({n}): {reason}" for reason, n in skipped.items()]
    measured = tests[(tests["status"] == "ok") & (tests["message"] != "")]
    if len(measured):
        lines += ["", "Measured by the passing tests (beside their tolerances):", ""]
        lines += [f"- `{row.item}`: {row.message}" for row in measured.itertuples()]
    return "\n".join(lines)


def latency_heading(cfg: KitConfig, size: str) -> str:
    options = latency.task_options(load_spec(ROOT / cfg.latency_spec), cfg)
    return (f"Latency, {cfg.run_preset or size} models ({cfg.dtype}, batch {options.get('batch_size', 1)}; "
            f"{options.get('warmup', '?')} warm-up and {options.get('repeats', '?')} timed calls, "
            f"{options.get('decode_tokens', '?')} decode steps per call)")


def latency_section(folder: Path, heading: str) -> str | None:
    if not (folder / results.TABLE_PARQUET).is_file():
        return None
    table = results.read_table(folder)
    tables = summary_tables(table) if len(table) else {}
    shown = [render_markdown(tables[name]) for name in LATENCY_TABLES if name in tables]
    if shown:
        try:
            judged = latency_claims(folder, table)
        except Exception as exc:  # noqa: BLE001 - one GPU slot: the tables above must still come back
            judged = f"The latency claims could not be judged: {type(exc).__name__}: {exc}"
        shown += [judged] if judged else []
    return f"## {heading}\n\n" + "\n\n".join(shown) if shown else None


def latency_claims(folder: Path, table: pd.DataFrame) -> str | None:
    """The paper's latency claims (``speed``, ``constant_latency``: :mod:`harness.report.claims`)
    judged on the step's table and the timings of its cells (each a one-cell sweep folder)."""
    runs = []
    for cell in sorted(p for p in (folder / "cells").glob("*") if (p / results.TABLE_PARQUET).is_file()):
        try:
            runs.append(claims.load_run(cell, current_sample_files(cell), ResultStore(cell).finished().values()))
        except ConfigError:  # no samples: a cell that failed before any timing (its rows still count)
            continue
    if not runs:
        return None
    machines: dict[str, list[dict]] = {}
    for run in runs:
        for model, found in run.machines.items():
            machines.setdefault(model, []).extend(m for m in found if m not in machines.get(model, []))
    run = claims.RunData(table, [s for r in runs for s in r.samples], machines=machines, run_device=runs[0].run_device)
    judged = claims.render_markdown([claims.speed_claim(run), claims.constant_latency_claim(run)])
    return "The paper's latency claims, judged on these timings (as `lcbench claims` does):\n\n" + judged


def throughput_section(work: Path) -> str | None:
    folder = work / "throughput"
    if not (folder / results.TABLE_PARQUET).is_file():
        return None
    table = results.read_table(folder)
    if table.empty:
        return None
    peak = json.loads((folder / PEAK_FILE).read_text()) if (folder / PEAK_FILE).is_file() else {}
    rows = []
    for arch in sorted(table["arch"].unique(), key=lambda a: (ARCH_ORDER + (a,)).index(a)):
        mine = table[table["arch"] == arch]
        value = {m: v for m, v, s in zip(mine["metric"], mine["value"], mine["status"]) if s == "ok"}
        if "train_tok_s" not in value:
            rows.append({"arch": arch, "tokens/s": mine["status"].iloc[0].upper(), "note": mine["message"].iloc[0]})
            continue
        rows.append({"arch": arch, "tokens/s": f"{value['train_tok_s']:,.0f}",
                     "step ms": f"{value['train_step_s'] * 1e3:.1f}",
                     "model TFLOP/s": f"{value['train_tok_s'] * value['train_flops_per_token'] / 1e12:.1f}",
                     "MFU": f"{value['train_mfu']:.1%}" if "train_mfu" in value else "n/a",
                     "peak GiB": f"{value['train_peak_bytes'] / GIB:.2f}"})
    first = table.iloc[0]
    head = (f"## Training throughput ({first['model'].split(':')[-1]}, {first['batch_size']} x {first['train_ctx']} "
            f"tokens per step, {first['variant']})\n\n")
    note = (f"\n\nFLOPs per token = 6 N + 12 L_attn d k̄ ({flops.__name__}: N = non-embedding parameters + "
            "the LM head's V x d; k̄ = mean keys a query sees); recurrent state updates and TTT-E2E's inner-loop "
            f"gradients are not counted. MFU divides by {peak.get('peak_flops', 0) / 1e12:g} TFLOP/s dense bf16 "
            f"({peak.get('device', '?')})." if peak.get("peak_flops") else
            f"\n\nNo MFU: no known peak for device {peak.get('device', '?')} (set --peak-tflops).")
    return head + _text_table(pd.DataFrame(rows).set_index("arch").fillna("")) + note


def ttt_section(work: Path, steps: pd.DataFrame, dry_run: bool) -> str | None:
    """TTT-E2E's speed as bench.gpu.ttt_speed lays it out (grids of variants by context, the issue's
    goals), made from its table: the step writes that after every cell, its own summary only at
    the end. Its headings one level down, under the kit's."""
    path = work / "ttt_speed" / ttt_speed_step.TABLE
    if path.is_file():
        from bench.gpu import ttt_speed  # there, since its table is (the step runs it only where present)

        text = ttt_speed.summary(pd.read_csv(path), dry_run)
        return "\n".join(f"#{line}" if line.startswith("#") else line for line in text.splitlines())
    mine = steps[(steps["step"] == "ttt_speed") & (steps["item"] == ttt_speed_step.MODULE)]
    return f"## TTT-E2E speed\n\n{mine['status'].iloc[0]}: {mine['message'].iloc[0]}" if len(mine) else None


def not_done_section(steps: pd.DataFrame) -> str | None:
    each_test = (steps["step"] == "gpu_tests") & (steps["item"] != STEP_ITEM)  # listed in the GPU tests section
    bad = steps[steps["status"].isin(["failed", "skipped", "timeout"]) & ~each_test]
    if bad.empty:
        return None
    lines = [f"- {r.step} / {r.item}: {r.status.upper()} {r.message}" for r in bad.itertuples()]
    return "## Failed, skipped or cut off\n\n" + "\n".join(lines)


def render(work: Path, cfg: KitConfig, elapsed_s: float, final: bool = True) -> str:
    """The summary; ``final=False``: an interim one (steps and tests only, quick to make), written
    between steps so that a run cut short still has one."""
    steps = read(work / LEDGER_FILE)
    parts = [title(work, cfg, elapsed_s), steps_section(steps, cfg), tests_section(steps)]
    if final:
        parts += [latency_section(work / "latency", latency_heading(cfg, cfg.size)),
                  latency_section(work / "latency_large", latency_heading(cfg, cfg.large_size)),
                  throughput_section(work), ttt_section(work, steps, cfg.dry_run)]
    else:
        parts.append("*Interim summary: the run had not finished. The tables so far are in latency.csv, "
                     "throughput.csv and ttt_speed.csv.*")
    parts.append(not_done_section(steps))
    return "\n\n".join(p for p in parts if p) + "\n"
