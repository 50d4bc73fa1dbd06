"""Every number or switch in an architecture's config changes the model it builds (its parameters
or what it computes), or is refused: a field that is accepted and then ignored misleads whoever
sets it, and the config and reports record a value that was never used (mamba2's n_heads was such
a field: any value built the same model). Derived fields (init=False) are checked against the
fields they derive from; choice fields (strings) by their own checks."""
from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from harness.api import registry
from harness.api.errors import ConfigError
from tests.conftest import ARCHS

SMALL = dict(d_model=32, n_layers=4, mlp_hidden=48, vocab_size=64, backend="torch")
ARCH_FIELDS = {"swa": dict(window=8), "ttt_e2e": dict(window=8, mini_batch_size=8), "mamba2": dict(headdim=8, d_state=8),
               "gated_deltanet": dict(n_heads=2, head_dim=8)}
# another valid value where the default alternative (twice the value, half of it, the other bool)
# is invalid or builds the same model by design
ALTERNATIVES = {"input_conv": 3, "num_v_heads": 4, "suffix_blocks": 2, "bos_token_id": 1,
                "dt_init_floor": 0.05}  # a floor above dt_min: mamba-ssm's default floor never binds
# fields that change no inference model's outputs, by design
BY_DESIGN = {
    ("ttt_e2e", "inner_lr_init"): "the inner learning rate's warm-up over outer training steps",
    ("ttt_e2e", "inner_lr_warmup"): "the inner learning rate's warm-up over outer training steps",
    ("ttt_e2e", "checkpoint_inner"): "recomputation in the backward pass",
    ("mamba2", "chunk_size"): "the same math in chunks of another length (only rounding differs)",
    ("gated_deltanet", "chunk_size"): "the same math in chunks of another length (only rounding differs)",
}


def alternative(name: str, value: Any) -> Any:
    if name in ALTERNATIVES:
        return ALTERNATIVES[name]
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 if value > 0 else type(value)(1)
    return None


@torch.no_grad()
def built(config) -> tuple[dict[str, tuple[int, ...]], torch.Tensor]:
    torch.manual_seed(0)
    model = registry.build_model(config).double().eval()
    tokens = torch.randint(0, config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    return {name: tuple(p.shape) for name, p in model.named_parameters()}, model(tokens)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_config_field_changes_the_model_or_is_refused(arch):
    base = registry.make_config(arch, "tiny", **{**SMALL, **ARCH_FIELDS.get(arch, {})})
    shapes, logits = built(base)
    ignored = []
    for field in dataclasses.fields(base):
        value = getattr(base, field.name)
        other = alternative(field.name, value)
        if not field.init or other is None or (arch, field.name) in BY_DESIGN:
            continue
        try:
            other_shapes, other_logits = built(base.replace(**{field.name: other}))
        except ConfigError:
            continue  # refused, by name (by the config or the model)
        if other_shapes == shapes and torch.equal(other_logits, logits):
            ignored.append(f"{field.name}={other!r} (was {value!r})")
    assert not ignored, f"{arch} builds the same model with {', '.join(ignored)}"
