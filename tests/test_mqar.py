"""mqar: the synthetic sequences follow Zoology's construction, a perfect recaller scores 1, the
task trains a fresh model and gives one accuracy per (length, pairs) point, and its figure draws."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import ARCHS, small_model
from harness.api import results
from harness.api.errors import ConfigError
from harness.api.interface import LCModel, ModelConfig
from harness.report import plots
from harness.runs.evaluate import run_eval
from tasks.mqar import IGNORE, MQAR, mqar_batch

V = 64


@pytest.mark.parametrize("random_non_queries", [False, True])
def test_batches_bind_keys_to_values_and_query_each_key_once(random_non_queries):
    g = torch.Generator().manual_seed(0)
    inputs, labels = mqar_batch(200, 48, 6, V, g, power_a=0.01, random_non_queries=random_non_queries)
    assert inputs.shape == labels.shape == (200, 48) and inputs.min() >= 0 and inputs.max() < V
    keys, values = inputs[:, 0:12:2], inputs[:, 1:12:2]
    assert ((keys >= 1) & (keys < V // 2)).all() and ((values >= V // 2) & (values < V)).all()
    assert all(len(set(row.tolist())) == 6 for row in keys) and all(len(set(row.tolist())) == 6 for row in values)
    asked = labels != IGNORE
    assert (asked.sum(1) == 6).all() and not asked[:, :12].any()
    rows, where = asked.nonzero(as_tuple=True)
    assert ((where - 12) % 2 == 0).all()  # queries sit on the even slots after the bindings
    for r, t in zip(rows.tolist(), where.tolist()):  # the label of a query is the value bound to its key
        k = inputs[r, t].item()
        assert labels[r, t].item() == values[r, keys[r].tolist().index(k)].item()
    # each key is asked once
    asked_keys = inputs[asked].view(200, 6).sort(1).values
    assert torch.equal(asked_keys, keys.sort(1).values)
    if not random_non_queries:
        filler = torch.ones_like(asked)
        filler[:, :12] = False
        filler &= ~asked
        assert (inputs[filler] == 0).all()
    # power_a = 0.01 puts most queries near the bindings; 1 spreads them uniformly
    near = ((where - 12) // 2 < 4).float().mean()
    _, uniform = mqar_batch(200, 48, 6, V, torch.Generator().manual_seed(0), power_a=1.0)
    near_uniform = (((uniform != IGNORE).nonzero()[:, 1] - 12) // 2 < 4).float().mean()
    assert near > near_uniform + 0.15


class RecallOracle(LCModel):
    """Predicts, at every position, the token that followed the first earlier occurrence of the
    current token (the bindings come first, so a query gets its value)."""

    def __init__(self):
        super().__init__(ModelConfig(arch="oracle", vocab_size=V))

    def forward(self, tokens):
        out = torch.zeros(*tokens.shape, V)
        for b, row in enumerate(tokens.tolist()):
            for t, tok in enumerate(row):
                first = row.index(tok)
                if first < t and first + 1 < len(row):
                    out[b, t, row[first + 1]] = 1.0
        return out

    def prefill(self, tokens):
        raise NotImplementedError

    def decode_step(self, state, token):
        raise NotImplementedError


def test_accuracy_counts_every_query_and_a_perfect_recaller_scores_one():
    inputs, labels = mqar_batch(40, 64, 8, V, torch.Generator().manual_seed(1), random_non_queries=False)
    ctx = type("Ctx", (), {"device": torch.device("cpu"), "dtype": torch.float32})()
    correct = MQAR._correct(RecallOracle(), inputs, labels, ctx, batch=16)
    assert correct.shape == (40, 8) and correct.all()
    shifted = labels.clone()
    shifted[shifted != IGNORE] = (shifted[shifted != IGNORE] - V // 2 + 1) % (V // 2) + V // 2  # wrong values
    assert not MQAR._correct(RecallOracle(), inputs, shifted, ctx).any()


def test_task_trains_a_fresh_model_and_scores_each_point():
    model = small_model("full_attention")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    options = {"contexts": "32,64", "pairs": "4,8,16", "vocab_size": V, "steps": 3, "batch_size": 4,
               "test_sequences": 8, "resamples": 50}
    result = run_eval("mqar", model, None, options, progress=False, model_name="fa")
    table = result.table
    assert (table["status"] == "ok").all()
    acc = table[table["metric"] == "accuracy"]
    # 4 x pairs <= length: (32, 4), (32, 8), (64, 4), (64, 8), (64, 16)
    assert sorted(zip(acc["eval_ctx"], acc["variant"])) == [
        (32, "pairs=4"), (32, "pairs=8"), (64, "pairs=16"), (64, "pairs=4"), (64, "pairs=8")]
    assert acc["value"].between(0, 1).all() and (acc["n"] == 8).all()
    assert (acc["n_tokens"] == 8 * acc["variant"].str.removeprefix("pairs=").astype(int)).all()
    assert table.loc[table["metric"] == "train_loss", "value"].between(0, 20).all()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the given weights are untouched
    again = run_eval("mqar", model, None, options, progress=False, model_name="fa").table
    assert again["value"].tolist() == table["value"].tolist()  # seeded: the same fresh model and data


def test_each_point_records_a_digest_of_its_test_sequences_that_the_options_change():
    """Two models' per-sequence answers pair (the recall claim) only if both read the same test
    sequences: the same seed does not ensure it, as one generator draws every point of the grid
    in turn and test_sequences sizes every draw. Each point says which sequences it read."""
    def digests(model, **changes):
        options = {"contexts": "32,64", "pairs": "4", "vocab_size": V, "steps": 1, "batch_size": 2,
                   "test_sequences": 4, **changes}
        samples = run_eval("mqar", model, None, options, progress=False, model_name="m").samples
        return {(s["eval_ctx"], s["pairs"]): s["sequences"] for s in samples if s.get("kind") == "point"}

    reference = digests(small_model("full_attention"))
    assert digests(small_model("ttt_e2e")) == reference  # another architecture, the same sequences
    assert all(isinstance(d, str) and len(d) == 16 for d in reference.values())
    # (64, 4) is drawn after (32, 4): a grid without length 32 reads other sequences at (64, 4)
    assert digests(small_model("full_attention"), contexts="64")[64, 4] != reference[64, 4]
    assert digests(small_model("full_attention"), test_sequences=5)[32, 4] != reference[32, 4]

def test_a_sequences_digest_is_the_tokens_then_the_labels_as_little_endian_int64_hashed():
    """Digests are kept in sample records and compared with those of runs made earlier (a resumed
    sweep, another model's committed cells): the bytes hashed are part of the format."""
    import hashlib

    from tasks.mqar import sequences_digest

    inputs, labels = torch.tensor([[1, 2, 2**40]]), torch.tensor([[-100, 7, 3]])
    data = b"".join(int(x).to_bytes(8, "little", signed=True) for t in (inputs, labels) for x in t.flatten().tolist())
    assert sequences_digest(inputs, labels) == hashlib.sha256(data).hexdigest()[:16]


def test_a_perfect_score_is_not_reported_as_certain(monkeypatch):
    # every query answered: the bootstrap over sequences gave [1, 1] (the committed paper_small
    # table shows SWA's "1.000" with no interval), certainty no finite sample gives
    def all_right(model, inputs, labels, ctx, batch=32):
        return np.ones((len(labels), int((labels[0] != IGNORE).sum())), dtype=bool)

    monkeypatch.setattr(MQAR, "_correct", staticmethod(all_right))
    options = {"contexts": "32", "pairs": "4,8", "vocab_size": V, "steps": 1, "batch_size": 2,
               "test_sequences": 16, "resamples": 50}
    acc = run_eval("mqar", small_model("full_attention"), None, options, progress=False, model_name="fa").table
    acc = acc[acc["metric"] == "accuracy"]
    assert (acc["value"] == 1).all() and (acc["ci_high"] == 1).all()
    assert (acc["ci_low"] < 1).all() and (acc["ci_low"] > 0.9).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_trains_and_is_scored(arch):
    options = {"contexts": "32", "pairs": "4", "vocab_size": V, "steps": 2, "batch_size": 2, "test_sequences": 4,
               "resamples": 20}
    table = run_eval("mqar", small_model(arch), None, options, progress=False, model_name=arch).table
    assert (table["status"] == "ok").all() and table["value"].notna().all() and len(table) == 2


@pytest.mark.parametrize("dtype, autocast", [("float32", None), ("bfloat16", torch.bfloat16)])
def test_the_fresh_model_computes_in_the_dtype_its_rows_carry(dtype, autocast, monkeypatch):
    # it trained and answered in fp32 whatever the run's dtype, under rows labelled bfloat16 (on CUDA: auto)
    model = small_model("full_attention")
    seen, forward = [], type(model).forward

    def spy(self, *args, **kwargs):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", spy)
    options = {"contexts": "32", "pairs": "4", "vocab_size": V, "steps": 2, "batch_size": 2, "test_sequences": 4,
               "resamples": 20}
    table = run_eval("mqar", model, None, options, progress=False, model_name="fa", dtype=dtype).table
    assert (table["status"] == "ok").all() and set(table["dtype"]) == {dtype}
    assert len(seen) == 3 and set(seen) == {autocast}  # 2 training steps, 1 test batch


def test_a_fresh_model_that_diverges_gives_no_ok_accuracy():
    # a diverged model's NaN logits have argmax 0, never a value: accuracy 0.0 used to read as ok
    options = {"contexts": "32", "pairs": "4", "vocab_size": V, "steps": 6, "batch_size": 4, "test_sequences": 8,
               "resamples": 20, "lr": 1e6}
    table = run_eval("mqar", small_model("full_attention"), None, options, progress=False, model_name="fa").table
    assert not (table["status"] == "ok").any()
    assert (table["status"] == "nan").all() and table["message"].str.contains("NaN or infinity").all()


@pytest.mark.parametrize("options, match", [
    ({"pairs": ""}, "'pairs' must hold at least one value"),  # was: ValueError from max()
    ({"contexts": "33"}, "even"),
    ({"contexts": "16", "pairs": "8"}, "no \\(length, pairs\\) point fits"),
    ({"pairs": "200"}, "distinct keys"),
])
def test_bad_options_are_clear(options, match):
    with pytest.raises(ConfigError, match=match):
        run_eval("mqar", small_model("swa"), None, options, progress=False)


def test_mqar_figure_draws_accuracy_against_pairs(tmp_path):
    rows = []
    for arch, drop in (("full_attention", 0.0), ("mamba2", 0.2)):
        for length in (64, 128):
            for pairs in (4, 8, 16):
                v = max(0.0, 1.0 - drop * pairs / 4)
                rows.append(results.make_row("accuracy", v, ci_low=max(0, v - 0.05), ci_high=min(1, v + 0.05), n=8,
                                             run="t", model=arch, arch=arch, params=1000, task="mqar",
                                             eval_ctx=length, variant=f"pairs={pairs}", seed=0))
    written = plots.make_figures(results.to_frame(rows), tmp_path, only=["mqar"], formats=("png",))
    assert [p.name for p in written] == ["mqar.png"] and written[0].stat().st_size > 0
