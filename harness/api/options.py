"""Task options: a dataclass of settings per task, parsed from CLI strings or Python values.

``option(default, help)`` declares a field with its one-line help; :func:`parse_options` builds
the dataclass from raw values, converting strings to the field's type (``"1024,2K,4K"`` ->
``[1024, 2048, 4096]``) and naming unknown options with the close match;
:func:`describe_options` lists them for the CLI.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import math
import numbers
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import field
from typing import Any

from harness.api.errors import ConfigError, check_choice, unknown_message


def option(default: Any, help: str = "") -> Any:
    """A task option: its default and a one-line description (shown by the CLI)."""
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def convert_value(value: Any, hint: Any, name: str) -> Any:
    """``value`` (a CLI string or a Python value) as type ``hint``; a bad value is a ConfigError
    naming the option."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return convert_value(value, inner[0], name) if len(inner) == 1 else value
    if origin is typing.Literal:
        return _literal(value, args, name)
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        item = args[0] if args else str
        if isinstance(value, str):
            value = split_items(value, name)
        elif not isinstance(value, (list, tuple)):
            value = [value]
        return [convert_value(v, item, name) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ConfigError(f"option {name!r} must be true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"option {name!r} must be a number, got {value!r}")
        try:
            number = float(value) if hint is float else whole_number(value)
        except (TypeError, ValueError):
            raise ConfigError(f"option {name!r} must be {'an integer' if hint is int else 'a number'}, got {value!r}") from None
        if not math.isfinite(number):  # as for config fields: NaN or infinity is never a setting
            raise ConfigError(f"option {name!r} must be a finite number, got {value!r}")
        return number
    if hint is str:
        return str(value)
    return value


def split_items(text: str, name: str, example: str = "1K,4K") -> list[str]:
    """The comma-separated items of ``text`` (none for an empty text), for option ``name``. An empty
    item is refused: ``8K,,16K`` is more likely a value deleted by mistake than a list of two."""
    items = [p.strip() for p in text.split(",")] if text.strip() else []
    if "" in items:
        raise ConfigError(f"option {name!r} has an empty item in {text!r}; give comma-separated values, e.g. {example}")
    return items


def _literal(value: Any, choices: tuple[Any, ...], name: str) -> Any:
    """The one of a ``Literal``'s ``choices`` that ``value`` spells (``"2"`` is ``Literal[1, 2]``'s 2)."""
    spelled = {str(c): c for c in choices}
    return spelled[check_choice(f"value of option {name!r}", str(value).strip(), spelled)]


def whole_number(value: Any) -> int:
    """``value`` as a whole number (``"2K"``: 2048, ``"1M"``: 1024²), else ValueError. Whole numbers are taken
    exactly: through a float, a large seed came back as another number."""
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, str):
        text = value.strip().lower()
        scale = 1
        if text.endswith("k"):
            text, scale = text[:-1], 1024
        elif text.endswith("m"):
            text, scale = text[:-1], 1024 * 1024
        try:
            return int(text) * scale
        except ValueError:  # "1.5K", "1e3": a whole number only after scaling or in float notation
            number = float(text) * scale
    else:
        number = float(value)
    if not math.isfinite(number) or number != int(number):
        raise ValueError(value)
    return int(number)


def parse_assignments(pairs: Iterable[str], option: str, form: str = "key=value", as_json: bool = True) -> dict[str, Any]:
    """``key=value`` pairs as a command line gives them to ``option`` (``--set``, ``-o``); with
    ``as_json`` a value is parsed as JSON when it can be (numbers, booleans, lists), else kept as
    text. A key given twice is refused: the last value silently replaced the first."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise ConfigError(f"{option} takes {form}, got {pair!r}")
        if key in out:
            raise ConfigError(f"{option} gives {key!r} twice ({key}={out[key]!r} and {pair!r}); give it once")
        try:
            out[key] = json.loads(value) if as_json else value
        except ValueError:  # not JSON (nor NaN or Infinity): a string
            out[key] = value
    return out


def parse_options(options_class: type, raw: Mapping[str, Any] | None, task: str = "task") -> Any:
    """An ``options_class`` instance from ``raw`` (CLI strings or Python values).

    Unknown names raise a :class:`ConfigError` listing the valid ones with the close match;
    strings are converted to the field's type (``"1024,2K,4K"`` -> ``[1024, 2048, 4096]``)."""
    raw = dict(raw or {})
    fields = {f.name: f for f in dataclasses.fields(options_class)}
    hints = typing.get_type_hints(options_class)
    for key in raw:
        if key not in fields:
            raise ConfigError(unknown_message("option", key, fields, of=f"task {task!r}"))
    values = convert_options(raw, hints, task)
    try:
        return options_class(**values)
    except TypeError as exc:
        raise ConfigError(f"bad options for task {task!r}: {exc}") from exc


def convert_options(raw: Mapping[str, Any], hints: Mapping[str, Any], task: str) -> dict[str, Any]:
    """``raw`` with each value of a known type (``hints``) converted to it; a bad value names the
    task as well as the option (a spec holds several tasks)."""
    try:
        return {key: convert_value(value, hints[key], key) if key in hints else value for key, value in raw.items()}
    except ConfigError as exc:
        raise ConfigError(f"task {task!r}: {exc}") from None


def function_hints(fn: Any) -> dict[str, Any]:
    """The types of a function task's options: its annotations, else the type of its defaults
    (``scale=1.0`` is a float, ``contexts=(8, 16)`` a list of ints); options of no known type
    are passed on as given."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an annotation that does not resolve: fall back on the defaults
        hints = {}
    for name, param in inspect.signature(fn).parameters.items():
        if name not in hints and param.default is not inspect.Parameter.empty:
            hint = _hint_of(param.default)
            if hint is not None:
                hints[name] = hint
    return hints


def _hint_of(default: Any) -> Any:
    for kind in (bool, int, float, str):  # bool first: True is an int too
        if isinstance(default, kind):
            return kind
    if isinstance(default, (list, tuple)) and default:
        kinds = {_hint_of(item) for item in default}
        if len(kinds) == 1 and None not in kinds:
            return list[kinds.pop()]
    return None


def describe_options(options_class: type) -> list[dict[str, Any]]:
    """name, type, default and help of every option (for the CLI and the docs)."""
    hints = typing.get_type_hints(options_class)
    out = []
    for f in dataclasses.fields(options_class):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out.append({"name": f.name, "type": _type_name(hints[f.name]), "default": default,
                    "help": f.metadata.get("help", "")})
    return out


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def check_positive(name: str, values: Iterable[int | float], allow_zero: bool = False) -> None:
    values = list(values)
    if not values:  # an empty grid measures nothing; later code indexes its first and last
        raise ConfigError(f"option {name!r} must hold at least one value, got none")
    for v in values:
        # NaN passes both comparisons below; infinity is no count or rate either
        if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
            raise ConfigError(f"option {name!r} must hold finite {'non-negative' if allow_zero else 'positive'} "
                              f"values, got {v!r}")
