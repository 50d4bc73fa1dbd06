"""The model contract as a plugin author and the runner check it: harness.api.contract."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from harness.api import registry
from harness.api.contract import ContractError, check_model, check_outputs
from harness.api.errors import ConfigError
from harness.api.interface import LCModel, ModelConfig, check_tokens
from harness.api.results import SchemaError, make_row
from harness.runs.evaluate import run_eval
from tests.conftest import small_model


@dataclass
class ToyConfig(ModelConfig):
    pass


class RunningMean(LCModel):
    """A third-party architecture off the shared backbone: the running mean of the embeddings.
    Subclasses below break one rule each."""

    config_class = ToyConfig
    presets = {"tiny": dict(d_model=16)}

    def __init__(self, config: ToyConfig):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size)

    def embedding_parameters(self) -> list[nn.Parameter]:
        return [self.embed.weight]

    def mixed(self, tokens: torch.Tensor) -> torch.Tensor:
        counts = torch.arange(1, tokens.size(1) + 1, device=tokens.device)[None, :, None]
        return self.embed(tokens).cumsum(1) / counts

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        check_tokens(tokens)
        return self.head(self.mixed(tokens))

    def prefill(self, tokens: torch.Tensor):
        check_tokens(tokens)
        total = self.embed(tokens).sum(1)
        return self.head(total / tokens.size(1)), (total, tokens.size(1))

    def decode_step(self, state, token: torch.Tensor):
        total, n = state
        total = total + self.embed(token)
        return self.head(total / (n + 1)), (total, n + 1)


class OneShort(RunningMean):
    def forward(self, tokens):
        return super().forward(tokens)[:, :-1]  # drops the last position


class Remembers(RunningMean):
    """Adds what the previous call read: every window after the first is scored wrongly."""

    memory: torch.Tensor | None = None

    def forward(self, tokens):
        mixed = self.mixed(tokens)
        out = self.head(mixed if self.memory is None else mixed + self.memory)
        self.memory = mixed.mean((0, 1))
        return out


class PeeksAhead(RunningMean):
    def forward(self, tokens):
        return self.head(self.mixed(tokens.roll(-1, dims=1)))


class ForgetsBetweenChunks(RunningMean):
    """Has the optional forward_chunk, which streamed scoring uses, but starts afresh each chunk."""

    def forward_chunk(self, tokens, state):
        return self.forward(tokens), state


class MixesRows(RunningMean):
    """Centres each position over the batch: a sequence's scores depend on its batch-mates."""

    def forward(self, tokens):
        mixed = self.mixed(tokens)
        return self.head(mixed - mixed.mean(0, keepdim=True))


class LeaksDownTheBatch(RunningMean):
    """Each sequence reads the ones before it in the batch (a cumsum over the batch axis):
    sequence 0 reads alone as in the batch, sequence 1 does not."""

    def forward(self, tokens):
        return self.head(self.mixed(tokens).cumsum(0))


class StateUncounted(RunningMean):
    """A state_bytes that counts nothing: the memory column of every decode row would read 0."""

    def state_bytes(self, state) -> int:
        return 0


@dataclass
class TupleConfig(ModelConfig):
    widths: tuple[int, ...] = (16, 32)


class TupleMean(RunningMean):
    """A plugin whose config has a tuple field (JSON reads it back as a list)."""

    config_class = TupleConfig


@dataclass
class DerivedConfig(ModelConfig):
    head_width: int = field(init=False, default=0)  # derived, not given

    def __post_init__(self) -> None:
        super().__post_init__()
        self.head_width = self.d_model // self.n_heads


class DerivedMean(RunningMean):
    """A plugin whose config has a derived field (``init=False``): its JSON holds it too."""

    config_class = DerivedConfig


TOYS = {"toy_mean": RunningMean, "toy_one_short": OneShort, "toy_remembers": Remembers, "toy_peeks": PeeksAhead,
        "toy_tuple": TupleMean, "toy_derived": DerivedMean, "toy_mixes_rows": MixesRows,
        "toy_forgets": ForgetsBetweenChunks, "toy_leaks_down": LeaksDownTheBatch, "toy_uncounted": StateUncounted}


@pytest.fixture(autouse=True)
def toys():
    for name, cls in TOYS.items():
        registry.register_model(name)(cls)
    yield
    for name in TOYS:
        registry._MODELS.pop(name, None)


def test_every_registered_architecture_keeps_the_contract(arch):
    check_model(small_model(arch))


def test_a_plugin_that_keeps_the_contract_passes():
    check_model("toy_mean")


def test_a_config_with_a_tuple_field_reads_back_equal():
    """JSON and YAML have lists only: a tuple field read back as a list made the config differ from
    the one that wrote it, so check_model failed the plugin and its checkpoints refused to resume."""
    config = registry.make_config("toy_tuple", "tiny", widths=(8, 4))
    assert registry.config_from_dict(json.loads(config.to_json())) == config
    assert registry.make_config("toy_tuple", "tiny", widths=[8, 4]) == config  # as a spec or --set gives it
    check_model("toy_tuple")


def test_a_config_with_a_derived_field_reads_back():
    """to_json writes an ``init=False`` field with the others; reading it back passed it to the
    constructor, a TypeError, so no checkpoint of such a plugin loaded."""
    config = registry.make_config("toy_derived", "tiny")
    assert registry.config_from_dict(json.loads(config.to_json())) == config
    check_model("toy_derived")
    with pytest.raises(ConfigError, match=r"DerivedConfig.head_width is derived from the other fields \(4 here\), "
                                          r"not set; got 8"):
        registry.make_config("toy_derived", "tiny", head_width=8)


@pytest.mark.parametrize("arch, rule", [
    ("toy_one_short", r"forward\(tokens \[2, 12\]\) returned shape \(2, 11, 256\), expected \(2, 12, 256\)"),
    ("toy_remembers", r"other logits for the same tokens on a later call: the model carries memory between calls"),
    ("toy_peeks", r"outputs are not causal"),
    ("toy_mixes_rows", r"sequence 1 read alone gives other logits than in a batch of 2"),
    ("toy_forgets", r"forward_chunk over pieces of \[13, 27\] tokens differs from forward at position 13"),
    # the mutation audit: reading sequence 0 alone, or accepting a state of 0 bytes, survived
    ("toy_leaks_down", r"sequence 1 read alone gives other logits than in a batch of 2"),
    ("toy_uncounted", r"state_bytes\(state\) is 0; it must count the state's bytes"),
])
def test_a_broken_rule_is_named(arch, rule):
    with pytest.raises(ContractError, match=rf"(?s)architecture '{arch}' breaks the model contract:\n- .*{rule}"):
        check_model(arch)


@pytest.mark.parametrize("arch, rule", [("toy_one_short", "returned shape"), ("toy_remembers", "carries memory")])
def test_the_runner_refuses_a_model_that_breaks_the_cheap_rules(arch, rule):
    """Before: a shape error from cross_entropy deep inside the task, or plausible numbers from
    a model whose every window saw the previous one."""
    with pytest.raises(ContractError, match=f"'{arch}' breaks the model contract: .*{rule}"):
        run_eval("loss_scaling", arch, None, {"contexts": [16], "tokens_per_context": 64}, progress=False)
    check_outputs(registry.create_model("toy_mean"))  # the well-behaved twin passes


@pytest.mark.parametrize("returned, named", [
    ("loss 3.2", "a str"), ({"metric": "loss", "value": 1.0}, "a dict"), ([make_row("loss", 1.0), 3.2], "a list whose item 1 is a float"),
])
def test_a_task_returning_something_other_than_rows_is_named(returned, named):
    """Before: AttributeError: 'str' object has no attribute 'items', from the runner's own line."""
    registry.register_task("toy_returns")(lambda model: returned)
    try:
        with pytest.raises(SchemaError, match=rf"task 'toy_returns' must return a list of rows .*, got {named}"):
            run_eval("toy_returns", "toy_mean", None, progress=False)
    finally:
        registry._TASKS.pop("toy_returns")


def test_the_runner_checks_registered_plugins_only(monkeypatch):
    """The built-ins are proven by test_invariants and measured exactly as before the check; a
    plugin is checked whether the sweep built it (an untrained entry is an object) or a name did."""
    import harness.runs.evaluate as evaluate

    def refuse(model):
        raise ContractError("checked")

    monkeypatch.setattr(evaluate, "check_outputs", refuse)
    options = {"contexts": [16], "tokens_per_context": 64}
    assert (run_eval("loss_scaling", "swa", None, options, progress=False).table["status"] == "ok").all()
    for model in ("toy_mean", registry.create_model("toy_mean")):
        with pytest.raises(ContractError, match="checked"):
            run_eval("loss_scaling", model, None, options, progress=False)

    class Unregistered(RunningMean):  # a test's double: its author's to check
        pass

    assert (run_eval("loss_scaling", Unregistered(ToyConfig(arch="toy_double")), None, options, progress=False)
            .table["status"] == "ok").all()
