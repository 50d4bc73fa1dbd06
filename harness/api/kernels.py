"""Optional kernel backends: whether one can run here, and if not, why.

A mixer may call kernels from an optional package (flash-linear-attention, mamba-ssm, PyTorch's
FlexAttention). :class:`Kernel` imports them once, on first need; any failure to import (package
missing, Triton without a driver, a release too old) makes the backend unavailable, never a
crash. :meth:`Kernel.unavailable_reason` is the one answer every mixer gives (``None``: it can
run), :meth:`Kernel.ops` the one error, :func:`pick_backend` resolves ``backend="auto"``, and
:func:`kernel_report` lists the kernels architectures declare (``lcbench list --kernels``).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from typing import Any

import torch

from harness.api.errors import BackendUnavailableError


class Kernel:
    """Backend ``name`` of mixer ``mixer``: ``load()`` imports its ops (raising on any failure),
    ``install`` says how to get them, ``fallback`` names the mixer's backend that runs anywhere;
    ``needs_cuda``: it runs on CUDA devices only; ``packages``: the distributions it comes from,
    whose installed versions :func:`kernel_report` shows without importing them."""

    def __init__(self, mixer: str, name: str, load: Callable[[], Any], install: str, fallback: str,
                 needs_cuda: bool = True, packages: Sequence[str] = ()):
        self.mixer, self.name, self.load, self.install = mixer, name, load, install
        self.fallback, self.needs_cuda, self.packages = fallback, needs_cuda, tuple(packages)
        self._imported: tuple[Any, str | None] | None = None

    def installed(self) -> str:
        """Each of :attr:`packages` with its installed version, or "not installed"."""
        found = []
        for package in self.packages:
            try:
                found.append(f"{package} {metadata.version(package)}")
            except metadata.PackageNotFoundError:
                found.append(f"{package} not installed")
        return ", ".join(found) or "-"

    def imported(self) -> tuple[Any, str | None]:
        """(ops, None), or (None, why the import failed). Imported once; :meth:`forget` retries."""
        if self._imported is None:
            try:
                self._imported = self.load(), None
            except Exception as exc:  # noqa: BLE001 - any failure means unavailable, with its reason
                self._imported = None, f"{type(exc).__name__}: {exc}"
        return self._imported

    def forget(self) -> None:
        """Drop the cached import (after installing a package, or in tests)."""
        self._imported = None

    def unavailable_reason(self, device: torch.device) -> str | None:
        """Why the backend cannot run on ``device``, or None when it can."""
        if self.needs_cuda and device.type != "cuda":
            return f"it needs a CUDA device (the input is on {device.type})"
        error = self.imported()[1]
        return None if error is None else f"importing it failed ({error}); install it with `{self.install}`"

    def available(self, device: torch.device) -> bool:
        return self.unavailable_reason(device) is None

    def ops(self, device: torch.device) -> Any:
        """The imported ops, or :class:`BackendUnavailableError` saying why not and what to use instead."""
        reason = self.unavailable_reason(device)
        if reason is not None:
            raise BackendUnavailableError(
                f"{self.mixer} backend {self.name!r} is unavailable: {reason}. Use backend={self.fallback!r} "
                "(runs anywhere) or 'auto' (the fastest backend that runs here)"
            )
        return self.imported()[0]


def pick_backend(requested: str, kernels: Sequence[Kernel], device: torch.device, fallback: str) -> str:
    """The backend that runs for a config's ``requested`` one: ``auto`` -> the first of ``kernels``
    that runs on ``device``, else ``fallback``; a backend named outright is kept (a kernel that
    cannot run raises when called, through :meth:`Kernel.ops`)."""
    if requested != "auto":
        return requested
    return next((k.name for k in kernels if k.available(device)), fallback)


def kernel_report(kernels_by_arch: Mapping[str, Sequence[Kernel]], device: torch.device) -> list[dict[str, str]]:
    """One row per kernel backend the architectures declare (``LCModel.kernels``; one shared by
    several, FlexAttention say, once with all of them): its packages' installed versions, whether
    it runs on ``device``, and if not, why. Asking imports each package that can run there
    (seconds for Triton packages on a GPU)."""
    users: dict[int, tuple[Kernel, list[str]]] = {}
    for arch, kernels in kernels_by_arch.items():
        for kernel in kernels:
            users.setdefault(id(kernel), (kernel, []))[1].append(arch)
    rows = []
    for kernel, archs in users.values():
        why = kernel.unavailable_reason(device)
        rows.append({"mixer": kernel.mixer, "backend": kernel.name, "used by": ", ".join(archs),
                     "installed": kernel.installed(), "runs here": "yes" if why is None else f"no: {why}"})
    return rows
