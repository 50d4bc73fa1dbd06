"""Sweeps: specs parse with clear errors, cells resume after a crash, failures are recorded."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from harness.api import results
from harness.api.errors import ConfigError
import harness.runs.sweep as sweep_mod
from harness.runs.store import ResultStore
from harness.runs.sweep import SweepSpec, load_spec, plan, run_sweep
from harness.train import checkpoint
from tests import probe_tasks  # noqa: F401 - registers test_sweep_probe
from tests.conftest import small_model


@pytest.fixture
def spec_file(tmp_path):
    ckpts = {}
    for arch in ("full_attention", "swa"):
        ckpts[arch] = str(checkpoint.save_checkpoint(tmp_path / arch, small_model(arch)))
    spec = {
        "name": "probe",
        "models": [{"arch": a, "checkpoint": p} for a, p in ckpts.items()],
        "tasks": [{"task": "test_sweep_probe", "grid": {"contexts": [8, 16, 32]}}],
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_plan_has_one_cell_per_model_and_grid_point(spec_file):
    cells = plan(load_spec(spec_file))
    assert len(cells) == 6 and len({c.key for c in cells}) == 6



def test_plan_reads_each_task_option_set_once_for_every_model_and_seed(spec_file, monkeypatch):
    """The options are the same for every model and seed of a training length: plan() parsed
    them again for each (2 models x 2 seeds x 3 grid points); now once per grid point."""
    spec = load_spec(spec_file)
    spec.seeds = [0, 1]
    read = []
    real = sweep_mod.check_task_options
    monkeypatch.setattr(sweep_mod, "check_task_options", lambda task, options: read.append(options) or real(task, options))
    cells = plan(spec)
    assert len(cells) == 12 and len({c.key for c in cells}) == 12
    assert sorted(o["contexts"] for o in read) == [8, 16, 32]

def test_a_given_checkpoint_without_a_preset_is_labelled_by_its_folder(spec_file, tmp_path):
    """An entry ``{arch: ttt_e2e, checkpoint: runs/ttt-760m}`` was labelled 'ttt_e2e:tiny' (the default
    preset, never checked against the checkpoint) in every row and figure."""
    spec = load_spec(spec_file)
    assert [m.label for m in spec.models] == ["full_attention:full_attention", "swa:swa"]
    table = run_sweep(spec, tmp_path / "out", progress=False).table
    assert sorted(set(table["model"])) == ["full_attention:full_attention", "swa:swa"]


def test_rerun_skips_finished_cells_and_never_duplicates(spec_file, tmp_path):
    first = run_sweep(load_spec(spec_file), tmp_path / "out", progress=False)
    assert (first.ran, first.skipped, first.failed) == (6, 0, 0)
    again = run_sweep(load_spec(spec_file), tmp_path / "out", progress=False)
    assert (again.ran, again.skipped) == (0, 6)
    assert len(again.table) == 6 and again.table.equals(first.table)


def test_crash_mid_sweep_resumes_with_nothing_lost(spec_file, tmp_path, monkeypatch):
    straight = run_sweep(load_spec(spec_file), tmp_path / "straight", progress=False).table
    real = sweep_mod.run_task
    calls = {"n": 0}

    def crash_on_fourth(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated kill mid-cell")
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep_mod, "run_task", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(load_spec(spec_file), tmp_path / "crashed", progress=False)
    assert len(results.read_table(tmp_path / "crashed")) == 3
    monkeypatch.setattr(sweep_mod, "run_task", real)
    resumed = run_sweep(load_spec(spec_file), tmp_path / "crashed", progress=False)
    assert (resumed.ran, resumed.skipped) == (3, 3)
    cols = ["model", "eval_ctx", "metric", "value"]
    a = resumed.table[cols].sort_values(cols[:2]).reset_index(drop=True)
    b = straight[cols].sort_values(cols[:2]).reset_index(drop=True)
    assert a.equals(b)


def test_a_failing_cell_is_recorded_and_the_rest_complete(spec_file, tmp_path):
    spec = yaml.safe_load(spec_file.read_text())
    spec["tasks"].append({"task": "test_sweep_probe", "options": {"boom": True}})
    spec_file.write_text(yaml.safe_dump(spec))
    result = run_sweep(load_spec(spec_file), tmp_path / "out", progress=False)
    assert result.failed == 2 and result.ran == 8
    failed = result.table[result.table["status"] != "ok"]
    assert len(failed) == 2 and failed["message"].str.contains("fails on purpose").all()
    assert (result.table["status"] == "ok").sum() == 6
    assert len(sweep_mod.describe_failures(tmp_path / "out")) == 2


def test_grid_points_the_table_cannot_tell_apart_are_reported_and_fail_the_sweep(spec_file, tmp_path):
    # a grid over an option no result column records: the second cell's rows replaced the first's
    # in the table, silently
    from click.testing import CliRunner

    from harness.cli import main

    corpus = tmp_path / "tiny_corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("a small document\n" * 4)
    spec = yaml.safe_load(spec_file.read_text())
    spec["models"] = spec["models"][:1]
    spec["tasks"] = [{"task": "test_corpus_probe", "grid": {"corpus": ["stdlib", str(corpus)]}}]
    spec_file.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    result = run_sweep(load_spec(spec_file), out, progress=False)
    assert result.failed == 0 and len(result.table) == 1  # one row shown of the two measured
    last = ResultStore(out).cell_rows(plan(load_spec(spec_file))[-1].key)
    assert result.table["value"].tolist() == last["value"].tolist() == [68.0]  # the last one's, as the clash says
    assert len(result.clashes) == 1 and "differ in corpus='stdlib' vs" in result.clashes[0]
    assert len(list((out / "cells").glob("*.parquet"))) == 2  # nothing lost
    cli = CliRunner().invoke(main, ["sweep", str(spec_file), "--out", str(out)])
    assert cli.exit_code == 1 and "clash: test_corpus_probe cells of" in cli.output
    assert "1 pair(s) of cells gave rows the table cannot tell apart" in cli.output
    spec["tasks"] = [{"task": "test_sweep_probe", "grid": {"contexts": [8, 16]}}]  # eval_ctx tells these apart
    spec_file.write_text(yaml.safe_dump(spec))
    assert run_sweep(load_spec(spec_file), tmp_path / "told_apart", progress=False).clashes == []



def test_a_sweep_records_a_command_a_reader_can_rerun_from_any_checkout(spec_file, tmp_path, monkeypatch):
    """``python -m harness.cli`` sets argv[0] to the module's absolute path: paper_small's run.json
    said ``/work/ps38/harness/cli.py sweep ...``, a path only that clone had. The arguments stay as
    given (the spec and --out relative to the folder the sweep ran in)."""
    import sys

    from click.testing import CliRunner

    from harness.cli import main
    from harness.runs.provenance import read_run_json

    monkeypatch.chdir(spec_file.parent)
    for first in ("/work/ps38/harness/cli.py", "/opt/venv/bin/lcbench"):
        monkeypatch.setattr(sys, "argv", [first, "sweep", spec_file.name, "--out", "runs/probe"])
        assert CliRunner().invoke(main, sys.argv[1:]).exit_code == 0
        assert read_run_json(Path("runs/probe"))["command"] == f"lcbench sweep {spec_file.name} --out runs/probe"

def test_sweep_trains_models_it_is_not_given(tmp_path):
    spec = {"name": "t", "train": {"steps": 2, "batch_size": 2, "seq_len": 32, "eval_batches": 1},
            "models": [{"arch": "swa", "set": {"window": 8, "d_model": 32, "n_heads": 2, "mlp_hidden": 64}}],
            "tasks": [{"task": "test_sweep_probe"}]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = run_sweep(load_spec(path), tmp_path / "out", progress=False)
    assert result.failed == 0 and len(result.table) == 1
    ckpts = list((tmp_path / "out" / "checkpoints").iterdir())
    assert len(ckpts) == 1 and checkpoint.load_trainer_state(ckpts[0])[0]["step"] == 2


def test_train_length_sweep_trains_one_model_per_length_and_ties_the_context(tmp_path):
    spec = {"name": "t", "train": {"steps": 1, "batch_size": 2, "seq_len": 64, "eval_batches": 1},
            "train_lengths": [16, 32],
            "models": [{"arch": "swa", "name": "swa", "set": {"window": 8, "d_model": 32, "n_heads": 2, "mlp_hidden": 64}}],
            "tasks": [{"task": "test_sweep_probe", "tie": ["contexts"]}, {"task": "test_sweep_probe", "options": {"contexts": 8}}]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    cells = plan(load_spec(path))
    assert [(c.model.label, c.options) for c in cells] == [
        ("swa@16", {"contexts": [16]}), ("swa@16", {"contexts": 8}), ("swa@32", {"contexts": [32]}), ("swa@32", {"contexts": 8})]
    assert [c.model.train_config().seq_len for c in cells[::2]] == [16, 32]
    table = run_sweep(load_spec(path), tmp_path / "out", progress=False).table
    assert sorted(zip(table["model"], table["train_ctx"], table["eval_ctx"])) == [
        ("swa@16", 16, 8), ("swa@16", 16, 16), ("swa@32", 32, 8), ("swa@32", 32, 32)]
    assert len(list((tmp_path / "out" / "checkpoints").iterdir())) == 2


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"models": [{"arch": "swaa"}], "tasks": [{"task": "test_sweep_probe"}]}, "Did you mean 'swa'"),
        ({"models": [{"arch": "swa", "presett": "tiny"}], "tasks": [{"task": "test_sweep_probe"}]}, "Did you mean 'preset'"),
        ({"models": [{"arch": "swa"}], "tasks": [{"task": "loss_scalin"}]}, "Did you mean 'loss_scaling'"),
        ({"models": [{"arch": "swa"}], "tasks": [{"task": "test_sweep_probe"}], "train": {"step": 3}}, "Did you mean 'steps'"),
        ({"models": [{"arch": "swa"}, {"arch": "swa"}], "tasks": [{"task": "test_sweep_probe"}]}, "share a label"),
        ({"models": [], "tasks": [{"task": "test_sweep_probe"}]}, "at least one model"),
        ({"models": [{"arch": "swa"}], "tasks": [{"task": "test_sweep_probe", "tie": ["contexts"]}]}, "no train_lengths"),
        ({"models": [{"arch": "swa"}], "train_lengths": [64], "tasks": [{"task": "test_sweep_probe", "tie": ["context"]}]},
         "Did you mean 'contexts'"),
        ({"models": [{"arch": "swa"}], "train_lengths": [1], "tasks": [{"task": "test_sweep_probe"}]}, "train_lengths"),
    ],
)
def test_bad_specs_are_clear(tmp_path, spec, match):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", **spec}))
    with pytest.raises(Exception, match=match):
        load_spec(path)


def test_settings_a_given_checkpoint_would_ignore_are_refused(spec_file):
    """A checkpoint is evaluated as saved: ``set`` (e.g. a window) or ``train`` beside it changed
    the model's label but not the model, so its rows named settings it never ran with."""
    original = yaml.safe_load(spec_file.read_text())
    for key, value in (("set", {"window": 4}), ("train", {"steps": 3})):
        spec = {**original, "models": [original["models"][0], {**original["models"][1], key: value}]}
        spec_file.write_text(yaml.safe_dump(spec))
        with pytest.raises(ConfigError, match=f"checkpoint.*'{key}'"):
            load_spec(spec_file)


@pytest.mark.parametrize("other, match", [
    ({"arch": "swa"}, "names arch 'swa', but its checkpoint .* holds a 'full_attention' model"),
    ({"preset": "125m"}, r"names preset '125m' but its checkpoint.*d_model=64 \(the preset's 768\)"),
])
def test_a_given_checkpoint_of_another_arch_or_preset_is_refused(spec_file, other, match):
    """The rows of a given checkpoint carry its entry's label: a tiny full_attention checkpoint
    listed as swa:125m was evaluated and reported as 'swa:125m' without a word."""
    original = yaml.safe_load(spec_file.read_text())
    spec = {**original, "models": [{**original["models"][0], **other}]}
    spec_file.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=match):
        plan(load_spec(spec_file))  # before any work: a sweep plans every cell first


@pytest.mark.parametrize("model, match", [
    ({"arch": "full_atention"}, r"model 'full_atention:tiny': unknown architecture .*Did you mean 'full_attention'"),
    ({"arch": "swa", "preset": "tinyy"}, r"model 'swa:tinyy': unknown preset 'tinyy' .*Did you mean 'tiny'"),
    ({"arch": "swa", "preset": "tinyy", "name": "b"}, r"model 'b': unknown preset 'tinyy' .*Did you mean 'tiny'"),
])
def test_an_unknown_arch_or_preset_names_its_model(model, match):
    """An unknown arch or preset was refused without naming which of the spec's models gave it,
    as config errors are named."""
    with pytest.raises(ConfigError, match=match):
        SweepSpec.from_dict({"name": "t", "models": [{"arch": "swa", "name": "a"}, model],
                             "tasks": [{"task": "test_sweep_probe"}]})


def test_a_given_checkpoints_unknown_preset_names_its_model(spec_file):
    original = yaml.safe_load(spec_file.read_text())
    spec_file.write_text(yaml.safe_dump({**original, "models": [{**original["models"][1], "preset": "tinyy"}]}))
    with pytest.raises(ConfigError, match=r"model 'swa:tinyy': unknown preset 'tinyy' .*Did you mean 'tiny'"):
        plan(load_spec(spec_file))


def test_a_sweep_whose_planning_fails_leaves_no_trace(spec_file, tmp_path, monkeypatch):
    """A spec refused while its cells were planned (here: a given checkpoint of another arch; also a
    device this machine lacks) had already been recorded as the folder's ``spec.json`` and under
    ``specs/``, as if it had run there."""
    original = yaml.safe_load(spec_file.read_text())
    spec_file.write_text(yaml.safe_dump({**original, "models": [{**original["models"][0], "arch": "swa"}]}))
    with pytest.raises(ConfigError, match="holds a 'full_attention' model"):
        run_sweep(load_spec(spec_file), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    spec_file.write_text(yaml.safe_dump({**original, "device": "cuda"}))
    with pytest.raises(ConfigError, match="CUDA is not available"):
        run_sweep(load_spec(spec_file), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("arch", ["mamba2", "sw"])
def test_a_given_checkpoints_arch_must_be_the_one_it_holds(spec_file, arch):
    """A checkpoint entry's arch was never read: a wrong or misspelt one ran the checkpoint's model
    under a label naming another architecture (model 'sw:tiny', arch swa)."""
    original = yaml.safe_load(spec_file.read_text())
    swa = original["models"][1]
    spec_file.write_text(yaml.safe_dump({**original, "models": [{**swa, "arch": arch}]}))
    with pytest.raises(ConfigError, match=f"'{arch}'.*{swa['checkpoint']}.*'swa' model; set arch: swa"):
        plan(load_spec(spec_file))  # before any work: a sweep plans every cell first


def test_train_lengths_are_spelt_as_task_options_are(tmp_path):
    """``contexts: [8K]`` was accepted in a task's grid, ``train_lengths: [8K]`` refused."""
    path = tmp_path / "s.yaml"
    base = {"name": "t", "models": [{"arch": "swa"}], "tasks": [{"task": "test_sweep_probe"}]}
    path.write_text(yaml.safe_dump({**base, "train_lengths": ["1K", 2048]}))
    assert load_spec(path).train_lengths == [1024, 2048]
    path.write_text(yaml.safe_dump({**base, "train_lengths": ["1K", "2x"]}))
    with pytest.raises(ConfigError, match=r"train_lengths must be a list of int, got \[1024, '2x'\]"):
        load_spec(path)
    # and so are the train settings that count tokens (`train: {seq_len: 1K}` was refused)
    path.write_text(yaml.safe_dump({**base, "train": {"seq_len": "1K", "tokens": "64K"}}))
    spec = load_spec(path)
    config = spec.train_config(spec.models[0])
    assert (config.seq_len, config.tokens) == (1024, 65536)
    assert plan(spec)[0].key == plan(SweepSpec.from_dict({**spec.to_dict(), "train": {
        "seq_len": 1024, "tokens": 65536}}))[0].key  # one setting spelt two ways, one cell


def test_a_models_own_budget_replaces_the_specs():
    """A model's `train: {steps: 5}` under the spec's `train: {tokens: 64K}` trained 64K tokens'
    worth: the spec's token budget won over the model's own setting."""
    base = {"name": "t", "tasks": [{"task": "test_sweep_probe"}]}
    spec = SweepSpec.from_dict({**base, "train": {"tokens": "64K"},
                                "models": [{"arch": "swa", "train": {"steps": 5}}, {"arch": "swa", "name": "b"}]})
    own, shared = (spec.train_config(m) for m in spec.models)
    assert (own.total_steps, own.tokens) == (5, 0)
    assert shared.tokens == 65536
    spec = SweepSpec.from_dict({**base, "train": {"steps": 5}, "models": [{"arch": "swa", "train": {"tokens": "8K"}}]})
    assert spec.train_config(spec.models[0]).tokens == 8192


def test_a_blank_model_name_is_refused(tmp_path):
    """``name: ""`` fell back to the arch:preset label without a word."""
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "models": [{"arch": "swa", "name": " "}],
                                    "tasks": [{"task": "test_sweep_probe"}]}))
    with pytest.raises(ConfigError, match="model 'swa': name ' ' is blank; give a label or leave name out"):
        load_spec(path)


def test_toml_specs_load(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('name = "t"\n[[models]]\narch = "swa"\n[[tasks]]\ntask = "test_sweep_probe"\n')
    assert load_spec(path).models[0].arch == "swa"
    with pytest.raises(ConfigError, match="sweep spec .*missing.yaml' does not exist"):
        load_spec(tmp_path / "missing.yaml")


def test_a_misspelt_spec_path_names_what_its_folder_holds_and_the_close_match(tmp_path):
    """`lcbench sweep results/specs/quik.yaml` said only "no sweep spec at ...", unlike a misspelt
    corpus or tokenizer path."""
    (tmp_path / "quick.yaml").write_text("name: q\n")
    with pytest.raises(ConfigError, match=f"holds: quick.yaml. Did you mean '{tmp_path / 'quick.yaml'}'"):
        load_spec(tmp_path / "quik.yaml")


def test_untrained_models_are_evaluated_without_training(tmp_path):
    spec = {"name": "u", "models": [{"arch": "swa", "untrained": True, "set": {"window": 8, "d_model": 32, "n_heads": 2}}],
            "tasks": [{"task": "test_sweep_probe"}]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    first = run_sweep(load_spec(path), tmp_path / "a", progress=False).table
    second = run_sweep(load_spec(path), tmp_path / "b", progress=False).table
    assert not (tmp_path / "a" / "checkpoints").exists()
    assert first["value"].equals(second["value"])  # seeded: the same weights every time



def test_a_cell_records_the_settings_its_backend_ran_in_place_of_the_configs(tmp_path, monkeypatch):
    """A mamba2 model with chunk_size 256 on the fla backend runs chunks of 64: a single run's
    run.json says so (tests/test_mamba2.py), and a sweep's cells.jsonl, which holds no config, too."""
    from baselines.mamba2 import Mamba2LM
    from harness.runs.store import ResultStore

    monkeypatch.setattr(Mamba2LM, "kernel_settings", lambda self, device: {"chunk_size": 64})
    spec = {"name": "k", "tasks": [{"task": "test_sweep_probe"}],
            "models": [{"arch": "mamba2", "untrained": True, "set": {"d_model": 32, "headdim": 8, "n_layers": 1}},
                       {"arch": "swa", "untrained": True, "set": {"window": 8, "d_model": 32, "n_heads": 2}}]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    run_sweep(load_spec(path), tmp_path / "out", progress=False)
    recorded = {r["model"].split(":")[0]: r["kernel_settings"] for r in ResultStore(tmp_path / "out").finished().values()}
    assert recorded == {"mamba2": {"chunk_size": 64}, "swa": {}}

COMMITTED_SPECS = sorted((Path(__file__).parent.parent / "results" / "specs").glob("*.yaml"))


@pytest.mark.parametrize("path", COMMITTED_SPECS, ids=lambda p: p.name)
def test_committed_specs_plan_and_their_options_parse(path):
    """Every spec under results/specs loads, plans its cells, builds each model's config and
    parses each cell's task options: a spec broken by a renamed option or config field fails
    here, not hours into a sweep (or minutes into a GPU slot)."""
    from harness.runs.evaluate import check_task_options

    cells = plan(load_spec(path))
    assert cells, f"{path.name} plans no cells"
    for cell in cells:
        assert cell.model.model_config().arch == cell.model.entry.arch
        check_task_options(cell.task, cell.options)


def test_one_setting_spelt_two_ways_is_one_cell():
    """'1K' and 1024, or 1 and 1.0 of a float field, give the same numbers: they were keyed as
    different cells (and checkpoints), so respelling a spec reran and retrained all of it."""
    def cells(contexts, lr):
        return plan(sweep_mod.SweepSpec.from_dict({
            "name": "k", "train": {"steps": 1, "batch_size": 1, "seq_len": 8, "lr": lr, "min_lr": 0},
            "models": [{"arch": "swa", "set": {"window": 4, "d_model": 16, "n_heads": 2}}],
            "tasks": [{"task": "test_sweep_probe", "options": {"contexts": contexts}}, {"task": "repeat",
                       "options": {"contexts": contexts, "prefix": 2}}]}))
    canonical, respelt = cells([1024], 1.0), cells("1K", 1)
    assert [c.key for c in respelt] == [c.key for c in canonical]
    assert respelt[0].model.checkpoint_dir(Path("out")) == canonical[0].model.checkpoint_dir(Path("out"))
    assert [c.key for c in cells([2048], 1.0)] != [c.key for c in canonical]  # a real change still counts


def test_the_quick_benchmark_can_retry_its_failed_cells(monkeypatch, tmp_path):
    """`lcbench quick` had no --retry-failed: a cell that failed once stayed failed in its folder."""
    from harness.runs import quick
    asked = {}
    monkeypatch.setattr(quick, "run_sweep", lambda spec, out, progress, retry_failed: asked.update(retry=retry_failed))
    quick.run_quick(tmp_path / "q", archs="swa", retry_failed=True)
    assert asked == {"retry": True}


def test_a_failed_cell_is_finished_unless_failures_are_retried():
    # a rerun without retry_failed redid every failed cell (a diverging model trained again each time)
    cell = SimpleNamespace(model=SimpleNamespace(label="m"))
    failed, ok = {"model": "m", "status": "failed"}, {"model": "m", "status": "ok"}
    assert sweep_mod.is_finished(cell, failed) and not sweep_mod.is_finished(cell, failed, retry_failed=True)
    assert sweep_mod.is_finished(cell, ok, retry_failed=True) and not sweep_mod.is_finished(cell, None)


def test_the_quick_benchmark_runs_the_architectures_and_steps_it_is_given(monkeypatch, tmp_path):
    from harness.runs import quick
    asked = {}
    monkeypatch.setattr(quick, "run_sweep", lambda spec, out, progress, retry_failed: asked.update(spec=spec))
    quick.run_quick(tmp_path / "q", archs="swa", steps=7)
    assert [m.arch for m in asked["spec"].models] == ["swa"] and asked["spec"].train["steps"] == 7
