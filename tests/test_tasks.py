"""The task runners on tiny models: valid rows, the scores they must give, failures as rows."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ARCHS, small_model
from harness.api import registry, results
from harness.api.decoding import stream_token_losses
from harness.api.errors import CheckpointError, ConfigError, UnknownNameError
from harness.api.interface import LCModel, ModelConfig
from harness.data.packing import select_windows
from harness.data.tokenizers import ByteTokenizer
from harness.runs import provenance
from harness.runs.evaluate import resolve_model, run_eval, task_options
from harness.train import checkpoint
from tasks import niah as niah_task
from tasks.loss_scaling import position_bins


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    """A small corpus of real text (stdlib sources), so tests do not read the whole stdlib."""
    import difflib, json.decoder, json.encoder, string, textwrap  # noqa: E401 - sources of text

    folder = tmp_path_factory.mktemp("corpus")
    for i, module in enumerate((difflib, json.decoder, textwrap, json.encoder, re, string)):
        text = Path(module.__file__).read_text()
        (folder / f"doc{i}.txt").write_text(text[: 1500 + 700 * i])
    return str(folder)


def data_options(corpus: str) -> dict:
    return {"corpus": corpus, "val_fraction": 0.5}


# ---------------------------------------------------------------------------------------------
# Test models reached through the interface only


class UniformLM(LCModel):
    """Every next token equally likely: no forward_chunk, so runners use the plain interface."""

    def __init__(self, vocab_size: int = 256):
        super().__init__(ModelConfig(arch="uniform", vocab_size=vocab_size))

    def forward(self, tokens):
        return torch.zeros(*tokens.shape, self.config.vocab_size)

    def prefill(self, tokens):
        return torch.zeros(tokens.size(0), self.config.vocab_size), {"pos": tokens.size(1)}

    def decode_step(self, state, token):
        return torch.zeros(token.size(0), self.config.vocab_size), {"pos": state["pos"] + 1}


NEEDLE_RE = re.compile(r"One magic \w+ for (\S+) is: ([^\n]+)\.\n")
ANSWER_RE = re.compile(r"\n(?:One magic \w+ for (\S+) is:|The magic \w+ for (.+) are:)")


class CopierLM(LCModel):
    """Answers NIAH prompts by looking the needles up in its own prompt, one byte at a time.

    The state is the text read so far. After the question's answer start, the next byte is the
    next byte of an answer consistent with what was read: one value of the key ("One magic
    number for K is:") or the list of the asked keys' values ("The magic numbers for K1 and K2
    are:"). Elsewhere it predicts a newline. With ``recalls``, a list stops after that many values."""

    def __init__(self, recalls: int | None = None):
        super().__init__(ModelConfig(arch="copier", vocab_size=256))
        self.recalls = recalls

    def _logits(self, text: str) -> torch.Tensor:
        logits = torch.full((1, 256), -30.0)
        nexts = {ord("\n")}
        question = text.rfind("\nWhat ")
        match = None if question < 0 else ANSWER_RE.search(text, question + 1)
        if match is not None:
            values: dict[str, list[str]] = {}
            for key, value in NEEDLE_RE.findall(text[:question]):
                values.setdefault(key, []).append(value)
            if match.group(1):
                answers = [f" {v}." for v in values.get(match.group(1), [])]
            else:
                keys = re.split(r", | and ", match.group(2))
                answers = [" " + ", ".join([v for k in keys for v in values.get(k, [])][: self.recalls]) + "."]
            so_far = text[match.end():]
            consistent = {a[len(so_far)] for a in answers if a.startswith(so_far) and len(a) > len(so_far)}
            nexts = {ord(c) for c in consistent} or nexts
        logits[0, sorted(nexts)] = 0.0
        return logits

    def prefill(self, tokens):
        text = bytes(tokens[0].tolist()).decode("utf-8", "replace")
        return self._logits(text), {"text": text}

    def decode_step(self, state, token):
        text = state["text"] + chr(int(token[0]))
        return self._logits(text), {"text": text}


class OOMAbove(LCModel):
    """Wraps a model; its prefill raises an out-of-memory error for prefixes of ``limit`` tokens or more."""

    def __init__(self, inner: LCModel, limit: int):
        super().__init__(inner.config)
        self.inner, self.limit = inner, limit

    def prefill(self, tokens):
        if tokens.size(1) >= self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {tokens.size(1)} GiB (injected)")
        return self.inner.prefill(tokens)

    def decode_step(self, state, token):
        return self.inner.decode_step(state, token)


# ---------------------------------------------------------------------------------------------
# run_eval: specs, names, files


def test_tasks_are_registered_with_options():
    assert {"loss_scaling", "niah", "latency"} <= set(registry.task_names())
    names = {o["name"] for o in task_options("niah")}
    assert {"contexts", "depths", "variants", "haystacks", "candidates"} <= names


def test_bad_names_give_clear_errors(tmp_path):
    with pytest.raises(UnknownNameError, match="Did you mean 'niah'"):
        run_eval("nah", "swa", None)
    with pytest.raises(ConfigError, match="Did you mean 'contexts'"):
        run_eval("latency", "swa", None, {"context": "8"})
    with pytest.raises(ConfigError, match="neither a checkpoint folder nor a registered architecture.*Did you mean 'swa'"):
        run_eval("latency", "sva", None)
    with pytest.raises(UnknownNameError, match="preset"):
        resolve_model("swa:huge")
    with pytest.raises(CheckpointError, match="does not exist"):
        run_eval("latency", str(tmp_path / "missing"), None)
    with pytest.raises(ConfigError, match="variant"):
        run_eval("niah", "swa", None, {"variants": "singel"})


def test_inputs_that_would_be_ignored_are_refused(tmp_path, monkeypatch):
    # each was accepted and dropped without a word: the run measured something else than asked
    ckpt = checkpoint.save_checkpoint(tmp_path / "swa", small_model("swa"))
    for spec in (str(ckpt), small_model("swa")):
        with pytest.raises(ConfigError, match="preset 'tiny' cannot apply to a (checkpoint folder|built model)"):
            resolve_model(spec, preset="tiny")
    with pytest.raises(ConfigError, match="names preset '125m' and preset 'tiny' is given too"):
        resolve_model("swa:125m", preset="tiny")
    assert resolve_model("swa:tiny", preset="tiny")[1].name == "swa:tiny"  # the same preset twice is fine
    with pytest.raises(ConfigError, match="names no preset after ':'; valid presets of swa: tiny"):
        resolve_model("swa:")  # quietly meant tiny
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is a file; a checkpoint is a folder"):
        resolve_model(str(tmp_path / "weights.bin"))  # said "found []"
    with pytest.raises(ConfigError, match="seed must be a non-negative integer, got True"):
        run_eval("latency", "swa", None, {"contexts": "16"}, seed=True)
    from harness.runs import quick
    asked = []
    monkeypatch.setattr(quick, "run_sweep", lambda spec, out, progress, **_: asked.extend(m.arch for m in spec.models))
    quick.run_quick(tmp_path / "q", archs="swa")  # one name, not the letters s, w, a
    assert asked == ["swa"]


def test_run_eval_writes_a_complete_run_folder(tmp_path):
    out = tmp_path / "run1"
    result = run_eval("latency", "swa", out, {"contexts": "16,32", "repeats": 2, "decode_tokens": 2},
                      progress=False, command="lcbench eval latency --model swa")
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "results.parquet", "run.json", "samples.jsonl"]
    table = results.read_table(out)
    assert len(table) == len(result.table) == 2 * 7
    assert set(table["run"]) == {"run1"} and set(table["model"]) == {"swa:tiny"} and set(table["device"]) == {"cpu"}
    meta = provenance.read_run_json(out)
    assert meta["command"] == "lcbench eval latency --model swa" and meta["options"]["contexts"] == [16, 32]
    assert meta["model"]["config"]["arch"] == "swa" and meta["seed"] == 0
    assert len(results.read_jsonl(out / "samples.jsonl")) == 4


def test_checkpoint_spec_carries_training_context(tmp_path, corpus):
    from harness.train.checkpoint import save_checkpoint

    model = small_model("swa")
    save_checkpoint(tmp_path / "ck", model, trainer_state={"train_config": {"seq_len": 64, "corpus": corpus,
                                                                              "val_fraction": 0.5, "seed": 0}})
    result = run_eval("loss_scaling", tmp_path / "ck", None, {"contexts": "32", "tokens_per_context": 64},
                      progress=False)
    assert set(result.table["train_ctx"]) == {64} and set(result.table["model"]) == {"ck"}
    assert result.meta["model"]["source"] == "checkpoint"


def test_an_overridden_split_that_holds_training_documents_is_refused(tmp_path, corpus):
    from harness.train.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "ck", small_model("swa"), trainer_state={"train_config": {
        "seq_len": 64, "corpus": corpus, "val_fraction": 0.5, "seed": 0}})
    options = {"contexts": "32", "tokens_per_context": 64}
    with pytest.raises(ConfigError, match=r"split_seed=1\) holds \d+ of its \d+ documents that the checkpoint trained on"):
        run_eval("loss_scaling", tmp_path / "ck", None, {**options, "split_seed": 1}, progress=False)
    with pytest.raises(ConfigError, match="trained on"):
        run_eval("loss_scaling", tmp_path / "ck", None, {**options, "val_fraction": 0.9}, progress=False)
    # split_seed 0 asked of a checkpoint split by seed 2 is seed 0 (a falsy seed is not "unset")
    save_checkpoint(tmp_path / "ck1", small_model("swa"), trainer_state={"train_config": {
        "seq_len": 64, "corpus": corpus, "val_fraction": 0.5, "seed": 2}})
    with pytest.raises(ConfigError, match=r"split_seed=0\) holds \d+ of its \d+ documents that the checkpoint trained on"):
        run_eval("loss_scaling", tmp_path / "ck1", None, {**options, "split_seed": 0}, progress=False)
    # the training corpus named another way is still the training corpus
    for same in (f"{corpus}/.", f"{corpus}/../{Path(corpus).name}"):
        with pytest.raises(ConfigError, match="trained on"):
            run_eval("loss_scaling", tmp_path / "ck", None, {**options, "split_seed": 1, "corpus": same},
                     progress=False)
    # a smaller fraction with the checkpoint's seed keeps to its held-out documents (a document's side
    # depends on its own hash alone)
    assert run_eval("loss_scaling", tmp_path / "ck", None, {**options, "val_fraction": 0.3},
                    progress=False).table["status"].eq("ok").all()


# ---------------------------------------------------------------------------------------------
# loss_scaling


def test_position_bins_partition_positions():
    for L, per_octave in ((256, 1), (1000, 2), (2, 1), (3, 3)):
        bins = position_bins(L, per_octave)
        assert bins[0][0] == 1 and bins[-1][1] == L
        assert all(a[1] == b[0] for a, b in zip(bins, bins[1:])) and all(lo < hi for lo, hi in bins)
    assert position_bins(16) == [(1, 2), (2, 4), (4, 8), (8, 16)]


def test_window_selection_is_even_and_never_pads():
    windows = select_windows([100, 1000, 50], 64, budget_tokens=64 * 8)
    per_doc = {i: [s for d, s in windows if d == i] for i in range(3)}
    assert per_doc[2] == [] and len(per_doc[0]) == 1 and len(per_doc[1]) == 7  # 1000 // 64 = 15 slots
    assert all(s + 64 <= (100, 1000)[d] for d, s in windows)
    assert per_doc[1] == [0, 128, 256, 384, 512, 640, 768]  # every other of its 15 slots: spread, not the first 7
    assert select_windows([10], 64, 1000) == []
    assert select_windows([64], 64, 1000) == [(0, 0)]  # a document of exactly one window holds it


@pytest.mark.parametrize("arch", ARCHS)
def test_loss_scaling_rows_are_valid_and_bins_add_up(arch, corpus):
    model = small_model(arch)
    result = run_eval("loss_scaling", model, None,
                      {**data_options(corpus), "contexts": "32,64,100000", "tokens_per_context": 256, "chunk": 24,
                       "targets": "per_length"},
                      progress=False, model_name=arch)
    table = result.table
    assert table["status"].tolist().count("error") == 1  # no held-out document has 100000 tokens
    assert "100000 tokens" in table.loc[table["status"] == "error", "message"].iloc[0]
    ok = table[table["status"] == "ok"]
    for L in (32, 64):
        rows = ok[ok["eval_ctx"] == L]
        overall = rows[rows["pos_start"].isna()].iloc[0]
        bins = rows[rows["pos_start"].notna()]
        assert bins["n_tokens"].sum() == overall["n_tokens"]
        weighted = (bins["value"] * bins["n_tokens"]).sum() / bins["n_tokens"].sum()
        assert weighted == pytest.approx(overall["value"], rel=1e-9)
        windows = [s for s in result.samples if s["kind"] == "window" and s["eval_ctx"] == L]
        assert overall["n_tokens"] == len(windows) * (L - 1)
        assert overall["n"] == len({w["doc"] for w in windows})
        assert overall["ci_low"] <= overall["value"] <= overall["ci_high"]
        # a document's record: the mean loss of its own windows (they are all L - 1 targets long)
        for doc in (s for s in result.samples if s["kind"] == "document" and s["eval_ctx"] == L):
            mine = [w["loss"] for w in windows if w["doc"] == doc["doc"]]
            assert doc["windows"] == len(mine) and doc["loss"] == pytest.approx(np.mean(mine), rel=1e-12)


@pytest.mark.parametrize("arch", ARCHS)
def test_streamed_losses_equal_whole_sequence_losses(arch):
    model = small_model(arch)
    tokens = torch.randint(0, 256, (2, 80), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = model.token_losses(tokens).float()
        streamed = stream_token_losses(model, tokens, chunk=24)
    torch.testing.assert_close(streamed, whole, rtol=1e-4, atol=1e-4)


class ContextFreeLM(UniformLM):
    """The same (non-uniform) next-token distribution at every position: its loss on a target
    depends on the target token alone, never on the context."""

    def __init__(self):
        super().__init__()
        self.logits = torch.randn(256, generator=torch.Generator().manual_seed(0))

    def forward(self, tokens):
        return self.logits.expand(*tokens.shape, 256)


def test_same_targets_mode_scores_the_same_tokens_at_every_length(corpus):
    options = {**data_options(corpus), "contexts": "16,48,96", "tokens_per_context": 96 * 6, "target_tokens": 8}
    result = run_eval("loss_scaling", ContextFreeLM(), None, options, progress=False, model_name="context_free")
    overall = result.table[result.table["pos_start"].isna()].set_index("eval_ctx")
    assert (overall["status"] == "ok").all() and len(overall) == 3
    # the same targets: a model blind to context scores them identically at every length
    assert overall["value"].nunique() == 1 and overall["n_tokens"].nunique() == 1
    windows = [s for s in result.samples if s["kind"] == "window"]
    ends = {L: [(w["doc"], w["start"] + L) for w in windows if w["eval_ctx"] == L] for L in (16, 48, 96)}
    assert ends[16] == ends[48] == ends[96] and len(ends[96]) == 6
    assert overall.loc[16, "n_tokens"] == 6 * 8
    # a window's scored_loss (what the claims pair across lengths) is the loss of the targets the
    # overall row averages: with as many of them in every window, its mean is the row's value
    for L in (16, 48, 96):
        scored = [w["scored_loss"] for w in windows if w["eval_ctx"] == L]
        assert np.mean(scored) == pytest.approx(overall.loc[L, "value"], rel=1e-12)
    # the position bins still cover every target of each window
    bins = result.table[result.table["pos_start"].notna() & (result.table["eval_ctx"] == 96)]
    assert bins["n_tokens"].sum() == 6 * 95


def test_same_targets_mode_needs_the_longest_length_and_checks_its_options(corpus):
    result = run_eval("loss_scaling", UniformLM(), None, {**data_options(corpus), "contexts": "16,100000"},
                      progress=False, model_name="uniform")
    assert (result.table["status"] == "error").all()
    assert all("100000 tokens" in m for m in result.table["message"])
    with pytest.raises(ConfigError, match="per_length"):
        run_eval("loss_scaling", UniformLM(), None, {"targets": "per_lenght"}, progress=False)
    with pytest.raises(ConfigError, match="target_tokens"):
        run_eval("loss_scaling", UniformLM(), None, {"contexts": "16,32", "target_tokens": 16}, progress=False)
    # per_length scores every target: a target_tokens given with it was silently ignored
    with pytest.raises(ConfigError, match="target_tokens=8 applies to targets=same only"):
        run_eval("loss_scaling", UniformLM(), None, {"targets": "per_length", "target_tokens": 8}, progress=False)
    # a bin count per doubling in the millions stepped through every candidate edge: a hang
    with pytest.raises(ConfigError, match="bins_per_octave must be at most 64.*got 1000000000"):
        run_eval("loss_scaling", UniformLM(), None, {"bins_per_octave": 10**9}, progress=False)


@pytest.mark.parametrize("task", ["loss_scaling", "niah", "latency"])
def test_an_empty_list_of_contexts_is_a_clear_error(task):
    # loss_scaling raised a bare IndexError; niah and latency ran and recorded a "no rows" error
    with pytest.raises(ConfigError, match="option 'contexts' must hold at least one value"):
        run_eval(task, UniformLM(), None, {"contexts": ""}, progress=False)


def test_uniform_model_loss_is_log_vocab(corpus):
    result = run_eval("loss_scaling", UniformLM(), None, {**data_options(corpus), "contexts": "16,48"},
                      progress=False, model_name="uniform")
    assert np.allclose(result.table["value"], math.log(256))
    # targets: same scores, by default, the last half of the shortest length's targets
    windows = sum(1 for s in result.samples if s["kind"] == "window" and s["eval_ctx"] == 16)
    overall = result.table[result.table["pos_start"].isna()]
    assert windows > 0 and (overall["n_tokens"] == windows * 8).all()


# ---------------------------------------------------------------------------------------------
# niah

NIAH_SMALL = {"contexts": "512", "depths": "0,0.5,1", "samples": 2, "candidates": 5}


def test_niah_copier_scores_one_everywhere(corpus):
    result = run_eval("niah", CopierLM(), None, {**data_options(corpus), **NIAH_SMALL}, progress=False,
                      model_name="copier")
    table = result.table
    assert (table["status"] == "ok").all()
    assert set(table["variant"]) == set(niah_task.VARIANTS) and set(table["haystack"]) == set(niah_task.HAYSTACKS)
    for metric in ("gen_match", "cand_acc"):
        assert (table.loc[table["metric"] == metric, "value"] == 1.0).all(), metric
        # 2 (or 6) prompts all answered do not make a rate certain: the interval used to be [1, 1]
        assert (table.loc[table["metric"] == metric, "ci_low"] < 0.7).all(), metric
    # the copier puts all its mass on each next byte of a key's only value: log-probability 0 per
    # token (multivalue's share it among the key's values)
    one_value = table[(table["metric"] == "value_logprob") & (table["variant"] != "multivalue")]
    assert len(one_value) and np.allclose(one_value["value"], 0.0, atol=1e-6), one_value["value"].tolist()
    pooled = table[table["depth"].isna()]
    assert (pooled["n"] == 6).all() and (table[table["depth"].notna()]["n"] == 2).all()
    sample = next(s for s in result.samples if s["variant"] == "multivalue")
    assert len(sample["expected"]) == 4 and all(v in sample["generated"] for v in sample["expected"])
    assert len(sample["probes"]) == 4 and all(len(p["candidates"]) == 5 for p in sample["probes"])


def test_niah_uniform_model_scores_chance(corpus):
    result = run_eval("niah", UniformLM(), None, {**data_options(corpus), **NIAH_SMALL, "variants": "single,multikey"},
                      progress=False, model_name="uniform")
    table = result.table
    assert np.allclose(table.loc[table["metric"] == "cand_acc", "value"], 1 / 5)
    assert (table.loc[table["metric"] == "gen_match", "value"] == 0.0).all()
    assert np.allclose(table.loc[table["metric"] == "value_logprob", "value"], -math.log(256))
    # 3 other keys' values in the haystack, 3 candidates: the value and 2 of them, chance 1/3
    few = run_eval("niah", UniformLM(), None, {**data_options(corpus), **NIAH_SMALL, "variants": "multikey",
                                                "haystacks": "noise", "candidates": 3, "generate": False},
                   progress=False, model_name="uniform")
    assert np.allclose(few.table.loc[few.table["metric"] == "cand_acc", "value"], 1 / 3)
    assert all(len(p["candidates"]) == 3 for s in few.samples if s["kind"] == "prompt" for p in s["probes"])


def test_each_niah_prompt_records_a_digest_of_what_the_model_read(corpus, tmp_path):
    """Two models' answers to a prompt pair (the recall claim) only if both read the same tokens.
    Prompts are seeded by prompt id, but the tokenizer, the held-out text and the needle and
    candidate options shape them too: each prompt's record says what the model read."""
    from tests.test_data import _write_tokenizer_json

    _write_tokenizer_json(tmp_path / "tokenizer.json")

    def digests(model: LCModel | None = None, **changes) -> dict[str, str]:
        options = {**data_options(corpus), "contexts": "512", "depths": "0.5", "samples": 2, "candidates": 3,
                   "variants": "single,multikey", "haystacks": "text", "distractors": 3, "generate": False, **changes}
        samples = run_eval("niah", model or UniformLM(512), None, options, progress=False, model_name="m").samples
        return {s["prompt_id"]: s["read_digest"] for s in samples if s.get("kind") == "prompt"}

    reference = digests()
    assert len(set(reference.values())) == 4 and all(len(d) == 16 for d in reference.values())
    # another model, scored by generation too: the same prompts and candidates
    assert digests(CopierLM(), generate=True) == reference
    for changes in ({"tokenizer": str(tmp_path / "tokenizer.json")}, {"candidates": 4}, {"value_kind": "word"},
                    {"val_fraction": 0.3}):
        other = digests(**changes)
        assert other.keys() == reference.keys() and all(other[p] != reference[p] for p in reference), changes
    other = digests(distractors=2)  # only multikey prompts hold distractors
    assert {p for p in reference if other[p] != reference[p]} == {p for p in reference if p.startswith("multikey/")}


def test_a_read_digest_is_each_part_s_length_and_ids_as_little_endian_int64_hashed():
    """Digests are kept in sample records and compared with those of runs made earlier (a resumed
    sweep, another model's committed cells): the bytes hashed are part of the format. The same ids
    cut into other parts digest apart."""
    import hashlib

    from tasks.niah import read_digest

    parts = [[1, 2], [3, 2**40]]
    data = b"".join(int(x).to_bytes(8, "little", signed=True) for ids in parts for x in (len(ids), *ids))
    assert read_digest(parts) == hashlib.sha256(data).hexdigest()[:16]
    assert len({read_digest([[1, 2], [3]]), read_digest([[1], [2, 3]]), read_digest([[1, 2, 3]])}) == 3


@pytest.mark.parametrize("option, match", [
    ("depths", "'depths' must hold at least one depth in \\[0, 1\\]"),  # was: status nan rows, "gen_match is nan"
    ("variants", "'variants' must name at least one of single, multikey, multivalue, multiquery"),
    ("haystacks", "'haystacks' must name at least one of text, noise"),
])
def test_niah_empty_grids_are_clear_errors(option, match):
    with pytest.raises(ConfigError, match=match):
        run_eval("niah", UniformLM(), None, {option: ""}, progress=False)


@pytest.mark.parametrize("options, match", [
    ({"value_kind": "word", "variants": "single", "candidates": 3601}, "'word' has 3600 distinct values; the options ask for 3601"),
    ({"value_kind": "word", "variants": "multivalue", "values": 3601, "rank": False}, "ask for 3601"),
    ({"variants": "multikey", "distractors": 3780}, "distinct keys from 3780; the options ask for 3781"),
])
def test_niah_asking_more_than_a_pool_holds_is_a_clear_error(options, match):
    # keys and values are drawn distinct from finite pools: these options used to draw forever
    with pytest.raises(ConfigError, match=match):
        run_eval("niah", UniformLM(), None, {"contexts": "256", "samples": 1, **options}, progress=False)


def test_niah_candidates_may_use_the_whole_word_pool():
    pool = niah_task.VALUE_POOLS["word"]
    assert niah_task.NIAHOptions(value_kind="word", variants=["single"], candidates=pool).candidates == pool


def test_niah_repeated_variants_and_haystacks_are_measured_once():
    # contexts and depths were deduplicated, these two not: every cell ran twice, then the
    # duplicate rows failed the schema check and nothing was kept
    options = {"contexts": "256", "depths": "0", "samples": 1, "variants": "single,single", "haystacks": "noise,noise"}
    table = run_eval("niah", UniformLM(), None, options, progress=False).table
    assert (table["status"] == "ok").all() and len(table) == 3 * 2  # 3 metrics, at depth 0 and pooled
    assert set(zip(table["variant"], table["haystack"])) == {("single", "noise")}


def test_niah_prompts_are_exact_length_deterministic_and_placed_by_depth(corpus):
    from harness.data import load_corpus, tokenize_documents

    tok = ByteTokenizer()
    ids = torch.cat(tokenize_documents(load_corpus(corpus), tok))
    opts = niah_task.NIAHOptions()
    build = niah_task.PromptBuilder(tok, ids, opts, seed=0)
    for variant in niah_task.VARIANTS:
        for haystack in niah_task.HAYSTACKS:
            a = build.build(variant, haystack, 700, 0.0, 0)
            assert len(a.shared) + len(a.answer) == 700
            assert a.shared == build.build(variant, haystack, 700, 0.0, 0).shared
    other = niah_task.PromptBuilder(tok, ids, opts, seed=1).build("single", "text", 700, 0.0, 0)
    assert other.shared != build.build("single", "text", 700, 0.0, 0).shared
    start = build.build("single", "noise", 700, 0.0, 0)
    header = len(tok.encode(niah_task.HEADER.format(kinds="numbers")))
    assert start.needles[0].position == header
    end = build.build("single", "noise", 700, 1.0, 0)
    needle = niah_task.NEEDLE.format(kind="number", key=end.needles[0].key, value=end.needles[0].value)
    question = niah_task.QUESTION_ONE.format(kind="number", key=end.needles[0].key)
    assert tok.decode(end.shared).endswith(needle + question)
    with pytest.raises(niah_task.PromptTooLong):
        build.build("multiquery", "text", 200, 0.5, 0)


def test_niah_needles_sit_at_the_line_start_nearest_their_depth(corpus):
    """Needles went to the start of the line holding their depth, and the noise haystack was one
    89-byte line: at 512 byte tokens depth 0.25 of the noise haystack went to 0, and text needles
    sat 0.08 early on average."""
    from harness.data import load_corpus, tokenize_documents

    tok = ByteTokenizer()
    ids = torch.cat(tokenize_documents(load_corpus(corpus), tok))
    build = niah_task.PromptBuilder(tok, ids, niah_task.NIAHOptions(), seed=0)
    header = len(tok.encode(niah_task.HEADER.format(kinds="numbers")))
    for haystack in niah_task.HAYSTACKS:
        for depth in (0.25, 0.5, 0.75):
            for i in range(10):
                p = build.build("single", haystack, 512, depth, i)
                n = p.needles[0]
                needle = len(tok.encode(niah_task.NEEDLE.format(kind="number", key=n.key, value=n.value)))
                question = len(tok.encode(niah_task.QUESTION_ONE.format(kind="number", key=n.key)))
                hay = p.shared[header:n.position] + p.shared[n.position + needle:len(p.shared) - question]
                starts = [0] + [j + 1 for j, t in enumerate(hay) if tok.decode([t]) == "\n"]
                cut = n.position - header
                assert cut in starts and n.placed == cut / len(hay)
                nearest = min(abs(s - depth * len(hay)) for s in starts)
                assert abs(cut - depth * len(hay)) == nearest, (haystack, depth, i)
                if haystack == "noise":  # short lines: every needle within a line's length of its depth
                    assert abs(n.placed - depth) * len(hay) <= max(map(len, niah_task.NOISE_LINES.splitlines()))
    assert niah_task.depth_flag(0.5, [0.46, 0.55]) == ""


def test_niah_cells_whose_needles_sit_far_from_their_depth_are_flagged(corpus):
    """At 280 byte tokens the haystack is a few lines long: the cells say where needles went."""
    result = run_eval("niah", CopierLM(), None, {**data_options(corpus), **NIAH_SMALL, "contexts": "280",
                                                  "depths": "0,0.25,0.5", "variants": "single", "haystacks": "text",
                                                  "rank": False}, progress=False)
    rows = result.table
    assert (rows["status"] == "ok").all()
    flags = dict(zip(rows["depth"], rows["flag"]))
    assert flags[0.0] == ""  # a haystack line always starts right after the header
    assert any(f.startswith("depth: needles sit") for d, f in flags.items() if d in (0.25, 0.5)), flags
    pooled = rows[rows["depth"].isna()]
    assert (pooled["flag"] == "").all()
    placed = {s["depth"]: s["needles"][0]["placed"] for s in result.samples if s.get("kind") == "prompt"}
    assert placed[0.0] == 0.0 and all(0.0 <= p <= 1.0 for p in placed.values())


def test_niah_generation_scores_the_share_of_values_found_and_flags_by_the_asked_needle(corpus):
    """A model that lists one of the four values asked for scores 1/4 (RULER's string_match_all),
    not 0; and a cell's depth flag is about the asked needle, which sits at depth 0 here, not the
    others at random depths."""
    result = run_eval("niah", CopierLM(recalls=1), None,
                      {**data_options(corpus), **NIAH_SMALL, "depths": "0", "variants": "multikey,multivalue,multiquery",
                       "haystacks": "noise", "rank": False}, progress=False)
    table = result.table
    assert (table["status"] == "ok").all() and (table["flag"] == "").all()
    for variant, share in (("multikey", 1.0), ("multivalue", 0.25), ("multiquery", 0.25)):
        assert (table.loc[table["variant"] == variant, "value"] == share).all(), variant


class SpacedTokenizer:
    """One token per character, decoded with spaces between them, as the `tokenizers` quickstart's
    Whitespace pre-tokenizer gives digits back."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return " ".join(chr(i) for i in ids)


def test_niah_finds_a_value_as_the_tokenizer_decodes_it():
    build = niah_task.PromptBuilder(SpacedTokenizer(), torch.tensor([ord("a")]), niah_task.NIAHOptions(), seed=0)
    assert build.found(["4821937", "1234567"], " 4 8 2 1 9 3 7 .") == [True, False]


def test_a_log_probability_rounding_apart_from_the_correct_one_is_a_tie():
    assert niah_task.tie_aware_top1(-5.0, [-5.0 + 1e-9, -6.0]) == 0.5
    assert niah_task.tie_aware_top1(-5.0, [-4.9, -6.0]) == 0.0


class WordTokenizer:
    """Words as tokens, text decoded with spaces between them: like a Whitespace pre-tokenizer's,
    no token ends a line."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def encode(self, text: str) -> list[int]:
        return [self.ids.setdefault(w, len(self.ids)) for w in text.split()]

    def decode(self, ids: list[int]) -> str:
        words = {i: w for w, i in self.ids.items()}
        return " ".join(words[i] for i in ids)


def test_niah_needles_sit_at_their_depth_with_a_tokenizer_that_has_no_line_ends(corpus):
    """No token decodes to a line end, so the haystack had one line: every needle snapped to its
    start, and the depth 0.25, 0.5 and 0.75 cells all measured depth 0."""
    from harness.data import load_corpus

    tok = WordTokenizer()
    ids = torch.tensor([i for doc in load_corpus(corpus) for i in tok.encode(doc.text)])
    build = niah_task.PromptBuilder(tok, ids, niah_task.NIAHOptions(), seed=0)
    header = len(tok.encode(niah_task.HEADER.format(kinds="numbers")))
    for haystack in niah_task.HAYSTACKS:
        for depth in (0.0, 0.25, 0.5, 0.75, 1.0):
            prompt = build.build("single", haystack, 600, depth, 0)
            needle = len(tok.encode(niah_task.NEEDLE.format(kind="number", key="k", value="1")))
            hay = len(prompt.shared) - header - needle - len(tok.encode(niah_task.QUESTION_ONE.format(
                kind="number", key=prompt.needles[0].key)))
            assert prompt.needles[0].position == header + round(depth * hay), (haystack, depth)


def test_a_niah_context_too_long_for_host_memory_is_an_oom_row_and_the_others_run(corpus, monkeypatch):
    from harness.api import failures

    # memory for a 512-token prompt, not for a 1024-token one
    monkeypatch.setattr(failures, "available_host_bytes", lambda: 600 * niah_task.PROMPT_BYTES_PER_TOKEN)
    result = run_eval("niah", CopierLM(), None, {**data_options(corpus), **NIAH_SMALL, "contexts": "512,1024",
                                                  "variants": "single", "haystacks": "noise"}, progress=False)
    table = result.table
    short, long = table[table["eval_ctx"] == 512], table[table["eval_ctx"] == 1024]
    assert (short["status"] == "ok").all() and (short.loc[short["metric"] == "gen_match", "value"] == 1.0).all()
    assert (long["status"] == "oom").all() and len(long) == 3
    assert long["message"].str.contains("1024-token prompt .* GiB of host memory, .* GiB is available").all()


@pytest.mark.parametrize("arch", ARCHS)
def test_niah_rows_are_valid_on_tiny_models(arch, corpus):
    result = run_eval("niah", small_model(arch), None,
                      {**data_options(corpus), "contexts": "256,300", "depths": "0,1", "samples": 1, "candidates": 3,
                       "variants": "single", "haystacks": "noise"}, progress=False, model_name=arch)
    table = results.validate(result.table)
    assert len(table) == 2 * 3 * 3 and (table["status"] == "ok").all()
    assert table.loc[table["metric"] == "cand_acc", "value"].between(0, 1).all()


# ---------------------------------------------------------------------------------------------
# latency


def test_latency_peak_memory_leaves_the_warm_up_calls_out(monkeypatch):
    # the prefill peak covered the warm-up too: one-off compilation and autotuning buffers counted
    import tasks.latency as latency_task
    from harness.api.timing import PeakMemory

    guarded = {"on": False}
    calls = {"inside": 0, "outside": 0}

    class Spy(PeakMemory):
        def __enter__(self):
            guarded["on"] = True
            return super().__enter__()

        def __exit__(self, *exc):
            guarded["on"] = False
            return super().__exit__(*exc)

    class Counting(UniformLM):
        def prefill(self, tokens):
            calls["inside" if guarded["on"] else "outside"] += 1
            return super().prefill(tokens)

    monkeypatch.setattr(latency_task, "PeakMemory", Spy)
    options = {"contexts": "16", "warmup": 2, "repeats": 3, "phases": "prefill"}
    table = run_eval("latency", Counting(), None, options, progress=False).table
    assert (table["status"] == "ok").all()
    assert calls == {"inside": 3, "outside": 2 + 1}  # the warm-ups, and the prefill the state comes from


@pytest.mark.parametrize("arch", ARCHS)
def test_latency_rows_for_every_grid_point(arch):
    result = run_eval("latency", small_model(arch), None, {"contexts": "8,24", "repeats": 2, "decode_tokens": 2,
                                                            "batch_size": 2}, progress=False, model_name=arch)
    table = result.table
    metrics = {"prefill_s", "prefill_tok_s", "prefill_peak_bytes", "state_bytes", "decode_s", "decode_tok_s",
               "decode_peak_bytes"}
    for T in (8, 24):
        cell = table[table["eval_ctx"] == T]
        assert set(cell["metric"]) == metrics and (cell["status"] == "ok").all()
        assert (cell["batch_size"] == 2).all()
        peaks = cell["metric"].str.endswith("_peak_bytes")
        assert (cell.loc[~peaks, "value"] > 0).all()
        assert (cell.loc[peaks, "value"] >= 0).all()  # on CPU, what the work added: may be nothing new
        prefill = cell.set_index("metric")["value"]
        assert prefill["prefill_tok_s"] == pytest.approx(2 * T / prefill["prefill_s"])


def test_latency_decode_time_is_per_token_and_rates_count_every_sequence(monkeypatch):
    import tasks.latency as latency_task

    # every timed call takes 80 ms: a prefill of 2 x 16 tokens, or 4 decode steps of 2 sequences
    monkeypatch.setattr(latency_task, "measure", lambda fn, device, repeats, warmup, setup=None: [0.08] * repeats)
    options = {"contexts": "16", "repeats": 3, "decode_tokens": 4, "batch_size": 2}
    value = run_eval("latency", UniformLM(), None, options, progress=False).table.set_index("metric")["value"]
    assert value["prefill_s"] == pytest.approx(0.08) and value["prefill_tok_s"] == pytest.approx(2 * 16 / 0.08)
    assert value["decode_s"] == pytest.approx(0.02) and value["decode_tok_s"] == pytest.approx(2 / 0.02)
    # on CPU a peak is what the work added to the resident set, not the process's whole size
    from harness.api.timing import current_rss_bytes
    assert max(value["prefill_peak_bytes"], value["decode_peak_bytes"]) < current_rss_bytes() / 2


def test_latency_times_decode_steps_after_one_untimed_step():
    seen = []

    class Recording(UniformLM):
        def decode_step(self, state, token):
            seen.append(state["pos"])
            return super().decode_step(state, token)

    options = {"contexts": "16", "repeats": 2, "warmup": 1, "decode_tokens": 3, "phases": "decode"}
    run_eval("latency", Recording(), None, options, progress=False)
    # the untimed step after the 16-token prefix, then the warm-up, the 2 timed calls and the
    # peak's call, each of 3 steps from the state after it
    assert seen == [16] + [17, 18, 19] * 4


LATENCY_ONCE = {"contexts": "8", "repeats": 1, "warmup": 0, "decode_tokens": 1}


def test_latency_rows_name_the_backend_that_ran_not_auto(monkeypatch):
    """Every row said ``auto`` (the config's backend), not which kernel was timed."""
    from baselines import attention

    ran = []
    table = run_eval("latency", small_model("swa"), None, LATENCY_ONCE, progress=False).table
    assert set(table["backend"]) == {"sdpa"}  # flex needs CUDA
    monkeypatch.setattr(attention.FLEX, "unavailable_reason", lambda device: None)  # as on a GPU
    monkeypatch.setitem(attention.ATTENTION_OPS, "flex", lambda *a: ran.append(1) or attention.attention_sdpa(*a))
    table = run_eval("latency", small_model("ttt_e2e"), None, LATENCY_ONCE, progress=False).table
    assert set(table["backend"]) == {"flex"} and ran


def test_each_architecture_names_the_backend_auto_picks(monkeypatch):
    from harness.api.kernels import Kernel

    models = {arch: small_model(arch) for arch in ARCHS}
    assert {m.config.backend for m in models.values()} == {"auto"}
    assert {arch: m.backend_on(torch.device("cpu")) for arch, m in models.items()} == {
        "full_attention": "sdpa", "swa": "sdpa", "ttt_e2e": "sdpa", "mamba2": "torch", "gated_deltanet": "torch"}
    # where every kernel runs (a GPU): flex for windows only; TTT-E2E's suffix takes the fast
    # inference step there, which runs sdpa
    monkeypatch.setattr(Kernel, "unavailable_reason", lambda self, device: None)
    cuda = torch.device("cuda")
    assert {arch: m.backend_on(cuda) for arch, m in models.items()} == {
        "full_attention": "sdpa", "swa": "flex", "ttt_e2e": "flex+sdpa", "mamba2": "mamba_ssm",
        "gated_deltanet": "fla"}
    assert small_model("ttt_e2e", backend="torch").backend_on(cuda) == "torch"
    assert small_model("ttt_e2e", prefix_backend="flex", backend="sdpa").backend_on(torch.device("cpu")) == "flex+sdpa"


def test_latency_state_of_swa_stays_flat_while_full_attention_grows():
    def state(arch, **kw):
        r = run_eval("latency", small_model(arch, **kw), None, {"contexts": "32,128", "repeats": 1, "warmup": 0,
                                                                 "phases": "prefill"}, progress=False)
        return r.table[r.table["metric"] == "state_bytes"].set_index("eval_ctx")["value"]

    full, swa = state("full_attention"), state("swa", window=16)
    assert full[128] == 4 * full[32] and swa[128] == swa[32]


def test_latency_out_of_memory_becomes_a_status_row_and_the_sweep_goes_on():
    model = OOMAbove(small_model("swa"), limit=20)
    result = run_eval("latency", model, None, {"contexts": "8,16,24,32", "repeats": 1, "decode_tokens": 1},
                      progress=False, model_name="oom")
    table = result.table
    for T in (8, 16):
        assert (table.loc[table["eval_ctx"] == T, "status"] == "ok").all()
    for T in (24, 32):
        cell = table[table["eval_ctx"] == T]
        assert (cell["status"] == "oom").all() and len(cell) == 7
        assert cell["message"].str.contains("out of memory").all()
    assert any(s["kind"] == "failure" for s in result.samples)


def test_latency_threads_option_is_restored():
    before = torch.get_num_threads()
    result = run_eval("latency", small_model("swa"), None, {"contexts": "8", "repeats": 1, "warmup": 0,
                                                            "decode_tokens": 1, "threads": before + 1}, progress=False)
    assert torch.get_num_threads() == before
    assert {s["threads"] for s in result.samples if s["kind"] == "timing"} == {before + 1}


@pytest.mark.parametrize("kind, before", [
    ("word", lambda rng: str(rng.choice(niah_task.NOUNS)) + "-" + str(rng.choice(niah_task.NOUNS))),
    ("uuid", lambda rng: (lambda h: f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")(
        "".join(f"{b:02x}" for b in rng.integers(0, 256, 16)))),
])
def test_niah_values_and_keys_are_drawn_as_before_the_faster_draw(kind, before):
    """``pick`` and the uuid's hex replaced rng.choice and a join of each byte's hex to make the
    check before a sweep faster: the same seed must still draw the same prompts (the committed
    NIAH results and gate references were scored on them)."""
    builder = niah_task.PromptBuilder(ByteTokenizer(), torch.zeros(0, dtype=torch.int64),
                                      niah_task.NIAHOptions(value_kind=kind), 0)
    mine, theirs = np.random.default_rng(7), np.random.default_rng(7)
    assert [builder._value(mine) for _ in range(30)] == [before(theirs) for _ in range(30)]
    keys = builder._keys(mine, 5)
    assert keys == [f"{theirs.choice(niah_task.ADJECTIVES)}-{theirs.choice(niah_task.NOUNS)}" for _ in range(5)]
