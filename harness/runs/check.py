"""Regression check of a run's scores against a committed reference table.

The reference is a result table (CSV) with one extra column, ``tolerance``. A score regresses
when it moves in its bad direction by more than the reference's confidence half-width on that
side plus the tolerance; a reference cell missing from the run (or failed in it) is a failure
too. Metrics marked exact (deterministic sizes) must match to the bit. Timings are not scores:
they depend on the machine and are never checked.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness.api import results
from harness.api.errors import ConfigError

# metric -> (direction, default tolerance). "lower"/"higher": which way is better.
SCORES: dict[str, tuple[str, float]] = {
    "loss": ("lower", 0.02),
    "gen_match": ("higher", 0.0),
    "cand_acc": ("higher", 0.0),
    "value_logprob": ("higher", 0.05),
    "state_bytes": ("exact", 0.0),
}
# Columns that identify a score across runs (the run's own name and the message do not).
MATCH_COLUMNS = [c for c in results.KEY_COLUMNS if c != "run"]
TOLERANCE = "tolerance"


@dataclass
class CheckResult:
    table: pd.DataFrame  # one row per reference score: reference, run, delta, allowed, verdict
    regressions: int
    missing: int

    @property
    def passed(self) -> bool:
        return self.regressions == 0 and self.missing == 0


def read_reference(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no reference table at {str(path)!r}; create one with `lcbench check RUN --update`")
    try:
        raw = pd.read_csv(path, dtype={c: "string" for c, t in results.SCHEMA.items() if t == "string"},
                          keep_default_na=False, na_values={c: [""] for c in raw_columns(path) if c not in results.TEXT_COLUMNS})
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise ConfigError(f"{path} is not a reference table (a CSV written by `lcbench check --update`): "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if TOLERANCE not in raw.columns:
        raise ConfigError(f"{path} has no {TOLERANCE!r} column; is it a reference written by `lcbench check --update`?")
    table = results.validate(raw.drop(columns=[TOLERANCE]))
    try:
        table[TOLERANCE] = raw[TOLERANCE].astype(float).to_numpy()
    except ValueError as exc:
        raise ConfigError(f"{path}: column {TOLERANCE!r} must hold numbers ({exc})") from exc
    return table


def raw_columns(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.readline().strip().split(",")


def reference_from_run(table: pd.DataFrame) -> pd.DataFrame:
    """The scores of a run as a reference: ok rows of score metrics, with default tolerances."""
    scores = table[table["metric"].isin(list(SCORES)) & (table["status"] == "ok")].copy()
    scores[TOLERANCE] = [SCORES[m][1] for m in scores["metric"]]
    return scores.reset_index(drop=True)


def write_reference(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    reference = reference_from_run(table)
    if reference.empty:
        raise ConfigError(f"the run has no ok rows of score metrics ({', '.join(SCORES)}) to make a reference from")
    return results.atomic_write(path, lambda f: reference.to_csv(f, index=False))


def _key(frame: pd.DataFrame) -> pd.Series:
    parts = frame[MATCH_COLUMNS].astype("object").where(frame[MATCH_COLUMNS].notna(), None)
    return parts.apply(lambda row: tuple(row), axis=1)


def compare(run: pd.DataFrame, reference: pd.DataFrame) -> CheckResult:
    by_key = {key: row for key, row in zip(_key(run), run.to_dict("records"))}
    rows = []
    for key, ref in zip(_key(reference), reference.itertuples(index=False)):
        direction, _ = SCORES.get(ref.metric, ("exact", 0.0))
        got = by_key.get(key)
        value = float(got["value"]) if got is not None and got["status"] == "ok" else math.nan
        verdict, allowed = _verdict(direction, ref, value)
        rows.append({**{c: getattr(ref, c) for c in MATCH_COLUMNS if not _is_na(getattr(ref, c))},
                     "reference": ref.value, "run": value, "delta": value - ref.value, "allowed": allowed,
                     "verdict": "missing" if got is None else ("failed" if math.isnan(value) else verdict)})
    table = pd.DataFrame(rows)
    verdicts = table["verdict"] if len(table) else pd.Series(dtype=str)
    return CheckResult(table, int((verdicts == "regressed").sum()), int(verdicts.isin(["missing", "failed"]).sum()))


def _is_na(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def _verdict(direction: str, ref, value: float) -> tuple[str, float]:
    tol = float(getattr(ref, TOLERANCE))
    if direction == "exact":
        return ("same" if value == ref.value else "regressed"), 0.0
    if direction == "lower":  # worse means higher
        slack = (ref.ci_high - ref.value if not _is_na(ref.ci_high) else 0.0) + tol
        worse, better = value - ref.value, ref.value - value
    else:
        slack = (ref.value - ref.ci_low if not _is_na(ref.ci_low) else 0.0) + tol
        worse, better = ref.value - value, value - ref.value
    if worse > slack:
        return "regressed", slack
    if better > slack:
        return "improved", slack
    return ("same" if value == ref.value else "within"), slack


def check_run(run_dir: str | os.PathLike, reference_path: str | os.PathLike) -> CheckResult:
    return compare(results.read_table(run_dir), read_reference(reference_path))


def format_report(result: CheckResult, show_all: bool = False) -> str:
    table = result.table
    moved = table if show_all else table[table["verdict"] != "same"]
    summary = table["verdict"].value_counts().to_dict() if len(table) else {}
    head = (f"{'PASS' if result.passed else 'FAIL'}: {len(table)} reference scores; "
            + ", ".join(f"{n} {v}" for v, n in sorted(summary.items())))
    if moved.empty:
        return head + "\nno score moved."
    cols = [c for c in ("model", "task", "variant", "haystack", "eval_ctx", "depth", "pos_start", "metric",
                        "reference", "run", "delta", "allowed", "verdict") if c in moved.columns]
    return head + "\n" + moved[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="")
