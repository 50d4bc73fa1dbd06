"""mamba2 specifics: chunked SSD equals the recurrence, chunks continue exactly, kernels agree."""
from __future__ import annotations

import json
import math
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from baselines import mamba2
from baselines.ssd_reference import ssd_chunked, ssd_step
from harness.api import registry
from harness.api.errors import BackendUnavailableError, ConfigError
from harness.api.interface import clone_state
from tests.conftest import kernel_cases

KERNELS = {kernel.name: kernel for kernel in mamba2.KERNELS}


def inputs(b, T, H, P, G, N, dtype=torch.float64, device="cpu", seed=0, state=True):
    """x, dt > 0 (after softplus), A < 0, B, C, D and an initial state, as SSD takes them."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    x, B, C, D = r(b, T, H, P), r(b, T, G, N), r(b, T, G, N), r(H)
    dt = F.softplus(r(b, T, H) - 1.0)
    A = -torch.empty(H, dtype=torch.float64).uniform_(0.5, 4.0, generator=gen)
    s0 = r(b, H, P, N) * 0.3 if state else None
    out = [t.to(device=device, dtype=dtype) for t in (x, dt, A, B, C, D)]
    return out + [None if s0 is None else s0.to(device=device, dtype=torch.float64 if dtype == torch.float64 else torch.float32)]


def stepwise(x, dt, A, B, C, D, s0=None):
    """The SSD recurrence read literally, one head and one token at a time (float64):
    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T,  y_t = h_t C_t + D x_t;  head h reads group h // (H/G)."""
    x, dt, A, B, C, D = (t.double() for t in (x, dt, A, B, C, D))
    b, T, H, P = x.shape
    G, N = B.shape[-2:]
    y = torch.zeros(b, T, H, P, dtype=torch.float64)
    final = torch.zeros(b, H, P, N, dtype=torch.float64)
    for i in range(b):
        for h in range(H):
            g = h // (H // G)
            S = torch.zeros(P, N, dtype=torch.float64) if s0 is None else s0[i, h].double()
            for t in range(T):
                S = torch.exp(dt[i, t, h] * A[h]) * S + dt[i, t, h] * torch.outer(x[i, t, h], B[i, t, g])
                y[i, t, h] = S @ C[i, t, g] + D[h] * x[i, t, h]
            final[i, h] = S
    return y, final


SHAPES = [  # b, T, H, P, G, N, chunk
    (1, 1, 1, 2, 1, 3, 16),
    (2, 37, 4, 3, 1, 5, 8),  # 37 = 4 chunks of 8 + 5
    (1, 50, 6, 2, 3, 4, 7),  # ngroups > 1
    (2, 33, 4, 4, 2, 8, 64),  # one chunk shorter than chunk_size
    (1, 24, 2, 2, 2, 2, 6),  # a group per head; the length a multiple of the chunk
]


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("b,T,H,P,G,N,chunk", SHAPES)
def test_chunked_and_step_equal_stepwise_reading(b, T, H, P, G, N, chunk, with_state):
    x, dt, A, B, C, D, s0 = inputs(b, T, H, P, G, N, state=with_state)
    y_ref, s_ref = stepwise(x, dt, A, B, C, D, s0)
    y, s = ssd_chunked(x, dt, A, B, C, chunk, D=D, initial_state=s0)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s, s_ref, rtol=1e-10, atol=1e-10)
    state = torch.zeros(b, H, P, N, dtype=torch.float64) if s0 is None else s0
    steps = []
    for t in range(T):
        y_t, state = ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], D)
        steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps, 1), y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, s_ref, rtol=1e-10, atol=1e-10)


def test_chunked_gradients_equal_stepwise_gradients():
    leaves = [t.requires_grad_() for t in inputs(2, 19, 4, 3, 2, 4)]
    weights = torch.randn(2, 19, 4, 3, dtype=torch.float64)
    y, s = ssd_chunked(*leaves[:5], 5, D=leaves[5], initial_state=leaves[6])
    grads = torch.autograd.grad((y * weights).sum() + s.sum(), leaves)
    y_ref, s_ref = stepwise(*leaves)
    grads_ref = torch.autograd.grad((y_ref * weights).sum() + s_ref.sum(), leaves)
    for name, g, g_ref in zip("x dt A B C D s0".split(), grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-9, msg=f"gradient of {name}")


def test_chunked_form_survives_strong_decay():
    """Large dt * A makes exp(cumsum) underflow inside a chunk; the mask must keep it finite."""
    x, dt, A, B, C, D, s0 = inputs(1, 64, 2, 2, 1, 3, dtype=torch.float32)
    dt = dt * 40.0  # log decays of about -100 per token
    leaves = [t.requires_grad_() for t in (x, dt, B, C)]
    y, s = ssd_chunked(leaves[0], leaves[1], A, leaves[2], leaves[3], 64, D=D, initial_state=s0)
    y_ref, s_ref = stepwise(x, dt, A, B, C, D, s0)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)
    (y.sum() + s.sum()).backward()
    assert all(torch.isfinite(t.grad).all() for t in leaves)


def test_bf16_inputs_are_computed_in_fp32():
    x, dt, A, B, C, D, s0 = inputs(1, 40, 2, 4, 1, 8, dtype=torch.bfloat16)
    y, s = ssd_chunked(x, dt, A, B, C, 16, D=D, initial_state=s0)
    assert y.dtype == torch.bfloat16 and s.dtype == torch.float32
    y_ref, _ = stepwise(x, dt, A, B, C, D, s0)
    assert (y.double() - y_ref).norm() / y_ref.norm() < 1e-2


@pytest.mark.parametrize("form", ["chunked", "step"])
def test_ssd_computes_in_fp32_under_autocast(form):
    """Autocast must not turn the reference's einsums (the state read and written every chunk or
    token) into bf16 ones: as the GDN reference, it computes in fp32 whatever the autocast."""
    x, dt, A, B, C, D, s0 = inputs(2, 40, 4, 4, 2, 8, dtype=torch.float32)
    if form == "chunked":
        def op():
            return ssd_chunked(x, dt, A, B, C, 16, D=D, initial_state=s0)
    else:
        def op():
            return ssd_step(s0, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D)
    expected = op()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = op()
    for ours, theirs in zip(got, expected):
        assert ours.dtype == theirs.dtype == torch.float32
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def small_config(**overrides):
    fields = dict(d_model=32, expand=2, headdim=8, d_state=4, ngroups=2, chunk_size=8)
    return registry.make_config("mamba2", "tiny", **{**fields, **overrides})


def small_mixer(seed=0, **overrides):
    torch.manual_seed(seed)
    return mamba2.Mamba2Mixer(small_config(**overrides)).double()


@pytest.mark.parametrize("ngroups", [1, 2])
@torch.no_grad()
def test_mixer_in_pieces_equals_one_call(ngroups):
    mixer = small_mixer(ngroups=ngroups)
    u = torch.randn(2, 45, 32, dtype=torch.float64)
    full, full_cache = mixer(u, None, 0, True)
    pieces, cache, pos = [], None, 0
    for length in (11, 1, 1, 17, 1, 2, 12):  # prefill, decode steps and chunk calls of any length
        y, cache = mixer(u[:, pos : pos + length], cache, pos, True)
        pieces.append(y)
        pos += length
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(cache.ssm, full_cache.ssm, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(cache.conv, full_cache.conv, rtol=1e-12, atol=1e-12)
    assert mixer(u, None, 0, False)[1] is None


@torch.no_grad()
def test_decode_state_is_constant_and_counted():
    """In a bf16 model the SSM state stays fp32 (as mamba-ssm's kernels keep it); the conv tail is bf16."""
    torch.manual_seed(0)
    model = registry.create_model("mamba2", "tiny", d_model=32, headdim=8, d_state=4, n_layers=2).to(torch.bfloat16)
    c = model.config
    _, state = model.prefill(torch.randint(0, 256, (3, 20)))
    per_layer = 3 * (c.nheads * c.headdim * c.d_state * 4 + (c.d_conv - 1) * (c.d_inner + 2 * c.ngroups * c.d_state) * 2)
    assert model.state_bytes(state) == c.n_layers * per_layer
    assert state.layers[0].ssm.dtype == torch.float32
    for t in range(5):
        _, state = model.decode_step(state, torch.full((3,), t))
    assert model.state_bytes(state) == c.n_layers * per_layer


@torch.no_grad()
def test_a_decode_step_runs_the_step_op_and_a_sequence_the_chunked_one(monkeypatch):
    """Both compute the same numbers, so a decode that took the sequence op (mamba_chunk_scan_combined
    on one token instead of selective_state_update) would pass every comparison: record which runs."""
    ran = []
    monkeypatch.setitem(mamba2.STEP_OPS, "torch", lambda *a: ran.append("step") or mamba2.step_torch(*a))
    monkeypatch.setitem(mamba2.SSD_OPS, "torch", lambda *a: ran.append("sequence") or mamba2.ssd_torch(*a))
    model = registry.create_model("mamba2", "tiny", d_model=32, headdim=8, d_state=4, n_layers=2, backend="torch")
    _, state = model.prefill(torch.randint(0, 256, (2, 1)))  # a one-token prompt is a sequence too
    assert ran == ["sequence"] * 2
    ran.clear()
    model.decode_step(state, torch.zeros(2, dtype=torch.long))
    assert ran == ["step"] * 2


def test_fla_runs_the_configs_chunk_size_or_says_which_it_runs(monkeypatch, tmp_path):
    """fla's chunk_simple_gla was given no chunk_size: every config ran fla's 64 (the default
    chunk_size 256 too), silently, and its run recorded the config's."""
    from types import SimpleNamespace

    from harness.api.kernels import ChunkSizeWarning
    from harness.runs.evaluate import run_eval

    passed = []

    def chunk_simple_gla(q, k, v, **kwargs):
        passed.append(kwargs.get("chunk_size"))
        return torch.zeros_like(v), None

    monkeypatch.setattr(mamba2.FLA, "ops", lambda device: SimpleNamespace(chunk_simple_gla=chunk_simple_gla))
    monkeypatch.setattr(mamba2.FLA, "_chunk_sizes_told", set())
    x, dt, A, B, C, D, _ = inputs(1, 20, 2, 4, 1, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for chunk in (16, 32, 64):
            mamba2.ssd_fla(x, dt, A, B, C, D, torch.zeros(2), chunk, None, False)
    assert passed == [16, 32, None]  # 64, fla's default, left unsaid: the call checked on GPUs
    with pytest.warns(ChunkSizeWarning, match=r"mamba2 chunk_size=256: backend 'fla' runs chunks of 64"):
        mamba2.ssd_fla(x, dt, A, B, C, D, torch.zeros(2), 256, None, False)
    assert passed[-1] is None
    cuda = torch.device("cuda")
    assert registry.create_model("mamba2", "tiny", backend="fla", chunk_size=256).kernel_settings(cuda) == {"chunk_size": 64}
    assert registry.create_model("mamba2", "tiny", backend="fla", chunk_size=32).kernel_settings(cuda) == {}
    assert registry.create_model("mamba2", "tiny", backend="mamba_ssm", chunk_size=256).kernel_settings(cuda) == {}
    # a run's run.json records them beside the config
    model = registry.create_model("mamba2", "tiny", d_model=32, headdim=8, d_state=4, n_layers=1, backend="torch",
                                  chunk_size=256)
    monkeypatch.setattr(model, "kernel_settings", lambda device: {"chunk_size": 64})
    run_eval("loss_scaling", model, tmp_path / "run", {"contexts": [16], "tokens_per_context": 64}, progress=False)
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["model"]
    assert (recorded["config"]["chunk_size"], recorded["kernel_settings"]) == (256, {"chunk_size": 64})

def test_parameter_names_and_shapes_follow_mamba_ssm():
    """mamba-ssm's Mamba2(d_model, d_state, d_conv, expand, headdim, ngroups) holds exactly these."""
    c = small_config()
    H, G, N, d_inner = c.nheads, c.ngroups, c.d_state, c.d_inner
    conv_dim = d_inner + 2 * G * N
    expected = {
        "in_proj.weight": (2 * d_inner + 2 * G * N + H, c.d_model),
        "conv1d.weight": (conv_dim, 1, c.d_conv),
        "conv1d.bias": (conv_dim,),
        "dt_bias": (H,),
        "A_log": (H,),
        "D": (H,),
        "norm.weight": (d_inner,),
        "out_proj.weight": (c.d_model, d_inner),
    }
    shapes = {name: tuple(p.shape) for name, p in mamba2.Mamba2Mixer(c).named_parameters()}
    assert shapes == expected
    assert not any(isinstance(m, torch.nn.Linear) and m.bias is not None for m in mamba2.Mamba2Mixer(c).modules())


def test_gated_norm_is_grouped_rmsnorm_of_gated_input():
    norm = mamba2.GatedRMSNorm(12, group_size=4)
    norm.weight.data = torch.randn(12)
    x, z = torch.randn(2, 5, 12), torch.randn(2, 5, 12)
    g = (x * F.silu(z)).view(2, 5, 3, 4)
    expected = (g / torch.sqrt(g.pow(2).mean(-1, keepdim=True) + 1e-5)).view(2, 5, 12) * norm.weight
    torch.testing.assert_close(norm(x, z), expected)


def test_special_initialisation_survives_the_backbone_init():
    torch.manual_seed(0)
    model = registry.create_model("mamba2", "tiny", d_model=256, headdim=8)  # 64 heads per layer
    c = model.config
    for block in model.blocks:
        m = block.mixer
        A = torch.exp(m.A_log.detach())
        assert A.min() >= c.A_init_min and A.max() <= c.A_init_max and A.max() - A.min() > 5
        dt = F.softplus(m.dt_bias.detach())
        assert dt.min() >= c.dt_min * (1 - 1e-5) and dt.max() <= c.dt_max * (1 + 1e-5)
        log_dt = dt.log()  # log-uniform: its mean is near the middle of [log dt_min, log dt_max]
        assert abs(log_dt.mean() - (math.log(c.dt_min) + math.log(c.dt_max)) / 2) < 0.6
        assert torch.equal(m.D.detach(), torch.ones_like(m.D)) and torch.equal(m.norm.weight.detach(), torch.ones(c.d_inner))
        assert all(getattr(p, "_no_weight_decay", False) for p in (m.A_log, m.dt_bias, m.D))
        assert abs(m.in_proj.weight.std().item() - c.init_std) < 0.002  # the backbone's N(0, 0.02)


def test_presets_match_full_attention_parameters():
    for preset in registry.preset_names("mamba2"):
        with torch.device("meta"):
            ours = registry.create_model("mamba2", preset).num_params()
            theirs = registry.create_model("full_attention", preset).num_params()
        assert abs(ours / theirs - 1) < 0.03, f"{preset}: {ours:,} vs full_attention {theirs:,}"


def test_bad_configs_are_clear():
    with pytest.raises(ConfigError, match=r"headdim=7; choose headdim among \[1, 2, 4, 8, 16, 32, 64\]"):
        small_config(headdim=7)
    with pytest.raises(ConfigError, match=r"ngroups=3 must divide the number of heads \(8\); choose among \[1, 2, 4, 8\]"):
        small_config(ngroups=3)
    with pytest.raises(ConfigError, match="Did you mean 'mamba_ssm'"):
        small_config(backend="mamba-ssm")
    with pytest.raises(ConfigError, match="chunk_size"):
        small_config(chunk_size=0)


def test_n_heads_is_the_mixers_head_count_and_a_disagreeing_one_is_refused():
    """n_heads was accepted and ignored: ``--set n_heads=16`` built a model of expand * d_model //
    headdim heads and saved n_heads=16 (or the base default 4) in its config and reports."""
    c = small_config()  # d_model 32, expand 2, headdim 8: 8 heads
    assert c.n_heads == c.nheads == 8
    assert small_config(d_model=64).n_heads == 16 and small_config(n_heads=8) == c  # derived; an agreeing value is fine
    with pytest.raises(ConfigError, match=r"Mamba2Config.n_heads is derived from the other fields \(8 here\), not set; "
                                          r"got 4 \(n_heads = expand \* d_model // headdim: change headdim"):
        small_config(n_heads=4)
    with pytest.raises(ConfigError, match=r"n_heads is derived from the other fields \(8 here\), not set; got 2"):
        c.replace(n_heads=2)
    assert c.replace(d_model=64).n_heads == 16
    assert registry.config_from_dict(c.to_dict()) == c


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error path")
@pytest.mark.parametrize("backend", KERNELS)
def test_forcing_a_kernel_without_cuda_is_a_clear_error(backend):
    mixer = small_mixer(backend=backend)
    with pytest.raises(BackendUnavailableError, match=rf"'{backend}' is unavailable: it needs a CUDA device.*'torch'"):
        mixer(torch.randn(1, 4, 32, dtype=torch.float64), None, 0, False)
    assert mamba2.resolve_backend("auto", torch.device("cpu")) == "torch"


@pytest.fixture
def fake_mamba_ssm(tmp_path, monkeypatch):
    """A stand-in mamba_ssm package on sys.path; restores sys.modules and the import cache."""
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in ("mamba_ssm", "selective_scan_cuda")}
    for kernel in mamba2.KERNELS:
        kernel.forget()
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(init_source: str) -> None:
        triton = tmp_path / "mamba_ssm" / "ops" / "triton"
        triton.mkdir(parents=True, exist_ok=True)
        (tmp_path / "mamba_ssm" / "__init__.py").write_text(init_source)
        (tmp_path / "mamba_ssm" / "ops" / "__init__.py").write_text("")
        (triton / "__init__.py").write_text("")
        (triton / "ssd_combined.py").write_text("def mamba_chunk_scan_combined(*a, **k): return 'scan'\n")
        (triton / "selective_state_update.py").write_text("def selective_state_update(*a, **k): return 'step'\n")

    yield write
    for k in [k for k in sys.modules if k.split(".")[0] in ("mamba_ssm", "selective_scan_cuda")]:
        del sys.modules[k]
    sys.modules.update(saved)
    for kernel in mamba2.KERNELS:
        kernel.forget()


def test_mamba_ssm_without_its_cuda_extension_still_imports(fake_mamba_ssm):
    """mamba-ssm 2.3.x's __init__ imports the Mamba-1 extension; its Triton SSD must load anyway."""
    fake_mamba_ssm("import selective_scan_cuda\n")
    ops, error = mamba2.MAMBA_SSM.imported()
    assert error is None and ops.mamba_chunk_scan_combined() == "scan" and ops.selective_state_update() == "step"
    with pytest.raises(AttributeError, match="not built"):
        sys.modules["selective_scan_cuda"].fwd


@pytest.mark.parametrize("tried_before", [False, True])
def test_mamba_ssm_is_whole_after_the_placeholder_import(fake_mamba_ssm, tried_before):
    """The real __init__ loads submodules before it reaches the extension: the retry must run the
    package's __init__ again, or ``mamba_ssm`` stays missing beside its loaded submodules (and a
    later ``from mamba_ssm.models ...`` fails on the extension). ``tried_before``: another
    package (fla does) tried to import mamba-ssm first and left such submodules behind."""
    fake_mamba_ssm("from mamba_ssm.ops.triton import ssd_combined\nimport selective_scan_cuda\nWHOLE = True\n")
    if tried_before:
        with pytest.raises(ModuleNotFoundError):
            import mamba_ssm.ops.triton.selective_state_update  # noqa: F401
        assert "mamba_ssm.ops.triton.ssd_combined" in sys.modules and "mamba_ssm" not in sys.modules
    ops, error = mamba2.MAMBA_SSM.imported()
    assert error is None
    assert sys.modules["mamba_ssm"].WHOLE and "selective_scan_cuda" in sys.modules


def test_a_broken_kernel_package_means_unavailable(fake_mamba_ssm):
    fake_mamba_ssm("raise RuntimeError('CUDA driver too old')\n")
    ops, error = mamba2.MAMBA_SSM.imported()
    assert ops is None and "CUDA driver too old" in error
    assert "selective_scan_cuda" not in sys.modules
    with pytest.raises(BackendUnavailableError, match="CUDA driver too old"):
        mamba2.MAMBA_SSM.ops(torch.device("cuda"))


def test_gla_mapping_equals_fla_naive_reference():
    """The fla backend's reading of SSD (q = C, k = B, v = x dt, g = A dt, scale 1) through fla's
    own plain-torch simple GLA; runs wherever flash-linear-attention imports, GPU or not."""
    try:
        with warnings.catch_warnings():  # fla warns about Triton and flash-attn on CPU machines
            warnings.simplefilter("ignore")
            from fla.ops.simple_gla.naive import naive_recurrent_simple_gla
    except Exception as exc:  # not installed, or no einops / Triton fallback here
        pytest.skip(f"flash-linear-attention's naive reference does not import: {exc}")
    x, _, A, B, C, D, s0 = inputs(2, 30, 4, 3, 2, 5, dtype=torch.float32)
    dt, dt_bias = torch.randn(2, 30, 4), torch.randn(4) * 0.1  # raw, as the mixer passes them
    y_ref, s_ref = mamba2.ssd_torch(x, dt, A, B, C, D, dt_bias, 8, s0, True)
    q, k, v, g = mamba2._as_gla(x, dt, A, B, C, dt_bias)
    o, s = naive_recurrent_simple_gla(q, k, v, g, scale=1.0, initial_state=s0.transpose(-1, -2), output_final_state=True)
    torch.testing.assert_close(mamba2._add_skip(o, x, D), y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s.transpose(-1, -2), s_ref, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# GPU: each kernel backend equals the reference. Tolerances are on ||kernel - ref|| / ||ref||,
# the reference being the chunked SSD in float64 on the same (rounded) inputs. fp32: the Triton
# matmuls run in TF32 (about 1e-3 measured). bf16: inputs, outputs and intra-chunk matmuls in bf16.

# forward; gradients get twice as much. On the CPU (Triton's interpreter, exact fp32) about 4x the
# largest measured there: forward 8.0e-7 (a state), gradients 3.0e-6 (of A)
TOLERANCE = {("cuda", torch.float32): 5e-3, ("cuda", torch.bfloat16): 3e-2, ("cpu", torch.float32): 4e-6}
# one step (y, state) without and with grad, and a whole model's logits, gradients and decoded logits;
# CPU: about 4x the largest measured there (step 1.4e-7; model 2.4e-7, 1.0e-6, 4.5e-7)
STEP_TOLERANCE = {"cuda": {False: (1e-4, 1e-5), True: (5e-3, 5e-3)}, "cpu": {False: (6e-7, 6e-7), True: (6e-7, 6e-7)}}
MODEL_TOLERANCE = {"cuda": (5e-3, 1e-2, 5e-3), "cpu": (1e-6, 4e-6, 2e-6)}


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.double() - ref.double()).norm() / ref.double().norm()).item()


def require(backend: str, device: torch.device) -> None:
    reason = KERNELS[backend].unavailable_reason(device)
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")


# (T, H, P, G, N): on a GPU T = 300 is no multiple of any chunk; on the CPU (Triton's interpreter,
# a kernel program at a time) T = 100 crosses one chunk boundary of 64, with grouped B/C
GPU_SIZES, CPU_SIZES = (300, 8, 32, 2, 64), (100, 4, 16, 2, 16)


def kernel_inputs(dtype, device, b=2, T=300, H=8, P=32, G=2, N=64):
    """Raw dt and dt_bias as the mixer hands them to a backend."""
    torch.manual_seed(0)
    x, B, C = (torch.randn(b, T, *shape, device=device) for shape in ((H, P), (G, N), (G, N)))
    dt = torch.randn(b, T, H, device=device) * 0.5
    A = -torch.empty(H, device=device).uniform_(1, 16)
    dt_bias = torch.log(torch.expm1(torch.empty(H, device=device).uniform_(1e-3, 0.1)))
    D = torch.randn(H, device=device)
    s0 = torch.randn(b, H, P, N, device=device) * 0.3
    return x.to(dtype), dt.to(dtype), A, B.to(dtype) / N**0.5, C.to(dtype), D, dt_bias, s0


@kernel_cases("backend, dtype, sizes", cuda=[(b, d, GPU_SIZES) for b in KERNELS for d in (torch.float32, torch.bfloat16)],
              cpu=[(b, torch.float32, CPU_SIZES) for b in KERNELS])  # the interpreter's bf16 dots are wrong
def test_kernel_equals_reference_forward_and_backward(kernel_device, backend, dtype, sizes, record_property):
    require(backend, kernel_device)
    x, dt, A, B, C, D, dt_bias, s0 = kernel_inputs(dtype, kernel_device, 2, *sizes)
    tol = TOLERANCE[kernel_device.type, dtype]
    leaves = [t.clone().requires_grad_() for t in (x, dt, A, B, C, D, dt_bias)]
    y, s = mamba2.SSD_OPS[backend](*leaves[:5], leaves[5], leaves[6], 64, s0, True)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    y_ref, s_ref = mamba2.ssd_torch(*ref_leaves[:5], ref_leaves[5], ref_leaves[6], 64, s0.double(), True)
    assert y.dtype == dtype and s.dtype == torch.float32
    dy = torch.randn_like(y_ref)
    (y.float() * dy).sum().backward()
    (y_ref * dy).sum().backward()
    checks = [("y", rel_err(y, y_ref), tol), ("state", rel_err(s, s_ref), tol)]
    checks += [(f"gradient of {name}", rel_err(a.grad, ref.grad), 2 * tol)
               for name, a, ref in zip("x dt A B C D dt_bias".split(), leaves, ref_leaves)]
    record_property("worst error / tolerance", max(err / bound for _, err, bound in checks))
    for name, err, bound in checks:
        assert err < bound, f"{name}: {err:.2e}"


# fla at the other chunk lengths it takes (16 and 32; 64 above), forward and backward
@kernel_cases("chunk", cuda=[16, 32], cpu=[16, 32])
def test_fla_at_each_chunk_size_it_takes_equals_reference(kernel_device, chunk):
    require("fla", kernel_device)
    x, dt, A, B, C, D, dt_bias, s0 = kernel_inputs(torch.float32, kernel_device, 1, 40, 2, 8, 1, 16)
    leaves = [t.clone().requires_grad_() for t in (x, dt, A, B, C, D, dt_bias)]
    y, s = mamba2.ssd_fla(*leaves, chunk, s0, True)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    y_ref, s_ref = mamba2.ssd_torch(*ref_leaves, chunk, s0.double(), True)
    (y * y_ref.detach().float()).sum().backward()
    (y_ref * y_ref.detach()).sum().backward()
    tol = TOLERANCE[kernel_device.type, torch.float32]
    assert rel_err(y, y_ref) < tol and rel_err(s, s_ref) < tol
    for name, a, ref in zip("x dt A B C D dt_bias".split(), leaves, ref_leaves):
        assert rel_err(a.grad, ref.grad) < 2 * tol, name

# mamba_ssm's decode kernel has no backward: with grad it falls back
@kernel_cases("backend, grad, sizes", cuda=[(b, g, GPU_SIZES) for b in KERNELS for g in (False, True)],
              cpu=[(b, g, CPU_SIZES) for b in KERNELS for g in (False, True)])
def test_kernel_step_equals_reference_step(kernel_device, backend, grad, sizes):
    require(backend, kernel_device)
    x, dt, A, B, C, D, dt_bias, s0 = kernel_inputs(torch.float32, kernel_device, 2, 1, *sizes[1:])
    with torch.set_grad_enabled(grad):
        y, s = mamba2.STEP_OPS[backend](s0.clone(), x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D, dt_bias)
    y_ref, s_ref = mamba2.step_torch(s0.double(), *(t.double() for t in (x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D, dt_bias)))
    y_tol, s_tol = STEP_TOLERANCE[kernel_device.type][grad]
    assert rel_err(y, y_ref) < y_tol and rel_err(s, s_ref) < s_tol


# tokens, where decoding starts, and the model (on the CPU's interpreter: one narrow block)
@kernel_cases("backend, T, start, fields", cuda=[(b, 200, 150, dict(d_state=64)) for b in KERNELS],
              cpu=[(b, 72, 68, dict(d_state=16, n_layers=1, d_model=64, mlp_hidden=128)) for b in KERNELS])
def test_kernel_backend_in_the_model(kernel_device, backend, T, start, fields):
    """Forward, gradients and prefill + decode of a whole model against the torch backend."""
    require(backend, kernel_device)
    torch.manual_seed(0)
    config = registry.make_config("mamba2", "tiny", headdim=32, ngroups=2, backend=backend, **fields)
    model = registry.build_model(config).to(kernel_device)
    ref = registry.build_model(config.replace(backend="torch")).to(kernel_device)
    ref.load_state_dict(model.state_dict())
    tokens = torch.randint(0, 256, (2, T), device=kernel_device)
    logits_tol, grad_tol, decode_tol = MODEL_TOLERANCE[kernel_device.type]
    logits, logits_ref = model(tokens), ref(tokens)
    assert rel_err(logits, logits_ref) < logits_tol
    model.token_losses(tokens).mean().backward()
    ref.token_losses(tokens).mean().backward()
    for (name, p), p_ref in zip(model.named_parameters(), ref.parameters()):
        assert rel_err(p.grad, p_ref.grad) < grad_tol, name
    with torch.no_grad():
        last, state = model.prefill(tokens[:, :start])
        steps = [last]
        for t in range(start, T - 1):
            last, state = model.decode_step(state, tokens[:, t])
            steps.append(last)
        assert rel_err(torch.stack(steps, 1), logits_ref[:, start - 1:T - 1]) < decode_tol
    assert mamba2.resolve_backend("auto", kernel_device) == next(
        k.name for k in mamba2.KERNELS if k.available(kernel_device)
    )


@kernel_cases("", cuda=[()], cpu=[()])
@torch.no_grad()
def test_a_state_the_decode_kernel_advanced_in_place_says_so(kernel_device):
    """mamba-ssm's decode kernel updates the SSM state in place: decoding again from a state it
    advanced must be refused (it would read the other token's update), and a copy made first
    decodes as the first time."""
    require("mamba_ssm", kernel_device)
    torch.manual_seed(0)
    model = registry.create_model("mamba2", "tiny", backend="mamba_ssm", d_state=16, n_layers=1, d_model=64,
                                  mlp_hidden=128, headdim=32).to(kernel_device).eval()
    tokens = torch.randint(0, 256, (2, 9), device=kernel_device)
    _, state = model.prefill(tokens[:, :8])
    copy = clone_state(state)
    first, _ = model.decode_step(state, tokens[:, 8])
    with pytest.raises(ConfigError, match="continues from position 8.*clone_state"):
        model.decode_step(state, tokens[:, 8])
    torch.testing.assert_close(model.decode_step(copy, tokens[:, 8])[0], first)
