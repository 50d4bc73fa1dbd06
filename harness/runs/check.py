"""Regression check of a run's scores against a committed reference table.

The reference is a result table (CSV) with one extra column, ``tolerance``. A score regresses
when it moves in its bad direction by more than the reference's confidence half-width on that
side plus the tolerance; a reference cell missing from the run (or failed in it) is a failure
too, and so, for the gate, is a score of the run that the reference lacks. Metrics marked exact
(deterministic sizes) must match to the bit. Timings are not scores: they depend on the machine
and are never checked.
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
    # ttt_neighbors: losses of held-out windows before and after fine-tuning, and the gains
    "loss_before": ("lower", 0.02),
    "loss_after": ("lower", 0.02),
    "loss_no_inner": ("lower", 0.02),
    "gain": ("higher", 0.02),
    "gain_over_random": ("higher", 0.02),
}
# Columns that identify a score across runs (the run's own name and the message do not).
MATCH_COLUMNS = [c for c in results.KEY_COLUMNS if c != "run"]
TOLERANCE = "tolerance"


@dataclass
class CheckResult:
    table: pd.DataFrame  # one row per reference score: reference, run, delta, allowed, verdict
    regressions: int
    missing: int
    note: str = ""  # why every score is missing, where the run measured none of the reference's models' tasks
    unchecked: int = 0  # scores of the run that no reference score matches, where that does not fail

    @property
    def passed(self) -> bool:
        return self.regressions == 0 and self.missing == 0


# verdicts that fail a check (besides missing and failed); "unreferenced": a score of the run that no
# reference score matches, in the comparisons that want every score referenced (the gate's)
FAILING = ("regressed", "changed", "unreferenced")


def read_reference(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no reference table at {str(path)!r}; create one with `lcbench check RUN --reference {path} --update`")
    try:
        raw = pd.read_csv(path, dtype={c: "string" for c, t in results.SCHEMA.items() if t == "string"},
                          keep_default_na=False, na_values={c: [""] for c in raw_columns(path) if c not in results.TEXT_COLUMNS})
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise ConfigError(f"{path} is not a reference table (a CSV written by `lcbench check --update`): "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if TOLERANCE not in raw.columns:
        raise ConfigError(f"{path} has no {TOLERANCE!r} column; is it a reference written by `lcbench check --update`?")
    try:
        table = results.validate(raw.drop(columns=[TOLERANCE]))
    except results.SchemaError as exc:  # said "result table is invalid", not which: the run's or this one
        raise results.SchemaError(f"reference {str(path)!r}: {exc}; a reference holds a run's rows as `lcbench check RUN "
                          f"--reference {path} --update` wrote them (remake it so)") from None
    if table.empty:  # every run would pass it
        raise ConfigError(f"{path} holds no scores; make it from a run with `lcbench check RUN --reference {path} --update`")
    try:
        table[TOLERANCE] = raw[TOLERANCE].astype(float).to_numpy()
    except ValueError as exc:
        raise ConfigError(f"{path}: column {TOLERANCE!r} must hold numbers ({exc})") from exc
    not_ok = table[table["status"] != "ok"]
    if len(not_ok):  # a reference holds measured scores only: such a row would never be checked
        row = not_ok.iloc[0]
        raise ConfigError(f"{path}: {len(not_ok)} row(s) are not ok, e.g. {row['model']} / {row['task']} / "
                          f"{row['metric']} ({row['status']}); a reference holds the scores of a clean run only")
    # a blank (NaN) tolerance makes every comparison false, so any move would read as "within"
    bad = table[~(np.isfinite(table[TOLERANCE]) & (table[TOLERANCE] >= 0))]
    if len(bad):
        row = bad.iloc[0]
        raise ConfigError(f"{path}: {len(bad)} row(s) have a {TOLERANCE!r} that is not a finite number >= 0, e.g. "
                          f"{row[TOLERANCE]!r} for {row['model']} / {row['task']} / {row['metric']}")
    return table


def raw_columns(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.readline().strip().split(",")


def reference_from_run(table: pd.DataFrame) -> pd.DataFrame:
    """The scores of a run as a reference: ok rows of score metrics, with default tolerances."""
    scores = table[table["metric"].isin(list(SCORES)) & (table["status"] == "ok")].copy()
    scores[TOLERANCE] = [SCORES[m][1] for m in scores["metric"]]
    return scores.reset_index(drop=True)


def require_clean_run(table: pd.DataFrame, what: str) -> None:
    """References are made only from runs without failed rows: a reference that leaves out the
    scores a failure lost would never check them."""
    failed = table[table["status"] != "ok"]
    if len(failed):
        raise ConfigError(f"{what} has {len(failed)} failed rows, e.g. {failed['message'].iloc[0]!r}; "
                          "references are made only from a clean run")


def write_reference(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    require_clean_run(table, "the run")
    reference = reference_from_run(table)
    if reference.empty:
        raise ConfigError(f"the run has no ok rows of score metrics ({', '.join(SCORES)}) to make a reference from")
    return results.atomic_write(path, lambda f: reference.to_csv(f, index=False))


# Rows once named the config's backend, ``auto`` wherever it was left to pick, not the one that
# ran: a reference row that says ``auto`` matches the run's row whatever backend auto picked.
ANY_BACKEND = "auto"


def _key(frame: pd.DataFrame, any_backend: bool = False) -> pd.Series:
    parts = frame[MATCH_COLUMNS].astype("object").where(frame[MATCH_COLUMNS].notna(), None)
    if any_backend:
        parts = parts.assign(backend=ANY_BACKEND)
    return parts.apply(lambda row: tuple(row), axis=1)


def compare(run: pd.DataFrame, reference: pd.DataFrame, use_ci: bool = True, two_sided: bool = False,
            complete: bool = False) -> CheckResult:
    """Each reference score against the run's. ``use_ci``: the reference's confidence half-width
    widens the allowed move (scores of a retrained model); without it only the tolerance does
    (fixed weights, where only rounding moves a score). ``two_sided``: a move beyond the allowance
    in the good direction fails too ("changed"), since it can come from a bug such as a future-token leak.
    ``complete``: every ok score of the run must have a reference score; one without fails
    ("unreferenced"): references older than the spec would leave what it added unchecked."""
    by_key: dict[tuple, list[dict]] = {}
    for key, loose, row in zip(_key(run), _key(run, any_backend=True), run.to_dict("records")):
        by_key.setdefault(key, []).append(row)
        if loose != key:
            by_key.setdefault(loose, []).append(row)
    rows, ref_keys = [], _key(reference)
    for key, ref in zip(ref_keys, reference.itertuples(index=False)):
        direction, _ = SCORES.get(ref.metric, ("exact", 0.0))
        got = _row_of_run(by_key.get(key, []), ref)
        value = float(got["value"]) if got is not None and got["status"] == "ok" else math.nan
        verdict, allowed = _verdict(direction, ref, value, use_ci)
        if two_sided and verdict == "improved":
            verdict = "changed"
        rows.append({**{c: getattr(ref, c) for c in MATCH_COLUMNS if not _is_na(getattr(ref, c))},
                     "reference": ref.value, "run": value, "delta": value - ref.value, "allowed": allowed,
                     "verdict": "missing" if got is None else ("failed" if math.isnan(value) else verdict)})
    referenced = set(ref_keys)
    scores = run[run["metric"].isin(list(SCORES)) & (run["status"] == "ok")]
    unreferenced = [_unreferenced({c: row[c] for c in MATCH_COLUMNS if not _is_na(row[c])}, row["value"])
                    for key, loose, row in zip(_key(scores), _key(scores, any_backend=True), scores.to_dict("records"))
                    if key not in referenced and loose not in referenced]
    if complete:
        rows += unreferenced
    result = _result(pd.DataFrame(rows), _unrelated(run, reference))
    # said, not failed: a model added since the reference passed the check unsaid, its scores unchecked
    result.unchecked = 0 if complete else len(unreferenced)
    return result


def _unrelated(run: pd.DataFrame, reference: pd.DataFrame) -> str:
    """A line naming both sides' models and tasks when the run holds no (model, task) of the
    reference: a run of another spec or task read as N missing scores and nothing more."""
    def pairs(frame: pd.DataFrame) -> set[tuple[str, str]]:
        return set(zip(frame["model"].astype(str), frame["task"].astype(str)))

    def names(frame: pd.DataFrame, column: str) -> str:
        return ", ".join(sorted(frame[column].dropna().astype(str).unique())) or "none"

    if pairs(run) & pairs(reference):
        return ""
    return (f"the run measured none of the reference's models' tasks: the reference has models {names(reference, 'model')} "
            f"and tasks {names(reference, 'task')}, the run models {names(run, 'model')} and tasks {names(run, 'task')}; "
            "is this the reference of this run?")


def _unreferenced(columns: dict, value: float) -> dict:
    return {**columns, "reference": math.nan, "run": value, "delta": math.nan, "allowed": math.nan,
            "verdict": "unreferenced"}


def _row_of_run(matches: list[dict], ref) -> dict | None:
    """The run's row for reference score ``ref``. The run's name is no match column (a reference
    outlives the folder it came from), but a folder that several specs wrote into holds one row per
    run: then the row of the reference's own run, and without one, no guess."""
    if len(matches) > 1:
        matches = [row for row in matches if row["run"] == ref.run] or matches
    if len(matches) > 1:
        runs = ", ".join(repr(str(row["run"])) for row in sorted(matches, key=lambda row: str(row["run"])))
        raise ConfigError(f"{len(matches)} rows of runs {runs} match the reference score {ref.model} / {ref.task} / "
                          f"{ref.metric} (a folder that several specs wrote into), none of them of its run {ref.run!r}; "
                          "compare a folder of one run, or make the reference from this one")
    return matches[0] if matches else None


def _result(table: pd.DataFrame, note: str = "") -> CheckResult:
    verdicts = table["verdict"] if len(table) else pd.Series(dtype=str)
    return CheckResult(table, int(verdicts.isin(FAILING).sum()), int(verdicts.isin(["missing", "failed"]).sum()), note)


def _is_na(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def _verdict(direction: str, ref, value: float, use_ci: bool = True) -> tuple[str, float]:
    tol = float(getattr(ref, TOLERANCE))
    if direction == "exact":
        return ("same" if value == ref.value else "regressed"), 0.0
    if direction == "lower":  # worse means higher
        half_width = ref.ci_high - ref.value if use_ci and not _is_na(ref.ci_high) else 0.0
        worse, better = value - ref.value, ref.value - value
    else:
        half_width = ref.value - ref.ci_low if use_ci and not _is_na(ref.ci_low) else 0.0
        worse, better = ref.value - value, value - ref.value
    slack = half_width + tol
    if worse > slack:
        return "regressed", slack
    if better > slack:
        return "improved", slack
    return ("same" if value == ref.value else "within"), slack


def check_run(run_dir: str | os.PathLike, reference_path: str | os.PathLike) -> CheckResult:
    return compare(results.read_table(run_dir), read_reference(reference_path))


def format_report(result: CheckResult, show_all: bool = False) -> str:
    table = result.table
    verdicts = table["verdict"] if len(table) else pd.Series(dtype=str)
    unreferenced = int((verdicts == "unreferenced").sum())
    summary = verdicts[verdicts != "unreferenced"].value_counts().to_dict()
    parts = [f"{len(table) - unreferenced} reference scores"]
    if summary:
        parts.append(", ".join(f"{n} {v}" for v, n in sorted(summary.items())))
    if unreferenced:
        parts.append(f"{unreferenced} scores of the run have none (references older than the spec: remake them)")
    if result.unchecked:
        parts.append(f"{result.unchecked} scores of the run have no reference score and were not checked "
                     "(remake the reference with --update to check them)")
    head = f"{'PASS' if result.passed else 'FAIL'}: " + "; ".join(parts) + (f"\n{result.note}" if result.note else "")
    moved = table[verdicts != "same"] if len(table) and not show_all else table
    if moved.empty:
        return head + "\nno score moved."
    # the seed where there are several: a run of seeds [0, 1] showed each score's two rows alike
    seeds = ("seed",) if "seed" in table.columns and table["seed"].nunique() > 1 else ()
    cols = [c for c in ("model", *seeds, "task", "variant", "haystack", "eval_ctx", "depth", "pos_start", "metric",
                        "reference", "run", "delta", "allowed", "verdict") if c in moved.columns]
    return head + "\n" + moved[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="")


# --- The seed-aggregate check (models retrained with several seeds) -------------------------
# Training amplifies rounding differences between CPUs much as a change of seed does, so single
# cells of retrained models are not comparable across machines. Scores are first pooled within
# each seed (over NIAH depths and haystacks, weighted by samples; position bins are left out),
# then averaged over seeds, and a mean may move by BAND_SIGMAS standard errors of a difference
# of two such means, estimated from the seed-to-seed spread.
AGGREGATE_KEYS = ["model", "arch", "task", "metric", "eval_ctx", "variant"]
BAND_SIGMAS = 4.0
AGGREGATE_COLUMNS = AGGREGATE_KEYS + ["value", "seed_sd", "pooled_sd", "n_seeds", "band"]


def _per_seed(table: pd.DataFrame) -> pd.DataFrame:
    directions = {m: d for m, (d, _) in SCORES.items() if d != "exact"}
    rows = table[(table["status"] == "ok") & table["metric"].isin(list(directions)) & table["pos_start"].isna()]
    rows = rows.assign(weight=rows["n"].astype("float64").fillna(1.0), variant=rows["variant"].fillna(""))
    rows = rows.assign(weighted=rows["value"] * rows["weight"])
    pooled = rows.groupby(AGGREGATE_KEYS + ["seed"], dropna=False)[["weighted", "weight"]].sum().reset_index()
    return pooled.assign(value=pooled["weighted"] / pooled["weight"])


def seed_aggregates(table: pd.DataFrame) -> pd.DataFrame:
    """Per (model, task, metric, context, variant): the mean over seeds of each seed's pooled score,
    the seed-to-seed standard deviation and the number of seeds."""
    per_seed = _per_seed(table)
    grouped = per_seed.groupby(AGGREGATE_KEYS, dropna=False)["value"]
    out = grouped.agg(value="mean", seed_sd="std", n_seeds="count").reset_index()
    return out.assign(seed_sd=out["seed_sd"].fillna(0.0))


def aggregate_reference(table: pd.DataFrame, sigmas: float = BAND_SIGMAS) -> pd.DataFrame:
    """A seed-aggregate reference from a run of at least 3 seeds: each score's band is
    ``sigmas * pooled_sd * sqrt(2 / n_seeds)``, the spread pooled over the contexts and variants of
    one (model, task, metric) so that a band rests on more than 2 degrees of freedom. Scores
    with no spread at all are left out."""
    agg = seed_aggregates(table)
    if agg.empty:  # a run compared with a reference has its scores missing instead: failed work, not bad input
        raise ConfigError("the run has no ok rows of seed-aggregated scores "
                          f"({', '.join(m for m, (d, _) in SCORES.items() if d != 'exact')})")
    if agg["n_seeds"].min() < 3:
        raise ConfigError(f"a seed-aggregate reference needs at least 3 seeds per score, got {int(agg['n_seeds'].min())}")
    pooled = agg.groupby(["model", "task", "metric"])["seed_sd"].transform(lambda sd: math.sqrt(float((sd ** 2).mean())))
    agg = agg.assign(pooled_sd=pooled)
    agg["band"] = sigmas * agg["pooled_sd"] * np.sqrt(2.0 / agg["n_seeds"])
    # A score that no seed moved (NIAH generation is 0 for every tiny model) has no measured
    # spread to set a band from; it is left to the checks on fixed weights.
    return agg[agg["pooled_sd"] > 0][AGGREGATE_COLUMNS].reset_index(drop=True)


def read_aggregate_reference(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no seed-aggregate reference at {str(path)!r}")
    table = pd.read_csv(path, keep_default_na=False, na_values={"eval_ctx": [""]})
    missing = [c for c in AGGREGATE_COLUMNS if c not in table.columns]
    if missing:
        raise ConfigError(f"{path} lacks the columns {missing}; is it a seed-aggregate reference?")
    return table.assign(eval_ctx=table["eval_ctx"].astype("Int64"), variant=table["variant"].astype(str))


def compare_aggregates(run: pd.DataFrame, reference: pd.DataFrame) -> CheckResult:
    """The run's seed aggregates against the reference's, two-sided: a mean that moves beyond its
    band either way fails ("regressed" the bad way, "changed" the good way)."""
    got = seed_aggregates(run)
    by_key = {tuple(r[k] for k in AGGREGATE_KEYS): r for r in got.to_dict("records")}
    rows = []
    for ref in reference.to_dict("records"):
        hit = by_key.get(tuple(ref[k] for k in AGGREGATE_KEYS))
        value = float(hit["value"]) if hit is not None else math.nan
        delta = value - ref["value"]
        worse = delta if SCORES[ref["metric"]][0] == "lower" else -delta
        if hit is None:
            verdict = "missing"
        elif hit["n_seeds"] != ref["n_seeds"]:  # a seed's cell failed (or the run used other seeds)
            verdict = "failed"
        elif abs(delta) <= ref["band"]:
            verdict = "same" if delta == 0 else "within"
        else:
            verdict = "regressed" if worse > 0 else "changed"
        rows.append({**{k: ref[k] for k in AGGREGATE_KEYS}, "reference": ref["value"], "run": value, "delta": delta,
                     "allowed": ref["band"], "verdict": verdict})
    # a model's task with no reference aggregate at all: references older than the spec (a reference
    # leaves out single scores that no seed moved, never all of a task's)
    referenced = set(zip(reference["model"], reference["task"]))
    rows += [_unreferenced({k: hit[k] for k in AGGREGATE_KEYS}, hit["value"]) for hit in got.to_dict("records")
             if (hit["model"], hit["task"]) not in referenced]
    return _result(pd.DataFrame(rows))
