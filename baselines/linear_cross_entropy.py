"""LM head + next-token cross-entropy, chunked over tokens, with the gradient w.r.t. the hidden
states only.

TTT-E2E's inner step needs, for every mini-batch, the per-token NLL of ``h @ W.T`` and the
gradient of a weighted sum of it with respect to ``h``; never the LM head's weight gradient (the
head is no fast weight). Autograd over ``F.linear`` + ``F.cross_entropy`` keeps several
``[tokens, vocab]`` tensors alive at once (the logits, their fp32 copy, the log-softmax, its
gradient); here each chunk of rows makes one logits tensor, turns it into probabilities and then
into the logits' gradient in place, and projects that back onto ``h``: at most ``rows x vocab``
values live at a time, and none outlives its chunk. A module of its own because it is an op with
its own contract and tests, not TTT-E2E's model code.

Numerics follow the reference (``harness.interface.next_token_nll`` of ``F.linear(h, W)``, then
autograd): logits in h's dtype, softmax and loss in fp32 (fp64 stays fp64), the logits' gradient
cast back to h's dtype before the projection, as autograd's cast-backward does.

Liger Kernel's fused linear cross-entropy (Triton, GPU) serves the same purpose when installed;
:func:`liger_grad` wraps it for the same contract.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch
import torch.nn.functional as F

from harness.api.errors import BackendUnavailableError
from harness.api.kernels import Kernel

CHUNK_ELEMENTS = 1 << 25  # logits per chunk (128 MiB in fp32): 256 rows of Llama-3's 128256 vocabulary
IGNORE = -100  # Liger's ignore_index: targets that leave the loss


def rows_per_chunk(vocab: int) -> int:
    return max(1, CHUNK_ELEMENTS // vocab)


@torch.no_grad()
def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         loss_weights: torch.Tensor | None = None, keep_logits: bool = False,
                         chunk_rows: int = 0) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Per-token NLL of the logits ``h @ weight.T`` against ``targets``; with ``loss_weights``
    (the loss's derivative w.r.t. each token's NLL), the loss's gradient w.r.t. ``h``.

    h ``[..., D]``, weight ``[V, D]``, targets and loss_weights ``[...]``. Returns
    (nll ``[...]`` in fp32 or fp64, grad_h like h or None, logits ``[..., V]`` if ``keep_logits``).
    ``chunk_rows``: tokens per chunk (0: :data:`CHUNK_ELEMENTS` logits)."""
    flat_h, flat_targets = h.reshape(-1, h.size(-1)), targets.reshape(-1, 1)
    n, vocab = flat_targets.size(0), weight.size(0)
    wide = torch.promote_types(h.dtype, torch.float32)
    rows = chunk_rows or rows_per_chunk(vocab)
    nll = torch.empty(n, dtype=wide, device=h.device)
    grad = None if loss_weights is None else torch.empty_like(flat_h)
    coef = None if loss_weights is None else loss_weights.reshape(-1, 1).to(wide)
    logits_out = flat_h.new_empty(n, vocab) if keep_logits else None
    for start in range(0, n, rows):
        end = min(start + rows, n)
        logits = F.linear(flat_h[start:end], weight)
        if keep_logits:
            logits_out[start:end] = logits
        z = logits.to(wide)  # worked on in place below (logits_out holds its own copy)
        lse = torch.logsumexp(z, -1, keepdim=True)
        target = flat_targets[start:end]
        nll[start:end] = (lse - z.gather(1, target)).squeeze(1)
        if grad is not None:
            z.sub_(lse).exp_()  # softmax
            z.scatter_add_(1, target, torch.full(target.shape, -1.0, dtype=wide, device=z.device))  # - one-hot
            z.mul_(coef[start:end])
            grad[start:end] = z.to(h.dtype) @ weight
    return (nll.view(targets.shape), None if grad is None else grad.view(h.shape),
            None if logits_out is None else logits_out.view(*targets.shape, vocab))


def liger_installed() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def _import_liger() -> Callable[..., torch.Tensor]:
    """Liger Kernel's fused linear cross-entropy, imported on first use: the import takes seconds
    (measured 5.7 s, liger-kernel 0.8.5), which every user of TTT-E2E would pay otherwise."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    return liger_fused_linear_cross_entropy


LIGER = Kernel("ttt_e2e inner_loss", "liger", _import_liger, install="pip install liger-kernel", fallback="chunked",
               packages=("liger-kernel", "triton"))


def liger_unavailable_reason(device: torch.device) -> str:
    """Why Liger's kernel cannot run here ("" when it can)."""
    if not liger_installed():
        return "liger-kernel is not installed (pip install liger-kernel)"
    return LIGER.unavailable_reason(device) or ""


def liger_grad(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
               valid: torch.Tensor | None) -> torch.Tensor:
    """The gradient w.r.t. ``h [B, T, D]`` of the sum over sequences of each one's mean NLL over
    its ``valid`` targets (all when None), by Liger's fused kernel, which computes it during its
    forward pass (reduction "sum", one call per sequence). Liger reads the number of counted
    targets back to the host: one synchronisation per call."""
    reason = liger_unavailable_reason(h.device)
    if reason:
        raise BackendUnavailableError(f"inner_loss 'liger': {reason}; use inner_loss='chunked'")
    counted = targets if valid is None else targets.masked_fill(~valid, IGNORE)
    per_sequence = torch.full(targets.shape[:1], targets.size(1), device=h.device) if valid is None else valid.sum(1)
    with torch.enable_grad():
        leaf = h.detach().requires_grad_()
        # the weight detached: Liger then computes no weight gradient
        loss = sum(LIGER.imported()[0](leaf[b], weight.detach(), counted[b], ignore_index=IGNORE,
                                    reduction="sum") / per_sequence[b].clamp(min=1)
                   for b in range(h.size(0)))
        (grad,) = torch.autograd.grad(loss, leaf)
    return grad
