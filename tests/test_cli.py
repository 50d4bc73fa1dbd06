"""The CLI is thin: each command reaches the library and turns its errors into one clear line."""
from __future__ import annotations

import inspect
import json
import logging
import re
from pathlib import Path

import click
import numpy as np
import torch
import yaml
from click.testing import CliRunner

from harness.adapters.importers import FORMATS
from harness.cli import main
from harness.train.checkpoint import load_model
from harness.train.trainer import TrainConfig
from tests.conftest import small_model
from tests.test_importers import OFFICIAL, fla_gdn_folder, official_tree, perturb_

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_list_shows_architectures_presets_and_counts():
    result = run("list")
    assert result.exit_code == 0, result.output
    for name in ("full_attention", "swa", "tiny", "125m", "1.3b"):
        assert name in result.output
    assert re.search(r"full_attention\s+125m\s+12\s+768\s+128256\s+84\.97M", result.output)


def test_list_kernels_says_which_backends_run_here():
    result = run("list", "--no-presets", "--kernels")
    assert result.exit_code == 0, result.output
    report = result.output.split("kernel backends here")[1]
    for mixer, backend, users in (("attention", "flex", "full_attention, swa, ttt_e2e"), ("gated_deltanet", "fla", "gated_deltanet"),
                                  ("mamba2", "mamba_ssm", "mamba2"), ("mamba2", "fla", "mamba2"),
                                  ("ttt_e2e inner_loss", "liger", "ttt_e2e"), ("ttt_e2e inner_step", "cudagraph", "ttt_e2e"),
                                  ("ttt_e2e inner_step", r"compile\+cudagraph", "ttt_e2e")):
        # the packages' versions, installed or not, then whether it runs
        assert re.search(rf"{mixer}\s+{backend}\s+{users}\s+\S+ (\d|not installed).*\s(yes|no: )", report), (mixer, backend)
    if not torch.cuda.is_available():
        assert report.count("no: it needs a CUDA device") == 7


def test_data_report_counts_long_documents():
    result = run("data-report")
    assert result.exit_code == 0, result.output
    assert "documents" in result.output and ">=  128K tokens" in result.output
    # the split of `train --seed 3`: the report always split with seed 0
    other = run("data-report", "--seed", "3")
    assert other.exit_code == 0 and "seed 3)" in other.output and "seed 0)" in result.output


def test_library_warnings_print_as_one_line(tmp_path):
    (tmp_path / "a.txt").write_text("plain text " * 20)
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01" * 50)
    result = run("data-report", "--corpus", str(tmp_path))
    assert result.exit_code == 0, result.output
    warned = [ln for ln in result.output.splitlines() if "blob.bin" in ln]
    assert len(warned) == 1 and warned[0].startswith("warning: corpus"), result.output
    assert "CorpusWarning" not in result.output and "cli.py" not in result.output


def test_train_help_states_train_config_defaults():
    """Every training option whose default comes from TrainConfig says that default in --help."""
    params = {p.name: p for p in main.commands["train"].params}
    defaults = TrainConfig()
    for name in ("steps", "batch_size", "seq_len", "lr", "grad_accum", "seed", "eval_every"):
        assert f"(default {getattr(defaults, name):g})" in (params[name].help or ""), name


def test_every_option_of_every_command_says_what_it_does():
    missing = [f"{name} {param.opts[0]}" for name, command in main.commands.items() for param in command.params
               if isinstance(param, click.Option) and not param.help]
    assert missing == []


def test_import_help_names_every_format():
    help_text = {p.name: p for p in main.commands["import"].params}["fmt"].help
    assert [name for name in FORMATS if name not in help_text] == []


def test_train_writes_a_checkpoint_and_resumes(tmp_path):
    out = tmp_path / "ckpt"
    args = ["train", "swa", "--steps", "2", "--batch-size", "2", "--seq-len", "32", "--set", "window=8", "--out", str(out)]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert "val_loss" in result.output and (out / "model.safetensors").is_file()
    result = run(*args[:2], "--steps", "3", *args[4:], "--resume")
    assert result.exit_code == 0, result.output
    assert "after 3 steps" in result.output



def test_resume_keeps_the_saved_settings_it_is_not_given(tmp_path):
    # left out on resume, steps fell back to the default 200 and lr to 3e-3 (refused as a change)
    out = tmp_path / "ckpt"
    args = ["train", "swa", "--batch-size", "2", "--seq-len", "32", "--set", "window=8", "--out", str(out)]
    assert run(*args, "--steps", "2", "--lr", "1e-3", "--save-every", "1").exit_code == 0
    again = run(*args, "--resume")  # nothing left: the saved 2 steps
    assert again.exit_code == 0 and "after 2 steps" in again.output, again.output
    more = run(*args, "--steps", "3", "--resume")
    assert more.exit_code == 0 and "after 3 steps" in more.output, more.output
    saved = json.loads((out / "trainer.json").read_text())["train_config"]
    assert (saved["steps"], saved["lr"], saved["save_every"]) == (3, 1e-3, 1)
    assert "other training settings" in run(*args, "--lr", "2e-3", "--resume").output  # a real change still is refused


def test_resume_keeps_the_saved_model_it_is_not_given(tmp_path):
    """`lcbench train swa --out runs/swa --resume --steps 600` (the README's line) was refused for a run
    started with --set: the model was rebuilt from the preset, "its model config differs (window: 8 vs 256)"."""
    out = tmp_path / "ckpt"
    started = run("train", "swa", "--steps", "1", "--batch-size", "2", "--seq-len", "32", "--set", "window=8",
                  "--set", "d_model=32", "--out", str(out))
    assert started.exit_code == 0, started.output
    resumed = run("train", "swa", "--steps", "2", "--out", str(out), "--resume")
    assert resumed.exit_code == 0 and "after 2 steps" in resumed.output, resumed.output
    saved = json.loads((out / "config.json").read_text())
    assert (saved["window"], saved["d_model"]) == (8, 32)
    changed = run("train", "swa", "--steps", "3", "--out", str(out), "--resume", "--set", "window=16")
    assert changed.exit_code == 2 and "window: 8 vs 16" in changed.output  # a real change still is refused
    other = run("train", "mamba2", "--steps", "3", "--out", str(out), "--resume")
    assert other.exit_code == 2 and "it holds a swa model" in other.output, other.output
    # --preset typed again rebuilds the model from it (the README's way to change it), which differs
    rebuilt = run("train", "swa", "--steps", "3", "--out", str(out), "--resume", "--preset", "tiny")
    assert rebuilt.exit_code == 2 and "window: 8 vs " in rebuilt.output, rebuilt.output
    # a folder without a checkpoint: the trainer's own line, not a missing config.json's
    empty = run("train", "swa", "--steps", "3", "--out", str(tmp_path / "none"), "--resume")
    assert empty.exit_code == 2 and "nothing to resume in" in empty.output, empty.output


def test_bad_names_give_one_clear_line():
    result = run("train", "swaa")
    assert result.exit_code != 0
    assert "Did you mean 'swa'?" in result.output and "Traceback" not in result.output
    result = run("train", "swa", "--set", "windw=3")
    assert "Did you mean 'window'?" in result.output
    result = run("data-report", "--corpus", "/no/such/corpus")
    assert result.exit_code != 0 and "/no/such/corpus" in result.output


def test_readme_commands_match_ci():
    """The README's test command is exactly what .ci/run runs."""
    ci = next(line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in line and "#" not in line)
    readme = (ROOT / "README.md").read_text()
    assert ci in readme
    venv_and_torch = ci.split(" && pip install -q -e")[0]
    quick = [line for line in readme.splitlines() if line.endswith("&& lcbench quick")]
    assert len(quick) == 1 and quick[0].startswith(venv_and_torch)


def test_eval_table_and_plot_commands(tmp_path):
    out = tmp_path / "lat"
    result = run("eval", "latency", "--model", "swa", "-o", "contexts=16,32", "-o", "repeats=1", "-o", "resamples=50",
                 "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "prefill_s" in result.output
    separate = {"mix_stderr": False} if "mix_stderr" in inspect.signature(CliRunner).parameters else {}  # click 8.1
    result = CliRunner(**separate).invoke(main, ["table", str(out)])
    assert result.exit_code == 0 and "State size" in result.stdout
    assert "tables" not in result.stdout and f"files to {out / 'tables'}" in result.stderr  # stdout: the tables alone
    assert (out / "tables" / "prefill_ms.md").is_file()
    result = run("plot", str(out))
    assert result.exit_code == 0, result.output
    assert (out / "figures" / "latency.png").is_file() and (out / "figures" / "latency.pdf").is_file()
    result = run("eval", "latency", "--model", "swa", "-o", "contextz=16")
    assert result.exit_code != 0 and "contexts" in result.output


def test_plot_prints_its_own_notes_not_every_library_log(tmp_path, monkeypatch):
    """`lcbench plot` shows why a figure was skipped, but not fontTools' report of every glyph it
    subsets into a PDF (what configuring the root logger at INFO printed)."""
    out = tmp_path / "lat"
    result = run("eval", "latency", "--model", "swa", "-o", "contexts=16", "-o", "repeats=1", "-o", "resamples=10",
                 "--out", str(out))
    assert result.exit_code == 0, result.output
    root, ours = logging.getLogger(), logging.getLogger("harness")
    for logger in (root, ours):  # as in a fresh process: no handlers (pytest's own restored afterwards)
        monkeypatch.setattr(logger, "handlers", [])
        monkeypatch.setattr(logger, "level", logger.level)
    result = run("plot", str(out), "--only", "latency", "--only", "mqar", "--format", "pdf")
    assert result.exit_code == 0, result.output
    assert (out / "figures" / "latency.pdf").is_file()
    assert "skipped figure mqar" in result.output
    assert "pruned" not in result.output and "glyph" not in result.output.lower(), result.output


def test_a_pair_without_equals_names_the_option_it_was_given_to():
    for args, option in ((["eval", "loss_scaling", "--model", "swa", "-o", "contexts"], "--option"),
                         (["train", "swa", "--set", "window"], "--set"),
                         (["sweep", "results/specs/quick.yaml", "--executor", "local", "--slurm-opt", "exclusive"],
                          "--slurm-opt")):
        result = run(*args)
        assert result.exit_code == 2 and f"Error: {option} takes key=value, got " in result.output, result.output


def test_import_commands(tmp_path):
    source = fla_gdn_folder(perturb_(small_model("gated_deltanet", sandwich_norm=False, tie_embeddings=False)),
                            tmp_path / "fla")
    result = run("import", str(source), str(tmp_path / "gdn"))
    assert result.exit_code == 0, result.output
    assert load_model(tmp_path / "gdn").config.arch == "gated_deltanet"
    np.savez(tmp_path / "official.npz", **official_tree())
    (tmp_path / "official.yaml").write_text(yaml.safe_dump(OFFICIAL))
    result = run("import-ttt-e2e", str(tmp_path / "official.npz"), str(tmp_path / "ttt"),
                 "--config", str(tmp_path / "official.yaml"))
    assert result.exit_code == 0, result.output
    assert load_model(tmp_path / "ttt").config.arch == "ttt_e2e"
    bad = tmp_path / "bad.npz"
    np.savez(bad, nonsense=np.zeros(3))
    result = run("import-ttt-e2e", str(bad), str(tmp_path / "x"))
    assert result.exit_code != 0 and "Traceback" not in result.output and "nonsense" in result.output


def test_export_hf_help_says_it_takes_an_architecture_too(tmp_path):
    """`export-hf swa OUT` exports random weights, as run_eval's ARCH[:PRESET] does, but the help
    named only a checkpoint."""
    assert "ARCH[:PRESET]" in run("export-hf", "--help").output
    result = run("export-hf", "swa", str(tmp_path / "hf"))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "hf" / "lcbench_export.json").read_text())["arch"] == "swa"
