"""A function of tensors replayed as CUDA graphs: one kernel launch sequence per call instead of
hundreds of Python-issued ones.

The first call with a new signature (tensor shapes, dtypes and devices, and every non-tensor
argument) runs the function a few times on a side stream (warm-up: cuBLAS handles, compiled
kernels, cached masks) and captures it; every call then copies its tensors into the captured
inputs, replays, and returns copies of the outputs (the next replay overwrites them). Nothing is
read back to the host. The function must not synchronise, allocate on the host per call, or
depend on tensor values through Python control flow: exactly what a replay would not redo.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from harness.api.errors import BackendUnavailableError


class CapturedFunction:
    def __init__(self, fn: Callable[..., Any], warmup: int = 2):
        self.fn, self.warmup = fn, warmup
        self.graphs: dict[Any, tuple[torch.cuda.CUDAGraph, list[Any], Any]] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        leaves, spec = tree_flatten((args, kwargs))
        key = (str(spec), tuple((t.shape, t.dtype, t.device) if isinstance(t, torch.Tensor) else t for t in leaves))
        if key not in self.graphs:
            self.graphs[key] = self._capture(leaves, spec)
        graph, static, outputs = self.graphs[key]
        for buffer, value in zip(static, leaves):
            if isinstance(buffer, torch.Tensor):
                buffer.copy_(value)
        graph.replay()
        return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, outputs)

    def _capture(self, leaves: list[Any], spec: Any) -> tuple[torch.cuda.CUDAGraph, list[Any], Any]:
        tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
        if not tensors or any(t.device.type != "cuda" for t in tensors):
            raise BackendUnavailableError("a CUDA graph needs CUDA tensors; use inner_step='eager' or 'compile' here")
        static = [t.clone() if isinstance(t, torch.Tensor) else t for t in leaves]
        args, kwargs = tree_unflatten(static, spec)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(*args, **kwargs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = self.fn(*args, **kwargs)
        return graph, static, outputs
