"""A run's data as the claims read it: its table and sample records (:func:`load_run`), the
machines its timings ran on, the model judged for each architecture, and the samples of one
model and task (:class:`RunData`)."""
from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.api import stats
from harness.api.errors import ConfigError, unknown_message
from harness.api.results import RUN_JSON, SAMPLES_JSONL, read_jsonl, read_table

FIXED_STATE = ("swa", "mamba2", "gated_deltanet")


@dataclass
class RunData:
    table: pd.DataFrame
    samples: list[dict[str, Any]]
    picks: dict[str, str] = field(default_factory=dict)  # arch -> the model judged for it
    # the machines (run.json's device records) a model's latency cells ran on, from a sweep's cell
    # records; else every model's timings are taken to be run_device's (run.json: a single run's)
    machines: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    run_device: dict[str, Any] | None = None

    def models(self, arch: str) -> list[str]:
        """The models of architecture ``arch`` in the table, in table order."""
        return [str(m) for m in self.table.loc[self.table["arch"] == arch, "model"].drop_duplicates()]

    def model_of(self, arch: str) -> str | None:
        """The model judged for ``arch``: the one picked, else the first in the table."""
        return self.picks.get(arch) or next(iter(self.models(arch)), None)

    def pick(self, picks: dict[str, str]) -> None:
        """Judge these models (arch -> model name) where an architecture has several."""
        for arch, model in picks.items():
            names = self.models(arch)
            if not names:
                present = sorted(self.table["arch"].dropna().unique())
                raise ConfigError(unknown_message("architecture", arch, present, of="the run"))
            if model not in names:
                raise ConfigError(unknown_message(f"{arch} model", model, names, of="the run"))
        self.picks = dict(picks)

    def judged_note(self) -> str:
        """Which model stands for each architecture that has several ("" when none has)."""
        lines = []
        for arch in ("full_attention", "ttt_e2e", *FIXED_STATE):
            judged = self.model_of(arch)
            others = [m for m in self.models(arch) if m != judged]
            if others:
                lines.append(f"- {arch}: `{judged}` (also in the run: {', '.join(f'`{m}`' for m in others)}; "
                             f"pick one with `--model {arch}=NAME`)")
        return "Judged models:\n\n" + "\n".join(lines) + "\n\n" if lines else ""

    def windows(self, model: str) -> list[dict[str, Any]]:
        return [s for s in self.samples
                if s.get("model") == model and s.get("task") == "loss_scaling" and s.get("kind") == "window"]

    def timings(self, model: str, phase: str, batch_size: int) -> dict[int, list[list[float]]]:
        """Context -> each training seed's timed repeats of ``phase`` (prefill: seconds per call;
        decode: seconds per token), in seed order, from the latency task's timing records: the
        tables average the seeds' medians, and :func:`speedup` and :func:`per_token_growth` give
        that value's interval (:func:`stats.bootstrap_seeded_median_ratio`). A seed's weights do
        not enter the time (the same shapes, the same kernels), but each seed's repeats ran in a
        process of its own, under its own load; seeds timed on other machines show in
        :meth:`timing_machines` (every seed's cells), which leaves both latency claims undecided."""
        key = "seconds" if phase == "prefill" else "seconds_per_token"
        out: dict[int, dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))
        for s in self.samples:
            if (s.get("model") == model and s.get("task") == "latency" and s.get("kind") == "timing"
                    and s.get("phase") == phase and s.get("batch_size") == batch_size):
                out[int(s["eval_ctx"])][s.get("seed")] += [float(t) for t in s[key]]
        return {ctx: [by_seed[k] for k in sorted(by_seed, key=stats.seed_order)] for ctx, by_seed in out.items()}

    def latency_rows(self, model: str, phase: str) -> pd.DataFrame:
        """The table's ``{phase}_s`` rows of ``model`` (every status)."""
        t = self.table
        return t[(t["model"] == model) & (t["task"] == "latency") & (t["metric"] == f"{phase}_s")]

    def timing_machines(self, model: str) -> list[dict[str, Any]]:
        return self.machines.get(model) or ([self.run_device] if self.run_device else [])


def with_samples(run: RunData | None) -> RunData | None:
    """``run`` where it holds sample records, else None: the tables and figures give intervals
    only from samples, and a folder that kept none prints and draws as it did without them."""
    return run if run is not None and run.samples else None


def load_run(run_dir: str | os.PathLike, sample_files: list[Path] | None = None,
             cell_records: Iterable[dict[str, Any]] = (), required: bool = True) -> RunData:
    """A run folder's table and its sample records: ``sample_files`` (a sweep's current cells,
    from harness.runs.sweep.current_sample_files) or else every file (samples.jsonl, samples/).
    ``cell_records`` (a sweep's, harness.runs.store.ResultStore.finished) name the machine each
    latency cell ran on; without them, run.json's device stands for every timing. A folder without
    samples is refused unless not ``required`` (the tables, which print without them)."""
    run_dir = Path(run_dir)
    files = sample_files if sample_files is not None else (
        sorted((run_dir / "samples").glob("*.jsonl")) + [p for p in [run_dir / SAMPLES_JSONL] if p.exists()])
    samples = [record for path in files for record in read_jsonl(path)]
    table = read_table(run_dir)
    if not samples and required:  # e.g. a table committed without them: every verdict would be undecided, wrongly reasoned
        raise ConfigError(f"{str(run_dir)!r} holds no samples (samples/*.jsonl or {SAMPLES_JSONL}), and every claim "
                          "pairs scores by window, document or test sequence; judge the folder the run wrote")
    current = None if sample_files is None else {p.stem for p in files}  # a sweep's sample files are named by cell key
    machines: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in cell_records:
        machine = record.get("machine")
        if (record.get("task") == "latency" and machine and (current is None or record.get("key") in current)
                and machine not in machines[record["model"]]):
            machines[record["model"]].append(machine)
    try:
        run_device = json.loads((run_dir / RUN_JSON).read_text(encoding="utf-8")).get("device")
    except (OSError, ValueError, AttributeError):  # no run.json (a bare table), or not an object
        run_device = None
    return RunData(table, samples, machines=dict(machines), run_device=run_device)
