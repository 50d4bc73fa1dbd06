"""Reading and generating through the model interface, shared by tasks and adapters.

:func:`stream_token_losses` and :func:`continue_state` use the optional ``forward_chunk(tokens,
state) -> (logits, state)`` capability when a model has it and fall back to the plain contract;
:func:`greedy_decode` is the one greedy generation loop (``decode_step`` per token).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from harness.api.interface import LCModel, next_token_nll


def has_chunks(model: LCModel) -> bool:
    return callable(getattr(model, "forward_chunk", None))


def continue_state(model: LCModel, state: Any, tokens: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Feed ``tokens [B, k]`` after ``state``: (logits ``[B, k, V]`` for the positions after each
    token, new state). One ``forward_chunk`` call when the model has it, else ``decode_step``s."""
    if tokens.size(1) == 0:
        raise ValueError("continue_state needs at least one token")
    if has_chunks(model):
        return model.forward_chunk(tokens, state)
    logits = []
    for i in range(tokens.size(1)):
        step, state = model.decode_step(state, tokens[:, i])
        logits.append(step)
    return torch.stack(logits, 1), state


def stream_token_losses(model: LCModel, tokens: torch.Tensor, chunk: int = 0) -> torch.Tensor:
    """Per-token NLL ``[B, T-1]`` (float32) of ``tokens [B, T]``.

    With ``chunk > 0`` and a model that has ``forward_chunk``, the sequence is read in pieces of
    ``chunk`` tokens carrying the state, so activation and logit memory stay bounded by the piece
    (the state itself may grow: a full-attention KV cache does). Otherwise ``token_losses``."""
    B, T = tokens.shape
    if T < 2:
        return tokens.new_zeros(B, 0, dtype=torch.float32)
    if chunk <= 0 or T <= chunk or not has_chunks(model):
        return model.token_losses(tokens).float()
    losses = []
    state, carry = None, None  # carry: logits [B, V] of the position before the piece
    for start in range(0, T, chunk):
        piece = tokens[:, start : start + chunk]
        logits, state = model.forward_chunk(piece, state)
        if carry is not None:
            losses.append(next_token_nll(carry[:, None], piece[:, :1]).float())
        if piece.size(1) > 1:
            losses.append(next_token_nll(logits[:, :-1], piece[:, 1:]).float())
        carry = logits[:, -1]
        del logits
    return torch.cat(losses, 1)


def greedy_decode(model: LCModel, logits: torch.Tensor, state: Any, max_new: int, *, eos: int | None = None,
                  stop: Callable[[list[int]], bool] | None = None) -> list[int]:
    """Greedy continuation of the first sequence, from its next-token ``logits [B, V]`` and ``state``.

    Up to ``max_new`` tokens; generation ends before ``eos`` (not kept) or after the token for
    which ``stop(generated)`` is true (kept). One ``decode_step`` per kept token, none after the last."""
    generated: list[int] = []
    for _ in range(max_new):
        token = logits.argmax(-1)
        if eos is not None and int(token[0]) == eos:
            break
        generated.append(int(token[0]))
        if len(generated) == max_new or (stop is not None and stop(generated)):
            break
        logits, state = model.decode_step(state, token)
    return generated
