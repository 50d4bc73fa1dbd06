"""The CI score gate, in two layers that each compare only what is reproducible across machines.

- ``eval``: small checkpoints of every architecture, committed under
  ``results/reference/gate/checkpoints``, evaluated by four tasks (not yet repeat or mqar) on the
  pinned corpus. Fixed weights move a score only by float rounding, so tolerances are tight and
  two-sided: any change to a model's math, a task's scoring, the data pipeline or the tokenizer
  shows.
- ``train``: the same architectures trained from scratch with several seeds. Training amplifies
  rounding (a different CPU acts much like a different seed), so only seed-aggregated scores are
  checked, each within a multiple of its seed-to-seed spread (:func:`harness.check.compare_aggregates`).

Both read the pinned corpus shipped in ``results/reference/gate/corpus`` (a fixed selection of
CPython 3.11.7 library source), not the running interpreter's standard library, so the gate
judges the same text on every Python version. The references record a fingerprint of that text
and the tokenizer; a gate that reads other data says so instead of reporting regressions.
"""
from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.api import results
from harness.api.errors import ConfigError, unknown_message
from harness.api.machine import CPU_CAPABILITY
from harness.api.timing import torch_threads
from harness.data import hash_files, load_tokenizer
from harness.runs import check
from harness.runs.pool import ModelPool, PendingSweep
from harness.runs.provenance import device_info, git_commit, package_versions
from harness.runs.sweep import SPEC_FILE, SeededModel, SweepSpec, load_spec, run_sweep
from harness.train import checkpoint

REPO = Path(__file__).resolve().parents[2]
GATE_DIR = REPO / "results" / "reference" / "gate"
CORPUS = GATE_DIR / "corpus"
CHECKPOINTS = GATE_DIR / "checkpoints"
EVAL_REFERENCE = GATE_DIR / "eval.csv"
TRAIN_REFERENCE = GATE_DIR / "train.csv"
PROVENANCE = GATE_DIR / "gate.json"
SPECS = {"eval": REPO / "results" / "specs" / "gate_eval.yaml", "train": REPO / "results" / "specs" / "gate_train.yaml"}
LAYERS = tuple(SPECS)
REFERENCE_SEED = 0  # the training seed whose checkpoints become the eval gate's fixed weights

# Eval-gate tolerances (absolute, per metric): the largest difference measured between
# floating-point paths on fixed weights (threads 1/2, ATen's default/AVX2/AVX-512 kernels,
# oneDNN off), times a safety factor, and still far below the smallest injected regression (see
# results/reference/gate/README.md for the numbers).
EVAL_TOLERANCES: dict[str, float] = {
    "loss": 1e-4,
    "value_logprob": 1e-3,
    "gen_match": 0.0,
    "cand_acc": 0.0,
    "state_bytes": 0.0,
    "loss_before": 1e-4,
    "loss_after": 1e-4,
    "gain": 1e-4,
    "gain_over_random": 1e-4,
    "loss_no_inner": 1e-4,
}
# Exit codes of `lcbench gate`: passed, a score failed, the references cannot judge this data.
EXIT_PASSED, EXIT_FAILED, EXIT_UNJUDGED = 0, 1, 3


@dataclass
class LayerResult:
    layer: str
    result: check.CheckResult | None  # None: not judged (see `unjudged`)
    unjudged: str = ""
    # the run's rows that are not ok: references come from clean runs only, so any failure fails
    # the gate, also one no reference score covers (a broken decode step leaves state_bytes intact)
    failures: pd.DataFrame | None = None
    references_machine: dict[str, Any] = field(default_factory=dict)  # gate.json's: where the references were made

    @property
    def passed(self) -> bool:
        return self.result is not None and self.result.passed and (self.failures is None or self.failures.empty)


def _anchor(path: str | None) -> str | None:
    """Relative paths in the gate's specs are read from the repository root, wherever it runs."""
    return None if path is None or Path(path).is_absolute() else str(REPO / path)


def gate_spec(layer: str, models: list[str] | None = None, tasks: list[str] | None = None) -> SweepSpec:
    """The committed spec of one layer, its paths anchored, optionally only some models and tasks."""
    if layer not in SPECS:
        raise ConfigError(unknown_message("gate layer", layer, LAYERS))
    spec = load_spec(SPECS[layer])
    if "corpus" in spec.train:
        spec.train = {**spec.train, "corpus": _anchor(spec.train["corpus"])}
    for entry in spec.models:
        entry.checkpoint = _anchor(entry.checkpoint)
    for task in spec.tasks:
        if "corpus" in task.options:
            task.options = {**task.options, "corpus": _anchor(task.options["corpus"])}
    spec.models = _select(spec.models, models, lambda m: m.label, f"model of the {layer} gate")
    spec.tasks = _select(spec.tasks, tasks, lambda t: t.task, f"task of the {layer} gate")
    return spec


def gate_specs(layers: tuple[str, ...], models: list[str] | None = None,
               tasks: list[str] | None = None) -> dict[str, SweepSpec]:
    """The specs of ``layers``, each narrowed to the named models and tasks it holds; a layer that
    holds none of them is left out (``--task latency``: the eval layer alone), and a name that no
    layer holds is an error."""
    full = {layer: gate_spec(layer) for layer in layers}
    held = {layer: ([m.label for m in spec.models], [t.task for t in spec.tasks]) for layer, spec in full.items()}
    for i, (kind, names) in enumerate((("model", models), ("task", tasks))):
        known = {name for both in held.values() for name in both[i]}
        for name in names or ():
            if name not in known:
                raise ConfigError(unknown_message(kind, name, known, of="the gate"))
    picked = {}
    for layer, (labels, task_names) in held.items():
        own_models = [n for n in models or () if n in labels]
        own_tasks = [n for n in tasks or () if n in task_names]
        if (models and not own_models) or (tasks and not own_tasks):
            continue
        picked[layer] = gate_spec(layer, own_models or None, own_tasks or None)
    return picked


def _select(items: list, names: list[str] | None, name_of, what: str) -> list:
    if not names:
        return items
    known = [name_of(item) for item in items]
    for name in names:
        if name not in known:
            raise ConfigError(unknown_message(what, name, known))
    return [item for item in items if name_of(item) in names]


def data_fingerprint(corpus: Path | None = None, tokenizer: str | None = None) -> str:
    """A hash of the corpus files (names and bytes) and the tokenizer the gate reads."""
    corpus = CORPUS if corpus is None else corpus
    if not corpus.is_dir():
        raise ConfigError(f"the gate's pinned corpus is missing at {corpus}; run the gate from a checkout of lcbench")
    digest = hashlib.sha256(load_tokenizer(tokenizer).name.encode())
    hash_files(corpus, digest)
    return digest.hexdigest()[:16]


def read_provenance() -> dict:
    if not PROVENANCE.is_file():
        raise ConfigError(f"no gate references at {PROVENANCE}; make them with `lcbench gate --update`")
    return json.loads(PROVENANCE.read_text())


def _filtered(reference: pd.DataFrame, spec: SweepSpec) -> pd.DataFrame:
    """The reference scores of the spec's models and tasks."""
    keep = reference["model"].isin([m.label for m in spec.models]) & reference["task"].isin([t.task for t in spec.tasks])
    return reference[keep].reset_index(drop=True)


def run_layer(layer: str, out_dir: str | Path, models: list[str] | None = None, tasks: list[str] | None = None,
              progress: bool = True) -> LayerResult:
    """Run one layer's sweep (optionally only some models and tasks) into ``out_dir``, in this
    process, and compare it with the matching part of its committed reference."""
    with ModelPool() as inline:
        return _judge(_start_layer(layer, Path(out_dir), gate_spec(layer, models, tasks), inline, _data_check()),
                      progress)


def _data_check() -> tuple[dict, str]:
    """gate.json, read once for a gate run, and the fingerprint of the data this checkout reads."""
    return read_provenance(), data_fingerprint()


_Started = tuple[str, SweepSpec, PendingSweep, dict]  # layer, spec, its sweep, the references' machine


def _start_layer(layer: str, out_dir: Path, spec: SweepSpec, pool: ModelPool,
                 data: tuple[dict, str]) -> LayerResult | _Started:
    """The layer's sweep handed to ``pool``, or, when its references cannot judge this data, the
    unjudged result. ``data``: :func:`_data_check`'s."""
    provenance, reading = data
    made_on = provenance.get("data_fingerprint")
    if made_on != reading:
        return LayerResult(layer, None, f"cannot judge the {layer} gate: its references were made on data {made_on}, "
                                        f"this checkout reads {reading}; remake them with `lcbench gate --update`")
    return layer, spec, pool.submit(spec, _fresh(out_dir, spec.name)), provenance.get("machine") or {}


def _judge(started: LayerResult | _Started, progress: bool) -> LayerResult:
    if isinstance(started, LayerResult):
        return started
    layer, spec, sweep, machine = started
    run = sweep.result(progress).table
    failures = run[run["status"] != "ok"]
    if layer == "eval":
        reference = _filtered(check.read_reference(EVAL_REFERENCE), spec)
        return LayerResult(layer, check.compare(run, reference, use_ci=False, two_sided=True, complete=True),
                           failures=failures, references_machine=machine)
    reference = _filtered(check.read_aggregate_reference(TRAIN_REFERENCE), spec)
    return LayerResult(layer, check.compare_aggregates(run, reference), failures=failures, references_machine=machine)


def _fresh(out_dir: Path, name: str) -> Path:
    """A gate never reuses cells: a sweep's cell keys cover the spec and the checkpoints, not the
    code under test, so a folder left by an earlier gate run of the same spec is cleared first.
    Any other non-empty folder is refused rather than deleted."""
    if out_dir.exists() and any(out_dir.iterdir()):
        spec_file = out_dir / SPEC_FILE
        written_by_gate = spec_file.is_file() and json.loads(spec_file.read_text()).get("name") == name
        if not written_by_gate:
            raise ConfigError(f"{str(out_dir)!r} holds files the {name} gate did not write; choose another --out")
        shutil.rmtree(out_dir)
    return out_dir


def run_gate(out_dir: str | Path = "runs/gate", layers: tuple[str, ...] = LAYERS, models: list[str] | None = None,
             tasks: list[str] | None = None, progress: bool = True, threads: int = 1,
             workers: int = 1) -> list[LayerResult]:
    """Both layers (or some), with ``threads`` torch threads: tiny models gain nothing from more,
    and on a busy 2-core machine two spinning threads run training 30x slower than one. With
    ``workers`` > 1, that many models run at once in worker processes (each with ``threads``),
    the layers' models side by side, the training layer's (the longest) first: every cell is
    independent, so the scores are those of one process."""
    with torch_threads(threads), ModelPool(workers) as pool:
        specs = gate_specs(tuple(dict.fromkeys(layers)), models, tasks)
        data = _data_check()
        started = [_start_layer(layer, Path(out_dir) / layer, specs[layer], pool, data)
                   for layer in sorted(specs, key=lambda name: name != "train")]
        judged = {result.layer: result for result in (_judge(s, progress) for s in started)}
    return [judged[layer] for layer in dict.fromkeys(layers) if layer in judged]


def exit_code(layer_results: list[LayerResult]) -> int:
    if any(r.result is not None and not r.passed for r in layer_results):
        return EXIT_FAILED
    return EXIT_UNJUDGED if any(r.result is None for r in layer_results) else EXIT_PASSED


def format_gate(layer_results: list[LayerResult], show_all: bool = False) -> str:
    parts = []
    for r in layer_results:
        parts.append(f"== {r.layer} gate ==\n" + (r.unjudged if r.result is None else check.format_report(r.result, show_all)))
        if r.result is not None and r.failures is not None and len(r.failures):
            parts.append(_format_failures(r.failures))
    moved = [r for r in layer_results if r.result is not None and "within" in set(r.result.table.get("verdict", ()))]
    if moved:
        parts.append(_kernels_note(moved[0].references_machine, device_info("cpu")))
    return "\n".join(parts)


def _kernels_note(made: dict, here: dict) -> str:
    """The CPUs and ATen CPU capabilities (AVX2, AVX512: other rounding) of the references' machine
    (gate.json; references made before it named the capability say so) and of this one."""
    def machine(m: dict) -> str:
        kernels = f"ATen {m[CPU_CAPABILITY]}" if m.get(CPU_CAPABILITY) else "ATen CPU capability not recorded"
        return f"{m.get('cpu') or 'an unrecorded CPU'}, {kernels}"
    return (f"Scores 'within' moved inside their allowance (float rounding differs between CPU kernels): the "
            f"references were made on {machine(made)}; this run on {machine(here)}.")


def _format_failures(failures: pd.DataFrame) -> str:
    first = failures.iloc[0]
    return (f"FAIL: {len(failures)} row(s) of the run are not ok, e.g. {first['model']} / {first['task']} / "
            f"{first['metric']} ({first['status']}): {first['message']}")


def update_gate(out_dir: str | Path = "runs/gate-update", progress: bool = True, threads: int = 1) -> dict:
    """Remake every reference from the committed code: train the training gate's models, keep seed
    0's checkpoints as the eval gate's fixed weights, evaluate them, and record how."""
    with torch_threads(threads):
        return _update(Path(out_dir), progress)


def _update(out_dir: Path, progress: bool) -> dict:
    git = git_commit(REPO)  # before the work: the references it writes into the checkout make it dirty
    train_spec = gate_spec("train")
    trained = run_sweep(train_spec, _fresh(out_dir / "train", train_spec.name), progress=progress)
    check.require_clean_run(trained.table, "the train gate's run")
    _keep_reference_checkpoints(train_spec, out_dir / "train")
    eval_spec = gate_spec("eval")
    evaluated = run_sweep(eval_spec, _fresh(out_dir / "eval", eval_spec.name), progress=progress)
    return write_references(trained.table, evaluated.table, git)


def write_references(trained: pd.DataFrame, evaluated: pd.DataFrame, git: dict) -> dict:
    """``eval.csv``, ``train.csv`` and ``gate.json`` from the two layers' tables of one update,
    made by the code of ``git`` (read when the update started)."""
    for table, layer in ((trained, "train"), (evaluated, "eval")):
        check.require_clean_run(table, f"the {layer} gate's run")
    eval_reference = check.reference_from_run(evaluated)
    eval_reference[check.TOLERANCE] = [EVAL_TOLERANCES[m] for m in eval_reference["metric"]]
    results.atomic_write(EVAL_REFERENCE, lambda f: eval_reference.to_csv(f, index=False))
    train_reference = check.aggregate_reference(trained)
    results.atomic_write(TRAIN_REFERENCE, lambda f: train_reference.to_csv(f, index=False))
    provenance = {
        "made_by": "lcbench gate --update",
        "date": time.strftime("%Y-%m-%d"),
        "git": git,
        "machine": {"python": platform.python_version(), **device_info("cpu")},
        "packages": package_versions(),
        "data_fingerprint": data_fingerprint(),
        "seeds": sorted(int(s) for s in trained["seed"].dropna().unique()),
        "band_sigmas": check.BAND_SIGMAS,
        "eval_tolerances": EVAL_TOLERANCES,
        "scores": {"eval": len(eval_reference), "train": len(train_reference)},
    }
    results.atomic_write(PROVENANCE, lambda f: f.write(json.dumps(provenance, indent=2) + "\n"))
    return provenance


def _keep_reference_checkpoints(train_spec: SweepSpec, train_dir: Path) -> None:
    """Seed 0's trained models, weights and config only, become the eval gate's checkpoints."""
    for entry in train_spec.models:
        source = SeededModel(train_spec, entry, REFERENCE_SEED).checkpoint_dir(train_dir)
        target = CHECKPOINTS / entry.label
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for name in (checkpoint.CONFIG_FILE, checkpoint.WEIGHTS_FILE):
            shutil.copy2(source / name, target / name)
