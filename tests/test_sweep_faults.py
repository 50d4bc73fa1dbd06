"""Sweeps under faults: concurrent sweeps into one folder, edited specs, replaced checkpoints,
retried failures, a kill -9 during training, and bad spec files."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from harness.api import results
from harness.api.errors import ConfigError
from harness.runs.store import ResultStore
from harness.runs.sweep import describe_failures, load_spec, run_sweep
from harness.train import checkpoint
from tests.conftest import small_model
from tests.probe_tasks import FLAKY

ROOT = Path(__file__).resolve().parent.parent
TINY = {"window": 8, "d_model": 32, "n_heads": 2, "mlp_hidden": 64}
TRAIN = {"batch_size": 2, "seq_len": 32, "eval_batches": 1, "eval_every": 0}
def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def untrained_spec(name: str, contexts: list[int]) -> dict:
    return {"name": name, "models": [{"arch": "swa", "untrained": True, "set": TINY}],
            "tasks": [{"task": "test_sweep_probe", "grid": {"contexts": contexts}}]}


SWEEPER = textwrap.dedent("""
    import sys
    import tests.probe_tasks  # registers the probe task
    from harness.runs.sweep import load_spec, run_sweep
    run_sweep(load_spec(sys.argv[1]), sys.argv[2], progress=False)
""")


def test_two_sweeps_into_one_folder_lose_no_cell(tmp_path):
    out = tmp_path / "out"
    specs = [write_spec(tmp_path / f"{name}.yaml", untrained_spec(name, list(range(4, 4 + 8))))
             for name in ("first", "second")]
    procs = [subprocess.Popen([sys.executable, "-c", SWEEPER, str(s), str(out)], cwd=ROOT) for s in specs]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    table = results.read_table(out)
    assert table.groupby("run").size().to_dict() == {"first": 8, "second": 8}
    assert len(ResultStore(out).finished()) == 16
    again = run_sweep(load_spec(specs[0]), out, progress=False)
    assert (again.ran, again.skipped) == (0, 8)


def test_an_edited_then_reverted_spec_shows_its_own_numbers(tmp_path):
    spec = {"name": "e", "train": {"steps": 3, **TRAIN}, "models": [{"arch": "swa", "set": TINY}],
            "tasks": [{"task": "test_sweep_probe"}]}
    path = write_spec(tmp_path / "s.yaml", spec)
    first = run_sweep(load_spec(path), tmp_path / "out", progress=False).table
    spec["train"]["steps"] = 1
    edited = run_sweep(load_spec(write_spec(path, spec)), tmp_path / "out", progress=False)
    assert edited.ran == 1 and edited.table["value"].tolist() != first["value"].tolist()
    spec["train"]["steps"] = 3
    reverted = run_sweep(load_spec(write_spec(path, spec)), tmp_path / "out", progress=False)
    assert reverted.ran == 0
    assert reverted.table["value"].tolist() == first["value"].tolist()
    assert results.read_table(tmp_path / "out")["value"].tolist() == first["value"].tolist()


def test_an_edit_whose_cell_fails_shows_no_stale_numbers(tmp_path):
    """The failed cell's status rows clash with none of the old cell's, which stayed in the table
    as ok: tables, figures and `lcbench check` read the numbers of a model no longer in the spec."""
    spec = {"name": "s", "models": [{"arch": "swa", "name": "m", "untrained": True, "set": TINY}],
            "tasks": [{"task": "test_flaky"}]}
    path = write_spec(tmp_path / "s.yaml", spec)
    FLAKY["fail"] = False
    run_sweep(load_spec(path), tmp_path / "out", progress=False)
    FLAKY["fail"] = True
    spec["models"][0]["set"] = {**TINY, "window": 4}
    edited = run_sweep(load_spec(write_spec(path, spec)), tmp_path / "out", progress=False)
    assert edited.failed == 1
    assert results.read_table(tmp_path / "out")["status"].tolist() == ["error"]
    spec["models"][0]["set"] = TINY  # reverted: its own numbers, not the edit's failure
    reverted = run_sweep(load_spec(write_spec(path, spec)), tmp_path / "out", progress=False)
    assert (reverted.ran, reverted.failed) == (0, 0)
    assert results.read_table(tmp_path / "out")[["metric", "status"]].values.tolist() == [["loss", "ok"]]
    # the summary's failure lines are the spec's: the superseded edit's failure is the folder's only
    assert describe_failures(tmp_path / "out", reverted.keys) == []
    assert len(describe_failures(tmp_path / "out")) == 1


def test_a_renamed_model_is_shown_under_its_new_name(tmp_path):
    """The label is in every row but not in the cell's key: the renamed model's cell was reused,
    and the table went on naming the model by its old label."""
    spec = untrained_spec("n", [4])
    path = write_spec(tmp_path / "s.yaml", spec)
    run_sweep(load_spec(path), tmp_path / "out", progress=False)
    spec["models"][0]["name"] = "renamed"
    renamed = run_sweep(load_spec(write_spec(path, spec)), tmp_path / "out", progress=False)
    assert renamed.ran == 1
    assert results.read_table(tmp_path / "out")["model"].tolist() == ["renamed"]
    assert run_sweep(load_spec(path), tmp_path / "out", progress=False).ran == 0


def test_cells_an_edit_of_the_spec_dropped_leave_the_table(tmp_path):
    """An edit that changes a model's label (here its window) or drops a grid point left the old
    cells' rows in the table, beside the spec's own, as ok numbers of a model it no longer has;
    another spec's rows in the folder stay, and a revert shows the old rows again without rerunning."""
    def spec(name, window, contexts):
        return {"name": name, "models": [{"arch": "swa", "untrained": True, "set": {**TINY, "window": window}}],
                "tasks": [{"task": "test_sweep_probe", "grid": {"contexts": contexts}}]}
    path, out = tmp_path / "s.yaml", tmp_path / "out"
    run_sweep(load_spec(write_spec(tmp_path / "o.yaml", spec("other", 8, [8]))), out, progress=False)
    first = run_sweep(load_spec(write_spec(path, spec("s", 8, [8, 16]))), out, progress=False).table
    with pytest.warns(UserWarning, match=r"no longer shows swa:.*this one does not; their cells stay"):
        edited = run_sweep(load_spec(write_spec(path, spec("s", 4, [8]))), out, progress=False)
    table = results.read_table(out)
    assert table[table["run"] == "s"]["value"].tolist() == edited.table[edited.table["run"] == "s"]["value"].tolist()
    assert len(table[table["run"] == "s"]) == 1 and (table["run"] == "other").sum() == 1
    reverted = run_sweep(load_spec(write_spec(path, spec("s", 8, [8, 16]))), out, progress=False)
    assert reverted.ran == 0
    assert sorted(results.read_table(out).query("run == 's'")["value"]) == sorted(first.query("run == 's'")["value"])


def test_a_checkpoint_replaced_at_the_same_path_is_scored_again(tmp_path):
    ckpt = tmp_path / "ck"
    checkpoint.save_checkpoint(ckpt, small_model("swa", seed=1))
    path = write_spec(tmp_path / "s.yaml", {"name": "r", "models": [{"arch": "swa", "checkpoint": str(ckpt)}],
                                            "tasks": [{"task": "test_sweep_probe"}]})
    first = run_sweep(load_spec(path), tmp_path / "out", progress=False)
    checkpoint.save_checkpoint(ckpt, small_model("swa", seed=2))
    second = run_sweep(load_spec(path), tmp_path / "out", progress=False)
    assert second.ran == 1
    assert second.table["value"].tolist() != first.table["value"].tolist()


def test_retry_failed_leaves_no_old_failure_rows(tmp_path):
    path = write_spec(tmp_path / "s.yaml", {"name": "f", "models": [{"arch": "swa", "untrained": True, "set": TINY}],
                                            "tasks": [{"task": "test_flaky"}]})
    FLAKY["fail"] = True
    assert run_sweep(load_spec(path), tmp_path / "out", progress=False).failed == 1
    FLAKY["fail"] = False
    retried = run_sweep(load_spec(path), tmp_path / "out", progress=False, retry_failed=True)
    assert retried.failed == 0
    assert retried.table["status"].tolist() == ["ok"]
    assert results.read_table(tmp_path / "out")["metric"].tolist() == ["loss"]


def test_a_retried_cell_that_records_no_samples_leaves_none_of_its_earlier_attempt(tmp_path):
    """Samples were written only when a cell recorded some: a failed cell retried and failing with
    none kept its earlier attempt's file, which `lcbench claims` reads (timings, windows) beside a
    table whose rows are the new attempt's."""
    path = write_spec(tmp_path / "s.yaml", {"name": "f", "models": [{"arch": "swa", "untrained": True, "set": TINY}],
                                            "tasks": [{"task": "test_flaky"}]})
    FLAKY["fail"] = True
    out = tmp_path / "out"
    run_sweep(load_spec(path), out, progress=False)
    (key,) = ResultStore(out).finished()
    results.write_jsonl(out / "samples" / f"{key}.jsonl", [{"attempt": 1}])  # as a partly failed attempt leaves
    assert run_sweep(load_spec(path), out, progress=False, retry_failed=True).failed == 1
    assert not (out / "samples" / f"{key}.jsonl").exists()


def test_a_partly_failed_cell_reports_why(tmp_path):
    path = write_spec(tmp_path / "s.yaml", {"name": "h", "models": [{"arch": "swa", "untrained": True, "set": TINY}],
                                            "tasks": [{"task": "test_half_fails"}]})
    result = run_sweep(load_spec(path), tmp_path / "out", progress=False)
    assert result.failed == 1
    (record,) = ResultStore(tmp_path / "out").finished().values()
    assert "the second part broke" in record["message"] and "1 error" in record["message"]


def test_a_cell_whose_samples_cannot_be_written_fails_and_the_sweep_goes_on(tmp_path):
    """A task (a plugin's) that records a sample JSON cannot hold raised out of the sample file's
    write after its cell: the sweep stopped there, every later cell unrun and this one unrecorded."""
    spec = untrained_spec("j", [8])
    spec["tasks"].insert(0, {"task": "test_bad_sample"})
    result = run_sweep(load_spec(write_spec(tmp_path / "s.yaml", spec)), tmp_path / "out", progress=False)
    assert (result.ran, result.failed) == (2, 1)
    bad = result.table[result.table["task"] == "test_bad_sample"]
    assert bad["status"].tolist() == ["error"] and "not JSON serialisable" in bad["message"].iloc[0]
    assert result.table.loc[result.table["task"] == "test_sweep_probe", "status"].tolist() == ["ok"]


def _checkpoint_step(out: Path) -> int:
    for trainer in (out / "checkpoints").glob("[!.]*/trainer.json"):  # not a killed save's temporary folder
        try:
            return json.loads(trainer.read_text())["step"]
        except (OSError, ValueError, KeyError):
            return -1
    return -1


def test_kill_9_during_training_then_rerun_trains_to_the_end(tmp_path):
    """A sweep killed after a mid-training checkpoint must finish training before it evaluates:
    a resumed sweep that took any checkpoint as trained would score a half-trained model."""
    steps = 24
    spec = {"name": "k", "train": {"steps": steps, **TRAIN}, "models": [{"arch": "swa", "set": TINY}],
            "tasks": [{"task": "test_sweep_probe"}]}
    path = write_spec(tmp_path / "s.yaml", spec)
    straight = run_sweep(load_spec(path), tmp_path / "straight", progress=False).table
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", SWEEPER, str(path), str(out)], cwd=ROOT)
    deadline = time.time() + 300
    while not 0 < _checkpoint_step(out) < steps and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    part = _checkpoint_step(out)
    if not 0 < part < steps:
        pytest.skip(f"the kill did not land mid-training (checkpoint step {part})")
    resumed = run_sweep(load_spec(path), out, progress=False)
    assert resumed.ran == 1 and _checkpoint_step(out) == steps
    assert resumed.table["value"].tolist() == straight["value"].tolist()


@pytest.mark.parametrize("text, suffix, match", [
    ("", ".yaml", "must hold a mapping"),
    ("- a\n- b\n", ".yaml", "got list"),
    ("42\n", ".yaml", "got int"),
    ('name = "t"\n[[models]]\narch = "swa"\n', ".toml", "has no 'tasks'"),
    ("models: [{arch: swa}]\ntasks: [{task: test_sweep_probe}]\ntrain: {steps: five}\n", ".yaml",
     "steps must be an integer, got 'five'"),
    ("models: [{arch: swa}]\ntasks: [{task: test_sweep_probe}]\nseeds: 0\n", ".yaml", "seeds must be a list"),
    ("models: [{arch: swa}]\ntasks: [{task: test_sweep_probe}]\nseeds: []\n", ".yaml", "seeds must be distinct"),
    ("models: [{arch: swa, set: {window: abc}}]\ntasks: [{task: test_sweep_probe}]\n", ".yaml",
     "window must be an integer, got 'abc'"),
    ("models: [{arch: swa}]\ntasks: [{task: loss_scaling, options: {contexts: [abc]}}]\n", ".yaml",
     "contexts"),
    ("models: [{arch: swa}]\ntasks: [{task: niah, options: {variantz: [single]}}]\n", ".yaml", "Did you mean"),
])
def test_bad_spec_files_are_one_clear_error_before_any_work(tmp_path, text, suffix, match):
    path = tmp_path / f"bad{suffix}"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_spec(path)


def test_a_binary_spec_file_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"\xff\xfe\x00\x01binary")
    with pytest.raises(ConfigError, match="not a text file"):
        load_spec(path)


def test_a_model_with_a_nan_weight_gives_nan_rows_not_scores(tmp_path):
    model = small_model("swa")
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    ckpt = checkpoint.save_checkpoint(tmp_path / "nan", model)
    path = write_spec(tmp_path / "s.yaml", {"name": "n", "models": [{"arch": "swa", "checkpoint": str(ckpt)}],
                                            "tasks": [{"task": "test_sweep_probe"}]})
    result = run_sweep(load_spec(path), tmp_path / "out", progress=False)
    assert result.failed == 1
    assert result.table["status"].tolist() == ["nan"]
    assert "NaN" in result.table["message"].iloc[0]


def corpus_spec(name: str, corpus: Path) -> dict:
    return {"name": name, "models": [{"arch": "swa", "untrained": True, "set": TINY}],
            "tasks": [{"task": "test_corpus_probe", "options": {"corpus": str(corpus)}}]}


@pytest.mark.parametrize("as_folder", [False, True])
def test_a_corpus_changed_at_the_same_path_is_scored_again(tmp_path, as_folder):
    corpus = tmp_path / "corpus"
    text_file = corpus / "a.txt" if as_folder else tmp_path / "corpus.txt"
    text_file.parent.mkdir(exist_ok=True)
    text_file.write_text("abc\n")
    spec = load_spec(write_spec(tmp_path / "s.yaml", corpus_spec("c", corpus if as_folder else text_file)))
    assert run_sweep(spec, tmp_path / "out", progress=False).table["value"].tolist() == [4.0]
    text_file.write_text("abcdefgh\n")  # same path, same size of name: only the bytes changed
    again = run_sweep(spec, tmp_path / "out", progress=False)
    assert again.ran == 1 and again.table["value"].tolist() == [9.0]


def test_a_changed_training_corpus_is_a_new_model_and_each_corpus_is_hashed_once(tmp_path, monkeypatch):
    from harness.runs import sweep

    text = tmp_path / "train.txt"
    text.write_text("first text\n")
    spec = load_spec(write_spec(tmp_path / "s.yaml", {
        "name": "t", "seeds": [0, 1, 2], "train": {"steps": 1, "corpus": str(text), **TRAIN},
        "models": [{"arch": "swa", "set": TINY}, {"arch": "full_attention", "set": {"d_model": 32, "n_heads": 2}}],
        "tasks": [{"task": "test_sweep_probe", "grid": {"contexts": [4, 8]}}]}))
    calls = []
    monkeypatch.setattr(sweep, "corpus_fingerprint", lambda source: calls.append(source) or f"fp{len(calls)}")
    before = sweep.plan(spec)
    assert len(before) == 12 and calls == [str(text)]  # 12 cells, the corpus read once
    text.write_text("other text\n")
    monkeypatch.undo()
    after_keys = {c.key for c in sweep.plan(spec)}
    assert not after_keys & {c.key for c in before}
    assert before[0].model.checkpoint_dir(tmp_path) != sweep.plan(spec)[0].model.checkpoint_dir(tmp_path)


def _planned(tmp_path: Path, auto_device: str = "cpu", evaluate_on: str = "auto", evaluate_in: str = "auto",
             **train) -> tuple[set[str], Path]:
    """The cell keys and the checkpoint folder of a one-model spec trained with ``train`` settings
    and evaluated on ``evaluate_on`` in ``evaluate_in``, planned where ``auto`` is ``auto_device``."""
    from harness.runs import sweep

    spec = load_spec(write_spec(tmp_path / "s.yaml", {
        "name": "t", "device": evaluate_on, "dtype": evaluate_in, "train": {"steps": 8, **TRAIN, **train},
        "models": [{"arch": "swa", "set": TINY}],
        "tasks": [{"task": "test_sweep_probe", "grid": {"contexts": [4, 8]}}]}))
    cells = sweep.plan(spec, auto_device)
    return {c.key for c in cells}, cells[0].model.checkpoint_dir(tmp_path)


def test_when_training_validates_and_saves_is_not_part_of_a_models_identity(tmp_path):
    """A spec edited in eval_every, eval_batches or save_every (which leave the weights
    bit-identical: tests/test_train.py) retrained every model and recomputed every cell."""
    keys, folder = _planned(tmp_path)
    assert _planned(tmp_path, eval_every=2, eval_batches=3, save_every=4) == (keys, folder)
    lr_keys, lr_folder = _planned(tmp_path, lr=1e-3)  # what the weights depend on still counts
    assert not lr_keys & keys and lr_folder != folder


def test_a_spec_trains_with_the_recipe_it_names_and_the_default_keeps_the_keys_it_had(tmp_path):
    """The recipe (added after sweeps were first run) at its default, the one every model trained with
    before it, is left out of a model's identity: a folder's models and cells keep their keys."""
    from harness.runs import sweep

    default = _planned(tmp_path)
    assert _planned(tmp_path, recipe="lcbench") == default
    official = _planned(tmp_path, recipe="official")
    assert not official[0] & default[0] and official[1] != default[1]
    for recipe in ("official", "lcbench"):
        spec = load_spec(write_spec(tmp_path / f"{recipe}.yaml", {
            "name": "t", "train": {"steps": 8, **TRAIN, "recipe": recipe}, "models": [{"arch": "swa", "set": TINY}],
            "tasks": [{"task": "test_sweep_probe", "grid": {"contexts": [4]}}]}))
        model = sweep.plan(spec, "cpu")[0].model
        assert model.train_config().recipe == recipe
        assert model.identity()["train"].get("recipe") == ("official" if recipe == "official" else None)


def test_a_models_identity_names_the_kind_of_device_auto_is_where_it_runs(tmp_path):
    """``device`` was hashed as written: auto and cpu on a CPU trained and evaluated the same model
    twice, while auto on a CPU and on a GPU (other rounding) shared one checkpoint and cells."""
    on_cpu = _planned(tmp_path)
    assert _planned(tmp_path, evaluate_on="cpu", device="cpu") == on_cpu
    on_gpu = _planned(tmp_path, auto_device="cuda")
    assert not on_gpu[0] & on_cpu[0] and on_gpu[1] != on_cpu[1]
    # a GPU's index is not its rounding; it is checked for spelling only (no GPU is looked for)
    assert _planned(tmp_path, auto_device="cpu", evaluate_on="cuda:1", device="cuda:1") == on_gpu


def test_a_models_identity_names_the_dtype_it_computes_in(tmp_path):
    """dtype was hashed as written: auto and fp32 on a CPU trained and evaluated the same model twice."""
    on_cpu = _planned(tmp_path)
    assert _planned(tmp_path, evaluate_in="fp32", dtype="fp32") == on_cpu
    trained_in_bf16 = _planned(tmp_path, dtype="bf16")
    assert not trained_in_bf16[0] & on_cpu[0] and trained_in_bf16[1] != on_cpu[1]
    evaluated_in_bf16 = _planned(tmp_path, evaluate_in="bf16")
    assert not evaluated_in_bf16[0] & on_cpu[0] and evaluated_in_bf16[1] == on_cpu[1]  # one model, other cells
    # auto is bf16 on a GPU: a GPU's explicit bf16 is its auto
    assert _planned(tmp_path, auto_device="cuda", evaluate_in="bf16", dtype="bf16") == _planned(tmp_path, auto_device="cuda")


def test_every_spec_that_wrote_into_a_folder_is_kept_and_named_by_its_cells(tmp_path):
    out = tmp_path / "out"
    specs = [load_spec(write_spec(tmp_path / f"{n}.yaml", untrained_spec(n, contexts))) for n, contexts in
             (("first", [4, 5]), ("second", [6]), ("first", [4, 7]))]  # the last: "first" edited
    for spec in specs:
        run_sweep(spec, out, progress=False)
    kept = {p.stem: json.loads(p.read_text()) for p in (out / "specs").glob("*.json")}
    assert sorted(kept) == sorted(s.spec_id for s in specs) and len(kept) == 3
    assert json.loads((out / "spec.json").read_text()) == specs[-1].to_dict()  # the one that ran last
    records = ResultStore(out).finished().values()
    assert len(records) == 4  # first's context 4 is one cell, run once
    for record in records:
        assert kept[record["spec"]]["tasks"][0]["grid"]["contexts"].count(record["options"]["contexts"]) == 1


def test_readers_find_the_last_specs_cells_after_a_given_checkpoint_moved(tmp_path):
    # planning the spec again hashes its checkpoints: a moved one made `lcbench claims` exit 2
    from harness.runs.sweep import current_sample_files

    ckpt = checkpoint.save_checkpoint(tmp_path / "ck", small_model("swa"))
    spec = {"name": "s", "models": [{"arch": "swa", "checkpoint": str(ckpt)}],
            "tasks": [{"task": "test_sweep_probe", "grid": {"contexts": [4, 5]}}]}
    out = tmp_path / "out"
    run_sweep(load_spec(write_spec(tmp_path / "s.yaml", spec)), out, progress=False)
    keys = set(ResultStore(out).finished())
    for key in keys:
        results.write_jsonl(out / "samples" / f"{key}.jsonl", [{"cell": key}])
    ckpt.rename(tmp_path / "moved")
    assert {p.stem for p in current_sample_files(out)} == keys and len(keys) == 2


def test_readers_take_the_samples_of_the_last_specs_cells_only(tmp_path):
    """An edited spec's replaced cells keep their sample files; claims must not pool them."""
    from harness.runs.sweep import current_sample_files, plan

    out = tmp_path / "out"
    assert current_sample_files(out) is None
    first, edited = (load_spec(write_spec(tmp_path / f"{i}.yaml", untrained_spec("s", contexts)))
                     for i, contexts in ((0, [4, 5]), (1, [4, 6])))
    run_sweep(first, out, progress=False)
    for key in ResultStore(out).finished():  # the probe task records no samples: give each cell one
        results.write_jsonl(out / "samples" / f"{key}.jsonl", [{"cell": key}])
    run_sweep(edited, out, progress=False)
    shared = {c.key for c in plan(first)} & {c.key for c in plan(edited)}
    assert len(shared) == 1  # context 4; context 5's cell was replaced by context 6's (no samples)
    assert {p.stem for p in current_sample_files(out)} == shared


def test_a_model_another_process_is_training_into_the_same_folder_is_waited_for(tmp_path, monkeypatch):
    """Two sweeps (or pool workers) that train one model into one checkpoint folder at once both
    wrote its files; the second now waits for the first, then takes its checkpoint untrained."""
    import threading

    import harness.runs.sweep as sweep_mod
    from harness.api.staging import exclusive

    spec = {"name": "race", "train": {"steps": 2, **TRAIN}, "models": [{"arch": "swa", "set": TINY}],
            "tasks": [{"task": "test_sweep_probe"}]}
    model = sweep_mod.plan(load_spec(write_spec(tmp_path / "s.yaml", spec)))[0].model
    out = tmp_path / "out"
    trained, waiting = [], threading.Event()
    monkeypatch.setattr(sweep_mod, "train", lambda *a, **k: trained.append(k["out_dir"]))
    monkeypatch.setattr(sweep_mod.warnings, "warn", lambda message, **k: waiting.set())
    with exclusive(model.training_lock(out)):  # the other process trains
        second = threading.Thread(target=model.train_once, args=(out,))
        second.start()
        assert waiting.wait(timeout=60), "the second trainer did not wait"
        assert trained == []
        monkeypatch.setattr(type(model), "needs_training", lambda self, out_dir: False)  # the first finished
    second.join(timeout=60)
    assert not second.is_alive() and trained == []  # it took the first one's checkpoint


def test_a_model_setting_its_arch_refuses_fails_the_spec_before_anything_trains(tmp_path):
    """`set: {window: 32}` on full_attention passed the spec's checks: the other models trained,
    then its cells failed (exit 1) with "full_attention has no window"."""
    from harness.runs.sweep import SweepSpec

    spec = {"name": "s", "models": [{"arch": "swa"}, {"arch": "full_attention", "set": {"window": 32}}],
            "tasks": [{"task": "loss_scaling"}]}
    with pytest.raises(ConfigError, match=r"model 'full_attention:tiny\[window=32\]': full_attention has no window"):
        SweepSpec.from_dict(spec)


def test_a_misspelt_key_of_the_specs_train_is_named_as_the_specs(tmp_path):
    """A bad key in the spec's own `train:` was named as the first model's ("train settings of swa-64")."""
    from harness.runs.sweep import SweepSpec

    spec = {"name": "s", "train": {"warmup": 2}, "models": [{"arch": "swa", "name": "swa-64"}],
            "tasks": [{"task": "loss_scaling"}]}
    with pytest.raises(ConfigError, match=r"^the spec's train settings: unknown key 'warmup'.*'warmup_frac'"):
        SweepSpec.from_dict(spec)
    spec = {**spec, "train": {}, "models": [{"arch": "swa", "name": "swa-64", "train": {"warmup": 2}}]}
    with pytest.raises(ConfigError, match=r"^train settings of swa-64: unknown key 'warmup'"):
        SweepSpec.from_dict(spec)


def test_each_failed_cell_of_several_seeds_is_told_with_its_seed(tmp_path, monkeypatch):
    """With `seeds: [0, 1]` the summary printed two identical "failed:" lines, not saying which
    seed's cell each was."""
    spec = {"name": "s", "seeds": [0, 1], "models": [{"arch": "swa", "name": "m", "untrained": True, "set": TINY}],
            "tasks": [{"task": "test_flaky"}]}
    monkeypatch.setitem(FLAKY, "fail", True)
    result = run_sweep(load_spec(write_spec(tmp_path / "s.yaml", spec)), tmp_path / "out", progress=False)
    lines = describe_failures(tmp_path / "out", result.keys)
    assert sorted(line.split(" / ")[0] for line in lines) == ["m seed 0", "m seed 1"]


def test_the_report_of_an_interrupted_sweep_lists_the_cells_not_run(tmp_path):
    """A sweep stopped after its first cell gave a report of that cell alone, "Every row is ok",
    with nothing saying that the spec's other cells had not run."""
    from harness.report.html import render_report
    from harness.runs.sweep import start_sweep, unfinished_cells

    one = untrained_spec("i", [4])
    run_sweep(load_spec(write_spec(tmp_path / "one.yaml", one)), tmp_path / "out", progress=False)
    assert unfinished_cells(tmp_path / "out") == []
    both = {**one, "models": [*one["models"], {"arch": "swa", "name": "second", "untrained": True,
                                             "set": {**TINY, "window": 4}}]}
    start_sweep(load_spec(write_spec(tmp_path / "both.yaml", both)), tmp_path / "out")  # then Ctrl-C: no cell ran
    lines = unfinished_cells(tmp_path / "out")
    assert lines == ["second seed 0 / test_sweep_probe {'contexts': 4}"]
    page = render_report(tmp_path / "out", unfinished=lines)
    assert "<h2>Not run (1 cells)</h2>" in page and "<li>second seed 0 / test_sweep_probe" in page
    assert "cells not run" in page and "Not run" not in render_report(tmp_path / "out")


def test_report_of_a_sweep_stopped_before_any_cell_says_so(tmp_path):
    """`lcbench report` (table, plot) of a sweep interrupted before its first cell finished said only
    "no result table", as for a folder that is no sweep."""
    from click.testing import CliRunner

    from harness.cli import main
    from harness.runs.sweep import start_sweep

    spec = untrained_spec("s", [4, 8])
    start_sweep(load_spec(write_spec(tmp_path / "s.yaml", spec)), tmp_path / "out")  # then Ctrl-C: no cell ran
    for command in ("report", "table", "plot"):
        out = CliRunner().invoke(main, [command, str(tmp_path / "out")])
        assert out.exit_code != 0 and "no cell of the sweep" in out.output, out.output
        assert "plans 2 cell(s)" in out.output and "rerun the same sweep command" in out.output
    (tmp_path / "plain").mkdir()
    out = CliRunner().invoke(main, ["report", str(tmp_path / "plain")])
    assert "no result table" in out.output and "no cell" not in out.output


def test_two_names_for_one_model_are_refused_before_anything_runs(tmp_path):
    """Two entries differing only in `name` gave one cell key: both "ran", the table showed the
    second name alone, and a "clash" of cells "that differ in nothing" was reported (exit 1)."""
    model = {"arch": "swa", "untrained": True, "set": TINY}
    spec = {"name": "d", "models": [{**model, "name": "a"}, {**model, "name": "b"}],
            "tasks": [{"task": "test_sweep_probe", "options": {"contexts": 4}}]}
    with pytest.raises(ConfigError, match=r"models 'a' and 'b' are one model"):
        run_sweep(load_spec(write_spec(tmp_path / "d.yaml", spec)), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    spec["models"][1]["set"] = {**TINY, "window": 4}
    assert run_sweep(load_spec(write_spec(tmp_path / "d.yaml", spec)), tmp_path / "out", progress=False).ran == 2
