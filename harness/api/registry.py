"""Name -> architecture and name -> task registries.

Architectures and tasks register themselves with ``@register_model(name)`` /
``@register_task(name)``. Nothing in harness imports them: built-ins and third-party plugins
alike are found through the entry-point groups ``lcbench.models`` and ``lcbench.tasks``,
loaded once, here, on the first lookup.
"""
from __future__ import annotations

import logging
import warnings
from importlib.metadata import entry_points
from typing import Any, Callable, TypeVar

import torch

from harness.api.errors import ConfigError, UnknownNameError
from harness.api.interface import LCModel, ModelConfig
from harness.api.kernels import Kernel

MODEL_GROUP = "lcbench.models"
TASK_GROUP = "lcbench.tasks"

_MODELS: dict[str, type[LCModel]] = {}
_TASKS: dict[str, Any] = {}
_loaded_groups: set[str] = set()
# group -> entry-point name -> why its module failed to import: a lookup of that name says so
_broken: dict[str, dict[str, str]] = {}
log = logging.getLogger(__name__)

T = TypeVar("T")


def register_in(table: dict[str, Any], kind: str, name: str) -> Callable[[T], T]:
    """A decorator putting its object in ``table`` under ``name``; re-registering the same object
    (a module imported twice) is fine, another object under a taken name an error."""
    def decorator(obj: T) -> T:
        existing = table.get(name)
        if existing is not None and existing is not obj and _qualname(existing) != _qualname(obj):
            raise ValueError(f"{kind} {name!r} is already registered by {_qualname(existing)}")
        table[name] = obj
        return obj

    return decorator


def _qualname(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def register_model(name: str) -> Callable[[type[LCModel]], type[LCModel]]:
    def decorator(cls: type[LCModel]) -> type[LCModel]:
        if "tiny" not in cls.presets:
            raise ValueError(f"architecture {name!r} must define a 'tiny' preset")
        cls.arch_name = name
        return register_in(_MODELS, "model", name)(cls)

    return decorator


def register_task(name: str) -> Callable[[T], T]:
    return register_in(_TASKS, "task", name)


def load_plugins(group: str) -> None:
    """Import every module advertised under an entry-point group (once per process)."""
    if group in _loaded_groups:
        return
    _loaded_groups.add(group)
    for ep in entry_points(group=group):
        try:
            ep.load()
        except Exception as exc:  # a broken plugin must not hide the others
            _broken.setdefault(group, {})[ep.name] = (f"plugin {ep.value}, which failed to load "
                                                      f"({type(exc).__name__}: {exc})")
            warnings.warn(f"could not load {group} plugin {ep.name!r} ({ep.value}): {exc}", stacklevel=2)


def reload_plugins() -> None:
    """Forget which groups were loaded (tests install plugins at run time)."""
    _loaded_groups.clear()
    _broken.clear()


def broken_plugin(group: str, name: str) -> str | None:
    """Why ``name`` is missing, when a plugin advertised it under ``group`` and failed to load."""
    load_plugins(group)
    reason = _broken.get(group, {}).get(name)
    kind = "architecture" if group == MODEL_GROUP else "task"
    return None if reason is None else f"{kind} {name!r} comes from {reason}; fix or uninstall the plugin"


def _unknown(group: str, kind: str, name: str, table: dict[str, Any]) -> Exception:
    note = broken_plugin(group, name)
    return ConfigError(note) if note else UnknownNameError(kind, name, table)


def model_names() -> list[str]:
    load_plugins(MODEL_GROUP)
    return sorted(_MODELS)


def task_names() -> list[str]:
    load_plugins(TASK_GROUP)
    return sorted(_TASKS)


def get_model_class(name: str) -> type[LCModel]:
    load_plugins(MODEL_GROUP)
    if name not in _MODELS:
        raise _unknown(MODEL_GROUP, "architecture", name, _MODELS)
    return _MODELS[name]


def get_task(name: str) -> Any:
    load_plugins(TASK_GROUP)
    if name not in _TASKS:
        raise _unknown(TASK_GROUP, "task", name, _TASKS)
    return _TASKS[name]


def preset_names(arch: str) -> list[str]:
    return list(get_model_class(arch).presets)


def model_kernels() -> dict[str, tuple[Kernel, ...]]:
    """Each registered architecture's optional kernel backends (``LCModel.kernels``)."""
    return {arch: get_model_class(arch).kernels for arch in model_names()}


def make_config(arch: str, preset: str = "tiny", **overrides: Any) -> ModelConfig:
    cls = get_model_class(arch)
    if preset not in cls.presets:
        raise UnknownNameError("preset", preset, cls.presets, of=repr(arch))
    fields = {**cls.presets[preset], **overrides, "arch": arch}
    return cls.config_class.from_dict(fields)


def config_from_dict(data: dict[str, Any]) -> ModelConfig:
    if "arch" not in data:
        raise ConfigError("model config has no 'arch' field; it cannot be rebuilt")
    return get_model_class(data["arch"]).config_class.from_dict(data)


def build_model(config: ModelConfig) -> LCModel:
    return get_model_class(config.arch)(config)


def check_buildable(config: ModelConfig) -> None:
    """Build the model of ``config`` on the meta device (no memory, no initialisation), so that
    what only its constructor refuses (``full_attention`` given a window) fails before any work.
    A constructor that the meta device cannot run (one reading a tensor's values) is left to the
    real build."""
    try:
        with torch.device("meta"):
            build_model(config)
    except (RuntimeError, NotImplementedError):
        pass


def create_model(arch: str, preset: str = "tiny", **overrides: Any) -> LCModel:
    return build_model(make_config(arch, preset, **overrides))
