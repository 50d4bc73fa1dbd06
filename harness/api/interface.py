"""The contract every architecture implements, and the config dataclass it is built from.

An architecture is a ``torch.nn.Module`` subclassing :class:`LCModel`:

- ``forward(tokens) -> logits`` reads ``[B, T]`` tokens the way the model reads them at
  inference; the output at position t depends only on tokens <= t.
- ``token_losses(tokens) -> [B, T-1]`` per-token negative log-likelihood.
- ``prefill(tokens) -> (logits_last, state)`` and ``decode_step(state, token) -> (logits, state)``
  generate without re-reading the prefix; ``state_bytes(state)`` is the state's size. A state
  continues once (caches may grow in place): ``clone_state`` it to continue it twice.
- ``config`` rebuilds the model (``type(model)(config)``) and serialises to JSON.

Tasks reach models only through this contract, so a plugin is measured like a built-in.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from harness.api.errors import ConfigError, unknown_message
from harness.api.fieldtypes import as_annotated, check_fields, field_hints
from harness.api.kernels import Kernel, KernelChoice


@dataclass
class ModelConfig:
    """Fields every architecture shares; architectures subclass it to add their own."""

    arch: str = ""
    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 4
    n_heads: int = 4
    mlp_hidden: int = 192
    tie_embeddings: bool = True
    norm_eps: float = 1e-6
    sandwich_norm: bool = True  # pre- and post-norm around every sublayer, as in TTT-E2E's code
    init_std: float = 0.02
    # Kernel of a short causal depthwise convolution added to the token embeddings (0 = none):
    # Zoology's layer-0 convolution, which lets tiny attention models learn recall in hundreds of
    # steps instead of thousands (the same for every architecture: it sits in the shared backbone).
    input_conv: int = 0
    backend: str = "auto"  # mixer implementation; "auto" picks the fastest that runs here
    # A field an earlier release saved and this one replaced: old name -> its value in new fields.
    retired_fields: ClassVar[dict[str, Callable[[Any], dict[str, Any]]]] = {}

    def __post_init__(self) -> None:
        check_fields(type(self), {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, type(self).__name__)
        hints = field_hints(type(self))
        for f in dataclasses.fields(self):  # a plugin's tuple field, given as a list by JSON, YAML or --set
            setattr(self, f.name, as_annotated(getattr(self, f.name), hints.get(f.name)))
        self.check_positive_ints("vocab_size", "d_model", "n_layers", "n_heads", "mlp_hidden")
        for name in ("norm_eps", "init_std"):  # a negative eps gives NaN; a negative std no init
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0")
        if self.input_conv < 0 or self.input_conv == 1:
            raise ConfigError(f"input_conv={self.input_conv} is a convolution kernel size: 0 (none) or >= 2")

    def check_positive_ints(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{type(self).__name__}.{name} must be a positive integer, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        data = dict(data)
        for old, translate in cls.retired_fields.items():  # configs saved by earlier releases still load
            if old in data:
                for key, value in translate(data.pop(old)).items():
                    data.setdefault(key, value)
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError(unknown_message(f"{cls.__name__} field", key, known))
        # fields __post_init__ derives (init=False) are saved with the others: read back, they must agree
        derived = {f.name for f in dataclasses.fields(cls) if not f.init} & data.keys()
        config = cls(**{key: value for key, value in data.items() if key not in derived})
        return config._check_derived({key: data[key] for key in derived})

    def replace(self, **changes: Any) -> "ModelConfig":
        fields = {f.name: f for f in dataclasses.fields(self)}
        for key in changes:
            if key not in fields:
                raise ConfigError(unknown_message(f"{type(self).__name__} field", key, fields))
        derived = {key: value for key, value in changes.items() if not fields[key].init}
        config = dataclasses.replace(self, **{key: value for key, value in changes.items() if key not in derived})
        return config._check_derived(derived)

    def _check_derived(self, given: dict[str, Any]) -> "ModelConfig":
        """``self``, if each given value of a derived (init=False) field equals the derived one.
        A field's ``metadata["derived"]`` says how it is derived (and how to change it)."""
        hints = field_hints(type(self))
        fields = {f.name: f for f in dataclasses.fields(self)}
        for key, value in given.items():
            if as_annotated(value, hints.get(key)) != getattr(self, key):
                how = fields[key].metadata.get("derived")
                raise ConfigError(f"{type(self).__name__}.{key} is derived from the other fields ({getattr(self, key)!r} "
                                  f"here), not set; got {value!r}" + (f" ({how})" if how else ""))
        return self


def state_tensors(state: Any) -> Iterator[torch.Tensor]:
    """The tensors inside a nested state (lists, tuples, dicts, dataclasses, objects with
    ``tensors()``)."""
    if isinstance(state, torch.Tensor):
        yield state
    elif isinstance(state, dict):
        for value in state.values():
            yield from state_tensors(value)
    elif isinstance(state, (list, tuple)):
        for value in state:
            yield from state_tensors(value)
    elif dataclasses.is_dataclass(state) and not isinstance(state, type):
        for f in dataclasses.fields(state):
            yield from state_tensors(getattr(state, f.name))
    elif hasattr(state, "tensors"):
        for t in state.tensors():
            yield from state_tensors(t)


def state_bytes(state: Any) -> int:
    """Bytes held by the tensors inside a nested state (lists, tuples, dicts, dataclasses)."""
    return sum(t.numel() * t.element_size() for t in state_tensors(state))


def clone_state(state: Any) -> Any:
    """A copy of a decoding state to advance without touching the original: ``decode_step``
    may update caches in place, so branching generations (several queries after one prefix,
    repeated timings) clone first."""
    # deepcopy refuses tensors an autograd graph made (a state read with gradients on): those
    # are cloned, which keeps the copy in the graph
    made = {id(t): t.clone() for t in state_tensors(state) if t.grad_fn is not None}
    return copy.deepcopy(state, made)


def check_tokens(tokens: torch.Tensor, state_batch: int | None = None, vocab_size: int | None = None) -> None:
    """Token ids ``[batch, length]`` with at least one token, as many sequences as the state being
    continued holds (``state_batch``), each id below ``vocab_size``: anything else is named here
    rather than failing as a shape, dtype or index error deep inside a mixer or the embedding. The
    ids are checked on the CPU only: on a GPU it would cost a device sync per call."""
    if tokens.dim() != 2:
        raise ConfigError(f"tokens must be [batch, length], got shape {tuple(tokens.shape)}")
    if tokens.dtype not in (torch.int64, torch.int32):  # what an embedding looks up
        raise ConfigError(f"tokens must be integer token ids (int64 or int32), got {tokens.dtype}")
    if tokens.size(1) == 0:
        raise ConfigError(f"tokens must hold at least one token per sequence, got shape {tuple(tokens.shape)}")
    if state_batch is not None and tokens.size(0) != state_batch:
        raise ConfigError(f"tokens hold {tokens.size(0)} sequence(s) but the state they continue holds {state_batch}")
    if vocab_size is not None and tokens.device.type == "cpu":
        low, high = (int(v) for v in torch.aminmax(tokens))
        if low < 0 or high >= vocab_size:
            raise ConfigError(f"token id {low if low < 0 else high} is outside the model's vocabulary of {vocab_size} (valid ids: "
                              f"0..{vocab_size - 1}); was the text tokenized with another tokenizer?")


def check_continues(cached_to: int, start_pos: int) -> None:
    """A cache that grows in place (attention's keys and values) holds positions up to
    ``cached_to``; the state continued from ``start_pos`` must end there. A state continued a
    second time has moved on and would attend to the first continuation's tokens: say so."""
    if cached_to != start_pos:
        raise ConfigError(
            f"this decoding state was continued before: its caches hold {cached_to} positions, but it "
            f"continues from position {start_pos}. decode_step and forward_chunk advance caches in place, so a "
            "state continues once; copy it first (harness.api.interface.clone_state) to continue it twice")


def next_token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy ``[B, T]`` of ``logits [B, T, V]``, computed in fp32 (fp64 stays);
    ``targets`` int64 or int32 (cross-entropy takes int64 only), as :func:`check_tokens` admits."""
    wide = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(wide.flatten(0, 1), targets.flatten().long(), reduction="none").view(targets.shape)


class LCModel(nn.Module):
    """Base class of every architecture. Subclasses set ``config_class`` and implement
    ``forward``, ``prefill`` and ``decode_step``; the rest is derived from them."""

    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    # Presets: name -> field overrides of config_class's defaults. "tiny" must exist.
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    # The optional kernel backends (harness.api.kernels.Kernel) the architecture can use beside its
    # torch reference: `lcbench list --kernels` says whether each runs on this machine, and why not.
    kernels: ClassVar[tuple[Kernel, ...]] = ()
    # The values config.backend takes, which a refusal of one that cannot run names (empty: not said).
    backends: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [B, T] -> [B, T, V]
        raise NotImplementedError

    def prefill(self, tokens: torch.Tensor) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def decode_step(self, state: Any, token: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """``token`` is ``[B]``; returns logits ``[B, V]`` for the next position and the new state."""
        raise NotImplementedError

    def token_losses(self, tokens: torch.Tensor) -> torch.Tensor:
        return next_token_nll(self(tokens)[:, :-1], tokens[:, 1:])

    def training_loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """The scalar the trainer minimises: the mean next-token loss (an architecture whose
        reference code weights or masks targets differently overrides this); in fp32 at least (fp64 stays)."""
        nll = self.token_losses(tokens)
        return nll.to(torch.promote_types(nll.dtype, torch.float32)).mean()

    def state_bytes(self, state: Any) -> int:
        return state_bytes(state)

    def backend_on(self, device: torch.device) -> str:
        """The mixer backend that runs on ``device``: the config's, with ``auto`` resolved (what the
        result table's ``backend`` column records). An architecture without kernel backends of its
        own says what its config says."""
        return self.config.backend

    @classmethod
    def kernel_choices(cls, config: ModelConfig) -> dict[str, KernelChoice]:
        """The config's settings that may pick one of :attr:`kernels`, each with its value and
        the values it takes: a run refuses one naming a kernel that cannot run on its device
        before any work, with the values that run there (:func:`harness.api.kernels.refusals`).
        An architecture whose other fields pick kernels adds them."""
        return {"backend": KernelChoice(config.backend, cls.backends)}

    def kernel_settings(self, device: torch.device) -> dict[str, Any]:
        """Settings the backend that runs on ``device`` applies in place of the config's (a kernel
        that takes only some chunk lengths: ``{"chunk_size": 64}``); empty when it runs the config
        as written. A run's ``run.json`` records them beside the config."""
        return {}

    def embedding_parameters(self) -> list[nn.Parameter]:
        """Parameters that count as 'embedding' (token embedding and an untied LM head)."""
        return []

    def shard_units(self) -> list[nn.Module]:
        """Submodules that FSDP may shard as units of their own (gathered for their ``forward``,
        freed after): only modules the model calls through ``forward``. Empty: the whole model
        is one unit, which is always correct."""
        return []

    def num_params(self, non_embedding: bool = True) -> int:
        params = {id(p): p for p in self.parameters()}
        if non_embedding:
            for p in self.embedding_parameters():
                params.pop(id(p), None)
        return sum(p.numel() for p in params.values())
