"""CapturedFunction's bookkeeping on a CPU: which calls share a captured graph, what is copied into
it, and what comes back. The graph itself needs CUDA (``pytest -m gpu`` runs TTT-E2E's captured
inner step against the eager one); here a stand-in replays by re-running the function on the
captured inputs and writing into the captured outputs, as a graph replay does."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from baselines.cuda_graph import CapturedFunction
from harness.api.errors import BackendUnavailableError


class ReplayedHere(CapturedFunction):
    def _capture(self, leaves, spec):
        self.captures = getattr(self, "captures", 0) + 1
        static = [t.clone() if isinstance(t, torch.Tensor) else t for t in leaves]
        args, kwargs = tree_unflatten(static, spec)
        outputs = self.fn(*args, **kwargs)

        def replay():
            for buffer, value in zip(tree_flatten(outputs)[0], tree_flatten(self.fn(*args, **kwargs))[0]):
                buffer.copy_(value)

        return SimpleNamespace(replay=replay), static, outputs


def test_calls_of_one_signature_share_a_graph_fed_with_their_own_values():
    step = ReplayedHere(lambda x, scale: x * scale)
    first = step(torch.ones(2), 2.0)
    second = step(torch.full((2,), 3.0), 2.0)
    assert second.tolist() == [6.0, 6.0]  # the new values were copied into the captured inputs
    assert first.tolist() == [2.0, 2.0]  # a copy: the replay overwrote the captured outputs, not it
    assert step.captures == 1
    assert step(torch.ones(2), 3.0).tolist() == [3.0, 3.0] and step.captures == 2  # another non-tensor: anew


def scaled(x, scale=2.0, add=None):
    return x * scale + (0.0 if add is None else add)


ONES, TWOS = torch.ones(2), torch.full((2,), 2.0)


@pytest.mark.parametrize("first, then, expected", [
    (((ONES,), {}), ((torch.ones(3),), {}), [2.0, 2.0, 2.0]),  # another shape
    (((ONES,), {}), ((ONES.double(),), {}), [2.0, 2.0]),  # another dtype: its result keeps it
    (((ONES,), {"scale": TWOS}), ((ONES,), {"add": TWOS}), [4.0, 4.0]),  # the same leaves bound otherwise
], ids=["shape", "dtype", "binding"])
def test_another_signature_is_captured_anew(first, then, expected):
    step = ReplayedHere(scaled)
    assert step(*first[0], **first[1]).tolist() == [2.0, 2.0]
    out = step(*then[0], **then[1])
    assert out.tolist() == expected and out.dtype == then[0][0].dtype and step.captures == 2


def test_a_graph_needs_cuda_tensors():
    with pytest.raises(BackendUnavailableError, match="a CUDA graph needs CUDA tensors"):
        CapturedFunction(scaled)(ONES)
    with pytest.raises(BackendUnavailableError, match="a CUDA graph needs CUDA tensors"):
        CapturedFunction(lambda n: n)(3)  # no tensor at all
