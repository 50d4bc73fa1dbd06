"""The chunked LM head + cross-entropy against autograd over the whole logits, and Liger's kernel
against it where Liger and a GPU are present."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from baselines import linear_cross_entropy as lce
from harness.api.errors import BackendUnavailableError
from harness.api.interface import next_token_nll
from tests.conftest import kernel_cases

V, D = 50, 16


def inputs(dtype: torch.dtype, device: str = "cpu", batch: int = 2, length: int = 9, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(batch, length, D, generator=gen).to(dtype)
    weight = (torch.randn(V, D, generator=gen) * 0.5).to(dtype)
    targets = torch.randint(0, V, (batch, length), generator=gen)
    loss_weights = torch.rand(batch, length, generator=gen)
    return h.to(device), weight.to(device), targets.to(device), loss_weights.to(device)


def autograd_reference(h, weight, targets, loss_weights):
    """What the reference inner step does: the whole logits, the fp32 loss, autograd to h."""
    leaf = h.detach().clone().requires_grad_()
    with torch.enable_grad():
        logits = F.linear(leaf, weight)
        nll = next_token_nll(logits, targets)
        (grad,) = torch.autograd.grad((nll * loss_weights.to(nll.dtype)).sum(), leaf)
    return nll.detach(), grad, logits.detach()


@pytest.mark.parametrize("chunk_rows", [1, 4, 0])  # 0: the default (everything in one chunk here)
def test_matches_autograd_in_float64(chunk_rows):
    h, weight, targets, loss_weights = inputs(torch.float64)
    nll, grad, logits = lce.linear_cross_entropy(h, weight, targets, loss_weights, keep_logits=True,
                                                 chunk_rows=chunk_rows)
    ref_nll, ref_grad, ref_logits = autograd_reference(h, weight, targets, loss_weights)
    torch.testing.assert_close(nll, ref_nll, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-12, atol=1e-14)
    assert (nll.dtype, grad.dtype, grad.shape) == (torch.float64, torch.float64, h.shape)
    nll_only, no_grad, no_logits = lce.linear_cross_entropy(h, weight, targets, chunk_rows=chunk_rows)
    assert no_grad is None and no_logits is None
    torch.testing.assert_close(nll_only, ref_nll, rtol=1e-12, atol=1e-12)


def test_bf16_follows_the_reference_casts():
    """bf16 logits, fp32 loss, the logits' gradient cast to bf16 before the projection: the
    reference's own rounding steps, so the two agree to fp32 rounding of the loss."""
    h, weight, targets, loss_weights = inputs(torch.bfloat16)
    nll, grad, logits = lce.linear_cross_entropy(h, weight, targets, loss_weights, keep_logits=True, chunk_rows=4)
    ref_nll, ref_grad, ref_logits = autograd_reference(h, weight, targets, loss_weights)
    assert nll.dtype == torch.float32 and grad.dtype == torch.bfloat16
    torch.testing.assert_close(nll, ref_nll, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=1e-2, atol=1e-4)  # one bf16 ulp of the sum
    assert torch.equal(logits, ref_logits)


class LargestOutput(TorchDispatchMode):
    """The most elements any single op produced while the mode was on."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_tensor_larger_than_a_chunk_of_logits_and_no_weight_gradient():
    h, weight, targets, loss_weights = inputs(torch.float32, batch=2, length=32)
    weight.requires_grad_()
    with LargestOutput() as ours:
        _, grad, _ = lce.linear_cross_entropy(h, weight, targets, loss_weights, chunk_rows=8)
    with LargestOutput() as reference:
        autograd_reference(h, weight, targets, loss_weights)
    assert ours.largest <= max(8 * V, h.numel())  # one chunk of logits at a time (or h's gradient)
    assert reference.largest == 2 * 32 * V > h.numel()  # the test sees what it guards against
    assert weight.grad is None and not grad.requires_grad


def test_liger_reports_why_it_cannot_run():
    h, weight, targets, _ = inputs(torch.float32)
    if not lce.liger_installed():
        assert "not installed" in lce.liger_unavailable_reason(h.device)
    else:
        assert "CUDA" in lce.liger_unavailable_reason(h.device)
    with pytest.raises(BackendUnavailableError, match="inner_loss 'liger'.*chunked"):
        lce.liger_grad(h, weight, targets, None)


@pytest.mark.skipif(not lce.liger_installed(), reason="needs liger-kernel")
# the CPU's atol: 4x the worst difference measured there (2.6e-9, gradients up to 3.4e-3); the
# interpreter's bf16 dots are wrong, so bf16 is checked on a GPU only
@kernel_cases("masked, dtype, vocab, rtol, atol", cuda=[(m, torch.bfloat16, 32768, 2e-2, 1e-5) for m in (False, True)],
              cpu=[(m, torch.float32, 1000, 1e-5, 1e-8) for m in (False, True)])
def test_liger_matches_ours(kernel_device, masked, dtype, vocab, rtol, atol):
    """Liger's gradient against ours: bf16 and a 32K vocabulary on a GPU (bf16's resolution),
    fp32 and a 1,000-token one through Triton's CPU interpreter."""
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(2, 256, 256, generator=gen).to(dtype).to(kernel_device)
    weight = (torch.randn(vocab, 256, generator=gen) * 0.05).to(dtype).to(kernel_device)
    targets = torch.randint(0, vocab, (2, 256), generator=gen).to(kernel_device)
    valid = (torch.rand(2, 256, generator=gen) > 0.1).to(kernel_device) if masked else None
    coef = (torch.ones(2, 256, device=kernel_device) if valid is None else valid.float())
    coef = coef / coef.sum(1, keepdim=True)
    _, ours, _ = lce.linear_cross_entropy(h, weight, targets, coef)
    theirs = lce.liger_grad(h, weight, targets, valid)
    torch.testing.assert_close(theirs.float(), ours.float(), rtol=rtol, atol=atol)
