"""Where and in what precision a model runs: ``auto``, ``cpu`` or ``cuda``; float32, bfloat16, float16."""
from __future__ import annotations

import torch

from harness.api.errors import ConfigError, UnknownNameError

# names people type for a device that torch calls otherwise; difflib would suggest 'cpu' for 'gpu'
DEVICE_ALIASES = {"gpu": "cuda"}
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def parse_device(name: str | torch.device) -> torch.device | None:
    """``name`` as a torch device (None for ``auto``), checked for spelling only: a config may name
    a GPU that the machine which checks it lacks."""
    if str(name) == "auto":
        return None
    try:
        device = torch.device(name)
    except RuntimeError:  # torch's own message is a multi-line list of every backend it knows
        base, colon, index = str(name).partition(":")
        alias = DEVICE_ALIASES.get(base.lower())
        raise UnknownNameError("device", str(name), ["auto", "cpu", "cuda", "cuda:N"],
                               alias and alias + colon + index) from None
    if device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index is not None):
        raise ConfigError(f"unsupported device {str(name)!r}; valid: auto, cpu, cuda, cuda:N")
    return device


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    device = parse_device(name)
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but CUDA is not available here; use 'cpu' or 'auto'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        # caught here, not later as CUDA's "invalid device ordinal" from deep inside a model
        count = torch.cuda.device_count()
        valid = ", ".join(["cuda", *(f"cuda:{i}" for i in range(count))])
        raise ConfigError(f"device {str(name)!r} is not here: this machine has {count} GPU(s); valid: {valid}")
    return device


def resolve_dtype(name: str | torch.dtype = "auto", device: torch.device | None = None) -> torch.dtype:
    """``auto``: bfloat16 on CUDA, float32 on CPU."""
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        return torch.bfloat16 if device is not None and device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise UnknownNameError("dtype", name, ["auto", *DTYPES])
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
