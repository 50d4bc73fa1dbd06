"""Run the Triton kernel backends (flash-linear-attention, mamba-ssm, Liger) on the CPU.

Triton's interpreter (``TRITON_INTERPRET=1``) executes a kernel's Python source with numpy,
program by program, in exact fp32: slow, but the same kernel code a GPU compiles, so the kernel
tests compare our wrappers (layouts, argument names, gates, states) with the torch references on
every CI run, not only in a GPU slot. Triton 3.6-3.9's interpreter needs four adjustments to
run these packages' kernels, made by :func:`enable`:

- autotuning benchmarks each config on a GPU driver: every config is scored the same, so the
  first one runs;
- a loop ``for i in range(n)`` over a tensor bound yields tensors when compiled (fla calls
  ``i.to(tl.int64)`` on them) but Python ints when interpreted: the packages' modules get a
  ``range`` that yields tensors for tensor bounds;
- a scalar's ``__index__`` calls ``int()`` on a one-element array, which numpy >= 2.3 refuses;
- mamba-ssm enters ``torch.cuda.device(x.device.index)`` (a CPU tensor's index is None) and
  sizes a backward grid by ``torch.cuda.get_device_properties(device).multi_processor_count``
  (a CPU device gets 4: any count gives the same sums).

The interpreter is chosen when a module with kernels is imported (``@triton.jit`` returns an
interpreted function), Triton's own ``triton.language`` included, so ``TRITON_INTERPRET=1`` must
be set before Triton is first imported: tests/conftest.py sets it on machines without CUDA.
"""
from __future__ import annotations

import builtins
import contextlib
import importlib.util
import os
import sys
import types
from typing import Any

KERNEL_PACKAGES = ("fla", "mamba_ssm", "liger_kernel")


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _tensor_range(*bounds: Any) -> Any:
    import numpy as np
    import triton.language as tl
    from triton.runtime.interpreter import TensorHandle

    if not any(isinstance(b, tl.tensor) for b in bounds):
        return builtins.range(*bounds)
    ints = [int(b.handle.data.reshape(-1)[0]) if isinstance(b, tl.tensor) else int(b) for b in bounds]
    return (tl.tensor(TensorHandle(np.array([i], dtype=np.int32), tl.int32), tl.int32) for i in builtins.range(*ints))


def _patch_scalar_index() -> None:
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "lcbench_patched", False):
        return

    def patched(tensor: Any, scope: Any) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched.lcbench_patched = True  # type: ignore[attr-defined]
    interpreter._patch_lang_tensor = patched


def _patch_cuda_queries_for_cpu_tensors() -> None:
    import torch

    if getattr(torch.cuda.device, "lcbench_patched", False):
        return
    original_device, original_properties = torch.cuda.device, torch.cuda.get_device_properties

    def device(index: Any) -> Any:
        return contextlib.nullcontext() if index is None else original_device(index)

    def get_device_properties(device: Any = None) -> Any:
        if isinstance(device, torch.device) and device.type == "cpu":
            return types.SimpleNamespace(multi_processor_count=4)
        return original_properties(device)

    device.lcbench_patched = True  # type: ignore[attr-defined]
    torch.cuda.device, torch.cuda.get_device_properties = device, get_device_properties


def enable() -> str | None:
    """Ready Triton's interpreter for the kernel packages: None, or why it cannot run them here."""
    if not triton_installed():
        return "triton is not installed (pip install -e '.[ref]')"
    if os.environ.get("TRITON_INTERPRET") != "1":
        return "TRITON_INTERPRET=1 is not set (tests/conftest.py sets it where CUDA is absent)"
    import triton.language as tl
    from triton.runtime import autotuner

    if type(tl.sum).__name__ != "InterpretedFunction":
        return "triton was imported before TRITON_INTERPRET=1 was set, so its kernels are compiled ones"
    autotuner.Autotuner._bench = lambda self, *args, config, **kwargs: [0.0, 0.0, 0.0]
    _patch_scalar_index()
    _patch_cuda_queries_for_cpu_tensors()
    return None


def adapt_loaded_modules() -> None:
    """Give every loaded module of the kernel packages the tensor-yielding ``range``."""
    for name, module in list(sys.modules.items()):
        if module is not None and name.split(".")[0] in KERNEL_PACKAGES:
            module.__dict__.setdefault("range", _tensor_range)
