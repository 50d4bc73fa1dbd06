"""Shared fixtures: small configs of every registered architecture."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from harness.api import registry

# Tiny models gain nothing from intra-op threads, and threads spin badly when cores are shared.
torch.set_num_threads(1)

# Small enough that each invariant runs in well under a second, with windows, chunks and
# mini-batches short enough that test sequences cross several of their boundaries.
SMALL = dict(d_model=64, n_heads=4, mlp_hidden=128)
ARCH_FIELDS = dict(window=16, mini_batch_size=16, chunk_size=16)


def small_config(arch: str, **overrides):
    fields = {f.name for f in dataclasses.fields(registry.get_model_class(arch).config_class)}
    small = {k: v for k, v in {**SMALL, **ARCH_FIELDS}.items() if k in fields}
    if arch == "full_attention":
        small.pop("window", None)
    return registry.make_config(arch, "tiny", **{**small, **overrides})


def small_model(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    torch.manual_seed(seed)
    return registry.build_model(small_config(arch, **overrides)).to(dtype).eval()


ARCHS = registry.model_names()


def close_ratio(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> float:
    """How much of ``torch.testing.assert_close``'s allowance the worst element uses (passes at
    <= 1): GPU tests record it, so the kit's summary shows each tolerance's measured margin."""
    a, e = actual.double(), expected.double().to(actual.device)
    return ((a - e).abs() / (atol + rtol * e.abs())).max().item()


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param
