"""Corpora: documents of text from the embedded default or from local files.

- :func:`embedded_corpus`: the running interpreter's standard library, one document per package;
- :func:`load_corpus`: user text files, folders, JSONL, Parquet and local ``datasets`` folders.
"""
from __future__ import annotations

import codecs
import hashlib
import json
import re
import sys
import warnings
import sysconfig
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from harness.api.errors import ConfigError, close_match, missing_path_error
from harness.data.local import hash_file, missing_package


@dataclass(frozen=True)
class Document:
    name: str
    text: str


# -- the embedded default corpus --------------------------------------------------------------

# The stdlib's own test suite (``test``) is left out: it is over half of the stdlib's bytes, so as
# one document it would dominate whichever side of the split it fell on; it holds deliberately
# odd files (non-UTF-8 encodings, bad syntax); and distributions often ship it separately or not
# at all (Debian's libpython3-testsuite, slim images), so keeping it would make the default corpus
# differ more between machines than it must.
_EXCLUDED_PACKAGES = frozenset({"test", "site-packages"})
STDLIB_SOURCE = "stdlib"


def _stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_description() -> str:
    return f"stdlib (Python {sys.version.split()[0]}, {_stdlib_dir()})"


_REPLACEMENT = "\ufffd"
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # in a str: half a pair (a whole pair is one code point)


# UTF-32 first: its little-endian mark starts with UTF-16's. A UTF-8 mark is left as UTF-8 reads it.
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def _encoding(head: bytes) -> str:
    """UTF-16/UTF-32 by a file's byte-order mark (Windows editors save "Unicode" text so), else UTF-8."""
    return next((name for bom, name in _BOMS if head.startswith(bom)), "utf-8")


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    return data.decode(_encoding(data), errors="replace")  # the utf-16/utf-32 codecs drop the mark


def _concat_files(root: Path, files: list[Path]) -> str:
    parts = []
    for file in sorted(files, key=lambda f: f.relative_to(root).as_posix()):
        text = _read_text(file)
        if text and not text.endswith("\n"):
            text += "\n"
        parts.append(f"# file: {file.relative_to(root).as_posix()}\n{text}")
    return "".join(parts)


@lru_cache(maxsize=1)
def _embedded() -> tuple[Document, ...]:
    root = _stdlib_dir()
    if not root.is_dir():
        raise ConfigError(f"the standard library folder {str(root)!r} does not exist; pass a corpus path instead")
    docs: list[tuple[str, str]] = []
    groups: dict[str, list[Path]] = {}
    for entry in root.iterdir():
        if entry.is_file() and entry.suffix == ".py":
            # Top-level modules, grouped by first letter (leading underscores ignored), so that
            # e.g. `typing.py`, `tarfile.py` and `threading.py` form the document "toplevel/t".
            groups.setdefault(entry.name.lstrip("_")[:1].lower() or "_", []).append(entry)
        elif entry.is_dir() and entry.name not in _EXCLUDED_PACKAGES and (entry / "__init__.py").is_file():
            # A package: every .py below it (subpackages included), skipping __pycache__.
            files = [f for f in entry.rglob("*.py") if "__pycache__" not in f.parts and f.is_file()]
            docs.append((entry.name, _concat_files(root, files)))
    docs += [(f"toplevel/{letter}", _concat_files(root, files)) for letter, files in groups.items()]
    return tuple(Document(name, text) for name, text in sorted(docs))


def embedded_corpus() -> list[Document]:
    """The default corpus: this interpreter's standard library source, read once per process.

    One document per top-level package (its ``.py`` files, subpackages included, concatenated in
    sorted path order, each preceded by a ``# file: relative/path.py`` line). Top-level
    single-file modules are grouped by their first letter (leading ``_`` ignored) into documents
    named ``toplevel/a`` ... ``toplevel/z``: one document per module would make hundreds of tiny
    ones, and one for all of them a single outsized one. Skipped: ``site-packages``,
    ``__pycache__``, non-``.py`` files, folders that are not packages (``lib-dynload``,
    ``config-*``), and the ``test`` package (see ``_EXCLUDED_PACKAGES``). Sorted by name.
    The corpus depends on the interpreter: :func:`corpus_report` names the version and folder.
    """
    return list(_embedded())


def describe_documents(docs: Sequence[Document]) -> str:
    """Where ``docs`` came from, as far as can be told: the interpreter and folder of the embedded
    corpus, else ``(given documents)``."""
    is_stdlib = _embedded.cache_info().currsize > 0 and tuple(docs) == _embedded()
    return _stdlib_description() if is_stdlib else "(given documents)"


# -- user corpora -----------------------------------------------------------------------------

_TEXT_SUFFIXES = (".txt", ".md")
_RECORD_SUFFIXES = (".jsonl", ".parquet")
_CORPUS_VALID = (
    f"{STDLIB_SOURCE!r}, a .txt/.md file, a .jsonl or .parquet file, "
    "a folder of text files, or a `datasets` save_to_disk folder"
)


FIELD_MARK = "#"  # a corpus source PATH#FIELD: its records' text is in FIELD (default "text")


class TextFieldError(ConfigError):
    """Records without the text field; ``suggestion`` is the close match among their fields."""

    def __init__(self, message: str, suggestion: str | None = None):
        super().__init__(message)
        self.suggestion = suggestion


def _field_error(field: str, where: str, present: Sequence[str]) -> TextFieldError:
    msg = f"text field {field!r} not found in {where}; fields there: {', '.join(map(str, present)) or '(none)'}"
    suggestion = close_match(field, [str(p) for p in present])
    if suggestion is not None:
        msg += f". Did you mean text field {suggestion!r}?"
    return TextFieldError(msg, suggestion)


def source_path(source: str) -> tuple[Path, str | None]:
    """(path, text field or None) of a corpus source: ``PATH#FIELD`` names the field that holds the
    text of JSONL, Parquet and ``datasets`` records. A path that exists as given (a file whose name
    holds ``#``) is read as it is."""
    path = Path(source).expanduser()
    base, mark, field = source.rpartition(FIELD_MARK)
    if mark and base and field and not path.exists():
        return Path(base).expanduser(), field
    return path, None


def _documents(prefix: str, texts: Sequence[Any], where: str, field: str) -> list[Document]:
    """One document per non-null value of a record column, named ``prefix + row``."""
    docs = []
    for row, text in enumerate(texts):
        if text is None:
            continue
        if not isinstance(text, str):
            raise ConfigError(f"{where} row {row}: field {field!r} is not a string but {type(text).__name__}")
        docs.append(Document(f"{prefix}{row}", text))
    return docs


def _load_jsonl(path: Path, field: str, prefix: str) -> list[Document]:
    docs = []
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise ConfigError(f"{str(path)!r} line {lineno} is not valid JSON: {exc}") from exc
            if not isinstance(record, dict):
                raise ConfigError(f"{str(path)!r} line {lineno} is a JSON {type(record).__name__}, not an object")
            if field not in record:
                raise _field_error(field, f"{str(path)!r} line {lineno}", list(record))
            text = record[field]
            if text is None:
                continue
            if not isinstance(text, str):
                raise ConfigError(
                    f"{str(path)!r} line {lineno}: field {field!r} is not a string but {type(text).__name__}"
                )
            if "\\ud" in line or "\\uD" in line:  # JSON can escape half a surrogate pair (an emoji cut in two),
                text = _LONE_SURROGATE.sub(_REPLACEMENT, text)  # which no UTF-8 tokenizer encodes
            docs.append(Document(f"{prefix}:{lineno}", text))
    return docs


def _load_parquet(path: Path, field: str, prefix: str) -> list[Document]:
    import pyarrow.parquet as pq  # slow to import; only Parquet corpora need it

    try:
        names = pq.read_schema(path).names
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"{str(path)!r} is not a readable Parquet file: {exc}") from exc
    if field not in names:
        raise _field_error(field, f"{str(path)!r}", names)
    column = pq.read_table(path, columns=[field]).column(field).to_pylist()
    return _documents(f"{prefix}:", column, repr(str(path)), field)


def _is_datasets_folder(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "dataset_info.json").is_file() and (path / "state.json").is_file()
    )


def _load_datasets_folder(path: Path, field: str) -> list[Document]:
    try:
        import datasets  # optional: only `datasets` folders need it
    except ImportError:
        raise missing_package("datasets", f"corpus {str(path)!r} (a `datasets` save_to_disk folder)") from None
    loaded = datasets.load_from_disk(str(path))
    # A DatasetDict contributes every split, in sorted order; lcbench makes its own split.
    splits = sorted(loaded.items()) if isinstance(loaded, datasets.DatasetDict) else [("", loaded)]
    docs = []
    for split, ds in splits:
        if field not in ds.column_names:
            raise _field_error(field, f"{str(path)!r}" + (f" split {split!r}" if split else ""), ds.column_names)
        docs += _documents(f"{split}:" if split else "", ds[field], f"{str(path)!r}", field)
    return docs


def _looks_binary(path: Path) -> bool:
    """A NUL byte in the first 8 KiB; for a file with a UTF-16/UTF-32 mark (whose text has NUL bytes),
    a NUL character there or bytes that do not decode, as a binary that starts like a mark has."""
    with path.open("rb") as f:
        head = f.read(8192)
    encoding = _encoding(head)
    if encoding == "utf-8":
        return b"\0" in head
    try:
        # not final: a character that the 8 KiB cut in two is no fault
        return "\0" in codecs.getincrementaldecoder(encoding)().decode(head)
    except UnicodeDecodeError:
        return True


def _skipped(rel: Path) -> bool:
    """Whether a folder corpus leaves out the file at ``rel`` (relative to the folder): hidden files
    and folders (``.git``, editor swap files) and ``__pycache__`` are never its text."""
    return any(part.startswith(".") or part == "__pycache__" for part in rel.parts)


def _load_folder(root: Path, field: str) -> list[Document]:
    files = sorted(
        (p for p in root.rglob("*") if p.is_file() and not _skipped(p.relative_to(root))),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    docs, binary = [], []
    for file in files:
        name = file.relative_to(root).as_posix()
        if file.suffix == ".jsonl":
            docs += _load_jsonl(file, field, name)
        elif file.suffix == ".parquet":
            docs += _load_parquet(file, field, name)
        elif _looks_binary(file):
            binary.append(name)
        else:
            docs.append(Document(name, _read_text(file)))
    if binary:
        warnings.warn(f"corpus {str(root)!r}: skipped {len(binary)} binary file(s) (a NUL byte in the first "
                      f"8 KiB), e.g. {binary[0]!r}", CorpusWarning, stacklevel=4)
    return docs


class CorpusWarning(UserWarning):
    """A user corpus loaded, but not all of it as text: binary files skipped, bytes not UTF-8."""


def warn_undecodable(docs: Sequence[Document], source: str) -> None:
    """Warn, with counts, when documents hold U+FFFD: bytes that were not UTF-8 became it."""
    bad = [d for d in docs if _REPLACEMENT in d.text]
    if bad:
        chars = sum(d.text.count(_REPLACEMENT) for d in bad)
        warnings.warn(f"corpus {source!r}: {len(bad)} of {len(docs)} document(s) hold {chars} character(s) that "
                      f"were not valid UTF-8 and read as U+FFFD, e.g. {bad[0].name!r}; convert the files to UTF-8 "
                      "or leave them out", CorpusWarning, stacklevel=3)


def hash_files(root: Path, digest: Any, skip: Callable[[Path], bool] | None = None) -> None:
    """Feed every file under ``root`` (its relative name, a NUL, its bytes), in sorted path
    order, into ``digest`` (a :mod:`hashlib` object); ``skip(relative path)``: files left out."""
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = file.relative_to(root)
        if skip is None or not skip(rel):
            hash_file(digest, str(rel), file)


def corpus_fingerprint(source: str | None) -> str:
    """A short hash of what corpus ``source`` holds (the names and bytes of the files loading
    reads), so results keyed on it change when its files change at the same path. The embedded
    corpus is named by its interpreter's version and folder; a path that does not exist is
    ``absent:PATH`` (loading it then fails with its own clear error)."""
    if source is None or source == STDLIB_SOURCE:
        return _stdlib_description()
    path, field = source_path(source)
    if not path.exists():
        return f"absent:{path}"
    digest = hashlib.sha256()
    if path.is_dir():  # the files loading reads: git metadata or bytecode written beside them is no change
        hash_files(path, digest, skip=_skipped)
    else:
        hash_file(digest, path.name, path)
    if field is not None:  # other records' text (no field: the hash stays what it was)
        digest.update(f"{FIELD_MARK}{field}".encode())
    return digest.hexdigest()[:16]


def _load_path(path: Path, field: str, field_given: bool) -> list[Document]:
    if path.is_dir():
        if _is_datasets_folder(path):
            return _load_datasets_folder(path, field)
        docs = _load_folder(path, field)
        if field_given and not any(p.suffix in _RECORD_SUFFIXES and not _skipped(p.relative_to(path))
                                   for p in path.rglob("*")):
            raise ConfigError(f"corpus folder {str(path)!r} holds no .jsonl or .parquet records: a text field "
                              f"({field!r}) applies to the records of .jsonl and .parquet files and `datasets` "
                              "folders only")
        return docs
    if path.suffix == ".jsonl":
        return _load_jsonl(path, field, path.name)
    if path.suffix == ".parquet":
        return _load_parquet(path, field, path.name)
    if path.suffix in _TEXT_SUFFIXES:
        if field_given:
            raise ConfigError(f"corpus {path.name!r} is a text file: a text field ({field!r}) applies to the "
                              "records of .jsonl and .parquet files and `datasets` folders only")
        return [Document(path.name, _read_text(path))]
    raise ConfigError(
        f"corpus file {str(path)!r} has an unsupported extension {path.suffix!r}; valid: "
        f"{', '.join(_TEXT_SUFFIXES + _RECORD_SUFFIXES)} files, or a folder"
    )


def require_corpus(source: str | None) -> None:
    """Raise :func:`load_corpus`'s error when ``source`` names no file or folder; reads nothing
    (a sweep checks its corpora before any model trains)."""
    if source is None or source == STDLIB_SOURCE:
        return
    path, _ = source_path(source)
    if not path.exists():
        raise missing_path_error("corpus", path, _CORPUS_VALID, names=(STDLIB_SOURCE,))


def load_corpus(source: str | None = None, text_field: str = "text") -> list[Document]:
    """Documents from ``source``; ``None`` or ``"stdlib"`` is :func:`embedded_corpus`.

    ``PATH#FIELD`` reads the text of records (JSONL, Parquet, ``datasets``) from FIELD instead of
    ``text_field``; this is how a command, a spec or a task option names it.

    - a ``.txt`` or ``.md`` file: one document, named after the file;
    - a ``.jsonl`` file: one document per line, from its ``text_field`` (``file:LINE``);
    - a ``.parquet`` file: one document per row of column ``text_field`` (``file:ROW``);
    - a ``datasets`` ``save_to_disk`` folder (needs ``datasets``): one per row of ``text_field``;
    - any other folder: recursively, in sorted path order, each text file one document named by
      its relative path (``.jsonl``/``.parquet`` files inside are read as records, as above);
      hidden files and folders, ``__pycache__`` and binary files (a NUL byte in the first 8 KiB)
      are skipped.

    Text files are read as UTF-8, or as UTF-16/UTF-32 where they start with that byte-order mark
    (not then binary for their NUL bytes); bad bytes become U+FFFD and a :class:`CorpusWarning` counts them (as
    it counts skipped binary files); empty and null texts are dropped.
    """
    if source is None or source == STDLIB_SOURCE:
        return embedded_corpus()
    require_corpus(source)
    path, field = source_path(source)
    try:
        docs = _load_path(path, field or text_field, field is not None)
    except TextFieldError as exc:  # say how to name the field: load_corpus's argument reaches no command
        named = f"{path}{FIELD_MARK}{exc.suggestion or 'FIELD'}"
        end = "" if exc.suggestion else "."  # after "Did you mean ...?", or after the list of fields
        raise TextFieldError(f"{exc}{end} Name it after the corpus: {named!r}", exc.suggestion) from None
    docs = [d for d in docs if d.text]
    if not docs:
        raise ConfigError(f"corpus {str(path)!r} holds no non-empty text documents")
    warn_undecodable(docs, str(path))
    return docs
