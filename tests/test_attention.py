"""full_attention / swa specifics: backends agree, windows behave, caches stay bounded."""
from __future__ import annotations

import pytest
import torch

from baselines import attention
from harness.api.errors import BackendUnavailableError, ConfigError
from harness.api.interface import next_token_nll
from tests.conftest import NewMemory, kernel_cases, small_model

x = torch.randint(0, 256, (2, 80), generator=torch.Generator().manual_seed(0))


def qkv(T: int, Tk: int | None = None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    Tk = Tk or T
    return (torch.randn(2, 3, T, 8, generator=g, dtype=torch.float64),
            torch.randn(2, 3, Tk, 8, generator=g, dtype=torch.float64),
            torch.randn(2, 3, Tk, 8, generator=g, dtype=torch.float64))


def naive_attention(q, k, v, q_start, k_start, window):
    """Each query on its own: softmax over exactly the keys it may see."""
    out = torch.zeros_like(q)
    for i in range(q.size(-2)):
        pos = q_start + i
        keys = [j for j in range(k.size(-2)) if k_start + j <= pos and (not window or pos - (k_start + j) < window)]
        s = (q[..., i : i + 1, :] @ k[..., keys, :].transpose(-1, -2)) / q.size(-1) ** 0.5
        out[..., i : i + 1, :] = s.softmax(-1) @ v[..., keys, :]
    return out


@pytest.mark.parametrize("window", [0, 1, 5, 64])
@pytest.mark.parametrize("op", ["torch", "sdpa"])
def test_attention_ops_equal_per_query_reading(op, window, monkeypatch):
    monkeypatch.setattr(attention, "QUERY_CHUNK", 7)  # force the chunked sdpa path
    q, k, v = qkv(30)
    expected = naive_attention(q, k, v, 0, 0, window)
    torch.testing.assert_close(attention.ATTENTION_OPS[op](q, k, v, 0, 0, window), expected)
    # a continuation chunk: queries at 40.., keys at 25..
    q2, k2, v2 = qkv(20, 35, seed=1)
    expected = naive_attention(q2, k2, v2, 40, 25, window)
    torch.testing.assert_close(attention.ATTENTION_OPS[op](q2, k2, v2, 40, 25, window), expected)


@torch.no_grad()
def test_swa_equals_full_attention_when_window_covers_sequence():
    full = small_model("full_attention", dtype=torch.float64)
    swa = small_model("swa", dtype=torch.float64, window=x.size(1))
    swa.load_state_dict(full.state_dict())
    torch.testing.assert_close(swa(x), full(x), rtol=1e-12, atol=1e-12)
    narrow = small_model("swa", dtype=torch.float64, window=8)
    narrow.load_state_dict(full.state_dict())
    assert not torch.allclose(narrow(x)[:, 20:], full(x)[:, 20:])
    torch.testing.assert_close(narrow(x)[:, :8], full(x)[:, :8])  # identical while the window covers all


@torch.no_grad()
@pytest.mark.parametrize("arch", ["full_attention", "swa"])
def test_backends_agree_in_the_model(arch):
    models = {b: small_model(arch, dtype=torch.float64, backend=b) for b in ("torch", "sdpa")}
    torch.testing.assert_close(models["sdpa"](x), models["torch"](x), rtol=1e-10, atol=1e-10)


@torch.no_grad()
@pytest.mark.parametrize("backend", ["torch", "sdpa"])
@pytest.mark.parametrize("arch", ["full_attention", "swa"])
def test_grouped_query_attention_reads_as_repeated_heads_and_decodes_like_forward(arch, backend):
    """Grouped query heads read their key head in place: the model equals the one whose every query
    head has its own copy of its group's key and value weights, forward and decoding (for swa
    past a ring filling up, window 16, and full)."""
    grouped = small_model(arch, dtype=torch.float64, backend=backend, n_kv_heads=2)
    assert grouped.blocks[0].mixer.k_proj.out_features == 2 * grouped.config.head_dim
    rep = grouped.config.n_heads // 2
    plain = small_model(arch, dtype=torch.float64, backend=backend)
    plain.load_state_dict({name: w.view(2, -1, w.size(-1)).repeat_interleave(rep, 0).flatten(0, 1)
                           if name.endswith(("k_proj.weight", "v_proj.weight")) else w
                           for name, w in grouped.state_dict().items()})
    full = grouped(x)
    torch.testing.assert_close(full, plain(x), rtol=1e-12, atol=1e-12)
    logits, state = grouped.prefill(x[:, :10])
    for t in range(10, 30):
        logits, state = grouped.decode_step(state, x[:, t])
        torch.testing.assert_close(logits, full[:, t], rtol=1e-10, atol=1e-10)


@torch.no_grad()
def test_swa_state_is_bounded_and_full_attention_grows():
    swa, full = small_model("swa"), small_model("full_attention")
    sizes = {name: [m.state_bytes(m.prefill(x[:, :n])[1]) for n in (20, 40, 80)] for name, m in (("swa", swa), ("full", full))}
    assert sizes["swa"][0] == sizes["swa"][1] == sizes["swa"][2]
    assert sizes["full"][0] < sizes["full"][1] < sizes["full"][2]
    window = swa.config.window
    per_token = 2 * swa.config.n_layers * swa.config.kv_heads * swa.config.head_dim * 4  # k and v, fp32
    assert sizes["swa"][0] == per_token * window * x.size(0)


@torch.no_grad()
def test_a_growing_full_attention_cache_holds_little_more_than_its_keys():
    """The cache grows when a decode step finds it full: doubling it held twice the keys and
    values of a long prompt from the first step on (decode_peak_bytes reported full attention's
    cache at twice its size); it keeps at most an eighth more, and decoding still reads exactly."""
    model = small_model("full_attention", dtype=torch.float64)
    c = model.config
    tokens = torch.randint(0, 256, (2, 260), generator=torch.Generator().manual_seed(0))
    per_position = 2 * c.n_layers * c.kv_heads * c.head_dim * 8 * tokens.size(0)  # k and v, fp64
    full = model(tokens)
    logits, state = model.prefill(tokens[:, :256])
    for t in range(256, 260):
        logits, state = model.decode_step(state, tokens[:, t])
        assert model.state_bytes(state) <= per_position * (t + 1) * 9 / 8
        torch.testing.assert_close(logits, full[:, t], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("arch, fields", [
    ("full_attention", {}), ("swa", {"window": 256}),
    ("swa", {"window": 4096}),  # a ring not yet full: its unwritten slots are masked, not cut out
    ("full_attention", {"n_kv_heads": 2}), ("swa", {"window": 1024, "n_kv_heads": 2}),  # grouped heads
], ids=["full", "swa", "swa_filling", "full_gqa", "swa_gqa"])
@torch.no_grad()
def test_a_decode_step_does_not_copy_its_cache(arch, fields):
    """Each decode step gathered (ring) and concatenated the layer's cached keys and values with
    the new ones: a copy of the whole cache per step, which made full attention's decode time (2x
    on CPU at 32K) and its decode_peak_bytes (a layer's keys and values more) grow with context
    beyond attention's own cost, and SWA's decode 1.5x slower at a 2K window. A ring not yet full
    still took that path, and grouped query heads repeated the whole cache for each query head at
    every step (full attention with one key head of four: 4x slower decode at 32K)."""
    model = small_model(arch, **fields)
    logits, state = model.prefill(torch.randint(0, 256, (2, 2048), generator=torch.Generator().manual_seed(0)))
    _, state = model.decode_step(state, logits.argmax(-1))  # the full-attention cache grows once, by an eighth
    with NewMemory() as made:
        model.decode_step(state, logits.argmax(-1))
    assert made.bytes < model.state_bytes(state) / 8, (made.bytes, model.state_bytes(state))


@pytest.mark.parametrize("arch", ["full_attention", "swa"])
def test_gradients_through_decode_steps_equal_the_forwards(arch):
    """Under autograd a decode step attends to a copy, not the cache it appends to in place: a
    view saved for backward, written by the next step's append, fails the backward pass."""
    model = small_model(arch, dtype=torch.float64)
    seq = x[:, :24]  # the swa prompt fills its window of 16: decode steps take the ring path
    logits, state = model.prefill(seq[:, :20])
    decoded = [logits]
    for t in range(20, 23):
        logits, state = model.decode_step(state, seq[:, t])
        decoded.append(logits)
    ours = torch.autograd.grad(torch.stack(decoded).pow(2).sum(), list(model.parameters()))
    forward = model(seq[:, :23])[:, 19:].transpose(0, 1)
    theirs = torch.autograd.grad(forward.pow(2).sum(), list(model.parameters()))
    for (name, _), a, b in zip(model.named_parameters(), ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


def test_bad_attention_configs_are_clear():
    with pytest.raises(ConfigError, match="use arch 'swa'"):
        small_model("full_attention", window=8)
    with pytest.raises(ConfigError, match="window > 0"):
        small_model("swa", window=0)
    with pytest.raises(ConfigError, match=r"n_kv_heads=3 must divide n_heads=4; choose among \[0, 1, 2, 4\]"):
        small_model("full_attention", n_kv_heads=3)
    with pytest.raises(ConfigError, match=r"n_kv_heads=-2 must divide"):
        small_model("full_attention", n_kv_heads=-2)
    with pytest.raises(ConfigError, match="Did you mean 'sdpa'"):
        small_model("swa", backend="sdp")
    with pytest.raises(ConfigError, match="rope_theta=0.0 must be > 0"):  # inf frequencies: NaN logits
        small_model("swa", rope_theta=0.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error path")
def test_forcing_flex_without_cuda_is_a_clear_error():
    model = small_model("swa", backend="flex")
    with pytest.raises(BackendUnavailableError, match="'flex' is unavailable: it needs a CUDA device.*'sdpa'"):
        model(x)


def band_mask(offset: int, window: int):
    def mask_mod(b, h, q_idx, kv_idx):
        diff = q_idx + offset - kv_idx
        return (diff >= 0) & (diff < window)

    return mask_mod


def same_blocks(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in ((a.kv_num_blocks, b.kv_num_blocks),
                                              (a.full_kv_num_blocks, b.full_kv_num_blocks), (a.to_dense(), b.to_dense())))


def test_long_flex_masks_are_never_built_dense(monkeypatch):
    """Eager create_block_mask materialises the [q_len, k_len] mask (137 GB of int64 at 128K, an
    OOM for swa and ttt_e2e there): past DENSE_MASK_LIMIT the compiled builder makes it."""
    from torch.nn.attention.flex_attention import create_block_mask

    built = []

    def compiled_stand_in():
        def create(mask_mod, B, H, q_len, k_len, device):
            built.append((q_len, k_len))
            return create_block_mask(mask_mod, B, H, q_len, k_len, device=device)

        return create

    monkeypatch.setattr(attention.FLEX, "needs_cuda", False)
    monkeypatch.setattr(attention, "_compiled_create_block_mask", compiled_stand_in)
    monkeypatch.setattr(attention, "DENSE_MASK_LIMIT", 300 * 300)
    attention._flex_block_mask.cache_clear()
    try:
        short = attention._flex_block_mask(300, 300, 0, 64, "cpu")
        long = attention._flex_block_mask(301, 300, 0, 64, "cpu")
    finally:
        attention._flex_block_mask.cache_clear()
    assert built == [(301, 300)]
    assert same_blocks(short, create_block_mask(band_mask(0, 64), None, None, 300, 300, device="cpu"))
    assert same_blocks(long, create_block_mask(band_mask(0, 64), None, None, 301, 300, device="cpu"))


@pytest.mark.parametrize("window", [0, 7])
def test_sdpa_masks_are_the_visibility_of_absolute_positions(window, monkeypatch):
    """Cached (small) and built-each-time (large) masks both equal ``visible`` over the absolute
    positions, and a steady chunk's mask is built once."""
    attention._cached_relative_mask.cache_clear()
    for q_start, k_start, Tq, Tk in [(0, 0, 6, 6), (10, 3, 4, 11), (105, 100, 1, 6)]:
        expected = attention.visible(torch.arange(q_start, q_start + Tq), torch.arange(k_start, k_start + Tk), window)
        assert torch.equal(attention.sdpa_mask(Tq, Tk, q_start - k_start, window, torch.device("cpu")), expected)
        monkeypatch.setattr(attention, "CACHED_MASK_ELEMENTS", 0)
        assert torch.equal(attention.sdpa_mask(Tq, Tk, q_start - k_start, window, torch.device("cpu")), expected)
        monkeypatch.undo()
    first = attention.sdpa_mask(4, 11, 7, window, torch.device("cpu"))
    assert attention.sdpa_mask(4, 11, 7, window, torch.device("cpu")) is first  # a later chunk: no new mask


@pytest.mark.parametrize("window", [0, 5])
def test_reference_computes_in_fp32_under_autocast(window):
    """The reference's score and value matmuls stay fp32 under bf16 autocast (its promise), so
    forcing backend='torch' gives a reference to judge the kernels by in a mixed-precision run."""
    q, k, v = (t.float() for t in qkv(30))
    expected = attention.attention_reference(q, k, v, 0, 0, window)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = attention.attention_reference(q, k, v, 0, 0, window)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@torch.no_grad()
def test_flex_keeps_compiling_past_dynamos_default_recompile_limit(monkeypatch):
    """flex is compiled for static shapes: each (query length, key length, mask) is one more
    compilation of the same function. A GPU latency run passes 14 of those (swa and ttt_e2e at
    8K/32K/128K, TTT-E2E's window filling mini-batch by mini-batch, decode); past dynamo's default
    limit of 8 it ran flex unfused, the whole score matrix (an out-of-memory at 128K). Dynamo's
    eager backend here: its guards and limits, without Inductor's minutes of C++ compilation."""
    import functools

    import torch._dynamo

    monkeypatch.setattr(attention.FLEX, "needs_cuda", False)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    for cached in (attention._compiled_flex, attention._flex_block_mask):
        cached.cache_clear()
    torch._dynamo.reset()
    model = small_model("swa", backend="flex", n_layers=1)
    try:  # dynamo's default limit, as a fresh process has it
        with torch._dynamo.config.patch(recompile_limit=8, fail_on_recompile_limit_hit=True):
            for T in range(8, 8 + 9):  # one shape more than the default allows
                model(x[:1, :T])
    finally:
        for cached in (attention._compiled_flex, attention._flex_block_mask):
            cached.cache_clear()
        torch._dynamo.reset()


def test_flex_gets_the_autocast_dtype_under_autocast(monkeypatch):
    """fp32 parameters under bf16 autocast: QK-norm's fp32 weights promote q and k to fp32 while v
    stays bf16; flex_attention (unlike sdpa) is no autocast op in every release and rejects the mix."""
    seen = []
    monkeypatch.setattr(attention.FLEX, "needs_cuda", False)
    monkeypatch.setattr(attention, "_compiled_flex", lambda: lambda q, k, v, block_mask, enable_gqa: seen.append(
        (q.dtype, k.dtype, v.dtype)) or v)
    model = small_model("swa", backend="flex")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
    assert seen and set(seen) == {(torch.bfloat16,) * 3}
    seen.clear()
    model(x)  # no autocast: as they are
    assert set(seen) == {(torch.float32,) * 3}


@kernel_cases("", cuda=[()], cpu=[()])
def test_compiled_flex_block_mask_equals_the_dense_one(kernel_device, monkeypatch):
    from torch.nn.attention.flex_attention import create_block_mask

    monkeypatch.setattr(attention.FLEX, "needs_cuda", False)  # Inductor's CPU code runs it
    q_len, k_len, offset, window = 4500, 8300, 3800, 1000  # not block multiples, queries after keys
    assert q_len * k_len > attention.DENSE_MASK_LIMIT
    device = str(kernel_device)
    ours = attention._flex_block_mask(q_len, k_len, offset, window, device)
    assert same_blocks(ours, create_block_mask(band_mask(offset, window), None, None, q_len, k_len, device=device))


# FlexAttention on the CPU (Inductor's C++ kernels) has no backward: the GPU test below checks
# gradients; this one checks every forward path a model takes through flex (whole sequences with
# the window's band, a prefill, decode steps past the window) on both devices: the windowed
# models, which `auto` gives flex (full attention's growing cache would be a new compiled shape at
# every decode step: 4 compilations of a GPU slot's minutes). TTT-E2E's suffix
# differentiates its attention in the inner loop: flex on a GPU, sdpa (with a flex prefix) on the CPU.
# The CPU's swa has grouped query heads (flex's enable_gqa); TTT-E2E's flex prefix there has none.
FLEX, TTT_FLEX = {"backend": "flex"}, {"backend": "flex", "prefix_backend": "flex"}


@kernel_cases("arch, fields, T", cuda=[("swa", FLEX, 1100), ("ttt_e2e", TTT_FLEX, 1100)],
              cpu=[("swa", {**FLEX, "n_kv_heads": 2}, 300), ("ttt_e2e", {**TTT_FLEX, "backend": "sdpa"}, 100)])
@torch.no_grad()
def test_flex_forward_prefill_and_decode_equal_reference(kernel_device, arch, fields, T, monkeypatch):
    monkeypatch.setattr(attention.FLEX, "needs_cuda", False)  # Inductor's CPU code runs it
    exact = small_model(arch, dtype=torch.float64, backend="torch", n_kv_heads=fields.get("n_kv_heads", 0)).to(kernel_device)
    flex = small_model(arch, **fields).to(kernel_device)
    tokens = torch.randint(0, 256, (2, T), device=kernel_device)
    expected = exact(tokens)
    torch.testing.assert_close(flex(tokens).double(), expected, rtol=1e-4, atol=1e-4)
    logits, state = flex.prefill(tokens[:, :T - 4])
    for t in range(T - 4, T):
        logits, state = flex.decode_step(state, tokens[:, t])
        torch.testing.assert_close(logits.double(), expected[:, t], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# GPU: each kernel backend against the torch reference, forward and backward. Errors are
# ||x - x64|| / ||x64|| against the reference model in float64. A kernel computes the same sums in
# another order at the same precision, so it may be at most KERNEL_VS_REFERENCE times as far from
# float64 as the torch reference is at that precision (measured in the same test), plus a floor
# for quantities the reference gets almost exactly: fp32 (TF32 off) 1e-5, bf16 (autocast) 1e-3.
# Measured on the CPU with sdpa (T = 1100): the kernel/reference error ratio is at most 1.65, the
# reference's own error 1.4e-6 (fp32) and 3.0e-2 (bf16). A wrong kernel errs by O(1).

KERNEL_VS_REFERENCE = 4.0
ERROR_FLOOR = {torch.float32: 1e-5, torch.bfloat16: 1e-3}


def logits_and_grads(model, tokens, dtype):
    """Logits and every parameter's gradient of the mean next-token loss, in float64."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        logits = model(tokens)
        loss = next_token_nll(logits[:, :-1], tokens[:, 1:]).mean()
    loss.backward()
    return [logits.detach().double(), *(p.grad.double() for p in model.parameters())]


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a - ref).norm() / ref.norm().clamp_min(1e-30)).item()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", ["sdpa", "flex"])
@pytest.mark.parametrize("arch", ["full_attention", "swa"])
def test_gpu_backends_equal_reference_forward_and_backward(arch, backend, dtype, monkeypatch, record_property):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    exact = small_model(arch, backend="torch", dtype=torch.float64).cuda()
    ref = small_model(arch, backend="torch").cuda()
    fast = small_model(arch, backend=backend).cuda()  # same seed: the same weights
    tokens = torch.randint(0, 256, (2, 1100), device="cuda")  # past sdpa's 1024-query chunk, not a block multiple
    names = ["logits", *(name for name, _ in ref.named_parameters())]
    truth = logits_and_grads(exact, tokens, torch.float64)
    checks = [(name, rel_err(ours, x64), KERNEL_VS_REFERENCE * rel_err(theirs, x64) + ERROR_FLOOR[dtype])
              for name, ours, theirs, x64 in zip(names, logits_and_grads(fast, tokens, dtype),
                                                 logits_and_grads(ref, tokens, dtype), truth)]
    record_property("worst error / bound", max(err / bound for _, err, bound in checks))
    for name, err, bound in checks:
        assert err <= bound, f"{name} ({dtype}): {err:.2e} > {bound:.2e}"


def test_compiled_code_builds_rope_and_masks_without_tracing_their_caches():
    """Dynamo ignores an lru_cache it traces into, and warns so (TTT-E2E's compiled step calls
    both): inside torch.compile the plain functions run, with the same values."""
    import warnings

    import torch._dynamo.utils as dynamo_utils

    def rope_and_mask(x):
        return attention.apply_rope(x, 3, 10000.0) + attention.sdpa_mask(4, 4, 0, 2, x.device).float().sum()

    getattr(dynamo_utils, "warn_once_cache", set()).clear()  # a warning given once per process
    torch._dynamo.reset()
    x = torch.randn(1, 2, 4, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = torch.compile(rope_and_mask, backend="eager")(x)
    assert not [w for w in caught if "lru_cache" in str(w.message)]
    torch.testing.assert_close(compiled, rope_and_mask(x), rtol=0, atol=0)
