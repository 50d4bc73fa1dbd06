"""The result table: its schema (written down once, here), validation, and atomic storage.

A result table is tidy, long format: one row per measurement. Columns that identify a
measurement come first, then what was measured and how sure it is:

======== ========= ==========================================================================
column   type      meaning
======== ========= ==========================================================================
run      str       name of the run (by default the output folder's name)
model    str       the model spec: a checkpoint folder's name, or ``arch:preset`` (untrained)
arch     str       registry name of the architecture
params   int       non-embedding parameters
train_ctx int      training sequence length (NA for an untrained model)
task     str       registry name of the task
variant  str       task sub-setting (NIAH: single / multikey / multivalue / multiquery)
haystack str       NIAH haystack (text / noise)
eval_ctx int       evaluation context length in tokens (latency: the prefix length T)
depth    float     NIAH needle depth in [0, 1]; NA = pooled over the task's depth grid
pos_start int      first target position of a position bin (inclusive); NA = all positions
pos_end  int       end of a position bin (exclusive)
batch_size int     sequences per forward pass where it matters (latency)
backend  str       the mixer backend that ran (``LCModel.backend_on``: the config's, ``auto``
                   resolved: sdpa, flex, torch, fla, mamba_ssm; TTT-E2E's ``prefix+suffix``
                   where its blocks differ); tables written before it say ``auto``
device   str       ``cpu`` or ``cuda`` (the device's name is in run.json)
dtype    str       parameter dtype: float32, bfloat16, float16
seed     int       evaluation seed
metric   str       what ``value`` measures (e.g. ``loss``, ``gen_match``, ``prefill_s``)
value    float     the measurement (NaN unless status is ok)
ci_low   float     lower end of the 95% bootstrap confidence interval (NaN if none)
ci_high  float     upper end
n        int       independent units the value rests on (documents, samples, repeats)
n_tokens int       tokens the value rests on, where that is meaningful
status   str       ok | oom | nan | error
message  str       why a row is not ok (empty when it is)
flag     str       a warning on an ok value (empty when none): ``unstable: ...`` for a timing
                   whose repeats spread beyond :data:`harness.api.timing.UNSTABLE_SPREAD` or
                   that was taken on a busy machine (see :func:`harness.api.timing.timing_flag`);
                   ``depth: ...`` for a NIAH cell whose needles sit far from its depth
======== ========= ==========================================================================

Peak-memory metrics (``*_peak_bytes``) mean, per device: on a GPU,
``torch.cuda.max_memory_allocated`` during the measured work (tensors only, the weights and the
inputs included, the allocator's cache excluded); on CPU, how far the process's resident set
rose above its size when the measured work started (what the work added: activations, caches,
temporaries; not the interpreter, libraries or weights already resident).

A run folder holds ``results.parquet`` and ``results.csv`` (the same table), ``run.json``
(provenance, written by :mod:`harness.runs.provenance`: git commit, package versions, device,
command line, seed, options) and
``samples.jsonl`` (per-sample records, so a surprising number can be traced to its samples).
Every file is written to a temporary sibling and renamed into place, so a reader never sees a
half-written file. :func:`append_rows` adds rows to an existing table, refusing (or replacing)
rows whose identifying columns are already there: a sweep can resume without duplicating cells.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.api.errors import ConfigError, LcbenchError, close_match, missing_path_error
from harness.api.staging import check_not_under_file, temp_prefix

# name -> pandas dtype. Nullable dtypes, so a missing integer stays an integer column.
SCHEMA: dict[str, str] = {
    "run": "string",
    "model": "string",
    "arch": "string",
    "params": "Int64",
    "train_ctx": "Int64",
    "task": "string",
    "variant": "string",
    "haystack": "string",
    "eval_ctx": "Int64",
    "depth": "float64",
    "pos_start": "Int64",
    "pos_end": "Int64",
    "batch_size": "Int64",
    "backend": "string",
    "device": "string",
    "dtype": "string",
    "seed": "Int64",
    "metric": "string",
    "value": "float64",
    "ci_low": "float64",
    "ci_high": "float64",
    "n": "Int64",
    "n_tokens": "Int64",
    "status": "string",
    "message": "string",
    "flag": "string",
}
COLUMNS: list[str] = list(SCHEMA)
MEASURE_COLUMNS = ("value", "ci_low", "ci_high", "n", "n_tokens", "status", "message", "flag")
# A measurement is identified by every other column: no two rows of a table share them.
KEY_COLUMNS: list[str] = [c for c in COLUMNS if c not in MEASURE_COLUMNS]
REQUIRED_COLUMNS = ("run", "model", "arch", "task", "metric", "status")
STATUSES = ("ok", "oom", "nan", "error")
TEXT_COLUMNS = ("message", "flag")  # free text where "" means none, not a missing value

TABLE_PARQUET = "results.parquet"
TABLE_CSV = "results.csv"
CELL_FAILED = "cell_failed"  # the metric of the status row a sweep cell that failed as a whole leaves
RUN_JSON = "run.json"
SAMPLES_JSONL = "samples.jsonl"


class SchemaError(LcbenchError, ValueError):
    """A result table does not follow the schema."""


# ---------------------------------------------------------------------------------------------
# Rows and tables


def make_row(metric: str, value: float | None, **columns: Any) -> dict[str, Any]:
    """One measurement. A non-finite value of an ``ok`` row becomes status ``nan``; a row that
    is not ok carries NaN as its value and interval. Unknown column names are refused."""
    if isinstance(value, (bool, np.bool_)):  # float(True) would record a flag as the number 1
        raise SchemaError(f"the value of {metric!r} is the boolean {value}; record a number (e.g. 1.0 for a hit)")
    row = {"metric": metric, "value": math.nan if value is None else float(value), **columns}
    unknown = [k for k in row if k not in SCHEMA]
    if unknown:
        raise SchemaError(_unknown_columns(unknown))
    row.setdefault("status", "ok")
    if row["status"] == "ok" and not math.isfinite(row["value"]):
        row["status"] = "nan"
        row.setdefault("message", f"{metric} is {row['value']}")
    if row["status"] != "ok":  # no number of a failed measurement survives, interval included
        row["value"] = math.nan
        row.update({k: math.nan for k in ("ci_low", "ci_high") if k in row})
    return row


def status_rows(metrics: Iterable[str], status: str, message: str, **columns: Any) -> list[dict[str, Any]]:
    """Rows recording that ``metrics`` could not be measured (oom, error) for one cell."""
    return [make_row(m, math.nan, status=status, message=message, **columns) for m in metrics]


def _unknown_columns(names: Iterable[str]) -> str:
    parts = []
    for name in names:
        hint = close_match(name, COLUMNS)
        parts.append(f"{name!r}" + (f" (did you mean {hint!r}?)" if hint else ""))
    return f"unknown result column(s) {', '.join(parts)}; the schema's columns are: {', '.join(COLUMNS)}"


def to_frame(rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """A table with exactly the schema's columns, in order and with the schema's dtypes
    (missing columns become NA). Unknown columns are refused."""
    df = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame.from_records(list(rows))
    unknown = [c for c in df.columns if c not in SCHEMA]
    if unknown:
        raise SchemaError(_unknown_columns(unknown))
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = pd.NA
    df = df[COLUMNS]
    out = {}
    for col, dtype in SCHEMA.items():
        series = df[col]
        try:
            if dtype != "string" and _holds_bools(series):
                raise ValueError("true/false is not a number")
            if dtype == "float64":
                out[col] = pd.to_numeric(series.astype("object").where(series.notna(), np.nan), errors="raise").astype("float64")
            elif dtype == "Int64":
                numeric = pd.to_numeric(series.astype("object").where(series.notna(), np.nan), errors="raise")
                if (numeric.dropna() % 1 != 0).any():
                    raise ValueError("non-integer values")
                out[col] = numeric.astype("Int64")
            else:
                out[col] = series.astype("object").where(series.notna(), pd.NA).astype("string")
        except (ValueError, TypeError) as exc:
            raise SchemaError(f"column {col!r} must hold {dtype} values: {exc}") from exc
    frame = pd.DataFrame(out)
    for col in TEXT_COLUMNS:
        frame[col] = frame[col].fillna("")
    return frame.reset_index(drop=True)


def _holds_bools(series: pd.Series) -> bool:
    """Whether ``series`` holds True/False, which pandas would silently store as 1/0."""
    if pd.api.types.is_bool_dtype(series.dtype):
        return bool(series.notna().any())
    return series.dtype == object and bool(series.map(lambda v: isinstance(v, (bool, np.bool_))).any())


def validate(table: Iterable[Mapping[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """The table in schema form, or :class:`SchemaError` naming every problem found."""
    df = to_frame(table)
    problems: list[str] = []
    for col in REQUIRED_COLUMNS:
        missing = df[col].isna() | (df[col] == "")
        if missing.any():
            problems.append(f"{int(missing.sum())} row(s) have no {col!r}")
    bad_status = ~df["status"].isin(STATUSES) & df["status"].notna()
    if bad_status.any():
        problems.append(f"unknown status value(s) {sorted(set(df.loc[bad_status, 'status']))}; valid: {', '.join(STATUSES)}")
    ok = df["status"] == "ok"
    nonfinite = ok & ~np.isfinite(df["value"].to_numpy(dtype=float))
    if nonfinite.any():
        problems.append(f"{int(nonfinite.sum())} 'ok' row(s) have a non-finite value (their status should be 'nan')")
    failed_with_value = ~ok & df["value"].notna()
    if failed_with_value.any():
        problems.append(f"{int(failed_with_value.sum())} row(s) that are not ok have a value (it should be NaN)")
    quiet_failures = ~ok & (df["message"] == "")
    if quiet_failures.any():
        problems.append(f"{int(quiet_failures.sum())} row(s) that are not ok have no message")
    has_ci = df["ci_low"].notna() & df["ci_high"].notna() & ok
    tol = 1e-9 * np.maximum(1.0, df["value"].abs())
    outside = has_ci & ((df["ci_low"] > df["value"] + tol) | (df["ci_high"] < df["value"] - tol))
    if outside.any():
        problems.append(f"{int(outside.sum())} row(s) have a value outside [ci_low, ci_high]")
    one_ended = ok & (df["ci_low"].isna() != df["ci_high"].isna())
    if one_ended.any():
        problems.append(f"{int(one_ended.sum())} 'ok' row(s) have only one end of their interval (give both or neither)")
    no_samples = ok & (df["n"] == 0)
    if no_samples.any():
        problems.append(f"{int(no_samples.sum())} 'ok' row(s) have n=0: a value from no samples (its status should "
                        "be 'nan' or a failure)")
    for col in ("n", "n_tokens", "params", "train_ctx", "eval_ctx", "batch_size", "pos_start"):
        negative = df[col].notna() & (df[col] < 0)
        if negative.any():
            problems.append(f"{int(negative.sum())} row(s) have a negative {col!r}")
    bins = df["pos_start"].notna() | df["pos_end"].notna()
    bad_bins = bins & ~(df["pos_start"].notna() & df["pos_end"].notna() & (df["pos_end"] > df["pos_start"]))
    if bad_bins.fillna(True).any():
        problems.append(f"{int(bad_bins.fillna(True).sum())} row(s) have a position bin without pos_start < pos_end")
    depth_bad = df["depth"].notna() & ((df["depth"] < 0) | (df["depth"] > 1))
    if depth_bad.any():
        problems.append(f"{int(depth_bad.sum())} row(s) have a depth outside [0, 1]")
    dup = df.duplicated(KEY_COLUMNS, keep=False)
    if dup.any():
        example = df.loc[dup, KEY_COLUMNS].iloc[0].dropna().to_dict()
        problems.append(f"{int(dup.sum())} row(s) share their identifying columns with another row, e.g. {example}")
    if problems:
        raise SchemaError("result table is invalid: " + "; ".join(problems))
    return df


# ---------------------------------------------------------------------------------------------
# Atomic files


def atomic_write(path: str | os.PathLike, write: Any, binary: bool = False) -> Path:
    """Call ``write(file_object)`` on a temporary sibling of ``path`` (text, UTF-8, unless
    ``binary``), then rename it into place: readers see the old file or the new, never half."""
    path = Path(path)
    check_not_under_file(path.parent, f"folder of {path.name}").mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), dir=path.parent)
    try:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="")) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; results are ordinary files
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _table_paths(location: str | os.PathLike) -> tuple[Path, Path]:
    """(parquet, csv) paths of a run folder, or of a ``.parquet``/``.csv`` path given directly."""
    p = Path(location)
    if p.suffix in (".parquet", ".csv"):
        return p.with_suffix(".parquet"), p.with_suffix(".csv")
    return p / TABLE_PARQUET, p / TABLE_CSV


def write_table(location: str | os.PathLike, table: Iterable[Mapping[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """Validate ``table`` and write it as Parquet and CSV (atomically) into a run folder (or to
    the ``.parquet``/``.csv`` path given). Returns the table in schema form."""
    df = validate(table)
    parquet, csv = _table_paths(location)
    atomic_write(parquet, lambda f: df.to_parquet(f, index=False), binary=True)
    atomic_write(csv, lambda f: df.to_csv(f, index=False))
    return df


def check_table(location: str | os.PathLike) -> None:
    """Raise unless ``location`` holds a result table, saying what is there instead: a missing
    folder's close match (``runs/tny``: ``runs/tiny``), or the run folders inside a folder of runs."""
    parquet, csv = _table_paths(location)
    if parquet.is_file() or csv.is_file():
        return
    path = Path(location)
    if not path.exists():
        raise missing_path_error("run folder", path, f"a run or sweep folder holding {TABLE_PARQUET} or {TABLE_CSV}")
    runs = (sorted(str(p.parent) for pattern in (f"*/{TABLE_CSV}", f"*/*/{TABLE_CSV}") for p in path.glob(pattern))
            if path.is_dir() else [])  # two levels: lcbench eval's runs/eval/TASK-MODEL
    inside = f"; the run folders in it: {', '.join(map(repr, runs[:10]))}{', ...' if len(runs) > 10 else ''}" if runs else ""
    raise ConfigError(f"no result table at {str(location)!r}: expected {parquet.name} or {csv.name} there{inside}")


def read_table(location: str | os.PathLike, validate_schema: bool = True) -> pd.DataFrame:
    """The table of a run folder (or a ``.parquet``/``.csv`` file), in schema form."""
    check_table(location)
    parquet, csv = _table_paths(location)
    path = parquet if parquet.is_file() else csv
    try:
        if path is parquet:
            df = pd.read_parquet(parquet)
        else:
            df = pd.read_csv(csv, dtype={c: "string" for c, t in SCHEMA.items() if t == "string"},
                             keep_default_na=False,
                             na_values={c: [""] for c, t in SCHEMA.items() if t != "string" or c not in TEXT_COLUMNS})
    except Exception as exc:  # pyarrow and pandas raise many kinds on a damaged or foreign file
        raise SchemaError(f"{path} cannot be read as a result table ({type(exc).__name__}: {exc}); "
                          "it is damaged or not an lcbench table") from exc
    return validate(df) if validate_schema else to_frame(df)


def append_rows(location: str | os.PathLike, rows: Iterable[Mapping[str, Any]] | pd.DataFrame,
                on_duplicate: str = "error") -> pd.DataFrame:
    """Add ``rows`` to the table at ``location`` (created if absent) and rewrite it atomically.

    ``on_duplicate``: ``"error"`` refuses rows whose identifying columns are already in the
    table; ``"replace"`` drops the old rows; ``"skip"`` keeps the old rows and drops the new.
    """
    if on_duplicate not in ("error", "replace", "skip"):
        raise ConfigError(f"on_duplicate must be one of error, replace, skip; got {on_duplicate!r}")
    new = validate(rows)
    parquet, csv = _table_paths(location)
    old = read_table(location) if (parquet.is_file() or csv.is_file()) else to_frame([])
    if len(old):
        old_keys, new_keys = key_index(old), key_index(new)
        clash_new = new_keys.isin(old_keys)
        if clash_new.any():
            if on_duplicate == "error":
                raise SchemaError(
                    f"{int(clash_new.sum())} new row(s) are already in {str(parquet)!r} "
                    f"(e.g. {new.loc[clash_new, KEY_COLUMNS].iloc[0].dropna().to_dict()}); "
                    "pass on_duplicate='replace' or 'skip'"
                )
            if on_duplicate == "skip":
                new = new[~clash_new]
            else:
                old = old[~old_keys.isin(new_keys)]
    frames = [f for f in (old, new) if len(f)]
    combined = pd.concat(frames, ignore_index=True) if frames else to_frame([])
    return write_table(location, combined)


def key_index(table: pd.DataFrame) -> pd.MultiIndex:
    """The identifying columns of every row (NA as None, so that missing values compare equal)."""
    return pd.MultiIndex.from_frame(table[KEY_COLUMNS].astype("object").where(table[KEY_COLUMNS].notna(), None))


def has_rows(table: pd.DataFrame, **columns: Any) -> bool:
    """Whether ``table`` holds a row matching every ``column=value`` given (for resuming)."""
    mask = pd.Series(True, index=table.index)
    for col, value in columns.items():
        if col not in SCHEMA:
            raise SchemaError(_unknown_columns([col]))
        mask &= table[col].isna() if value is None else (table[col] == value).fillna(False)
    return bool(mask.any())


# ---------------------------------------------------------------------------------------------
# Per-sample records


def json_default(obj: Any) -> Any:
    """JSON for what records hold besides plain values: numpy and torch numbers and arrays, paths."""
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "tolist"):  # torch tensors
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> Path:
    """One JSON object per line, written atomically."""

    def write(f):
        for record in records:
            f.write(json.dumps(record, default=json_default, allow_nan=True) + "\n")

    return atomic_write(path, write)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
