"""The names lm-eval's tasks go by (tasks, groups and tags), read from the text of its task YAMLs.

lm-eval's ``TaskManager`` parses every task file it ships (about 14,000, with their includes) before
it can say whether a name exists: 17-35 s on two busy cores, and a misspelt ``--tasks`` waited for
that, and for the model to load, before its error. Reading the same files as text for their
top-level ``task:``, ``group:`` and ``tag:`` values, following ``include:`` as lm-eval does, takes
about 2 s and finds every name the index holds (and a few it drops, from files it cannot parse): a
name not found here is unknown to lm-eval too. A name found here is checked again against the
index before it runs.
"""
from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

import yaml

from harness.api.errors import ConfigError, close_match

# a top-level key, quoted or not, with its value: a scalar or flow list on its line, or a block list below it
_KEY = re.compile(rb"^([\x27\x22]?)(task|group|tag|include)\1:[ \t]*([^\n]*)((?:\r?\n[ \t]*-[^\n]*)*)", re.M)
_NAME = re.compile(r"[^\s'\"#,\[\]{}:][^\s'\"#,\[\]{}]*")
_IGNORED_DIRS = {"__pycache__", ".ipynb_checkpoints"}  # as lm-eval's index


def builtin_tasks_folder() -> Path:
    """lm-eval's own task folder, found without importing lm-eval."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("lm-eval is not installed; install lcbench's lm-eval extra")
    return Path(next(iter(spec.submodule_search_locations))) / "tasks"


def _values(line: bytes, block: bytes) -> list[str]:
    """The names a key gives: its line's value (``x``, ``"x"``, ``[x, y]``) and its block list's items;
    an item that is a mapping (``- task: x``, a group's inline task) names nothing one can ask for."""
    out = _NAME.findall(line.decode(errors="replace").split(" #")[0])
    for item in block.decode(errors="replace").splitlines():
        item = item.strip()[1:].split(" #")[0]
        if ":" not in item:
            out += _NAME.findall(item)
    return out


def _names_in(path: Path, seen: set[Path]) -> set[str]:
    """The names ``path`` and the files it includes give (each file read once: ``seen``)."""
    if path in seen or not path.is_file():
        return set()
    seen.add(path)
    names: set[str] = set()
    for match in _KEY.finditer(path.read_bytes()):
        values = _values(match.group(3), match.group(4))
        if match.group(2) == b"include":
            for included in values:  # relative to the including file's folder, as lm-eval resolves them
                names |= _names_in(Path(os.path.normpath(path.parent / included)), seen)
        else:
            names.update(values)
    return names


def task_names(folders: Iterable[str | os.PathLike]) -> set[str]:
    """Every task, group and tag name that the task YAMLs under ``folders`` define."""
    names: set[str] = set()
    seen: set[Path] = set()
    for folder in folders:
        for root, dirs, files in os.walk(folder, followlinks=True):
            dirs[:] = [d for d in dirs if d not in _IGNORED_DIRS]
            for name in files:
                if name.endswith(".yaml"):
                    names |= _names_in(Path(root, name), seen)
    return names


def known_task_names(tasks: Sequence[str], include: Sequence[str | os.PathLike] | None = None) -> set[str]:
    """The names lm-eval knows that ``tasks`` are checked against: those in ``include`` (folders
    of the user's own YAMLs) first, and lm-eval's own only when some task is not among them."""
    names = task_names(include or [])
    if all(task in names or Path(task).is_file() for task in tasks):
        return names
    return names | task_names([builtin_tasks_folder()])


def _yaml_error(path: Path) -> str:
    """Why ``path`` is not YAML (empty when it parses); lm-eval's own tags (``!function``) read as null."""
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    try:
        yaml.load(path.read_bytes(), Loader=Loader)
    except yaml.YAMLError as exc:
        return " ".join(str(exc).split())
    return ""


def files_naming(task: str, folders: Iterable[str | os.PathLike]) -> list[Path]:
    """The task YAMLs under ``folders`` whose text (or a file they include) names ``task``."""
    return sorted(Path(root, name) for folder in folders for root, dirs, files in os.walk(folder, followlinks=True)
                  if not any(part in _IGNORED_DIRS for part in Path(root).parts)
                  for name in files if name.endswith(".yaml") and task in _names_in(Path(root, name), set()))


def check_task_names(tasks: Sequence[str], known: Collection[str],
                     include: Sequence[str | os.PathLike] | None = None) -> None:
    """A task name lm-eval does not know (nor a task YAML's path, which lm-eval also takes) is bad
    input, not a task that failed: one error naming it and the close match. ``known`` from lm-eval's
    index: a name that a file in ``include`` gives but the index dropped (a file lm-eval could not
    parse) is named with that file and its YAML error."""
    for task in tasks:
        if task not in known and not Path(task).is_file():
            named_in = files_naming(task, include or [])
            if named_in:  # said "unknown lm-eval task" with a close match from another file
                error = _yaml_error(named_in[0])
                raise ConfigError(f"lm-eval task {task!r} is named in {str(named_in[0])!r}, which lm-eval could not read"
                                  + (f": {error}" if error else " (a key or value its task config refuses)"))
            hint = close_match(task, known)
            raise ConfigError(f"unknown lm-eval task {task!r}" + (f"; did you mean {hint!r}?" if hint else "")
                              + " (`lm-eval ls tasks` lists the known ones; --include-path adds folders of task YAMLs)")
