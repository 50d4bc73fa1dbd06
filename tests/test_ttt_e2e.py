"""TTT-E2E against a naive reading of the algorithm, finite differences, and its own invariants.

The generic invariants (prefill + decode == forward, causality, determinism, checkpoints,
gradients) run for ttt_e2e in tests/test_invariants.py; these are the ones specific to it.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from baselines.ttt_e2e import TTTE2ELM, clip_per_sequence
from harness.api import registry
from harness.api.errors import ConfigError
from tests.conftest import NewMemory, close_ratio, kernel_cases, small_model

B = 3
T = 70  # 4 full mini-batches of 16 and a partial one; crosses the window (16) too
INNER = dict(inner_lr=3.0, inner_clip=1.0)  # a large step, so updates matter; clipping active


def tokens(batch: int = B, length: int = T, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def model64(seed: int = 0, **overrides) -> TTTE2ELM:
    return small_model("ttt_e2e", seed=seed, dtype=torch.float64, **{**INNER, **overrides})


# ---------------------------------------------------------------------------------------------
# A naive reading: one sequence at a time, a Python loop over mini-batches, the suffix blocks'
# ordinary forward with their window KV caches, autograd on a copy of the fast weights.


def naive_read(model: TTTE2ELM, seq: torch.Tensor, n_in: int, order: str | None = None):
    """Logits [n_in, V] and NLL of the positions that have a target. ``order`` None: inference
    (fast weights are copies, updated without a graph); "first"/"second": keeps the graph of an
    outer loss, with the inner gradient differentiated ("second") or taken as a constant."""
    c = model.config
    names = model.fast_parameter_names()
    weights = [p if order else p.detach().clone() for p in model.fast_parameters()]
    x = model.embed_tokens(seq[None, :n_in], None)[0]
    for block in model.prefix_blocks:
        x, _ = block(x, None, 0, False)
    caches = [None] * len(model.suffix_blocks)
    logits_out, nll_out = [], []
    for s in range(0, n_in, c.mini_batch_size):
        e = min(s + c.mini_batch_size, n_in)
        # sdpa's math kernel: the only one with a double backward
        with torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]):
            if order is None:
                weights = [w.detach().requires_grad_() for w in weights]
            h = x[:, s:e]
            for j, block in enumerate(model.suffix_blocks):
                prefix = f"blocks.{model.n_prefix + j}."
                params = {n[len(prefix) :]: w for n, w in zip(names, weights) if n.startswith(prefix)}
                h, caches[j] = functional_call(block, params, (h, caches[j], s, True))
            logits = model.lm_head(model.norm(h))[0]
            targets = seq[s + 1 : e + 1]
            nll = F.cross_entropy(logits[: len(targets)], targets, reduction="none")
            if e < n_in:  # a later mini-batch exists: one clipped SGD step on this one's loss
                counted = nll[targets != c.bos_token_id]  # targets equal to BOS leave the loss (none at -1)
                inner_loss = counted.mean() if len(counted) else nll.sum() * 0
                grads = torch.autograd.grad(inner_loss, weights, create_graph=order == "second",
                                            retain_graph=order is not None)
                norm = torch.sqrt(sum((g**2).sum() for g in grads))
                scale = torch.clamp(c.inner_clip / norm, max=1.0) if c.inner_clip > 0 else 1.0
                weights = [w - c.inner_lr * scale * g for w, g in zip(weights, grads)]
        if order is None:
            logits, nll = logits.detach(), nll.detach()
            for cache in caches:
                cache.k, cache.v = cache.k.detach(), cache.v.detach()
        logits_out.append(logits)
        nll_out.append(nll)
    return torch.cat(logits_out), torch.cat(nll_out)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"suffix_blocks": 2},  # inner gradients through a suffix block's attention
        {"fast_weights": "prime+mlp", "suffix_blocks": 2},
        {"prime_mlp": False, "fast_weights": "mlp"},
        {"inner_clip": 0.0, "window": 40, "mini_batch_size": 8},
    ],
    ids=["default", "two_suffix", "prime+mlp", "mlp_only", "noclip_wide_window"],
)
@torch.no_grad()
def test_matches_naive_reading(overrides):
    model = model64(**overrides)
    x = tokens()
    logits, losses = model(x), model.token_losses(x)
    for i in range(B):
        ref_logits, _ = naive_read(model, x[i], T)
        torch.testing.assert_close(logits[i], ref_logits, rtol=1e-10, atol=1e-10)
        _, ref_nll = naive_read(model, x[i], T - 1)
        torch.testing.assert_close(losses[i], ref_nll, rtol=1e-10, atol=1e-10)
    # the updates matter: the static model reads these tokens differently
    assert (logits - model.forward_static(x)).abs().max() > 1e-3


BOS = 7


def with_documents(x: torch.Tensor, bos_only_mini_batch: bool = True) -> torch.Tensor:
    """``x`` as packed documents that each start with BOS; optionally sequence 0's first
    mini-batch of targets (positions 1..16) is BOS only: its inner loss has nothing to count."""
    x = x.clone()
    x[x == BOS] = BOS + 1
    x[:, ::11] = BOS
    if bos_only_mini_batch:
        x[0, 1:17] = BOS
    return x


def naive_outer_loss(model: TTTE2ELM, x: torch.Tensor, order: str | None = None) -> torch.Tensor:
    """The official outer loss read plainly: per sequence and mini-batch, the mean NLL of the
    targets that are not BOS (0 if none are), then the mean of all of those."""
    b, losses = model.config.mini_batch_size, []
    for seq in x:
        nll = naive_read(model, seq, len(seq) - 1, order)[1]
        for s in range(0, len(nll), b):
            counted = nll[s : s + b][seq[s + 1 : s + b + 1] != BOS]
            losses.append(counted.mean() if len(counted) else nll.sum() * 0)
    return torch.stack(losses).mean()


@torch.no_grad()
def test_bos_targets_leave_the_inner_loss():
    x = with_documents(tokens())
    model = model64(bos_token_id=BOS)
    logits, losses = model(x), model.token_losses(x)
    for i in range(B):
        ref_logits, ref_nll = naive_read(model, x[i], T - 1)
        torch.testing.assert_close(logits[i, :-1], ref_logits, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(losses[i], ref_nll, rtol=1e-10, atol=1e-10)  # every target reported
    # the mask matters: the same weights read without it differ after the first update
    unmasked = model64()(x)
    assert torch.equal(unmasked[:, :16], logits[:, :16])
    assert (unmasked[:, 16:] - logits[:, 16:]).abs().max() > 1e-3
    # sequence 0's first mini-batch had no target to learn from: no update, as with inner_lr=0
    torch.testing.assert_close(logits[0, 16:32], model64(inner_lr=0.0)(x[:1, :32])[0, 16:], rtol=1e-12, atol=1e-12)


def test_bos_targets_leave_the_outer_loss():
    # (no BOS-only mini-batch: the naive reading's sqrt has no derivative at a zero gradient)
    x = with_documents(tokens(), bos_only_mini_batch=False)
    model = model64(suffix_blocks=2, bos_token_id=BOS).train()
    loss = model.training_loss(x)
    ours = torch.autograd.grad(loss, list(model.parameters()))
    naive = naive_outer_loss(model, x, "second")
    torch.testing.assert_close(loss, naive, rtol=1e-12, atol=1e-12)
    ref = torch.autograd.grad(naive, list(model.parameters()))
    for (name, _), a, b in zip(model.named_parameters(), ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12, msg=name)
    assert not torch.isclose(loss, model.token_losses(x).mean())  # the mask matters


@torch.no_grad()
def test_validation_loss_leaves_bos_targets_out_as_training_does():
    # it averaged every target while training left BOS targets out: the two did not compare
    from harness.train.trainer import TrainConfig, validation_loss

    x = with_documents(tokens(), bos_only_mini_batch=False)
    model = model64(suffix_blocks=2, bos_token_id=BOS)
    val = validation_loss(model, x, TrainConfig(batch_size=len(x), eval_batches=1), torch.device("cpu"))
    assert val == pytest.approx(model.training_loss(x).item(), rel=1e-12)
    assert abs(val - model.token_losses(x).mean().item()) > 1e-3


@torch.no_grad()
def test_the_state_holds_only_the_current_mini_batch_not_the_whole_prefill():
    model = small_model("ttt_e2e")
    _, state = model.prefill(tokens(length=16 * 4 + 5))  # 4 full mini-batches of 16 and 5 tokens
    assert state.n_pending == 5
    for pending in (state.pending_x, state.pending_tokens):
        assert pending.size(1) == 16  # a buffer of one mini-batch, which decode steps fill
        # a view of the prefill kept all of it alive, unseen by state_bytes
        assert pending.untyped_storage().nbytes() == pending.numel() * pending.element_size()


def test_training_on_sequences_within_one_mini_batch_says_it_learns_nothing_at_test_time():
    """``lcbench train ttt_e2e --preset 125m`` (mini-batches of 1024) at the default --seq-len 256
    read every sequence in one mini-batch: no inner step, so no meta-learning, without a word."""
    import warnings

    from baselines.ttt_e2e import NoInnerStepWarning

    model = model64().train()  # mini-batches of 16
    with pytest.warns(NoInnerStepWarning, match=r"17 tokens, .* mini_batch_size=16: .* seq_len of at least 18"):
        model.training_loss(tokens(length=17))  # 16 inputs: one mini-batch
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoInnerStepWarning)
        model.training_loss(tokens(length=18))  # a second mini-batch: one inner step
        with torch.no_grad():
            model.eval().training_loss(tokens(length=17))  # validation: not training
        model64(inner_mode="off_in_training").train().training_loss(tokens(length=17))  # static on purpose


def test_without_bos_the_outer_loss_is_the_plain_mean():
    x = with_documents(tokens())
    model = model64().train()
    assert torch.equal(model.training_loss(x), model.token_losses(x).mean())  # as every architecture's


@torch.no_grad()
def test_a_mini_batch_of_bos_targets_only_counts_zero_in_the_outer_loss():
    """The official loss gives such a mini-batch 0, not 0/0 = NaN (the inner step never sees it:
    the masked NLLs pass it no gradient)."""
    x = with_documents(tokens())  # sequence 0's first mini-batch: BOS targets only
    model = model64(bos_token_id=BOS)
    torch.testing.assert_close(model.training_loss(x), naive_outer_loss(model, x), rtol=1e-12, atol=1e-12)


def test_bos_token_id_is_checked_and_imported(tmp_path):
    import numpy as np

    from harness.adapters.importers import import_ttt_e2e
    from tests.test_importers import OFFICIAL, official_tree

    with pytest.raises(ConfigError, match="bos_token_id=256"):
        registry.make_config("ttt_e2e", "tiny", bos_token_id=256)
    np.savez(tmp_path / "official.npz", **official_tree())
    config = {**OFFICIAL, "model": {**OFFICIAL["model"], "bos_token_id": BOS}}
    assert import_ttt_e2e(tmp_path / "official.npz", tmp_path / "a", config=config).config.bos_token_id == BOS
    null = {**OFFICIAL, "model": {**OFFICIAL["model"], "bos_token_id": None}}
    assert import_ttt_e2e(tmp_path / "official.npz", tmp_path / "b", config=null).config.bos_token_id == -1


def test_bos_token_id_absent_from_the_official_config_is_the_official_codes(tmp_path):
    """It was read as none (-1), so an imported model trained its inner loop on the BOS targets the
    official loader masks: absent, the official code used ModelConfig's default (1), or 128000 in
    every official model config (Llama 3's vocabulary). The guess is warned of and recorded."""
    import json

    import numpy as np

    from harness.adapters.importers.common import ImportedCheckpointWarning
    from harness.adapters.importers.ttt_e2e import official_bos_token_id
    from harness.adapters.importers import import_ttt_e2e
    from tests.test_importers import OFFICIAL, official_tree

    np.savez(tmp_path / "official.npz", **official_tree())
    with pytest.warns(ImportedCheckpointWarning, match=r"model\.bos_token_id \(took 1\)"):
        model = import_ttt_e2e(tmp_path / "official.npz", tmp_path / "ours", config=OFFICIAL)
    assert model.config.bos_token_id == 1
    assert "model.bos_token_id (took 1)" in json.loads((tmp_path / "ours" / "import.json").read_text())[
        "config_defaults_used"]
    assert official_bos_token_id({}, 128256) == 128000
    assert official_bos_token_id({"bos_token_id": 7}, 128256) == 7


@pytest.mark.parametrize("order", ["second", "first"])
@pytest.mark.parametrize("checkpointed", [True, False])
def test_meta_gradient_matches_naive(order, checkpointed):
    model = model64(suffix_blocks=2, inner_mode=f"{order}_order", checkpoint_inner=checkpointed).train()
    x = tokens()
    ours = torch.autograd.grad(model.token_losses(x).mean(), list(model.parameters()))
    naive = sum(naive_read(model, x[i], T - 1, order)[1].sum() for i in range(B)) / (B * (T - 1))
    ref = torch.autograd.grad(naive, list(model.parameters()))
    for (name, _), a, b in zip(model.named_parameters(), ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12, msg=name)


def test_meta_gradient_matches_finite_differences():
    model = model64(suffix_blocks=2).train()
    x = tokens(batch=2, length=50)
    params = dict(model.named_parameters())
    grads = dict(zip(params, torch.autograd.grad(model.token_losses(x).mean(), list(params.values()))))
    first_order = model64(suffix_blocks=2, inner_mode="first_order").train()
    grads1 = dict(zip(params, torch.autograd.grad(first_order.token_losses(x).mean(), list(first_order.parameters()))))
    suffix = [n for n in params if n.startswith("blocks.") and int(n.split(".")[1]) >= model.n_prefix]
    groups = {  # lists, not sets: the random directions must not depend on hash order
        "fast init": model.fast_parameter_names(),
        "suffix attention": [n for n in suffix if ".mixer." in n],
        "prefix + embedding": [n for n in params if n == "embed.weight" or n.startswith("blocks.0.")],
        "suffix norms": [n for n in suffix if "norm" in n],
    }
    gen = torch.Generator().manual_seed(0)

    def central_difference(direction, eps):
        losses = []
        for sign in (1, -1):
            with torch.no_grad():
                for n, d in direction.items():
                    params[n].add_(sign * eps * d)
                losses.append(model.token_losses(x).mean().item())
                for n, d in direction.items():
                    params[n].sub_(sign * eps * d)
        return (losses[0] - losses[1]) / (2 * eps)

    for group, names in groups.items():
        direction = {n: torch.randn(params[n].shape, generator=gen, dtype=torch.float64) for n in names}
        analytic = sum((grads[n] * d).sum() for n, d in direction.items()).item()
        analytic1 = sum((grads1[n] * d).sum() for n, d in direction.items()).item()
        # Richardson extrapolation cancels the eps^2 term (the inner steps make the loss curved)
        numeric = (4 * central_difference(direction, 1e-6) - central_difference(direction, 2e-6)) / 3
        assert math.isclose(analytic, numeric, rel_tol=1e-7, abs_tol=1e-10), (group, analytic, numeric)
        # the second-order terms are far larger than the test's error: it would catch their loss
        assert abs(analytic1 - numeric) > 1e3 * abs(analytic - numeric), (group, analytic1, numeric)


@torch.no_grad()
def test_inner_lr_zero_is_the_static_model():
    x = tokens()
    model = model64(inner_lr=0.0)
    torch.testing.assert_close(model(x), model.forward_static(x), rtol=1e-12, atol=1e-12)
    model = model64()
    model.inner_lr_now = 0.0  # what the warm-up hook sets
    torch.testing.assert_close(model(x), model.forward_static(x), rtol=1e-12, atol=1e-12)


@torch.no_grad()
def test_one_mini_batch_covering_the_sequence_is_the_static_model():
    x = tokens()
    model = model64(mini_batch_size=T)
    torch.testing.assert_close(model(x), model.forward_static(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.token_losses(x), F.cross_entropy(
        model.forward_static(x)[:, :-1].transpose(1, 2), x[:, 1:], reduction="none"), rtol=1e-12, atol=1e-12)


@torch.no_grad()
def test_no_token_sees_its_own_mini_batch_update():
    model = model64()
    x = tokens()
    full = model(x)
    for t in (15, 16, 17, 31, 32, 63, 64):  # last/first tokens of mini-batches
        changed = x.clone()
        changed[:, t] = (changed[:, t] + 1) % 256
        out = model(changed)
        assert torch.equal(out[:, :t], full[:, :t]), f"changing token {t} changed earlier outputs"
        assert not torch.allclose(out[:, t], full[:, t])
    for k in (16, 17, 32, 48):  # without the tokens that follow, a mini-batch never updates
        torch.testing.assert_close(model(x[:, :k]), full[:, :k], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("prompt", [1, 15, 16, 17, 32, 45])
@torch.no_grad()
def test_prefill_decode_across_mini_batch_boundaries(prompt):
    model = model64(suffix_blocks=2)
    x = tokens()
    full = model(x)
    logits, state = model.prefill(x[:, :prompt])
    torch.testing.assert_close(logits, full[:, prompt - 1], rtol=1e-10, atol=1e-10)
    for t in range(prompt, T):
        logits, state = model.decode_step(state, x[:, t])
        torch.testing.assert_close(logits, full[:, t], rtol=1e-10, atol=1e-10, msg=f"position {t}")
    # state: window-1+mini_batch keys per suffix block, the fast weights, one mini-batch of inputs
    c = model.config
    assert state.suffix[0].k.size(-2) == c.window - 1 + c.mini_batch_size
    assert state.fast[0].shape[0] == B and state.n_pending == (T - 1) % c.mini_batch_size + 1


@pytest.mark.parametrize("fields", [{"backend": "torch"}, {"n_kv_heads": 2}], ids=["torch_backend", "grouped_heads"])
@torch.no_grad()
def test_decoding_reads_like_forward_on_each_backend_and_with_grouped_heads(fields):
    """Decode steps inside a mini-batch attend to each suffix ring in place, its slots outside
    the window masked (the torch reference and sdpa each), grouped heads reading their key head."""
    model = model64(suffix_blocks=2, **fields)
    x = tokens()
    full = model(x)
    logits, state = model.prefill(x[:, :5])  # the rings fill up, then wrap
    for t in range(5, 40):  # past two mini-batch ends; the rings (31 slots) wrap
        logits, state = model.decode_step(state, x[:, t])
        torch.testing.assert_close(logits, full[:, t], rtol=1e-10, atol=1e-10, msg=f"position {t}")


@torch.no_grad()
def test_a_decode_step_inside_a_mini_batch_does_not_copy_the_suffix_windows():
    """Each decode step gathered every suffix block's ring in position order and concatenated the
    new key and value: two copies of the window per block and token. Only the step that ends a
    mini-batch (its inner step re-reads the mini-batch) still reads the ring in order."""
    model = small_model("ttt_e2e", window=256, mini_batch_size=32, suffix_blocks=2)
    logits, state = model.prefill(tokens(2, 300))  # the last mini-batch has 12 tokens
    _, state = model.decode_step(state, logits.argmax(-1))
    ring_bytes = sum(ring.k.nbytes + ring.v.nbytes for ring in state.suffix)
    with NewMemory() as made:
        model.decode_step(state, logits.argmax(-1))
    assert made.bytes < ring_bytes / 4, (made.bytes, ring_bytes)


@torch.no_grad()
def test_a_decode_step_inside_a_mini_batch_does_not_copy_the_suffix_inputs():
    """Each decode step concatenated the current mini-batch's suffix inputs (kept for the inner
    step at its end) with the new one: a copy of up to a mini-batch of [B, D] inputs per token,
    a sawtooth in decode time per token. A step now writes its input into the state's buffer, so
    a step late in a mini-batch makes what an early one makes."""
    model = small_model("ttt_e2e", window=8, mini_batch_size=256)
    made = []
    for read in (8, 200):  # tokens of the current mini-batch read before the step
        logits, state = model.prefill(tokens(2, 256 + read))
        with NewMemory() as new:
            _, state = model.decode_step(state, logits.argmax(-1))
        made.append(new.bytes)
    assert made[1] == made[0], made
    assert state.n_pending == 201 and state.pending_x.size(1) == 256  # a buffer of one mini-batch


@torch.no_grad()
def test_a_state_of_suffix_blocks_only_continued_twice_says_so():
    """With every block in the suffix no prefix attention cache checks the state: the suffix's
    own window caches, which grow in place, must say a state continued before has moved on."""
    model = model64(suffix_blocks=4)
    x = tokens()
    _, state = model.prefill(x[:, :21])
    model.decode_step(state, x[:, 21])
    with pytest.raises(ConfigError, match="continues from position 21.*clone_state"):
        model.decode_step(state, x[:, 21])


@pytest.mark.parametrize("fields", [{}, {"window": 40, "mini_batch_size": 8}], ids=["window_is_mini_batch", "wide_window"])
@torch.no_grad()
def test_streamed_chunks_at_any_alignment(fields):
    # a wide window: a chunk's first step re-reads tokens an earlier chunk read, whose keys a
    # later step of the same chunk sees again in its window
    model = model64(**fields)
    x = tokens()
    full = model(x)
    state, outs = None, []
    for piece in x.split([16, 5, 11, 1, 29, 8], dim=1):
        logits, state = model.forward_chunk(piece, state)
        outs.append(logits)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-10, atol=1e-10)


@torch.no_grad()
def test_batched_fast_weights_are_per_sequence():
    model = model64()
    x = tokens()
    together = model(x)
    for i in range(B):
        torch.testing.assert_close(model(x[i : i + 1])[0], together[i], rtol=1e-10, atol=1e-10)


def test_clip_per_sequence():
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(4, 3, 5, generator=gen) * s for s in (1.0, 0.1)]
    grads[0][1] *= 1e-3  # sequence 1 stays under the limit
    clipped = clip_per_sequence(grads, 1.0)
    for b in range(4):
        norm = torch.sqrt(sum((g[b] ** 2).sum() for g in grads))
        for g, c in zip(grads, clipped):
            torch.testing.assert_close(c[b], g[b] * min(1.0, 1.0 / norm.item()))
    assert clip_per_sequence(grads, 0.0) is grads


def test_off_in_training_trains_the_static_model():
    model = model64(inner_mode="off_in_training")
    x = tokens()
    model.train()
    torch.testing.assert_close(model(x), model.forward_static(x), rtol=0, atol=0)
    # and the loss the trainer minimises, which reads token_losses, not forward
    static_nll = F.cross_entropy(model.forward_static(x)[:, :-1].transpose(1, 2), x[:, 1:], reduction="none")
    torch.testing.assert_close(model.training_loss(x), static_nll.mean(), rtol=1e-12, atol=1e-12)
    model.eval()
    with torch.no_grad():
        assert (model(x) - model.forward_static(x)).abs().max() > 1e-3  # TTT at test time


def test_inner_lr_warm_up_follows_the_outer_step():
    model = registry.create_model("ttt_e2e", "tiny")
    assert model.inner_lr_now == 1.0  # no hook called (evaluation): the full inner lr
    model.on_train_step(0, 100)
    assert model.inner_lr_now == pytest.approx(0.1 + 0.9 * 1 / 10)
    model.on_train_step(4, 100)
    assert model.inner_lr_now == pytest.approx(0.1 + 0.9 * 5 / 10)
    model.on_train_step(9, 100)
    assert model.inner_lr_now == 1.0
    assert "inner_lr_now" not in str(model.state_dict().keys())  # derived, never saved
    extension = registry.create_model("ttt_e2e", "tiny", inner_lr_warmup=0.0)
    extension.on_train_step(0, 100)
    assert extension.inner_lr_now == 1.0



def test_a_finished_warm_up_is_the_inner_lr_itself():
    """After the warm-up the model in memory stepped with init + (lr - init), which rounds off lr
    (0.03 + 0.27 = 0.30000000000000004): trained-then-evaluated and reloaded-then-evaluated (no
    hook: inner_lr) computed with inner lrs one ulp apart."""
    trained = registry.create_model("ttt_e2e", "tiny", inner_lr=0.3, inner_lr_init=0.03)
    trained.on_train_step(99, 100)  # the trainer's last step
    assert trained.inner_lr_now == registry.create_model("ttt_e2e", "tiny", inner_lr=0.3).inner_lr_now == 0.3
    trained.on_train_step(4, 100)  # still warming up: the official line
    assert trained.inner_lr_now == pytest.approx(0.03 + 0.27 * 5 / 10, rel=1e-15)

def test_checkpointing_bounds_saved_activations():
    def saved_bytes(checkpointed: bool) -> int:
        model = model64(checkpoint_inner=checkpointed).train()
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.token_losses(tokens(length=257))
        return sum(storages.values())

    assert saved_bytes(True) < saved_bytes(False) / 2


def test_parameters_match_the_baselines():
    """The narrower MLPs of the official configs pay for the prime MLPs."""
    for preset in registry.preset_names("ttt_e2e"):
        with torch.device("meta"):
            counts = {arch: registry.create_model(arch, preset).num_params()
                      for arch in ("ttt_e2e", "full_attention", "swa")}
        assert counts["swa"] == counts["full_attention"]
        assert abs(counts["ttt_e2e"] / counts["full_attention"] - 1) < 0.02, (preset, counts)
    config = registry.make_config("ttt_e2e", "125m")
    assert (config.n_suffix, config.mlp_hidden, config.window, config.mini_batch_size) == (3, 1664, 8192, 1024)


# ---------------------------------------------------------------------------------------------
# Training: test-time updates help a meta-trained model on later tokens of long documents


@pytest.mark.slow
def test_meta_trained_model_gains_from_test_time_training():
    from harness import data
    from harness.train import TrainConfig, prepare_data, train

    seq_len = 256
    cfg = TrainConfig(steps=50, batch_size=8, seq_len=seq_len, eval_every=0, device="cpu")
    # window 64 < sequence: past the window only the fast weights carry what was read
    model_config = registry.make_config("ttt_e2e", "tiny", window=64, mini_batch_size=32)
    model = train(model_config, cfg, progress=False, training_data=prepare_data(cfg)).model.eval()

    _, val_docs = data.split_documents(data.load_corpus(None), cfg.val_fraction, cfg.seed)
    long_docs = data.long_documents(data.tokenize_documents(val_docs, data.load_tokenizer(None)), 4 * seq_len + 1)
    batch = torch.stack([d[: 4 * seq_len + 1] for d in long_docs[:8]])
    with torch.no_grad():
        with_updates = model.token_losses(batch)
        model.inner_lr_now = 0.0
        without = model.token_losses(batch)
    b = model_config.mini_batch_size
    assert torch.equal(with_updates[:, : b], without[:, : b])  # nothing to learn from yet
    late = slice(3 * seq_len, None)
    assert with_updates.mean() < without.mean()
    assert with_updates[:, late].mean() < without[:, late].mean()


# ---------------------------------------------------------------------------------------------
# Fast paths at inference (issue 17): each lever alone, and all together, reads like the
# reference step, in float64 on CPU.


def reads(model: TTTE2ELM, x: torch.Tensor) -> list[torch.Tensor]:
    """Everything inference produces: logits, per-token NLL, prefill + decode across mini-batch
    boundaries, and chunks streamed at odd alignments."""
    with torch.no_grad():
        logits, nll = model(x), model.token_losses(x)
        last, state = model.prefill(x[:, :17])
        decoded = [last]
        for t in range(17, 40):
            last, state = model.decode_step(state, x[:, t])
            decoded.append(last)
        state, streamed = None, []
        for piece in x.split([16, 5, 11, 1, 29, 8], dim=1):
            out, state = model.forward_chunk(piece, state)
            streamed.append(out)
    return [logits, nll, torch.stack(decoded, 1), torch.cat(streamed, 1)]


@pytest.fixture
def compile_counter(monkeypatch):
    """torch.compile's graph capture and functionalisation (aot_eager: no C++ build, seconds
    instead of minutes on CPU), one graph per compile, counted."""
    from torch._dynamo.testing import CompileCounterWithBackend

    import baselines.ttt_e2e as ttt

    counter = CompileCounterWithBackend("aot_eager")
    monkeypatch.setattr(ttt, "COMPILE_OPTIONS", {"dynamic": False, "fullgraph": True, "backend": counter})
    torch._dynamo.reset()
    yield counter
    torch._dynamo.reset()


LEVERS = {
    "chunked_loss": dict(inner_loss="chunked"),
    "fp32_fast_weights": dict(fast_weight_dtype="float32"),
    "prefix_backend": dict(prefix_backend="torch"),
    "functional_step": dict(inner_loss="reference", inner_step="compile"),
    "bos_mask_chunked": dict(inner_loss="chunked", bos_token_id=BOS),
    "all": dict(inner_loss="chunked", inner_step="compile", fast_weight_dtype="float32", prefix_backend="torch"),
    "all_window_over_mini_batches": dict(inner_loss="chunked", inner_step="compile", window=40, mini_batch_size=8),
}


@pytest.mark.parametrize("levers", LEVERS.values(), ids=LEVERS.keys())
def test_fast_paths_read_like_the_reference(levers, compile_counter):
    shape = {k: v for k, v in levers.items() if k in ("window", "mini_batch_size", "bos_token_id")}
    ref = model64(suffix_blocks=2, **shape)
    fast = model64(suffix_blocks=2, **levers)
    fast.load_state_dict(ref.state_dict())
    x = with_documents(tokens()) if "bos_token_id" in levers else tokens()
    for ours, theirs in zip(reads(fast, x), reads(ref, x)):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    if "prefix_backend" in levers:
        assert {block.mixer.config.backend for block in fast.prefix_blocks} == {"torch"}
        assert {block.mixer.config.backend for block in fast.suffix_blocks} == {"auto"}


@torch.no_grad()
def test_the_chunked_inner_loss_is_the_one_that_runs(monkeypatch):
    """A fast path that fell back to the reference step would read the same numbers: count calls."""
    import baselines.ttt_e2e as ttt

    real, targets = ttt.linear_cross_entropy, []
    monkeypatch.setattr(ttt, "linear_cross_entropy", lambda h, w, t, *a, **kw: targets.append(t.shape) or real(h, w, t, *a, **kw))
    model64(inner_loss="chunked")(tokens())
    assert targets == [(B, 16)] * 4  # one per inner step: the 4 full mini-batches before the last


def test_steady_step_is_compiled_once(compile_counter):
    model = model64(inner_loss="chunked", inner_step="compile")
    with torch.no_grad():
        model(tokens())
        assert compile_counter.frame_count == 1  # every steady mini-batch, one graph
        model(tokens(length=150, seed=2))  # more mini-batches, at other positions
        assert compile_counter.frame_count == 1
        model.token_losses(tokens())  # other outputs: NLL instead of logits
        assert compile_counter.frame_count == 2


def test_compiled_steps_have_room_past_dynamos_default_recompile_limit(compile_counter):
    """Every TTT-E2E model compiles the same method, once per lever, dtype and kind of output: ten
    fast-path models in one process (the GPU tests') passed dynamo's default limit of 8 (measured
    on CPU), past which the later "compiled" steps silently ran eagerly."""
    from baselines.attention import STATIC_RECOMPILE_LIMIT

    with torch._dynamo.config.patch(recompile_limit=8):  # dynamo's default, as a fresh process has it
        model = model64(inner_loss="chunked", inner_step="compile")
        with torch.no_grad():
            model(tokens())
        assert compile_counter.frame_count == 1
        assert torch._dynamo.config.recompile_limit >= STATIC_RECOMPILE_LIMIT


@pytest.mark.parametrize("fast_weight_dtype", ["float32", "model"])
@torch.no_grad()
def test_fp32_fast_weights_keep_updates_bf16_would_round_away(fast_weight_dtype):
    """bf16 compute, and inner steps far below bf16's resolution of most weights: fp32 fast
    weights (the official state dtype) keep them (measured: 99.9% of entries move); bf16 ones
    round nearly all away (0.9% move: only weights near zero resolve such steps)."""
    model = small_model("ttt_e2e", dtype=torch.bfloat16, inner_lr=1e-4, fast_weight_dtype=fast_weight_dtype)
    _, state = model.prefill(tokens(length=40))  # two inner steps
    initial = model.initial_fast_weights(B)
    moved = [(w.float() != w0.float()).float().mean().item() for w, w0 in zip(state.fast, initial)]
    if fast_weight_dtype == "float32":
        assert {w.dtype for w in state.fast} == {torch.float32} and min(moved) > 0.99
    else:
        assert {w.dtype for w in state.fast} == {torch.bfloat16} and max(moved) < 0.05
    assert registry.make_config("ttt_e2e", "tiny").fast_weight_dtype == "auto"
    assert model64().initial_fast_weights(1)[0].dtype == torch.float64  # auto on CPU: the model's dtype


def test_auto_fast_weights_are_fp32_on_cuda_and_the_models_dtype_elsewhere():
    """The official fp32 state on a GPU; the CPU test above sees only the other branch."""
    from types import SimpleNamespace

    model = small_model("ttt_e2e")
    for device, expected in (("cuda", torch.float32), ("cpu", torch.bfloat16)):
        assert model.fast_dtype(SimpleNamespace(device=torch.device(device), dtype=torch.bfloat16)) == expected


@pytest.mark.parametrize("levers, message", [
    (dict(inner_step="cudagraph"), "CUDA graph needs CUDA tensors; use inner_step='eager' or 'compile'"),
    (dict(inner_loss="liger"), "inner_loss 'liger'"),
    # the prefix blocks' refusal said "Use backend='sdpa'", a field that left them on flex
    (dict(prefix_backend="flex"), r"'flex' is unavailable: it needs a CUDA device.*Use prefix_backend='sdpa'"),
    (dict(backend="flex"), r"'flex' is unavailable: it needs a CUDA device.*Use backend='sdpa'"),
])
def test_gpu_only_levers_say_why_on_cpu(levers, message):
    from harness.api.errors import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match=message), torch.no_grad():
        model64(**levers)(tokens())


@pytest.mark.parametrize("field", ["inner_lr", "inner_lr_init", "inner_clip"])
def test_a_negative_inner_setting_is_named(field):
    with pytest.raises(ConfigError, match=rf"{field}=-0.5 must be >= 0"):
        small_model("ttt_e2e", **{field: -0.5})


def test_a_suffix_fraction_that_disagrees_with_suffix_blocks_is_refused():
    """``suffix_blocks=2, suffix_fraction=0.5`` on 12 layers built 2 suffix blocks without a word."""
    with pytest.raises(ConfigError, match=r"suffix_blocks=2 and suffix_fraction=0.5 \(6 of 12 blocks\) disagree"):
        registry.make_config("ttt_e2e", "125m", suffix_blocks=2, suffix_fraction=0.5)
    agreeing = registry.make_config("ttt_e2e", "125m", suffix_blocks=6, suffix_fraction=0.5)
    assert agreeing.n_suffix == 6
    assert registry.make_config("ttt_e2e", "125m", suffix_blocks=2).n_suffix == 2  # the default fraction yields


def test_lever_choices_are_checked():
    with pytest.raises(ConfigError, match="unknown inner_step 'compiled'.*Did you mean 'compile'"):
        registry.make_config("ttt_e2e", "tiny", inner_step="compiled")
    with pytest.raises(ConfigError, match="unknown inner_loss 'chunk'.*Did you mean 'chunked'"):
        registry.make_config("ttt_e2e", "tiny", inner_loss="chunk")
    with pytest.raises(ConfigError, match="unknown prefix_backend 'flash'"):
        registry.make_config("ttt_e2e", "tiny", prefix_backend="flash")


# ---------------------------------------------------------------------------------------------
# GPU: the device path (batched fast weights, fused/windowed kernels, no host syncs) equals the
# CPU reference.

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("backend", ["auto", "sdpa"])
def test_gpu_matches_cpu_reference(backend):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ref = model64(suffix_blocks=2)
    gpu = small_model("ttt_e2e", dtype=torch.float32, **INNER, suffix_blocks=2, backend=backend).cuda()
    gpu.load_state_dict(ref.state_dict())
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(gpu(x.cuda()).cpu().double(), ref(x), rtol=2e-4, atol=2e-4)
        torch.testing.assert_close(gpu.token_losses(x.cuda()).cpu().double(), ref.token_losses(x), rtol=2e-4, atol=2e-4)
        logits, state = gpu.prefill(x[:, :17].cuda())
        for t in range(17, T):
            logits, state = gpu.decode_step(state, x[:, t].cuda())
        torch.testing.assert_close(logits.cpu().double(), ref(x)[:, -1], rtol=2e-4, atol=2e-4)
    ref.train(), gpu.train()
    ref_grads = torch.autograd.grad(ref.token_losses(x).mean(), list(ref.parameters()))
    gpu_grads = torch.autograd.grad(gpu.token_losses(x.cuda()).mean(), list(gpu.parameters()))
    for (name, _), a, b in zip(ref.named_parameters(), gpu_grads, ref_grads):
        torch.testing.assert_close(a.cpu().double(), b, rtol=1e-3, atol=1e-5, msg=name)


GPU_LEVERS = {
    "reference": dict(inner_loss="reference"),
    "chunked_loss": dict(inner_loss="chunked"),
    "compile": dict(inner_loss="reference", inner_step="compile"),
    "cudagraph": dict(inner_loss="reference", inner_step="cudagraph"),
    "fp32_fast_weights": dict(inner_loss="reference", fast_weight_dtype="float32"),
    "prefix_flex": dict(inner_loss="reference", backend="sdpa", prefix_backend="flex"),
    "all_compiled": dict(inner_loss="chunked", inner_step="compile", fast_weight_dtype="float32",
                         prefix_backend="flex"),
    "all_captured": dict(inner_loss="chunked", inner_step="compile+cudagraph", fast_weight_dtype="float32",
                         prefix_backend="flex"),
}


@kernel_cases("length", cuda=[150], cpu=[T])
def test_liger_inner_loss_reads_like_the_reference(kernel_device, length, record_property):
    """Liger's fused linear cross-entropy as the inner loss, fp32 (without TF32 on a GPU; through
    Triton's interpreter on the CPU), against the float64 reference, as tight as the GPU levers."""
    torch.backends.cuda.matmul.allow_tf32 = False
    ref = model64(suffix_blocks=2)
    fast = small_model("ttt_e2e", dtype=torch.float32, **INNER, suffix_blocks=2, inner_loss="liger", backend="sdpa")
    fast = fast.to(kernel_device)
    fast.load_state_dict(ref.state_dict())
    x = tokens(length=length)
    pairs = [(ours.cpu().double(), theirs) for ours, theirs in zip(reads(fast, x.to(kernel_device)), reads(ref, x))]
    record_property("worst error / allowance", max(close_ratio(ours, theirs, 2e-4, 2e-4) for ours, theirs in pairs))
    for ours, theirs in pairs:
        torch.testing.assert_close(ours, theirs, rtol=2e-4, atol=2e-4)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("levers", GPU_LEVERS.values(), ids=GPU_LEVERS.keys())
def test_gpu_fast_paths_match_cpu_reference_in_fp32(levers, record_property):
    """fp32 without TF32: each lever against the float64 CPU reference, as tight as the default path."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ref = model64(suffix_blocks=2)
    gpu = small_model("ttt_e2e", dtype=torch.float32, **INNER, suffix_blocks=2, **levers).cuda()
    gpu.load_state_dict(ref.state_dict())
    x = tokens(length=150)  # several steady mini-batches: compiled/captured steps replay
    pairs = [(ours.cpu().double(), theirs) for ours, theirs in zip(reads(gpu, x.cuda()), reads(ref, x))]
    record_property("worst error / allowance", max(close_ratio(ours, theirs, 2e-4, 2e-4) for ours, theirs in pairs))
    for ours, theirs in pairs:
        torch.testing.assert_close(ours, theirs, rtol=2e-4, atol=2e-4)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("levers", GPU_LEVERS.values(), ids=GPU_LEVERS.keys())
def test_gpu_fast_paths_in_bf16_are_as_accurate_as_the_reference(levers, record_property):
    """bf16 weights and compute: each lever's largest logit error against the float64 CPU
    reference (of the same bf16-rounded weights) stays within 1.25x the bf16 reference path's own
    (+1e-3). On CPU, chunked and reference bf16 paths agree to the bit; the margin is for kernel
    order (sdpa vs flex, fused vs unfused), not yet measured on a GPU."""
    ref = model64(suffix_blocks=2)
    ref.load_state_dict({k: v.bfloat16().double() for k, v in ref.state_dict().items()})
    x = tokens(length=150)
    expected = reads(ref, x)[0]

    def error(**fields) -> float:
        gpu = small_model("ttt_e2e", dtype=torch.bfloat16, **INNER, suffix_blocks=2, **fields).cuda()
        gpu.load_state_dict(ref.state_dict())
        with torch.no_grad():
            return (gpu(x.cuda()).cpu().double() - expected).abs().max().item()

    baseline, ours = error(inner_loss="reference", fast_weight_dtype="model", backend="sdpa"), error(**levers)
    record_property("bf16 reference path's error", baseline)
    record_property("this path's error", ours)
    assert ours <= 1.25 * baseline + 1e-3


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("levers", [GPU_LEVERS[k] for k in ("reference", "chunked_loss", "compile", "cudagraph",
                                                            "all_compiled", "all_captured")])
def test_gpu_inner_loop_has_no_host_sync(levers):
    model = small_model("ttt_e2e", **INNER, **levers).cuda()
    x = tokens(length=16 * 8).cuda()
    with torch.no_grad():
        model(x)  # warm-up: compiles, captures
        torch.cuda.set_sync_debug_mode("error")
        try:
            model(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_configs_saved_before_inner_step_still_load():
    """compile_inner (a bool, replaced by inner_step) in a saved config means the same thing."""
    saved = registry.make_config("ttt_e2e", "tiny").to_dict()
    del saved["inner_step"]
    assert registry.config_from_dict({**saved, "compile_inner": False}).inner_step == "eager"
    assert registry.config_from_dict({**saved, "compile_inner": True}).inner_step == "compile"
