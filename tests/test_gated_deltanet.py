"""gated_deltanet specifics: the delta rule's forms agree, chunks continue exactly, fla agrees."""
from __future__ import annotations

import math
import warnings
from functools import partial

import pytest
import torch

from baselines import gated_deltanet as gdn
from baselines.attention import FullAttentionLM
from harness.api import registry
from harness.api.errors import BackendUnavailableError, ConfigError
from tests.conftest import close_ratio, kernel_cases, small_model

x = torch.randint(0, 256, (2, 70), generator=torch.Generator().manual_seed(0))


def inputs(B, T, H, HV, K, V, dtype=torch.float64, device="cpu", seed=0, state=True):
    """Raw q, k (the ops normalise them), v, log decay g < 0, beta in (0, 1), an initial state."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    q, k, v = r(B, T, H, K), r(B, T, H, K), r(B, T, HV, V)
    g = -torch.rand(B, T, HV, generator=gen, dtype=torch.float64) * 0.5
    beta = torch.rand(B, T, HV, generator=gen, dtype=torch.float64)
    s0 = r(B, HV, K, V) * 0.3 if state else None
    out = [t.to(device=device, dtype=dtype) for t in (q, k, v, g, beta)]
    return out + [None if s0 is None else s0.to(device=device, dtype=torch.float32 if dtype != torch.float64 else dtype)]


def stepwise(q, k, v, g, beta, s0=None):
    """The gated delta rule read literally, in the paper's orientation (S is [V, K]):
    S_t = exp(g_t) S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T,  o_t = S_t q_t."""
    q, k, v, g, beta = (t.double() for t in (q, k, v, g, beta))
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    out = torch.zeros(B, T, HV, V, dtype=torch.float64)
    final = torch.zeros(B, HV, K, V, dtype=torch.float64)
    eye = torch.eye(K, dtype=torch.float64)
    for b in range(B):
        for hv in range(HV):
            h = hv // (HV // H)
            S = torch.zeros(V, K, dtype=torch.float64) if s0 is None else s0[b, hv].double().T
            for t in range(T):
                qt = q[b, t, h] / math.sqrt(q[b, t, h] @ q[b, t, h] + 1e-6) / math.sqrt(K)
                kt = k[b, t, h] / math.sqrt(k[b, t, h] @ k[b, t, h] + 1e-6)
                bt = beta[b, t, hv]
                S = torch.exp(g[b, t, hv]) * S @ (eye - bt * torch.outer(kt, kt)) + bt * torch.outer(v[b, t, hv], kt)
                out[b, t, hv] = S @ qt
            final[b, hv] = S.T
    return out, final


SHAPES = [  # B, T, H, HV, K, V, chunk
    (1, 1, 1, 1, 4, 4, 16),
    (2, 37, 2, 2, 8, 16, 16),
    (1, 50, 1, 2, 16, 8, 7),  # grouped value heads
    (2, 33, 2, 4, 8, 8, 64),  # one partial chunk
    (1, 64, 3, 3, 4, 12, 1),
]


@pytest.mark.parametrize("B, T, H, HV, K, V, chunk", SHAPES)
@pytest.mark.parametrize("with_state", [False, True])
def test_torch_forms_equal_stepwise_reading(B, T, H, HV, K, V, chunk, with_state):
    q, k, v, g, beta, s0 = inputs(B, T, H, HV, K, V, state=with_state)
    expected, expected_state = stepwise(q, k, v, g, beta, s0)
    for o, state in (
        gdn.chunk_gated_delta_rule(q, k, v, g, beta, s0, chunk),
        gdn.recurrent_gated_delta_rule(q, k, v, g, beta, s0),
    ):
        torch.testing.assert_close(o, expected, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(state, expected_state, rtol=1e-10, atol=1e-10)


def test_chunked_gradients_equal_recurrent_gradients():
    q, k, v, g, beta, s0 = inputs(2, 29, 2, 4, 8, 8)
    leaves = [t.requires_grad_() for t in (q, k, v, g, beta, s0)]
    weight_o, weight_s = torch.randn(2, 29, 4, 8, dtype=torch.float64), torch.randn(2, 4, 8, 8, dtype=torch.float64)
    grads = []
    for form in (lambda *a: gdn.chunk_gated_delta_rule(*a, chunk_size=8), gdn.recurrent_gated_delta_rule):
        o, state = form(*leaves)
        grads.append(torch.autograd.grad((o * weight_o).sum() + (state * weight_s).sum(), leaves))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("form", ["chunk", "recurrent"])
def test_torch_forms_compute_in_fp32_under_autocast(form):
    """Autocast must not turn the reference's matmuls (the state read and written every chunk or
    token) into bf16 ones: as ssd_reference, it computes in fp32 whatever the autocast."""
    q, k, v, g, beta, s0 = inputs(2, 40, 2, 2, 8, 8, dtype=torch.float32)
    op = partial(gdn.chunk_gated_delta_rule, chunk_size=16) if form == "chunk" else gdn.recurrent_gated_delta_rule
    expected = op(q, k, v, g, beta, s0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = op(q, k, v, g, beta, s0)
    for ours, theirs in zip(got, expected):
        assert ours.dtype == theirs.dtype == torch.float32
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_chunked_form_survives_strong_decay():
    """exp of cumulative log decays underflows to 0 but must never make inf or nan."""
    q, k, v, g, beta, s0 = inputs(1, 200, 1, 1, 8, 8, dtype=torch.float32)
    g = g * 400  # down to -200 per token
    leaves = [t.requires_grad_() for t in (q, k, v, g, beta)]
    o, state = gdn.chunk_gated_delta_rule(*leaves, s0, 64)
    expected, _ = gdn.recurrent_gated_delta_rule(q, k, v, g, beta, s0)
    torch.testing.assert_close(o, expected, rtol=1e-4, atol=1e-4)
    o.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in leaves)


# ---------------------------------------------------------------------------------------------
# The mixer and the model


def mixer(seed=0, **overrides) -> gdn.GatedDeltaNet:
    torch.manual_seed(seed)
    config = registry.make_config("gated_deltanet", "tiny", d_model=32, n_heads=2, head_dim=8, chunk_size=16, **overrides)
    return gdn.GatedDeltaNet(config).double()


@torch.no_grad()
@pytest.mark.parametrize("num_v_heads", [0, 4])
def test_mixer_in_pieces_equals_one_call(num_v_heads):
    layer = mixer(num_v_heads=num_v_heads)
    h = torch.randn(2, 60, 32, dtype=torch.float64)
    full, _ = layer(h, None, 0, need_cache=False)
    cache, pos, outs = None, 0, []
    for size in (1, 2, 21, 1, 1, 16, 3, 1, 15):  # decode steps, pieces shorter than the conv, chunks
        y, cache = layer(h[:, pos : pos + size], cache, pos, need_cache=True)
        outs.append(y)
        pos += size
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-10, atol=1e-10)


@torch.no_grad()
def test_decode_state_is_constant_and_counted():
    """In a bf16 model the delta-rule state stays fp32 (as fla's kernels keep it); the conv tails are bf16."""
    model = small_model("gated_deltanet", dtype=torch.bfloat16)
    c = model.config
    sizes = []
    _, state = model.prefill(x[:, :20])
    for t in range(20, 30):
        sizes.append(model.state_bytes(state))
        _, state = model.decode_step(state, x[:, t])
    key_dim, value_dim = c.n_heads * c.head_dim, c.v_heads * c.head_v_dim
    per_layer = c.v_heads * c.head_dim * c.head_v_dim * 4 + (c.conv_size - 1) * (2 * key_dim + value_dim) * 2
    assert sizes == [x.size(0) * c.n_layers * per_layer] * len(sizes)
    assert state.layers[0].state.dtype == torch.float32


def test_parameter_names_and_shapes_follow_fla():
    c = registry.make_config("gated_deltanet", "tiny", n_heads=2, head_dim=16, num_v_heads=4, expand_v=1.5)
    D, K, HV, Dv = c.d_model, 2 * 16, 4, 24
    expected = {
        "A_log": (HV,), "dt_bias": (HV,),
        "q_proj.weight": (K, D), "k_proj.weight": (K, D), "v_proj.weight": (HV * Dv, D),
        "a_proj.weight": (HV, D), "b_proj.weight": (HV, D),
        "q_conv1d.weight": (K, 1, 4), "k_conv1d.weight": (K, 1, 4), "v_conv1d.weight": (HV * Dv, 1, 4),
        "g_proj.weight": (HV * Dv, D), "o_norm.weight": (Dv,), "o_proj.weight": (D, HV * Dv),
    }
    assert {n: tuple(p.shape) for n, p in gdn.GatedDeltaNet(c).named_parameters()} == expected


def test_special_initialisation():
    torch.manual_seed(0)
    model = registry.create_model("gated_deltanet", "tiny", n_heads=8, head_dim=16)
    layer = model.blocks[0].mixer
    A = layer.A_log.exp()
    assert ((A > 0) & (A <= 16)).all() and A.std() > 2  # U(0, 16), not the generic N(0, 0.02)
    dt = torch.nn.functional.softplus(layer.dt_bias)
    assert ((dt >= 1e-3 * (1 - 1e-5)) & (dt <= 0.1 * (1 + 1e-5))).all()
    assert layer.q_conv1d.weight.std() < 0.05  # N(0, init_std) as in fla's models, not kaiming
    assert not torch.equal(model.blocks[0].mixer.A_log, model.blocks[1].mixer.A_log)


def test_presets_match_full_attention_parameters():
    for preset in registry.preset_names("gated_deltanet"):
        with torch.device("meta"):
            ours = registry.create_model("gated_deltanet", preset).num_params()
            theirs = registry.create_model("full_attention", preset).num_params()
        assert abs(ours / theirs - 1) < 0.03, (preset, ours, theirs)
    assert set(registry.preset_names("gated_deltanet")) == set(FullAttentionLM.presets)


def test_bad_configs_are_clear():
    with pytest.raises(ConfigError, match="Did you mean 'fla'"):
        registry.make_config("gated_deltanet", "tiny", backend="fal")
    with pytest.raises(ConfigError, match="num_v_heads=3 must be 0 or a multiple of n_heads=2"):
        registry.make_config("gated_deltanet", "tiny", num_v_heads=3)
    with pytest.raises(ConfigError, match="head_dim \\* expand_v"):
        registry.make_config("gated_deltanet", "tiny", expand_v=0.3)
    with pytest.raises(ConfigError, match="chunk_size must be a positive integer"):
        registry.make_config("gated_deltanet", "tiny", chunk_size=0)
    # heads need not divide d_model (fla's 1.3B config has 6 heads of 256 at width 2048)
    registry.make_config("gated_deltanet", "tiny", d_model=2048, n_heads=6, head_dim=256)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error path")
def test_forcing_fla_without_cuda_is_a_clear_error():
    assert gdn.resolve_backend("auto", torch.device("cpu")) == "torch"
    model = small_model("gated_deltanet", backend="fla")
    with pytest.raises(BackendUnavailableError, match="'fla' is unavailable: it needs a CUDA device.*backend='torch'"):
        model(x)


def test_a_failed_fla_import_means_unavailable(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name.startswith("fla"):
            raise RuntimeError("triton: no usable driver")
        return real_import(name, *args, **kwargs)

    gdn.FLA.forget()
    monkeypatch.setattr(builtins, "__import__", broken)
    try:
        assert not gdn.FLA.available(torch.device("cuda"))
        assert "RuntimeError: triton: no usable driver" in gdn.FLA.unavailable_reason(torch.device("cuda"))
    finally:
        monkeypatch.undo()
        gdn.FLA.forget()


def test_fla_decodes_with_its_recurrent_kernel_and_trains_with_its_chunked_one(monkeypatch):
    """Both kernels compute the same numbers, so a dispatch that always took one would pass every
    comparison: fused_recurrent has no backward, and the chunked kernel is the slow one per token."""
    from types import SimpleNamespace

    ran = []

    def kernel(name):
        def run(q, k, v, g, beta, initial_state, output_final_state, use_qk_l2norm_in_kernel):
            ran.append(name)
            return gdn.torch_gated_delta_rule(q, k, v, g, beta, initial_state, 16)
        return run

    monkeypatch.setattr(gdn.FLA, "ops", lambda device: SimpleNamespace(chunk=kernel("chunk"), recurrent=kernel("recurrent")))
    for T, grad, expected in ((1, False, "recurrent"), (200, False, "chunk"), (1, True, "chunk")):
        q, k, v, g, beta, s0 = inputs(1, T, 1, 1, 4, 4)
        with torch.set_grad_enabled(grad):
            gdn.fla_gated_delta_rule(q.requires_grad_(grad), k, v, g, beta, s0, 64)
        assert ran.pop() == expected, (T, grad)


def test_fla_runs_the_configs_chunk_size_or_says_which_it_runs(monkeypatch):
    """fla's chunked kernel takes chunk_size 16, 32 or 64, and the fla backend passed it none: a
    config's chunk_size=32 ran chunks of 64, silently, and a run recorded 32."""
    from types import SimpleNamespace

    from harness.api.kernels import ChunkSizeWarning

    calls = []

    def kernel(name):
        def run(**kwargs):
            calls.append((name, kwargs.get("chunk_size")))
            return gdn.torch_gated_delta_rule(kwargs["q"], kwargs["k"], kwargs["v"], kwargs["g"], kwargs["beta"],
                                              kwargs["initial_state"], 16)
        return run

    monkeypatch.setattr(gdn.FLA, "ops", lambda device: SimpleNamespace(chunk=kernel("chunk"), recurrent=kernel("recurrent")))
    monkeypatch.setattr(gdn.FLA, "_chunk_sizes_told", set())
    q, k, v, g, beta, s0 = inputs(1, 100, 1, 1, 4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a chunk size fla takes runs as asked, without a word
        for chunk in (16, 32, 64):
            gdn.fla_gated_delta_rule(q, k, v, g, beta, s0, chunk)
        gdn.fla_gated_delta_rule(q[:, :1], k[:, :1], v[:, :1], g[:, :1], beta[:, :1], s0, 128)  # decode: no chunks
    # 64 is fla's default, left unsaid: the call checked on GPUs
    assert calls == [("chunk", 16), ("chunk", 32), ("chunk", None), ("recurrent", None)]
    with pytest.warns(ChunkSizeWarning, match=r"gated_deltanet chunk_size=128: backend 'fla' runs chunks of 64 "
                                              r"\(it takes 16, 32, 64\).*backend='torch' to run 128"):
        gdn.fla_gated_delta_rule(q, k, v, g, beta, s0, 128)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once
        gdn.fla_gated_delta_rule(q, k, v, g, beta, s0, 128)
    assert calls[-2:] == [("chunk", None), ("chunk", None)]
    # what a run records beside the config (run.json): the chunk fla ran, where it is not the config's
    cuda = torch.device("cuda")
    assert small_model("gated_deltanet", backend="fla", chunk_size=128).kernel_settings(cuda) == {"chunk_size": 64}
    assert small_model("gated_deltanet", backend="fla", chunk_size=32).kernel_settings(cuda) == {}
    assert small_model("gated_deltanet", backend="torch", chunk_size=128).kernel_settings(cuda) == {}


# ---------------------------------------------------------------------------------------------
# flash-linear-attention's own references (CPU; need the `triton` and `fla-core` packages)


def fla_naive():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Triton is not supported on current platform"
            from fla.modules.norm import layernorm_gated
            from fla.ops.gated_delta_rule import gate, naive
    except Exception as exc:
        pytest.skip(f"flash-linear-attention does not import here: {type(exc).__name__}: {exc}")
    return naive, gate, layernorm_gated


@pytest.mark.parametrize("B, T, H, HV, K, V, chunk", [s for s in SHAPES if s[2] == s[3]])
def test_reference_equals_fla_naive(B, T, H, HV, K, V, chunk):
    naive, _, _ = fla_naive()
    q, k, v, g, beta, s0 = inputs(B, T, H, HV, K, V, dtype=torch.float32)
    s0 = s0.float()
    qn, kn = gdn.l2norm(q), gdn.l2norm(k)  # fla's naive functions take normalised q, k
    o_ref, s_ref = gdn.chunk_gated_delta_rule(q.double(), k.double(), v.double(), g.double(), beta.double(), s0.double(), chunk)
    o_rec, s_rec = naive.naive_recurrent_gated_delta_rule(qn, kn, v, beta, g, initial_state=s0, output_final_state=True)
    o_chk, s_chk = naive.naive_chunk_gated_delta_rule(qn, kn, v, g, beta, chunk_size=16, initial_state=s0, output_final_state=True)
    for o, s in ((o_rec, s_rec), (o_chk, s_chk)):
        torch.testing.assert_close(o.double(), o_ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(s.double(), s_ref, rtol=1e-4, atol=1e-4)


def test_gate_and_output_norm_equal_fla_references():
    _, gate, norm = fla_naive()
    a, A_log, dt_bias = torch.randn(2, 5, 3), torch.rand(3).mul(16).log(), torch.randn(3)
    torch.testing.assert_close(gdn.gdn_gate(a, A_log, dt_bias), gate.naive_gdn_gate(a, A_log, dt_bias))
    o_norm = gdn.OutputNorm(16, eps=1e-5)
    torch.nn.init.normal_(o_norm.weight)
    o, z = torch.randn(2, 5, 3, 16), torch.randn(2, 5, 3, 16)
    expected = norm.rms_norm_ref(o, o_norm.weight, None, z=z, eps=1e-5, norm_before_gate=True)
    torch.testing.assert_close(o_norm(o, z), expected)


# ---------------------------------------------------------------------------------------------
# GPU: fla's kernels against the reference

def require_fla(device: torch.device) -> None:
    reason = gdn.FLA.unavailable_reason(device)
    if reason is not None:
        pytest.skip(f"fla kernels unavailable: {reason}")


# On a GPU fp32 kernels use TF32 matmuls and bf16 inputs are rounded to 8 bits of mantissa; in
# Triton's interpreter on the CPU the kernels compute in exact fp32 (bf16 is not checked there)
# (5e-6: 3.9x the largest rtol-and-atol-per-scale measured there, 1.3e-6)
TOLERANCES = {("cuda", torch.float32): 5e-3, ("cuda", torch.bfloat16): 5e-2, ("cpu", torch.float32): 5e-6}
GPU_SHAPES = [(2, 300, 2, 2, 64, 128), (1, 1000, 2, 4, 128, 128), (2, 130, 3, 3, 32, 64)]


@kernel_cases("dtype, B, T, H, HV, K, V",
              cuda=[(dtype, *shape) for dtype in (torch.float32, torch.bfloat16) for shape in GPU_SHAPES],
              cpu=[(torch.float32, 2, 130, 2, 4, 32, 64)])  # grouped value heads, three chunks, the last short
def test_fla_equals_reference_forward_and_backward(kernel_device, dtype, B, T, H, HV, K, V, record_property):
    require_fla(kernel_device)
    q, k, v, g, beta, s0 = inputs(B, T, H, HV, K, V, dtype=dtype, device=kernel_device)
    leaves = [t.requires_grad_() for t in (q, k, v, g, beta, s0)]
    weight = torch.randn(B, T, HV, V, device=kernel_device)
    results = []
    for op in (gdn.fla_gated_delta_rule, gdn.torch_gated_delta_rule):
        o, state = op(*leaves, 64)
        loss = (o.float() * weight).sum() + state.float().sum()
        results.append([o.float(), state.float(), *torch.autograd.grad(loss, leaves)])
    tol = TOLERANCES[kernel_device.type, dtype]
    names = ["o", "state", "dq", "dk", "dv", "dg", "dbeta", "dstate0"]
    scales = [ref.abs().max().item() for ref in results[1]]
    record_property("worst error / allowance", max(close_ratio(fast.float(), ref.float(), tol, tol * scale)
                                                  for fast, ref, scale in zip(*results, scales)))
    for name, fast, ref, scale in zip(names, *results, scales):
        torch.testing.assert_close(fast.float(), ref.float(), rtol=tol, atol=tol * scale, msg=f"{name} ({dtype})")


# on the CPU: 3 chunks of 16 or 2 of 32 (the last short), with gradients (the chunked kernel)
@kernel_cases("chunk", cuda=[16, 32], cpu=[16, 32])
def test_fla_at_each_chunk_size_it_takes_equals_reference(kernel_device, chunk):
    require_fla(kernel_device)
    q, k, v, g, beta, s0 = inputs(1, 40, 1, 2, 16, 16, dtype=torch.float32, device=kernel_device)
    leaves = [t.requires_grad_() for t in (q, k, v, g, beta, s0)]
    results = []
    for op in (gdn.fla_gated_delta_rule, gdn.torch_gated_delta_rule):
        o, state = op(*leaves, chunk)
        results.append([o, state, *torch.autograd.grad(o.sum() + state.sum(), leaves)])
    tol = TOLERANCES[kernel_device.type, torch.float32]
    for fast, ref in zip(*results):
        torch.testing.assert_close(fast, ref, rtol=tol, atol=tol * ref.abs().max().item())

# one decode step; a short chunk (a prompt, a streamed piece). CPU tolerance: 4x the largest
# difference measured there (9.5e-7)
@kernel_cases("T, K, V, tol", cuda=[(1, 64, 128, 1e-4), (37, 64, 128, 1e-4)], cpu=[(1, 16, 32, 4e-6), (37, 16, 32, 4e-6)])
@torch.no_grad()
def test_fla_decode_equals_reference(kernel_device, T, K, V, tol):
    require_fla(kernel_device)
    q, k, v, g, beta, s0 = inputs(2, T, 2, 4, K, V, dtype=torch.float32, device=kernel_device)
    o_fast, s_fast = gdn.fla_gated_delta_rule(q, k, v, g, beta, s0, 64)  # fused_recurrent: no grad, T <= 64
    o_ref, s_ref = gdn.torch_gated_delta_rule(q, k, v, g, beta, s0, 64)
    torch.testing.assert_close(o_fast, o_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(s_fast, s_ref, rtol=tol, atol=tol)


# tokens, decode steps at their end, blocks (one on the CPU: the interpreter takes 2.5 s a block),
# tolerance (CPU: 4x the largest difference measured there, 5.7e-7)
@kernel_cases("T, steps, n_layers, tol", cuda=[(300, 10, 4, 5e-3)], cpu=[(70, 3, 1, 2.5e-6)])
def test_fla_backend_in_the_model(kernel_device, T, steps, n_layers, tol):
    require_fla(kernel_device)
    ref = small_model("gated_deltanet", backend="torch", n_layers=n_layers).to(kernel_device)
    fast = small_model("gated_deltanet", backend="auto", n_layers=n_layers).to(kernel_device)
    assert gdn.resolve_backend("auto", kernel_device) == "fla"
    xs = torch.randint(0, 256, (2, T), device=kernel_device)
    with torch.no_grad():
        full = ref(xs)
        torch.testing.assert_close(fast(xs), full, rtol=tol, atol=tol)
        logits, state = fast.prefill(xs[:, :T - steps])
        for t in range(T - steps, T):
            logits, state = fast.decode_step(state, xs[:, t])
            torch.testing.assert_close(logits, full[:, t], rtol=tol, atol=tol)
        if kernel_device.type == "cuda":  # Triton's interpreter gets bf16 dots wrong (numpy has no bf16)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                torch.testing.assert_close(fast(xs).float(), full, rtol=5e-2, atol=5e-2)
    fast.token_losses(xs).mean().backward()  # the chunk kernel's backward runs inside the model
    assert all(p.grad is not None for p in fast.parameters())
