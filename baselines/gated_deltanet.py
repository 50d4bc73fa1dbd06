"""Gated DeltaNet (arXiv 2412.06464) in the shared backbone: ``gated_deltanet``.

The mixer, with flash-linear-attention's ``fla.layers.GatedDeltaNet`` parameter names and shapes
(so its checkpoints load into ``blocks.i.mixer``)::

    q, k, v = silu(short_conv(q_proj x)), silu(short_conv(k_proj x)), silu(short_conv(v_proj x))
    q, k    = l2norm(q), l2norm(k);  q *= head_dim ** -0.5
    g       = -exp(A_log) * softplus(a_proj x + dt_bias)        # log decay, < 0
    beta    = sigmoid(b_proj x)
    S_t     = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T    # S [K, V] per head
    o_t     = S_t^T q_t                                          # current token included
    y       = o_proj(rmsnorm(o) * o_norm.weight * silu(g_proj x))  # per value head

(The paper writes the state as [V, K]: S_t = S_{t-1} exp(g_t)(I - beta_t k_t k_t^T) + beta_t v_t k_t^T,
o_t = S_t q_t; ours is its transpose, fla's ``[N, HV, K, V]`` layout.) Value head ``hv`` reads q/k
head ``hv // (num_v_heads // n_heads)`` (grouped value heads when ``num_v_heads > n_heads``).

Backends of the same math (``GatedDeltaNetConfig.backend``):

- ``torch``: the reference. Sequences run the chunked WY/UT form (the GDN paper's Eq. 8-9, fla's
  ``naive_chunk_gated_delta_rule``): inside a chunk of ``chunk_size`` tokens everything is
  matrix products and one unit-triangular solve; only the state crosses chunks. A single token
  (decode) runs the recurrence directly. Runs anywhere, fp32 (fp64 stays fp64).
- ``fla``: flash-linear-attention's Triton kernels, ``chunk_gated_delta_rule`` for sequences and
  ``fused_recurrent_gated_delta_rule`` for decode (it has no backward, so it is used only when
  no gradient is needed). Needs CUDA, ``triton`` and ``fla-core``. Its chunked kernel takes
  ``chunk_size`` 16, 32 or 64; for another it runs 64, says so once, and the run records it.

``auto`` picks ``fla`` on CUDA when it imports, otherwise ``torch``.

Decode carries, per layer, the fp32 state ``[B, HV, K, V]`` and the last ``conv_size - 1`` inputs of
the q, k and v convolutions: memory and time per token do not grow with context.

Presets. The block keeps the shared SwiGLU MLP, so the mixer alone must match attention's 4 d^2.
With ``expand_v = 2`` (fla's default) and ``num_v_heads = n_heads`` the mixer holds
``2 d K + 3 d V = 2 d K + 6 d K`` weights (q, k / v, g, o; K = n_heads * head_dim, V = 2K), so
K = d/2 matches attention up to the small a/b projections, convolutions and gates (< 1%).
``head_dim = 128`` at every paper size (fla's kernels' best-tested shape, also Qwen3-Next's key
head size) then gives 3/4/6/8 heads at 125m/350m/760m/1.3b; ``tiny`` uses 2 heads of 32.
(fla's own configs use K = 0.75 d, a 6 d^2 mixer, and no separate MLP budget.)
"""
from __future__ import annotations

import math
import types
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from baselines.attention import LLAMA3_VOCAB, PAPER_SIZES
from baselines.backbone import BackboneLM, RMSNorm, without_autocast
from baselines.short_conv import ShortConv
from harness.api.errors import ConfigError, check_choice
from harness.api.interface import ModelConfig
from harness.api.kernels import Kernel, chunk_settings, pick_backend
from harness.api.registry import register_model

GDN_BACKENDS = ("auto", "torch", "fla")
L2NORM_EPS = 1e-6  # fla's l2norm: x / sqrt(sum x^2 + eps)


@dataclass
class GatedDeltaNetConfig(ModelConfig):
    # n_heads (from ModelConfig) is the number of q/k heads, fla's ``num_heads``.
    head_dim: int = 64  # q/k head size; unlike attention, not tied to d_model // n_heads
    expand_v: float = 2.0  # value head size = head_dim * expand_v
    num_v_heads: int = 0  # 0 = n_heads; a multiple of n_heads gives grouped value heads
    conv_size: int = 4
    chunk_size: int = 64  # fastest of 32/64/128 for the torch backend on CPU; fla takes 16/32/64 (module docstring)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_positive_ints("head_dim", "conv_size", "chunk_size")
        check_choice("gated_deltanet backend", self.backend, GDN_BACKENDS)
        if self.num_v_heads < 0 or self.v_heads % self.n_heads:
            raise ConfigError(f"num_v_heads={self.num_v_heads} must be 0 or a multiple of n_heads={self.n_heads}")
        if self.expand_v <= 0 or not float(self.head_dim * self.expand_v).is_integer():
            raise ConfigError(f"head_dim * expand_v = {self.head_dim} * {self.expand_v} must be a positive integer")

    @property
    def v_heads(self) -> int:
        return self.num_v_heads or self.n_heads

    @property
    def head_v_dim(self) -> int:
        return int(self.head_dim * self.expand_v)


# ---------------------------------------------------------------------------------------------
# The gated delta rule. Layout as fla's: q, k [B, T, H, K]; v [B, T, HV, V]; g, beta [B, T, HV];
# state [B, HV, K, V]. q and k arrive raw: every backend L2-normalises them and scales q.


def l2norm(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + L2NORM_EPS)


def gdn_gate(a: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor) -> torch.Tensor:
    """Log decay ``-exp(A_log) * softplus(a + dt_bias)``, in fp32 (fp64 stays fp64)."""
    dtype = torch.promote_types(a.dtype, torch.float32)
    return -A_log.to(dtype).exp() * F.softplus(a.to(dtype) + dt_bias.to(dtype))


def _prepare(q, k, v, g, beta):
    """Normalised, scaled, head-expanded inputs as [B, HV, T, *] in the compute dtype."""
    dtype = torch.promote_types(v.dtype, torch.float32)
    rep = v.size(2) // q.size(2)
    q = l2norm(q.to(dtype)) * q.size(-1) ** -0.5
    k = l2norm(k.to(dtype))
    if rep > 1:
        q, k = q.repeat_interleave(rep, 2), k.repeat_interleave(rep, 2)
    return [t.transpose(1, 2) for t in (q, k, v.to(dtype), g.to(dtype), beta.to(dtype))]


@without_autocast
def recurrent_gated_delta_rule(q, k, v, g, beta, state=None):
    """One token at a time: the recurrence as written. Returns (o [B, T, HV, V], state)."""
    out_dtype = v.dtype
    q, k, v, g, beta = _prepare(q, k, v, g, beta)
    B, HV, T, K = k.shape
    S = q.new_zeros(B, HV, K, v.size(-1)) if state is None else state.to(q.dtype)
    outs = []
    for t in range(T):
        S = S * g[:, :, t, None, None].exp()
        u = beta[:, :, t, None] * (v[:, :, t] - torch.einsum("bhkv,bhk->bhv", S, k[:, :, t]))
        S = S + k[:, :, t, :, None] * u[:, :, None, :]
        outs.append(torch.einsum("bhkv,bhk->bhv", S, q[:, :, t]))
    return torch.stack(outs, 1).to(out_dtype), S


@without_autocast
def chunk_gated_delta_rule(q, k, v, g, beta, state=None, chunk_size: int = 64):
    """The chunked (WY/UT) form: parallel inside chunks, the state carried across them.

    Inside a chunk with cumulative log decay c_i = g_1 + ... + g_i and start state S0, the
    delta rule's corrected values u_i = beta_i (v_i - S_{i-1}'^T k_i) (S' decayed to step i)
    solve the unit lower triangular system (I + L) u = beta v - beta exp(c) k S0, with
    L_ij = beta_i exp(c_i - c_j) k_i.k_j for j < i; so u = U - W S0 with U, W independent of S0.
    Then o_i = exp(c_i) S0^T q_i + sum_{j<=i} exp(c_i - c_j) (q_i.k_j) u_j and
    S_end = exp(c_C) S0 + sum_j exp(c_C - c_j) k_j u_j^T. Every exponent is <= 0.
    """
    out_dtype = v.dtype
    q, k, v, g, beta = _prepare(q, k, v, g, beta)
    B, HV, T, K = k.shape
    V = v.size(-1)
    C = chunk_size
    N = -(-T // C)
    pad = N * C - T  # padded steps have g = 0, k = 0, beta = 0: they leave the state as it is
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        g, beta = (F.pad(t, (0, pad)) for t in (g, beta))
    q, k, v = (t.reshape(B, HV, N, C, -1) for t in (q, k, v))
    g, beta = g.reshape(B, HV, N, C), beta.reshape(B, HV, N, C)

    c = g.cumsum(-1)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    decay = (c[..., :, None] - c[..., None, :]).masked_fill(~causal, float("-inf")).exp()  # [.., C, C]
    k_beta = k * beta[..., None]
    L = ((k_beta @ k.transpose(-1, -2)) * decay).tril(-1)
    eye = torch.eye(C, dtype=q.dtype, device=q.device)
    inv = torch.linalg.solve_triangular(L + eye, eye.expand_as(L), upper=False, unitriangular=True)  # (I + L)^-1
    U = inv @ (v * beta[..., None])
    W = inv @ (k_beta * c.exp()[..., None])
    qk = (q @ k.transpose(-1, -2)) * decay
    q_decayed = q * c.exp()[..., None]
    k_to_end = k * (c[..., -1:] - c).exp()[..., None]
    end_decay = c[..., -1].exp()[..., None, None]

    S = q.new_zeros(B, HV, K, V) if state is None else state.to(q.dtype)
    outs = []
    # unbind, not indexing: the backward of n indexings would zero-fill n full-size gradients
    for U_n, W_n, qd_n, qk_n, kd_n, ed_n in zip(*(t.unbind(2) for t in (U, W, q_decayed, qk, k_to_end, end_decay))):
        u = U_n - W_n @ S
        outs.append(qd_n @ S + qk_n @ u)
        S = S * ed_n + kd_n.transpose(-1, -2) @ u
    o = torch.stack(outs, 2).reshape(B, HV, N * C, V)[:, :, :T]
    return o.transpose(1, 2).to(out_dtype), S


def torch_gated_delta_rule(q, k, v, g, beta, state, chunk_size: int):
    if q.size(1) == 1:
        return recurrent_gated_delta_rule(q, k, v, g, beta, state)
    return chunk_gated_delta_rule(q, k, v, g, beta, state, chunk_size)


def _import_fla() -> Any:
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule

    return types.SimpleNamespace(chunk=chunk_gated_delta_rule, recurrent=fused_recurrent_gated_delta_rule)


FLA = Kernel("gated_deltanet", "fla", _import_fla, install="pip install fla-core triton", fallback="torch",
             packages=("fla-core", "triton"), chunk_sizes=(16, 32, 64))  # fla's chunk_gated_delta_rule's check


def fla_gated_delta_rule(q, k, v, g, beta, state, chunk_size: int):
    ops = FLA.ops(q.device)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, g, beta, state) if t is not None)
    chunked = needs_grad or q.size(1) > 64  # fused_recurrent has no backward
    if state is not None:
        state = state.float().contiguous()
    o, state = (ops.chunk if chunked else ops.recurrent)(
        q=q, k=k, v=v, g=g.float(), beta=beta.to(q.dtype), initial_state=state,
        output_final_state=True, use_qk_l2norm_in_kernel=True, **(FLA.chunk_kwargs(chunk_size) if chunked else {}),
    )  # keywords: fused_recurrent's 5th positional parameter is gk, not beta
    return o, state


GDN_OPS = {"torch": torch_gated_delta_rule, "fla": fla_gated_delta_rule}


def resolve_backend(backend: str, device: torch.device) -> str:
    return pick_backend(backend, [FLA], device, fallback="torch")


# ---------------------------------------------------------------------------------------------
# The mixer


class OutputNorm(RMSNorm):
    """Per-head RMSNorm, then the output gate: ``rmsnorm(x) * weight * silu(gate)`` (fla's
    FusedRMSNormGated; Mamba 2's gated norm applies the gate before normalising instead)."""

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * F.silu(gate)


@dataclass
class GDNCache:
    """Decode state of one layer: the delta-rule state (fp32) and the three convolutions' tails."""

    state: torch.Tensor  # [B, HV, K, V]
    q_tail: torch.Tensor  # [B, conv_size - 1, key_dim]
    k_tail: torch.Tensor
    v_tail: torch.Tensor  # [B, conv_size - 1, value_dim]


class GatedDeltaNet(nn.Module):
    def __init__(self, config: GatedDeltaNetConfig):
        super().__init__()
        self.config = config
        D, H, HV = config.d_model, config.n_heads, config.v_heads
        self.key_dim, self.value_dim = H * config.head_dim, HV * config.head_v_dim
        self.q_proj = nn.Linear(D, self.key_dim, bias=False)
        self.k_proj = nn.Linear(D, self.key_dim, bias=False)
        self.v_proj = nn.Linear(D, self.value_dim, bias=False)
        self.a_proj = nn.Linear(D, HV, bias=False)
        self.b_proj = nn.Linear(D, HV, bias=False)
        self.A_log = nn.Parameter(torch.empty(HV))
        self.dt_bias = nn.Parameter(torch.empty(HV))
        self.q_conv1d = ShortConv(self.key_dim, config.conv_size, bias=False)
        self.k_conv1d = ShortConv(self.key_dim, config.conv_size, bias=False)
        self.v_conv1d = ShortConv(self.value_dim, config.conv_size, bias=False)
        self.g_proj = nn.Linear(D, self.value_dim, bias=False)
        self.o_norm = OutputNorm(config.head_v_dim, config.norm_eps)
        self.o_proj = nn.Linear(self.value_dim, D, bias=False)
        self.reset_special_parameters()

    @torch.no_grad()
    def reset_special_parameters(self) -> None:
        """fla's initialisation: A ~ U(0, 16); dt log-uniform in [1e-3, 0.1] (floor 1e-4) stored as
        softplus^-1(dt); convolutions N(0, init_std) like every other weight."""
        self.A_log.copy_(torch.empty_like(self.A_log).uniform_(0, 16).log())
        lo, hi = math.log(1e-3), math.log(0.1)
        dt = (torch.rand_like(self.dt_bias) * (hi - lo) + lo).exp().clamp(min=1e-4)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        for conv in (self.q_conv1d, self.k_conv1d, self.v_conv1d):
            nn.init.normal_(conv.weight, mean=0.0, std=self.config.init_std)

    def forward(self, x: torch.Tensor, cache: GDNCache | None, start_pos: int, need_cache: bool) -> tuple[torch.Tensor, Any]:
        c = self.config
        B, T, _ = x.shape
        q, q_tail = self.q_conv1d(self.q_proj(x), None if cache is None else cache.q_tail)
        k, k_tail = self.k_conv1d(self.k_proj(x), None if cache is None else cache.k_tail)
        v, v_tail = self.v_conv1d(self.v_proj(x), None if cache is None else cache.v_tail)
        q = q.view(B, T, c.n_heads, c.head_dim)
        k = k.view(B, T, c.n_heads, c.head_dim)
        v = v.view(B, T, c.v_heads, c.head_v_dim)
        g = gdn_gate(self.a_proj(x), self.A_log, self.dt_bias)
        beta = self.b_proj(x).sigmoid()
        op = GDN_OPS[resolve_backend(c.backend, x.device)]
        o, state = op(q, k, v, g, beta, None if cache is None else cache.state, c.chunk_size)
        o = self.o_norm(o, self.g_proj(x).view(B, T, c.v_heads, c.head_v_dim))
        y = self.o_proj(o.reshape(B, T, self.value_dim))
        if not need_cache:
            return y, None
        return y, GDNCache(state, q_tail, k_tail, v_tail)


# ---------------------------------------------------------------------------------------------
# The model and its presets


@register_model("gated_deltanet")
class GatedDeltaNetLM(BackboneLM):
    """The shared backbone with a Gated DeltaNet mixer in every block."""

    config_class = GatedDeltaNetConfig
    kernels = (FLA,)
    backends = GDN_BACKENDS

    def make_mixer(self, layer_idx: int) -> nn.Module:
        return GatedDeltaNet(self.config)

    def backend_on(self, device: torch.device) -> str:
        return resolve_backend(self.config.backend, device)

    def kernel_settings(self, device: torch.device) -> dict[str, Any]:
        return chunk_settings(self.kernels, self.backend_on(device), self.config.chunk_size)

    presets = {
        "tiny": dict(n_layers=4, d_model=128, n_heads=2, head_dim=32, mlp_hidden=384, vocab_size=256),
        **{
            name: {**size, "vocab_size": LLAMA3_VOCAB, "n_heads": size["d_model"] // 256, "head_dim": 128}
            for name, size in PAPER_SIZES.items()
        },
    }
