"""Type checks for config dataclasses built from user input (spec files, --set, config.json).

A dataclass does not check its annotations, so ``window="abc"`` or ``steps="five"`` would be
stored and fail later with a traceback deep inside a model, or ``window=1.5`` would be saved as
if it were valid. :func:`check_fields` refuses such values up front with one line naming the
field, the value and the expected type. Numbers must be finite: NaN or infinity is never a
meaningful setting.
"""
from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from typing import Any

from harness.api.errors import ConfigError


def type_problem(value: Any, hint: Any) -> str | None:
    """Why ``value`` does not fit the annotation ``hint`` (None if it fits or the hint is not one
    of the plain kinds checked here: bool, int, float, str, lists, tuples, dicts, unions)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or isinstance(hint, typing.TypeVar):
        return None
    if origin in (typing.Union, types.UnionType):
        problems = [type_problem(value, a) for a in args]
        return None if any(p is None for p in problems) else " or ".join(str(p) for p in problems)
    if hint is type(None):
        return None if value is None else "None"
    if origin is typing.Literal:
        return None if value in args else " | ".join(repr(a) for a in args)
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "a number"
        return None if math.isfinite(value) else "a finite number"
    if hint is str:
        return None if isinstance(value, str) else "a string"
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return f"a list{' of ' + _name(args[0]) if args else ''}"
        item = args[0] if args and (origin is list or (len(args) == 2 and args[1] is Ellipsis)) else None
        if item is not None:
            for v in value:
                if type_problem(v, item) is not None:
                    return f"a list of {_name(item)}"
        return None
    if origin is dict or hint is dict:
        return None if isinstance(value, Mapping) else "a mapping"
    return None


def as_annotated(value: Any, hint: Any) -> Any:
    """``value`` with a list made a tuple where ``hint`` is a tuple (or a union holding one): JSON
    and YAML have lists only, and a config read back from its file must equal the one that wrote it;
    and an integer made a float where ``hint`` is a float (or ``float | None``): ``lr: 1`` is
    ``lr: 1.0``, and the two must hash as one setting (sweep cells, checkpoint folders)."""
    origin = typing.get_origin(hint)
    floats = hint is float or (origin in (typing.Union, types.UnionType)
                               and [a for a in typing.get_args(hint) if a is not type(None)] == [float])
    if floats and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    tuple_hint = hint is tuple or origin is tuple or (
        origin in (typing.Union, types.UnionType) and any(a is tuple or typing.get_origin(a) is tuple
                                                          for a in typing.get_args(hint)))
    return tuple(value) if tuple_hint and isinstance(value, list) else value


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def field_hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass ({} when they cannot be resolved, e.g. a plugin's
    forward reference: such a class is then not checked rather than refused)."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolvable annotations: nothing to check against
        return {}


def check_fields(cls: type, values: Mapping[str, Any], where: str) -> None:
    """Raise :class:`ConfigError` for the first value in ``values`` that does not fit its field's
    annotation in dataclass ``cls``: ``"TrainConfig.steps must be an integer, got 'five'"``."""
    hints = field_hints(cls)
    for name, value in values.items():
        if name in hints:
            expected = type_problem(value, hints[name])
            if expected is not None:
                raise ConfigError(f"{where}.{name} must be {expected}, got {value!r}")
