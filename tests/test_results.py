"""The result schema, its validation and storage; bootstrap intervals; timers; option parsing."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import pytest
import torch

from harness.api import results, stats, timing
from harness.api.errors import ConfigError
from harness.api.options import option, parse_options
from harness.runs import provenance


def rows(n=3, **extra):
    base = dict(run="r", model="m", arch="swa", task="loss_scaling", params=10)
    return [results.make_row("loss", 1.0 + i, eval_ctx=256 * (i + 1), n=4, **base, **extra) for i in range(n)]


def test_make_row_marks_non_finite_values_and_refuses_unknown_columns():
    assert results.make_row("loss", float("nan"), run="r")["status"] == "nan"
    assert results.make_row("loss", float("inf"), run="r")["message"]
    oom = results.make_row("loss", 3.0, status="oom", message="out of memory", ci_low=2.0, ci_high=4.0)
    assert math.isnan(oom["value"]) and math.isnan(oom["ci_low"]) and math.isnan(oom["ci_high"])
    diverged = results.make_row("loss", float("inf"), ci_low=1.0, ci_high=float("inf"))
    assert diverged["status"] == "nan" and math.isnan(diverged["ci_low"])
    with pytest.raises(results.SchemaError, match="did you mean 'eval_ctx'"):
        results.make_row("loss", 1.0, eval_cxt=3)


def test_validate_returns_schema_columns_and_dtypes():
    df = results.validate(rows())
    assert list(df.columns) == results.COLUMNS
    assert str(df["eval_ctx"].dtype) == "Int64" and str(df["value"].dtype) == "float64"
    assert df["depth"].isna().all() and (df["message"] == "").all()


@pytest.mark.parametrize(
    "change, problem",
    [
        (dict(status="fine"), "unknown status"),
        (dict(metric=None), "no 'metric'"),
        (dict(status="oom", message=""), "have no message"),
        (dict(ci_low=5.0, ci_high=6.0), "outside"),
        (dict(ci_low=0.0, ci_high=0.5), "outside"),  # value 1.0 above its interval (the mutation audit)
        (dict(n=-1), "negative 'n'"),
        (dict(pos_start=8, pos_end=4), "position bin"),
        (dict(pos_start=4, pos_end=4), "position bin"),  # an empty bin (end exclusive; the mutation audit)
        (dict(depth=1.5), "depth outside"),
        (dict(status="oom", message="out of memory"), "not ok have a value"),
        (dict(ci_low=0.5, ci_high=None), "only one end of their interval"),
        (dict(n=0), "n=0"),
    ],
)
def test_validate_names_each_problem(change, problem):
    bad = rows(1)
    bad[0].update(change)
    with pytest.raises(results.SchemaError, match=problem):
        results.validate(bad)


def test_validate_refuses_ok_rows_with_nan_and_duplicate_keys():
    bad = rows(1)
    bad[0]["value"] = float("nan")
    with pytest.raises(results.SchemaError, match="non-finite"):
        results.validate(bad)
    with pytest.raises(results.SchemaError, match="share their identifying columns"):
        results.validate(rows(1) + rows(1))
    with pytest.raises(results.SchemaError, match="unknown result column"):
        results.validate([{**rows(1)[0], "colour": "red"}])


def test_table_round_trips_through_parquet_and_csv(tmp_path):
    table = rows(2) + [results.make_row("loss", None, run="r", model="m", arch="swa", task="t", eval_ctx=9,
                                        status="oom", message="CUDA out of memory, at 9")]
    written = results.write_table(tmp_path, table)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "results.parquet"]
    from_parquet = results.read_table(tmp_path)
    pd.testing.assert_frame_equal(from_parquet, written)
    os.remove(tmp_path / "results.parquet")
    from_csv = results.read_table(tmp_path)
    pd.testing.assert_frame_equal(from_csv, written)


def test_append_refuses_replaces_or_skips_duplicates(tmp_path):
    results.append_rows(tmp_path, rows(2))  # creates the table
    results.append_rows(tmp_path, rows(3)[2:])
    assert len(results.read_table(tmp_path)) == 3
    with pytest.raises(results.SchemaError, match="already in"):
        results.append_rows(tmp_path, rows(1))
    changed = rows(1)
    changed[0]["value"] = 42.0
    results.append_rows(tmp_path, changed, on_duplicate="skip")
    assert results.read_table(tmp_path)["value"].tolist() == [1.0, 2.0, 3.0]
    results.append_rows(tmp_path, changed, on_duplicate="replace")
    table = results.read_table(tmp_path)
    assert len(table) == 3 and 42.0 in table["value"].tolist()
    assert results.has_rows(table, eval_ctx=256, metric="loss") and not results.has_rows(table, eval_ctx=7)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "x.txt"
    results.atomic_write(path, lambda f: f.write("old"))

    def broken(f):
        f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        results.atomic_write(path, broken)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_jsonl_and_run_metadata(tmp_path):
    results.write_jsonl(tmp_path / "s.jsonl", [{"a": np.int64(1), "t": torch.tensor([1.5])}, {"b": None}])
    assert results.read_jsonl(tmp_path / "s.jsonl") == [{"a": 1, "t": [1.5]}, {"b": None}]
    meta = provenance.run_metadata(seed=3, command=["lcbench", "eval", "x"], device="cpu", task="x", options={"k": 1})
    provenance.write_run_json(tmp_path, meta)
    back = json.loads((tmp_path / "run.json").read_text())
    assert back["seed"] == 3 and back["command"] == "lcbench eval x" and "torch" in back["packages"]
    assert set(back["git"]) - {"diff"} == {"commit", "dirty"} and back["device"]["name"] == "cpu"  # diff: if dirty
    assert back["config_hash"] == provenance.run_metadata(seed=3, task="x", options={"k": 1})["config_hash"]


def test_bootstrap_intervals():
    rng = np.random.default_rng(0)
    values = rng.normal(2.0, 1.0, 200)
    est = stats.bootstrap_mean(values, seed=1)
    assert est.ci_low < values.mean() < est.ci_high and est.n == 200
    assert est.ci_high - est.ci_low == pytest.approx(2 * 1.96 / math.sqrt(200), rel=0.25)
    assert stats.bootstrap_mean(values, seed=1) == est  # deterministic
    one = stats.bootstrap_mean([3.0])
    assert one.value == 3.0 and math.isnan(one.ci_low) and one.n == 1
    # token-weighted: documents with more tokens count more
    ratio = stats.bootstrap_ratio([10.0, 1.0], [10, 1])
    assert ratio.value == pytest.approx(1.0) and ratio.ci_low <= 1.0 <= ratio.ci_high
    med = stats.bootstrap_median([1.0, 2.0, 100.0])
    assert med.value == 2.0 and med.ci_low <= 2.0 <= med.ci_high


def test_measure_and_peak_memory_on_cpu():
    calls = []
    times = timing.measure(lambda: calls.append(1), "cpu", repeats=3, warmup=2)
    assert len(times) == 3 and len(calls) == 5 and all(t >= 0 for t in times)
    seen = []
    timing.measure(lambda s: seen.append(s), "cpu", repeats=2, warmup=0, setup=lambda: "fresh")
    assert seen == ["fresh", "fresh"]
    with timing.PeakMemory("cpu") as pm:
        block = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB, touched
        block += 1
    assert pm.peak >= pm.baseline + 32 * 1024 * 1024
    del block


def test_is_oom_recognises_allocator_errors():
    assert timing.is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert timing.is_oom(RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory"))
    assert timing.is_oom(MemoryError())
    assert not timing.is_oom(RuntimeError("shape mismatch"))


@dataclass
class Opts:
    contexts: list[int] = option([256], "lengths")
    depth: float = option(0.5)
    flag: bool = option(True)
    name: str | None = option(None)


def test_parse_options_converts_strings_and_names_bad_keys():
    o = parse_options(Opts, {"contexts": "1K, 2k,4096", "depth": "0.25", "flag": "no", "name": "none"})
    assert o == Opts([1024, 2048, 4096], 0.25, False, None)
    assert parse_options(Opts, {"contexts": [8, "16"]}).contexts == [8, 16]
    with pytest.raises(ConfigError, match=r"unknown option 'context' of task 't'.*Did you mean 'contexts'"):
        parse_options(Opts, {"context": "1"}, "t")
    with pytest.raises(ConfigError, match="must be an integer"):
        parse_options(Opts, {"contexts": "1.5K3"})
    with pytest.raises(ConfigError, match="true or false"):
        parse_options(Opts, {"flag": "maybe"})


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_check_positive_refuses_non_finite_values(value):
    # NaN passes both "< 0" and "== 0", so a learning rate of nan used to train a diverged model
    from harness.api.options import check_positive

    with pytest.raises(ConfigError, match=f"'lr' must hold finite positive values, got {value}"):
        check_positive("lr", [value])
    with pytest.raises(ConfigError, match="'lr' must hold finite non-negative values"):
        check_positive("lr", [value], allow_zero=True)
    check_positive("lr", [1e-3])


def test_check_positive_refuses_zero_unless_zero_is_allowed():
    # a zero count or rate is no setting unless the option says so (the mutation audit: accepting
    # 0 without allow_zero survived every test)
    from harness.api.options import check_positive

    with pytest.raises(ConfigError, match="'steps' must hold finite positive values, got 0"):
        check_positive("steps", [4, 0])
    check_positive("steps", [4, 0], allow_zero=True)
    with pytest.raises(ConfigError, match="'steps' must hold finite non-negative values, got -1"):
        check_positive("steps", [-1], allow_zero=True)


def test_a_median_that_is_nan_has_no_interval():
    # The resamples that happen to miss the NaN unit gave a finite interval around a NaN value
    est = stats.bootstrap_median([1.0, 2.0, math.nan, 3.0, 4.0])
    assert math.isnan(est.value) and math.isnan(est.ci_low) and math.isnan(est.ci_high) and est.n == 5


@pytest.mark.parametrize("column", ["eval_ctx", "depth", "value", "n"])
def test_validate_refuses_true_and_false_as_numbers(column):
    # eval_ctx=True was stored as the context length 1
    bad = rows(1)
    bad[0][column] = True
    with pytest.raises(results.SchemaError, match=f"column '{column}'.*true/false"):
        results.validate(bad)
    with pytest.raises(results.SchemaError, match=f"column '{column}'"):
        results.validate(pd.DataFrame(bad).astype({column: bool}))


@pytest.mark.parametrize("flag", [True, np.bool_(False)])
def test_make_row_refuses_a_boolean_value(flag):
    # float(True) recorded a hit flag as the number 1.0, silently
    with pytest.raises(results.SchemaError, match="boolean"):
        results.make_row("hit", flag)


@pytest.mark.parametrize("raw, expected", [("12345678901234567891", 12345678901234567891), (2**60 + 1, 2**60 + 1),
                                           ("1.5K", 1536), ("1e3", 1000), ("2m", 2 * 1024 * 1024)])
def test_integer_options_are_exact(raw, expected):
    # through a float, a large seed came back as another number (12345678901234567168)
    from harness.api.options import convert_value

    assert convert_value(raw, int, "seed") == expected


@pytest.mark.parametrize("raw", ["0.3K", "1KiB", "inf", "1e400", "9" * 5000, 1.5])
def test_integer_options_that_are_not_whole_are_refused(raw):
    from harness.api.options import convert_value

    with pytest.raises(ConfigError, match="'seed' must be an integer"):
        convert_value(raw, int, "seed")


@pytest.mark.parametrize("hint", [int, float])
def test_true_and_false_are_not_numbers_for_a_number_option(hint):
    # a spec's boolean (JSON/YAML `true`) reaches an option as a bool, which Python counts as 1
    # (the mutation audit: dropping the bool guard survived every test)
    from harness.api.options import convert_value

    with pytest.raises(ConfigError, match="'seed' must be a number, got True"):
        convert_value(True, hint, "seed")
    with pytest.raises(ConfigError, match="'contexts' must be a number, got False"):
        parse_options(Opts, {"contexts": [8, False]})


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", math.nan])
def test_float_options_must_be_finite(raw):
    # as config fields (harness.api.fieldtypes): NaN or infinity is never a setting
    with pytest.raises(ConfigError, match="'depth' must be a finite number"):
        parse_options(Opts, {"depth": raw})


@dataclass
class Modes:
    mode: Literal["same", "per_length"] = option("same")
    modes: list[Literal["same", "per_length"]] = option(["same"])
    order: Literal[1, 2] = option(1)


def test_literal_options_take_only_their_values():
    # a plugin's Literal option took any string, e.g. a typo, and ran with it
    assert parse_options(Modes, {"mode": "per_length", "modes": "same,per_length", "order": "2"}) == \
        Modes("per_length", ["same", "per_length"], 2)
    with pytest.raises(ConfigError, match=r"'per-length'.*valid: per_length, same. Did you mean 'per_length'"):
        parse_options(Modes, {"mode": "per-length"})
    with pytest.raises(ConfigError, match="option 'modes'.*'all'"):
        parse_options(Modes, {"modes": "same,all"})
    with pytest.raises(ConfigError, match="option 'order'.*valid: 1, 2"):
        parse_options(Modes, {"order": 3})


def test_a_rate_over_few_units_keeps_its_level():
    # NIAH cells of 3 prompts all answered were reported as [1, 1], certain
    all_right = stats.rate([1.0, 1.0, 1.0])
    assert all_right.value == 1.0 and all_right.ci_high == 1.0 and 0.2 < all_right.ci_low < 0.6
    assert stats.rate([0.0, 0.0, 0.0]).ci_low == 0.0 < stats.rate([0.0, 0.0, 0.0]).ci_high
    # the exact coverage over every outcome of n Bernoulli units, at the cell sizes NIAH uses
    # (a percentile bootstrap: 0.46 at n=3, p=0.8; 0.38 at n=9, p=0.95)
    for n in (3, 9):
        for p in (0.2, 0.5, 0.8, 0.95):
            chance = [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]
            ends = [stats.rate([1.0] * k + [0.0] * (n - k)) for k in range(n + 1)]
            coverage = sum(c for c, e in zip(chance, ends) if e.ci_low <= p <= e.ci_high)
            assert coverage > 0.85, (n, p, coverage)
    assert math.isnan(stats.rate([]).ci_low) and math.isnan(stats.rate([1.0, math.nan]).ci_high)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        stats.rate([0.5, 1.5])


def test_a_rate_over_sequences_of_answers_keeps_its_level_near_one():
    # MQAR: 16 test sequences of 4 queries at accuracy 0.97; the bootstrap over sequences covered
    # 0.83 of simulated runs (and read all-right as [1, 1]); queries of a sequence may be correlated
    rng = np.random.default_rng(3)
    for p, concentration in ((0.97, None), (0.99, 5.0), (0.5, None)):
        covered = []
        for _ in range(400):
            q = np.full(16, p) if concentration is None else rng.beta(p * concentration, (1 - p) * concentration, 16)
            est = stats.clustered_rate((rng.random((16, 4)) < q[:, None]).mean(1), 4)
            covered.append(est.ci_low <= p <= est.ci_high)
        assert np.mean(covered) >= 0.93, (p, concentration, np.mean(covered))
    perfect = stats.clustered_rate(np.ones(128), 16)
    assert perfect.n == 128 and perfect.ci_high == 1 and 0.99 < perfect.ci_low < 1
    # wholly dependent answers (each sequence all right or all wrong) count as one answer each
    assert stats.clustered_rate([1.0, 0.0] * 8, 4) == stats.wilson(0.5, 16)
    with pytest.raises(ValueError, match="trials must be at least 1, got 0"):
        stats.clustered_rate([1.0], 0)


@pytest.mark.parametrize("df, table", [(1, 12.7062), (3, 3.18245), (8, 2.30600), (30, 2.04227)])
def test_t_quantiles_match_the_table(df, table):
    assert stats.t_quantile(0.975, df) == pytest.approx(table, abs=1e-4)


def test_bootstrap_intervals_over_few_units_keep_their_level():
    # the plain percentile bootstrap covered a mean of 9 normal units 89% of the time, not 95%
    rng = np.random.default_rng(7)
    covered = [(est := stats.bootstrap_mean(rng.normal(0.0, 1.0, 9), 500, seed=i)).ci_low <= 0 <= est.ci_high
               for i in range(400)]
    assert 0.92 <= np.mean(covered) <= 0.98
    assert stats.expanded_level(0.95, 9) == pytest.approx(0.98555, abs=1e-4)
    assert stats.expanded_level(0.95, 10_000) == pytest.approx(0.95, abs=1e-3)  # many units: as it was


def test_a_mean_over_two_to_four_units_keeps_its_level():
    # a resampled mean stays inside the units' range: "95%" intervals of a mean over 2, 3 and 4
    # normal units (NIAH's value_logprob cells, the gate's 4 documents) covered 0.50, 0.73, 0.87
    rng = np.random.default_rng(5)
    for n in (2, 3, 4):
        covered = [(est := stats.bootstrap_mean(rng.normal(0.0, 1.0, n), 200, seed=i)).ci_low <= 0 <= est.ci_high
                   for i in range(400)]
        assert np.mean(covered) >= 0.92, (n, np.mean(covered))
    # the t interval of two units: their mean +- t(0.975, 1) times half their distance
    two = stats.bootstrap_mean([1.0, 3.0], 200)
    assert (two.ci_low, two.ci_high) == pytest.approx((2.0 - stats.t_quantile(0.975, 1), 2.0 + stats.t_quantile(0.975, 1)))


def test_a_median_over_few_values_covers_at_most_what_their_range_does():
    assert stats.median_max_coverage(3) == 0.75 and stats.median_max_coverage(5) == 0.9375
    assert stats.median_max_coverage(6) > 0.95 > stats.median_max_coverage(5)  # 6 repeats: the first 95% interval
    assert stats.median_max_coverage(1) == 0.0 == stats.median_max_coverage(0)


def test_a_ratio_of_medians_resamples_the_two_samples_independently():
    slow, fast = [2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    est = stats.bootstrap_median_ratio(slow, fast, seed=3)
    # repeat i of one model has nothing to do with repeat i of the other: resampled by the same
    # index, these samples (each twice the other) would give a ratio of exactly 2 in every resample
    assert est.value == 2.0 and est.ci_low < 1.5 and est.ci_high > 3.0 and est.n == 7
    assert stats.bootstrap_median_ratio(slow, fast, seed=3) == est  # deterministic
    uneven = stats.bootstrap_median_ratio([3.0, 3.0, 3.0], [1.0, 1.0, 1.0, 1.0, 1.0])
    assert uneven.value == 3.0 and uneven.ci_low == uneven.ci_high == 3.0 and uneven.n == 3
    for few in (stats.bootstrap_median_ratio([3.0], fast), stats.bootstrap_median_ratio(slow, [1.0, math.nan, 2.0])):
        assert math.isnan(few.ci_low) and math.isnan(few.ci_high)
    assert math.isnan(stats.bootstrap_median_ratio([], fast).value)
    # 15 repeats each of lognormal timings: the interval covers the true ratio (2) about 95% of the time
    rng = np.random.default_rng(11)
    covered = [(e := stats.bootstrap_median_ratio(2 * rng.lognormal(0, 0.2, 15), rng.lognormal(0, 0.2, 15), 500,
                                                  seed=i)).ci_low <= 2.0 <= e.ci_high for i in range(300)]
    assert 0.88 <= np.mean(covered) <= 0.99


def test_a_ratio_of_medians_over_seeds_averages_each_seed_s_median_and_widens_over_seeds_that_disagree():
    slow, fast = [2.0, 2.2, 1.8, 2.1, 1.9, 2.05, 1.95], [1.0, 1.1, 0.9, 1.05, 0.95, 1.02, 0.98]
    one = stats.bootstrap_seeded_median_ratio([slow], [fast], seed=3)
    assert one == stats.bootstrap_median_ratio(slow, fast, seed=3)  # one seed each: as before, to the last digit
    agree = stats.bootstrap_seeded_median_ratio([slow, slow], [fast, fast], seed=3)
    assert (agree.value, agree.n, agree.seeds) == (2.0, 7, (2, 2)) and agree.ci_low < 2.0 < agree.ci_high
    # seed 1 ran 1.3x slower for both models: the medians' means give 4.6 / 2.3, and their spread
    # (unknown from one seed's repeats) widens the interval to Student's t over the seeds
    later = stats.bootstrap_seeded_median_ratio([slow, [1.3 * t for t in slow]], [fast, [1.3 * t for t in fast]], seed=3)
    assert later.value == pytest.approx(2.0)
    part = [np.var([m, 1.3 * m], ddof=1) / 2 * g * g for m, g in ((2.0, 1 / 1.15), (1.0, 2.3 / 1.15 ** 2))]
    df = sum(part) ** 2 / sum(v * v for v in part)
    half = stats.t_quantile(0.975, df) * math.sqrt(sum(part))
    assert (later.ci_low, later.ci_high) == pytest.approx((2.0 - half, 2.0 + half))
    assert later.ci_high - later.ci_low > 5 * (agree.ci_high - agree.ci_low)
    uneven = stats.bootstrap_seeded_median_ratio([slow, slow[:4], slow], [fast], seed=3)
    assert uneven.seeds == (3, 1) and uneven.n == 4
    assert uneven.value == pytest.approx((2 * np.median(slow) + np.median(slow[:4])) / 3 / np.median(fast))
    few = stats.bootstrap_seeded_median_ratio([slow, [2.0]], [fast, fast])
    assert few.n == 1 and math.isnan(few.ci_low) and math.isnan(few.ci_high)


def test_a_median_s_interval_is_the_95_percent_one_of_its_resampled_medians():
    # 5 zeros and 12 ones: a resampled median is 0 when at most 8 of 17 draws are ones, with
    # chance P(Binomial(17, 12/17) <= 8) = 0.036 (binomial sum): inside the 2.5% tail's reach, so
    # the 95% interval reaches 0, where a 90% one (or a 95% one built from 5% tails) stops at 1
    values = [0.0] * 5 + [1.0] * 12
    chance = sum(math.comb(17, k) * (12 / 17) ** k * (5 / 17) ** (17 - k) for k in range(9))
    assert 0.025 < chance < 0.05
    est = stats.bootstrap_median(values)
    assert (est.value, est.ci_low, est.ci_high) == (1.0, 0.0, 1.0)
    assert stats.bootstrap_median(values, level=0.90).ci_low == 1.0


def test_a_mean_of_skewed_units_reaches_past_the_t_interval_on_its_long_side():
    # one outlier among 9 units: the resampled means pile up at 1 with a long tail towards 10, so
    # the expanded percentile interval's upper end lies above the symmetric t interval's; taking
    # the t interval alone (the percentile one too narrow to matter) would cut that tail short
    values = np.array([1.0] * 8 + [10.0])
    t_high = values.mean() + stats.t_quantile(0.975, 8) * values.std(ddof=1) / math.sqrt(9)
    est = stats.bootstrap_mean(values)
    assert est.ci_high > t_high + 0.3


def test_a_clustered_rate_counts_answers_over_kish_s_design_effect():
    # 4 sequences of 4 answers at 1, 1/2, 1, 1/2: rate 3/4, units' sample variance (n - 1 in the
    # denominator) 1/12 against the binomial 3/16 / 4 = 3/64: design effect 16/9, so the 16
    # answers count as 9 independent ones
    est = stats.clustered_rate([1.0, 0.5, 1.0, 0.5], 4)
    nine = stats.wilson(0.75, 9)
    assert est.n == 4 and (est.value, est.ci_low, est.ci_high) == pytest.approx((0.75, nine.ci_low, nine.ci_high))


def test_a_missing_or_empty_run_folder_names_what_is_there(tmp_path):
    """`lcbench check runs/tny` said only "no result table at 'runs/tny'", and `lcbench check runs`
    the same: neither named runs/tiny nor the run folders inside runs/."""
    for name in ("tiny", "eval/niah-swa"):
        results.write_table(tmp_path / "runs" / name, [{"run": "r", "model": "m", "arch": "swa", "task": "t",
                                                        "metric": "loss", "value": 1.0, "status": "ok"}])
    with pytest.raises(ConfigError, match=r"run folder '.*tny' does not exist.*Did you mean '.*runs/tiny'\?"):
        results.read_table(tmp_path / "runs" / "tny")
    with pytest.raises(ConfigError, match=r"no result table at .*; the run folders in it: '.*eval/niah-swa', '.*tiny'$"):
        results.read_table(tmp_path / "runs")


def test_a_folder_of_many_runs_names_ten_and_says_there_are_more(tmp_path):
    for i in range(11):  # one more than are named
        results.write_table(tmp_path / "runs" / f"r{i:02d}", [{"run": "r", "model": "m", "arch": "swa", "task": "t",
                                                                "metric": "loss", "value": 1.0, "status": "ok"}])
    with pytest.raises(ConfigError) as err:
        results.read_table(tmp_path / "runs")
    listed = str(err.value).split("; the run folders in it: ")[1]
    assert listed.endswith("r09', ...") and listed.count("'") == 20 and "r10" not in listed


def test_a_ratio_of_medians_over_seeds_resamples_the_mean_of_the_seeds_medians():
    """Each resample is the mean over seeds of each seed's resampled median (the value is a mean):
    two steady seeds and one noisy one move it by a third of the noisy seed's spread; a median
    over seeds would hold it at the steady seeds' value."""
    steady, noisy = [2.0] * 7, [1.6, 2.4, 1.7, 2.0, 2.3, 1.8, 2.2]
    est = stats.bootstrap_seeded_median_ratio([steady, steady, noisy], [[1.0] * 7], seed=3)
    alone = stats.bootstrap_median_ratio(noisy, [1.0] * 7, seed=3)
    assert est.value == 2.0 and est.ci_low < 2.0 < est.ci_high
    assert est.ci_high - est.ci_low < 0.5 * (alone.ci_high - alone.ci_low)


def test_a_ratio_of_medians_over_seeds_on_one_side_widens_over_that_side_s_seeds():
    """Three seeds of the model, one of full attention: the seeds' spread widens the interval
    (Student's t over the three medians), as where both sides have several."""
    slow, fast = [2.0, 2.2, 1.8, 2.1, 1.9, 2.05, 1.95], [1.0, 1.1, 0.9, 1.05, 0.95, 1.02, 0.98]
    est = stats.bootstrap_seeded_median_ratio([slow, [1.3 * t for t in slow], [1.1 * t for t in slow]], [fast], seed=3)
    medians = [2.0, 2.6, 2.2]
    assert est.seeds == (3, 1) and est.value == pytest.approx(np.mean(medians))
    half = stats.t_quantile(0.975, 2) * math.sqrt(np.var(medians, ddof=1) / 3)
    assert (est.ci_low, est.ci_high) == pytest.approx((est.value - half, est.value + half))


def test_a_folder_of_exactly_ten_runs_names_them_all_without_dots(tmp_path):
    """Seventh mutation audit: ', ...' says there are more than the ten named, not that ten are."""
    for i in range(10):
        results.write_table(tmp_path / "runs" / f"r{i:02d}", [{"run": "r", "model": "m", "arch": "swa", "task": "t",
                                                                "metric": "loss", "value": 1.0, "status": "ok"}])
    with pytest.raises(ConfigError) as err:
        results.read_table(tmp_path / "runs")
    assert str(err.value).endswith("; the run folders in it: " + ", ".join(
        repr(str(tmp_path / "runs" / f"r{i:02d}")) for i in range(10)))
