"""The whole Gated DeltaNet layer (projections, short convolutions, gate, beta, norms, output gate)
against an independent, token-by-token reading of the paper's equations (arXiv 2412.06464, Eq. 10
and Sec. 3.3, with fla's layer around it). The backends' consistency tests change together when
the layer around the delta rule is wrong (a missing sigmoid on beta, a convolution reading the
future); this reading shares none of the layer's code."""
from __future__ import annotations

import math

import pytest
import torch

import baselines.gated_deltanet as gdn
from harness.api import registry


def silu(x: float | torch.Tensor):
    return x / (1 + torch.exp(-x))


def read_layer(layer: gdn.GatedDeltaNet, x: torch.Tensor) -> torch.Tensor:
    """y [T, D] for one sequence x [T, D], one token at a time, in the paper's [V, K] state layout."""
    c = layer.config
    T = x.size(0)
    H, HV, K, V = c.n_heads, c.v_heads, c.head_dim, c.head_v_dim
    W = {name: getattr(layer, name).weight for name in ("q_proj", "k_proj", "v_proj", "a_proj", "b_proj",
                                                          "g_proj", "o_proj")}
    convs = {"q": layer.q_conv1d.weight[:, 0], "k": layer.k_conv1d.weight[:, 0], "v": layer.v_conv1d.weight[:, 0]}
    raw = {"q": x @ W["q_proj"].T, "k": x @ W["k_proj"].T, "v": x @ W["v_proj"].T}
    width = c.conv_size
    S = torch.zeros(HV, V, K, dtype=x.dtype)  # S_t [V, K] per value head
    out = torch.zeros(T, c.d_model, dtype=x.dtype)
    for t in range(T):
        # causal depthwise convolution: tap j of the kernel multiplies input t - (width - 1) + j
        conv = {}
        for name, seq in raw.items():
            acc = torch.zeros(seq.size(1), dtype=x.dtype)
            for j in range(width):
                s = t - (width - 1) + j
                if s >= 0:
                    acc = acc + convs[name][:, j] * seq[s]
            conv[name] = silu(acc)
        o_heads = []
        for hv in range(HV):
            h = hv // (HV // H)
            q = conv["q"][h * K:(h + 1) * K]
            k = conv["k"][h * K:(h + 1) * K]
            v = conv["v"][hv * V:(hv + 1) * V]
            q = q / torch.sqrt((q * q).sum() + gdn.L2NORM_EPS) / math.sqrt(K)
            k = k / torch.sqrt((k * k).sum() + gdn.L2NORM_EPS)
            a = (x[t] @ W["a_proj"][hv]) + layer.dt_bias[hv]
            alpha = torch.exp(-torch.exp(layer.A_log[hv]) * torch.log1p(torch.exp(a)))  # decay in (0, 1)
            beta = 1 / (1 + torch.exp(-(x[t] @ W["b_proj"][hv])))
            S[hv] = alpha * S[hv] @ (torch.eye(K, dtype=x.dtype) - beta * torch.outer(k, k)) + beta * torch.outer(v, k)
            o = S[hv] @ q
            o = o / torch.sqrt((o * o).mean() + c.norm_eps) * layer.o_norm.weight
            gate = x[t] @ W["g_proj"][hv * V:(hv + 1) * V].T
            o_heads.append(o * silu(gate))
        out[t] = torch.cat(o_heads) @ W["o_proj"].T
    return out


@torch.no_grad()
@pytest.mark.parametrize("num_v_heads, chunk, expand_v, conv_size", [(0, 4, 2.0, 4), (4, 16, 2.0, 4), (4, 3, 1.5, 3)])
def test_layer_equals_a_token_by_token_reading_of_the_paper(num_v_heads, chunk, expand_v, conv_size):
    torch.manual_seed(0)
    config = registry.make_config("gated_deltanet", "tiny", d_model=16, n_heads=2, head_dim=4, chunk_size=chunk,
                                  num_v_heads=num_v_heads, expand_v=expand_v, conv_size=conv_size, backend="torch")
    layer = gdn.GatedDeltaNet(config).double()
    for p in layer.parameters():  # weights large enough that every part matters (init_std is 0.02)
        p.add_(torch.randn_like(p) * 0.5)
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    y, _ = layer(x, None, 0, need_cache=False)
    for b in range(2):
        torch.testing.assert_close(y[b], read_layer(layer, x[b]), rtol=1e-9, atol=1e-10)
