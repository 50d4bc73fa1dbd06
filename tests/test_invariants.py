"""Invariants every registered architecture holds; a new architecture inherits all of them."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from harness.api import registry
from harness.api.decoding import stream_token_losses
from harness.api.errors import ConfigError
from harness.api.interface import LCModel, clone_state, state_tensors
from harness.train import checkpoint
from tests.conftest import small_config, small_model

T = 48  # crosses the small configs' windows, chunks and mini-batches (16) several times


def tokens(batch: int = 2, length: int = T, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_is_lcmodel_with_tiny_preset(arch):
    model = small_model(arch)
    assert isinstance(model, LCModel)
    assert "tiny" in registry.preset_names(arch)
    assert model.num_params(non_embedding=True) < model.num_params(non_embedding=False)


def test_config_json_round_trip(arch):
    config = small_config(arch)
    assert registry.config_from_dict(json.loads(config.to_json())) == config
    for preset in registry.preset_names(arch):
        config = registry.make_config(arch, preset)
        assert registry.config_from_dict(json.loads(config.to_json())) == config


@pytest.mark.parametrize("input_conv", [0, 3], ids=["no_conv", "input_conv"])
@torch.no_grad()
def test_prefill_decode_reproduce_forward(arch, input_conv):
    model = small_model(arch, dtype=torch.float64, input_conv=input_conv)
    x = tokens()
    full = model(x)
    prompt = 21  # not a multiple of any chunk, window or mini-batch size
    logits, state = model.prefill(x[:, :prompt])
    torch.testing.assert_close(logits, full[:, prompt - 1], rtol=1e-9, atol=1e-9)
    for t in range(prompt, T):
        logits, state = model.decode_step(state, x[:, t])
        torch.testing.assert_close(logits, full[:, t], rtol=1e-9, atol=1e-9, msg=f"position {t}")
    assert model.state_bytes(state) > 0


@pytest.mark.parametrize("input_conv", [0, 3], ids=["no_conv", "input_conv"])
@torch.no_grad()
def test_the_state_holds_no_more_memory_than_state_bytes_counts(arch, input_conv):
    """A state tensor that is a view of a prefill-sized buffer keeps all of it alive, unseen by
    state_bytes and copied whole by clone_state: decode memory then grows with the prompt."""
    model = small_model(arch, input_conv=input_conv)
    _, state = model.prefill(tokens(length=3 * T))
    for t in state_tensors(state):
        held, counted = t.untyped_storage().nbytes(), t.numel() * t.element_size()
        assert held <= counted, f"a {tuple(t.shape)} state tensor keeps {held} bytes alive, counted {counted}"


@pytest.mark.parametrize("input_conv", [0, 3], ids=["no_conv", "input_conv"])
@torch.no_grad()
def test_outputs_are_causal(arch, input_conv):
    model = small_model(arch, dtype=torch.float64, input_conv=input_conv)
    x = tokens()
    base = model(x)
    for t in (5, 16, 31, T - 1):  # inside and at the edges of chunks / mini-batches
        changed = x.clone()
        changed[:, t] = (changed[:, t] + 1) % 256
        out = model(changed)
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=1e-12, msg=f"changing token {t}")
        assert not torch.allclose(out[:, t], base[:, t]), "the changed token must change its own output"


BAD_TOKENS = {
    "empty": (torch.zeros(2, 0, dtype=torch.long), r"at least one token.*\(2, 0\)"),
    "one_dimensional": (torch.zeros(5, dtype=torch.long), r"\[batch, length\].*\(5,\)"),
    "float": (torch.zeros(2, 5), r"integer token ids.*torch.float32"),
}


@pytest.mark.parametrize("bad", BAD_TOKENS, ids=BAD_TOKENS)
@torch.no_grad()
def test_bad_token_tensors_are_named_not_a_traceback_from_a_mixer(arch, bad):
    model = small_model(arch)
    x, message = BAD_TOKENS[bad]
    for read in (model, model.prefill):
        with pytest.raises(ConfigError, match=message):
            read(x)


@torch.no_grad()
def test_a_continuation_of_another_batch_is_named(arch):
    model = small_model(arch)
    _, state = model.prefill(tokens()[:, :5])  # two sequences
    with pytest.raises(ConfigError, match="tokens hold 3 sequence.* the state they continue holds 2"):
        model.decode_step(state, torch.zeros(3, dtype=torch.long))
    assert model.decode_step(state, torch.zeros(2, dtype=torch.long))[0].shape[0] == 2


@pytest.mark.parametrize("how", ["decode_step", "forward_chunk"])
@torch.no_grad()
def test_a_state_continued_twice_is_never_silently_wrong(arch, how):
    """Attention caches grow in place, so a state continued once has moved on: continuing it again
    must read like the first time (a state nothing changed) or say so and how to branch, never
    attend to keys of the other continuation's tokens. A copy made first continues exactly."""
    model = small_model(arch, dtype=torch.float64)
    if how == "forward_chunk" and not hasattr(model, "forward_chunk"):
        pytest.skip(f"{arch} has no forward_chunk (streaming is optional)")
    x = tokens()
    full, prompt = model(x), 21
    _, state = model.prefill(x[:, :prompt])
    copy = clone_state(state)

    def step(s):
        if how == "decode_step":
            return model.decode_step(s, x[:, prompt])[0]
        return model.forward_chunk(x[:, prompt : prompt + 5], s)[0][:, 0]

    step(state)
    try:
        again = step(state)
    except ConfigError as exc:
        assert "clone_state" in str(exc) and f"from position {prompt}" in str(exc)
    else:
        torch.testing.assert_close(again, full[:, prompt], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(step(copy), full[:, prompt], rtol=1e-9, atol=1e-9)


def test_a_state_read_with_gradients_on_can_be_copied(arch):
    """A prefill outside ``torch.no_grad`` holds tensors of an autograd graph, which deepcopy
    refuses; the copy of such a state continues as the state itself does."""
    model = small_model(arch)
    x = tokens()
    _, state = model.prefill(x[:, :21])
    copy = clone_state(state)
    logits, _ = model.decode_step(copy, x[:, 21])
    torch.testing.assert_close(logits, model.decode_step(state, x[:, 21])[0], rtol=0, atol=0)
    assert logits.requires_grad


def test_inference_mode_reads_as_no_grad_does(arch):
    """torch.inference_mode, PyTorch's recommended context for inference, has no autograd at all:
    an architecture that differentiates while reading (TTT-E2E's inner step) must still read."""
    model = small_model(arch, dtype=torch.float64)
    x = tokens()
    with torch.no_grad():
        full, losses = model(x), model.token_losses(x)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), full, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(model.token_losses(x), losses, rtol=1e-9, atol=1e-9)
        logits, state = model.prefill(x[:, :21])
        for t in range(21, 40):
            logits, state = model.decode_step(state, x[:, t])
        torch.testing.assert_close(logits, full[:, 39], rtol=1e-9, atol=1e-9)


@torch.no_grad()
def test_int32_token_ids_read_as_int64_ones_do(arch):
    """check_tokens admits int32 ids (what an embedding looks up, and what token files often hold);
    the losses' cross-entropy wants int64 targets and failed deep inside on them."""
    model = small_model(arch)
    x = tokens()
    wide, narrow = x, x.to(torch.int32)
    torch.testing.assert_close(model(narrow), model(wide), rtol=0, atol=0)
    torch.testing.assert_close(model.token_losses(narrow), model.token_losses(wide), rtol=0, atol=0)
    torch.testing.assert_close(model.training_loss(narrow), model.training_loss(wide), rtol=0, atol=0)
    torch.testing.assert_close(stream_token_losses(model, narrow, chunk=16), stream_token_losses(model, wide, chunk=16),
                               rtol=0, atol=0)
    _, state = model.prefill(narrow[:, :21])
    torch.testing.assert_close(model.decode_step(state, narrow[:, 21])[0],
                               model.decode_step(model.prefill(wide[:, :21])[1], wide[:, 21])[0], rtol=0, atol=0)


@torch.no_grad()
def test_token_ids_outside_the_vocabulary_are_named(arch):
    """An id at or past the vocabulary (text of another tokenizer) failed as an IndexError from
    inside the embedding ("index out of range in self"), naming neither the id nor the vocabulary."""
    model = small_model(arch)
    vocab = model.config.vocab_size
    x = tokens()
    for bad, where in ((vocab, (0, 5)), (-1, (1, 0))):
        y = x.clone()
        y[where] = bad
        with pytest.raises(ConfigError, match=f"token id {bad} is outside the model's vocabulary of {vocab} "
                                              rf"\(valid ids: 0..{vocab - 1}\)"):
            model(y)
        with pytest.raises(ConfigError, match=f"token id {bad} "):
            model.decode_step(model.prefill(x[:, :9])[1], y[:, 5] if bad == vocab else y[:, 0])


@torch.no_grad()
def test_token_losses_match_forward(arch):
    model = small_model(arch, dtype=torch.float64)
    x = tokens()
    logits = model(x)
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1), reduction="none")
    losses = model.token_losses(x)
    assert losses.shape == (2, T - 1)
    torch.testing.assert_close(losses, expected.view(2, -1), rtol=1e-9, atol=1e-9)
    # one token has no target: no losses, as stream_token_losses gives (TTT-E2E raised)
    assert model.token_losses(x[:, :1]).shape == (2, 0)


@torch.no_grad()
def test_same_seed_same_numbers(arch):
    x = tokens()
    a, b = small_model(arch, seed=3)(x), small_model(arch, seed=3)(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, small_model(arch, seed=4)(x))


@torch.no_grad()
def test_checkpoint_round_trip_is_exact(arch, tmp_path):
    model = small_model(arch)
    checkpoint.save_checkpoint(tmp_path / "ckpt", model)
    loaded = checkpoint.load_model(tmp_path / "ckpt").eval()
    assert loaded.config == model.config
    x = tokens()
    assert torch.equal(loaded(x), model(x))
    for (name, p), (name2, q) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert name == name2 and torch.equal(p, q)


@pytest.mark.parametrize("input_conv", [0, 3], ids=["no_conv", "input_conv"])
@torch.no_grad()
def test_streamed_chunks_equal_forward(arch, input_conv):
    model = small_model(arch, dtype=torch.float64, input_conv=input_conv)
    if not hasattr(model, "forward_chunk"):
        pytest.skip(f"{arch} has no forward_chunk (streaming is optional)")
    x = tokens()
    full = model(x)
    state, outs = None, []
    for piece in x.split([7, 16, 25], dim=1):
        logits, state = model.forward_chunk(piece, state)
        outs.append(logits)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("input_conv", [0, 3], ids=["no_conv", "input_conv"])
def test_gradients_reach_every_parameter(arch, input_conv):
    model = small_model(arch, input_conv=input_conv).train()
    model.token_losses(tokens()).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, f"parameters without gradient: {missing}"


@torch.no_grad()
def test_input_conv_is_the_direct_sum_over_preceding_embeddings(arch):
    """embed_tokens with input_conv=K: e_t + sum_j w[:, j] * e_{t-K+1+j} (zeros before the start),
    read off the equation one position at a time, and continued exactly across calls."""
    K = 3
    model = small_model(arch, dtype=torch.float64, input_conv=K)
    if not hasattr(model, "embed_tokens"):  # an installed plugin architecture off the backbone
        pytest.skip(f"{arch} is not on the shared backbone, whose embedding input_conv is")
    x = tokens()
    e = model.embed(x)
    w = model.input_conv.weight[:, 0, :]  # [D, K]; tap K-1 multiplies the current position
    expected = torch.stack([e[:, t] + sum(w[:, j] * e[:, t - K + 1 + j] for j in range(K) if t - K + 1 + j >= 0)
                            for t in range(T)], 1)
    got, _ = model.embed_tokens(x, None)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    first, tail = model.embed_tokens(x[:, :20], None)
    rest, _ = model.embed_tokens(x[:, 20:], tail)
    torch.testing.assert_close(torch.cat([first, rest], 1), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad", [-1, 1])
def test_input_conv_rejects_kernels_that_are_not_convolutions(bad):
    with pytest.raises(ConfigError, match=f"input_conv={bad}"):
        small_config("swa", input_conv=bad)


@pytest.mark.parametrize("field, bad", [("norm_eps", -1e-6), ("init_std", -0.02)])
def test_negative_norm_eps_or_init_std_is_refused(arch, field, bad):
    """A negative eps gives NaN (rsqrt of a negative) from a model that builds without a word."""
    with pytest.raises(ConfigError, match=f"{field}={bad}"):
        small_config(arch, **{field: bad})
