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


def test_tuples_literals_and_mappings_are_checked_and_json_lists_read_back_as_annotated():
    """Third audit's fieldtypes survivors: a homogeneous tuple's items, a fixed tuple's (left to
    the dataclass), Literal choices, mappings; a JSON list read back as a tuple, an int as a float."""
    from typing import Literal

    from harness.api.fieldtypes import as_annotated

    assert type_problem((1, 2), tuple[int, ...]) is None
    assert type_problem([1, "x"], tuple[int, ...]) == "a list of int"
    assert type_problem((1, "x"), tuple[int, str]) is None  # fixed-shape tuples: items not checked
    assert type_problem("ab", tuple[int, ...]) == "a list of int"
    assert type_problem("b", Literal["a", "b"]) is None
    assert type_problem("c", Literal["a", "b"]) == "'a' | 'b'"
    assert type_problem({"k": 1}, dict[str, int]) is None
    assert type_problem([("k", 1)], dict[str, int]) == "a mapping"
    assert as_annotated([1, 2], tuple[int, ...]) == (1, 2) and isinstance(as_annotated([1], tuple[int, ...] | None), tuple)
    assert as_annotated([1, 2], list[int]) == [1, 2] and isinstance(as_annotated([1, 2], list[int]), list)
    lr = as_annotated(1, float | None)
    assert lr == 1.0 and isinstance(lr, float)
    assert isinstance(as_annotated(1, int | float), int)  # not float alone: left as given
    assert as_annotated(True, float) is True  # a bool is refused by the check, never made 1.0
