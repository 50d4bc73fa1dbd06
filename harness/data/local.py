"""Local inputs: nothing is downloaded, so a missing optional package is a usual failure (a wrong
path's error is :func:`harness.api.errors.missing_path_error`), and files are known by their bytes."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.api.errors import ConfigError


def missing_package(package: str, what: str) -> ConfigError:
    return ConfigError(f"{what} needs the {package!r} package, which is not installed; pip install {package}")


def hash_file(digest: Any, name: str, file: Path) -> None:
    """Feed ``name``, a NUL and the bytes of ``file`` into ``digest`` (a :mod:`hashlib` object)."""
    digest.update(name.encode() + b"\0")
    with open(file, "rb") as f:
        while chunk := f.read(1 << 22):  # large corpora are hashed without being held in memory
            digest.update(chunk)
