"""The short causal convolution Mamba 2, Gated DeltaNet and the backbone's input_conv share."""
from __future__ import annotations

import torch

from baselines.short_conv import ShortConv


def test_a_tail_in_another_dtype_continues_the_input_in_the_inputs_dtype():
    """A carried tail (the last K-1 inputs of a decode state) kept in float64 continues a float32
    input: it is read in the input's dtype, as if the whole sequence had been one call."""
    torch.manual_seed(0)
    conv = ShortConv(4, 3)
    x = torch.randn(2, 7, 4)
    whole, _ = conv(x)
    _, tail = conv(x[:, :5])
    y, _ = conv(x[:, 5:], tail.double())
    assert y.dtype == torch.float32 and torch.allclose(y, whole[:, 5:], atol=1e-6)
