"""Evaluate one model on one registered task and write the run folder.

``run_eval("loss_scaling", "runs/quick/swa", "runs/eval/swa-loss", {"contexts": "1K,2K"})``:

1. resolves the model spec: a checkpoint folder (``config.json`` + ``model.safetensors``), or an
   architecture name with an optional preset (``swa``, ``swa:125m``; untrained weights, fine for
   latency);
2. parses the task's options (unknown names and bad values fail with the valid choices);
3. runs the task under ``torch.no_grad()``, fills the columns that identify model and run, and
   validates the rows against the schema (:mod:`harness.api.results`);
4. writes ``results.parquet``, ``results.csv``, ``samples.jsonl`` and ``run.json`` atomically.

It imports no task and no architecture: both are found through the registry.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from harness.api import registry, results
from harness.api.device import dtype_name, resolve_device, resolve_dtype
from harness.api.contract import check_outputs
from harness.api.errors import ConfigError, LcbenchError, close_match
from harness.api.interface import LCModel, ModelConfig
from harness.api.failures import failure_rows, require_finite_weights
from harness.api.kernels import refusals
from harness.api.options import convert_options, describe_options, parse_options
from harness.api.task import DataOptions, ModelInfo, RunContext, Task, check_function_options, function_task
from harness.api.staging import made_for_results
from harness.data.heldout import heldout_documents, model_tokenizer
from harness.runs.provenance import git_commit, run_metadata, write_run_json
from harness.train import checkpoint
from harness.train.trainer import TRAINED_DATA_KEYS, TRAINED_ON_ATTR


NONFINITE_METRIC = "task_failed"  # the metric of the status row a non-finite model or output gives


@dataclass
class EvalResult:
    table: pd.DataFrame
    samples: list[dict[str, Any]]
    out_dir: Path | None
    meta: dict[str, Any]


def _looks_like_path(spec: str) -> bool:
    return os.sep in spec or "/" in spec or spec.startswith(".") or Path(spec).exists()


def resolve_model(
    spec: str | os.PathLike | LCModel,
    preset: str | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    backend: str | None = None,
    name: str | None = None,
) -> tuple[LCModel, ModelInfo]:
    """(model in eval mode on device/dtype, its identifying info) for a model spec.

    ``spec``: a checkpoint folder; an architecture name, optionally ``arch:preset`` (``preset``
    defaults to ``tiny``); or an already built model. ``backend`` overrides the config's mixer
    backend (the model is rebuilt from its config with the same weights)."""
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    train_config, trained_data, path, source = None, {}, None, "preset"
    if preset is not None and (isinstance(spec, LCModel) or checkpoint.is_checkpoint(str(spec))):
        what = "a checkpoint folder" if not isinstance(spec, LCModel) else "a built model"
        raise ConfigError(f"preset {preset!r} cannot apply to {what}: it has its own config; give a preset only "
                          "with an architecture name")
    if isinstance(spec, LCModel):
        model = spec
        label = name or f"{model.config.arch}:custom"
        source = "object"
        trained = dict(getattr(model, TRAINED_ON_ATTR, None) or {})  # one train() returned: what it trained on
        train_config, trained_data = trained.pop("train_config", None), trained
    else:
        spec = str(spec)
        arch, _, spec_preset = spec.partition(":")
        if checkpoint.is_checkpoint(spec) or (_looks_like_path(spec) and arch not in registry.model_names()):
            model = checkpoint.load_model(spec)  # raises a clear CheckpointError for a bad folder
            path, source = str(Path(spec).resolve()), "checkpoint"
            label = name or Path(spec).resolve().name
            try:
                state, _ = checkpoint.load_trainer_state(spec)
                train_config = state.get("train_config")
                trained_data = {k: state[k] for k in TRAINED_DATA_KEYS if k in state}
            except Exception:  # noqa: BLE001 - a weights-only checkpoint has no training state
                train_config = None
        else:
            if arch not in registry.model_names():
                choices = registry.model_names()
                msg = (f"model {spec!r} is neither a checkpoint folder nor a registered architecture; "
                       f"valid architectures: {', '.join(choices)}")
                hint = close_match(arch, choices)
                note = registry.broken_plugin(registry.MODEL_GROUP, arch)
                raise ConfigError(msg + (f". Did you mean {hint!r}?" if hint else "") + (f"; {note}" if note else ""))
            if spec.endswith(":") and not spec_preset:
                raise ConfigError(f"model {spec!r} names no preset after ':'; valid presets of {arch}: "
                                  f"{', '.join(registry.preset_names(arch))}")
            if spec_preset and preset is not None and spec_preset != preset:
                raise ConfigError(f"model {spec!r} names preset {spec_preset!r} and preset {preset!r} is given too; "
                                  "give one")
            preset = spec_preset or preset or "tiny"
            torch.manual_seed(0)  # untrained weights: the same on every run
            model = registry.create_model(arch, preset)
            label = name or f"{arch}:{preset}"
    if backend is not None and backend != model.config.backend:
        state = model.state_dict()
        model = type(model)(model.config.replace(backend=backend))
        model.load_state_dict(state)
    model = model.to(device=device, dtype=dtype).eval()
    train_ctx = (train_config or {}).get("seq_len")
    info = ModelInfo(name=label, arch=model.config.arch, params=int(model.num_params(non_embedding=True)),
                     train_ctx=int(train_ctx) if train_ctx else None, train_config=train_config,
                     trained_data=trained_data,
                     source=source, path=path)
    return model, info


def task_options(task_name: str) -> list[dict[str, Any]]:
    """The options of a registered task (name, type, default, help)."""
    task = registry.get_task(task_name)
    options_class = getattr(task, "Options", None)
    return describe_options(options_class) if options_class is not None else []


def identity_columns(info: ModelInfo, task: str, run: str, model: LCModel, device: torch.device,
                     dtype: torch.dtype, seed: int) -> dict[str, Any]:
    """The columns that identify the model and the run in every row of a table."""
    return {"run": run, "model": info.name, "arch": info.arch, "params": info.params, "train_ctx": info.train_ctx,
            "task": task, "backend": model.backend_on(device), "device": device.type, "dtype": dtype_name(dtype),
            "seed": seed}


NO_ROWS_METRIC = "no_rows"


def check_task_options(task_name: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Raise :class:`ConfigError` if ``options`` are not valid for the task (before any work).
    Returns the options given, each as the task reads it (``"1K"`` as 1024, ``2`` of a float
    option as 2.0): one spelling per setting, what a sweep cell's key hashes."""
    task = registry.get_task(task_name)
    if isinstance(task, type) and issubclass(task, Task):
        parse_options(task.Options, options, task_name)
        return convert_options(options or {}, typing.get_type_hints(task.Options), task_name)
    if callable(task):
        return check_function_options(task, options, task_name)
    return dict(options or {})


def context_problems(task_name: str, options: Mapping[str, Any] | None, tokenizer: Callable[[DataOptions], Any],
                     seeds: Sequence[int]) -> list[str]:
    """What the task's ``check_context`` finds bound to fail in ``options`` run with ``seeds``, one
    line each (a function task checks nothing); ``tokenizer(parsed options)`` gives the tokenizer
    the run reads text with, asked only of a task that checks and reads text."""
    task = registry.get_task(task_name)
    if not (isinstance(task, type) and issubclass(task, Task)) or task.check_context is Task.check_context:
        return []
    parsed = parse_options(task.Options, options, task_name)
    return task().check_context(parsed, tokenizer(parsed) if isinstance(parsed, DataOptions) else None, seeds)


def kernel_problems(arch: type[LCModel], config: ModelConfig, devices: Iterable[torch.device],
                    imports: bool = True) -> list[str]:
    """One line per setting of ``config`` (of architecture class ``arch``) that names a kernel
    backend unable to run on one of ``devices`` (:func:`harness.api.kernels.refusals`; ``imports``
    as it takes it)."""
    lines = (line for device in devices for line in refusals(arch.kernel_choices(config), arch.kernels, device, imports))
    return list(dict.fromkeys(lines))


def refuse(problems: Sequence[str], what: str) -> None:
    """Raise :class:`ConfigError` saying ``problems`` (one a line) unless there are none: ``what``
    would fail for them, after its work."""
    if len(problems) == 1:
        raise ConfigError(f"{what} would fail, so nothing ran: {problems[0]}")
    if problems:
        raise ConfigError(f"{what} would fail, so nothing ran:\n" + "\n".join(f"  {line}" for line in problems))


def needs_contract_check(model: LCModel) -> bool:
    """Whether the runner checks the model's outputs before a task: for a registered plugin
    architecture, built by the harness or in Python. The built-ins are proven by
    tests/test_invariants.py (and on a GPU a check's new shape could cost them a compile); a class
    nobody registered (a test's partial double) is its author's to check with
    ``harness.api.contract.check_model``."""
    try:
        registered = registry.get_model_class(getattr(model.config, "arch", ""))
    except LcbenchError:
        return False
    return registered is type(model) and type(model).__module__.partition(".")[0] != "baselines"


def check_rows_returned(rows: Any, task_name: str) -> None:
    """A task returns a list of rows (mappings, e.g. ``make_row``'s), or nothing: anything else is
    named here rather than failing on the runner's first look inside a row."""
    if rows is None:
        return
    if not isinstance(rows, (list, tuple)):
        raise results.SchemaError(f"task {task_name!r} must return a list of rows (harness.api.results.make_row), "
                                  f"got a {type(rows).__name__}: {str(rows)[:80]!r}")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise results.SchemaError(f"task {task_name!r} must return a list of rows (harness.api.results.make_row), "
                                      f"got a list whose item {i} is a {type(row).__name__}: {str(row)[:80]!r}")


def run_task(task_name: str, model: LCModel, info: ModelInfo, options: Mapping[str, Any] | None = None, *,
             device: torch.device, dtype: torch.dtype, seed: int = 0, run: str = "run",
             progress: bool = True) -> tuple[pd.DataFrame, list[dict[str, Any]], Any]:
    """Run a registered task on a resolved model: (validated table, samples, parsed options)."""
    task = registry.get_task(task_name)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    ctx = RunContext(model_info=info, device=device, dtype=dtype, seed=seed, progress=progress,
                     heldout_source=heldout_documents)
    torch.manual_seed(seed)
    is_class = isinstance(task, type) and issubclass(task, Task)
    if not is_class and not callable(task):
        raise ConfigError(f"task {task_name!r} is registered as a {type(task).__name__}, not a Task class or function")
    parsed = parse_options(task.Options, options, task_name) if is_class else dict(options or {})
    # One guard for every task, plugins included: a model with non-finite weights, or a task that
    # meets non-finite outputs, gives ``nan`` status rows instead of scores that look valid.
    try:
        require_finite_weights(model)
        if needs_contract_check(model):
            check_outputs(model)  # a model breaking the contract's shapes fails here, not deep inside the task
        with torch.no_grad():
            rows = task().run(model, parsed, ctx) if is_class else function_task(task, model, parsed, ctx, task_name)
    except FloatingPointError as exc:
        rows = failure_rows(exc, [NONFINITE_METRIC], f"in task {task_name!r}")
    check_rows_returned(rows, task_name)
    if not rows:  # nothing measured must not read as a clean run (e.g. an empty list of contexts)
        rows = results.status_rows([NO_ROWS_METRIC], "error",
                                   f"task {task_name!r} returned no rows for options {dict(options or {})}")
    identity = identity_columns(info, task_name, run, model, device, dtype, seed)
    filled = [{**identity, **{k: v for k, v in row.items() if v is not None}} for row in rows]
    try:
        table = results.validate(filled)
    except results.SchemaError as exc:
        raise results.SchemaError(f"task {task_name!r} returned rows that break the schema: {exc}") from exc
    # the seed too: a sweep over seeds writes one record per seed of each window, sequence or point
    samples = [{"run": run, "model": info.name, "task": task_name, "seed": seed, **s} for s in ctx.samples]
    try:  # here, not when the file is written after the run: a sweep records the cell failed and goes on
        json.dumps(samples, default=results.json_default)
    except (TypeError, ValueError) as exc:
        raise results.SchemaError(f"task {task_name!r} recorded a sample that samples.jsonl cannot hold: {exc}") from exc
    return table, samples, parsed


def run_eval(
    task_name: str,
    model_spec: str | os.PathLike | LCModel,
    out_dir: str | os.PathLike | None,
    options: Mapping[str, Any] | None = None,
    *,
    preset: str | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    backend: str | None = None,
    seed: int = 0,
    run_name: str | None = None,
    model_name: str | None = None,
    command: Sequence[str] | str | None = None,
    progress: bool = True,
) -> EvalResult:
    """Evaluate ``model_spec`` on task ``task_name`` and write the run folder ``out_dir``
    (``None``: write nothing, return the table). See the module docstring."""
    check_task_options(task_name, options)  # a bad task name or option fails before any model is loaded
    device_t = resolve_device(device)  # so do a bad device and dtype, before the run folder is made
    dtype_t = resolve_dtype(dtype, device_t)
    # a bad model fails before the run folder is made: a missing checkpoint's error lists its
    # folder, which must not show the run folder that was made and is removed again
    model, info = resolve_model(model_spec, preset=preset, device=device_t, dtype=dtype_t, backend=backend,
                                name=model_name)
    refuse(kernel_problems(type(model), model.config, [device_t]) + context_problems(
        task_name, options, lambda parsed: model_tokenizer(parsed.tokenizer, info, model), [seed]), f"task {task_name!r}")
    # an unwritable folder fails before the work, too; a failed run leaves no empty folder behind
    with made_for_results(out_dir, "run folder") if out_dir is not None else nullcontext():
        run = run_name or (Path(out_dir).name if out_dir is not None else "run")
        git = git_commit()  # before the work: a commit or an edit during a long run is not what ran
        started = time.time()
        table, samples, parsed = run_task(task_name, model, info, options, device=device_t, dtype=dtype_t, seed=seed,
                                          run=run, progress=progress)
        options_dict = parsed if isinstance(parsed, dict) else _asdict(parsed)
        meta = run_metadata(
            seed=seed, command=command, device=str(device_t), task=task_name, options=options_dict,
            model={"spec": str(model_spec) if not isinstance(model_spec, LCModel) else info.name, "name": info.name,
                   "source": info.source, "path": info.path, "config": model.config.to_dict(),
                   "kernel_settings": model.kernel_settings(device_t),
                   "params_non_embedding": info.params, "params_total": int(model.num_params(non_embedding=False)),
                   "train_config": info.train_config},
            dtype=dtype_name(dtype_t), run=run, git=git,
        )
        meta["elapsed_s"] = round(time.time() - started, 3)
        meta["rows"] = len(table)
        meta["status_counts"] = {k: int(v) for k, v in table["status"].value_counts().items()}
        out = None
        if out_dir is not None:
            out = Path(out_dir)
            results.write_jsonl(out / results.SAMPLES_JSONL, samples)
            results.write_table(out, table)
            write_run_json(out, meta)  # last: its presence marks a complete run folder
        return EvalResult(table, samples, out, meta)


def _asdict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(vars(obj))
