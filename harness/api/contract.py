"""Checks that a model keeps the contract of :mod:`harness.api.interface`, for plugin authors and
for the runner.

``check_model(model)`` is what a plugin author runs on their own architecture (the repository's
``tests/test_invariants.py`` holds the built-ins to the same properties, and more of the shared
backbone's)::

    from harness.api.contract import check_model
    check_model(create_model("my_arch", "tiny"))   # raises ContractError naming every broken rule

``check_outputs(model)`` is the cheap part the runner applies before every task on a registered
plugin architecture (output shapes, no memory carried from one call to the next),
so a model that breaks them fails its cell with the rule it broke rather than with a shape error
deep inside a task.
"""
from __future__ import annotations

import json
from collections.abc import Callable

import torch

from harness.api import registry
from harness.api.decoding import has_chunks
from harness.api.errors import LcbenchError
from harness.api.interface import LCModel


class ContractError(LcbenchError, ValueError):
    """A model breaks the model contract (wrong shapes, state carried between calls, ...)."""


def _name(model: LCModel) -> str:
    return f"architecture {getattr(model.config, 'arch', '') or type(model).__name__!r}"


def _tokens(model: LCModel, batch: int, length: int, seed: int) -> torch.Tensor:
    device = next(model.parameters(), torch.empty(0)).device
    vocab = min(model.config.vocab_size, 256)
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed)).to(device)


def _shape(what: str, got: torch.Tensor, expected: tuple[int, ...], meaning: str) -> str | None:
    if not isinstance(got, torch.Tensor):
        return f"{what} returned a {type(got).__name__}, expected a tensor of shape {expected} {meaning}"
    if tuple(got.shape) != expected:
        return f"{what} returned shape {tuple(got.shape)}, expected {expected} {meaning}"
    return None


def _close(a: torch.Tensor, b: torch.Tensor, exact: bool) -> bool:
    """Equal (``exact``: float64 on CPU, to 1e-9) or within the dtype's rounding (a GPU kernel may
    sum in another order from one call to the next)."""
    if exact:
        return torch.allclose(a, b, rtol=1e-9, atol=1e-9, equal_nan=True)
    try:
        torch.testing.assert_close(a, b, equal_nan=True)  # non-finite outputs are the task's to report
    except AssertionError:
        return False
    return True


@torch.no_grad()
def output_problems(model: LCModel, batch: int = 2, length: int = 12) -> list[str]:
    """Broken rules among the cheap ones: the shapes of forward, token_losses, prefill and
    decode_step, and forward reading the same tokens alike on a second call (a model that keeps
    memory on the module between calls would score every window after the first wrongly)."""
    V, x = model.config.vocab_size, _tokens(model, batch, length, seed=0)
    calls: list[tuple[str, Callable[[], torch.Tensor], tuple[int, ...], str]] = [
        (f"forward(tokens {list(x.shape)})", lambda: model(x), (batch, length, V), "[batch, length, vocab_size]"),
        (f"token_losses(tokens {list(x.shape)})", lambda: model.token_losses(x), (batch, length - 1), "[batch, length - 1]"),
        (f"prefill(tokens {list(x.shape)})[0]", lambda: model.prefill(x)[0], (batch, V), "[batch, vocab_size]"),
        (f"decode_step(state, token [{batch}])[0]", lambda: model.decode_step(model.prefill(x)[1], x[:, 0])[0],
         (batch, V), "[batch, vocab_size]"),
    ]
    problems = []
    for what, call, expected, meaning in calls:
        try:
            problem = _shape(what, call(), expected, meaning)
        except Exception as exc:  # a method that cannot even run is a broken rule too
            problem = f"{what} raised {type(exc).__name__}: {exc}"
        if problem:
            problems.append(problem)
    if not problems:
        first, _, again = model(x), model(_tokens(model, batch, length, seed=1)), model(x)
        if not _close(first.double(), again.double(), exact=False):
            problems.append("forward gave other logits for the same tokens on a later call: the model carries "
                            "memory between calls (state on the module); keep it in prefill/decode_step's state")
    return problems


def check_outputs(model: LCModel) -> None:
    """Raise :class:`ContractError` naming every broken rule of :func:`output_problems`."""
    problems = output_problems(model)
    if problems:
        raise ContractError(f"{_name(model)} breaks the model contract: " + "; ".join(problems)
                            + " (harness.api.contract.check_model checks the whole contract)")


@torch.no_grad()
def contract_problems(model: LCModel, length: int = 40, prompt: int = 13) -> list[str]:
    """Every broken rule: :func:`output_problems`, then, on a float64 copy on the CPU, prefill +
    decode_step (and forward_chunk, if the model has it) reproduce forward, outputs are causal,
    each sequence of a batch is read on its own, ``state_bytes`` counts the state, and the config
    rebuilds the same model (JSON round trip and ``load_state_dict``: what a checkpoint does)."""
    problems = output_problems(model)
    if problems:
        return problems
    m = _float64_copy(model)
    x = _tokens(m, 2, length, seed=2)
    full = m(x)
    logits, state = m.prefill(x[:, :prompt])
    if not _close(logits, full[:, prompt - 1], exact=True):
        problems.append(f"prefill's logits differ from forward's at position {prompt - 1}")
    for t in range(prompt, length):
        logits, state = m.decode_step(state, x[:, t])
        if not _close(logits, full[:, t], exact=True):
            problems.append(f"prefill + decode_step differ from forward at position {t}")
            break
    problems += _chunk_problems(m, x, full, prompt)
    if m.state_bytes(state) <= 0:
        problems.append(f"state_bytes(state) is {m.state_bytes(state)}; it must count the state's bytes")
    t = length // 2
    changed = x.clone()
    changed[:, t] = (changed[:, t] + 1) % min(m.config.vocab_size, 256)
    if not _close(m(changed)[:, :t], full[:, :t], exact=True):
        problems.append(f"changing token {t} changed outputs before it: outputs are not causal")
    if not _close(m(x[1:]), full[1:], exact=True):  # tasks batch windows: a score must not depend on batch-mates
        problems.append(f"sequence 1 read alone gives other logits than in a batch of {x.size(0)}: "
                        "each sequence of a batch must be read on its own")
    problems += _rebuild_problems(m, x, full)
    return problems


def _chunk_problems(model: LCModel, x: torch.Tensor, full: torch.Tensor, split: int) -> list[str]:
    """The optional ``forward_chunk``, which streamed scoring uses, must continue its state as
    forward reads the whole sequence."""
    if not has_chunks(model):
        return []
    what = f"forward_chunk over pieces of {[split, x.size(1) - split]} tokens"
    try:
        first, state = model.forward_chunk(x[:, :split], None)
        rest, _ = model.forward_chunk(x[:, split:], state)
        got = torch.cat([first, rest], 1)
    except Exception as exc:  # a method that cannot even run is a broken rule too
        return [f"{what} raised {type(exc).__name__}: {exc}"]
    problem = _shape(what, got, tuple(full.shape), "[batch, length, vocab_size]")
    if problem:
        return [problem]
    for t in range(x.size(1)):
        if not _close(got[:, t], full[:, t], exact=True):
            return [f"{what} differs from forward at position {t}"]
    return []


def _float64_copy(model: LCModel) -> LCModel:
    rebuilt = type(model)(model.config)
    rebuilt.load_state_dict(model.state_dict())
    return rebuilt.to(device="cpu", dtype=torch.float64).eval()


def _rebuild_problems(model: LCModel, x: torch.Tensor, full: torch.Tensor) -> list[str]:
    try:
        config = registry.config_from_dict(json.loads(model.config.to_json()))
    except Exception as exc:
        return [f"the config does not rebuild from its JSON ({type(exc).__name__}: {exc})"]
    if config != model.config:
        return ["the config read back from its JSON differs from the model's"]
    rebuilt = registry.build_model(config)
    try:
        rebuilt.load_state_dict(model.state_dict())
    except Exception as exc:
        return [f"a model built from the config does not load the weights ({type(exc).__name__}: {exc})"]
    if not _close(rebuilt.to(torch.float64).eval()(x), full, exact=True):
        return [("a model rebuilt from the config and weights computes other logits (a checkpoint would not "
                "round-trip): keep every tensor that matters in parameters or buffers")]
    return []


def check_model(model: LCModel | str, preset: str = "tiny") -> None:
    """Raise :class:`ContractError` naming every rule of the model contract that ``model`` (or a
    fresh model of the registered architecture ``model`` at ``preset``) breaks."""
    if isinstance(model, str):
        model = registry.create_model(model, preset).eval()
    problems = contract_problems(model)
    if problems:
        raise ContractError(f"{_name(model)} breaks the model contract:\n- " + "\n- ".join(problems))
