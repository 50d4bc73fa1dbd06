"""Optional kernel backends: whether one can run here, and if not, why.

A mixer may call kernels from an optional package (flash-linear-attention, mamba-ssm, PyTorch's
FlexAttention). :class:`Kernel` imports them once, on first need; any failure to import (package
missing, Triton without a driver, a release too old) makes the backend unavailable, never a
crash. :meth:`Kernel.unavailable_reason` is the one answer every mixer gives (``None``: it can
run), :meth:`Kernel.ops` the one error (:func:`refusals` the same, said before a run),
:func:`pick_backend` resolves ``backend="auto"``, and :func:`kernel_report` lists the kernels
architectures declare (``lcbench list --kernels``).
A chunked kernel that takes only some chunk lengths runs another for a config's that it cannot
(:meth:`Kernel.chunk_kwargs`): it says so once, and :func:`chunk_settings` is what a run records.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from typing import Any, NamedTuple

import torch

from harness.api.errors import BackendUnavailableError


class ChunkSizeWarning(UserWarning):
    """A kernel runs another chunk length than the config's: the same math, other rounding and speed."""


class Kernel:
    """Backend ``name`` of mixer ``mixer``: ``load()`` imports its ops (raising on any failure),
    ``install`` says how to get them, ``fallback`` names the mixer's backend that runs anywhere;
    ``needs_cuda``: it runs on CUDA devices only; ``packages``: the distributions it comes from,
    whose installed versions :func:`kernel_report` shows without importing them; ``chunk_sizes``:
    the chunk lengths its chunked ops take, the largest its default (empty: any, or not chunked)."""

    def __init__(self, mixer: str, name: str, load: Callable[[], Any], install: str, fallback: str,
                 needs_cuda: bool = True, packages: Sequence[str] = (), chunk_sizes: Sequence[int] = ()):
        self.mixer, self.name, self.load, self.install = mixer, name, load, install
        self.fallback, self.needs_cuda, self.packages = fallback, needs_cuda, tuple(packages)
        self.chunk_sizes = tuple(chunk_sizes)
        self._imported: tuple[Any, str | None] | None = None
        self._chunk_sizes_told: set[int] = set()

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

    def device_reason(self, device: torch.device) -> str | None:
        """Why the backend cannot run on a device of ``device``'s kind, whatever is installed."""
        if self.needs_cuda and device.type != "cuda":
            return f"it needs a CUDA device (the device is {device.type})"
        return None

    def unavailable_reason(self, device: torch.device) -> str | None:
        """Why the backend cannot run on ``device``, or None when it can."""
        reason = self.device_reason(device)
        if reason is not None:
            return reason
        error = self.imported()[1]
        return None if error is None else f"importing it failed ({error}); install it with `{self.install}`"

    def reason(self, device: torch.device, imports: bool = True) -> str | None:
        """:meth:`unavailable_reason`; ``imports=False``: only what the device's kind tells (a plan
        for other machines, whose packages this one may lack)."""
        return self.unavailable_reason(device) if imports else self.device_reason(device)

    def refusal(self, device: torch.device, setting: str = "backend", imports: bool = True,
                runs: Sequence[str] = ()) -> str | None:
        """Why the config setting ``setting`` naming this backend cannot run on ``device``, and what
        runs instead; None when it can run. ``imports`` as :meth:`reason` takes it; ``runs``: the
        values of ``setting`` that run there (:func:`refusals` finds them; empty: not known)."""
        reason = self.reason(device, imports)
        if reason is None:
            return None
        auto = " or 'auto' (the fastest backend that runs here)" if not runs or "auto" in runs else ""
        valid = f"; on {device.type}, {setting} takes {', '.join(runs)}" if runs else ""
        return (f"{self.mixer} backend {self.name!r} is unavailable: {reason}. Use {setting}={self.fallback!r} "
                f"(runs anywhere){auto}{valid}")

    def available(self, device: torch.device) -> bool:
        return self.unavailable_reason(device) is None

    def chunk_size_run(self, requested: int) -> int:
        """The chunk length it runs for a config's ``requested`` one: that one where it takes it,
        else its default."""
        if not self.chunk_sizes or requested in self.chunk_sizes:
            return requested
        return max(self.chunk_sizes)

    def chunk_kwargs(self, requested: int) -> dict[str, int]:
        """The keywords that make its chunked op run :meth:`chunk_size_run` for ``requested``
        (none for its default, which it runs unasked), warning once per ``requested`` length
        where that is another: ``chunk_size`` is a config field, and a run that silently used
        another misreports itself."""
        run = self.chunk_size_run(requested)
        if run != requested and requested not in self._chunk_sizes_told:
            self._chunk_sizes_told.add(requested)
            warnings.warn(f"{self.mixer} chunk_size={requested}: backend {self.name!r} runs chunks of {run} (it takes "
                          f"{', '.join(map(str, self.chunk_sizes))}); the math is the same, rounding and speed "
                          f"differ. Set chunk_size to one of those, or backend={self.fallback!r} to run {requested}",
                          ChunkSizeWarning, stacklevel=3)
        return {} if not self.chunk_sizes or run == max(self.chunk_sizes) else {"chunk_size": run}

    def ops(self, device: torch.device, setting: str = "backend") -> Any:
        """The imported ops, or :class:`BackendUnavailableError` saying why not and what to set
        ``setting`` (the config field that chose this backend) to instead."""
        refusal = self.refusal(device, setting)
        if refusal is not None:
            raise BackendUnavailableError(refusal)
        return self.imported()[0]


def pick_backend(requested: str, kernels: Sequence[Kernel], device: torch.device, fallback: str) -> str:
    """The backend that runs for a config's ``requested`` one: ``auto`` -> the first of ``kernels``
    that runs on ``device``, else ``fallback``; a backend named outright is kept (a kernel that
    cannot run raises when called, through :meth:`Kernel.ops`)."""
    if requested != "auto":
        return requested
    return next((k.name for k in kernels if k.available(device)), fallback)


class KernelChoice(NamedTuple):
    """A config setting's value that may name a kernel backend, and every value the setting takes
    (empty: not said; a refusal then names none)."""

    value: str
    takes: tuple[str, ...] = ()


def refusals(choices: Mapping[str, KernelChoice], kernels: Sequence[Kernel], device: torch.device,
             imports: bool = True) -> list[str]:
    """One line per setting of ``choices`` (config field -> its value and choices, as
    ``LCModel.kernel_choices`` gives them) that names one of ``kernels`` unable to run on
    ``device``, with the setting's values that run there: what a run refuses before any work
    (``imports`` as :meth:`Kernel.reason` takes it)."""
    by_name = {kernel.name: kernel for kernel in kernels}
    lines = []
    for setting, (value, takes) in choices.items():
        if value in by_name:
            runs = [v for v in takes if v not in by_name or by_name[v].reason(device, imports) is None]
            line = by_name[value].refusal(device, setting, imports, runs)
            if line is not None:
                lines.append(line)
    return lines


def chunk_settings(kernels: Sequence[Kernel], backend: str, chunk_size: int) -> dict[str, int]:
    """``{"chunk_size": n}`` where backend ``backend`` (one of ``kernels``, or a reference that
    runs any) runs another chunk length than the config's ``chunk_size``; else empty."""
    kernel = next((k for k in kernels if k.name == backend), None)
    run = chunk_size if kernel is None else kernel.chunk_size_run(chunk_size)
    return {} if run == chunk_size else {"chunk_size": run}


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
