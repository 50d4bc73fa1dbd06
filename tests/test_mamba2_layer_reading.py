"""The whole Mamba 2 layer (input projection, causal convolution, dt, the SSD recurrence, D skip,
gated grouped RMSNorm, output projection) against an independent, token-by-token reading of the
paper's block (arXiv 2405.21060, Sec. 7.1 and Fig. 6, with mamba-ssm's ``Mamba2`` around it). The
SSD tests check the recurrence alone; this reading shares none of the layer's code, so a fault in
the layer around it (a split in the wrong order, a convolution reading the future, the gate
applied after the norm) is caught here."""
from __future__ import annotations

import pytest
import torch

from baselines import mamba2
from harness.api import registry


def silu(x: torch.Tensor) -> torch.Tensor:
    return x / (1 + torch.exp(-x))


def softplus(x: torch.Tensor) -> torch.Tensor:
    return torch.log1p(torch.exp(x))


def read_layer(mixer: mamba2.Mamba2Mixer, u: torch.Tensor) -> torch.Tensor:
    """y [T, D] for one sequence u [T, D], one token and one head at a time."""
    c = mixer.config
    T = u.size(0)
    E, H, P, G, N, K = c.d_inner, c.nheads, c.headdim, c.ngroups, c.d_state, c.d_conv
    proj = u @ mixer.in_proj.weight.T  # per token: z [E], x [E], B [G*N], C [G*N], dt [H]
    z, xBC, dt_raw = proj[:, :E], proj[:, E:E + E + 2 * G * N], proj[:, E + E + 2 * G * N:]
    w = mixer.conv1d.weight[:, 0]  # [channels, K]; tap j multiplies the input K - 1 - j steps back
    bias = mixer.conv1d.bias
    A = -torch.exp(mixer.A_log)
    S = torch.zeros(H, P, N, dtype=u.dtype)
    out = torch.zeros(T, c.d_model, dtype=u.dtype)
    for t in range(T):
        acc = bias.clone() if bias is not None else torch.zeros(xBC.size(1), dtype=u.dtype)
        for j in range(K):
            s = t - (K - 1) + j
            if s >= 0:
                acc = acc + w[:, j] * xBC[s]
        conv = silu(acc)
        x, B, C = conv[:E], conv[E:E + G * N], conv[E + G * N:]
        y = torch.zeros(E, dtype=u.dtype)
        for h in range(H):
            g = h // (H // G)
            dt = softplus(dt_raw[t, h] + mixer.dt_bias[h])
            x_h, B_g, C_g = x[h * P:(h + 1) * P], B[g * N:(g + 1) * N], C[g * N:(g + 1) * N]
            S[h] = torch.exp(dt * A[h]) * S[h] + dt * torch.outer(x_h, B_g)
            y[h * P:(h + 1) * P] = S[h] @ C_g + mixer.D[h] * x_h
        gated = y * silu(z[t])  # the gate before the norm (norm_before_gate=False)
        size = E // G
        normed = torch.cat([
            piece / torch.sqrt((piece * piece).mean() + mamba2.GATED_NORM_EPS)
            for piece in gated.split(size)
        ]) * mixer.norm.weight
        out[t] = normed @ mixer.out_proj.weight.T
    return out


@torch.no_grad()
@pytest.mark.parametrize("ngroups, chunk, d_conv", [(1, 4, 4), (2, 16, 3)])
def test_layer_equals_a_token_by_token_reading_of_the_paper(ngroups, chunk, d_conv):
    torch.manual_seed(0)
    config = registry.make_config("mamba2", "tiny", d_model=16, headdim=4, d_state=3, ngroups=ngroups,
                                  chunk_size=chunk, d_conv=d_conv, backend="torch")
    mixer = mamba2.Mamba2Mixer(config).double()
    for p in mixer.parameters():  # weights large enough that every part matters
        p.add_(torch.randn_like(p) * 0.3)
    u = torch.randn(2, 13, 16, dtype=torch.float64)
    y, _ = mixer(u, None, 0, need_cache=False)
    for b in range(2):
        torch.testing.assert_close(y[b], read_layer(mixer, u[b]), rtol=1e-9, atol=1e-10)
