"""Summary tables from a result table, and the data preparation the figures share.

A result table is long (one row per measurement); papers show wide tables: one row per model,
one column per context length. :func:`prepare` reads the long table once into *series* (what a
figure draws as one line: a model, split further by train_ctx, backend, dtype or device when
those vary within it) and *points* (one value per series and grid cell), and pairs every series
with its full-attention reference (for the loss gap and the speed-up).

How several rows of one cell become one point: the mean of the ``ok`` values (runs, NIAH
variants when pooled); the confidence interval is kept only when the point rests on a single row
(an average of intervals is not an interval). Rows of several training seeds give the mean of the
seeds' values and an interval over seeds (:func:`stats.across_seeds`: it covers seed-to-seed
variance, which no seed's own interval does), which figures draw as bands and tables print, a
footnote saying what it is. A point that some of its rows failed
(one seed out of memory) is flagged ``partial``, as an unstable timing is: shown, marked. A cell
with no ``ok`` row is a failure point carrying its status (``oom``, ``error``, ``nan``): tables
print it (``OOM``), figures mark it. Derived values (gap, speed-up) carry no interval, except in
the tables where the run's samples are given (:func:`summary_tables`): the loss gap's paired by
target window over documents (:func:`claims.loss_gap`), the speed-up's over timing repeats, and
over seeds where a model has several (:func:`claims.speedup`), each only where the samples
reproduce the cell's value.

:func:`summary_tables` gives the paper's tables as DataFrames (index: model, arch and the facets
that vary; columns: ``eval_ctx``; cells: a float, or the failure's label), with a title, a
number format and the intervals' ends in ``DataFrame.attrs``; :func:`render_markdown`,
:func:`render_latex`, :func:`format_tables` and :func:`write_tables` print and save them.
"""
from __future__ import annotations

import functools
import itertools
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.api import results, stats
from harness.api.errors import check_choice
from harness.api.staging import prepare_output
from harness.report import claims
from harness.report.written import replace_written

REFERENCE_ARCH = "full_attention"
# Paper order: the reference first, the method last; other architectures follow by name.
ARCH_ORDER = ("full_attention", "swa", "mamba2", "gated_deltanet", "ttt_e2e")
ARCH_NAMES = {
    "full_attention": "Full attention",
    "swa": "SWA",
    "mamba2": "Mamba 2",
    "gated_deltanet": "Gated DeltaNet",
    "ttt_e2e": "TTT-E2E",
}
# (task, metric) of what the tables and figures read.
LOSS = ("loss_scaling", "loss")
NIAH_TASK = "niah"
NIAH_ACCURACY = ("gen_match", "cand_acc")  # in order of preference
NIAH_NAMES = {"gen_match": "NIAH accuracy (generation)", "cand_acc": "NIAH accuracy (candidate ranking)"}
LATENCY_TASK = "latency"
TIMES = ("prefill_s", "decode_s")
MEMORY = ("prefill_peak_bytes", "decode_peak_bytes", "state_bytes")
# Scores that are shares of answers, whose intervals stay inside [0, 1].
SHARES = {**{(NIAH_TASK, m): (0.0, 1.0) for m in NIAH_ACCURACY}, ("mqar", "accuracy"): (0.0, 1.0)}
FAILURE_LABELS = {"oom": "OOM", "error": "error", "nan": "NaN"}
# Key columns that split another task's score into rows of its table when they vary (the rest
# name the series, or are pooled: run, seed).
OTHER_FACETS = ("variant", "haystack", "depth", "pos_start", "pos_end", "batch_size")
# Columns that split one model into several series when they vary within it.
SERIES_SPLIT = ("train_ctx", "backend", "dtype", "device")
POINT_COLUMNS = ("series", "arch", "value", "ci_low", "ci_high", "status", "message", "flag", "seeds")
# What a point's interval over several training seeds is (:func:`stats.across_seeds`), for a footnote
SEEDS_INTERVAL = (f"the wider, at each end, of Student's t {stats.DEFAULT_LEVEL:.0%} interval over the seeds' values "
                  "and the seeds' own intervals averaged, so that it covers seed-to-seed variance")
UNSTABLE_MARK = "†"  # after a table cell whose value carries a flag (an unstable timing, a partial mean)
TABLE_FORMATS = ("md", "csv", "tex")
MIB = 2**20


def context_label(n: float) -> str:
    """1024 -> '1K', 131072 -> '128K', 1536 -> '1.5K', 1048576 -> '1M', 500 -> '500'; shortened
    only where exact (at most two decimals): 3000 -> '3000', not '2.93K', and 131000 -> '131000',
    not a second '128K' (a column, a tick, a file name each)."""
    n = int(n)
    for size, suffix in ((2**20, "M"), (2**10, "K")):
        if n >= size and n * 100 % size == 0:
            return f"{n / size:g}{suffix}"
    return str(n)


def arch_name(arch: str) -> str:
    return ARCH_NAMES.get(arch, arch)


# ---------------------------------------------------------------------------------------------
# Series and points


@dataclass
class Prepared:
    """A result table read into series: ``rows`` (the table with a ``series`` column), ``series``
    (one row per series, in paper order: series, model, arch, params, label, and the split
    columns) and ``reference`` (series -> its full-attention series, or None)."""

    rows: pd.DataFrame
    series: pd.DataFrame
    reference: dict[str, str | None]

    @property
    def order(self) -> list[str]:
        return list(self.series["series"])

    def has(self, task: str, metric: str, ok: bool = False) -> bool:
        """Whether the table has rows of ``metric`` from ``task`` (``ok``: rows with a value)."""
        mask = (self.rows["task"] == task) & (self.rows["metric"] == metric)
        if ok:
            mask &= self.rows["status"] == "ok"
        return bool(mask.any())

    def points(self, task: str, metric: str, by: Sequence[str] = ("eval_ctx",), **where: Any) -> pd.DataFrame:
        """One row per (series, *by) of ``metric`` from ``task``: POINT_COLUMNS and ``by``.
        ``where`` filters columns (``None`` selects NA: ``depth=None`` = pooled over depths)."""
        df = self.rows[(self.rows["task"] == task) & (self.rows["metric"] == metric)]
        for col, value in where.items():
            df = df[df[col].isna()] if value is None else df[(df[col] == value).fillna(False)]
        keys = ["series", *by]
        ok = df["status"] == "ok"
        # Ok rows give the value (their mean) and, alone, the interval (several seeds': over_seeds); without
        # any, the first failure.
        work = df.assign(v=df["value"].where(ok), lo=df["ci_low"].where(ok), hi=df["ci_high"].where(ok),
                         n_ok=ok.astype(int), failed=df["status"].where(~ok), why=df["message"].where(~ok),
                         fl=df["flag"].where(ok & (df["flag"] != "")), sd=df["seed"].where(ok))
        out = work.groupby(keys, dropna=False, sort=False).agg(
            arch=("arch", "first"), value=("v", "mean"), ci_low=("lo", "first"), ci_high=("hi", "first"),
            n_ok=("n_ok", "sum"), n_rows=("n_ok", "size"), failed=("failed", "first"), why=("why", "first"),
            flag=("fl", "first"), seeds=("sd", "nunique")).reset_index()
        out["flag"] = out["flag"].fillna("").astype(object)
        # a mean over the seeds (or runs) that worked is not the cell's result: flag what failed
        partial = (out["n_ok"] > 0) & (out["n_ok"] < out["n_rows"])
        out.loc[partial, "flag"] = [
            f"partial: {r.n_ok} of {r.n_rows} rows ok, the others {r.failed}" + (f"; {r.flag}" if r.flag else "")
            for r in out[partial].itertuples(index=False)]
        single = out["n_ok"] == 1
        out["ci_low"] = out["ci_low"].where(single)
        out["ci_high"] = out["ci_high"].where(single)
        over_seeds(out, df[ok], work.groupby(keys, dropna=False, sort=False).ngroup()[ok],
                   SHARES.get((task, metric), (-math.inf, math.inf)))
        out["status"] = out["failed"].where(out["n_ok"] == 0, "ok").astype(object)
        out["message"] = out["why"].where(out["n_ok"] == 0, "").fillna("").astype(object)
        return self._sorted(out[[*keys, *POINT_COLUMNS[1:]]], list(by))

    def relative(self, points: pd.DataFrame, by: Sequence[str], kind: str) -> pd.DataFrame:
        """Each point against its series' reference at the same ``by`` cell: ``kind`` is
        ``"gap"`` (value - reference) or ``"speedup"`` (reference / value). A failed point keeps
        its status; a point whose reference is missing or failed gets NaN, flagged with why (the
        cell was blank without a word). A point is flagged (an unstable timing) when it or its
        reference is."""
        check_choice("relative kind", kind, ("gap", "speedup"))
        ok = points[points["status"] == "ok"]
        ok_keys = [tuple(k) for k in ok[["series", *by]].itertuples(index=False)]
        ref_values = dict(zip(ok_keys, ok["value"]))
        ref_flags = dict(zip(ok_keys, ok["flag"].fillna("")))
        statuses = {tuple(k): status for *k, status in points[["series", *by, "status"]].itertuples(index=False)}
        out = points.copy()
        values, flags = [], []
        for row in points.itertuples(index=False):
            cell = tuple(getattr(row, c) for c in by)
            ref = self.reference.get(row.series)
            ref_value = ref_values.get((ref, *cell), math.nan) if ref is not None else math.nan
            # a ratio is as unstable as either side: the point's own flag, else its reference's
            ref_flag = ref_flags.get((ref, *cell), "") if ref is not None else ""
            own = row.flag if isinstance(row.flag, str) else ""
            if ref is not None and row.status == "ok" and math.isnan(ref_value):
                where = ", ".join(f"{c}={v}" for c, v in zip(by, cell))
                own = own or f"no {ref} reference at {where} ({statuses.get((ref, *cell), 'not measured')})"
            flags.append(own or (f"reference {ref}: {ref_flag}" if ref_flag and row.status == "ok" else ""))
            if row.status != "ok":
                values.append(math.nan)
            elif kind == "gap":
                values.append(row.value - ref_value)
            else:
                values.append(ref_value / row.value if row.value > 0 else math.nan)
        out["value"] = values
        out["flag"] = pd.Series(flags, index=out.index, dtype=object)
        out["ci_low"] = out["ci_high"] = math.nan
        return out

    def _sorted(self, df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
        """Paper order of series, then ``by``: numbers by value, text in the order the table first
        lists it (the task's: pairs=4, 8, 16, not 16, 4, 8 as strings; NIAH's single first)."""
        rank = {s: i for i, s in enumerate(self.order)}
        keys = {"_rank": df["series"].map(rank)}
        for col in by:
            if pd.api.types.is_numeric_dtype(df[col]):
                keys[f"_{col}"] = df[col]
            else:
                first = {v: i for i, v in enumerate(dict.fromkeys(self.rows[col].dropna()))}
                keys[f"_{col}"] = df[col].map(first)
        df = df.assign(**keys).sort_values(list(keys), na_position="first", kind="stable")
        return df.drop(columns=list(keys)).reset_index(drop=True)


def over_seeds(points: pd.DataFrame, rows: pd.DataFrame, group: pd.Series,
               bounds: tuple[float, float] = (-math.inf, math.inf)) -> None:
    """Give each point (``points``' row labelled i: the ``ok`` result ``rows`` whose ``group`` is i)
    whose rows come from several training seeds the seeds' mean and its interval over seeds
    (:func:`stats.across_seeds`): each seed's value the mean of its rows, its own interval kept
    where it rests on one row; the interval cut to ``bounds`` (an accuracy's [0, 1], which
    Student's t over seeds that disagree leaves)."""
    by_seed = rows.assign(g=np.asarray(group)).groupby(["g", "seed"], dropna=False, sort=False).agg(
        v=("value", "mean"), lo=("ci_low", "first"), hi=("ci_high", "first"), rows=("value", "size"))
    seeds = by_seed.groupby(level="g").size()
    for g in seeds.index[seeds > 1]:
        cell = by_seed.loc[g]
        own = cell["rows"] == 1
        est = stats.across_seeds(cell["v"], cell["lo"].where(own), cell["hi"].where(own))
        # never cut past the value itself (a share above 1: a task's bug, drawn as it is, not a negative bar)
        points.loc[g, ["value", "ci_low", "ci_high"]] = [est.value, min(max(est.ci_low, bounds[0]), est.value),
                                                         max(min(est.ci_high, bounds[1]), est.value)]


def prepare(table: pd.DataFrame) -> Prepared:
    """Series, labels and references of a result table (in schema form)."""
    rows = results.to_frame(table)
    split = [c for c in SERIES_SPLIT if (rows.groupby("model", dropna=False)[c].nunique(dropna=False) > 1).any()]

    extras = [[(f"{c}={v}" if c == "train_ctx" else str(v)) if pd.notna(v) else "" for v in rows[c]] for c in split]
    rows["series"] = pd.array([model + (f" [{', '.join(e for e in extra if e)}]" if any(extra) else "")
                               for model, *extra in zip(rows["model"].astype(str), *extras)], dtype="string")
    info = rows.groupby("series", sort=False).first().reset_index()
    info = info[["series", "model", "arch", "params", *SERIES_SPLIT]]
    known = {a: i for i, a in enumerate(ARCH_ORDER)}
    info = info.assign(_a=info["arch"].map(lambda a: (known.get(a, len(known)), a)),
                       _p=info["params"].astype("float64").fillna(0))
    info = info.sort_values(["_a", "_p", "series"], kind="stable").drop(columns=["_a", "_p"]).reset_index(drop=True)
    per_arch = info["arch"].value_counts()
    # One series per architecture: the architecture's name; several (sizes, backends): the series'.
    info["label"] = [arch_name(a) if per_arch[a] == 1 else s for s, a in zip(info["series"], info["arch"])]
    return Prepared(rows, info, _references(info))


def _references(info: pd.DataFrame) -> dict[str, str | None]:
    """Each series' full-attention reference: the same device and dtype if possible, then the
    same training length, then the nearest size, then by name."""
    refs = info[info["arch"] == REFERENCE_ARCH]
    out: dict[str, str | None] = {}
    for row in info.itertuples(index=False):
        if row.arch == REFERENCE_ARCH:
            out[row.series] = row.series
            continue
        if refs.empty:
            out[row.series] = None
            continue

        def distance(ref) -> tuple:
            differ = [not _same(getattr(ref, c), getattr(row, c)) for c in ("device", "dtype", "train_ctx")]
            sizes = [ref.params, row.params]
            size = abs(math.log(sizes[0] / sizes[1])) if all(pd.notna(p) and p > 0 for p in sizes) else math.inf
            return (*differ, size, ref.series)

        out[row.series] = min(refs.itertuples(index=False), key=distance).series
    return out


def _same(a: Any, b: Any) -> bool:
    return (pd.isna(a) and pd.isna(b)) or (not pd.isna(a) and not pd.isna(b) and a == b)


# ---------------------------------------------------------------------------------------------
# Tables


def _pivot(points: pd.DataFrame, facets: Sequence[str], title: str, fmt: str,
           scale: float = 1.0) -> pd.DataFrame:
    """A wide table: index (model, arch, *facets), columns eval_ctx; attrs: title, fmt, ci_low, ci_high."""
    pts = points.assign(model=points["series"])  # the series name: the model, and its split if any
    index = ["model", "arch", *facets]
    cells = pts["value"].astype(object) / scale
    cells[pts["status"] != "ok"] = pts.loc[pts["status"] != "ok", "status"].map(lambda s: FAILURE_LABELS.get(s, s))
    flags = pts["flag"] if "flag" in pts else pd.Series("", index=pts.index)
    wide = pts.assign(cell=cells, lo=pts["ci_low"] / scale, hi=pts["ci_high"] / scale,
                      fl=flags.fillna("")).set_index([*index, "eval_ctx"])
    table = wide["cell"].unstack("eval_ctx")
    # the rows in the points' order, each level in its own dtype (tuples holding an NA make floats of Int64)
    table = table.reindex(pd.MultiIndex.from_frame(pts[index].drop_duplicates()))
    # Context lengths in order, then 'all' (a score without one)
    columns = sorted(table.columns, key=lambda c: (isinstance(c, str), 0 if isinstance(c, str) else c))
    table = table.reindex(columns=columns)
    table.columns.name = "eval_ctx"
    table.attrs.update(title=title, fmt=fmt, seeds=int(pts["seeds"].max()) if len(pts) else 0, **{
        name: wide[col].unstack("eval_ctx").reindex(index=table.index, columns=table.columns)
        for name, col in (("ci_low", "lo"), ("ci_high", "hi"), ("flags", "fl"))})
    return table


def _facets(points: pd.DataFrame, candidates: Sequence[str]) -> list[str]:
    """The candidate columns that vary (a constant batch size is no column of its own)."""
    return [c for c in candidates if points[c].nunique(dropna=False) > 1]


def summary_tables(table: pd.DataFrame | Prepared, niah_metrics: Sequence[str] | None = None,
                   samples: claims.RunData | None = None) -> dict[str, pd.DataFrame]:
    """The summary tables the table's data allows, by name:

    ``loss`` and ``loss_gap`` (to full attention), ``niah_<metric>`` (pooled over depths, per
    variant and haystack), ``prefill_ms`` / ``decode_ms`` with ``prefill_speedup`` /
    ``decode_speedup`` (full attention's time / the model's), ``prefill_peak_mib``,
    ``decode_peak_mib``, ``state_mib``; and ``<task>_<metric>`` for every other score (a plugin
    task's, lm-eval's). Tables whose data is absent are left out. With the run's ``samples``
    (:func:`claims.load_run`), the gaps and speed-ups get intervals (:func:`_from_samples`)."""
    prep = table if isinstance(table, Prepared) else prepare(table)
    run = claims.with_samples(samples)
    out: dict[str, pd.DataFrame] = {}
    if prep.has(*LOSS):
        loss = prep.points(*LOSS, pos_start=None)
        out["loss"] = _pivot(loss, [], "Loss (nats/token) by evaluation context length", ".3f")
        if _has_reference(prep, loss):
            gap = prep.relative(loss, ["eval_ctx"], "gap")
            intervals = gap_intervals(prep, gap, run) if run else None
            note = intervals.note if intervals else ""
            out["loss_gap"] = _pivot(gap, [], "Loss gap to full attention (nats/token; negative: better)", "+.3f")
            out["loss_gap"].attrs.update(note=note, own_interval=bool(note))
    for metric in niah_metric_names(prep, niah_metrics):
        pts = prep.points(NIAH_TASK, metric, by=("variant", "haystack", "eval_ctx"), depth=None)
        out[f"niah_{metric}"] = _pivot(pts, ["variant", "haystack"],
                                       f"{NIAH_NAMES.get(metric, metric)}, pooled over needle depths", ".2f")
    latency = prep.rows[prep.rows["task"] == LATENCY_TASK]  # read once: the timing notes and the memory tables
    for metric in TIMES:
        if not prep.has(LATENCY_TASK, metric):
            continue
        pts = prep.points(LATENCY_TASK, metric, by=("batch_size", "eval_ctx"))
        facets = _facets(pts, ["batch_size"])
        phase = metric.removesuffix("_s")
        what = "decode time per token" if phase == "decode" else "prefill time"
        out[f"{phase}_ms"] = _pivot(pts, facets, f"{what.capitalize()} (ms) by context length", "sig", scale=1e-3)
        out[f"{phase}_ms"].attrs["note"] = repeats_note(latency, metric)
        if _has_reference(prep, pts):
            ratio = prep.relative(pts, ["batch_size", "eval_ctx"], "speedup")
            intervals = speedup_intervals(prep, ratio, run, phase) if run else None
            note = intervals.note if intervals else ""
            out[f"{phase}_speedup"] = _pivot(ratio, facets, f"{phase.capitalize()} speed-up over full attention (×)",
                                             ".2f")
            out[f"{phase}_speedup"].attrs.update(note=note, own_interval=bool(note),
                                                 seeds_value="full attention's mean time over the model's")
    peak = peak_memory_name(set(latency["device"].dropna()))
    for metric, name, what in (("prefill_peak_bytes", "prefill_peak_mib", f"{peak} while prefilling"),
                               ("decode_peak_bytes", "decode_peak_mib", f"{peak} while decoding"),
                               ("state_bytes", "state_mib", "State size after the prefix")):
        if prep.has(LATENCY_TASK, metric):
            pts = prep.points(LATENCY_TASK, metric, by=("batch_size", "eval_ctx"))
            out[name] = _pivot(pts, _facets(pts, ["batch_size"]), f"{what} (MiB) by context length", "sig",
                               scale=MIB)
    for task, metric, facets, pts in _other_scores(prep):
        name = base = re.sub(r"\W+", "_", f"{task}_{metric}").strip("_")
        for n in itertools.count(2):  # "lm_eval:x" + "acc" and "lm_eval_x" + "acc" must not overwrite each other
            if name not in out:
                break
            name = f"{base}_{n}"
        out[name] = _pivot(pts, facets, f"{task}: {metric}", shared_decimals(pts["value"]))
    return out


def _from_samples(prep: Prepared, rel: pd.DataFrame, by: Sequence[str],
                  estimate: Callable[[str, str, tuple], stats.Estimate | None]) -> tuple[list[stats.Estimate], int]:
    """Give each point of ``rel`` (a gap or speed-up against its series' reference, in place) the
    interval of ``estimate(model, reference model, its by-cell)`` where that reproduces its value:
    the samples know models, not series (a model split by backend or train_ctx is left bare), and
    a value they do not give (a mean over runs' medians) is not theirs to bound. Returns the
    estimates given and how many points (not the reference's own) went without."""
    models = dict(zip(prep.series["series"], prep.series["model"].astype(str)))
    split = {m for m, n in prep.series["model"].astype(str).value_counts().items() if n > 1}
    given, bare = [], 0
    for i, row in rel.iterrows():
        ref = prep.reference.get(row["series"])
        if ref is None or ref == row["series"] or row["status"] != "ok" or not np.isfinite(row["value"]):
            continue
        model, theirs = models[row["series"]], models[ref]
        est = None if split & {model, theirs} else estimate(model, theirs, tuple(row[c] for c in by))
        if (est is None or not np.isfinite(est.ci_low)
                or not math.isclose(est.value, row["value"], rel_tol=1e-9, abs_tol=1e-12)):
            bare += 1
            continue
        rel.loc[i, ["ci_low", "ci_high"]] = [est.ci_low, est.ci_high]
        given.append(est)
    return given, bare


@dataclass(frozen=True)
class DerivedIntervals:
    """What the intervals that :func:`gap_intervals` or :func:`speedup_intervals` gave are, for a
    table's footnote (:attr:`note`) and a figure's legend (``short``) alike: ``what`` (in full),
    ``bare`` points left without one (not the reference's own), of ``noun``, ``why``."""

    what: str
    short: str
    noun: str
    bare: int
    why: str

    @property
    def note(self) -> str:
        return f"± and [low, high]: {self.what}" + (f"; {self.bare} {self.noun}(s) without one: {self.why}"
                                                   if self.bare else "")

    @property
    def bare_note(self) -> str:
        """'2 speed-up(s) drawn without a band: ...' ("" when every point has one): a figure's footnote."""
        return f"{self.bare} {self.noun}(s) drawn without a band: {self.why}" if self.bare else ""


def gap_intervals(prep: Prepared, gap: pd.DataFrame, run: claims.RunData,
                  by: Sequence[str] = ("eval_ctx",)) -> DerivedIntervals | None:
    """Give the loss gaps by ``eval_ctx`` (and position bin: ``by`` ending in ``pos_start``,
    ``pos_end``) (:meth:`Prepared.relative`, in place) their interval paired by target window
    over documents (:func:`claims.loss_gap`); say what they are (None: none got one). The tables
    print them, the figures draw them."""
    def estimate(model: str, ref: str, cell: tuple) -> stats.Estimate | None:
        positions = (int(cell[1]), int(cell[2])) if len(cell) == 3 else None
        return claims.loss_gap(run, model, ref, int(cell[0]), positions)

    given, bare = _from_samples(prep, gap, list(by), estimate)
    if not given:
        return None
    seeds = any(len(getattr(e, "per_seed", ())) > 1 for e in given)
    return DerivedIntervals(
        f"a {stats.DEFAULT_LEVEL:.0%} bootstrap interval of the gap paired by target window over documents (each "
        f"window's loss minus full attention's on it; documents{' and training seeds' if seeds else ''} resampled)",
        f"{stats.DEFAULT_LEVEL:.0%} interval of the gap,\npaired over documents" + ("\nand seeds" if seeds else ""),
        "gap", bare, "not scored on the same windows")


def speedup_intervals(prep: Prepared, ratio: pd.DataFrame, run: claims.RunData, phase: str) -> DerivedIntervals | None:
    """Give the speed-ups by ``batch_size`` and ``eval_ctx`` (:meth:`Prepared.relative`, in place)
    an interval over timing repeats, and over seeds where a model has several (:func:`claims.speedup`,
    a spread over few); say what they are (None: none got one). The tables print them, the figures
    draw them."""
    @functools.cache  # each (model, batch) scans every sample once, not once per cell
    def timed(model: str, batch: int) -> dict[int, list[list[float]]]:
        return run.timings(model, phase, batch)

    def estimate(model: str, ref: str, cell: tuple) -> stats.Estimate | None:
        batch, ctx = int(cell[0]), int(cell[1])
        mine, theirs = (timed(m, batch).get(ctx) for m in (model, ref))
        return claims.speedup(theirs, mine, ctx) if mine and theirs else None

    given, bare = _from_samples(prep, ratio, ["batch_size", "eval_ctx"], estimate)
    if not given:
        return None
    n = min(e.n for e in given)
    seeds = max(max(getattr(e, "seeds", (1, 1))) for e in given)
    if seeds > 1:  # the seeds held fixed in the bootstrap; their spread widens it where a model has several
        what = (f"the ratio of the two models' means over training seeds (up to {seeds}) of each seed's median (each "
                "seed's timings resampled on their own, widened to Student's t interval over the seeds' medians "
                "where a model has several)")
        spread, interval = f"spread over {n}\ntiming repeats a seed", "interval over\ntiming repeats and seeds"
    else:
        what = "the ratio of medians (each model's timings resampled on their own)"
        spread, interval = f"spread over {n}\ntiming repeats", "interval over\ntiming repeats"
    if claims.is_spread(n):
        full, short = _spread_note(n, what, " a seed" if seeds > 1 else ""), spread
    else:
        full, short = (f"a {stats.DEFAULT_LEVEL:.0%} bootstrap interval of {what} over timing repeats",
                       f"{stats.DEFAULT_LEVEL:.0%} {interval}")
    return DerivedIntervals(full, short, "speed-up", bare, "the samples do not give its value (no repeats, a mean "
                            "over runs)")


def peak_memory_name(devices: set[str], sep: str = " ") -> str:
    """What the latency task's peak-memory rows of ``devices`` measured (harness.api.results):
    on a GPU the allocator's peak, weights included; on a CPU how far the resident set rose above
    its size before the work (weights, and a decode's state, excluded)."""
    if devices == {"cpu"}:
        return "Resident memory added"
    return f"Peak memory (GPU allocated,{sep}CPU resident added)" if "cpu" in devices else "Peak GPU memory"


def shared_decimals(values: pd.Series, digits: int = 4) -> str:
    """A fixed-point format for a whole table: ``digits`` significant digits of its largest
    magnitude, 1 to 6 decimals, so its columns line up (0.7598, 0.0072, 0.0000)."""
    finite = pd.to_numeric(values, errors="coerce").abs()
    top = finite[np.isfinite(finite) & (finite > 0)].max()
    decimals = 3 if pd.isna(top) else min(6, max(1, digits - 1 - math.floor(math.log10(top))))
    return f".{decimals}f"


# (task, metric) pairs that the tables above show, or leave out on purpose (rates mirror times).
_SHOWN = {LOSS, *((NIAH_TASK, m) for m in (*NIAH_ACCURACY, "value_logprob")),
          *((LATENCY_TASK, m) for m in (*TIMES, *MEMORY, "prefill_tok_s", "decode_tok_s"))}


def _other_scores(prep: Prepared) -> Iterator[tuple[str, str, list[str], pd.DataFrame]]:
    """(task, metric, facets, points) of every other score, e.g. a plugin task's or lm-eval's:
    by context length where it has one (``all`` where not), the varying key columns as facets."""
    for task, metric in prep.rows[["task", "metric"]].drop_duplicates().itertuples(index=False, name=None):
        if (task, metric) in _SHOWN:
            continue
        rows = prep.rows[(prep.rows["task"] == task) & (prep.rows["metric"] == metric)]
        facets = [c for c in OTHER_FACETS if rows[c].nunique(dropna=False) > 1]
        pts = prep.points(task, metric, by=(*facets, "eval_ctx"))
        pts["eval_ctx"] = pts["eval_ctx"].astype(object).where(pts["eval_ctx"].notna(), "all")
        yield task, metric, facets, pts


def niah_metric_names(prep: Prepared, wanted: Sequence[str] | None = None) -> list[str]:
    """The NIAH accuracy metrics to show: ``wanted`` (checked) or those in the table."""
    if wanted is not None:
        for metric in wanted:
            check_choice("NIAH metric", metric, NIAH_ACCURACY)
    return [m for m in (wanted or NIAH_ACCURACY) if prep.has(NIAH_TASK, m)]


def _has_reference(prep: Prepared, points: pd.DataFrame) -> bool:
    """Whether some non-reference series has a reference among these points."""
    present = set(points["series"])
    return any(ref in present and ref != s for s, ref in prep.reference.items() if s in present)


# ---------------------------------------------------------------------------------------------
# Rendering


def _cell_text(value: Any, low: Any, high: Any, fmt: str) -> str:
    """A cell as text: a failure's label as is; a number in ``fmt`` (a format spec, or ``"sig"``:
    three significant digits without exponent) with its interval in as many decimals: ``± h``
    when both sides print alike, else its ends ``[low, high]`` (a bootstrap or Wilson interval
    is seldom symmetric, and ± its half-width would state another one: 0.00 ± 0.15 for [0, 0.30])."""
    if isinstance(value, str):
        return value
    if value is None or pd.isna(value):
        return ""
    value = float(value)
    if fmt == "sig":
        decimals = max(0, 2 - math.floor(math.log10(abs(value)))) if value else 0
        fmt = f".{decimals}f"
    text = format(value, fmt)
    if low is None or high is None or pd.isna(low) or pd.isna(high) or not high > low:
        return text
    plain = fmt.lstrip("+")
    above, below = format(float(high) - value, plain), format(value - float(low), plain)
    if above == below:
        return f"{text} ± {above}"
    return f"{text} [{format(float(low), plain)}, {format(float(high), plain)}]"


def text_rows(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a summary table as text: index columns, then one per context length (what
    every renderer shows, the HTML report included)."""
    fmt = df.attrs.get("fmt", ".4g")
    lows, highs = df.attrs.get("ci_low"), df.attrs.get("ci_high")
    flags = df.attrs.get("flags")
    header = [*df.index.names, *(context_label(c) if isinstance(c, (int, np.integer)) else str(c) for c in df.columns)]
    rows = []
    for i, (key, values) in enumerate(df.iterrows()):
        key = key if isinstance(key, tuple) else (key,)
        index_text = [arch_name(k) if name == "arch" else ("" if pd.isna(k) else str(k))
                      for name, k in zip(df.index.names, key)]
        cells = [_cell_text(v, *(None if ci is None else ci.iat[i, j] for ci in (lows, highs)), fmt)
                 + (UNSTABLE_MARK if flags is not None and isinstance(flags.iat[i, j], str) and flags.iat[i, j] else "")
                 for j, v in enumerate(values)]
        rows.append(index_text + cells)
    return header, rows


def repeats_note(latency: pd.DataFrame, metric: str) -> str:
    """What a timing table's intervals are when its fewest repeats cannot give a confidence
    interval of a median ("" when every cell has enough): read them as spreads. ``latency``: the
    latency task's rows."""
    timed = latency[(latency["metric"] == metric) & (latency["status"] == "ok") & latency["ci_low"].notna()
                    & latency["n"].notna()]
    if timed.empty:
        return ""
    n = int(timed["n"].min())
    return f"± and [low, high]: {_spread_note(n, 'the median')}" if claims.is_spread(n) else ""


def _spread_note(n: int, what: str, per: str = "") -> str:
    """That intervals of ``what`` over as few as ``n`` timings (``per``: ' a seed') are spreads,
    not confidence intervals."""
    return (f"a bootstrap spread of {what} over as few as {n} timings{per}, not a "
            f"{stats.DEFAULT_LEVEL:.0%} interval (their range covers the median at most "
            f"{stats.median_max_coverage(n):.0%} of the time)")


def footnotes(df: pd.DataFrame) -> list[str]:
    """The footnotes of a table: how many cells are flagged (the mark and the first reason), and
    what its intervals are where that needs saying."""
    notes = []
    flags = df.attrs.get("flags")
    found = [] if flags is None else [f for f in flags.to_numpy().ravel() if isinstance(f, str) and f]
    if found:
        notes.append(f"{UNSTABLE_MARK} {len(found)} value(s) flagged, e.g. {found[0]}")
    if df.attrs.get("note"):
        notes.append(df.attrs["note"])
    if df.attrs.get("seeds", 0) > 1:
        lows = df.attrs.get("ci_low")
        # a gap or speed-up has none, or its own (its note says what)
        with_interval = lows is not None and bool(lows.notna().to_numpy().any()) and not df.attrs.get("own_interval")
        notes.append(f"A value over several training seeds (up to {df.attrs['seeds']}) is "
                     f"{df.attrs.get('seeds_value', 'their mean')}"
                     + (f"; its interval is over seeds: {SEEDS_INTERVAL}" if with_interval else ""))
    return notes


def render_markdown(df: pd.DataFrame, title: bool = True) -> str:
    """A GitHub-flavoured Markdown table (with its title as a bold line, unless ``title=False``)."""
    header, rows = text_rows(df)
    n_index = df.index.nlevels

    def line(cells: Iterable[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = [line(header), "|" + "|".join(":---" if i < n_index else "---:" for i in range(len(header))) + "|"]
    lines += [line(r) for r in rows]
    for note in footnotes(df):
        lines += ["", note]
    if title and df.attrs.get("title"):
        lines = [f"**{df.attrs['title']}**", ""] + lines
    return "\n".join(lines)


_LATEX_ESCAPES = {UNSTABLE_MARK: r"$^\dagger$", "±": r"$\pm$", "×": r"$\times$", "\\": r"\textbackslash{}",
                  "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def render_latex(df: pd.DataFrame) -> str:
    """A booktabs ``table`` environment with the title as caption."""
    header, rows = text_rows(df)
    n_index = df.index.nlevels

    def line(cells: Iterable[str]) -> str:
        return " & ".join(_latex_escape(c) for c in cells) + r" \\"

    body = [r"\begin{table}[t]", r"\centering", r"\small"]
    if df.attrs.get("title"):
        body.append(rf"\caption{{{_latex_escape(df.attrs['title'])}}}")
    body += [r"\begin{tabular}{" + "l" * n_index + "r" * (len(header) - n_index) + "}", r"\toprule", line(header),
             r"\midrule", *(line(r) for r in rows), r"\bottomrule", r"\end{tabular}"]
    body += [r"\par\footnotesize " + _latex_escape(note) for note in footnotes(df)]
    body.append(r"\end{table}")
    return "\n".join(body)


def render_csv(df: pd.DataFrame) -> str:
    """Plain values (no intervals), one column per context length in tokens."""
    return df.reset_index().to_csv(index=False)


_RENDERERS = {"md": render_markdown, "csv": render_csv, "tex": render_latex}


def format_tables(tables: Mapping[str, pd.DataFrame], fmt: str = "md") -> str:
    """Every table in one text (Markdown for printing, by default)."""
    check_choice("table format", fmt, TABLE_FORMATS)
    if fmt == "csv":
        return "\n".join(f"# {name}\n{render_csv(df)}" for name, df in tables.items())
    return "\n\n".join(_RENDERERS[fmt](df) for df in tables.values()) + "\n"


def write_tables(tables: Mapping[str, pd.DataFrame], out_dir: str | os.PathLike,
                 formats: Sequence[str] = TABLE_FORMATS) -> list[Path]:
    """``<out_dir>/<name>.<format>`` for every table and format (atomically); the paths written."""
    for fmt in formats:
        check_choice("table format", fmt, TABLE_FORMATS)
    out_dir = prepare_output(out_dir, "tables folder")
    paths = []
    for name, df in tables.items():
        for fmt in formats:
            text = _RENDERERS[fmt](df)
            path = out_dir / f"{name}.{fmt}"
            paths.append(results.atomic_write(path, lambda f, t=text: f.write(t.rstrip("\n") + "\n")))
    replace_written(out_dir, {"tables": paths})  # a table this run no longer gives is not left looking current
    return paths
