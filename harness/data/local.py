"""Clear errors about local inputs: nothing is downloaded, so a wrong path or a missing optional
package is the usual failure, and the message shows what is there instead."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.api.errors import ConfigError, close_match


def missing_package(package: str, what: str) -> ConfigError:
    return ConfigError(f"{what} needs the {package!r} package, which is not installed; pip install {package}")


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


def hash_file(digest: Any, name: str, file: Path) -> None:
    """Feed ``name``, a NUL and the bytes of ``file`` into ``digest`` (a :mod:`hashlib` object)."""
    digest.update(name.encode() + b"\0")
    with open(file, "rb") as f:
        while chunk := f.read(1 << 22):  # large corpora are hashed without being held in memory
            digest.update(chunk)
