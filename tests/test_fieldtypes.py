"""Config fields are checked against their annotations: a wrong type is one clear error."""
from __future__ import annotations

import pytest

from harness.api import registry
from harness.api.errors import ConfigError
from harness.api.fieldtypes import type_problem


@pytest.mark.parametrize("overrides, match", [
    (dict(window="abc"), "AttentionConfig.window must be an integer, got 'abc'"),
    (dict(window=1.5), "window must be an integer, got 1.5"),
    (dict(window=True), "window must be an integer, got True"),
    (dict(rope_theta=float("nan")), "rope_theta must be a finite number"),
    (dict(qk_norm="yes"), "qk_norm must be true or false"),
    (dict(backend=3), "backend must be a string"),
])
def test_model_config_overrides_of_the_wrong_type_are_refused(overrides, match):
    with pytest.raises(ConfigError, match=match):
        registry.make_config("swa", "tiny", **overrides)


def test_ints_are_numbers_but_bools_are_not():
    assert type_problem(3, float) is None
    assert type_problem(True, float) == "a number"
    assert type_problem([1, 2], list[int]) is None
    assert type_problem([1, "x"], list[int]) == "a list of int"
    assert type_problem(None, int | None) is None
    assert type_problem("x", int | None) == "an integer or None"
