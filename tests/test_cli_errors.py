"""Exit codes (0 ok, 1 failed work, 2 bad input) and one-line errors for bad input to every command."""
from __future__ import annotations

import errno

import pytest
import torch
import yaml
from click.testing import CliRunner

import harness.train.checkpoint as checkpoint
from harness.api import results
from harness.cli import EXIT_FAILED_WORK, EXIT_USER_ERROR, main
from tests.conftest import small_model
from tests import probe_tasks  # noqa: F401 - registers test_sweep_probe

TRAIN = ["train", "swa", "--steps", "1", "--batch-size", "2", "--seq-len", "32", "--set", "window=8"]


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def one_line_error(result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1, result.output
    for fragment in fragments:
        assert fragment in error_lines[0], result.output


def test_help_documents_the_exit_codes():
    result = run("--help")
    assert "Exit codes: 0" in result.output and "1 work failed" in result.output and "2 bad input" in result.output
    assert "130 interrupted" in result.output and "143 terminated" in result.output


@pytest.mark.parametrize("args, fragments", [
    (["train", "swaa"], ["Did you mean 'swa'"]),
    ([*TRAIN[:-2], "--set", "window=abc"], ["window must be an integer, got 'abc'"]),
    ([*TRAIN[:-2], "--set", "window=1.5"], ["window must be an integer, got 1.5"]),
    ([*TRAIN, "--lr", "nan"], ["lr must be a finite number"]),
    ([*TRAIN, "--lr", "inf"], ["lr must be a finite number"]),
    ([*TRAIN, "--seq-len", "1"], ["seq_len must be at least 2"]),
])
def test_bad_train_input_exits_2_with_one_line(args, fragments):
    one_line_error(run(*args), EXIT_USER_ERROR, *fragments)


def test_train_never_replaces_a_users_folder(tmp_path):
    users = tmp_path / "myproj"
    users.mkdir()
    (users / "data.csv").write_text("1,2\n")
    one_line_error(run(*TRAIN, "--out", str(users)), EXIT_USER_ERROR, "holds other files")
    assert (users / "data.csv").read_text() == "1,2\n"


def test_a_full_disk_is_failed_work_in_one_line(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_checkpoint", full)
    one_line_error(run(*TRAIN, "--out", str(tmp_path / "c")), EXIT_FAILED_WORK, "No space left on device")


def test_periodic_checkpoints(tmp_path):
    out = tmp_path / "c"
    result = run("train", "swa", "--steps", "4", "--batch-size", "2", "--seq-len", "32", "--set", "window=8",
                 "--save-every", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert checkpoint.load_trainer_state(out)[0]["train_config"]["save_every"] == 2


def test_eval_of_a_nan_model_exits_1_with_nan_rows(tmp_path):
    model = small_model("swa")
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    ckpt = checkpoint.save_checkpoint(tmp_path / "nan", model)
    result = run("eval", "test_sweep_probe", "--model", str(ckpt), "--out", str(tmp_path / "e"), "--device", "cpu")
    assert result.exit_code == EXIT_FAILED_WORK, result.output
    table = results.read_table(tmp_path / "e")
    assert (table["status"] == "nan").all() and len(table)


def test_eval_with_a_bad_device_or_dtype_leaves_no_run_folder(tmp_path):
    for option, value in (("--device", "tpu"), ("--dtype", "float17")):
        result = run("eval", "test_sweep_probe", "--model", "swa", option, value, "--out", str(tmp_path / "e"))
        one_line_error(result, EXIT_USER_ERROR, f"unknown {option[2:]} {value!r}")
        assert not (tmp_path / "e").exists()


def test_eval_says_why_its_rows_failed(tmp_path):
    result = run("eval", "test_half_fails", "--model", "swa", "--out", str(tmp_path / "e"), "--device", "cpu")
    assert result.exit_code == EXIT_FAILED_WORK, result.output
    assert "  error (1 row): the second part broke" in result.output, result.output


def test_a_sweep_whose_cells_all_fail_exits_1(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "f", "models": [{"arch": "swa", "untrained": True,
                                                             "set": {"window": 8, "d_model": 32, "n_heads": 2}}],
                                    "tasks": [{"task": "test_sweep_probe", "options": {"boom": True}}]}))
    result = run("sweep", str(spec), "--out", str(tmp_path / "out"))
    assert result.exit_code == EXIT_FAILED_WORK, result.output
    assert "fails on purpose" in result.output


@pytest.mark.parametrize("content", [b"", b"\x00\x01\xff\xfe binary", b"model,metric\nm,loss\n"])
def test_check_with_a_bad_reference_exits_2(tmp_path, content):
    run_dir = tmp_path / "run"
    results.write_table(run_dir, [results.make_row("loss", 1.0, run="r", model="m", arch="swa", task="t")])
    ref = tmp_path / "ref.csv"
    ref.write_bytes(content)
    one_line_error(run("check", str(run_dir), "--reference", str(ref)), EXIT_USER_ERROR, str(ref))


def test_table_on_a_corrupt_parquet_exits_2(tmp_path):
    (tmp_path / results.TABLE_PARQUET).write_bytes(b"PAR1 this is not parquet")
    one_line_error(run("table", str(tmp_path), "--no-save"), EXIT_USER_ERROR, "cannot be read as a result table")


@pytest.mark.parametrize("command, out", [("table", "blocker/tables"), ("claims", "blocker/claims.md")])
def test_table_and_claims_refuse_an_unwritable_out_before_printing(tmp_path, command, out):
    """They printed every table or verdict, then failed to save them: stdout held results the
    command said it failed to make."""
    run_dir = tmp_path / "run"
    results.write_table(run_dir, [results.make_row("loss", 1.0, run="r", model="m", arch="swa", task="t")])
    (tmp_path / "blocker").write_text("a file, not a folder")
    result = run(command, str(run_dir), "--out", str(tmp_path / out))
    one_line_error(result, EXIT_USER_ERROR, "is a file, not a folder")
    assert result.output.startswith("Error"), result.output


def test_table_that_fails_leaves_no_empty_tables_folder(tmp_path):
    (tmp_path / results.TABLE_PARQUET).write_bytes(b"PAR1 this is not parquet")
    one_line_error(run("table", str(tmp_path)), EXIT_USER_ERROR, "cannot be read as a result table")
    assert not (tmp_path / "tables").exists()


# -- the bad-input campaign of issue 15's second round: one case per class of input --------------

@pytest.mark.parametrize("args, fragments", [
    ([*TRAIN, "--resume"], ["resuming needs the folder"]),  # trained from scratch without a word
    ([*TRAIN, "--save-every", "1"], ["save_every=1 saves checkpoints", "(--out); none was given"]),  # saved nothing
    ([*TRAIN, "--seed", "-1"], ["seed must be >= 0, got -1"]),
    ([*TRAIN, "--save-every", "-1"], ["save_every must be >= 0"]),
    ([*TRAIN, "--eval-every", "-1"], ["eval_every must be >= 0"]),
    (["eval", "test_sweep_probe", "--model", "swa", "--device", "tpu"], ["unknown device 'tpu'"]),  # traceback
    (["gate", "--layer", "eval", "--threads", "-1"], ["threads must be an integer >= 0"]),  # traceback
    (["lm-eval", "swa", "--tasks", ""], ["no lm-eval task given"]),  # traceback
    (["lm-eval", "swa", "--tasks", "x", "--lengths", "4x"], ["--lengths takes comma-separated numbers of tokens"]),
    ([*TRAIN[:-4], "--seq-len", "1x"], ["'1x' is not a number of tokens"]),
    (["lm-eval", "swa", "--tasks", "x", "--limit", "nan"], ["limit must be a whole count", "got nan"]),
    (["lm-eval", "swa", "--tasks", "x", "--limit", "1.5"], ["limit must be a whole count", "got 1.5"]),
    (["lm-eval", "swa", "--tasks", "x", "--batch-size", "0"], ["batch_size must be an integer >= 1"]),
])
def test_campaign_bad_values_exit_2_in_one_line(args, fragments):
    one_line_error(run(*args), EXIT_USER_ERROR, *fragments)


def test_token_counts_are_spelt_as_in_task_options(monkeypatch):
    """`-o contexts=8K` was accepted but `--seq-len 8K`, `lm-eval --lengths 4K` and `--max-length 2K`
    were refused, though each counts tokens."""
    import harness.adapters.lm_eval as lm_eval
    seen = {}
    monkeypatch.setattr(lm_eval, "run_lm_eval", lambda *a, **kw: seen.update(kw) or results.to_frame([]))
    run("lm-eval", "swa", "--tasks", "x", "--lengths", "4K, 8192", "--max-length", "2k")
    assert seen["max_seq_lengths"] == [4096, 8192] and seen["max_length"] == 2048


def test_an_eval_that_measures_nothing_is_not_ok(tmp_path):
    result = run("eval", "test_sweep_probe", "--model", "swa", "--out", str(tmp_path / "e"), "-o", "contexts=[]")
    assert result.exit_code == EXIT_FAILED_WORK, result.output  # was: "0 rows", exit 0
    table = results.read_table(tmp_path / "e")
    assert table["status"].tolist() == ["error"] and "returned no rows" in table["message"].iloc[0]


@pytest.mark.parametrize("change, fragments", [
    ({"name": ""}, ["sweep name ''"]),  # failed after the first cell, on a row without a run
    ({"name": "../../escape"}, ["without '/'"]),  # its default folder runs/NAME escaped runs/
    ({"tasks": [{"task": "test_sweep_probe", "grid": {"ctx": [1]}}]}, ["unknown option", "'ctx'"]),  # after work
])
def test_bad_specs_fail_before_any_work(tmp_path, change, fragments):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "s", "models": [{"arch": "swa", "untrained": True}],
                                    "tasks": [{"task": "test_sweep_probe"}], **change}))
    one_line_error(run("sweep", str(spec), "--out", str(tmp_path / "out")), EXIT_USER_ERROR, *fragments)
    assert not (tmp_path / "out").exists()


def test_outputs_below_a_file_and_users_folders_are_refused(tmp_path):
    run_dir = tmp_path / "run"
    results.write_table(run_dir, [results.make_row("loss", 1.0, run="r", model="m", arch="swa", task="t")])
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    one_line_error(run("check", str(run_dir), "--reference", str(blocker / "ref.csv"), "--update"),
                   EXIT_USER_ERROR, "is a file, not a folder")  # was exit 1, FileExistsError
    ckpt = checkpoint.save_checkpoint(tmp_path / "ck", small_model("swa"))
    one_line_error(run("export-hf", str(ckpt), str(blocker / "hf")), EXIT_USER_ERROR, "is a file, not a folder")
    before = sorted(p.name for p in run_dir.iterdir())
    one_line_error(run("export-hf", str(ckpt), str(run_dir)), EXIT_USER_ERROR, "holds files lcbench did not export")
    assert sorted(p.name for p in run_dir.iterdir()) == before  # was: exported into the user's folder


def test_scale_out_commands_off_the_cluster_exit_2_with_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    one_line_error(run(*TRAIN, "--parallel", "fsdp"), EXIT_USER_ERROR, "torchrun --nproc_per_node")
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"models": [{"arch": "swa"}], "tasks": [{"task": "loss_scaling"}]}))
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    one_line_error(run("sweep", str(spec), "--out", str(tmp_path / "out"), "--executor", "slurm", "--partition", "gpu"),
                   EXIT_USER_ERROR, "sbatch")
    one_line_error(run("sweep", str(spec), "--out", str(tmp_path / "out"), "--executor", "local", "--workers", "0"),
                   EXIT_USER_ERROR, "workers must be positive")
    # cluster options without a cluster executor ran inline, the option silently dropped
    for option in (["--workers", "0"], ["--jobs", "cell"], ["--slurm-opt", "exclusive=true"]):
        one_line_error(run("sweep", str(spec), "--out", str(tmp_path / "out"), *option), EXIT_USER_ERROR,
                       option[0], "--executor local or slurm")
    assert not (tmp_path / "out" / "cells.jsonl").exists()
    spec.write_text(yaml.safe_dump({"models": [{"arch": "swa"}], "tasks": [{"task": "loss_scaling"}],
                                    "cluster": {"partiton": "gpu"}}))
    one_line_error(run("sweep", str(spec), "--out", str(tmp_path / "out")), EXIT_USER_ERROR, "Did you mean 'partition'")


def test_a_rerun_that_skips_failed_cells_still_exits_1(tmp_path):
    """The cells stay failed in the folder; a rerun without --retry-failed must not read as success."""
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "f", "models": [{"arch": "swa", "untrained": True,
                                                             "set": {"window": 8, "d_model": 32, "n_heads": 2}}],
                                    "tasks": [{"task": "test_sweep_probe"},
                                              {"task": "test_sweep_probe", "options": {"boom": True}}]}))
    assert run("sweep", str(spec), "--out", str(tmp_path / "out")).exit_code == EXIT_FAILED_WORK
    again = run("sweep", str(spec), "--out", str(tmp_path / "out"))
    assert again.exit_code == EXIT_FAILED_WORK, again.output
    assert "0 cells run, 2 already done, 1 failed" in again.output
    assert "--retry-failed runs the failed cells again" in again.output  # it did not say how


def test_ctrl_c_during_a_sweep_says_how_to_go_on(tmp_path, monkeypatch):
    """Ctrl-C left a traceback from wherever the work was; a rerun resumes, and the line says so."""
    import harness.runs.sweep as sweep_mod

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_mod, "run_sweep", interrupted)
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "i", "models": [{"arch": "swa", "untrained": True}],
                                    "tasks": [{"task": "test_sweep_probe"}]}))
    result = run("sweep", str(spec), "--out", str(tmp_path / "out"))
    assert result.exit_code == 130 and "Traceback" not in result.output
    assert "interrupted: the cells that finished are kept" in result.output
    assert "rerun the same command to go on" in result.output


def test_ctrl_c_during_training_says_how_to_go_on(tmp_path, monkeypatch):
    """Ctrl-C in `lcbench train` printed click's bare "Aborted!" and exited 1, as failed work does,
    though the run resumes from its last save with --resume."""
    import harness.train.trainer as trainer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train", interrupted)
    result = run(*TRAIN, "--out", str(tmp_path / "ckpt"))
    assert result.exit_code == 130 and "Aborted" not in result.output, result.output
    assert "interrupted: the checkpoint last saved into --out" in result.output
    assert "rerun with --resume" in result.output


def test_ctrl_c_in_any_command_exits_130_not_as_failed_work(tmp_path, monkeypatch):
    """Ctrl-C in `lcbench eval` printed click's "Aborted!" and exited 1, the code of work that failed."""
    import harness.runs.evaluate as evaluate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "run_eval", interrupted)
    result = run("eval", "latency", "--model", "swa", "--out", str(tmp_path / "e"))
    assert result.exit_code == 130 and "Aborted" not in result.output and "interrupted" in result.output


def test_a_bad_model_leaves_no_empty_run_folder_and_keeps_an_existing_one(tmp_path):
    new = tmp_path / "runs" / "bad"  # neither folder existed: both are made, then removed again
    one_line_error(run("eval", "latency", "--model", "nosuch", "--out", str(new)), EXIT_USER_ERROR, "'nosuch'")
    assert not new.exists() and not new.parent.exists()
    kept = tmp_path / "mine"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    one_line_error(run("eval", "latency", "--model", "nosuch", "--out", str(kept)), EXIT_USER_ERROR, "'nosuch'")
    assert (kept / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"  # an empty folder the user made stays, too
    empty.mkdir()
    one_line_error(run("eval", "latency", "--model", "nosuch", "--out", str(empty)), EXIT_USER_ERROR, "'nosuch'")
    assert empty.is_dir()


def test_a_missing_checkpoint_is_named_without_the_run_folder_made_for_it(tmp_path, monkeypatch):
    """`lcbench eval niah --model runs/nope` with no runs/ said "'runs' holds: eval/": the default
    run folder runs/eval/... was made before the model was looked for, listed, then removed."""
    monkeypatch.chdir(tmp_path)
    result = run("eval", "latency", "--model", "runs/nope")
    one_line_error(result, EXIT_USER_ERROR, "'runs/nope' does not exist", "Its folder does not exist either")
    assert "eval/" not in result.output and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", ["plot", "table", "report", "claims", "check"])
def test_a_misspelt_run_folder_is_named_with_its_close_match(tmp_path, monkeypatch, command):
    """plot, table, report and claims left the check to click ("Directory 'runs/tny' does not
    exist."), which named no close match; check said "no result table at 'runs/tny'"."""
    monkeypatch.chdir(tmp_path)
    results.write_table(tmp_path / "runs" / "tiny", [{"run": "r", "model": "m", "arch": "swa", "task": "t",
                                                      "metric": "loss", "value": 1.0, "status": "ok"}])
    extra = ["--reference", "ref.csv"] if command == "check" else []
    one_line_error(run(command, "runs/tny", *extra), EXIT_USER_ERROR, "run folder 'runs/tny' does not exist",
                   "Did you mean 'runs/tiny'?")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["tiny"]  # no folder made for it


# -- the CLI audit (house rule 6): bad input that was run, repeated or accepted -----------------

PROBE = {"task": "test_sweep_probe", "options": {"contexts": [8]}}


@pytest.mark.parametrize("change, fragments", [
    # each ran both cells (the second after the model's work), then exit 1 with a "clash"
    ({"tasks": [PROBE, PROBE]}, ["tasks[0] and tasks[1]", "the same cell"]),
    ({"tasks": [PROBE, {"task": "test_sweep_probe", "options": {"contexts": 8}}]}, ["tasks[0] and tasks[1]", "the same cell"]),
    ({"tasks": [{"task": "test_sweep_probe", "grid": {"contexts": [[8], [8]]}}]}, ["grid.contexts", "[8] twice"]),
    ({"train_lengths": [32, 32]}, ["train_lengths", "32 twice"]),
    # the grid silently replaced the option (and tie replaced both)
    ({"tasks": [{"task": "test_sweep_probe", "options": {"contexts": [16]}, "grid": {"contexts": [[8]]}}]},
     ["'contexts'", "both options and grid"]),
    ({"train_lengths": [32], "tasks": [{"task": "test_sweep_probe", "tie": ["contexts"], "grid": {"contexts": [[8]]}}]},
     ["'contexts'", "tie", "grid"]),
    # checked only when the cell ran, after its model trained: exit 1 and a half-made folder
    ({"tasks": [{"task": "test_corpus_probe", "options": {"corpus": "no_such_corpus"}}]},
     ["corpus 'no_such_corpus' does not exist"]),
    ({"models": [{"arch": "swa", "set": {"window": 8, "d_model": 32, "n_heads": 2}}],
      "train": {"steps": 1, "batch_size": 1, "seq_len": 16, "corpus": "no_such_corpus"}},
     ["corpus 'no_such_corpus' does not exist"]),
    # cluster settings that no executor can use were accepted
    ({"cluster": {"cpus_per_job": -2}}, ["cluster.cpus_per_job", "-2"]),
    ({"cluster": {"mem_gb": 0}}, ["cluster.mem_gb", "0"]),
])
def test_audit_conflicting_or_missing_spec_input_fails_before_any_work(tmp_path, monkeypatch, change, fragments):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "s", "models": [{"arch": "swa", "untrained": True}],
                                    "tasks": [PROBE], **change}))
    one_line_error(run("sweep", str(spec), "--out", str(tmp_path / "out")), EXIT_USER_ERROR, *fragments)
    assert not (tmp_path / "out").exists()


def test_audit_a_spec_that_is_not_yaml_is_one_line(tmp_path):
    """PyYAML's message spans lines (problem, position, a caret under the source line)."""
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nmodels: [\n")
    result = run("sweep", str(spec), "--out", str(tmp_path / "out"))
    one_line_error(result, EXIT_USER_ERROR, "is not valid YAML", "line 3")
    assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.parametrize("args, fragments", [
    # the last value silently replaced the first
    (["eval", "test_sweep_probe", "--model", "swa", "-o", "contexts=8", "-o", "contexts=16"],
     ["--option", "'contexts'", "twice"]),
    ([*TRAIN, "--set", "window=16"], ["--set", "'window'", "twice"]),
    (["claims", ".", "--model", "swa=a", "--model", "swa=b"], ["--model", "'swa'", "twice"]),
    # the unknown format or dtype was named only after reading the folder (here: no config.json)
    (["import", ".", "out", "--format", "lama"], ["unknown import format 'lama'", "Did you mean 'llama'"]),
    (["import", ".", "out", "--dtype", "fp17"], ["unknown dtype 'fp17'"]),
    # a split no training run can make (train refuses seed -1)
    (["data-report", "--seed", "-1"], ["seed", "-1"]),
    # a task's split seed likewise: it measured on that split, exit 0
    (["eval", "loss_scaling", "--model", "swa", "--device", "cpu", "--out", "out", "-o", "contexts=32",
      "-o", "tokens_per_context=64", "-o", "split_seed=-1"], ["split seed must be a non-negative integer, got -1"]),
])
def test_audit_bad_command_line_values_exit_2(tmp_path, monkeypatch, args, fragments):
    monkeypatch.chdir(tmp_path)
    one_line_error(run(*args), EXIT_USER_ERROR, *fragments)
    assert not (tmp_path / "out").exists()


def test_audit_unknown_option_names_the_option_then_its_task():
    """It read "unknown option of task 'niah' 'contxts'": two quoted names, the bad one last."""
    one_line_error(run("eval", "niah", "--model", "swa", "-o", "contxts=8"), EXIT_USER_ERROR,
                   "unknown option 'contxts' of task 'niah'", "Did you mean 'contexts'")
    one_line_error(run("train", "swa", "--preset", "tinyy"), EXIT_USER_ERROR,
                   "unknown preset 'tinyy' of 'swa'", "Did you mean 'tiny'")


@pytest.mark.parametrize("text, fragments", [
    # YAML keeps the last of a repeated key: the sweep ran as 'other', the first name dropped unseen
    ("name: s\nmodels: [{arch: swa, untrained: true}]\ntasks: [{task: test_sweep_probe}]\nname: other\n",
     ["'name' twice", "line 4"]),
    ("name: s\nmodels: [{arch: swa, untrained: true}]\n"
     "tasks: [{task: test_sweep_probe, options: {contexts: [8], contexts: [16]}}]\n", ["'contexts' twice"]),
    # an untrained model's own train settings were dropped unread (a checkpoint's are refused)
    ("name: s\nmodels: [{arch: swa, untrained: true, train: {steps: 5}}]\ntasks: [{task: test_sweep_probe}]\n",
     ["untrained", "'train' settings"]),
])
def test_audit_spec_values_that_were_dropped_unseen(tmp_path, text, fragments):
    spec = tmp_path / "s.yaml"
    spec.write_text(text)
    one_line_error(run("sweep", str(spec), "--out", str(tmp_path / "out")), EXIT_USER_ERROR, *fragments)
    assert not (tmp_path / "out").exists()


# -- a newcomer's session: options accepted, then ignored or read as something else -------------

@pytest.mark.parametrize("args, fragments", [
    # --update remade every reference, checkpoints included, and the selection went unread
    (["gate", "--update", "--model", "swa"], ["--model", "--update remakes every reference"]),
    (["gate", "--update", "--layer", "eval", "--task", "niah"], ["--layer, --task", "--update"]),
    (["gate", "--update", "--workers", "2"], ["--workers", "--update"]),
    (["check", "run", "--reference", "r.csv", "--update", "--all"], ["--all", "--update"]),
])
def test_options_that_update_would_leave_unread_are_refused(tmp_path, monkeypatch, args, fragments):
    import harness.runs.gate as gates

    monkeypatch.chdir(tmp_path)
    results.write_table(tmp_path / "run", [results.make_row("loss", 1.0, run="r", model="m", arch="swa", task="t")])
    monkeypatch.setattr(gates, "update_gate", lambda *a, **kw: pytest.fail("the gate's references were remade"))
    one_line_error(run(*args), EXIT_USER_ERROR, *fragments)
    assert not (tmp_path / "r.csv").exists()


@pytest.mark.parametrize("value", ["8,,16", "8,16,", ",8"])
def test_an_empty_item_in_a_list_option_is_refused(tmp_path, value):
    """`-o contexts=8K,,16K` ran two lengths: the empty item (a value deleted, or a stray comma)
    was dropped without a word."""
    result = run("eval", "test_sweep_probe", "--model", "swa", "--out", str(tmp_path / "e"), "-o", f"contexts={value}")
    one_line_error(result, EXIT_USER_ERROR, "'contexts'", "empty item", repr(value))
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("option, value", [("--tasks", "hellaswag,,ruler"), ("--tasks", "hellaswag,"),
                                           ("--lengths", "8K,,16K"), ("--lengths", ",8K")])
def test_an_empty_item_in_an_lm_eval_list_is_refused_as_in_task_options(monkeypatch, option, value):
    """`lm-eval --tasks a,,b` ran a and b, `--lengths 8K,,16K` two lengths: the empty item was
    dropped without a word, where every other list option refuses it."""
    import harness.adapters.lm_eval as lm_eval

    monkeypatch.setattr(lm_eval, "run_lm_eval", lambda *a, **kw: pytest.fail(f"ran with {a}, {kw}"))
    given = {"--tasks": "hellaswag", "--lengths": "4K", option: value}
    result = run("lm-eval", "swa", *(part for pair in given.items() for part in pair))
    one_line_error(result, EXIT_USER_ERROR, f"option {option!r}", "empty item", repr(value), "comma-separated values")


def test_a_step_and_a_token_budget_together_are_refused(tmp_path):
    """`--tokens 8K --steps 5` trained 8K tokens' worth of steps: --steps was dropped unread (and
    so was a spec's `steps` beside its `tokens` in one `train:` mapping)."""
    one_line_error(run(*TRAIN, "--tokens", "1K", "--out", str(tmp_path / "c")), EXIT_USER_ERROR,
                   "steps=1", "tokens=1024", "give one")
    assert not (tmp_path / "c").exists()
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "s", "models": [{"arch": "swa", "train": {"steps": 2, "tokens": "1K"}}],
                                    "tasks": [PROBE]}))
    one_line_error(run("sweep", str(spec), "--out", str(tmp_path / "out")), EXIT_USER_ERROR, "steps=2", "tokens=1024")
    assert not (tmp_path / "out").exists()
    from harness.train.trainer import check_one_budget

    check_one_budget({"steps": 5, "tokens": 0})  # a token budget of 0 is none (TrainConfig's default): steps count


def test_a_sweep_folder_given_as_a_model_names_the_checkpoints_in_it(tmp_path):
    """`lcbench eval niah --model runs/quick` listed the sweep folder's files (cells.jsonl,
    results.csv, ...) but not where its models are."""
    ckpt = checkpoint.save_checkpoint(tmp_path / "sweep" / "checkpoints" / "swa_tiny-s0-1234", small_model("swa"))
    (tmp_path / "sweep" / "cells.jsonl").write_text("")
    one_line_error(run("eval", "test_sweep_probe", "--model", str(tmp_path / "sweep"), "--out", str(tmp_path / "e")),
                   EXIT_USER_ERROR, "is not an lcbench checkpoint", f"checkpoints in it: {str(ckpt)!r}")
