"""The attention layer (projections, QK-norm, RoPE, grouped KV heads, causal or sliding-window
softmax, output projection) and the backbone around it (embedding, sandwich norms, SwiGLU MLP,
final norm, tied head) against an independent, query-by-query reading of the equations (Llama's
attention with RoPE, arXiv 2104.09864 Eq. 34; QK-norm and sandwich norms as in TTT-E2E's code).
The op tests check the softmax alone on given q, k, v; this reading shares none of the layer's
code, so a fault around it (RoPE's pairs or frequencies, the norm after RoPE, a query head
reading the wrong KV head) is caught here."""
from __future__ import annotations

import math

import pytest
import torch

from baselines import attention
from harness.api import registry


def rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean() + eps) * weight


def rotate(x: torch.Tensor, pos: int, theta: float) -> torch.Tensor:
    """RoPE: coordinates i and i + Dh/2 form a complex number, turned by pos * theta^(-2i/Dh)."""
    half = x.size(0) // 2
    z = torch.complex(x[:half], x[half:])
    angles = pos * theta ** (-2 * torch.arange(half, dtype=torch.float64) / x.size(0))
    turned = z * torch.polar(torch.ones_like(angles), angles)
    return torch.cat([turned.real, turned.imag])


def read_attention(layer: attention.Attention, x: torch.Tensor) -> torch.Tensor:
    """y [T, D] for one sequence x [T, D] at positions 0.., one query and one head at a time."""
    c = layer.config
    T = x.size(0)
    H, KV, Dh = c.n_heads, c.kv_heads, c.head_dim

    def head(weight: torch.Tensor, t: int, h: int) -> torch.Tensor:
        return weight[h * Dh:(h + 1) * Dh] @ x[t]

    def q_or_k(weight: torch.Tensor, norm: str, t: int, h: int) -> torch.Tensor:
        v = head(weight, t, h)
        if c.qk_norm:  # before RoPE
            v = rms(v, getattr(layer, norm).weight, c.norm_eps)
        return rotate(v, t, c.rope_theta)

    out = torch.zeros(T, c.d_model, dtype=x.dtype)
    for t in range(T):
        heads = []
        for h in range(H):
            g = h // (H // KV)  # the KV head this query head reads
            q = q_or_k(layer.q_proj.weight, "q_norm", t, h)
            seen = [s for s in range(t + 1) if not c.window or t - s < c.window]
            scores = torch.stack([q @ q_or_k(layer.k_proj.weight, "k_norm", s, g) for s in seen]) / math.sqrt(Dh)
            weights = torch.exp(scores - scores.max())
            weights = weights / weights.sum()
            heads.append(sum(w * head(layer.v_proj.weight, s, g) for w, s in zip(weights, seen)))
        out[t] = layer.o_proj.weight @ torch.cat(heads)
    return out


def read_model(model, tokens: torch.Tensor) -> torch.Tensor:
    """logits [T, V]: embed, then per block x += post(attn(pre(x))), x += post(mlp(pre(x))), norm, head."""
    c = model.config
    x = model.embed.weight[tokens]
    for block in model.blocks:
        def norm(name: str, h: torch.Tensor) -> torch.Tensor:
            return torch.stack([rms(row, getattr(block, name).weight, c.norm_eps) for row in h])

        post = (lambda name, h: norm(name, h)) if c.sandwich_norm else (lambda name, h: h)
        x = x + post("mixer_post_norm", read_attention(block.mixer, norm("mixer_norm", x)))
        m = norm("mlp_norm", x)
        mlp = block.mlp
        hidden = torch.nn.functional.silu(m @ mlp.gate_proj.weight.T) * (m @ mlp.up_proj.weight.T)
        x = x + post("mlp_post_norm", hidden @ mlp.down_proj.weight.T)
    x = torch.stack([rms(row, model.norm.weight, c.norm_eps) for row in x])
    return x @ model.lm_head.weight.T


@torch.no_grad()
@pytest.mark.parametrize("backend", ["torch", "sdpa"])
@pytest.mark.parametrize("n_kv_heads, window, qk_norm", [(0, 0, True), (2, 0, True), (2, 3, False), (1, 5, True)])
def test_layer_equals_a_query_by_query_reading(backend, n_kv_heads, window, qk_norm):
    torch.manual_seed(0)
    arch = "swa" if window else "full_attention"
    config = registry.make_config(arch, "tiny", d_model=16, n_heads=4, n_kv_heads=n_kv_heads, window=window,
                                  qk_norm=qk_norm, rope_theta=50.0, backend=backend)
    layer = attention.Attention(config).double()
    for p in layer.parameters():  # weights far from init, so that every part matters
        p.add_(torch.randn_like(p) * 0.5)
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    y, _ = layer(x, None, 0, need_cache=False)
    for b in range(2):
        torch.testing.assert_close(y[b], read_attention(layer, x[b]), rtol=1e-9, atol=1e-10)


@torch.no_grad()
@pytest.mark.parametrize("sandwich_norm", [True, False])
def test_backbone_equals_a_reading_of_its_blocks(sandwich_norm):
    torch.manual_seed(0)
    model = registry.create_model("full_attention", "tiny", d_model=16, n_heads=2, n_layers=2, mlp_hidden=24,
                                  vocab_size=32, sandwich_norm=sandwich_norm, rope_theta=50.0).double()
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.3)
    tokens = torch.randint(0, 32, (1, 9))
    torch.testing.assert_close(model(tokens)[0], read_model(model, tokens[0]), rtol=1e-9, atol=1e-9)
