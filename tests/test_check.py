"""lcbench check: passes on identical scores, fails on a degraded one and on a missing cell."""
from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner

from harness.api import results
from harness.api.errors import ConfigError
from harness.cli import main
from harness.runs import check


def run_table(loss_2k: float = 2.0, acc: float = 1.0, with_niah: bool = True, backend: str | None = None) -> pd.DataFrame:
    ident = dict(run="r", model="swa:tiny", arch="swa", device="cpu", dtype="float32", seed=0, backend=backend)
    rows = [
        results.make_row("loss", 2.5, task="loss_scaling", eval_ctx=1024, ci_low=2.4, ci_high=2.6, n=4, **ident),
        results.make_row("loss", loss_2k, task="loss_scaling", eval_ctx=2048, ci_low=loss_2k - 0.1,
                         ci_high=loss_2k + 0.1, n=4, **ident),
        results.make_row("prefill_s", 0.5, task="latency", eval_ctx=1024, **ident),
        results.make_row("state_bytes", 4096, task="latency", eval_ctx=1024, **ident),
    ]
    if with_niah:
        rows.append(results.make_row("cand_acc", acc, task="niah", eval_ctx=512, variant="single", haystack="text",
                                     ci_low=max(0.0, acc - 0.25), ci_high=1.0, n=8, **ident))
    return results.validate(rows)


def test_identical_scores_pass_and_timings_are_not_scores(tmp_path):
    ref_path = check.write_reference(run_table(), tmp_path / "ref.csv")
    reference = check.read_reference(ref_path)
    assert "prefill_s" not in set(reference["metric"]) and "state_bytes" in set(reference["metric"])
    result = check.compare(run_table(), reference)
    assert result.passed and set(result.table["verdict"]) == {"same"}


def test_a_reference_whose_rows_say_auto_matches_the_backend_auto_picked(tmp_path):
    """References made before rows named the backend that ran say ``auto`` (the gate's do): they
    still judge a run whose rows name it; a reference naming a backend judges that backend only."""
    old = check.read_reference(check.write_reference(run_table(backend="auto"), tmp_path / "old.csv"))
    result = check.compare(run_table(backend="sdpa"), old, complete=True)
    assert result.passed and set(result.table["verdict"]) == {"same"}
    worse = check.compare(run_table(loss_2k=2.5, backend="sdpa"), old, complete=True)
    assert worse.regressions == 1
    named = check.read_reference(check.write_reference(run_table(backend="flex"), tmp_path / "named.csv"))
    other = check.compare(run_table(backend="sdpa"), named, complete=True)
    assert not other.passed and {"missing", "unreferenced"} <= set(other.table["verdict"])


def test_a_degraded_score_fails_and_noise_within_the_interval_passes(tmp_path):
    reference = check.read_reference(check.write_reference(run_table(), tmp_path / "ref.csv"))
    within = check.compare(run_table(loss_2k=2.0 + 0.1 + 0.015), reference)  # CI half-width 0.1 + tolerance 0.02
    assert within.passed
    worse = check.compare(run_table(loss_2k=2.0 + 0.1 + 0.03), reference)
    assert not worse.passed and worse.regressions == 1
    assert "regressed" in check.format_report(worse)
    better = check.compare(run_table(loss_2k=1.5), reference)
    assert better.passed and "improved" in set(better.table["verdict"])
    assert not check.compare(run_table(acc=0.5), reference).passed  # accuracy drop beyond its interval


def test_a_missing_or_failed_cell_fails(tmp_path):
    reference = check.read_reference(check.write_reference(run_table(), tmp_path / "ref.csv"))
    missing = check.compare(run_table(with_niah=False), reference)
    assert not missing.passed and missing.missing == 1
    failed_table = run_table()
    failed_table.loc[failed_table["metric"] == "cand_acc", ["status", "message", "value"]] = ["oom", "out of memory", float("nan")]
    assert check.compare(failed_table, reference).missing == 1


def test_cli_check_exit_codes(tmp_path):
    results.write_table(tmp_path / "good", run_table())
    results.write_table(tmp_path / "bad", run_table(loss_2k=3.0))
    ref = str(tmp_path / "ref.csv")
    runner = CliRunner()
    assert runner.invoke(main, ["check", str(tmp_path / "good"), "--reference", ref, "--update"]).exit_code == 0
    good = runner.invoke(main, ["check", str(tmp_path / "good"), "--reference", ref])
    assert good.exit_code == 0 and "PASS" in good.output
    bad = runner.invoke(main, ["check", str(tmp_path / "bad"), "--reference", ref])
    assert bad.exit_code == 1 and "FAIL" in bad.output and "regressed" in bad.output
    missing_ref = runner.invoke(main, ["check", str(tmp_path / "good"), "--reference", str(tmp_path / "nope.csv")])
    assert missing_ref.exit_code != 0 and "--update" in missing_ref.output


def test_a_missing_reference_names_the_command_that_makes_it(tmp_path):
    missing = tmp_path / "ref.csv"
    with pytest.raises(ConfigError, match=r"lcbench check RUN --reference .*ref\.csv --update`"):
        check.read_reference(missing)


def test_a_reference_tolerance_that_is_blank_or_negative_is_bad_input(tmp_path):
    """A blank tolerance made every comparison NaN-false ("within"): loss 2 -> 9 passed."""
    path = check.write_reference(run_table(), tmp_path / "ref.csv")
    for bad in ("", "nan", "-0.5"):
        edited = pd.read_csv(path, dtype=str, keep_default_na=False)
        edited.loc[1, check.TOLERANCE] = bad
        edited.to_csv(path, index=False)
        with pytest.raises(ConfigError, match="tolerance"):
            check.read_reference(path)


def test_a_reference_is_not_made_from_a_run_with_failed_rows(tmp_path):
    # it was written without the failed scores, so later runs were never checked on them
    failed = run_table()
    failed.loc[failed["metric"] == "cand_acc", ["status", "message", "value"]] = ["oom", "out of memory", float("nan")]
    results.write_table(tmp_path / "run", failed)
    ref = tmp_path / "ref.csv"
    out = CliRunner().invoke(main, ["check", str(tmp_path / "run"), "--reference", str(ref), "--update"])
    assert out.exit_code == 2 and "1 failed rows, e.g. 'out of memory'" in out.output and not ref.exists()


def test_a_reference_row_that_is_not_ok_is_bad_input(tmp_path):
    # a hand-edited row with status oom was never compared: no score to compare with
    path = check.write_reference(run_table(), tmp_path / "ref.csv")
    edited = pd.read_csv(path, dtype={"message": object})
    cand_acc = edited["metric"] == "cand_acc"
    edited.loc[cand_acc, ["status", "message"]] = ["oom", "out of memory"]
    edited.to_csv(path, index=False)
    with pytest.raises(results.SchemaError, match="not ok have a value"):  # its score was left in place
        check.read_reference(path)
    edited.loc[cand_acc, "value"] = float("nan")
    edited.to_csv(path, index=False)
    with pytest.raises(ConfigError, match=r"1 row\(s\) are not ok, e.g. swa:tiny / niah / cand_acc \(oom\)"):
        check.read_reference(path)


def test_a_folder_of_several_runs_is_compared_run_for_run(tmp_path):
    """The run's name is no match column, so in a folder that two specs wrote into each reference
    score was compared with whichever run's row came last: a regressed run passed beside a good one."""
    reference = check.read_reference(check.write_reference(run_table(), tmp_path / "ref.csv"))  # of run "r"
    regressed_beside_good = pd.concat([run_table(loss_2k=3.0), run_table().assign(run="other")], ignore_index=True)
    assert check.compare(regressed_beside_good, reference).regressions == 1
    good_beside_regressed = pd.concat([run_table(), run_table(loss_2k=3.0).assign(run="other")], ignore_index=True)
    assert check.compare(good_beside_regressed, reference).passed
    neither = pd.concat([run_table().assign(run="a"), run_table(loss_2k=3.0).assign(run="b")], ignore_index=True)
    with pytest.raises(ConfigError, match=r"2 rows of runs 'a', 'b' match the reference score swa:tiny / loss_scaling / "
                                          r"loss .* none of them of its run 'r'"):
        check.compare(neither, reference)


def test_a_reference_with_no_scores_is_bad_input(tmp_path):
    """A reference cut to its header passed every run, a regressed one too: nothing was compared."""
    path = check.write_reference(run_table(), tmp_path / "ref.csv")
    path.write_text(path.read_text().splitlines()[0] + "\n")
    with pytest.raises(ConfigError, match=r"ref\.csv holds no scores; .*--update"):
        check.read_reference(path)


def test_a_score_may_move_by_its_reference_interval_s_half_width_on_its_bad_side():
    """A bootstrap interval of a skewed score is asymmetric: a loss may rise by the distance to its
    interval's upper end, an accuracy-like score fall by the distance to its lower end (and only a
    move beyond that same allowance the other way reads as improved)."""
    def table(metric: str, value: float, low: float, high: float) -> pd.DataFrame:
        return results.validate([results.make_row(metric, value, ci_low=low, ci_high=high, n=4, run="r", model="m",
                                                  arch="swa", task="niah", eval_ctx=512, seed=0)])

    def verdicts(reference: pd.DataFrame, *values: float) -> list[str]:
        metric = reference["metric"].iloc[0]
        return [check.compare(table(metric, v, v, v), reference).table["verdict"].iloc[0] for v in values]

    loss = table("loss", 2.0, 1.9, 2.5).assign(tolerance=0.0)
    assert verdicts(loss, 2.4, 2.6, 1.85, 1.4) == ["within", "regressed", "within", "improved"]
    logprob = table("value_logprob", -2.0, -2.5, -1.9).assign(tolerance=0.0)
    assert verdicts(logprob, -2.4, -2.6, -1.85, -1.4) == ["within", "regressed", "within", "improved"]
    # no allowance at all (the eval gate's rates: tolerance 0, intervals ignored): an unmoved score is the same
    rate = table("gen_match", 0.5, 0.25, 0.75)
    unmoved = check.compare(rate, rate.assign(tolerance=0.0), use_ci=False, two_sided=True)
    assert unmoved.passed and unmoved.table["verdict"].tolist() == ["same"]


def test_a_hand_edited_reference_is_named_as_the_bad_table(tmp_path):
    """A reference whose value left its interval said "result table is invalid", not that the
    reference was the bad one, nor how to remake it."""
    path = check.write_reference(run_table(), tmp_path / "ref.csv")
    edited = pd.read_csv(path)
    edited.loc[0, "value"] += 1.0
    edited.to_csv(path, index=False)
    with pytest.raises(results.SchemaError, match=r"^reference '.*ref\.csv': result table is invalid: 1 row\(s\) have a value "
                                          r"outside \[ci_low, ci_high\].*--update"):
        check.read_reference(path)


def test_a_moved_score_of_several_seeds_names_its_seed(tmp_path):
    """With seeds [0, 1] the report showed a moved score without its seed: its two rows read alike."""
    two = pd.concat([run_table(), run_table().assign(seed=1)], ignore_index=True)
    reference = check.read_reference(check.write_reference(two, tmp_path / "ref.csv"))
    moved = pd.concat([run_table(), run_table(loss_2k=3.0).assign(seed=1)], ignore_index=True)
    report = check.format_report(check.compare(moved, reference))
    header, row = report.splitlines()[1:3]
    assert header.split()[:2] == ["model", "seed"] and row.split()[:2] == ["swa:tiny", "1"]
    assert "seed" not in check.format_report(check.compare(run_table(loss_2k=3.0), check.read_reference(
        check.write_reference(run_table(), tmp_path / "one.csv")))).splitlines()[1]


def test_a_run_of_other_models_and_tasks_is_said_to_be_unrelated(tmp_path):
    """Checking an lm-eval run against a loss_scaling reference said only "N missing"."""
    reference = check.read_reference(check.write_reference(run_table(), tmp_path / "ref.csv"))
    other = run_table().assign(task="lm_eval:my_mc")
    report = check.format_report(check.compare(other, reference))
    assert "the run measured none of the reference's models' tasks" in report
    assert "tasks latency, loss_scaling, niah, the run models swa:tiny and tasks lm_eval:my_mc" in report
    assert "none of the reference's" not in check.format_report(check.compare(run_table(with_niah=False), reference))


def test_scores_the_reference_lacks_are_said_to_be_unchecked(tmp_path):
    """A model added to the spec after the reference was made passed `lcbench check` with "PASS: N
    reference scores; N same": nothing said that its scores were not checked."""
    reference = check.read_reference(check.write_reference(run_table(with_niah=False), tmp_path / "ref.csv"))
    result = check.compare(run_table(), reference)
    assert result.passed and result.unchecked == 1
    assert "1 scores of the run have no reference score and were not checked" in check.format_report(result)
    assert check.compare(run_table(with_niah=False), reference).unchecked == 0
    assert check.compare(run_table(), reference, complete=True).unchecked == 0  # the gate fails them instead
