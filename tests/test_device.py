"""Device and dtype names: what a user types becomes a torch device, or an error naming the choices."""
from __future__ import annotations

import pytest
import torch

from harness.api.device import resolve_device, resolve_dtype
from harness.api.errors import ConfigError, UnknownNameError


@pytest.fixture
def one_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_a_cuda_index_past_the_last_gpu_is_named(one_gpu):
    # cuda:3 on a one-GPU machine passed and failed later, deep inside, as "invalid device ordinal"
    with pytest.raises(ConfigError, match=r"'cuda:3'.*1 GPU.*valid: cuda, cuda:0"):
        resolve_device("cuda:3")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda")


def test_unknown_devices_and_dtypes_are_named():
    # 'gpu' suggested 'cpu' (the closest spelling), the opposite of what was meant
    with pytest.raises(UnknownNameError, match="unknown device 'gpu'.*Did you mean 'cuda'"):
        resolve_device("gpu")
    with pytest.raises(UnknownNameError, match="Did you mean 'cuda:1'"):
        resolve_device("GPU:1")
    with pytest.raises(UnknownNameError, match="unknown device 'cdua'.*Did you mean 'cuda'"):
        resolve_device("cdua")
    with pytest.raises(ConfigError, match="unsupported device 'meta'"):
        resolve_device("meta")
    with pytest.raises(UnknownNameError, match="Did you mean 'bf16'"):
        resolve_dtype("bf61")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32


def test_a_name_that_is_not_a_string_is_named_too():
    # difflib's close-match search raised a bare TypeError ("'int' object is not iterable")
    with pytest.raises(UnknownNameError, match="unknown dtype 16; valid: auto, bf16"):
        resolve_dtype(16)


def test_the_first_index_past_the_gpus_is_refused_and_auto_takes_the_gpu(one_gpu):
    """The boundary: on one GPU, cuda:1 is already past it (third audit's device survivors)."""
    with pytest.raises(ConfigError, match=r"'cuda:1' is not here: this machine has 1 GPU"):
        resolve_device("cuda:1")
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device() == torch.device("cuda")


def test_every_dtype_spelling_and_auto_resolve_to_what_they_name():
    from harness.api.device import dtype_name

    assert [resolve_dtype(n) for n in ("fp32", "float32", "bf16", "bfloat16", "fp16", "float16")] == [
        torch.float32, torch.float32, torch.bfloat16, torch.bfloat16, torch.float16, torch.float16]
    assert resolve_dtype("auto") == torch.float32  # no device said: the CPU's
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype(torch.float16, torch.device("cuda")) == torch.float16  # a dtype given stays
    assert [dtype_name(d) for d in (torch.float32, torch.bfloat16)] == ["float32", "bfloat16"]
