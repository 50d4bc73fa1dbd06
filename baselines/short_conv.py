"""Short causal depthwise convolution, shared by Mamba 2 and Gated DeltaNet.

A subclass of ``nn.Conv1d`` so parameter names and shapes (``weight [C, 1, K]``, optional
``bias [C]``) match mamba-ssm's ``conv1d`` and flash-linear-attention's ``ShortConvolution``.
The carried state is the last K-1 inputs, so a chunk continues a sequence exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ShortConv(nn.Conv1d):
    def __init__(self, channels: int, kernel_size: int, bias: bool = False, activation: bool = True):
        super().__init__(channels, channels, kernel_size, groups=channels, bias=bias, padding=0)
        self.activation = activation

    def forward(self, x: torch.Tensor, tail: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [B, T, C]``; ``tail [B, K-1, C]`` the previous inputs (zeros at the start).
        Returns ``(silu(conv(x)) [B, T, C], new tail)``."""
        K = self.kernel_size[0]
        if tail is None:
            tail = x.new_zeros(x.size(0), K - 1, x.size(2))
        full = torch.cat([tail.to(x.dtype), x], dim=1)
        y = F.conv1d(full.transpose(1, 2), self.weight, self.bias, groups=self.groups).transpose(1, 2)
        if self.activation:
            y = F.silu(y)
        # a copy, not a view: a view keeps the whole [B, T + K - 1, C] input alive in a decode
        # state (GiBs after a 128K prefill), unseen by state_bytes and copied whole by clone_state
        return y, full[:, full.size(1) - (K - 1) :].clone()
