"""Sweeps: whole comparisons from one spec file, into one resumable tidy table.

A spec (YAML or TOML) lists models (architecture, preset, config overrides, training budget or
a given checkpoint), seeds and tasks with their options and grids::

    name: quick
    train: {steps: 150, batch_size: 8, seq_len: 256}
    seeds: [0]
    models:
      - {arch: full_attention}
      - {arch: swa, set: {window: 128}}
    tasks:
      - {task: loss_scaling, options: {contexts: [256, 1024]}}
      - {task: niah, grid: {variants: [single, multikey]}}

Train-at-length sweeps (one model per context length, as the TTT-E2E paper trains them):
``train_lengths: [512, 1024, 2048]`` trains every model entry once per length (``seq_len`` set
to it, label ``name@length``), and a task's ``tie: [contexts]`` sets those options to the
model's training length (``[L]`` for a list option), so each model is evaluated at the length it
was trained at. Entries with a checkpoint or ``untrained: true`` are not expanded.

Every (model, seed, task, grid point) is a cell keyed by a hash of everything that determines
its numbers: the spec's name, the model's config and training settings (or a given checkpoint's
content, not its path; not the settings that only say when training validates and saves), the
content of the corpora it is trained and evaluated on (file names and bytes, hashed once per
sweep), the task, its options (as the task reads them: ``1K`` is 1024), the kind of device (cpu or
cuda: what ``auto`` resolves to where the work runs) and the dtype that kind gives; a record finishes a cell only under
the model's current label, which its rows carry. The whole spec, task options included, is checked when it loads, before any model trains;
cells that its values show are bound to fail (a kernel that cannot run on the device, a context a
task's ``check_context`` finds too short) are refused when the sweep starts, each in a line. A finished cell is recorded
in the folder's :class:`~harness.runs.store.ResultStore` (its rows into the table, its record
into ``cells.jsonl``, under a lock). Every spec that writes into a folder is kept there as
``specs/NAME-HASH.json`` and named by its cells' records (``spec.json`` is the one that ran
last), so two specs, or edits of one, can share a folder. A rerun skips finished cells, a killed
one is redone, a failing cell is recorded as status rows while the sweep goes on, and a spec
edited and reverted shows its own numbers again. Grid points whose rows no result column tells
apart (a grid over ``corpus``) are reported as clashes and fail the sweep. Training is part of a
model's first cell: its checkpoint lives under ``checkpoints/``, is saved periodically and
resumes; it counts as trained only at its last step.

Executors that run cells elsewhere (submitit jobs, :mod:`harness.runs.jobs`, set by the spec's
``cluster:`` mapping) call :func:`start_sweep` and :func:`run_model_cells`; every job may write
into the same folder.
"""
from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import os
import time
import tomllib
import warnings
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd
import torch
import yaml
from tqdm.auto import tqdm

from harness.api import registry, results
from harness.api.device import dtype_name, parse_device, resolve_device, resolve_dtype
from harness.api.errors import CheckpointError, ConfigError, UnknownNameError, missing_path_error, unknown_message
from harness.api.fieldtypes import check_fields
from harness.api.failures import FailureGuard, failure_rows
from harness.api.interface import LCModel, ModelConfig
from harness.api.machine import machine_names
from harness.api.options import whole_number
from harness.api.task import ModelInfo
from harness.api.staging import exclusive, prepare_output, safe_name
from harness.api.timing import free_memory
from harness.data.corpora import corpus_fingerprint, require_corpus
from harness.data.heldout import checkpoint_tokenizer
from harness.data.tokenizers import load_tokenizer, require_tokenizer, tokenizer_fingerprint
from harness.runs.cluster import ClusterOptions
from harness.runs.evaluate import check_task_options, context_problems, kernel_problems, refuse, resolve_model, run_task
from harness.runs.provenance import (config_hash, device_info, device_record, git_commit, package_versions, read_run_json,
                                     run_metadata, write_run_json)
from harness.runs.store import ResultStore
from harness.train import checkpoint
from harness.train.trainer import BOOKKEEPING_SETTINGS, PREDATING_SETTINGS, TrainConfig, check_one_budget, train

SPEC_FILE = "spec.json"  # the spec that ran last
SPECS_DIR = "specs"  # every spec that wrote into the folder, as NAME-HASH.json
SAMPLES_DIR = "samples"
CHECKPOINTS_DIR = "checkpoints"
TRAINING_LOCKS_DIR = ".locks"  # a sweep folder's lock per checkpoint, held while a process trains into it
MAX_PROBLEMS_SHOWN = 20  # lines of a refused sweep's error (one per problem found before any work)


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build a spec dataclass, naming unknown or missing keys and values of the wrong type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}: {str(data)[:80]!r}")
    _check_keys(cls, data, where)
    fields = dataclasses.fields(cls)
    missing = [f.name for f in fields if f.name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where} has no {', '.join(repr(m) for m in missing)}; it needs {', '.join(missing)}")
    check_fields(cls, data, where)
    return cls(**data)


def _check_keys(cls: type, data: dict[str, Any], where: str) -> None:
    """Raise :class:`ConfigError` naming the first key of ``data`` that is no field of dataclass ``cls``."""
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise ConfigError(f"{where}: " + unknown_message("key", key, known))


@dataclass
class ModelEntry:
    arch: str
    preset: str = "tiny"
    set: dict[str, Any] = field(default_factory=dict)  # model config overrides
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides for this model
    checkpoint: str | None = None  # evaluate this checkpoint instead of training
    untrained: bool = False  # evaluate seeded random weights (latency and memory need no training)
    name: str | None = None  # label in the table (default arch:preset, plus overrides; see label)

    def __post_init__(self) -> None:
        if self.name is not None and not str(self.name).strip():  # it fell back to the default label unsaid
            raise ConfigError(f"model {self.arch!r}: name {self.name!r} is blank; give a label or leave name out")

    @property
    def label(self) -> str:
        """``name``, else ``arch:preset[overrides]``. A given checkpoint with the default preset is
        ``arch:FOLDER``: its size is the checkpoint's, which the default preset would misname
        (a named preset is checked against it, :func:`check_given_checkpoint`)."""
        if self.name:
            return self.name
        if self.checkpoint is not None and self.preset == ModelEntry.preset:
            return f"{self.arch}:{Path(self.checkpoint).name}"
        extra = ",".join(f"{k}={v}" for k, v in sorted(self.set.items()) if k != "vocab_size")
        return f"{self.arch}:{self.preset}" + (f"[{extra}]" if extra else "")


@dataclass
class TaskEntry:
    task: str
    options: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)  # one cell per combination
    tie: list[str] = field(default_factory=list)  # options set to the model's training length

    def __post_init__(self) -> None:
        """One source per option, one cell per grid value: a grid or a tie silently replaced an
        option's value, and a repeated value ran its cell twice."""
        for name, values in self.grid.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"task {self.task!r}: grid.{name} must be a non-empty list, got {values!r}")
            repeated = next((v for i, v in enumerate(values) if v in values[:i]), None)
            if repeated is not None:
                raise ConfigError(f"task {self.task!r}: grid.{name} holds {repeated!r} twice; each value is one cell")
        both = [name for name in self.grid if name in self.options]
        if both:
            raise ConfigError(f"task {self.task!r} sets {both[0]!r} in both options and grid; keep one")
        for name in self.tie:
            if name in self.options or name in self.grid:
                raise ConfigError(f"task {self.task!r}: tie sets {name!r} to the training length, and its "
                                  f"{'grid' if name in self.grid else 'options'} set it too; keep one")

    def option_sets(self, train_length: int | None = None) -> list[dict[str, Any]]:
        names = list(self.grid)
        tied = {} if train_length is None else {name: self._tied_value(name, train_length) for name in self.tie}
        return [{**self.options, **dict(zip(names, combo)), **tied} for combo in itertools.product(*self.grid.values())]

    def _tied_value(self, name: str, length: int) -> int | list[int]:
        """``length`` in the option's form: ``[length]`` where the option takes a list."""
        task = registry.get_task(self.task)
        options = getattr(task, "Options", None)
        if dataclasses.is_dataclass(options):  # a Task class; a list option has a default_factory
            defaults = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                        for f in dataclasses.fields(options)}
        else:  # a function task
            defaults = {n: p.default for n, p in inspect.signature(task).parameters.items() if n not in ("model", "ctx")}
        if name not in defaults:
            raise ConfigError(f"task {self.task!r}: tie names an " + unknown_message("option", name, defaults))
        return [length] if isinstance(self.options.get(name, defaults[name]), (list, tuple)) else length


@dataclass
class SweepSpec:
    name: str
    models: list[ModelEntry]
    tasks: list[TaskEntry]
    train: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    train_lengths: list[int] = field(default_factory=list)  # one model per training length (see above)
    device: str = "auto"
    dtype: str = "auto"
    cluster: dict[str, Any] = field(default_factory=dict)  # how submitit jobs run: ClusterOptions' fields

    def __post_init__(self) -> None:
        self.models = [m if isinstance(m, ModelEntry) else _from_dict(ModelEntry, m, f"models[{i}]")
                       for i, m in enumerate(self.models)]
        self.tasks = [t if isinstance(t, TaskEntry) else _from_dict(TaskEntry, t, f"tasks[{i}]")
                      for i, t in enumerate(self.tasks)]
        if not self.name.strip() or self.name.strip(".") == "" or any(c in self.name for c in "/\\\0"):
            raise ConfigError(f"sweep name {self.name!r} must be a non-empty name without '/' or '\\' (it names "
                              f"the default folder runs/NAME and every result row), e.g. "
                              f"{safe_name(self.name).strip('._') or 'my_sweep'!r}")
        if not self.models or not self.tasks:
            raise ConfigError(f"sweep {self.name!r} needs at least one model and one task")
        for entry in self.models:  # fail on bad names before anything runs
            if entry.untrained and entry.checkpoint is not None:
                raise ConfigError(f"model {entry.label!r} has both a checkpoint and untrained: true; choose one")
            ignored = [key for key in ("set", "train") if entry.checkpoint is not None and getattr(entry, key)]
            if ignored:  # a checkpoint is evaluated as saved: these would only relabel it
                raise ConfigError(f"model {entry.label!r} is a given checkpoint; its {ignored[0]!r} settings "
                                  f"{getattr(entry, ignored[0])} would not apply to it; remove them")
            if entry.untrained and entry.train:  # nothing trains it: they would be dropped unread
                raise ConfigError(f"model {entry.label!r} is untrained: true; its 'train' settings {entry.train} "
                                  "would not apply to it; remove them")
            if entry.checkpoint is None:  # a given checkpoint is checked when planned (check_given_checkpoint)
                with naming(entry):  # the model built too: full_attention's window passed here, then failed its cells
                    registry.check_buildable(registry.make_config(entry.arch, entry.preset, **entry.set))
            self.train_config(entry)
        if any(not isinstance(n, int) or isinstance(n, bool) or n < 2 for n in self.train_lengths):
            raise ConfigError(f"train_lengths must be whole numbers >= 2 (e.g. 512, 8K), got {self.train_lengths}")
        repeated = next((n for i, n in enumerate(self.train_lengths) if n in self.train_lengths[:i]), None)
        if repeated is not None:
            raise ConfigError(f"train_lengths holds {repeated} twice; each length trains its own models")
        cells: dict[str, int] = {}  # a task and its options -> the first entry that gives that cell
        for i, entry in enumerate(self.tasks):  # every task's options, so no model is trained for a spec that cannot finish
            if entry.tie and not self.train_lengths:
                raise ConfigError(f"task {entry.task!r} ties {entry.tie} to the training length, but the spec "
                                  "has no train_lengths")
            for options in entry.option_sets(self.train_lengths[0] if self.train_lengths else None):
                read = check_task_options(entry.task, options)  # `contexts: 32` and `[32]` are one cell
                first = cells.setdefault(json.dumps([entry.task, read], sort_keys=True, default=str), i)
                if first != i:
                    raise ConfigError(f"tasks[{first}] and tasks[{i}] give the same cell, task {entry.task!r} with "
                                      f"options {options}; remove one")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ConfigError(f"seeds must be distinct non-negative integers, got {self.seeds}")
        labels = [m.label for m in self.models]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"two models share a label in {labels}; give them distinct 'name's")
        self.cluster_options()

    def train_config(self, entry: ModelEntry, seed: int | None = None) -> TrainConfig:
        for given, where in ((self.train, "the spec's train settings"), (entry.train, f"train settings of {entry.label}")):
            _check_keys(TrainConfig, given, where)  # a key of the spec's own train: was named as the first model's
            check_one_budget(_token_counts(given), where)  # a model's own budget may replace the spec's
        fields = _token_counts({**self.train, **entry.train})
        if "steps" in entry.train and "tokens" not in entry.train:  # the model's step budget replaces the spec's tokens
            fields.pop("tokens", None)
        if seed is not None:
            fields["seed"] = seed
        return _from_dict(TrainConfig, fields, f"train settings of {entry.label}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "sweep spec") -> SweepSpec:
        """The spec :meth:`to_dict` gave (how a job receives it), checked as a spec file is.
        ``train_lengths`` are spelt as task options are: ``8K`` is 8192."""
        lengths = data.get("train_lengths") if isinstance(data, dict) else None
        if isinstance(lengths, list):
            data = {**data, "train_lengths": [_token_count(n) for n in lengths]}
        return _from_dict(cls, data, where)

    def cluster_options(self, **overrides: Any) -> ClusterOptions:
        """The spec's ``cluster:`` settings with ``overrides`` (None: keep the spec's) on top."""
        fields = {**self.cluster, **{k: v for k, v in overrides.items() if v is not None}}
        return _from_dict(ClusterOptions, fields, f"cluster settings of sweep {self.name!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def spec_id(self) -> str:
        """``NAME-HASH``: names this spec's file under ``specs/`` and its cells' records."""
        return f"{safe_name(self.name)}-{config_hash(self.to_dict())[:8]}"

    def expanded_models(self) -> list[tuple[ModelEntry, int | None]]:
        """(model entry, training length it is tied to): with ``train_lengths``, each trained
        entry once per length, its ``seq_len`` set to it."""
        out = []
        for entry in self.models:
            if not self.train_lengths or entry.checkpoint is not None or entry.untrained:
                out.append((entry, None))
                continue
            for length in self.train_lengths:
                out.append((dataclasses.replace(entry, train={**entry.train, "seq_len": length},
                                                name=f"{entry.label}@{length}"), length))
        return out


@contextmanager
def naming(entry: ModelEntry) -> Iterator[None]:
    """Prefix a config error, or an unknown arch or preset, with the label of the spec's model it
    comes from: several models may share a config class, an arch or a typo."""
    try:
        yield
    except (ConfigError, UnknownNameError) as exc:
        raise ConfigError(f"model {entry.label!r}: {exc}") from None


def check_given_checkpoint(entry: ModelEntry) -> None:
    """Raise unless a given checkpoint is the entry's arch (and its preset, when one other than the
    default is named): its rows carry the entry's label, which must not name another model."""
    config = checkpoint.read_config(entry.checkpoint)
    if config.arch != entry.arch:
        raise ConfigError(f"model {entry.label!r} names arch {entry.arch!r}, but its checkpoint "
                          f"{str(entry.checkpoint)!r} holds a {config.arch!r} model; set arch: {config.arch}")
    if entry.preset == ModelEntry.preset:  # the default: no preset was named
        return
    with naming(entry):
        preset = registry.make_config(entry.arch, entry.preset, vocab_size=config.vocab_size)
    fields = registry.get_model_class(entry.arch).presets[entry.preset]
    differ = [f"{k}={getattr(config, k)} (the preset's {getattr(preset, k)})"
              for k in fields if getattr(config, k) != getattr(preset, k)]
    if differ:
        raise ConfigError(f"model {entry.label!r} names preset {entry.preset!r} but its checkpoint differs from "
                          f"it: {', '.join(differ)}; name its own preset, or give the entry a 'name' instead")


def load_spec(path: str | os.PathLike) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise missing_path_error("sweep spec", path, "a YAML or TOML file such as results/specs/quick.yaml")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not a text file ({exc})") from exc
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.load(text, Loader=_UniqueKeyLoader)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path} is not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: "
                          f"{_parse_problem(exc)}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping (name, models, tasks, ...) at the top, "
                          f"got {'nothing' if data is None else type(data).__name__}")
    data.setdefault("name", path.stem)
    return SweepSpec.from_dict(data, str(path))


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last one
    silently; TOML refuses it too)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):  # the base loader names an unhashable key
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"{key!r} twice in one mapping",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _parse_problem(exc: Exception) -> str:
    """A parser's error in one line: PyYAML's spans several (context, problem, a caret under the
    source line), which the CLI's one-line errors would show cut."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is not None and problem:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split())


TOKEN_SETTINGS = ("seq_len", "tokens")  # training settings that count tokens


def _token_counts(settings: dict[str, Any]) -> dict[str, Any]:
    """Train ``settings`` with their token counts read as --seq-len reads them (8K: 8192)."""
    return {k: _token_count(v) if k in TOKEN_SETTINGS else v for k, v in settings.items()}


def _token_count(value: Any) -> Any:
    """``"8K"`` as 8192; anything else as given (so that an error names it as the user wrote it)."""
    try:
        return whole_number(value) if isinstance(value, str) else value
    except ValueError:
        return value


def local_device_kind() -> str:
    """What ``auto`` resolves to on this machine: cuda or cpu."""
    return resolve_device("auto").type


def device_kind(name: str, auto: str) -> str:
    """The kind of device (cpu or cuda) that the setting ``name`` runs on, ``auto`` being what
    ``auto`` resolves to where the work runs. Keys hash the kind, not the spelling: the kind sets the
    rounding (auto and cpu on a CPU machine compute the same; auto on a CPU and on a GPU do not), the
    GPU's index does not (cuda:1 computes what cuda:0 does; the records name each machine's GPU).
    Only the spelling is checked: a cluster's login node may plan work for GPUs it lacks."""
    parsed = parse_device(name)
    return auto if parsed is None else parsed.type


def compute_kind(device: str, dtype: str, auto: str) -> dict[str, str]:
    """The kind of device and the dtype that settings resolve to (``auto`` as in :func:`device_kind`):
    auto and fp32 on a CPU compute alike, auto on a CPU and a GPU do not."""
    kind = device_kind(device, auto)
    return {"device": kind, "dtype": dtype_name(resolve_dtype(dtype, torch.device(kind)))}


@dataclass(eq=False)
class SeededModel:
    """One model entry of a spec with one seed: what is trained (or loaded) once and then
    evaluated by every task of the spec."""

    spec: SweepSpec
    entry: ModelEntry
    seed: int
    # corpus source -> content fingerprint, shared by a plan's models: each corpus is read once per sweep
    fingerprints: dict[str | None, str] = field(default_factory=dict)
    auto_device: str = field(default_factory=local_device_kind)  # what device auto trains on (see device_kind)

    @property
    def label(self) -> str:
        return self.entry.label

    def train_config(self) -> TrainConfig:
        return self.spec.train_config(self.entry, self.seed)

    def model_config(self) -> ModelConfig:
        overrides = dict(self.entry.set)
        if not self.entry.untrained:  # trained models take the tokenizer's vocabulary, untrained ones the preset's
            overrides.setdefault("vocab_size", load_tokenizer(self.train_config().tokenizer).vocab_size)
        return registry.make_config(self.entry.arch, self.entry.preset, **overrides)

    def identity(self) -> dict[str, Any]:
        """Everything that determines the model's weights (hashed into cell keys and checkpoint names)."""
        if self.entry.checkpoint is not None:  # its content, not its path: a replaced checkpoint is a new model
            check_given_checkpoint(self.entry)  # it labels rows; here, after the gate anchors relative paths
            return {"checkpoint": checkpoint.content_hash(self.entry.checkpoint), "seed": self.seed}
        config = self.model_config()
        if self.entry.untrained:
            return {"config": config.to_dict(), "untrained": True, "seed": self.seed}
        train_config = self.train_config()
        require_corpus(train_config.corpus)  # named now, not when the model's first cell trains
        # when it validates and saves leaves the weights bit-identical: editing it retrains nothing
        settings = {k: v for k, v in train_config.to_dict().items() if k not in BOOKKEEPING_SETTINGS}
        for k, before in PREDATING_SETTINGS.items():  # at the value models trained with before it: their keys as before
            if settings[k] == before:
                del settings[k]
        # where and in what it computes, not the spelling (training's auto autocasts as evaluation's resolves)
        settings.update(compute_kind(train_config.device, train_config.dtype, self.auto_device))
        identity = {"config": config.to_dict(), "train": settings,
                    "corpus": self.corpus_fingerprint(train_config.corpus)}
        if train_config.tokenizer is not None:  # its files, not its path (bytes: no entry, keys as before)
            identity["tokenizer"] = tokenizer_fingerprint(train_config.tokenizer)
        return identity

    def corpus_fingerprint(self, source: str | None) -> str:
        if source not in self.fingerprints:
            self.fingerprints[source] = corpus_fingerprint(source)
        return self.fingerprints[source]

    def trained_settings(self) -> dict[str, Any]:
        """The training settings of the model: {} untrained, or for a weights-only checkpoint."""
        if self.entry.untrained:
            return {}
        if self.entry.checkpoint is None:
            return self.train_config().to_dict()
        try:
            return checkpoint.load_trainer_state(self.entry.checkpoint)[0].get("train_config") or {}
        except checkpoint.CheckpointError:
            return {}

    def training_corpus(self) -> str | None:
        """The corpus the model was trained on (a task's default corpus); None: the embedded one."""
        return self.trained_settings().get("corpus")

    def tokenizer(self) -> str | None:
        """The tokenizer its tasks read text with unless they name one (None: bytes)."""
        return checkpoint_tokenizer(ModelInfo(self.label, self.entry.arch, 0, train_config=self.trained_settings(),
                                              path=self.entry.checkpoint))

    def kernel_problems(self, imports: bool = True) -> list[str]:
        """Settings of its config naming a kernel backend that cannot run where it trains or is
        evaluated (:func:`~harness.runs.evaluate.kernel_problems`)."""
        if self.entry.checkpoint is not None:
            config = checkpoint.read_config(self.entry.checkpoint)
        else:
            config = self.model_config()
        kinds = [device_kind(self.spec.device, self.auto_device)]
        if self.entry.checkpoint is None and not self.entry.untrained:
            kinds.append(device_kind(self.train_config().device, self.auto_device))
        return kernel_problems(registry.get_model_class(self.entry.arch), config,
                               [torch.device(kind) for kind in dict.fromkeys(kinds)], imports)

    def checkpoint_dir(self, out_dir: Path) -> Path:
        if self.entry.checkpoint is not None:
            return Path(self.entry.checkpoint)
        return out_dir / CHECKPOINTS_DIR / f"{safe_name(self.label)}-s{self.seed}-{config_hash(self.identity())[:8]}"

    def training_lock(self, out_dir: Path) -> Path:
        return out_dir / TRAINING_LOCKS_DIR / f"{self.checkpoint_dir(out_dir).name}.lock"

    def prepare(self, out_dir: Path, device: torch.device, dtype: torch.dtype,
                progress: bool) -> tuple[LCModel, ModelInfo]:
        """The model on ``device``: seeded random weights, a given checkpoint, or trained (resuming
        a checkpoint of an earlier, killed sweep)."""
        if self.entry.untrained:
            torch.manual_seed(self.seed)
            with torch.device(device):  # paper-sized models are built where they run
                model = registry.build_model(self.model_config())
            return resolve_model(model, device=device, dtype=dtype, name=self.label)
        self.train_once(out_dir, progress)
        return resolve_model(self.checkpoint_dir(out_dir), device=device, dtype=dtype, name=self.label)

    def needs_training(self, out_dir: Path) -> bool:
        return (self.entry.checkpoint is None and not self.entry.untrained
                and not _trained(self.checkpoint_dir(out_dir), self.train_config().total_steps))

    def train_once(self, out_dir: Path, progress: bool = False) -> None:
        """Train the model into its checkpoint folder unless done (resuming a killed run's)."""
        if not self.needs_training(out_dir):
            return
        cfg = self.train_config()
        if cfg.save_every == 0:  # so a killed sweep resumes training part-way
            cfg = dataclasses.replace(cfg, save_every=max(1, cfg.total_steps // 4))
        if cfg.device == "auto":  # the kind its identity names (a job's: the kind its resources give)
            cfg = dataclasses.replace(cfg, device=self.auto_device)
        ckpt = self.checkpoint_dir(out_dir)
        # another sweep (or pool worker) training this model into this folder: wait for it, then
        # take its checkpoint, instead of both writing the folder's files at once
        with exclusive(self.training_lock(out_dir),
                       waiting=lambda: warnings.warn(f"waiting for another process that trains {self.label} "
                                                     f"into {ckpt}", stacklevel=2)):
            if not self.needs_training(out_dir):  # it finished while this one waited
                return
            train(self.model_config(), cfg, out_dir=ckpt, resume=checkpoint.is_checkpoint(ckpt), progress=progress,
                  parallel="none")


@dataclass
class Cell:
    key: str
    model: SeededModel
    task: str
    options: dict[str, Any]

    @property
    def seed(self) -> int:
        return self.model.seed


@dataclass
class SweepResult:
    table: pd.DataFrame
    out_dir: Path
    ran: int
    skipped: int
    failed: int
    clashes: list[str] = field(default_factory=list)  # see :func:`clashing_cells`
    keys: list[str] = field(default_factory=list)  # the spec's cells


_TaskCell = tuple[str, dict[str, Any], dict[str, Any]]  # see _task_cells


def plan(spec: SweepSpec, auto_device: str | None = None) -> list[Cell]:
    """Every evaluation cell of the spec, in run order (grouped by model, so each trains once).
    ``auto_device``: the kind of device (cpu, cuda) that ``auto`` is where the cells run; None:
    this machine's."""
    cells = []
    fingerprints: dict[str | None, str] = {}
    auto_device = auto_device or local_device_kind()
    by_length: dict[int | None, list[_TaskCell]] = {}  # read once, for every model and seed of a length
    for (entry, length), seed in itertools.product(spec.expanded_models(), spec.seeds):
        model = SeededModel(spec, entry, seed, fingerprints, auto_device)
        model_id, trained_on = model.identity(), model.training_corpus()
        if length not in by_length:
            by_length[length] = _task_cells(spec, length)
        for task, options, option_fields in by_length[length]:
            data = model.corpus_fingerprint(options.get("corpus") or trained_on)
            fields = {"run": spec.name, "model": model_id, "task": task, **option_fields, "data": data,
                      **compute_kind(spec.device, spec.dtype, auto_device)}
            cells.append(Cell(config_hash(fields), model, task, options))
    return cells


def check_cells(cells: list[Cell], imports: bool = True) -> None:
    """Refuse (:class:`ConfigError`, one line per problem) ``cells`` bound to fail for what their
    spec shows, before any model trains: a kernel backend that cannot run where a model trains or is
    evaluated, options a task's ``check_context`` refuses (a context too short for its prompts).
    ``imports=False``: only what the devices' kinds tell (cells planned for other machines)."""
    problems: dict[str, None] = {}  # in order, each once
    tokenizers: dict[str | None, Any] = {}
    # a task cell read with a tokenizer -> (a cell of it, the tokenizer, its seeds): asked once for
    # all models and seeds, so that a context the task suggests fits the prompts of every seed
    asked: dict[str, tuple[Cell, str | None, list[int]]] = {}

    def tokenizer(name: str | None) -> Any:
        if name not in tokenizers:
            tokenizers[name] = load_tokenizer(name)
        return tokenizers[name]

    labels: dict[str, str] = {}  # cell key -> the label of the model that first gave it
    for cell in cells:  # a key leaves the label out: two names for one model gave one cell, and a "clash"
        first = labels.setdefault(cell.key, cell.model.label)
        if first != cell.model.label:
            problems[f"models {first!r} and {cell.model.label!r} are one model (arch, settings, training, seed): "
                     "their cells would be one, shown under one name; make them differ, or keep one"] = None
    for group in cells_by_model(cells):
        model = group[0].model
        problems.update((f"model {model.label!r}: {line}", None) for line in model.kernel_problems(imports))
        own = model.tokenizer()
        for cell in group:
            seeds = asked.setdefault(json.dumps([cell.task, cell.options, own], sort_keys=True, default=str),
                                     (cell, own, []))[2]
            if cell.seed not in seeds:
                seeds.append(cell.seed)
    for cell, own, seeds in asked.values():
        found = context_problems(cell.task, cell.options, lambda parsed, own=own: tokenizer(parsed.tokenizer or own),
                                 seeds)
        read_by = f" (tokenizer {own!r})" if own is not None else ""
        problems.update((f"{cell.task} {cell.options}{read_by}: {line}", None) for line in found)
    lines = list(problems)
    if len(lines) > MAX_PROBLEMS_SHOWN:
        lines[MAX_PROBLEMS_SHOWN:] = [f"... and {len(lines) - MAX_PROBLEMS_SHOWN} more"]
    refuse(lines, "this sweep")


def _task_cells(spec: SweepSpec, length: int | None) -> list[_TaskCell]:
    """(task, options as given, the options' part of a cell key) of every task cell of a model
    trained at ``length``, in the spec's order; a path an option names is checked first."""
    out = []
    for task in spec.tasks:
        for options in task.option_sets(length):
            for name, require in (("corpus", require_corpus), ("tokenizer", require_tokenizer)):
                if isinstance(options.get(name), str):  # a path a spec names is checked before any work
                    require(options[name])
            fields = {"options": check_task_options(task.task, options)}  # '1K' and 1024 are one cell
            if options.get("tokenizer") is not None:  # its files (none given: keys as before)
                fields["tokenizer"] = tokenizer_fingerprint(options["tokenizer"])
            out.append((task.task, options, fields))
    return out


def _trained(ckpt: Path, total_steps: int) -> bool:
    if not checkpoint.is_checkpoint(ckpt):
        return False
    try:
        return checkpoint.load_trainer_state(ckpt)[0].get("step", 0) >= total_steps
    except checkpoint.CheckpointError:
        return False


def failure_rows_of(cell: Cell, exc: BaseException, label: str) -> list[dict[str, Any]]:
    return failure_rows(exc, [results.CELL_FAILED], f"(options {cell.options})", run=cell.model.spec.name, model=label,
                        arch=cell.model.entry.arch, task=cell.task, variant=cell.key, seed=cell.seed)


def record_lost_cells(out_dir: str | os.PathLike, cells: list[Cell], reason: str, git: dict[str, Any],
                      before: dict[str, dict[str, Any]] | None = None) -> None:
    """Status rows (and failed ``cells.jsonl`` records) saying ``reason`` for the ``cells`` that a
    dead worker or job left unfinished: those with no record, or with the record they had in
    ``before`` (the records when the work was handed out: a retry's old failures), so that the
    death is not hidden by an old reason. ``git``: the code the work was handed out with."""
    store = ResultStore(out_dir)
    done = store.finished()
    for cell in cells:
        if cell.key in done and (before is None or done[cell.key] != before.get(cell.key)):
            continue
        table = results.to_frame(failure_rows_of(cell, RuntimeError(reason), cell.model.label))
        store.record_cell(cell.key, table, cell_record(cell, table, 0.0, git, None))


def unfinished(cells: list[Cell], out_dir: str | os.PathLike, retry_failed: bool = False) -> list[Cell]:
    """The ``cells`` not finished in ``out_dir`` yet (with ``retry_failed``, also those that
    failed), in run order."""
    done = ResultStore(out_dir).finished()
    return [c for c in cells if not is_finished(c, done.get(c.key), retry_failed)]


def is_finished(cell: Cell, record: dict[str, Any] | None, retry_failed: bool = False) -> bool:
    """Whether ``record`` (the latest of ``cell``'s key in ``cells.jsonl``) finishes ``cell``: made
    under the label the spec gives its model now (the rows carry the label, which the key does not
    hash: a renamed model's rows would show its old name), and ok where failures are retried."""
    return (record is not None and record.get("model") == cell.model.label
            and not (retry_failed and record.get("status") != "ok"))


def cells_by_model(cells: list[Cell]) -> list[list[Cell]]:
    """``cells`` grouped by the model (one :class:`SeededModel`) they share, in order: what
    :func:`run_model_cells` takes, one group per job."""
    groups: dict[int, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(id(cell.model), []).append(cell)
    return list(groups.values())


def run_model_cells(cells: list[Cell], out_dir: str | os.PathLike, device: torch.device, dtype: torch.dtype,
                    progress: bool = False, on_cell: Callable[[Cell], None] | None = None) -> int:
    """Train or load the model that ``cells`` share (one :class:`SeededModel`) once, run each cell
    and record it in the store of ``out_dir``; returns how many failed. What one job of a cluster
    executor runs: any number of them may write into one folder at once."""
    out_dir = Path(out_dir)
    seeded = cells[0].model
    if any(c.model is not seeded for c in cells):
        raise ConfigError("run_model_cells takes the cells of one model and seed; group them with plan()'s order")
    store = ResultStore(out_dir)
    record_spec(seeded.spec, out_dir)
    # each record names the code and the machine that made it: a resumed sweep may mix commits, and
    # a cluster's cells run on other machines than the one that writes run.json
    git, machine, packages = git_commit(), device_record(str(device)), package_versions()
    failed = 0
    # a model that cannot be trained or loaded fails all its cells
    with FailureGuard([], device) as preparing:
        model, info = seeded.prepare(out_dir, device, dtype, progress)
    for cell in cells:
        cell_started = time.time()
        if preparing.failed:
            table, samples = results.to_frame(failure_rows_of(cell, preparing.error, seeded.label)), []
        else:
            with FailureGuard([], device) as running:
                table, samples, _ = run_task(cell.task, model, info, cell.options, device=device, dtype=dtype,
                                             seed=cell.seed, run=seeded.spec.name, progress=False)
            if running.failed:
                table, samples = results.to_frame(failure_rows_of(cell, running.error, info.name)), []
        failed += bool((table["status"] != "ok").any())
        sample_file = out_dir / SAMPLES_DIR / f"{cell.key}.jsonl"
        if samples:
            results.write_jsonl(sample_file, samples)
        else:  # an earlier attempt's samples (a retried cell's) would stand beside this attempt's rows
            sample_file.unlink(missing_ok=True)
        settings = None if preparing.failed else model.kernel_settings(device)
        store.record_cell(cell.key, table, cell_record(cell, table, time.time() - cell_started, git, machine, packages,
                                                       settings))
        if on_cell is not None:
            on_cell(cell)
    free_memory(device)
    return failed


def run_sweep(spec: SweepSpec, out_dir: str | os.PathLike, progress: bool = True,
              retry_failed: bool = False) -> SweepResult:
    """Run every cell of ``spec`` not yet finished in ``out_dir`` (and, with ``retry_failed``,
    the ones that failed before), one model at a time, in this process."""
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    out_dir, cells, pending = start_sweep(spec, out_dir, retry_failed)
    git, started = git_commit(), time.time()  # before the work: a commit during a long sweep is not what ran
    bar = tqdm(total=len(cells), initial=len(cells) - len(pending), desc=f"sweep {spec.name}", unit="cell",
               disable=not progress)
    for group in cells_by_model(pending):
        bar.set_postfix_str(f"{group[0].model.label} seed {group[0].seed}")
        run_model_cells(group, out_dir, device, dtype, progress, on_cell=lambda _: bar.update(1))
    bar.close()
    return finish_sweep(spec, out_dir, cells, len(pending), started, git, device=str(device), dtype=dtype_name(dtype))


def start_sweep(spec: SweepSpec, out_dir: str | os.PathLike, retry_failed: bool = False,
                auto_device: str | None = None) -> tuple[Path, list[Cell], list[Cell]]:
    """Plan the cells of ``spec`` (bad input and cells bound to fail, :func:`check_cells`, fail
    here, before the folder is touched), create the sweep folder (clearing stale staged writes)
    and record the spec in it: kept under ``specs/`` with every spec that wrote there, and as
    ``spec.json``, the last to run. Returns the folder, every cell of the spec and the
    :func:`unfinished` ones. ``auto_device``: as :func:`plan` takes it."""
    cells = plan(spec, auto_device)
    check_cells(cells, imports=auto_device is None)  # a cluster's machines may have packages this one lacks
    out_dir = prepare_output(out_dir, "sweep folder")
    record_spec(spec, out_dir)
    results.atomic_write(out_dir / SPEC_FILE, lambda f: f.write(json.dumps(spec.to_dict(), indent=2)))
    return out_dir, cells, unfinished(cells, out_dir, retry_failed)


def finish_sweep(spec: SweepSpec, out_dir: Path, cells: list[Cell], ran: int, started: float,
                 git: dict[str, Any], device: str, on_cluster: bool = False, **extra: Any) -> SweepResult:
    """Write run.json (``extra`` added to it) and return the table of ``cells``. ``failed``
    counts every cell of the spec not ok in the folder, the ones skipped as done included: a
    rerun that does not retry them has not produced the spec's results either. ``git``: read
    when the sweep started; ``cell_commits`` lists the commits its cells' records name, which are
    several when earlier runs in the folder ran other code (a warning says so), ``cell_machines``
    the machines (likewise). ``device`` (and ``extra``'s ``dtype``): what the cells computed on and
    in, not the spec's spelling of it (``auto``), which run.json keeps under ``spec``. ``on_cluster``:
    the cells ran on a cluster's nodes, which ``cell_machines`` names: run.json's ``device`` gives
    only its kind, and this machine, which submitted them, is ``submitted_from``."""
    store = ResultStore(out_dir)
    def models(table: pd.DataFrame) -> set[str]:
        return set(table.loc[table["run"] == spec.name, "model"])

    shown = models(results.read_table(out_dir)) if (out_dir / results.TABLE_CSV).is_file() else set()
    # cells finished earlier show their own rows; cells of earlier edits of the spec, none
    table = store.show_cells((c.key for c in cells), run=spec.name)
    hidden = shown - models(table)
    if hidden:  # said, since `quick --arch A` after `quick --arch B` shows A alone
        warnings.warn(f"the table of {out_dir} no longer shows {', '.join(sorted(hidden))}: earlier runs of spec "
                      f"{spec.name!r} measured them, this one does not; their cells stay in {out_dir / 'cells'} and "
                      "show again when a spec that has them runs", stacklevel=2)
    done = store.finished()
    failed = sum(done.get(c.key, {}).get("status") != "ok" for c in cells)
    clashes = clashing_cells(store, cells)
    meta = run_metadata(seed=None, device=device, git=git, spec=spec.to_dict(), run=spec.name)
    if on_cluster:  # else a login node's CPU (and no GPU) would read as where the cells ran
        meta.update(device={"name": device}, submitted_from=device_info("cpu"))
    keys = [c.key for c in cells]
    commits = cell_commits(done.get(k) for k in keys)
    if len(commits) > 1:
        made = ", ".join(f"{n} by {sha[:12]}{'+' * bool(edits)}{edits}"
                         for (sha, _, edits), n in ((name.partition("+"), n) for name, n in commits.items()))
        warnings.warn(f"the cells of {spec.name} in {out_dir} were made by different code ({made}): a commit during "
                      "the sweep, or cells that earlier runs finished (a rerun does not redo them); a new folder "
                      "at one commit gives results of one code", stacklevel=2)
    machines = cell_machines(done.get(k) for k in keys)
    known = {name: n for name, n in machines.items() if name != "unknown"}  # a dead job's cells name none
    if len(known) > 1:
        ran_on = ", ".join(f"{n} on {name}" for name, n in known.items())
        warnings.warn(f"the cells of {spec.name} in {out_dir} ran on different machines ({ran_on}): timings and "
                      "memory compare only between cells of one machine, and a rerun does not redo finished cells",
                      stacklevel=2)
    packages = cell_packages(done.get(k) for k in keys)
    if packages:
        versions = "; ".join(f"{name} " + ", ".join(f"{v} ({n} cells)" for v, n in seen.items())
                             for name, seen in packages.items())
        warnings.warn(f"the cells of {spec.name} in {out_dir} were made with different package versions ({versions}): "
                      "a kernel or library change moves numbers, and a rerun does not redo finished cells",
                      stacklevel=2)
    meta.update(cell_commits=commits, cell_machines=machines, cell_packages=packages)
    meta.update(cells=len(cells), cell_keys=keys, ran=ran, skipped=len(cells) - ran, failed=failed,
                elapsed_s=round(time.time() - started, 3), **extra, **({"clashes": clashes} if clashes else {}))
    write_run_json(out_dir, meta)
    return SweepResult(table, out_dir, ran, len(cells) - ran, failed, clashes, keys)


def clashing_cells(store: ResultStore, cells: list[Cell]) -> list[str]:
    """One line per pair of the spec's cells whose rows the table cannot tell apart: the same
    model, seed and task with options that differ only where no result column says so (a grid
    over ``corpus``, or over mqar's ``lr``). The table keeps one cell's rows; each cell's own stay
    in ``cells/``."""
    owner: dict[Any, Cell] = {}
    pairs: dict[tuple[str, str], tuple[Cell, Cell]] = {}
    for cell in cells:
        rows = store.cell_rows(cell.key)
        for ident in set(results.key_index(rows)) if rows is not None and len(rows) else ():
            first = owner.setdefault(ident, cell)
            if first is not cell:
                pairs.setdefault((first.key, cell.key), (first, cell))
    lines = []
    for first, second in pairs.values():
        differ = sorted(k for k in first.options.keys() | second.options.keys()
                        if first.options.get(k) != second.options.get(k))
        shown = ", ".join(f"{k}={first.options.get(k)!r} vs {second.options.get(k)!r}" for k in differ)
        lines.append(f"{second.task} cells of {second.model.label} (seed {second.seed}) that differ in {shown or 'nothing'} "
                     "give rows no result column tells apart: the table shows the last one's (every cell's rows are "
                     "in cells/); give such grid points separate run folders or model entries")
    return lines


def record_spec(spec: SweepSpec, out_dir: Path) -> Path:
    """Keep ``spec`` as ``specs/NAME-HASH.json`` in ``out_dir``: a folder that several specs
    (or edits of one) write into keeps them all, and each cell record names its spec."""
    path = out_dir / SPECS_DIR / f"{spec.spec_id}.json"
    if not path.is_file():
        results.atomic_write(path, lambda f: f.write(json.dumps(spec.to_dict(), indent=2)))
    return path


def cell_record(cell: Cell, table: pd.DataFrame, seconds: float, git: dict[str, Any],
                machine: dict[str, Any] | None, packages: dict[str, str] | None = None,
                kernel_settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """What ``cells.jsonl`` keeps of a finished cell whose rows are ``table``, made by the code
    of ``git`` (:func:`~harness.runs.provenance.git_commit`) with ``packages``
    (:func:`~harness.runs.provenance.package_versions`) on ``machine`` (the
    :func:`~harness.runs.provenance.device_record` of the device used; None for a cell whose job died unseen),
    its model's backend running ``kernel_settings`` in place of its config's (``LCModel.kernel_settings``;
    None where no model was made)."""
    not_ok = table[table["status"] != "ok"]
    return {"spec": cell.model.spec.spec_id, "run": cell.model.spec.name, "model": cell.model.label,
            "seed": cell.seed, "task": cell.task, "options": cell.options,
            "status": "failed" if len(not_ok) else "ok", "rows": len(table), "seconds": round(seconds, 2),
            "message": failure_summary(not_ok), "git": git, "machine": machine, "packages": packages,
            "kernel_settings": kernel_settings}


def cell_commits(records: Iterable[dict[str, Any] | None]) -> dict[str, int]:
    """How many of ``records`` (``cells.jsonl`` records; None for a cell not run) each commit made:
    ``sha``, or ``sha+dirty:DIFF`` (uncommitted edits, told apart by their hash; ``sha+dirty`` in
    records that name none), ``unknown`` where no commit was read, as for records written before
    cells named theirs."""
    def commit(record: dict[str, Any]) -> str:
        git = record.get("git") or {}
        dirty = "+dirty" + (f":{git['diff']}" if git.get("diff") else "") if git.get("dirty") else ""
        return (git.get("commit") or "unknown") + dirty
    return _count(records, commit)


def cell_packages(records: Iterable[dict[str, Any] | None]) -> dict[str, dict[str, int]]:
    """package -> {version: how many of ``records`` were made with it}, for the packages whose
    versions differ between records (``absent`` where a record lacks one); records that name no
    packages (a dead job's, or written before records named them) are left out."""
    named = [r["packages"] for r in records if r is not None and r.get("packages")]
    differ = sorted({name for p in named for name in p if len({q.get(name) for q in named}) > 1})
    return {name: _count(named, lambda p, name=name: p.get(name, "absent")) for name in differ}


def cell_machines(records: Iterable[dict[str, Any] | None]) -> dict[str, int]:
    """How many of ``records`` ran on each machine, named as the latency claims name it
    (:func:`~harness.api.machine.machine_names`: device and GPU, or CPU model, cores and ATen's
    CPU capability; ``unknown`` where the record names none)."""
    kept = [r for r in records if r is not None]
    named = machine_names([r["machine"] for r in kept if r.get("machine")])
    return _tally(named + ["unknown"] * (len(kept) - len(named)))


def _count(records: Iterable[dict[str, Any] | None], name: Callable[[dict[str, Any]], str]) -> dict[str, int]:
    return _tally([name(r) for r in records if r is not None])


def _tally(names: list[str]) -> dict[str, int]:
    return {n: names.count(n) for n in sorted(set(names))}


def failure_summary(not_ok: pd.DataFrame) -> str:
    """Why a cell's rows are not all ok: the first message, and how many rows failed of which status."""
    if not len(not_ok):
        return ""
    counts = ", ".join(f"{n} {status}" for status, n in not_ok["status"].value_counts().items())
    return f"{counts} row(s): {not_ok['message'].iloc[0]}"[:500]


def current_sample_files(out_dir: str | os.PathLike) -> list[Path] | None:
    """The sample files of the cells of the folder's last spec (``spec.json``), so readers skip
    samples of cells that an edited spec replaced; None when the folder is not a sweep, or its spec
    no longer loads or names none of its cells here (then every sample file counts)."""
    out_dir = Path(out_dir)
    if not (out_dir / SPEC_FILE).is_file():
        return None
    try:
        raw = json.loads((out_dir / SPEC_FILE).read_text())
        keys = finished_spec_keys(out_dir, raw)
        if keys is None:  # the spec did not finish here: plan it (this hashes its checkpoints and corpora)
            keys = [cell.key for cell in plan(SweepSpec.from_dict(raw, str(out_dir / SPEC_FILE)))]
    except (ConfigError, CheckpointError, ValueError):  # e.g. a given checkpoint moved away since
        return None
    if not set(keys) & ResultStore(out_dir).finished().keys():  # cells keyed by another lcbench version
        return None
    return [path for key in keys for path in [out_dir / SAMPLES_DIR / f"{key}.jsonl"] if path.is_file()]


def unfinished_cells(out_dir: str | os.PathLike) -> list[str]:
    """One line per cell of the folder's last spec (``spec.json``) that has no record yet: a sweep
    interrupted, or still running, left them. Empty for a folder that is no sweep, or whose spec
    no longer plans (a given checkpoint moved away): nothing to tell them by."""
    out_dir = Path(out_dir)
    if not (out_dir / SPEC_FILE).is_file():
        return []
    done = ResultStore(out_dir).finished()
    try:
        raw = json.loads((out_dir / SPEC_FILE).read_text())
        keys = finished_spec_keys(out_dir, raw)
        if keys is not None and all(key in done for key in keys):  # its last run finished every cell
            return []
        cells = plan(SweepSpec.from_dict(raw, str(out_dir / SPEC_FILE)))
    except (ConfigError, CheckpointError, ValueError):
        return []
    return [f"{cell.model.label} seed {cell.seed} / {cell.task} {cell.options}" for cell in cells if cell.key not in done]


def require_table(out_dir: str | os.PathLike) -> None:
    """:func:`results.check_table`, except that a sweep folder stopped before any cell finished says
    so, with the cells its spec plans and how to go on, rather than only that it has no table."""
    try:
        results.check_table(out_dir)
    except ConfigError:
        planned = unfinished_cells(out_dir)  # every cell of its spec when the folder has no record
        if not planned or ResultStore(out_dir).finished():  # not a sweep, or its table went missing
            raise
        raise ConfigError(f"no cell of the sweep in {str(out_dir)!r} has finished yet: its {SPEC_FILE} plans "
                          f"{len(planned)} cell(s), none with a result (interrupted or still running); rerun "
                          "the same sweep command to go on") from None


def finished_spec_keys(out_dir: Path, spec: dict[str, Any]) -> list[str] | None:
    """The cell keys ``run.json`` lists when the sweep that wrote it ran ``spec`` (else None)."""
    try:
        meta = read_run_json(out_dir)
    except (OSError, ValueError):
        return None
    return meta.get("cell_keys") if meta.get("spec") == spec else None


def describe_failures(out_dir: str | os.PathLike, keys: Iterable[str] | None = None) -> list[str]:
    """One line per failed cell of a sweep folder: of the cells ``keys`` (a spec's), else of all
    (superseded edits of a spec included)."""
    records = ResultStore(out_dir).finished()
    wanted = records if keys is None else {k: records[k] for k in keys if k in records}
    # the seed too: a spec's seeds gave identical lines
    return [f"{r['model']} seed {r.get('seed')} / {r['task']} {r['options']}: {r['message']}"
            for r in wanted.values() if r["status"] != "ok"]

