"""Output folders: checked for writing before work starts, and cleared of what killed saves left.

Every atomic save (a checkpoint folder, a table, a JSON file) writes a temporary sibling named
``.NAME.tmp-PID@HOST-XXXXXXXX`` and renames it into place. A kill -9 leaves that sibling behind;
:func:`clear_stale` removes the ones whose owner process is gone, and puts back a replaced
folder whose replace was killed between its two renames. Only this host's are judged (a
process on another machine sharing the folder cannot be checked) and never one of a live process.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.api.errors import ConfigError

_HOST = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"
# mkdtemp/mkstemp add 8 characters of [a-z0-9_]; a replaced checkpoint is first renamed to NAME.old
_STAGED = re.compile(r"^\.(?P<target>.*)\.tmp-(?P<pid>\d+)@(?P<host>.+)-[a-z0-9_]{8}(?P<old>\.old)?$")


def safe_name(text: str) -> str:
    """``text`` as a file or folder name: every character but letters, digits, ``-``, ``_`` and ``.`` as ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def temp_prefix(target: Path) -> str:
    """The prefix of a temporary sibling of ``target``: it names its owner (process and host)."""
    return f".{target.name}.tmp-{os.getpid()}@{_HOST}-"


def own_files(folder: Path, names: list[str]) -> list[Path]:
    """The files a record in ``folder`` lists by ``names`` that a removal may touch: plain files
    directly in ``folder``. A hand-edited record's ``../x``, absolute path, folder or link is
    left out, so removing "what lcbench wrote" never reaches outside the folder."""
    plain = [folder / n for n in names if n and n not in (".", "..") and Path(n).name == n]
    return [p for p in plain if p.is_file() and not p.is_symlink()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clear_stale(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings in ``folder`` that a process of this host, now gone, left
    (files or folders); returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir(), key=lambda p: not p.name.endswith(".old")):  # .old first: see _put_back
        found = _STAGED.match(entry.name)
        if not found or found["host"] != _HOST or not os.path.lexists(entry) or _alive(int(found["pid"])):
            continue
        if found["old"] and _put_back(entry, folder / found["target"]):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _put_back(old: Path, target: Path) -> bool:
    """A folder replace killed between its two renames (``target`` -> ``STAGED.old``, then
    ``STAGED`` -> ``target``) left no ``target``: move the new folder in (it is renamed only once
    complete), else the old one back. False when ``target`` is in place (nothing to put back)."""
    if target.exists():
        return False
    new = old.with_name(old.name.removesuffix(".old"))
    try:
        if new.is_dir():
            os.replace(new, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, target)
    except FileNotFoundError:  # another process (a rank of the same run) put it back first
        pass
    return True


def ensure_writable(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Create ``folder`` (and its parents) and prove a file can be written in it, else raise a
    one-line :class:`ConfigError`. A real write, not a permission check: root passes every
    permission check yet cannot write below a regular file, on a read-only or full file system."""
    folder = check_not_under_file(folder, what)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write the {what} {str(folder)!r}: {exc.strerror or exc}") from exc
    return folder


@contextmanager
def made_for_results(folder: str | os.PathLike, what: str = "output folder") -> Iterator[Path]:
    """:func:`prepare_output` around work that writes its results at the end: if the work fails,
    the folders made for it are removed again while still empty (a bad model name left an empty
    run folder that looked like a run), and a folder that existed before is left as it was."""
    folder = Path(folder)
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    path = prepare_output(folder, what)
    try:
        yield path
    except BaseException:
        for p in made:
            try:
                p.rmdir()  # only an empty folder: whatever the work wrote stays
            except OSError:
                break
        raise


def check_not_under_file(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """``folder``, unless it or a folder above it is a regular file: a one-line :class:`ConfigError`."""
    folder = Path(folder)
    blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ConfigError(f"cannot write the {what} {str(folder)!r}: {str(blocker)!r} is a file, not a folder")
    return folder


def prepare_output(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """:func:`ensure_writable`, then :func:`clear_stale` in ``folder`` and its subfolders (a
    run's tables, cells and checkpoints): where every command that writes results starts."""
    folder = ensure_writable(folder, what)
    for sub in (folder, *(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))):
        clear_stale(sub)
    return folder


@contextmanager
def exclusive(lock_file: str | os.PathLike, waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_file`` (made if missing) for the block, blocking while
    another process holds it; ``waiting`` is called once first when it must wait. The kernel
    drops the lock of a process that dies, so a kill leaves nothing to clean up."""
    Path(lock_file).parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                waiting()
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
