"""Mamba 2's SSD (state space duality) in plain PyTorch: the chunked parallel form and one step.

The recurrence, per head h with state ``S [P, N]`` (P = head dim, N = state size)::

    S_t = exp(dt_t * A) * S_{t-1} + dt_t * x_t B_t^T        x_t [P], B_t [N], dt_t > 0, A < 0
    y_t = S_t C_t + D * x_t                                   C_t [N]

B and C are shared by groups of heads: head h reads group ``h // (H // G)`` (mamba-ssm's layout).

``ssd_chunked`` cuts the sequence into chunks of ``chunk_size`` tokens. Inside a chunk it is
quadratic, like masked linear attention with a decay mask; across chunks it carries the state,
so a call that starts from ``initial_state`` continues a sequence exactly. A length that is
not a multiple of the chunk is padded with dt = 0, x = 0 tokens, which leave the state
untouched. It computes in fp32 (fp64 for fp64 inputs) whatever the input dtype and autocast.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def upcast(t: torch.Tensor) -> torch.Tensor:
    """``t`` in fp32, or fp64 if it is fp64: the precision SSD is computed in."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def decay_matrix(log_decay_cumsum: torch.Tensor) -> torch.Tensor:
    """``[..., L]`` cumulative log decays -> ``[..., L, L]`` with ``exp(cs[t] - cs[s])`` for
    ``s <= t`` and 0 above the diagonal (masked before the exp, so nothing overflows)."""
    L = log_decay_cumsum.size(-1)
    diff = log_decay_cumsum[..., :, None] - log_decay_cumsum[..., None, :]
    causal = torch.ones(L, L, dtype=torch.bool, device=diff.device).tril()
    return diff.masked_fill(~causal, float("-inf")).exp()


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SSD over a whole sequence, chunk by chunk.

    ``x [b, T, H, P]``, ``dt [b, T, H]`` (after softplus), ``A [H]`` (negative),
    ``B, C [b, T, G, N]``, ``D [H]``, ``initial_state [b, H, P, N]``.
    Returns ``y [b, T, H, P]`` in x's dtype and the final state ``[b, H, P, N]`` (fp32 or fp64).
    """
    b, T, H, P = x.shape
    G, N = B.shape[-2:]
    R = H // G  # heads per group
    dtype = torch.promote_types(x.dtype, torch.float32)
    with torch.autocast(x.device.type, enabled=False):
        L = max(1, min(chunk_size, T))
        pad = (-T) % L
        nc = (T + pad) // L

        def chunks(t: torch.Tensor) -> torch.Tensor:  # [b, T, ...] -> [b, nc, L, ...]
            t = t.to(dtype)
            if pad:
                t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
            return t.reshape(b, nc, L, *t.shape[2:])

        xc = chunks(x).reshape(b, nc, L, G, R, P)
        dtc = chunks(dt).reshape(b, nc, L, G, R)
        Bc, Cc = chunks(B), chunks(C)  # [b, nc, L, G, N]
        log_decay = (dtc * A.to(dtype).view(G, R)).cumsum(2)  # [b, nc, L, G, R], within chunk
        cs = log_decay.permute(0, 1, 3, 4, 2)  # [b, nc, G, R, L]
        xdt = xc * dtc[..., None]  # [b, nc, L, G, R, P]

        # 1. Inside each chunk: y_t += sum_{s<=t} (C_t . B_s) exp(cs_t - cs_s) dt_s x_s.
        CB = torch.einsum("bclgn,bcsgn->bcgls", Cc, Bc)  # [b, nc, G, L, L]
        scores = CB[:, :, :, None] * decay_matrix(cs)  # [b, nc, G, R, L, L]
        y = torch.einsum("bcgrls,bcsgrp->bclgrp", scores, xdt)

        # 2. What each chunk adds to the state by its end.
        to_end = (cs[..., -1:] - cs).exp()  # [b, nc, G, R, L]
        chunk_states = torch.einsum("bclgrp,bclgn->bcgrpn", xdt * to_end.permute(0, 1, 4, 2, 3)[..., None], Bc)

        # 3. Carry the state across chunks (sequential in the number of chunks only).
        chunk_decay = cs[..., -1].exp()[..., None, None]  # [b, nc, G, R, 1, 1]
        state = (
            x.new_zeros(b, G, R, P, N, dtype=dtype)
            if initial_state is None
            else initial_state.to(dtype).reshape(b, G, R, P, N)
        )
        entering = []
        for decay_c, state_c in zip(chunk_decay.unbind(1), chunk_states.unbind(1)):  # unbind: one backward op
            entering.append(state)
            state = decay_c * state + state_c

        # 4. The state entering a chunk, read by its tokens: y_t += exp(cs_t) S_prev C_t.
        y = y + torch.einsum("bclgn,bcgrpn->bclgrp", Cc, torch.stack(entering, 1)) * log_decay.exp()[..., None]

        y = y.reshape(b, nc * L, H, P)[:, :T]
        if D is not None:
            y = y + x.to(dtype) * D.to(dtype)[:, None]
    return y.to(x.dtype), state.reshape(b, H, P, N)


def ssd_step(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: ``state [b, H, P, N]``, ``x [b, H, P]``, ``dt [b, H]`` (after softplus),
    ``A [H]``, ``B, C [b, G, N]``. Returns ``(y [b, H, P] in x's dtype, new state)``."""
    H, G = x.size(1), B.size(1)
    dtype = state.dtype
    with torch.autocast(x.device.type, enabled=False):
        Bh = B.to(dtype).repeat_interleave(H // G, dim=1)  # [b, H, N]
        Ch = C.to(dtype).repeat_interleave(H // G, dim=1)
        dt = dt.to(dtype)
        xf = x.to(dtype)
        decay = (dt * A.to(dtype)).exp()[..., None, None]
        state = decay * state + (xf * dt[..., None])[..., None] * Bh[:, :, None, :]
        y = torch.einsum("bhpn,bhn->bhp", state, Ch)
        if D is not None:
            y = y + xf * D.to(dtype)[:, None]
    return y.to(x.dtype), state
