"""The CI score gate: unchanged code passes on another floating-point path; injected regressions fail.

The eval layer is run on the committed checkpoints, one model and the task that shows the
regression at a time, so each injection costs seconds. CI itself runs the whole gate
(`lcbench gate`) on unchanged code.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import baselines.attention as attention
import baselines.gated_deltanet as gated_deltanet
from baselines.ttt_e2e import TTTE2ELM
from harness.api.decoding import continue_state
from harness.api.interface import clone_state
from harness.data import heldout
from harness.runs import check, gate
from harness.train import trainer
from tasks.niah import NIAH


def _eval_gate(tmp_path, model: str, task: str) -> gate.LayerResult:
    return gate.run_layer("eval", tmp_path / "eval", models=[model], tasks=[task], progress=False)


def _moved(result: gate.LayerResult) -> pd.DataFrame:
    table = result.result.table
    return table[table["verdict"].isin(["regressed", "changed", "failed", "missing"])]


# --- unchanged code passes, on another floating-point path ---------------------------------------

def test_unchanged_code_passes_on_another_floating_point_path(tmp_path):
    """ATen's portable (non-SIMD) kernels and oneDNN off change the rounding the way another CPU
    does; the eval gate must still pass (CI runs the default path). One thread: two spinning
    threads crawl when the machine is shared."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}
    code = "import torch, sys; torch.backends.mkldnn.enabled = False; from harness.cli import main; sys.exit(main())"
    args = [sys.executable, "-c", code, "gate", "--layer", "eval", "--threads", "1", "--out", str(tmp_path / "gate"),
            "--model", "ttt_e2e", "--model", "gated_deltanet", "--task", "loss_scaling"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == gate.EXIT_PASSED, done.stdout + done.stderr
    assert "PASS: 76 reference scores" in done.stdout and "FAIL" not in done.stdout
    assert "within" in done.stdout and "; this run on" in done.stdout and "ATen DEFAULT." in done.stdout


def test_the_gate_in_two_workers_leaves_every_score_the_same(tmp_path):
    """CI runs the gate's models two at a time (`--workers 2`), each worker with the gate's one
    thread: every score equals, to the bit, the one-process run's on this machine. (Not the
    committed reference's: it was written on another CPU, whose rounding the gate's allowance
    covers; an AVX-512 CPU moves these losses by up to 2e-7.)"""
    runs = {workers: gate.run_gate(tmp_path / f"gate{workers}", layers=("eval",), models=["ttt_e2e", "gated_deltanet"],
                                   tasks=["loss_scaling"], progress=False, workers=workers)[0].result
            for workers in (1, 2)}
    assert all(r.passed and len(r.table) == 76 for r in runs.values())
    assert runs[2].table["run"].tolist() == runs[1].table["run"].tolist()


# --- injected regressions fail ------------------------------------------------------------------

def test_rope_query_positions_off_by_one_fail(tmp_path, monkeypatch):
    rope = attention.apply_rope
    calls = {"n": 0}

    def shifted_queries(x, start_pos, theta):  # Attention.project rotates q, then k
        calls["n"] += 1
        return rope(x, start_pos + (calls["n"] % 2), theta)

    monkeypatch.setattr(attention, "apply_rope", shifted_queries)
    result = _eval_gate(tmp_path, "full_attention", "loss_scaling")
    assert not result.passed
    assert (_moved(result)["metric"] == "loss").all() and len(_moved(result)) > 10


def test_niah_scoring_the_wrong_position_fails(tmp_path, monkeypatch):
    def off_by_one(model, logits, state, ids, device):
        total = torch.log_softmax(logits.float(), -1)[0, ids[0]].item()
        if len(ids) > 1:
            more, _ = continue_state(model, clone_state(state), torch.tensor([ids[:-1]], device=device))
            wrong = torch.tensor(ids[:-1], device=more.device)  # the input tokens, not the next ones
            total += torch.log_softmax(more[0].float(), -1).gather(-1, wrong[:, None]).sum().item()
        return total, len(ids)

    monkeypatch.setattr(NIAH, "_logprob", staticmethod(off_by_one))
    result = _eval_gate(tmp_path, "mamba2", "niah")
    assert not result.passed
    assert "value_logprob" in set(_moved(result)["metric"])


def test_decay_sign_flipped_fails(tmp_path, monkeypatch):
    gdn_gate = gated_deltanet.gdn_gate
    monkeypatch.setattr(gated_deltanet, "gdn_gate", lambda a, A_log, dt_bias: -gdn_gate(a, A_log, dt_bias))
    result = _eval_gate(tmp_path, "gated_deltanet", "loss_scaling")
    assert not result.passed and len(_moved(result)) > 10


def test_changed_corpus_split_fails(tmp_path, monkeypatch):
    split = heldout.split_documents
    monkeypatch.setattr(heldout, "split_documents", lambda docs, fraction=0.1, seed=0: split(docs, fraction, seed + 1))
    result = _eval_gate(tmp_path, "swa", "loss_scaling")
    assert not result.passed and len(_moved(result)) > 10


def test_ttt_inner_learning_rate_ignored_fails(tmp_path, monkeypatch):
    init = TTTE2ELM.__init__

    def ignoring_inner_lr(self, config):
        init(self, config)
        self.inner_lr_now = 0.0

    monkeypatch.setattr(TTTE2ELM, "__init__", ignoring_inner_lr)
    result = _eval_gate(tmp_path, "ttt_e2e", "loss_scaling")
    assert not result.passed
    assert (_moved(result)["metric"] == "loss").all()


def test_a_failure_no_reference_score_covers_fails(tmp_path, monkeypatch):
    """A broken decode step leaves latency's only score (state_bytes, measured after prefill)
    intact; its failed decode rows must still fail the gate."""
    def broken(self, state, token):
        raise RuntimeError("decode step broke")

    monkeypatch.setattr(attention.SlidingWindowLM, "decode_step", broken)
    result = _eval_gate(tmp_path, "swa", "latency")
    assert set(result.result.table["verdict"]) == {"same"}  # every reference score is unmoved
    assert not result.passed and gate.exit_code([result]) == gate.EXIT_FAILED
    assert "decode step broke" in gate.format_gate([result])


def test_an_out_of_memory_or_nan_row_fails_the_gate_as_an_error_does():
    from types import SimpleNamespace

    spec = gate.gate_spec("eval", models=["swa"], tasks=["latency"])
    clean = gate._filtered(check.read_reference(gate.EVAL_REFERENCE), spec).drop(columns=[check.TOLERANCE])
    for status in ("oom", "nan"):
        lost = clean.iloc[[0]].assign(metric="decode_s", value=np.nan, status=status, message="lost")
        run = check.results.validate(pd.concat([clean, lost], ignore_index=True))
        sweep = SimpleNamespace(result=lambda progress, run=run: SimpleNamespace(table=run))
        result = gate._judge(("eval", spec, sweep, {}), progress=False)
        assert set(result.result.table["verdict"]) == {"same"} and not result.passed, status


def test_scores_that_moved_within_name_the_cpu_kernels_of_the_reference_and_of_this_machine(tmp_path, monkeypatch):
    """Scores that moved within their tolerance move with the floating-point path (AVX2 or AVX-512
    kernels); the report did not say on which kernels the references were made and this run ran."""
    from types import SimpleNamespace

    spec = gate.gate_spec("eval", models=["swa"], tasks=["latency", "loss_scaling"])
    clean = gate._filtered(check.read_reference(gate.EVAL_REFERENCE), spec).drop(columns=[check.TOLERANCE])
    loss = clean.index[clean["metric"] == "loss"][0]

    def judged(run: pd.DataFrame, machine: dict) -> gate.LayerResult:
        sweep = SimpleNamespace(result=lambda progress: SimpleNamespace(table=check.results.validate(run)))
        return gate._judge(("eval", spec, sweep, machine), progress=False)

    moved_run = clean.assign(value=clean["value"].where(clean.index != loss, clean["value"] + 1e-6))
    committed = gate.read_provenance()  # remade with ATEN_CPU_CAPABILITY=avx2 (the gate's README)
    moved = judged(moved_run, committed["machine"])
    assert moved.passed and (moved.result.table["verdict"] == "within").sum() == 1
    here = torch.backends.cpu.get_cpu_capability()
    assert (f"the references were made on {committed['machine']['cpu']}, ATen AVX2; this run on "
            f"{gate.device_info('cpu')['cpu']}, ATen {here}") in gate.format_gate([moved])
    monkeypatch.setattr(gate, "PROVENANCE", tmp_path / "absent.json")  # the machine line reads no file
    before_the_field = {k: v for k, v in committed["machine"].items() if k != "cpu_capability"}
    assert (f"the references were made on {committed['machine']['cpu']}, ATen CPU capability not recorded; "
            "this run on") in gate.format_gate([judged(moved_run, before_the_field)])
    xeon = judged(moved_run, {"cpu": "Intel Xeon", "cpu_capability": "AVX2"})
    assert "the references were made on Intel Xeon, ATen AVX2; this run on" in gate.format_gate([xeon])
    assert "ATen" not in gate.format_gate([judged(clean, committed["machine"])])  # nothing moved: nothing to explain


def test_a_started_layer_carries_the_machine_of_the_gate_json_read_for_the_run(tmp_path):
    """The machine line names the references' machine from the gate.json the run read once
    (:func:`gate._data_check`): each started layer carries it to its verdicts."""
    from types import SimpleNamespace

    pool = SimpleNamespace(submit=lambda spec, out: "sweep")
    machine = {"cpu": "Intel Xeon", "cpu_capability": "AVX2"}
    for layer in gate.LAYERS:
        started = gate._start_layer(layer, tmp_path / layer, gate.gate_spec(layer), pool,
                                    ({"data_fingerprint": "d", "machine": machine}, "d"))
        assert started[0] == layer and started[2:] == ("sweep", machine)
    assert gate._start_layer("eval", tmp_path / "x", gate.gate_spec("eval"), pool, ({"data_fingerprint": "d"}, "d"))[3] == {}
    empty = SimpleNamespace(result=lambda progress: SimpleNamespace(table=check.results.validate([])))
    for layer in gate.LAYERS:  # and each layer's verdicts keep it
        assert gate._judge((layer, gate.gate_spec(layer), empty, machine), progress=False).references_machine == machine


def test_a_layer_the_gate_could_not_judge_is_reported_beside_one_judged():
    """An unjudged layer has no result to read verdicts from: the report says why it was not judged."""
    unjudged = gate.LayerResult("eval", None, "cannot judge: the references were made on other data")
    assert gate.format_gate([unjudged]) == "== eval gate ==\ncannot judge: the references were made on other data"
    assert gate.format_gate([gate.LayerResult("train", None, "cannot judge"), unjudged]).count("cannot judge") == 2


def test_scores_the_references_lack_fail_the_eval_gate(tmp_path, monkeypatch):
    """References older than the gate's spec (a model or task added, or a model renamed, without
    `lcbench gate --update`): the new scores were compared with nothing and the gate passed, and
    with no reference score at all its report raised KeyError."""
    stale = tmp_path / "eval.csv"
    reference = pd.read_csv(gate.EVAL_REFERENCE)
    reference[reference["model"] != "swa"].to_csv(stale, index=False)
    monkeypatch.setattr(gate, "EVAL_REFERENCE", stale)
    result = _eval_gate(tmp_path, "swa", "latency")
    assert not result.passed and gate.exit_code([result]) == gate.EXIT_FAILED
    assert result.result.table["verdict"].tolist() == ["unreferenced"] * 2  # latency's state_bytes at 2 contexts
    assert "FAIL: 0 reference scores; 2 scores of the run have none" in gate.format_gate([result])


@pytest.mark.slow
def test_training_regression_fails_the_training_gate(tmp_path, monkeypatch):
    """A learning-rate schedule stuck at its floor: every seed learns less, beyond the band."""
    monkeypatch.setattr(trainer, "lr_at", lambda step, cfg: cfg.min_lr)
    result = gate.run_layer("train", tmp_path / "train", models=["full_attention"], tasks=["loss_scaling"],
                            progress=False)
    assert not result.passed
    moved = _moved(result)
    assert (moved["verdict"] == "regressed").all() and len(moved) == 4


# --- the gate's own logic ------------------------------------------------------------------------

def test_references_made_on_other_data_are_not_judged(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    shutil.copytree(gate.CORPUS, corpus)
    first = sorted(corpus.iterdir())[0]
    first.write_text(first.read_text() + "\n# one more line\n")
    monkeypatch.setattr(gate, "CORPUS", corpus)
    result = gate.run_layer("eval", tmp_path / "eval", models=["swa"], progress=False)
    assert result.result is None and "cannot judge" in result.unjudged
    assert gate.exit_code([result]) == gate.EXIT_UNJUDGED
    assert not (tmp_path / "eval").exists()  # nothing was run


def test_a_gate_run_reads_gate_json_once(tmp_path, monkeypatch):
    """Both layers judge against one reading of gate.json, which also names the references'
    machine when a score moved within its allowance (it was read once per layer and again for that)."""
    corpus = tmp_path / "corpus"
    shutil.copytree(gate.CORPUS, corpus)
    (corpus / "extra.py").write_text("x = 1\n")  # other data: neither layer runs
    monkeypatch.setattr(gate, "CORPUS", corpus)
    reads, real = [], gate.read_provenance
    monkeypatch.setattr(gate, "read_provenance", lambda: reads.append(1) or real())
    results = gate.run_gate(tmp_path / "gate", progress=False)
    assert [r.layer for r in results] == ["eval", "train"] and all("cannot judge" in r.unjudged for r in results)
    assert len(reads) == 1


def test_references_record_the_data_they_were_made_on():
    provenance = gate.read_provenance()
    assert provenance["data_fingerprint"] == gate.data_fingerprint()
    assert provenance["seeds"] == gate.gate_spec("train").seeds and len(provenance["seeds"]) >= 3


def _seed_table(values: dict[tuple[int, int], float], metric: str = "loss") -> pd.DataFrame:
    rows = [dict(run="r", model="m", arch="swa", task="loss_scaling", eval_ctx=ctx, seed=seed, metric=metric,
                 value=value, n=9, status="ok") for (seed, ctx), value in values.items()]
    return check.results.validate(rows)


def test_seed_aggregates_band_and_verdicts():
    rng = np.random.default_rng(0)
    values = {(seed, ctx): 2.0 + 0.1 * rng.standard_normal() for seed in range(3) for ctx in (128, 256)}
    reference = check.aggregate_reference(_seed_table(values))
    sds = [np.std([values[(s, ctx)] for s in range(3)], ddof=1) for ctx in (128, 256)]
    pooled = np.sqrt(np.mean(np.square(sds)))
    assert np.allclose(reference["band"], check.BAND_SIGMAS * pooled * np.sqrt(2 / 3))
    same = check.compare_aggregates(_seed_table(values), reference)
    assert same.passed and set(same.table["verdict"]) == {"same"}
    worse = check.compare_aggregates(_seed_table({k: v + 2 * reference["band"].max() for k, v in values.items()}), reference)
    assert set(worse.table["verdict"]) == {"regressed"} and not worse.passed
    better = check.compare_aggregates(_seed_table({k: v - 2 * reference["band"].max() for k, v in values.items()}), reference)
    assert set(better.table["verdict"]) == {"changed"} and not better.passed


def test_a_seed_s_score_pools_its_cells_weighted_by_their_units():
    # one NIAH cell's two haystacks: 1 prompt at 0.0 and 3 at 1.0 pool to 0.75, not 0.5
    rows = [dict(run="r", model="m", arch="swa", task="niah", eval_ctx=512, variant="single", haystack=haystack,
                 seed=0, metric="cand_acc", value=value, n=n, status="ok")
            for haystack, value, n in (("text", 0.0, 1), ("noise", 1.0, 3))]
    assert check.seed_aggregates(check.results.validate(rows))["value"].tolist() == [0.75]
    # a length's loss is its overall row's: the position bins' rows (a partition of it) stay out
    loss = [dict(run="r", model="m", arch="swa", task="loss_scaling", eval_ctx=512, seed=0, metric="loss", value=value,
                 n=4, status="ok", **bin) for value, bin in ((2.0, {}), (5.0, dict(pos_start=1, pos_end=2)))]
    assert check.seed_aggregates(check.results.validate(loss))["value"].tolist() == [2.0]


def test_a_failed_seed_fails_its_aggregates():
    values = {(seed, ctx): 2.0 + 0.01 * seed for seed in range(3) for ctx in (128, 256)}
    reference = check.aggregate_reference(_seed_table(values))
    run = _seed_table(values)
    run.loc[(run["seed"] == 1) & (run["eval_ctx"] == 256), ["value", "status"]] = [np.nan, "nan"]
    result = check.compare_aggregates(run, reference)
    assert result.table.set_index("eval_ctx")["verdict"].to_dict() == {128: "same", 256: "failed"}
    assert not result.passed


def test_a_run_whose_every_cell_failed_fails_the_training_gate():
    """It raised ConfigError (no ok rows), which `lcbench gate` reports as bad input, exit 2."""
    values = {(seed, ctx): 2.0 + 0.01 * seed for seed in range(3) for ctx in (128, 256)}
    reference = check.aggregate_reference(_seed_table(values))
    run = _seed_table(values).assign(value=np.nan, status="nan", message="training diverged")
    result = check.compare_aggregates(run, reference)
    assert not result.passed and set(result.table["verdict"]) == {"missing"}


def test_a_model_the_training_references_lack_fails_the_training_gate():
    values = {(seed, ctx): 2.0 + 0.01 * seed for seed in range(3) for ctx in (128, 256)}
    reference = check.aggregate_reference(_seed_table(values))
    run = pd.concat([_seed_table(values), _seed_table(values).assign(model="m2")], ignore_index=True)
    result = check.compare_aggregates(run, reference)
    assert not result.passed
    assert result.table.groupby("model")["verdict"].agg(set).to_dict() == {"m": {"same"}, "m2": {"unreferenced"}}


def test_scores_no_seed_moved_are_left_out_of_the_training_gate():
    values = {(seed, ctx): 2.0 + 0.01 * seed for seed in range(3) for ctx in (128, 256)}
    flat = _seed_table({k: 0.0 for k in values}, metric="gen_match")
    reference = check.aggregate_reference(pd.concat([_seed_table(values), flat], ignore_index=True))
    assert set(reference["metric"]) == {"loss"}


def test_aggregate_reference_needs_three_seeds():
    with pytest.raises(check.ConfigError, match="at least 3 seeds"):
        check.aggregate_reference(_seed_table({(0, 128): 2.0, (1, 128): 2.1}))


def test_eval_comparison_ignores_confidence_intervals_and_is_two_sided():
    reference = check.results.validate([dict(run="r", model="m", arch="swa", task="loss_scaling", eval_ctx=128,
                                             seed=0, metric="loss", value=2.0, ci_low=1.5, ci_high=2.5, n=9,
                                             status="ok")]).assign(tolerance=1e-4)
    run = reference.drop(columns=["tolerance"]).assign(value=2.001)
    assert check.compare(run, reference).passed  # within the CI: the retrained-model check allows it
    assert not check.compare(run, reference, use_ci=False, two_sided=True).passed
    lower = run.assign(value=1.999)
    assert check.compare(lower, reference, use_ci=False, two_sided=False).passed  # an improvement
    assert check.compare(lower, reference, use_ci=False, two_sided=True).table["verdict"].tolist() == ["changed"]


def test_a_folder_the_gate_did_not_write_is_refused(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "notes.txt").write_text("mine")
    with pytest.raises(check.ConfigError, match="did not write"):
        gate.run_layer("eval", tmp_path / "eval", models=["swa"], tasks=["latency"], progress=False)
    assert (tmp_path / "eval" / "notes.txt").read_text() == "mine"


def test_bad_gate_names_get_close_matches():
    with pytest.raises(check.ConfigError, match="full_attention"):
        gate.gate_spec("eval", models=["full_atention"])
    with pytest.raises(check.ConfigError, match="niah"):
        gate.gate_spec("eval", tasks=["nia"])


def test_a_task_of_one_layer_runs_that_layer_alone():
    """`lcbench gate --task latency` (both layers) failed: "unknown task of the train gate 'latency'",
    though latency is an eval gate task; a layer holding none of the named tasks is left out."""
    assert list(gate.gate_specs(gate.LAYERS, tasks=["latency"])) == ["eval"]
    both = gate.gate_specs(gate.LAYERS, tasks=["latency", "niah"])
    assert {layer: [t.task for t in spec.tasks] for layer, spec in both.items()} == {
        "eval": ["niah", "latency"], "train": ["niah"]}
    with pytest.raises(check.ConfigError, match="task 'nia' of the gate.*latency.*Did you mean 'niah'"):
        gate.gate_specs(gate.LAYERS, tasks=["nia"])


def test_an_update_records_the_commit_it_started_from(monkeypatch, tmp_path):
    # gate.json read git after writing the references into the checkout: always dirty, and a
    # commit made during the update was credited with them
    from types import SimpleNamespace

    head = {"commit": "a" * 40, "dirty": False}
    monkeypatch.setattr(gate, "git_commit", lambda path=None: dict(head))

    def sweep_that_sees_a_commit(spec, out, progress):
        head.update(commit="b" * 40, dirty=True)
        return SimpleNamespace(table=None)

    monkeypatch.setattr(gate, "run_sweep", sweep_that_sees_a_commit)
    monkeypatch.setattr(gate.check, "require_clean_run", lambda table, what: None)
    monkeypatch.setattr(gate, "_keep_reference_checkpoints", lambda spec, folder: None)
    written = {}
    monkeypatch.setattr(gate, "write_references", lambda trained, evaluated, git: written.update(git))
    gate._update(tmp_path, progress=False)
    assert written == {"commit": "a" * 40, "dirty": False}


def test_an_update_writes_back_the_references_it_was_given_with_each_metrics_tolerance(tmp_path, monkeypatch):
    """The eval reference an update writes: the run's scores, each with its metric's tolerance.
    The committed references, read as a run, come back unchanged (the mutation audit: tolerances
    taken from another source than EVAL_TOLERANCES passed every test)."""
    committed = pd.read_csv(gate.EVAL_REFERENCE)
    run = check.results.validate(committed.drop(columns=[check.TOLERANCE]))
    for name in ("EVAL_REFERENCE", "TRAIN_REFERENCE", "PROVENANCE"):
        monkeypatch.setattr(gate, name, tmp_path / Path(getattr(gate, name)).name)
    monkeypatch.setattr(gate.check, "aggregate_reference", lambda trained: pd.DataFrame({"band": [0.1]}))
    provenance = gate.write_references(run, run, {"commit": "a" * 40, "dirty": False})
    written = pd.read_csv(gate.EVAL_REFERENCE)
    assert written[check.TOLERANCE].tolist() == [gate.EVAL_TOLERANCES[m] for m in written["metric"]]
    pd.testing.assert_frame_equal(written, committed, check_dtype=False)
    assert provenance["eval_tolerances"] == gate.EVAL_TOLERANCES and provenance["scores"]["eval"] == len(committed)
