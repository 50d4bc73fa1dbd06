"""The contract's shared helpers: the failure guard (OOM / NaN / error -> status rows, memory
freed), the kernel-backend availability helper, and the one greedy decoding loop."""
from __future__ import annotations

import weakref

import pytest
import torch

from harness.api.decoding import greedy_decode
from harness.api.errors import BackendUnavailableError, missing_path_error
from harness.api.failures import MESSAGE_LIMIT, FailureGuard, failure_rows, failure_status
from harness.api.kernels import Kernel, kernel_report, pick_backend
from harness.api.results import validate
from tests import triton_interpreter
from tests.conftest import small_model

CPU, CUDA = torch.device("cpu"), torch.device("cuda")

# ---------------------------------------------------------------------------------------------
# Failures


@pytest.mark.parametrize("exc, status", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "oom"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB"), "oom"),
    (MemoryError(), "oom"),
    (FloatingPointError("training loss is nan at step 3"), "nan"),
    (ValueError("shape mismatch"), "error"),
])
def test_failure_status_and_rows(exc, status):
    assert failure_status(exc) == status
    rows = failure_rows(exc, ["loss", "gen_match"], "at 4096 tokens", eval_ctx=4096)
    assert [r["metric"] for r in rows] == ["loss", "gen_match"]
    assert all(r["status"] == status and r["eval_ctx"] == 4096 for r in rows)
    assert rows[0]["message"].startswith(f"{type(exc).__name__} at 4096 tokens: ")
    validate([{**r, "run": "r", "model": "m", "arch": "a", "task": "t"} for r in rows])


def test_a_long_message_is_cut():
    rows = failure_rows(RuntimeError("x" * 10_000), ["loss"])
    assert len(rows[0]["message"]) == MESSAGE_LIMIT


def test_guard_turns_a_failure_into_rows_and_the_code_after_it_goes_on():
    with FailureGuard(["loss"], CPU, where="at 8 tokens", eval_ctx=8, device="cuda") as guard:  # device: a column too
        raise torch.OutOfMemoryError("CUDA out of memory")
    assert guard.failed and isinstance(guard.error, torch.OutOfMemoryError)
    assert [(r["metric"], r["status"], r["eval_ctx"], r["device"]) for r in guard.rows] == [("loss", "oom", 8, "cuda")]
    with FailureGuard(["loss"], CPU) as fine:
        pass
    assert not fine.failed and fine.rows == []


def test_guard_only_oom_lets_other_errors_through():
    with pytest.raises(ValueError, match="a bug"):
        with FailureGuard(["loss"], CPU, only_oom=True):
            raise ValueError("a bug")
    with FailureGuard(["loss"], CPU, only_oom=True) as guard:
        raise MemoryError()
    assert guard.rows[0]["status"] == "oom"


def test_guard_lets_ctrl_c_through():
    """KeyboardInterrupt (and SystemExit) are no failed measurement: the user stops the run."""
    with pytest.raises(KeyboardInterrupt):
        with FailureGuard(["loss"], CPU) as guard:
            raise KeyboardInterrupt
    assert not guard.failed and guard.rows == []


def test_guard_drops_the_failed_frames_so_their_memory_is_freed():
    """A kept traceback keeps the failed call's frames, and their tensors, alive."""
    ref = None

    def allocate_and_fail():
        nonlocal ref
        activations = torch.ones(1 << 16)
        ref = weakref.ref(activations)
        try:
            raise RuntimeError("CUDA error: out of memory")
        except RuntimeError as first:  # a chained exception holds the same frame
            raise MemoryError("out of host memory") from first

    with FailureGuard(["loss"], CPU) as guard:
        allocate_and_fail()
    assert guard.failed and guard.error.__traceback__ is None
    assert ref() is None


# ---------------------------------------------------------------------------------------------
# Kernels


def test_a_kernel_needs_cuda_and_says_so():
    kernel = Kernel("mixer", "fast", lambda: "ops", install="pip install fast", fallback="torch")
    assert kernel.unavailable_reason(CPU) == "it needs a CUDA device (the device is cpu)"
    assert not kernel.available(CPU) and kernel.available(CUDA)  # the import works; only the device is wrong
    with pytest.raises(BackendUnavailableError, match="mixer backend 'fast' is unavailable: it needs a CUDA device.*"
                                                      "backend='torch'"):
        kernel.ops(CPU)
    assert kernel.ops(CUDA) == "ops"


def test_a_failed_import_is_unavailable_with_its_reason_and_is_tried_once():
    calls = []

    def load():
        calls.append(1)
        raise RuntimeError("triton: no usable driver")

    kernel = Kernel("mixer", "fast", load, install="pip install fast", fallback="torch")
    reason = kernel.unavailable_reason(CUDA)
    assert "RuntimeError: triton: no usable driver" in reason and "pip install fast" in reason
    with pytest.raises(BackendUnavailableError, match="no usable driver"):
        kernel.ops(CUDA)
    assert len(calls) == 1
    kernel.forget()
    kernel.imported()
    assert len(calls) == 2


def test_pick_backend():
    works = Kernel("m", "works", lambda: "ops", install="-", fallback="torch", needs_cuda=False)
    broken = Kernel("m", "broken", lambda: 1 / 0, install="-", fallback="torch", needs_cuda=False)
    assert pick_backend("auto", [broken, works], CPU, fallback="torch") == "works"
    assert pick_backend("auto", [broken], CPU, fallback="torch") == "torch"
    assert pick_backend("broken", [broken, works], CPU, fallback="torch") == "broken"  # its call raises, saying why


@pytest.mark.skipif(torch.cuda.is_available() or not triton_interpreter.triton_installed(),
                    reason="checks a machine without CUDA that has Triton")
def test_triton_kernels_are_interpreted_where_cuda_is_absent():
    """The kernel tests' CPU cases skip when the interpreter cannot run: here it must."""
    assert triton_interpreter.enable() is None


def test_kernel_report_lists_each_kernel_once_with_its_users_and_why_not():
    from importlib import metadata

    shared = Kernel("attention", "fast", lambda: "ops", install="-", fallback="torch", packages=("torch",))
    broken = Kernel("ssm", "broken", lambda: 1 / 0, install="pip install broken", fallback="torch", needs_cuda=False,
                    packages=("lcbench-no-such-package",))
    rows = kernel_report({"a": (shared,), "b": (shared, broken), "c": ()}, CPU)
    assert rows == [
        {"mixer": "attention", "backend": "fast", "used by": "a, b", "installed": f"torch {metadata.version('torch')}",
         "runs here": "no: it needs a CUDA device (the device is cpu)"},
        {"mixer": "ssm", "backend": "broken", "used by": "b", "installed": "lcbench-no-such-package not installed",
         "runs here": "no: importing it failed (ZeroDivisionError: division by zero); install it with `pip install broken`"},
    ]
    assert kernel_report({"a": (shared,)}, CUDA)[0]["runs here"] == "yes"


# ---------------------------------------------------------------------------------------------
# Greedy decoding


class CountingSteps:
    """A model whose decode_step calls are counted."""

    def __init__(self, model):
        self.model, self.steps = model, 0

    def decode_step(self, state, token):
        self.steps += 1
        return self.model.decode_step(state, token)


def reference_greedy(model, prompt: torch.Tensor, n: int) -> list[int]:
    """Greedy generation read off full forward passes over the growing sequence."""
    ids = prompt[0].tolist()
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[prompt.size(1):]


@pytest.fixture(scope="module")
def greedy_case():
    """(model, prompt, its first 12 greedy tokens read off full forward passes)."""
    model = small_model("swa")
    prompt = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model, prompt, reference_greedy(model, prompt, 12)


def test_greedy_decode_matches_reading_the_whole_sequence_each_step(greedy_case):
    model, prompt, expected = greedy_case
    with torch.no_grad():
        logits, state = model.prefill(prompt)
        counting = CountingSteps(model)
        assert greedy_decode(counting, logits, state, 12) == expected
    assert counting.steps == 11  # none after the last token


def test_greedy_decode_stops_before_eos_and_after_stop(greedy_case):
    model, prompt, expected = greedy_case
    with torch.no_grad():
        logits, state = model.prefill(prompt)
        assert greedy_decode(model, logits, state, 12, eos=expected[5]) == expected[: expected.index(expected[5])]
        logits, state = model.prefill(prompt)  # decode_step may update a cache in place: a fresh state
        assert greedy_decode(model, logits, state, 12, stop=lambda ids: len(ids) == 3) == expected[:3]
        assert greedy_decode(model, logits, state, 0) == []


def test_host_memory_is_memavailable_in_bytes_and_a_need_beyond_it_is_an_oom(monkeypatch):
    """MemAvailable (what the host can still give, page cache included), not MemFree, read in kB
    (third audit's failures survivors)."""
    import builtins
    import io

    from harness.api import failures

    meminfo = "MemTotal:       8000000 kB\nMemFree:         100000 kB\nMemAvailable:   2000000 kB\n"
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: io.StringIO(meminfo) if path == "/proc/meminfo"
                        else real_open(path, *a, **k))
    assert failures.available_host_bytes() == 2_000_000 * 1024
    failures.require_host_memory(2_000_000 * 1024, "this")
    with pytest.raises(MemoryError, match=r"this needs about 1.9 GiB of host memory, 1.9 GiB is available"):
        failures.require_host_memory(2_000_000 * 1024 + 1, "this")


def test_weights_or_a_tensor_holding_nan_or_infinity_are_named():
    from harness.api.failures import require_finite, require_finite_weights

    model = small_model("swa")
    require_finite_weights(model)
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"1 weight tensor\(s\) hold NaN or infinity, e.g. '"):
        require_finite_weights(model)
    model.register_buffer("scale", torch.tensor([1.0, float("nan")]))
    with pytest.raises(FloatingPointError, match=r"2 weight tensor\(s\)"):
        require_finite_weights(model)
    require_finite(torch.tensor([1, 2]), "ints")  # integers hold neither
    with pytest.raises(FloatingPointError, match="logits hold NaN or infinity"):
        require_finite(torch.tensor([0.0, float("nan")]), "logits")


def test_dropping_tracebacks_walks_explicit_and_implicit_chains_and_stops_at_a_cycle():
    """The failed frames (and their tensors) hang on every exception of the chain: ``raise ... from``
    (cause) and an error inside ``except`` (context) alike (third audit's failures survivor)."""
    from harness.api.failures import drop_tracebacks

    def chained() -> BaseException:
        try:
            raise KeyError("first")
        except KeyError as caught:
            first = caught
        try:
            try:
                raise IndexError("handled")
            except IndexError:
                raise ValueError("second") from first  # cause: first; context: the IndexError
        except ValueError:
            try:
                raise RuntimeError("third")  # implicit: its context is the ValueError
            except RuntimeError as third:
                return third

    exc = chained()
    chain = [exc, exc.__context__, exc.__context__.__cause__]
    assert isinstance(chain[2], KeyError)
    assert all(e.__traceback__ is not None for e in chain)
    drop_tracebacks(exc)
    assert all(e.__traceback__ is None for e in chain)
    looped = RuntimeError("a")
    looped.__context__ = RuntimeError("b")
    looped.__context__.__context__ = looped
    drop_tracebacks(looped)  # returns: a cycle is walked once


def test_a_missing_path_names_what_its_folder_holds_or_the_nearest_folder_that_exists(tmp_path):
    """The folder's listing stops at 20 names and counts the rest; an empty folder says so; a
    path whose folder is missing too names the nearest folder that exists."""
    for i in range(22):
        (tmp_path / f"f{i:02d}").touch()
    msg = str(missing_path_error("checkpoint", tmp_path / "zz", "a folder"))
    assert msg.endswith("f19, ... (2 more)") and "f20" not in msg
    (tmp_path / "empty").mkdir()
    assert str(missing_path_error("checkpoint", tmp_path / "empty" / "x", "a folder")).endswith("holds: (empty)")
    msg = str(missing_path_error("checkpoint", tmp_path / "no" / "such" / "x", "a folder"))
    assert msg.endswith(f"Its folder does not exist either; the nearest that does is {str(tmp_path)!r}")
