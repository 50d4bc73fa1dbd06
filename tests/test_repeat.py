"""The repeat task: copy gain by distance, on models whose reach is known exactly."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import small_model
from harness.api import results
from harness.api.errors import ConfigError
from harness.api.interface import LCModel, ModelConfig
from harness.report import plots
from harness.runs.evaluate import run_eval
from tasks.repeat import RepeatOptions, repeat_pair

OPTIONS = {"contexts": "64,128", "span": 16, "prefix": 4, "windows": 6, "batch_size": 4, "resamples": 50}


class CopyOracle(LCModel):
    """Byte model that copies: after the last ``order`` tokens, it puts 0.9 on the token that
    followed their most recent earlier occurrence (uniform without one)."""

    def __init__(self, order: int = 4):
        super().__init__(ModelConfig(arch="copy_oracle", vocab_size=256))
        self.order = order

    def forward(self, tokens):
        B, T = tokens.shape
        probs = torch.full((B, T, 256), 1 / 256)
        k = self.order
        for b, row in enumerate(tokens.tolist()):
            for t in range(k - 1, T):
                key = row[t - k + 1 : t + 1]
                for s in range(t - 1, k - 2, -1):
                    if row[s - k + 1 : s + 1] == key:
                        probs[b, t] = 0.1 / 255
                        probs[b, t, row[s + 1]] = 0.9
                        break
        return probs.log()

    def prefill(self, tokens):
        raise NotImplementedError

    def decode_step(self, state, token):
        raise NotImplementedError


def _values(table, metric):
    rows = table[table["metric"] == metric].sort_values("eval_ctx")
    return dict(zip(rows["eval_ctx"].tolist(), rows["value"].tolist()))


def test_repeat_pair_puts_the_last_span_first_and_keeps_the_control_natural():
    window = torch.arange(100, 140)
    repeat, control = repeat_pair(window, 8)
    assert torch.equal(control, window)
    assert torch.equal(repeat[:8], window[-8:]) and torch.equal(repeat[8:], window[8:])
    opts = RepeatOptions(contexts=[40], span=8, prefix=3)
    # column j scores token j+1: the scored targets are the last span's tokens after its prefix
    scored_tokens = torch.arange(1, 40)[opts.scored(40)]
    assert scored_tokens.tolist() == list(range(40 - 8 + 3, 40))


def test_a_copying_model_gains_and_the_gain_is_control_minus_repeat():
    # keys of 6 bytes, all of them read from the span before scoring: the last match is its first occurrence
    options = {**OPTIONS, "prefix": 6}
    table = run_eval("repeat", CopyOracle(order=6), None, options, progress=False, model_name="oracle").table
    assert (table["status"] == "ok").all() and set(table["eval_ctx"]) == {64, 128}
    gain, repeat, control = (_values(table, m) for m in ("copy_gain", "repeat_loss", "control_loss"))
    for L in (64, 128):
        assert gain[L] == pytest.approx(control[L] - repeat[L], abs=1e-9)
        assert repeat[L] < -math.log(0.9) + 0.2  # it copies nearly every scored byte of the span
        assert gain[L] > 1.0
    rows = table[table["metric"] == "copy_gain"]
    assert (rows["n_tokens"] == 6 * (16 - 6)).all() and (rows["ci_low"] <= rows["value"]).all()


def test_a_model_that_cannot_reach_the_first_occurrence_gains_nothing():
    # sliding window 4 in 2 blocks: each output sees 7 tokens back, far less than the 48-token distance
    model = small_model("swa", window=4, n_layers=2)
    table = run_eval("repeat", model, None, OPTIONS, progress=False, model_name="swa").table
    assert (table["status"] == "ok").all()
    for L, g in _values(table, "copy_gain").items():
        assert abs(g) < 1e-6, (L, g)


def test_windows_end_at_the_same_positions_at_every_length():
    model = small_model("swa", window=4, n_layers=2)
    result = run_eval("repeat", model, None, OPTIONS, progress=False, model_name="swa")
    ends = {L: sorted((s["doc"], s["end"]) for s in result.samples if s["eval_ctx"] == L) for L in (64, 128)}
    assert ends[64] == ends[128] and len(ends[64]) == 6
    assert {s["distance"] for s in result.samples} == {64 - 16, 128 - 16}


@pytest.mark.parametrize("options, match", [
    ({"contexts": ""}, "'contexts' must hold at least one value"),  # was: IndexError
    ({"contexts": "40", "span": 32}, "at least 2 x span = 64"),
    ({"span": 8, "prefix": 8}, "prefix=8 leaves nothing"),
    ({"span": 0}, "span"),
])
def test_bad_options_are_clear(options, match):
    with pytest.raises(ConfigError, match=match):
        run_eval("repeat", small_model("swa"), None, options, progress=False)


def test_repeat_figure_draws_gain_and_losses(tmp_path):
    rows = []
    for arch, reach in (("full_attention", 1.0), ("swa", 0.0)):
        for L in (128, 256, 512):
            control = 2.0
            repeat = control - reach * 1.5 * 128 / L
            for metric, v in (("repeat_loss", repeat), ("control_loss", control), ("copy_gain", control - repeat)):
                rows.append(results.make_row(metric, v, ci_low=v - 0.05, ci_high=v + 0.05, n=4, run="t", model=arch,
                                             arch=arch, params=1000, task="repeat", eval_ctx=L, seed=0))
    written = plots.make_figures(results.to_frame(rows), tmp_path, only=["repeat"], formats=("png",))
    assert [p.name for p in written] == ["repeat.png"] and written[0].stat().st_size > 0


def test_a_length_no_held_out_document_reaches_gives_error_rows_naming_it():
    table = run_eval("repeat", small_model("swa"), None, {**OPTIONS, "contexts": "64,10M"}, progress=False).table
    assert (table["status"] == "error").all() and len(table) == 2 * 3
    assert table["message"].str.contains(f"no held-out document has {10 * 2**20} tokens").all()
