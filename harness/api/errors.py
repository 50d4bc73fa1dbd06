"""Errors a user can act on: each names the bad value, the valid choices and the close match."""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from pathlib import Path


class LcbenchError(Exception):
    """Base class for errors that the CLI prints without a traceback."""


class UnknownNameError(LcbenchError, KeyError):
    def __init__(self, kind: str, name: str, choices: Iterable[str], suggestion: str | None = None,
                 of: str | None = None):
        self.kind, self.name, self.choices = kind, name, sorted(choices)
        super().__init__(unknown_message(kind, name, self.choices, suggestion, of))

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class ConfigError(LcbenchError, ValueError):
    """A configuration value is out of range or inconsistent with another."""


class CheckpointError(LcbenchError):
    """A checkpoint is missing, corrupted or does not match the model."""


class BackendUnavailableError(LcbenchError, RuntimeError):
    """A kernel backend was forced but cannot run here."""


class DistributedError(RuntimeError):
    """A run on many processes cannot go on: another rank died (failed work, not bad input)."""


def close_match(name: str, choices: Iterable[str], cutoff: float = 0.5) -> str | None:
    # str(): a name from Python or a parsed file may be a number, which difflib cannot compare
    matches = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=cutoff)
    return matches[0] if matches else None


def unknown_message(kind: str, name: str, choices: Iterable[str], suggestion: str | None = None,
                    of: str | None = None) -> str:
    """``suggestion``: the caller's own guess (an alias such as 'gpu' for 'cuda'), else the closest spelling.
    ``of``: what the name belongs to ("task 'niah'"), said after the bad name so that it stays the first quoted."""
    choices = sorted(choices)
    owner = f" of {of}" if of else ""
    msg = f"unknown {kind} {name!r}{owner}; valid: {', '.join(choices) if choices else '(none registered)'}"
    suggestion = suggestion or close_match(name, choices)
    if suggestion is not None:
        msg += f". Did you mean {suggestion!r}?"
    return msg


def divisors(n: int) -> list[int]:
    """The valid choices when a value must divide ``n`` (heads of a width, groups of heads)."""
    return [d for d in range(1, n + 1) if n % d == 0]


def check_choice(kind: str, value: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    if value not in choices:
        raise ConfigError(unknown_message(kind, value, choices))
    return value


def listing(folder: Path, limit: int = 20) -> str:
    try:
        names = sorted(e.name + ("/" if e.is_dir() else "") for e in folder.iterdir())
    except OSError:
        return "(cannot be listed)"
    if not names:
        return "(empty)"
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def missing_path_error(kind: str, path: Path, valid: str, names: Sequence[str] = ()) -> ConfigError:
    """``path`` is not there: what is valid, what its folder holds, and the close match, first
    among ``names`` (sources given by name, e.g. 'stdlib': a bare misspelt name reads as a path)."""
    msg = f"{kind} {str(path)!r} does not exist; valid: {valid}"
    parent = path.parent
    if not parent.is_dir():
        while not parent.is_dir() and parent != parent.parent:
            parent = parent.parent
        return ConfigError(f"{msg}. Its folder does not exist either; the nearest that does is {str(parent)!r}")
    msg += f". {str(parent)!r} holds: {listing(parent)}"
    named = close_match(str(path), names) if len(path.parts) == 1 else None
    if named is not None:
        return ConfigError(f"{msg}. Did you mean {named!r}?")
    try:  # a hidden entry (.git) only when a hidden name was asked for: "gpt2" is no typo of ".git"
        suggestion = close_match(path.name, [e.name for e in parent.iterdir()
                                             if path.name.startswith(".") or not e.name.startswith(".")])
    except OSError:
        suggestion = None
    if suggestion is not None:
        msg += f". Did you mean {str(parent / suggestion)!r}?"
    return ConfigError(msg)
