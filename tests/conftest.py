"""Shared fixtures: small configs of every registered architecture, and the devices kernel tests run on."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

if not torch.cuda.is_available():
    # Triton kernels run on this machine only through Triton's interpreter, which is chosen when
    # Triton is first imported (tests/triton_interpreter.py): before any test imports it.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from harness.api import registry  # noqa: E402
from tests import triton_interpreter  # noqa: E402

# Tiny models gain nothing from intra-op threads, and threads spin badly when cores are shared.
torch.set_num_threads(1)

# Small enough that each invariant runs in well under a second, with windows, chunks and
# mini-batches short enough that test sequences cross several of their boundaries.
SMALL = dict(d_model=64, n_heads=4, mlp_hidden=128)
ARCH_FIELDS = dict(window=16, mini_batch_size=16, chunk_size=16)


def small_config(arch: str, **overrides):
    fields = {f.name for f in dataclasses.fields(registry.get_model_class(arch).config_class) if f.init}  # not derived ones
    small = {k: v for k, v in {**SMALL, **ARCH_FIELDS}.items() if k in fields}
    if arch == "full_attention":
        small.pop("window", None)
    return registry.make_config(arch, "tiny", **{**small, **overrides})


def small_model(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    torch.manual_seed(seed)
    return registry.build_model(small_config(arch, **overrides)).to(dtype).eval()


ARCHS = registry.model_names()


class NewMemory(TorchDispatchMode):
    """Bytes of the fresh tensors the ops run under it make (views and in-place results excluded)."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        self.bytes += sum(t.untyped_storage().nbytes() for t in tree_leaves(out)
                          if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in given)
        return out


def close_ratio(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> float:
    """How much of ``torch.testing.assert_close``'s allowance the worst element uses (passes at
    <= 1): GPU tests record it, so the kit's summary shows each tolerance's measured margin."""
    a, e = actual.double(), expected.double().to(actual.device)
    return ((a - e).abs() / (atol + rtol * e.abs())).max().item()


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param


# ---------------------------------------------------------------------------------------------
# Kernel tests: each runs on CUDA (marked gpu: the GPU kit's `pytest -m gpu`) and, smaller, on the
# CPU through Triton's interpreter (FlexAttention through Inductor's CPU code), so every CI run
# compares the kernel backends with the references, not only a GPU slot.

GPU_ONLY = (pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))
# the interpreter computes masked-off lanes too (overflows there are never stored), and fla warns
# that it found no GPU
INTERPRETER_NOISE = (pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter"),
                     pytest.mark.filterwarnings("ignore:Triton is not supported on current platform:UserWarning"))


def kernel_cases(names: str, cuda: Sequence, cpu: Sequence) -> pytest.MarkDecorator:
    """Parametrize ``kernel_device`` and ``names`` with the ``cuda`` cases on a GPU and the
    ``cpu`` ones (smaller: the interpreter runs a kernel program by program) on the CPU."""
    as_tuple = (lambda case: case if isinstance(case, tuple) else (case,)) if names else (lambda case: ())
    cases = ([pytest.param("cuda", *as_tuple(c), marks=GPU_ONLY) for c in cuda]
             + [pytest.param("cpu", *as_tuple(c), marks=INTERPRETER_NOISE) for c in cpu])
    return pytest.mark.parametrize(",".join(["kernel_device", *filter(None, [names])]), cases, indirect=["kernel_device"])


@pytest.fixture
def kernel_device(request, monkeypatch) -> Iterator[torch.device]:
    """The device of a ``kernel_cases`` case. On the CPU, the Triton kernel backends are let run
    there (each ``Kernel`` otherwise refuses a CPU input), through Triton's interpreter, and
    ``auto`` picks them as on a GPU. FlexAttention is not (``auto`` would pick it for every
    windowed model): its tests let it run themselves."""
    if request.param == "cuda":
        yield torch.device("cuda")
        return
    reason = triton_interpreter.enable()
    if reason is not None:
        pytest.skip(f"Triton kernels cannot run on this CPU: {reason}")
    from baselines import gated_deltanet, linear_cross_entropy, mamba2

    for kernel in (gated_deltanet.FLA, *mamba2.KERNELS, linear_cross_entropy.LIGER):
        monkeypatch.setattr(kernel, "needs_cuda", False)
        kernel.imported()
    triton_interpreter.adapt_loaded_modules()
    yield torch.device("cpu")
